"""Outlier detection: train on every class but a held-out one, then score the test set.

The held-out class is the outlier class.  Scores: every GMM layer's log-likelihood, and the
likelihood ratio ``z(top) - z(first)`` (each layer's score standardised on held-out inliers of the
training split), beside a scikit-learn diagonal GMM.  Reports AUROC, AUPR and FPR at 95% TPR.
"""

from __future__ import annotations

import time

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import RocCurveDisplay
from sklearn.mixture import GaussianMixture

from pyro_dcgmm.data.datasets import split_validation
from pyro_dcgmm.errors import DataError
from pyro_dcgmm.evaluation.metrics import outlier_metrics
from pyro_dcgmm.evaluation.protocol import estimator, flat, preset_layers


def outliers(args, dataset, report) -> None:
    classes = sorted(set(dataset.train_labels.tolist()))
    folds = classes if args.heldout == "all" else [int(args.heldout)]
    if not set(folds) <= set(classes):
        raise DataError(
            f"--heldout {args.heldout} is not a class of {dataset.name}; its classes are {classes}"
        )
    report["folds"] = {}
    figure = Figure(figsize=(11, 4))
    axes = figure.subplots(1, 2)
    for heldout in folds:
        fold, scores, is_outlier = outlier_fold(args, dataset, heldout)
        report["folds"][str(heldout)] = fold
        top = f"layer{sum(name.startswith('layer') for name in scores) - 1}"
        RocCurveDisplay.from_predictions(is_outlier, scores[top], ax=axes[0], name=f"held-out {heldout}")
        if heldout == folds[0]:
            axes[1].hist(
                [scores[top][~is_outlier], scores[top][is_outlier]],
                bins=50,
                label=[f"inliers (every class but {heldout})", f"outliers (class {heldout})"],
                histtype="step",
                density=True,
            )
    label_outlier_figure(axes, folds[0])
    figure.savefig(args.out / "outliers.png", dpi=120, bbox_inches="tight")
    names = [k for k in report["folds"][str(folds[0])] if k != "seconds"]
    report["mean_auroc"] = {
        n: float(np.mean([report["folds"][str(f)][n]["auroc"] for f in folds])) for n in names
    }
    for name, value in report["mean_auroc"].items():
        print(f"mean AUROC {name}: {value:.3f}")


def outlier_fold(args, dataset, heldout: int):
    """Train without class ``heldout``; the metrics of every score, the scores (higher: more
    outlying) and which test images are outliers."""
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
    gmm.fit(flat(train_x))
    scores[f"flat_gmm_diag_k{args.flat_components}"] = -gmm.score_samples(flat(dataset.test_images))
    fold = {name: outlier_metrics(is_outlier, score) for name, score in scores.items()}
    fold["seconds"] = time.perf_counter() - start
    aurocs = ", ".join(f"{k} AUROC {v['auroc']:.3f}" for k, v in fold.items() if k != "seconds")
    print(f"held-out {heldout}: {aurocs}")
    return fold, scores, is_outlier


def label_outlier_figure(axes, first_fold: int) -> None:
    axes[0].set_title("ROC of the top layer's score, one curve per fold")
    axes[0].legend(fontsize=7)
    axes[1].set_title(f"Top-layer scores of the test set, fold {first_fold}")
    axes[1].set_xlabel("top-layer outlier score (negative log-likelihood)")
    axes[1].set_ylabel("density of test images")
    axes[1].legend()
    axes[0].figure.tight_layout()
