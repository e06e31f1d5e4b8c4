"""Full covariances, for the short vectors of upper layers.

Parameter ``precision_matrix`` P (..., K, D, D), symmetric positive definite.  With its Cholesky
factor ``P = L L^T``,

.. math:: \\log N(x | \\mu, P^{-1}) = \\sum_d \\log L_{dd} - \\tfrac D2 \\log 2\\pi
          - \\tfrac12 \\lVert (x - \\mu)^\\top L \\rVert^2 ,

and ``x^T L`` for every patch and component is one matmul of the (N H' W', D) patch matrix with the
(D, K D) stacked factors.  Its intermediate holds N H' W' K D values, which is why the full kind is
meant for small D.  The precision bounds apply to P's eigenvalues.  Factorisations, inverses and
eigendecompositions run in float64 whatever the parameters' dtype: a float32 matrix whose
eigenvalues span more than about 1e6 is not reliably positive definite in float32 arithmetic.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyro_dcgmm.model.covariances.base import Covariance, table_from_rows
from pyro_dcgmm.model.covariances.diagonal import LOG_2PI


def symmetric(matrix: torch.Tensor) -> torch.Tensor:
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def bounded_precision_matrix(covariance: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """The inverse of ``covariance`` (..., D, D) with its eigenvalues clamped to ``exp(bounds)``."""
    values, vectors = torch.linalg.eigh(symmetric(covariance.double()))
    precision = values.clamp_min(torch.finfo(values.dtype).tiny).reciprocal().clamp(*map(math.exp, bounds))
    return ((vectors * precision.unsqueeze(-2)) @ vectors.transpose(-1, -2)).to(covariance.dtype)


class FullCovariance(Covariance):
    """Full covariances; parameter ``precision_matrix`` (..., K, D, D).

    Online EM's statistics per component are ``s1 = sum r x`` (D) and ``s2 = sum r x x^T`` (D, D).
    """

    def parameter_count(self) -> int:
        return math.prod(self.geometry.lead) * self.geometry.components * self.geometry.dim**2

    def free_parameter_count(self) -> int:
        """A symmetric matrix per component: D (D + 1) / 2 values."""
        dim = self.geometry.dim
        return math.prod(self.geometry.lead) * self.geometry.components * dim * (dim + 1) // 2

    def build(self, log_precision: float) -> None:
        shape = (*self.geometry.lead, self.geometry.components, self.geometry.dim, self.geometry.dim)
        eye = torch.eye(self.geometry.dim).expand(shape)
        self.precision_matrix = torch.nn.Parameter(eye * math.exp(log_precision))

    @property
    def precision(self) -> torch.Tensor:
        """The symmetric precision matrices (..., K, D, D)."""
        return symmetric(self.precision_matrix)

    def table(self, x, means, offset=None) -> torch.Tensor:
        geometry = self.geometry
        k, dim = geometry.components, geometry.dim
        factor = (
            torch.linalg.cholesky(self.precision.double()).to(x.dtype).reshape(-1, k, dim, dim)
        )  # (P, K, D, D)
        patches = F.unfold(x, geometry.patch, stride=geometry.stride)  # (N, D, L)
        n, _, places = patches.shape
        rows = patches.transpose(1, 2).reshape(1, -1, dim) if geometry.shared else patches.permute(2, 0, 1)
        stacked = factor.permute(0, 2, 1, 3).reshape(-1, dim, k * dim)  # (P, D, K D)
        shift = (means.reshape(-1, k, 1, dim) @ factor).squeeze(-2)  # (P, K, D)
        whitened = (rows @ stacked).view(rows.shape[0], rows.shape[1], k, dim) - shift.unsqueeze(1)
        log_det = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (P, K)
        table = log_det.unsqueeze(1) - 0.5 * dim * LOG_2PI - 0.5 * whitened.square().sum(-1)  # (P, M, K)
        out_h, out_w = geometry.output_size(*x.shape[2:])
        if offset is not None:
            table = table + offset.reshape(-1, 1, k)  # (P, M, K)
        table = table.view(n, places, k) if geometry.shared else table.transpose(0, 1)  # (N, L, K)
        return table_from_rows(table, out_h, out_w)  # (N, K, H', W')

    def distribution(self, loc, select, divisor: float):
        return dist.MultivariateNormal(loc, precision_matrix=select(self.precision) * divisor**2)

    def covariance_matrix(self) -> torch.Tensor:
        return torch.linalg.inv(self.precision.double()).to(self.precision_matrix.dtype)

    def dense_precision(self) -> torch.Tensor:
        return self.precision

    def precision_map(self) -> torch.Tensor:
        return self.as_patches(self.precision.diagonal(dim1=-2, dim2=-1))

    def fit(self, x, weights, means) -> dict:
        """One weighted scatter matrix per mixture and component, over the vectors of positive
        weight only (a k-means assignment gives each vector to one component)."""
        p, k, dim = means.shape
        covariance = x.new_empty(p, k, dim, dim)
        for mixture in range(p):
            for component in range(k):
                weight = weights[mixture, :, component]
                rows = weight > 0
                centred = x[mixture, rows] - means[mixture, component]  # (M_k, D)
                scatter = (centred * weight[rows, None]).T @ centred
                covariance[mixture, component] = scatter / weight[rows].sum().clamp_min(
                    torch.finfo(x.dtype).tiny
                )
        return {"precision_matrix": bounded_precision_matrix(covariance, self.bounds)}

    def project_(self, means) -> None:
        with torch.no_grad():
            self.precision_matrix.copy_(bounded_precision_matrix(self.covariance_matrix(), self.bounds))

    def batch_statistics(self, s0, means):
        mass = s0.unsqueeze(-1)
        shift = torch.linalg.solve(self.precision.double(), means.grad.double().unsqueeze(-1)).squeeze(-1)
        s1 = mass * means - shift.to(means.dtype)
        scatter = mass.unsqueeze(-1) * self.covariance_matrix() + 2.0 * symmetric(self.precision_matrix.grad)
        cross = _outer(s1, means) + _outer(means, s1) - mass.unsqueeze(-1) * _outer(means, means)
        return s1, scatter + cross

    def current_statistics(self, s0, means):
        mass = s0.unsqueeze(-1)
        return mass * means, mass.unsqueeze(-1) * (self.covariance_matrix() + _outer(means, means))

    def maximise(self, s0, s1, s2, alive, means) -> None:
        new_means = s1 / s0.unsqueeze(-1)
        covariance = s2 / s0[..., None, None] - _outer(new_means, new_means)
        keep = alive.unsqueeze(-1)
        means.copy_(torch.where(keep, new_means, means))
        new_precision = bounded_precision_matrix(covariance, self.bounds)
        self.precision_matrix.copy_(torch.where(keep.unsqueeze(-1), new_precision, self.precision_matrix))


def _outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.unsqueeze(-1) * b.unsqueeze(-2)
