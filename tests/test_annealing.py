import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_dcgmm import GMM, AnnealingSchedule, Fold, Stack, torus_neighbourhood
from pyro_dcgmm.model.annealing import torus_grid_shape


@pytest.mark.parametrize("k,shape", [(25, (5, 5)), (12, (3, 4)), (7, (1, 7)), (1, (1, 1))])
def test_grid_shape(k, shape):
    assert torus_grid_shape(k) == shape


@pytest.mark.parametrize("k", [25, 12, 7, 49])
@pytest.mark.parametrize("width", [0.3, 1.0, 2.5])
def test_neighbourhood_is_symmetric_and_doubly_stochastic(k, width):
    g = torus_neighbourhood(k, width, dtype=torch.float64)
    torch.testing.assert_close(g, g.T)
    torch.testing.assert_close(g.sum(0), torch.ones(k, dtype=torch.float64))
    torch.testing.assert_close(g.sum(1), torch.ones(k, dtype=torch.float64))


def test_neighbourhood_is_identity_at_floor():
    g = torus_neighbourhood(25, 0.01, width_floor=0.01, dtype=torch.float64)
    assert torch.equal(g, torch.eye(25, dtype=torch.float64))


def _stack(width):
    stack = Stack(
        [Fold(3, 1), GMM(9, annealing=True, width_init=width, width_floor=0.01)], (1, 8, 8)
    ).double()
    with torch.no_grad():
        stack.layers[1].mixing_logits.normal_()
        stack.layers[1].means.uniform_(0, 1)
    return stack


@pytest.mark.parametrize("width", [0.2, 0.7, 1.5, 4.0])
def test_annealed_loss_is_a_lower_bound_on_log_likelihood(images64, width):
    stack = _stack(width)
    elbo = TraceEnum_ELBO(max_plate_nesting=3)
    annealed = elbo.loss(stack.model, stack.guide, images64)
    exact = elbo.loss(stack.model, stack.guide, images64, annealed=False)
    assert annealed >= exact - 1e-9  # a loss: the annealed bound on log p is lower
    assert annealed > exact + 1e-3  # and strictly lower while the width is above its floor


def test_annealed_loss_is_exact_at_floor(images64):
    stack = _stack(0.01)
    gmm = stack.layers[1]
    assert gmm.annealing_finished
    elbo = TraceEnum_ELBO(max_plate_nesting=3)
    loss = elbo.loss(stack.model, stack.guide, images64)
    assert loss == pytest.approx(-gmm.log_prob(images64).sum().item(), rel=1e-12)


def test_schedule_shrinks_only_on_plateaus():
    schedule = AnnealingSchedule(2.0, floor=0.5, decay=0.5, window=2, tolerance=0.05)
    for loss in [10.0, 10.0, 5.0, 5.0]:  # windows 1 and 2: reference values
        assert not schedule.update(loss)
    assert not schedule.update(3.0) and not schedule.update(3.0)  # improving: 2 of 5 gained
    assert schedule.width == 2.0
    changed = [schedule.update(loss) for loss in [2.99, 2.99]]  # plateau
    assert changed == [False, True] and schedule.width == 1.0
    for _ in range(20):
        schedule.update(2.99)
    assert schedule.width == 0.5 and schedule.finished


def test_schedule_state_round_trip():
    schedule = AnnealingSchedule(2.0, window=3)
    for loss in [5.0, 4.0, 3.0, 2.0, 1.0]:
        schedule.update(loss)
    copy = AnnealingSchedule(9.0, window=3)
    copy.load_state_dict(schedule.state_dict())
    for loss in [1.0] * 12:
        assert schedule.update(loss) == copy.update(loss)
    assert schedule.width == copy.width
