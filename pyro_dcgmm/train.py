"""Training a stack by SVI with ``TraceEnum_ELBO``.

The guide is empty: every component variable is summed out (by Pyro's enumeration, or in the
equivalent closed-form factor that training uses by default) and every parameter is a point
estimate, so the ELBO is the exact negative log-likelihood (its annealed lower bound while annealing
runs), and SVI is maximum likelihood.  Following Pyro's ``ELBOModule`` idiom, the loss is
``TraceEnum_ELBO(max_plate_nesting=3).differentiable_loss(stack.model, stack.guide, ...)`` and the
parameters are the stack's own (module-local) ``torch`` parameters, stepped by a ``torch.optim``
optimiser.  That keeps per-layer learning rates, layer freezing (``wait``) and checkpointing in
plain PyTorch, and several models per process independent.

The loop is built from small pieces: a :class:`TrainingState` (epoch, step, this epoch's order and
position, history) with its own ``state_dict``, :func:`train_step` (one optimiser step, returning
what happened), a :class:`JsonLog` and a :class:`Checkpointer`.  A GMM layer that starts to train
(its ``wait`` over) is first initialised from its real inputs (:mod:`pyro_dcgmm.initialisation`).

Data parallel: when a ``torch.distributed`` process group is initialised (``torchrun``), every
process draws the same permutation, takes its share (``rank::world_size``) of each global mini-batch,
and gradients and per-layer losses are summed over processes before every step, so all processes take
the same step as one process with the whole batch (up to the order of floating-point sums).  Only
rank 0 evaluates, logs and writes checkpoints.  The ``DistributedDataParallel`` wrapper is not used:
Pyro's loss is built from the trace's factors, not from the module's output, which its
gradient-readiness tracking relies on.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from tqdm.auto import tqdm

from pyro_dcgmm.checkpoint import load_checkpoint, load_state_into
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.diagnostics import learning_problems
from pyro_dcgmm.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    TrainingInterrupted,
    TrainingWarning,
)
from pyro_dcgmm.initialisation import (
    dead_components,
    images_needed,
    initialise_layer,
    prune_dead,
    reseed_dead,
)
from pyro_dcgmm.optim import forget, make_optimizer
from pyro_dcgmm.run_folder import CHECKPOINT_NAME, LOG_NAME, Checkpointer, JsonLog, claim_run_folder
from pyro_dcgmm.stack import Stack
from pyro_dcgmm.validation import as_images, as_labels


@dataclass
class TrainResult:
    """What :func:`train` returns.

    :ivar history: one record per epoch: mean training loss per GMM layer (nats per sample),
        held-out log-likelihood per GMM layer, neighbourhood widths, wall time.
    :ivar steps: optimiser steps of the run in total (a resumed run's earlier ones included).
    :ivar seconds: wall time of this call.
    :ivar new_steps: steps this call took (0 when a resumed run had nothing left to do).
    """

    history: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    new_steps: int = 0


@dataclass
class TrainingState:
    """Where a run stands: epoch, step, this epoch's order and position in it, and the history.

    ``order is None`` between epochs.  ``epoch_losses`` sums the per-layer losses of this epoch's
    ``epoch_steps`` steps.  ``seconds`` is the training wall time of the run before this call (a
    resumed run's clock goes on from its checkpoint).  ``num_data`` is the size of the training set
    the run draws its orders from, so that a resumed run can refuse other data.
    """

    layers: int
    num_data: int | None = None
    epoch: int = 0
    step: int = 0
    order: torch.Tensor | None = None
    offset: int = 0
    history: list[dict] = field(default_factory=list)
    epoch_losses: torch.Tensor | None = None
    epoch_steps: int = 0
    skipped_in_a_row: int = 0
    skipped: int = 0
    seconds: float = 0.0
    started_at: int = 0  # the step this call started from (not saved)

    def start_epoch(self, num_data: int, generator: torch.Generator) -> None:
        self.num_data = num_data
        self.order, self.offset = torch.randperm(num_data, generator=generator), 0
        self.epoch_losses, self.epoch_steps = torch.zeros(self.layers, dtype=torch.float64), 0

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """Indices of the next mini-batch of this epoch."""
        index = self.order[self.offset : self.offset + batch_size]
        self.offset += batch_size
        return index

    def state_dict(self) -> dict:
        return {
            "num_data": self.num_data,
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "order": self.order,
            "offset": self.offset,
            "epoch_losses": self.epoch_losses,
            "epoch_steps": self.epoch_steps,
            "skipped": self.skipped,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.num_data = state.get("num_data")  # None in checkpoints written before it was recorded
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        self.order, self.offset = state["order"], state["offset"]
        losses = state["epoch_losses"]
        self.epoch_losses = None if losses is None else losses.double()
        self.epoch_steps = state["epoch_steps"]
        self.skipped = int(state.get("skipped", 0))
        self.seconds = float(state["seconds"])


@dataclass
class StepOutcome:
    """What one training step did: the mean loss per sample (all layers and the readout), the
    mean loss per sample of every GMM layer, and why the step was skipped (``None``: taken)."""

    loss: float
    layer_losses: list[float]
    problem: str | None


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the ``torch.distributed`` process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


def evaluate(stack: Stack, images: torch.Tensor, batch_size: int = 1000) -> list[float]:
    """Mean exact log-likelihood per sample (nats) at every GMM layer, bottom first."""
    return stack.layer_log_probs(images, batch_size).mean(0).tolist()


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform dequantisation of data on the grid ``k / (levels - 1)``: ``(k + u) / levels``."""
    noise = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
    return (x * (levels - 1) + noise) / levels


def waiting_layers(stack: Stack, progress: float) -> list:
    """Layers still frozen at this fraction of training (their ``wait`` is not over)."""
    return [layer for layer in stack.layers if getattr(layer.config, "wait", 0.0) > progress]


def initialise_ready_layers(stack: Stack, images: torch.Tensor, labels, waiting: list, generator) -> None:
    """Initialise, from their real inputs (and ``labels``, for a layer split by class), the GMM
    layers that start training now.

    The inputs are a random subsample of ``images`` passed up through the layers below as trained
    so far.  Every process of a data-parallel run draws the same subsample; rank 0's result is
    broadcast so all processes start from identical parameters.
    """
    for index, layer in zip(stack.mixture_indices, stack.mixture_layers, strict=True):
        if bool(layer.initialised) or layer in waiting:
            continue
        inputs, chosen_labels = _layer_inputs(stack, images, labels, index, layer, generator)
        initialise_layer(layer, inputs, generator, chosen_labels)
        _broadcast_layer(layer)


def _layer_inputs(stack: Stack, images: torch.Tensor, labels, index: int, gmm, generator):
    """The inputs of ``layers[index]`` for a random subsample of ``images`` (enough for ``gmm``),
    and the subsample's labels (``None`` without ``labels``)."""
    count = min(images.shape[0], images_needed(gmm))
    chosen = torch.randperm(images.shape[0], generator=generator)[:count].to(images.device)
    with torch.no_grad():
        inputs = torch.cat([stack.upward(chunk, index) for chunk in images[chosen].split(1000)])
    return inputs, None if labels is None else labels[chosen]


def _broadcast_layer(gmm) -> None:
    """In a process group, give every process rank 0's values of ``gmm``'s tensors."""
    if distributed_rank_and_size()[1] > 1:
        for tensor in gmm.state_dict().values():
            if torch.is_tensor(tensor):
                dist.broadcast(tensor, 0)


def reseed_dead_layers(
    stack: Stack, images: torch.Tensor, labels, generator, optimizer, log, final: bool
) -> None:
    """Re-seed or prune the dead components of every trained GMM layer (``GMMConfig.dead_weight``
    and ``dead_components``); after the ``final`` epoch only prune, since a re-seeded component
    would end the run untrained.

    The optimiser forgets what it kept about a re-seeded layer (online EM's running statistics).
    """
    for index, gmm in stack.reseedable_layers():
        reseeding = gmm.config.dead_components == "reseed"
        if not bool(gmm.initialised) or (reseeding and final) or not bool(dead_components(gmm).any()):
            continue
        if not reseeding:
            count, event = prune_dead(gmm), "pruned"
        else:
            inputs, chosen_labels = _layer_inputs(stack, images, labels, index, gmm, generator)
            count = reseed_dead(gmm, inputs, generator, chosen_labels)
            event = "reseeded"
            forget(optimizer, list(gmm.parameters()))
        _broadcast_layer(gmm)
        log.write({"event": event, "layer": index, "components": count})


def _local_loss(stack, elbo, batch, batch_labels, num_data: int, enumerated: bool):
    """This process's summed negative ELBO and per-GMM-layer loss sums (no averaging yet)."""
    if batch.shape[0] == 0:  # a last global batch smaller than the number of processes
        # zero gradients for exactly the parameters the other processes get gradients for
        used = [p for layer in stack.mixture_layers for p in layer.parameters()]
        if batch_labels is not None and stack.readout is not None:
            used += list(stack.readout.parameters())
        zero = sum(p.sum() for p in used) * 0.0
        return zero, torch.zeros(len(stack.objective_sites), device=zero.device, dtype=zero.dtype)
    with poutine.trace() as tape:
        loss = elbo.differentiable_loss(
            stack.model, stack.guide, batch, labels=batch_labels, num_data=num_data, enumerated=enumerated
        )
    scale = batch.shape[0] / num_data  # undo the data plate's num_data / batch scaling
    objectives = [tape.trace.nodes[site]["value"] for site in stack.objective_sites]
    return loss * scale, -torch.stack([objective.sum() for objective in objectives])


def _non_finite(stack, loss: float, layer_losses: list[float], gradient: float) -> str | None:
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


def _sum_over_processes(stack: Stack, totals: torch.Tensor) -> None:
    """Sum every gradient and the loss totals over all processes, in place.

    A parameter without a gradient in every process (a readout without labels) keeps none.
    """
    params = list(stack.parameters())
    flags = torch.tensor([p.grad is not None for p in params], dtype=totals.dtype, device=totals.device)
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        + [totals, flags]
    )
    dist.all_reduce(flat)
    offset = 0
    for p, flag in zip(params, flat[-len(params) :].tolist(), strict=True):
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone() if flag > 0 else None
        offset += p.numel()
    totals.copy_(flat[offset : offset + totals.numel()])


def train_step(stack, elbo, optimizer, batch, batch_labels, num_data: int, waiting, config) -> StepOutcome:
    """One SVI step on a global mini-batch: loss, gradients (summed over processes), checks, update.

    Layers in ``waiting`` get no gradient.  A step whose loss or gradient is not finite is not
    taken: its outcome names the problem and the parameters keep their values.
    """
    rank, world = distributed_rank_and_size()
    share = slice(rank, None, world)  # this process's part of the global batch
    loss, layer_sums = _local_loss(
        stack,
        elbo,
        batch[share],
        batch_labels[share] if batch_labels is not None else None,
        num_data,
        config.objective == "enumerated",
    )
    loss = loss / batch.shape[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    totals = torch.cat([loss.detach().reshape(1), layer_sums / batch.shape[0]])
    if world > 1:
        _sum_over_processes(stack, totals)
    for layer in waiting:
        for p in layer.parameters():
            p.grad = None
    gradients = [p.grad.sum() for p in stack.parameters() if p.grad is not None]
    gradient_sum = torch.stack(gradients).sum() if gradients else totals.new_zeros(())
    loss_value, *layer_losses, gradient_value = torch.cat([totals, gradient_sum.reshape(1)]).tolist()
    problem = _non_finite(stack, loss_value, layer_losses, gradient_value)
    if problem is None:
        problem = _finite_update(stack, optimizer)
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss_value, layer_losses, problem)


def _finite_update(stack: Stack, optimizer) -> str | None:
    """Take the optimiser step and project the precisions; if that left any parameter NaN or
    infinite (a learning rate far too large, say), put every parameter back and say so."""
    parameters = [p for p in stack.parameters() if p.grad is not None]
    before = [p.detach().clone() for p in parameters]
    optimizer.step()
    stack.project_()
    if bool(torch.cat([p.detach().flatten() for p in parameters]).isfinite().all()):
        return None
    with torch.no_grad():
        for parameter, value in zip(parameters, before, strict=True):
            parameter.copy_(value)
    return "the optimiser step made parameters non-finite"


def _checked_inputs(stack: Stack, images, labels, validation):
    images = as_images(images, stack.input_shape, stack.data_range, "images")
    if images.shape[0] < 2:
        raise DataError(f"images holds {images.shape[0]} sample; training needs at least 2")
    labels = as_labels(labels, images.shape[0], stack.num_classes)
    indices, layers = stack.mixture_indices, stack.mixture_layers
    split = [i for i, layer in zip(indices, layers, strict=True) if layer.config.classes]
    if labels is None and split:
        raise DataError(f"layer(s) {split} split their components by class: training needs labels")
    if validation is not None:
        validation = as_images(validation, stack.input_shape, stack.data_range, "validation")
    parameter = next(stack.parameters())  # training data go to the stack's device and dtype
    images = images.to(parameter.device, parameter.dtype)
    return images, labels.to(parameter.device) if labels is not None else None, validation


def _place(stack: Stack, device: torch.device) -> None:
    """Move the stack to ``device``; in a process group, start every process from rank 0's values."""
    stack.to(device)
    if distributed_rank_and_size()[1] > 1:
        for tensor in stack.state_dict().values():
            if torch.is_tensor(tensor):
                dist.broadcast(tensor, 0)


def _resume(path, stack, optimizer, generator, state: TrainingState, log: JsonLog, device, num_data) -> None:
    """Continue from the checkpoint at ``path`` (``None``: a new run)."""
    if path is None:
        return
    checkpoint = load_checkpoint(path, map_location=device)
    load_state_into(stack, checkpoint)
    training = checkpoint["training"]
    if training is None:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no training state to resume")
    try:
        optimizer.load_state_dict(training["optimizer"])
        generator.set_state(training["generator"])
        state.load_state_dict(training)
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} has a damaged training state ({error!r})") from None
    _check_resumed(str(path), state, num_data)
    state.started_at = state.step
    log.truncate(state.step)


