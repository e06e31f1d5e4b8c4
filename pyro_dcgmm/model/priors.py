"""Conjugate priors of a GMM layer, their Pyro sites, and the MAP and mean-field M-steps.

A layer with ``weight_concentration_prior = a0`` puts on each of its mixtures' weights

.. math:: \\pi \\sim \\mathrm{Dirichlet}(a_0, \\dots, a_0),

and with ``mean_precision_prior = k0`` on every component k and coordinate d (diagonal covariances)

.. math:: p_{kd} \\sim \\mathrm{Gamma}(\\nu_0 / 2, \\nu_0 s_d / 2), \\quad
          \\mu_{kd} \\mid p_{kd} \\sim \\mathcal N(m_d, 1 / (k_0 p_{kd})),

with ``m`` and ``s`` the mean and variance of the layer's inputs, measured when it is initialised
(:func:`fit_hyperparameters_`): scikit-learn's ``BayesianGaussianMixture`` prior, with a Gamma per
coordinate for its Wishart.

**In the Pyro model** the parameters become sample sites outside the data plate,
``layer{n}.weights``, ``layer{n}.precision`` and ``layer{n}.means`` (:func:`sample_parameters`), and
the layer computes with the values these sites take.  The stack's own guide puts a ``Delta`` at the
layer's parameters on each (:func:`point_sites`), so its ELBO is the negative log posterior and SVI
is MAP; Pyro's ``AutoDelta`` on the exposed sites is the same estimator with parameters of its own
(:meth:`Stack.assign_point_values_ <pyro_dcgmm.model.stack.Stack.assign_point_values_>` writes them
back), and a mean-field ``Dirichlet`` guide on the weights sites is variational Bayes for them.
A pruned component leaves the prior: its concentration becomes 1, which adds nothing.

**MAP-EM.**  Online EM (:mod:`pyro_dcgmm.training.em`) keeps per-sample statistics; over a data set
of N samples the expected counts are ``n = N S0``, ``t1 = N S1``, ``t2 = N S2``, and the M-step
that maximises the expected complete log-likelihood plus the log prior is

.. math:: \\pi_k \\propto \\max(n_k + a_0 - 1, 0), \\quad
          \\mu_k = \\frac{t1_k + k_0 m}{n_k + k_0}, \\quad
          p_k = \\frac{n_k + \\nu_0 - 1}{t2_k - 2 \\mu_k t1_k + \\mu_k^2 n_k + k_0 (\\mu_k - m)^2 + \\nu_0 s},

the precision clamped to the layer's bounds; a component whose weight mode is zero is pruned.
With ``weight_posterior = "mean_field"`` the weights' posterior is ``Dirichlet(a0 + n)`` instead and
the components are scored with ``exp E[log pi_k] ∝ exp digamma(a0 + n_k)``, which starves the
components the data barely use (variational Bayes, as scikit-learn's estimator does).
"""

from __future__ import annotations

import contextlib

import pyro
import pyro.distributions as dist
import torch

from pyro_dcgmm.model.gmm import GMM

MEAN_FIELD_FLOOR = 1e-30  # smallest mean-field weight kept, so its log stays finite


def has_priors(gmm) -> bool:
    """Whether the layer has any prior (else it is a maximum-likelihood layer)."""
    config = gmm.config
    return config.weight_concentration_prior is not None or config.mean_precision_prior is not None


def degrees_of_freedom(gmm) -> float:
    """``v0`` of the Normal-Gamma prior: the configured value, or the patch dimension D."""
    value = gmm.config.degrees_of_freedom_prior
    return float(gmm.means.shape[-1]) if value is None else value


def weight_prior(gmm) -> dist.Distribution:
    """``Dirichlet(a0)`` over each mixture's weights (concentration 1 for pruned components), as
    one event over all the layer's mixtures."""
    a0 = gmm.config.weight_concentration_prior
    concentration = torch.where(gmm.active, a0, 1.0).to(gmm.means.dtype)  # (K,) or (H', W', K)
    return dist.Dirichlet(concentration).to_event(concentration.dim() - 1)


