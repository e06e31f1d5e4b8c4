"""JointStack: a DCGMM whose layers form one mixture over the pixels (a hidden Markov tree).

The layerwise :class:`~pyro_dcgmm.model.stack.Stack` trains every GMM layer on its own input, so the stack
is a chain of separate models.  Here the layers are one model: the leaves are a GMM over the
non-overlapping patches that tile the image, and every :class:`~pyro_dcgmm.model.tree.Tree` layer above
holds, at each of its positions, a component whose children are the components of a block of
positions below.  Its Pyro program, inside plates over the data, the top's positions and every
level's offsets within its block, is ::

    z_top ~ Categorical(pi)                                      # enumerated
    z_child ~ Categorical(Vindex(A)[offset, z_parent])           # every level down, enumerated
    patch ~ N(mu[z_leaf], Sigma[z_leaf])                         # observed

and ``TraceEnum_ELBO`` with the empty guide sums out every component by variable elimination: the
ELBO is the exact ``log p(x)``.  Training uses the same sum as a closed-form upward pass
(:meth:`~pyro_dcgmm.model.tree.Tree.upward`, as Pyro's ``DiscreteHMM`` does for chains); both give the
same loss and gradients (tested).  The tree grows while training: until a layer's ``wait`` is over
the layer below is the top of the tree (with its own mixing weights), then the new layer is
initialised from its children's posteriors and joins, and every layer of the tree keeps training
jointly.  Queries (:mod:`pyro_dcgmm.inference.joint_inference`) are exact: ``log p(x)`` with any pixels
missing, every layer's posterior, in-painting by posterior sampling and the conditional mean, and
ancestral samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from pyro_dcgmm.errors import ArchitectureError
from pyro_dcgmm.inference import joint_inference
from pyro_dcgmm.model.fold import Fold, fold_back
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.layer import Layer, class_logits, component_map, record
from pyro_dcgmm.model.plate_grid import PlateGrid
from pyro_dcgmm.model.priors import has_priors
from pyro_dcgmm.model.stack import Stack
from pyro_dcgmm.model.subnormal import SubnormalGradientFlushed
from pyro_dcgmm.model.tree import Tree


def watched(tensor: torch.Tensor, store: dict, key, over_data: bool = False) -> torch.Tensor:
    """``tensor``, whose gradient in a backward pass is stored negated (and summed over its leading
    data axis if ``over_data``) as ``store[key]``.  For log-weights or log-densities that the loss
    reaches only through the log-likelihood, that is the E-step's expected counts per sample
    (online EM reads them), the loss being the mean negative log-likelihood."""
    if tensor.requires_grad:

        def keep(gradient: torch.Tensor) -> None:
            store[key] = -(gradient.sum(0) if over_data else gradient)

        tensor.register_hook(keep)
    return tensor


class JointStack(Stack):
    """A DCGMM that is one mixture over the pixels: leaves of non-overlapping patches, Tree layers above.

    :param layers: an optional :class:`Fold` whose stride equals its patch (the leaves' patches,
        which must tile the image), one :class:`GMM` (the leaves; any covariance kind, shared or per
        position), then one or more :class:`Tree` layers, each over blocks of the positions below.
        Only the top layer may be split by class.
    :param input_shape: (C, H, W) of the images.
    :param data_range: interval all input values must lie in.

    ``layer`` arguments of the queries number the layers with components: 0 the leaves, 1 the
    first Tree layer, ..., -1 the top.
    """

    @staticmethod
    def builds(layers: Sequence[Layer]) -> bool:
        return any(isinstance(layer, Tree) for layer in layers)

    def _check_layer_types(self, layers: Sequence[Layer]) -> None:
        kinds = [type(layer).__name__ for layer in layers]
        start = 1 if isinstance(layers[0], Fold) else 0
        body = layers[start:]
        if not body or not isinstance(body[0], GMM) or len(body) < 2:
            raise ArchitectureError(
                f"a joint stack is [Fold], GMM, Tree, ... (leaves, then at least one Tree layer), got {kinds}"
            )
        if not all(isinstance(layer, Tree) for layer in body[1:]):
            raise ArchitectureError(f"above its leaves a joint stack has only Tree layers, got {kinds}")

    def __init__(self, layers: Sequence[Layer], input_shape, data_range=(0.0, 1.0)):
        super().__init__(layers, input_shape, data_range)
        leaf = self.gmm_layers[0]
        _, height, width = input_shape
        tiles = leaf.stride == leaf.patch and height % leaf.patch[0] == 0 and width % leaf.patch[1] == 0
        if not tiles:
            raise ArchitectureError(
                f"the leaves' patches {leaf.patch} (stride {leaf.stride}) must tile the {height}x{width} "
                "image: a Fold whose stride equals its patch, dividing the image's sides"
            )
        if leaf.config.annealing:
            raise ArchitectureError("the leaves of a joint stack train without annealing (annealing = false)")
        if has_priors(leaf):
            raise ArchitectureError("priors are for layers of a layerwise stack, not a joint stack's leaves")
        mixtures = self.mixture_layers
        split = [level for level, layer in enumerate(mixtures[:-1]) if layer.config.classes]
        if split:
            raise ArchitectureError(f"only the top layer of a joint stack may be split by class, not {split}")
        waits = [layer.config.wait for layer in mixtures]
        if waits != sorted(waits):
            raise ArchitectureError(
                f"the waits of a joint stack's layers must not decrease upward, got {waits}"
            )
        self.counts: dict = {}  # the E-step's expected counts of the last backward pass, by (level, name)

    @property
    def leaf(self) -> GMM:
        return self.gmm_layers[0]

    @property
    def trees(self) -> list[Tree]:
        return [layer for layer in self.layers if isinstance(layer, Tree)]

    @property
    def mixture_layers(self) -> list[Layer]:
        """The leaves, then the Tree layers: level 0, 1, ..."""
        return [self.leaf, *self.trees]

    @property
    def root_level(self) -> int:
        """The top of the tree grown so far: the highest initialised layer (the top layer before
        any is initialised)."""
        started = [level for level, layer in enumerate(self.mixture_layers) if layer.is_initialised]
        return max(started) if started else len(self.mixture_layers) - 1

    @property
    def max_plate_nesting(self) -> int:
        """Data, the top layer's two position axes and two offset axes per level below it."""
        return 3 + 2 * len(self.trees)

    @property
    def objective_names(self) -> list[str]:
        return ["joint"]

    @property
    def objective_sites(self) -> list[str]:
        return ["objective"]

    def update_schedules(self, objective_losses, waiting) -> None:
        """Nothing to update: a joint stack does not anneal."""

    @property
    def classifies(self) -> bool:
        return bool(self.mixture_layers[-1].config.classes)

    def layers_below_top(self) -> list[Layer]:
        return self.mixture_layers[: self.root_level]

    formulation = "joint"
    trains_distributed = False  # online EM reads counts recorded in this process only

    def reseedable_layers(self) -> list[GMM]:
        """The leaves while they are the top of the tree; once a Tree layer is above them, its
        transitions decide which leaf components are used."""
        return [self.leaf] if self.root_level == 0 else []

    # The Pyro model.

    def program(self, x: torch.Tensor, labels, annealed: bool, enumerated: bool) -> torch.Tensor:
        """The joint model's sites inside the data plate (see the module docstring): with
        ``enumerated``, every component an enumerated site; else one closed-form factor, ``log p(x)``
        by the upward pass (same loss and gradients, faster, and what online EM reads its counts
        from).  ``annealed`` is ignored: a joint stack does not anneal.  Returns ``log p(x)`` (N,),
        detached."""
        n, nesting = x.shape[0], self.max_plate_nesting
        if enumerated:
            log_p = self._enumerated_model(x, labels)
        else:
            log_p = self.watched_log_likelihood(x, labels)
            pyro.factor("obs", log_p.view(n, *[1] * (nesting - 1)))
        record("objective", log_p.detach().view(n, *[1] * (nesting - 1)))
        return log_p.detach()

    def watched_log_likelihood(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        """``log p(x)`` (N,) by the closed-form upward pass, recording in :attr:`counts` the expected
        counts of every layer's components, transitions and the top's mixing weights when a backward
        pass goes through it."""
        self.counts = counts = {}

        def step(layer, h):
            if layer is self.leaf:
                table = SubnormalGradientFlushed.apply(layer.log_prob_table(h))  # (N, K, H, W)
                return watched(table, counts, (0, "components"), over_data=True)
            transitions = watched(layer.log_transitions(), counts, (self.number_of(layer), "transitions"))
            return layer.upward(h, transitions)

        root = self.mixture_layers[self.root_level]
        messages = self.pass_up(x, step, stop=self._above(root))
        log_mixing = watched(root.log_mixing(), counts, (self.root_level, "mixing"))
        return self.top_log_likelihood(messages, component_map(log_mixing, root.config.shared), labels)

    def loss(self, x: torch.Tensor, labels=None, num_data: int | None = None, annealed: bool = True):
        """``-sum over samples of log p(x)`` (given the class with ``labels``) by the closed-form
        upward pass, scaled by ``num_data / N``: the negative ELBO of :meth:`model` without Pyro.
        ``annealed`` is ignored."""
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        return -self.watched_log_likelihood(x, labels).sum() * scale

    def top_log_likelihood(
        self, message: torch.Tensor, log_mixing: torch.Tensor, labels=None
    ) -> torch.Tensor:
        """``sum over the top's positions of logsumexp_j (log pi_j + M_j)`` (N,) from the top's
        message (N, J, H, W), restricted to each image's class if the top is split by class."""
        scores = message + log_mixing  # (N, J, H, W)
        root = self.mixture_layers[self.root_level]
        if labels is not None and root.config.classes:
            scores = scores + root.class_log_likelihood(labels)
        return scores.logsumexp(1).sum((1, 2))

    def messages(self, x: torch.Tensor, mask: torch.Tensor | None = None, levels: int | None = None):
        """Upward messages of levels 0 .. ``levels`` (default: the top of the tree), each
        (N, K_l, H_l, W_l): ``log p(pixels below a position | its component)``, with the pixels
        ``mask`` marks missing (false) summed out."""
        top = self.mixture_layers[self.root_level if levels is None else levels]

        def step(layer, h):
            return layer.log_prob_table(h, mask) if layer is self.leaf else layer.transform(h)

        return [message for _, message in self.upward(x, step, stop=self._above(top))]

    def _above(self, layer):
        """The layer above ``layer`` (one of the mixture layers), ``None`` for the top."""
        above = self.mixture_layers[self.number_of(layer) + 1 :]
        return above[0] if above else None

    def input_of(self, x: torch.Tensor, layer) -> torch.Tensor:
        """The input of ``layer``: the images for the leaves, else the posterior (N, K, H, W) of the
        layer below it as the top of the tree (what initialises a new Tree layer)."""
        level = self.number_of(layer)
        if level == 0:
            return x
        below = self.mixture_layers[level - 1]
        return torch.softmax(self.messages(x, levels=level - 1)[-1] + below.log_mixing_map(), 1)

    def _enumerated_model(self, x: torch.Tensor, labels) -> torch.Tensor:
        """The model with every component an enumerated site (see the module docstring)."""
        levels = self.mixture_layers[: self.root_level + 1]
        grid = PlateGrid(self, x.device)
        root = levels[-1]
        logits = grid.root_parameter(root.log_mixing(), root.config.shared)  # (..., J)
        with grid.plates(self.root_level):
            z = pyro.sample(root.site("z"), dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            if labels is not None and root.config.classes:  # y ~ the class of z, observed
                table = class_logits(root.components, root.config.classes, logits.device, logits.dtype)
                y = labels.view(-1, *[1] * (grid.nesting - 1))
                pyro.sample(root.site("y"), dist.Categorical(logits=table[z]), obs=y)

        def step(tree, z):
            if tree is self.leaf:
                return z
            level = self.number_of(tree)
            offset = grid.offset(level)
            index = (offset,) if tree.config.shared else (*grid.position(level, clamped=True), offset)
            with grid.plates(level - 1):
                return pyro.sample(
                    levels[level - 1].site("z"),
                    dist.Categorical(logits=Vindex(tree.log_transitions())[(*index, z)]),
                    infer={"enumerate": "parallel"},
                )

        z = self.pass_down(z, step, start=root)
        leaf = self.leaf
        rows, columns = grid.position(0, clamped=True)
        select = (lambda p: p[z]) if leaf.config.shared else (lambda p: Vindex(p)[rows, columns, z])
        patches = grid.arrange(x, leaf)  # (N, ..., D)
        with grid.plates(0):
            likelihood = leaf.covariance.distribution(select(leaf.means), select, 1.0)
            pyro.sample(leaf.site("x"), likelihood.mask(grid.present(0)), obs=patches)
        with torch.no_grad():
            return self.top_log_likelihood(self.messages(x)[-1], root.log_mixing_map(), labels)

    def component_images(self, layer: int) -> torch.Tensor:
        """What every component of layer ``layer`` stands for: ``E[pixels | z = k]`` over the region
        below one position (the centre one of a per-position layer), (K, C, h, w); for the top, the
        whole image."""
        level = self.number(layer)
        mixture = self.mixture_layers[level]
        k, height, width = mixture.output_shape
        with torch.no_grad():
            probabilities = torch.eye(k, device=self.leaf.means.device)[:, :, None, None].expand(
                -1, -1, height, width
            )

            def step(layer, probabilities):  # (K, K_below, H, W) for a Tree layer
                return probabilities if layer is self.leaf else layer.child_probabilities(probabilities)

            probabilities = self.pass_down(probabilities, step, start=mixture)
            leaf = self.leaf
            pattern = "nkhw,kd->ndhw" if leaf.config.shared else "nkhw,hwkd->ndhw"
            expected = torch.einsum(pattern, probabilities, leaf.means)  # (K, D, H0, W0)
            images = fold_back(expected, self.input_shape[1:], leaf.patch, leaf.stride)  # (K, C, H, W)
        rows, columns = self._region(level)
        return images[:, :, rows, columns]

    def _region(self, level: int) -> tuple[slice, slice]:
        """The pixels below the centre position of level ``level``."""
        span_h, span_w = self.leaf.patch
        for tree in self.trees[:level]:
            span_h, span_w = span_h * tree.block[0], span_w * tree.block[1]
        _, height, width = self.mixture_layers[level].output_shape
        top, left = (height // 2) * span_h, (width // 2) * span_w
        return slice(top, top + span_h), slice(left, left + span_w)

    # Queries (pyro_dcgmm.inference.joint_inference): exact, ``layer`` numbering the mixture layers.

    def responsibilities(self, x, layer: int = -1, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """Posterior marginal of the components at every position of layer ``layer`` given the
        (observed pixels of the) images: (N, K, H', W')."""
        return joint_inference.posteriors(self, x, self.number(layer), batch_size, mask)

    def map_components(self, x, layer: int = -1, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """The component of highest posterior marginal at every position of layer ``layer``: (N, H', W')."""
        return self.responsibilities(x, layer, batch_size, mask).argmax(1)

    def log_prob(self, x, layer: int = -1, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """``log p(x)`` (N,), the exact density of the images (of their observed pixels, with a
        ``mask``) under the tree; ``layer`` is checked but every layer answers the same."""
        self.number(layer)
        return joint_inference.log_prob(self, x, batch_size, mask)

    def layer_log_probs(self, x, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """``log p(x)`` as one column (N, 1): a joint stack has one likelihood, the image's."""
        return joint_inference.log_prob(self, x, batch_size, mask).unsqueeze(1)

    def predict_proba(self, x, batch_size: int = 1024) -> torch.Tensor:
        """``p(class | x)`` (N, C) by Bayes' rule from a top layer split by class."""
        return joint_inference.class_probabilities(self, x, batch_size)

    def sample(self, n: int, classes=None, options=None) -> torch.Tensor:
        """``n`` images (n, C, H, W) drawn from the model (given ``classes`` (n,) if the top is split
        by class); ``options.divisor`` and ``options.mean`` shape the leaves' draws."""
        return joint_inference.sample(self, n, classes, options)

    def variants(self, x, layer: int | None = None, n_per_image: int = 1, options=None, mask=None):
        """Images that share the components of layer ``layer`` (and above; ``None``: the top) with
        ``x``: those drawn from the posterior given ``x``, every layer below from the model given them."""
        layer = -1 if layer is None else layer
        return joint_inference.variants(self, x, self.number(layer), n_per_image, options, mask)

    def inpaint(self, x, mask, layer: int = -1, n_per_image: int = 1, options=None) -> torch.Tensor:
        """Fill the pixels of ``x`` where ``mask`` is false by exact posterior sampling: every
        component given the observed pixels, each leaf's missing pixels from its Gaussian given its
        observed ones.  ``layer`` is checked only (every layer is drawn given the evidence)."""
        self.number(layer)
        return joint_inference.variants(self, x, 0, n_per_image, options, mask)

    def conditional_mean(self, x, mask, batch_size: int = 256) -> torch.Tensor:
        """``E[x | observed pixels]`` (N, C, H, W): the observed pixels, and the posterior mean of
        the missing ones (the in-painting of least expected squared error)."""
        return joint_inference.conditional_mean(self, x, mask, batch_size)
