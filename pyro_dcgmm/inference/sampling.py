"""Top-down sampling options and gradient sharpening.

Sampling runs the stack's layers in reverse, each through its ``sample_down`` method: a GMM layer
draws a component per position from the top-down signal it receives (its own mixing weights at the
top) with its generative Pyro program (``z ~ Categorical``, ``x ~ N(mu_z, Sigma_z / divisor^2)``)
and folds the sampled patches back onto its input grid, averaging where patches overlap; a MaxPool
spreads its signal over the pooling windows; a Readout turns class labels into a signal over its
input.  Folding back overlapping patches and unpooling are not invertible; sharpening repairs what
they blur by gradient ascent on an upper layer's log-likelihood of the forward pass.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from pyro_dcgmm.errors import ConfigError

# The defaults of sampling, shared by the library and ``pyro-dcgmm sample`` (whose stored
# ``[sampling]`` settings, :class:`~pyro_dcgmm.config.SamplingConfig`, start from them); chosen on
# validation splits (see SamplingConfig).
DEFAULT_DIVISORS = {"layerwise": 10.0, "joint": 2.0}  # SamplingOptions.divisor when absent
INPAINT_TOP_S = 10  # components kept per position below the layer in-painting starts from


@dataclass(frozen=True)
class Sharpening:
    """Gradient sharpening after every non-invertible step of top-down sampling.

    At a step that produced tensor ``v0`` (the input of some layer), ``v`` starts at ``v0`` and takes
    ``iterations`` steps of ``v += rate * grad(objective)`` with, per sample,
    ``objective(v) = log p_target(forward(v)) - pull * ||v - v0||^2``, clamped to the valid range
    after every step.

    :param target: ``"next"`` (the first GMM layer at or above the step) or a layer number; a
        step with no such GMM layer above it (or only lower ones) is left as it is.
    :param rate: step size of the gradient ascent.
    :param iterations: number of ascent steps.
    :param pull: weight of the squared distance to the unsharpened sample; ``rate * pull`` must be
        below 1 (:func:`check_stable_pull`).
    """

    target: Literal["next"] | int = "next"
    rate: float = 2.5e-4
    iterations: int = 200
    pull: float = 1000.0

    def __post_init__(self) -> None:
        check_stable_pull(self.rate, self.pull)


def check_stable_pull(rate: float, pull: float, what: str = "sharpening") -> None:
    """Each step scales the distance to the unsharpened sample by ``1 - 2 * rate * pull`` through
    the pull alone: at ``rate * pull >= 1`` that factor is -1 or below, so the steps overshoot and
    the oscillation never dies down; sharpened images are noise held in range only by the clamping."""
    if rate * pull >= 1:
        raise ConfigError(
            f"{what}: rate {rate:g} times pull {pull:g} is {rate * pull:g}; it must be below 1, "
            "else every step overshoots the unsharpened sample and the sharpened image oscillates"
        )


@dataclass(frozen=True)
class ComponentLikelihood:
    """A top-down signal that is evidence about components, not a sample of them: ``log_likelihood``
    (n, K, H', W') is ``log p(evidence | z_hw = k)`` (the Readout's class given the component).  The
    GMM layer that receives it draws from the whole posterior ``pi_k p(evidence | k)``, with no top-S
    cut, so class-conditional draws are as varied as the model's components of that class."""

    log_likelihood: torch.Tensor


@dataclass(frozen=True)
class SamplingOptions:
    """How a stack samples top-down.

    :param top_s: at every position keep only the ``top_s`` strongest components of a signal sampled
        by the layer above before drawing one (the paper's S; class evidence from the Readout is
        used whole, see :class:`ComponentLikelihood`).
    :param divisor: divide every component's standard deviations by this (1 samples the model itself,
        larger values give cleaner images); ``None``: the formulation's (:data:`DEFAULT_DIVISORS`).
    :param mean: take each drawn component's mean instead of sampling its Gaussian.
    :param pool_mode: ``"dense"`` spreads a pooled value over its whole window, ``"sparse"`` puts it
        at one random position of the window (the others fall back to the prior).
    :param sharpening: sharpen after every non-invertible step, or ``None``.
    """

    top_s: int = 3
    divisor: float | None = None
    mean: bool = False
    pool_mode: Literal["dense", "sparse"] = "dense"
    sharpening: Sharpening | None = None


def default_options(stack, inpainting: bool = False) -> SamplingOptions:
    """What the library samples with when no options are given, which is what ``pyro-dcgmm
    sample`` uses by default: sharpened for a layerwise stack, exact draws for a joint one, with
    :data:`INPAINT_TOP_S` components kept per position when ``inpainting``."""
    sharpening = Sharpening() if stack.formulation == "layerwise" else None
    top_s = INPAINT_TOP_S if inpainting else SamplingOptions.top_s
    return resolved(stack, SamplingOptions(top_s=top_s, sharpening=sharpening))


def resolved(stack, options: SamplingOptions | None, inpainting: bool = False) -> SamplingOptions:
    """The options sampling ``stack`` runs with: :func:`default_options` for ``None``, and the
    formulation's divisor where none is given."""
    if options is None:
        return default_options(stack, inpainting)
    if options.divisor is None:
        return dataclasses.replace(options, divisor=DEFAULT_DIVISORS[stack.formulation])
    return options


def default_variant_layer(stack) -> int:
    """The layer variants start from by default: the one below the top GMM layer if there is one."""
    return -2 if len(stack.gmm_layers) > 1 else -1


def options_from_settings(settings, stack) -> dict[str, SamplingOptions]:
    """The options that :class:`~pyro_dcgmm.config.SamplingConfig` ``settings`` describe, by name:
    ``plain`` and ``sharpened`` for a layerwise stack (a sharpening target above its top GMM layer
    aims at the top one), ``plain`` alone for a joint stack, whose samples are exact."""
    plain = SamplingOptions(top_s=settings.top_s, divisor=settings.divisor, pool_mode=settings.pool_mode)
    plain = resolved(stack, plain)
    if stack.formulation == "joint":
        return {"plain": plain}
    target = settings.sharpen_target
    if target != "next" and target >= len(stack.gmm_layers):
        top = len(stack.gmm_layers) - 1
        warnings.warn(
            f"sharpen_target {target}: this stack's top GMM layer is {top}; sharpening aims at it",
            stacklevel=2,
        )
        target = top
    sharpening = Sharpening(target, settings.sharpen_rate, settings.sharpen_iterations, settings.sharpen_pull)
    return {"plain": plain, "sharpened": dataclasses.replace(plain, sharpening=sharpening)}


def sharpen(
    v0: torch.Tensor,
    log_likelihood,
    sharpening: Sharpening,
    value_range: tuple[float, float],
    fixed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient ascent on ``log_likelihood(v)`` (per sample, (N,)) starting from ``v0``.

    :param fixed: optional boolean mask, same shape as ``v0``, of entries that must not change.
    """
    low, high = value_range
    v = v0.detach().clone()
    free = None if fixed is None else (~fixed).to(v.dtype)
    for _ in range(sharpening.iterations):
        v.requires_grad_(True)
        with torch.enable_grad():
            objective = log_likelihood(v).sum()  # samples are independent: no 1/N in their gradients
            if sharpening.pull:
                objective = objective - sharpening.pull * (v - v0).pow(2).sum()
            (gradient,) = torch.autograd.grad(objective, v)
        if free is not None:
            gradient = gradient * free
        v = (v.detach() + sharpening.rate * gradient).clamp(low, high)
    if fixed is not None:
        v = torch.where(fixed, v0, v)
    return v.detach()
