"""The joint stack: one mixture over the pixels, checked against brute-force summation over every
assignment of components to positions on tiny models (float64, torch.distributions)."""

import itertools
import math

import numpy as np
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from scipy.stats import chisquare

from pyro_dcgmm import GMM, Fold
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.inference.sampling import SamplingOptions
from pyro_dcgmm.model.joint import JointStack
from pyro_dcgmm.model.tree import Tree
from pyro_dcgmm.training.trainer import train

SHAPE = (1, 4, 6)  # leaves of 2x2 patches on a 2x3 grid; a 2x2 block makes a ragged 1x2 level


def tiny_stack(shared=True, covariance="diag", classes=0, leaf_components=2, seed=0) -> JointStack:
    """Leaves (2x3, K) - Tree(2, block 2: 1x2, the second block cut short) - Tree(top, whole grid)."""
    torch.manual_seed(seed)
    top = 4 if classes else 2
    layers = [
        Fold(2, 2),
        GMM(
            leaf_components, shared=shared, covariance=covariance, precision_floor=0.5, precision_ceiling=50.0
        ),
        Tree(2, block=2, shared=shared),
        Tree(top, block="full", classes=classes),
    ]
    stack = JointStack(layers, SHAPE).double()
    with torch.no_grad():
        for parameter in stack.parameters():
            parameter.normal_()
        stack.leaf.means.uniform_(0.0, 1.0)
        if covariance == "full":
            factor = torch.randn_like(stack.leaf.covariance.precision_matrix) * 0.3
            eye = torch.eye(4, dtype=torch.float64)
            stack.leaf.covariance.precision_matrix.copy_(5.0 * eye + factor @ factor.transpose(-1, -2))
        for layer in stack.mixture_layers:
            layer.mark_initialised_()
    return stack


