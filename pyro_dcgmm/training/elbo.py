"""The ELBO training differentiates: Pyro's ``TraceEnum_ELBO`` without reading the device.

``TraceEnum_ELBO.differentiable_loss`` waits for the device several times a step: ``Dice`` checks
``(prob > 0).all()`` on the host for every cost term, and ``warn_if_nan`` reads the loss and, by a
hook, its gradient (nine reads a step for preset E with a Readout, where the training loop itself
reads once in ``check_every`` steps: :mod:`pyro_dcgmm.training.window`).  On a GPU every read
stops the host until the device has caught up, so the host can no longer queue the next kernels
while the device runs.

:class:`TraceEnumELBO` takes the same traces.  A trace with no enumerated site, whose guide's
sites are all reparameterised (the closed-form objective that training uses by default, under the
stack's point guide or a mean-field guide), has no expectation for ``Dice`` to take: every
probability is one and the ELBO is the model's log-probabilities summed less the guide's, which it
computes with no read.  Other traces (``objective="enumerated"``, or a guide with score-function
sites) go through ``Dice`` as in Pyro.  No NaN check: training checks every loss and gradient
itself.  Tested equal to ``TraceEnum_ELBO`` in loss and gradients, in float64.
"""

from __future__ import annotations

import torch
from pyro.infer import TraceEnum_ELBO
from pyro.infer.traceenum_elbo import _compute_dice_elbo
from pyro.infer.util import is_identically_zero


class TraceEnumELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` whose :meth:`differentiable_loss` never reads the device on traces
    without enumeration or score-function terms."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = elbo + particle_elbo(model_trace, guide_trace)
        if not torch.is_tensor(elbo) or not elbo.requires_grad:
            raise ValueError(f"the ELBO cannot be differentiated: {elbo}")
        return -elbo / self.num_particles


def particle_elbo(model_trace, guide_trace):
    """One particle's ELBO: log-probability sums where nothing is enumerated and every guide site
    is reparameterised, else Pyro's ``Dice`` estimate."""
    if needs_dice(model_trace, guide_trace):
        return _compute_dice_elbo(model_trace, guide_trace)
    return log_prob_total(model_trace) - log_prob_total(guide_trace)


def needs_dice(model_trace, guide_trace) -> bool:
    """Whether a site of either trace is enumerated or a guide site has a score-function term."""
    for trace in (model_trace, guide_trace):
        for site in sample_sites(trace):
            if site["infer"].get("_enumerate_dim") is not None:
                return True
    scored = (site["score_parts"].score_function for site in sample_sites(guide_trace))
    return any(not is_identically_zero(score) for score in scored)


def log_prob_total(trace):
    """The sum of every sample site's scaled and masked log-probability (0 for an empty trace)."""
    values = (site["packed"]["log_prob"] for site in sample_sites(trace))
    return sum((value.sum() if torch.is_tensor(value) else value for value in values), 0.0)


def sample_sites(trace):
    return (site for site in trace.nodes.values() if site["type"] == "sample")
