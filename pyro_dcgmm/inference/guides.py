"""Pyro guides for a stack whose layers have priors (:mod:`pyro_dcgmm.model.priors`).

The stack's own guide (``stack.guide``) puts a ``Delta`` at the layers' parameters on every prior
site; with plain ``pyro.infer.SVI`` these guides serve instead:

- :func:`map_guide`: Pyro's ``AutoDelta`` on the prior sites, started at the layers' current
  parameters: MAP estimation with the guide's own parameters.
- :func:`mean_field_guide`: the same for the means and precisions, and for every mixture's weights
  a mean-field ``Dirichlet`` posterior (:class:`MeanFieldWeights`), fitted by the ELBO's
  reparameterised gradient: variational Bayes for the weights.

After training, ``stack.assign_point_values_(guide.median())`` puts the estimates (the posterior
mean of the weights) into the layers, where every query and sampler reads them.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoCallable, AutoDelta, AutoGuideList, init_to_value
from pyro.nn import PyroModule, PyroParam

from pyro_dcgmm.model.priors import layers_with_priors


def map_guide(stack) -> AutoDelta:
    """``AutoDelta`` on the stack's prior sites, initialised at its layers' parameters."""
    values = stack.point_values()
    model = poutine.block(stack.model, expose=list(values))
    return AutoDelta(model, init_loc_fn=init_to_value(values=values))


class MeanFieldWeights(PyroModule):
    """A ``Dirichlet(alpha)`` posterior on every weights site of the stack, ``alpha`` a parameter.

    ``alpha`` starts at the prior's concentration plus every component's expected count over a data
    set of ``num_data`` samples under the current weights (the mean-field update's fixed point for
    them).  Pruned components keep the prior's concentration.
    """

    def __init__(self, stack, num_data: int):
        super().__init__()
        self.sites, self.event_dims = [], []
        for _, gmm in layers_with_priors(stack):
            if gmm.config.weight_concentration_prior is None:
                continue
            counts = num_data * gmm.positions * gmm.mixing_weights().detach()
            alpha = gmm.config.weight_concentration_prior + torch.where(gmm.active, counts, 0.0)
            setattr(self, f"concentration{len(self.sites)}", PyroParam(alpha, constraints.positive))
            self.sites.append(gmm.site("weights"))
            self.event_dims.append(alpha.dim() - 1)

    def forward(self, *args, **kwargs) -> None:
        for index, site in enumerate(self.sites):
            alpha = getattr(self, f"concentration{index}")
            pyro.sample(site, dist.Dirichlet(alpha).to_event(self.event_dims[index]))

    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The posterior mean of every weights site (the guide's point summary)."""
        means = {}
        for index, site in enumerate(self.sites):
            alpha = getattr(self, f"concentration{index}").detach()
            means[site] = alpha / alpha.sum(-1, keepdim=True)
        return means


def mean_field_guide(stack, num_data: int) -> AutoGuideList:
    """:class:`MeanFieldWeights` on the weights sites and ``AutoDelta`` on the other prior sites."""
    weights = MeanFieldWeights(stack, num_data)
    guide = AutoGuideList(stack.model)
    others = {site: value for site, value in stack.point_values().items() if site not in weights.sites}
    if others:
        model = poutine.block(stack.model, expose=list(others))
        guide.append(AutoDelta(model, init_loc_fn=init_to_value(values=others)))
    guide.append(AutoCallable(stack.model, weights, median=weights.median))
    return guide
