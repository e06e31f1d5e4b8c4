"""Training's TraceEnumELBO: Pyro's TraceEnum_ELBO in loss and gradients, without reading the device."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_dcgmm import GMM, Fold, JointStack, Stack, presets
from pyro_dcgmm.inference.guides import mean_field_guide
from pyro_dcgmm.model.tree import Tree
from pyro_dcgmm.training.elbo import TraceEnumELBO

PRIORS = {"weight_concentration_prior": 2.0, "mean_precision_prior": 0.5, "degrees_of_freedom_prior": 12.0}


def digits(**options) -> Stack:
    """Preset digits (two GMM layers, annealing, a Readout) in float64, every layer initialised."""
    torch.manual_seed(0)
    stack = Stack.from_config(presets.get("digits", (1, 8, 8), **options)).double()
    for layer in stack.mixture_layers:
        layer.mark_initialised_()
    return stack


def with_priors() -> Stack:
    torch.manual_seed(0)
    stack = Stack([Fold(3, 2), GMM(3, **PRIORS)], (1, 8, 8)).double()
    stack.mixture_layers[0].mark_initialised_()
    return stack


def joint() -> Stack:
    torch.manual_seed(0)
    return JointStack([Fold(2, 2), GMM(4), Tree(3, block="full")], (1, 8, 8)).double()


CASES = {
    "digits, shared": (digits, "point"),
    "digits, per position": (lambda: digits(shared=False), "point"),
    "priors, point guide": (with_priors, "point"),
    "priors, mean-field guide": (with_priors, "mean field"),
    "joint": (joint, "point"),
}


def loss_and_gradients(elbo_class, stack, guide, enumerated: bool):
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 4, 5]) if stack.num_classes else None
    elbo = elbo_class(max_plate_nesting=stack.max_plate_nesting, strict_enumeration_warning=False)
    pyro.set_rng_seed(0)  # the mean-field guide draws its weights
    loss = elbo.differentiable_loss(stack.model, guide, x, labels=labels, num_data=30, enumerated=enumerated)
    parameters = [p for p in stack.parameters() if p.requires_grad]
    parameters += [p for p in getattr(guide, "parameters", list)() if p.requires_grad]
    return loss, torch.autograd.grad(loss, parameters, allow_unused=True)


def make_guide(stack, kind: str):
    return stack.guide if kind == "point" else mean_field_guide(stack, num_data=30).double()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("enumerated", [False, True])
def test_the_loss_and_its_gradients_are_pyros(case, enumerated):
    build, kind = CASES[case]
    stack = build()
    guide = make_guide(stack, kind)
    loss_and_gradients(TraceEnum_ELBO, stack, guide, enumerated)  # a guide makes its parameters
    ours, our_gradients = loss_and_gradients(TraceEnumELBO, stack, guide, enumerated)
    pyros, pyro_gradients = loss_and_gradients(TraceEnum_ELBO, stack, guide, enumerated)
    torch.testing.assert_close(ours, pyros, rtol=1e-12, atol=0)
    for mine, theirs in zip(our_gradients, pyro_gradients, strict=True):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


class HostReads(TorchDispatchMode):
    """Counts the scalars read from tensors (``item``, ``bool``): on a GPU each waits for it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", list(CASES))
def test_the_closed_form_loss_and_its_backward_pass_read_nothing(case):
    build, kind = CASES[case]
    stack = build()
    guide = make_guide(stack, kind)
    counts = []
    for elbo_class in (TraceEnumELBO, TraceEnum_ELBO):
        loss_and_gradients(elbo_class, stack, guide, enumerated=False)  # guides make their parameters
        with pyro.validation_enabled(False), HostReads() as reads:  # as training runs
            loss_and_gradients(elbo_class, stack, guide, enumerated=False)
        counts.append(reads.count)
    assert counts[0] == 0 and counts[1] > 0  # Pyro's reads (Dice and warn_if_nan), ours none


def test_a_guide_with_a_score_function_term_takes_pyros_estimate():
    data = torch.tensor([0.3, 1.7, 0.9])

    def model():
        coin = pyro.sample("coin", dist.Bernoulli(0.4))
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(coin, 1.0), obs=data)

    def guide():
        pyro.sample("coin", dist.Bernoulli(pyro.param("q", torch.tensor(0.7))))

    results = []
    for elbo_class in (TraceEnumELBO, TraceEnum_ELBO):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        elbo = elbo_class(max_plate_nesting=1, strict_enumeration_warning=False)
        loss = elbo.differentiable_loss(model, guide)
        results.append((loss, torch.autograd.grad(loss, pyro.param("q"))[0]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
