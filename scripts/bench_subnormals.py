"""Training and sampling time with and without zeroing subnormal gradients, side by side in one run.

A GMM layer's gradient with respect to its log-score table is its responsibilities; those of
components some 90 nats less likely than the best are subnormal float32 numbers, which x86 CPUs
multiply many times slower than normal ones. The tables zero them on CPU
(:mod:`pyro_dcgmm.model.subnormal`). This script runs everything twice, with that zeroing and
without it (as on a GPU), from the same seed: ``--steps`` training steps of
preset E with first GMM layers of each ``--components`` (seconds per step, k-means initialisation
included, after an untimed warm-up run, and the validation log-likelihood per GMM layer after
them), and 100 sharpened samples (with its stored sampling settings) from each trained
``--checkpoints`` (seconds, and the largest difference between the two runs' samples)::

    python scripts/bench_subnormals.py --dataset fashion-mnist --components 25 100 --steps 100 \\
        --checkpoints runs/doc/x/checkpoint.pt
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path
from unittest import mock

import torch

from pyro_dcgmm import presets
from pyro_dcgmm.cli.common import add_data_flags, format_table, make_parser, run_script
from pyro_dcgmm.cli.sample import sampling_settings
from pyro_dcgmm.config import DataConfig, GMMConfig, TrainConfig
from pyro_dcgmm.data.datasets import load_dataset, split_validation
from pyro_dcgmm.evaluation.metrics import held_out_log_likelihood
from pyro_dcgmm.inference.sampling import options_from_settings
from pyro_dcgmm.model import subnormal
from pyro_dcgmm.model.stack import Stack
from pyro_dcgmm.training.checkpoint import load_checkpoint, stack_from_checkpoint
from pyro_dcgmm.training.trainer import train


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_data_flags(parser, default="fashion-mnist")
    parser.add_argument("--components", type=int, nargs="*", default=[25, 100], help="K of the first layer")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (batch 100)")
    parser.add_argument("--checkpoints", type=Path, nargs="*", default=[], help="trained models to sample")
    return parser.parse_args(argv)


def subnormals(zeroed: bool):
    """A context in which GMM log-score tables zero their subnormal gradients, or keep them."""
    if zeroed:
        return contextlib.nullcontext()
    return mock.patch.object(subnormal, "flushed", lambda tensor: False)


def preset_e(input_shape, first_components: int):
    """Preset E with ``first_components`` components in its first GMM layer."""
    config = presets.get("E", input_shape)
    layers = list(config.layers)
    first = next(i for i, layer in enumerate(layers) if isinstance(layer, GMMConfig))
    layers[first] = dataclasses.replace(layers[first], components=first_components)
    return dataclasses.replace(config, layers=tuple(layers))


def training_row(model, data, steps: int, zeroed: bool) -> list[str]:
    """Seconds per step of ``steps`` training steps and the validation log-likelihoods after them."""
    train_x, train_y, val_x, _ = data
    torch.manual_seed(0)
    stack = Stack.from_config(model)
    config = TrainConfig(epochs=5, max_steps=steps, seed=0, device="cpu", progress=False)
    with subnormals(zeroed):
        start = time.perf_counter()
        train(stack, train_x, train_y, config=config)
        seconds = (time.perf_counter() - start) / steps
    log_likelihoods = " / ".join(f"{value:.2f}" for value in held_out_log_likelihood(stack, val_x[:1000]))
    return ["zeroed" if zeroed else "kept", f"{seconds:.3f}", log_likelihoods]


def sampling_rows(path: Path) -> list[list[str]]:
    """Seconds for 100 sharpened samples from the model at ``path`` (its stored ``[sampling]``
    settings, as ``pyro-dcgmm sample`` takes them), keeping subnormal gradients and zeroing them, and
    how far the two draws differ."""
    state = load_checkpoint(path)
    stack = stack_from_checkpoint(state)
    settings = sampling_settings(state["run_config"] or {}, argparse.Namespace())
    sharpened = options_from_settings(settings, stack)["sharpened"]
    times, draws = [], []
    for zeroed in (False, True):
        torch.manual_seed(0)
        with subnormals(zeroed):
            start = time.perf_counter()
            draws.append(stack.sample(100, options=sharpened))
            times.append(time.perf_counter() - start)
    difference = f"{float((draws[0] - draws[1]).abs().max()):.2g}"
    return [
        [str(path), kept, f"{t:.1f}", difference] for kept, t in zip(("kept", "zeroed"), times, strict=True)
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.components:
        dataset = load_dataset(DataConfig(dataset=args.dataset, patch_size=args.patch_size, root=args.root))
        data = split_validation(dataset.train_images, dataset.train_labels, 0.1, 0)
        training_row(preset_e(dataset.input_shape, args.components[0]), data, 2, True)  # one-off costs
        rows = [["first-layer K", "subnormal gradients", "s/step", "validation LL per GMM layer"]]
        for components in args.components:
            model = preset_e(dataset.input_shape, components)
            rows += [[str(components), *training_row(model, data, args.steps, z)] for z in (False, True)]
        print(f"Training, {args.steps} steps of 100 images from the same seed:")
        print(format_table(rows))
    if args.checkpoints:
        rows = [["checkpoint", "subnormal gradients", "s", "largest pixel difference"]]
        for path in args.checkpoints:
            rows += sampling_rows(path)
        print("100 sharpened samples (each checkpoint's stored sampling settings):")
        print(format_table(rows))


if __name__ == "__main__":
    run_script(main)
