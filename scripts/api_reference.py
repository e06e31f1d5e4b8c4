"""The API reference of pyro_dcgmm, generated from its docstrings by pdoc (``pip install -e
".[dev]"`` installs it); any warning is an error::

    python scripts/api_reference.py --out runs/api    # then open runs/api/index.html
"""

from __future__ import annotations

import argparse
import pkgutil
import warnings
from pathlib import Path

import pdoc

import pyro_dcgmm


def documented_modules() -> list[str]:
    """The package, its sub-packages and modules; the modules of a package that lists its public
    names in ``__all__`` are named too, since pdoc then shows only those names."""
    names = ["pyro_dcgmm"]
    for info in pkgutil.walk_packages(pyro_dcgmm.__path__, "pyro_dcgmm."):
        if info.name.endswith("__main__"):
            continue
        parent = __import__(info.name.rpartition(".")[0], fromlist=["_"])
        if info.name.count(".") == 1 or hasattr(parent, "__all__"):
            names.append(info.name)
    return names


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the HTML reference")
    args = parser.parse_args(argv)
    pyro_dcgmm.DCGMM, pyro_dcgmm.DCGMMClassifier  # noqa: B018 - imported, so pdoc finds them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pdoc.pdoc(*documented_modules(), output_directory=args.out)
    print(f"wrote {args.out / 'index.html'}")


if __name__ == "__main__":
    main()
