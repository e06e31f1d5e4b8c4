import math
from unittest import mock

import pytest
import torch

from pyro_dcgmm.model import subnormal
from pyro_dcgmm.model.logsumexp import component_logsumexp


def _table(dtype=torch.float64) -> torch.Tensor:
    torch.manual_seed(0)
    return (20.0 * torch.randn(4, 3, 5, 7, dtype=dtype)).requires_grad_()


def test_the_value_and_gradient_are_torch_logsumexp_in_float64():
    table = _table()
    incoming = torch.randn(4, 3, 5, dtype=torch.float64)
    ours = component_logsumexp(table)
    (gradient,) = torch.autograd.grad(ours, table, incoming)
    reference = torch.logsumexp(table, -1)
    (expected,) = torch.autograd.grad(reference, table, incoming)
    torch.testing.assert_close(ours, reference, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-300)


def test_any_layout_of_the_table_gives_the_same_result():
    table = _table().detach()
    strided = table.transpose(0, 2).contiguous().transpose(0, 2)  # the same values, other strides
    assert not strided.is_contiguous()
    assert torch.equal(component_logsumexp(table), component_logsumexp(strided))


def test_infinite_and_nan_entries_behave_as_in_torch():
    table = torch.tensor([[-math.inf, -math.inf], [0.0, -math.inf], [math.inf, 0.0], [math.nan, 0.0]])
    ours, reference = component_logsumexp(table), torch.logsumexp(table, -1)
    torch.testing.assert_close(ours, reference, equal_nan=True)
    assert ours[0] == -math.inf and ours[1] == 0.0 and ours[2] == math.inf and ours[3].isnan()


def test_float32_gradients_keep_normal_numbers_and_drop_subnormal_ones_on_cpu():
    # components 0, 60, 90 and 120 nats below the best: normal, normal, subnormal and zero weights
    table = torch.tensor([[0.0, -60.0, -90.0, -120.0]], requires_grad=True)
    (gradient,) = torch.autograd.grad(component_logsumexp(table), table, torch.ones(1))
    exact = torch.softmax(table.detach().double(), -1).float()
    assert 0.0 < exact[0, 2] < torch.finfo(torch.float32).tiny  # subnormal in float32
    assert torch.equal(gradient, torch.where(exact.abs() < torch.finfo(torch.float32).tiny, 0.0, exact))
    with mock.patch.object(subnormal, "flushed", lambda tensor: False):  # as on a GPU
        (kept,) = torch.autograd.grad(component_logsumexp(table), table, torch.ones(1))
    assert kept[0, 2] > 0.0 and torch.equal(kept[:, :2], gradient[:, :2])
    assert torch.equal(component_logsumexp(table.detach()), torch.logsumexp(table.detach(), -1))


def test_a_second_derivative_is_refused_rather_than_wrong():
    table = _table()
    (gradient,) = torch.autograd.grad(component_logsumexp(table).sum(), table, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gradient.sum(), table)
