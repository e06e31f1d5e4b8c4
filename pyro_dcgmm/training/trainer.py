"""Training a stack by SVI with ``TraceEnum_ELBO``: the :class:`Trainer`, which owns one run.

A run is a loop of epochs; each draws a new order of the training set and takes one SVI step
(:mod:`~pyro_dcgmm.training.step`) per mini-batch, the steps checked for non-finite values in
windows of ``check_every`` (:mod:`pyro_dcgmm.training.window`).  A layer with components that starts
to train (its ``wait`` over) is first initialised from its real inputs
(:mod:`pyro_dcgmm.training.initialisation`); at the end of every epoch dead components are re-seeded
or pruned, the held-out data are scored and a checkpoint is written
(:mod:`pyro_dcgmm.training.run_folder`).  A run stopped by ``max_steps``, Ctrl-C or a crash and
resumed from its checkpoint ends exactly where the uninterrupted run does.  Data-parallel training:
:mod:`pyro_dcgmm.training.distributed`.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence

import pyro
import torch
from tqdm.auto import tqdm

from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.data.datasets import dequantize
from pyro_dcgmm.device import float32_precision, resolve_device
from pyro_dcgmm.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    TrainingInterrupted,
    TrainingWarning,
)
from pyro_dcgmm.evaluation.metrics import held_out_log_likelihood
from pyro_dcgmm.training.batches import BatchSource
from pyro_dcgmm.training.checkpoint import load_checkpoint, load_state_into
from pyro_dcgmm.training.data_checks import checked_data, require_trainable
from pyro_dcgmm.training.diagnostics import learning_problems
from pyro_dcgmm.training.distributed import broadcast_state, distributed_rank_and_size
from pyro_dcgmm.training.initialisation import (
    dead_components,
    images_needed,
    initialise_layer,
    prune_dead,
    reseed_dead,
)
from pyro_dcgmm.training.interruption import Interruption
from pyro_dcgmm.training.optim import forget, make_optimizer
from pyro_dcgmm.training.run_folder import CHECKPOINT_NAME, LOG_NAME, JsonLog, RunFiles
from pyro_dcgmm.training.state import StepOutcome, TrainingState, TrainResult
from pyro_dcgmm.training.step import Batch, make_elbo, step_outcome, train_step, unchecked_step
from pyro_dcgmm.training.window import PendingStep, Position, StepWindow


def train(
    stack, images, labels=None, *, config: TrainConfig | None = None, validation=None, files=None
) -> TrainResult:
    """Train ``stack`` (its parameters, in place) on ``images`` by SVI with ``TraceEnum_ELBO``.

    :param images: training images (N, C, H, W) in the stack's data range.
    :param labels: class indices (N,) for a Readout or a layer split by class, or ``None``.
    :param TrainConfig config: optimiser, batch size, epochs, seed, device, logging.
    :param validation: held-out images, evaluated after every epoch.
    :param files: a :class:`~pyro_dcgmm.training.run_folder.RunFiles` (output folder, checkpoint to
        resume, overwrite), or just the output folder; ``None``: nothing is written.
    :raises TrainingInterrupted: at Ctrl-C, after the step under way and a checkpoint.
    """
    images, labels, validation = checked_data(stack, images, labels, validation)
    return Trainer(stack, config, files).fit(images, labels, validation)


class Trainer:
    """One training run of ``stack``: its data, optimiser, schedule, writers and state.

    :param config: a :class:`~pyro_dcgmm.config.TrainConfig` (``None``: the defaults).
    :param files: a :class:`~pyro_dcgmm.training.run_folder.RunFiles` or an output folder.
    :param callbacks: functions called with the trainer before every step (the hook for progress
        reports, fault injection in tests, or stopping early), again before a step retaken after
        its window was rewound; :attr:`state` says where the run is (its losses are booked when
        the steps' window is checked, every ``check_every`` steps).
    """

    def __init__(
        self, stack, config: TrainConfig | None = None, files=None, callbacks: Sequence[Callable] = ()
    ):
        if distributed_rank_and_size()[1] > 1 and not stack.trains_distributed:
            raise ConfigError(f"a {type(stack).__name__} trains in one process; start it without torchrun")
        self.stack = stack
        self.config = config if config is not None else TrainConfig()
        self.files = files if isinstance(files, RunFiles) else RunFiles(files)
        self.callbacks = list(callbacks)
        self.state = TrainingState(len(stack.objective_names))
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.elbo = make_elbo(stack, self.config)

    def fit(self, images: torch.Tensor, labels=None, validation=None) -> TrainResult:
        """Train on ``images`` (N, C, H, W) (and class ``labels`` (N,)), scoring ``validation``
        after every epoch: tensors as :func:`train` (or ``DCGMM.fit``) checked them."""
        self.started, self.samples = time.perf_counter(), 0
        device = resolve_device(self.config.device)
        self.config = self.config.for_device(device.type)  # batch_size "auto" becomes a number
        place(self.stack, device)
        require_trainable(self.stack, images, labels)
        parameter = next(self.stack.parameters())
        self.data = BatchSource(images, labels, parameter.device, parameter.dtype, self.config.data_placement)
        self.validation = validation
        self.optimizer = make_optimizer(self.stack, self.config, self.num_data)
        self.leads = distributed_rank_and_size()[0] == 0  # only rank 0 writes, evaluates, shows progress
        self.folder = self.files.folder(self.config.keep_epoch_checkpoints) if self.leads else None
        self.log = JsonLog(None if self.folder is None else self.folder.path / LOG_NAME)
        with self.folder or contextlib.nullcontext(), float32_precision(self.config.tf32):
            stopped = self._run()
        if stopped:
            raise self._interrupted()
        return self._finish()

    def _run(self) -> bool:
        """Resume if asked, then epochs until the run ends; whether Ctrl-C or SIGTERM stopped it."""
        self._resume()
        self.window, self.retaking = StepWindow(), 0
        self.planned_steps, self.stop_step = planned_steps(self.config, self.num_data)
        shown = self.config.progress and self.leads
        self.bar = tqdm(total=self.stop_step, initial=self.state.step, disable=not shown)
        with self.bar, self.log, pyro.validation_enabled(self.config.validate_args), Interruption() as stop:
            while self.state.step < self.stop_step and not stop.requested:
                self._epoch(stop)
        return stop.requested

    @property
    def num_data(self) -> int:
        return self.data.num_data

    def _epoch(self, stop: Interruption) -> None:
        """Steps until the epoch or the run ends, or Ctrl-C; at the end of an epoch dead components
        re-seeded and a record (with validation); a checkpoint."""
        state = self.state
        if state.order is None:
            state.start_epoch(self.num_data, self.generator)
        while state.offset < self.num_data and state.step < self.stop_step and not stop.requested:
            self.step()
        self.check_window()
        if state.offset >= self.num_data:
            self.reseed_dead_layers(final=state.step >= self.stop_step)
            self._end_epoch()
        if self.folder is not None:
            seconds = time.perf_counter() - self.started
            self.folder.save(self.stack, state, self.optimizer, self.generator, seconds)

    def step(self) -> None:
        """Initialise the layers whose wait is over, then take one SVI step on the next mini-batch:
        checked at once, or unchecked in the current window of steps
        (:mod:`pyro_dcgmm.training.window`), which is checked when it is full."""
        for callback in self.callbacks:
            callback(self)
        waiting = waiting_layers(self.stack, self.state.step / self.planned_steps)
        ready = [
            layer for layer in self.stack.mixture_layers if not layer.is_initialised and layer not in waiting
        ]
        if ready:
            self.check_window()  # initialisation draws from the generator a rewind would restore
            self.initialise_layers(ready)
        if not self.config.joint_refinement:  # greedy: only the top of a joint stack's tree trains
            waiting = waiting + self.stack.layers_below_top()
        number, checked = self.state.step, self._checks_every_step()
        if not checked and not self.window:
            self.window.open(self.stack, self.optimizer, self._position())
        arguments = (self.stack, self.elbo, self.optimizer, self._next_batch(), waiting, self.config)
        self.state.step += 1
        if checked:
            self._settle(number, train_step(*arguments), waiting)
            return
        try:
            values = unchecked_step(*arguments)
        except RuntimeError:  # e.g. an update that non-finite statistics broke: retaken checked
            values = None
        self.window.add(PendingStep(number, waiting, values))
        if len(self.window) >= self.config.check_every or values is None:
            self.check_window()

    def _checks_every_step(self) -> bool:
        """Whether this step is checked at once: when asked to, while a window is retaken, and
        while a layer anneals (its schedule reads every step's loss)."""
        return (
            self.config.check_every == 1
            or self.retaking > 0
            or not all(gmm.annealing_finished for gmm in self.stack.gmm_layers)
        )

    def _position(self) -> Position:
        state = self.state
        return Position(state.step, state.offset, self.samples, self.generator.get_state())

    def check_window(self) -> None:
        """Read the pending steps' values on the host and book them; if one of them was not finite,
        rewind to the window's start and take its steps again, each checked."""
        if not self.window:
            return
        rows = self.window.read(self.stack)
        if rows is None:
            self._retake_window()
            return
        for pending, values in zip(self.window.pending, rows, strict=True):
            self._settle(pending.step, step_outcome(self.stack, values), pending.waiting)
        self.window.close()

    def _retake_window(self) -> None:
        """Rewind to the window's start and take its steps again, each checked."""
        count, state = len(self.window), self.state
        position = self.window.rewind(self.stack, self.optimizer)
        state.step, state.offset, self.samples = position.step, position.offset, position.samples
        self.generator.set_state(position.generator)
        self.retaking = count
        for _ in range(count):
            self.step()
            self.retaking -= 1

    def _settle(self, number: int, outcome: StepOutcome, waiting: list) -> None:
        """Book step ``number``: skipped (or raised) if it was not finite, else recorded."""
        if outcome.problem is not None:
            self._skip(number, outcome)
        else:
            self._record_step(number, outcome, waiting)
        self.bar.update(1)

    def _next_batch(self) -> Batch:
        """This epoch's next mini-batch on the device; the one after it starts on its way."""
        state, size = self.state, min(self.config.batch_size, self.num_data)
        images, labels = self.data.batch(state.order, state.offset, size)
        state.offset += size
        self.samples += images.shape[0]
        self.data.prefetch(state.order, state.offset, size)
        if self.config.dequantize_levels is not None:
            images = dequantize(images, self.config.dequantize_levels, self.generator)
        return Batch(images, labels, self.num_data)

    def layer_inputs(self, layer):
        """The inputs of ``layer`` for a random subsample of the training images (enough to
        initialise it), and the subsample's labels (``None`` without labels)."""
        count = min(self.num_data, images_needed(layer))
        chosen = torch.randperm(self.num_data, generator=self.generator)[:count]
        with torch.no_grad():
            images, labels = self.data.subset(chosen)
            inputs = torch.cat([self.stack.input_of(chunk, layer) for chunk in images.split(1000)])
        return inputs, labels

    def initialise_layers(self, layers: list) -> None:
        """Initialise ``layers`` (layers with components that start training now) from their real
        inputs (and labels, for a layer split by class).  Every process of a data-parallel run draws
        the same subsample; rank 0's result is broadcast so all processes start from identical values."""
        for layer in layers:
            self.bar.set_description(f"initialising layer {self.stack.number_of(layer)}")
            inputs, labels = self.layer_inputs(layer)
            initialise_layer(layer, inputs, self.generator, labels)
            broadcast_state(layer)
            self.bar.set_description("training")
            self.log.write(
                {"event": "initialised", "layer": self.stack.number_of(layer), "step": self.state.step}
            )

    def reseed_dead_layers(self, final: bool) -> None:
        """Re-seed or prune the dead components of every trained GMM layer (``GMMConfig.dead_weight``
        and ``dead_components``); after the ``final`` epoch only prune, since a re-seeded component
        would end the run untrained.  The optimiser forgets what it kept about a re-seeded layer
        (online EM's running statistics)."""
        for gmm in self.stack.reseedable_layers():
            reseeding = not gmm.config.prunes_dead
            if not gmm.is_initialised or (reseeding and final) or not bool(dead_components(gmm).any()):
                continue
            if reseeding:
                inputs, labels = self.layer_inputs(gmm)
                count, event = reseed_dead(gmm, inputs, self.generator, labels), "reseeded"
                forget(self.optimizer, list(gmm.parameters()))
            else:
                count, event = prune_dead(gmm), "pruned"
            broadcast_state(gmm)
            self.log.write({"event": event, "layer": self.stack.number_of(gmm), "components": count})

    def _resume(self) -> None:
        """Continue from the checkpoint ``files.resume`` names, if any."""
        path = self.files.resume
        if path is None:
            return
        checkpoint = load_checkpoint(path, map_location=next(self.stack.parameters()).device)
        load_state_into(self.stack, checkpoint)
        training = checkpoint["training"]
        if training is None:
            raise CheckpointError(f"checkpoint {str(path)!r} holds no training state to resume")
        try:
            self.optimizer.load_state_dict(training["optimizer"])
            self.generator.set_state(training["generator"])
            self.state.load_state_dict(training)
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has a damaged training state ({error!r})"
            ) from None
        check_resumed(str(path), self.state, self.num_data)
        self.state.started_at = self.state.step
        self.log.truncate(self.state.step)

    def _skip(self, number: int, outcome: StepOutcome) -> None:
        """Count step ``number``, which was not taken; raise once the policy says so."""
        state, config = self.state, self.config
        state.skipped_in_a_row += 1
        state.skipped += 1
        if config.non_finite == "raise" or state.skipped_in_a_row > config.max_skipped_steps:
            in_a_row = f", {state.skipped_in_a_row} steps in a row" if state.skipped_in_a_row > 1 else ""
            raise NonFiniteLossError(
                f"{outcome.problem} at step {number} (epoch {state.epoch}){in_a_row}; the parameters "
                "were not updated. Lower the learning rate, raise precision_floor, or check the data"
            )
        self.log.write({"event": "skipped", "step": number + 1, "reason": outcome.problem})

    def _record_step(self, number: int, outcome: StepOutcome, waiting: list) -> None:
        """Book-keeping after taken step ``number``: annealing schedules, epoch sums, log and
        progress bar."""
        state, stack = self.state, self.stack
        state.skipped_in_a_row = 0
        stack.update_schedules(outcome.layer_losses, waiting)
        state.epoch_losses += torch.tensor(outcome.layer_losses, dtype=torch.float64)
        state.epoch_steps += 1
        if (number + 1) % self.config.log_every == 0:
            names = stack.objective_names
            self.bar.set_postfix({n: f"{v:.4g}" for n, v in zip(names, outcome.layer_losses, strict=True)})
            record = {"step": number + 1, "epoch": state.epoch + 1}  # epoch records count finished ones
            record |= {"loss": outcome.loss, "layer_loss": outcome.layer_losses}
            self.log.write(record | {"width": [g.neighbourhood_width for g in stack.gmm_layers]})

    def _end_epoch(self) -> None:
        state = self.state
        state.epoch += 1
        state.order = None
        record = {
            "step": state.step,
            "epoch": state.epoch,
            "train_loss": (state.epoch_losses / max(state.epoch_steps, 1)).tolist(),
            "width": [g.neighbourhood_width for g in self.stack.gmm_layers],
            "seconds": state.seconds + time.perf_counter() - self.started,
        }
        if self.validation is not None and self.leads:
            batch_size = self.config.eval_batch_size
            record["validation_log_likelihood"] = held_out_log_likelihood(
                self.stack, self.validation, batch_size
            )
        state.history.append(record)
        self.log.write({"event": "epoch", **record})

    def _interrupted(self) -> TrainingInterrupted:
        state = self.state
        where = (
            f"training interrupted at step {state.step} (epoch {state.epoch}, {state.offset} images into it)"
        )
        if self.folder is None:
            return TrainingInterrupted(f"{where}; nothing was saved (no output folder)")
        path = self.folder.path / CHECKPOINT_NAME
        return TrainingInterrupted(
            f"{where}; saved {path}: continue with --resume {path} (resume= in Python)"
        )

    def _finish(self) -> TrainResult:
        """Warn of every sign that the run did not learn; the result."""
        state = self.state
        for problem in learning_problems(self.stack, state.history, state.skipped):
            warnings.warn(problem, TrainingWarning, stacklevel=4)
        seconds = time.perf_counter() - self.started
        return TrainResult(state.history, state.step, seconds, state.step - state.started_at, self.samples)


def waiting_layers(stack, progress: float) -> list:
    """Layers still frozen at this fraction of training (their ``wait`` is not over)."""
    return [layer for layer in stack.layers if getattr(layer.config, "wait", 0.0) > progress]


def place(stack, device: torch.device) -> None:
    """Move the stack to ``device``; in a process group, start every process from rank 0's values."""
    stack.to(device)
    broadcast_state(stack)


def check_resumed(path: str, state: TrainingState, num_data: int) -> None:
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


def planned_steps(config: TrainConfig, num_data: int) -> tuple[int, int]:
    """Steps of ``config.epochs`` epochs (what ``wait`` is a fraction of), and where to stop."""
    planned = config.epochs * math.ceil(num_data / min(config.batch_size, num_data))
    return planned, planned if config.max_steps is None else min(planned, config.max_steps)
