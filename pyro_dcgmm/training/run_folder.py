"""What a training run writes into its folder, and the rule that keeps runs apart.

A run folder holds ``checkpoint.pt`` (after every epoch; ``epoch-XXXX.pt`` too when kept) and
``log.jsonl``, one JSON record per line.  A new run never writes into a folder that holds another
run: it continues that run (``resume``) or, only when asked (``overwrite``), removes it first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.training.checkpoint import save_checkpoint, training_state
from pyro_dcgmm.training.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


def run_files(folder: Path) -> list[Path]:
    """The files of a run in ``folder``: checkpoints and log."""
    names = [folder / CHECKPOINT_NAME, folder / LOG_NAME, *sorted(folder.glob("epoch-*.pt"))]
    return [path for path in names if path.is_file()]


def claim_run_folder(
    folder: str | Path,
    resume: str | Path | None = None,
    overwrite: bool = False,
    outputs: tuple[str, ...] = (),
) -> Path:
    """Make ``folder`` ready for a run and return it.

    A folder holding another run is refused, unless ``resume`` is that run's checkpoint (the run
    goes on) or ``overwrite`` is true: then the old run's checkpoints, log and ``outputs`` (names of
    further files a run writes there, such as a summary) are deleted first.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output folder {str(folder)!r} is a file")
    continuing = resume is not None and Path(resume).resolve().parent == folder.resolve()
    existing = run_files(folder) if folder.is_dir() else []
    if existing and not continuing:
        if not overwrite:
            raise ConfigError(
                f"{str(folder.resolve())!r} already holds a run ({', '.join(p.name for p in existing)}); "
                "resume it (--resume / resume=), choose another folder, or replace it (--overwrite / "
                "overwrite=True)"
            )
        for path in existing + [folder / name for name in outputs if (folder / name).is_file()]:
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class JsonLog:
    """Append-only JSON-lines log (``None`` path: logs nothing)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file = None

    def __enter__(self):
        if self.path is not None:
            self._file = open(self.path, "a")
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def truncate(self, step: int) -> None:
        """Drop records written after ``step`` (by a run that died after its last checkpoint)."""
        if self.path is None or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        atomic_write(self.path, lambda handle: handle.write("".join(f"{line}\n" for line in kept).encode()))


class Checkpointer:
    """Writes ``checkpoint.pt`` (and ``epoch-XXXX.pt`` when kept) into ``out_dir``."""

    def __init__(self, out_dir: Path, keep_epochs: bool, run_config=None):
        self.out_dir, self.keep_epochs, self.run_config = out_dir, keep_epochs, run_config

    def save(self, stack, state, optimizer, generator, seconds: float) -> None:
        """Save the run as it stands (a :class:`~pyro_dcgmm.training.trainer.TrainingState`) after ``seconds``
        of training in this call."""
        training = training_state(state, optimizer, generator, seconds)
        if self.keep_epochs and state.order is None:
            save_checkpoint(self.out_dir / f"epoch-{state.epoch:04d}.pt", stack, training, self.run_config)
        save_checkpoint(self.out_dir / CHECKPOINT_NAME, stack, training, self.run_config)


@dataclass(frozen=True)
class RunFiles:
    """Where a training run writes, and what it continues.

    :param out_dir: folder of ``checkpoint.pt`` (every epoch, at ``max_steps`` and at Ctrl-C),
        ``epoch-XXXX.pt`` and ``log.jsonl``; ``None``: nothing is written.  A folder holding another
        run is refused unless ``resume`` is its checkpoint or ``overwrite`` is true.
    :param resume: a checkpoint to continue from (same architecture and data); the run then
        reproduces the uninterrupted one.
    :param overwrite: replace a run already in ``out_dir``.
    :param run_config: the full :class:`~pyro_dcgmm.config.RunConfig`, stored in checkpoints.
    """

    out_dir: str | Path | None = None
    resume: str | Path | None = None
    overwrite: bool = False
    run_config: object = None

    def writers(self, keep_epoch_checkpoints: bool, writes: bool = True):
        """The checkpointer (``None`` where nothing is written) and the log; nothing is written by a
        process that ``writes`` not (all but rank 0 of a process group)."""
        if self.out_dir is None or not writes:
            return None, JsonLog(None)
        out_dir = claim_run_folder(self.out_dir, self.resume, self.overwrite)
        return Checkpointer(out_dir, keep_epoch_checkpoints, self.run_config), JsonLog(out_dir / LOG_NAME)
