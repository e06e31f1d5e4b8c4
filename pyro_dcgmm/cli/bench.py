"""Throughput of DCGMM training and scoring: samples/s and peak memory per preset, batch and path.

Paths:
  hand       one training step on the loss written in plain torch (``Stack.loss``: same math, no Pyro)
  svi        one full training step as ``train`` runs it: TraceEnum_ELBO (training's, which reads
             nothing from the device) on the stack's model with the components marginalised in
             closed form, backward, Adam step
  svi-enum   the same with Pyro enumerating every component site (``objective="enumerated"``)
  score      forward-only log-likelihood of every GMM layer (``Stack.log_prob``), no gradients
  train      the whole training loop as a user runs it: ``Trainer.fit`` (online EM, the default
             settings at this batch size) for one epoch of ``--repeats`` times ``--steps`` batches
             of random images (and labels for a Readout) passed from host memory, every layer
             initialised (no k-means), the epoch's end included

Every measurement runs ``--warmup`` steps, then ``--repeats`` timed blocks of ``--steps`` steps
(CUDA synchronised around each block) and reports the median block (``train``: the mean step of
its epoch).  ``--json`` writes one record per row, with the environment (and for ``train`` its rate
as a fraction of the ``svi`` rate at the same batch).
Examples::

    pyro-dcgmm bench --device cpu --preset E --quick
    pyro-dcgmm bench --device cuda --preset A B C E --batch-sizes 1024 8192 --json bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import time
import warnings
from pathlib import Path

import pyro
import torch

from pyro_dcgmm import Stack, presets
from pyro_dcgmm.cli.common import add_device_flag, make_parser, positive_int
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.device import float32_precision, resolve_device
from pyro_dcgmm.errors import TrainingWarning
from pyro_dcgmm.training.files import atomic_write
from pyro_dcgmm.training.step import make_elbo
from pyro_dcgmm.training.trainer import Trainer

FULL = {"batch_sizes": [100, 1000], "warmup": 3, "repeats": 5, "steps": 5}  # what is timed by default
QUICK = {"batch_sizes": [100], "warmup": 1, "repeats": 3, "steps": 2}  # --quick
COLUMNS = ["preset", "batch", "path", "samples/s", "ms/step", "peak MiB", "x hand"]
WIDTHS = [6, 6, 9, 12, 9, 9, 7]
PATHS = ("hand", "svi", "svi-enum", "score", "train")  # hand first: the others report their ratio to it
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__, prog="pyro-dcgmm bench")
    parser.add_argument(
        "--preset", nargs="+", default=["A", "B", "C", "E"], choices=presets.names(), help="architectures"
    )
    add_device_flag(parser)
    parser.add_argument(
        "--batch-sizes",
        type=positive_int,
        nargs="+",
        help="mini-batch sizes (default: 100 1000; --quick: 100)",
    )
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="parameter and data type")
    parser.add_argument(
        "--paths", nargs="+", default=list(PATHS), choices=PATHS, help="what to time (see above)"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 3; --quick: 1)")
    parser.add_argument(
        "--repeats", type=positive_int, help="timed blocks; the median is reported (default: 5; --quick: 3)"
    )
    parser.add_argument("--steps", type=positive_int, help="steps per timed block (default: 5; --quick: 2)")
    parser.add_argument("--input-size", type=int, default=28, help="height and width of the images")
    parser.add_argument(
        "--tf32", action="store_true", help="allow TF32 matmuls and convolutions (train: training.tf32)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="batch 100, 1 warm-up, 3 blocks of 2 steps (flags given win)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def make_step(path: str, stack: Stack, x: torch.Tensor, num_data: int):
    """A closure running one step of ``path``."""
    if path == "score":
        return lambda: stack.layer_log_probs(x, batch_size=x.shape[0])
    optimizer = torch.optim.Adam(stack.parameters(), lr=1e-4)
    elbo = make_elbo(stack, TrainConfig(objective="enumerated" if path == "svi-enum" else "closed_form"))

    def loss():
        if path == "hand":
            return stack.loss(x, num_data=num_data) / num_data
        enumerated = path == "svi-enum"
        return (
            elbo.differentiable_loss(stack.model, stack.guide, x, num_data=num_data, enumerated=enumerated)
            / num_data
        )

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return step


def measure(step, device: torch.device, warmup: int, repeats: int, steps: int) -> tuple[float, float]:
    """Median seconds per step and peak memory (MiB; the process's peak RSS on CPU)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    blocks = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        blocks.append((time.perf_counter() - start) / steps)
    return statistics.median(blocks), peak_mib(device)


def peak_mib(device: torch.device) -> float:
    """Peak memory so far in MiB: allocated on a GPU since the last reset, the process's peak RSS
    on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_training(stack: Stack, batch: int, device: torch.device, args) -> tuple[float, float]:
    """Seconds per step of ``Trainer.fit`` over one epoch of ``args.repeats * args.steps`` batches
    (after a warm-up fit of ``args.warmup`` steps), and peak memory as :func:`measure` gives it."""
    for layer in stack.mixture_layers:
        layer.mark_initialised_()  # no k-means: the loop itself is timed
    steps = args.repeats * args.steps
    images = torch.rand(batch * steps, *stack.input_shape)
    labels = None if stack.num_classes is None else torch.randint(stack.num_classes, (len(images),))
    config = TrainConfig(batch_size=batch, epochs=1, device=device.type, tf32=args.tf32, progress=False)
    cuda = device.type == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingWarning)  # short runs leave waiting layers untrained
        if args.warmup:
            Trainer(stack, dataclasses.replace(config, max_steps=args.warmup)).fit(images, labels)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        Trainer(stack, config).fit(images, labels)
        if cuda:
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, peak_mib(device)


def tf32_deviation(name: str, shape: tuple[int, int, int], device: torch.device) -> str:
    """Largest absolute change of any layer's per-image log-likelihood when TF32 is allowed."""
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get(name, shape)).to(device)
    x = torch.rand(512, *shape, device=device)
    values = []
    for allowed in (False, True):
        with float32_precision(allowed):
            values.append(stack.layer_log_probs(x))
    change = (values[1] - values[0]).abs().amax(0)
    scale = values[0].abs().amax(0)
    return ", ".join(
        f"layer {j}: {c:.3g} nats ({c / s:.2g} relative)"
        for j, (c, s) in enumerate(zip(change, scale, strict=True))
    )


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    print_header(args, device)
    results = []
    with pyro.validation_enabled(False), float32_precision(args.tf32):
        for name in args.preset:
            shape = (1, args.input_size, args.input_size)
            for batch in args.batch_sizes:
                results += measure_paths(args, name, batch, device)
            if args.tf32 and device.type == "cuda":
                print(
                    f"{name:>6} TF32 vs FP32 log-likelihood per image: {tf32_deviation(name, shape, device)}"
                )
    if args.json is not None:
        environment = run_environment(device)
        records = [row | environment for row in results]
        atomic_write(args.json, lambda h: h.write(json.dumps(records, indent=2).encode()))
    return results


