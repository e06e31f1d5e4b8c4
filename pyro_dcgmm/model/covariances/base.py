"""The interface every covariance structure follows, and the exact masked table they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pyro_dcgmm.model.layer import SviModule, component_map, window_output_size

Statistics = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Geometry:
    """Where a GMM layer's components live.

    :param channels: input channels C.
    :param patch: (height, width) of a patch; D = C * height * width.
    :param stride: step between patches.
    :param components: K.
    :param lead: () for a shared layer, (H', W') for one mixture per position.
    """

    channels: int
    patch: tuple[int, int]
    stride: tuple[int, int]
    components: int
    lead: tuple[int, ...]

    @property
    def dim(self) -> int:
        return self.channels * self.patch[0] * self.patch[1]

    @property
    def shared(self) -> bool:
        return not self.lead

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W'): patch positions over an input of ``height`` x ``width``."""
        return (
            window_output_size(height, self.patch[0], self.stride[0], "GMM patch height"),
            window_output_size(width, self.patch[1], self.stride[1], "GMM patch width"),
        )


class Covariance(SviModule):
    """Covariance structure of the K components of one GMM layer (see :mod:`pyro_dcgmm.model.covariances`).

    :param Geometry geometry: the layer's patches and components.
    :param bounds: ``(log precision_floor, log precision_ceiling)``: every precision (eigenvalue of a
        precision matrix) is kept inside.
    """

    def __init__(self, geometry: Geometry, bounds: tuple[float, float]):
        super().__init__()
        self.geometry = geometry
        self.bounds = bounds

    def parameter_count(self) -> int:
        """Values the structure needs, for the memory check before :meth:`build`."""
        raise NotImplementedError

    def free_parameter_count(self) -> int:
        """Free parameters (for BIC and AIC): the stored values, less those a constraint fixes."""
        return self.parameter_count()

    def build(self, log_precision: float) -> None:
        """Create the parameters, every precision ``exp(log_precision)``."""
        raise NotImplementedError

    def log_prob_table(self, x: torch.Tensor, means: torch.Tensor, mask=None, offset=None) -> torch.Tensor:
        """``log N(patch | mu_k, Sigma_k)`` for every patch of ``x`` (N, C, H, W): (N, K, H', W').

        With a boolean ``mask`` (N, C, H, W) of observed entries, each patch's missing entries are
        marginalised out exactly.  ``offset`` (K,) or (H', W', K), per-component values such as the
        log mixing weights, is added to every position (where the table's bias is, in the
        structures that have one: no pass over the table of its own).
        """
        if mask is None:
            return self.table(x, means, offset)
        table = masked_table(x, mask, means, self.covariance_matrix(), self.geometry)
        return table if offset is None else table + component_map(offset, self.geometry.shared)

    def table(self, x: torch.Tensor, means: torch.Tensor, offset=None) -> torch.Tensor:
        """The unmasked table (N, K, H', W') plus ``offset``."""
        raise NotImplementedError

    def distribution(self, loc: torch.Tensor, select, divisor: float):
        """Distribution of patch vectors with means ``loc`` (n, H', W', D) at chosen components;
        ``select(parameter)`` picks a per-component parameter (..., K, ...) at those components."""
        raise NotImplementedError

    def covariance_matrix(self) -> torch.Tensor:
        """Dense covariances (..., K, D, D)."""
        raise NotImplementedError

    def dense_precision(self) -> torch.Tensor:
        """Dense precision matrices (..., K, D, D) (conditionals of partly observed patches)."""
        raise NotImplementedError

    def precision_map(self) -> torch.Tensor:
        """What a view of each component shows, (..., K, C, ph, pw): the diagonal precisions, or the
        filter's power spectrum of a stationary component."""
        raise NotImplementedError

    def as_patches(self, values: torch.Tensor) -> torch.Tensor:
        """Per-coordinate values (..., D) laid out as patches (..., C, ph, pw)."""
        return values.reshape(*values.shape[:-1], self.geometry.channels, *self.geometry.patch)

    def fit(self, x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor) -> dict:
        """Parameter values (P, K, ...) of components with ``means`` (P, K, D) fitted to vectors
        ``x`` (P, M, D) weighted by ``weights`` (P, M, K) (each column summing to a positive mass)."""
        raise NotImplementedError

    def assign_(self, values: dict, where: torch.Tensor | None = None) -> None:
        """Copy :meth:`fit` values into the parameters, only for components ``where`` (P, K) if given."""
        with torch.no_grad():
            for name, value in values.items():
                parameter = getattr(self, name)
                k = self.geometry.components
                view = parameter.view(-1, k, *parameter.shape[len(self.geometry.lead) + 1 :])
                value = value.to(view.dtype).reshape(view.shape)
                if where is not None:
                    value = torch.where(where.reshape(*where.shape, *[1] * (view.dim() - 2)), value, view)
                view.copy_(value)

    def project_means(self, means: torch.Tensor) -> torch.Tensor:
        """The nearest means the structure allows (all of them but for stationary components)."""
        return means

    def project_(self, means: torch.nn.Parameter) -> None:
        """Bring the parameters (and ``means``) back inside their constraints after a step."""
        raise NotImplementedError

    def batch_statistics(self, s0: torch.Tensor, means: torch.nn.Parameter) -> Statistics:
        """Per-sample (s1, s2) of the batch from the gradient of the loss (see :mod:`pyro_dcgmm.training.em`);
        ``s0`` (..., K) is the responsibility mass."""
        raise NotImplementedError

    def current_statistics(self, s0: torch.Tensor, means: torch.Tensor) -> Statistics:
        """The (s1, s2) whose M-step gives the current parameters."""
        raise NotImplementedError

    def maximise(self, s0, s1, s2, alive: torch.Tensor, means: torch.nn.Parameter) -> None:
        """M-step: set ``means`` and the covariances from the statistics where ``alive`` (..., K)."""
        raise NotImplementedError


