"""Sample-quality metric: number of statistically different bins (NDB, Richardson & Weiss 2018).

Training images are clustered into K bins by k-means.  A set of samples is assigned to the nearest
bin centres, and every bin's proportion of samples is compared with its proportion of training
images by a two-sided two-proportion z-test.  NDB is the number of bins whose proportions differ
significantly; NDB/K near the test's level (0.05) means the samples cover the bins as real images
do, while mode dropping or mode invention raises it.  The Jensen-Shannon divergence between the two
bin histograms is reported beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm
from sklearn.cluster import KMeans


@dataclass(frozen=True)
class NDBResult:
    """NDB of one sample set: ``ndb`` different bins out of ``k``, and the JS divergence."""

    ndb: int
    k: int
    ndb_over_k: float
    js_divergence: float
    num_samples: int

    def as_dict(self) -> dict:
        return asdict(self)


class NDB:
    """Bins fitted on training images; :meth:`evaluate` scores a sample set against them.

    :param train: training images, any shape with samples first (flattened internally).
    :param int k: number of k-means bins.
    :param float alpha: significance level of every bin's test.
    :param int seed: k-means seed.
    """

    def __init__(self, train: np.ndarray, k: int = 100, alpha: float = 0.05, seed: int = 0):
        train = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
        if len(train) < k:
            raise ValueError(f"NDB needs at least k={k} training images, got {len(train)}")
        self.k = k
        self.alpha = alpha
        self.kmeans = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(train)
        self.train_proportions = np.bincount(self.kmeans.labels_, minlength=k) / len(train)
        self.num_train = len(train)

    def proportions(self, samples: np.ndarray) -> np.ndarray:
        """Fraction of ``samples`` falling in every bin, shape (k,)."""
        samples = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
        return np.bincount(self.kmeans.predict(samples), minlength=self.k) / len(samples)

    def evaluate(self, samples: np.ndarray) -> NDBResult:
        """NDB, NDB/K and JS divergence of ``samples`` against the training bins."""
        p_samples = self.proportions(samples)
        n_samples = len(samples)
        p_train, n_train = self.train_proportions, self.num_train
        pooled = (p_train * n_train + p_samples * n_samples) / (n_train + n_samples)
        standard_error = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n_train + 1.0 / n_samples))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(standard_error > 0, (p_samples - p_train) / standard_error, 0.0)
        different = int(np.sum(np.abs(z) > norm.ppf(1.0 - self.alpha / 2.0)))
        return NDBResult(
            ndb=different,
            k=self.k,
            ndb_over_k=different / self.k,
            js_divergence=js_divergence(p_train, p_samples),
            num_samples=n_samples,
        )


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log) between two histograms."""
    m = 0.5 * (p + q)

    def kl(a, b):
        keep = a > 0
        return float(np.sum(a[keep] * np.log(a[keep] / b[keep])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def outlier_metrics(is_outlier: np.ndarray, score: np.ndarray) -> dict:
    """AUROC, AUPR and FPR at 95% TPR of ``score`` (higher = more outlying), outliers positive."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(is_outlier, score)
    return {
        "auroc": float(roc_auc_score(is_outlier, score)),
        "aupr": float(average_precision_score(is_outlier, score)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95)]),
    }


def clustering_metrics(labels: np.ndarray, clusters: np.ndarray) -> dict:
    """ACC (Hungarian one-to-one matching of clusters to classes), purity, NMI and ARI."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(labels, clusters)  # (classes, clusters)
    rows, columns = linear_sum_assignment(-table)
    return {
        "acc": float(table[rows, columns].sum() / len(labels)),
        "purity": float(table.max(0).sum() / len(labels)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


def bits_per_dimension(log_likelihood: np.ndarray, dims: int, levels: int = 256) -> float:
    """Bits per dimension of data quantised to ``levels`` from the mean continuous log-likelihood
    (nats) of uniformly dequantised data scaled to [0, 1]: ``-LL / (D ln 2) + log2(levels)``."""
    return float(-np.mean(log_likelihood) / (dims * np.log(2.0)) + np.log2(levels))


def held_out_log_likelihood(stack, images, batch_size: int = 1000) -> list[float]:
    """Mean exact log-likelihood per sample (nats) of ``images`` at every GMM layer, bottom first
    (one value, the image's, for a joint stack)."""
    return stack.layer_log_probs(images, batch_size).mean(0).tolist()
