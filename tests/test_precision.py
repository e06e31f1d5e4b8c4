"""Float32 precision on CUDA: full float32 unless a run asks for TF32, and the emulation of TF32
that says why (``scripts/tf32_emulation.py``).  The flags are set and read on a CPU as well."""

import pytest
import torch
from conftest import load_script

from pyro_dcgmm import Stack, presets
from pyro_dcgmm.cli import train as train_command
from pyro_dcgmm.cli.common import run_script
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.device import float32_precision
from pyro_dcgmm.training.checkpoint import save_checkpoint
from pyro_dcgmm.training.trainer import Trainer


def flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def pytorch_defaults():
    """PyTorch's own defaults (full float32 matmuls, TF32 convolutions), put back afterwards."""
    before = flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("tf32", [False, True])
def test_the_precision_holds_inside_and_the_flags_come_back_after_an_error(tf32, pytorch_defaults):
    with pytest.raises(RuntimeError, match="inside"), float32_precision(tf32):
        assert flags() == (tf32, tf32)
        raise RuntimeError("inside")
    assert flags() == (False, True)


@pytest.mark.parametrize("tf32", [False, True])
def test_training_runs_in_the_precision_its_config_names(tf32, pytorch_defaults):
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("digits", (1, 8, 8)))
    seen = []
    config = TrainConfig(epochs=1, max_steps=2, batch_size=20, device="cpu", tf32=tf32, progress=False)
    Trainer(stack, config, callbacks=[lambda trainer: seen.append(flags())]).fit(torch.rand(40, 1, 8, 8))
    assert seen == [(tf32, tf32)] * 2 and flags() == (False, True)


def test_commands_run_in_full_float32_and_train_takes_tf32_from_its_flag(pytorch_defaults):
    seen = []
    run_script(lambda: seen.append(flags()), "test")
    assert seen == [(False, False)] and flags() == (False, True)
    args = train_command.parse_args(["--preset", "digits", "--tf32", "--out", "x"])
    assert train_command.resolve_config(args).training.tf32
    assert not train_command.resolve_config(train_command.parse_args(["--out", "x"])).training.tf32


def test_tf32_keeps_ten_mantissa_bits_rounded_or_truncated():
    emulation = load_script("tf32_emulation")
    step = 2.0**-10  # TF32's spacing in [1, 2)
    x = torch.tensor([1.0, 1.0 + step, 1.0 + 0.49 * step, 1.0 + 0.51 * step, -(1.0 + 0.51 * step), 3.3e-30])
    rounded = emulation.to_tf32(x, rounded=True)
    truncated = emulation.to_tf32(x, rounded=False)
    assert rounded[:5].tolist() == [1.0, 1.0 + step, 1.0, 1.0 + step, -(1.0 + step)]
    assert truncated[:5].tolist() == [1.0, 1.0 + step, 1.0, 1.0, -1.0]
    assert torch.equal(emulation.to_tf32(rounded, rounded=True), rounded)  # already TF32: unchanged
    torch.testing.assert_close(rounded[5:], x[5:], rtol=2.0**-11, atol=0.0)


def test_the_emulation_moves_the_log_likelihoods_more_than_float32_does(tmp_path, capsys):
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("digits", (1, 8, 8)))
    save_checkpoint(tmp_path / "checkpoint.pt", stack)
    emulation = load_script("tf32_emulation")
    emulation.main([str(tmp_path / "checkpoint.pt"), "--dataset", "digits", "--images", "50"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    first_layer = {" ".join(row[2:-4]): float(row[-4]) for row in rows if row[0] == "0"}
    assert set(first_layer) == {"float32", "TF32 rounded", "TF32 truncated"}
    assert first_layer["float32"] < first_layer["TF32 rounded"] < first_layer["TF32 truncated"]
