"""The paper's architectures A-G and a small one for 8x8 digits, as :class:`ModelConfig` objects.

Layer strings below read ``F<patch>/<stride>`` (Fold), ``G<K>`` (GMM; ``G<K>c`` splits its K
components by class, ``GMMConfig.classes``), ``P<kernel>/<stride>`` (MaxPool), ``R`` (Readout),
``T<J>/<block>`` (a Tree layer of a joint stack over blocks of ``block`` x ``block`` positions;
``T<J>/full`` over all of them, ``T<J>c/...`` split by class); ``Ffull`` folds whatever remains into
one patch, which is how the architectures adapt to inputs other than 28x28.  As in the reference's
configuration files every GMM layer is shared (convolutional) and upper layers wait (stay frozen)
for 10% of training per level, so the layers below settle first; each is then initialised by
k-means on its real inputs.  Unlike the reference, every GMM layer below the top passes its
standardised log-responsibilities upward (responsibilities are one-hot in practice and hide the
runner-up components), and the GMM layers above the first model them with a variance floor of 0.1
(``precision_ceiling = 10``; 1 for ``digits``); both were chosen on validation splits
(``docs/figures/training-quality/README.md``).

===== =========================================================
A     Ffull - G25 - R
B     F8/2 - G49 - Ffull - G36 - R
C     F8/1 - G25 - P2/2 - Ffull - G36 - R
D     F3/1 - G25 - P2/2 - F4/1 - G25 - P2/2 - Ffull - G25 - R
E     F3/1 - G25 - F4/2 - G25 - Ffull - G25 - R
EC    F3/1 - G25 - F4/2 - G25 - Ffull - G30c - R  (E with 3 top components per class)
F     F3/1 - G25 - F4/2 - G25 - F4/2 - G25 - Ffull - G25 - R
G     F3/1 - G25 - P2/2 - F3/1 - G25 - P2/2 - F3/1 - G25 - P2/2 - Ffull - G25 - R
digits F4/2 - G100 - Ffull - G25 - R  (for 8x8 inputs)
===== =========================================================

The joint presets (:class:`~pyro_dcgmm.model.joint.JointStack`: one mixture over the pixels) have leaves of
full-covariance components, one mixture per position, with precisions in [1, 1e6] (a variance floor
below the dequantisation noise of 8-bit images), and Tree layers with transitions per position
that join the tree 10% of training apart:

======= =========================================================
J       F4/4 - G32 - T128/2 - T128/2 - T256/full
JC      F4/4 - G32 - T128/2 - T128/2 - T250c/full  (J with 25 top components per class)
Jdigits F2/2 - G16 - T64/2 - T128/full  (for 8x8 inputs; leaf precisions up to 30)
JCdigits F2/2 - G16 - T64/2 - T130c/full  (Jdigits with 13 top components per class)
======= =========================================================
"""

from __future__ import annotations

import dataclasses

from pyro_dcgmm.config import (
    FoldConfig,
    GMMConfig,
    MaxPoolConfig,
    ModelConfig,
    ReadoutConfig,
    TreeConfig,
    nearest,
)
from pyro_dcgmm.errors import ConfigError

ARCHITECTURES = {
    "A": "Ffull G25 R",
    "B": "F8/2 G49 Ffull G36 R",
    "C": "F8/1 G25 P2/2 Ffull G36 R",
    "D": "F3/1 G25 P2/2 F4/1 G25 P2/2 Ffull G25 R",
    "E": "F3/1 G25 F4/2 G25 Ffull G25 R",
    "EC": "F3/1 G25 F4/2 G25 Ffull G30c R",
    "F": "F3/1 G25 F4/2 G25 F4/2 G25 Ffull G25 R",
    "G": "F3/1 G25 P2/2 F3/1 G25 P2/2 F3/1 G25 P2/2 Ffull G25 R",
    "digits": "F4/2 G100 Ffull G25 R",
    "Jdigits": "F2/2 G16 T64/2 T128/full",
    "JCdigits": "F2/2 G16 T64/2 T130c/full",
    "J": "F4/4 G32 T128/2 T128/2 T256/full",
    "JC": "F4/4 G32 T128/2 T128/2 T250c/full",
}
JOINT_LEAVES = {"shared": False, "covariance": "full", "precision_floor": 1.0, "precision_ceiling": 1e6}
LEAF_PRECISION_CEILING = {"Jdigits": 30.0, "JCdigits": 30.0}  # raw 17-level digits; validation split
WAIT_PER_LEVEL = 0.1
UPPER_PRECISION_CEILING = {"digits": 1.0}  # per preset, chosen on validation splits
DEFAULT_UPPER_PRECISION_CEILING = 10.0


def names() -> list[str]:
    """Names of all presets."""
    return list(ARCHITECTURES)


