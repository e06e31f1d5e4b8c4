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

from pyro_dcgmm.config.checked import Checked, bounded, from_dict, nearest, to_dict
from pyro_dcgmm.config.layers import (
    FULL_PRECISION_RANGE,
    FoldConfig,
    GMMConfig,
    LayerConfig,
    MaxPoolConfig,
    ReadoutConfig,
    TreeConfig,
    layer_from_dict,
)
from pyro_dcgmm.config.run import (
    SHIPPED_CONFIGS,
    DataConfig,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
    load_config,
    shipped_configs,
)

__all__ = [
    "FULL_PRECISION_RANGE",
    "SHIPPED_CONFIGS",
    "Checked",
    "DataConfig",
    "FoldConfig",
    "GMMConfig",
    "LayerConfig",
    "MaxPoolConfig",
    "ModelConfig",
    "ReadoutConfig",
    "RunConfig",
    "SamplingConfig",
    "TrainConfig",
    "TreeConfig",
    "bounded",
    "from_dict",
    "layer_from_dict",
    "load_config",
    "nearest",
    "shipped_configs",
    "to_dict",
]
