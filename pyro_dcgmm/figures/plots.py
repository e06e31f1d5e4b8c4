"""Figures: component prototypes, per-component views and training curves.

Figures are matplotlib ``Figure`` objects written straight to files, without pyplot, so importing
this module never changes the user's matplotlib backend and needs no display.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pyro_dcgmm.model.gmm import GMM


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) into one (rows*(H+p), cols*(W+p), C) mosaic, padded with NaN."""
    n, channels, height, width = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full(
        (rows * (height + padding) - padding, columns * (width + padding) - padding, channels),
        np.nan,
    )
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = r * (height + padding), c * (width + padding)
        grid[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    return grid


def prototypes(gmm: GMM) -> tuple[np.ndarray, np.ndarray]:
    """Means as image patches (K, C, ph, pw) and their mixing weights (K,), heaviest first.

    For a per-position layer the centre position's mixture is shown.
    """
    means = gmm.means.detach().cpu()
    weights = gmm.mixing_weights().detach().cpu()
    if not gmm.config.shared:
        h, w = means.shape[0] // 2, means.shape[1] // 2
        means, weights = means[h, w], weights[h, w]
    order = torch.argsort(weights, descending=True)
    patches = means[order].view(gmm.components, gmm.input_shape[0], *gmm.patch)
    return patches.numpy(), weights[order].numpy()


def plot_prototypes(gmm: GMM, path: str | Path, title: str = "") -> None:
    """Save a grid of ``gmm``'s component means (first channel if not 1 or 3), heaviest first."""
    patches, weights = prototypes(gmm)
    if patches.shape[1] not in (1, 3):
        patches = patches[:, :1]
    title = title or (
        f"the {gmm.components} component means (prototypes) of {gmm.site_prefix or 'the GMM'}, "
        "heaviest first;\n"
        f"mixing weights from {weights[0]:.3f} (top left) down to {weights[-1]:.3f}"
    )
    save_image_grid(patches, path, int(np.ceil(np.sqrt(len(patches)))), title)


def read_log(path: str | Path) -> list[dict]:
    """Records of a ``log.jsonl`` written by :func:`pyro_dcgmm.training.trainer.train`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _curve(axis, x, y, label: str) -> None:
    """A line, with markers when there are few points (one epoch alone is a single dot)."""
    axis.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=4, label=label)


def trained_epochs(epochs: list[dict], start: int) -> list[dict]:
    """The epoch records of an objective whose layer started training at step ``start``: the epochs
    that began at or after it (all that ended after it, if none did)."""
    began = [0, *(record["step"] for record in epochs)][: len(epochs)]
    whole = [record for record, first in zip(epochs, began, strict=True) if first >= start]
    return whole or [record for record in epochs if record["step"] > start]


def plot_training_curve(records: list[dict], path: str | Path, names: list[str] | None = None) -> None:
    """One row per objective (every GMM layer's, or a joint stack's one): its training loss, the
    mean over each epoch, and its log-likelihood on the validation split after every epoch, from the
    first epoch its layer trained all through (the log's ``initialised`` events say when a layer's
    wait ended).  ``names`` label the rows (default ``layer j``)."""
    epochs = [r for r in records if r.get("event") == "epoch"]
    starts = {r["layer"]: r["step"] for r in records if r.get("event") == "initialised"}
    count = len(epochs[0]["train_loss"]) if epochs else 1
    figure = Figure(figsize=(11, 1.2 + 2.6 * count))
    axes = figure.subplots(count, 2, squeeze=False)
    for j, (left, right) in enumerate(axes):
        trained = trained_epochs(epochs, starts.get(j, 0))
        _curve(left, [r["epoch"] for r in trained], [r["train_loss"][j] for r in trained], "training loss")
        validation = [r for r in trained if "validation_log_likelihood" in r]
        values = [r["validation_log_likelihood"][j] for r in validation]
        _curve(right, [r["epoch"] for r in validation], values, "validation split")
        left.set_ylabel(f"{names[j] if names else f'layer {j}'}\nloss (nats per sample)")
        right.set_ylabel("log-likelihood\n(nats per sample)")
        for axis in (left, right):
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.ticklabel_format(axis="y", style="plain", useOffset=False)
    axes[0][0].set_title("training loss, mean over each epoch (lower is better)")
    axes[0][1].set_title("validation-split log-likelihood (higher is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")


def save_image_grid(images, path: str | Path, columns: int, title: str = "", row_labels=None) -> None:
    """Save images (N, C, H, W) in [0, 1] as a grid of ``columns`` per row."""
    images = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    grid = image_grid(images, columns)
    rows = int(np.ceil(len(images) / columns))
    figure = Figure(figsize=(max(4.0, 0.6 * columns + 1), max(2.0, 0.6 * rows + 0.6)))
    axis = figure.subplots()
    axis.imshow(
        grid[..., 0] if grid.shape[-1] == 1 else np.clip(grid, 0, 1),
        cmap="gray",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    axis.set_xticks([])
    height = images.shape[2] + 1
    if row_labels:
        axis.set_yticks([r * height + height / 2 - 1 for r in range(len(row_labels))], row_labels)
    else:
        axis.set_yticks([])
    axis.set_title(title)
    figure.savefig(path, dpi=120, bbox_inches="tight")  # room for long row labels and titles


def _as_picture(values: np.ndarray) -> np.ndarray:
    """(C, h, w) as something to show: the image for 1 channel; else, at every one of the h x w
    positions, its C values in a square of ``ceil(sqrt(C))`` a side (blank where the last row
    ends), the squares laid out as the positions are, one blank pixel apart."""
    channels, height, width = values.shape
    if channels == 1:
        return values[0]
    side = int(np.ceil(np.sqrt(channels)))
    squares = np.full((height, width, side * side), np.nan)
    squares[..., :channels] = values.transpose(1, 2, 0)
    squares = squares.reshape(height, width, side, side)
    picture = np.full((height * (side + 1) - 1, width * (side + 1) - 1), np.nan)
    for row in range(height):
        for column in range(width):
            top, left = row * (side + 1), column * (side + 1)
            picture[top : top + side, left : left + side] = squares[row, column]
    return picture


def _show(axis, picture: np.ndarray, cmap: str, limits: tuple[float, float] | None = None):
    """``picture`` with its own colour range, or in ``limits`` (low, high); the image."""
    vmin, vmax = (None, None) if limits is None else limits
    image = axis.imshow(picture, cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    axis.set_xticks([])
    axis.set_yticks([])
    return image


def plot_component_views(views, path: str | Path, title: str, spectrum: bool, max_rows: int = 32) -> None:
    """One row per component (heaviest first, at most ``max_rows``): its mean, its precision map
    (``spectrum``: the filter's power spectrum, zero frequency centred, log scale) and its
    top-posterior inputs, left to right from the highest posterior."""
    views = views[:max_rows]
    top = max(1, *(len(view.examples) for view in views))
    height = 0.95 * len(views) + 1.4
    figure = Figure(figsize=(1.0 * (top + 2) + 1.6, height))
    axes = figure.subplots(len(views), top + 2, squeeze=False)
    mean_bound = max(float(np.nanmax(np.abs(view.mean))) for view in views) or 1.0  # one scale for all means
    lowest = min(
        float(np.nanmin(np.concatenate([view.mean.ravel(), view.examples.ravel()]))) for view in views
    )
    centred = lowest < 0  # zero-meaned inputs: grey is zero
    mean_limits = (-mean_bound if centred else 0.0, mean_bound)
    for row, view in zip(axes, views, strict=True):
        _show(row[0], _as_picture(view.mean), "gray", mean_limits)
        if view.precision_map is None:  # a Tree layer's component: its mean is all there is
            row[1].set_axis_off()
        else:
            precision = np.fft.fftshift(view.precision_map, axes=(-2, -1)) if spectrum else view.precision_map
            image = _show(row[1], np.log10(_as_picture(precision)), "viridis")
            figure.colorbar(image, ax=row[1], fraction=0.08, pad=0.03)
        for axis, example in zip(row[2:], view.examples, strict=False):
            bound = float(np.abs(example).max()) or 1.0  # zero-meaned patches: grey is zero
            limits = (-bound, bound) if centred else (0.0, max(mean_bound, bound))  # images: their grey
            _show(axis, _as_picture(example), "gray", limits)
        for axis in row[2 + len(view.examples) :]:
            axis.set_axis_off()
        state = "" if view.active else " (pruned)"
        row[0].set_ylabel(f"#{view.index}\nw={view.weight:.3f}{state}", rotation=0, ha="right", va="center")
    axes[0][0].set_title("mean")
    if views[0].precision_map is not None:
        axes[0][1].set_title("power spectrum\n(log10)" if spectrum else "precision\n(log10)")
    for j in range(top):
        axes[0][2 + j].set_title(f"top {j + 1}")
    figure.suptitle(title, y=1.0 - 0.15 / height)
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.55 / height))
    figure.savefig(path, dpi=90, bbox_inches="tight")


def plot_model_scores(scores: dict[str, float], path: str | Path, measure: str, title: str) -> None:
    """One horizontal bar per model with its score written at the bar's end."""
    names = list(scores)
    figure = Figure(figsize=(8, 0.9 + 0.45 * len(names)))
    axis = figure.subplots()
    bars = axis.barh(range(len(names)), [scores[name] for name in names], color="tab:blue")
    axis.bar_label(bars, labels=[f"{scores[name]:.3f}" for name in names], padding=3)
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()  # the report's order, top down
    axis.set_xlabel(measure)
    axis.set_xlim(0, max(scores.values()) * 1.15 if max(scores.values()) > 0 else 1)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
