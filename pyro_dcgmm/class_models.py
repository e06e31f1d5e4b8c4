"""Class models: a generative classifier with one DCGMM per class, predicting by Bayes' rule.

``p(c | x) = p(c) p(x | c) / sum_c' p(c') p(x | c')``, with ``p(x | c)`` the log-likelihood of class
c's model at GMM layer ``score_layer`` and ``p(c)`` the classes' shares of the training set.  The
default scores the first GMM layer, a density of the image itself (of its patches, for a
convolutional layer), so the classes' scores are comparable: layers higher up model each class
model's own responsibilities, which differ between the class models.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from pyro_dcgmm.config import FoldConfig, GMMConfig, TrainConfig
from pyro_dcgmm.data.validation import as_tensor
from pyro_dcgmm.errors import ConfigError, DataError
from pyro_dcgmm.estimator import DCGMM

# Each class's model when ``layers`` is None: a GMM over 4x4 patches at stride 2, a density of the
# image that every class's model scores alike (the default score_layer 0).
CLASS_MODEL_LAYERS = (FoldConfig(patch=4, stride=2), GMMConfig(components=10))


class DCGMMClassifier(ClassifierMixin, BaseEstimator):
    """One :class:`~pyro_dcgmm.estimator.DCGMM` per class, combined by Bayes' rule.

    :param layers: the architecture of every class model (as for :class:`DCGMM`; no Readout;
        ``None``: :data:`CLASS_MODEL_LAYERS`).
    :param score_layer: GMM layer whose log-likelihood is ``log p(x | c)``.
    :param input_shape, data_range, epochs, batch_size, lr, optimizer, device, random_state,
        verbose: as for :class:`DCGMM`, shared by the class models.

    Fitted attributes: ``classes_``, ``models_`` (one fitted :class:`DCGMM` per class),
    ``class_log_prior_``, ``n_features_in_``.
    """

    def __init__(
        self,
        layers=None,
        score_layer: int = 0,
        input_shape=None,
        data_range=(0.0, 1.0),
        epochs: int = TrainConfig.epochs,
        batch_size: int | str = TrainConfig.batch_size,
        lr: float = TrainConfig.lr,
        optimizer: str = TrainConfig.optimizer,
        device: str = TrainConfig.device,
        random_state: int | None = None,
        verbose: int = 0,
    ):
        self.layers = layers
        self.score_layer = score_layer
        self.input_shape = input_shape
        self.data_range = data_range
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _class_model(self) -> DCGMM:
        params = {name: getattr(self, name) for name in DCGMM().get_params() if hasattr(self, name)}
        params["layers"] = CLASS_MODEL_LAYERS if self.layers is None else self.layers
        return DCGMM(**params)

    def fit(self, X, y):
        """Fit one model per class on that class's rows of ``X``."""
        y = np.asarray(as_tensor(y, "y").cpu())
        if y.ndim != 1 or len(y) != len(X):
            raise DataError(f"y must be one label per row of X ({len(X)}), got shape {y.shape}")
        self.classes_, counts = np.unique(y, return_counts=True)
        if len(self.classes_) < 2:
            raise DataError(f"a classifier needs at least 2 classes in y, got {len(self.classes_)}")
        scarce = [
            f"{label} ({count})" for label, count in zip(self.classes_, counts, strict=True) if count < 2
        ]
        if scarce:
            raise DataError(
                f"every class needs at least 2 rows of X to fit its model; too few: {', '.join(scarce)}"
            )
        self.class_log_prior_ = np.log(counts / counts.sum())
        self.models_ = []
        for label in self.classes_:
            model = clone(self._class_model()).fit(np.asarray(X)[y == label])
            if model.stack_.readout is not None:
                raise ConfigError("class models are densities: leave the Readout out of their layers")
            self.models_.append(model)
        self.n_features_in_ = self.models_[0].n_features_in_
        return self

    def class_log_likelihoods(self, X) -> np.ndarray:
        """``log p(x | c)`` (N, classes) at ``score_layer``."""
        check_is_fitted(self)
        return np.stack(
            [model.set_params(score_layer=self.score_layer).score_samples(X) for model in self.models_], 1
        )

    def predict_log_proba(self, X) -> np.ndarray:
        joint = self.class_log_likelihoods(X) + self.class_log_prior_
        return joint - logsumexp(joint, axis=1, keepdims=True)

    def predict_proba(self, X) -> np.ndarray:
        return np.exp(self.predict_log_proba(X))

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_log_proba(X).argmax(1)]
