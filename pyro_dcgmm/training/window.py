"""Steps checked in windows: the host reads the losses and checks finiteness every few steps.

Reading a step's losses on the host waits until the device has finished the step, so checking
every step leaves a GPU idle while Python prepares the next one.  The trainer therefore takes up
to ``TrainConfig.check_every`` steps *unchecked* (:func:`~pyro_dcgmm.training.step.unchecked_step`),
keeps each step's values (mean loss, every objective's mean loss, the gradients' sum) on the
device, and reads them all at once when the window closes, with one check that every parameter is
finite.  Before its first step a window copies everything its steps change: the stack's state,
the optimiser's, the random generator's and the position in the epoch.  If any step of the window
was not finite (or an unchecked step failed), the run returns to that copy and takes the window's
steps again one checked step at a time, so that a non-finite step is skipped, or raised, exactly
as when every step is checked, and a run ends where it would have (tested).  So parameters are
copied once per window, not once per step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from pyro_dcgmm.training.step import all_finite


@dataclass
class PendingStep:
    """An unchecked step: its number, the layers that waited, and its values on the device
    (``None``: the step failed with an exception)."""

    step: int
    waiting: list
    values: torch.Tensor | None


@dataclass
class Position:
    """Where a run was when a window opened: step, offset in the epoch's order, images trained on,
    and the state of the run's random generator."""

    step: int
    offset: int
    samples: int
    generator: torch.Tensor


class StepWindow:
    """The unchecked steps since the window opened, and the copy of the run from before them."""

    def __init__(self):
        self.pending: list[PendingStep] = []
        self._stack_state, self._optimizer_state, self._position = None, None, None

    def __len__(self) -> int:
        return len(self.pending)

    def open(self, stack, optimizer, position: Position) -> None:
        """Keep a copy of the stack's and the optimiser's state and of the run's ``position``."""
        self._stack_state = copy.deepcopy(stack.state_dict())  # tensors copied, none shared
        self._optimizer_state = copy.deepcopy(optimizer.state_dict())
        self._position = position

    def add(self, pending: PendingStep) -> None:
        self.pending.append(pending)

    def read(self, stack) -> list[list[float]] | None:
        """Every pending step's values on the host (one synchronisation), or ``None`` when a step
        failed, had a non-finite value or left a parameter non-finite: its update must not stand,
        and the window is to be rewound."""
        if any(p.values is None for p in self.pending):
            return None
        values = torch.stack([p.values for p in self.pending])  # (steps, values)
        finite = values.isfinite().all() & all_finite(stack.parameters())
        *host, usable = torch.cat([values.flatten(), finite.to(values.dtype).reshape(1)]).tolist()
        width = values.shape[1]
        return [host[start : start + width] for start in range(0, len(host), width)] if usable else None

    def rewind(self, stack, optimizer) -> Position:
        """Put the stack and the optimiser back as they were when the window opened; where the
        run was then.  The window is emptied."""
        stack.load_state_dict(self._stack_state)
        optimizer.load_state_dict(self._optimizer_state)
        position = self._position
        self.close()
        return position

    def close(self) -> None:
        self.pending = []
        self._stack_state, self._optimizer_state, self._position = None, None, None
