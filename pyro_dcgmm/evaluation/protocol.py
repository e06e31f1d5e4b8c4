"""What the evaluation protocols share: the data the flags name, the preset's layers, the
estimators' training settings."""

from __future__ import annotations

import numpy as np
import torch

from pyro_dcgmm import presets
from pyro_dcgmm.cli.common import format_table
from pyro_dcgmm.config import DataConfig
from pyro_dcgmm.data.datasets import load_dataset
from pyro_dcgmm.estimator import DCGMM
from pyro_dcgmm.figures.plots import plot_model_scores


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
    given = {name: getattr(args, name) for name in ("epochs", "batch_size", "lr", "optimizer", "device")}
    return given | {"random_state": args.seed, "verbose": int(not args.no_progress)}


def estimator(args, layers, data_range=(0.0, 1.0)) -> DCGMM:
    return DCGMM(layers, data_range=data_range, **training_params(args))


def flat(x: torch.Tensor) -> np.ndarray:
    return x.flatten(1).numpy().astype(np.float64)


def scores_figure(report: dict, measure: str, path, title: str) -> None:
    """A bar chart of ``measure`` of every model in the report."""
    scores = {name: row[measure] for name, row in report.items() if isinstance(row, dict) and measure in row}
    plot_model_scores(scores, path, measure.replace("_", " "), title)


def print_rows(report: dict, measure: str) -> None:
    """The report's models as a table of ``measure`` and training seconds."""
    rows = [["model", measure, "train seconds"]]
    for name, row in report.items():
        if isinstance(row, dict) and "train_seconds" in row:
            rows.append([name, f"{row[measure]:.3f}", f"{row['train_seconds']:.1f}"])
    print(format_table(rows))
