"""The configuration of a run: model, training, data and sampling, and the TOML loader."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from pyro_dcgmm.config.checked import Checked, bounded, from_dict, nearest
from pyro_dcgmm.config.layers import LayerConfig
from pyro_dcgmm.data.own import is_own_data
from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.inference.sampling import INPAINT_TOP_S, SamplingOptions, Sharpening, check_stable_pull


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
    :param batch_size: mini-batch size (the ELBO is scaled by ``num_data / batch_size``), or
        ``"auto"``: the size :data:`AUTO_BATCH_SIZES` gives the training device (100 on a CPU, where
        larger batches are no faster per sample; 1024 on a GPU).  With online EM the step sizes follow
        the batch size (``em_reference_batch``).
    :param optimizer: ``"em"`` (default: online EM on the GMM layers, :mod:`pyro_dcgmm.training.em`, and
        Adam on a Readout), ``"adam"`` or ``"sgd"`` (plain SGD as in the paper).
    :param lr: learning rate of Adam and SGD (with ``"em"``: of the Readout only, for batches of
        ``em_reference_batch``, scaled by the square root of ``batch_size / em_reference_batch`` at
        other sizes).  For SGD the rate of a shared GMM layer is divided by its number of
        positions, which reproduces the paper's per-position mean loss.
    :param em_step_offset, em_step_decay: online EM's step sizes ``(t + offset)^-decay`` for
        mini-batches of ``em_reference_batch`` samples.
    :param em_reference_batch: the batch size that schedule (and the Readout's ``lr``) is set for;
        on other batch sizes a step forgets as much as the reference steps over the same number of
        samples (:func:`~pyro_dcgmm.training.em.step_size`), so a larger batch does not slow
        learning down, and the Readout's rate follows the square root of the batch
        (:func:`~pyro_dcgmm.training.optim.readout_rate`).
    :param momentum: SGD momentum.
    :param objective: ``"closed_form"`` trains the model with every component marginalised in a
        closed-form factor, ``"enumerated"`` with Pyro enumerating the component sites; both give
        ``TraceEnum_ELBO`` identical losses and gradients, the closed form is faster.
    :param seed: seeds parameter initialisation, shuffling and dequantisation noise.
    :param device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    :param tf32: let CUDA's float32 matmuls and convolutions run on TF32 tensor cores during
        training (:func:`~pyro_dcgmm.device.float32_precision`); off, the default, they run in full
        float32, whose log-likelihoods match the CPU's (TF32 moves them by nats per image).
    :param max_steps: stop after this many optimiser steps (``None``: run all epochs).  Schedules
        (``wait``) stay planned over ``epochs``, so a run stopped this way and resumed from its
        checkpoint ends exactly where an uninterrupted run does.
    :param non_finite: on a step whose loss or gradient is NaN or infinite, ``"raise"``
        :class:`~pyro_dcgmm.errors.NonFiniteLossError` naming the layer and step, or ``"skip"`` the
        step (the parameters keep their last good values) and go on.
    :param max_skipped_steps: with ``"skip"``, raise after this many bad steps in a row.
    :param check_every: steps whose losses the host reads and checks at once
        (:mod:`pyro_dcgmm.training.window`): the steps in between run without waiting for the
        device, and a window with a non-finite step is rewound and taken again step by step, so
        that skipping and raising act on exactly the step they would at 1 (every step checked; also
        what a layer that anneals gets, its schedule reading every step's loss).
    :param log_every: steps between JSON-lines log records and progress-bar updates.
    :param eval_batch_size: batch size for held-out evaluation.
    :param validate_args: keep Pyro's checks of distribution arguments on (slower).
    :param keep_epoch_checkpoints: also keep ``epoch-XXXX.pt`` for every epoch, not only the latest.
    :param progress: show a tqdm progress bar.
    :param dequantize_levels: dequantise every mini-batch of data on this many levels (256: 8-bit
        images), as density models are trained and scored; ``None``: train on the data as they are.
    :param data_placement: where the training set lives (:mod:`pyro_dcgmm.training.batches`):
        ``"device"`` (copied to the device once, batches gathered there), ``"host"`` (streamed to
        the device batch by batch, the next copy overlapping the current step) or ``"auto"``
        (``"device"`` when it takes at most half the device's free memory).
    :param joint_refinement: for a joint stack, keep training every layer of the tree grown so far
        (true: the whole tree is refined jointly) or only its top (false: greedy layer-by-layer
        training, each layer left as it was when the one above joined).
    """

    section = "training"
    epochs: int = bounded(10, ge=1)
    batch_size: int | Literal["auto"] = bounded("auto", ge=1)
    optimizer: Literal["em", "adam", "sgd"] = "em"
    lr: float = bounded(0.01, gt=0)
    momentum: float = bounded(0.0, ge=0)
    em_step_offset: float = bounded(2.0, gt=0)
    em_step_decay: float = bounded(0.6, ge=0, le=1)
    em_reference_batch: int = bounded(100, ge=1)
    objective: Literal["closed_form", "enumerated"] = "closed_form"
    seed: int = bounded(0, ge=0, le=2**63 - 1)  # what torch's generators take
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tf32: bool = False
    max_steps: int | None = bounded(None, ge=1)
    non_finite: Literal["raise", "skip"] = "raise"
    max_skipped_steps: int = bounded(10, ge=0)
    check_every: int = bounded(10, ge=1)
    log_every: int = bounded(20, ge=1)
    eval_batch_size: int = bounded(1000, ge=1)
    validate_args: bool = False
    keep_epoch_checkpoints: bool = False
    progress: bool = True
    dequantize_levels: int | None = bounded(None, ge=2)
    joint_refinement: bool = True
    data_placement: Literal["auto", "device", "host"] = "auto"

    def for_device(self, device_type: str) -> TrainConfig:
        """This config with ``batch_size = "auto"`` resolved for a device of ``device_type``."""
        if self.batch_size != "auto":
            return self
        return dataclasses.replace(
            self, batch_size=AUTO_BATCH_SIZES.get(device_type, AUTO_BATCH_SIZES["cpu"])
        )


