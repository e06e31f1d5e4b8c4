"""Train a DCGMM by SVI with TraceEnum_ELBO and report held-out log-likelihoods per layer.

Examples::

    pyro-dcgmm train --config digits --out runs/digits
    pyro-dcgmm train --preset E --dataset fashion-mnist --epochs 3 --device auto --out runs/x
    pyro-dcgmm train --resume runs/x/checkpoint.pt --epochs 5 --out runs/x
    torchrun --nproc_per_node 2 -m pyro_dcgmm train --preset E --dataset fashion-mnist --out runs/x

Under ``torchrun`` (``WORLD_SIZE`` > 1) the script joins a process group (NCCL on CUDA, gloo on
CPU) and trains data-parallel; rank 0 evaluates and writes everything.

Writes into ``--out``: ``checkpoint.pt`` after every epoch (state_dict + resolved config + training
state; loads with ``torch.load(weights_only=True)``), ``log.jsonl``, ``config.json`` (the resolved
configuration), ``summary.json``, ``prototypes.png`` (first GMM layer) and ``training_curve.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pyro_dcgmm import Stack, presets
from pyro_dcgmm.cli.common import (
    add_data_flags,
    add_device_flag,
    add_training_flags,
    format_table,
    make_parser,
)
from pyro_dcgmm.config import ModelConfig, RunConfig, from_dict, load_config, to_dict
from pyro_dcgmm.data.datasets import dequantize, load_dataset, split_validation
from pyro_dcgmm.data.own import UNLABELLED
from pyro_dcgmm.device import resolve_device
from pyro_dcgmm.errors import ConfigError, DataError
from pyro_dcgmm.evaluation.metrics import bits_per_dimension, held_out_log_likelihood
from pyro_dcgmm.figures.plots import plot_prototypes, plot_training_curve, read_log
from pyro_dcgmm.model.joint import JointStack
from pyro_dcgmm.training.checkpoint import load_checkpoint
from pyro_dcgmm.training.distributed import leave_process_group
from pyro_dcgmm.training.files import atomic_write
from pyro_dcgmm.training.run_folder import LOG_NAME, RunFiles
from pyro_dcgmm.training.trainer import train

TRAIN_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "seed", "device", "max_steps")
DATA_FLAGS = ("dataset", "patch_size", "root", "classes", "train_limit")
FIXED_ON_RESUME = {  # what a resumed run may not change: its data, its split and its model
    "data": ("dataset", "patch_size", "classes", "train_limit", "dequantize", "validation_fraction"),
    "training": ("seed",),
    "model": ("preset", "layers", "input_shape", "data_range"),
}
OUTPUTS = ("summary.json", "config.json", "prototypes.png", "training_curve.png")  # besides the run files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__, prog="pyro-dcgmm train")
    parser.add_argument("--config", type=Path, help="TOML run configuration")
    parser.add_argument("--preset", choices=presets.names(), help="architecture preset")
    parser.add_argument("--per-position", action="store_true", help="one mixture per position")
    add_data_flags(parser, default=None)
    parser.add_argument("--download", action="store_true", help="download MNIST if missing")
    parser.add_argument("--classes", type=int, nargs="+", help="train on these labels only")
    parser.add_argument("--train-limit", type=int, help="train on a random subset of this many images")
    parser.add_argument("--dequantize", action="store_true", help="uniform dequantisation")
    add_training_flags(parser)
    add_device_flag(parser, default=None)
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument(
        "--tf32", action="store_true", help="train with TF32 matmuls and convolutions on CUDA (training.tf32)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--resume", type=Path, help="checkpoint to continue from")
    parser.add_argument("--overwrite", action="store_true", help="replace a run that --out already holds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """The run configuration: resumed checkpoint or TOML file, then command-line overrides."""
    if args.resume is not None and args.config is not None:
        raise ConfigError(
            "--config and --resume exclude each other: a resumed run keeps its checkpoint's configuration"
        )
    if args.resume is not None:
        saved = from_dict(
            RunConfig, load_checkpoint(args.resume)["run_config"] or {}, "checkpoint run_config"
        )
        config = dataclasses.replace(saved, training=dataclasses.replace(saved.training, max_steps=None))
    else:
        config = load_config(args.config) if args.config is not None else RunConfig()
    training = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}
    if args.no_progress:
        training["progress"] = False
    if args.tf32:
        training["tf32"] = True
    data = {name: getattr(args, name) for name in DATA_FLAGS if getattr(args, name) is not None}
    if "classes" in data:
        data["classes"] = tuple(data["classes"])
    data.update({name: True for name in ("download", "dequantize") if getattr(args, name)})
    model = config.model
    if args.preset is not None:
        model = ModelConfig(preset=args.preset, data_range=model.data_range)
    resolved = RunConfig(
        model=model,
        training=dataclasses.replace(config.training, **training),
        data=dataclasses.replace(config.data, **data),
        sampling=config.sampling,
    )
    if args.resume is not None:
        check_resumable(saved, resolved, args.per_position)
    return resolved


def check_resumable(saved: RunConfig, resolved: RunConfig, per_position: bool) -> None:
    """Refuse command-line settings that would resume a run on other data or another model."""
    changed = []
    for section, names in FIXED_ON_RESUME.items():
        for name in names:
            before, after = getattr(getattr(saved, section), name), getattr(getattr(resolved, section), name)
            if before != after:
                changed.append(f"{section}.{name} would change from {before!r} to {after!r}")
    changed += ["--per-position"] if per_position else []
    if changed:
        raise ConfigError(
            f"a resumed run keeps its data and model, but {'; '.join(changed)}; start a new run "
            "(another --out) to change them"
        )


def init_distributed(device: str) -> int:
    """Join the process group ``torchrun`` describes; return this process's rank (0 alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = resolve_config(args)
    dataset, train_x, train_y, val_x, _ = run_data(config)
    resolve_device(config.training.device)  # refused before anything is written
    rank = init_distributed(config.training.device)
    options = {"shared": False} if args.per_position else {}
    model_config = presets.resolve(config.model, dataset.input_shape, **options)
    config = dataclasses.replace(config, model=model_config)
    torch.manual_seed(config.training.seed)
    stack = Stack.from_config(model_config)
    labels = train_y if stack.num_classes is not None and labelled(dataset, stack) else None
    if labels is not None and int(train_y.max()) >= stack.num_classes:
        raise DataError(f"labels go up to {int(train_y.max())} but the model has {stack.num_classes} classes")
    test_x = held_out(dataset.test_images, dataset, config)
    val_x = held_out(val_x, dataset, config)
    before = held_out_log_likelihood(stack, test_x) if args.resume is None and rank == 0 else None
    levels = dataset.levels if config.data.dequantize else None
    result = train(
        stack,
        train_x,
        labels,
        config=dataclasses.replace(config.training, dequantize_levels=levels),
        validation=val_x if val_x.shape[0] else None,
        files=RunFiles(args.out, args.resume, args.overwrite, config, OUTPUTS),
    )
    leave_process_group()
    return write_outputs(args, config, stack, dataset, result, (test_x, before)) if rank == 0 else {}


