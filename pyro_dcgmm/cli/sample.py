"""Sample from a trained DCGMM: grids, class-conditional grids, variants, in-painting, NDB/K and
the measures of :mod:`pyro_dcgmm.evaluation.sample_quality`.

Example::

    pyro-dcgmm sample --checkpoint runs/c/checkpoint.pt --out runs/c/samples

How to sample comes with the model: the run's ``[sampling]`` section
(:class:`~pyro_dcgmm.config.SamplingConfig`, stored in the checkpoint; its defaults, chosen on a
validation split for 28x28 Fashion-MNIST stacks, keep the top-3 components below the top layer, the
paper's S (10 when in-painting), divide standard deviations by 10 and sharpen by 200 steps of rate
2.5e-4 with a pull of 1000 toward the unsharpened sample, on the log-likelihood of the GMM layer that
reads each step).
A flag given here overrides its setting.

Writes into ``--out``: ``samples.png`` (the same draws before and after sharpening),
``class_samples.png`` (one row per class, if the stack has a Readout), ``variants.png``,
``inpainting.png`` (right half missing) and, unless ``--no-ndb``, ``report.json`` with two tables
(also printed): NDB/K of DCGMM samples, of a flat diagonal GMM's (scikit-learn) and of held-out real
images; and, for plain and sharpened samples, class agreement, within-class diversity and sharpness
relative to real images, the mean log-likelihood at every GMM layer of real images and of
unconditional samples (so that sharpening can be seen to raise it), and in-painting error of a draw
and of the mean of 64 draws (the DCGMM's conditional mean) beside the flat GMM's exact conditional
mean and a conditional sample of it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_dcgmm.cli.common import add_device_flag, format_table, make_parser, output_folder, positive_int
from pyro_dcgmm.config import DataConfig, SamplingConfig, from_dict, to_dict
from pyro_dcgmm.data.datasets import load_dataset
from pyro_dcgmm.device import resolve_device
from pyro_dcgmm.evaluation.metrics import NDB
from pyro_dcgmm.evaluation.sample_quality import (
    FlatGMMInpainter,
    ImageClassifier,
    inpainting_error,
    sharpness,
    within_class_diversity,
)
from pyro_dcgmm.figures.plots import save_image_grid
from pyro_dcgmm.inference.sampling import SamplingOptions, default_variant_layer, options_from_settings
from pyro_dcgmm.model.joint import JointStack
from pyro_dcgmm.training.checkpoint import load_checkpoint, stack_from_checkpoint
from pyro_dcgmm.training.files import atomic_write


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__, prog="pyro-dcgmm sample")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint of a trained stack")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--root", help="folder with the data set's IDX files (none: its usual place)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    stored = "(default: the checkpoint's [sampling] setting)"
    parser.add_argument(
        "--top-s", type=positive_int, help=f"components kept per position (the paper's S) {stored}"
    )
    parser.add_argument("--divisor", type=float, help=f"standard-deviation divisor {stored}")
    parser.add_argument("--pool-mode", choices=["dense", "sparse"], help=f"unpooling {stored}")
    parser.add_argument(
        "--sharpen-target", type=sharpen_target, help=f"GMM layer sharpening climbs, or 'next' {stored}"
    )
    parser.add_argument("--sharpen-rate", type=float, help=f"sharpening step size {stored}")
    parser.add_argument("--sharpen-iterations", type=int, help=f"sharpening steps {stored}")
    parser.add_argument("--sharpen-pull", type=float, help=f"pull toward the unsharpened sample {stored}")
    parser.add_argument("--variant-layer", type=int, help=f"GMM layer of the variants {stored}")
    parser.add_argument("--inpaint-layer", type=int, help=f"GMM layer of the in-painting {stored}")
    parser.add_argument("--inpaint-top-s", type=positive_int, help=f"S when in-painting {stored}")
    parser.add_argument("--ndb-bins", type=positive_int, default=100, help="NDB bins (k-means clusters)")
    parser.add_argument("--ndb-samples", type=positive_int, default=2000, help="samples per model for NDB")
    parser.add_argument("--ndb-train", type=positive_int, default=20000, help="training images for the bins")
    parser.add_argument("--flat-components", type=positive_int, default=25, help="K of the flat GMM baseline")
    parser.add_argument(
        "--measure-images", type=positive_int, default=200, help="test images for the measures"
    )
    parser.add_argument(
        "--measure-per-class", type=positive_int, default=20, help="class-conditional samples per class"
    )
    parser.add_argument("--no-ndb", action="store_true", help="skip NDB and the measures (the slow part)")
    add_device_flag(parser)
    return parser.parse_args(argv)


def sharpen_target(text: str) -> int | str:
    return text if text == "next" else int(text)


def main(argv=None) -> dict:
    args = parse_args(argv)
    state = load_checkpoint(args.checkpoint)
    stack = stack_from_checkpoint(state).to(resolve_device(args.device))
    run = state["run_config"] or {}
    data_config = from_dict(DataConfig, run.get("data", {}), "checkpoint run_config.data")
    if args.root is not None:
        data_config = dataclasses.replace(data_config, root=args.root)
    dataset = load_dataset(data_config)
    output_folder(args.out)
    settings = sampling_settings(run, args)
    option_sets = options_from_settings(settings, stack)
    args.variant_layer = settings.variant_layer
    if args.variant_layer is None:
        args.variant_layer = default_variant_layer(stack)
    args.inpaint_layer, args.inpaint_top_s = settings.inpaint_layer, settings.inpaint_top_s
    flat = None
    if not args.no_ndb:
        train = reference_set(dataset, args)
        flat = FlatGMMInpainter(train[0], args.flat_components, args.seed)
    save_figures(stack, dataset, args, option_sets, flat)
    final = list(option_sets.values())[-1]  # the sharpened options, or the only ones of a joint stack
    report = {"checkpoint": str(args.checkpoint), "sampling": to_dict(settings), "options": to_dict(final)}
    if flat is not None:
        report["ndb"] = ndb_table(stack, dataset, train[0], flat, args, final)
        report["measures"] = measures_table(stack, dataset, train, flat, args, option_sets)
        atomic_write(
            args.out / "report.json", lambda h: h.write(json.dumps(report, indent=2, default=str).encode())
        )
    return report


def sampling_settings(run: dict, args) -> SamplingConfig:
    """The checkpoint's ``[sampling]`` section (its defaults for checkpoints written before it
    existed), with every flag that was given in its place."""
    stored = from_dict(SamplingConfig, run.get("sampling", {}), "checkpoint run_config.sampling")
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(SamplingConfig)
        if getattr(args, field.name, None) is not None
    }
    return dataclasses.replace(stored, **given)


def reference_set(dataset, args) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (a seeded random ``--ndb-train`` of them) that the measures compare with."""
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(dataset.train_images.shape[0], generator=generator)[: args.ndb_train]
    return dataset.train_images[order], dataset.train_labels[order]


