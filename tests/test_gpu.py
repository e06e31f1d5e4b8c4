"""Checks that need CUDA; skipped where there is none (as on CI)."""

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_dcgmm import Stack, presets
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.evaluation.metrics import held_out_log_likelihood as evaluate
from pyro_dcgmm.training.optim import make_optimizer
from pyro_dcgmm.training.step import Batch, make_elbo, unchecked_step
from pyro_dcgmm.training.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cuda_objectives_match_cpu():
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("E", (1, 28, 28))).double()
    x = torch.rand(16, 1, 28, 28, dtype=torch.float64)
    elbo = TraceEnum_ELBO(max_plate_nesting=3)
    cpu = elbo.differentiable_loss(stack.model, stack.guide, x, num_data=100)
    stack.cuda()
    for enumerated in (True, False):
        gpu = elbo.differentiable_loss(
            stack.model, stack.guide, x.cuda(), num_data=100, enumerated=enumerated
        )
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=0)


def test_training_on_cuda_improves_like_cpu():
    data = load_digits()
    config = TrainConfig(epochs=10, lr=0.03, batch_size=64, progress=False, device="cuda")
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("digits", (1, 8, 8), plateau_window=5))
    before = evaluate(stack, data.test_images)
    train(stack, data.train_images, data.train_labels, config=config)
    assert next(stack.parameters()).is_cuda
    after = evaluate(stack, data.test_images)
    assert after[0] > before[0] + 80.0


def test_data_streamed_from_pinned_host_memory_train_as_data_on_the_device():
    data = load_digits()
    states = []
    for placement in ("device", "host"):
        torch.manual_seed(0)
        stack = Stack.from_config(presets.get("digits", (1, 8, 8)))
        config = TrainConfig(epochs=2, batch_size=64, progress=False, device="cuda", data_placement=placement)
        train(stack, data.train_images, data.train_labels, config=config)
        states.append(stack.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=0, atol=0)


def test_a_training_step_on_cuda_never_waits_for_the_device():
    # the host reads a window's values once (training/window.py); nothing inside a step may read
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("E", (1, 28, 28))).cuda()
    for layer in stack.mixture_layers:
        layer.mark_initialised_()
    config = TrainConfig(batch_size=64, device="cuda")
    optimizer = make_optimizer(stack, config, num_data=6400)
    labels = torch.randint(10, (64,), device="cuda")
    batch = Batch(torch.rand(64, 1, 28, 28, device="cuda"), labels, 6400)
    elbo = make_elbo(stack, config)
    unchecked_step(stack, elbo, optimizer, batch, [], config)  # the optimiser makes its state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pyro.validation_enabled(False):  # as training runs (TrainConfig.validate_args)
            unchecked_step(stack, elbo, optimizer, batch, [], config)
    finally:
        torch.cuda.set_sync_debug_mode("default")
