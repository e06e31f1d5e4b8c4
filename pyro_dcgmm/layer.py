"""The protocol every DCGMM layer follows.

Layers work on channels-first tensors ``(N, C, H, W)``.  A layer is configured by its dataclass
(:mod:`pyro_dcgmm.config`) and built for an input shape ``(C, H, W)`` by the stack, which creates
parameters whose shapes depend on that input.
"""

from __future__ import annotations

import functools

import pyro
import torch
from pyro.nn import PyroModule

from pyro_dcgmm.errors import ArchitectureError

Shape = tuple[int, int, int]


def as_pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """Normalise an int or a pair to a pair of positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ArchitectureError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


def window_output_size(size: int, window: int, stride: int, what: str) -> int:
    """Positions of a sliding window of ``window`` with ``stride`` over ``size`` (no padding)."""
    if window > size:
        raise ArchitectureError(
            f"{what} of {window} is larger than its input of {size}; use a smaller {what} or "
            "remove a layer below"
        )
    return (size - window) // stride + 1


def local_params(model):
    """Run a PyroModule method with module-local parameters.

    Parameters then live in the modules (``state_dict``) instead of Pyro's global param store, so
    several stacks with the same attribute names coexist in one process without sharing values.
    """

    @functools.wraps(model)
    def wrapper(*args, **kwargs):
        with pyro.settings.context(module_local_params=True):
            return model(*args, **kwargs)

    return wrapper


class Layer(PyroModule):
    """Base class: shape bookkeeping plus the upward pass and the Pyro model of one layer."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None
        self.site_prefix = ""

    def build(self, input_shape: Shape) -> Shape:
        """Check ``input_shape`` (C, H, W), create parameters, return the output shape."""
        raise NotImplementedError

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic upward pass: ``(N, C, H, W)`` to ``(N, C', H', W')``."""
        raise NotImplementedError

    def model(
        self, x: torch.Tensor, *, labels=None, annealed: bool = True, enumerated: bool = True
    ) -> torch.Tensor:
        """This layer's part of the stack's Pyro program; returns what the layer passes upward.

        Layers without random variables just transform their input.
        """
        return self.transform(x)

    def loss(self, x: torch.Tensor, *, labels=None, annealed: bool = True):
        """Hand-written (no Pyro) version of :meth:`model`: the layer's output and its negative
        log-likelihood summed over the batch (``None`` for layers without one)."""
        return self.transform(x), None

    @property
    def lossless_down(self) -> bool:
        """Whether :meth:`sample_down` inverts :meth:`transform` exactly (no sharpening needed)."""
        return True

    def sample_down(self, signal, n: int, options):
        """Top-down pass: from what this layer outputs (``signal``, or ``None`` for no
        information) to a sample of what it takes as input, for ``n`` samples.

        :param options: a :class:`~pyro_dcgmm.sampling.SamplingOptions`.
        """
        raise NotImplementedError

    def site(self, name: str) -> str:
        """Name of a Pyro site of this layer, prefixed by its place in a stack."""
        return f"{self.site_prefix}.{name}" if self.site_prefix else name

    def _require_built(self) -> None:
        if self.input_shape is None:
            raise ArchitectureError(
                f"{type(self).__name__} has not been built: put it in a Stack or call build()"
            )
