"""Bayesian GMM layers beside maximum likelihood: effective components, test log-likelihood, NMI.

For each training-set size, every model is fitted on the first N training images and scored on the
whole test set, with the prior settings fixed beforehand at scikit-learn's defaults (Dirichlet
concentration ``1 / K``, ``mean_precision_prior = 1``, degrees of freedom D), never tuned here:

- ``flat``: one GMM over the whole image (``DCGMM(n_components=K, covariance_type="diag")``, variance
  floor ``reg_covar = 1e-6`` as scikit-learn's), trained by online EM (ML) or MAP-EM;
- ``dcgmm``: the data set's preset (``--preset``) with K components in its top GMM layer, the priors on
  that layer (scored there: the log-likelihood of the layer's input);
- scikit-learn's ``GaussianMixture`` and ``BayesianGaussianMixture`` (Dirichlet distribution, the
  same prior with a Wishart, variational Bayes) beside the flat models.

Effective components are those with mixing weight above 1e-3.  Writes ``results.json`` to
``--out``::

    python scripts/bayesian_layers.py --dataset digits --train-images 100 1400 \\
        --out docs/figures/bayesian-layers/digits
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import normalized_mutual_info_score
from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

from pyro_dcgmm import DCGMM
from pyro_dcgmm.cli.common import format_table, run_script
from pyro_dcgmm.config import DataConfig
from pyro_dcgmm.data.datasets import load_dataset

EFFECTIVE_WEIGHT = 1e-3


def prior_variants(components: int) -> dict[str, dict]:
    """The estimator settings of every row: ML and the priors at scikit-learn's defaults."""
    dirichlet = {"weight_concentration_prior": 1.0 / components}
    normal_gamma = {"mean_precision_prior": 1.0}
    return {
        "ML": {},
        "Dirichlet MAP": dirichlet,
        "Dirichlet mean-field": dirichlet | {"weight_posterior": "mean_field"},
        "Normal-Gamma MAP": normal_gamma,
        "Dirichlet + Normal-Gamma MAP": dirichlet | normal_gamma,
    }


def measure(name: str, fit, train_x, test_x, test_labels) -> dict:
    """Fit, then the effective components, the mean test log-likelihood and the test NMI."""
    start = time.perf_counter()
    model, weights = fit(train_x)
    seconds = time.perf_counter() - start
    return {
        "model": name,
        "effective": int((np.asarray(weights) > EFFECTIVE_WEIGHT).sum()),
        "test_ll": float(model.score(test_x)),
        "nmi": float(normalized_mutual_info_score(test_labels, model.predict(test_x))),
        "seconds": seconds,
    }


def estimator_fit(settings: dict):
    def fit(x):
        model = DCGMM(**settings).fit(x)
        return model, model.weights_

    return fit


def sklearn_fit(estimator):
    def fit(x):
        model = estimator.fit(x)
        return model, model.weights_

    return fit


def rows_for(args, train_x, test_x, test_labels) -> list[dict]:
    """Every model of the comparison on one training set."""
    base = {"n_components": args.components, "random_state": args.seed, "epochs": args.epochs}
    rows = []
    families = {"flat": {"covariance_type": "diag"}, "dcgmm": {"layers": args.preset}}
    for family in args.families:
        for variant, priors in prior_variants(args.components).items():
            settings = base | families[family] | priors
            rows.append(measure(f"{family} {variant}", estimator_fit(settings), train_x, test_x, test_labels))
    flat_x, flat_test = train_x.reshape(len(train_x), -1), test_x.reshape(len(test_x), -1)
    sklearn_models = {
        "sklearn GaussianMixture": GaussianMixture(
            args.components, covariance_type="diag", random_state=args.seed
        ),
        "sklearn BayesianGaussianMixture": BayesianGaussianMixture(
            n_components=args.components,
            covariance_type="diag",
            weight_concentration_prior_type="dirichlet_distribution",
            max_iter=500,
            random_state=args.seed,
        ),
    }
    for name, estimator in sklearn_models.items():
        rows.append(measure(name, sklearn_fit(estimator), flat_x, flat_test, test_labels))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--dataset", default="digits", help="a named data set (digits, fashion-mnist)")
    parser.add_argument("--preset", default="digits", help="the DCGMM whose top layer gets the priors")
    parser.add_argument("--train-images", type=int, nargs="+", default=[100, 1400])
    parser.add_argument("--test-images", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--families", nargs="+", choices=["flat", "dcgmm"], default=["flat", "dcgmm"])
    parser.add_argument("--components", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = load_dataset(DataConfig(dataset=args.dataset), seed=args.seed)
    test_x = data.test_images[: args.test_images].numpy()
    test_labels = data.test_labels[: args.test_images].numpy()
    results = {}
    for n in args.train_images:
        rows = rows_for(args, data.train_images[:n].numpy(), test_x, test_labels)
        results[str(n)] = rows
        header = ["model", "effective K", "test LL (nats/image)", "test NMI", "fit s"]
        table = [
            [r["model"], str(r["effective"]), f"{r['test_ll']:.2f}", f"{r['nmi']:.3f}", f"{r['seconds']:.1f}"]
            for r in rows
        ]
        print(f"\n{args.dataset}: {n} training images, {len(test_x)} test images, K = {args.components}")
        print(format_table([header, *table]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {key: str(value) for key, value in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))


if __name__ == "__main__":
    run_script(main)
