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


def check_layer_list(layers) -> None:
    """What every stack needs of its layers: at least one GMM, and a Readout only on top."""
    if not layers:
        raise ArchitectureError("a Stack needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise ArchitectureError(f"layers[{i}] is {type(layer).__name__}, not a layer")
        if isinstance(layer, Readout) and i != len(layers) - 1:
            raise ArchitectureError(f"layers[{i}] is a Readout, which may only be the top layer")
    if not any(isinstance(layer, GMM) for layer in layers):
        raise ArchitectureError("a Stack needs at least one GMM layer")


def class_count(mixture_layers, readout) -> int | None:
    """The number of classes of the Readout and the layers split by class (they must agree)."""
    counts = {layer.config.classes for layer in mixture_layers if layer.config.classes}
    counts |= {readout.num_classes} if readout is not None else set()
    if len(counts) > 1:
        raise ArchitectureError(
            f"the Readout and the GMM layers split by class must agree on the number of classes, "
            f"got {sorted(counts)}"
        )
    return counts.pop() if counts else None


def checked_input_shape(input_shape) -> tuple[int, int, int]:
    """``input_shape`` as a (channels, height, width) tuple of positive ints."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in input_shape):
        raise ArchitectureError(
            f"input_shape must be (channels, height, width) of positive ints, got {input_shape}"
        )
    return input_shape
