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

from pyro_dcgmm.model.covariances.base import Covariance, table_from_rows, weighted_moments

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


def diagonal_log_prob_shared(x, means, precision, stride, mask=None, offset=None) -> torch.Tensor:
    """Log-density of every patch of ``x`` under every component, parameters shared over positions.

    :param torch.Tensor x: images of shape (N, C, H, W).
    :param torch.Tensor means: shape (K, C, ph, pw).
    :param torch.Tensor precision: diagonal precisions, shape (K, C, ph, pw).
    :param stride: (vertical, horizontal) step between patches.
    :param torch.Tensor mask: optional boolean (N, C, H, W), true where ``x`` is observed.
    :param torch.Tensor offset: optional (K,) added to every position (in the convolution's bias).
    :returns: table of shape (N, K, H', W'), channels-last (the convolution's fast layout).
    """
    linear, quadratic, constant = gaussian_terms(means, precision)  # (K, C, ph, pw) each
    bias = _plus(constant.flatten(1).sum(-1) if mask is None else None, offset)  # (K,) or None
    if mask is None and x.shape[1] > 1:  # two convolutions: no (N, 2C, H, W) input to write
        x = x.contiguous(memory_format=torch.channels_last)  # no copy when it is already
        table = F.conv2d(x, linear, bias, stride=stride)  # a convolution keeps no output for its gradient:
        return table.add_(F.conv2d(x * x, quadratic, stride=stride))  # the sum may take its place
    # one channel has no layout of its own, which a convolution would answer in NCHW: [x, x^2] has
    terms = [linear, quadratic] if mask is None else [linear, quadratic, constant]
    features = _features(x, mask, 1).contiguous(memory_format=torch.channels_last)
    return F.conv2d(features, torch.cat(terms, dim=1), bias, stride=stride)  # (N, K, H', W')


def diagonal_log_prob_per_position(x, means, precision, geometry, mask=None, offset=None) -> torch.Tensor:
    """Log-density of every patch of ``x`` under the components of its own position.

    :param torch.Tensor x: images of shape (N, C, H, W).
    :param torch.Tensor means: shape (H', W', K, D) with D = C * ph * pw.
    :param torch.Tensor precision: diagonal precisions, shape (H', W', K, D).
    :param Geometry geometry: the patches' size and stride.
    :param torch.Tensor mask: optional boolean (N, C, H, W), true where ``x`` is observed.
    :param torch.Tensor offset: optional (H', W', K) added to the table.
    :returns: table of shape (N, K, H', W'), channels-last.
    """
    out_h, out_w, k, dim = means.shape
    patch, stride = geometry.patch, geometry.stride
    patches = F.unfold(x, patch, stride=stride)  # (N, D, L)
    observed = None if mask is None else F.unfold(mask.to(x.dtype), patch, stride=stride) > 0.5
    inputs = _features(patches, observed, 1).permute(2, 0, 1)  # (L, N, 2D or 3D)
    means, precision = means.reshape(-1, k, dim), precision.reshape(-1, k, dim)  # (L, K, D)
    linear, quadratic, constant = gaussian_terms(means, precision)  # (L, K, D) each
    terms = [linear, quadratic] if mask is None else [linear, quadratic, constant]
    weight = torch.cat(terms, dim=-1).transpose(1, 2)  # (L, 2D or 3D, K)
    offset = None if offset is None else offset.reshape(-1, k)  # (L, K)
    bias = _plus(constant.sum(-1) if mask is None else None, offset)  # (L, K) or None
    table = inputs @ weight if bias is None else torch.baddbmm(bias.unsqueeze(1), inputs, weight)  # (L, N, K)
    return table_from_rows(table.transpose(0, 1), out_h, out_w)  # (N, K, H', W')


def _plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """``a + b`` where either may be absent (``None``)."""
    if a is None or b is None:
        return b if a is None else a
    return a + b


def diagonal_table(x, means, precision, geometry, mask=None, offset=None) -> torch.Tensor:
    """The (N, K, H', W') table of diagonal Gaussians with ``means`` and ``precision`` (..., K, D),
    plus ``offset`` (..., K) when given."""
    if geometry.shared:
        kernel = (geometry.components, geometry.channels, *geometry.patch)
        return diagonal_log_prob_shared(
            x, means.view(kernel), precision.view(kernel), geometry.stride, mask, offset
        )
    return diagonal_log_prob_per_position(x, means, precision, geometry, mask, offset)


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

    def log_prob_table(self, x, means, mask=None, offset=None) -> torch.Tensor:
        return diagonal_table(x, means, self.precision, self.geometry, mask, offset)

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
