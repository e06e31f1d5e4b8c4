"""Density: bits/dim of the configurations that are densities over pixels (a joint stack, one
full-image GMM, one GMM of non-overlapping patches) beside a diagonal GMM; and the covariance
structures (diag, full, stationary) at equal K beside scikit-learn's."""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from sklearn.mixture import GaussianMixture

from pyro_dcgmm import presets
from pyro_dcgmm.config import FoldConfig, GMMConfig
from pyro_dcgmm.data.datasets import dequantize
from pyro_dcgmm.evaluation.metrics import bits_per_dimension
from pyro_dcgmm.evaluation.protocol import estimator, flat, print_rows, scores_figure


def density(args, dataset, report) -> None:
    channels, height, width = dataset.input_shape
    dims = channels * height * width
    generator = torch.Generator().manual_seed(args.seed)
    test = dequantize(dataset.test_images, dataset.levels, generator)
    k = args.components
    mixture = GMMConfig(components=k, precision_ceiling=args.precision_ceiling)
    joint = args.joint_preset or presets.default_joint_preset(dataset.input_shape)
    configurations = {
        f"dcgmm_joint_{joint}": list(presets.get(joint, dataset.input_shape).layers),
        f"dcgmm_full_image_k{k}": [FoldConfig(patch=None), mixture],
        f"dcgmm_patches{args.patch}_k{k}": [
            FoldConfig(patch=args.patch, stride=args.patch),
            dataclasses.replace(mixture, shared=False),
        ],
    }
    for name, layers in configurations.items():
        if (height % args.patch or width % args.patch) and "patches" in name:
            print(f"{name}: skipped, {height}x{width} is not a multiple of patch {args.patch}")
            continue
        train = dequantize(dataset.train_images, dataset.levels, generator)
        model = estimator(args, layers).fit(train)
        report[name] = {"bits_per_dim": bits_per_dimension(model.score_samples(test), dims, dataset.levels)}
    train = flat(dequantize(dataset.train_images, dataset.levels, generator))
    gmm = GaussianMixture(k, covariance_type="diag", random_state=args.seed, reg_covar=1e-6).fit(train)
    report[f"flat_gmm_diag_k{k}"] = {
        "bits_per_dim": bits_per_dimension(gmm.score_samples(flat(test)), dims, dataset.levels)
    }
    for name, row in report.items():
        if isinstance(row, dict) and "bits_per_dim" in row:
            print(f"{name:>28}: {row['bits_per_dim']:.3f} bits/dim")
    title = "test bits per dimension, dequantised (lower is better)"
    scores_figure(report, "bits_per_dim", args.out / "density.png", title)


def covariances(args, dataset, report) -> None:
    dims = math.prod(dataset.input_shape)
    generator = torch.Generator().manual_seed(args.seed)
    continuous = dataset.name.startswith("natural-patches")
    train, test = (
        (dataset.train_images, dataset.test_images)
        if continuous
        else (dequantize(x, dataset.levels, generator) for x in (dataset.train_images, dataset.test_images))
    )
    k = args.components
    for kind in ("diag", "stationary", "full"):
        layers = [
            FoldConfig(patch=None),
            GMMConfig(components=k, covariance=kind, precision_ceiling=args.precision_ceiling),
        ]
        start = time.perf_counter()
        model = estimator(args, layers, None).fit(train)
        seconds = time.perf_counter() - start
        bits = bits_per_dimension(model.score_samples(test), dims, dataset.levels)
        report[f"pyro_dcgmm_{kind}"] = {"bits_per_dim": bits, "train_seconds": seconds}
    for kind in ("diag", "full"):
        mixture = GaussianMixture(
            k,
            covariance_type=kind,
            reg_covar=1.0 / args.precision_ceiling,
            max_iter=args.sklearn_iterations,
            random_state=args.seed,
        )
        start = time.perf_counter()
        mixture.fit(flat(train))
        seconds = time.perf_counter() - start
        bits = bits_per_dimension(mixture.score_samples(flat(test)), dims, dataset.levels)
        report[f"sklearn_{kind}"] = {"bits_per_dim": bits, "train_seconds": seconds}
    print_rows(report, "bits_per_dim")
    title = f"held-out bits/dim of each covariance structure at K={k} (lower is better)"
    scores_figure(report, "bits_per_dim", args.out / "covariances.png", title)