def images(n=5, seed=1):
    return torch.rand(n, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


class BruteForce:
    """Every assignment of components to all positions of all levels, with its log-probability."""

    def __init__(self, stack: JointStack):
        self.stack = stack
        self.levels = stack.mixture_layers
        self.grids = [layer.output_shape[1:] for layer in self.levels]
        self.places = [list(itertools.product(range(h), range(w))) for h, w in self.grids]
        sizes = [layer.components for layer in self.levels]
        ranges = [range(k) for level, k in enumerate(sizes) for _ in self.places[level]]
        self.assignments = torch.tensor(list(itertools.product(*ranges)))  # (A, all positions)
        self.starts = np.cumsum([0] + [len(p) for p in self.places])

    def of(self, level: int) -> torch.Tensor:
        """Components (A, positions of ``level``) of every assignment."""
        return self.assignments[:, self.starts[level] : self.starts[level + 1]]

    def log_prior(self, labels=None) -> torch.Tensor:
        """``log p(z)`` (A,) or (N, A) given the images' class labels."""
        top = self.levels[-1]
        log_pi = top.log_mixing()
        total = log_pi[self.of(len(self.levels) - 1)[:, 0]]
        for level in range(len(self.levels) - 1, 0, -1):
            tree, (bh, bw) = self.levels[level], self.levels[level].block
            log_a = tree.log_transitions()
            for c, (h, w) in enumerate(self.places[level - 1]):
                parent = self.places[level].index((h // bh, w // bw))
                offset = (h % bh) * bw + (w % bw)
                rows = log_a[offset] if tree.config.shared else log_a[h // bh, w // bw, offset]
                total = total + rows[self.of(level)[:, parent], self.of(level - 1)[:, c]]
        if labels is None:
            return total
        classes = top.component_classes()[self.of(len(self.levels) - 1)[:, 0]]  # (A,)
        return torch.where(classes[None] == labels[:, None], total, -math.inf)

    def leaf_log_likelihood(self, x, mask=None) -> torch.Tensor:
        """``log p(observed pixels | leaf components)`` (N, A) by torch.distributions."""
        leaf = self.stack.leaf
        patches = torch.nn.functional.unfold(x, 2, stride=2).transpose(1, 2)  # (N, L, 4)
        seen = (
            None
            if mask is None
            else torch.nn.functional.unfold(mask.double(), 2, stride=2).transpose(1, 2) > 0.5
        )
        covariance = leaf.covariance.covariance_matrix()
        total = x.new_zeros(x.shape[0], len(self.assignments))
        for c, (h, w) in enumerate(self.places[0]):
            z = self.of(0)[:, c]
            means = leaf.means[z] if leaf.config.shared else leaf.means[h, w][z]  # (A, 4)
            sigma = covariance[z] if leaf.config.shared else covariance[h, w][z]  # (A, 4, 4)
            for n in range(x.shape[0]):
                keep = torch.ones(4, dtype=torch.bool) if seen is None else seen[n, c]
                if not bool(keep.any()):
                    continue
                normal = torch.distributions.MultivariateNormal(means[:, keep], sigma[:, keep][:, :, keep])
                total[n] += normal.log_prob(patches[n, c, keep])
        return total

    def log_joint(self, x, mask=None, labels=None) -> torch.Tensor:
        """``log p(x_observed, z)`` (N, A)."""
        return self.log_prior(labels) + self.leaf_log_likelihood(x, mask)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_log_likelihood_is_the_sum_over_every_assignment(shared, covariance):
    stack, x = tiny_stack(shared, covariance), images()
    brute = BruteForce(stack).log_joint(x).logsumexp(1)
    with torch.no_grad():
        torch.testing.assert_close(stack.log_prob(x), brute, rtol=1e-10, atol=1e-10)
        elbo = TraceEnum_ELBO(max_plate_nesting=stack.max_plate_nesting)
        assert elbo.loss(stack.model, stack.guide, x) == pytest.approx(-brute.sum().item(), rel=1e-10)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_closed_form_and_enumerated_model_give_the_same_loss_and_gradients(shared, covariance):
    stack, x = tiny_stack(shared, covariance, classes=2), images()
    labels = torch.tensor([0, 1, 1, 0, 1])
    elbo = TraceEnum_ELBO(max_plate_nesting=stack.max_plate_nesting, strict_enumeration_warning=False)
    below_top = (stack.leaf.mixing_logits, stack.mixture_layers[1].mixing_logits)  # used by no model
    parameters = [p for p in stack.parameters() if all(p is not q for q in below_top)]
    losses, gradients = [], []
    for enumerated in (True, False):
        loss = elbo.differentiable_loss(
            stack.model, stack.guide, x, labels, num_data=20, enumerated=enumerated
        )
        losses.append(loss)
        gradients.append(torch.autograd.grad(loss, parameters))
    brute = -BruteForce(stack).log_joint(x, labels=labels).logsumexp(1).sum() * 4  # 20 / 5
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=0)
    torch.testing.assert_close(losses[1], brute, rtol=1e-10, atol=0)
    for enumerated, closed in zip(*gradients, strict=True):
        torch.testing.assert_close(enumerated, closed, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_masked_log_likelihood_sums_out_the_missing_pixels(covariance):
    stack, x = tiny_stack(False, covariance), images()
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) > 0.4
    brute = BruteForce(stack).log_joint(x, mask).logsumexp(1)
    torch.testing.assert_close(stack.log_prob(x, mask=mask), brute, rtol=1e-10, atol=1e-10)


def test_posteriors_of_every_layer_are_the_brute_force_marginals():
    stack, x = tiny_stack(False, "full"), images()
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., 3:] = False
    force = BruteForce(stack)
    posterior = torch.softmax(force.log_joint(x, mask), 1)  # (N, A)
    for level, layer in enumerate(stack.mixture_layers):
        got = stack.responsibilities(x, layer=level, mask=mask)  # (N, K, H, W)
        for c, (h, w) in enumerate(force.places[level]):
            onehot = torch.nn.functional.one_hot(force.of(level)[:, c], layer.components).double()
            torch.testing.assert_close(got[:, :, h, w], posterior @ onehot, rtol=1e-9, atol=1e-10)


def test_posteriors_equal_pyro_compute_marginals():
    stack, x = tiny_stack(True, "diag"), images(2)
    elbo = TraceEnum_ELBO(max_plate_nesting=stack.max_plate_nesting)
    marginals = elbo.compute_marginals(stack.model, stack.guide, x)
    leaf = marginals[stack.leaf.site("z")]  # batch (N, 1, 1, u2, v2, u1, v1) over the padded grid
    probs = leaf.probs.squeeze(1).squeeze(1)  # (N, u2, v2, u1, v1, K)... layout of PlateGrid
    got = stack.responsibilities(x, layer=0)  # (N, K, 2, 3)
    for h, w in itertools.product(range(2), range(3)):
        torch.testing.assert_close(probs[:, 0, w // 2, h, w % 2], got[:, :, h, w], rtol=1e-9, atol=1e-10)


def test_conditional_mean_is_the_brute_force_conditional_expectation():
    stack, x = tiny_stack(False, "full"), images(3)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., 3:] = False  # the middle column of patches is half observed
    force = BruteForce(stack)
    posterior = torch.softmax(force.log_joint(x, mask), 1)  # (N, A)
    leaf, covariance = stack.leaf, stack.leaf.covariance.covariance_matrix()
    expected = torch.zeros_like(x)
    for n, (c, (h, w)) in itertools.product(range(x.shape[0]), enumerate(force.places[0])):
        patch = x[n, 0, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2].reshape(4)
        seen = mask[n, 0, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2].reshape(4)
        mean = torch.zeros(4, dtype=torch.float64)
        for k in range(leaf.components):
            mu, sigma = leaf.means[h, w, k], covariance[h, w, k]
            conditional = mu.clone()
            if bool(seen.any()):
                regression = sigma[~seen][:, seen] @ torch.linalg.inv(sigma[seen][:, seen])
                conditional[~seen] = mu[~seen] + regression @ (patch[seen] - mu[seen])
            conditional[seen] = patch[seen]
            weight = posterior[n, force.of(0)[:, c] == k].sum()
            mean += weight * conditional
        expected[n, 0, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2] = mean.view(2, 2)
    torch.testing.assert_close(stack.conditional_mean(x, mask), expected.detach(), rtol=1e-9, atol=1e-10)


def _leaf_assignments(stack, drawn):
    """The leaf component of every position of images drawn with ``mean=True`` (distinct means)."""
    patches = torch.nn.functional.unfold(drawn, 2, stride=2).transpose(1, 2)  # (n, L, 4)
    means = stack.leaf.means.detach().reshape(-1, stack.leaf.components, 4)  # (L, K, 4)
    return (patches.unsqueeze(2) - means.unsqueeze(0)).abs().sum(-1).argmin(-1)  # (n, L)


def _check_frequencies(codes, probabilities):
    """A chi-square test of drawn leaf configurations (n, L) against their probabilities (2^L,)."""
    index = (codes * (2 ** torch.arange(codes.shape[1] - 1, -1, -1))).sum(1)
    counts = torch.bincount(index, minlength=len(probabilities)).double()
    expected = probabilities * counts.sum()
    keep = expected > 5  # the test's approximation needs this many expected draws per cell
    observed, wanted = counts[keep], expected[keep]
    if not bool(keep.all()):  # the rare configurations pooled into one cell
        observed = torch.cat([observed, counts[~keep].sum(0, keepdim=True)])
        wanted = torch.cat([wanted, expected[~keep].sum(0, keepdim=True)])
    assert chisquare(observed.numpy(), wanted.numpy()).pvalue > 1e-3


def _leaf_configuration_probabilities(force, log_joint):
    """Probability (2^L,) of every leaf configuration, from ``log p(., z)`` (A,)."""
    codes = force.of(0)
    index = (codes * (2 ** torch.arange(codes.shape[1] - 1, -1, -1))).sum(1)
    weights = torch.softmax(log_joint.detach(), 0)
    return torch.zeros(2 ** codes.shape[1], dtype=torch.float64).index_add_(0, index, weights)


def test_samples_draw_leaf_configurations_with_the_model_probabilities():
    stack = tiny_stack(False, "diag")
    torch.manual_seed(5)
    drawn = stack.sample(20000, options=SamplingOptions(mean=True))
    force = BruteForce(stack)
    _check_frequencies(
        _leaf_assignments(stack, drawn), _leaf_configuration_probabilities(force, force.log_prior())
    )


def test_inpainting_draws_from_the_exact_posterior():
    stack = tiny_stack(False, "diag")
    x = images(1)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., :2, :4] = True  # two patches observed, four missing
    torch.manual_seed(6)
    filled = stack.inpaint(x, mask, n_per_image=20000, options=SamplingOptions(mean=True))
    assert torch.equal(filled[:, mask[0]], x[:, mask[0]].expand(20000, -1))
    force = BruteForce(stack)
    log_joint = force.log_joint(x, mask)[0]
    codes = _leaf_assignments(stack, filled)
    observed_codes = _leaf_assignments(stack, x)  # the observed patches: keep the drawn codes there
    codes[:, :2] = observed_codes[:, :2]
    probabilities = _leaf_configuration_probabilities(force, log_joint)
    # The observed patches' components are drawn too; compare the missing patches' configuration.
    marginal = probabilities.view(4, 16).sum(0)
    _check_frequencies(codes[:, 2:], marginal)


def test_inpainting_keeps_observed_pixels_and_fills_half_observed_patches_by_the_conditional():
    stack, x = tiny_stack(False, "full"), images(2)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., 3:] = False
    torch.manual_seed(0)
    filled = stack.inpaint(x, mask, n_per_image=4000, options=SamplingOptions(mean=True))
    assert torch.equal(
        torch.where(mask.repeat_interleave(4000, 0), filled, 0.0),
        torch.where(mask, x, 0.0).repeat_interleave(4000, 0),
    )
    average = filled.view(2, 4000, *SHAPE).mean(1)
    torch.testing.assert_close(average, stack.conditional_mean(x, mask), atol=0.02, rtol=0)


def test_class_probabilities_are_bayes_rule_over_each_class_components():
    stack, x = tiny_stack(True, "diag", classes=2), images()
    force = BruteForce(stack)
    per_class = torch.stack(
        [force.log_joint(x, labels=torch.full((5,), c)).logsumexp(1) for c in range(2)], 1
    )
    torch.testing.assert_close(stack.predict_proba(x), torch.softmax(per_class, 1), rtol=1e-9, atol=1e-10)


def test_class_conditional_samples_come_from_their_class_components():
    stack = tiny_stack(False, "diag", classes=2)
    torch.manual_seed(2)
    drawn = stack.sample(20000, classes=[1] * 20000, options=SamplingOptions(mean=True))
    force = BruteForce(stack)
    log_joint = force.log_prior(torch.ones(1, dtype=torch.long))[0]
    _check_frequencies(_leaf_assignments(stack, drawn), _leaf_configuration_probabilities(force, log_joint))


def hand_written_em_step(stack, x):
    """Batch EM on the tree by brute force: expected counts of every (parent, child) pair and of the
    leaves' components from the exact posterior over all assignments, then the M-step."""
    force = BruteForce(stack)
    posterior = torch.softmax(force.log_joint(x), 1).detach()  # (N, A)
    mass = posterior.sum(0)  # (A,)
    new = {}
    top = stack.mixture_layers[-1]
    new["top_mixing"] = torch.zeros(top.components, dtype=torch.float64).index_add_(
        0, force.of(len(force.levels) - 1)[:, 0], mass
    )
    for level in range(len(force.levels) - 1, 0, -1):
        tree, (bh, bw) = force.levels[level], force.levels[level].block
        counts = torch.zeros_like(tree.transition_logits)
        for c, (h, w) in enumerate(force.places[level - 1]):
            parent = force.places[level].index((h // bh, w // bw))
            offset = (h % bh) * bw + (w % bw)
            cell = counts[offset] if tree.config.shared else counts[h // bh, w // bw, offset]
            cell.index_put_((force.of(level)[:, parent], force.of(level - 1)[:, c]), mass, accumulate=True)
        new[level] = counts / counts.sum(-1, keepdim=True).clamp_min(1e-300)
    leaf = stack.leaf
    patches = torch.nn.functional.unfold(x, 2, stride=2).transpose(1, 2)  # (N, L, 4)
    means, variances = torch.zeros_like(leaf.means), torch.zeros_like(leaf.means)
    for c, (h, w) in enumerate(force.places[0]):
        r = posterior @ torch.nn.functional.one_hot(force.of(0)[:, c], leaf.components).double()  # (N, K)
        means[h, w] = (r.T @ patches[:, c]) / r.sum(0)[:, None]
        variances[h, w] = (r.T @ patches[:, c] ** 2) / r.sum(0)[:, None] - means[h, w] ** 2
    floor, ceiling = leaf.config.precision_floor, leaf.config.precision_ceiling
    new["leaf_means"], new["leaf_variances"] = means, variances.clamp(1 / ceiling, 1 / floor)
    return new


def test_one_full_batch_em_step_with_unit_step_size_is_exact_em_on_the_tree():
    stack = tiny_stack(False, "diag")
    stack.leaf.config = stack.leaf.config.__class__(**{**stack.leaf.config.__dict__, "dead_weight": 0.0})
    x = images(30)
    expected = hand_written_em_step(stack, x)
    config = TrainConfig(epochs=1, batch_size=30, em_step_decay=0.0, progress=False, device="cpu")
    train(stack, x, config=config)
    for level in (1, 2):  # the transitions of children that are present (the ragged block has two)
        tree = stack.mixture_layers[level]
        present = tree.present.any(0).any(0) if tree.config.shared else tree.present  # (..., O)
        present = present[..., None, None].expand(tree.transition_logits.shape)
        got = tree.log_transitions().exp()
        torch.testing.assert_close(got[present], expected[level][present], rtol=1e-8, atol=1e-10)
    top_weights = expected["top_mixing"] / expected["top_mixing"].sum()
    torch.testing.assert_close(stack.mixture_layers[2].log_mixing().exp(), top_weights, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(stack.leaf.means, expected["leaf_means"], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(
        stack.leaf.covariance.precision.reciprocal(), expected["leaf_variances"], rtol=1e-8, atol=1e-10
    )
