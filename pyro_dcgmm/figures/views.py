"""Per-component views of a GMM layer: what each component models and which inputs it claims.

For every component of a layer: its mixing weight, its mean, its precision map (the diagonal
precisions; for a stationary component the power spectrum of its filter) and the ``top`` inputs of
highest posterior for it (none for a pruned component).  For the first GMM layer over the image the
inputs are image patches (the patch of highest posterior in each image, so one image gives at most
one example); for layers higher up they are the whole images that respond most.  A per-position
layer is viewed at its centre position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pyro_dcgmm.inference import queries
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.tree import Tree


@dataclass
class ComponentView:
    """One component: ``index``, ``weight``, ``active`` (not pruned), ``mean`` and ``precision_map``
    (C, ph, pw; ``None`` for a Tree layer's component), ``examples`` (n, C, h, w), their
    ``log_posteriors`` (n,) and ``sources`` (n,), the indices of the images they come from."""

    index: int
    weight: float
    active: bool
    mean: np.ndarray
    precision_map: np.ndarray | None
    examples: np.ndarray
    log_posteriors: np.ndarray
    sources: np.ndarray


def _centre(values: torch.Tensor, gmm: GMM) -> torch.Tensor:
    """A per-component parameter (..., K, ...) at the layer's mixture (the centre if per position)."""
    if gmm.config.shared:
        return values
    return values[values.shape[0] // 2, values.shape[1] // 2]


def best_positions(stack, images: torch.Tensor, gmm: GMM, batch_size: int = 512):
    """Log-posterior (N, K) of every component of ``gmm`` at its best position in each image, and
    that position's flat index (N, K)."""

    def best(chunk, _):
        log_r = torch.log_softmax(queries.scores_at(stack, chunk, gmm, None).double(), dim=1)
        if gmm.config.shared:
            values, where = log_r.flatten(2).max(-1)  # (n, K): best position in each image
        else:  # one mixture per position: the centre one
            row, column = log_r.shape[2] // 2, log_r.shape[3] // 2
            values = log_r[:, :, row, column]
            where = torch.full_like(values, row * log_r.shape[3] + column)
        return torch.stack([values, where.double()], 1)  # (n, 2, K)

    found = queries.query(stack, images, best, batch_size)
    return found[:, 0], found[:, 1].long()


def _patch_at(gmm: GMM, image: torch.Tensor, position: int) -> torch.Tensor:
    """The input patch (C, ph, pw) of ``image`` seen at flat output ``position``."""
    row, column = divmod(position, gmm.output_shape[2])
    top, left = row * gmm.stride[0], column * gmm.stride[1]
    return image[:, top : top + gmm.patch[0], left : left + gmm.patch[1]]


def tree_views(stack, images: torch.Tensor, layer: int, top: int = 10) -> list[ComponentView]:
    """A :class:`ComponentView` per component of the Tree layer number ``layer`` of a joint
    stack, most used first: its expected pixels under one position (the mean; no precision map) and
    the whole images whose posterior for it is highest, at its best position (at the centre one,
    where :meth:`~pyro_dcgmm.model.joint.JointStack.component_images` looks, for a per-position layer)."""
    level = stack.number(layer)
    posterior = stack.responsibilities(images, layer=level).double()  # (N, K, H, W)
    if not stack.mixture_layer(level).config.shared:
        row, column = posterior.shape[2] // 2, posterior.shape[3] // 2
        posterior = posterior[:, :, row : row + 1, column : column + 1]
    log_posteriors = posterior.clamp_min(1e-300).log().flatten(2).amax(-1)  # (N, K)
    means = stack.component_images(level).cpu()
    usage = posterior.mean((0, 2, 3)).cpu()  # the share of the images (and positions) it explains
    views = []
    for k in torch.argsort(usage, descending=True).tolist():
        order = torch.argsort(log_posteriors[:, k], descending=True)[:top]
        examples = images[order].cpu().numpy()
        views.append(
            ComponentView(k, float(usage[k]), True, means[k].numpy(), None, examples,
                          log_posteriors[order, k].cpu().numpy(), order.cpu().numpy())
        )  # fmt: skip
    return views


def component_views(stack, images: torch.Tensor, layer: int, top: int = 10) -> list[ComponentView]:
    """A :class:`ComponentView` per component of the layer number ``layer`` (a GMM), heaviest
    first (of a joint stack's Tree layer: :func:`tree_views`)."""
    gmm = stack.mixture_layer(layer)
    if isinstance(gmm, Tree):
        return tree_views(stack, images, layer, top)
    on_image = gmm.input_shape == stack.input_shape
    log_posteriors, positions = best_positions(stack, images, gmm)
    weights = _centre(gmm.log_mixing().detach(), gmm).exp().cpu()
    means = gmm.covariance.as_patches(_centre(gmm.means.detach(), gmm)).cpu()
    maps = _centre(gmm.covariance.precision_map().detach(), gmm).cpu()
    active = _centre(gmm.active, gmm).cpu()
    views = []
    for k in torch.argsort(weights, descending=True).tolist():
        order = torch.argsort(log_posteriors[:, k], descending=True)[: top if bool(active[k]) else 0]
        if on_image:
            patches = [_patch_at(gmm, images[i], int(positions[i, k])) for i in order.tolist()]
            examples = torch.stack(patches) if patches else images.new_zeros(0, images.shape[1], *gmm.patch)
        else:
            examples = images[order]
        views.append(
            ComponentView(
                k,
                float(weights[k]),
                bool(active[k]),
                means[k].numpy(),
                maps[k].numpy(),
                examples.cpu().numpy(),
                log_posteriors[order, k].cpu().numpy(),
                order.cpu().numpy(),
            )
        )
    return views
