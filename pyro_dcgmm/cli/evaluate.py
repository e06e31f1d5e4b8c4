"""Evaluate DCGMMs against scikit-learn baselines in the same run: outlier detection, clustering,
density, classification and covariance structures.

Each sub-command writes ``report.json`` and figures into ``--out``; ``pyro-dcgmm evaluate COMMAND --help``
describes it.  Examples::

    pyro-dcgmm evaluate outliers --dataset fashion-mnist --heldout all --epochs 10 --out runs/o
    pyro-dcgmm evaluate cluster --dataset fashion-mnist --preset E --epochs 10 --out runs/c
    pyro-dcgmm evaluate density --dataset fashion-mnist --epochs 10 --out runs/d
    pyro-dcgmm evaluate classify --dataset digits --class-per-position --epochs 10 --out runs/k
    pyro-dcgmm evaluate covariances --dataset natural-patches --patch-size 8 --components 24 --out runs/s
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from pyro_dcgmm import presets
from pyro_dcgmm.cli.common import (
    add_data_flags,
    add_device_flag,
    add_training_flags,
    make_parser,
    output_folder,
)
from pyro_dcgmm.evaluation.classification import classify
from pyro_dcgmm.evaluation.clustering import cluster
from pyro_dcgmm.evaluation.density import covariances, density
from pyro_dcgmm.evaluation.outliers import outliers
from pyro_dcgmm.evaluation.protocol import load
from pyro_dcgmm.training.files import atomic_write

COMMANDS = {
    "outliers": """Outlier detection: train on all classes but a held-out one, then score the test set.

The held-out class is the outlier class.  Scores: every GMM layer's log-likelihood, and the
likelihood ratio ``z(top) - z(first)`` (each layer's score standardised on held-out inliers of the
training split), beside a scikit-learn diagonal GMM.  Reports AUROC, AUPR and FPR at 95% TPR.""",
    "cluster": """Clustering: the top GMM layer's components as clusters of the test set.

Reports ACC (Hungarian matching), purity, NMI and ARI beside k-means and a diagonal GMM.""",
    "density": """Density: bits/dim with uniform dequantisation, beside a diagonal GMM.

Only configurations that are densities over pixels are scored in bits/dim: a joint stack (one
mixture over the pixels, --joint-preset), one full-image GMM and one GMM of non-overlapping
patches.  Layerwise stacks score every pixel several times and model responsibilities above the
first layer, so they report per-layer log-likelihoods instead.""",
    "classify": """Classification: class models (one DCGMM per class, Bayes' rule) beside a readout.

The class models share one architecture (a Fold and a GMM, set by the --class-* flags) and score
the first GMM layer's log-likelihood; beside them the preset's Readout trained on labels, a joint
stack whose top layer is split by class (--joint-preset; Bayes' rule over its class's components),
and one scikit-learn GaussianMixture per class (diagonal and full).  Reports accuracy on the test set, or
with --validation on a held-out fifth of the training set (for choosing settings).""",
    "covariances": """Covariance structures: diag, full and stationary GMMs over whole inputs at equal K.

Each is one GMM layer over the whole input (an image, or a natural-image patch), trained by online
EM; beside them scikit-learn's GaussianMixture with diagonal and full covariances (reg_covar = the
inverse precision ceiling).  Reports held-out bits/dim (image data dequantised; natural patches are
continuous grey values, scored with the same 8-bit offset) and training seconds.""",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__, prog="pyro-dcgmm evaluate")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, doc in COMMANDS.items():
        command = make_parser(doc, commands.add_parser, name=name, help=doc.partition("\n")[0])
        add_data_flags(command)
        add_training_flags(command, with_defaults=True)
        add_device_flag(command)
        command.add_argument("--train-limit", type=int, help="train on a random subset of this many images")
        if name not in ("density", "covariances"):  # fixed models: GMMs over whole inputs or patches
            add_architecture_flags(command)
        command.add_argument("--out", type=Path, required=True, help="output folder")
        command.add_argument("--no-progress", action="store_true", help="no progress bars while training")
        FLAGS[name](command)
    return parser.parse_args(argv)


def add_architecture_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--preset",
        choices=presets.names(),
        help="architecture (default: the one for the image size, digits for 8x8, else E)",
    )
    command.add_argument("--per-position", action="store_true", help="one mixture per position")
    command.add_argument(
        "--upper-precision-ceiling",
        type=float,
        help="precision ceiling of the GMM layers above the first (default: the preset's)",
    )


def add_outlier_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--heldout", default="0", help="a class index, or 'all' for every fold")
    command.add_argument("--flat-components", type=int, default=25, help="K of the flat GMM")


def add_cluster_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--top-components", type=int, default=10, help="K of the top GMM layer")


def add_classify_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--class-patch", type=int, default=4, help="patch of the class models' Fold")
    command.add_argument("--class-stride", type=int, default=2, help="stride of that Fold")
    command.add_argument("--class-components", type=int, default=10, help="K of each class model")
    command.add_argument("--class-covariance", choices=("diag", "full", "stationary"), default="diag")
    command.add_argument("--class-per-position", action="store_true", help="class models per position")
    command.add_argument(
        "--class-batch-size", type=int, help="mini-batch size of the class models (--batch-size)"
    )
    command.add_argument("--flat-components", type=int, default=5, help="K of each per-class GMM")
    command.add_argument("--flat-reg-covar", type=float, default=0.01, help="reg_covar of those")
    command.add_argument("--validation", action="store_true", help="score a validation split")
    command.add_argument(
        "--joint-preset",
        choices=presets.names(),
        help="joint stack split by class (default: JC, or JCdigits below 13 pixels a side)",
    )


def add_covariance_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--components", type=int, default=32, help="K of every model")
    command.add_argument("--precision-ceiling", type=float, default=1e4, help="largest precision")
    command.add_argument("--sklearn-iterations", type=int, default=100, help="EM iterations")


def add_density_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--joint-preset",
        choices=presets.names(),
        help="the joint stack's preset (default: J, or Jdigits below 13 pixels a side)",
    )
    command.add_argument("--components", type=int, default=25, help="K of each density model")
    command.add_argument("--patch", type=int, default=4, help="patch of the non-overlapping model")
    command.add_argument(
        "--precision-ceiling",
        type=float,
        default=1e6,
        help="largest precision (1/variance) of the density models; dequantised constant pixels "
        "need about 7.9e5 (uniform noise of width 1/256)",
    )


FLAGS = {
    "outliers": add_outlier_flags,
    "cluster": add_cluster_flags,
    "density": add_density_flags,
    "classify": add_classify_flags,
    "covariances": add_covariance_flags,
}
PROTOCOLS = {
    "outliers": outliers,
    "cluster": cluster,
    "density": density,
    "classify": classify,
    "covariances": covariances,
}


def main(argv=None) -> dict:
    args = parse_args(argv)
    output_folder(args.out)
    start = time.perf_counter()
    dataset = load(args)
    report = {
        "command": args.command,
        "configuration": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "dataset": dataset.name,
        "num_train": int(dataset.train_images.shape[0]),
        "num_test": int(dataset.test_images.shape[0]),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    PROTOCOLS[args.command](args, dataset, report)
    report["seconds"] = time.perf_counter() - start
    atomic_write(args.out / "report.json", lambda h: h.write(json.dumps(report, indent=2).encode()))
    print(f"wrote {args.out / 'report.json'}")
    return report
