"""What a fitted estimator reports as scikit-learn's mixtures do: the top layer's weights, means and
covariances, free-parameter counts for BIC and AIC, and whether training converged."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pyro_dcgmm.errors import ConfigError

CONVERGENCE_TOLERANCE = 1e-3  # relative change of every objective's epoch-mean loss that counts as converged


def with_top_layer(layers, settings: dict) -> tuple:
    """Layer configs ``layers`` with the top one with components given ``settings`` (its fields)."""
    layers = list(layers)
    if not settings:
        return tuple(layers)
    top = max(i for i, layer in enumerate(layers) if layer.type in ("gmm", "tree"))
    if layers[top].type == "tree" and set(settings) - {"components"}:
        raise ConfigError(
            "covariance_type, reg_covar and the priors set a GMM layer; the top of a joint stack is a "
            "Tree layer"
        )
    layers[top] = dataclasses.replace(layers[top], **settings)
    return tuple(layers)


def mixture_attributes(stack) -> dict[str, np.ndarray]:
    """``weights_``, ``means_`` and ``covariances_`` of the stack's top layer with components."""
    top = stack.mixture_layers[-1]
    with torch.no_grad():
        if stack.formulation == "joint":  # the top is a Tree layer
            weights, means = top.log_mixing().exp(), stack.component_images(-1).flatten(1)
            return {"weights_": weights.numpy(), "means_": means.numpy()}
        weights = top.mixing_weights()
        covariances = top.covariance.covariance_matrix()
        if top.config.covariance == "diag":
            covariances = covariances.diagonal(dim1=-2, dim2=-1)
        return {"weights_": weights.numpy(), "means_": top.means.numpy(), "covariances_": covariances.numpy()}


def free_parameters(layer) -> int:
    """Free parameters of a layer: every weight less one per normalised set of logits, and those of
    its covariance structure (``free_parameter_count``, which knows its constraints)."""
    count = 0
    for name, parameter in layer.named_parameters():
        if name.startswith("covariance."):
            continue
        count += parameter.numel() - (
            parameter.numel() // parameter.shape[-1] if name.endswith("logits") else 0
        )
    covariance = getattr(layer, "covariance", None)
    return count + (covariance.free_parameter_count() if covariance is not None else 0)


def converged(history: list[dict]) -> bool:
    """Whether every objective's epoch-mean training loss changed by less than
    :data:`CONVERGENCE_TOLERANCE` (relative) over the last epoch."""
    if len(history) < 2:
        return False
    last, before = np.array(history[-1]["train_loss"]), np.array(history[-2]["train_loss"])
    return bool((np.abs(last - before) <= CONVERGENCE_TOLERANCE * np.abs(before)).all())
