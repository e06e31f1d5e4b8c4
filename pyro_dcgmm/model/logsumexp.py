"""The log-sum-exp of a table over its components, with a backward pass of one product.

A GMM layer's objective is ``logsumexp_k`` of its (..., K) log-score table at every position, and
its gradient with respect to the table is the responsibilities times the incoming gradient.
``torch.logsumexp`` stores the table and recomputes ``exp(table - result)`` in its backward pass;
:class:`ComponentLogSumExp` keeps the exponentials it computed in the forward pass (the same
memory) and multiplies them by ``gradient / sum`` (one pass over the table instead of three).
On CPU (:func:`~pyro_dcgmm.model.subnormal.flushed`) the exponentials that would be subnormal are
zero and the gradient's subnormal entries are flushed in one more pass
(:mod:`pyro_dcgmm.model.subnormal`).  ``docs/figures/batch-size/`` measures the step before and after.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from pyro_dcgmm.model import subnormal


class ComponentLogSumExp(torch.autograd.Function):
    """``logsumexp`` over the last dimension of a table (..., K), shape (...)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor) -> torch.Tensor:
        top = table.amax(-1, keepdim=True)  # NaN where the table has one, which the result keeps
        top = torch.where(top.isinf(), 0.0, top)  # all -inf: the sum is zero, the result -inf
        shifted = table - top  # (..., K), at most zero
        if subnormal.flushed(table):
            cut = math.log(torch.finfo(table.dtype).tiny)  # exp below it would be subnormal
            F.threshold_(shifted, cut, -math.inf)
        weights = shifted.exp_()
        total = weights.sum(-1, keepdim=True)
        ctx.save_for_backward(weights, total)
        return (top + total.log()).squeeze(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        weights, total = ctx.saved_tensors
        return subnormal.flush_subnormals(weights * (gradient.unsqueeze(-1) / total))


def component_logsumexp(table: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(table, -1)`` with :class:`ComponentLogSumExp`'s backward pass."""
    return ComponentLogSumExp.apply(table)


def table_log_likelihood(scores: torch.Tensor) -> torch.Tensor:
    """Per-sample log-likelihood (N,) of a (N, K, H', W') log-score table: the log-sum-exp over its
    components at every position, summed over the positions."""
    return component_logsumexp(scores.permute(0, 2, 3, 1)).sum((1, 2))
