"""Data-dependent initialisation of GMM layers from their real inputs."""

import json

import pytest
import torch

import pyro_dcgmm.training.trainer as training
from pyro_dcgmm import GMM, Fold, Stack
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.errors import DataError
from pyro_dcgmm.training.initialisation import initialise, reseed_dead
from pyro_dcgmm.training.run_folder import RunFiles


def separated_clusters(n=600, seed=0):
    """Single-pixel-patch images whose 4 pixels come from 3 well separated clusters."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.5, 0.9, 0.5, 0.1], [0.9, 0.2, 0.8, 0.9]])
    labels = torch.arange(n) % 3
    x = centres[labels] + 0.02 * torch.randn(n, 4, generator=generator)
    return x.clamp(0, 1).view(n, 1, 2, 2), centres


def test_the_host_copy_of_initialised_follows_the_buffer_through_loading():
    def layers():
        return Stack([Fold(None), GMM(3), GMM(2, init="random")], (1, 2, 2)).mixture_layers

    trained, fresh = layers(), layers()
    assert [layer.is_initialised for layer in fresh] == [False, True]  # random init needs no data
    trained[0].mark_initialised_()
    fresh[0].load_state_dict(trained[0].state_dict())
    assert fresh[0].is_initialised and bool(fresh[0].initialised)
    fresh[0].load_state_dict(layers()[0].state_dict())
    assert not fresh[0].is_initialised


@pytest.mark.parametrize("rule", ["kmeans", "data"])
def test_initialisation_uses_real_inputs(rule):
    images, centres = separated_clusters()
    stack = Stack([Fold(None), GMM(3, init=rule, init_vectors=600, precision_ceiling=1e5)], (1, 2, 2))
    gmm = stack.layers[1]
    assert not bool(gmm.initialised) and not gmm.is_initialised
    initialise(gmm, images, torch.Generator().manual_seed(0))
    assert bool(gmm.initialised) and gmm.is_initialised
    distance = torch.cdist(gmm.means.detach(), centres)  # (K, 3)
    if rule == "kmeans":  # every centre found, with its weight and its own small variance
        assert distance.min(0).values.max() < 0.01
        torch.testing.assert_close(torch.softmax(gmm.mixing_logits, -1), torch.full((3,), 1 / 3))
        assert float(gmm.covariance.precision.detach().min()) > 1000.0  # sd 0.02: precision about 2,500
    else:  # means at data points, the data's overall variance
        assert distance.min(1).values.max() < 0.1
        assert float(gmm.covariance.precision.detach().max()) < 100.0


def _split_by_class(images):
    """A layer of 2 components per class over the clusters' images; class 0 is clusters 0 and 1,
    class 1 is cluster 2 (the clusters' images take turns)."""
    gmm = GMM(4, classes=2, init_vectors=600, precision_ceiling=1e5)
    Stack([Fold(None), gmm], (1, 2, 2))
    return gmm, (torch.arange(images.shape[0]) % 3 == 2).long()


def test_layer_split_by_class_initialises_each_class_from_its_images():
    images, centres = separated_clusters()
    gmm, labels = _split_by_class(images)
    initialise(gmm, images, torch.Generator().manual_seed(0), labels)
    distance = torch.cdist(gmm.means.detach(), centres)  # (K, clusters)
    assert set(distance[:2].argmin(1).tolist()) == {0, 1}  # class 0's components: one per cluster
    assert distance[2:, 2].max() < 0.1  # class 1's both at its only cluster
    weights = torch.softmax(gmm.mixing_logits.detach(), -1)
    assert float(weights[2:].sum()) == pytest.approx(1 / 3, abs=0.01)
    with pytest.raises(DataError, match="of class 1; every class needs images"):
        initialise(gmm, images, torch.Generator().manual_seed(0), torch.zeros_like(labels))


def test_dead_component_of_a_layer_split_by_class_is_reseeded_at_a_vector_of_its_class():
    images, centres = separated_clusters()
    gmm, labels = _split_by_class(images)
    initialise(gmm, images, torch.Generator().manual_seed(0), labels)
    for seed in range(10):  # a vector of any class would be of class 1 a third of the time
        with torch.no_grad():
            gmm.mixing_logits[3] = -30.0  # class 1's second component is dead
            gmm.means[3] = 5.0
        assert reseed_dead(gmm, images, torch.Generator().manual_seed(seed), labels) == 1
        assert float((gmm.means[3].detach() - centres[2]).abs().max()) < 0.1


def test_per_position_layer_is_initialised_at_every_position():
    images, _ = separated_clusters(90)
    gmm = GMM(3, shared=False, init_vectors=90, precision_ceiling=1e5)
    Stack([Fold(1, 1), gmm], (1, 2, 2))
    initialise(gmm, images, torch.Generator().manual_seed(0))
    pixel_values = images.view(-1, 4).T  # (4 positions, N)
    for position in range(4):
        means = gmm.means.detach()[position // 2, position % 2, :, 0]  # (K,)
        nearest = (pixel_values[position][:, None] - means[None]).abs().min(1).values
        assert float(nearest.max()) < 0.1


def test_layers_are_initialised_when_their_wait_ends_and_never_again_on_resume(tmp_path, monkeypatch):
    digits = load_digits()
    torch.manual_seed(0)
    stack = Stack([Fold(4, 2), GMM(9), Fold(None), GMM(4, wait=0.5)], (1, 8, 8))
    calls = []

    def counting(gmm, inputs, generator, labels):
        calls.append((stack.gmm_layers.index(gmm), inputs.shape))
        initialise(gmm, inputs, generator, labels)

    monkeypatch.setattr(training, "initialise_layer", counting)
    config = TrainConfig(epochs=2, batch_size=100, progress=False, device="cpu", max_steps=5)
    training.train(stack, digits.train_images, config=config, files=tmp_path)
    assert [layer for layer, _ in calls] == [0]  # the top layer still waits
    config = TrainConfig(epochs=2, batch_size=100, progress=False, device="cpu")
    training.train(
        stack, digits.train_images, config=config, files=RunFiles(resume=tmp_path / "checkpoint.pt")
    )
    assert [layer for layer, _ in calls] == [0, 1]  # the top layer once its wait ended; layer 0 kept
    assert calls[1][1][1:] == (9, 3, 3)  # it saw the responsibilities of the layer below


def _stack_with_a_dead_component():
    torch.manual_seed(0)
    stack = Stack([Fold(None), GMM(5, init="random", precision_init=5.0)], (1, 8, 8))
    gmm = stack.layers[1]
    with torch.no_grad():
        gmm.mixing_logits.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, -30.0]))  # component 4 is dead
        gmm.means[4] = 5.0  # far from every image: EM alone would never revive it
    return stack, gmm


