"""Stack: a DCGMM, i.e. a list of layers that is itself one Pyro model."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence

import pyro
import torch
from pyro.nn import PyroModule

from pyro_dcgmm.config import ModelConfig
from pyro_dcgmm.errors import ArchitectureError, LayerIndexError
from pyro_dcgmm.inference import queries, top_down
from pyro_dcgmm.inference.sampling import SamplingOptions, default_variant_layer
from pyro_dcgmm.model import priors as priors_module
from pyro_dcgmm.model.building import check_layer_list, checked_input_shape, class_count, layer_from_config
from pyro_dcgmm.model.fold import Fold
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.layer import Layer, local_params
from pyro_dcgmm.model.logsumexp import component_logsumexp
from pyro_dcgmm.model.readout import Readout
from pyro_dcgmm.model.tree import Tree

MAX_PLATE_NESTING = 3  # data, height, width


def last_value(passes, default):
    """The value of the last ``(layer, value)`` pair of a pass (``default`` if there is none)."""
    last = deque(passes, maxlen=1)
    return last[0][1] if last else default


class Stack(PyroModule):
    """A DCGMM: Fold, GMM, MaxPool and Readout layers over images of shape ``input_shape``.

    Calling the stack runs its Pyro model: inside a plate over the data, every layer's model in
    turn, each GMM layer on the detached responsibilities (or patches, or pooled responsibilities)
    of the layers below.  Each GMM layer thus has its own enumerated component site and trains on
    its own log-likelihood, and the ELBO of the stack is the sum of the layers' ELBOs.

    A Fold directly below a GMM is absorbed by the GMM (see :class:`~pyro_dcgmm.model.fold.Fold`).

    :param layers: the layers, bottom first.  A :class:`Readout` may only come last.
    :param input_shape: (C, H, W) of the images.
    :param data_range: interval all input values must lie in.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        input_shape: tuple[int, int, int],
        data_range: tuple[float, float] = (0.0, 1.0),
    ):
        super().__init__()
        self.input_shape = checked_input_shape(input_shape)
        check_layer_list(layers)
        self._check_layer_types(layers)
        self.data_range = tuple(data_range)
        self.layers = PyroModule[torch.nn.ModuleList](layers)
        self.pass_layers = self._build(layers)
        self.output_shape = self.pass_layers[-1].output_shape
        self.num_classes = class_count(self.mixture_layers, self.readout)

    def _build(self, layers: Sequence[Layer]) -> tuple[Layer, ...]:
        """Build every layer on the output shape of the one below; the layers the passes run, bottom
        first (a Fold directly below a GMM is absorbed: it runs inside the GMM)."""
        shape, runs = self.input_shape, []
        pairs = itertools.pairwise(layers)
        absorbed = {i for i, (a, b) in enumerate(pairs) if isinstance(a, Fold) and isinstance(b, GMM)}
        for i, layer in enumerate(layers):
            if i in absorbed:
                continue
            try:
                shape = layer.build(shape, fold=layers[i - 1]) if i - 1 in absorbed else layer.build(shape)
            except ArchitectureError as error:
                raise ArchitectureError(
                    f"layers[{i}] ({type(layer).__name__}) on input (C, H, W) = {shape}: {error}"
                ) from None
            runs.append(layer)
        for number, layer in enumerate(layer for layer in runs if isinstance(layer, (GMM, Tree))):
            layer.site_prefix = f"layer{number}"
        for layer in runs:
            if isinstance(layer, Readout):
                layer.site_prefix = "readout"
        return tuple(runs)

    def _check_layer_types(self, layers: Sequence[Layer]) -> None:
        """The layerwise stack takes Fold, GMM, MaxPool and Readout layers."""
        trees = [i for i, layer in enumerate(layers) if isinstance(layer, Tree)]
        if trees:
            raise ArchitectureError(
                f"layers{trees} are Tree layers, which form a joint stack: build it with JointStack "
                "(Stack.from_config picks it for a config with tree layers)"
            )

    @classmethod
    def from_config(cls, config: ModelConfig, input_shape: tuple[int, int, int] | None = None):
        """Build a stack from a :class:`~pyro_dcgmm.config.ModelConfig` (layers must be given): a
        :class:`~pyro_dcgmm.model.joint.JointStack` when it has tree layers, else a layerwise stack."""
        shape = input_shape if input_shape is not None else config.input_shape
        if shape is None:
            raise ArchitectureError("the model config has no input_shape and none was given")
        if not config.layers:
            raise ArchitectureError("the model config has no layers; resolve presets first")
        layers = [layer_from_config(c) for c in config.layers]
        if cls is Stack:  # a subclass that builds these layers (JointStack, for Tree layers)
            cls = next((kind for kind in Stack.__subclasses__() if kind.builds(layers)), Stack)
        return cls(layers, tuple(shape), config.data_range)

    @staticmethod
    def builds(layers: Sequence[Layer]) -> bool:
        """Whether :meth:`from_config` builds this kind of stack (a subclass) for ``layers``."""
        return False

    @property
    def config(self) -> ModelConfig:
        """The resolved configuration this stack rebuilds from."""
        return ModelConfig(
            input_shape=self.input_shape,
            layers=tuple(layer.config for layer in self.layers),
            data_range=self.data_range,
        )

    @property
    def gmm_layers(self) -> list[GMM]:
        return [layer for layer in self.pass_layers if isinstance(layer, GMM)]

    @property
    def mixture_layers(self) -> list[Layer]:
        """The layers with components, bottom first: the GMM layers here (and the Tree layers of a
        joint stack)."""
        return self.gmm_layers

    @property
    def max_plate_nesting(self) -> int:
        """Plates the Pyro model nests (``TraceEnum_ELBO(max_plate_nesting=...)``)."""
        return MAX_PLATE_NESTING

    @property
    def objective_names(self) -> list[str]:
        """A name for each objective training logs: every GMM layer's, ``L<its layer number>``."""
        return [f"L{number}" for number in range(len(self.gmm_layers))]

    @property
    def objective_sites(self) -> list[str]:
        """The deterministic sites of the model that hold each objective per sample (and position)."""
        return [gmm.site("objective") for gmm in self.gmm_layers]

    trains_distributed = True  # whether data-parallel training (torchrun) is supported
    formulation = "layerwise"  # every GMM layer models its own input (a joint stack: "joint")

    def reseedable_layers(self) -> list[GMM]:
        """The GMM layers whose dead components training re-seeds or prunes."""
        return self.gmm_layers

    def project_(self) -> None:
        """Bring every layer's parameters back inside their constraints (precision bounds, a joint
        stack's probability floors): what ``train`` does after every optimiser step, and what a
        plain ``pyro.infer.SVI`` loop should do after every ``svi.step``."""
        for layer in self.mixture_layers:
            layer.project_()

    def layers_below_top(self) -> list[Layer]:
        """The layers below the top of a joint stack's tree (none here: every layer has its own
        objective)."""
        return []

    def update_schedules(self, objective_losses: list[float], waiting: list) -> None:
        """Advance every training GMM layer's annealing schedule with its loss of this step."""
        for gmm, value in zip(self.gmm_layers, objective_losses, strict=True):
            if gmm not in waiting:
                gmm.schedule.update(value)

    @property
    def classifies(self) -> bool:
        """Whether :meth:`predict_proba` answers: through a Readout here (through a top layer split
        by class in a joint stack)."""
        return self.readout is not None

    @property
    def samples_by_class(self) -> bool:
        """Whether :meth:`sample` takes classes: through a top GMM split by class or a Readout."""
        return bool(self.mixture_layers[-1].config.classes) or self.readout is not None

    @property
    def readout(self) -> Readout | None:
        top = self.layers[-1]
        return top if isinstance(top, Readout) else None

    # Addressing: a layer is named everywhere (queries, sampling, views, the log's ``L<number>``, Pyro
    # sites ``layer<number>.z``) by its number among ``mixture_layers``, 0 the lowest, -1 the top.

    def number(self, layer: int) -> int:
        """Layer number ``layer`` (negative counts from the top) as 0 .. count - 1, checked."""
        count = len(self.mixture_layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
            raise LayerIndexError(
                f"layer must be an int in [{-count}, {count - 1}] (this stack has {count} layers with "
                f"components, 0 the lowest), got {layer!r}"
            )
        return layer % count

    def mixture_layer(self, layer: int) -> Layer:
        """The layer with components numbered ``layer``."""
        return self.mixture_layers[self.number(layer)]

    def number_of(self, layer: Layer) -> int:
        """The number of ``layer``, one of :attr:`mixture_layers`."""
        return next(n for n, mixture in enumerate(self.mixture_layers) if mixture is layer)

    # Traversal: the one upward and the one downward pass every computation runs through.

    def upward(self, x, step=None, start: Layer | None = None, stop: Layer | None = None):
        """Pass ``x`` up the stack: for every layer the passes run (:attr:`pass_layers`), bottom
        first, from ``start`` on and below ``stop``, yield ``(layer, output)`` with
        ``output = step(layer, input)`` (default: ``layer.transform(input)``), each output the next
        layer's input."""
        first = 0 if start is None else self.pass_layers.index(start)
        last = len(self.pass_layers) if stop is None else self.pass_layers.index(stop)
        h = x
        for layer in self.pass_layers[first:last]:
            h = layer.transform(h) if step is None else step(layer, h)
            yield layer, h

    def downward(self, signal, step, start: Layer | None = None):
        """Pass ``signal`` down the stack: for every layer from ``start`` (default: the top) to the
        bottom, yield ``(layer, signal)`` with ``signal = step(layer, signal)``, what the layer
        passes to the one below."""
        top = len(self.pass_layers) if start is None else self.pass_layers.index(start) + 1
        for layer in reversed(self.pass_layers[:top]):
            signal = step(layer, signal)
            yield layer, signal

    def loss(self, x, labels=None, num_data: int | None = None, annealed: bool = True, priors: bool = True):
        """The negative ELBO of :meth:`model` in plain torch, without Pyro (equal to
        ``TraceEnum_ELBO().differentiable_loss(stack.model, stack.guide, ...)``, tested): every GMM
        layer's ``-sum over samples and positions of logsumexp_k`` of its table, plus the Readout's
        cross-entropy given ``labels``, scaled by ``num_data / N`` for a mini-batch, less the log
        prior of the layers that have one (with ``priors``)."""
        totals = []

        def step(layer, h):
            if isinstance(layer, GMM):
                scores, table = layer.annealed_log_scores(h, annealed)  # (N, K, H', W'), (N, H', W', K)
                totals.append(-component_logsumexp(table).sum())
                return layer.output(scores.detach())
            if isinstance(layer, Readout):
                logits = layer.logits(h)  # (N, num_classes)
                if labels is not None:
                    totals.append(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
                return torch.softmax(logits.detach(), dim=-1)[:, :, None, None]
            return layer.transform(h)

        self.pass_up(x, step)
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        return torch.stack(totals).sum() * scale - (priors_module.log_prior(self) if priors else 0.0)

    def pass_up(self, x, step=None, start: Layer | None = None, stop: Layer | None = None):
        """What :meth:`upward` ends with: the output of the last layer it runs (``x`` if none)."""
        return last_value(self.upward(x, step, start, stop), x)

    def pass_down(self, signal, step, start: Layer | None = None):
        """What :meth:`downward` ends with: what the bottom layer passes down."""
        return last_value(self.downward(signal, step, start), signal)

    def input_of(self, x: torch.Tensor, layer: Layer) -> torch.Tensor:
        """The input of ``layer`` (one of :attr:`pass_layers`) for images ``x``."""
        return self.pass_up(x, stop=layer)

    @local_params
    def forward(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_data: int | None = None,
        annealed: bool = True,
        enumerated: bool = True,
        priors: bool = True,
    ) -> torch.Tensor:
        """The stack's Pyro model.

        :param torch.Tensor x: images (N, C, H, W), or a mini-batch of them.
        :param torch.Tensor labels: class indices (N,), observed by a Readout if there is one.
        :param int num_data: size of the full data set when ``x`` is a mini-batch; the data plate
            then scales every log-likelihood term by ``num_data / N``.
        :param bool annealed: use the annealed (smoothed) GMM factors while annealing runs.
        :param bool enumerated: give every GMM layer its enumerated component site (``True``) or
            marginalise it in closed form (``False``; same ELBO and gradients, faster to train).
        :param bool priors: the parameters of layers with priors are sample sites (outside the data
            plate; :mod:`pyro_dcgmm.model.priors`) and the layers compute with their values;
            ``False``: the likelihood alone at the layers' parameters (what online EM differentiates).
        :returns: the output of the top layer (:meth:`program`).
        """
        values = priors_module.sample_parameters(self) if priors else {}
        with priors_module.substituted(self, values), self.data_plate(x, num_data):
            return self.program(x, labels, annealed, enumerated)

    def program(self, x: torch.Tensor, labels, annealed: bool, enumerated: bool) -> torch.Tensor:
        """The model's sites inside the data plate: every layer's model in turn."""
        return self.pass_up(
            x, lambda layer, h: layer.model(h, labels=labels, annealed=annealed, enumerated=enumerated)
        )

    def data_plate(self, x: torch.Tensor, num_data: int | None) -> pyro.plate:
        """The plate over the images ``x``, outermost (``dim = -max_plate_nesting``); a subsample of
        ``num_data`` when ``x`` is a mini-batch, so that every term is scaled by ``num_data / N``."""
        n, dim = x.shape[0], -self.max_plate_nesting
        if num_data is None:
            return pyro.plate("data", n, dim=dim)
        return pyro.plate("data", num_data, subsample=torch.arange(n, device=x.device), dim=dim)

    def model(self, *args, **kwargs) -> torch.Tensor:
        """Alias of calling the stack: the Pyro model."""
        return self(*args, **kwargs)

    @local_params
    def guide(self, *args, priors: bool = True, **kwargs) -> None:
        """The point guide: every component variable is enumerated in the model, and the parameters
        of layers with priors (with ``priors``) get a ``Delta`` at their values, which makes SVI MAP
        estimation; without priors the guide is empty and SVI is maximum likelihood."""
        if priors:
            priors_module.point_sites(self)

    def point_values(self) -> dict[str, torch.Tensor]:
        """The current value of every prior site, by name (``poutine.block(expose=...)`` takes the
        names, an ``AutoDelta``'s ``init_to_value`` the values)."""
        return {site: value.detach().clone() for site, value in priors_module.point_values(self).items()}

    def assign_point_values_(self, values: dict[str, torch.Tensor]) -> None:
        """Set the parameters from values of the prior sites (an ``AutoDelta``'s ``median()``)."""
        priors_module.assign_point_values_(self, values)

    # Queries (pyro_dcgmm.inference.queries).  ``mask`` (same shape as ``x``, true or 1 where observed)
    # marginalises missing pixels exactly at the first layer.

    def responsibilities(self, x, layer: int = -1, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """Posterior over components at GMM layer ``layer``: shape (N, K, H', W'), components on
        the channel axis as in every layer's output."""
        return queries.responsibilities(self, x, layer, batch_size, mask)

    def map_components(self, x, layer: int = -1, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """Most probable component at every position of GMM layer ``layer``: shape (N, H', W'),
        equal to ``infer_discrete(..., temperature=0)`` on the exact model (tested)."""
        return queries.map_components(self, x, layer, batch_size, mask)

    def log_prob(self, x, layer: int = -1, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """Per-sample log-likelihood (N,) at GMM layer ``layer``.

        It is ``sum over positions (h, w) of log p(v_hw)``, where ``v_hw`` is the layer's input
        patch vector at (h, w) (pixels for the first layer, the output of the layer below
        otherwise) and ``p`` the layer's exact mixture density.  With overlapping patches or at upper
        layers this is a score, not a normalised density over images.  With a ``mask`` of observed
        pixels the first layer's density is the exact marginal of the observed pixels, and every
        layer above marginalises its inputs from mostly missing patches.
        """
        return queries.log_prob(self, x, layer, batch_size, mask)

    def layer_log_probs(self, x, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """Per-sample log-likelihood at every GMM layer in one upward pass: (N, number of GMM
        layers), column ``j`` equal to ``log_prob(x, layer=j)``."""
        return queries.layer_log_probs(self, x, batch_size, mask)

    def predict_proba(self, x, batch_size: int = 1024) -> torch.Tensor:
        """Class probabilities (N, num_classes) from the Readout."""
        return queries.predict_proba(self, x, batch_size)

    # Top-down sampling (pyro_dcgmm.inference.top_down).

    def sample(self, n: int, classes=None, options: SamplingOptions | None = None) -> torch.Tensor:
        """``n`` images (n, C, H, W) sampled top-down (the posterior predictive of the model).

        :param classes: (n,) class labels for class-conditional samples: within the class's
            components of a top GMM split by class, else through the Readout.
        :param SamplingOptions options: top-S, standard-deviation divisor, means, pooling, sharpening
            (``None``: the defaults ``pyro-dcgmm sample`` uses,
            :func:`~pyro_dcgmm.inference.sampling.default_options`).
        """
        return top_down.sample(self, n, classes, options)

    def variants(self, x, layer: int | None = None, n_per_image: int = 1, options=None, mask=None):
        """Images sampled down from the responsibilities of ``x`` at GMM layer ``layer`` (``None``:
        the one below the top GMM layer if there is one, as ``pyro-dcgmm sample`` does).

        Returns (N * n_per_image, C, H, W); rows ``i * n_per_image ...`` are variants of image ``i``.
        """
        layer = default_variant_layer(self) if layer is None else layer
        return top_down.variants(self, x, layer, n_per_image, options, mask)

    def inpaint(self, x, mask, layer: int = -1, n_per_image: int = 1, options=None) -> torch.Tensor:
        """Fill the pixels of ``x`` where ``mask`` is false; observed pixels are returned unchanged.

        The posterior at GMM layer ``layer`` (default: the top one, which sees the whole image) is
        given the observed pixels only: the first layer marginalises the missing ones exactly and
        every layer above the inputs from mostly missing patches.  The missing pixels are sampled
        down from it (component means with ``options.mean``), every layer below drawing each component
        given the observed part of its patch too, and sharpened with the observed pixels held fixed.
        """
        return top_down.variants(self, x, layer, n_per_image, options, mask)
