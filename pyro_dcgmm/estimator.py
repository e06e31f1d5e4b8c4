"""A scikit-learn-style estimator around a DCGMM stack."""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, DensityMixin
from sklearn.utils.validation import check_is_fitted

from pyro_dcgmm import presets
from pyro_dcgmm.config import FULL_PRECISION_RANGE, FoldConfig, GMMConfig, ModelConfig, TrainConfig
from pyro_dcgmm.data.validation import as_images, as_labels, as_tensor, image_shape
from pyro_dcgmm.errors import ConfigError
from pyro_dcgmm.fitted import converged, free_parameters, mixture_attributes, with_top_layer
from pyro_dcgmm.inference.sampling import SamplingOptions
from pyro_dcgmm.model.stack import Stack
from pyro_dcgmm.training.trainer import Trainer

SKLEARN_REG_COVAR = 1e-6  # GaussianMixture's default reg_covar, the one-layer model's variance floor
# the smallest variance floor that keeps full covariances positive definite in float32, given the
# default precision floor (precisions span at most FULL_PRECISION_RANGE)
SMALLEST_FULL_REG_COVAR = 1.0 / (GMMConfig.precision_floor * FULL_PRECISION_RANGE)
PRIOR_SETTINGS = (
    "weight_concentration_prior",
    "weight_posterior",
    "mean_precision_prior",
    "degrees_of_freedom_prior",
)  # the estimator's parameters that are the top GMM layer's fields of the same names
COVARIANCE_TYPES = typing.get_args(typing.get_type_hints(GMMConfig)["covariance"])


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
    :param score_layer: layer whose log-likelihood :meth:`score_samples` returns.
    :param device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    :param random_state: seed of initialisation and shuffling (``None``: 0), and of :meth:`sample`
        (``None``: fresh draws at every call, as scikit-learn's estimators sample).
    :param verbose: show a progress bar while fitting.
    :param n_components, covariance_type, reg_covar: scikit-learn's names for the top layer's
        components, covariance structure (``"diag"``, ``"full"`` or ``"stationary"``) and variance
        floor (``precision_ceiling = 1 / reg_covar``; scikit-learn adds ``reg_covar`` to every
        variance, this floor clamps them, which differs only for variances near it).  With
        ``layers=None``, ``n_components`` alone makes a one-layer model, one GMM over the whole input
        with scikit-learn's default floor ``reg_covar = 1e-6`` (``GaussianMixture``'s counterpart;
        1e-4 for full covariances, the smallest they keep positive definite in float32).
    :param weight_concentration_prior, weight_posterior, mean_precision_prior, degrees_of_freedom_prior:
        priors on the top layer (``None``: its own settings, maximum likelihood by default), as
        :class:`~pyro_dcgmm.config.GMMConfig` defines them: a Dirichlet prior on the weights with
        concentration ``weight_concentration_prior`` (small values prune unused components, as in
        scikit-learn's ``BayesianGaussianMixture``), estimated as its mode (``"map"``) or a
        mean-field posterior (``"mean_field"``), and a Normal-Gamma prior on the means and diagonal
        precisions; training is then MAP-EM.

    The training settings default to :class:`~pyro_dcgmm.config.TrainConfig`'s, which ``pyro-dcgmm
    train`` shares.  Fitted attributes: ``stack_`` (the trained :class:`Stack`), ``input_shape_``,
    ``n_features_in_``, ``n_components_`` (clusters at the top layer), ``labels_`` (clusters of the
    training images), ``history_``, and as scikit-learn's mixtures have them, of the top layer:
    ``weights_``, ``means_`` and ``covariances_`` (variances (K, D) for ``"diag"``, matrices (K, D, D)
    otherwise; per position with a leading (H', W') for a per-position layer; for a joint stack's
    top Tree layer ``means_`` are its components' expected images and there is no
    ``covariances_``), ``converged_``, ``n_iter_`` (epochs) and ``lower_bound_`` (the top objective's
    mean log-likelihood per sample in the last epoch).  Every estimator owns its parameters
    (module-local), so several coexist in one process.
    """

    def __init__(
        self,
        layers=None,
        input_shape=None,
        data_range=(0.0, 1.0),
        epochs: int = TrainConfig.epochs,
        batch_size: int | str = TrainConfig.batch_size,
        lr: float = TrainConfig.lr,
        optimizer: str = TrainConfig.optimizer,
        plateau_window: int | None = None,
        score_layer: int = -1,
        device: str = TrainConfig.device,
        random_state: int | None = None,
        verbose: int = 0,
        n_components: int | None = None,
        covariance_type: str | None = None,
        reg_covar: float | None = None,
        weight_concentration_prior: float | None = None,
        weight_posterior: str | None = None,
        mean_precision_prior: float | None = None,
        degrees_of_freedom_prior: float | None = None,
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
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.weight_concentration_prior = weight_concentration_prior
        self.weight_posterior = weight_posterior
        self.mean_precision_prior = mean_precision_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior

    def _images(self, X, shape=None) -> torch.Tensor:
        """``X`` as a checked float32 tensor (N, C, H, W); ``shape`` (C, H, W) or the one ``X`` has."""
        x = as_tensor(X, "X")
        x = x if x.dtype.is_floating_point else x.double()  # integers are values like any other here
        if shape is None:
            shape = tuple(self.input_shape) if self.input_shape is not None else image_shape(x, "X")
        return as_images(x, shape, self._data_range(), name="X", model=type(self).__name__).float()

    def _data_range(self) -> tuple[float, float]:
        """``data_range`` checked as a model's (low < high); ``None``: unbounded."""
        return (
            (-math.inf, math.inf)
            if self.data_range is None
            else ModelConfig(data_range=self.data_range).data_range
        )

    def _model_config(self, shape) -> ModelConfig:
        if (
            self.layers is not None
            and not isinstance(self.layers, (str, ModelConfig))
            and not len(self.layers)
        ):
            raise ConfigError(
                "layers is empty: give layer configs, a preset name, or None for the preset that fits X"
            )
        if self.layers is None and self.n_components is not None:  # scikit-learn's one-layer model
            gmm = GMMConfig(components=self.n_components, precision_ceiling=1.0 / self._one_layer_floor())
            config = ModelConfig(layers=(FoldConfig(patch=None), gmm))
        elif self.layers is None or isinstance(self.layers, str):
            config = ModelConfig(preset=self.layers)
        elif isinstance(self.layers, ModelConfig):
            config = dataclasses.replace(self.layers, input_shape=None)
        else:
            config = ModelConfig(layers=tuple(self.layers))
        options = {} if self.plateau_window is None else {"plateau_window": self.plateau_window}
        config = presets.resolve(dataclasses.replace(config, data_range=self._data_range()), shape, **options)
        return dataclasses.replace(config, layers=with_top_layer(config.layers, self._top_layer_settings()))

    def _one_layer_floor(self) -> float:
        """``reg_covar``, or scikit-learn's default where float32 full covariances allow it."""
        if self.reg_covar is not None:
            return self.reg_covar
        return SMALLEST_FULL_REG_COVAR if self.covariance_type == "full" else SKLEARN_REG_COVAR

    def _top_layer_settings(self) -> dict:
        """The top layer's settings that ``n_components``, ``covariance_type`` and ``reg_covar`` give."""
        if self.covariance_type is not None and self.covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(
                f"covariance_type must be one of {', '.join(map(repr, COVARIANCE_TYPES))}, got "
                f"{self.covariance_type!r} (scikit-learn's 'tied' and 'spherical' have no counterpart here)"
            )
        if self.reg_covar is not None and not self.reg_covar > 0:
            raise ConfigError(f"reg_covar must be a positive variance floor, got {self.reg_covar!r}")
        full = self.covariance_type == "full"
        if full and self.reg_covar is not None and self.reg_covar < SMALLEST_FULL_REG_COVAR:
            raise ConfigError(
                f"reg_covar {self.reg_covar:g} is too small for full covariances in float32: they stay "
                f"positive definite down to reg_covar = {SMALLEST_FULL_REG_COVAR:g}"
            )
        settings = {"components": self.n_components, "covariance": self.covariance_type}
        settings["precision_ceiling"] = None if self.reg_covar is None else 1.0 / self.reg_covar
        settings |= {name: getattr(self, name) for name in PRIOR_SETTINGS}
        return {name: value for name, value in settings.items() if value is not None}

    def fit(self, X, y=None):
        """Train the stack on ``X`` (and ``y`` for a Readout, if it has one)."""
        x = self._images(X)
        shape = tuple(x.shape[1:])
        seed = 0 if self.random_state is None else self._seed()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            stack = Stack.from_config(self._model_config(shape))
        self._check_score_layer(stack)
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
        self.n_iter_ = len(result.history)
        self.converged_ = converged(result.history)
        self.lower_bound_ = -result.history[-1]["train_loss"][-1] if result.history else -math.inf
        for name, value in mixture_attributes(stack).items():
            setattr(self, name, value)
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
        """``(X, y)``: ``n_samples`` flattened images sampled top-down and their clusters; fresh
        draws at every call unless ``random_state`` is set."""
        check_is_fitted(self)
        if self.random_state is None:
            images = self.stack_.sample(n_samples, options=options)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed())
                images = self.stack_.sample(n_samples, options=options)
        return images.flatten(1).numpy(), self.predict(images)

    def _seed(self) -> int:
        """``random_state`` as a torch seed: an int, or one draw from a numpy ``RandomState``."""
        state = self.random_state
        if isinstance(state, np.random.RandomState):
            return int(state.randint(2**31 - 1))
        if isinstance(state, numbers.Integral) and not isinstance(state, bool):
            return int(state)
        raise ConfigError(f"random_state must be None, an int or a numpy RandomState, got {state!r}")

    def _check_score_layer(self, stack) -> None:
        try:
            stack.number(self.score_layer)
        except IndexError as error:
            raise ConfigError(f"score_layer {self.score_layer!r}: {error}") from None

    def bic(self, X) -> float:
        """Bayesian information criterion of ``X`` at ``score_layer`` (lower is better)."""
        n = self._images(X, self.input_shape_).shape[0]
        return -2 * self.score(X) * n + self._free_parameters() * math.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion of ``X`` at ``score_layer`` (lower is better)."""
        n = self._images(X, self.input_shape_).shape[0]
        return -2 * self.score(X) * n + 2 * self._free_parameters()

    def _free_parameters(self) -> int:
        """Free parameters of the model :meth:`score_samples` scores: the ``score_layer`` of a
        layerwise stack, every layer of a joint one."""
        check_is_fitted(self)
        stack = self.stack_
        scored = (
            stack.mixture_layers if stack.formulation == "joint" else [stack.mixture_layer(self.score_layer)]
        )
        return sum(free_parameters(layer) for layer in scored)
