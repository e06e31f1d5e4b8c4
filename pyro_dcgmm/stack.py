"""Stack: a DCGMM, i.e. a list of layers that is itself one Pyro model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch
from pyro.nn import PyroModule

from pyro_dcgmm.config import (
    FoldConfig,
    GMMConfig,
    LayerConfig,
    MaxPoolConfig,
    ModelConfig,
    ReadoutConfig,
)
from pyro_dcgmm.errors import ArchitectureError
from pyro_dcgmm.fold import Fold
from pyro_dcgmm.gmm import GMM
from pyro_dcgmm.layer import Layer, local_params
from pyro_dcgmm.pool import MaxPool
from pyro_dcgmm.readout import Readout
from pyro_dcgmm.validation import as_images

MAX_PLATE_NESTING = 3  # data, height, width


def layer_from_config(config: LayerConfig) -> Layer:
    """Instantiate the layer a config dataclass describes."""
    if isinstance(config, FoldConfig):
        return Fold(config.patch, config.stride)
    if isinstance(config, MaxPoolConfig):
        return MaxPool(config.kernel, config.stride)
    if isinstance(config, GMMConfig):
        options = {k: v for k, v in vars(config).items() if k != "type"}
        return GMM(**options)
    if isinstance(config, ReadoutConfig):
        return Readout(config.num_classes, config.wait)
    raise ArchitectureError(f"not a layer config: {config!r}")


class Stack(PyroModule):
    """A DCGMM: Fold, GMM, MaxPool and Readout layers over images of shape ``input_shape``.

    Calling the stack runs its Pyro model: inside a plate over the data, every layer's model in
    turn, each GMM layer on the detached responsibilities (or patches, or pooled responsibilities)
    of the layers below.  Each GMM layer thus has its own enumerated component site and trains on
    its own log-likelihood, and the ELBO of the stack is the sum of the layers' ELBOs.

    A Fold directly below a GMM is absorbed by the GMM (see :class:`~pyro_dcgmm.fold.Fold`).

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
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in input_shape):
            raise ArchitectureError(
                f"input_shape must be (channels, height, width) of positive ints, got {input_shape}"
            )
        if not layers:
            raise ArchitectureError("a Stack needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ArchitectureError(f"layers[{i}] is {type(layer).__name__}, not a layer")
            if isinstance(layer, Readout) and i != len(layers) - 1:
                raise ArchitectureError(f"layers[{i}] is a Readout, which may only be the top layer")
        if not any(isinstance(layer, GMM) for layer in layers):
            raise ArchitectureError("a Stack needs at least one GMM layer")
        self.input_shape = input_shape
        self.data_range = tuple(data_range)
        self.layers = PyroModule[torch.nn.ModuleList](layers)
        self._stages: list[int] = []
        shape = input_shape
        i = 0
        while i < len(layers):
            layer = layers[i]
            layer.site_prefix = f"layer{i}"
            try:
                if isinstance(layer, Fold) and i + 1 < len(layers) and isinstance(layers[i + 1], GMM):
                    layers[i + 1].site_prefix = f"layer{i + 1}"
                    shape = layers[i + 1].build(shape, fold=layer)
                    i += 1
                else:
                    shape = layer.build(shape)
            except ArchitectureError as error:
                raise ArchitectureError(
                    f"layers[{i}] ({type(layer).__name__}) on input (C, H, W) = {shape}: {error}"
                ) from None
            self._stages.append(i)
            i += 1
        self.output_shape = shape
        self.gmm_indices = [i for i, layer in enumerate(layers) if isinstance(layer, GMM)]

    @classmethod
    def from_config(cls, config: ModelConfig, input_shape: tuple[int, int, int] | None = None):
        """Build a stack from a :class:`~pyro_dcgmm.config.ModelConfig` (layers must be given)."""
        shape = input_shape if input_shape is not None else config.input_shape
        if shape is None:
            raise ArchitectureError("the model config has no input_shape and none was given")
        if not config.layers:
            raise ArchitectureError("the model config has no layers; resolve presets first")
        layers = [layer_from_config(c) for c in config.layers]
        return cls(layers, tuple(shape), config.data_range)

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
        return [self.layers[i] for i in self.gmm_indices]

    @property
    def readout(self) -> Readout | None:
        top = self.layers[-1]
        return top if isinstance(top, Readout) else None

    def gmm_index(self, layer: int) -> int:
        """Index in ``layers`` of GMM number ``layer`` (negative counts from the top)."""
        count = len(self.gmm_indices)
        if not isinstance(layer, int) or not -count <= layer < count:
            raise IndexError(
                f"layer must be an int in [{-count}, {count - 1}] (this stack has {count} GMM "
                f"layers), got {layer!r}"
            )
        return self.gmm_indices[layer]

    @local_params
    def forward(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_data: int | None = None,
        annealed: bool = True,
        enumerated: bool = True,
    ) -> torch.Tensor:
        """The stack's Pyro model.

        :param torch.Tensor x: images (N, C, H, W), or a mini-batch of them.
        :param torch.Tensor labels: class indices (N,), observed by a Readout if there is one.
        :param int num_data: size of the full data set when ``x`` is a mini-batch; the data plate
            then scales every log-likelihood term by ``num_data / N``.
        :param bool annealed: use the annealed (smoothed) GMM factors while annealing runs.
        :param bool enumerated: give every GMM layer its enumerated component site (``True``) or
            marginalise it in closed form (``False``; same ELBO and gradients, faster to train).
        :returns: the output of the top layer.
        """
        n = x.shape[0]
        if num_data is None:
            plate = pyro.plate("data", n, dim=-3)
        else:
            plate = pyro.plate("data", num_data, subsample=torch.arange(n, device=x.device), dim=-3)
        with plate:
            h = x
            for i in self._stages:
                h = self.layers[i].model(h, labels=labels, annealed=annealed, enumerated=enumerated)
        return h

    def loss(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_data: int | None = None,
        annealed: bool = True,
    ) -> torch.Tensor:
        """The negative ELBO of :meth:`forward` written by hand in torch, without Pyro.

        Equal to ``TraceEnum_ELBO().differentiable_loss(stack.model, stack.guide, ...)`` (tested);
        kept as the baseline that ``scripts/bench.py`` measures Pyro's overhead against.
        """
        total = x.new_zeros(())
        h = x
        for i in self._stages:
            h, layer_loss = self.layers[i].loss(h, labels=labels, annealed=annealed)
            if layer_loss is not None:
                total = total + layer_loss
        return total if num_data is None else total * (num_data / x.shape[0])

    def model(self, *args, **kwargs) -> torch.Tensor:
        """Alias of calling the stack: the Pyro model."""
        return self(*args, **kwargs)

    @staticmethod
    def guide(*args, **kwargs) -> None:
        """Empty guide: all latent variables are enumerated, parameters are point estimates."""

    def upward(self, x: torch.Tensor, until: int) -> torch.Tensor:
        """The input of ``layers[until]`` (absorbed Folds included) for images ``x``."""
        h = x
        for i in self._stages:
            if i >= until:
                break
            h = self.layers[i].transform(h)
        return h

    def _query(self, x, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> torch.Tensor:
        x = as_images(x, self.input_shape, self.data_range)
        parameter = next(self.parameters())
        outputs = []
        with torch.no_grad():
            for chunk in x.split(batch_size):
                outputs.append(fn(chunk.to(device=parameter.device, dtype=parameter.dtype)))
        return torch.cat(outputs).to(x.device)

    def responsibilities(self, x, layer: int = -1, batch_size: int = 1024) -> torch.Tensor:
        """Posterior over components at GMM layer ``layer``: shape (N, H, W, K)."""
        index = self.gmm_index(layer)
        gmm = self.layers[index]
        return self._query(x, lambda c: gmm.transform(self.upward(c, index)).permute(0, 2, 3, 1), batch_size)

    def map_components(self, x, layer: int = -1, batch_size: int = 1024) -> torch.Tensor:
        """Most probable component at every position of GMM layer ``layer``: shape (N, H, W).

        Equal to ``infer_discrete(..., temperature=0)`` on the exact model (tested).
        """
        index = self.gmm_index(layer)
        gmm = self.layers[index]
        return self._query(x, lambda c: gmm.log_scores(self.upward(c, index)).argmax(dim=1), batch_size)

    def log_prob(self, x, layer: int = -1, batch_size: int = 1024) -> torch.Tensor:
        """Per-sample log-likelihood (N,) at GMM layer ``layer``.

        It is ``sum over positions (h, w) of log p(v_hw)``, where ``v_hw`` is the layer's input
        patch vector at (h, w) (pixels for the first layer, responsibilities of the layer below
        otherwise) and ``p`` the layer's exact mixture density.  With overlapping patches or at upper
        layers this is a score, not a normalised density over images.
        """
        index = self.gmm_index(layer)
        gmm = self.layers[index]
        return self._query(x, lambda c: gmm.log_prob(self.upward(c, index)), batch_size)

    def layer_log_probs(self, x, batch_size: int = 1024) -> torch.Tensor:
        """Per-sample log-likelihood at every GMM layer in one upward pass: (N, number of GMM layers).

        Column ``j`` equals ``log_prob(x, layer=j)``.
        """

        def all_layers(chunk: torch.Tensor) -> torch.Tensor:
            columns, h = [], chunk
            for i in self._stages:
                layer = self.layers[i]
                if isinstance(layer, GMM):
                    scores = layer.log_scores(h)  # (N, K, H', W')
                    columns.append(scores.logsumexp(dim=1).sum((1, 2)))
                    h = torch.softmax(scores, dim=1)
                else:
                    h = layer.transform(h)
            return torch.stack(columns, dim=1)

        return self._query(x, all_layers, batch_size)

    def predict_proba(self, x, batch_size: int = 1024) -> torch.Tensor:
        """Class probabilities (N, num_classes) from the Readout."""
        readout = self.readout
        if readout is None:
            raise ArchitectureError("this stack has no Readout layer to predict classes with")
        top = len(self.layers) - 1
        return self._query(x, lambda c: torch.softmax(readout.logits(self.upward(c, top)), -1), batch_size)
