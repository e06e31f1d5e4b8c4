"""One SVI step: the loss of a global mini-batch, its gradients (summed over processes), the checks
that every loss and gradient is finite, and the update with the projection back into the
constraints; checked on the host at once (:func:`train_step`) or later, in a window of steps
(:func:`unchecked_step`, :mod:`pyro_dcgmm.training.window`).

Every component variable is summed out (by Pyro's enumeration, or in the equivalent closed-form
factor that training uses by default) and every parameter is a point estimate, so the ELBO is the
exact negative log-likelihood (its annealed lower bound while annealing runs), and SVI is maximum
likelihood; for layers with priors the stack's guide is a ``Delta`` at their parameters and the
ELBO the negative log posterior (MAP), except under online EM, whose gradient is the likelihood's
alone (its M-step adds the prior, :mod:`pyro_dcgmm.model.priors`).  Following Pyro's
``ELBOModule`` idiom, the loss is ``TraceEnum_ELBO(max_plate_nesting=...).differentiable_loss(
stack.model, stack.guide, ...)`` (computed without reading the device:
:class:`~pyro_dcgmm.training.elbo.TraceEnumELBO`) and the parameters are the stack's own
(module-local) ``torch`` parameters, stepped by a ``torch.optim`` optimiser.  That keeps per-layer
learning rates, layer freezing (``wait``) and checkpointing in plain PyTorch, and several models
per process independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro import poutine

from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.training.distributed import distributed_rank_and_size, sum_over_processes
from pyro_dcgmm.training.elbo import TraceEnumELBO
from pyro_dcgmm.training.state import StepOutcome


@dataclass(frozen=True)
class Batch:
    """A global mini-batch: ``images`` (B, C, H, W), their ``labels`` (B,) or ``None``, and the
    size ``num_data`` of the training set they are drawn from (the ELBO's scale)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_data: int

    def share(self, rank: int, world: int) -> Batch:
        """This process's part of the batch."""
        part = slice(rank, None, world)
        labels = None if self.labels is None else self.labels[part]
        return Batch(self.images[part], labels, self.num_data)


def make_elbo(stack, config: TrainConfig) -> TraceEnumELBO:
    """The ELBO a step differentiates: ``TraceEnum_ELBO``'s, reading nothing from the device
    (:mod:`pyro_dcgmm.training.elbo`)."""
    return TraceEnumELBO(
        max_plate_nesting=stack.max_plate_nesting,
        strict_enumeration_warning=config.objective == "enumerated",  # the closed form has no sites
    )


def local_loss(stack, elbo, batch: Batch, enumerated: bool, priors: bool = True):
    """This process's summed negative ELBO and per-objective loss sums (no averaging yet); with
    ``priors`` the layers' log priors count (MAP), else the likelihood alone (for online EM)."""
    if batch.images.shape[0] == 0:  # a last global batch smaller than the number of processes
        # zero gradients for exactly the parameters the other processes get gradients for
        used = [p for layer in stack.mixture_layers for p in layer.parameters()]
        if batch.labels is not None and stack.readout is not None:
            used += list(stack.readout.parameters())
        zero = sum(p.sum() for p in used) * 0.0
        return zero, torch.zeros(len(stack.objective_sites), device=zero.device, dtype=zero.dtype)
    model = poutine.trace(stack.model)  # the model's trace holds the objectives
    loss = elbo.differentiable_loss(
        model, stack.guide, batch.images, labels=batch.labels, num_data=batch.num_data,
        enumerated=enumerated, priors=priors,
    )  # fmt: skip
    scale = batch.images.shape[0] / batch.num_data  # undo the data plate's num_data / batch scaling
    objectives = [model.trace.nodes[site]["value"] for site in stack.objective_sites]
    return loss * scale, -torch.stack([objective.sum() for objective in objectives])


def non_finite(stack, loss: float, layer_losses: list[float], gradient: float) -> str | None:
    """What is not finite in one step's loss and gradients, or ``None``."""
    names = stack.objective_names
    bad = [name for name, value in zip(names, layer_losses, strict=True) if not math.isfinite(value)]
    if bad:
        return f"non-finite loss in objective(s) {', '.join(bad)}"
    if not math.isfinite(loss):
        return "non-finite loss in the readout" if stack.readout is not None else "non-finite total loss"
    if not math.isfinite(gradient):
        return "non-finite gradient"
    return None


def train_step(stack, elbo, optimizer, batch: Batch, waiting, config: TrainConfig) -> StepOutcome:
    """One checked SVI step on a global mini-batch: loss, gradients (summed over processes), checks
    on the host, update.

    Layers in ``waiting`` get no gradient.  A step whose loss or gradient is not finite is not
    taken: its outcome names the problem and the parameters keep their values.
    """
    outcome = step_outcome(stack, step_values(stack, elbo, optimizer, batch, waiting, config).tolist())
    if outcome.problem is None:
        outcome.problem = finite_update(stack, optimizer)
    optimizer.zero_grad(set_to_none=True)
    return outcome


def unchecked_step(stack, elbo, optimizer, batch: Batch, waiting, config: TrainConfig) -> torch.Tensor:
    """One SVI step whose update is taken without waiting for the device: its values stay there
    for a later check (:mod:`pyro_dcgmm.training.window`), which undoes it if they are not finite."""
    values = step_values(stack, elbo, optimizer, batch, waiting, config)
    optimizer.step()
    stack.project_()
    optimizer.zero_grad(set_to_none=True)
    return values


def step_outcome(stack, values: list[float]) -> StepOutcome:
    """A step's outcome from its values read on the host: what :func:`step_values` gives."""
    loss, *layer_losses, gradient = values
    return StepOutcome(loss, layer_losses, non_finite(stack, loss, layer_losses, gradient))


def step_values(stack, elbo, optimizer, batch: Batch, waiting, config: TrainConfig) -> torch.Tensor:
    """The loss and gradients of one step, summed over processes, without the update; the step's
    values on the device: its mean loss, every objective's mean loss, and the sum of all gradients
    (not finite when one of them is not).  Layers in ``waiting`` get no gradient."""
    rank, world = distributed_rank_and_size()
    size = batch.images.shape[0]
    enumerated, priors = config.objective == "enumerated", config.optimizer != "em"
    loss, layer_sums = local_loss(stack, elbo, batch.share(rank, world), enumerated, priors)
    loss = loss / size
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    totals = torch.cat([loss.detach().reshape(1), layer_sums / size])
    if world > 1:
        sum_over_processes(stack, totals)
    for layer in waiting:
        for p in layer.parameters():
            p.grad = None
    gradients = [p.grad.sum() for p in stack.parameters() if p.grad is not None]
    gradient_sum = torch.stack(gradients).sum() if gradients else totals.new_zeros(())
    return torch.cat([totals, gradient_sum.reshape(1)])


def all_finite(parameters) -> torch.Tensor:
    """Whether every entry of ``parameters`` is finite, as a boolean tensor on their device (read
    it on the host when it is needed: that waits for the device)."""
    return torch.cat([p.detach().flatten() for p in parameters]).isfinite().all()


def finite_update(stack, optimizer) -> str | None:
    """Take the optimiser step and project every parameter back inside its constraints
    (``stack.project_()``); if that left any parameter NaN or infinite (a learning rate far too
    large, say), put every parameter back and say so."""
    parameters = [p for p in stack.parameters() if p.grad is not None]
    before = [p.detach().clone() for p in parameters]
    optimizer.step()
    stack.project_()
    if bool(all_finite(parameters)):
        return None
    with torch.no_grad():
        for parameter, value in zip(parameters, before, strict=True):
            parameter.copy_(value)
    return "the optimiser step made parameters non-finite"
