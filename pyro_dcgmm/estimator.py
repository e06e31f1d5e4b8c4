"""A scikit-learn-style estimator around a DCGMM stack."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, DensityMixin
from sklearn.utils.validation import check_is_fitted

from pyro_dcgmm import presets
from pyro_dcgmm.config import ModelConfig, TrainConfig
from pyro_dcgmm.data.validation import as_images, as_labels, as_tensor, image_shape
from pyro_dcgmm.inference.sampling import SamplingOptions
from pyro_dcgmm.model.stack import Stack
from pyro_dcgmm.training.trainer import Trainer


class DCGMM(ClusterMixin, DensityMixin, BaseEstimator):
    """Deep convolutional GMM with the scikit-learn estimator interface.

    ``X`` is images (N, C, H, W), (N, H, W), or flattened (N, D) with values in [0, 1].  Flattened
    rows are images of ``input_shape`` if it is given, else square one-channel images when D is a
    square, else D features at one position (tabular data).  Clusters are the components of the top
    GMM layer.

    :param layers: a preset name (:mod:`pyro_dcgmm.presets`), a :class:`ModelConfig`, or a list of
        layer configs (dataclasses or dicts with ``type``); ``None`` takes the preset for the
        images' size (:func:`~pyro_dcgmm.presets.default_preset`: ``digits`` for 8x8 digits, ``E``
        for 28x28 images, the flat ``A`` for tabular data).
    :param input_shape: (C, H, W) of the images; ``None`` infers it from ``X``.
    :param data_range: (low, high) every value of ``X`` must lie in; ``None``: unbounded (tabular
        data), which also leaves samples unclipped.
    :param epochs, batch_size, lr, optimizer: training settings (:class:`TrainConfig`); the default
        ``"em"`` trains the GMM layers by online EM from a k-means initialisation.
    :param plateau_window: steps per plateau test of every GMM layer's annealing (used by layers
        with ``annealing=True``); ``None`` keeps each layer's own.
    :param score_layer: GMM layer whose log-likelihood :meth:`score_samples` returns.
    :param device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.

    The training settings default to :class:`~pyro_dcgmm.config.TrainConfig`'s, which ``pyro-dcgmm
    train`` shares.
    :param random_state: seed of initialisation, shuffling and sampling (``None``: 0).
    :param verbose: show a progress bar while fitting.

    Fitted attributes: ``stack_`` (the trained :class:`Stack`), ``input_shape_``,
    ``n_features_in_``, ``n_components_`` (clusters at the top layer), ``labels_`` (clusters of the
    training images), ``history_``.
    Every estimator owns its parameters (module-local), so several coexist in one process.
    """

    def __init__(
        self,
        layers=None,
        input_shape=None,
        data_range=(0.0, 1.0),
        epochs: int = TrainConfig.epochs,
        batch_size: int = TrainConfig.batch_size,
        lr: float = TrainConfig.lr,
        optimizer: str = TrainConfig.optimizer,
        plateau_window: int | None = None,
        score_layer: int = -1,
        device: str = TrainConfig.device,
        random_state: int | None = None,
        verbose: int = 0,
    ):
        self.layers = layers
        self.input_shape = input_shape
        self.data_range = data_range
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.plateau_window = plateau_window
        self.score_layer = score_layer
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _images(self, X, shape=None) -> torch.Tensor:
        """``X`` as a checked float32 tensor (N, C, H, W); ``shape`` (C, H, W) or the one ``X`` has."""
        x = as_tensor(X, "X")
        x = x if x.dtype.is_floating_point else x.double()  # integers are values like any other here
        if shape is None:
            shape = tuple(self.input_shape) if self.input_shape is not None else image_shape(x, "X")
        return as_images(x, shape, self._data_range(), name="X", model=type(self).__name__).float()

    def _data_range(self) -> tuple[float, float]:
        return (-math.inf, math.inf) if self.data_range is None else tuple(self.data_range)

    def _model_config(self, shape) -> ModelConfig:
        if self.layers is None or isinstance(self.layers, str):
            config = ModelConfig(preset=self.layers)
        elif isinstance(self.layers, ModelConfig):
            config = dataclasses.replace(self.layers, input_shape=None)
        else:
            config = ModelConfig(layers=tuple(self.layers))
        options = {} if self.plateau_window is None else {"plateau_window": self.plateau_window}
        return presets.resolve(dataclasses.replace(config, data_range=self._data_range()), shape, **options)

    def fit(self, X, y=None):
        """Train the stack on ``X`` (and ``y`` for a Readout, if it has one)."""
        x = self._images(X)
        shape = tuple(x.shape[1:])
        seed = 0 if self.random_state is None else int(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            stack = Stack.from_config(self._model_config(shape))
        labels = None
        if y is not None and stack.num_classes is not None:
            labels = as_labels(y, x.shape[0], stack.num_classes, "y")
        config = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            seed=seed,
            device=self.device,
            progress=bool(self.verbose),
        )
        result = Trainer(stack, config).fit(x, labels)  # x and labels are checked here
        self.stack_ = stack.cpu()
        self.input_shape_ = shape
        self.n_features_in_ = math.prod(shape)
        self.n_components_ = stack.mixture_layers[-1].components
        self.history_ = result.history
        self.labels_ = self.predict(x)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Top-layer responsibilities (N, K), averaged over its positions when it has several."""
        check_is_fitted(self)
        resp = self.stack_.responsibilities(self._images(X, self.input_shape_), layer=-1)
        return resp.mean((2, 3)).numpy()

    def predict(self, X) -> np.ndarray:
        """Cluster (top-layer component) of every image."""
        return self.predict_proba(X).argmax(1)

    def score_samples(self, X) -> np.ndarray:
        """Per-sample log-likelihood (nats) at GMM layer ``score_layer`` (see ``Stack.log_prob``)."""
        check_is_fitted(self)
        return self.stack_.log_prob(self._images(X, self.input_shape_), layer=self.score_layer).numpy()

    def score(self, X, y=None) -> float:
        """Mean of :meth:`score_samples`."""
        return float(self.score_samples(X).mean())

    def sample(self, n_samples: int = 1, options: SamplingOptions | None = None):
        """``(X, y)``: ``n_samples`` flattened images sampled top-down and their clusters."""
        check_is_fitted(self)
        seed = 0 if self.random_state is None else int(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            images = self.stack_.sample(n_samples, options=options)
        return images.flatten(1).numpy(), self.predict(images)
