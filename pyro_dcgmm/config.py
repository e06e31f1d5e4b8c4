"""Configuration dataclasses and their TOML loader.

A run is described by a :class:`RunConfig` holding a :class:`ModelConfig` (the layer stack),
a :class:`TrainConfig` and a :class:`DataConfig`.  Every layer type has its own dataclass, which is
also the single source of that layer's defaults: the layer classes store their config.

Loading is strict: an unknown or mistyped key raises :class:`~pyro_dcgmm.errors.ConfigError` naming
the key, where it was found and the nearest valid key; a value of the wrong type names the expected
type.  Example TOML::

    [model]
    input_shape = [1, 28, 28]

    [[model.layers]]
    type = "fold"
    patch = 3
    stride = 1

    [[model.layers]]
    type = "gmm"
    components = 25

    [training]
    epochs = 3
    batch_size = 100
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from pyro_dcgmm.errors import ConfigError

IntPair = int | tuple[int, int]


@dataclass(frozen=True)
class FoldConfig:
    """Cut the input into patches and flatten each into a vector of length ``C * ph * pw``.

    ``patch=None`` takes the whole (remaining) input as one patch.
    """

    type: Literal["fold"] = "fold"
    patch: IntPair | None = None
    stride: IntPair = 1


@dataclass(frozen=True)
class MaxPoolConfig:
    """Spatial max pooling of every channel; ``stride=None`` means ``stride = kernel``."""

    type: Literal["maxpool"] = "maxpool"
    kernel: IntPair = 2
    stride: IntPair | None = None


@dataclass(frozen=True)
class GMMConfig:
    """A diagonal Gaussian mixture over every patch vector of its input.

    :param components: number of mixture components K.
    :param shared: one mixture for all positions (convolutional) if true, else one per position.
    :param precision_floor, precision_ceiling: bounds of every diagonal precision (1 / variance).
        The ceiling keeps densities finite on constant pixels; the floor keeps ``log`` finite.
    :param init: how the layer starts when it begins to train (after ``wait``), from its real
        inputs: ``"kmeans"`` (k-means++ seeds and ``init_iterations`` Lloyd iterations on
        ``init_vectors`` input vectors, then each cluster's weight and variances), ``"data"``
        (means at random input vectors, the inputs' variance) or ``"random"`` (the paper's: means
        uniform in ``[-mean_init_scale, mean_init_scale]``, every precision ``precision_init``).
    :param init_vectors: input vectors the initialisation looks at (per position when not shared).
    :param init_iterations: Lloyd iterations of the k-means initialisation.
    :param dead_weight: at the end of every epoch a component whose mixing weight is below this
        (in any of the layer's mixtures) is re-seeded at a random input vector with the inputs'
        variance and weight ``1 / K``; 0 switches re-seeding off.
    :param precision_init: initial value of every precision with ``init = "random"``.
    :param mean_init_scale: with ``init = "random"``, means start uniform in ``[-scale, scale]``
        (the paper's ``muInit``).
    :param annealing: train with the shrinking grid neighbourhood (needed with ``init = "random"``).
    :param width_init: initial neighbourhood width; ``None`` gives the paper's ``0.25 * sqrt(2K)``.
    :param width_floor: width at which the neighbourhood is the identity and the loss is exact.
    :param width_decay: factor applied to the width at each loss plateau.
    :param plateau_window: iterations per plateau test.
    :param plateau_tolerance: relative improvement below which the loss counts as a plateau.
    :param wait: fraction of training during which this layer stays frozen.
    :param output: what the layer passes upward: ``"responsibilities"`` (the paper's) or
        ``"log_responsibilities"`` (floored, standardised over components at every position).
    :param means_lr_scale, precision_lr_scale, mixing_lr_scale: per-parameter learning-rate factors.
    """

    type: Literal["gmm"] = "gmm"
    components: int = 25
    shared: bool = True
    precision_floor: float = 0.01
    precision_ceiling: float = 20.0
    init: Literal["kmeans", "data", "random"] = "kmeans"
    init_vectors: int = 5000
    init_iterations: int = 20
    dead_weight: float = 1e-4
    precision_init: float = 10.0
    mean_init_scale: float = 0.1
    annealing: bool = False
    width_init: float | None = None
    width_floor: float = 0.01
    width_decay: float = 0.9
    plateau_window: int = 100
    plateau_tolerance: float = 0.05
    wait: float = 0.0
    output: Literal["responsibilities", "log_responsibilities"] = "responsibilities"
    means_lr_scale: float = 1.0
    precision_lr_scale: float = 1.0
    mixing_lr_scale: float = 1.0


@dataclass(frozen=True)
class ReadoutConfig:
    """Linear classifier on the (detached) output of the layer below, trained on labels."""

    type: Literal["readout"] = "readout"
    num_classes: int = 10
    wait: float = 0.0


LayerConfig = FoldConfig | MaxPoolConfig | GMMConfig | ReadoutConfig
LAYER_CONFIGS: dict[str, type] = {
    "fold": FoldConfig,
    "maxpool": MaxPoolConfig,
    "gmm": GMMConfig,
    "readout": ReadoutConfig,
}


@dataclass(frozen=True)
class ModelConfig:
    """A layer stack: a preset name or an explicit list of layers, and the input shape (C, H, W).

    ``input_shape=None`` takes the shape of the data set.  ``data_range`` is the interval inputs
    must lie in (images scaled to [0, 1] by default).
    """

    preset: str | None = None
    input_shape: tuple[int, int, int] | None = None
    layers: tuple[LayerConfig, ...] = ()
    data_range: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`pyro_dcgmm.train.train` optimises a stack.

    :param epochs: passes over the training set.
    :param batch_size: mini-batch size; the ELBO is scaled by ``num_data / batch_size``.
    :param optimizer: ``"em"`` (default: online EM on the GMM layers, :mod:`pyro_dcgmm.em`, and
        Adam on a Readout), ``"adam"`` or ``"sgd"`` (plain SGD as in the paper).
    :param lr: learning rate of Adam and SGD (with ``"em"``: of the Readout only).  For SGD the
        rate of a shared GMM layer is divided by its number of positions, which reproduces the
        paper's per-position mean loss.
    :param em_step_offset, em_step_decay: online EM's step sizes ``(t + offset)^-decay``.
    :param momentum: SGD momentum.
    :param objective: ``"closed_form"`` trains the model with every component marginalised in a
        closed-form factor, ``"enumerated"`` with Pyro enumerating the component sites; both give
        ``TraceEnum_ELBO`` identical losses and gradients, the closed form is faster.
    :param seed: seeds parameter initialisation, shuffling and dequantisation noise.
    :param device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    :param max_steps: stop after this many optimiser steps (``None``: run all epochs).  Schedules
        (``wait``) stay planned over ``epochs``, so a run stopped this way and resumed from its
        checkpoint ends exactly where an uninterrupted run does.
    :param non_finite: on a step whose loss or gradient is NaN or infinite, ``"raise"``
        :class:`~pyro_dcgmm.errors.NonFiniteLossError` naming the layer and step, or ``"skip"`` the
        step (the parameters keep their last good values) and go on.
    :param max_skipped_steps: with ``"skip"``, raise after this many bad steps in a row.
    :param log_every: steps between JSON-lines log records and progress-bar updates.
    :param eval_batch_size: batch size for held-out evaluation.
    :param validate: keep Pyro's distribution argument validation on (slower).
    :param keep_epoch_checkpoints: also keep ``epoch-XXXX.pt`` for every epoch, not only the latest.
    :param progress: show a tqdm progress bar.
    """

    epochs: int = 1
    batch_size: int = 100
    optimizer: Literal["em", "adam", "sgd"] = "em"
    lr: float = 0.01
    momentum: float = 0.0
    em_step_offset: float = 2.0
    em_step_decay: float = 0.6
    objective: Literal["closed_form", "enumerated"] = "closed_form"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps: int | None = None
    non_finite: Literal["raise", "skip"] = "raise"
    max_skipped_steps: int = 10
    log_every: int = 20
    eval_batch_size: int = 1000
    validate: bool = False
    keep_epoch_checkpoints: bool = False
    progress: bool = True


@dataclass(frozen=True)
class DataConfig:
    """Which data set to train on.

    :param dataset: ``"digits"`` (scikit-learn, 8x8, embedded), ``"fashion-mnist"`` or ``"mnist"``.
    :param root: folder with IDX files (``None``: the data set's default location).
    :param download: allow downloading MNIST into ``root`` when the files are missing.
    :param classes: keep only these labels (``None``: all).
    :param dequantize: add uniform noise of one quantisation step to every training batch.
    :param validation_fraction: part of the training set held out for evaluation during training.
    :param train_limit: use at most this many training images (``None``: all).
    """

    dataset: Literal["digits", "fashion-mnist", "mnist"] = "digits"
    root: str | None = None
    download: bool = False
    classes: tuple[int, ...] | None = None
    dequantize: bool = False
    validation_fraction: float = 0.1
    train_limit: int | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything ``scripts/train_svi.py`` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


def _nearest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is tuple:
        args = typing.get_args(annotation)
        inner = f"{_type_name(args[0])}s" if args[-1] is Ellipsis else f"{len(args)} ints"
        return f"a list of {inner}"
    if annotation is type(None):
        return "absent"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a type annotation and return it in canonical form."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in args:
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and (args[-1] is Ellipsis or len(value) == len(args)):
            item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
            return tuple(_coerce(v, t, where) for v, t in zip(value, item_types, strict=True))
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(annotation) is None and dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    raise ConfigError(f"{where}: expected {_type_name(annotation)}, got {value!r}")


def layer_from_dict(data: Any, where: str = "layer") -> LayerConfig:
    """Build the layer config named by ``data["type"]``."""
    if isinstance(data, (FoldConfig, MaxPoolConfig, GMMConfig, ReadoutConfig)):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table with a 'type' key, got {data!r}")
    kind = data.get("type")
    if kind not in LAYER_CONFIGS:
        hint = _nearest(str(kind), LAYER_CONFIGS) if kind is not None else ""
        raise ConfigError(
            f"{where}.type: unknown layer type {kind!r}; valid types are {', '.join(LAYER_CONFIGS)}{hint}"
        )
    return from_dict(LAYER_CONFIGS[kind], data, where)


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{_nearest(key, names)}")
        if key == "layers" and cls is ModelConfig:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.layers: expected a list of layer tables")
            values[key] = tuple(layer_from_dict(item, f"{where}.layers[{i}]") for i, item in enumerate(value))
        else:
            values[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**values)


def to_dict(config: Any) -> Any:
    """A plain-data (JSON and TOML friendly) copy of a config dataclass; ``None`` fields dropped."""
    if dataclasses.is_dataclass(config):
        return {
            f.name: to_dict(getattr(config, f.name))
            for f in dataclasses.fields(config)
            if getattr(config, f.name) is not None
        }
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML run configuration (sections ``model``, ``training``, ``data``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    return from_dict(RunConfig, data, where=path.name)
