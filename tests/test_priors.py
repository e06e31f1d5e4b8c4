"""Bayesian GMM layers: Dirichlet and Normal-Gamma priors, MAP-EM, and MAP or mean-field SVI in Pyro."""

import numpy as np
import pyro
import pytest
import torch
import torch.distributions as td
from pyro.distributions import constraints
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.nn import PyroParam

from pyro_dcgmm import DCGMM, GMM, Fold, JointStack, Stack
from pyro_dcgmm.cli.inspect import layer_rows
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.errors import ArchitectureError, ConfigError, LayerConfigError
from pyro_dcgmm.inference.guides import MeanFieldWeights, map_guide, mean_field_guide
from pyro_dcgmm.model.tree import Tree
from pyro_dcgmm.training.em import OnlineEM
from pyro_dcgmm.training.optim import make_optimizer
from pyro_dcgmm.training.step import Batch, train_step
from pyro_dcgmm.training.trainer import train

A0, K0, V0 = 2.0, 0.5, 12.0


def _stack(shared: bool, **priors) -> tuple[Stack, GMM]:
    """A float64 one-layer stack (3x3 patches at stride 2 of 7x7 images) with random parameters
    and a random prior centre and scale."""
    torch.manual_seed(0)
    options = {"init": "data", "precision_floor": 1e-3, "precision_ceiling": 1e4}
    gmm = GMM(3, shared=shared, **options, **priors)
    stack = Stack([Fold(3, 2), gmm], (1, 7, 7)).double()
    with torch.no_grad():
        gmm.means.uniform_(0.0, 1.0)
        gmm.covariance.log_precision.uniform_(0.0, 2.0)
        gmm.mixing_logits.normal_()
        if hasattr(gmm, "prior_mean"):
            gmm.prior_mean.uniform_(0.2, 0.8)
            gmm.prior_variance.uniform_(0.05, 0.2)
        gmm.mark_initialised_()
    return stack, gmm