def run_environment(device: torch.device) -> dict:
    """What a benchmark record needs to be compared with another: machine, versions, threads, time."""
    return {
        "device_name": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def print_header(args, device: torch.device) -> None:
    header = " ".join(f"{c:>{w}}" for c, w in zip(COLUMNS, WIDTHS, strict=True))
    env = run_environment(device)
    print(
        f"device {device} ({env['device_name']}), {args.dtype}{', tf32' if args.tf32 else ''}, "
        f"torch {env['torch']}, pyro {env['pyro']}, {env['threads']} threads"
    )
    print(header)
    print("-" * len(header))


def measure_paths(args, name: str, batch: int, device: torch.device) -> list[dict]:
    """One row per path of preset ``name`` at batch size ``batch``, each printed as it is measured."""
    shape, dtype = (1, args.input_size, args.input_size), DTYPES[args.dtype]
    timings, rows = {}, []
    for path in sorted(args.paths, key=PATHS.index):
        torch.manual_seed(0)
        stack = Stack.from_config(presets.get(name, shape)).to(device, dtype)
        if path == "train":
            seconds, peak = measure_training(stack, batch, device, args)
        else:
            x = torch.rand(batch, *shape, device=device, dtype=dtype)
            step = make_step(path, stack, x, num_data=60000)
            seconds, peak = measure(step, device, args.warmup, args.repeats, args.steps)
        timings[path] = seconds
        ratio = seconds / timings["hand"] if "hand" in timings and path != "score" else None
        rows.append(
            {"preset": name, "batch": batch, "path": path, "samples_per_second": batch / seconds,
             "ms_per_step": 1000 * seconds, "peak_mib": peak, "device": str(device), "dtype": args.dtype,
             "tf32": args.tf32, "ratio_to_hand": ratio,
             "svi_rate_fraction": timings["svi"] / seconds if path == "train" and "svi" in timings else None}
        )  # fmt: skip
        print(
            f"{name:>6} {batch:>6} {path:>9} {batch / seconds:>12,.0f} {1000 * seconds:>9.2f} "
            f"{peak:>9.0f} {'' if ratio is None else f'{ratio:.2f}':>7}",
            flush=True,
        )
    return rows
