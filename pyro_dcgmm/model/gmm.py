"""GMM: a Gaussian mixture over every patch vector, as a Pyro model.

The layer owns the means ``mu`` and the mixing weights ``pi``; its covariance structure
(:mod:`pyro_dcgmm.model.covariances`: diagonal, full or stationary) computes the (N, K, H', W') table
``log N(patch | mu_k, Sigma_k)`` by matmuls or convolutions.  The layer's Pyro model, inside plates
over data, height and width, is ::

    z ~ Categorical(pi)                                  # enumerated, shape (K, 1, 1, 1)
    pyro.factor("obs", Vindex(S - log pi)[..., z])       # S: the annealed log-score table

where ``S = (log pi + log N) @ g.T`` is the log-score table smoothed by the torus neighbourhood ``g``
of :mod:`pyro_dcgmm.model.annealing`.  Enumerating ``z`` gives ``logsumexp_k S_k``, a lower bound on
``log p(x)`` that equals it once ``g`` is the identity; then the factor is exactly
``log N(x | mu_z, Sigma_z)`` and the model is the plain mixture.
"""

from __future__ import annotations

import contextlib
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from pyro_dcgmm.config import GMMConfig, from_dict
from pyro_dcgmm.inference.sampling import ComponentLikelihood
from pyro_dcgmm.model.annealing import AnnealingSchedule
from pyro_dcgmm.model.covariances import Geometry, make_covariance
from pyro_dcgmm.model.fold import Fold, fold_back, is_lossless
from pyro_dcgmm.model.layer import (
    PRUNED_LOGIT,
    Layer,
    Shape,
    check_parameter_memory,
    class_log_likelihood,
    component_classes,
    component_map,
    local_params,
    record,
    window_output_size,
)
from pyro_dcgmm.model.logsumexp import component_logsumexp, table_log_likelihood
from pyro_dcgmm.model.outputs import layer_output, output_range
from pyro_dcgmm.model.subnormal import SubnormalGradientFlushed


