"""The layers of a stack from their configs, and the check of its input shape."""

from __future__ import annotations

from pyro_dcgmm.config import LayerConfig
from pyro_dcgmm.errors import ArchitectureError
from pyro_dcgmm.model.fold import Fold
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.layer import Layer
from pyro_dcgmm.model.pool import MaxPool
from pyro_dcgmm.model.readout import Readout
from pyro_dcgmm.model.tree import Tree

LAYER_CLASSES: dict[type, type[Layer]] = {
    cls.config_class: cls for cls in (Fold, MaxPool, GMM, Readout, Tree)
}


def layer_from_config(config: LayerConfig) -> Layer:
    """The layer a config dataclass describes."""
    if type(config) not in LAYER_CLASSES:
        raise ArchitectureError(f"not a layer config: {config!r}")
    return LAYER_CLASSES[type(config)].from_config(config)


def checked_input_shape(input_shape) -> tuple[int, int, int]:
    """``input_shape`` as a (channels, height, width) tuple of positive ints."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in input_shape):
        raise ArchitectureError(
            f"input_shape must be (channels, height, width) of positive ints, got {input_shape}"
        )
    return input_shape
