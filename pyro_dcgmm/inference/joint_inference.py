"""Exact queries of a joint stack: likelihoods, posteriors, classes, samples and in-painting.

Everything rests on the upward messages of :meth:`JointStack.messages
<pyro_dcgmm.model.joint.JointStack.messages>`, ``M_l[n, k, h, w] = log p(pixels below (h, w) | z = k)``,
computed with the missing pixels of a mask summed out at the leaves:

- ``log p(x) = sum over the top's positions of logsumexp_j (log pi_j + M_top[j])``;
- the posterior marginal of every layer's components is the gradient of ``log p(x)`` with respect to
  that layer's message (the upward-downward algorithm, by automatic differentiation);
- a posterior sample draws the top's components from ``softmax(log pi + M_top)``, then every child's
  from its parent's transition row plus its own message, then every leaf's missing pixels from its
  Gaussian given its observed ones; without evidence the same pass is ancestral sampling.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine

from pyro_dcgmm.data.validation import as_labels, check_positive_int
from pyro_dcgmm.errors import ArchitectureError
from pyro_dcgmm.inference.queries import checked_inputs, map_chunks, query, row_slices
from pyro_dcgmm.inference.sampling import SamplingOptions, resolved
from pyro_dcgmm.inference.top_down import DRAWN_ROWS, check_images_fit
from pyro_dcgmm.model.covariances.base import gaussian_conditional
from pyro_dcgmm.model.fold import fold_back


def top_layer(stack):
    """The layer at the top of the tree grown so far."""
    return stack.mixture_layers[stack.root_level]


def check_joined(stack, level: int) -> None:
    """Refuse a query of a layer that has not joined the tree yet (training stopped before its wait)."""
    if level > stack.root_level:
        raise ArchitectureError(
            f"layer {level} has not joined the tree yet (training stopped before its wait was over); "
            f"the tree's top is layer {stack.root_level}: train longer"
        )


def log_prob(stack, x, batch_size: int, mask=None) -> torch.Tensor:
    """``log p(x)`` (N,), of the observed pixels where a ``mask`` is given."""
    top = top_layer(stack)

    def chunk(images, observed):
        return stack.top_log_likelihood(stack.messages(images, observed)[-1], top.log_mixing_map())

    return query(stack, x, chunk, batch_size, mask)


def posterior_marginals(stack, x: torch.Tensor, mask=None) -> list[torch.Tensor]:
    """``p(z_l,hw = k | x)`` (N, K_l, H_l, W_l) of every level of the tree, bottom first."""
    with torch.enable_grad():
        messages = [stack.leaf.log_prob_table(x, mask).detach().requires_grad_()]
        for tree in stack.trees[: stack.root_level]:
            messages.append(tree.transform(messages[-1]))
        log_p = stack.top_log_likelihood(messages[-1], top_layer(stack).log_mixing_map())
        marginals = torch.autograd.grad(log_p.sum(), messages)
    # each sums to one up to rounding, which large log-likelihoods make visible in float32
    return [marginal / marginal.sum(1, keepdim=True) for marginal in marginals]


def posteriors(stack, x, level: int, batch_size: int, mask=None) -> torch.Tensor:
    """The posterior marginals (N, K, H', W') of level ``level``."""
    check_joined(stack, level)
    return query(stack, x, lambda c, m: posterior_marginals(stack, c, m)[level], batch_size, mask)


def class_probabilities(stack, x, batch_size: int) -> torch.Tensor:
    """``p(class | x)`` (N, C) from a top layer split by class: ``p(x, c) = sum over c's components``."""
    top = stack.mixture_layers[-1]
    if not top.config.classes:
        raise ArchitectureError("class probabilities need a joint stack whose top layer is split by class")
    check_joined(stack, len(stack.mixture_layers) - 1)

    def chunk(images, _):
        scores = stack.messages(images)[-1] + top.log_mixing_map()  # (n, J, H, W)
        n, j = scores.shape[:2]
        grouped = scores.view(n, top.config.classes, j // top.config.classes, *scores.shape[2:])
        return torch.softmax(grouped.logsumexp(2).sum((2, 3)), 1)  # (n, C)

    return query(stack, x, chunk, batch_size)


def check_options(stack, options: SamplingOptions | None) -> SamplingOptions:
    """The options (:func:`~pyro_dcgmm.inference.sampling.resolved`), refusing sharpening: a joint
    stack's samples are exact draws."""
    options = resolved(stack, options)
    if options.sharpening is not None:
        raise ArchitectureError(
            "a joint stack draws exact samples, so sharpening does not apply: pass sharpening=None"
        )
    return options


def sample(stack, n: int, classes=None, options: SamplingOptions | None = None) -> torch.Tensor:
    """``n`` ancestral samples (n, C, H, W), within the components of ``classes`` (n,) if given."""
    check_positive_int(n, "n")
    check_images_fit(stack, n)
    options = check_options(stack, options)
    top = stack.mixture_layers[-1]
    if classes is not None:
        if not top.config.classes:
            raise ArchitectureError(
                "class-conditional samples need a joint stack whose top layer is split by class"
            )
        check_joined(stack, len(stack.mixture_layers) - 1)
        classes = as_labels(torch.as_tensor(classes), n, stack.num_classes, "classes")
    drawn = []
    for rows in row_slices(n, DRAWN_ROWS):
        chosen = None if classes is None else classes[rows].to(top.mixing_logits.device)
        drawn.append(draw(stack, rows.stop - rows.start, options, chosen))
    return torch.cat(drawn)


class Evidence:
    """What is known about the images behind a draw: the ``messages`` of every level, used from level
    ``start`` up, and, when the leaves use theirs (``start == 0``), the ``images`` and their ``mask``
    of observed pixels (``None``: all observed)."""

    def __init__(self, messages: list[torch.Tensor], start: int, images=None, mask=None):
        self.messages, self.start, self.images, self.mask = messages, start, images, mask

    def rows(self, selected: slice, times: int) -> Evidence:
        """The evidence of the ``selected`` images, each repeated ``times`` times in a row."""

        def pick(values):
            return None if values is None else values[selected].repeat_interleave(times, 0)

        return Evidence([pick(m) for m in self.messages], self.start, pick(self.images), pick(self.mask))

    def at(self, level: int) -> torch.Tensor | None:
        return self.messages[level] if level >= self.start else None


def draw(stack, n: int, options: SamplingOptions, classes=None, evidence: Evidence | None = None):
    """One top-down pass: ``n`` images (n, C, H, W), given the ``evidence`` if any."""
    layers, root = stack.mixture_layers, stack.root_level
    top = layers[root]
    with torch.no_grad():
        logits = top.log_mixing_map().expand(n, -1, *top.output_shape[1:])  # (n, J, H, W)
        if classes is not None:
            logits = logits + top.class_log_likelihood(classes)
        z = _categorical(top.site("z"), logits, evidence.at(root) if evidence else None)

        def step(layer, z):
            if layer is stack.leaf:
                return z
            level = stack.number_of(layer) - 1
            logits = layer.child_log_probabilities(z)  # (n, K, Hc, Wc)
            return _categorical(layers[level].site("z"), logits, evidence.at(level) if evidence else None)

        z = stack.pass_down(z, step, start=top)
        patches = _leaf_patches(
            stack.leaf, z, options, evidence if evidence and evidence.start == 0 else None
        )
    leaf = stack.leaf
    return fold_back(patches, stack.input_shape[1:], leaf.patch, leaf.stride).clamp(*stack.data_range)


def _categorical(site: str, logits: torch.Tensor, message: torch.Tensor | None) -> torch.Tensor:
    """Components (n, H, W) drawn at Pyro sample site ``site`` from ``logits`` (n, K, H, W) plus a
    ``message`` (evidence)."""
    if message is not None:
        logits = logits + message
    return pyro.sample(site, dist.Categorical(logits=logits.permute(0, 2, 3, 1)))  # batch (n, H, W)


def _leaf_patches(leaf, z: torch.Tensor, options: SamplingOptions, evidence: Evidence | None):
    """Patch vectors (n, D, H, W) of components ``z`` (n, H, W): the leaf's generative program with
    its components fixed, then, given observed pixels, the conditional of each leaf's Gaussian."""
    site = leaf.site("z")  # drawn above, by the leaves' parents or the top: fixed, and not a site twice
    generate = poutine.block(poutine.condition(leaf.generate, data={site: z}), hide=[site])
    patches = generate(z.shape[0], None, options.divisor, options.mean)  # (n, D, H, W)
    if evidence is None or evidence.mask is None:
        return patches
    n, dim, height, width = patches.shape
    x, seen = _patch_rows(leaf, evidence.images, evidence.mask)  # (R, D) each
    drawn = patches.flatten(2).transpose(1, 2).reshape(-1, dim)  # (R, D)
    filled = torch.where(seen, x, drawn)
    partial = seen.any(-1) & ~seen.all(-1)
    if bool(partial.any()):
        precision = _by_position(leaf, leaf.covariance.dense_precision())  # (L or 1, K, D, D)
        chosen = precision[_row_positions(leaf, n)[partial], z.reshape(-1)[partial]]  # (R', D, D)
        filled[partial] = gaussian_conditional(
            x[partial], seen[partial], drawn[partial].unsqueeze(1), chosen.unsqueeze(1)
        ).squeeze(1)
    return filled.view(n, height * width, dim).transpose(1, 2).reshape(n, dim, height, width)


def _patch_rows(leaf, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The leaves' patches of ``images`` and which of their entries ``mask`` observes, as rows
    (N L, D), position-major within each image."""
    patches = F.unfold(torch.where(mask, images, 0.0), leaf.patch, stride=leaf.stride)  # (N, D, L)
    seen = F.unfold(mask.to(images.dtype), leaf.patch, stride=leaf.stride) > 0.5
    return patches.transpose(1, 2).reshape(-1, patches.shape[1]), seen.transpose(1, 2).reshape(
        -1, seen.shape[1]
    )


def _by_position(leaf, parameter: torch.Tensor) -> torch.Tensor:
    """A per-component leaf parameter (K, ...) or (H, W, K, ...) as (1 or L, K, ...)."""
    return parameter.unsqueeze(0) if leaf.config.shared else parameter.flatten(0, 1)


def _row_positions(leaf, n: int) -> torch.Tensor:
    """For every patch row of ``n`` images (N L,), the index of its parameters in :func:`_by_position`."""
    _, height, width = leaf.output_shape
    places = torch.arange(height * width, device=leaf.means.device)
    return torch.zeros_like(places).repeat(n) if leaf.config.shared else places.repeat(n)


def variants(stack, x, level: int, n_per_image: int, options=None, mask=None) -> torch.Tensor:
    """``n_per_image`` draws per image (N * n_per_image, C, H, W), rows ``i * n_per_image ...`` for
    image ``i``: the components of levels ``level`` and up from the posterior given ``x`` (its
    observed pixels, with a ``mask``), those below from the model; at ``level`` 0 every leaf's
    missing pixels are drawn given its observed ones and the observed pixels are kept."""
    check_positive_int(n_per_image, "n_per_image")
    check_joined(stack, level)
    options = check_options(stack, options)
    x, mask = checked_inputs(stack, x, mask)
    check_images_fit(stack, n_per_image * x.shape[0])
    parameter = stack.leaf.means
    images = x.to(parameter.device, parameter.dtype)
    observed = None if mask is None else mask.to(parameter.device)
    messages = _chunked_messages(stack, images, observed)
    evidence = Evidence(messages, level, images, observed)
    drawn = []
    for rows in row_slices(x.shape[0], max(1, DRAWN_ROWS // n_per_image)):
        given = evidence.rows(rows, n_per_image)
        filled = draw(stack, given.messages[0].shape[0], options, None, given)
        if level == 0 and given.mask is not None:
            filled = torch.where(given.mask, given.images, filled)
        drawn.append(filled)
    return torch.cat(drawn).to(x.device)


def _chunked_messages(stack, images: torch.Tensor, mask, batch_size: int = 1024) -> list[torch.Tensor]:
    """Every level's messages of ``images``, computed ``batch_size`` images at a time."""
    with torch.no_grad():
        chunks = [
            stack.messages(images[rows], None if mask is None else mask[rows])
            for rows in row_slices(images.shape[0], batch_size)
        ]
    return [torch.cat(level) for level in zip(*chunks, strict=True)]


def conditional_mean(stack, x, mask, batch_size: int) -> torch.Tensor:
    """``E[x | observed pixels]`` (N, C, H, W): the observed pixels, and for every missing one the
    posterior-weighted mean of its leaf components' conditional means."""
    if mask is None:
        raise ArchitectureError("conditional_mean needs a mask of observed pixels")
    leaf = stack.leaf

    def chunk(images, observed):
        posterior = posterior_marginals(stack, images, observed)[0]  # (n, K, H, W)
        n, k = posterior.shape[:2]
        rows, seen = _patch_rows(leaf, images, observed)  # (R, D)
        positions = _row_positions(leaf, n)
        centres = _by_position(leaf, leaf.means)[positions]  # (R, K, D)
        expected = torch.where(seen.unsqueeze(1), rows.unsqueeze(1), centres)
        partial = seen.any(-1) & ~seen.all(-1)
        if bool(partial.any()):
            precision = _by_position(leaf, leaf.covariance.dense_precision())[positions[partial]]
            expected[partial] = gaussian_conditional(
                rows[partial], seen[partial], centres[partial], precision
            )
        weights = posterior.flatten(2).transpose(1, 2).reshape(-1, k, 1)  # (R, K, 1)
        patches = (weights * expected).sum(1).view(n, -1, rows.shape[1]).transpose(1, 2)  # (n, D, L)
        _, height, width = leaf.output_shape
        filled = fold_back(
            patches.reshape(n, -1, height, width), stack.input_shape[1:], leaf.patch, leaf.stride
        )
        return torch.where(observed, images, filled)

    return map_chunks(stack, *checked_inputs(stack, x, mask), chunk, batch_size)
