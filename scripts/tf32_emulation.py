"""How far TF32 convolutions move a trained stack's log-likelihoods, emulated on a CPU.

PyTorch lets cuDNN run float32 convolutions on TF32 tensor cores by default
(``torch.backends.cudnn.allow_tf32``): their operands keep 10 of float32's 23 mantissa bits and
the products are summed in float32.  A diagonal GMM layer's table is such a convolution
(``x . mu p - x^2 . p / 2`` plus a constant: large terms that nearly cancel).  This script
convolves with both operands cut to 10 mantissa bits, rounded to nearest or truncated (which of
the two the tensor cores do is not documented here; the truth lies between), sums in float64, and
prints each GMM layer's per-image log-likelihood beside the float64 value, with full float32 for
scale, on the first ``--images`` test images::

    python scripts/tf32_emulation.py runs/e/checkpoint.pt --dataset fashion-mnist --images 2000

Matmuls are left alone: PyTorch runs float32 matmuls in full precision unless told otherwise.
With ``--device cuda`` a row of the GPU's own TF32 (``float32_precision(True)``) is added.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from pyro_dcgmm.cli.common import (
    add_data_flags,
    add_device_flag,
    format_table,
    make_parser,
    positive_int,
    run_script,
)
from pyro_dcgmm.config import DataConfig
from pyro_dcgmm.data.datasets import load_dataset
from pyro_dcgmm.device import float32_precision, resolve_device
from pyro_dcgmm.training.checkpoint import stack_from_checkpoint

MANTISSA_CUT = 13  # float32 keeps 23 mantissa bits, TF32 10
CONVOLVE = F.conv2d


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("checkpoint", type=Path, help="a trained stack")
    add_data_flags(parser, default="fashion-mnist")
    parser.add_argument("--images", type=positive_int, default=2000, help="test images scored")
    add_device_flag(parser, default="cpu")
    return parser.parse_args(argv)


def to_tf32(values: torch.Tensor, rounded: bool) -> torch.Tensor:
    """``values`` (float32) with their last 13 mantissa bits cleared: rounded to nearest, or cut."""
    bits = values.float().contiguous().view(torch.int32)
    if rounded:
        bits = bits + (1 << (MANTISSA_CUT - 1))
    return (bits & ~((1 << MANTISSA_CUT) - 1)).view(torch.float32)


def tf32_convolution(rounded: bool):
    """``F.conv2d`` on TF32 operands, summed in float64, answered in float32 (channels-last, as
    the tables are)."""

    def convolve(x, weight, bias=None, *args, **kwargs):
        x, weight = to_tf32(x, rounded).double(), to_tf32(weight, rounded).double()
        wide = CONVOLVE(x, weight, None if bias is None else bias.double(), *args, **kwargs)
        return wide.float().contiguous(memory_format=torch.channels_last)

    return convolve


def deviation_rows(stack, x: torch.Tensor) -> list[list[str]]:
    """Per layer: the float64 mean log-likelihood and, for float32 and both TF32 emulations, the
    mean and largest absolute deviation per image from it and the mean signed one (nats)."""
    with torch.no_grad():
        exact = stack.double().layer_log_probs(x.double(), batch_size=500)
        stack.float()
        results = {"float32": stack.layer_log_probs(x, batch_size=500)}
        for name, rounded in (("TF32 rounded", True), ("TF32 truncated", False)):
            with mock.patch.object(F, "conv2d", tf32_convolution(rounded)):
                results[name] = stack.layer_log_probs(x, batch_size=500)
        if x.is_cuda:
            with float32_precision(tf32=True):
                results["TF32 (this GPU)"] = stack.layer_log_probs(x, batch_size=500)
    rows = [["layer", "float64 mean LL", "precision", "mean |dev|", "max |dev|", "mean dev", "|dev| / |LL|"]]
    for layer in range(exact.shape[1]):
        reference = exact[:, layer]
        for name, values in results.items():
            deviation = values[:, layer].double() - reference
            rows.append(
                [str(layer), f"{float(reference.mean()):.2f}", name, f"{float(deviation.abs().mean()):.3g}",
                 f"{float(deviation.abs().max()):.3g}", f"{float(deviation.mean()):.3g}",
                 f"{float(deviation.abs().mean() / reference.abs().mean()):.2g}"]
            )  # fmt: skip
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    stack = stack_from_checkpoint(args.checkpoint, map_location=device)
    dataset = load_dataset(DataConfig(dataset=args.dataset, patch_size=args.patch_size, root=args.root))
    x = dataset.test_images[: args.images].float().to(device)
    print(f"{args.checkpoint}: {len(x)} test images of {args.dataset} on {device}, torch {torch.__version__}")
    print(format_table(deviation_rows(stack, x)))


if __name__ == "__main__":
    run_script(main)
