"""What importing the package costs and changes."""

import subprocess
import sys


def _imported_after(statement: str, modules: list[str]) -> dict:
    code = f"import sys; {statement}; print([m in sys.modules for m in {modules!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return dict(zip(modules, eval(out), strict=True))


def test_import_is_light():
    # torch itself imports tqdm, so only what the package adds is checked
    loaded = _imported_after("import pyro_dcgmm", ["sklearn", "pyro_dcgmm.train", "pyro_dcgmm.estimator"])
    assert not any(loaded.values()), loaded
    loaded = _imported_after("from pyro_dcgmm import DCGMM", ["pyro_dcgmm.estimator"])
    assert all(loaded.values())


def test_plots_leave_the_matplotlib_backend_alone():
    loaded = _imported_after("import pyro_dcgmm.plots", ["matplotlib.pyplot"])
    assert not loaded["matplotlib.pyplot"]