MEAN_DRAWS = 64  # plain in-paintings averaged into the DCGMM's conditional mean


def right_half_missing(images: torch.Tensor) -> torch.Tensor:
    """The mask (true = observed) of ``images`` with the right half of every image missing."""
    mask = torch.ones_like(images, dtype=torch.bool)
    mask[..., images.shape[-1] // 2 :] = False
    return mask


def save_figures(stack, dataset, args, option_sets: dict, flat: FlatGMMInpainter | None = None) -> None:
    """Samples (plain and sharpened, or a joint stack's exact draws), class-conditional samples,
    variants and in-paintings (beside the ``flat`` GMM's conditional mean if given)."""
    drawn = []
    for options in option_sets.values():
        torch.manual_seed(args.seed)
        drawn.append(stack.sample(64 // len(option_sets), options=options))
    divisor = option_sets["plain"].divisor
    title = (
        "samples: top two rows plain, bottom two rows sharpened (same draws)"
        if len(option_sets) == 2
        else f"samples of the joint model (leaf standard deviations divided by {divisor:g})"
    )
    save_image_grid(torch.cat(drawn), args.out / "samples.png", 16, title)
    sharp = list(option_sets.values())[-1]
    if stack.samples_by_class:
        classes = torch.arange(stack.num_classes).repeat_interleave(8)
        conditional = stack.sample(len(classes), classes=classes, options=sharp)
        save_image_grid(
            conditional, args.out / "class_samples.png", 8, "class-conditional samples",
            row_labels=list(dataset.class_names)[: stack.num_classes],
        )  # fmt: skip
    test = dataset.test_images[:8]
    variants = stack.variants(test, layer=args.variant_layer, n_per_image=7, options=sharp).view(
        8, 7, *test.shape[1:]
    )
    save_image_grid(
        torch.cat([test[:, None], variants.cpu()], 1).flatten(0, 1), args.out / "variants.png", 8,
        f"first column: test image; then variants from layer {stack.number(args.variant_layer)}",
    )  # fmt: skip
    save_inpainting_figure(stack, test, args, option_sets, flat)
    for name in ["samples.png", "class_samples.png", "variants.png", "inpainting.png"]:
        if (args.out / name).exists():
            print(f"wrote {args.out / name}")


def save_inpainting_figure(stack, test, args, option_sets: dict, flat: FlatGMMInpainter | None) -> None:
    """``test`` images, their observed left halves, three (sharpened) in-paintings, the DCGMM's
    conditional mean (:func:`dcgmm_conditional_mean`, as the measures take it) and, if given, the
    ``flat`` GMM's conditional mean."""
    mask, shape = right_half_missing(test), test.shape[1:]
    columns = [test, torch.where(mask, test, 0.5)]
    draws = inpaint(stack, test, mask, args, list(option_sets.values())[-1], n_per_image=3)
    columns += draws.cpu().view(len(test), 3, *shape).unbind(1)
    columns.append(dcgmm_conditional_mean(stack, test, mask, args, option_sets["plain"]))
    what = (
        "the exact conditional mean"
        if isinstance(stack, JointStack)
        else f"mean of {MEAN_DRAWS} in-paintings"
    )
    title = f"original, right half removed, three in-paintings, {what}"
    if flat is not None:
        columns.append(torch.as_tensor(flat.conditional_mean(test, mask), dtype=test.dtype).view_as(test))
        title += ",\nflat GMM's conditional mean"
    save_image_grid(torch.stack(columns, 1).flatten(0, 1), args.out / "inpainting.png", len(columns), title)


def ndb_table(stack, dataset, train_x, flat: FlatGMMInpainter, args, options: SamplingOptions) -> dict:
    """NDB/K of DCGMM samples, flat diagonal-GMM samples and held-out real images, in one run."""
    train = train_x.flatten(1).numpy()
    start = time.perf_counter()
    print(f"NDB: k-means into {args.ndb_bins} bins of {len(train)} training images ...", flush=True)
    ndb = NDB(train, k=args.ndb_bins, seed=args.seed)
    n = args.ndb_samples
    torch.manual_seed(args.seed)
    chunks = tqdm(range(0, n, 500), desc=f"NDB: {n} DCGMM samples, in chunks of 500", unit="chunk")
    dcgmm = torch.cat([stack.sample(min(500, n - i), options=options).cpu() for i in chunks])
    real = dataset.test_images[:n].flatten(1).numpy()
    sets = {
        "dcgmm": dcgmm.flatten(1).numpy(),
        f"flat_gmm_diag_k{args.flat_components}": np.clip(flat.model.sample(n)[0], 0.0, 1.0),
        "held_out_real": real,
    }
    results = {name: ndb.evaluate(images).as_dict() for name, images in sets.items()}
    print(f"NDB with K={args.ndb_bins} bins on {len(train)} training images: {n} samples of each model, "
          f"{len(real)} held-out real images ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    rows = [["samples", "NDB", "NDB/K", "JS"]]
    rows += [
        [k, str(r["ndb"]), f"{r['ndb_over_k']:.3f}", f"{r['js_divergence']:.4f}"] for k, r in results.items()
    ]
    print(format_table(rows))
    return results


def dcgmm_conditional_mean(stack, x, mask, args, options: SamplingOptions) -> torch.Tensor:
    """The DCGMM's estimate of ``E[x | observed pixels]``: exact for a joint stack, the mean of
    ``MEAN_DRAWS`` plain in-paintings for a layerwise one."""
    if isinstance(stack, JointStack):
        return stack.conditional_mean(x, mask).cpu()
    draws = inpaint(stack, x, mask, args, options, n_per_image=MEAN_DRAWS).cpu()
    return draws.view(len(x), MEAN_DRAWS, *x.shape[1:]).mean(1)


def inpaint(stack, x, mask, args, options: SamplingOptions, n_per_image: int = 1) -> torch.Tensor:
    """In-paintings of ``x`` from the in-painting layer, keeping ``args.inpaint_top_s`` components
    per position instead of ``options.top_s``."""
    options = dataclasses.replace(options, top_s=args.inpaint_top_s)
    return stack.inpaint(x, mask, layer=args.inpaint_layer, n_per_image=n_per_image, options=options)


def measures_table(stack, dataset, train, flat: FlatGMMInpainter, args, option_sets) -> dict:
    """Class agreement, diversity, sharpness and per-layer log-likelihood of plain and sharpened
    samples (and the log-likelihood of real images), and in-painting error of a draw and of the mean
    of ``MEAN_DRAWS`` draws (the DCGMM's conditional mean) beside the flat GMM's exact conditional
    mean and a conditional sample (:mod:`pyro_dcgmm.evaluation.sample_quality`)."""
    judge = ImageClassifier(*train, seed=args.seed)
    test_x, test_y = dataset.test_images[: args.measure_images], dataset.test_labels[: args.measure_images]
    real_sharpness = sharpness(test_x)
    results = {"real": {"class_agreement": judge.agreement(test_x, test_y), "sharpness": 1.0}}
    results["real"]["log_likelihood"] = stack.layer_log_probs(test_x).mean(0).tolist()
    mask = right_half_missing(test_x)
    for name, options in option_sets.items():
        torch.manual_seed(args.seed)
        unconditional = stack.sample(len(test_x), options=options).cpu()
        row = {"sharpness": sharpness(unconditional) / real_sharpness}
        row["log_likelihood"] = stack.layer_log_probs(unconditional).mean(0).tolist()
        if stack.samples_by_class:
            classes = torch.arange(stack.num_classes).repeat_interleave(args.measure_per_class)
            drawn = stack.sample(len(classes), classes=classes, options=options).cpu()
            row["class_agreement"] = judge.agreement(drawn, classes)
            row["within_class_diversity"] = within_class_diversity(drawn, classes, test_x, test_y)
        variants = stack.variants(test_x, layer=args.variant_layer, n_per_image=1, options=options).cpu()
        row["variants_keep_class"] = judge.agreement(variants, test_y)
        filled = inpaint(stack, test_x, mask, args, options).cpu()
        row["inpainting_mse"] = inpainting_error(filled, test_x, mask)
        row["inpainting_keeps_class"] = judge.agreement(filled, test_y)
        results[f"dcgmm_{name}"] = row
    for name, filled in (
        ("dcgmm_conditional_mean", dcgmm_conditional_mean(stack, test_x, mask, args, option_sets["plain"])),
        ("flat_conditional_mean", flat.conditional_mean(test_x, mask)),
        ("flat_conditional_sample", flat.conditional_sample(test_x, mask, args.seed)),
    ):
        results[name] = {"inpainting_mse": inpainting_error(filled, test_x, mask)}
        results[name]["inpainting_keeps_class"] = judge.agreement(filled, test_y)
    print_measures(results, len(test_x))
    return results


def print_measures(results: dict, images: int) -> None:
    columns = ["class_agreement", "within_class_diversity", "variants_keep_class", "sharpness",
               "inpainting_mse", "inpainting_keeps_class"]  # fmt: skip
    rows = [["", "class agr.", "diversity", "variants", "sharpness", "in-paint MSE", "in-paint class",
             "LL per GMM layer"]]  # fmt: skip
    for name, row in results.items():
        per_layer = " / ".join(f"{value:.1f}" for value in row.get("log_likelihood", [])) or "-"
        rows.append([name] + [f"{row[c]:.3f}" if c in row else "-" for c in columns] + [per_layer])
    legend = (
        "diversity and sharpness relative to real images; "
        "LL: mean log-likelihood per image at every GMM layer"
    )
    print(f"Measures on {images} test images ({legend}):")
    print(format_table(rows))
