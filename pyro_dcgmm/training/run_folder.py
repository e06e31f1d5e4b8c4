"""What a training run writes into its folder, and the rule that keeps runs apart.

A run folder holds ``checkpoint.pt`` (after every epoch; ``epoch-XXXX.pt`` too when kept) and
``log.jsonl``, one JSON record per line.  A new run never writes into a folder that holds another
run or files that are not a run's: it continues that run (``resume``) or, only when asked
(``overwrite``), replaces it; and two runs never share a folder (:class:`RunFolder`).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.training.checkpoint import save_checkpoint, training_state
from pyro_dcgmm.training.files import atomic_write, writing_into

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
LOCK_NAME = ".lock"  # the id of the process whose run lives in the folder
REPLACED_NAME = ".replaced"  # an overwritten run, kept until the new one has saved a checkpoint


def run_files(folder: Path) -> list[Path]:
    """The files of a run in ``folder``: checkpoints and log."""
    names = [folder / CHECKPOINT_NAME, folder / LOG_NAME, *sorted(folder.glob("epoch-*.pt"))]
    return [path for path in names if path.is_file()]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


class RunFolder:
    """A run's folder for the life of the run (a context manager): locked against every other run,
    cleaned of what interrupted runs left, checked, and on ``overwrite`` the run it held moved aside
    (``.replaced/``) until this one has saved its first checkpoint; a run that fails before that
    puts it back.  ``save`` writes checkpoints (:class:`Checkpointer`)."""

    def __init__(self, files: RunFiles, keep_epochs: bool):
        self.files, self.path = files, Path(files.out_dir)
        self.checkpointer = Checkpointer(self.path, keep_epochs, files.run_config)
        self.replaced: Path | None = None

    def __enter__(self) -> RunFolder:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"output folder {str(self.path)!r} is a file")
        self.created, self.saved, self.fresh = not self.path.exists(), False, True
        with writing_into(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._clean_after_interrupted_runs()
            self._claim()
        except BaseException:
            self._unlock()
            self._remove_if_created()
            raise
        return self

    def __exit__(self, failed, *exc) -> None:
        """A new run that failed before its first checkpoint leaves the folder as it found it."""
        abandoned = failed is not None and self.fresh and not self.saved
        if abandoned:
            (self.path / LOG_NAME).unlink(missing_ok=True)
        if self.replaced is not None:
            self._discard_replaced() if failed is None else self._restore_replaced()
        self._unlock()
        if abandoned:
            self._remove_if_created()

    def _remove_if_created(self) -> None:
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)

    def save(self, stack, state, optimizer, generator, seconds: float) -> None:
        self.checkpointer.save(stack, state, optimizer, generator, seconds)
        self.saved = True
        if self.replaced is not None:
            self._discard_replaced()

    def _lock(self) -> None:
        """Hold ``.lock`` (this process's id) while the run lives; a lock of a dead process is stale.
        The lock appears with its content at once (a hard link of a written file), so no other run
        ever reads it empty."""
        lock, mine = self.path / LOCK_NAME, self.path / f"{LOCK_NAME}-{os.getpid()}"
        with writing_into(self.path):
            mine.write_text(str(os.getpid()))
        try:
            for _ in range(2):
                try:
                    os.link(mine, lock)
                    return
                except FileExistsError:
                    self._check_lock_owner(lock)
            raise ConfigError(f"could not lock {str(self.path)!r}: another run keeps taking it")
        finally:
            mine.unlink()

    def _check_lock_owner(self, lock: Path) -> None:
        """Refuse while the run that holds ``lock`` lives; remove the lock of a dead one."""
        owner = lock.read_text().strip() if lock.exists() else ""
        if owner.isdigit() and process_alive(int(owner)):
            raise ConfigError(
                f"another run (process {owner}) is training in {str(self.path)!r}; wait for it to end "
                "or choose another folder"
            )
        lock.unlink(missing_ok=True)  # stale: its process died

    def _unlock(self) -> None:
        (self.path / LOCK_NAME).unlink(missing_ok=True)

    def _clean_after_interrupted_runs(self) -> None:
        """Remove temporary files of interrupted writes, and put back a run that an interrupted
        ``overwrite`` had moved aside; say what was found."""
        found = [path.name for path in self.path.glob(".*.tmp") if path.is_file()]
        for name in found:
            (self.path / name).unlink()
        if found:
            warnings.warn(
                f"removed temporary files an interrupted run left in {self.path}: {found}", stacklevel=4
            )
        if (self.path / REPLACED_NAME).is_dir():
            self.replaced = self.path / REPLACED_NAME
            self._restore_replaced()
            warnings.warn(
                f"put back the run an interrupted --overwrite had moved aside in {self.path}", stacklevel=4
            )

    def _claim(self) -> None:
        existing, files = run_files(self.path), self.files
        if files.resume is not None and Path(files.resume).resolve().parent == self.path.resolve():
            self.fresh = False  # this run goes on
            return
        if not existing:
            foreign = sorted(p.name for p in self.path.iterdir() if not p.name.startswith(LOCK_NAME))
            if foreign:
                raise ConfigError(
                    f"{str(self.path)!r} holds files that are not a pyro_dcgmm run ({', '.join(foreign)}); "
                    "choose an empty or a new folder"
                )
        elif existing == [self.path / LOG_NAME]:  # a run that died before its first checkpoint
            warnings.warn(
                f"{self.path} held the log of a run that saved no checkpoint; starting afresh", stacklevel=4
            )
            existing[0].unlink()
        elif not files.overwrite:
            raise ConfigError(
                f"{str(self.path.resolve())!r} already holds a run ({', '.join(p.name for p in existing)}); "
                "resume it (--resume / RunFiles(resume=...)), choose another folder, or replace it "
                "(--overwrite / RunFiles(overwrite=True))"
            )
        else:
            outputs = [self.path / name for name in files.outputs if (self.path / name).is_file()]
            self._move_aside(existing + outputs)

    def _move_aside(self, paths: list[Path]) -> None:
        self.replaced = self.path / REPLACED_NAME
        self.replaced.mkdir()
        for path in paths:
            os.replace(path, self.replaced / path.name)

    def _restore_replaced(self) -> None:
        for path in run_files(self.path):
            path.unlink()
        for path in self.replaced.iterdir():
            os.replace(path, self.path / path.name)
        self.replaced.rmdir()
        self.replaced = None

    def _discard_replaced(self) -> None:
        shutil.rmtree(self.replaced)
        self.replaced = None


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
    :param overwrite: replace a run already in ``out_dir`` (kept aside until the new run has saved
        its first checkpoint, and put back if it fails before).
    :param run_config: the full :class:`~pyro_dcgmm.config.RunConfig`, stored in checkpoints.
    :param outputs: names of further files a run writes into ``out_dir`` (a summary, figures),
        replaced with the run on ``overwrite``.
    """

    out_dir: str | Path | None = None
    resume: str | Path | None = None
    overwrite: bool = False
    run_config: object = None
    outputs: tuple[str, ...] = ()

    def folder(self, keep_epoch_checkpoints: bool) -> RunFolder | None:
        """The :class:`RunFolder` that ``out_dir`` names, ``None`` where nothing is written."""
        return None if self.out_dir is None else RunFolder(self, keep_epoch_checkpoints)