def table_from_rows(rows: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """The (N, K, H', W') table, channels-last, of rows (N, H' W', K) of every patch's values."""
    return rows.reshape(rows.shape[0], out_h, out_w, rows.shape[-1]).permute(0, 3, 1, 2)


def weighted_moments(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor):
    """Weighted mass (P, K) and mean-centred second moments (P, K, D) of vectors (P, M, D)."""
    mass = weights.sum(1).clamp_min(torch.finfo(x.dtype).tiny)  # (P, K)
    second = weights.transpose(1, 2) @ (x * x) / mass.unsqueeze(-1)  # (P, K, D)
    first = weights.transpose(1, 2) @ x / mass.unsqueeze(-1)
    return mass, second - 2.0 * means * first + means * means


def masked_table(x, mask, means, covariance, geometry: Geometry) -> torch.Tensor:
    """Exact log-density of every patch's observed entries under every component, (N, K, H', W').

    Patches are grouped by (observed pattern, position where parameters differ); each group takes
    the marginal Gaussian of its observed entries, so the cost grows with the number of distinct
    patterns, which is small for the masks in-painting uses.
    """
    n = x.shape[0]
    out_h, out_w = geometry.output_size(*x.shape[2:])
    k, dim = geometry.components, geometry.dim
    patches = F.unfold(torch.where(mask, x, 0.0), geometry.patch, stride=geometry.stride)  # (N, D, L)
    observed = F.unfold(mask.to(x.dtype), geometry.patch, stride=geometry.stride) > 0.5
    vectors, seen = patches.transpose(1, 2).reshape(-1, dim), observed.transpose(1, 2).reshape(-1, dim)
    places = out_h * out_w
    position = torch.arange(places, device=x.device).repeat(n) * (0 if geometry.shared else 1)
    means, covariance = means.reshape(-1, k, dim), covariance.reshape(-1, k, dim, dim)
    keys, group = torch.unique(torch.cat([seen.long(), position[:, None]], 1), dim=0, return_inverse=True)
    table = vectors.new_zeros(vectors.shape[0], k)  # (N L, K)
    for index, key in enumerate(keys):
        dims, place = key[:dim].bool(), int(key[dim])
        rows = (group == index).nonzero().squeeze(1)
        if not bool(dims.any()):
            continue
        sigma = covariance[place][:, dims][:, :, dims]  # (K, O, O)
        marginal = torch.distributions.MultivariateNormal(means[place][:, dims], sigma)
        table[rows] = marginal.log_prob(vectors[rows][:, dims].unsqueeze(1))  # (rows, K)
    return table_from_rows(table.view(n, places, k), out_h, out_w)


def gaussian_conditional(x, seen, centres, precision) -> torch.Tensor:
    """``E[v | the seen entries of v equal those of x]`` for Gaussians ``N(centres, precision^-1)``.

    With ``d = x - mu`` on the seen entries (o) and the missing ones (m),
    ``E[v_m | v_o] = mu_m - P_mm^-1 P_mo d_o``: one solve of the system that is ``P_mm`` on the
    missing block and the identity elsewhere.  With ``centres`` a draw from the Gaussian instead of
    its mean, the result is a draw from the conditional (Matheron's rule).

    :param torch.Tensor x: vectors (R, D); only their seen entries are read.
    :param torch.Tensor seen: boolean (R, D).
    :param torch.Tensor centres: (R, K, D), K Gaussians per vector.
    :param torch.Tensor precision: (R or 1, K, D, D).
    :returns: (R, K, D): ``x`` on the seen entries, the conditional mean on the missing ones.
    """
    seen = seen.unsqueeze(1)  # (R, 1, D)
    missing = ~seen
    offset = torch.where(seen, x.unsqueeze(1) - centres, 0.0)  # (R, K, D)
    target = -(precision @ offset.unsqueeze(-1)).squeeze(-1) * missing  # (R, K, D)
    block = missing.unsqueeze(-1) & missing.unsqueeze(-2)  # (R, 1, D, D)
    eye = torch.eye(x.shape[-1], dtype=torch.float64, device=x.device)
    system = torch.where(block, precision.double(), eye)
    shift = torch.linalg.solve(system, target.double().unsqueeze(-1)).squeeze(-1).to(x.dtype)
    return torch.where(seen, x.unsqueeze(1), centres + shift)
