"""Diagonal covariances: independent coordinates within every component.

For a patch vector ``x`` of length D and component k with mean ``mu_k`` and diagonal precision
``p_k`` (1 / variance),

.. math:: \\log N(x | \\mu_k, p_k) = \\tfrac12 \\sum_d \\log p_{kd} - \\tfrac D2 \\log 2\\pi
          - \\tfrac12 \\sum_d p_{kd} (x_d - \\mu_{kd})^2 .

The quadratic expands to ``x^2 . p_k - 2 x . (mu_k p_k) + mu_k^2 . p_k``, so the (N, K, H, W) table of
all log-densities is two linear maps of ``x`` and ``x^2``: a convolution of the input image when the
parameters are shared over positions, a batched matmul over positions otherwise.  No
(N, H, W, K, D) tensor is ever formed.  A diagonal Gaussian's marginal drops the missing
coordinates, so the masked table is the same two maps with the missing entries' terms left out.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyro_dcgmm.model.covariances.base import Covariance, weighted_moments

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_terms(means: torch.Tensor, precision: torch.Tensor):
    """Per-dimension weights of ``x``, ``x^2`` and 1 in ``log N(x | mu, p)``, each shaped like ``means``."""
    linear = means * precision
    quadratic = -0.5 * precision
    constant = 0.5 * (precision.log() - LOG_2PI - means * means * precision)
    return linear, quadratic, constant


def bounded_log_precision(variance: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """``log(1 / variance)`` clamped to ``bounds`` (a zero variance gives the upper bound)."""
    return (-variance.clamp_min(torch.finfo(variance.dtype).tiny).log()).clamp(*bounds)


def _features(x: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``[x, x^2]`` or, with a mask of observed entries, ``[m x, m x^2, m]`` along ``dim``."""
    if mask is None:
        return torch.cat([x, x * x], dim=dim)
    observed = mask.to(x.dtype)
    x = torch.where(mask, x, 0.0)  # missing entries may hold anything, NaN included
    return torch.cat([x, x * x, observed], dim=dim)


def diagonal_log_prob_shared(x, means, precision, stride, mask=None) -> torch.Tensor:
    """Log-density of every patch of ``x`` under every component, parameters shared over positions.

    :param torch.Tensor x: images of shape (N, C, H, W).
    :param torch.Tensor means: shape (K, C, ph, pw).
    :param torch.Tensor precision: diagonal precisions, shape (K, C, ph, pw).
    :param stride: (vertical, horizontal) step between patches.
    :param torch.Tensor mask: optional boolean (N, C, H, W), true where ``x`` is observed.
    :returns: table of shape (N, K, H', W').
    """
    linear, quadratic, constant = gaussian_terms(means, precision)  # (K, C, ph, pw) each
    if mask is None:
        weight = torch.cat([linear, quadratic], dim=1)  # (K, 2C, ph, pw)
        bias = constant.flatten(1).sum(-1)  # (K,)
    else:
        weight = torch.cat([linear, quadratic, constant], dim=1)  # (K, 3C, ph, pw)
        bias = None
    return F.conv2d(_features(x, mask, 1), weight, bias, stride=stride)  # (N, K, H', W')


