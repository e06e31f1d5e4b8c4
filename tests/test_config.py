import pytest

from pyro_dcgmm import GMM, Stack, presets
from pyro_dcgmm.config import (
    SHIPPED_CONFIGS,
    DataConfig,
    FoldConfig,
    GMMConfig,
    ModelConfig,
    ReadoutConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    load_config,
    shipped_configs,
    to_dict,
)
from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.model.joint import JointStack

CONFIG = """
[model]
input_shape = [1, 8, 8]

[[model.layers]]
type = "fold"
patch = [4, 4]
stride = 2

[[model.layers]]
type = "gmm"
components = 9
shared = false

[training]
epochs = 2
lr = 0.05

[data]
dataset = "digits"
classes = [1, 2, 3]
"""


def test_toml_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    assert config.training == TrainConfig(epochs=2, lr=0.05)
    assert config.data.classes == (1, 2, 3)
    assert config.model.layers[1] == GMMConfig(components=9, shared=False)
    stack = Stack.from_config(config.model)
    assert stack.layers[1].output_shape == (9, 3, 3)
    assert from_dict(RunConfig, to_dict(config)) == config


def test_shipped_configs_build():
    assert shipped_configs() == ["digits", "fashion-mnist-joint", "natural-patches"]
    config = load_config("digits")  # a shipped configuration by name
    assert Stack.from_config(config.model).output_shape == (10, 1, 1)
    assert load_config(SHIPPED_CONFIGS / "digits.toml") == config
    patches = load_config("natural-patches")
    assert Stack.from_config(patches.model).layers[1].config.covariance == "stationary"
    assert patches.data.dataset == "natural-patches" and patches.model.data_range == (-1.0, 1.0)
    joint = load_config("fashion-mnist-joint")
    resolved = presets.resolve(joint.model, (1, 28, 28))
    assert isinstance(Stack.from_config(resolved), JointStack) and joint.data.dequantize


@pytest.mark.parametrize(
    "text,match",
    [
        ("[training]\nepocs = 3\n", r"unknown key 'epocs'; did you mean 'epochs'\?"),
        ("[trainig]\nepochs = 3\n", r"unknown key 'trainig'; did you mean 'training'\?"),
        ("[training]\nepochs = 'three'\n", r"training.epochs: expected int"),
        ("[training]\noptimizer = 'adamw'\n", r"expected one of 'em', 'adam', 'sgd'"),
        ("[[model.layers]]\ntype = 'gmm'\ncomponent = 3\n", r"layers\[0\]: unknown key 'component'"),
        ("[[model.layers]]\ntype = 'gmn'\n", r"unknown layer type 'gmn'.*did you mean 'gmm'"),
        ("[model]\ninput_shape = [1, 8]\n", r"model.input_shape: expected a list of 3 ints"),
        ("[training\n", r"not valid TOML"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unknown_layer_keyword_fails():
    with pytest.raises(ConfigError, match="unknown key 'precison_floor'; did you mean 'precision_floor'"):
        GMM(4, precison_floor=0.1)


def test_model_config_needs_layers():
    with pytest.raises(ValueError, match="no layers"):
        Stack.from_config(ModelConfig(input_shape=(1, 8, 8)))


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: TrainConfig(optimizer="rmsprop"),
            r"training.optimizer: expected one of 'em', 'adam', 'sgd'",
        ),
        (lambda: TrainConfig(epochs=2.5), r"training.epochs: expected int, got 2.5"),
        (lambda: TrainConfig(momentum=float("nan")), r"training.momentum must be finite and >= 0, got nan"),
        (lambda: GMMConfig(width_floor=float("inf")), r"gmm.width_floor must be finite and > 0"),
        (lambda: GMMConfig(means_lr_scale=-1.0), r"gmm.means_lr_scale must be >= 0, got -1.0"),
        (lambda: GMMConfig(plateau_window=0), r"gmm.plateau_window must be >= 1, got 0"),
        (lambda: ModelConfig(data_range=(0.0, float("nan"))), r"model.data_range must be two numbers"),
        (lambda: FoldConfig(patch=(3, 0)), r"fold.patch must be a positive int or a pair"),
        (lambda: DataConfig(classes=(1, -2)), r"data.classes must be two or more different labels >= 0"),
    ],
)
def test_every_construction_checks_its_fields(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_toml_and_python_give_the_same_check(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[[model.layers]]\ntype = 'gmm'\ncomponents = 0\n")
    with pytest.raises(ConfigError, match=r"run.toml.model.layers\[0\]: gmm.components must be >= 1, got 0"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"gmm.components must be >= 1, got 0"):
        GMM(0)


def test_layers_are_built_from_their_config_dataclass():
    config = ModelConfig(
        input_shape=(1, 8, 8),
        layers=(FoldConfig(patch=4, stride=2), GMMConfig(components=7, shared=False), ReadoutConfig(3)),
    )
    stack = Stack.from_config(config)
    assert [layer.config for layer in stack.layers] == list(config.layers)
    assert stack.layers[1].config is config.layers[1]
    assert stack.layers[1].schedule.width == config.layers[1].width_floor
    assert stack.config == config


def test_full_covariances_refuse_a_precision_range_float32_cannot_hold():
    from pyro_dcgmm.config import GMMConfig
    from pyro_dcgmm.errors import LayerConfigError

    GMMConfig(covariance="full", precision_floor=1e2, precision_ceiling=1e7)
    with pytest.raises(LayerConfigError, match="precision_ceiling / precision_floor <= 1e"):
        GMMConfig(covariance="full", precision_floor=1e-2, precision_ceiling=1e8)
