"""The examples run as a user runs them (at a small size), and the API reference builds from the
docstrings with no warning."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "cluster_your_images.py": (["--epochs", "1"], "test images in"),
    "outlier_scores.py": (["--epochs", "2"], "AUROC of -log p(x) for held-out digit 0"),
    "inpainting.py": (["--epochs", "2", "--out", "inpainting.png"], "wrote inpainting.png"),
    "plain_pyro_svi.py": (["--steps", "5"], "'layer0.x': (2, 4, 3, 3, 16)"),
    "bayesian_layer.py": (["--epochs", "5", "--steps", "5"], "after 5 SVI steps"),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_runs(name, tmp_path):
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)
    flags, printed = EXAMPLES[name]
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *flags], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert printed in run.stdout


def test_the_api_reference_builds_without_a_warning(tmp_path):
    run = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "scripts" / "api_reference.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    for page in (
        "index.html",
        "pyro_dcgmm.html",
        "pyro_dcgmm/model/stack.html",
        "pyro_dcgmm/config/run.html",
    ):
        assert (tmp_path / page).is_file(), page
    assert "Stack.upward" in (tmp_path / "pyro_dcgmm/model/stack.html").read_text()  # a documented method
    assert "DCGMM" in (tmp_path / "pyro_dcgmm.html").read_text()
