"""Write per-component views of a trained model's GMM layers: mean, precision map or power
spectrum, and the inputs of highest posterior for every component.

Examples::

    pyro-dcgmm views runs/patches/checkpoint.pt --out runs/patches/views
    pyro-dcgmm views runs/digits/checkpoint.pt --out runs/digits/views --layers 1 --top 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyro_dcgmm.cli.common import make_parser, output_folder
from pyro_dcgmm.config import DataConfig, from_dict
from pyro_dcgmm.data.datasets import load_dataset
from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.model.tree import Tree
from pyro_dcgmm.training.checkpoint import load_checkpoint, stack_from_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__, prog="pyro-dcgmm views")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint.pt written by training")
    parser.add_argument("--out", type=Path, required=True, help="folder for views-layerN.png and .json")
    parser.add_argument(
        "--layers", type=int, nargs="+", help="GMM layers by number, 0 the lowest (default: all)"
    )
    parser.add_argument("--top", type=int, default=10, help="inputs shown per component")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="where inputs come from")
    parser.add_argument("--limit", type=int, default=20000, help="look at this many images of the split")
    parser.add_argument("--max-rows", type=int, default=32, help="components shown per figure (heaviest)")
    return parser.parse_args(argv)


def _title(stack, layer: int, gmm, split: str, count: int) -> str:
    if isinstance(gmm, Tree):
        return (
            f"Tree layer {layer}: {gmm.components} components; per row, the expected pixels below "
            f"{'one' if gmm.config.shared else 'the centre'} position (mean), then the {split} images "
            f"of highest posterior among {count}"
        )
    whole = gmm.input_shape != stack.input_shape or gmm.patch == tuple(stack.input_shape[1:])
    inputs = "whole inputs" if whole else "patches"
    pruned = int((~gmm.active).sum())  # over all positions of a per-position layer
    where = "" if gmm.config.shared else " (over all positions)"
    kept = f"{gmm.components} {gmm.config.covariance} components" + (
        f", {pruned} pruned{where}" if pruned else ""
    )
    return (
        f"GMM layer {layer}: {kept}; per row, the {inputs} of highest posterior among {count} {split} inputs"
    )


def main(argv=None) -> dict:
    from pyro_dcgmm.figures.plots import plot_component_views
    from pyro_dcgmm.figures.views import component_views

    args = parse_args(argv)
    if args.top < 1 or args.limit < 1 or args.max_rows < 1:
        raise ConfigError("--top, --limit and --max-rows must be positive")
    state = load_checkpoint(args.checkpoint)
    stack = stack_from_checkpoint(state)
    data = from_dict(DataConfig, (state["run_config"] or {}).get("data", {}), "checkpoint run_config.data")
    dataset = load_dataset(data, seed=0)
    images = (dataset.test_images if args.split == "test" else dataset.train_images)[: args.limit]
    count = len(stack.mixture_layers)
    layers = args.layers if args.layers is not None else range(count)
    bad = [layer for layer in layers if not -count <= layer < count]
    if bad:
        numbered = f"numbered 0 to {count - 1}"
        raise ConfigError(f"--layers {bad}: this model's {count} layers with components are {numbered}")
    output_folder(args.out)
    written = {}
    for layer in layers:
        gmm = stack.mixture_layer(layer)
        views = component_views(stack, images, layer, args.top)
        path = args.out / f"views-layer{layer}.png"
        title = _title(stack, layer, gmm, args.split, len(images))
        spectrum = getattr(gmm.config, "covariance", None) == "stationary"
        plot_component_views(views, path, title, spectrum, args.max_rows)
        summary = [
            {"component": v.index, "weight": v.weight, "active": v.active, "top_images": v.sources.tolist()}
            for v in views
        ]
        (args.out / f"views-layer{layer}.json").write_text(json.dumps(summary, indent=1))
        written[layer] = str(path)
        print(f"layer {layer}: {path}")
    return written
