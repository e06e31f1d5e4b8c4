"""Clustering NMI of a DCGMM architecture on a validation split of the training set, beside flat baselines.

The test set is never touched: a random subset of the training set (``--subset``) is split into a
training part and a validation part (``--validation-fraction``).  The stack is a layer string as in
:mod:`pyro_dcgmm.presets` (or a preset name; a Readout is dropped), with ``--top-components``
components in its top GMM layer; ``--upper-precision-ceiling`` sets the GMM layers above the first
and ``--first-output`` what the first GMM layer passes upward.  Prints one line per seed and the
means, beside a diagonal ``GaussianMixture`` and k-means with as many clusters::

    python scripts/validate_clustering.py --dataset digits --architecture "F4/2 G64 Ffull G25" \\
        --top-components 25 --seeds 0 1 2 3 4
    python scripts/validate_clustering.py --dataset fashion-mnist --subset 20000 --architecture E \\
        --top-components 10 --epochs 2 --upper-precision-ceiling 10
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.mixture import GaussianMixture

from pyro_dcgmm import DCGMM, presets
from pyro_dcgmm.cli.common import add_data_flags, make_parser, run_script
from pyro_dcgmm.config import DataConfig
from pyro_dcgmm.data.datasets import load_dataset, split_validation


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_data_flags(parser)
    parser.add_argument("--subset", type=int, help="use a random subset of this many training images")
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="part held out for validation")
    parser.add_argument("--architecture", default="digits", help="preset name or layer string")
    parser.add_argument("--top-components", type=int, default=10, help="K of the top GMM layer")
    parser.add_argument(
        "--upper-precision-ceiling",
        type=float,
        default=10.0,
        help="precision ceiling of the GMM layers above the first",
    )
    parser.add_argument(
        "--first-output", default="log_responsibilities", choices=["responsibilities", "log_responsibilities"]
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the DCGMM")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed")
    return parser.parse_args(argv)


def layers(args) -> list:
    text = presets.ARCHITECTURES.get(args.architecture, args.architecture)
    configs = [
        c for c in presets.parse_architecture(text, 10, args.upper_precision_ceiling) if c.type != "readout"
    ]
    gmms = [i for i, c in enumerate(configs) if c.type == "gmm"]
    configs[gmms[-1]] = dataclasses.replace(configs[gmms[-1]], components=args.top_components)
    if len(gmms) > 1:
        configs[gmms[0]] = dataclasses.replace(configs[gmms[0]], output=args.first_output)
    return configs


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = load_dataset(DataConfig(dataset=args.dataset, root=args.root))
    images, labels = data.train_images, data.train_labels
    if args.subset is not None:
        keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[: args.subset]
        images, labels = images[keep], labels[keep]
    train_x, _, val_x, val_y = split_validation(images, labels, args.validation_fraction, 0)
    truth, train_flat, val_flat = val_y.numpy(), train_x.flatten(1).numpy(), val_x.flatten(1).numpy()
    k = args.top_components
    scores = {"DCGMM": [], f"flat diag GMM K={k}": [], f"k-means K={k}": []}
    for seed in args.seeds:
        model = DCGMM(layers(args), epochs=args.epochs, random_state=seed).fit(train_x)
        scores["DCGMM"].append(normalized_mutual_info_score(truth, model.predict(val_x)))
        flat = GaussianMixture(k, covariance_type="diag", reg_covar=1e-3, random_state=seed)
        scores[f"flat diag GMM K={k}"].append(
            normalized_mutual_info_score(truth, flat.fit(train_flat).predict(val_flat))
        )
        kmeans = KMeans(k, n_init=3, random_state=seed)
        scores[f"k-means K={k}"].append(
            normalized_mutual_info_score(truth, kmeans.fit(train_flat).predict(val_flat))
        )
        print(
            f"seed {seed}: " + "  ".join(f"{name} {values[-1]:.3f}" for name, values in scores.items()),
            flush=True,
        )
    print("validation NMI, mean over seeds: " + "  ".join(f"{n} {np.mean(v):.3f}" for n, v in scores.items()))
    return scores


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run_script(main)
