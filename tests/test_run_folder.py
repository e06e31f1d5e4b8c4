"""Run folders: nothing deleted before a run is known to start, two runs never in one folder, and
what interrupted runs leave cleaned up."""

import subprocess
import sys

import pytest
import torch

from pyro_dcgmm import GMM, Fold, Stack
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.training.run_folder import LOCK_NAME, REPLACED_NAME, RunFiles
from pyro_dcgmm.training.trainer import Trainer

CONFIG = TrainConfig(epochs=1, batch_size=10, progress=False, device="cpu")


def small_run(folder, overwrite=False, callbacks=()):
    torch.manual_seed(len(callbacks))
    stack = Stack([Fold(4, 2), GMM(4)], (1, 8, 8))
    return Trainer(stack, CONFIG, RunFiles(folder, overwrite=overwrite), callbacks).fit(
        torch.rand(20, 1, 8, 8)
    )


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_overwrite_keeps_the_old_run_until_the_new_one_has_saved(tmp_path):
    folder = tmp_path / "run"
    small_run(folder)
    (folder / "summary.json").write_text("{}")
    old = (folder / "checkpoint.pt").read_bytes()

    def crash(trainer):
        raise RuntimeError("injected crash before the first checkpoint")

    with pytest.raises(RuntimeError, match="injected crash"):
        small_run(folder, overwrite=True, callbacks=[crash])
    assert (folder / "checkpoint.pt").read_bytes() == old and (folder / "summary.json").exists()
    assert leftovers(folder) == []
    small_run(folder, overwrite=True)
    assert (folder / "checkpoint.pt").read_bytes() != old and leftovers(folder) == []


def test_a_folder_of_other_files_is_refused_untouched(tmp_path):
    (tmp_path / "config.json").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files that are not a pyro_dcgmm run \(config\.json\)"):
        small_run(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_live_lock_is_refused_and_a_stale_one_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(str(__import__("os").getppid()))  # the parent process lives
    with pytest.raises(ConfigError, match=r"another run \(process \d+\) is training in"):
        small_run(folder)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (folder / LOCK_NAME).write_text(dead.stdout.strip())
    small_run(folder)
    assert (folder / "checkpoint.pt").exists() and leftovers(folder) == []


def test_what_interrupted_runs_left_is_cleaned_and_said(tmp_path):
    folder = tmp_path / "run"
    small_run(folder)
    old = (folder / "checkpoint.pt").read_bytes()
    (folder / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # kill -9 during a write
    replaced = folder / REPLACED_NAME  # kill -9 during an --overwrite, before its first checkpoint
    replaced.mkdir()
    (folder / "checkpoint.pt").rename(replaced / "checkpoint.pt")
    (folder / "log.jsonl").rename(replaced / "log.jsonl")
    with pytest.warns(UserWarning) as said, pytest.raises(ConfigError, match="already holds a run"):
        small_run(folder)
    messages = " ".join(str(w.message) for w in said)
    assert ".checkpoint.pt.x1y2.tmp" in messages and "put back the run" in messages
    assert (folder / "checkpoint.pt").read_bytes() == old and leftovers(folder) == []


def test_a_run_that_died_before_its_first_checkpoint_does_not_block_the_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "log.jsonl").write_text('{"step": 3}\n')
    with pytest.warns(UserWarning, match="saved no checkpoint; starting afresh"):
        small_run(folder)
    assert (folder / "checkpoint.pt").exists()


def test_two_trainings_started_at_once_never_share_a_folder(tmp_path):
    command = [sys.executable, "-m", "pyro_dcgmm", "train", "--config", "digits", "--epochs", "3"]
    command += ["--out", str(tmp_path / "run"), "--no-progress"]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((run.wait(), run.stderr.read()) for run in runs)
    assert [code for code, _ in outcomes] == [0, 2]
    refused = outcomes[1][1].strip().splitlines()[-1]
    assert "another run (process" in refused or "already holds a run" in refused
    assert leftovers(tmp_path / "run") == []
