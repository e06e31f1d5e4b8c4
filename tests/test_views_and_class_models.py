"""Per-component views, the views command, class models and the classify / covariances evaluations."""

import json

import numpy as np
import pytest
import torch

from pyro_dcgmm.class_models import DCGMMClassifier
from pyro_dcgmm.cli import evaluate, views
from pyro_dcgmm.cli import train as train_command
from pyro_dcgmm.config import FoldConfig, GMMConfig, ReadoutConfig
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.errors import ConfigError, DataError
from pyro_dcgmm.figures.views import component_views


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train_command.main(["--config", "digits", "--epochs", "2", "--out", str(out), "--no-progress"])
    return out


def test_views_show_each_components_highest_posterior_inputs(trained_run, digits):
    from pyro_dcgmm.training.checkpoint import stack_from_checkpoint

    stack = stack_from_checkpoint(trained_run / "checkpoint.pt")
    images = digits.test_images[:200]
    first = component_views(stack, images, 0, top=4)
    assert len(first) == 100 and [v.weight for v in first] == sorted((v.weight for v in first), reverse=True)
    assert first[0].examples.shape == (4, 1, 4, 4) and first[0].mean.shape == (1, 4, 4)
    log_r = torch.log_softmax(stack.mixture_layer(0).log_scores(images).detach().double(), 1)  # (N, K, 3, 3)
    best = log_r[:, first[0].index].flatten(1).max(1).values
    assert np.allclose(first[0].log_posteriors, best.sort(descending=True).values[:4].numpy())
    upper = component_views(stack, images, 1, top=3)
    assert upper[0].examples.shape == (3, 1, 8, 8)  # whole images for a layer above the first
    with pytest.raises(IndexError, match="layer must be an int in"):
        component_views(stack, images, 2)
    top = stack.mixture_layer(1)
    top.active[upper[0].index] = False  # pruned: no weight, no inputs to show
    pruned = next(v for v in component_views(stack, images, 1) if v.index == upper[0].index)
    assert not pruned.active and pruned.weight == 0.0 and len(pruned.examples) == 0


def test_views_command_writes_a_figure_and_a_summary_per_layer(trained_run, tmp_path):
    written = views.main(
        [str(trained_run / "checkpoint.pt"), "--out", str(tmp_path), "--top", "3", "--limit", "100"]
    )
    assert set(written) == {0, 1}
    summary = json.loads((tmp_path / "views-layer1.json").read_text())
    assert len(summary) == 25 and len(summary[0]["top_images"]) == 3
    assert (tmp_path / "views-layer0.png").stat().st_size > 10_000


def test_class_models_predict_by_bayes_rule(digits):
    x, y = digits.train_images[:600], digits.train_labels[:600].numpy()
    layers = [FoldConfig(), GMMConfig(components=2)]
    classifier = DCGMMClassifier(layers, epochs=3, random_state=0).fit(x, y)
    test = digits.test_images[:200]
    log_likelihoods = np.stack([m.score_samples(test) for m in classifier.models_], 1)
    joint = log_likelihoods + classifier.class_log_prior_
    expected = np.exp(joint - joint.max(1, keepdims=True))
    np.testing.assert_allclose(
        classifier.predict_proba(test), expected / expected.sum(1, keepdims=True), rtol=1e-5
    )
    assert classifier.score(test, digits.test_labels[:200].numpy()) > 0.8  # chance: 0.1


def test_class_models_refuse_a_readout_and_a_single_class(digits):
    x, y = digits.train_images[:300], digits.train_labels[:300].numpy()
    with pytest.raises(ConfigError, match="Readout"):
        DCGMMClassifier([FoldConfig(), GMMConfig(components=2), ReadoutConfig()], epochs=1).fit(x, y)
    with pytest.raises(DataError, match="at least 2 classes"):
        DCGMMClassifier(epochs=1).fit(x, np.zeros(300, dtype=int))


def test_evaluate_classify_and_covariances_report_every_model(tmp_path):
    common = ["--epochs", "1", "--no-progress", "--train-limit", "400"]
    report = evaluate.main(
        ["classify", "--dataset", "digits", "--validation", *common, "--out", str(tmp_path / "c")]
    )
    assert {
        "class_models",
        "readout_digits",
        "sklearn_per_class_diag_k5",
        "sklearn_per_class_full_k5",
    } <= set(report)
    assert report["scored_on"] == "validation split" and report["class_models"]["accuracy"] > 0.5
    assert (tmp_path / "c" / "classify.png").is_file()
    report = evaluate.main(
        [
            "covariances",
            "--dataset",
            "digits",
            "--components",
            "3",
            "--sklearn-iterations",
            "5",
            *common,
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert (tmp_path / "s" / "covariances.png").is_file()
    for name in (
        "pyro_dcgmm_diag",
        "pyro_dcgmm_stationary",
        "pyro_dcgmm_full",
        "sklearn_diag",
        "sklearn_full",
    ):
        assert np.isfinite(report[name]["bits_per_dim"]) and report[name]["train_seconds"] > 0


def test_views_of_a_layer_the_model_lacks_say_which_layers_it_has(trained_run, tmp_path):
    with pytest.raises(
        ConfigError, match=r"--layers \[3\]: this model's 2 layers with components are numbered 0 to 1"
    ):
        views.main([str(trained_run / "checkpoint.pt"), "--out", str(tmp_path / "v"), "--layers", "3"])
    assert not (tmp_path / "v").exists()


def test_the_training_curve_starts_each_layer_where_it_trained_all_epoch():
    from pyro_dcgmm.figures.plots import trained_epochs

    epochs = [{"event": "epoch", "epoch": e, "step": 10 * e} for e in (1, 2, 3, 4)]
    assert [r["epoch"] for r in trained_epochs(epochs, 0)] == [1, 2, 3, 4]
    assert [r["epoch"] for r in trained_epochs(epochs, 15)] == [3, 4]  # started inside epoch 2
    assert [r["epoch"] for r in trained_epochs(epochs, 35)] == [4]  # began in the last epoch
    assert trained_epochs([], 5) == []
