"""How samples compare with real images, beyond NDB (:mod:`pyro_dcgmm.evaluation.metrics`).

- **class agreement**: a classifier trained on real training images (scikit-learn's logistic
  regression on pixels) labels class-conditional samples as their class, or variants as the class
  of their source image;
- **diversity**: mean pairwise Euclidean distance between images, within a class, relative to real
  images of that class (1: as varied as the data; near 0: every sample the same);
- **sharpness**: mean gradient magnitude of the images (finite differences), relative to real ones;
- **in-painting error**: mean squared error on the missing pixels, beside the in-painting of a flat
  diagonal GMM (:class:`FlatGMMInpainter`: its exact conditional mean and a conditional sample).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture

MAX_PAIRS_IMAGES = 500  # diversity looks at this many images of a set at most


def _flat(images) -> np.ndarray:
    images = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float64)


class ImageClassifier:
    """Logistic regression on the pixels of real training images, to judge generated ones."""

    def __init__(self, images, labels, seed: int = 0):
        with warnings.catch_warnings():  # 300 iterations judge well enough; its accuracy is reported
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = LogisticRegression(max_iter=300, random_state=seed).fit(
                _flat(images), np.asarray(labels)
            )

    def agreement(self, images, classes) -> float:
        """Fraction of ``images`` the classifier assigns to ``classes``."""
        return float(np.mean(self.model.predict(_flat(images)) == np.asarray(classes)))


def diversity(images) -> float:
    """Mean Euclidean distance between two different images of the set (at most 500 looked at)."""
    x = torch.from_numpy(_flat(images)[:MAX_PAIRS_IMAGES])
    n = len(x)
    distances = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # exact zeros
    return float(distances.sum() / (n * (n - 1))) if n > 1 else 0.0


def within_class_diversity(images, classes, real_images, real_labels) -> float:
    """Mean over classes of the samples' diversity relative to real images of the same class."""
    images, real_images = _flat(images), _flat(real_images)
    classes, real_labels = np.asarray(classes), np.asarray(real_labels)
    ratios = [
        diversity(images[classes == c]) / diversity(real_images[real_labels == c]) for c in np.unique(classes)
    ]
    return float(np.mean(ratios))


def sharpness(images) -> float:
    """Mean gradient magnitude over pixels and images, (N, C, H, W) in the data's units per pixel."""
    x = torch.as_tensor(images, dtype=torch.float64)
    dx, dy = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
    return float((dx[..., :-1, :].square() + dy[..., :, :-1].square()).sqrt().mean())


def inpainting_error(filled, original, mask) -> float:
    """Mean squared error of ``filled`` against ``original`` on the pixels ``mask`` leaves missing."""
    missing = ~torch.as_tensor(mask, dtype=torch.bool)
    difference = torch.as_tensor(filled, dtype=torch.float64) - torch.as_tensor(original, dtype=torch.float64)
    return float(difference[missing].square().mean())


class FlatGMMInpainter:
    """A diagonal scikit-learn GMM on whole images, in-painting exactly: the posterior over components
    comes from the observed pixels alone (a diagonal Gaussian's marginal drops the missing ones), and
    given a component the missing pixels are independent of the observed ones."""

    def __init__(self, images, components: int = 25, seed: int = 0):
        self.model = GaussianMixture(components, covariance_type="diag", random_state=seed).fit(_flat(images))

    def posterior(self, x: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """(N, K) posterior over components given only the observed pixels of ``x``, by matmuls:
        ``sum_d o_d [(x_d - mu_kd)^2 / v_kd + log 2 pi v_kd]`` expanded in ``x``, ``x^2`` and 1."""
        means, precisions = self.model.means_, 1.0 / self.model.covariances_  # (K, D) each
        o = observed.astype(np.float64)
        x = np.where(observed, x, 0.0)  # missing entries may hold anything, NaN included
        constant = means**2 * precisions + np.log(2 * np.pi / precisions)  # (K, D)
        squares = (o * x * x) @ precisions.T - 2.0 * (o * x) @ (means * precisions).T + o @ constant.T
        log_joint = np.log(self.model.weights_)[None] - 0.5 * squares  # (N, K)
        return np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))

    def conditional_mean(self, images, mask) -> np.ndarray:
        """Observed pixels kept, missing ones replaced by their exact conditional mean."""
        x, observed = _flat(images), _flat(mask).astype(bool)
        mean = self.posterior(x, observed) @ self.model.means_
        return np.where(observed, x, mean).reshape(np.shape(images))

    def conditional_sample(self, images, mask, seed: int = 0) -> np.ndarray:
        """Observed pixels kept, missing ones drawn from the conditional distribution."""
        rng = np.random.default_rng(seed)
        x, observed = _flat(images), _flat(mask).astype(bool)
        posterior = self.posterior(x, observed)
        components = np.array([rng.choice(len(p), p=p) for p in posterior])
        draw = rng.normal(self.model.means_[components], np.sqrt(self.model.covariances_[components]))
        return np.where(observed, x, draw).reshape(np.shape(images))