def precision_prior(gmm) -> dist.Distribution:
    """``Gamma(v0 / 2, v0 s / 2)`` on every diagonal precision (..., K, D), one event."""
    v0 = degrees_of_freedom(gmm)
    rate = (0.5 * v0 * gmm.prior_variance).expand(gmm.means.shape)
    return dist.Gamma(torch.full_like(rate, 0.5 * v0), rate).to_event(rate.dim())


def means_prior(gmm, precision: torch.Tensor) -> dist.Distribution:
    """``Normal(m, 1 / (k0 p))`` on every mean (..., K, D) given the precisions ``p``, one event."""
    scale = (gmm.config.mean_precision_prior * precision).rsqrt()
    return dist.Normal(gmm.prior_mean.expand(gmm.means.shape), scale).to_event(scale.dim())


def layers_with_priors(stack) -> list[tuple[str, GMM]]:
    """``(name within the stack, layer)`` of every GMM layer with priors."""
    return [
        (name, module)
        for name, module in stack.named_modules()
        if isinstance(module, GMM) and has_priors(module)
    ]


def sample_parameters(stack) -> dict[str, torch.Tensor]:
    """Every prior site of the stack (outside every plate); returns the values they give the
    parameters, keyed by parameter name within the stack, for :func:`substituted`."""
    return {
        f"{name}.{parameter}": value
        for name, gmm in layers_with_priors(stack)
        for parameter, value in _sample_layer(gmm).items()
    }


def point_sites(stack) -> None:
    """The point guide: a ``Delta`` at the current parameters on every prior site of the stack."""
    for site, value in point_values(stack).items():
        pyro.sample(site, dist.Delta(value, event_dim=value.dim()))


def point_values(stack) -> dict[str, torch.Tensor]:
    """The current parameters as the stack's prior sites see them, by site name."""
    return {
        gmm.site(suffix): value
        for _, gmm in layers_with_priors(stack)
        for suffix, value in _layer_values(gmm).items()
    }


def log_prior(stack) -> torch.Tensor:
    """Log prior density of the stack's current parameters (0 without priors)."""
    return sum((_layer_log_prior(gmm) for _, gmm in layers_with_priors(stack)), torch.zeros(()))


@torch.no_grad()
def assign_point_values_(stack, values: dict[str, torch.Tensor]) -> None:
    """Set the parameters of the layers with priors from values of their sites (missing sites
    leave their parameters alone)."""
    for _, gmm in layers_with_priors(stack):
        if gmm.site("weights") in values:
            gmm.set_mixing_weights_(values[gmm.site("weights")].clamp_min(torch.finfo(gmm.means.dtype).tiny))
        if gmm.site("precision") in values:
            gmm.covariance.log_precision.copy_(values[gmm.site("precision")].log())
        if gmm.site("means") in values:
            gmm.means.copy_(values[gmm.site("means")])
        gmm.project_()


def _layer_values(gmm) -> dict[str, torch.Tensor]:
    """The layer's current parameters as its prior sites see them: site suffix to value."""
    values = {}
    if gmm.config.weight_concentration_prior is not None:
        values["weights"] = gmm.mixing_weights()
    if gmm.config.mean_precision_prior is not None:
        values["precision"] = gmm.covariance.precision
        values["means"] = gmm.means
    return values


def _sample_layer(gmm) -> dict[str, torch.Tensor]:
    """The layer's prior sites; returns the values they give its parameters, by name in the layer."""
    values = {}
    if gmm.config.weight_concentration_prior is not None:
        weights = pyro.sample(gmm.site("weights"), weight_prior(gmm))
        values["mixing_logits"] = weights.clamp_min(torch.finfo(weights.dtype).tiny).log()
    if gmm.config.mean_precision_prior is not None:
        precision = pyro.sample(gmm.site("precision"), precision_prior(gmm))
        values["covariance.log_precision"] = precision.log()
        values["means"] = pyro.sample(gmm.site("means"), means_prior(gmm, precision))
    return values


