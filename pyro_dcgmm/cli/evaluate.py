"""Evaluate DCGMMs against flat GMMs in the same run: outlier detection, clustering, density.

Each sub-command writes ``report.json`` and figures into ``--out``; ``evaluate.py COMMAND --help``
describes it.  Examples::

    pyro-dcgmm evaluate outliers --dataset fashion-mnist --heldout all --epochs 10 --out runs/o
    pyro-dcgmm evaluate cluster --dataset fashion-mnist --preset E --epochs 10 --out runs/c
    pyro-dcgmm evaluate density --dataset fashion-mnist --epochs 10 --out runs/d
    pyro-dcgmm evaluate classify --dataset digits --class-per-position --epochs 10 --out runs/k
    pyro-dcgmm evaluate covariances --dataset natural-patches --patch-size 8 --components 24 --out runs/s
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import RocCurveDisplay
from sklearn.mixture import GaussianMixture

from pyro_dcgmm import DCGMM, presets
from pyro_dcgmm.class_models import DCGMMClassifier
from pyro_dcgmm.cli.common import (
    add_data_flags,
    add_device_flag,
    add_training_flags,
    format_table,
    make_parser,
)
from pyro_dcgmm.config import DataConfig, FoldConfig, GMMConfig
from pyro_dcgmm.data.datasets import dequantize, load_dataset, split_validation
from pyro_dcgmm.errors import DataError
from pyro_dcgmm.evaluation.metrics import (
    bits_per_dimension,
    clustering_metrics,
    outlier_metrics,
)
from pyro_dcgmm.figures.plots import save_image_grid
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
        command.add_argument("--out", type=Path, required=True, help="output folder")
        command.add_argument("--no-progress", action="store_true", help="no progress bars while training")
        if name == "outliers":
            command.add_argument("--heldout", default="0", help="a class index, or 'all' for every fold")
            command.add_argument("--flat-components", type=int, default=25, help="K of the flat GMM")
        if name == "cluster":
            command.add_argument("--top-components", type=int, default=10, help="K of the top GMM layer")
        if name == "classify":
            command.add_argument("--class-patch", type=int, default=4, help="patch of the class models' Fold")
            command.add_argument("--class-stride", type=int, default=2, help="stride of that Fold")
            command.add_argument("--class-components", type=int, default=10, help="K of each class model")
            command.add_argument("--class-covariance", choices=("diag", "full", "stationary"), default="diag")
            command.add_argument(
                "--class-per-position", action="store_true", help="class models per position"
            )
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
        if name == "covariances":
            command.add_argument("--components", type=int, default=32, help="K of every model")
            command.add_argument("--precision-ceiling", type=float, default=1e4, help="largest precision")
            command.add_argument("--sklearn-iterations", type=int, default=100, help="EM iterations")
        if name == "density":
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
    return parser.parse_args(argv)


def load(args):
    config = DataConfig(
        dataset=args.dataset, patch_size=args.patch_size, root=args.root, train_limit=args.train_limit
    )
    return load_dataset(config, seed=args.seed)


def preset_layers(args, shape) -> list:
    """The preset the flags name (the default for ``shape`` when none), without its Readout."""
    options = {"shared": False} if args.per_position else {}
    name = args.preset or presets.default_preset(shape)
    config = presets.get(name, shape, upper_precision_ceiling=args.upper_precision_ceiling, **options)
    return [layer for layer in config.layers if layer.type != "readout"]


def training_params(args) -> dict:
    """The estimators' training settings the flags give."""
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "device": args.device,
        "random_state": args.seed,
        "verbose": int(not args.no_progress),
    }


def estimator(args, layers, data_range=(0.0, 1.0)) -> DCGMM:
    return DCGMM(layers, data_range=data_range, **training_params(args))


def flat(x: torch.Tensor) -> np.ndarray:
    return x.flatten(1).numpy().astype(np.float64)


