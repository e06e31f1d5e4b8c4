"""Crash safety, numerical robustness over seeds and presets, and property-based checks."""

import json
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_dcgmm.training.trainer as training
from pyro_dcgmm import GMM, Fold, MaxPool, Stack, errors, presets
from pyro_dcgmm.cli import train as train_svi
from pyro_dcgmm.cli.common import run_script
from pyro_dcgmm.config import GMMConfig, TrainConfig, from_dict, load_config, to_dict
from pyro_dcgmm.data.datasets import FASHION_MNIST_ROOT, _images_and_labels, load_fashion_mnist
from pyro_dcgmm.errors import ArchitectureError, CheckpointError, ConfigError, DataError
from pyro_dcgmm.training.checkpoint import save_checkpoint
from pyro_dcgmm.training.run_folder import RunFiles
from pyro_dcgmm.training.trainer import train


def train_cli(*args: str) -> dict:
    return train_svi.main([*args, "--device", "cpu", "--no-progress"])


def final_state(folder: Path) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=True)


def stop_at_step(monkeypatch, step: int, stop) -> None:
    """Make training call ``stop()`` just before it takes step number ``step``."""
    original = training.Trainer.step

    def next_step(trainer):
        if trainer.state.step == step:
            stop()
        original(trainer)

    monkeypatch.setattr(training.Trainer, "step", next_step)


def injected_crash():
    raise RuntimeError("injected crash")


@pytest.mark.parametrize("stop", ["crash", "ctrl-c", "sigterm"])
def test_stopped_training_resumes_to_identical_parameters(tmp_path, monkeypatch, stop):
    # 13 steps per epoch: step 33 lies inside the third epoch
    common = ["--config", "digits", "--epochs", "5"]
    train_cli(*common, "--out", str(tmp_path / "straight"))
    if stop == "crash":  # the process dies: the checkpoint of the last finished epoch remains
        stop_at_step(monkeypatch, 33, injected_crash)
        with pytest.raises(RuntimeError, match="injected crash"):
            train_cli(*common, "--out", str(tmp_path / "stopped"))
    else:  # Ctrl-C or SIGTERM (at a step drawn at random): the step under way ends, then a checkpoint
        number = signal.SIGINT if stop == "ctrl-c" else signal.SIGTERM
        at = 33 if stop == "ctrl-c" else random.Random(29).randrange(1, 64)
        stop_at_step(monkeypatch, at, lambda: signal.raise_signal(number))
        with pytest.raises(errors.TrainingInterrupted, match=rf"at step {at + 1} .* --resume"):
            train_cli(*common, "--out", str(tmp_path / "stopped"))
    monkeypatch.undo()
    checkpoint = tmp_path / "stopped" / "checkpoint.pt"
    saved = final_state(tmp_path / "stopped")["training"]["step"]
    assert saved == (26 if stop == "crash" else at + 1)
    assert not [
        p.name for p in (tmp_path / "stopped").iterdir() if p.name.startswith(".")
    ]  # no temporary file
    train_cli("--resume", str(checkpoint), "--out", str(tmp_path / "stopped"))
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "stopped")
    assert a["training"]["step"] == b["training"]["step"] == 65
    for name, value in a["state_dict"].items():
        same = (
            torch.equal(value, b["state_dict"][name])
            if torch.is_tensor(value)
            else value == b["state_dict"][name]
        )
        assert same, name
    log = [json.loads(line) for line in (tmp_path / "stopped" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r.get("event") == "epoch"] == [1, 2, 3, 4, 5]  # none twice


def test_a_new_run_never_overwrites_another(tmp_path):
    common = ["--config", "digits", "--epochs", "1", "--out", str(tmp_path / "x")]
    train_cli(*common)
    first = (tmp_path / "x" / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a run .*checkpoint.pt.*--overwrite"):
        train_cli(*common, "--seed", "5")
    assert (tmp_path / "x" / "checkpoint.pt").read_bytes() == first
    with pytest.raises(ConfigError, match="already holds a run"):
        train(Stack([Fold(4, 2), GMM(4)], (1, 8, 8)), torch.rand(10, 1, 8, 8), files=tmp_path / "x")
    train_cli(*common, "--seed", "5", "--overwrite")
    steps = [json.loads(line)["step"] for line in (tmp_path / "x" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one run in the log, not two


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--seed", "7"], r"training.seed would change from 0 to 7"),
        (["--train-limit", "1000"], r"data.train_limit would change from None to 1000"),
        (["--classes", "1", "2"], r"data.classes would change"),
        (["--per-position"], r"--per-position"),
        (["--config", "digits"], r"--config and --resume exclude each other"),
    ],
)
def test_resume_refuses_other_data_or_model(tmp_path, flags, match):
    train_cli("--config", "digits", "--epochs", "1", "--out", str(tmp_path))
    with pytest.raises(ConfigError, match=match):
        train_cli("--resume", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path), *flags)


def test_resume_applies_new_epochs_and_forgets_the_old_stop(tmp_path):
    common = ["--config", "digits", "--out", str(tmp_path)]
    train_cli(*common, "--epochs", "3", "--max-steps", "5")
    assert final_state(tmp_path)["training"]["step"] == 5
    train_cli("--resume", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path), "--epochs", "2")
    assert final_state(tmp_path)["training"]["step"] == 26  # was: no step, since max_steps = 5 stayed


