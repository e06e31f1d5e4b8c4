"""Subnormal numbers, which x86 CPUs compute many times slower than normal ones, kept out of the
tables' gradients on CPU.

The gradient of a layer's log-likelihood with respect to its log-score table is the
responsibilities, and those of components some 90 nats less likely than the best are subnormal in
float32: zeroing them makes training on CPU up to ten times faster (``scripts/bench_subnormals.py``)
and changes trained parameters only at the level of float32 rounding.  Unlike
``torch.set_flush_denormal``, which sets the calling thread only, it holds on every worker thread.
GPUs take subnormals at full speed: there nothing is flushed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def flushed(tensor: torch.Tensor) -> bool:
    """Whether subnormal numbers are flushed from ``tensor``'s computations: on CPU only."""
    return tensor.device.type == "cpu"


def flush_subnormals(gradient: torch.Tensor) -> torch.Tensor:
    """``gradient`` with its subnormal entries (magnitude below the dtype's smallest normal number)
    set to zero, in one pass, where :func:`flushed`; unchanged elsewhere."""
    if not flushed(gradient):
        return gradient
    return F.hardshrink(gradient, largest_subnormal(gradient.dtype))


@functools.cache
def largest_subnormal(dtype: torch.dtype) -> float:
    """The largest subnormal number of ``dtype``: what ``hardshrink`` keeps magnitudes above."""
    tiny = torch.tensor(torch.finfo(dtype).tiny, dtype=dtype)
    return float(torch.nextafter(tiny, torch.zeros((), dtype=dtype)))


class SubnormalGradientFlushed(torch.autograd.Function):
    """The identity, whose backward pass flushes subnormal gradient entries (:func:`flush_subnormals`)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor) -> torch.Tensor:
        return table.view_as(table)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        return flush_subnormals(gradient)