# batch_size = "auto" by device type: on 2 CPU cores batch 1000 trains preset E no faster per sample
# than batch 100; on a GPU throughput grows with the batch up to thousands, and 1024 is the largest
# batch whose Readout kept batch 100's validation accuracy (2048 lost 0.012; docs/figures/batch-size/)
AUTO_BATCH_SIZES = {"cpu": 100, "cuda": 1024}


NAMED_DATASETS = ("digits", "fashion-mnist", "mnist", "natural-patches")


@dataclass(frozen=True)
class DataConfig(Checked):
    """Which data set to train on.

    :param dataset: ``"digits"`` (scikit-learn, 8x8, embedded), ``"fashion-mnist"``, ``"mnist"``,
        ``"natural-patches"`` (zero-meaned grey patches of scikit-learn's sample photographs, split
        by image region; :mod:`pyro_dcgmm.data.patches`), or your own images: the path of a ``.npy``
        or ``.npz`` file or of a folder of image files (:mod:`pyro_dcgmm.data.own`).
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
    dataset: str = "digits"
    patch_size: int = bounded(16, ge=2)
    root: str | None = None
    download: bool = False
    classes: tuple[int, ...] | None = None
    dequantize: bool = False
    validation_fraction: float = bounded(0.1, ge=0, lt=1)
    train_limit: int | None = bounded(None, ge=2)

    def check(self) -> None:
        if self.dataset not in NAMED_DATASETS and not is_own_data(self.dataset):
            hint = nearest(self.dataset, NAMED_DATASETS)
            self.fail(
                f"data.dataset must be one of {', '.join(NAMED_DATASETS)}, or your own data: a .npy or "
                f".npz file or a folder of images; got {self.dataset!r}{hint}"
            )
        if self.classes is not None and (len(set(self.classes)) < 2 or min(self.classes) < 0):
            self.fail(f"data.classes must be two or more different labels >= 0, got {list(self.classes)}")


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


SHIPPED_CONFIGS = Path(__file__).parent.parent / "configs"


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
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is allowed
    except FileNotFoundError:
        shipped = ", ".join(shipped_configs())
        hint = nearest(path.name, shipped_configs()) if path.suffix == "" else ""
        raise ConfigError(
            f"config file {str(path)!r} does not exist; the shipped configurations are {shipped}{hint}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text, so not TOML") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    return from_dict(RunConfig, data, where=path.name)