def test_resume_with_other_data_fails_clearly(tmp_path):
    stack = Stack([Fold(4, 2), GMM(4)], (1, 8, 8))
    images = torch.rand(40, 1, 8, 8)
    config = TrainConfig(epochs=1, batch_size=10, progress=False, device="cpu")
    train(stack, images, config=config, files=tmp_path)
    with pytest.raises(CheckpointError, match="trained on 40 images; this run has 30"):
        train(stack, images[:30], config=config, files=RunFiles(tmp_path, resume=tmp_path / "checkpoint.pt"))


def test_a_step_that_makes_parameters_non_finite_is_undone(tmp_path):
    stack = Stack([Fold(4, 2), GMM(4, init="random")], (1, 8, 8))
    images = torch.rand(40, 1, 8, 8)
    before = {name: value.clone() for name, value in stack.state_dict().items() if torch.is_tensor(value)}
    config = TrainConfig(epochs=1, batch_size=10, optimizer="sgd", lr=3e38, progress=False, device="cpu")
    with pytest.raises(errors.NonFiniteLossError, match="made parameters non-finite at step 0"):
        train(stack, images, config=config, files=tmp_path)
    for name, value in stack.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, before[name]), name
    assert not (tmp_path / "checkpoint.pt").exists()


def test_scripts_end_user_errors_and_ctrl_c_with_one_line(capsys):
    def bad_setting():
        raise ConfigError("training.epochs must be >= 1, got 0")

    def interrupted():
        raise errors.TrainingInterrupted("training interrupted at step 3; saved x: continue with --resume x")

    for main, code, line in [(bad_setting, 2, "error: training.epochs"), (interrupted, 130, "--resume x")]:
        with pytest.raises(SystemExit) as stop:
            run_script(main)
        assert stop.value.code == code
        printed = capsys.readouterr().err
        assert line in printed and printed.count("\n") == 1 and "Traceback" not in printed


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
    assert tuple(stack.input_of(x, stack.layers[2]).shape[1:]) == stack.layers[1].output_shape
    assert tuple(stack.pass_up(x).shape[1:]) == stack.output_shape


class Payload:
    """Anything but tensors and plain data: what a malicious checkpoint would carry."""


def saved_checkpoint(folder: Path) -> Path:
    stack = Stack([Fold(4, 2), GMM(4)], (1, 8, 8))
    config = TrainConfig(epochs=1, batch_size=10, progress=False, device="cpu")
    train(stack, torch.rand(20, 1, 8, 8), config=config, files=folder)
    return folder / "checkpoint.pt"


def damage(path: Path, change) -> Path:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return path


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def set_nan_means(state):
    state["state_dict"]["layers.1.means"][0, 0] = float("nan")