def _images(n: int = 40) -> torch.Tensor:
    return torch.rand(n, 1, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def _patch_log_densities(x, means, precision, log_weights):
    """log pi_k + log N(v | mu_k, p_k) by torch.distributions: (N, L, K) for patches of ``x``,
    parameters (K, D) shared or (3, 3, K, D) per position."""
    patches = torch.nn.functional.unfold(x, 3, stride=2).transpose(1, 2)  # (N, L, D)
    k, dim = means.shape[-2:]
    means, precision = means.reshape(-1, k, dim), precision.reshape(-1, k, dim)  # (1 | L, K, D)
    normal = td.Normal(means, precision.rsqrt())
    return normal.log_prob(patches.unsqueeze(2)).sum(-1) + log_weights.reshape(-1, k)


def _log_prior(gmm, weights, means, precision):
    """The layer's log prior density written out with torch.distributions."""
    total = td.Dirichlet(torch.full_like(weights, A0)).log_prob(weights).sum()
    total += td.Gamma(V0 / 2, V0 / 2 * gmm.prior_variance).log_prob(precision).sum()
    return total + td.Normal(gmm.prior_mean, (K0 * precision).rsqrt()).log_prob(means).sum()


PRIORS = {"weight_concentration_prior": A0, "mean_precision_prior": K0, "degrees_of_freedom_prior": V0}


@pytest.mark.parametrize("shared", [True, False])
def test_elbo_is_the_negative_log_posterior_in_pyro_and_in_plain_torch(shared):
    stack, gmm = _stack(shared, **PRIORS)
    x, num_data = _images(), 100
    elbo = TraceEnum_ELBO(max_plate_nesting=3)
    pyro_loss = elbo.differentiable_loss(stack.model, stack.guide, x, num_data=num_data)
    weights, precision = gmm.mixing_weights(), gmm.covariance.precision
    table = _patch_log_densities(x, gmm.means, precision, weights.log())
    expected = -num_data / len(x) * table.logsumexp(-1).sum() - _log_prior(gmm, weights, gmm.means, precision)
    torch.testing.assert_close(pyro_loss, expected)
    torch.testing.assert_close(stack.loss(x, num_data=num_data), expected)
    likelihood_only = elbo.differentiable_loss(stack.model, stack.guide, x, num_data=num_data, priors=False)
    torch.testing.assert_close(likelihood_only, -num_data / len(x) * table.logsumexp(-1).sum())


def _expected_complete_log_posterior(gmm, x, responsibilities, num_data):
    """``num_data / N * sum r log(pi N(v))`` at the layer's current parameters, plus the log prior."""
    weights, precision = gmm.mixing_weights(), gmm.covariance.precision
    table = _patch_log_densities(x, gmm.means, precision, weights.log())
    data = num_data / len(x) * (responsibilities * table).sum()
    return data + _log_prior(gmm, weights, gmm.means, precision)


@pytest.mark.parametrize("shared", [True, False])
def test_full_batch_map_em_step_maximises_the_expected_log_posterior(shared):
    stack, gmm = _stack(shared, **PRIORS)
    x, num_data = _images(), 100
    with torch.no_grad():
        table = _patch_log_densities(x, gmm.means, gmm.covariance.precision, gmm.log_mixing())
        responsibilities = torch.softmax(table, -1)  # the E-step at the old parameters
    optimizer = OnlineEM([gmm], step_offset=1.0, step_decay=0.0, num_data=num_data)
    elbo = TraceEnum_ELBO(max_plate_nesting=3, strict_enumeration_warning=False)
    config = TrainConfig(device="cpu")  # optimizer "em": the likelihood's gradient feeds MAP-EM
    assert train_step(stack, elbo, optimizer, Batch(x, None, num_data), [], config).problem is None
    objective = _expected_complete_log_posterior(gmm, x, responsibilities, num_data)
    gradients = torch.autograd.grad(objective, [gmm.mixing_logits, gmm.means, gmm.covariance.log_precision])
    for gradient in gradients:  # a stationary point of the M-step's objective
        torch.testing.assert_close(gradient, torch.zeros_like(gradient), atol=1e-7, rtol=0)
    precision = gmm.covariance.precision.detach()
    assert bool((precision > 1e-3).all() and (precision < 1e4).all())  # inside the bounds: unclamped


def test_mean_field_weights_score_components_by_their_expected_log_weight():
    stack, gmm = _stack(True, weight_concentration_prior=0.3, weight_posterior="mean_field")
    x, num_data = _images(), 100
    with torch.no_grad():
        table = _patch_log_densities(x, gmm.means, gmm.covariance.precision, gmm.log_mixing())
        counts = num_data / len(x) * torch.softmax(table, -1).sum((0, 1))  # (K,)
    optimizer = OnlineEM([gmm], step_offset=1.0, step_decay=0.0, num_data=num_data)
    elbo = TraceEnum_ELBO(max_plate_nesting=3, strict_enumeration_warning=False)
    train_step(stack, elbo, optimizer, Batch(x, None, num_data), [], TrainConfig(device="cpu"))
    expected = torch.softmax(torch.digamma(counts + 0.3), -1)
    torch.testing.assert_close(gmm.mixing_weights().detach(), expected)


def test_a_small_weight_concentration_prunes_unused_components_but_never_the_heaviest():
    stack, gmm = _stack(True, weight_concentration_prior=0.01)
    x = _images()
    with torch.no_grad():
        gmm.means[2].fill_(50.0)  # far from every patch: no responsibility
    optimizer = OnlineEM([gmm], step_offset=1.0, step_decay=0.0, num_data=len(x))
    elbo = TraceEnum_ELBO(max_plate_nesting=3, strict_enumeration_warning=False)
    train_step(stack, elbo, optimizer, Batch(x, None, len(x)), [], TrainConfig(device="cpu"))
    assert gmm.active.tolist() == [True, True, False]
    assert gmm.mixing_weights()[2] == 0
    single, layer = _stack(True, weight_concentration_prior=0.01)
    with torch.no_grad():
        layer.means[1:].fill_(50.0)
    optimizer = OnlineEM([layer], step_offset=1.0, step_decay=0.0, num_data=1)  # counts below 1 - a0
    train_step(single, elbo, optimizer, Batch(x[:1], None, 1), [], TrainConfig(device="cpu"))
    assert layer.active.tolist() == [True, False, False]
    assert float(layer.mixing_weights()[0]) == pytest.approx(1.0)  # the kept one weighs its counts


def test_plain_svi_with_autodelta_is_map_from_the_layers_parameters():
    stack, _ = _stack(True, **PRIORS)
    stack.float()
    x = _images(200).float()
    elbo = TraceEnum_ELBO(max_plate_nesting=3)
    guide = map_guide(stack)
    assert elbo.loss(stack.model, guide, x) == pytest.approx(elbo.loss(stack.model, stack.guide, x), rel=1e-6)
    svi = SVI(stack.model, guide, pyro.optim.Adam({"lr": 0.02}), elbo)
    losses = [svi.step(x) for _ in range(30)]
    assert losses[-1] < losses[0] - 50.0
    stack.assign_point_values_(guide.median())
    assert elbo.loss(stack.model, stack.guide, x) == pytest.approx(svi.evaluate_loss(x), rel=1e-5)


def test_plain_svi_with_the_stacks_point_guide_steps_the_layers_parameters():
    stack, _ = _stack(True, **PRIORS)
    stack.float()
    x = _images(200).float()
    svi = SVI(stack.model, stack.guide, pyro.optim.Adam({"lr": 0.02}), TraceEnum_ELBO(max_plate_nesting=3))
    losses = []
    for _ in range(30):
        losses.append(svi.step(x))
        stack.project_()
    assert losses[-1] < losses[0] - 50.0


def test_mean_field_guide_learns_a_dirichlet_posterior_of_the_weights():
    stack, gmm = _stack(True, weight_concentration_prior=0.5)
    stack.float()
    x = _images(200).float()
    guide = MeanFieldWeights(stack, num_data=len(x))
    guide.concentration0 = PyroParam(torch.ones(3), constraints.positive)  # start far from the posterior
    optimizer = pyro.optim.ClippedAdam({"lr": 0.1, "lrd": 0.996})  # a falling rate: the last step settles
    svi = SVI(stack.model, guide, optimizer, TraceEnum_ELBO(max_plate_nesting=3))
    losses = [svi.step(x) for _ in range(600)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    weights = guide.median()[gmm.site("weights")]  # the posterior mean of Dirichlet(a0 + counts)
    with torch.no_grad():  # each component's share of the patches, given those weights
        table = _patch_log_densities(x, gmm.means, gmm.covariance.precision, weights.log())
        shares = torch.softmax(table, -1).mean((0, 1))
    torch.testing.assert_close(weights, shares, atol=0.03, rtol=0)
    assert guide.concentration0.sum() > 15  # five times as confident as the three pseudo-counts it began with


def test_mean_field_guide_combines_the_dirichlet_with_autodelta_on_the_components():
    stack, gmm = _stack(True, **PRIORS)
    stack.float()
    x = _images(200).float()
    guide = mean_field_guide(stack, num_data=len(x))
    svi = SVI(stack.model, guide, pyro.optim.Adam({"lr": 0.02}), TraceEnum_ELBO(max_plate_nesting=3))
    losses = [svi.step(x) for _ in range(40)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 50.0
    assert set(guide.median()) == {gmm.site("weights"), gmm.site("precision"), gmm.site("means")}


def test_map_beats_maximum_likelihood_on_one_hundred_digits():
    """The acceptance check: a one-layer model trained on 100 digits, scored on the test set."""
    data = load_digits()
    train_x, test_x = data.train_images[:100].flatten(1).numpy(), data.test_images.flatten(1).numpy()
    options = {"n_components": 50, "covariance_type": "diag", "random_state": 0, "epochs": 50}
    ml = DCGMM(**options).fit(train_x)
    bayes = DCGMM(**options, weight_concentration_prior=1 / 50, mean_precision_prior=1.0).fit(train_x)
    assert bayes.score(test_x) > ml.score(test_x) + 100.0  # nats per image; ML overfits 100 images
    assert bayes.stack_.gmm_layers[0].active.sum() < 50  # the Dirichlet prior pruned components


def test_adam_trains_map_through_the_stack_guide_and_the_prior_centre_is_the_data():
    x = load_digits().train_images[:300]
    torch.manual_seed(0)
    stack = Stack([Fold(None), GMM(5, precision_ceiling=100.0, **PRIORS)], (1, 8, 8))
    config = TrainConfig(optimizer="adam", lr=0.02, epochs=3, progress=False, device="cpu")
    history = train(stack, x, config=config).history
    gmm = stack.gmm_layers[0]
    torch.testing.assert_close(gmm.prior_mean.squeeze(0), x.flatten(1).mean(0), atol=1e-5, rtol=0)
    assert history[-1]["train_loss"][-1] < history[0]["train_loss"][0]


def test_priors_survive_a_state_dict_round_trip():
    stack, _ = _stack(True, **PRIORS)
    copy, _ = _stack(True, **PRIORS)
    with torch.no_grad():
        for buffer in (copy.gmm_layers[0].prior_mean, copy.gmm_layers[0].prior_variance):
            buffer.fill_(1.0)
    copy.load_state_dict(stack.state_dict())
    x = _images()
    torch.testing.assert_close(copy.loss(x), stack.loss(x))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mean_precision_prior": 1.0, "covariance": "full"}, "covariance = 'diag'"),
        ({"mean_precision_prior": 1.0, "init": "random"}, "init = 'kmeans' or 'data'"),
        ({"weight_posterior": "mean_field"}, "needs a weight_concentration_prior"),
        ({"degrees_of_freedom_prior": 5.0}, "needs a mean_precision_prior"),
    ],
)
def test_prior_settings_that_cannot_work_are_refused(options, message):
    with pytest.raises(LayerConfigError, match=message):
        GMM(4, **options)


def test_what_priors_do_not_support_is_refused():
    with pytest.raises(ConfigError, match="online-EM update"):
        stack = Stack(
            [Fold(None), GMM(3, weight_concentration_prior=0.1, weight_posterior="mean_field")], (1, 4, 4)
        )
        make_optimizer(stack, TrainConfig(optimizer="adam"))
    with pytest.raises(ConfigError, match="needs num_data"):
        OnlineEM([GMM(3, weight_concentration_prior=0.1)])
    with pytest.raises(ArchitectureError, match="not a joint stack"):
        JointStack([Fold(2, 2), GMM(4, weight_concentration_prior=0.1), Tree(3, block="full")], (1, 4, 4))


def test_inspect_shows_the_priors_and_the_components_pruning_left():
    stack, gmm = _stack(False, weight_concentration_prior=0.01)
    first_heaviest = torch.tensor([[1.0, 0.0, 0.0]]).expand(9, 3)
    gmm.prune_(torch.tensor([[False, False, True]] * 8 + [[False, True, True]]), first_heaviest)
    row = layer_rows(stack)[-1]
    assert row[3:] == ["3 (1-2 left)", "per position", "Dirichlet(0.01, map)"]
