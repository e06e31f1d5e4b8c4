"""A stack is trained by plain Pyro: ``pyro.infer.SVI`` with a ``pyro.optim`` optimiser."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, TraceEnum_ELBO

from pyro_dcgmm import GMM, Fold, Stack, presets
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.inference.sampling import SamplingOptions
from pyro_dcgmm.training.trainer import train


def _stack() -> Stack:
    torch.manual_seed(0)
    options = {"init": "random", "precision_init": 5.0, "precision_ceiling": 100.0}
    return Stack([Fold(4, 2), GMM(9, **options), Fold(None), GMM(4, **options)], (1, 8, 8))


def test_plain_svi_trains_a_stack_as_train_does_with_adam():
    x = load_digits().train_images[:200]
    trained = _stack()
    config = TrainConfig(optimizer="adam", lr=0.02, epochs=15, batch_size=200, progress=False, device="cpu")
    train(trained, x, config=config)
    stack = _stack()
    svi = SVI(stack.model, stack.guide, pyro.optim.Adam({"lr": 0.02}), TraceEnum_ELBO(max_plate_nesting=3))
    losses = []
    for _ in range(15):
        losses.append(svi.step(x) / len(x))
        stack.project_()  # what train() does after every step: precisions inside their bounds
    assert losses[-1] < losses[0] - 10.0  # it learned
    assert svi.evaluate_loss(x) / len(x) == pytest.approx(_mean_loss(trained, x), rel=1e-4)
    for mine, theirs in zip(stack.parameters(), trained.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-4)


def _mean_loss(stack: Stack, x: torch.Tensor) -> float:
    return TraceEnum_ELBO(max_plate_nesting=3).loss(stack.model, stack.guide, x) / len(x)


def test_plain_svi_trains_a_joint_stack():
    x = load_digits().train_images[:200]
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("Jdigits", (1, 8, 8)))
    for layer in stack.mixture_layers:  # every layer joined: the whole tree trains from the start
        layer.mark_initialised_()
    with torch.no_grad():
        stack.leaf.means.uniform_(0.0, 1.0)
    elbo = TraceEnum_ELBO(max_plate_nesting=stack.max_plate_nesting, strict_enumeration_warning=False)
    svi = SVI(stack.model, stack.guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    losses = []
    for _ in range(10):
        losses.append(svi.step(x, enumerated=False))
        stack.project_()
    assert losses[-1] < losses[0]
    assert all(p.grad is None or not p.grad.abs().sum() for p in stack.parameters())  # SVI zeroed them


def test_predictive_draws_every_layers_components_and_patches():
    # stack.sample is the generative program: Predictive returns each layer's components and patches
    torch.manual_seed(0)
    layerwise = Stack.from_config(presets.get("digits", (1, 8, 8)))
    draws = Predictive(lambda n: layerwise.sample(n, options=SamplingOptions(mean=True)), num_samples=3)(5)
    shapes = {"layer0.z": (3, 5, 3, 3), "layer0.x": (3, 5, 3, 3, 16), "layer1.z": (3, 5, 1, 1)}
    assert {name: tuple(v.shape) for name, v in draws.items()} == shapes | {"layer1.x": (3, 5, 1, 1, 900)}
    means = layerwise.mixture_layer(0).means.detach()
    torch.testing.assert_close(draws["layer0.x"], means[draws["layer0.z"]])  # mean=True: the drawn means
    joint = Stack.from_config(presets.get("Jdigits", (1, 8, 8)))
    draws = Predictive(joint.sample, num_samples=2)(4)
    assert sorted(draws) == ["layer0.x", "layer0.z", "layer1.z", "layer2.z"]
    assert draws["layer2.z"].shape == (2, 4, 1, 1) and draws["layer0.z"].shape == (2, 4, 4, 4)
