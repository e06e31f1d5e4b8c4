"""Online EM through the ELBO gradient: one full-batch step with rho = 1 is one exact EM step."""

import math

import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_dcgmm import GMM, Fold, Stack
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.config.run import AUTO_BATCH_SIZES
from pyro_dcgmm.training.em import OnlineEM, step_size
from pyro_dcgmm.training.optim import make_optimizer
from pyro_dcgmm.training.step import Batch, train_step


def hand_written_em_step(vectors, means, variances, weights, floor, ceiling, allowed=None):
    """Batch EM for one diagonal mixture: vectors (M, D), means/variances (K, D), weights (K,);
    ``allowed`` (M, K): the components each vector may belong to (all if ``None``)."""
    diff = vectors[:, None, :] - means[None]  # (M, K, D)
    log_n = -0.5 * (diff**2 / variances + variances.log() + math.log(2 * math.pi)).sum(-1)
    if allowed is not None:
        log_n = log_n.masked_fill(~allowed, -math.inf)
    r = torch.softmax(log_n + weights.log(), dim=1)  # (M, K)
    mass = r.sum(0)  # (K,)
    new_means = (r.T @ vectors) / mass[:, None]
    new_var = (r.T @ vectors**2) / mass[:, None] - new_means**2
    new_var = new_var.clamp(1.0 / ceiling, 1.0 / floor)
    return new_means, new_var, mass / mass.sum()


def _stack(shared, components=3, classes=0):
    torch.manual_seed(0)
    gmm = GMM(
        components,
        shared=shared,
        init="random",
        precision_floor=0.1,
        precision_ceiling=500.0,
        precision_init=5.0,
        classes=classes,
    )
    stack = Stack([Fold(3, 2), gmm], (1, 7, 7)).double()
    with torch.no_grad():
        gmm.means.uniform_(0.0, 1.0)
        gmm.covariance.log_precision.uniform_(0.0, 2.0)
        gmm.mixing_logits.normal_()
    return stack, gmm


@pytest.mark.parametrize("shared", [True, False])
def test_full_batch_em_step_with_unit_step_size_is_exact_em(shared):
    stack, gmm = _stack(shared)
    images = torch.rand(40, 1, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    patches = torch.nn.functional.unfold(images, 3, stride=2)  # (N, D, L)
    before = [
        p.detach().clone()
        for p in (gmm.means, gmm.covariance.precision, torch.softmax(gmm.mixing_logits, -1))
    ]
    optimizer = OnlineEM([gmm], step_offset=1.0, step_decay=0.0)
    elbo = TraceEnum_ELBO(max_plate_nesting=3, strict_enumeration_warning=False)
    config = TrainConfig(device="cpu")
    outcome = train_step(stack, elbo, optimizer, Batch(images, None, images.shape[0]), [], config)
    assert outcome.problem is None
    if shared:
        vectors = patches.transpose(1, 2).reshape(-1, 9)
        expected = hand_written_em_step(vectors, before[0], 1 / before[1], before[2], 0.1, 500.0)
        got = (gmm.means, 1 / gmm.covariance.precision, torch.softmax(gmm.mixing_logits, -1))
        for e, g in zip(expected, got, strict=True):
            torch.testing.assert_close(g, e)
        return
    for position in range(9):
        h, w = divmod(position, 3)
        expected = hand_written_em_step(
            patches[:, :, position], before[0][h, w], 1 / before[1][h, w], before[2][h, w], 0.1, 500.0
        )
        got = (
            gmm.means[h, w],
            1 / gmm.covariance.precision[h, w],
            torch.softmax(gmm.mixing_logits[h, w], -1),
        )
        for e, g in zip(expected, got, strict=True):
            torch.testing.assert_close(g, e)


def test_full_batch_em_step_with_labels_is_exact_em_within_each_class():
    stack, gmm = _stack(True, components=4, classes=2)  # components 0, 1: class 0; 2, 3: class 1
    images = torch.rand(40, 1, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(40) % 2
    before = [
        p.detach().clone()
        for p in (gmm.means, gmm.covariance.precision, torch.softmax(gmm.mixing_logits, -1))
    ]
    optimizer = OnlineEM([gmm], step_offset=1.0, step_decay=0.0)
    elbo = TraceEnum_ELBO(max_plate_nesting=3, strict_enumeration_warning=False)
    outcome = train_step(stack, elbo, optimizer, Batch(images, labels, 40), [], TrainConfig(device="cpu"))
    assert outcome.problem is None
    vectors = torch.nn.functional.unfold(images, 3, stride=2).transpose(1, 2).reshape(-1, 9)  # (40 * 9, 9)
    vector_labels = labels.repeat_interleave(9)
    allowed = (torch.arange(4) // 2)[None] == vector_labels[:, None]  # (M, K)
    expected = hand_written_em_step(vectors, before[0], 1 / before[1], before[2], 0.1, 500.0, allowed)
    got = (gmm.means, 1 / gmm.covariance.precision, torch.softmax(gmm.mixing_logits, -1))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e)


def test_step_sizes_follow_the_schedule():
    assert step_size(0, 2.0, 0.6) == pytest.approx(2.0**-0.6)
    assert step_size(8, 2.0, 0.5) == pytest.approx(10.0**-0.5)
    assert step_size(5, 1.0, 0.0) == 1.0


def test_waiting_layer_is_left_alone():
    _, gmm = _stack(True)
    optimizer = OnlineEM([gmm])
    means = gmm.means.detach().clone()
    optimizer.step()  # no gradients at all
    assert torch.equal(gmm.means, means)


def test_a_larger_batch_forgets_as_much_as_the_reference_steps_over_its_samples():
    reference = [step_size(j, 2.0, 0.6) for j in range(40)]
    for t, multiple in [(0, 10), (3, 10), (1, 4)]:
        kept = math.prod(1.0 - rho for rho in reference[t * multiple : (t + 1) * multiple])
        assert step_size(t, 2.0, 0.6, multiple) == pytest.approx(1.0 - kept)
    assert step_size(7, 2.0, 0.6, 1.0) == reference[7]  # the reference batch: today's schedule
    halves = (1.0 - step_size(0, 2.0, 0.6, 0.5)) * (1.0 - step_size(1, 2.0, 0.6, 0.5))
    assert halves == pytest.approx(1.0 - reference[0])  # two half batches make one reference step
    assert step_size(3, 1.0, 0.0, 7.5) == 1.0  # batch EM stays batch EM


def test_online_em_steps_by_the_batch_size_over_the_reference():
    config = TrainConfig(batch_size=1000, em_reference_batch=100, device="cpu")
    stack, _ = _stack(True)
    optimizer = make_optimizer(stack, config, num_data=5000).optimizers[0]
    assert optimizer.batch_multiple == 10.0
    assert TrainConfig(batch_size="auto").for_device("cpu").batch_size == 100
    assert TrainConfig(batch_size="auto").for_device("cuda").batch_size == AUTO_BATCH_SIZES["cuda"] > 100
    assert TrainConfig(batch_size=64).for_device("cuda").batch_size == 64
