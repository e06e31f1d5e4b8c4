"""Online EM for GMM layers, driven by the ``TraceEnum_ELBO`` gradient.

Written out here for diagonal covariances; the full and stationary structures of
:mod:`pyro_dcgmm.model.covariances` recover their own statistics from their gradients the same way.
For one GMM layer write ``r_vk`` for the posterior of component k given patch vector v (Pyro's
enumeration of the component site computes it; while annealing runs it is the smoothed posterior),
``m`` for the number of vectors per sample that one mixture sees (H' W' for a shared layer, 1 for
each mixture of a per-position layer), and the per-sample sufficient statistics of a batch of B
samples

.. math:: s0_k = \\tfrac1B \\sum_v r_{vk}, \\quad s1_k = \\tfrac1B \\sum_v r_{vk} x_v,
          \\quad s2_k = \\tfrac1B \\sum_v r_{vk} x_v^2 .

Training minimises ``L = -(1/B) sum_v log p(x_v)``.  With ``pi = softmax(a)``, diagonal precisions
``p = exp(l)`` and ``Q_k = s2_k - 2 mu_k s1_k + mu_k^2 s0_k``, its gradient is

.. math:: -\\partial L / \\partial a_k = s0_k - m \\pi_k, \\quad
          -\\partial L / \\partial \\mu_k = p_k (s1_k - s0_k \\mu_k), \\quad
          -\\partial L / \\partial l_k = \\tfrac12 (s0_k - p_k Q_k),

so the statistics are recovered exactly from the gradient (the E-step *is* the ELBO gradient):

.. math:: s0 = m \\pi - \\partial_a L, \\quad s1 = s0 \\mu - \\partial_\\mu L / p, \\quad
          s2 = (s0 + 2 \\partial_l L) / p + 2 \\mu s1 - \\mu^2 s0 .

Online EM (Cappé and Moulines, 2009) keeps running averages ``S <- S + rho_t (s - S)`` with
``rho_t = (t + t0)^-kappa`` (``0.5 < kappa <= 1``) and sets the parameters to the M-step of ``S``:
``pi = S0 / sum S0``, ``mu = S1 / S0``, ``1 / p = S2 / S0 - mu^2``, the precision clamped to the
layer's bounds (the same variance floor as scikit-learn's ``reg_covar``).  Equivalently each
parameter moves by a natural-gradient step: for the means ``mu <- mu + rho (s0 / S0) (-dL/dmu) /
(s0 p)``, the gradient rescaled per component by its responsibility mass and precision.  With
``rho = 1`` on the whole data set one step is exactly one step of batch EM (tested).  A component
with no mass keeps its parameters.  A layer with priors (:mod:`pyro_dcgmm.model.priors`) takes the
M-step of the posterior from the data set's expected counts ``N S`` instead (MAP-EM); its
gradient must then be the likelihood's alone, which the trainer's ``priors=False`` model gives.
"""

from __future__ import annotations

import math

import torch

from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.priors import has_priors, maximise_components, maximise_weights
from pyro_dcgmm.model.tree import Tree

TINY_MASS = 1e-12


def step_size(t: int, offset: float, decay: float, batch_multiple: float = 1.0) -> float:
    """Step size of step ``t`` on mini-batches of ``batch_multiple`` times the reference batch.

    The reference schedule is ``rho_j = (j + offset)^-decay`` (``decay = 0`` gives 1: batch EM on
    full batches).  A running average keeps ``prod (1 - rho_j)`` of what it held before steps j, so
    a step on a larger batch takes the reference steps over the same samples at once: with
    ``m = batch_multiple`` it covers ``[t m, (t + 1) m)`` and keeps ``prod_j (1 - rho_j)^o_j``, ``o_j``
    the part of reference step ``j`` it covers.  Every sample then weighs in the statistics as it
    would at the reference batch, and ``m = 1`` is the reference schedule itself.
    """
    start, end = t * batch_multiple, (t + 1) * batch_multiple
    log_kept, j = 0.0, math.floor(start)
    while j < end:
        rho = (j + offset) ** -decay
        if rho >= 1.0:
            return 1.0
        log_kept += (min(j + 1, end) - max(j, start)) * math.log1p(-rho)
        j += 1
    return -math.expm1(log_kept)