def set_offset(state):
    state["training"]["order"] = torch.arange(20)
    state["training"]["offset"] = 999


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda path: path.parent, r"is a folder; give the checkpoint file in it"),
        (
            lambda path: damage(path, lambda state: state.pop("state_dict")),
            r"lacks state_dict; it is damaged",
        ),
        (
            lambda path: damage(path, lambda state: state["training"].pop("generator")),
            r"damaged training state",
        ),
        (lambda path: damage(path, set_nan_means), r"NaN or infinite values in layers\.1\.means"),
        (lambda path: damage(path, set_offset), r"damaged training state \(step 2, offset 999 of 20\)"),
        (
            lambda path: damage(path, lambda state: state.update(extra=Payload())),
            r"not written by pyro_dcgmm",
        ),
        (
            lambda path: damage(path, lambda state: state["training"].update(history="nope")),
            r"damaged training state .*history must be a list of epoch records",
        ),
        (
            lambda path: damage(path, lambda state: state["training"].update(epoch="two")),
            r"damaged training state .*expected an integer count, got 'two'",
        ),
        (lambda path: write(path, b"hello\n"), r"truncated, corrupt or not a pyro_dcgmm checkpoint"),
        (lambda path: write(path, bytes(range(256)) * 8), r"checkpoint|pyro_dcgmm"),
    ],
)
def test_damaged_checkpoints_fail_clearly(tmp_path, make, match):
    path = make(saved_checkpoint(tmp_path / "run"))
    with pytest.raises(CheckpointError, match=match) as error:
        train(
            Stack([Fold(4, 2), GMM(4)], (1, 8, 8)),
            torch.rand(20, 1, 8, 8),
            files=RunFiles(path.parent, resume=path),
        )
    assert "weights_only=False" not in str(error.value)


def test_a_failed_checkpoint_write_keeps_the_earlier_one(tmp_path, monkeypatch):
    path = saved_checkpoint(tmp_path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file"
        )

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        CheckpointError, match=r"could not write checkpoint .* any earlier checkpoint there is intact"
    ):
        save_checkpoint(path, Stack([Fold(4, 2), GMM(4)], (1, 8, 8)))
    assert path.read_bytes() == before


def test_opaque_crashes_are_clear_errors(tmp_path):
    (tmp_path / "empty-idx").mkdir()
    images = np.zeros((0, 28, 28), dtype=np.uint8)
    with pytest.raises(DataError, match="holds no images"):
        _images_and_labels(images, np.zeros(0, dtype=np.uint8), "empty-idx")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00epochs")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(tmp_path / "binary.toml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    with pytest.raises(ArchitectureError, match=r"parameters, \d+\.\d GiB to train .* this machine has"):
        Stack([Fold(None), GMM(10**8, init="random")], (1, 28, 28))
    stack = Stack([Fold(2, 2), GMM(3), Fold(2, 1)], (1, 8, 8))  # a Fold above the top GMM
    assert stack.sample(2).shape == (2, 1, 8, 8)
    with pytest.raises(DataError, match=r"values in \[1.00000012, 1.00000012\]"):
        stack.log_prob(torch.full((1, 1, 8, 8), 1.0000001))
    with pytest.raises(DataError, match="batch_size must be a positive int, got 0"):
        stack.log_prob(torch.rand(2, 1, 8, 8), batch_size=0)


def test_inputs_a_scikit_learn_user_passes_are_taken_or_named():
    from pyro_dcgmm import DCGMM

    x = np.random.RandomState(0).rand(60, 64)
    model = DCGMM(
        n_components=2, epochs=np.int64(1), lr=np.float32(0.01), random_state=np.random.RandomState(0)
    )
    images, clusters = model.fit(x).sample(np.int64(3))
    assert images.shape == (3, 64) and clusters.shape == (3,)
    with pytest.raises(ConfigError, match="layers is empty"):
        DCGMM(layers=[]).fit(x)
    with pytest.raises(ConfigError, match=r"score_layer 5: layer must be an int in \[-1, 0\]"):
        DCGMM(n_components=2, score_layer=5, epochs=1).fit(x)
    with pytest.raises(DataError, match=r"data_range=None for unbounded, tabular data"):
        DCGMM(n_components=2, epochs=1).fit(x - 0.5)
    with pytest.raises(ConfigError, match=r"unknown preset 'e'; .*did you mean 'E'"):
        DCGMM(layers="e").fit(x)


def test_config_files_and_keys_users_get_wrong(tmp_path):
    config = tmp_path / "bom.toml"
    config.write_text(
        "[training]\nepochs = 2\n", encoding="utf-8-sig"
    )  # Windows editors add a byte-order mark
    assert load_config(config).training.epochs == 2
    with pytest.raises(ConfigError, match=r"unknown key 'bogus'$"):
        from_dict(TrainConfig, {"bogus": 1}, "training")
    with pytest.raises(ConfigError, match=r"data.classes must be two or more different labels"):
        train_cli("--config", "digits", "--classes", "3", "3", "--out", str(tmp_path / "one"))


