import math

import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch.distributions import Normal

from pyro_dcgmm import GMM, Fold, Stack
from pyro_dcgmm.errors import ArchitectureError
from pyro_dcgmm.model.logsumexp import component_logsumexp
from pyro_dcgmm.model.outputs import layer_output
from pyro_dcgmm.model.subnormal import SubnormalGradientFlushed


def patches_of(x, patch, stride):
    """Patch vectors (N, H', W', D) in (C, ph, pw) order, built with explicit loops."""
    n, c, h, w = x.shape
    out_h, out_w = (h - patch[0]) // stride[0] + 1, (w - patch[1]) // stride[1] + 1
    result = torch.empty(n, out_h, out_w, c * patch[0] * patch[1], dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * stride[0], j * stride[1]
            result[:, i, j] = x[:, :, top : top + patch[0], left : left + patch[1]].reshape(n, -1)
    return result


def reference_table(gmm, patches):
    """log N(patch | mu_k, prec_k) (N, K, H', W') through torch.distributions.Normal."""
    means, precision = gmm.means.detach(), gmm.covariance.precision.detach()
    scale = precision.rsqrt()
    if gmm.config.shared:
        value = Normal(means, scale).log_prob(patches[..., None, :]).sum(-1)  # (N, H', W', K)
    else:
        value = Normal(means, scale).log_prob(patches[..., None, :]).sum(-1)  # per position
    return value.permute(0, 3, 1, 2)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("patch,stride", [((3, 3), (1, 1)), ((2, 3), (2, 1)), ((1, 1), (1, 1))])
def test_table_equals_normal_log_prob(shared, patch, stride):
    x = torch.rand(5, 2, 7, 9, dtype=torch.float64)
    stack = Stack([Fold(patch, stride), GMM(6, shared=shared)], (2, 7, 9)).double()
    gmm = stack.layers[1]
    with torch.no_grad():
        gmm.means.uniform_(-0.2, 1.2)
        gmm.covariance.log_precision.copy_(
            (torch.rand(gmm.means.shape, dtype=torch.float64) * 15 + 0.5).log()
        )
    table = gmm.log_prob_table(x)
    expected = reference_table(gmm, patches_of(x, patch, stride))
    assert table.shape == expected.shape
    torch.testing.assert_close(table, expected, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("shared", [True, False])
def test_log_prob_and_responsibilities_match_mixture(shared):
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    stack = Stack([Fold(3, 1), GMM(5, shared=shared)], (1, 6, 6)).double()
    gmm = stack.layers[1]
    with torch.no_grad():
        gmm.mixing_logits.normal_()
    patches = patches_of(x, (3, 3), (1, 1))
    log_n = reference_table(gmm, patches).permute(0, 2, 3, 1)  # (N, H, W, K)
    log_pi = torch.log_softmax(gmm.mixing_logits.detach(), -1)
    joint = log_n + log_pi
    torch.testing.assert_close(gmm.log_prob(x), joint.logsumexp(-1).sum((1, 2)))
    torch.testing.assert_close(stack.responsibilities(x, 0), torch.softmax(joint, -1).permute(0, 3, 1, 2))


@pytest.mark.parametrize("shared", [True, False])
def test_absorbed_fold_equals_materialised_patches(shared):
    x = torch.rand(3, 2, 9, 8, dtype=torch.float64)
    torch.manual_seed(3)
    absorbed = Stack([Fold(3, 2), GMM(4, shared=shared)], (2, 9, 8)).double()
    fold = Fold(3, 2)
    fold.build((2, 9, 8))
    patches = fold.transform(x)  # (N, D, H', W')
    torch.manual_seed(3)
    flat = Stack([GMM(4, shared=shared)], patches.shape[1:]).double()
    flat.layers[0].load_state_dict(absorbed.layers[1].state_dict())
    torch.testing.assert_close(absorbed.layers[1].log_scores(x), flat.layers[0].log_scores(patches))


def test_precision_stays_within_bounds():
    gmm = GMM(4, precision_floor=0.5, precision_ceiling=3.0, precision_init=1.0)
    gmm.build((1, 4, 4))
    with torch.no_grad():
        gmm.covariance.log_precision.fill_(1e6)
    gmm.project_()
    assert float(gmm.covariance.precision.detach().max()) <= 3.0 * (1 + 1e-6)
    with torch.no_grad():
        gmm.covariance.log_precision.fill_(-1e6)
    gmm.project_()
    assert float(gmm.covariance.precision.detach().min()) >= 0.5 * (1 - 1e-6)
    assert math.isfinite(gmm.log_prob(torch.rand(2, 1, 4, 4)).sum().item())


@pytest.mark.parametrize(
    "options",
    [
        {"components": 0},
        {"precision_floor": 0.0},
        {"precision_init": 30.0, "init": "random"},
        {"precision_ceiling": 0.005},
        {"width_decay": 1.5},
        {"wait": 1.0},
        {"classes": 1},
        {"classes": 3},
    ],
)
def test_invalid_gmm_options_raise(options):
    with pytest.raises(ArchitectureError):
        GMM(**{"components": 4, **options})


@pytest.mark.parametrize("shared", [True, False])
def test_outputs_are_the_posterior_likelihoods_or_standardised_logs(shared):
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    outputs = {}
    for output in ("responsibilities", "likelihoods", "log_responsibilities", "log_probabilities"):
        torch.manual_seed(0)
        stack = Stack([Fold(3, 1), GMM(5, shared=shared, output=output)], (1, 6, 6)).double()
        with torch.no_grad():
            stack.layers[1].mixing_logits.normal_()
        outputs[output] = stack.layers[1].transform(x)
        gmm = stack.layers[1]
    log_n = gmm.log_prob_table(x)
    torch.testing.assert_close(outputs["likelihoods"], torch.softmax(log_n, 1))
    centred = log_n - log_n.mean(1, keepdim=True)
    torch.testing.assert_close(
        outputs["log_probabilities"], centred / centred.square().mean(1, keepdim=True).sqrt()
    )
    torch.testing.assert_close(outputs["responsibilities"], torch.softmax(gmm.log_scores(x), 1))


def test_pruned_components_have_no_weight_and_pass_zero():
    from pyro_dcgmm.training.initialisation import prune_dead

    torch.manual_seed(0)
    stack = Stack(
        [Fold(3, 1), GMM(4, output="log_probabilities", dead_weight=0.1, dead_components="prune")], (1, 6, 6)
    )
    gmm = stack.layers[1]
    with torch.no_grad():
        gmm.mixing_logits.copy_(torch.tensor([0.01, 0.01, 0.48, 0.5]).log())
    assert prune_dead(gmm) == 2 and gmm.active.tolist() == [False, False, True, True]
    x = torch.rand(3, 1, 6, 6)
    assert float(gmm.log_mixing().detach()[:2].exp().max()) == 0.0
    assert float(gmm.transform(x).detach()[:, :2].abs().max()) == 0.0
    torch.testing.assert_close(
        gmm.log_prob(x),
        (gmm.log_prob_table(x)[:, 2:] + gmm.log_mixing()[2:, None, None]).logsumexp(1).sum((1, 2)),
    )
    with torch.no_grad():
        gmm.mixing_logits.copy_(torch.tensor([0.0, 0.0, 0.001, 1.0]).log())
    assert prune_dead(gmm) == 1 and gmm.active.tolist() == [False, False, False, True]
    assert prune_dead(gmm) == 0  # the heaviest component is never pruned


def test_pruning_keeps_each_mixtures_heaviest_component_by_the_weights_it_is_given():
    gmm = GMM(3, shared=False)
    Stack([Fold(2, 2), gmm], (1, 4, 4))  # a mixture at each of 2 x 2 positions
    weights = torch.tensor([[0.1, 0.5, 0.4]] * 3 + [[0.6, 0.3, 0.1]])
    assert gmm.prune_(torch.ones(4, 3, dtype=torch.bool), weights) == 8
    assert gmm.active.reshape(4, 3).tolist() == [[False, True, False]] * 3 + [[True, False, False]]


@pytest.mark.parametrize("output", ["log_responsibilities", "log_probabilities", "likelihoods"])
def test_a_layer_knows_when_it_has_pruned_components_and_outputs_the_same_without_them(output):
    torch.manual_seed(0)
    gmm = GMM(4, output=output)
    Stack([Fold(3, 1), gmm], (1, 6, 6))
    x = torch.rand(3, 1, 6, 6)
    scores = gmm.log_scores(x).detach()
    everything = torch.ones(1, 4, 1, 1, dtype=torch.bool)
    assert not gmm.pruned  # the mask-free output is the masked one with every component active
    assert torch.equal(gmm.output(scores), layer_output(output, scores, gmm.log_mixing_map, everything))
    fresh = GMM(4, output=output)
    Stack([Fold(3, 1), fresh], (1, 6, 6))
    gmm.prune_(torch.tensor([[False, True, False, False]]))
    fresh.load_state_dict(gmm.state_dict())
    assert gmm.pruned and fresh.pruned  # pruning and loading a pruned layer both note it
    assert float(fresh.output(fresh.log_scores(x).detach())[:, 1].abs().max()) == 0.0


@pytest.mark.parametrize(
    "output", ["responsibilities", "likelihoods", "log_responsibilities", "log_probabilities"]
)
@pytest.mark.parametrize("pruned", [False, True])
def test_outputs_made_in_place_equal_those_that_carry_a_gradient(output, pruned):
    # training's detached outputs overwrite their own temporaries; the scores stay untouched
    torch.manual_seed(0)
    gmm = GMM(4, output=output)
    Stack([Fold(3, 1), gmm], (1, 6, 6))
    if pruned:
        gmm.prune_(torch.tensor([[False, True, False, False]]))
    scores = gmm.log_scores(torch.rand(3, 1, 6, 6))
    kept = scores.detach().clone()
    detached = gmm.output(scores.detach())
    differentiable = gmm.output(scores)
    assert differentiable.requires_grad and torch.equal(scores.detach(), kept)
    assert torch.equal(detached, differentiable.detach())


@pytest.mark.parametrize("covariance", ["diag", "full", "stationary"])
@pytest.mark.parametrize("shared", [True, False])
def test_tables_and_outputs_keep_the_components_last_in_memory_up_the_stack(covariance, shared):
    # channels-last: reductions over the components read contiguous memory, convolutions run fast
    first, second = (GMM(k, shared=shared, covariance=covariance) for k in (5, 4))
    stack = Stack([Fold(3, 1), first, Fold(2, 2), second], (1, 9, 9))
    x = torch.rand(6, 1, 9, 9)
    for layer in stack.mixture_layers:
        scores = layer.log_scores(x)
        output = layer.output(scores)
        assert scores.shape[2:] != (1, 1) and torch.equal(output, layer.transform(x))
        assert scores.is_contiguous(memory_format=torch.channels_last)
        assert output.is_contiguous(memory_format=torch.channels_last)
        x = output


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_subnormal_gradients_are_zeroed_and_normal_ones_kept(dtype):
    tiny = torch.finfo(dtype).tiny  # the smallest normal number
    table = torch.linspace(-3, 3, 6, dtype=dtype, requires_grad=True)
    flushed = SubnormalGradientFlushed.apply(table)
    assert torch.equal(flushed, table)
    incoming = torch.tensor([1.0, -2.5, tiny, tiny / 4, -tiny / 8, 0.0], dtype=dtype)
    assert incoming[3] > 0  # tiny / 4 is subnormal, not zero
    (gradient,) = torch.autograd.grad(flushed, table, incoming)
    assert torch.equal(gradient, torch.tensor([1.0, -2.5, tiny, 0.0, 0.0, 0.0], dtype=dtype))


def test_training_gradients_match_the_mixture_with_far_apart_components():
    # components 0, 90 and 200 nats apart from the best give normal, subnormal and zero
    # responsibilities in float32; the layer's gradient must be the mixture's, subnormals aside
    torch.manual_seed(0)
    stack = Stack([Fold(2, 1), GMM(3)], (1, 5, 5))
    gmm = stack.layers[1]
    x = torch.rand(8, 1, 5, 5)
    with torch.no_grad():
        gmm.means.copy_(torch.tensor([[0.5] * 4, [3.8] * 4, [5.5] * 4]))
        gmm.covariance.log_precision.fill_(math.log(4.0))
    scores, table = gmm.annealed_log_scores(x, annealed=False)
    flushed = torch.autograd.grad(component_logsumexp(table).sum(), gmm.means)[0]  # as training takes it
    unflushed = gmm.log_prob_table(x) + gmm.log_mixing_map()
    exact = torch.autograd.grad(unflushed.logsumexp(1).sum(), gmm.means)[0]
    responsibilities = torch.softmax(scores.detach(), 1)
    assert ((responsibilities > 0) & (responsibilities < torch.finfo(torch.float32).tiny)).any()
    torch.testing.assert_close(flushed, exact, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("enumerated", [True, False])
def test_labelled_samples_are_scored_by_their_class_components_only(enumerated):
    torch.manual_seed(0)
    gmm = GMM(4, classes=2, init="random")  # components 0, 1: class 0; 2, 3: class 1
    stack = Stack([Fold(None), gmm], (1, 2, 2)).double()
    with torch.no_grad():
        gmm.means.uniform_(0.0, 1.0)
        gmm.covariance.log_precision.uniform_(0.0, 2.0)
        gmm.mixing_logits.normal_()
    x = torch.rand(6, 1, 2, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    sd = gmm.covariance.precision.detach().rsqrt()
    log_weights = torch.log_softmax(gmm.mixing_logits.detach(), -1)
    joint = log_weights + Normal(gmm.means.detach(), sd).log_prob(x.view(6, 1, 4)).sum(-1)  # (6, K)
    within = joint.view(6, 2, 2)[torch.arange(6), labels].logsumexp(-1)
    elbo = TraceEnum_ELBO(max_plate_nesting=3, strict_enumeration_warning=False)
    labelled = elbo.differentiable_loss(stack.model, stack.guide, x, labels=labels, enumerated=enumerated)
    unlabelled = elbo.differentiable_loss(stack.model, stack.guide, x, enumerated=enumerated)
    torch.testing.assert_close(labelled, -within.sum())
    torch.testing.assert_close(unlabelled, -joint.logsumexp(-1).sum())