def diagonal_log_prob_per_position(x, means, precision, patch, stride, mask=None) -> torch.Tensor:
    """Log-density of every patch of ``x`` under the components of its own position.

    :param torch.Tensor x: images of shape (N, C, H, W).
    :param torch.Tensor means: shape (H', W', K, D) with D = C * ph * pw.
    :param torch.Tensor precision: diagonal precisions, shape (H', W', K, D).
    :param torch.Tensor mask: optional boolean (N, C, H, W), true where ``x`` is observed.
    :returns: table of shape (N, K, H', W').
    """
    out_h, out_w, k, dim = means.shape
    patches = F.unfold(x, patch, stride=stride)  # (N, D, L)
    observed = None if mask is None else F.unfold(mask.to(x.dtype), patch, stride=stride) > 0.5
    inputs = _features(patches, observed, 1).permute(2, 0, 1)  # (L, N, 2D or 3D)
    means, precision = means.reshape(-1, k, dim), precision.reshape(-1, k, dim)  # (L, K, D)
    linear, quadratic, constant = gaussian_terms(means, precision)  # (L, K, D) each
    if mask is None:
        weight = torch.cat([linear, quadratic], dim=-1)  # (L, K, 2D)
        table = torch.baddbmm(constant.sum(-1).unsqueeze(1), inputs, weight.transpose(1, 2))  # (L, N, K)
    else:
        weight = torch.cat([linear, quadratic, constant], dim=-1)  # (L, K, 3D)
        table = torch.bmm(inputs, weight.transpose(1, 2))  # (L, N, K)
    return table.permute(1, 2, 0).reshape(x.shape[0], k, out_h, out_w)  # (N, K, H', W')


def diagonal_table(x, means, precision, geometry, mask=None) -> torch.Tensor:
    """The (N, K, H', W') table of diagonal Gaussians with ``means`` and ``precision`` (..., K, D)."""
    if geometry.shared:
        kernel = (geometry.components, geometry.channels, *geometry.patch)
        return diagonal_log_prob_shared(x, means.view(kernel), precision.view(kernel), geometry.stride, mask)
    return diagonal_log_prob_per_position(x, means, precision, geometry.patch, geometry.stride, mask)


class DiagonalCovariance(Covariance):
    """Diagonal covariances; parameter ``log_precision`` (..., K, D), the log of 1 / variance.

    Online EM's statistics per component are ``s1 = sum r x`` and ``s2 = sum r x^2`` (D each).
    """

    def parameter_count(self) -> int:
        return math.prod(self.geometry.lead) * self.geometry.components * self.geometry.dim

    def build(self, log_precision: float) -> None:
        shape = (*self.geometry.lead, self.geometry.components, self.geometry.dim)
        self.log_precision = torch.nn.Parameter(torch.full(shape, log_precision))

    @property
    def precision(self) -> torch.Tensor:
        """Diagonal precisions (1 / variance), (..., K, D)."""
        return self.log_precision.exp()

    def log_prob_table(self, x, means, mask=None) -> torch.Tensor:
        return diagonal_table(x, means, self.precision, self.geometry, mask)

    def distribution(self, loc, select, divisor: float):
        return dist.Normal(loc, select(self.precision).rsqrt() / divisor).to_event(1)

    def covariance_matrix(self) -> torch.Tensor:
        return torch.diag_embed(self.precision.reciprocal())

    def dense_precision(self) -> torch.Tensor:
        return torch.diag_embed(self.precision)

    def precision_map(self) -> torch.Tensor:
        return self.as_patches(self.precision)

    def fit(self, x, weights, means) -> dict:
        _, variance = weighted_moments(x, weights, means)
        return {"log_precision": bounded_log_precision(variance, self.bounds)}

    def project_(self, means) -> None:
        with torch.no_grad():
            self.log_precision.clamp_(*self.bounds)

    def batch_statistics(self, s0, means):
        precision = self.precision
        s1 = s0.unsqueeze(-1) * means - means.grad / precision
        s2 = (s0.unsqueeze(-1) + 2.0 * self.log_precision.grad) / precision + 2.0 * means * s1
        return s1, s2 - means * means * s0.unsqueeze(-1)

    def current_statistics(self, s0, means):
        s1 = s0.unsqueeze(-1) * means
        return s1, s0.unsqueeze(-1) * ((-self.log_precision).exp() + means * means)

    def maximise(self, s0, s1, s2, alive, means) -> None:
        mass = s0.unsqueeze(-1)
        new_means = s1 / mass
        new_log_precision = bounded_log_precision(s2 / mass - new_means * new_means, self.bounds)
        keep = alive.unsqueeze(-1)
        means.copy_(torch.where(keep, new_means, means))
        self.log_precision.copy_(torch.where(keep, new_log_precision, self.log_precision))
