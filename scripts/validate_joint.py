"""A joint stack's settings scored on a validation split (how the joint presets were chosen).

Trains the joint stack an architecture string describes (:mod:`pyro_dcgmm.presets` syntax) on a
random subset of the Fashion-MNIST training images, dequantised, and scores it on 2,000 other
training images: bits/dim after every epoch, the exact conditional mean's in-painting error for each
half missing (1,000 images) beside a flat diagonal GMM's (``--flat-components``, fitted to the same
subset), and the sharpness of samples relative to the validation images for a few divisors::

    python scripts/validate_joint.py --architecture "F4/4 G32 T128/2 T128/2 T256/full" \\
        --train 20000 --epochs 6 --batch-size 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pyro_dcgmm import Stack, presets
from pyro_dcgmm.cli import format_table, run_script
from pyro_dcgmm.config import ModelConfig, TrainConfig
from pyro_dcgmm.data import load_fashion_mnist
from pyro_dcgmm.metrics import bits_per_dimension
from pyro_dcgmm.sample_quality import FlatGMMInpainter, inpainting_error, sharpness
from pyro_dcgmm.sampling import SamplingOptions
from pyro_dcgmm.train import dequantize, train

HALVES = {"left": (slice(None), slice(None, 14)), "right": (slice(None), slice(14, None)),
          "top": (slice(None, 14), slice(None)), "bottom": (slice(14, None), slice(None))}  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--architecture", default=presets.ARCHITECTURES["J"], help="layer string")
    parser.add_argument("--train", type=int, default=10000, help="training images (a random subset)")
    parser.add_argument("--epochs", type=int, default=6, help="passes over them")
    parser.add_argument("--batch-size", type=int, default=1000, help="mini-batch size")
    parser.add_argument("--flat-components", type=int, default=25, help="K of the flat GMM")
    parser.add_argument("--divisors", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="sample divisors")
    args = parser.parse_args(argv)
    data = load_fashion_mnist()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(data.train_images.shape[0], generator=generator)
    train_x, held_out = data.train_images[order[: args.train]], data.train_images[order[-2000:]]
    layers = presets.parse_architecture(args.architecture)
    torch.manual_seed(0)
    stack = Stack.from_config(ModelConfig(input_shape=(1, 28, 28), layers=layers))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, progress=False)
    validation = dequantize(held_out, data.levels, generator)
    result = train(stack, train_x, config=config, validation=validation, dequantize_levels=data.levels)
    rows = [["epoch", "seconds", "validation bits/dim"]]
    for record in result.history:
        bits = bits_per_dimension(np.array(record["validation_log_likelihood"]), 784, data.levels)
        rows.append([str(record["epoch"]), f"{record['seconds']:.0f}", f"{bits:.4f}"])
    print(format_table(rows))
    x, flat = held_out[:1000], FlatGMMInpainter(train_x, args.flat_components, seed=0)
    rows = [["half missing", "joint", f"flat K={args.flat_components}"]]
    for half, (rows_missing, columns_missing) in HALVES.items():
        mask = torch.ones_like(x, dtype=torch.bool)
        mask[..., rows_missing, columns_missing] = False
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
