"""The joint stack as a user reaches it: presets, training, checkpoints, the estimator, the commands
and the errors."""

import json

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from pyro_dcgmm import DCGMM, GMM, DCGMMClassifier, Fold, MaxPool, Readout, Stack, presets
from pyro_dcgmm.cli import bench, inspect, sample, views
from pyro_dcgmm.cli import train as train_command
from pyro_dcgmm.config import ModelConfig, TrainConfig, from_dict, to_dict
from pyro_dcgmm.data.datasets import dequantize, load_digits
from pyro_dcgmm.errors import ArchitectureError, ConfigError, DataError
from pyro_dcgmm.inference.sampling import SamplingOptions, Sharpening
from pyro_dcgmm.model.joint import JointStack
from pyro_dcgmm.model.tree import Tree
from pyro_dcgmm.training.checkpoint import stack_from_checkpoint
from pyro_dcgmm.training.initialisation import initialise_tree
from pyro_dcgmm.training.trainer import Trainer, train


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    generator = torch.Generator().manual_seed(0)
    return data, dequantize(data.train_images, 17, generator), dequantize(data.test_images, 17, generator)


@pytest.fixture(scope="module")
def trained(digits):
    """Jdigits trained as a density of the dequantised digits (the leaves' precisions up to 1e4:
    the preset's 30 suits the raw 17 grey levels, not uniform noise within them)."""
    _, train_x, _ = digits
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("Jdigits", (1, 8, 8), precision_ceiling=1e4))
    train(stack, train_x, config=TrainConfig(epochs=12, batch_size=100, progress=False, device="cpu"))
    return stack


@pytest.mark.parametrize(
    ("name", "shape"), [("J", (1, 28, 28)), ("JC", (1, 28, 28)), ("Jdigits", (1, 8, 8)), ("J", (1, 8, 8))]
)
def test_joint_presets_build_joint_stacks(name, shape):
    stack = Stack.from_config(presets.get(name, shape))
    assert isinstance(stack, JointStack)
    assert stack.leaf.config.covariance == "full" and not stack.leaf.config.shared
    waits = [layer.config.wait for layer in stack.mixture_layers]
    assert waits == sorted(waits) and waits[-1] > 0
    assert stack.mixture_layers[-1].output_shape[1:] == (1, 1)
    assert stack.num_classes == (10 if name == "JC" else None)


def test_training_grows_the_tree_and_beats_flat_gmms(digits, trained):
    _, train_x, test_x = digits
    assert trained.root_level == len(trained.mixture_layers) - 1  # every layer joined
    joint = trained.log_prob(test_x).mean().item()
    for k in (10, 30):
        flat = GaussianMixture(k, covariance_type="diag", reg_covar=1e-4, random_state=0)
        flat_score = flat.fit(train_x.flatten(1).numpy()).score(test_x.flatten(1).numpy())
        assert joint > flat_score + 5.0  # nats per image (measured: 80 against 55 and 62)


def test_greedy_training_leaves_the_layers_below_the_top_alone(digits):
    _, train_x, _ = digits
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("Jdigits", (1, 8, 8)))
    config = TrainConfig(epochs=4, batch_size=200, progress=False, device="cpu", joint_refinement=False)
    snapshots = []

    def spy(trainer):  # before every step after the first, which initialises the leaves
        if trainer.state.step > 0:
            snapshots.append((stack.root_level, stack.leaf.means.detach().clone()))

    Trainer(stack, config, callbacks=[spy]).fit(train_x)
    after_join = [means for root, means in snapshots if root > 0]
    assert len(after_join) > 2 and all(torch.equal(after_join[0], means) for means in after_join)


