"""MaxPool: spatial max pooling of every channel (of responsibilities, usually)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyro_dcgmm.config import MaxPoolConfig
from pyro_dcgmm.layer import Layer, Shape, as_pair, window_output_size


class MaxPool(Layer):
    """Max over ``kernel`` windows taken every ``stride`` pixels, without padding.

    :param kernel: int or (height, width) of the pooling window.
    :param stride: int or pair; ``None`` means ``stride = kernel``.
    """

    def __init__(self, kernel: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None):
        super().__init__(MaxPoolConfig(kernel=kernel, stride=stride))
        self.kernel = as_pair(kernel, "MaxPool kernel")
        self.stride = self.kernel if stride is None else as_pair(stride, "MaxPool stride")

    def build(self, input_shape: Shape) -> Shape:
        channels, height, width = input_shape
        out_h = window_output_size(height, self.kernel[0], self.stride[0], "MaxPool kernel height")
        out_w = window_output_size(width, self.kernel[1], self.stride[1], "MaxPool kernel width")
        self.input_shape = input_shape
        self.output_shape = (channels, out_h, out_w)
        return self.output_shape

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._require_built()
        return F.max_pool2d(x, self.kernel, self.stride)  # (N, C, H', W')
