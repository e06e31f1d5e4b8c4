"""A joint stack's settings scored on a validation split (how the joint presets were chosen).

Trains the joint stack an architecture string describes (:mod:`pyro_dcgmm.presets` syntax; the
presets' leaves, waits and per-position transitions) and scores it on held-out training images:
bits/dim after every epoch (Fashion-MNIST, dequantised) or the log-likelihood (digits, raw 17 grey
levels, as the estimator sees them), the exact conditional mean's in-painting error for each half
missing beside a flat diagonal GMM's (``--flat-components``, fitted to the same images), and the
sharpness of samples relative to the held-out images for a few divisors.

- ``fashion-mnist``: a random ``--train`` training images, the validation images 2,000 others (the
  permutation's positions 50,000 to 52,000); in-painting on 1,000 of them.
- ``digits``: the library's digits training split, a seeded 300 of them held out.

Examples::

    python scripts/validate_joint.py --dataset fashion-mnist --architecture "F4/4 G32 T128/2 T128/2 T256/full"
    python scripts/validate_joint.py --dataset digits --architecture "F2/2 G16 T64/2 T128/full" \\
        --leaf-ceiling 30 --epochs 20 --batch-size 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pyro_dcgmm import Stack, presets
from pyro_dcgmm.cli.common import format_table, run_script
from pyro_dcgmm.config import ModelConfig, TrainConfig
from pyro_dcgmm.data.datasets import dequantize, load_digits, load_fashion_mnist
from pyro_dcgmm.evaluation.metrics import bits_per_dimension
from pyro_dcgmm.evaluation.sample_quality import FlatGMMInpainter, inpainting_error, sharpness
from pyro_dcgmm.inference.sampling import SamplingOptions
from pyro_dcgmm.training.trainer import train


def splits(args, generator: torch.Generator):
    """(training images, validation images, levels to dequantise on or ``None``)."""
    if args.dataset == "digits":
        images = load_digits().train_images
        order = torch.randperm(images.shape[0], generator=generator)
        return images[order[300:]], images[order[:300]], None
    images = load_fashion_mnist().train_images
    order = torch.randperm(images.shape[0], generator=generator)
    return images[order[: args.train]], images[order[50000:52000]], 256


def half_masks(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masks (true = observed) with the left, right, top or bottom half of every image missing."""
    rows, columns = images.shape[-2] // 2, images.shape[-1] // 2
    regions = {
        "left": (slice(None), slice(None, columns)),
        "right": (slice(None), slice(columns, None)),
        "top": (slice(None, rows), slice(None)),
        "bottom": (slice(rows, None), slice(None)),
    }
    masks = {}
    for half, (missing_rows, missing_columns) in regions.items():
        masks[half] = torch.ones_like(images, dtype=torch.bool)
        masks[half][..., missing_rows, missing_columns] = False
    return masks


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    parser.add_argument("--architecture", default=presets.ARCHITECTURES["J"], help="layer string")
    parser.add_argument("--leaf-ceiling", type=float, help="the leaves' precision ceiling (default 1e6)")
    parser.add_argument("--train", type=int, default=10000, help="Fashion-MNIST training images")
    parser.add_argument("--epochs", type=int, default=6, help="passes over them")
    parser.add_argument("--batch-size", type=int, default=1000, help="mini-batch size")
    parser.add_argument("--flat-components", type=int, default=25, help="K of the flat GMM")
    parser.add_argument("--divisors", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="sample divisors")
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    train_x, held_out, levels = splits(args, generator)
    options = {} if args.leaf_ceiling is None else {"precision_ceiling": args.leaf_ceiling}
    layers = presets.parse_architecture(args.architecture, **options)
    torch.manual_seed(0)
    stack = Stack.from_config(ModelConfig(input_shape=tuple(held_out.shape[1:]), layers=layers))
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, progress=False, dequantize_levels=levels
    )
    validation = held_out if levels is None else dequantize(held_out, levels, generator)
    result = train(stack, train_x, config=config, validation=validation)
    dims = int(np.prod(held_out.shape[1:]))
    rows = [["epoch", "seconds", "validation log-likelihood", "bits/dim" if levels else ""]]
    for record in result.history:
        value = record["validation_log_likelihood"][0]
        bits = f"{bits_per_dimension(np.array([value]), dims, levels):.4f}" if levels else ""
        rows.append([str(record["epoch"]), f"{record['seconds']:.0f}", f"{value:.2f}", bits])
    print(format_table(rows))
    x, flat = held_out[:1000], FlatGMMInpainter(train_x, args.flat_components, seed=0)
    rows = [["half missing", "joint", f"flat K={args.flat_components}"]]
    for half, mask in half_masks(x).items():
        joint = inpainting_error(stack.conditional_mean(x, mask), x, mask)
        rows.append(
            [half, f"{joint:.5f}", f"{inpainting_error(flat.conditional_mean(x, mask), x, mask):.5f}"]
        )
    print(format_table(rows))
    reference = sharpness(held_out[:500])
    for divisor in args.divisors:
        drawn = stack.sample(500, options=SamplingOptions(divisor=divisor))
        print(f"divisor {divisor:g}: sample sharpness {sharpness(drawn) / reference:.3f} of real images'")
    return {"history": result.history}


if __name__ == "__main__":
    start = time.perf_counter()
    run_script(main)
    print(f"{time.perf_counter() - start:.0f} s")
