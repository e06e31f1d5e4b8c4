import re

import numpy as np
import pytest
import scipy.sparse
import torch
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimator

from pyro_dcgmm import DCGMM
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.errors import ConfigError, DataError


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
    with pytest.raises(DataError, match=r"values in \[0, 252\], outside the data range .* divide 8-bit"):
        DCGMM(epochs=1).fit(np.tile(np.arange(64) * 4, (10, 1)).astype(np.uint8))
    with pytest.raises(
        DataError, match=re.escape("X is a sparse matrix; images are dense: pass X.toarray()")
    ):
        DCGMM(epochs=1).fit(scipy.sparse.csr_matrix(np.eye(10, 64)))
    with pytest.raises(DataError, match="X is a string"):
        DCGMM(epochs=1).fit("images.npy")
    with pytest.raises(
        DataError, match=r"y must hold integer class indices, got torch\.float64 values such as 0\.9"
    ):
        DCGMM(epochs=1).fit(np.random.rand(10, 64), np.arange(10) % 2 + 0.9)
    with pytest.raises(ConfigError, match=r"training\.optimizer: expected one of"):
        DCGMM(epochs=1, optimizer="rmsprop").fit(np.random.rand(10, 64))
    with pytest.raises(
        ConfigError, match=r"training\.device: expected one of 'auto', 'cpu', 'cuda', got 'mps'"
    ):
        DCGMM(epochs=1, device="mps").fit(np.random.rand(10, 64))
    fitted = DCGMM(epochs=1).fit(np.random.rand(30, 64))
    with pytest.raises(DataError, match="X has 63 features, but DCGMM is expecting 64"):
        fitted.predict(np.random.rand(3, 63))


def test_tabular_rows_are_features_at_one_position():
    # a row of D features is an image only when D is a square; otherwise a flat mixture over D values
    x = np.random.default_rng(0).normal(size=(200, 3))
    model = DCGMM(layers=[{"type": "fold"}, {"type": "gmm", "components": 2}], epochs=2, data_range=None)
    model.fit(x)
    assert model.input_shape_ == (3, 1, 1) and model.predict(x).shape == (200,)
    layers = DCGMM().fit(np.random.rand(40, 3)).stack_.config.layers  # the flat preset A by default
    assert [layer.type for layer in layers] == ["fold", "gmm", "readout"] and layers[0].patch is None


def test_scikit_learn_estimator_checks():
    # run on tabular data: a flat 3-component model over unbounded values (images are [0, 1])
    model = DCGMM(layers=[{"type": "fold"}, {"type": "gmm", "components": 3}], epochs=1, data_range=None)
    results = check_estimator(model, on_skip=None)
    failed = [result["check_name"] for result in results if result["status"] == "failed"]
    assert not failed and len(results) >= 45


@pytest.fixture(scope="module")
def digit_rows():
    from sklearn.datasets import load_digits as sklearn_digits

    x = sklearn_digits().data / 16.0
    order = np.random.RandomState(0).permutation(len(x))
    return x[order[:1400]], x[order[1400:]]


def test_one_layer_estimator_scores_as_gaussian_mixture_at_the_same_floor(digit_rows):
    from sklearn.mixture import GaussianMixture

    train, test = digit_rows
    ours = DCGMM(n_components=10, covariance_type="diag", reg_covar=1e-3, random_state=0).fit(train)
    theirs = GaussianMixture(10, covariance_type="diag", reg_covar=1e-3, random_state=0).fit(train)
    assert ours.score(test) >= theirs.score(test) - 0.005 * abs(theirs.score(test))  # 51.29 vs 51.52
    assert ours.score(train) >= theirs.score(train)  # online EM reaches EM's optimum: 54.03 vs 53.41
    default = DCGMM(n_components=10, covariance_type="diag", random_state=0).fit(train)
    assert default.stack_.mixture_layers[-1].config.precision_ceiling == 1e6  # reg_covar 1e-6, as sklearn


def test_fitted_attributes_are_scikit_learns(digit_rows):
    train, test = digit_rows
    for kind in ("diag", "full"):
        model = DCGMM(n_components=4, covariance_type=kind, epochs=3, random_state=0).fit(train[:300])
        assert model.weights_.shape == (4,) and model.weights_.sum() == pytest.approx(1.0, abs=1e-5)
        assert model.means_.shape == (4, 64)
        assert model.covariances_.shape == ((4, 64) if kind == "diag" else (4, 64, 64))
        assert model.n_iter_ == 3 and isinstance(model.converged_, bool)
        assert np.isfinite(model.lower_bound_)
        free = 3 + 4 * 64 + (4 * 64 if kind == "diag" else 4 * 64 * 65 // 2)
        n, score = len(test), model.score(test)
        assert model.bic(test) == pytest.approx(-2 * score * n + free * np.log(n))
        assert model.aic(test) == pytest.approx(-2 * score * n + 2 * free)
    assert model.covariances_[0] == pytest.approx(model.covariances_[0].T)


def test_samples_are_fresh_unless_a_random_state_is_set(digit_rows):
    train, _ = digit_rows
    model = DCGMM(n_components=3, epochs=1).fit(train[:200])
    assert not np.array_equal(model.sample(4)[0], model.sample(4)[0])
    model.set_params(random_state=5)
    assert np.array_equal(model.sample(4)[0], model.sample(4)[0])


def test_shortcuts_name_the_parameter_at_fault(digit_rows):
    train, _ = digit_rows
    with pytest.raises(
        ConfigError, match="covariance_type must be one of 'diag', 'full', 'stationary', got 'tied'"
    ):
        DCGMM(n_components=3, covariance_type="tied").fit(train[:50])
    with pytest.raises(ConfigError, match="reg_covar 1e-06 is too small for full covariances"):
        DCGMM(n_components=3, covariance_type="full", reg_covar=1e-6).fit(train[:50])
    top = DCGMM("digits", n_components=7, epochs=1).fit(train[:200].reshape(-1, 8, 8))
    assert top.n_components_ == 7 and top.weights_.shape == (7,)


def test_priors_set_the_top_layer_and_verbose_fits_say_what_they_do(digit_rows, capsys):
    train, _ = digit_rows
    model = DCGMM("digits", n_components=12, weight_concentration_prior=0.1, epochs=1, verbose=1)
    model.fit(train[:200].reshape(-1, 8, 8))
    top = model.stack_.mixture_layers[-1].config
    assert (top.components, top.weight_concentration_prior, top.weight_posterior) == (12, 0.1, "map")
    assert model.stack_.mixture_layers[0].config.weight_concentration_prior is None  # the top only
    progress = capsys.readouterr().err
    assert "initialising layer 0" in progress and "initialising layer 1" in progress
    with pytest.raises(ConfigError, match="mean_precision_prior"):
        DCGMM(n_components=3, covariance_type="full", mean_precision_prior=1.0).fit(train[:50])
