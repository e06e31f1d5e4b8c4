"""Data-dependent initialisation of a GMM layer from its real inputs.

Every GMM layer trains on its own likelihood over the detached output of the layers below, so it is an
ordinary mixture over a stream of patch vectors, and the classic mixture initialisation applies: when
the layer starts to train (after its ``wait``), the trainer passes a subsample of training images up
through the layers below as trained so far and calls :func:`initialise`, which sets

- ``"kmeans"``: k-means++ seeds (scikit-learn's ``kmeans_plusplus``) refined by Lloyd iterations,
  then every cluster's share of the vectors as its weight, its centre as its mean and its own
  covariance (as the layer's covariance structure fits it, within the precision bounds);
- ``"data"``: means at randomly chosen input vectors, uniform weights, the inputs' spread.

A per-position layer runs this independently at every position, on the vectors found there.
:func:`reseed_dead` uses the same inputs to restart components whose weight has collapsed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import kmeans_plusplus

from pyro_dcgmm.errors import DataError
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.priors import fit_hyperparameters_
from pyro_dcgmm.model.tree import Tree


def images_needed(gmm: GMM) -> int:
    """How many input images give the layer about ``init_vectors`` vectors (several per image
    for a shared layer, drawn from 8 times as many images as strictly needed for diversity)."""
    _, out_h, out_w = gmm.output_shape
    vectors = gmm.config.init_vectors
    if not gmm.config.shared:
        return vectors
    return min(vectors, 8 * math.ceil(vectors / (out_h * out_w)))


def patch_vectors(gmm: GMM, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The layer's input vectors, (P, M, D): P = 1 mixture when shared (M vectors subsampled from
    all positions), P = H' W' positions otherwise (M = one vector per image)."""
    patches = F.unfold(inputs, gmm.patch, stride=gmm.stride)  # (N, D, L)
    if not gmm.config.shared:
        return patches.permute(2, 0, 1)  # (L, N, D)
    vectors = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (N L, D)
    keep = torch.randperm(vectors.shape[0], generator=generator)[: gmm.config.init_vectors]
    return vectors[keep.to(vectors.device)].unsqueeze(0)  # (1, M, D)


def _squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(P, M, K) squared distances of vectors (P, M, D) to centres (P, K, D), by matmul."""
    cross = x @ centres.transpose(1, 2)  # (P, M, K)
    return (x * x).sum(-1, keepdim=True) - 2.0 * cross + (centres * centres).sum(-1).unsqueeze(1)


def _assign(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """One-hot (P, M, K) assignment of every vector to its nearest centre."""
    nearest = _squared_distances(x, centres).argmin(-1)  # (P, M)
    return F.one_hot(nearest, centres.shape[1]).to(x.dtype)


def kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeds refined by ``iterations`` Lloyd steps, for P independent sets at once.

    :param torch.Tensor x: vectors of shape (P, M, D).
    :returns: the one-hot assignment (P, M, K) of every vector to its final centre.
    """
    seeds = []
    for vectors in x.double().cpu().numpy():
        state = int(torch.randint(2**31 - 1, (), generator=generator))
        seeds.append(kmeans_plusplus(vectors, k, random_state=np.random.RandomState(state))[0])
    centres = torch.as_tensor(np.stack(seeds), dtype=x.dtype, device=x.device)  # (P, K, D)
    for _ in range(iterations):
        onehot = _assign(x, centres)  # (P, M, K)
        counts = onehot.sum(1).unsqueeze(-1)  # (P, K, 1)
        sums = onehot.transpose(1, 2) @ x  # (P, K, D)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1.0), centres)  # empty: keep
    return _assign(x, centres)


def _clusters(onehot: torch.Tensor):
    """Mixing weights (P, K) and vector weights (P, M, K) of the clusters a one-hot (P, M, K) defines.

    An empty cluster counts as one vector and weighs every vector (so it takes their moments).
    """
    counts = onehot.sum(1)  # (P, K)
    assignment = torch.where((counts == 0).unsqueeze(1), 1.0, onehot)
    return counts.clamp_min(1.0) / counts.clamp_min(1.0).sum(-1, keepdim=True), assignment


