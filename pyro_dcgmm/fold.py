"""Fold: cut an image into (possibly overlapping) patches and flatten each patch into a vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyro_dcgmm.config import FoldConfig
from pyro_dcgmm.layer import Layer, Shape, as_pair, window_output_size


class Fold(Layer):
    """Patches of size ``patch`` taken every ``stride`` pixels, as vectors of length ``C * ph * pw``.

    A patch vector is ordered channel-major, ``(C, ph, pw)``, as :func:`torch.nn.functional.unfold`
    and :func:`torch.nn.functional.conv2d` weights are, so a mean of a GMM on the patches reshapes to
    an image patch with ``mean.view(C, ph, pw)``.  ``patch=None`` takes the whole input.

    A :class:`~pyro_dcgmm.gmm.GMM` directly above a Fold absorbs it: the GMM computes its
    log-likelihood table from the unfolded input by convolution and the patches are never
    materialised.

    :param patch: int or (height, width), or ``None`` for the whole input.
    :param stride: int or (vertical, horizontal) step between patches.
    """

    def __init__(self, patch: int | tuple[int, int] | None = None, stride: int | tuple[int, int] = 1):
        super().__init__(FoldConfig(patch=patch, stride=stride))
        self.patch: tuple[int, int] | None = None
        self.stride = as_pair(stride, "Fold stride")

    def build(self, input_shape: Shape) -> Shape:
        channels, height, width = input_shape
        if self.config.patch is None:
            self.patch = (height, width)
        else:
            self.patch = as_pair(self.config.patch, "Fold patch")
        out_h = window_output_size(height, self.patch[0], self.stride[0], "Fold patch height")
        out_w = window_output_size(width, self.patch[1], self.stride[1], "Fold patch width")
        self.input_shape = input_shape
        self.output_shape = (channels * self.patch[0] * self.patch[1], out_h, out_w)
        return self.output_shape

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._require_built()
        n = x.shape[0]
        patches = F.unfold(x, self.patch, stride=self.stride)  # (N, C*ph*pw, H'*W')
        return patches.view(n, *self.output_shape)  # (N, D, H', W')