def parse_architecture(
    text: str,
    num_classes: int = 10,
    upper_precision_ceiling: float = DEFAULT_UPPER_PRECISION_CEILING,
    **gmm_options,
) -> tuple:
    """Layer configs from a string such as ``"F3/1 G25 P2/2 Ffull G25 R"``.

    ``gmm_options`` are passed to every GMM layer and win over the string and the defaults (e.g.
    ``shared=False`` or ``components=49``).  The GMM of a joint stack (a string with ``T`` layers)
    starts from :data:`JOINT_LEAVES`.
    """
    tokens = text.split()
    joint = any(token.startswith("T") for token in tokens)
    gmm_options = {**JOINT_LEAVES, **gmm_options} if joint else gmm_options
    top_gmm = max(i for i, token in enumerate(tokens) if token.startswith("G"))
    layers, level = [], 0
    for position, token in enumerate(tokens):
        kind, spec = token[0], token[1:]
        options = {"level": level, "num_classes": num_classes}
        if kind == "G":
            options |= {"upper_ceiling": upper_precision_ceiling, "below_top": position < top_gmm}
            options["gmm_options"] = gmm_options
        if kind not in TOKENS:
            raise ConfigError(f"unknown layer token {token!r} in architecture {text!r}")
        layers.append(TOKENS[kind](spec, **options))
        level += kind in "GT"
    return tuple(layers)


def _fold(spec: str, **_) -> FoldConfig:
    if spec == "full":
        return FoldConfig(patch=None, stride=1)
    patch, stride = spec.split("/")
    return FoldConfig(patch=int(patch), stride=int(stride))


def _pool(spec: str, **_) -> MaxPoolConfig:
    kernel, stride = spec.split("/")
    return MaxPoolConfig(kernel=int(kernel), stride=int(stride))


def _gmm(
    spec: str, level: int, num_classes: int, upper_ceiling: float, below_top: bool, gmm_options
) -> GMMConfig:
    options = {"components": int(spec.removesuffix("c")), "wait": min(WAIT_PER_LEVEL * level, 0.5)}
    if spec.endswith("c"):
        options["classes"] = num_classes
    if level > 0:
        options["precision_ceiling"] = upper_ceiling
    if below_top:
        options["output"] = "log_responsibilities"
    return GMMConfig(**{**options, **gmm_options})


def _tree(spec: str, level: int, num_classes: int) -> TreeConfig:
    components, block = spec.split("/")
    return TreeConfig(
        components=int(components.removesuffix("c")),
        block=block if block == "full" else int(block),
        classes=num_classes if components.endswith("c") else 0,
        wait=min(WAIT_PER_LEVEL * level, 0.5),
        shared=False,
    )


def _readout(spec: str, num_classes: int, **_) -> ReadoutConfig:
    return ReadoutConfig(num_classes=num_classes)


TOKENS = {"F": _fold, "P": _pool, "G": _gmm, "T": _tree, "R": _readout}  # one layer type per letter


def get(
    name: str,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    upper_precision_ceiling: float | None = None,
    **gmm_options,
) -> ModelConfig:
    """The preset ``name`` for inputs of ``input_shape`` (C, H, W).

    :param upper_precision_ceiling: precision ceiling of the GMM layers above the first
        (``None``: the preset's own, chosen on validation splits).
    :param gmm_options: overrides for every GMM layer, e.g. ``shared=False`` or ``components=49``.
    """
    if name not in ARCHITECTURES:
        raise ConfigError(
            f"unknown preset {name!r}; valid presets are {', '.join(names())}{nearest(name, names())}"
        )
    if upper_precision_ceiling is None:
        upper_precision_ceiling = UPPER_PRECISION_CEILING.get(name, DEFAULT_UPPER_PRECISION_CEILING)
    if name in LEAF_PRECISION_CEILING:
        gmm_options = {"precision_ceiling": LEAF_PRECISION_CEILING[name], **gmm_options}
    layers = parse_architecture(ARCHITECTURES[name], num_classes, upper_precision_ceiling, **gmm_options)
    return ModelConfig(preset=name, input_shape=tuple(input_shape), layers=layers)


def default_preset(input_shape: tuple[int, int, int]) -> str:
    """The preset for images of ``input_shape``: ``E`` (the paper's choice for 28x28) from 13 pixels
    a side, ``digits`` (4x4 patches) from 4, the flat ``A`` (one mixture over the whole input) below."""
    side = min(input_shape[1:])
    return "E" if side >= 13 else "digits" if side >= 4 else "A"


def default_joint_preset(input_shape: tuple[int, int, int], by_class: bool = False) -> str:
    """The joint preset for images of ``input_shape``: ``J`` (4x4 leaves) from 13 pixels a side,
    ``Jdigits`` (2x2 leaves) below; ``JC`` and ``JCdigits`` with the top split ``by_class``."""
    name = "J" if min(input_shape[1:]) >= 13 else "Jdigits"
    return name.replace("J", "JC") if by_class else name


def resolve(config: ModelConfig, input_shape: tuple[int, int, int], **gmm_options) -> ModelConfig:
    """``config`` ready to build: its input shape (``input_shape`` if it has none) and its layers,
    the listed ones, else its preset's, else :func:`default_preset`'s for that shape.

    ``gmm_options`` (e.g. ``shared=False``) override every GMM layer, listed or from a preset.
    """
    shape = tuple(config.input_shape or input_shape)
    if config.layers:
        layers = tuple(
            dataclasses.replace(layer, **gmm_options) if layer.type == "gmm" else layer
            for layer in config.layers
        )
        return dataclasses.replace(config, input_shape=shape, layers=layers)
    preset = get(config.preset or default_preset(shape), shape, **gmm_options)
    return dataclasses.replace(preset, data_range=config.data_range)