def _layer_log_prior(gmm) -> torch.Tensor:
    """Log prior density of the layer's current parameters."""
    values = _layer_values(gmm)
    total = torch.zeros((), dtype=gmm.means.dtype, device=gmm.means.device)
    if "weights" in values:
        total = total + weight_prior(gmm).log_prob(values["weights"])
    if "means" in values:
        total = total + precision_prior(gmm).log_prob(values["precision"])
        total = total + means_prior(gmm, values["precision"]).log_prob(values["means"])
    return total


@contextlib.contextmanager
def substituted(module: torch.nn.Module, values: dict[str, torch.Tensor]):
    """Run with the named parameters of ``module`` replaced by the tensors ``values`` (as
    ``torch.func.functional_call`` does for a whole call), so gradients flow to what gave them."""
    replaced = []
    try:
        for name, value in values.items():
            owner_name, _, attribute = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            replaced.append((owner, attribute, owner._parameters[attribute]))
            owner._parameters[attribute] = value
        yield
    finally:
        for owner, attribute, parameter in reversed(replaced):
            owner._parameters[attribute] = parameter


@torch.no_grad()
def fit_hyperparameters_(gmm, x: torch.Tensor) -> None:
    """Centre the Normal-Gamma prior on the layer's input vectors ``x`` (P, M, D): their mean and
    variance per mixture."""
    if gmm.config.mean_precision_prior is None:
        return
    shape = gmm.prior_mean.shape
    variance = x.var(1, correction=0).clamp_min(1.0 / gmm.config.precision_ceiling)  # (P, D)
    gmm.prior_mean.copy_(x.mean(1).reshape(shape))
    gmm.prior_variance.copy_(variance.reshape(shape))


@torch.no_grad()
def maximise_components(gmm, counts: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, alive) -> None:
    """MAP-EM's M-step of the means and diagonal precisions under the Normal-Gamma prior, from the
    data set's expected ``counts`` (..., K) and sums ``s1``, ``s2`` (..., K, D) of the vectors and
    their squares; components not ``alive`` keep their parameters."""
    k0, v0 = gmm.config.mean_precision_prior, degrees_of_freedom(gmm)
    m, s = gmm.prior_mean, gmm.prior_variance  # (..., 1, D)
    n = counts.unsqueeze(-1)  # (..., K, 1)
    means = (s1 + k0 * m) / (n + k0)  # (..., K, D)
    spread = s2 - 2.0 * means * s1 + means * means * n + k0 * (means - m) ** 2 + v0 * s
    log_precision = ((n + v0 - 1.0) / spread).log().clamp(*gmm.log_precision_bounds)
    keep = alive.unsqueeze(-1)
    gmm.means.copy_(torch.where(keep, means, gmm.means))
    gmm.covariance.log_precision.copy_(torch.where(keep, log_precision, gmm.covariance.log_precision))


@torch.no_grad()
def maximise_weights(gmm, counts: torch.Tensor) -> None:
    """MAP-EM's M-step of the weights under the Dirichlet prior, from the data set's expected
    ``counts`` (..., K), by ``weight_posterior``."""
    if gmm.config.weight_posterior == "map":
        _weights_mode(gmm, counts)
    else:
        _mean_field_weights(gmm, counts)


def _weights_mode(gmm, counts: torch.Tensor) -> None:
    """Dirichlet MAP weights; components whose mode is zero are pruned (never a mixture's heaviest)."""
    mode = (counts + gmm.config.weight_concentration_prior - 1.0).clamp_min(0.0)  # (..., K)
    gmm.prune_(((mode <= 0) & gmm.active).reshape(-1, gmm.components), counts.reshape(-1, gmm.components))
    mode = torch.where((mode <= 0) & gmm.active, counts, mode)  # the heaviest, which pruning keeps
    gmm.set_mixing_weights_(mode.clamp_min(torch.finfo(counts.dtype).tiny))


def _mean_field_weights(gmm, counts: torch.Tensor) -> None:
    """Weights ``exp E[log pi]`` under the mean-field posterior ``Dirichlet(a0 + n)``."""
    concentration = counts + gmm.config.weight_concentration_prior
    expected_log = torch.digamma(concentration) - torch.digamma(concentration.sum(-1, keepdim=True))
    gmm.set_mixing_weights_(expected_log.exp().clamp_min(MEAN_FIELD_FLOOR))
