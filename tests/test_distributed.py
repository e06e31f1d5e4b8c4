"""Data-parallel training with two gloo processes equals single-process training."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import digits_stack

from pyro_dcgmm import Stack
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.training.checkpoint import load_checkpoint
from pyro_dcgmm.training.distributed import leave_process_group

CONFIG = TrainConfig(epochs=2, batch_size=61, lr=0.03, progress=False, device="cpu", seed=4)


def build_stack() -> Stack:
    return digits_stack(9, 4, plateau_window=3)


def digits_subset(count: int, with_labels: bool):
    data = load_digits()
    return data.train_images[:count], data.train_labels[:count] if with_labels else None


def _worker(rank: int, world: int, init_file: str, out_file: str, count: int, with_labels: bool) -> None:
    from pyro_dcgmm.training.trainer import train

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    stack = build_stack()
    if rank != 0:  # a different initialisation on purpose: rank 0's must win
        with torch.no_grad():
            for p in stack.parameters():
                p.add_(torch.randn_like(p))
    images, labels = digits_subset(count, with_labels)
    train(stack, images, labels, config=CONFIG)
    leave_process_group()
    if rank == 0:
        torch.save(stack.state_dict(), out_file)


@pytest.mark.parametrize(
    "count,with_labels",
    [(300, True), (245, False)],  # last global batch of 56 images; of 1 image, so one process has none
)
def test_two_gloo_processes_match_one(tmp_path, count, with_labels):
    from pyro_dcgmm.training.trainer import train

    images, labels = digits_subset(count, with_labels)
    single = build_stack()
    train(single, images, labels, config=CONFIG)
    out_file = tmp_path / "parallel.pt"
    mp.spawn(
        _worker, args=(2, str(tmp_path / "init"), str(out_file), count, with_labels), nprocs=2, join=True
    )
    parallel = torch.load(out_file, weights_only=True)
    for name, value in single.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(parallel[name], value, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert parallel[name] == value, name


def test_the_train_command_under_torchrun_equals_one_process(tmp_path):
    """The documented ``torchrun -m pyro_dcgmm train`` run: both processes end cleanly, only rank 0
    evaluates and writes, and its model is the one-process run's (up to float32 sums over 13 steps)."""
    arguments = ["-m", "pyro_dcgmm", "train", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*launcher: str, out: str) -> dict:
        command = [sys.executable, *launcher, *arguments, "--out", str(tmp_path / out)]
        done = subprocess.run(command, env=environment, check=True, capture_output=True, text=True)
        assert done.stdout.count("wrote ") == 1, done.stdout
        return load_checkpoint(tmp_path / out / "checkpoint.pt")["state_dict"]

    single = run(out="single")
    parallel = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", out="parallel")
    for name, value in single.items():
        if torch.is_tensor(value):
            torch.testing.assert_close(parallel[name], value, rtol=1e-4, atol=1e-4, msg=name)
