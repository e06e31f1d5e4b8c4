"""Optimisers for a stack: Adam or SGD on every parameter, or online EM on the GMM layers.

Every trainer follows the same ``TraceEnum_ELBO`` gradient; they differ in how a step uses it.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.joint import JointStack
from pyro_dcgmm.training.em import JointOnlineEM, OnlineEM


class OptimizerChain:
    """Several optimisers over disjoint parameters, stepped, zeroed and checkpointed together."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(optimizer_state)


def forget(optimizer, parameters) -> None:
    """Drop what ``optimizer`` (a torch optimiser or an :class:`OptimizerChain`) keeps about
    ``parameters``: their next step starts afresh (online EM from the current parameters)."""
    for single in getattr(optimizer, "optimizers", [optimizer]):
        for parameter in parameters:
            single.state.pop(parameter, None)


def _gradient_groups(layers, config: TrainConfig) -> list[dict]:
    """One parameter group per (layer, parameter kind) with its learning-rate factor.

    For plain SGD the rate of a shared GMM layer is divided by its number of positions: the loss
    sums over positions, the paper's averages.
    """
    groups = []
    for layer in layers:
        positions = layer.positions if config.optimizer == "sgd" and isinstance(layer, GMM) else 1
        for params, scale in layer.parameter_groups():
            groups.append({"params": params, "lr": config.lr * scale / positions})
    return groups


def _gradient_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=config.lr)


def batch_multiple(config: TrainConfig) -> float:
    """The mini-batch size over the one online EM's step sizes are set for."""
    return config.batch_size / config.em_reference_batch


def readout_rate(config: TrainConfig) -> float:
    """Adam's rate for the layers beside online EM (a Readout): ``lr`` is set for batches of
    ``em_reference_batch`` and grows as the square root of the batch (the square-root rule for
    adaptive optimisers), so that a larger batch, which takes fewer steps, still trains the Readout
    (``docs/figures/batch-size/``)."""
    return config.lr * math.sqrt(batch_multiple(config))


def make_optimizer(stack, config: TrainConfig, num_data: int | None = None):
    """The optimiser ``config.optimizer`` names for ``stack``'s parameters.

    ``"em"``: :class:`~pyro_dcgmm.training.em.OnlineEM` on the GMM layers (MAP-EM on a data set of
    ``num_data`` samples for layers with priors) and Adam (rate ``lr``) on the Readout; ``"adam"``
    and ``"sgd"``: that optimiser on every parameter (MAP through the stack's guide).
    """
    config = config.for_device(next(stack.parameters()).device.type)  # batch_size "auto" as training has it
    trainable = [layer for layer in stack.layers if hasattr(layer, "parameter_groups")]
    if config.optimizer != "em":
        if any(gmm.config.weight_posterior == "mean_field" for gmm in stack.gmm_layers):
            raise ConfigError(
                f"weight_posterior = 'mean_field' is an online-EM update, not one for optimizer = "
                f"{config.optimizer!r}: use optimizer = 'em', or weight_posterior = 'map'"
            )
        return _gradient_optimizer(_gradient_groups(trainable, config), config)
    if isinstance(stack, JointStack):
        if config.objective != "closed_form":
            raise ConfigError(
                "online EM trains a joint stack through its closed-form objective (objective = "
                "'closed_form'); the enumerated one serves Adam, SGD and inference"
            )
        return JointOnlineEM(stack, config.em_step_offset, config.em_step_decay, batch_multiple(config))
    others = [layer for layer in trainable if not isinstance(layer, GMM)]
    schedule = (config.em_step_offset, config.em_step_decay)
    optimizers = [OnlineEM(stack.gmm_layers, *schedule, num_data, batch_multiple(config))]
    if others:
        beside = dataclasses.replace(config, lr=readout_rate(config))
        optimizers.append(_gradient_optimizer(_gradient_groups(others, beside), beside))
    return OptimizerChain(optimizers)
