"""Subnormal gradients, which x86 CPUs compute many times slower than normal numbers, flushed."""

from __future__ import annotations

import torch


class SubnormalGradientFlushed(torch.autograd.Function):
    """The identity, whose backward pass on CPU sets subnormal gradient entries (magnitude below
    the dtype's smallest normal number) to zero.

    The gradient of a layer's log-likelihood with respect to its log-score table is the
    responsibilities, and those of components some 90 nats less likely than the best are subnormal
    in float32, which x86 CPUs multiply many times slower than normal numbers: zeroing them makes
    training on CPU up to ten times faster (``scripts/bench_subnormals.py``) and changes trained
    parameters only at the level of float32 rounding.  Unlike ``torch.set_flush_denormal``, which
    sets the calling thread only, it holds on every worker thread.  GPUs take subnormals at full
    speed: there the gradient passes unchanged."""

    @staticmethod
    def forward(ctx, table: torch.Tensor) -> torch.Tensor:
        return table.view_as(table)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        if gradient.device.type != "cpu":
            return gradient
        return gradient.masked_fill(gradient.abs() < torch.finfo(gradient.dtype).tiny, 0.0)
