"""The ``pyro-dcgmm`` command.

``pyro-dcgmm COMMAND ...`` (or ``python -m pyro_dcgmm COMMAND ...``) runs
``pyro_dcgmm.cli.COMMAND.main``; ``scripts/`` holds the same commands as thin wrappers.
"""

from __future__ import annotations

import importlib
import sys

from pyro_dcgmm import __version__
from pyro_dcgmm.cli.common import run_script
from pyro_dcgmm.config import nearest

PROGRAM = "pyro-dcgmm"
COMMANDS = {
    "train": "train a DCGMM by SVI (TraceEnum_ELBO) and report held-out log-likelihoods",
    "sample": "sample from a trained DCGMM: grids, class samples, variants, in-painting, NDB",
    "evaluate": "outliers, clustering, density, classification and covariance structures against "
    "scikit-learn baselines",
    "bench": "throughput of training and scoring per preset, batch size and path",
    "inspect": "what a checkpoint holds: architecture, training progress, last results",
    "views": "per-component views of GMM layers: mean, precision map or spectrum, top inputs",
}


def usage() -> str:
    listing = "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items())
    return (
        f"usage: {PROGRAM} COMMAND [flags]  ({PROGRAM} COMMAND --help describes one)\n"
        f"       {PROGRAM} --version\n\ncommands:\n{listing}"
    )


def main(argv: list[str] | None = None) -> None:
    """``pyro-dcgmm COMMAND [flags]``: run one command (``pyro-dcgmm COMMAND --help`` describes it)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0)
    if argv and argv[0] == "--version":
        print(f"{PROGRAM} {__version__}")
        sys.exit(0)
    if not argv or argv[0] not in COMMANDS:
        problem = (
            "no command given" if not argv else f"unknown command {argv[0]!r}{nearest(argv[0], COMMANDS)}"
        )
        print(f"{usage()}\n{PROGRAM}: error: {problem}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"pyro_dcgmm.cli.{argv[0]}")
    run_script(lambda: module.main(argv[1:]), f"{PROGRAM} {argv[0]}")
