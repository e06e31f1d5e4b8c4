"""Clustering: the top layer's components as clusters of the test set, beside k-means and a
diagonal GMM (ACC by Hungarian matching, purity, NMI, ARI), with a confusion table and the clusters'
members as figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from pyro_dcgmm.evaluation.metrics import clustering_metrics
from pyro_dcgmm.evaluation.protocol import estimator, flat, preset_layers
from pyro_dcgmm.figures.plots import save_image_grid
from pyro_dcgmm.fitted import with_top_layer


def cluster(args, dataset, report) -> None:
    layers = preset_layers(args, dataset.input_shape)
    layers = with_top_layer(layers, {"components": args.top_components})
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
    figure = Figure(figsize=(1.0 + 0.6 * k, 1.5 + 0.45 * table.shape[0]))
    axis = figure.subplots()
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