def test_what_was_silently_accepted_now_says_so(tmp_path):
    with pytest.warns(
        errors.TrainingWarning, match=r"layer 1 was never trained: its wait \(0\.1 of the planned steps\)"
    ):
        train_cli("--config", "digits", "--max-steps", "5", "--out", str(tmp_path / "short"))
    with pytest.warns(UserWarning, match=r"train_limit 100000 exceeds the 1437 training images"):
        summary = train_cli(
            "--config", "digits", "--train-limit", "100000", "--batch-size", "1000000000", "--epochs", "1",
            "--out", str(tmp_path / "huge"),
        )  # fmt: skip
    # one step of the whole training split (1,293 images) per epoch: samples/s counts those
    samples = summary["train_samples_per_second"] * summary["train_seconds"]
    assert samples == pytest.approx(1293)


def test_numbers_the_commands_cannot_use_are_refused_in_one_line(tmp_path, capsys):
    from pyro_dcgmm.cli import bench

    for flags in (["--batch-sizes", "0"], ["--steps", "-1"], ["--repeats", "0"]):
        with pytest.raises(SystemExit) as stop:
            bench.main(["--quick", *flags])
        assert stop.value.code == 2 and "must be a positive integer" in capsys.readouterr().err
    stack = Stack.from_config(presets.get("digits", (1, 8, 8)))
    with pytest.raises(ArchitectureError, match=r"layer must be an int in \[-2, 1\]"):
        stack.variants(torch.rand(2, 1, 8, 8), layer=-9)


def test_runs_that_cannot_start_say_why_and_leave_nothing(tmp_path):
    with pytest.raises(
        DataError, match=r"needs at least that many input vectors per mixture, got 18 from 2 images"
    ):
        train_cli("--config", "digits", "--train-limit", "2", "--out", str(tmp_path / "tiny"))
    assert not (tmp_path / "tiny").exists()  # failed before its first checkpoint: nothing left
    with pytest.raises(ConfigError, match=r"training.seed must be in \[0, "):
        train_cli("--config", "digits", "--seed", "99999999999999999999", "--out", str(tmp_path / "seed"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"cannot write into .*afile/sub'?: Not a directory"):
        train_cli("--config", "digits", "--out", str(tmp_path / "afile" / "sub"))
    stack = Stack.from_config(presets.get("digits", (1, 8, 8)))
    with pytest.raises(DataError, match=r"1,000,000,000,000 images of shape \(1, 8, 8\) need .* GiB"):
        stack.sample(10**12)


def test_the_estimators_name_the_setting_at_fault():
    from sklearn.datasets import load_digits as digit_arrays

    from pyro_dcgmm import DCGMM, DCGMMClassifier

    digits = digit_arrays()
    x, y = digits.data[:300] / 16, digits.target[:300]
    with pytest.raises(ConfigError, match=r"model.data_range must be two numbers, low < high"):
        DCGMM(n_components=2, epochs=1, data_range=(1.0, 0.0)).fit(x)
    with pytest.raises(DataError, match=r"every class needs at least 2 rows of X .*; too few: 1 \(1\)"):
        DCGMMClassifier(epochs=1).fit(x[:100], [0] * 99 + [1])
    assert DCGMMClassifier(epochs=1).fit(x, y).score(x, y) > 0.5  # the default arguments fit


def test_a_meta_tensor_is_named():
    from pyro_dcgmm import DCGMM

    with pytest.raises(DataError, match="on the 'meta' device, which holds shapes but no values"):
        DCGMM(n_components=2, epochs=1).fit(torch.empty(20, 64, device="meta"))


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    train_cli("--config", "digits", "--epochs", "1", "--out", str(folder))
    real_write = Path.write_text

    def read_only(path, *args, **kwargs):  # what a read-only folder (or file system) answers
        if path.parent == folder:
            raise PermissionError(13, "Permission denied")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    with pytest.raises(ConfigError, match=r"cannot write into .*: Permission denied"):
        train_cli("--resume", str(folder / "checkpoint.pt"), "--epochs", "2", "--out", str(folder))


def test_data_a_run_cannot_learn_from_is_trained_with_a_warning():
    from pyro_dcgmm import DCGMM

    x = np.random.RandomState(0).rand(200, 64)
    for constant in (np.zeros((200, 64)), np.full((200, 64), 0.5)):
        with pytest.warns(errors.TrainingWarning, match="every training image is the same"):
            DCGMM(epochs=1, random_state=0).fit(constant)
    with pytest.warns(errors.TrainingWarning, match="every label is 0: a classifier learns nothing"):
        DCGMM(epochs=1, random_state=0).fit(x, np.zeros(200, int))
