"""Annealing that lets a GMM layer train from random initial conditions by SGD.

The K components sit on a ``rows x cols`` torus grid.  While training, the per-component log-scores
``T_j = log pi_j + log N(x | mu_j, prec_j)`` are smoothed with a Gaussian neighbourhood on that grid,

.. math:: S_k = \\sum_j g_{kj} T_j,
    \\qquad g_{kj} \\propto \\exp(-d_{torus}(k, j)^2 / (2 w^2)),

and the layer maximises ``logsumexp_k S_k`` instead of ``log p(x) = logsumexp_k T_k``.  Every row of
``g`` has the same sum on a torus, so ``g`` is symmetric and doubly stochastic, and by Jensen's
inequality ``logsumexp_k S_k <= log sum_k sum_j g_kj exp(T_j) = log p(x)``: the annealed objective is
a lower bound on the log-likelihood.  Neighbouring components receive similar updates (as in a
self-organising map), which unfolds the components over the data.  The width ``w`` shrinks by a
constant factor whenever the loss plateaus (:class:`AnnealingSchedule`, the reference's ``SingleExp``
rule); at its floor ``g`` is the identity and the objective is the exact log-likelihood.
"""

from __future__ import annotations

import math

import torch


def torus_grid_shape(num_components: int) -> tuple[int, int]:
    """The most nearly square ``(rows, cols)`` grid with ``rows * cols == num_components``."""
    rows = max(r for r in range(1, math.isqrt(num_components) + 1) if num_components % r == 0)
    return rows, num_components // rows


def torus_neighbourhood(
    num_components: int,
    width: float,
    width_floor: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Row-normalised Gaussian neighbourhood ``g`` of shape (K, K) on the torus grid.

    Returns the identity when ``width <= width_floor``, so that the smoothed objective is exactly the
    log-likelihood there rather than up to underflow.
    """
    if width <= width_floor:
        return torch.eye(num_components, dtype=dtype, device=device)
    rows, cols = torus_grid_shape(num_components)
    index = torch.arange(num_components, device=device)
    r, c = index // cols, index % cols  # (K,), (K,)
    dr = (r[:, None] - r[None, :]).abs()  # (K, K)
    dc = (c[:, None] - c[None, :]).abs()  # (K, K)
    dr = torch.minimum(dr, rows - dr)
    dc = torch.minimum(dc, cols - dc)
    squared = (dr * dr + dc * dc).to(torch.float64)  # (K, K)
    log_g = -squared / (2.0 * width * width)
    g = torch.softmax(log_g, dim=-1)  # (K, K), rows sum to one
    return g.to(dtype)


class AnnealingSchedule:
    """Shrinks the neighbourhood width when a layer's loss stops improving.

    The loss is averaged over windows of ``window`` iterations.  The first window's mean is the
    reference ``l0``, the second's the running ``last``.  After every later window with mean ``avg``
    the relative improvement ``(avg - last) / (last - l0)`` is computed; when it lies in
    ``(-2 * tolerance, tolerance)`` the loss has plateaued and the width is multiplied by ``decay``
    (never below ``floor``).  Then ``last = avg``.  The rule is the reference DCGMM's ``SingleExp``
    controller, sign-independent so it works on a loss to minimise as on a log-likelihood.

    :param float initial_width: starting width (the paper: ``0.25 * sqrt(2 K)``).
    :param float floor: final width; at the floor the neighbourhood is the identity.
    :param float decay: factor per plateau, in (0, 1).
    :param int window: iterations per plateau test.
    :param float tolerance: relative-improvement band for a plateau.

    A GMM layer builds its schedule from its :class:`~pyro_dcgmm.config.GMMConfig`, which checks
    every one of these values.
    """

    def __init__(
        self,
        initial_width: float,
        floor: float = 0.01,
        decay: float = 0.9,
        window: int = 100,
        tolerance: float = 0.05,
    ):
        self.floor = floor
        self.decay = decay
        self.window = window
        self.tolerance = tolerance
        self.width = max(initial_width, floor)
        self._window_sum = 0.0
        self._window_count = 0
        self._first: float | None = None
        self._last: float | None = None
        self._neighbourhood: tuple[tuple, torch.Tensor] | None = None

    def neighbourhood(self, components: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The current (K, K) torus neighbourhood of ``components`` components, cached until the
        width changes."""
        key = (components, self.width, dtype, device)
        if self._neighbourhood is None or self._neighbourhood[0] != key:
            g = torus_neighbourhood(components, self.width, self.floor, dtype, device)
            self._neighbourhood = (key, g)
        return self._neighbourhood[1]

    @property
    def finished(self) -> bool:
        """Whether the width has reached its floor."""
        return self.width <= self.floor

    def update(self, loss: float) -> bool:
        """Record one iteration's loss; return whether the width changed (never once finished)."""
        if self.finished:
            return False
        self._window_sum += loss
        self._window_count += 1
        if self._window_count < self.window:
            return False
        average = self._window_sum / self._window_count
        self._window_sum, self._window_count = 0.0, 0
        if self._first is None:
            self._first = average
            return False
        if self._last is None:
            self._last = average
            return False
        total = self._last - self._first
        relative = (average - self._last) / total if total != 0.0 else 0.0
        self._last = average
        if -2.0 * self.tolerance < relative < self.tolerance:
            self.width = max(self.width * self.decay, self.floor)
            return True
        return False

    def state_dict(self) -> dict:
        return {
            "width": self.width,
            "window_sum": self._window_sum,
            "window_count": self._window_count,
            "first": self._first,
            "last": self._last,
        }

    def load_state_dict(self, state: dict) -> None:
        self.width = float(state["width"])
        self._window_sum = float(state["window_sum"])
        self._window_count = int(state["window_count"])
        self._first = state["first"]
        self._last = state["last"]