def test_checkpoint_round_trip_and_commands(tmp_path, digits):
    out = tmp_path / "run"
    summary = train_command.main(
        ["--preset", "Jdigits", "--dataset", "digits", "--dequantize", "--epochs", "6", "--out", str(out),
         "--no-progress", "--device", "cpu", "--batch-size", "200"]
    )  # fmt: skip
    assert 1.5 < summary["test_bits_per_dim"] < 4.0
    stack = stack_from_checkpoint(out / "checkpoint.pt")
    assert isinstance(stack, JointStack) and stack.root_level == 2
    x = digits[2][:20]
    assert torch.isfinite(stack.log_prob(x)).all()
    assert inspect.main([str(out / "checkpoint.pt")])["layers"] == 4
    written = views.main([str(out / "checkpoint.pt"), "--out", str(tmp_path / "views"), "--limit", "100"])
    assert sorted(written) == [0, 1, 2]
    report = sample.main(
        ["--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "s"), "--no-ndb"]
    )
    assert "sharpening" not in report["options"]  # exact draws: nothing to sharpen
    for name in ("samples.png", "variants.png", "inpainting.png"):
        assert (tmp_path / "s" / name).exists()


def test_estimator_with_joint_presets(digits):
    data, train_x, test_x = digits
    model = DCGMM("Jdigits", epochs=4, random_state=0).fit(train_x)
    np.testing.assert_allclose(model.score_samples(test_x[:50]), model.stack_.log_prob(test_x[:50]).numpy())
    assert model.n_components_ == 128 and model.predict(test_x[:50]).shape == (50,)
    images, clusters = model.sample(6)
    assert images.shape == (6, 64) and clusters.shape == (6,)
    classifier = DCGMM("JCdigits", epochs=6, random_state=0).fit(train_x, data.train_labels)
    accuracy = (classifier.stack_.predict_proba(test_x).argmax(1) == data.test_labels).double().mean()
    assert accuracy > 0.85  # Bayes' rule over each class's top components
    class_models = DCGMMClassifier("Jdigits", epochs=3, random_state=0).fit(train_x, data.train_labels)
    assert class_models.score(test_x, data.test_labels.numpy()) > 0.9  # one joint stack per class


def test_bench_has_rows_for_a_joint_preset(capsys):
    rows = bench.main(
        ["--preset", "Jdigits", "--device", "cpu", "--input-size", "8", "--quick",
         "--paths", "hand", "svi", "score"]
    )  # fmt: skip
    assert {row["path"] for row in rows} == {"hand", "svi", "score"}
    assert all(row["samples_per_second"] > 0 for row in rows)


def test_initialising_a_tree_from_its_childrens_posteriors_splits_by_class():
    torch.manual_seed(0)
    tree = Tree(6, block="full", classes=3)
    tree.build((4, 2, 2))
    labels = torch.arange(90) % 3
    onehot = torch.nn.functional.one_hot(labels[:, None, None].expand(90, 2, 2), 4).permute(0, 3, 1, 2)
    noise = torch.distributions.Dirichlet(torch.ones(4)).sample((90, 2, 2)).permute(0, 3, 1, 2)
    posteriors = 0.7 * onehot + 0.3 * noise  # (N, K, 2, 2): mostly the child of the image's class
    initialise_tree(tree, posteriors, torch.Generator().manual_seed(0), labels)
    transitions = tree.log_transitions().exp()  # (O, J, K): each class's components point at its child
    assert bool(tree.initialised)
    torch.testing.assert_close(transitions.sum(-1), torch.ones(4, 6, dtype=transitions.dtype))
    for j in range(6):
        assert transitions[:, j].argmax(-1).tolist() == [j // 2] * 4


def test_joint_stack_errors(trained, digits):
    x = digits[2][:4]
    with pytest.raises(ArchitectureError, match="tile"):
        JointStack([Fold(3, 2), GMM(4), Tree(2, block="full")], (1, 8, 8))
    with pytest.raises(ArchitectureError, match="only Tree layers"):
        JointStack([Fold(2, 2), GMM(4), Tree(2), Readout(10)], (1, 8, 8))
    with pytest.raises(ArchitectureError, match="at least one Tree"):
        JointStack([Fold(2, 2), GMM(4)], (1, 8, 8))
    with pytest.raises(ArchitectureError, match="joint stack"):
        Stack([Fold(2, 2), GMM(4), Tree(2)], (1, 8, 8))
    with pytest.raises(ArchitectureError, match="only the top"):
        JointStack([Fold(2, 2), GMM(4), Tree(10, classes=10), Tree(10, block="full")], (1, 8, 8))
    with pytest.raises(ArchitectureError, match="must not decrease"):
        JointStack([Fold(2, 2), GMM(4), Tree(2, wait=0.3), Tree(2, block="full", wait=0.1)], (1, 8, 8))
    with pytest.raises(ArchitectureError, match="sharpening"):
        trained.sample(2, options=SamplingOptions(sharpening=Sharpening()))
    with pytest.raises(ArchitectureError, match="split by class"):
        trained.sample(2, classes=[0, 1])
    with pytest.raises(ArchitectureError, match="split by class"):
        trained.predict_proba(x)
    with pytest.raises(IndexError, match="layers with components"):
        trained.responsibilities(x, layer=3)
    with pytest.raises(ArchitectureError, match="mask"):
        trained.conditional_mean(x, None)
    with pytest.raises(ConfigError, match="closed-form"):
        train(
            Stack.from_config(presets.get("Jdigits", (1, 8, 8))),
            x,
            config=TrainConfig(objective="enumerated"),
        )
    with pytest.raises(ConfigError, match="probability_floor"):
        Tree(10, probability_floor=0.2)
    with pytest.raises(DataError, match="labels"):
        train(Stack.from_config(presets.get("JCdigits", (1, 8, 8))), x, config=TrainConfig(progress=False))


def test_a_tree_that_has_not_joined_cannot_be_queried(digits):
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("Jdigits", (1, 8, 8)))
    train(stack, digits[1], config=TrainConfig(epochs=10, max_steps=3, progress=False))
    assert stack.root_level == 0
    assert torch.isfinite(stack.log_prob(digits[2][:5])).all()  # the tree grown so far: the leaves
    with pytest.raises(ArchitectureError, match="has not joined"):
        stack.responsibilities(digits[2][:5], layer=-1)


def test_model_config_with_tree_layers_round_trips_through_plain_data(trained):
    data = json.loads(json.dumps(to_dict(trained.config)))
    rebuilt = Stack.from_config(from_dict(ModelConfig, data, "model"))
    assert isinstance(rebuilt, JointStack) and rebuilt.config == trained.config
    assert not isinstance(Stack([Fold(2, 2), GMM(4), MaxPool(2)], (1, 8, 8)), JointStack)