class OnlineEM(torch.optim.Optimizer):
    """Online EM for the given GMM layers: one parameter group per layer.

    ``s0`` comes from the mixing logits' gradient here; each layer's covariance structure turns the
    means' and its own gradients into (s1, s2) and does the M-step
    (:class:`~pyro_dcgmm.model.covariances.Covariance`).  A layer whose parameters received no gradient
    in a step (a waiting layer) is left alone.

    :param gmms: the GMM layers (built and initialised).
    :param float step_offset: ``t0`` of the step-size schedule.
    :param float step_decay: ``kappa`` of the step-size schedule.
    :param int num_data: size of the training set, which weighs the data against the priors of
        layers that have them (needed only then).
    :param float batch_multiple: mini-batch size over the batch size the schedule is set for
        (:func:`step_size`).
    """

    def __init__(
        self,
        gmms: list[GMM],
        step_offset: float = 2.0,
        step_decay: float = 0.6,
        num_data: int | None = None,
        batch_multiple: float = 1.0,
    ):
        groups = [{"params": list(gmm.parameters())} for gmm in gmms]
        super().__init__(groups, {"step_offset": step_offset, "step_decay": step_decay})
        self.gmms = list(gmms)
        self.batch_multiple = batch_multiple
        if num_data is None and any(has_priors(gmm) for gmm in self.gmms):
            raise ConfigError("online EM with priors (MAP-EM) needs num_data, the training set's size")
        self.num_data = num_data

    @torch.no_grad()
    def step(self, closure=None):
        for group, gmm in zip(self.param_groups, self.gmms, strict=True):
            if any(p.grad is None for p in group["params"]):
                continue
            state = self.state[gmm.means]
            if not state:
                state["step"] = 0
                state["statistics"] = parameter_statistics(gmm)
            statistics = batch_statistics(gmm)
            rho = step_size(state["step"], group["step_offset"], group["step_decay"], self.batch_multiple)
            for running, new in zip(state["statistics"], statistics, strict=True):
                running.add_(new - running, alpha=rho)
            state["step"] += 1
            maximise(gmm, state["statistics"], self.num_data)


def batch_statistics(gmm: GMM):
    """Per-sample statistics (s0 (..., K), then the covariance structure's s1, s2) of the batch,
    from the gradient."""
    s0 = gmm.positions * gmm.mixing_weights() - gmm.mixing_logits.grad
    return (s0, *gmm.covariance.batch_statistics(s0, gmm.means))


def parameter_statistics(gmm: GMM):
    """The statistics whose M-step gives the current parameters."""
    s0 = gmm.positions * gmm.mixing_weights()
    return (s0, *gmm.covariance.current_statistics(s0, gmm.means))


def maximise(gmm: GMM, statistics, num_data: int | None = None) -> None:
    """M-step: set the parameters from the per-sample statistics; components without mass keep
    theirs.  The parameters with a prior take the posterior's M-step for a data set of
    ``num_data`` (the expected counts ``num_data * s``)."""
    s0, s1, s2 = statistics
    alive = s0 > TINY_MASS * s0.sum(-1, keepdim=True)  # (..., K)
    if gmm.config.mean_precision_prior is None:
        gmm.covariance.maximise(s0.clamp_min(TINY_MASS), s1, s2, alive, gmm.means)
    else:
        maximise_components(gmm, num_data * s0, num_data * s1, num_data * s2, alive)
    if gmm.config.weight_concentration_prior is None:
        gmm.set_mixing_weights_(s0.clamp_min(TINY_MASS * s0.sum(-1, keepdim=True)))
    else:
        maximise_weights(gmm, num_data * s0)