def _weighted_means(x: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Means (P, K, D) of vectors (P, M, D) under vector weights (P, M, K)."""
    return (assignment.transpose(1, 2) @ x) / assignment.sum(1).unsqueeze(-1)


def _random_vectors(x: torch.Tensor, k: int, generator: torch.Generator):
    """K random vectors per mixture as means (P, K, D), and the vector weights (P, M, K) and centres
    (P, K, D) that give every component the spread of all vectors around their mean."""
    p, m, _ = x.shape
    chosen = torch.stack([torch.randperm(m, generator=generator)[:k] for _ in range(p)])  # (P, K)
    means = torch.gather(x, 1, chosen.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[2]))
    return means, x.new_ones(p, m, k), x.mean(1, keepdim=True).expand_as(means)


def vectors_by_class(layer, inputs: torch.Tensor, labels, generator: torch.Generator) -> list[tuple]:
    """The layer's input vectors (:func:`patch_vectors` of a GMM layer, :func:`block_vectors` of a
    Tree layer) with the components (a (K,) mask on the inputs' device) they are for: all of them,
    or, for a layer split by class (``config.classes``) given the images' ``labels``, each class's
    vectors for that class's components.  Each set needs at least as many vectors per mixture as
    components."""
    vectors_of = block_vectors if isinstance(layer, Tree) else patch_vectors
    if not layer.config.classes or labels is None:
        everything = torch.ones(layer.components, dtype=torch.bool, device=inputs.device)
        sets = [(vectors_of(layer, inputs, generator), everything)]
    else:
        sets = []
        for c in range(layer.config.classes):
            chosen = labels == c
            if not bool(chosen.any()):
                raise DataError(
                    f"none of the {labels.shape[0]} images that initialise a layer split by class is "
                    f"of class {c}; every class needs images"
                )
            vectors = vectors_of(layer, inputs[chosen.to(inputs.device)], generator)
            sets.append((vectors, (layer.component_classes() == c).to(inputs.device)))
    k = int(sets[0][1].sum())  # components per set
    if min(v.shape[1] for v, _ in sets) < k:
        raise DataError(
            f"initialising a {type(layer).__name__} layer of {k} components (per class) needs at least "
            f"that many input vectors per mixture, got {min(v.shape[1] for v, _ in sets)} from "
            f"{inputs.shape[0]} images: train on more images (train_limit, validation_fraction) or give "
            "the layer fewer components"
        )
    return sets


def initialise(gmm: GMM, inputs: torch.Tensor, generator: torch.Generator, labels=None) -> None:
    """Set ``gmm``'s parameters from its inputs (N, C, H, W) by its ``init`` rule; mark it initialised.

    A layer split by class, given the inputs' ``labels`` (N,), fits each class's components to that
    class's vectors.  Needs at least as many vectors per mixture (images, for a per-position layer)
    as components (per class).
    """
    config = gmm.config
    sets = [
        (v.to(torch.float64), for_components)
        for v, for_components in vectors_by_class(gmm, inputs, labels, generator)
    ]
    k = int(sets[0][1].sum())  # components per set
    x = torch.cat([v for v, _ in sets], 1)  # (P, M, D)
    if config.init == "kmeans":
        blocks = []  # one-hot assignments (P, M_c, K) of every set's vectors to its components
        for v, for_components in sets:
            onehot = kmeans(v, k, config.init_iterations, generator)  # (P, M_c, k)
            blocks.append(onehot.new_zeros(*onehot.shape[:2], config.components))
            blocks[-1][..., for_components] = onehot
        weights, assignment = _clusters(torch.cat(blocks, 1))
        means = centres = _weighted_means(x, assignment)
    else:
        means = x.new_zeros(x.shape[0], config.components, x.shape[2])
        for v, for_components in sets:
            means[:, for_components] = _random_vectors(v, k, generator)[0]
        assignment = x.new_ones(*x.shape[:2], config.components)
        centres = x.mean(1, keepdim=True).expand_as(means)
        weights = x.new_full(means.shape[:2], 1.0 / config.components)
    values = gmm.covariance.fit(x, assignment, centres)
    gmm.set_components_(means, values)
    gmm.set_mixing_weights_(weights)
    fit_hyperparameters_(gmm, x)
    gmm.mark_initialised_()


def initialise_layer(layer, inputs: torch.Tensor, generator: torch.Generator, labels=None) -> None:
    """Initialise a GMM layer from its inputs (:func:`initialise`) or a Tree layer from its
    children's posteriors (:func:`initialise_tree`)."""
    if isinstance(layer, Tree):
        initialise_tree(layer, inputs, generator, labels)
    else:
        initialise(layer, inputs, generator, labels)


def dead_components(gmm: GMM) -> torch.Tensor:
    """Boolean (P, K): active components whose mixing weight is below ``dead_weight``, per mixture."""
    weights = gmm.mixing_weights().detach().reshape(-1, gmm.components)
    return (weights < gmm.config.dead_weight) & gmm.active.reshape(-1, gmm.components)


def prune_dead(gmm: GMM) -> int:
    """Remove every dead component (but each mixture's heaviest: :meth:`GMM.prune_`); returns how
    many were removed."""
    return gmm.prune_(dead_components(gmm))


def reseed_dead(gmm: GMM, inputs: torch.Tensor, generator: torch.Generator, labels=None) -> int:
    """Move every dead component to a random input vector, with the inputs' spread and weight 1/K;
    in a layer split by class, given the inputs' ``labels`` (N,), to a vector of its class.

    :param torch.Tensor inputs: the layer's inputs (N, C, H, W).
    :returns: how many components were re-seeded.
    """
    dead = dead_components(gmm)  # (P, K)
    if not bool(dead.any()):
        return 0
    for x, for_components in vectors_by_class(gmm, inputs, labels, generator):
        _reseed(gmm, x.to(gmm.means.dtype), dead & for_components.to(dead.device), generator)
    return int(dead.sum())


def _reseed(gmm: GMM, x: torch.Tensor, dead: torch.Tensor, generator: torch.Generator) -> None:
    """Re-seed the ``dead`` (P, K) components at random vectors of ``x`` (P, M, D)."""
    means, assignment, centres = _random_vectors(x, gmm.components, generator)  # (P, K, D)
    values = gmm.covariance.fit(x, assignment, centres)
    gmm.set_components_(means, values, where=dead)
    weights = torch.where(dead, 1.0 / gmm.components, gmm.mixing_weights().reshape(dead.shape))
    gmm.set_mixing_weights_(weights / weights.sum(-1, keepdim=True))


def block_vectors(tree: Tree, posteriors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The children's posteriors (N, K, Hc, Wc) below every position of ``tree``, one vector of
    length O K per position (absent children zero): (1, M, O K) subsampled from all positions when
    shared, (H' W', N, O K) per position otherwise."""
    slots = tree.slots(posteriors)  # (N, H', W', O, K)
    vectors = slots.flatten(3)  # (N, H', W', O K)
    if not tree.config.shared:
        return vectors.flatten(1, 2).transpose(0, 1)  # (H' W', N, O K)
    flat = vectors.reshape(-1, vectors.shape[-1])
    keep = torch.randperm(flat.shape[0], generator=generator)[: tree.config.init_vectors]
    return flat[keep.to(flat.device)].unsqueeze(0)


def initialise_tree(tree: Tree, posteriors: torch.Tensor, generator: torch.Generator, labels=None) -> None:
    """Start a Tree layer from its children's posteriors (N, K, Hc, Wc) under the tree below it:
    k-means clusters of the block vectors (:func:`block_vectors`; per class for a layer split by
    class, given the images' ``labels``) become its components, each cluster's mean posterior of
    every child its transition probabilities and its share of the vectors its mixing weight."""
    sets = vectors_by_class(tree, posteriors, labels, generator)
    positions, _, width = sets[0][0].shape  # (P, M, O K) each
    counts = posteriors.new_zeros(positions, tree.components, width, dtype=torch.float64)
    sizes = posteriors.new_zeros(positions, tree.components, dtype=torch.float64)
    for vectors, for_components in sets:
        x = vectors.double()
        onehot = kmeans(x, int(for_components.sum()), tree.config.init_iterations, generator)  # (P, M, k)
        counts[:, for_components] = onehot.transpose(1, 2) @ x
        sizes[:, for_components] = onehot.sum(1)
    transitions = counts.view(positions, tree.components, tree.offsets, -1).transpose(1, 2)  # (P, O, J, K)
    lead = () if tree.config.shared else tree.output_shape[1:]
    tree.assign_(transitions.reshape(*lead, *transitions.shape[1:]), sizes.reshape(*lead, -1) + 1.0)
    tree.mark_initialised_()
