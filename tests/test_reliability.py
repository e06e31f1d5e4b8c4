"""Crash safety, numerical robustness over seeds and presets, and property-based checks."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_dcgmm import GMM, Fold, MaxPool, Stack, presets
from pyro_dcgmm.config import GMMConfig, TrainConfig, from_dict, to_dict
from pyro_dcgmm.data import FASHION_MNIST_ROOT, load_fashion_mnist
from pyro_dcgmm.errors import ArchitectureError, ConfigError
from pyro_dcgmm.files import atomic_write
from pyro_dcgmm.train import train

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "scripts/train_svi.py"), *args, "--device", "cpu", "--no-progress"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished_epochs(log: Path) -> int:
    if not log.exists():
        return 0
    return sum('"event": "epoch"' in line for line in log.read_text().splitlines())


def test_atomic_write_keeps_the_old_file_on_failure_and_plain_permissions(tmp_path):
    path = tmp_path / "report.json"
    atomic_write(path, lambda handle: handle.write(b"old"))
    umask = os.umask(0o022)
    try:
        atomic_write(path, lambda handle: handle.write(b"new"))
    finally:
        os.umask(umask)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o644

    def fail(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_killed_training_resumes_to_identical_parameters(tmp_path):
    common = ["--config", str(ROOT / "configs/digits.toml"), "--epochs", "24"]
    straight = run_cli(*common, "--out", str(tmp_path / "straight"))
    killed = run_cli(*common, "--out", str(tmp_path / "killed"))
    deadline = time.monotonic() + 120
    while finished_epochs(tmp_path / "killed" / "log.jsonl") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.kill()  # SIGKILL, somewhere inside a later epoch
    killed.wait()
    assert killed.returncode != 0, "the run finished before it could be killed"
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    saved_epoch = torch.load(checkpoint, weights_only=True)["training"]["epoch"]
    assert 2 <= saved_epoch < 24  # the log gets an epoch's record just before its checkpoint
    resumed = run_cli("--resume", str(checkpoint), "--epochs", "24", "--out", str(tmp_path / "killed"))
    assert resumed.wait() == 0, resumed.stderr.read()
    assert straight.wait() == 0, straight.stderr.read()
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(checkpoint, weights_only=True)
    assert a["training"]["step"] == b["training"]["step"]
    for name, value in a["state_dict"].items():
        assert (
            torch.equal(value, b["state_dict"][name])
            if torch.is_tensor(value)
            else value == b["state_dict"][name]
        )
    log = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in log if r.get("event") == "epoch"]
    assert epochs == list(range(1, 25))  # no epoch logged twice after the resume


@pytest.fixture(scope="module")
def fashion_images():
    if not FASHION_MNIST_ROOT.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    return load_fashion_mnist().train_images[:64]


@pytest.mark.parametrize("name", ["A", "B", "C", "D", "E", "F", "G"])
def test_presets_train_without_non_finite_values(name, fashion_images):
    config = TrainConfig(epochs=1, max_steps=2, batch_size=16, lr=0.05, progress=False, device="cpu")
    for seed in range(10):
        generator = torch.Generator().manual_seed(seed)
        for images in (torch.rand(64, 1, 28, 28, generator=generator), fashion_images):
            torch.manual_seed(seed)
            stack = Stack.from_config(presets.get(name, (1, 28, 28)))
            train(stack, images, torch.randint(0, 10, (64,), generator=generator), config=config)
            assert all(torch.isfinite(p).all() for p in stack.parameters()), (name, seed)
            assert torch.isfinite(stack.layer_log_probs(images[:8])).all(), (name, seed)


gmm_configs = st.builds(
    GMMConfig,
    components=st.integers(1, 64),
    shared=st.booleans(),
    precision_ceiling=st.floats(25.0, 1e4),
    width_init=st.none() | st.floats(0.1, 10.0),
    plateau_window=st.integers(1, 1000),
    wait=st.floats(0.0, 0.9),
)


@given(gmm_configs)
def test_config_round_trip(config):
    assert from_dict(GMMConfig, to_dict(config)) == config


@given(
    gmm_configs, st.text(min_size=1, max_size=12).filter(lambda k: k not in GMMConfig.__dataclass_fields__)
)
def test_unknown_keys_are_always_rejected(config, key):
    data = {**to_dict(config), key: 1}
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(GMMConfig, data)


@given(
    st.sampled_from(["components", "shared", "precision_floor", "plateau_window"]),
    st.sampled_from(["text", [1, 2], {"a": 1}]),
)
def test_wrong_types_are_always_rejected(key, value):
    with pytest.raises(ConfigError, match=f"{key}: expected"):
        from_dict(GMMConfig, {key: value})


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    channels=st.integers(1, 3),
    patch=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pool=st.integers(1, 3),
    shared=st.booleans(),
)
def test_layer_shape_arithmetic(height, width, channels, patch, stride, pool, shared):
    layers = [Fold(patch, stride), GMM(3, shared=shared), MaxPool(pool)]
    fits = patch[0] <= height and patch[1] <= width
    out_h = (height - patch[0]) // stride[0] + 1 if fits else 0
    out_w = (width - patch[1]) // stride[1] + 1 if fits else 0
    if not fits or pool > out_h or pool > out_w:
        with pytest.raises(ArchitectureError, match="larger than its input"):
            Stack(layers, (channels, height, width))
        return
    stack = Stack(layers, (channels, height, width))
    assert stack.layers[0].output_shape == (channels * patch[0] * patch[1], out_h, out_w)
    assert stack.layers[1].output_shape == (3, out_h, out_w)
    assert stack.output_shape == (3, (out_h - pool) // pool + 1, (out_w - pool) // pool + 1)
    x = torch.rand(2, channels, height, width)
    assert tuple(stack.upward(x, 2).shape[1:]) == stack.layers[1].output_shape
    assert tuple(stack.upward(x, 3).shape[1:]) == stack.output_shape
