"""What a GMM layer passes upward, by its ``output`` setting (:class:`~pyro_dcgmm.config.GMMConfig`).

``"responsibilities"``: ``r = softmax_k(scores)``.  ``"likelihoods"``: ``softmax_k`` of the
log-densities.  ``"log_responsibilities"``: ``log max(r, RESPONSIBILITY_FLOOR)`` and
``"log_probabilities"``: the log-densities, each standardised over the active components at every
position (which keeps the runner-up components that near one-hot responsibilities hide).  Pruned
components pass zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pyro_dcgmm.model.layer import PRUNED_LOGIT

RESPONSIBILITY_FLOOR = 1e-4  # log-responsibilities below log(1e-4) carry no information upward


def standardise(values: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """``values`` (N, K, H', W') centred and scaled over the active components at every position;
    inactive components give zero.  ``active=None``: every component is active (two passes over
    the table fewer, the same numbers).  The table keeps its memory layout.

    ``values`` must be a table made for this call: it is overwritten (:func:`_reused`)."""
    if active is None:
        count = float(values.shape[1])  # a number: on a GPU a new tensor would be a copy to it
    else:
        count = active.sum(1, keepdim=True).clamp_min(1).to(values.dtype)
        values = _reused(values, "masked_fill", ~active, 0.0)
    centred = _reused(values, "sub", values.sum(1, keepdim=True) / count)
    if active is not None:
        centred = _reused(centred, "masked_fill", ~active, 0.0)
    spread = torch.linalg.vector_norm(centred, dim=1, keepdim=True) / count**0.5
    return _reused(centred, "mul", spread.clamp_min(1e-6).reciprocal())


def _reused(table: torch.Tensor, operation: str, *args) -> torch.Tensor:
    """``table.<operation>(*args)``, in place (``<operation>_``) when ``table`` needs no gradient
    (as in training, whose outputs are detached): on a CPU a new table costs more than the pass
    over it, its memory pages being fresh.  Only for tables the caller made and no one else holds."""
    return getattr(table, operation if table.requires_grad else f"{operation}_")(*args)


def layer_output(
    kind: str, scores: torch.Tensor, log_mixing: Callable[[], torch.Tensor], active: torch.Tensor | None
):
    """The output of kind ``kind`` from log-scores (N, K, H', W') and the mask of active components
    laid out like them ((1, K, 1 | H', 1 | W'); ``None`` when every component is active).
    ``log_mixing()`` gives the log mixing weights laid out the same way; only the kinds made from
    log-densities call it (a training step's outputs then compute no mixing weights)."""
    if kind == "responsibilities":
        return over_components(torch.softmax, scores)
    if kind == "log_responsibilities":
        values = over_components(torch.log_softmax, scores)
        return standardise(_reused(values, "clamp_min", math.log(RESPONSIBILITY_FLOOR)), active)
    log_densities = scores - log_mixing()
    if kind == "likelihoods":
        masked = log_densities if active is None else log_densities.masked_fill(~active, PRUNED_LOGIT)
        return over_components(torch.softmax, masked)
    return standardise(log_densities, active)


def over_components(normalise, table: torch.Tensor) -> torch.Tensor:
    """``normalise(table, dim=1)`` (``torch.softmax`` or ``torch.log_softmax``) of a (N, K, H', W')
    table, taken over the components laid out last in memory (the channels-last layout of
    :meth:`~pyro_dcgmm.model.gmm.GMM.log_prob_table`, where it reads contiguous memory; other
    layouts are copied to it), so the result is channels-last and the same in either layout."""
    return normalise(table.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)


def output_range(kind: str, components: int) -> tuple[float, float]:
    """The interval outputs of kind ``kind`` of ``components`` components lie in."""
    if kind in ("responsibilities", "likelihoods"):
        return (0.0, 1.0)
    bound = math.sqrt(components - 1.0) if components > 1 else 0.0
    return (-bound, bound)
