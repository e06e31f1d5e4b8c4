"""What a GMM layer passes upward, by its ``output`` setting (:class:`~pyro_dcgmm.config.GMMConfig`).

``"responsibilities"``: ``r = softmax_k(scores)``.  ``"likelihoods"``: ``softmax_k`` of the
log-densities.  ``"log_responsibilities"``: ``log max(r, RESPONSIBILITY_FLOOR)`` and
``"log_probabilities"``: the log-densities, each standardised over the active components at every
position (which keeps the runner-up components that near one-hot responsibilities hide).  Pruned
components pass zero.
"""

from __future__ import annotations

import math

import torch

from pyro_dcgmm.model.layer import PRUNED_LOGIT

RESPONSIBILITY_FLOOR = 1e-4  # log-responsibilities below log(1e-4) carry no information upward


def standardise(values: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """``values`` (N, K, H', W') centred and scaled over the active components at every position;
    inactive components give zero.  ``active=None``: every component is active (two passes over
    the table fewer, the same numbers)."""
    if active is None:
        count = values.shape[1]
        centred = values - values.sum(1, keepdim=True) / count
    else:
        count = active.sum(1, keepdim=True).clamp_min(1)
        values = values.masked_fill(~active, 0.0)
        centred = (values - values.sum(1, keepdim=True) / count).masked_fill(~active, 0.0)
    spread = (centred.square().sum(1, keepdim=True) / count).sqrt().clamp_min(1e-6)
    return centred / spread


def layer_output(kind: str, scores: torch.Tensor, log_mixing: torch.Tensor, active: torch.Tensor | None):
    """The output of kind ``kind`` from log-scores (N, K, H', W'), the log mixing weights and the
    mask of active components laid out like them ((1, K, 1 | H', 1 | W'); ``None`` when every
    component is active)."""
    if kind == "responsibilities":
        return torch.softmax(scores, dim=1)
    log_densities = scores - log_mixing
    if kind == "likelihoods":
        masked = log_densities if active is None else log_densities.masked_fill(~active, PRUNED_LOGIT)
        return torch.softmax(masked, dim=1)
    if kind == "log_responsibilities":
        values = torch.log_softmax(scores, dim=1).clamp_min(math.log(RESPONSIBILITY_FLOOR))
    else:
        values = log_densities
    return standardise(values, active)


def output_range(kind: str, components: int) -> tuple[float, float]:
    """The interval outputs of kind ``kind`` of ``components`` components lie in."""
    if kind in ("responsibilities", "likelihoods"):
        return (0.0, 1.0)
    bound = math.sqrt(components - 1.0) if components > 1 else 0.0
    return (-bound, bound)
