"""The configuration of every layer type, each the single source of that layer's defaults."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from pyro_dcgmm.config.checked import Checked, bounded, tagged_config
from pyro_dcgmm.errors import LayerConfigError

IntPair = int | tuple[int, int]


@dataclass(frozen=True)
class FoldConfig(Checked):
    """Cut the input into patches and flatten each into a vector of length ``C * ph * pw``.

    ``patch=None`` takes the whole (remaining) input as one patch.
    """

    section = "fold"
    error = LayerConfigError
    type: Literal["fold"] = field(default="fold", kw_only=True)
    patch: IntPair | None = None
    stride: IntPair = 1

    def check(self) -> None:
        self.check_pair("patch", allow_none=True)
        self.check_pair("stride")


@dataclass(frozen=True)
class MaxPoolConfig(Checked):
    """Spatial max pooling of every channel; ``stride=None`` means ``stride = kernel``."""

    section = "maxpool"
    error = LayerConfigError
    type: Literal["maxpool"] = field(default="maxpool", kw_only=True)
    kernel: IntPair = 2
    stride: IntPair | None = None

    def check(self) -> None:
        self.check_pair("kernel")
        self.check_pair("stride", allow_none=True)


@dataclass(frozen=True)
class GMMConfig(Checked):
    """A Gaussian mixture over every patch vector of its input.

    :param components: number of mixture components K.
    :param shared: one mixture for all positions (convolutional) if true, else one per position.
    :param covariance: the components' covariance structure (:mod:`pyro_dcgmm.model.covariances`):
        ``"diag"`` (independent coordinates), ``"full"`` (any covariance; for short vectors, its
        cost grows with D^2) or ``"stationary"`` (a stationary Gaussian per channel of the patch:
        constant mean, covariance diagonal in the patch's Fourier basis, set by its power spectrum).
    :param precision_floor, precision_ceiling: bounds of every precision (1 / variance; the
        eigenvalues of a full precision matrix).  The ceiling keeps densities finite on constant
        pixels; the floor keeps ``log`` finite.
    :param init: how the layer starts when it begins to train (after ``wait``), from its real
        inputs: ``"kmeans"`` (k-means++ seeds and ``init_iterations`` Lloyd iterations on
        ``init_vectors`` input vectors, then each cluster's weight and variances), ``"data"``
        (means at random input vectors, the inputs' variance) or ``"random"`` (the paper's: means
        uniform in ``[-mean_init_scale, mean_init_scale]``, every precision ``precision_init``).
    :param init_vectors: input vectors the initialisation looks at (per position when not shared).
    :param init_iterations: Lloyd iterations of the k-means initialisation.
    :param dead_weight: at the end of every epoch a component whose mixing weight is below this
        (in any of the layer's mixtures) is re-seeded or pruned, as ``dead_components`` says; 0
        switches both off.
    :param dead_components: ``"reseed"``: a dead component restarts at a random input vector with
        the inputs' spread and weight ``1 / K``; ``"prune"``: it is removed for good (weight zero,
        output zero), the mixture's heaviest component never.  A layer with a
        ``weight_concentration_prior`` always prunes (re-seeding would undo the prior's work).
    :param precision_init: initial value of every precision with ``init = "random"``.
    :param mean_init_scale: with ``init = "random"``, means start uniform in ``[-scale, scale]``
        (the paper's ``muInit``).
    :param annealing: train with the shrinking grid neighbourhood (needed with ``init = "random"``).
    :param width_init: initial neighbourhood width; ``None`` gives the paper's ``0.25 * sqrt(2K)``.
    :param width_floor: width at which the neighbourhood is the identity and the loss is exact.
    :param width_decay: factor applied to the width at each loss plateau.
    :param plateau_window: iterations per plateau test.
    :param plateau_tolerance: relative improvement below which the loss counts as a plateau.
    :param wait: fraction of training during which this layer stays frozen.
    :param output: what the layer passes upward at every position: ``"responsibilities"`` (the
        paper's posterior over components), ``"log_responsibilities"`` (its log, floored,
        standardised over the components), ``"log_probabilities"`` (the components'
        log-densities ``log N(x | c)``, standardised over the components) or ``"likelihoods"``
        (the normalised likelihood vector ``N(x | c) / sum_c' N(x | c')``).
    :param means_lr_scale, precision_lr_scale, mixing_lr_scale: per-parameter learning-rate factors.
    :param classes: 0, or the number of classes C whose labels split the components into C equal
        groups, component k belonging to class ``k // (K / C)``: a labelled training vector is
        explained by its class's group only (mixture discriminant analysis), so ``p(class | k)`` is
        exact, class-conditional samples draw within the group, and k-means initialises and dead
        components re-seed each group from its class's vectors.  Unlabelled queries use all K.
    :param weight_concentration_prior: ``None`` (maximum likelihood), or the concentration ``a0``
        of a symmetric Dirichlet prior on every mixture's weights (:mod:`pyro_dcgmm.model.priors`);
        below 1 it removes the components the data barely use, as scikit-learn's
        ``BayesianGaussianMixture`` does (whose default is ``1 / components``).
    :param weight_posterior: how online EM estimates the weights under that prior: ``"map"`` (the
        posterior mode; a component whose mode is zero is pruned at once) or ``"mean_field"`` (a
        Dirichlet posterior whose expected log-weights score the components, as variational Bayes
        does; components it starves are pruned at the epoch's end by ``dead_weight``).
    :param mean_precision_prior: ``None`` (maximum likelihood), or ``k0`` of a Normal-Gamma prior
        on every component's means and diagonal precisions: ``p ~ Gamma(v0 / 2, v0 s / 2)`` and
        ``mu | p ~ Normal(m, 1 / (k0 p))`` per coordinate, ``m`` and ``s`` the mean and variance
        of the layer's inputs (measured at initialisation); for ``covariance = "diag"``.
    :param degrees_of_freedom_prior: ``v0`` of that prior; ``None`` takes the patch dimension D,
        as scikit-learn does.
    """

    section = "gmm"
    error = LayerConfigError
    type: Literal["gmm"] = field(default="gmm", kw_only=True)
    components: int = bounded(25, ge=1)
    shared: bool = True
    covariance: Literal["diag", "full", "stationary"] = "diag"
    precision_floor: float = bounded(0.01, gt=0)
    precision_ceiling: float = bounded(20.0, gt=0)
    init: Literal["kmeans", "data", "random"] = "kmeans"
    init_vectors: int = bounded(5000, ge=1)
    init_iterations: int = bounded(20, ge=0)
    dead_weight: float = bounded(1e-4, ge=0, lt=1)
    dead_components: Literal["reseed", "prune"] = "reseed"
    precision_init: float = bounded(10.0, gt=0)
    mean_init_scale: float = bounded(0.1, ge=0)
    annealing: bool = False
    width_init: float | None = bounded(None, gt=0)
    width_floor: float = bounded(0.01, gt=0)
    width_decay: float = bounded(0.9, gt=0, lt=1)
    plateau_window: int = bounded(100, ge=1)
    plateau_tolerance: float = bounded(0.05, ge=0)
    wait: float = bounded(0.0, ge=0, lt=1)
    output: Literal["responsibilities", "log_responsibilities", "log_probabilities", "likelihoods"] = (
        "responsibilities"
    )
    means_lr_scale: float = bounded(1.0, ge=0)
    precision_lr_scale: float = bounded(1.0, ge=0)
    mixing_lr_scale: float = bounded(1.0, ge=0)
    classes: int = bounded(0, ge=0)
    weight_concentration_prior: float | None = bounded(None, gt=0)
    weight_posterior: Literal["map", "mean_field"] = "map"
    mean_precision_prior: float | None = bounded(None, gt=0)
    degrees_of_freedom_prior: float | None = bounded(None, ge=1)

    def check(self) -> None:
        self.check_priors()
        if not self.precision_floor < self.precision_ceiling:
            self.fail(
                "gmm precisions need precision_floor < precision_ceiling, got "
                f"{self.precision_floor} and {self.precision_ceiling}"
            )
        if self.init == "random" and not self.precision_floor < self.precision_init < self.precision_ceiling:
            self.fail(
                "with init = 'random' gmm precisions need precision_floor < precision_init < "
                f"precision_ceiling, got {self.precision_floor}, {self.precision_init}, "
                f"{self.precision_ceiling}"
            )
        if self.covariance == "full" and self.precision_ceiling > FULL_PRECISION_RANGE * self.precision_floor:
            self.fail(
                f"gmm with covariance = 'full' needs precision_ceiling / precision_floor <= "
                f"{FULL_PRECISION_RANGE:g} (a wider range of eigenvalues is not reliably positive "
                f"definite in float32), got {self.precision_ceiling:g} / {self.precision_floor:g}"
            )
        if self.init != "random" and self.init_vectors < self.components:
            self.fail(f"gmm.init_vectors must be >= components ({self.components}), got {self.init_vectors}")
        if self.classes == 1 or (self.classes and self.components % self.classes):
            self.fail(
                f"gmm.classes must be 0 or at least 2 classes dividing components ({self.components}) "
                f"into equal groups, got {self.classes}"
            )

    @property
    def prunes_dead(self) -> bool:
        """Whether dead components are pruned (else re-seeded)."""
        return self.dead_components == "prune" or self.weight_concentration_prior is not None

    def check_priors(self) -> None:
        if self.weight_posterior == "mean_field" and self.weight_concentration_prior is None:
            self.fail("gmm.weight_posterior = 'mean_field' needs a weight_concentration_prior")
        if self.mean_precision_prior is None:
            if self.degrees_of_freedom_prior is not None:
                self.fail("gmm.degrees_of_freedom_prior needs a mean_precision_prior (Normal-Gamma prior)")
            return
        if self.covariance != "diag":
            self.fail(
                "gmm.mean_precision_prior (a Normal-Gamma prior) is implemented for covariance = 'diag', "
                f"got {self.covariance!r}"
            )
        if self.init == "random":
            self.fail(
                "gmm.mean_precision_prior is centred on the layer's inputs, which init = 'random' never "
                "looks at: use init = 'kmeans' or 'data'"
            )


FULL_PRECISION_RANGE = 1e6  # float32 keeps a precision matrix positive definite up to this condition


@dataclass(frozen=True)
class ReadoutConfig(Checked):
    """Linear classifier on the (detached) output of the layer below, trained on labels."""

    section = "readout"
    error = LayerConfigError
    type: Literal["readout"] = field(default="readout", kw_only=True)
    num_classes: int = bounded(10, ge=2)
    wait: float = bounded(0.0, ge=0, lt=1)


@dataclass(frozen=True)
class TreeConfig(Checked):
    """A layer of a joint stack (:mod:`pyro_dcgmm.model.joint`): at each of its positions a component
    ``z`` whose children are the components of a block of positions of the layer below, with
    ``p(z_child = k | z = j) = A[offset, j, k]``.

    :param components: number of components J.
    :param block: (height, width) of the block of positions below that one position covers, an int
        for a square, or ``"full"`` for all of them (one position: the top of the tree).  Blocks tile
        the grid below from its top-left corner; blocks at the bottom and right edges may be cut
        short (a block larger than the grid is cut to it), and their missing children are simply
        absent.
    :param shared: one transition table for all positions (convolutional) if true, else one per
        position.
    :param probability_floor: every transition probability and mixing weight is kept at or above
        this (EM's counts are floored there before normalising), so that no child component becomes
        impossible and the closed form's matrix products never underflow.
    :param init_vectors: block vectors (children's posteriors) that the k-means initialisation
        looks at (per position when not shared).
    :param init_iterations: Lloyd iterations of that k-means.
    :param wait: fraction of training before this layer joins the tree (is initialised and
        becomes its root); the layers below train as the tree's top until then.
    :param classes: 0, or the number of classes C whose labels split the top layer's components
        into C equal groups (component j belongs to class ``j // (J / C)``): labelled images are
        explained by their class's components only, which makes the stack a class-conditional
        density and a generative classifier.  Only the top layer may be split.
    """

    section = "tree"
    error = LayerConfigError
    type: Literal["tree"] = field(default="tree", kw_only=True)
    components: int = bounded(32, ge=1)
    block: IntPair | Literal["full"] = 2
    shared: bool = True
    probability_floor: float = bounded(1e-6, gt=0, lt=1)
    init_vectors: int = bounded(5000, ge=1)
    init_iterations: int = bounded(20, ge=0)
    wait: float = bounded(0.0, ge=0, lt=1)
    classes: int = bounded(0, ge=0)

    def check(self) -> None:
        if self.block != "full":
            self.check_pair("block")
        if self.probability_floor * self.components >= 1:
            self.fail(
                f"tree.probability_floor times components must be below 1 (the mixing weights sum to 1), "
                f"got {self.probability_floor:g} * {self.components}"
            )
        if self.init_vectors < self.components:
            self.fail(f"tree.init_vectors must be >= components ({self.components}), got {self.init_vectors}")
        if self.classes == 1 or (self.classes and self.components % self.classes):
            self.fail(
                f"tree.classes must be 0 or at least 2 classes dividing components ({self.components}) "
                f"into equal groups, got {self.classes}"
            )


LayerConfig = FoldConfig | MaxPoolConfig | GMMConfig | ReadoutConfig | TreeConfig


def layer_from_dict(data: Any, where: str = "layer") -> LayerConfig:
    """Build the layer config named by ``data["type"]``."""
    return tagged_config(data, typing.get_args(LayerConfig), where)
