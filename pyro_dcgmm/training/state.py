"""Where a training run stands and what it returns: :class:`TrainingState` (epoch, step, this
epoch's order and position, history; saved in checkpoints), :class:`StepOutcome` and
:class:`TrainResult`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TrainResult:
    """What :func:`train` returns.

    :ivar history: one record per epoch: mean training loss per GMM layer (nats per sample),
        held-out log-likelihood per GMM layer, neighbourhood widths, wall time.
    :ivar steps: optimiser steps of the run in total (a resumed run's earlier ones included).
    :ivar seconds: wall time of this call.
    :ivar new_steps: steps this call took (0 when a resumed run had nothing left to do).
    :ivar samples: images those steps trained on.
    """

    history: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    new_steps: int = 0
    samples: int = 0


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

    SAVED = ("num_data", "epoch", "step", "history", "order", "offset", "epoch_losses", "epoch_steps")

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the state (not the counters of this call)."""
        return {name: getattr(self, name) for name in (*self.SAVED, "skipped", "seconds")}

    def load_state_dict(self, state: dict) -> None:
        """Read a checkpoint's state; a value of the wrong kind raises ``TypeError`` or ``ValueError``."""
        self.num_data = state.get("num_data")  # None in checkpoints written before it was recorded
        self.epoch, self.step = counter(state["epoch"]), counter(state["step"])
        self.history = state["history"]
        if not isinstance(self.history, list) or not all(isinstance(r, dict) for r in self.history):
            raise TypeError(f"history must be a list of epoch records, got {type(self.history).__name__}")
        self.order, self.offset = state["order"], counter(state["offset"])
        if self.order is not None and not torch.is_tensor(self.order):
            raise TypeError(f"order must be a tensor of indices, got {type(self.order).__name__}")
        losses = state["epoch_losses"]
        self.epoch_losses = None if losses is None else losses.double()
        self.epoch_steps = counter(state["epoch_steps"])
        self.skipped = counter(state.get("skipped", 0))
        self.seconds = float(state["seconds"])


@dataclass
class StepOutcome:
    """What one training step did: the mean loss per sample (all layers and the readout), the
    mean loss per sample of every GMM layer, and why the step was skipped (``None``: taken)."""

    loss: float
    layer_losses: list[float]
    problem: str | None


def counter(value) -> int:
    """A saved count: an integer (not a bool, not text)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer count, got {value!r}")
    return value
