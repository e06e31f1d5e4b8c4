import importlib.util
from pathlib import Path

import pyro
import pytest
import torch

from pyro_dcgmm import GMM, Fold, Readout, Stack

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """``scripts/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digits_stack(lower: int, upper: int, wait: float = 0.2, seed: int = 0, **gmm_options) -> Stack:
    """Fold(4, 2) - GMM(lower) - Fold - GMM(upper, waiting) - Readout(10) for 8x8 digits, seeded."""
    torch.manual_seed(seed)
    layers = [
        Fold(4, 2),
        GMM(lower, **gmm_options),
        Fold(None),
        GMM(upper, wait=wait, **gmm_options),
        Readout(10),
    ]
    return Stack(layers, (1, 8, 8))


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def images64():
    """Seven random 8x8 single-channel images in [0, 1], float64."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand(7, 1, 8, 8, generator=generator, dtype=torch.float64)