def _check_resumed(path: str, state: TrainingState, num_data: int) -> None:
    """A resumed state must be one this data could have produced."""
    epoch_size = len(state.order) if state.order is not None else state.num_data  # None: between epochs
    if state.step < 0 or (state.order is not None and not 0 <= state.offset <= epoch_size):
        position = f"step {state.step}, offset {state.offset} of {epoch_size}"
        raise CheckpointError(f"checkpoint {path!r} has a damaged training state ({position})")
    if state.num_data is not None and state.num_data != num_data:
        raise CheckpointError(
            f"checkpoint {path!r} was trained on {state.num_data} images; this run has {num_data}: "
            "resume with the same data (data set, classes, train_limit, seed)"
        )


def _skip(outcome: StepOutcome, state: TrainingState, config: TrainConfig, log: JsonLog) -> None:
    """Count a step that was not taken; raise once the policy says so."""
    state.skipped_in_a_row += 1
    state.skipped += 1
    if config.non_finite == "raise" or state.skipped_in_a_row > config.max_skipped_steps:
        in_a_row = f", {state.skipped_in_a_row} steps in a row" if state.skipped_in_a_row > 1 else ""
        raise NonFiniteLossError(
            f"{outcome.problem} at step {state.step} (epoch {state.epoch}){in_a_row}; the parameters "
            "were not updated. Lower the learning rate, raise precision_floor, or check the data"
        )
    state.step += 1
    log.write({"event": "skipped", "step": state.step, "reason": outcome.problem})


