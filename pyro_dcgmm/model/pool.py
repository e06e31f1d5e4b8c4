"""MaxPool: spatial max pooling of every channel (of responsibilities, usually)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from pyro_dcgmm.config import MaxPoolConfig
from pyro_dcgmm.inference.sampling import ComponentLikelihood
from pyro_dcgmm.model.fold import fold_back
from pyro_dcgmm.model.layer import Layer, Shape, as_pair, window_output_size


class MaxPool(Layer):
    """Max over ``kernel`` windows taken every ``stride`` pixels, without padding.

    :param kernel: int or (height, width) of the pooling window.
    :param stride: int or pair; ``None`` means ``stride = kernel``.
    """

    config_class = MaxPoolConfig

    def __init__(self, kernel: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None):
        super().__init__(MaxPoolConfig(kernel=kernel, stride=stride))

    def _init_state(self) -> None:
        self.kernel = as_pair(self.config.kernel)
        self.stride = self.kernel if self.config.stride is None else as_pair(self.config.stride)

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

    @property
    def lossless_down(self) -> bool:
        return self.kernel == (1, 1)

    def sample_down(self, signal, n, options):
        """Unpool a (N, C, H', W') signal to (N, C, H, W).

        ``dense`` gives every pixel of a window the window's value (averaged where windows
        overlap); ``sparse`` puts it at one random pixel per window and leaves the others at 0, which
        the GMM layer below reads as "no information" (it then draws from its mixing weights).
        """
        if signal is None:
            return None
        if isinstance(signal, ComponentLikelihood):  # evidence holds for every pixel of a window
            dense = dataclasses.replace(options, pool_mode="dense")
            return ComponentLikelihood(self.sample_down(signal.log_likelihood, n, dense))
        kh, kw = self.kernel
        windows = signal.unsqueeze(2).expand(-1, -1, kh * kw, -1, -1)  # (N, C, kh*kw, H', W')
        if options.pool_mode == "sparse":
            n_, _, _, out_h, out_w = windows.shape
            chosen = torch.randint(kh * kw, (n_, 1, 1, out_h, out_w), device=signal.device)
            offsets = torch.arange(kh * kw, device=signal.device)[None, None, :, None, None]
            windows = windows * (offsets == chosen)
        patches = windows.reshape(signal.shape[0], -1, *signal.shape[2:])  # (N, C*kh*kw, H', W')
        return fold_back(patches, self.input_shape[1:], self.kernel, self.stride)