@pytest.mark.parametrize("epochs", [1, 2])
def test_dead_components_are_reseeded_and_logged_unless_training_ends(tmp_path, epochs):
    digits = load_digits()
    stack, gmm = _stack_with_a_dead_component()
    config = TrainConfig(epochs=epochs, batch_size=500, progress=False, device="cpu")
    training.train(stack, digits.train_images, config=config, files=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    reseeded = [r for r in records if r.get("event") == "reseeded"]
    if epochs == 1:  # after the last epoch a re-seeded component would stay untrained
        assert reseeded == [] and float(gmm.means[4].detach().min()) == 5.0
        return
    assert reseeded[0] == {"event": "reseeded", "layer": 0, "components": 1}
    assert float(gmm.means[4].detach().max()) <= 1.0  # moved onto a real image, then trained


def test_a_reseeded_component_restarts_with_weight_one_over_k():
    _, gmm = _stack_with_a_dead_component()
    before = gmm.mixing_weights().detach().clone()
    inputs = load_digits().train_images[:200]
    assert reseed_dead(gmm, inputs, torch.Generator().manual_seed(0)) == 1
    expected = torch.cat([before[:4], torch.tensor([1 / 5])])
    torch.testing.assert_close(gmm.mixing_weights().detach(), expected / expected.sum())


def test_the_optimiser_forgets_a_reseeded_layer():
    # online EM restarts a re-seeded layer's running statistics from its parameters: after the
    # re-seeding at the end of epoch 1 its step count starts again (3 steps per epoch here)
    digits = load_digits()
    stack, gmm = _stack_with_a_dead_component()
    config = TrainConfig(epochs=2, batch_size=500, progress=False, device="cpu")
    trainer = training.Trainer(stack, config)
    trainer.fit(digits.train_images)
    assert trainer.state.step == 6
    online_em = trainer.optimizer.optimizers[0]
    assert online_em.state[gmm.means]["step"] == 3
