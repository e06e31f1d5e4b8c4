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
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from pyro_dcgmm.errors import ConfigError, LayerConfigError
from pyro_dcgmm.inference.sampling import INPAINT_TOP_S, SamplingOptions, Sharpening, check_stable_pull

IntPair = int | tuple[int, int]


def bounded(default: Any, **bounds: float) -> Any:
    """A dataclass field whose value (when not ``None``) must be finite and lie within ``bounds``:
    any of ``ge``, ``gt``, ``le``, ``lt`` (>=, >, <=, <)."""
    return field(default=default, metadata={"bounds": bounds})


def nearest(key: str, valid: typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the valid name closest to ``key``, or ``""``."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _bounds_text(bounds: dict[str, float]) -> str:
    lower = [f"{'>=' if op == 'ge' else '>'} {bounds[op]:g}" for op in ("ge", "gt") if op in bounds]
    upper = [f"{'<=' if op == 'le' else '<'} {bounds[op]:g}" for op in ("le", "lt") if op in bounds]
    if lower and upper:
        left, right = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"])
        close, top = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"])
        return f"in {left}{right:g}, {top:g}{close}"
    return " and ".join(lower + upper)


def _within(value: float, bounds: dict[str, float]) -> bool:
    checks = {"ge": value >= bounds.get("ge", -math.inf), "gt": value > bounds.get("gt", -math.inf)}
    checks |= {"le": value <= bounds.get("le", math.inf), "lt": value < bounds.get("lt", math.inf)}
    return math.isfinite(value) and all(checks.values())


class Checked:
    """Base of every config dataclass: constructing one (from TOML, a dict, the estimator or plain
    Python) coerces every field to its annotation, checks its ``bounded`` range, then the rules
    between fields in :meth:`check`.  A violation raises :attr:`error` naming the field, the value
    and what is allowed."""

    section: ClassVar[str]
    error: ClassVar[type[ConfigError]] = ConfigError

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for spec in dataclasses.fields(self):
            where = f"{self.section}.{spec.name}"
            value = _coerce(getattr(self, spec.name), hints[spec.name], where, self.error)
            bounds = spec.metadata.get("bounds")
            if bounds and value is not None and not _within(value, bounds):
                finite = "" if math.isfinite(value) else "finite and "
                self.fail(f"{where} must be {finite}{_bounds_text(bounds)}, got {value!r}")
            object.__setattr__(self, spec.name, value)
        self.check()

    def check(self) -> None:
        """Rules between fields (each field on its own is already checked)."""

    def fail(self, message: str) -> typing.NoReturn:
        raise self.error(message)

    def check_pair(self, name: str, allow_none: bool = False) -> None:
        """Field ``name`` is a positive int or a pair of them (or ``None`` if allowed)."""
        value = getattr(self, name)
        pair = (value, value) if isinstance(value, int) else value
        if (value is None and not allow_none) or (value is not None and min(pair) < 1):
            self.fail(f"{self.section}.{name} must be a positive int or a pair of them, got {value!r}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclass(frozen=True)
class FoldConfig(Checked):
    """Cut the input into patches and flatten each into a vector of length ``C * ph * pw``.

    ``patch=None`` takes the whole (remaining) input as one patch.
    """

    section = "fold"
    error = LayerConfigError
    type: Literal["fold"] = field(default="fold", kw_only=True)
    patch: IntPair | None = None
    stride: IntPair = 1

    def check(self) -> None:
        self.check_pair("patch", allow_none=True)
        self.check_pair("stride")


@dataclass(frozen=True)
class MaxPoolConfig(Checked):
    """Spatial max pooling of every channel; ``stride=None`` means ``stride = kernel``."""

    section = "maxpool"
    error = LayerConfigError
    type: Literal["maxpool"] = field(default="maxpool", kw_only=True)
    kernel: IntPair = 2
    stride: IntPair | None = None

    def check(self) -> None:
        self.check_pair("kernel")
        self.check_pair("stride", allow_none=True)


@dataclass(frozen=True)
class GMMConfig(Checked):
    """A Gaussian mixture over every patch vector of its input.

    :param components: number of mixture components K.
    :param shared: one mixture for all positions (convolutional) if true, else one per position.
    :param covariance: the components' covariance structure (:mod:`pyro_dcgmm.model.covariances`):
        ``"diag"`` (independent coordinates), ``"full"`` (any covariance; for short vectors, its
        cost grows with D^2) or ``"stationary"`` (a stationary Gaussian per channel of the patch:
        constant mean, covariance diagonal in the patch's Fourier basis, set by its power spectrum).
    :param precision_floor, precision_ceiling: bounds of every precision (1 / variance; the
        eigenvalues of a full precision matrix).  The ceiling keeps densities finite on constant
        pixels; the floor keeps ``log`` finite.
    :param init: how the layer starts when it begins to train (after ``wait``), from its real
        inputs: ``"kmeans"`` (k-means++ seeds and ``init_iterations`` Lloyd iterations on
        ``init_vectors`` input vectors, then each cluster's weight and variances), ``"data"``
        (means at random input vectors, the inputs' variance) or ``"random"`` (the paper's: means
        uniform in ``[-mean_init_scale, mean_init_scale]``, every precision ``precision_init``).
    :param init_vectors: input vectors the initialisation looks at (per position when not shared).
    :param init_iterations: Lloyd iterations of the k-means initialisation.
    :param dead_weight: at the end of every epoch a component whose mixing weight is below this
        (in any of the layer's mixtures) is re-seeded or pruned, as ``dead_components`` says; 0
        switches both off.
    :param dead_components: ``"reseed"``: a dead component restarts at a random input vector with
        the inputs' spread and weight ``1 / K``; ``"prune"``: it is removed for good (weight zero,
        output zero), the mixture's heaviest component never.
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
    :param output: what the layer passes upward at every position: ``"responsibilities"`` (the
        paper's posterior over components), ``"log_responsibilities"`` (its log, floored,
        standardised over the components), ``"log_probabilities"`` (the components'
        log-densities ``log N(x | c)``, standardised over the components) or ``"likelihoods"``
        (the normalised likelihood vector ``N(x | c) / sum_c' N(x | c')``).
    :param means_lr_scale, precision_lr_scale, mixing_lr_scale: per-parameter learning-rate factors.
    :param classes: 0, or the number of classes C whose labels split the components into C equal
        groups, component k belonging to class ``k // (K / C)``: a labelled training vector is
        explained by its class's group only (mixture discriminant analysis), so ``p(class | k)`` is
        exact, class-conditional samples draw within the group, and k-means initialises and dead
        components re-seed each group from its class's vectors.  Unlabelled queries use all K.
    """

    section = "gmm"
    error = LayerConfigError
    type: Literal["gmm"] = field(default="gmm", kw_only=True)
    components: int = bounded(25, ge=1)
    shared: bool = True
    covariance: Literal["diag", "full", "stationary"] = "diag"
    precision_floor: float = bounded(0.01, gt=0)
    precision_ceiling: float = bounded(20.0, gt=0)
    init: Literal["kmeans", "data", "random"] = "kmeans"
    init_vectors: int = bounded(5000, ge=1)
    init_iterations: int = bounded(20, ge=0)
    dead_weight: float = bounded(1e-4, ge=0, lt=1)
    dead_components: Literal["reseed", "prune"] = "reseed"
    precision_init: float = bounded(10.0, gt=0)
    mean_init_scale: float = bounded(0.1, ge=0)
    annealing: bool = False
    width_init: float | None = bounded(None, gt=0)
    width_floor: float = bounded(0.01, gt=0)
    width_decay: float = bounded(0.9, gt=0, lt=1)
    plateau_window: int = bounded(100, ge=1)
    plateau_tolerance: float = bounded(0.05, ge=0)
    wait: float = bounded(0.0, ge=0, lt=1)
    output: Literal["responsibilities", "log_responsibilities", "log_probabilities", "likelihoods"] = (
        "responsibilities"
    )
    means_lr_scale: float = bounded(1.0, ge=0)
    precision_lr_scale: float = bounded(1.0, ge=0)
    mixing_lr_scale: float = bounded(1.0, ge=0)
    classes: int = bounded(0, ge=0)

    def check(self) -> None:
        if not self.precision_floor < self.precision_ceiling:
            self.fail(
                "gmm precisions need precision_floor < precision_ceiling, got "
                f"{self.precision_floor} and {self.precision_ceiling}"
            )
        if self.init == "random" and not self.precision_floor < self.precision_init < self.precision_ceiling:
            self.fail(
                "with init = 'random' gmm precisions need precision_floor < precision_init < "
                f"precision_ceiling, got {self.precision_floor}, {self.precision_init}, "
                f"{self.precision_ceiling}"
            )
        if self.covariance == "full" and self.precision_ceiling > FULL_PRECISION_RANGE * self.precision_floor:
            self.fail(
                f"gmm with covariance = 'full' needs precision_ceiling / precision_floor <= "
                f"{FULL_PRECISION_RANGE:g} (a wider range of eigenvalues is not reliably positive "
                f"definite in float32), got {self.precision_ceiling:g} / {self.precision_floor:g}"
            )
        if self.init != "random" and self.init_vectors < self.components:
            self.fail(f"gmm.init_vectors must be >= components ({self.components}), got {self.init_vectors}")
        if self.classes == 1 or (self.classes and self.components % self.classes):
            self.fail(
                f"gmm.classes must be 0 or at least 2 classes dividing components ({self.components}) "
                f"into equal groups, got {self.classes}"
            )


FULL_PRECISION_RANGE = 1e6  # float32 keeps a precision matrix positive definite up to this condition


@dataclass(frozen=True)
class ReadoutConfig(Checked):
    """Linear classifier on the (detached) output of the layer below, trained on labels."""

    section = "readout"
    error = LayerConfigError
    type: Literal["readout"] = field(default="readout", kw_only=True)
    num_classes: int = bounded(10, ge=2)
    wait: float = bounded(0.0, ge=0, lt=1)


@dataclass(frozen=True)
class TreeConfig(Checked):
    """A layer of a joint stack (:mod:`pyro_dcgmm.model.joint`): at each of its positions a component
    ``z`` whose children are the components of a block of positions of the layer below, with
    ``p(z_child = k | z = j) = A[offset, j, k]``.

    :param components: number of components J.
    :param block: (height, width) of the block of positions below that one position covers, an int
        for a square, or ``"full"`` for all of them (one position: the top of the tree).  Blocks tile
        the grid below from its top-left corner; blocks at the bottom and right edges may be cut
        short (a block larger than the grid is cut to it), and their missing children are simply
        absent.
    :param shared: one transition table for all positions (convolutional) if true, else one per
        position.
    :param probability_floor: every transition probability and mixing weight is kept at or above
        this (EM's counts are floored there before normalising), so that no child component becomes
        impossible and the closed form's matrix products never underflow.
    :param init_vectors: block vectors (children's posteriors) that the k-means initialisation
        looks at (per position when not shared).
    :param init_iterations: Lloyd iterations of that k-means.
    :param wait: fraction of training before this layer joins the tree (is initialised and
        becomes its root); the layers below train as the tree's top until then.
    :param classes: 0, or the number of classes C whose labels split the top layer's components
        into C equal groups (component j belongs to class ``j // (J / C)``): labelled images are
        explained by their class's components only, which makes the stack a class-conditional
        density and a generative classifier.  Only the top layer may be split.
    """

    section = "tree"
    error = LayerConfigError
    type: Literal["tree"] = field(default="tree", kw_only=True)
    components: int = bounded(32, ge=1)
    block: IntPair | Literal["full"] = 2
    shared: bool = True
    probability_floor: float = bounded(1e-6, gt=0, lt=1)
    init_vectors: int = bounded(5000, ge=1)
    init_iterations: int = bounded(20, ge=0)
    wait: float = bounded(0.0, ge=0, lt=1)
    classes: int = bounded(0, ge=0)

    def check(self) -> None:
        if self.block != "full":
            self.check_pair("block")
        if self.probability_floor * self.components >= 1:
            self.fail(
                f"tree.probability_floor times components must be below 1 (the mixing weights sum to 1), "
                f"got {self.probability_floor:g} * {self.components}"
            )
        if self.init_vectors < self.components:
            self.fail(f"tree.init_vectors must be >= components ({self.components}), got {self.init_vectors}")
        if self.classes == 1 or (self.classes and self.components % self.classes):
            self.fail(
                f"tree.classes must be 0 or at least 2 classes dividing components ({self.components}) "
                f"into equal groups, got {self.classes}"
            )


LayerConfig = FoldConfig | MaxPoolConfig | GMMConfig | ReadoutConfig | TreeConfig
LAYER_CONFIGS: dict[str, type] = {
    "fold": FoldConfig,
    "maxpool": MaxPoolConfig,
    "gmm": GMMConfig,
    "readout": ReadoutConfig,
    "tree": TreeConfig,
}


@dataclass(frozen=True)
class ModelConfig(Checked):
    """A layer stack: a preset name or an explicit list of layers, and the input shape (C, H, W).

    ``input_shape=None`` takes the shape of the data set.  ``data_range`` is the interval inputs
    must lie in (images scaled to [0, 1] by default; ``[-inf, inf]`` for unbounded data).
    """

    section = "model"
    preset: str | None = None
    input_shape: tuple[int, int, int] | None = None
    layers: tuple[LayerConfig, ...] = ()
    data_range: tuple[float, float] = (0.0, 1.0)

    def check(self) -> None:
        if self.input_shape is not None and min(self.input_shape) < 1:
            self.fail(f"model.input_shape must be 3 positive ints (C, H, W), got {self.input_shape}")
        low, high = self.data_range
        if not low < high:  # False for NaN too; infinite ends mean no bound
            self.fail(
                f"model.data_range must be two numbers, low < high (infinite ends: no bound), got "
                f"{self.data_range}"
            )


@dataclass(frozen=True)
class TrainConfig(Checked):
    """How :func:`pyro_dcgmm.training.trainer.train` optimises a stack.

    :param epochs: passes over the training set.
    :param batch_size: mini-batch size; the ELBO is scaled by ``num_data / batch_size``.
    :param optimizer: ``"em"`` (default: online EM on the GMM layers, :mod:`pyro_dcgmm.training.em`, and
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
    :param validate_args: keep Pyro's checks of distribution arguments on (slower).
    :param keep_epoch_checkpoints: also keep ``epoch-XXXX.pt`` for every epoch, not only the latest.
    :param progress: show a tqdm progress bar.
    :param dequantize_levels: dequantise every mini-batch of data on this many levels (256: 8-bit
        images), as density models are trained and scored; ``None``: train on the data as they are.
    :param joint_refinement: for a joint stack, keep training every layer of the tree grown so far
        (true: the whole tree is refined jointly) or only its top (false: greedy layer-by-layer
        training, each layer left as it was when the one above joined).
    """

    section = "training"
    epochs: int = bounded(10, ge=1)
    batch_size: int = bounded(100, ge=1)
    optimizer: Literal["em", "adam", "sgd"] = "em"
    lr: float = bounded(0.01, gt=0)
    momentum: float = bounded(0.0, ge=0)
    em_step_offset: float = bounded(2.0, gt=0)
    em_step_decay: float = bounded(0.6, ge=0, le=1)
    objective: Literal["closed_form", "enumerated"] = "closed_form"
    seed: int = bounded(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps: int | None = bounded(None, ge=1)
    non_finite: Literal["raise", "skip"] = "raise"
    max_skipped_steps: int = bounded(10, ge=0)
    log_every: int = bounded(20, ge=1)
    eval_batch_size: int = bounded(1000, ge=1)
    validate_args: bool = False
    keep_epoch_checkpoints: bool = False
    progress: bool = True
    dequantize_levels: int | None = bounded(None, ge=2)
    joint_refinement: bool = True


@dataclass(frozen=True)
class DataConfig(Checked):
    """Which data set to train on.

    :param dataset: ``"digits"`` (scikit-learn, 8x8, embedded), ``"fashion-mnist"``, ``"mnist"`` or
        ``"natural-patches"`` (zero-meaned grey patches of scikit-learn's sample photographs, split
        by image region; :mod:`pyro_dcgmm.data.patches`).
    :param patch_size: side of the natural-image patches.
    :param root: folder with IDX files (``None``: the data set's default location).
    :param download: allow downloading MNIST into ``root`` when the files are missing.
    :param classes: keep only these labels (``None``: all).
    :param dequantize: add uniform noise of one quantisation step to every training batch.
    :param validation_fraction: part of the training set held out for evaluation during training.
    :param train_limit: train on a random subset of this many training images, drawn with the
        training seed (``None``: all).
    """

    section = "data"
    dataset: Literal["digits", "fashion-mnist", "mnist", "natural-patches"] = "digits"
    patch_size: int = bounded(16, ge=2)
    root: str | None = None
    download: bool = False
    classes: tuple[int, ...] | None = None
    dequantize: bool = False
    validation_fraction: float = bounded(0.1, ge=0, lt=1)
    train_limit: int | None = bounded(None, ge=2)

    def check(self) -> None:
        if self.classes is not None and (not self.classes or min(self.classes) < 0):
            self.fail(f"data.classes must be a non-empty list of labels >= 0, got {self.classes}")


@dataclass(frozen=True)
class SamplingConfig(Checked):
    """How ``pyro-dcgmm sample`` samples a trained model, stored with it (the run's ``[sampling]``).

    The defaults were chosen for 28x28 Fashion-MNIST stacks on a validation split by the measures
    of :mod:`pyro_dcgmm.evaluation.sample_quality` (``docs/figures/fashion-mnist-E-samples/``); the shipped
    ``digits`` config sets its own sharpening (``docs/figures/digits-main-job/``).

    :param top_s: components kept per position below the top layer (the paper's S).
    Its defaults are the library's (:mod:`pyro_dcgmm.inference.sampling`): a stack samples by
    default exactly as this command does.

    :param divisor: every component's standard deviations are divided by this; absent: the
        formulation's own (``DEFAULT_DIVISORS``: 10 for a layerwise stack; 2 for a joint stack,
        whose exact draws carry their leaves' noise, chosen on preset J's validation split, where it
        brought sample sharpness to 1.01 of real images', from 1.32 at 1 and 0.93 at 3).
    :param pool_mode: ``"dense"`` or ``"sparse"`` unpooling.
    :param sharpen_target: ``"next"`` (the GMM layer that reads the sharpened step, as in the
        paper) or the GMM layer whose log-likelihood sharpening climbs (the top one in a stack with
        fewer GMM layers).  Climbing layer 1 with rate 1e-4 and no pull raises the mean gradient
        magnitude of preset E samples from 0.58 to 0.74 of real images' but draws vertical stripes,
        so it is not the default.
    :param sharpen_rate, sharpen_iterations, sharpen_pull: gradient sharpening
        (:class:`~pyro_dcgmm.inference.sampling.Sharpening`): step size, steps, pull toward the plain sample;
        ``sharpen_rate * sharpen_pull`` must be below 1.
    :param variant_layer: GMM layer the variants start from (``None``: the one below the top, the
        top one if alone).
    :param inpaint_layer: GMM layer the in-paintings are drawn from.
    :param inpaint_top_s: components kept per position below it when in-painting: 10 brought the
        mean of 64 in-paintings (the conditional mean) closer to the missing half than 3 did, on
        validation images of preset E on Fashion-MNIST (error 0.0461 against 0.0470) and of the
        ``digits`` config (0.0494 against 0.0511); samples and variants keep ``top_s``.
    """

    section = "sampling"
    top_s: int = bounded(SamplingOptions.top_s, ge=1)
    divisor: float | None = bounded(SamplingOptions.divisor, gt=0)
    pool_mode: Literal["dense", "sparse"] = SamplingOptions.pool_mode
    sharpen_target: int | Literal["next"] = Sharpening.target
    sharpen_rate: float = bounded(Sharpening.rate, gt=0)
    sharpen_iterations: int = bounded(Sharpening.iterations, ge=0)
    sharpen_pull: float = bounded(Sharpening.pull, ge=0)
    variant_layer: int | None = None
    inpaint_layer: int = -1
    inpaint_top_s: int = bounded(INPAINT_TOP_S, ge=1)

    def check(self) -> None:
        if self.sharpen_target != "next" and self.sharpen_target < 0:
            self.fail(
                f"sampling.sharpen_target must be a GMM layer index >= 0 or 'next', got {self.sharpen_target}"
            )
        check_stable_pull(self.sharpen_rate, self.sharpen_pull, "sampling.sharpen_rate and sharpen_pull")


@dataclass(frozen=True)
class RunConfig(Checked):
    """Everything ``scripts/train_svi.py`` needs, and how to sample the trained model."""

    section = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


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


def _coerce(value: Any, annotation: Any, where: str, error: type[ConfigError] = ConfigError) -> Any:
    """Check ``value`` against a type annotation and return it in canonical form."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation == LayerConfig:
        return layer_from_dict(value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where, error)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in args:
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and (args[-1] is Ellipsis or len(value) == len(args)):
            item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
            items = zip(value, item_types, strict=True)
            return tuple(_coerce(v, t, f"{where}[{i}]", error) for i, (v, t) in enumerate(items))
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
    elif origin is None and dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    raise error(f"{where}: expected {_type_name(annotation)}, got {value!r}")


def layer_from_dict(data: Any, where: str = "layer") -> LayerConfig:
    """Build the layer config named by ``data["type"]``."""
    if isinstance(data, tuple(LAYER_CONFIGS.values())):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table with a 'type' key, got {data!r}")
    kind = data.get("type")
    if kind not in LAYER_CONFIGS:
        hint = nearest(str(kind), LAYER_CONFIGS) if kind is not None else ""
        raise ConfigError(
            f"{where}.type: unknown layer type {kind!r}; valid types are {', '.join(LAYER_CONFIGS)}{hint}"
        )
    return from_dict(LAYER_CONFIGS[kind], data, where)


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys, wrong types and values out
    of range; every message starts with ``where`` and the key."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{nearest(key, names)}")
    values = {key: _coerce(value, hints[key], f"{where}.{key}", cls.error) for key, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as error:
        raise type(error)(f"{where}: {error}") from None


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


SHIPPED_CONFIGS = Path(__file__).parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the configurations installed with the package (``digits``: the embedded demo)."""
    return sorted(path.stem for path in SHIPPED_CONFIGS.glob("*.toml"))


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML run configuration (sections ``model``, ``training``, ``data``): a file, or the
    name of a configuration shipped with the package (:func:`shipped_configs`)."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and path.name in shipped_configs():
        path = SHIPPED_CONFIGS / f"{path.name}.toml"
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text, so not TOML") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    return from_dict(RunConfig, data, where=path.name)
