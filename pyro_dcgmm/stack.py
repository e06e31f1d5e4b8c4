"""Stack: a DCGMM, i.e. a list of layers that is itself one Pyro model."""

from __future__ import annotations

from collections.abc import Sequence

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
from pyro_dcgmm.errors import ArchitectureError, DataError
from pyro_dcgmm.fold import Fold
from pyro_dcgmm.gmm import GMM
from pyro_dcgmm.layer import Layer, local_params
from pyro_dcgmm.pool import MaxPool
from pyro_dcgmm.readout import Readout
from pyro_dcgmm.sampling import SamplingOptions, Sharpening, sharpen
from pyro_dcgmm.validation import as_images, as_labels

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

    def _check_mask(self, x, mask):
        """Images with missing entries zeroed (they may be NaN) and the boolean mask, checked."""
        if mask is None:
            return x, None
        if self.layers[self._stages[0]] is not self.gmm_layers[0]:
            raise ArchitectureError("masked inputs need a GMM (after an optional Fold) as the first layer")
        mask = torch.as_tensor(mask)
        x = torch.as_tensor(x)
        if x.dim() == 3 and self.input_shape[0] == 1:
            x = x.unsqueeze(1)
        if mask.dim() == 3 and self.input_shape[0] == 1:
            mask = mask.unsqueeze(1)
        if mask.shape != x.shape:
            raise DataError(
                f"mask has shape {tuple(mask.shape)}; expected the images' shape {tuple(x.shape)}"
            )
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise DataError("mask must be boolean or hold only 0 and 1 (1 = observed)")
            mask = mask.bool()
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype)), mask

    def _validated(self, x, mask):
        """Checked images (N, C, H, W) and boolean mask (or ``None``)."""
        x, mask = self._check_mask(x, mask)
        return as_images(x, self.input_shape, self.data_range), mask

    def _query(self, x, fn, batch_size: int, mask=None) -> torch.Tensor:
        return self._map_chunks(*self._validated(x, mask), fn, batch_size)

    def _map_chunks(self, x: torch.Tensor, mask, fn, batch_size: int) -> torch.Tensor:
        """``fn(chunk, chunk_mask)`` over chunks of checked images, on the stack's device."""
        parameter = next(self.parameters())
        outputs = []
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start : start + batch_size].to(device=parameter.device, dtype=parameter.dtype)
                chunk_mask = None if mask is None else mask[start : start + batch_size].to(parameter.device)
                outputs.append(fn(chunk, chunk_mask))
        return torch.cat(outputs).to(x.device)

    def _upward_scores(self, x: torch.Tensor, mask: torch.Tensor | None):
        """Yield (index, log-scores (N, K, H', W')) of every GMM layer in one upward pass.

        With a ``mask`` of observed pixels the first layer marginalises the missing ones, and every
        layer above sees responsibilities computed from observed pixels only.
        """
        h = x
        for i in self._stages:
            layer = self.layers[i]
            if isinstance(layer, GMM):
                scores = layer.log_scores(h, mask if i == self._stages[0] else None)
                yield i, scores
                h = layer.output(scores)
            else:
                h = layer.transform(h)

    def _scores_at(self, x: torch.Tensor, index: int, mask: torch.Tensor | None) -> torch.Tensor:
        return next(scores for i, scores in self._upward_scores(x, mask) if i == index)

    def responsibilities(self, x, layer: int = -1, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """Posterior over components at GMM layer ``layer``: shape (N, H, W, K).

        ``mask`` (same shape as ``x``, true or 1 where observed) marginalises missing pixels.
        """
        index = self.gmm_index(layer)
        return self._query(
            x,
            lambda c, m: torch.softmax(self._scores_at(c, index, m), 1).permute(0, 2, 3, 1),
            batch_size,
            mask,
        )

    def map_components(self, x, layer: int = -1, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """Most probable component at every position of GMM layer ``layer``: shape (N, H, W).

        Equal to ``infer_discrete(..., temperature=0)`` on the exact model (tested).
        """
        index = self.gmm_index(layer)
        return self._query(x, lambda c, m: self._scores_at(c, index, m).argmax(dim=1), batch_size, mask)

    def log_prob(self, x, layer: int = -1, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """Per-sample log-likelihood (N,) at GMM layer ``layer``.

        It is ``sum over positions (h, w) of log p(v_hw)``, where ``v_hw`` is the layer's input
        patch vector at (h, w) (pixels for the first layer, responsibilities of the layer below
        otherwise) and ``p`` the layer's exact mixture density.  With overlapping patches or at upper
        layers this is a score, not a normalised density over images.  With a ``mask`` of observed
        pixels the first layer's density is the exact marginal of the observed pixels.
        """
        index = self.gmm_index(layer)
        return self._query(
            x, lambda c, m: self._scores_at(c, index, m).logsumexp(dim=1).sum((1, 2)), batch_size, mask
        )

    def layer_log_probs(self, x, batch_size: int = 1024, mask=None) -> torch.Tensor:
        """Per-sample log-likelihood at every GMM layer in one upward pass: (N, number of GMM layers).

        Column ``j`` equals ``log_prob(x, layer=j)``.
        """

        def all_layers(chunk, chunk_mask):
            columns = [s.logsumexp(dim=1).sum((1, 2)) for _, s in self._upward_scores(chunk, chunk_mask)]
            return torch.stack(columns, dim=1)

        return self._query(x, all_layers, batch_size, mask)

    def sample(self, n: int, classes=None, options: SamplingOptions | None = None) -> torch.Tensor:
        """``n`` images (n, C, H, W) sampled top-down (the posterior predictive of the model).

        :param classes: (n,) class labels for class-conditional samples through the Readout.
        :param SamplingOptions options: top-S, standard-deviation divisor, means, pooling, sharpening.
        """
        options = options or SamplingOptions()
        if not isinstance(n, int) or n < 1:
            raise DataError(f"n must be a positive int, got {n!r}")
        if classes is not None:
            if self.readout is None:
                raise ArchitectureError("class-conditional sampling needs a Readout as the top layer")
            classes = as_labels(torch.as_tensor(classes), n, self.readout.num_classes, "classes")
        return self._sample_from(len(self._stages) - 1, classes, n, options)

    def variants(self, x, layer: int = -1, n_per_image: int = 1, options=None, mask=None) -> torch.Tensor:
        """Images sampled down from the responsibilities of ``x`` at GMM layer ``layer``.

        Returns (N * n_per_image, C, H, W); rows ``i * n_per_image ...`` are variants of image ``i``.
        """
        options = options or SamplingOptions()
        index = self.gmm_index(layer)
        x, mask = self._validated(x, mask)
        responsibilities = self._map_chunks(
            x, mask, lambda c, m: torch.softmax(self._scores_at(c, index, m), 1), 1024
        )  # (N, K, H', W')
        parameter = next(self.parameters())
        signal = responsibilities.to(parameter.device).repeat_interleave(n_per_image, dim=0)
        observed = None
        if mask is not None:
            observed = (
                mask.to(parameter.device).repeat_interleave(n_per_image, 0),
                x.to(parameter.device, parameter.dtype).repeat_interleave(n_per_image, 0),
            )
        samples = self._sample_from(self._stages.index(index), signal, signal.shape[0], options, observed)
        return samples.to(responsibilities.device)

    def inpaint(self, x, mask, layer: int = 0, n_per_image: int = 1, options=None) -> torch.Tensor:
        """Fill the pixels of ``x`` where ``mask`` is false; observed pixels are returned unchanged.

        The posterior at GMM layer ``layer`` comes from the observed pixels only (the first layer
        marginalises the missing ones exactly); the missing pixels are sampled from it (component
        means with ``options.mean``) and sharpened with the observed pixels held fixed.
        """
        return self.variants(x, layer, n_per_image, options, mask=mask)

    def _sample_from(self, position: int, signal, n: int, options: SamplingOptions, observed=None):
        """Run ``sample_down`` from stage ``position`` to the pixels; ``observed`` = (mask, images)."""
        with torch.no_grad():
            for pos in range(position, -1, -1):
                layer = self.layers[self._stages[pos]]
                signal = layer.sample_down(signal, n, options)
                if signal is None:
                    continue
                fixed = None
                if pos == 0 and observed is not None:
                    fixed = observed[0]
                    signal = torch.where(fixed, observed[1], signal)
                if options.sharpening is not None and not layer.lossless_down:
                    signal = self._sharpen(signal, pos, options.sharpening, fixed)
        signal = signal.clamp(*self.data_range)
        return signal if observed is None else torch.where(observed[0], observed[1], signal)

    def _sharpen(self, v: torch.Tensor, position: int, sharpening: Sharpening, fixed) -> torch.Tensor:
        """Sharpen ``v``, the input of stage ``position``, towards a GMM layer above it."""
        if sharpening.target == "next":
            above = [
                p for p in range(position, len(self._stages)) if isinstance(self.layers[self._stages[p]], GMM)
            ]
            if not above:  # e.g. a MaxPool below the Readout: no layer above to sharpen towards
                return v
            target = above[0]
        else:
            target = self._stages.index(self.gmm_index(sharpening.target))
            if target < position:
                return v
        gmm = self.layers[self._stages[target]]

        def log_likelihood(h):
            for p in range(position, target):
                h = self.layers[self._stages[p]].transform(h)
            return gmm.log_prob(h)

        below = [self.layers[self._stages[p]] for p in range(position)]
        gmms_below = [layer for layer in below if isinstance(layer, GMM)]
        value_range = gmms_below[-1].output_range if gmms_below else self.data_range
        return sharpen(v, log_likelihood, sharpening, value_range, fixed)

    def predict_proba(self, x, batch_size: int = 1024) -> torch.Tensor:
        """Class probabilities (N, num_classes) from the Readout."""
        readout = self.readout
        if readout is None:
            raise ArchitectureError("this stack has no Readout layer to predict classes with")
        top = len(self.layers) - 1
        return self._query(x, lambda c, _: torch.softmax(readout.logits(self.upward(c, top)), -1), batch_size)
