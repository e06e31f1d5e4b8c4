"""Quality of preset E at larger mini-batches: online EM's per-sample step sizes and the Readout's rate.

Trains preset E on a training split of Fashion-MNIST (``--train-images`` plus 2,000 held out for
validation, drawn with seed 0) for ``--epochs`` epochs at batch 100 and at each batch size three
ways: the step-size schedule set per step (``em_reference_batch`` equal to the batch size: the
schedule before the per-sample rule); the per-sample rule (a step forgets as much as the batch-100
steps over its samples) with the Readout's Adam rate fixed at ``lr``; and the rule with the
Readout's rate grown as the square root of the batch (the library's default now); once per seed
in ``--seeds`` (initialisation and shuffling; the split stays).  Prints the validation
log-likelihood of every layer and the Readout's validation accuracy::

    python scripts/batch_size_quality.py --epochs 5 --batch-sizes 1000 4000
    python scripts/batch_size_quality.py --train-images 18000 --epochs 10 --batch-sizes 1024 2048 \\
        --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from pyro_dcgmm import Stack, presets
from pyro_dcgmm.cli.common import format_table, run_script
from pyro_dcgmm.config import DataConfig, TrainConfig
from pyro_dcgmm.data.datasets import load_dataset, split_validation
from pyro_dcgmm.training.trainer import train

REFERENCE = 100  # the batch size the step-size schedule and the Readout's rate were chosen for
LR = 0.01  # the Readout's rate at the reference batch (TrainConfig's default)
VALIDATION = 2000


def run(batch: int, reference: int, readout: str, epochs: int, data, seed: int) -> list[str]:
    """One training run; ``readout`` is ``"sqrt"`` (the rate the library sets) or ``"fixed"``."""
    train_x, train_y, val_x, val_y = data
    torch.manual_seed(seed)
    stack = Stack.from_config(presets.get("E", (1, 28, 28)))
    lr = LR if readout == "sqrt" else LR / math.sqrt(batch / reference)  # undo the square-root rule
    config = TrainConfig(
        batch_size=batch, em_reference_batch=reference, lr=lr, epochs=epochs, progress=False, device="cpu",
        seed=seed,
    )  # fmt: skip
    start = time.perf_counter()
    train(stack, train_x, train_y, config=config)
    seconds = time.perf_counter() - start
    log_likelihoods = stack.layer_log_probs(val_x).mean(0).tolist()
    accuracy = (stack.predict_proba(val_x).argmax(1) == val_y).float().mean().item()
    rule = "reference" if batch == REFERENCE else "per sample" if reference == REFERENCE else "per step"
    readout_rate = "fixed" if reference == batch else readout
    return [
        str(seed), str(batch), rule, readout_rate, f"{seconds:.0f}", *(f"{v:.1f}" for v in log_likelihoods),
        f"{accuracy:.3f}",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    drawn = args.train_images + VALIDATION
    dataset = load_dataset(DataConfig(dataset="fashion-mnist", train_limit=drawn), seed=0)
    data = split_validation(dataset.train_images, dataset.train_labels, VALIDATION / drawn, seed=0)
    rows = []
    for seed in args.seeds:
        rows += [run(REFERENCE, REFERENCE, "sqrt", args.epochs, data, seed)]
        for batch in args.batch_sizes:
            rows += [run(batch, batch, "fixed", args.epochs, data, seed)]
            rows += [run(batch, REFERENCE, readout, args.epochs, data, seed) for readout in ("fixed", "sqrt")]
    header = [
        "seed", "batch", "step sizes", "readout rate", "train s", "val LL L0", "val LL L1", "val LL L2",
        "readout acc",
    ]  # fmt: skip
    print(format_table([header, *rows]))


if __name__ == "__main__":
    run_script(main)
