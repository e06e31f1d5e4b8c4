import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script

import pyro_dcgmm
from pyro_dcgmm.cli import main as cli
from pyro_dcgmm.cli import train as train_svi
from pyro_dcgmm.cli.common import plain
from pyro_dcgmm.data.datasets import FASHION_MNIST_ROOT
from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.training.checkpoint import stack_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_train_svi_on_digits_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    summary = train_svi.main(["--config", "digits", "--epochs", "2", "--out", str(out), "--no-progress"])
    for name in [
        "checkpoint.pt",
        "log.jsonl",
        "summary.json",
        "config.json",
        "prototypes.png",
        "training_curve.png",
    ]:
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["steps"] == summary["steps"] == 2 * 13
    assert summary["test_log_likelihood_after"][0] > summary["test_log_likelihood_before"][0]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["run_config"]["training"]["epochs"] == 2
    stack = stack_from_checkpoint(out / "checkpoint.pt")
    assert stack.input_shape == (1, 8, 8)
    printed = capsys.readouterr().out
    assert "test LL after" in printed and "samples/s" in printed


def test_train_svi_resume_continues(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--preset", "digits", "--dataset", "digits", "--out", str(out), "--no-progress"]
    train_svi.main([*base, "--epochs", "1"])
    summary = train_svi.main(
        ["--resume", str(out / "checkpoint.pt"), "--epochs", "2", "--out", str(out), "--no-progress"]
    )
    assert summary["steps"] == 2 * 13 and summary["new_steps"] == 13
    assert summary["test_log_likelihood_before"] is None
    capsys.readouterr()
    again = train_svi.main(
        ["--resume", str(out / "checkpoint.pt"), "--epochs", "2", "--out", str(out), "--no-progress"]
    )
    assert again["new_steps"] == 0 and again["train_samples_per_second"] is None  # was a bogus rate
    assert "nothing to train: the run has done its 2 epochs already" in capsys.readouterr().out


def test_the_package_command_runs_every_sub_command(tmp_path, capsys):
    # python -m pyro_dcgmm is what the installed pyro-dcgmm command runs (pyro_dcgmm.cli.main:main)
    def command(*args):
        return subprocess.run([sys.executable, "-m", "pyro_dcgmm", *args], capture_output=True, text=True)

    listing = command()
    assert listing.returncode == 2 and all(name in listing.stderr for name in ("train", "sample", "inspect"))
    for name in cli.COMMANDS:  # in this process: faster
        with pytest.raises(SystemExit) as stop:
            cli.main([name, "--help"])
        assert stop.value.code == 0 and f"usage: pyro-dcgmm {name}" in capsys.readouterr().out
    trained = command("train", "--config", "digits", "--epochs", "1", "--out", str(tmp_path), "--no-progress")
    assert trained.returncode == 0, trained.stderr
    shown = command("inspect", str(tmp_path / "checkpoint.pt"))
    assert shown.returncode == 0 and "trained 1 epoch, 13 steps" in shown.stdout and "GMM" in shown.stdout
    again = command("train", "--config", "digits", "--epochs", "1", "--out", str(tmp_path), "--no-progress")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already holds a run" in again.stderr


def test_unknown_flag_is_an_error():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/train_svi.py"), "--epochz", "1", "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "unrecognized arguments: --epochz" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="dataset-fashion-mnist not installed")
def test_preset_e_one_epoch_on_fashion_mnist(tmp_path):
    summary = train_svi.main(
        [
            "--preset",
            "E",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    before, after = summary["test_log_likelihood_before"], summary["test_log_likelihood_after"]
    assert after[0] > before[0]


@pytest.mark.skipif(not FASHION_MNIST_ROOT.exists(), reason="needs dataset-fashion-mnist")
def test_the_prepared_gpu_session_runs_its_steps_small_on_a_cpu(tmp_path):
    carried = tmp_path / "carried"
    carried.mkdir()
    (carried / "fashion-mnist").symlink_to(FASHION_MNIST_ROOT)
    out = tmp_path / "out"
    settings = {"DEVICE": "cpu", "EPOCHS": "1", "TRAIN_LIMIT": "300", "BATCHES": "1 32", "TF32_IMAGES": "100"}
    paths = {"CARRIED": str(carried), "OUT": str(out), "PYTHON": sys.executable}
    environment = {**os.environ, **settings, **paths}
    command = ["bash", str(ROOT / "scripts/gpu_session.sh")]
    subprocess.run(command, cwd=ROOT, env=environment, check=True, capture_output=True)
    rows = json.loads((out / "bench.json").read_text())
    assert {(row["preset"], row["batch"], row["path"]) for row in rows} == {
        (preset, batch, path)
        for preset in ("E", "digits")
        for batch in (1, 32)
        for path in ("hand", "svi", "score", "train")
    }
    for name, batch in (("default", "auto"), ("batch2048", 2048), ("batch100", 100)):
        summary = json.loads((out / f"{name}-seed0.json").read_text())
        assert summary["training"]["batch_size"] == batch and summary["steps"] == (1 if batch == 2048 else 3)
    assert "torch" in (out / "device.txt").read_text() and "skipped" in (out / "tests.txt").read_text()
    assert "tf32" in (out / "bench.txt").read_text() and "TF32 truncated" in (out / "bench.txt").read_text()


def test_per_position_applies_to_the_layers_a_config_lists():
    from pyro_dcgmm import presets
    from pyro_dcgmm.config import load_config

    config = load_config("digits")
    resolved = presets.resolve(config.model, (1, 8, 8), shared=False)
    gmms = [layer for layer in resolved.layers if layer.type == "gmm"]
    assert len(gmms) == 2 and not any(g.shared for g in gmms)  # was ignored for listed layers
    kept = presets.resolve(config.model, (1, 8, 8))
    assert kept.layers == config.model.layers


def test_a_failed_config_check_leaves_no_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.epochs must be >= 1, got 0"):
        train_svi.main(["--config", "digits", "--epochs", "0", "--out", str(tmp_path / "x"), "--no-progress"])
    assert not (tmp_path / "x").exists()


def digits_checkpoint(tmp_path) -> str:
    """The checkpoint of a one-epoch run of the digits configuration."""
    train_svi.main(["--config", "digits", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    return str(tmp_path / "run" / "checkpoint.pt")


def test_subnormal_bench_trains_and_samples_the_same_either_way(tmp_path, capsys):
    checkpoint = digits_checkpoint(tmp_path)
    bench = load_script("bench_subnormals")
    capsys.readouterr()
    bench.main(["--dataset", "digits", "--components", "4", "--steps", "3", "--checkpoints", checkpoint])
    lines = capsys.readouterr().out.splitlines()
    trained = [line.split() for line in lines if line.split()[:1] == ["4"]]  # first-layer K 4
    assert [row[1] for row in trained] == ["kept", "zeroed"]
    assert trained[0][3:] == trained[1][3:]  # the same validation log-likelihoods
    sampled = [line.split() for line in lines if line.startswith(checkpoint)]
    assert [row[1] for row in sampled] == ["kept", "zeroed"] and sampled[0][3] == sampled[1][3] == "0"


def test_the_readout_optimum_fits_the_readouts_own_loss_at_least_as_well(tmp_path, capsys):
    checkpoint = digits_checkpoint(tmp_path)
    capsys.readouterr()
    load_script("readout_optimum").main([checkpoint])
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[0] == checkpoint
    accuracies, (trained, best) = [float(v) for v in row[1:4]], [float(v) for v in row[4:]]
    assert all(0.5 < accuracy <= 1.0 for accuracy in accuracies)  # ten digits: chance is 0.1
    assert best <= trained + 1e-4  # the optimum of the Readout's loss on the images it trained on


def run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def test_the_top_level_command_helps_on_stdout_and_names_what_is_wrong(capsys):
    code, out, err = run(["--help"], capsys)
    assert code == 0 and "commands:" in out and err == ""
    assert all(name in out for name in cli.COMMANDS) and "classification and covariance" in out
    assert run(["--version"], capsys)[:2] == (0, f"pyro-dcgmm {pyro_dcgmm.__version__}\n")
    code, _, err = run(["trian"], capsys)
    assert code == 2 and err.rstrip().endswith("error: unknown command 'trian'; did you mean 'train'?")
    assert run([], capsys)[0] == 2


@pytest.mark.parametrize("argv", [[name] for name in cli.COMMANDS] + [["evaluate", "classify"]])
def test_help_is_plain_text_with_each_default_once(argv, capsys):
    code, out, _ = run([*argv, "--help"], capsys)
    assert code == 0
    assert "(default: None)" not in out and "``" not in out and ":mod:" not in out and ":class:" not in out
    assert all(line.count("(default:") <= 1 for line in out.splitlines())
    module = importlib.import_module(f"pyro_dcgmm.cli.{argv[0]}")
    description = plain(module.__doc__).partition("\n\n")[0].strip()
    assert description.endswith(".") and (len(argv) > 1 or description in out)  # whole, not cut


def test_a_config_name_that_is_not_shipped_lists_those_that_are(tmp_path):
    with pytest.raises(
        ConfigError, match=r"the shipped configurations are digits, .*; did you mean 'digits'"
    ):
        train_svi.main(["--config", "digit", "--out", str(tmp_path / "run")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_refused_device_leaves_no_folder(tmp_path):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train_svi.main(["--config", "digits", "--device", "cuda", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_file_is_one_line(tmp_path):
    from pyro_dcgmm.cli.common import output_folder

    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"cannot write into --out .*afile'?: File exists"):
        output_folder(tmp_path / "afile")
    assert output_folder(tmp_path / "new" / "deep").is_dir()


def test_bench_times_the_training_loop_and_records_the_environment(tmp_path):
    from pyro_dcgmm.cli import bench

    record = tmp_path / "bench.json"
    flags = ["--preset", "digits", "--device", "cpu", "--input-size", "8", "--quick"]
    flags += ["--paths", "hand", "train"]
    rows = bench.main([*flags, "--json", str(record)])
    train_row = next(row for row in rows if row["path"] == "train")
    assert train_row["samples_per_second"] > 0 and train_row["ratio_to_hand"] > 0
    assert train_row["svi_rate_fraction"] is None  # no svi row to compare with
    saved = json.loads(record.read_text())
    assert [row["path"] for row in saved] == ["hand", "train"]
    assert {"torch", "pyro", "threads", "device_name", "measured_at"} <= set(saved[0])
