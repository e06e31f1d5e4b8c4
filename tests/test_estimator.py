import numpy as np
import pytest
import torch
from sklearn.base import clone

from pyro_dcgmm import DCGMM
from pyro_dcgmm.data import load_digits
from pyro_dcgmm.errors import DataError


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (
        data.train_images.flatten(1).numpy(),
        data.train_labels.numpy(),
        data.test_images.flatten(1).numpy(),
    )


def test_clone_keeps_parameters_and_drops_fitted_state(digits):
    X, _, _ = digits
    estimator = DCGMM("digits", epochs=1, lr=0.02, random_state=3).fit(X[:200])
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params()
    assert not hasattr(copy, "stack_")
    copy.set_params(epochs=2)
    assert copy.epochs == 2 and estimator.epochs == 1


def test_fit_predict_shapes(digits):
    X, y, X_test = digits
    estimator = DCGMM("digits", epochs=3, lr=0.03, random_state=0).fit(X, y)
    assert estimator.input_shape_ == (1, 8, 8) and estimator.n_features_in_ == 64
    proba = estimator.predict_proba(X_test)
    assert proba.shape == (len(X_test), estimator.n_components_)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert estimator.predict(X_test).shape == (len(X_test),)
    scores = estimator.score_samples(X_test)
    assert scores.shape == (len(X_test),) and np.isfinite(scores).all()
    assert estimator.score(X_test) == pytest.approx(scores.mean())
    samples, clusters = estimator.sample(5)
    assert samples.shape == (5, 64) and clusters.shape == (5,)
    assert estimator.fit_predict(X[:300]).shape == (300,)


def test_default_schedule_clusters_digits_better_than_a_flat_gmm(digits):
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.mixture import GaussianMixture

    X, _, X_test = digits
    y_test = load_digits().test_labels.numpy()
    model = DCGMM("digits", epochs=30, lr=0.03, random_state=0).fit(X)
    dcgmm = normalized_mutual_info_score(y_test, model.predict(X_test))
    flat = GaussianMixture(25, covariance_type="diag", random_state=0).fit(X).predict(X_test)
    assert dcgmm > 0.6 and dcgmm > normalized_mutual_info_score(y_test, flat) - 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_estimator_clusters_digits_at_least_as_well_as_a_flat_gmm(digits, seed):
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.mixture import GaussianMixture

    X, _, X_test = digits
    y_test = load_digits().test_labels.numpy()
    model = DCGMM(random_state=seed).fit(X)
    dcgmm = normalized_mutual_info_score(y_test, model.predict(X_test))
    flat = GaussianMixture(model.n_components_, covariance_type="diag", reg_covar=1e-3, random_state=seed)
    assert dcgmm >= normalized_mutual_info_score(y_test, flat.fit(X).predict(X_test))


def test_two_estimators_in_one_process_stay_independent(digits):
    X, _, X_test = digits
    first = DCGMM("digits", epochs=1, random_state=0).fit(X)
    before = first.score_samples(X_test)
    second = DCGMM("digits", epochs=2, lr=0.05, random_state=1).fit(X[:500])
    np.testing.assert_array_equal(first.score_samples(X_test), before)
    assert not np.allclose(second.score_samples(X_test), before)


def test_same_random_state_same_model(digits):
    X, _, X_test = digits
    a = DCGMM("digits", epochs=1, random_state=7).fit(X[:400])
    b = DCGMM("digits", epochs=1, random_state=7).fit(X[:400])
    np.testing.assert_array_equal(a.score_samples(X_test), b.score_samples(X_test))


def test_layer_list_and_image_input():
    layers = [{"type": "fold", "patch": 4, "stride": 2}, {"type": "gmm", "components": 4}]
    x = torch.rand(50, 1, 8, 8)
    estimator = DCGMM(layers, epochs=1).fit(x)
    assert estimator.predict(x).shape == (50,)


def test_bad_input_raises():
    with pytest.raises(DataError, match="not a square image"):
        DCGMM(epochs=1).fit(np.random.rand(10, 63))
    with pytest.raises(DataError, match="floating point"):
        DCGMM(epochs=1).fit(np.zeros((10, 64), dtype=np.int64))