class JointOnlineEM(torch.optim.Optimizer):
    """Online EM for every layer of a joint stack (:class:`~pyro_dcgmm.model.joint.JointStack`) at once.

    The E-step of the whole tree is the backward pass of its closed-form log-likelihood: the
    gradient of the mean ``log p(x)`` with respect to a layer's normalised log-weights is the
    expected count of every (parent, child) pair, and with respect to the leaves' log-density table
    the posterior of every leaf component (the stack records both, :attr:`JointStack.counts`); the
    leaves' first and second moments come from their parameters' gradients as in :class:`OnlineEM`.
    Each layer keeps running averages of its statistics with step sizes ``(t + t0)^-kappa``, from
    the statistics of its parameters when it joins the tree, and sets its parameters to their
    M-step: a Tree layer's transitions (and the top's mixing weights) the normalised counts, floored
    at its ``probability_floor``; the leaves as in :func:`maximise` (their mixing weights become
    the components' share of the leaves).  With ``rho = 1`` on the whole data set a step is one
    step of batch EM on the tree.

    :param stack: the joint stack, trained through its closed-form objective.
    :param float step_offset: ``t0`` of the step-size schedule.
    :param float step_decay: ``kappa`` of the step-size schedule.
    :param float batch_multiple: as for :class:`OnlineEM`.
    """

    def __init__(self, stack, step_offset: float = 2.0, step_decay: float = 0.6, batch_multiple: float = 1.0):
        groups = [{"params": list(layer.parameters())} for layer in stack.mixture_layers]
        super().__init__(groups, {"step_offset": step_offset, "step_decay": step_decay})
        self.stack = stack
        self.batch_multiple = batch_multiple

    @torch.no_grad()
    def step(self, closure=None):
        top = self.stack.root_level
        for level, (group, layer) in enumerate(
            zip(self.param_groups, self.stack.mixture_layers, strict=True)
        ):
            if not self._trained(level, layer):
                continue
            batch = self._batch_statistics(level, layer, level == top)
            state = self.state[group["params"][0]]
            if len(state.get("statistics", ())) != len(batch):  # joining the tree, or leaving its top
                state.setdefault("step", 0)
                state["statistics"] = self._current_statistics(layer, batch)
            rho = step_size(state["step"], group["step_offset"], group["step_decay"], self.batch_multiple)
            for running, new in zip(state["statistics"], batch, strict=True):
                running.add_(new - running, alpha=rho)
            state["step"] += 1
            self._maximise(layer, state["statistics"])

    def _trained(self, level: int, layer) -> bool:
        """Whether this backward pass reached ``layer`` and it is not frozen (its gradients kept)."""
        name = "components" if level == 0 else "transitions"
        key_parameter = layer.means if level == 0 else layer.transition_logits
        return (level, name) in self.stack.counts and key_parameter.grad is not None

    def _batch_statistics(self, level: int, layer, top: bool) -> tuple:
        """This batch's statistics: a Tree layer's transition counts (and mixing counts at the top),
        the leaves' posterior mass and moments."""
        counts = self.stack.counts
        if level > 0:
            mixing = (counts[(level, "mixing")],) if top else ()
            return (counts[(level, "transitions")], *mixing)
        s0 = counts[(0, "components")]  # (K, H, W): the leaves' posterior mass per position
        s0 = s0.sum((1, 2)) if layer.config.shared else s0.permute(1, 2, 0)
        return (s0, *layer.covariance.batch_statistics(s0, layer.means))

    @staticmethod
    def _current_statistics(layer, batch: tuple) -> list[torch.Tensor]:
        """The statistics whose M-step gives ``layer``'s current parameters, with the masses of the
        ``batch`` statistics (each parent's, for the transitions; the leaves' per component)."""
        if isinstance(layer, Tree):
            transitions, *mixing = batch
            current = [transitions.sum(-1, keepdim=True) * layer.log_transitions().exp()]
            return current + [m.sum(-1, keepdim=True) * layer.log_mixing().exp() for m in mixing]
        s0 = batch[0]
        return [s0.clone(), *layer.covariance.current_statistics(s0, layer.means)]

    @staticmethod
    def _maximise(layer, statistics) -> None:
        if isinstance(layer, Tree):
            transitions, *mixing = statistics
            alive = transitions.sum(-1, keepdim=True) > TINY_MASS  # parents that were used
            transitions = torch.where(alive, transitions, layer.log_transitions().exp())
            layer.assign_(transitions, mixing[0] if mixing else None)
        else:
            maximise(layer, statistics)
