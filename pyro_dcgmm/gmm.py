"""GMM: a diagonal Gaussian mixture over every patch vector, as a Pyro model.

For a patch vector ``x`` of length D at position (h, w) and component k with mean ``mu_k`` and
diagonal precision ``p_k`` (1 / variance),

.. math:: \\log N(x | \\mu_k, p_k) = \\tfrac12 \\sum_d \\log p_{kd} - \\tfrac D2 \\log 2\\pi
          - \\tfrac12 \\sum_d p_{kd} (x_d - \\mu_{kd})^2 .

The quadratic expands to ``x^2 . p_k - 2 x . (mu_k p_k) + mu_k^2 . p_k``, so the (N, K, H, W) table of
all log-densities is two linear maps of ``x`` and ``x^2``: a convolution of the input image when the
parameters are shared over positions, a batched matmul over positions otherwise.  No
(N, H, W, K, D) tensor is ever formed.

The layer's Pyro model, inside plates over data, height and width, is ::

    z ~ Categorical(pi)                                  # enumerated, shape (K, 1, 1, 1)
    pyro.factor("obs", Vindex(S - log pi)[..., z])       # S: the annealed log-score table

where ``S = (log pi + log N) @ g.T`` is the log-score table smoothed by the torus neighbourhood ``g``
of :mod:`pyro_dcgmm.annealing`.  Enumerating ``z`` gives ``logsumexp_k S_k``, a lower bound on
``log p(x)`` that equals it once ``g`` is the identity; then the factor is exactly
``log N(x | mu_z, p_z)`` and the model is the plain mixture.
"""

from __future__ import annotations

import contextlib
import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroParam
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

from pyro_dcgmm.annealing import torus_neighbourhood
from pyro_dcgmm.config import GMMConfig, from_dict
from pyro_dcgmm.errors import ArchitectureError
from pyro_dcgmm.fold import Fold
from pyro_dcgmm.layer import Layer, Shape, local_params, window_output_size

LOG_2PI = math.log(2.0 * math.pi)


def diagonal_log_prob_shared(
    x: torch.Tensor,
    means: torch.Tensor,
    precision: torch.Tensor,
    stride: tuple[int, int],
) -> torch.Tensor:
    """Log-density of every patch of ``x`` under every component, parameters shared over positions.

    :param torch.Tensor x: images of shape (N, C, H, W).
    :param torch.Tensor means: shape (K, C, ph, pw).
    :param torch.Tensor precision: diagonal precisions, shape (K, C, ph, pw).
    :param stride: (vertical, horizontal) step between patches.
    :returns: table of shape (N, K, H', W').
    """
    dim = means[0].numel()
    inputs = torch.cat([x, x * x], dim=1)  # (N, 2C, H, W)
    weight = torch.cat([means * precision, -0.5 * precision], dim=1)  # (K, 2C, ph, pw)
    bias = 0.5 * (precision.log() - means * means * precision).flatten(1).sum(-1)  # (K,)
    return F.conv2d(inputs, weight, bias - 0.5 * dim * LOG_2PI, stride=stride)  # (N, K, H', W')


