"""What importing the package costs and changes."""

import subprocess
import sys


def _imported_after(statement: str, modules: list[str]) -> dict:
    code = f"import sys; {statement}; print([m in sys.modules for m in {modules!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return dict(zip(modules, eval(out), strict=True))


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(eval(out))


def test_import_is_light():
    # torch imports tqdm itself (torch.hub), so the check is on what the package adds to torch and pyro
    added = _modules_after("import pyro_dcgmm") - _modules_after("import torch, pyro")
    heavy = ("sklearn", "tqdm", "matplotlib", "scipy", "pyro_dcgmm.training.trainer", "pyro_dcgmm.estimator")
    assert not [m for m in added if m.split(".")[0] in heavy or m in heavy]
    loaded = _imported_after("from pyro_dcgmm import DCGMM", ["pyro_dcgmm.estimator"])
    assert all(loaded.values())


def test_plots_leave_the_matplotlib_backend_alone():
    loaded = _imported_after("import pyro_dcgmm.figures.plots", ["matplotlib.pyplot"])
    assert not loaded["matplotlib.pyplot"]
