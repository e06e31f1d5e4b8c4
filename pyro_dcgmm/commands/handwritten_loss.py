"""The negative ELBO of a stack written by hand in torch, without Pyro.

It equals ``TraceEnum_ELBO().differentiable_loss(stack.model, stack.guide, ...)`` (tested in
``tests/test_stack.py``) and is the baseline ``pyro-dcgmm bench`` measures Pyro's overhead against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyro_dcgmm import GMM, Readout, Stack
from pyro_dcgmm.joint import JointStack


def handwritten_loss(
    stack: Stack,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    num_data: int | None = None,
    annealed: bool = True,
) -> torch.Tensor:
    """``-sum over GMM layers, samples and positions of logsumexp_k table``, plus the readout's
    cross-entropy when ``labels`` are given, scaled by ``num_data / N`` for a mini-batch; for a
    joint stack ``-sum over samples of log p(x)`` by its upward pass."""
    scale = 1.0 if num_data is None else num_data / x.shape[0]
    if isinstance(stack, JointStack):
        return -stack.watched_log_likelihood(x, labels).sum() * scale
    total = x.new_zeros(())
    h = x
    for index in stack.stages:
        layer = stack.layers[index]
        if isinstance(layer, GMM):
            scores, table = layer.annealed_log_scores(h, annealed)  # (N, K, H', W'), (N, H', W', K)
            total = total - table.logsumexp(-1).sum()
            h = layer.output(scores.detach())
        elif isinstance(layer, Readout):
            logits = layer.logits(h)  # (N, num_classes)
            if labels is not None:
                total = total + F.cross_entropy(logits, labels, reduction="sum")
            h = torch.softmax(logits.detach(), dim=-1)[:, :, None, None]
        else:
            h = layer.transform(h)
    return total * scale
