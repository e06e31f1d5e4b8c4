"""Training a stack by SVI with ``TraceEnum_ELBO``.

The guide is empty: every component variable is summed out (by Pyro's enumeration, or in the
equivalent closed-form factor that training uses by default) and every parameter is a point
estimate, so the ELBO is the exact negative log-likelihood (its annealed lower bound while annealing
runs), and SVI is maximum likelihood.  Following Pyro's ``ELBOModule`` idiom, the loss is
``TraceEnum_ELBO(max_plate_nesting=3).differentiable_loss(stack.model, stack.guide, ...)`` and the
parameters are the stack's own (module-local) ``torch`` parameters, stepped by a ``torch.optim``
optimiser.  That keeps per-layer learning rates, layer freezing (``wait``) and checkpointing in
plain PyTorch, and several models per process independent.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
from pyro.infer import TraceEnum_ELBO
from tqdm.auto import tqdm

from pyro_dcgmm.annealing import AnnealingSchedule
from pyro_dcgmm.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError
from pyro_dcgmm.files import atomic_write
from pyro_dcgmm.gmm import GMM
from pyro_dcgmm.stack import MAX_PLATE_NESTING, Stack
from pyro_dcgmm.validation import as_images, as_labels

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


@dataclass
class TrainResult:
    """What :func:`train` returns.

    :ivar history: one record per epoch: mean training loss per GMM layer (nats per sample),
        held-out log-likelihood per GMM layer, neighbourhood widths, wall time.
    :ivar steps: optimiser steps taken in total.
    :ivar seconds: wall time of this call.
    """

    history: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


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


def make_optimizer(stack: Stack, config: TrainConfig) -> torch.optim.Optimizer:
    """One parameter group per (layer, parameter kind) with its learning-rate factor.

    For plain SGD the rate of a shared GMM layer is divided by its number of positions: the loss
    sums over positions, the paper's averages.
    """
    groups = []
    for layer in stack.layers:
        if not hasattr(layer, "parameter_groups"):
            continue
        positions = 1
        if config.optimizer == "sgd" and isinstance(layer, GMM) and layer.config.shared:
            positions = layer.output_shape[1] * layer.output_shape[2]
        for params, scale in layer.parameter_groups():
            groups.append({"params": params, "lr": config.lr * scale / positions})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=config.lr)


def evaluate(stack: Stack, images: torch.Tensor, batch_size: int = 1000) -> list[float]:
    """Mean exact log-likelihood per sample (nats) at every GMM layer, bottom first."""
    return stack.layer_log_probs(images, batch_size).mean(0).tolist()


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform dequantisation of data on the grid ``k / (levels - 1)``: ``(k + u) / levels``."""
    noise = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
    return (x * (levels - 1) + noise) / levels


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records written after ``step`` (by a run that died after its last checkpoint)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    atomic_write(path, lambda handle: handle.write("".join(f"{line}\n" for line in kept).encode()))


def check_train_config(config: TrainConfig) -> None:
    """Reject settings no training can run with, naming the setting."""
    positive = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "log_every": config.log_every,
        "eval_batch_size": config.eval_batch_size,
    }
    if config.max_steps is not None:
        positive["max_steps"] = config.max_steps
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"training.{name} must be >= 1, got {value}")
    if not config.lr > 0.0 or not math.isfinite(config.lr):
        raise ConfigError(f"training.lr must be a positive number, got {config.lr}")
    if config.momentum < 0.0:
        raise ConfigError(f"training.momentum must be >= 0, got {config.momentum}")
    if config.max_skipped_steps < 0:
        raise ConfigError(f"training.max_skipped_steps must be >= 0, got {config.max_skipped_steps}")


def _local_loss(stack, elbo, batch, batch_labels, num_data: int, enumerated: bool):
    """This process's summed negative ELBO and per-GMM-layer loss sums (no averaging yet)."""
    if batch.shape[0] == 0:  # a last global batch smaller than the number of processes
        # zero gradients for exactly the parameters the other processes get gradients for
        used = [p for gmm in stack.gmm_layers for p in gmm.parameters()]
        if batch_labels is not None and stack.readout is not None:
            used += list(stack.readout.parameters())
        zero = sum(p.sum() for p in used) * 0.0
        return zero, torch.zeros(len(stack.gmm_indices), device=zero.device, dtype=zero.dtype)
    loss = elbo.differentiable_loss(
        stack.model, stack.guide, batch, labels=batch_labels, num_data=num_data, enumerated=enumerated
    )
    scale = batch.shape[0] / num_data  # undo the data plate's num_data / batch scaling
    layer_sums = torch.stack([g.last_loss.sum() for g in stack.gmm_layers])
    return loss * scale, layer_sums


