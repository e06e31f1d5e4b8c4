"""Covariance structures: exact densities against torch.distributions in float64, exact EM steps,
sampling, the stationary power spectrum, and training through the ordinary Pyro model."""

import math

import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch.distributions import MultivariateNormal

from pyro_dcgmm import GMM, Fold, Stack
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.model.covariances.stationary import conjugate_orbits, hartley_basis
from pyro_dcgmm.training.em import OnlineEM
from pyro_dcgmm.training.initialisation import initialise
from pyro_dcgmm.training.step import Batch, train_step
from pyro_dcgmm.training.trainer import train
from tests.test_gmm import patches_of

KINDS = ["diag", "full", "stationary"]


def random_stack(kind, shared, patch=(3, 3), stride=(2, 1), channels=2, size=(7, 6), seed=0):
    """A float64 stack whose GMM has random means, weights and covariances (fitted to random data)."""
    torch.manual_seed(seed)
    gmm = GMM(4, shared=shared, covariance=kind, precision_floor=1e-3, precision_ceiling=1e3, init="random")
    stack = Stack([Fold(patch, stride), gmm], (channels, *size)).double()
    x = torch.rand(40, channels, *size, dtype=torch.float64) ** 2
    gmm.config = gmm.config.__class__(**{**gmm.config.__dict__, "init": "data", "init_vectors": 40})
    initialise(gmm, x, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        gmm.means.add_(gmm.covariance.project_means(0.1 * torch.randn_like(gmm.means)))
        gmm.mixing_logits.normal_()
    return stack, gmm


def reference_table(gmm, patches):
    """(N, K, H', W') through MultivariateNormal with the structure's dense covariance."""
    means, covariance = gmm.means.detach(), gmm.covariance.covariance_matrix().detach()
    value = MultivariateNormal(means, covariance).log_prob(patches[..., None, :])  # (N, H', W', K)
    return value.permute(0, 3, 1, 2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("channels", [1, 2])  # a diagonal table of one channel convolves [x, x^2] at once
def test_table_equals_multivariate_normal(kind, shared, channels):
    _, gmm = random_stack(kind, shared, channels=channels)
    x = torch.rand(5, channels, 7, 6, dtype=torch.float64)
    expected = reference_table(gmm, patches_of(x, (3, 3), (2, 1)))
    torch.testing.assert_close(gmm.log_prob_table(x), expected, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_log_scores_add_the_log_weights_at_every_position(kind, shared, masked):
    _, gmm = random_stack(kind, shared)  # the weights go into the table's bias where it has one
    x = torch.rand(3, 2, 7, 6, dtype=torch.float64)
    mask = torch.rand(3, 2, 7, 6) > 0.4 if masked else None
    expected = gmm.log_prob_table(x, mask) + gmm.log_mixing_map()
    torch.testing.assert_close(gmm.log_scores(x, mask), expected, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shared", [True, False])
def test_masked_table_is_the_exact_marginal(kind, shared):
    _, gmm = random_stack(kind, shared)
    x = torch.rand(3, 2, 7, 6, dtype=torch.float64)
    mask = torch.rand(3, 2, 7, 6) > 0.4
    table = gmm.log_prob_table(torch.where(mask, x, float("nan")), mask)
    patches, seen = patches_of(x, (3, 3), (2, 1)), patches_of(mask.double(), (3, 3), (2, 1)) > 0.5
    means, covariance = gmm.means.detach(), gmm.covariance.covariance_matrix().detach()
    for n, h, w in [(0, 0, 0), (1, 2, 3), (2, 1, 2)]:
        observed = seen[n, h, w]
        mu = means if shared else means[h, w]
        sigma = covariance if shared else covariance[h, w]
        marginal = MultivariateNormal(mu[:, observed], sigma[:, observed][:, :, observed])
        torch.testing.assert_close(table[n, :, h, w], marginal.log_prob(patches[n, h, w, observed]))


@pytest.mark.parametrize("kind", KINDS)
def test_component_distribution_has_the_structures_covariance(kind):
    _, gmm = random_stack(kind, False)
    z = torch.randint(4, (2, 3, 4))
    select = gmm._selector(z)
    loc = select(gmm.means.detach())
    x = torch.randn(2, 3, 4, gmm.means.shape[-1], dtype=torch.float64)
    covariance = select(gmm.covariance.covariance_matrix().detach())
    expected = MultivariateNormal(loc, covariance / 4.0).log_prob(x)
    torch.testing.assert_close(gmm.covariance.distribution(loc, select, 2.0).log_prob(x), expected)


def hand_written_em(vectors, means, covariances, weights):
    """One batch EM step for a full-covariance mixture: vectors (M, D), means (K, D), (K, D, D)."""
    log_n = MultivariateNormal(means, covariances).log_prob(vectors[:, None])  # (M, K)
    r = torch.softmax(log_n + weights.log(), dim=1)
    mass = r.sum(0)
    new_means = (r.T @ vectors) / mass[:, None]
    centred = vectors[:, None] - new_means  # (M, K, D)
    scatter = torch.einsum("mk,mkd,mke->kde", r, centred, centred) / mass[:, None, None]
    return new_means, scatter, mass / mass.sum()


def stationary_m_step(gmm, means, covariance):
    """Project an unconstrained M-step onto stationary components: mean level and power per pair."""
    stationary = gmm.covariance
    structure = stationary.structure()
    coefficients = structure.basis @ covariance @ structure.basis.T  # (K, D, D)
    power = coefficients.diagonal(dim1=-2, dim2=-1) @ structure.orbit_matrix / structure.orbit_matrix.sum(0)
    power_per_coefficient = power @ structure.orbit_matrix.T
    level = stationary.project_means(means)
    shift = stationary.coefficients(means - level)  # the means' other frequencies add to the power
    pairs = (shift.square() @ structure.orbit_matrix) / structure.orbit_matrix.sum(0)
    power_per_coefficient = power_per_coefficient + pairs @ structure.orbit_matrix.T
    return level, (structure.basis.T * power_per_coefficient.unsqueeze(-2)) @ structure.basis


@pytest.mark.parametrize("kind", ["full", "stationary"])
def test_full_batch_em_step_is_exact_em(kind):
    stack, gmm = random_stack(kind, True, patch=(2, 2), stride=(1, 1), channels=1, size=(4, 4))
    images = torch.rand(60, 1, 4, 4, dtype=torch.float64)
    vectors = patches_of(images, (2, 2), (1, 1)).reshape(-1, 4)
    before = (gmm.means.detach().clone(), gmm.covariance.covariance_matrix().detach().clone())
    weights = torch.softmax(gmm.mixing_logits.detach(), -1)
    optimizer = OnlineEM([gmm], step_offset=1.0, step_decay=0.0)
    elbo = TraceEnum_ELBO(max_plate_nesting=3, strict_enumeration_warning=False)
    outcome = train_step(stack, elbo, optimizer, Batch(images, None, 60), [], TrainConfig(device="cpu"))
    assert outcome.problem is None
    means, covariance, mixing = hand_written_em(vectors, *before, weights)
    if kind == "stationary":
        means, covariance = stationary_m_step(gmm, means, covariance)
    torch.testing.assert_close(gmm.means.detach(), means)
    torch.testing.assert_close(gmm.covariance.covariance_matrix().detach(), covariance)
    torch.testing.assert_close(torch.softmax(gmm.mixing_logits.detach(), -1), mixing)


def test_hartley_basis_is_orthonormal_and_pairs_conjugate_frequencies():
    for height, width in [(4, 4), (3, 5), (8, 8)]:
        basis = hartley_basis(height, width)
        torch.testing.assert_close(basis @ basis.T, torch.eye(height * width, dtype=torch.float64))
        orbit = conjugate_orbits(height, width).reshape(height, width)
        for u in range(height):
            for v in range(width):
                assert orbit[u, v] == orbit[(-u) % height, (-v) % width]
        assert (
            int(orbit.max()) + 1
            == (
                height * width
                + sum(
                    1
                    for u in range(height)
                    for v in range(width)
                    if (2 * u) % height == 0 and (2 * v) % width == 0
                )
            )
            // 2
        )


def test_stationary_component_recovers_a_known_power_spectrum():
    """Samples of a periodic stationary Gaussian, made by filtering white noise in the Fourier
    domain, give back that spectrum as the fitted component's variances."""
    size = 8
    u = torch.fft.fftfreq(size, dtype=torch.float64)
    spectrum = 0.01 / (0.02 + u[:, None] ** 2 + u[None, :] ** 2)  # symmetric: S(f) = S(-f)
    white = torch.randn(20000, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    images = torch.fft.ifft2(torch.fft.fft2(white) * spectrum.sqrt()).real.unsqueeze(1)  # (M, 1, 8, 8)
    gmm = GMM(
        1,
        covariance="stationary",
        init="data",
        init_vectors=20000,
        precision_floor=1e-3,
        precision_ceiling=1e4,
    )
    Stack([Fold(size, size), gmm], (1, size, size)).double()
    initialise(gmm, images, torch.Generator().manual_seed(1))
    power = 1.0 / gmm.covariance.precision_map().detach()[0, 0]  # (8, 8): variance per frequency
    torch.testing.assert_close(power, spectrum, rtol=0.05, atol=0.0)
    assert float(gmm.means.detach().abs().max()) < 0.05  # a stationary component: one mean level


def test_stationary_means_stay_constant_and_full_precisions_inside_bounds():
    _, gmm = random_stack("stationary", True)
    with torch.no_grad():
        gmm.means.normal_()
    gmm.project_()
    patch_means = gmm.means.detach().view(4, 2, 9)
    torch.testing.assert_close(patch_means, patch_means.mean(-1, keepdim=True).expand_as(patch_means))
    _, gmm = random_stack("full", True)
    with torch.no_grad():
        gmm.covariance.precision_matrix.mul_(1e6)
    gmm.project_()
    eigenvalues = torch.linalg.eigvalsh(gmm.covariance.precision.detach())
    assert float(eigenvalues.max()) <= 1e3 * (1 + 1e-9) and float(eigenvalues.min()) >= 1e-3


@pytest.mark.parametrize("kind", ["full", "stationary"])
@pytest.mark.parametrize("optimizer", ["em", "adam"])
def test_structures_train_through_the_stack_model(kind, optimizer):
    """The enumerated model gives a finite loss, and training raises the likelihood."""
    torch.manual_seed(0)
    images = torch.rand(200, 1, 6, 6) ** 3
    stack = Stack([Fold(3, 3), GMM(4, covariance=kind)], (1, 6, 6))
    gmm = stack.layers[1]
    initialise(gmm, images, torch.Generator().manual_seed(0))
    with torch.no_grad():
        gmm.means.add_(0.05)
    before = float(stack.log_prob(images, 0).mean())
    enumerated = TraceEnum_ELBO(max_plate_nesting=3).loss(stack.model, stack.guide, images)
    config = TrainConfig(epochs=3, batch_size=50, optimizer=optimizer, lr=0.01, device="cpu", progress=False)
    train(stack, images, config=config)
    after = float(stack.log_prob(images, 0).mean())
    assert math.isfinite(float(enumerated))
    assert after > before
