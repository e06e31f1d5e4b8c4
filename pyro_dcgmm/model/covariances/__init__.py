"""Covariance structures of a GMM layer's components, behind one interface.

A :class:`~pyro_dcgmm.model.gmm.GMM` is a mixture: it owns the means ``mu`` (..., K, D) and the mixing
weights; its :class:`Covariance` owns everything else about the components' shape and answers

- :meth:`Covariance.log_prob_table`: the (N, K, H', W') table ``log N(patch | mu_k, Sigma_k)`` of
  every patch of the input under every component, by matmuls or convolutions, with an optional
  mask of observed entries (missing ones are marginalised exactly);
- :meth:`Covariance.distribution`: the components' distribution at chosen components (sampling);
- :meth:`Covariance.fit`: parameter values from weighted data (initialisation, re-seeding);
- :meth:`Covariance.batch_statistics`, :meth:`Covariance.current_statistics` and
  :meth:`Covariance.maximise`: online EM's sufficient statistics, recovered from the ELBO gradient,
  and the M-step (:mod:`pyro_dcgmm.training.em`);
- :meth:`Covariance.project_`: the constraint after every optimiser step (precision bounds, and
  whatever the structure needs);
- :meth:`Covariance.covariance_matrix` and :meth:`Covariance.precision_map`: dense covariances
  (tests, masked tables) and what a per-component view shows.

Kinds: ``"diag"`` (:mod:`.diagonal`), ``"full"`` (:mod:`.full`) and ``"stationary"``
(:mod:`.stationary`).  Parameters have a leading (H', W') for per-position layers.
"""

from __future__ import annotations

from pyro_dcgmm.model.covariances.base import Covariance, Geometry
from pyro_dcgmm.model.covariances.diagonal import DiagonalCovariance
from pyro_dcgmm.model.covariances.full import FullCovariance
from pyro_dcgmm.model.covariances.stationary import StationaryCovariance

COVARIANCE_KINDS: dict[str, type[Covariance]] = {
    "diag": DiagonalCovariance,
    "full": FullCovariance,
    "stationary": StationaryCovariance,
}


def make_covariance(kind: str, geometry: Geometry, bounds: tuple[float, float]) -> Covariance:
    """The covariance structure ``kind`` for a layer of ``geometry``, precisions within ``bounds``."""
    return COVARIANCE_KINDS[kind](geometry, bounds)


__all__ = [
    "COVARIANCE_KINDS",
    "Covariance",
    "DiagonalCovariance",
    "FullCovariance",
    "Geometry",
    "StationaryCovariance",
    "make_covariance",
]
