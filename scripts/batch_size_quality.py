"""Quality of preset E at larger mini-batches, with and without online EM's per-sample step sizes.

Trains preset E on a 10,000-image training split of Fashion-MNIST (12,000 drawn with seed 0, 2,000
held out for validation) for ``--epochs`` epochs at each batch size, once with the step-size schedule
set per step (``em_reference_batch`` equal to the batch size: the schedule before the rule) and once
set for batch 100 (the rule: a step forgets as much as the batch-100 steps over its samples), and
prints the validation log-likelihood of every layer and the Readout's validation accuracy::

    python scripts/batch_size_quality.py --epochs 5 --batch-sizes 1000 4000
"""

from __future__ import annotations

import argparse
import time

import torch

from pyro_dcgmm import Stack, presets
from pyro_dcgmm.cli.common import format_table, run_script
from pyro_dcgmm.config import DataConfig, TrainConfig
from pyro_dcgmm.data.datasets import load_dataset, split_validation
from pyro_dcgmm.training.trainer import train

REFERENCE = 100  # the batch size the step-size schedule was chosen for


def run(batch: int, reference: int, epochs: int, data) -> list[str]:
    train_x, train_y, val_x, val_y = data
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("E", (1, 28, 28)))
    config = TrainConfig(
        batch_size=batch, em_reference_batch=reference, epochs=epochs, progress=False, device="cpu"
    )
    start = time.perf_counter()
    train(stack, train_x, train_y, config=config)
    seconds = time.perf_counter() - start
    log_likelihoods = stack.layer_log_probs(val_x).mean(0).tolist()
    accuracy = (stack.predict_proba(val_x).argmax(1) == val_y).float().mean().item()
    rule = "per sample" if reference == REFERENCE else "per step"
    return [str(batch), rule, f"{seconds:.0f}", *(f"{v:.1f}" for v in log_likelihoods), f"{accuracy:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 4000])
    args = parser.parse_args()
    dataset = load_dataset(DataConfig(dataset="fashion-mnist", train_limit=12000), seed=0)
    data = split_validation(dataset.train_images, dataset.train_labels, 2000 / 12000, seed=0)
    rows = [run(REFERENCE, REFERENCE, args.epochs, data)]
    for batch in args.batch_sizes:
        rows += [run(batch, batch, args.epochs, data), run(batch, REFERENCE, args.epochs, data)]
    header = ["batch", "step sizes", "train s", "val LL L0", "val LL L1", "val LL L2", "readout acc"]
    print(format_table([header, *rows]))


if __name__ == "__main__":
    run_script(main)