def diagonal_log_prob_per_position(
    x: torch.Tensor,
    means: torch.Tensor,
    precision: torch.Tensor,
    patch: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """Log-density of every patch of ``x`` under the components of its own position.

    :param torch.Tensor x: images of shape (N, C, H, W).
    :param torch.Tensor means: shape (H', W', K, D) with D = C * ph * pw.
    :param torch.Tensor precision: diagonal precisions, shape (H', W', K, D).
    :returns: table of shape (N, K, H', W').
    """
    out_h, out_w, k, dim = means.shape
    patches = F.unfold(x, patch, stride=stride)  # (N, D, L)
    inputs = torch.cat([patches, patches * patches], dim=1).permute(2, 0, 1)  # (L, N, 2D)
    means, precision = means.reshape(-1, k, dim), precision.reshape(-1, k, dim)  # (L, K, D)
    weight = torch.cat([means * precision, -0.5 * precision], dim=-1)  # (L, K, 2D)
    bias = 0.5 * (precision.log() - means * means * precision).sum(-1) - 0.5 * dim * LOG_2PI
    table = torch.baddbmm(bias.unsqueeze(1), inputs, weight.transpose(1, 2))  # (L, N, K)
    return table.permute(1, 2, 0).reshape(x.shape[0], k, out_h, out_w)  # (N, K, H', W')


class GMM(Layer):
    """Diagonal Gaussian mixture of ``components`` over every patch vector of its input.

    The layer passes its responsibilities (posterior over components, (N, K, H', W')) upward,
    detached, so that it trains only on its own log-likelihood.

    :param int components: number of components K.
    :param bool shared: one mixture for all positions (True) or one per position (False).
    :param options: any other field of :class:`~pyro_dcgmm.config.GMMConfig`.

    Parameters (after :meth:`build`): ``means`` and ``precision`` of shape (K, D) when shared or
    (H', W', K, D) per position, ``mixing_logits`` of shape (K,) or (H', W', K).
    """

    def __init__(self, components: int = 25, shared: bool = True, **options):
        config = from_dict(GMMConfig, {"components": components, "shared": shared, **options}, "GMM")
        _check_gmm_config(config)
        super().__init__(config)
        self.patch = (1, 1)
        self.stride = (1, 1)
        self.neighbourhood_width = (
            config.width_floor
            if not config.annealing
            else max(
                config.width_init
                if config.width_init is not None
                else 0.25 * math.sqrt(2.0 * config.components),
                config.width_floor,
            )
        )
        self._neighbourhood: tuple[float, torch.Tensor] | None = None
        self.last_loss: torch.Tensor | None = None

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
        scale = self.config.mean_init_scale
        self.means = torch.nn.Parameter((2.0 * torch.rand(shape) - 1.0) * scale)
        self.precision = PyroParam(
            torch.full(shape, self.config.precision_init),
            constraint=constraints.interval(self.config.precision_floor, self.config.precision_ceiling),
        )
        self.mixing_logits = torch.nn.Parameter(torch.zeros(shape[:-1]))
        self.input_shape = input_shape
        self.output_shape = (k, out_h, out_w)
        return self.output_shape

    @property
    def dim(self) -> int:
        """Length D of the patch vectors."""
        self._require_built()
        return self.input_shape[0] * self.patch[0] * self.patch[1]

    def get_extra_state(self) -> dict:
        return {"neighbourhood_width": float(self.neighbourhood_width)}

    def set_extra_state(self, state: dict) -> None:
        self.neighbourhood_width = float(state["neighbourhood_width"])

    @property
    def annealing_finished(self) -> bool:
        return self.neighbourhood_width <= self.config.width_floor

    def neighbourhood(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The current (K, K) torus neighbourhood, cached until the width changes."""
        cached = self._neighbourhood
        if (
            cached is None
            or cached[0] != self.neighbourhood_width
            or cached[1].dtype != dtype
            or cached[1].device != device
        ):
            g = torus_neighbourhood(
                self.components, self.neighbourhood_width, self.config.width_floor, dtype, device
            )
            self._neighbourhood = cached = (self.neighbourhood_width, g)
        return cached[1]

    def log_mixing(self) -> torch.Tensor:
        """Log mixing weights, (K,) or (H', W', K)."""
        return torch.log_softmax(self.mixing_logits, dim=-1)

    def log_prob_table(self, x: torch.Tensor) -> torch.Tensor:
        """Component log-densities ``log N(patch | mu_k, p_k)`` of shape (N, K, H', W')."""
        self._require_built()
        if self.config.shared:
            kernel = (self.components, self.input_shape[0], *self.patch)
            return diagonal_log_prob_shared(
                x, self.means.view(kernel), self.precision.view(kernel), self.stride
            )
        return diagonal_log_prob_per_position(x, self.means, self.precision, self.patch, self.stride)

    def log_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(patch | mu_k, p_k)`` of shape (N, K, H', W')."""
        log_mixing = self.log_mixing()
        shared = self.config.shared
        log_mixing = log_mixing[:, None, None] if shared else log_mixing.permute(2, 0, 1)  # (K, 1|H', 1|W')
        return self.log_prob_table(x) + log_mixing  # (N, K, H', W')

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Responsibilities (posterior over components) of shape (N, K, H', W')."""
        return torch.softmax(self.log_scores(x), dim=1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample log-likelihood (N,): the sum over positions of ``log p(patch)``."""
        return self.log_scores(x).logsumexp(dim=1).sum((1, 2))

    def annealed_log_scores(self, x: torch.Tensor, annealed: bool = True):
        """Log-scores (N, K, H', W') and the table the objective uses, (N, H', W', K).

        The table is the log-score table smoothed by the torus neighbourhood while annealing runs
        (and ``annealed`` is true), the log-score table itself otherwise.
        """
        scores = self.log_scores(x)  # (N, K, H', W')
        table = scores.permute(0, 2, 3, 1)  # (N, H', W', K)
        if annealed and not self.annealing_finished:
            table = table @ self.neighbourhood(table.dtype, table.device).T  # (N, H', W', K)
        return scores, table

    def model(
        self, x: torch.Tensor, *, labels=None, annealed: bool = True, enumerated: bool = True
    ) -> torch.Tensor:
        """This layer's sites; must run inside a data plate.

        With ``enumerated=True`` the sites are ``z`` (component, enumerated in parallel) and
        ``obs`` (factor ``Vindex(table - log pi)[..., z]``).  With ``enumerated=False`` the
        component is marginalised in closed form: one factor ``obs = logsumexp_k table`` per
        position and no ``z`` site.  Both give ``TraceEnum_ELBO`` the same loss and gradients (the
        closed form is faster); queries such as ``compute_marginals`` and ``infer_discrete`` need
        the enumerated site.

        :param torch.Tensor x: layer input (N, C, H, W).
        :param bool annealed: use the neighbourhood-smoothed table while annealing is unfinished;
            ``False`` always gives the exact mixture.
        :returns: detached responsibilities (N, K, H', W').
        """
        scores, table = self.annealed_log_scores(x, annealed)
        _, out_h, out_w = self.output_shape
        with self._position_plate("h", out_h, -2), self._position_plate("w", out_w, -1):
            if enumerated:
                log_mixing = self.log_mixing()  # (K,) or (H', W', K)
                self.last_loss = -table.detach().logsumexp(-1).sum((1, 2))  # (N,)
                z = pyro.sample(
                    self.site("z"),
                    dist.Categorical(logits=log_mixing),
                    infer={"enumerate": "parallel"},
                )  # (K, 1, 1, 1) when enumerated
                pyro.factor(self.site("obs"), Vindex(table - log_mixing)[..., z])  # (K, N, H', W')
            else:
                log_likelihood = table.logsumexp(-1)  # (N, H', W')
                self.last_loss = -log_likelihood.detach().sum((1, 2))  # (N,)
                pyro.factor(self.site("obs"), log_likelihood)
        return torch.softmax(scores.detach(), dim=1)

    def loss(self, x: torch.Tensor, *, labels=None, annealed: bool = True):
        """Hand-written (no Pyro) negative objective summed over the batch, and the detached
        responsibilities: the same value as this layer's part of the ELBO."""
        scores, table = self.annealed_log_scores(x, annealed)
        return torch.softmax(scores.detach(), dim=1), -table.logsumexp(-1).sum()

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
            ([self.precision_unconstrained], self.config.precision_lr_scale),
            ([self.mixing_logits], self.config.mixing_lr_scale),
        ]


def _check_gmm_config(config: GMMConfig) -> None:
    if config.components < 1:
        raise ArchitectureError(f"GMM components must be >= 1, got {config.components}")
    if not 0.0 < config.precision_floor < config.precision_init < config.precision_ceiling:
        raise ArchitectureError(
            "GMM precisions need 0 < precision_floor < precision_init < precision_ceiling, got "
            f"{config.precision_floor}, {config.precision_init}, {config.precision_ceiling}"
        )
    if config.width_floor <= 0.0:
        raise ArchitectureError(f"GMM width_floor must be > 0, got {config.width_floor}")
    if not 0.0 < config.width_decay < 1.0:
        raise ArchitectureError(f"GMM width_decay must lie in (0, 1), got {config.width_decay}")
    if config.plateau_window < 1:
        raise ArchitectureError(f"GMM plateau_window must be >= 1, got {config.plateau_window}")
    if not 0.0 <= config.wait < 1.0:
        raise ArchitectureError(f"GMM wait must lie in [0, 1), got {config.wait}")