def _record_step(stack, outcome: StepOutcome, state: TrainingState, waiting, config, log, bar) -> None:
    """Book-keeping after a taken step: annealing schedules, epoch sums, log and progress bar."""
    state.skipped_in_a_row = 0
    stack.update_schedules(outcome.layer_losses, waiting)
    state.epoch_losses += torch.tensor(outcome.layer_losses, dtype=torch.float64)
    state.epoch_steps += 1
    state.step += 1
    if state.step % config.log_every == 0:
        names = stack.objective_names
        bar.set_postfix({n: f"{v:.4g}" for n, v in zip(names, outcome.layer_losses, strict=True)})
        widths = [g.neighbourhood_width for g in stack.gmm_layers]
        log.write(
            {
                "step": state.step,
                "epoch": state.epoch + 1,  # the epoch in progress; epoch records count finished ones
                "loss": outcome.loss,
                "layer_loss": outcome.layer_losses,
                "width": widths,
            }
        )


def _end_epoch(stack, state: TrainingState, validation, config, log: JsonLog, start_time: float) -> None:
    state.epoch += 1
    state.order = None
    record = {
        "step": state.step,
        "epoch": state.epoch,
        "train_loss": (state.epoch_losses / max(state.epoch_steps, 1)).tolist(),
        "width": [g.neighbourhood_width for g in stack.gmm_layers],
        "seconds": state.seconds + time.perf_counter() - start_time,
    }
    if validation is not None and distributed_rank_and_size()[0] == 0:
        record["validation_log_likelihood"] = evaluate(stack, validation, config.eval_batch_size)
    state.history.append(record)
    log.write({"event": "epoch", **record})


