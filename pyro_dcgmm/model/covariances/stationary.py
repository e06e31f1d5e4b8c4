"""Stationary covariances: every component a stationary Gaussian over the patch (per channel).

A stationary Gaussian on a (periodic) patch has a constant mean and a covariance that depends only on
the offset between pixels; such a covariance is diagonal in the 2D Fourier basis, with one variance
per frequency ``f`` shared by ``f`` and ``-f``: its power spectrum.  With ``T`` the orthonormal real
Fourier (Hartley) basis of the patch, ``y = T x`` and per-coefficient precisions ``p``,

.. math:: \\log N(x | \\mu, T^\\top \\mathrm{diag}(1/p)\\, T) = \\log N(T x | T \\mu, \\mathrm{diag}(1/p))

exactly (``T`` is orthonormal), so the table is a convolution of the input with the D basis
filters followed by the diagonal table of :mod:`.diagonal` on the coefficients.  The component's
negative log-density is the energy of the patch filtered by ``sqrt(p)``: it ignores the phase of
the patch's Fourier components, and the component is determined by its filter's power spectrum
``p`` (what :meth:`StationaryCovariance.precision_map` shows) and its mean level.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.transforms import Transform

from pyro_dcgmm.model.covariances.base import Covariance, Geometry, weighted_moments
from pyro_dcgmm.model.covariances.diagonal import bounded_log_precision, diagonal_table


def hartley_basis(height: int, width: int) -> torch.Tensor:
    """Orthonormal real Fourier basis of (height, width) patches: rows are frequencies (u, v),
    columns pixels (a, b), entries ``cas(2 pi (u a / height + v b / width)) / sqrt(height width)``."""
    rows = 2.0 * math.pi * torch.outer(torch.arange(height), torch.arange(height)).double() / height
    columns = 2.0 * math.pi * torch.outer(torch.arange(width), torch.arange(width)).double() / width
    phase = rows[:, None, :, None] + columns[None, :, None, :]  # (u, v, a, b)
    return ((phase.cos() + phase.sin()) / math.sqrt(height * width)).reshape(height * width, height * width)


def conjugate_orbits(height: int, width: int) -> torch.Tensor:
    """Index (height * width,) of every frequency's pair {f, -f}, numbered 0, 1, ... in order."""
    u, v = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    own, mirror = u * width + v, ((-u) % height) * width + ((-v) % width)
    _, orbit = torch.unique(torch.minimum(own, mirror).flatten(), return_inverse=True)
    return orbit


class OrthonormalMap(Transform):
    """``x = y @ basis``: from coefficients to pixels; volume-preserving."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, basis: torch.Tensor):
        super().__init__(cache_size=0)
        self.basis = basis

    def _call(self, y):
        return y @ self.basis

    def _inverse(self, x):
        return x @ self.basis.T

    def log_abs_det_jacobian(self, y, x):
        return x.new_zeros(x.shape[:-1])


class FourierStructure(NamedTuple):
    """``basis`` (D, D), block-diagonal over channels; ``orbit_matrix`` (D, C O), the one-hot
    frequency pair of every coefficient; ``pair_sizes`` (C O,), coefficients per pair (1 or 2);
    ``mean_coefficients`` (D,), 1 at each channel's zero frequency."""

    basis: torch.Tensor
    orbit_matrix: torch.Tensor
    pair_sizes: torch.Tensor
    mean_coefficients: torch.Tensor


@functools.cache
def fourier_structure(height: int, width: int, channels: int, dtype=torch.float64, device=None):
    """The :class:`FourierStructure` of (height, width) patches of ``channels``, built in float64 and
    kept (per dtype and device) so the hot path never rebuilds or converts it."""
    orbit = conjugate_orbits(height, width)
    pairs = int(orbit.max()) + 1
    orbit = (orbit + pairs * torch.arange(channels)[:, None]).flatten()  # (D,)
    basis = torch.block_diag(*[hartley_basis(height, width)] * channels)
    orbit_matrix = F.one_hot(orbit, channels * pairs).double()
    zero = torch.zeros(height * width, dtype=torch.float64)
    zero[0] = 1.0
    parts = (basis, orbit_matrix, orbit_matrix.sum(0), zero.repeat(channels))
    return FourierStructure(*(part.to(device, dtype) for part in parts))