class GMM(Layer):
    """Gaussian mixture of ``components`` over every patch vector of its input.

    The layer passes its responsibilities (posterior over components, (N, K, H', W')) upward,
    detached, so that it trains only on its own log-likelihood.

    :param int components: number of components K.
    :param bool shared: one mixture for all positions (True) or one per position (False).
    :param options: any other field of :class:`~pyro_dcgmm.config.GMMConfig`.

    Parameters (after :meth:`build`): ``means`` of shape (K, D) when shared or (H', W', K, D) per
    position, ``mixing_logits`` of shape (K,) or (H', W', K), and those of ``covariance`` (the
    :class:`~pyro_dcgmm.model.covariances.Covariance` that ``config.covariance`` names, kept inside the
    precision bounds by :meth:`project_`).  The buffer ``initialised`` records whether the
    data-dependent initialisation (:mod:`pyro_dcgmm.training.initialisation`) has run, so a resumed run
    never initialises again.
    """

    config_class = GMMConfig

    def __init__(self, components: int = 25, shared: bool = True, **options):
        super().__init__(from_dict(GMMConfig, {"components": components, "shared": shared, **options}, "GMM"))

    def _init_state(self) -> None:
        config = self.config
        self.patch = (1, 1)
        self.stride = (1, 1)
        width = (
            config.width_init if config.width_init is not None else 0.25 * math.sqrt(2.0 * config.components)
        )
        self.schedule = AnnealingSchedule(
            width if config.annealing else config.width_floor,
            config.width_floor,
            config.width_decay,
            config.plateau_window,
            config.plateau_tolerance,
        )

    @property
    def components(self) -> int:
        return self.config.components

    def build(self, input_shape: Shape, fold: Fold | None = None) -> Shape:
        """Create the parameters for input (C, H, W); ``fold`` is an absorbed Fold below."""
        channels, height, width = input_shape
        if fold is not None:
            fold.build(input_shape)
            self.patch, self.stride = fold.patch, fold.stride
        out_h = window_output_size(height, self.patch[0], self.stride[0], "GMM patch height")
        out_w = window_output_size(width, self.patch[1], self.stride[1], "GMM patch width")
        dim = channels * self.patch[0] * self.patch[1]
        k = self.config.components
        shape = (k, dim) if self.config.shared else (out_h, out_w, k, dim)
        geometry = Geometry(
            channels, self.patch, self.stride, k, () if self.config.shared else (out_h, out_w)
        )
        self.covariance = make_covariance(self.config.covariance, geometry, self.log_precision_bounds)
        count = math.prod(shape) + math.prod(shape[:-1]) + self.covariance.parameter_count()
        check_parameter_memory(count, f"GMM with K={k} {self.config.covariance} components on D={dim}")
        means = (2.0 * torch.rand(shape) - 1.0) * self.config.mean_init_scale
        self.means = torch.nn.Parameter(self.covariance.project_means(means))
        start = max(self.config.precision_init, self.config.precision_floor)
        self.covariance.build(math.log(min(start, self.config.precision_ceiling)))
        self.mixing_logits = torch.nn.Parameter(torch.zeros(shape[:-1]))
        self.register_initialised(self.config.init == "random")
        self.register_buffer("active", torch.ones(shape[:-1], dtype=torch.bool))
        self.pruned = False  # whether ``active`` has a false entry (kept by prune_ and loading)
        self.register_load_state_dict_post_hook(self._note_loaded_pruning)
        if self.config.mean_precision_prior is not None:  # the Normal-Gamma prior's centre and scale
            self.register_buffer("prior_mean", torch.zeros(*shape[:-2], 1, dim))
            self.register_buffer("prior_variance", torch.ones(*shape[:-2], 1, dim))
        self.input_shape = input_shape
        self.output_shape = (k, out_h, out_w)
        return self.output_shape

    @property
    def positions(self) -> int:
        """Patch vectors per sample that one mixture models: H' W' when shared, 1 per position."""
        _, out_h, out_w = self.output_shape
        return out_h * out_w if self.config.shared else 1

    @property
    def log_precision_bounds(self) -> tuple[float, float]:
        """``(log precision_floor, log precision_ceiling)``: where every log-precision must lie."""
        return math.log(self.config.precision_floor), math.log(self.config.precision_ceiling)

    def project_(self) -> None:
        """Bring the parameters back inside their constraints after a step: precisions into
        ``[precision_floor, precision_ceiling]``, and what the covariance structure needs."""
        self.covariance.project_(self.means)

    @property
    def neighbourhood_width(self) -> float:
        """Current width of the annealing neighbourhood (its floor once annealing has finished)."""
        return self.schedule.width

    def get_extra_state(self) -> dict:
        return {"schedule": self.schedule.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.schedule.load_state_dict(state["schedule"])

    @property
    def annealing_finished(self) -> bool:
        return self.schedule.finished

    def _active_logits(self) -> torch.Tensor:
        """The mixing logits with pruned components' set to :data:`PRUNED_LOGIT` (weight zero)."""
        return self.mixing_logits.masked_fill(~self.active, PRUNED_LOGIT)

    def log_mixing(self) -> torch.Tensor:
        """Log mixing weights, (K,) or (H', W', K); pruned components have weight zero."""
        return torch.log_softmax(self._active_logits(), dim=-1)

    def mixing_weights(self) -> torch.Tensor:
        """Mixing weights, (K,) or (H', W', K); pruned components have weight zero."""
        return torch.softmax(self._active_logits(), dim=-1)

    # The write API: how initialisation, re-seeding, pruning and online EM change the parameters.

    @torch.no_grad()
    def set_mixing_weights_(self, weights: torch.Tensor) -> None:
        """Mixing weights proportional to ``weights`` (positive; the mixing logits' shape, or (P, K))."""
        self.mixing_logits.copy_(weights.log().reshape(self.mixing_logits.shape))

    @torch.no_grad()
    def set_components_(self, means: torch.Tensor, covariance_values: dict, where=None) -> None:
        """Set the means (P, K, D) and the covariance structure's values (its ``fit``) of the
        components where ``where`` (P, K) is true (``None``: all)."""
        means = self.covariance.project_means(means)
        current = self.means.view(-1, self.components, self.means.shape[-1])
        means = means.reshape(current.shape)
        current.copy_(means if where is None else torch.where(where.unsqueeze(-1), means, current))
        self.covariance.assign_(covariance_values, where=where)

    @torch.no_grad()
    def prune_(self, dead: torch.Tensor, weights: torch.Tensor | None = None) -> int:
        """Remove the components where ``dead`` (P, K) is true but each mixture's heaviest by
        ``weights`` (P, K; the mixing weights by default), so that no mixture is left without
        components; returns how many were removed."""
        weights = self.mixing_weights().view(-1, self.components) if weights is None else weights
        dead = dead & ~torch.nn.functional.one_hot(weights.argmax(-1), self.components).bool()
        self.active.view(-1, self.components)[dead] = False
        count = int(dead.sum())
        self.pruned = self.pruned or count > 0
        return count

    def _note_loaded_pruning(self, module, incompatible_keys) -> None:
        """After ``load_state_dict``: whether the loaded ``active`` mask has pruned components."""
        self.pruned = not bool(self.active.all())

    def log_prob_table(self, x: torch.Tensor, mask=None, offset=None) -> torch.Tensor:
        """Component log-densities ``log N(patch | mu_k, p_k)`` of shape (N, K, H', W'), laid out
        with the components last in memory (channels-last), so that every operation over the
        components reads contiguous memory and the layer above convolves channels-last inputs.

        With a boolean ``mask`` (N, C, H, W) of observed entries, the missing ones are marginalised;
        ``offset`` (K,) or (H', W', K) is added at every position (in the table's bias).
        """
        self._require_built()
        table = self.covariance.log_prob_table(x, self.means, mask, offset)
        return table.contiguous(memory_format=torch.channels_last)

    def log_scores(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log pi_k + log N(patch | mu_k, p_k)`` of shape (N, K, H', W'), channels-last."""
        return self.log_prob_table(x, mask, self.log_mixing())

    def log_mixing_map(self) -> torch.Tensor:
        """``log pi`` laid out like a table, (1, K, 1 | H', 1 | W'): log-scores minus it are the
        log-densities."""
        return self._component_map(self.log_mixing())

    def output(self, scores: torch.Tensor) -> torch.Tensor:
        """What the layer passes upward from its log-scores (N, K, H', W'), by ``config.output``
        (:mod:`pyro_dcgmm.model.outputs`)."""
        active = self._component_map(self.active) if self.pruned else None  # (1, K, 1 | H', 1 | W')
        return layer_output(self.config.output, scores, self.log_mixing_map, active)

    def component_classes(self) -> torch.Tensor:
        """The class of every component (K,) of a layer split by class (``config.classes`` = C):
        component k belongs to class ``k // (K / C)``."""
        return component_classes(self.components, self.config.classes, self.means.device)

    def class_log_likelihood(self, classes: torch.Tensor) -> torch.Tensor:
        """``log p(class | z = k)`` (n, K, 1, 1) of a layer split by class: 0 for the components of
        each sample's class, ``PRUNED_LOGIT`` for the others."""
        return class_log_likelihood(self.components, self.config.classes, classes, self.means.dtype)

    def _component_map(self, values: torch.Tensor) -> torch.Tensor:
        """Per-component ``values`` (K,) or (H', W', K) laid out like a table: (1, K, 1 | H', 1 | W')."""
        return component_map(values, self.config.shared)

    @property
    def output_range(self) -> tuple[float, float]:
        """The interval :meth:`output` values lie in."""
        return output_range(self.config.output, self.components)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """What the layer passes upward (:meth:`output`), shape (N, K, H', W')."""
        return self.output(self.log_scores(x))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample log-likelihood (N,): the sum over positions of ``log p(patch)``."""
        return table_log_likelihood(self.log_scores(x))

    def annealed_log_scores(self, x: torch.Tensor, annealed: bool = True):
        """Log-scores (N, K, H', W') and the table the objective uses, (N, H', W', K).

        The table is the log-score table smoothed by the torus neighbourhood while annealing runs
        (and ``annealed`` is true; the scores' gradients then flushed of subnormal numbers, which
        :func:`~pyro_dcgmm.model.logsumexp.component_logsumexp` does otherwise), the log-score table
        itself otherwise.
        """
        scores = self.log_scores(x)  # (N, K, H', W')
        if not annealed or self.annealing_finished:
            return scores, scores.permute(0, 2, 3, 1)  # (N, H', W', K)
        table = SubnormalGradientFlushed.apply(scores).permute(0, 2, 3, 1)
        neighbourhood = self.schedule.neighbourhood(self.components, table.dtype, table.device)
        return scores, table @ neighbourhood.T  # (N, H', W', K)

    def model(
        self, x: torch.Tensor, *, labels=None, annealed: bool = True, enumerated: bool = True
    ) -> torch.Tensor:
        """This layer's sites; must run inside a data plate.

        With ``enumerated=True`` the sites are ``z`` (component, enumerated in parallel) and
        ``obs`` (factor ``Vindex(table - log pi)[..., z]``).  With ``enumerated=False`` the
        component is marginalised in closed form: one factor ``obs = logsumexp_k table`` per
        position and no ``z`` site.  Both give ``TraceEnum_ELBO`` the same loss and gradients (the
        closed form is faster); queries such as ``compute_marginals`` and ``infer_discrete`` need
        the enumerated site.  A deterministic site ``objective`` records, detached, what the
        layer maximises at every position (``logsumexp_k table``: the log-likelihood once
        annealing is over), so that a trace of the model tells every layer's loss apart.

        :param torch.Tensor x: layer input (N, C, H, W).
        :param torch.Tensor labels: class indices (N,) or ``None``; a layer split by class
            (``config.classes``) then scores every sample with its class's components only.
        :param bool annealed: use the neighbourhood-smoothed table while annealing is unfinished;
            ``False`` always gives the exact mixture.
        :returns: detached responsibilities (N, K, H', W').
        """
        scores, table = self.annealed_log_scores(x, annealed)
        if labels is not None and self.config.classes:
            table = table + self.class_log_likelihood(labels).permute(0, 2, 3, 1)  # within the class
        _, out_h, out_w = self.output_shape
        log_p = component_logsumexp(table.detach() if enumerated else table)  # (N, H', W'): factor, record
        with self._position_plate("h", out_h, -2), self._position_plate("w", out_w, -1):
            record(self.site("objective"), log_p.detach())
            if enumerated:
                log_mixing = self.log_mixing()  # (K,) or (H', W', K)
                z = pyro.sample(
                    self.site("z"),
                    dist.Categorical(logits=log_mixing),
                    infer={"enumerate": "parallel"},
                )  # (K, 1, 1, 1) when enumerated
                pyro.factor(self.site("obs"), Vindex(table - log_mixing)[..., z])  # (K, N, H', W')
            else:
                pyro.factor(self.site("obs"), log_p)
        return self.output(scores.detach())

    def generate(
        self,
        n: int,
        component_logits: torch.Tensor | None = None,
        divisor: float = 1.0,
        mean: bool = False,
    ) -> torch.Tensor:
        """The layer's generative Pyro program, without observations: patch vectors for ``n`` samples.

        Sites ``z ~ Categorical(logits)`` (component per position) and ``x ~ N(mu_z, Sigma_z /
        divisor^2)`` (the patch vector; a deterministic site holding ``mu_z`` when ``mean``).  Fix the
        components with ``poutine.condition(gmm.generate, data={"z": ...})``.

        :param torch.Tensor component_logits: (n, H', W', K) logits of the component at every
            position; ``None`` draws from the mixing weights.
        :returns: patch vectors of shape (n, D, H', W').
        """
        self._require_built()
        _, out_h, out_w = self.output_shape
        logits = self.log_mixing() if component_logits is None else component_logits
        with (
            pyro.plate(self.site("samples"), n, dim=-3),
            self._position_plate("h", out_h, -2),
            self._position_plate("w", out_w, -1),
        ):
            z = pyro.sample(self.site("z"), dist.Categorical(logits=logits))  # (n, H', W')
            select = self._selector(z.expand(n, out_h, out_w))
            loc = select(self.means)  # (n, H', W', D)
            if mean:
                x = pyro.deterministic(self.site("x"), loc, event_dim=1)
            else:
                x = pyro.sample(self.site("x"), self.covariance.distribution(loc, select, divisor))
        return x.permute(0, 3, 1, 2)  # (n, D, H', W')

    def _selector(self, z: torch.Tensor):
        """``select(parameter)``: a per-component parameter (..., K, ...) at components ``z`` (n, H', W')."""
        if self.config.shared:
            return lambda parameter: parameter[z]
        rows = torch.arange(z.shape[1], device=z.device)[:, None]
        columns = torch.arange(z.shape[2], device=z.device)
        return lambda parameter: parameter[rows, columns, z]

    @property
    def lossless_down(self) -> bool:
        return is_lossless(self.patch, self.stride)

    def sample_down(self, signal, n, options, evidence: torch.Tensor | None = None):
        """Draw a component per position and sample this layer's input (n, C, H, W).

        ``signal`` (n, K, H', W') weighs the components at every position (responsibilities from a
        variant's forward pass, or patches sampled by the layer above); only its ``top_s`` largest
        non-negative entries are kept.  A :class:`~pyro_dcgmm.inference.sampling.ComponentLikelihood` (class
        evidence from a Readout) is combined with the mixing weights by Bayes' rule instead.
        Positions without a positive weight, and every position when ``signal`` is ``None``, draw
        from the mixing weights.  ``evidence`` (n, K, H', W'), the log-likelihood of the observed
        part of every patch under every component (in-painting: :meth:`log_prob_table` with a mask),
        is added to the logits, so a component is drawn given what is seen of its patch too.
        """
        logits = None
        if isinstance(signal, ComponentLikelihood):  # evidence: the whole posterior, no top-S cut
            logits = self.log_mixing() + signal.log_likelihood.permute(0, 2, 3, 1)  # (n, H', W', K)
        elif signal is not None:
            weights = signal.permute(0, 2, 3, 1).clamp_min(0.0)  # (n, H', W', K)
            top = min(options.top_s, self.components)
            threshold = weights.topk(top, dim=-1).values[..., -1:]  # (n, H', W', 1)
            weights = torch.where(weights >= threshold, weights, 0.0)
            log_mixing = self.log_mixing().expand(weights.shape)
            informed = weights.sum(-1, keepdim=True) > 0
            logits = torch.where(informed, weights.log(), log_mixing)  # (n, H', W', K)
        if evidence is not None:
            logits = (self.log_mixing() if logits is None else logits) + evidence.permute(0, 2, 3, 1)
        patches = self.generate(n, logits, options.divisor, options.mean)  # (n, D, H', W')
        return fold_back(patches, self.input_shape[1:], self.patch, self.stride)  # (n, C, H, W)

    def _position_plate(self, name: str, size: int, dim: int):
        """Plate over one spatial axis; a single position needs none (and Pyro's
        ``compute_marginals`` mishandles plates of size one)."""
        return pyro.plate(self.site(name), size, dim=dim) if size > 1 else contextlib.nullcontext()

    @local_params
    def forward(self, x: torch.Tensor, annealed: bool = True, enumerated: bool = True) -> torch.Tensor:
        """Stand-alone Pyro model of this layer on inputs ``x`` of shape (N, C, H, W)."""
        with pyro.plate("data", x.shape[0], dim=-3):
            return self.model(x, annealed=annealed, enumerated=enumerated)

    def parameter_groups(self) -> list[tuple[list[torch.nn.Parameter], float]]:
        """(parameters, learning-rate factor) pairs for the optimiser."""
        return [
            ([self.means], self.config.means_lr_scale),
            (list(self.covariance.parameters()), self.config.precision_lr_scale),
            ([self.mixing_logits], self.config.mixing_lr_scale),
        ]