class Interruption:
    """Within its ``with`` block, the first Ctrl-C (SIGINT) only sets :attr:`requested`, so that
    training stops between two steps; a second one interrupts at once.  Off outside the main thread
    and in a process group (every process must stop at the same step)."""

    def __enter__(self) -> Interruption:
        self.requested = False
        self._previous = None
        alone = distributed_rank_and_size()[1] == 1
        if alone and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)
        return self

    def _request(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _interrupted(state: TrainingState, checkpointer) -> TrainingInterrupted:
    where = f"training interrupted at step {state.step} (epoch {state.epoch}, {state.offset} images into it)"
    if checkpointer is None:
        return TrainingInterrupted(f"{where}; nothing was saved (no output folder)")
    path = checkpointer.out_dir / CHECKPOINT_NAME
    return TrainingInterrupted(f"{where}; saved {path}: continue with --resume {path} (resume= in Python)")


def _finish(stack: Stack, state: TrainingState, start_time: float) -> TrainResult:
    """Warn of every sign that the run did not learn; the result."""
    for problem in learning_problems(stack, state.history, state.skipped):
        warnings.warn(problem, TrainingWarning, stacklevel=3)
    seconds = time.perf_counter() - start_time
    return TrainResult(state.history, state.step, seconds, state.step - state.started_at)


def _planned_steps(config: TrainConfig, num_data: int) -> tuple[int, int]:
    """Steps of ``config.epochs`` epochs (what ``wait`` is a fraction of), and where to stop."""
    planned = config.epochs * math.ceil(num_data / min(config.batch_size, num_data))
    return planned, planned if config.max_steps is None else min(planned, config.max_steps)


def _elbo(stack: Stack, config: TrainConfig) -> TraceEnum_ELBO:
    return TraceEnum_ELBO(
        max_plate_nesting=stack.max_plate_nesting,
        strict_enumeration_warning=config.objective == "enumerated",  # the closed form has no sites
    )


def _writers(out_dir, config: TrainConfig, run_config, resume, overwrite: bool):
    """The checkpointer (``None`` where nothing is written) and the log of this process."""
    if out_dir is None or distributed_rank_and_size()[0] != 0:
        return None, JsonLog(None)
    out_dir = claim_run_folder(out_dir, resume, overwrite)
    return Checkpointer(out_dir, config.keep_epoch_checkpoints, run_config), JsonLog(out_dir / LOG_NAME)


def _next_step(
    stack,
    images,
    labels,
    optimizer,
    generator,
    config,
    dequantize_levels,
    elbo,
    state,
    planned_steps,
    log,
    bar,
):
    """Initialise the layers whose wait is over, then take one SVI step on the next mini-batch."""
    waiting = waiting_layers(stack, state.step / planned_steps)
    initialise_ready_layers(stack, images, labels, waiting, generator)
    if not config.joint_refinement:  # greedy: only the top of a joint stack's tree trains
        waiting = waiting + stack.layers_below_top()
    index = state.next_batch(min(config.batch_size, images.shape[0])).to(images.device)
    batch = images[index]
    if dequantize_levels is not None:
        batch = dequantize(batch, dequantize_levels, generator)
    batch_labels = labels[index] if labels is not None else None
    outcome = train_step(stack, elbo, optimizer, batch, batch_labels, images.shape[0], waiting, config)
    if outcome.problem is not None:
        _skip(outcome, state, config, log)
    else:
        _record_step(stack, outcome, state, waiting, config, log, bar)
    bar.update(1)


def train(
    stack: Stack,
    images,
    labels=None,
    *,
    config: TrainConfig | None = None,
    validation=None,
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    dequantize_levels: int | None = None,
    run_config=None,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``stack`` (its parameters, in place) on ``images`` by SVI with ``TraceEnum_ELBO``.

    :param images: training images (N, C, H, W) in the stack's data range.
    :param labels: class indices (N,) for a Readout, or ``None``.
    :param TrainConfig config: optimiser, batch size, epochs, seed, device, logging.
    :param validation: held-out images, evaluated after every epoch.
    :param out_dir: folder of ``checkpoint.pt`` (every epoch, at ``max_steps`` and at Ctrl-C),
        ``epoch-XXXX.pt`` and ``log.jsonl`` (:mod:`~pyro_dcgmm.run_folder`); ``None``: nothing.
        A folder holding another run is refused unless ``resume`` is its checkpoint or ``overwrite``.
    :param resume: a checkpoint to continue from (same architecture and data); the run then
        reproduces the uninterrupted one.
    :param int dequantize_levels: dequantise batches of data on this many levels (256: 8 bits).
    :param run_config: the full :class:`~pyro_dcgmm.config.RunConfig`, stored in checkpoints.
    :raises TrainingInterrupted: at Ctrl-C, after the step under way and a checkpoint.
    """
    start_time = time.perf_counter()
    config = config if config is not None else TrainConfig()
    if distributed_rank_and_size()[1] > 1 and not stack.trains_distributed:
        raise ConfigError(f"a {type(stack).__name__} trains in one process; start it without torchrun")
    device = resolve_device(config.device)
    _place(stack, device)
    images, labels, validation = _checked_inputs(stack, images, labels, validation)
    optimizer = make_optimizer(stack, config)
    generator = torch.Generator().manual_seed(config.seed)
    checkpointer, log = _writers(out_dir, config, run_config, resume, overwrite)
    state = TrainingState(len(stack.objective_names))
    _resume(resume, stack, optimizer, generator, state, log, device, images.shape[0])
    elbo = _elbo(stack, config)
    step = functools.partial(
        _next_step, stack, images, labels, optimizer, generator, config, dequantize_levels, elbo
    )
    planned_steps, stop_step = _planned_steps(config, images.shape[0])
    bar = tqdm(total=stop_step, initial=state.step, disable=not config.progress)
    with bar, log, pyro.validation_enabled(config.validate_args), Interruption() as interruption:
        while state.step < stop_step and not interruption.requested:
            # 1. A new epoch draws a new order of the training set.
            if state.order is None:
                state.start_epoch(images.shape[0], generator)
            # 2. Steps until the epoch or the run ends, or Ctrl-C (see _next_step).
            while state.offset < images.shape[0] and state.step < stop_step and not interruption.requested:
                step(state, planned_steps, log, bar)
            # 3. An epoch ends: dead components re-seeded, a record (and validation); a checkpoint.
            if state.offset >= images.shape[0]:
                reseed_dead_layers(stack, images, labels, generator, optimizer, log, state.step >= stop_step)
                _end_epoch(stack, state, validation, config, log, start_time)
            if checkpointer is not None:
                checkpointer.save(stack, state, optimizer, generator, time.perf_counter() - start_time)
    if interruption.requested:
        raise _interrupted(state, checkpointer)
    return _finish(stack, state, start_time)