def run_data(config: RunConfig) -> tuple:
    """A run's data set and its split: ``(dataset, train_x, train_y, val_x, val_y)``, the training
    images held out for validation drawn with the run's seed."""
    dataset = load_dataset(config.data, seed=config.training.seed)
    fraction, seed = config.data.validation_fraction, config.training.seed
    return dataset, *split_validation(dataset.train_images, dataset.train_labels, fraction, seed)


def held_out(images: torch.Tensor, dataset, config: RunConfig) -> torch.Tensor:
    """Held-out images as the model is scored on them: dequantised once (with a fixed seed) when
    training dequantises, so that held-out log-likelihoods are those of a density of the data."""
    if not config.data.dequantize:
        return images
    return dequantize(images, dataset.levels, torch.Generator().manual_seed(config.training.seed))


def labelled(dataset, stack) -> bool:
    """Whether the data have labels for the stack's classes; images without labels leave a Readout
    untrained (said), and are refused by layers split by class."""
    if dataset.class_names != UNLABELLED:
        return True
    if any(layer.config.classes for layer in stack.mixture_layers):
        raise DataError(f"{dataset.name} has no labels, which layers split by class need: use another preset")
    logging.getLogger(__name__).info("%s has no labels: the Readout stays untrained", dataset.name)
    return False


