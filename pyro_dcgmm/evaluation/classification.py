"""Classification: class models (one DCGMM per class, Bayes' rule) beside a readout, a joint
stack split by class and scikit-learn GMMs per class."""

from __future__ import annotations

import functools
import time

import numpy as np
from sklearn.mixture import GaussianMixture

from pyro_dcgmm import presets
from pyro_dcgmm.class_models import DCGMMClassifier
from pyro_dcgmm.config import FoldConfig, GMMConfig
from pyro_dcgmm.data.datasets import split_validation
from pyro_dcgmm.evaluation.protocol import estimator, flat, print_rows, scores_figure, training_params


def _class_model_layers(args) -> list:
    fold = FoldConfig(patch=args.class_patch, stride=args.class_stride)
    gmm = GMMConfig(
        components=args.class_components, covariance=args.class_covariance, shared=not args.class_per_position
    )
    return [fold, gmm]


def classify(args, dataset, report) -> None:
    train_x, train_y, test_x, test_y = (
        dataset.train_images,
        dataset.train_labels,
        dataset.test_images,
        dataset.test_labels,
    )
    if args.validation:
        train_x, train_y, test_x, test_y = split_validation(train_x, train_y, 0.2, args.seed)
    report["scored_on"] = "validation split" if args.validation else "test set"
    settings = {**training_params(args), "batch_size": args.class_batch_size or args.batch_size}
    classes = np.unique(train_y.numpy())

    def class_models():
        classifier = DCGMMClassifier(_class_model_layers(args), **settings).fit(train_x, train_y)
        return classifier.predict(test_x)

    def stack_of(name):
        return lambda: (
            estimator(args, name).fit(train_x, train_y).stack_.predict_proba(test_x).argmax(1).numpy()
        )

    readout = args.preset or presets.default_preset(dataset.input_shape)
    joint = args.joint_preset or presets.default_joint_preset(dataset.input_shape, by_class=True)
    models = {
        "class_models": class_models,
        f"readout_{readout}": stack_of(readout),
        f"joint_{joint}": stack_of(joint),
    }
    for kind in ("diag", "full"):
        models[f"sklearn_per_class_{kind}_k{args.flat_components}"] = functools.partial(
            _per_class_gaussian_mixtures, args, kind, classes, (train_x, train_y), test_x
        )
    for name, predict in models.items():
        start = time.perf_counter()
        accuracy = float((predict() == test_y.numpy()).mean())
        report[name] = {"accuracy": accuracy, "train_seconds": time.perf_counter() - start}
    print_rows(report, "accuracy")
    scores_figure(report, "accuracy", args.out / "classify.png", f"accuracy on the {report['scored_on']}")


def _per_class_gaussian_mixtures(args, kind: str, classes, train, test_x) -> np.ndarray:
    """Bayes' rule (equal priors) over one scikit-learn GaussianMixture per class."""
    train_x, train_y = train
    scores = [
        GaussianMixture(args.flat_components, covariance_type=kind, reg_covar=args.flat_reg_covar,
                        random_state=args.seed)
        .fit(flat(train_x[train_y == c]))
        .score_samples(flat(test_x))
        for c in classes
    ]  # fmt: skip
    return classes[np.argmax(scores, 0)]