def _non_finite(names: list[str], loss: float, layer_losses: list[float], gradient: float) -> str | None:
    """What is not finite in one step's loss and gradients, or ``None``."""
    bad = [name for name, value in zip(names, layer_losses, strict=True) if not math.isfinite(value)]
    if bad:
        return f"non-finite loss in layer(s) {', '.join(bad)}"
    if not math.isfinite(loss):
        return "non-finite loss in the readout"
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
) -> TrainResult:
    """Train ``stack`` on ``images`` by SVI with ``TraceEnum_ELBO`` and an empty guide.

    :param Stack stack: the model; its parameters are updated in place.
    :param images: training images (N, C, H, W) in the stack's data range.
    :param labels: class indices (N,) for a Readout, or ``None``.
    :param TrainConfig config: optimiser, batch size, epochs, seed, device, logging.
    :param validation: held-out images, evaluated after every epoch.
    :param out_dir: where ``checkpoint.pt`` (rewritten after every epoch and when ``max_steps``
        stops a run mid-epoch), ``epoch-XXXX.pt`` (with ``config.keep_epoch_checkpoints``) and
        ``log.jsonl`` go; ``None`` writes nothing.
    :param resume: a checkpoint to continue from (same architecture and data); the run then
        reproduces the uninterrupted one.
    :param int dequantize_levels: add uniform noise to every batch of data quantised to this many
        levels (256 for 8-bit images); ``None`` trains on the data as they are.
    :param run_config: the full :class:`~pyro_dcgmm.config.RunConfig`, stored in checkpoints.

    Data parallel: when a ``torch.distributed`` process group is initialised (``torchrun``), every
    process draws the same permutation, takes its share (``rank::world_size``) of each global
    mini-batch, and gradients and per-layer losses are summed over processes before every step,
    so all processes take the same step as one process with the whole batch (up to the order of
    floating-point sums).  Only rank 0 evaluates, logs and writes checkpoints.  The
    ``DistributedDataParallel`` wrapper is not used: Pyro's loss is built from the trace's factors,
    not from the module's output, which its gradient-readiness tracking relies on.
    """
    start_time = time.perf_counter()
    config = config if config is not None else TrainConfig()
    check_train_config(config)
    images = as_images(images, stack.input_shape, stack.data_range, "images")
    if images.shape[0] < 2:
        raise DataError(f"images holds {images.shape[0]} sample; training needs at least 2")
    readout = stack.readout
    labels = as_labels(labels, images.shape[0], readout.num_classes if readout else None)
    if validation is not None:
        validation = as_images(validation, stack.input_shape, stack.data_range, "validation")
    device = resolve_device(config.device)
    rank, world = distributed_rank_and_size()
    stack.to(device)
    if world > 1:
        for tensor in stack.state_dict().values():
            if torch.is_tensor(tensor):
                dist.broadcast(tensor, 0)
    dtype = next(stack.parameters()).dtype
    images = images.to(device, dtype)
    labels = labels.to(device) if labels is not None else None
    gmms = stack.gmm_layers
    optimizer = make_optimizer(stack, config)
    schedules = [
        AnnealingSchedule(
            gmm.neighbourhood_width,
            gmm.config.width_floor,
            gmm.config.width_decay,
            gmm.config.plateau_window,
            gmm.config.plateau_tolerance,
        )
        for gmm in gmms
    ]
    generator = torch.Generator().manual_seed(config.seed)
    elbo = TraceEnum_ELBO(
        max_plate_nesting=MAX_PLATE_NESTING,
        strict_enumeration_warning=config.objective == "enumerated",  # the closed form has no sites
    )
    num_data, batch_size = images.shape[0], min(config.batch_size, images.shape[0])
    planned_steps = config.epochs * math.ceil(num_data / batch_size)
    stop_step = planned_steps if config.max_steps is None else min(planned_steps, config.max_steps)
    out_dir = Path(out_dir) if out_dir is not None and rank == 0 else None
    log_path = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path = out_dir / LOG_NAME
    epoch, step, history = 0, 0, []
    order, offset = None, 0  # this epoch's permutation and how much of it is done
    epoch_losses, epoch_steps = torch.zeros(len(gmms), dtype=torch.float64), 0
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        load_state_into(stack, state)
        training = state["training"]
        if training is None:
            raise CheckpointError(f"checkpoint {str(resume)!r} holds no training state to resume")
        optimizer.load_state_dict(training["optimizer"])
        for schedule, schedule_state in zip(schedules, training["schedules"], strict=True):
            schedule.load_state_dict(schedule_state)
        generator.set_state(training["generator"])
        epoch, step, history = training["epoch"], training["step"], list(training["history"])
        order, offset = training["order"], training["offset"]
        epoch_losses, epoch_steps = training["epoch_losses"].double(), training["epoch_steps"]
        if log_path is not None:
            _truncate_log(log_path, step)
    layer_names = [f"L{i}" for i in stack.gmm_indices]
    skipped_in_a_row = 0
    with contextlib.ExitStack() as context:
        bar = context.enter_context(
            tqdm(total=stop_step, initial=step, disable=not config.progress, unit="step")
        )
        log_file = context.enter_context(open(log_path, "a")) if log_path is not None else None
        context.enter_context(pyro.validation_enabled(config.validate))
        while step < stop_step:
            if order is None:
                order, offset = torch.randperm(num_data, generator=generator), 0
                epoch_losses, epoch_steps = torch.zeros(len(gmms), dtype=torch.float64), 0
            while offset < num_data and step < stop_step:
                index = order[offset : offset + batch_size].to(device)
                offset += batch_size
                batch = images[index]
                if dequantize_levels is not None:
                    batch = dequantize(batch, dequantize_levels, generator)
                batch_labels = labels[index] if labels is not None else None
                share = slice(rank, None, world)  # this process's part of the global batch
                loss, layer_sums = _local_loss(
                    stack,
                    elbo,
                    batch[share],
                    batch_labels[share] if batch_labels is not None else None,
                    num_data,
                    config.objective == "enumerated",
                )
                loss = loss / index.numel()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                totals = torch.cat([loss.detach().reshape(1), layer_sums / index.numel()])
                if world > 1:
                    _sum_over_processes(stack, totals)
                progress = step / planned_steps
                waiting = [layer for layer in stack.layers if getattr(layer.config, "wait", 0.0) > progress]
                for layer in waiting:
                    for p in layer.parameters():
                        p.grad = None
                gradients = [p.grad.sum() for p in stack.parameters() if p.grad is not None]
                gradient_sum = torch.stack(gradients).sum() if gradients else totals.new_zeros(())
                loss_value, *layer_losses, gradient_value = torch.cat(
                    [totals, gradient_sum.reshape(1)]
                ).tolist()
                problem = _non_finite(layer_names, loss_value, layer_losses, gradient_value)
                if problem is not None:
                    skipped_in_a_row += 1
                    if config.non_finite == "raise" or skipped_in_a_row > config.max_skipped_steps:
                        raise NonFiniteLossError(
                            f"{problem} at step {step} (epoch {epoch})"
                            + (f", {skipped_in_a_row} steps in a row" if skipped_in_a_row > 1 else "")
                            + "; the parameters were not updated. Lower the learning rate, raise "
                            "precision_floor, or check the data"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    bar.update(1)
                    if log_file is not None:
                        log_file.write(
                            json.dumps({"event": "skipped", "step": step, "reason": problem}) + "\n"
                        )
                    continue
                skipped_in_a_row = 0
                optimizer.step()
                for gmm, schedule, value in zip(gmms, schedules, layer_losses, strict=True):
                    if gmm not in waiting and schedule.update(value):
                        gmm.neighbourhood_width = schedule.width
                epoch_losses += torch.tensor(layer_losses, dtype=torch.float64)
                epoch_steps += 1
                step += 1
                bar.update(1)
                if step % config.log_every == 0:
                    bar.set_postfix({n: f"{v:.4g}" for n, v in zip(layer_names, layer_losses, strict=True)})
                    if log_file is not None:
                        record = {
                            "step": step,
                            "epoch": epoch,
                            "loss": loss_value,
                            "layer_loss": layer_losses,
                            "width": [g.neighbourhood_width for g in gmms],
                        }
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
            if offset >= num_data:
                epoch += 1
                order = None
                record = {
                    "step": step,
                    "epoch": epoch,
                    "train_loss": (epoch_losses / max(epoch_steps, 1)).tolist(),
                    "width": [g.neighbourhood_width for g in gmms],
                    "seconds": time.perf_counter() - start_time,
                }
                if validation is not None and rank == 0:
                    record["validation_log_likelihood"] = evaluate(stack, validation, config.eval_batch_size)
                history.append(record)
                if log_file is not None:
                    log_file.write(json.dumps({"event": "epoch", **record}) + "\n")
                    log_file.flush()
            if out_dir is not None:
                training = {
                    "optimizer": optimizer.state_dict(),
                    "schedules": [s.state_dict() for s in schedules],
                    "generator": generator.get_state(),
                    "epoch": epoch,
                    "step": step,
                    "history": history,
                    "order": order,
                    "offset": offset,
                    "epoch_losses": epoch_losses,
                    "epoch_steps": epoch_steps,
                }
                if config.keep_epoch_checkpoints and order is None:
                    save_checkpoint(out_dir / f"epoch-{epoch:04d}.pt", stack, training, run_config)
                save_checkpoint(out_dir / CHECKPOINT_NAME, stack, training, run_config)
    return TrainResult(history, step, time.perf_counter() - start_time)
