"""Time to quality: held-out log-likelihood against wall time for one full-image diagonal GMM layer.

Our trainers (online EM, Adam; each from the k-means initialisation, through ``train``) beside
scikit-learn's ``GaussianMixture`` (EM, k-means init), side by side in one run on one machine, with
the same K and the same variance floor (``1 / precision_ceiling``; scikit-learn adds it to every
variance as ``reg_covar``, we bound every variance below by it).  Each trainer's curve is one point
per epoch (ours) or per EM iteration (scikit-learn, continued by ``warm_start``); our times include
the per-epoch scoring of the test set, scikit-learn's exclude it, and an untimed warm-up run takes
the one-off import costs first.  Prints a table, writes ``report.json`` and ``time_to_quality.png``
into ``--out``::

    python scripts/time_to_quality.py --dataset digits --components 10 --out runs/ttq-digits
    python scripts/time_to_quality.py --dataset fashion-mnist --components 25 --out runs/ttq-fmnist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import normalized_mutual_info_score
from sklearn.mixture import GaussianMixture

from pyro_dcgmm import GMM, Fold, Stack
from pyro_dcgmm.cli.common import add_data_flags, format_table, make_parser, run_script
from pyro_dcgmm.config import DataConfig, TrainConfig
from pyro_dcgmm.data.datasets import load_dataset
from pyro_dcgmm.training.files import atomic_write
from pyro_dcgmm.training.trainer import train


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_data_flags(parser)
    parser.add_argument("--components", type=int, default=10, help="K of every model")
    parser.add_argument("--variance-floor", type=float, default=1e-3, help="smallest variance")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of our trainers")
    parser.add_argument("--batch-size", type=int, help="our mini-batch (default: N/10, at most 1000)")
    parser.add_argument("--adam-lr", type=float, default=0.05, help="learning rate of the Adam trainer")
    parser.add_argument("--em-iterations", type=int, default=100, help="scikit-learn's EM iterations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    return parser.parse_args(argv)


def ours(optimizer: str, args, data, seed: int) -> dict:
    """One of our trainers: (seconds, test LL) per epoch and the final test NMI."""
    torch.manual_seed(seed)
    gmm = GMM(args.components, precision_ceiling=1.0 / args.variance_floor)
    stack = Stack([Fold(None), gmm], data.input_shape)
    batch = args.batch_size or min(1000, data.train_images.shape[0] // 10)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=batch,
        optimizer=optimizer,
        lr=args.adam_lr,
        seed=seed,
        device="cpu",
        progress=False,
    )
    history = train(stack, data.train_images, config=config, validation=data.test_images).history
    clusters = stack.map_components(data.test_images, 0).view(-1).numpy()
    return {
        "seconds": [h["seconds"] for h in history],
        "log_likelihood": [h["validation_log_likelihood"][0] for h in history],
        "nmi": normalized_mutual_info_score(data.test_labels.numpy(), clusters),
    }


def scikit_learn(args, data, seed: int) -> dict:
    """scikit-learn's EM, one iteration at a time (warm start) until it converges."""
    train_x = data.train_images.flatten(1).double().numpy()
    test_x = data.test_images.flatten(1).double().numpy()
    model = GaussianMixture(
        args.components,
        covariance_type="diag",
        reg_covar=args.variance_floor,
        max_iter=1,
        warm_start=True,
        random_state=seed,
    )
    curve = {"seconds": [], "log_likelihood": []}
    elapsed, previous = 0.0, -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(args.em_iterations):
            start = time.perf_counter()
            model.fit(train_x)
            elapsed += time.perf_counter() - start
            curve["seconds"].append(elapsed)
            curve["log_likelihood"].append(float(model.score(test_x)))
            train_ll = model.lower_bound_
            if abs(train_ll - previous) < model.tol:
                break
            previous = train_ll
    curve["nmi"] = normalized_mutual_info_score(data.test_labels.numpy(), model.predict(test_x))
    return curve


def summarise(runs: dict) -> list[list[str]]:
    """Rows: trainer, seed, final LL, best LL, seconds to reach scikit-learn's final LL - 0.5%, NMI."""
    rows = [["trainer", "seed", "final LL", "seconds", "s to sklearn-0.5%", "test NMI"]]
    for (trainer, seed), run in runs.items():
        target = runs[("scikit-learn", seed)]["log_likelihood"][-1]
        target -= 0.005 * abs(target)
        reached = [s for s, ll in zip(run["seconds"], run["log_likelihood"], strict=True) if ll >= target]
        rows.append(
            [
                trainer,
                str(seed),
                f"{run['log_likelihood'][-1]:.2f}",
                f"{run['seconds'][-1]:.2f}",
                f"{reached[0]:.2f}" if reached else "never",
                f"{run['nmi']:.3f}",
            ]
        )
    return rows


def plot(runs: dict, path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours = {"online EM": "C0", "Adam": "C1", "scikit-learn": "C2"}
    for (trainer, seed), run in runs.items():
        axis.plot(
            run["seconds"],
            run["log_likelihood"],
            marker="o",
            markersize=3,
            color=colours[trainer],
            label=trainer if seed == min(s for t, s in runs if t == trainer) else None,
        )
    targets = [run["log_likelihood"][-1] for (trainer, _), run in runs.items() if trainer == "scikit-learn"]
    target = min(targets) - 0.005 * abs(min(targets))
    axis.axhline(target, color="grey", linestyle="--", linewidth=1, label="lowest scikit-learn final - 0.5%")
    axis.set_xscale("log")
    axis.set_xlabel("wall time (s, log scale)")
    axis.set_ylabel("test log-likelihood (nats per image)")
    values = [ll for run in runs.values() for ll in run["log_likelihood"]]
    margin = 0.05 * (max(values) - min(values)) + 1e-6
    axis.set_ylim(min(values) - margin, max(values) + margin)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = load_dataset(DataConfig(dataset=args.dataset, root=args.root))
    warm_up = argparse.Namespace(**{**vars(args), "epochs": 1})  # one-off import and set-up costs
    ours("em", warm_up, dataclasses.replace(data, train_images=data.train_images[:500]), 0)
    runs = {}
    for seed in args.seeds:
        runs[("online EM", seed)] = ours("em", args, data, seed)
        runs[("Adam", seed)] = ours("adam", args, data, seed)
        runs[("scikit-learn", seed)] = scikit_learn(args, data, seed)
    rows = summarise(runs)
    print(format_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    title = (
        f"{args.dataset}: one full-image diagonal GMM, K={args.components}, "
        f"variance floor {args.variance_floor:g}"
    )
    plot(runs, args.out / "time_to_quality.png", title)
    report = {
        "configuration": {k: str(v) for k, v in vars(args).items()},
        "runs": [{"trainer": t, "seed": s, **run} for (t, s), run in runs.items()],
        "table": rows,
    }
    atomic_write(args.out / "report.json", lambda h: h.write(json.dumps(report, indent=2).encode()))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    run_script(main)