def outliers(args, dataset, report) -> None:
    classes = sorted(set(dataset.train_labels.tolist()))
    folds = classes if args.heldout == "all" else [int(args.heldout)]
    if not set(folds) <= set(classes):
        raise DataError(
            f"--heldout {args.heldout} is not a class of {dataset.name}; its classes are {classes}"
        )
    report["folds"] = {}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for heldout in folds:
        start = time.perf_counter()
        inlier = dataset.train_labels != heldout
        train_x, _, val_x, _ = split_validation(
            dataset.train_images[inlier], dataset.train_labels[inlier], 0.1, args.seed
        )
        model = estimator(args, preset_layers(args, dataset.input_shape)).fit(train_x)
        is_outlier = (dataset.test_labels == heldout).numpy()
        layers = model.stack_.layer_log_probs(dataset.test_images).numpy()  # (N, L)
        reference = model.stack_.layer_log_probs(val_x).numpy()
        z = (layers - reference.mean(0)) / reference.std(0).clip(min=1e-12)
        scores = {f"layer{j}": -layers[:, j] for j in range(layers.shape[1])}
        if layers.shape[1] > 1:  # a joint stack has one log-likelihood
            scores["ratio_top_minus_first"] = -(z[:, -1] - z[:, 0])
        gmm = GaussianMixture(args.flat_components, covariance_type="diag", random_state=args.seed)
        scores[f"flat_gmm_diag_k{args.flat_components}"] = -gmm.fit(flat(train_x)).score_samples(
            flat(dataset.test_images)
        )
        fold = {name: outlier_metrics(is_outlier, score) for name, score in scores.items()}
        fold["seconds"] = time.perf_counter() - start
        report["folds"][str(heldout)] = fold
        top = f"layer{layers.shape[1] - 1}"
        RocCurveDisplay.from_predictions(is_outlier, scores[top], ax=axes[0], name=f"held-out {heldout}")
        if heldout == folds[0]:
            axes[1].hist(
                [scores[top][~is_outlier], scores[top][is_outlier]],
                bins=50,
                label=[f"inliers (every class but {heldout})", f"outliers (class {heldout})"],
                histtype="step",
                density=True,
            )
        print(
            f"held-out {heldout}: "
            + ", ".join(f"{k} AUROC {v['auroc']:.3f}" for k, v in fold.items() if k != "seconds")
        )
    axes[0].set_title("ROC of the top layer's score, one curve per fold")
    axes[0].legend(fontsize=7)
    axes[1].set_title(f"Top-layer scores of the test set, fold {folds[0]}")
    axes[1].set_xlabel("top-layer outlier score (negative log-likelihood)")
    axes[1].set_ylabel("density of test images")
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(args.out / "outliers.png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    names = [k for k in report["folds"][str(folds[0])] if k != "seconds"]
    report["mean_auroc"] = {
        n: float(np.mean([report["folds"][str(f)][n]["auroc"] for f in folds])) for n in names
    }
    for name, value in report["mean_auroc"].items():
        print(f"mean AUROC {name}: {value:.3f}")


def cluster(args, dataset, report) -> None:
    layers = preset_layers(args, dataset.input_shape)
    top = max(i for i, layer in enumerate(layers) if layer.type in ("gmm", "tree"))
    layers[top] = dataclasses.replace(layers[top], components=args.top_components)
    model = estimator(args, layers).fit(dataset.train_images)
    labels = dataset.test_labels.numpy()
    clusters = model.predict(dataset.test_images)
    train, test = flat(dataset.train_images), flat(dataset.test_images)
    k = args.top_components
    report["dcgmm"] = clustering_metrics(labels, clusters)
    report[f"kmeans_k{k}"] = clustering_metrics(
        labels, KMeans(k, n_init=3, random_state=args.seed).fit(train).predict(test)
    )
    report[f"flat_gmm_diag_k{k}"] = clustering_metrics(
        labels, GaussianMixture(k, covariance_type="diag", random_state=args.seed).fit(train).predict(test)
    )
    for name in ("dcgmm", f"kmeans_k{k}", f"flat_gmm_diag_k{k}"):
        row = report[name]
        values = "  ".join(f"{metric} {row[metric]:.3f}" for metric in ("acc", "purity", "nmi", "ari"))
        print(f"{name:>20}: {values}")
    plot_confusion(labels, clusters, k, dataset.class_names, args.out / "confusion.png")
    plot_clusters(dataset, clusters, k, args.out / "clusters.png")


def plot_confusion(labels: np.ndarray, clusters: np.ndarray, k: int, class_names, path: Path) -> None:
    """Counts of test images per (class, cluster), with the counts written in the cells."""
    table = np.zeros((labels.max() + 1, k), dtype=int)
    np.add.at(table, (labels, clusters), 1)
    figure, axis = plt.subplots(figsize=(1.0 + 0.6 * k, 1.5 + 0.45 * table.shape[0]))
    image = axis.imshow(table, cmap="Blues")
    for (row, column), count in np.ndenumerate(table):
        colour = "white" if count > table.max() / 2 else "black"
        axis.text(column, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    axis.set_xticks(range(k))
    axis.set_yticks(range(table.shape[0]), list(class_names)[: table.shape[0]])
    axis.set_xlabel("DCGMM cluster (top-layer component)")
    axis.set_ylabel("true class")
    axis.set_title("Test images per class and cluster")
    figure.colorbar(image, ax=axis, label="images")
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def plot_clusters(dataset, clusters: np.ndarray, k: int, path: Path) -> None:
    """One row per cluster: the mean of its test images, then up to 7 members (blank if fewer)."""
    rows, labels = [], []
    blank = torch.full((1, *dataset.input_shape), float("nan"))
    for c in range(k):
        members = dataset.test_images[torch.from_numpy(clusters == c)]
        prototype = members.mean(0, keepdim=True) if len(members) else blank
        examples = members[:7]
        rows.append(torch.cat([prototype, examples, blank.expand(7 - len(examples), -1, -1, -1)]))
        labels.append(f"{c} ({len(members)})")
    save_image_grid(
        torch.cat(rows),
        path,
        8,
        "DCGMM clusters, one per row: number (size),\nthe mean of its test images, then members",
        row_labels=labels,
    )


def density(args, dataset, report) -> None:
    channels, height, width = dataset.input_shape
    dims = channels * height * width
    generator = torch.Generator().manual_seed(args.seed)
    test = dequantize(dataset.test_images, dataset.levels, generator)
    k = args.components
    mixture = GMMConfig(components=k, precision_ceiling=args.precision_ceiling)
    joint = args.joint_preset or presets.default_joint_preset(dataset.input_shape)
    configurations = {
        f"dcgmm_joint_{joint}": list(presets.get(joint, dataset.input_shape).layers),
        f"dcgmm_full_image_k{k}": [FoldConfig(patch=None), mixture],
        f"dcgmm_patches{args.patch}_k{k}": [
            FoldConfig(patch=args.patch, stride=args.patch),
            dataclasses.replace(mixture, shared=False),
        ],
    }
    for name, layers in configurations.items():
        if (height % args.patch or width % args.patch) and "patches" in name:
            print(f"{name}: skipped, {height}x{width} is not a multiple of patch {args.patch}")
            continue
        train = dequantize(dataset.train_images, dataset.levels, generator)
        model = estimator(args, layers).fit(train)
        report[name] = {"bits_per_dim": bits_per_dimension(model.score_samples(test), dims, dataset.levels)}
    train = flat(dequantize(dataset.train_images, dataset.levels, generator))
    gmm = GaussianMixture(k, covariance_type="diag", random_state=args.seed, reg_covar=1e-6).fit(train)
    report[f"flat_gmm_diag_k{k}"] = {
        "bits_per_dim": bits_per_dimension(gmm.score_samples(flat(test)), dims, dataset.levels)
    }
    for name, row in report.items():
        if isinstance(row, dict) and "bits_per_dim" in row:
            print(f"{name:>28}: {row['bits_per_dim']:.3f} bits/dim")


def _class_model_layers(args) -> list:
    fold = FoldConfig(patch=args.class_patch, stride=args.class_stride)
    gmm = GMMConfig(
        components=args.class_components, covariance=args.class_covariance, shared=not args.class_per_position
    )
    return [fold, gmm]


def classify(args, dataset, report) -> None:
    train_x, train_y, test_x, test_y = (
        dataset.train_images,
        dataset.train_labels,
        dataset.test_images,
        dataset.test_labels,
    )
    if args.validation:
        train_x, train_y, test_x, test_y = split_validation(train_x, train_y, 0.2, args.seed)
    report["scored_on"] = "validation split" if args.validation else "test set"
    start = time.perf_counter()
    settings = {**training_params(args), "batch_size": args.class_batch_size or args.batch_size}
    classifier = DCGMMClassifier(_class_model_layers(args), **settings).fit(train_x, train_y)
    accuracy = float(classifier.score(test_x, test_y.numpy()))
    report["class_models"] = {"accuracy": accuracy, "train_seconds": time.perf_counter() - start}
    start = time.perf_counter()
    name = args.preset or presets.default_preset(dataset.input_shape)
    readout = estimator(args, name).fit(train_x, train_y)
    predicted = readout.stack_.predict_proba(test_x).argmax(1)
    accuracy = float((predicted == test_y).double().mean())
    report[f"readout_{name}"] = {"accuracy": accuracy, "train_seconds": time.perf_counter() - start}
    start = time.perf_counter()
    joint = args.joint_preset or presets.default_joint_preset(dataset.input_shape, by_class=True)
    generative = estimator(args, joint).fit(train_x, train_y)
    accuracy = float((generative.stack_.predict_proba(test_x).argmax(1) == test_y).double().mean())
    report[f"joint_{joint}"] = {"accuracy": accuracy, "train_seconds": time.perf_counter() - start}
    for kind in ("diag", "full"):
        start = time.perf_counter()
        scores = [
            GaussianMixture(
                args.flat_components,
                covariance_type=kind,
                reg_covar=args.flat_reg_covar,
                random_state=args.seed,
            )
            .fit(flat(train_x[train_y == c]))
            .score_samples(flat(test_x))
            for c in classifier.classes_
        ]
        accuracy = float((classifier.classes_[np.argmax(scores, 0)] == test_y.numpy()).mean())
        report[f"sklearn_per_class_{kind}_k{args.flat_components}"] = {
            "accuracy": accuracy,
            "train_seconds": time.perf_counter() - start,
        }
    _print_rows(report, "accuracy")


def _print_rows(report: dict, measure: str) -> None:
    """The report's models as a table of ``measure`` and training seconds."""
    rows = [["model", measure, "train seconds"]]
    for name, row in report.items():
        if isinstance(row, dict) and "train_seconds" in row:
            rows.append([name, f"{row[measure]:.3f}", f"{row['train_seconds']:.1f}"])
    print(format_table(rows))


def covariances(args, dataset, report) -> None:
    dims = math.prod(dataset.input_shape)
    generator = torch.Generator().manual_seed(args.seed)
    continuous = dataset.name.startswith("natural-patches")
    train, test = (
        (dataset.train_images, dataset.test_images)
        if continuous
        else (dequantize(x, dataset.levels, generator) for x in (dataset.train_images, dataset.test_images))
    )
    k = args.components
    for kind in ("diag", "stationary", "full"):
        layers = [
            FoldConfig(patch=None),
            GMMConfig(components=k, covariance=kind, precision_ceiling=args.precision_ceiling),
        ]
        start = time.perf_counter()
        model = estimator(args, layers, None).fit(train)
        seconds = time.perf_counter() - start
        bits = bits_per_dimension(model.score_samples(test), dims, dataset.levels)
        report[f"pyro_dcgmm_{kind}"] = {"bits_per_dim": bits, "train_seconds": seconds}
    for kind in ("diag", "full"):
        mixture = GaussianMixture(
            k,
            covariance_type=kind,
            reg_covar=1.0 / args.precision_ceiling,
            max_iter=args.sklearn_iterations,
            random_state=args.seed,
        )
        start = time.perf_counter()
        mixture.fit(flat(train))
        seconds = time.perf_counter() - start
        bits = bits_per_dimension(mixture.score_samples(flat(test)), dims, dataset.levels)
        report[f"sklearn_{kind}"] = {"bits_per_dim": bits, "train_seconds": seconds}
    _print_rows(report, "bits_per_dim")


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
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
    commands = {
        "outliers": outliers,
        "cluster": cluster,
        "density": density,
        "classify": classify,
        "covariances": covariances,
    }
    commands[args.command](args, dataset, report)
    report["seconds"] = time.perf_counter() - start
    atomic_write(args.out / "report.json", lambda h: h.write(json.dumps(report, indent=2).encode()))
    print(f"wrote {args.out / 'report.json'}")
    return report