def write_outputs(args, config: RunConfig, stack: Stack, dataset, result, test) -> dict:
    """Evaluate the trained stack on the (held-out) test images of ``test`` = (images, their
    log-likelihoods before training); write summary, config and figures; print a table."""
    test_x, before = test
    stack.cpu()
    after = held_out_log_likelihood(stack, test_x)
    samples = result.samples
    summary = {
        "dataset": dataset.name,
        "model": to_dict(config.model),
        "training": to_dict(config.training),
        "test_log_likelihood_before": before,
        "test_log_likelihood_after": after,
        "steps": result.steps,
        "new_steps": result.new_steps,
        "train_seconds": result.seconds,
        "train_samples_per_second": samples / result.seconds if result.new_steps else None,
        "widths": [g.neighbourhood_width for g in stack.gmm_layers],
    }
    if isinstance(stack, JointStack) and config.data.dequantize:
        dims = math.prod(stack.input_shape)
        summary["test_bits_per_dim"] = bits_per_dimension(np.array(after[:1]), dims, dataset.levels)
    if stack.classifies and dataset.class_names != UNLABELLED:
        predicted = stack.predict_proba(dataset.test_images).argmax(1)
        summary["test_accuracy"] = round(float((predicted == dataset.test_labels).double().mean()), 6)
    atomic_write(args.out / "summary.json", lambda h: h.write(json.dumps(summary, indent=2).encode()))
    atomic_write(args.out / "config.json", lambda h: h.write(json.dumps(to_dict(config), indent=2).encode()))
    plot_prototypes(stack.gmm_layers[0], args.out / "prototypes.png")
    names = ["joint: -log p(x)"] if isinstance(stack, JointStack) else None
    plot_training_curve(read_log(args.out / LOG_NAME), args.out / "training_curve.png", names)
    print_summary(stack, summary, args.out)
    return summary


def summary_rows(stack: Stack, summary: dict) -> list[list[str]]:
    """The table of held-out log-likelihoods: one row per GMM layer, or, for a joint stack, one row
    per layer of the tree with ``log p(x)`` on the top's row."""
    before, after = summary["test_log_likelihood_before"], summary["test_log_likelihood_after"]
    if isinstance(stack, JointStack):
        rows = [["layer", "type", "K", "positions", "test log p(x) before", "test log p(x) after"]]
        for level, layer in enumerate(stack.mixture_layers):
            top = level == stack.root_level
            _, height, width = layer.output_shape
            rows.append(
                [str(level), type(layer).__name__, str(layer.components), f"{height}x{width}",
                 f"{before[0]:.2f}" if top and before else "", f"{after[0]:.2f}" if top else ""]
            )  # fmt: skip
        return rows
    rows = [["layer", "K", "test LL before", "test LL after", "width"]]
    for j, layer in enumerate(stack.gmm_layers):
        rows.append(
            [str(j), str(layer.components), f"{before[j]:.2f}" if before else "-",
             f"{after[j]:.2f}", f"{layer.neighbourhood_width:.3g}"]
        )  # fmt: skip
    return rows


def print_summary(stack: Stack, summary: dict, out: Path) -> None:
    print(format_table(summary_rows(stack, summary)))
    if summary["new_steps"]:
        print(
            f"{summary['new_steps']} steps in {summary['train_seconds']:.1f} s "
            f"({summary['train_samples_per_second']:.0f} samples/s); log-likelihoods in nats per image"
        )
    else:
        epochs = summary["training"]["epochs"]
        print(f"nothing to train: the run has done its {epochs} epochs already; pass a larger --epochs")
    if "test_bits_per_dim" in summary:
        print(f"test bits/dim: {summary['test_bits_per_dim']:.4f} (test images dequantised as in training)")
    if "test_accuracy" in summary:
        chance = 1.0 / stack.num_classes
        what = "readout" if stack.readout is not None else "class posterior"
        hint = f" (chance level: the {what} did not learn)" if summary["test_accuracy"] < 1.5 * chance else ""
        print(f"{what} test accuracy: {summary['test_accuracy']:.4f}{hint}")
    print(f"wrote {out}")
