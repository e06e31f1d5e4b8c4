"""How far a trained stack's Readout is from the best linear readout of its own features.

The Readout is a linear classifier of the top layer's output, trained by Adam beside online EM
while the layers under it still move.  For each checkpoint written by ``pyro-dcgmm train`` this
script rebuilds the run's own split (its data set, seed and validation fraction), fits
scikit-learn's unregularised multinomial logistic regression (the Readout's model and loss, to
convergence) on the final features of the images the run trained on, and prints the Readout's
accuracy on the run's validation images and on the test set beside the optimum's, and the training
cross-entropy of both: the gap between them is what more or better Readout steps could win; the
rest lies in the features::

    python scripts/readout_optimum.py runs/b100-seed1/checkpoint.pt runs/b2048-seed1/checkpoint.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss

from pyro_dcgmm.cli.common import format_table, make_parser, run_script
from pyro_dcgmm.cli.train import held_out, run_data
from pyro_dcgmm.config import RunConfig
from pyro_dcgmm.config.checked import from_dict
from pyro_dcgmm.errors import ArchitectureError, CheckpointError
from pyro_dcgmm.inference.queries import query
from pyro_dcgmm.training.checkpoint import load_checkpoint, stack_from_checkpoint

EVAL_BATCH = 1000


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("checkpoints", type=Path, nargs="+", help="checkpoints of pyro-dcgmm train runs")
    return parser.parse_args(argv)


def readout_features(stack, x: torch.Tensor) -> torch.Tensor:
    """The Readout's input for images ``x``: (N, C, H, W)."""
    if stack.readout is None:
        raise ArchitectureError("this stack has no Readout layer")
    return query(stack, x, lambda chunk, _: stack.input_of(chunk, stack.readout), EVAL_BATCH)


def flat(features: torch.Tensor) -> np.ndarray:
    """Features (N, C, H, W) as scikit-learn takes them: (N, C H W), float64."""
    return features.flatten(1).double().numpy()


def run_split(state: dict) -> tuple:
    """The images and labels a run trained on, validated on and is tested on, as it had them."""
    if state["run_config"] is None:
        raise CheckpointError("this checkpoint records no run configuration: write it with pyro-dcgmm train")
    run = from_dict(RunConfig, state["run_config"], "run_config")
    dataset, train_x, train_y, val_x, val_y = run_data(run)
    test = (held_out(dataset.test_images, dataset, run), dataset.test_labels)
    return (train_x, train_y), (held_out(val_x, dataset, run), val_y), test


def comparison_row(path: Path) -> list[str]:
    state = load_checkpoint(path)
    stack = stack_from_checkpoint(state)
    (train_x, train_y), validation, test = run_split(state)
    features = readout_features(stack, train_x)
    optimum = LogisticRegression(C=np.inf, max_iter=1000).fit(flat(features), train_y.numpy())
    labels = np.arange(stack.readout.num_classes)

    def probabilities(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The trained Readout's class probabilities of features ``x`` and the optimum's."""
        best = np.zeros((len(x), len(labels)))
        best[:, optimum.classes_] = optimum.predict_proba(flat(x))  # classes absent: 0
        with torch.no_grad():
            return torch.softmax(stack.readout.logits(x).double(), -1).numpy(), best

    trained, best = probabilities(features)
    val_trained = probabilities(readout_features(stack, validation[0]))[0]
    test_trained, test_best = probabilities(readout_features(stack, test[0]))
    return [
        str(path),
        *(f"{accuracy_score(y.numpy(), p.argmax(1)):.4f}" for y, p in
          ((validation[1], val_trained), (test[1], test_trained), (test[1], test_best))),
        *(f"{log_loss(train_y.numpy(), p, labels=labels):.4f}" for p in (trained, best)),
    ]  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    header = [
        "checkpoint", "readout val acc", "readout test acc", "optimum test acc", "readout train CE",
        "optimum train CE",
    ]  # fmt: skip
    print(format_table([header, *(comparison_row(path) for path in args.checkpoints)]))


if __name__ == "__main__":
    run_script(main)
