"""The joint and the layerwise DCGMM side by side on one data set's test set, beside flat GMMs.

Loads trained checkpoints (a joint stack, optionally one whose top is split by class, and a layerwise
stack) and measures, with settings fixed beforehand:

- density: test bits/dim of the joint stack (test images dequantised once, seed 0) and of a flat
  diagonal GMM of K = ``--flat-components`` (scikit-learn, fitted to dequantised training images);
- in-painting: the mean squared error on the missing pixels of the first ``--images`` test images for
  each half missing (left, right, top, bottom): the joint stack's exact conditional mean, the
  layerwise stack's mean of 64 plain in-paintings (its stored sampling settings, as ``pyro-dcgmm
  sample`` takes it) and the flat GMMs' exact conditional means;
- samples: NDB/K (100 k-means bins of 20,000 training images, 2,000 samples each) and sharpness
  relative to real test images of the joint stack's draws (its stored divisor), the layerwise stack's
  sharpened samples, a flat GMM's samples and held-out real images; class agreement of
  class-conditional samples (a logistic regression trained on real images judges them);
- classification: the split joint stack's Bayes rule and the layerwise stack's Readout.

The flat GMMs of the in-painting have K = ``--flat-components`` and the K whose count of parameters
(stored values, 2 D + 1 per component) matches the joint stack's.  Writes ``comparison.json`` and the
figures ``inpainting-<half>.png`` into ``--out``::

    python scripts/compare_formulations.py --joint runs/joint/checkpoint.pt \\
        --joint-classes runs/joint-classes/checkpoint.pt --layerwise runs/e/checkpoint.pt \\
        --out docs/figures/fashion-mnist-joint
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from pyro_dcgmm.cli.common import format_table, run_script
from pyro_dcgmm.cli.sample import MEAN_DRAWS, sampling_settings
from pyro_dcgmm.config import DataConfig, from_dict
from pyro_dcgmm.data.datasets import dequantize, load_dataset
from pyro_dcgmm.evaluation.metrics import NDB, bits_per_dimension
from pyro_dcgmm.evaluation.sample_quality import (
    FlatGMMInpainter,
    ImageClassifier,
    inpainting_error,
    sharpness,
)
from pyro_dcgmm.figures.plots import save_image_grid
from pyro_dcgmm.inference.sampling import options_from_settings
from pyro_dcgmm.training.checkpoint import load_checkpoint, stack_from_checkpoint

HALVES = ("left", "right", "top", "bottom")


def half_missing(images: torch.Tensor, half: str) -> torch.Tensor:
    """The mask (true = observed) of ``images`` with one half of every image missing."""
    mask = torch.ones_like(images, dtype=torch.bool)
    rows, columns = images.shape[-2] // 2, images.shape[-1] // 2
    region = {
        "left": (..., slice(None), slice(None, columns)),
        "right": (..., slice(None), slice(columns, None)),
        "top": (..., slice(None, rows), slice(None)),
        "bottom": (..., slice(rows, None), slice(None)),
    }
    mask[region[half]] = False
    return mask


def loaded(path: Path):
    """The stack of a checkpoint and the sampling options its run stores (the plain and the final)."""
    state = load_checkpoint(path)
    stack = stack_from_checkpoint(state)
    options = options_from_settings(sampling_settings(state["run_config"] or {}, argparse.Namespace()), stack)
    return stack, options, state


def matched_components(stack, dims: int) -> int:
    """The K of a flat diagonal GMM with as many parameters as ``stack``."""
    count = sum(p.numel() for layer in stack.mixture_layers for p in layer.parameters())
    return max(1, round((count + 1) / (2 * dims + 1)))


def layerwise_conditional_mean(stack, options, settings, x, mask) -> torch.Tensor:
    """The mean of ``MEAN_DRAWS`` plain in-paintings from the top layer, ``inpaint_top_s`` kept."""
    plain = dataclasses.replace(options["plain"], top_s=settings.inpaint_top_s)
    torch.manual_seed(0)
    chunks = []
    for rows in range(0, len(x), 100):
        part = x[rows : rows + 100]
        draws = stack.inpaint(part, mask[rows : rows + 100], layer=-1, n_per_image=MEAN_DRAWS, options=plain)
        chunks.append(draws.view(len(part), MEAN_DRAWS, *x.shape[1:]).mean(1))
    return torch.cat(chunks)


def inpainting(args, joint, layerwise, flats, test) -> dict:
    x = test[: args.images]
    results = {}
    for half in HALVES:
        mask = half_missing(x, half)
        start = time.perf_counter()
        filled = {"joint": joint[0].conditional_mean(x, mask)}
        if layerwise is not None:
            stack, options, state = layerwise
            settings = sampling_settings(state["run_config"] or {}, argparse.Namespace())
            filled["layerwise"] = layerwise_conditional_mean(stack, options, settings, x, mask)
        for name, model in flats.items():
            filled[name] = torch.as_tensor(model.conditional_mean(x, mask), dtype=x.dtype)
        results[half] = {name: inpainting_error(values, x, mask) for name, values in filled.items()}
        columns = [x[:8], torch.where(mask[:8], x[:8], 0.5), *(values[:8] for values in filled.values())]
        title = f"{half} half missing; per row: original, observed, " + ", ".join(filled)
        save_image_grid(
            torch.stack(columns, 1).flatten(0, 1), args.out / f"inpainting-{half}.png", len(columns), title
        )
        print(
            f"in-painting, {half} half missing ({time.perf_counter() - start:.0f} s): "
            + ", ".join(f"{k} {v:.5f}" for k, v in results[half].items()),
            flush=True,
        )
    return results


def samples(args, dataset, joint, joint_classes, layerwise, flat, train) -> dict:
    ndb = NDB(train[0][:20000].flatten(1).numpy(), k=100, seed=0)
    real = dataset.test_images[: args.samples]
    reference = sharpness(real)
    torch.manual_seed(0)
    drawn = {"joint": joint[0].sample(args.samples, options=joint[1]["plain"])}
    if layerwise is not None:
        options = list(layerwise[1].values())[-1]
        drawn["layerwise"] = torch.cat(
            [layerwise[0].sample(500, options=options) for _ in range(args.samples // 500)]
        )
    drawn["flat"] = torch.as_tensor(
        np.clip(flat.model.sample(args.samples)[0], 0, 1), dtype=real.dtype
    ).view_as(real)
    drawn["held_out_real"] = real
    results = {}
    for name, images in drawn.items():
        result = ndb.evaluate(images.flatten(1).numpy())
        results[name] = {"ndb_over_k": result.ndb_over_k, "sharpness": sharpness(images) / reference}
    judge = ImageClassifier(*train, seed=0)
    for name, model in (("joint_classes", joint_classes), ("layerwise", layerwise)):
        if model is None or not model[0].samples_by_class:
            continue
        classes = torch.arange(10).repeat_interleave(40)
        options = list(model[1].values())[-1]
        images = model[0].sample(len(classes), classes=classes, options=options)
        results.setdefault(name, {})["class_agreement"] = judge.agreement(images, classes)
    save_image_grid(
        drawn["joint"][:64],
        args.out / "samples.png",
        16,
        f"samples of the joint stack (leaf standard deviations divided by {joint[1]['plain'].divisor:g})",
    )
    if joint_classes is not None:
        classes = torch.arange(10).repeat_interleave(8)
        images = joint_classes[0].sample(len(classes), classes=classes, options=joint_classes[1]["plain"])
        save_image_grid(
            images,
            args.out / "class_samples.png",
            8,
            "class-conditional samples of the split joint stack",
            row_labels=list(dataset.class_names),
        )
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--joint", type=Path, required=True, help="checkpoint of a joint stack")
    parser.add_argument("--joint-classes", type=Path, help="checkpoint of a joint stack split by class")
    parser.add_argument("--layerwise", type=Path, help="checkpoint of a layerwise stack")
    parser.add_argument("--out", type=Path, required=True, help="folder for comparison.json and figures")
    parser.add_argument("--images", type=int, default=1000, help="test images in-painted per half")
    parser.add_argument("--samples", type=int, default=2000, help="samples per model for NDB and sharpness")
    parser.add_argument("--flat-components", type=int, default=25, help="K of the smaller flat GMM")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    joint = loaded(args.joint)
    joint_classes = loaded(args.joint_classes) if args.joint_classes else None
    layerwise = loaded(args.layerwise) if args.layerwise else None
    data = from_dict(DataConfig, joint[2]["run_config"]["data"], "data")
    dataset = load_dataset(dataclasses.replace(data, train_limit=None))
    dims = math.prod(dataset.input_shape)
    generator = torch.Generator().manual_seed(0)
    test = dequantize(dataset.test_images, dataset.levels, generator)
    report = {"density": {"joint": bits_per_dimension(joint[0].log_prob(test).numpy(), dims, dataset.levels)}}
    if joint_classes is not None:
        report["density"]["joint_classes"] = bits_per_dimension(
            joint_classes[0].log_prob(test).numpy(), dims, dataset.levels
        )
    matched = matched_components(joint[0], dims)
    flats = {
        f"flat_k{k}": FlatGMMInpainter(dataset.train_images, k, seed=0)
        for k in (args.flat_components, matched)
    }
    noisy = dequantize(dataset.train_images, dataset.levels, generator).flatten(1).numpy()
    density = GaussianMixture(args.flat_components, covariance_type="diag", random_state=0, reg_covar=1e-6)
    scores = density.fit(noisy).score_samples(test.flatten(1).numpy())
    report["density"][f"flat_k{args.flat_components}"] = bits_per_dimension(scores, dims, dataset.levels)
    report["parameters"] = {"joint": sum(p.numel() for p in joint[0].parameters()), "flat_matched_k": matched}
    report["inpainting"] = inpainting(args, joint, layerwise, flats, dataset.test_images)
    report["samples"] = samples(
        args,
        dataset,
        joint,
        joint_classes,
        layerwise,
        flats[f"flat_k{args.flat_components}"],
        (dataset.train_images, dataset.train_labels),
    )
    if joint_classes is not None:
        predicted = joint_classes[0].predict_proba(dataset.test_images).argmax(1)
        report["classification"] = {
            "joint_classes": float((predicted == dataset.test_labels).double().mean())
        }
    if layerwise is not None and layerwise[0].readout is not None:
        predicted = layerwise[0].predict_proba(dataset.test_images).argmax(1)
        report.setdefault("classification", {})["layerwise_readout"] = float(
            (predicted == dataset.test_labels).double().mean()
        )
    (args.out / "comparison.json").write_text(json.dumps(report, indent=2))
    rows = [["half missing", *report["inpainting"]["left"]]]
    rows += [[half, *(f"{v:.5f}" for v in values.values())] for half, values in report["inpainting"].items()]
    print(format_table(rows))
    print(json.dumps({k: v for k, v in report.items() if k != "inpainting"}, indent=1))
    return report


if __name__ == "__main__":
    run_script(main)
