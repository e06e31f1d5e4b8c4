"""Show what a checkpoint holds: its architecture, how far training went, and its last results.

Example::

    pyro-dcgmm inspect runs/digits/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyro_dcgmm.cli.common import format_table, make_parser
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.tree import Tree
from pyro_dcgmm.training.checkpoint import load_checkpoint, stack_from_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__, prog="pyro-dcgmm inspect")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint.pt written by training")
    parser.add_argument("--json", action="store_true", help="print the run configuration as JSON too")
    return parser.parse_args(argv)


def layer_rows(stack) -> list[list[str]]:
    """One row per layer: index, type, output shape (C, H, W), components (and how many of them
    pruning left), how they are shared, and the layer's priors."""
    rows = [["layer", "type", "output (C, H, W)", "K", "mixtures", "priors"]]
    for index, layer in enumerate(stack.layers):
        mixture = isinstance(layer, (GMM, Tree))
        rows.append(
            [
                str(index),
                type(layer).__name__,
                "absorbed by the GMM above" if layer.output_shape is None else str(tuple(layer.output_shape)),
                component_count(layer) if mixture else "",
                ("shared" if layer.config.shared else "per position") if mixture else "",
                prior_names(layer) if isinstance(layer, GMM) else "",
            ]
        )
    return rows


def component_count(layer) -> str:
    """``K``, with the components left in every mixture when some were pruned."""
    active = getattr(layer, "active", None)
    if active is None or bool(active.all()):
        return str(layer.components)
    left = active.reshape(-1, layer.components).sum(-1)
    spread = str(int(left[0])) if bool((left == left[0]).all()) else f"{int(left.min())}-{int(left.max())}"
    return f"{layer.components} ({spread} left)"


def prior_names(gmm: GMM) -> str:
    """The GMM layer's priors in short (:mod:`pyro_dcgmm.model.priors`)."""
    config, names = gmm.config, []
    if config.weight_concentration_prior is not None:
        names.append(f"Dirichlet({config.weight_concentration_prior:g}, {config.weight_posterior})")
    if config.mean_precision_prior is not None:
        names.append(f"Normal-Gamma(k0={config.mean_precision_prior:g})")
    return ", ".join(names)


def main(argv=None) -> dict:
    args = parse_args(argv)
    state = load_checkpoint(args.checkpoint)
    stack = stack_from_checkpoint(state)
    print(format_table(layer_rows(stack)))
    training = state["training"] or {}
    history = training.get("history") or []
    epochs = training.get("epoch", 0)
    print(
        f"\ntrained {epochs} epoch{'' if epochs == 1 else 's'}, {training.get('step', 0)} steps, "
        f"{training.get('seconds', 0.0):.1f} s"
    )
    if history:
        last = history[-1]
        print(
            f"last epoch, training loss per objective ({', '.join(stack.objective_names)}; nats per sample):",
            [round(v, 2) for v in last["train_loss"]],
        )
        if "validation_log_likelihood" in last:
            held_out = [round(v, 2) for v in last["validation_log_likelihood"]]
            print("last epoch, held-out log-likelihood per objective:", held_out)
    if args.json:
        print(json.dumps(state["run_config"], indent=2))
    return {"epochs": training.get("epoch", 0), "steps": training.get("step", 0), "layers": len(stack.layers)}
