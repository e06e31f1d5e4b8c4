"""Fold: cut an image into (possibly overlapping) patches and flatten each patch into a vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyro_dcgmm.config import FoldConfig
from pyro_dcgmm.inference.sampling import ComponentLikelihood
from pyro_dcgmm.model.layer import Layer, Shape, as_pair, window_output_size


def fold_back(
    patches: torch.Tensor,
    output_size: tuple[int, int],
    patch: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """Inverse of folding where it exists: patch vectors (N, C*ph*pw, H', W') back onto the
    (N, C, H, W) grid, averaging where patches overlap; pixels no patch covers are 0."""
    n, dim, out_h, out_w = patches.shape
    columns = patches.reshape(n, dim, out_h * out_w)
    summed = F.fold(columns, output_size, patch, stride=stride)  # (N, C, H, W)
    coverage = F.fold(torch.ones_like(columns[:1]), output_size, patch, stride=stride)  # (1, C, H, W)
    return summed / coverage.clamp_min(1.0)


def is_lossless(patch: tuple[int, int], stride: tuple[int, int]) -> bool:
    """Whether patches taken with ``stride`` never overlap, so that folding back loses nothing."""
    return stride[0] >= patch[0] and stride[1] >= patch[1]


class Fold(Layer):
    """Patches of size ``patch`` taken every ``stride`` pixels, as vectors of length ``C * ph * pw``.

    A patch vector is ordered channel-major, ``(C, ph, pw)``, as :func:`torch.nn.functional.unfold`
    and :func:`torch.nn.functional.conv2d` weights are, so a mean of a GMM on the patches reshapes to
    an image patch with ``mean.view(C, ph, pw)``.  ``patch=None`` takes the whole input.

    A :class:`~pyro_dcgmm.model.gmm.GMM` directly above a Fold absorbs it: the GMM computes its
    log-likelihood table from the unfolded input by convolution and the patches are never
    materialised.

    :param patch: int or (height, width), or ``None`` for the whole input.
    :param stride: int or (vertical, horizontal) step between patches.
    """

    config_class = FoldConfig

    def __init__(self, patch: int | tuple[int, int] | None = None, stride: int | tuple[int, int] = 1):
        super().__init__(FoldConfig(patch=patch, stride=stride))

    def _init_state(self) -> None:
        self.patch: tuple[int, int] | None = None
        self.stride = as_pair(self.config.stride)

    def build(self, input_shape: Shape) -> Shape:
        channels, height, width = input_shape
        self.patch = (height, width) if self.config.patch is None else as_pair(self.config.patch)
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

    @property
    def lossless_down(self) -> bool:
        return is_lossless(self.patch, self.stride)

    def sample_down(self, signal, n, options):
        """Patch vectors (N, D, H', W') back onto the input grid (N, C, H, W), averaging overlaps
        (evidence about components, :class:`~pyro_dcgmm.inference.sampling.ComponentLikelihood`, likewise)."""
        if isinstance(signal, ComponentLikelihood):
            return ComponentLikelihood(self.sample_down(signal.log_likelihood, n, options))
        return fold_back(signal, self.input_shape[1:], self.patch, self.stride)