class StationaryCovariance(Covariance):
    """Stationary components: parameter ``log_precision`` (..., K, C * O), the log precision of each
    channel's O conjugate frequency pairs; means constant over each channel's patch.

    :func:`fourier_structure` gives the basis and the frequency pairs.  Online EM's statistics are
    ``s1 = sum r y`` (D) and ``s2`` (C * O), the sum of ``r y^2`` over each frequency pair.
    """

    @property
    def pairs(self) -> int:
        return self.structure().orbit_matrix.shape[1]

    def structure(self, like: torch.Tensor | None = None) -> FourierStructure:
        """The :class:`FourierStructure` in ``like``'s dtype and device (default: the parameters')."""
        like = getattr(self, "log_precision", None) if like is None else like
        if like is None:  # before build: float64 on the CPU
            return fourier_structure(*self.geometry.patch, self.geometry.channels)
        return fourier_structure(*self.geometry.patch, self.geometry.channels, like.dtype, like.device)

    def parameter_count(self) -> int:
        return math.prod(self.geometry.lead) * self.geometry.components * self.pairs

    def build(self, log_precision: float) -> None:
        shape = (*self.geometry.lead, self.geometry.components, self.pairs)
        self.log_precision = torch.nn.Parameter(torch.full(shape, log_precision))

    def _per_coefficient(self, values: torch.Tensor) -> torch.Tensor:
        return values @ self.structure(values).orbit_matrix.T  # (..., D)

    def _per_pair(self, values: torch.Tensor) -> torch.Tensor:
        return values @ self.structure(values).orbit_matrix  # (..., C * O): sums over each pair

    @property
    def precision(self) -> torch.Tensor:
        """Precision of every Fourier coefficient, (..., K, D)."""
        return self._per_coefficient(self.log_precision).exp()

    def coefficients(self, vectors: torch.Tensor) -> torch.Tensor:
        """Fourier coefficients ``T v`` of vectors (..., D)."""
        return vectors @ self.structure(vectors).basis.T

    def table(self, x, means, offset=None) -> torch.Tensor:
        geometry = self.geometry
        filters = self.structure(x).basis.reshape(geometry.dim, geometry.channels, *geometry.patch)
        y = torch.nn.functional.conv2d(x, filters, stride=geometry.stride)  # (N, D, H', W')
        coefficients = Geometry(geometry.dim, (1, 1), (1, 1), geometry.components, geometry.lead)
        return diagonal_table(y, self.coefficients(means), self.precision, coefficients, offset=offset)

    def distribution(self, loc, select, divisor: float):
        scale = select(self.precision).rsqrt() / divisor
        base = dist.Normal(self.coefficients(loc), scale).to_event(1)
        return dist.TransformedDistribution(base, [OrthonormalMap(self.structure(loc).basis)])

    def covariance_matrix(self) -> torch.Tensor:
        basis = self.structure().basis
        return (basis.T * self.precision.reciprocal().unsqueeze(-2)) @ basis

    def dense_precision(self) -> torch.Tensor:
        basis = self.structure().basis
        return (basis.T * self.precision.unsqueeze(-2)) @ basis

    def precision_map(self) -> torch.Tensor:
        """The filter's power spectrum: precision at every frequency (u, v), (..., K, C, ph, pw)."""
        return self.as_patches(self.precision)

    def project_means(self, means: torch.Tensor) -> torch.Tensor:
        """Each channel's mean level over the patch, everywhere in the patch."""
        structure = self.structure(means)
        return (means @ structure.basis.T) * structure.mean_coefficients @ structure.basis

    def _central_pairs(self, s0, s1, s2, coefficient_means) -> torch.Tensor:
        """Sum over each pair of ``sum r (y - m)^2``, from the statistics and the means' coefficients."""
        cross = 2.0 * coefficient_means * s1 - coefficient_means.square() * s0.unsqueeze(-1)
        return s2 - self._per_pair(cross)

    def fit(self, x, weights, means) -> dict:
        coefficient_means = self.coefficients(self.project_means(means))
        _, variance = weighted_moments(self.coefficients(x), weights, coefficient_means)  # (P, K, D)
        pair_variance = self._per_pair(variance) / self.structure(variance).pair_sizes
        return {"log_precision": bounded_log_precision(pair_variance, self.bounds)}

    def project_(self, means) -> None:
        with torch.no_grad():
            means.copy_(self.project_means(means))
            self.log_precision.clamp_(*self.bounds)

    def batch_statistics(self, s0, means):
        precision = self.precision
        m, gradient = self.coefficients(means), self.coefficients(means.grad)
        s1 = s0.unsqueeze(-1) * m - gradient / precision
        s2 = (
            self.structure().pair_sizes * s0.unsqueeze(-1) + 2.0 * self.log_precision.grad
        ) / self.log_precision.exp()
        return s1, s2 + self._per_pair(2.0 * m * s1 - m.square() * s0.unsqueeze(-1))

    def current_statistics(self, s0, means):
        m = self.coefficients(means)
        s1 = s0.unsqueeze(-1) * m
        spread = self.structure().pair_sizes * (-self.log_precision).exp() + self._per_pair(m.square())
        return s1, s0.unsqueeze(-1) * spread

    def maximise(self, s0, s1, s2, alive, means) -> None:
        structure = self.structure()
        new_m = s1 / s0.unsqueeze(-1) * structure.mean_coefficients
        variance = self._central_pairs(s0, s1, s2, new_m) / (structure.pair_sizes * s0.unsqueeze(-1))
        keep = alive.unsqueeze(-1)
        means.copy_(torch.where(keep, new_m @ structure.basis, means))
        new_log_precision = bounded_log_precision(variance, self.bounds)
        self.log_precision.copy_(torch.where(keep, new_log_precision, self.log_precision))
