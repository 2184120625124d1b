"""fastnn.MLPClassifier, MLPRegressor, LogisticRegression: scikit-learn
compatibility, accuracy, agreement with scikit-learn's solutions, errors,
training controls and the save/load state protocol."""
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fastnn
from fastnn.estimators import LogisticRegression, MLPClassifier, MLPRegressor, NotFittedError

# The directory holding the imported fastnn (source tree or site-packages):
# subprocesses must import this very package, e.g. the installed wheel in CI.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))


def _sklearn():
    return pytest.importorskip("sklearn", reason="scikit-learn is an optional test dependency")


def _blobs(n=120, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, d))
    y = np.arange(n) % k
    return centers[y] + rng.normal(0, 1, (n, d)), y


@pytest.fixture(autouse=True)
def _quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnn.estimators.ConvergenceWarning)
        yield


# ---------------------------------------------------------------------------
# scikit-learn's estimator checks
# ---------------------------------------------------------------------------
# check_sample_weight_equivalence_on_dense_data compares fits at rtol=1e-7,
# which float32 arithmetic cannot meet: it runs below on float64 (dtype=None)
# with the solvers scikit-learn runs it with on its own MLPs.
_FLOAT32_WEIGHTS = {f"check_sample_weight_equivalence_on_{kind}_data":
                    "float32 results cannot meet its rtol=1e-7 (test_sample_weight_equivalence)"
                    for kind in ("dense", "sparse")}


@pytest.mark.parametrize("estimator, expected_failures", [
    (MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, learning_rate_init=0.01, n_threads=1),
     _FLOAT32_WEIGHTS),
    (MLPRegressor(hidden_layer_sizes=(8,), max_iter=50, learning_rate_init=0.01, n_threads=1),
     _FLOAT32_WEIGHTS),
    (MLPClassifier(solver="lbfgs", max_iter=100, dtype=None, n_threads=1), {}),
    (LogisticRegression(n_threads=1), {}),
], ids=["MLPClassifier", "MLPRegressor", "MLPClassifier-lbfgs-float64", "LogisticRegression"])
def test_check_estimator(estimator, expected_failures):
    _sklearn()
    from sklearn.utils.estimator_checks import check_estimator
    check_estimator(estimator, expected_failed_checks=expected_failures)


@pytest.mark.parametrize("estimator", [
    MLPClassifier(solver="lbfgs", max_iter=100, dtype=None, n_threads=1),
    MLPRegressor(solver="sgd", tol=1e-2, random_state=42, max_iter=100, dtype=None, n_threads=1),
    MLPRegressor(solver="lbfgs", max_iter=100, dtype=None, n_threads=1),
    LogisticRegression(n_threads=1, dtype=np.float64, tol=1e-10, max_iter=5000),
], ids=lambda e: f"{type(e).__name__}-{e.solver}")
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_sample_weight_equivalence(estimator, kind):
    """An integer weight is the sample repeated, a zero weight the sample
    removed (scikit-learn's checks, at their rtol=1e-7)."""
    _sklearn()
    from sklearn.utils import estimator_checks
    check = getattr(estimator_checks, f"check_sample_weight_equivalence_on_{kind}_data")
    check(type(estimator).__name__, estimator)


# ---------------------------------------------------------------------------
# accuracy and agreement with scikit-learn
# ---------------------------------------------------------------------------
# the settings recommended as the `python -m fastnn train` defaults
DIGITS_SETTINGS = dict(hidden_layer_sizes=(256,), solver="adam", learning_rate_init=1e-3,
                       alpha=1e-4, batch_size=64, max_iter=60, random_state=0)


def test_digits_accuracy():
    _sklearn()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X / 16.0, y, test_size=0.25, random_state=0,
                                              stratify=y)
    model = MLPClassifier(n_threads=1, **DIGITS_SETTINGS).fit(X_tr, y_tr)
    assert model.score(X_te, y_te) >= 0.97


def _breast_cancer():
    _sklearn()
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_logistic_l2_matches_sklearn():
    from sklearn.linear_model import LogisticRegression as SkLR
    X, y = _breast_cancer()
    ref = SkLR(C=1.0, tol=1e-10, max_iter=10000).fit(X, y)
    model = LogisticRegression(penalty="l2", C=1.0, tol=1e-8, max_iter=5000).fit(X, y)
    assert model.coef_.shape == (1, X.shape[1]) and model.n_iter_[0] < 5000
    assert _rel(model.coef_, ref.coef_) < 1e-3
    assert abs(model.intercept_[0] - ref.intercept_[0]) < 1e-3 * np.linalg.norm(ref.coef_)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    assert np.array_equal(model.predict(X), ref.predict(X))


def test_logistic_l1_matches_liblinear():
    # liblinear penalises the intercept, so compare without one (same objective)
    from sklearn.linear_model import LogisticRegression as SkLR
    X, y = _breast_cancer()
    ref = SkLR(C=1.0, l1_ratio=1.0, solver="liblinear", fit_intercept=False, tol=1e-12,
               max_iter=100000).fit(X, y)
    model = LogisticRegression(penalty="l1", C=1.0, fit_intercept=False, tol=1e-8,
                               max_iter=5000).fit(X, y)
    assert _rel(model.coef_, ref.coef_) < 1e-3
    # the proximal step gives exact zeros where the l1 solution has them
    assert np.array_equal(model.coef_ == 0, ref.coef_ == 0)
    assert np.all(model.intercept_ == 0)


def test_logistic_multinomial_matches_sklearn():
    _sklearn()
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression as SkLR
    from sklearn.preprocessing import StandardScaler
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    ref = SkLR(C=1.0, tol=1e-10, max_iter=10000).fit(X, y)
    model = LogisticRegression(C=1.0, tol=1e-8, max_iter=5000).fit(X, y)
    assert model.coef_.shape == (3, 4)
    assert _rel(model.coef_, ref.coef_) < 1e-3
    np.testing.assert_allclose(model.intercept_, ref.intercept_, atol=1e-3)


def _logistic_objective(model, X, y, C):
    p = model.predict_proba(X)[np.arange(len(y)), y]
    return C * -np.log(p).sum() + 0.5 * np.sum(model.coef_ ** 2)


@pytest.mark.parametrize("penalty", ["l2", "l1"])
def test_logistic_sgd_and_fixed_step_gd_approach_the_optimum(penalty):
    X, y = _breast_cancer()
    best = LogisticRegression(penalty=penalty, tol=1e-8, max_iter=5000).fit(X, y)
    sgd = LogisticRegression(penalty=penalty, solver="sgd", max_iter=100, random_state=0).fit(X, y)
    fixed = LogisticRegression(penalty=penalty, learning_rate=1.0, max_iter=300).fit(X, y)
    fixed_longer = LogisticRegression(penalty=penalty, learning_rate=1.0, max_iter=1000).fit(X, y)
    if penalty == "l2":
        f_best = _logistic_objective(best, X, y, 1.0)
        f_fixed = _logistic_objective(fixed, X, y, 1.0)
        assert f_best <= _logistic_objective(fixed_longer, X, y, 1.0) <= f_fixed <= 1.05 * f_best
        assert f_best <= _logistic_objective(sgd, X, y, 1.0) <= 1.3 * f_best
    assert sgd.score(X, y) >= best.score(X, y) - 0.02
    assert fixed.score(X, y) >= best.score(X, y) - 0.02


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_mlp_training_matches_sklearn_from_same_start(kind, solver):
    """Same initial weights, no shuffling: fastnn's epochs reproduce
    scikit-learn's (L2 with the batch-size convention, a short last batch,
    momentum/Nesterov or Adam, loss_curve_ incl. the penalty)."""
    _sklearn()
    from sklearn import neural_network
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 6))  # 90 = 2 batches of 40 + one of 10
    if kind == "regressor":
        y = np.column_stack([X[:, 0] * X[:, 1], np.sin(X[:, 2])])
        ours, theirs = MLPRegressor, neural_network.MLPRegressor
    else:
        y = (X[:, 0] > 0) + (X[:, 1] > 0.5)
        ours, theirs = MLPClassifier, neural_network.MLPClassifier
    params = dict(hidden_layer_sizes=(7, 5), activation="tanh", solver=solver, alpha=0.3,
                  batch_size=40, learning_rate_init=0.05, momentum=0.8, shuffle=False,
                  random_state=3)
    start = theirs(**{**params, "learning_rate_init": 1e-300}, max_iter=1).fit(X, y)
    ref = theirs(**params, max_iter=3).fit(X, y)
    model = ours(**params, max_iter=1, dtype=np.float64, n_threads=1).fit(X, y)
    for mine, init in zip(model.coefs_ + model.intercepts_, start.coefs_ + start.intercepts_):
        np.copyto(mine, init)
    model.set_params(warm_start=True, max_iter=3).fit(X, y)
    for mine, expected in zip(model.coefs_ + model.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(mine, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.loss_curve_[1:], ref.loss_curve_, rtol=1e-6)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_same_seed_trains_scikit_learns_model(kind, solver):
    """None/int/RandomState seeds draw what scikit-learn draws, in its order
    (initial weights, the epochs' shuffles, the early-stopping split): in
    float64 a fit from the same seed is scikit-learn's fit."""
    _sklearn()
    from sklearn import neural_network
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 5))
    if kind == "regressor":
        y = X[:, 0] * X[:, 1] + np.sin(X[:, 2])
        ours, theirs = MLPRegressor, neural_network.MLPRegressor
    else:
        y = (X[:, 0] > 0) + (X[:, 1] > 0.5)
        ours, theirs = MLPClassifier, neural_network.MLPClassifier
    params = dict(hidden_layer_sizes=(9,), solver=solver, batch_size=32, max_iter=8,
                  learning_rate_init=0.01, early_stopping=True, n_iter_no_change=50)
    for seed in (7, np.random.RandomState(7)):
        ref = theirs(**params, random_state=seed if isinstance(seed, int) else
                     np.random.RandomState(7)).fit(X, y)
        model = ours(**params, random_state=seed, dtype=None, n_threads=1).fit(X, y)
        for mine, expected in zip(model.coefs_ + model.intercepts_,
                                  ref.coefs_ + ref.intercepts_):
            np.testing.assert_allclose(mine, expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(model.loss_curve_, ref.loss_curve_, rtol=1e-9)
        np.testing.assert_allclose(model.validation_scores_, ref.validation_scores_)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("solver, extra", [
    ("adam", {}), ("adam", {"alpha": 0.0}), ("adam", {"l1": 1e-3, "early_stopping": True}),
    ("sgd", {"momentum": 0.9}), ("sgd", {"l1": 1e-3, "nesterovs_momentum": False}),
    ("adam", {"compute_dtype": "bfloat16", "dtype": np.float32})])   # (float32 in any case)
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor], ids=lambda c: c.__name__)
def test_mlp_compiled_epoch_equals_the_python_loop(monkeypatch, cls, solver, extra, dtype):
    """The MLPs train an epoch in one compiled call (Adam or SGD, scikit-
    learn's batch penalty computed in it): the same weights, optimiser
    state, loss_curve_ and stopping as fit's Python loop, bit for bit."""
    from fastnn import nn
    rng = np.random.default_rng(4)
    X = rng.normal(size=(150, 12))
    y = X[:, 0] * X[:, 1] - X[:, 2] if cls is MLPRegressor else (X[:, 0] > 0) + (X[:, 1] > 0.5)
    params = {**dict(hidden_layer_sizes=(20, 9), solver=solver, batch_size=32, max_iter=6,
                     learning_rate_init=0.01, random_state=0, dtype=dtype, n_threads=2, tol=0,
                     alpha=1e-3), **extra}

    def fit(compiled):
        calls = []
        epoch = nn._kernels.dense_stack_epoch
        monkeypatch.setattr(nn._kernels, "dense_stack_epoch",
                            lambda *a: calls.append(1) or epoch(*a))
        if not compiled:      # the penalty's batch hook then runs in Python
            monkeypatch.setattr(nn._Callbacks, "compiled_penalty", lambda self, opt: None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls(**params).fit(X, y)
            if not model.early_stopping:
                model.partial_fit(X, y)
        monkeypatch.undo()
        return model, len(calls)

    compiled, calls = fit(True)
    loop, none = fit(False)
    assert calls == len(compiled.loss_curve_) == 6 + (not compiled.early_stopping)
    assert none == 0
    assert compiled.loss_curve_ == loop.loss_curve_ and compiled.t_ == loop.t_
    for a, b in zip(compiled.coefs_ + compiled.intercepts_, loop.coefs_ + loop.intercepts_):
        np.testing.assert_array_equal(a, b)
    opt_a, opt_b = compiled._trainer.optimizer, loop._trainer.optimizer
    assert (opt_a.steps, opt_a.weight_decay, opt_a.l1) == (opt_b.steps, opt_b.weight_decay,
                                                           opt_b.l1)
    for prefix, arrays in opt_a._state_arrays().items():
        for a, b in zip(arrays, opt_b._state_arrays()[prefix]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_lbfgs_matches_scikit_learn(kind):
    """The same objective, gradient and start as scikit-learn's lbfgs: in
    float64 the same iterates (scipy's L-BFGS-B in both)."""
    _sklearn()
    from sklearn import neural_network
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 4))
    if kind == "regressor":
        y = np.column_stack([np.tanh(X[:, 0] - X[:, 1]), X[:, 2] ** 2])
        ours, theirs = MLPRegressor, neural_network.MLPRegressor
    else:
        y = (X[:, 0] > 0) + (X[:, 1] > 0.5)
        ours, theirs = MLPClassifier, neural_network.MLPClassifier
    params = dict(hidden_layer_sizes=(6,), solver="lbfgs", alpha=0.1, max_iter=15,
                  activation="tanh", random_state=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = theirs(**params).fit(X, y)
    with pytest.warns(fastnn.estimators.ConvergenceWarning, match="lbfgs failed to converge"):
        model = ours(**params, dtype=None, n_threads=1).fit(X, y)
    assert model.n_iter_ == ref.n_iter_ == 15
    for mine, expected in zip(model.coefs_ + model.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(mine, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(model.loss_, ref.loss_, rtol=1e-9)
    assert not hasattr(model, "loss_curve_") and not hasattr(model, "partial_fit")
    # max_fun caps the evaluations
    with pytest.warns(fastnn.estimators.ConvergenceWarning):
        few = ours(**{**params, "max_fun": 5}, n_threads=1).fit(X, y)
    assert few.n_iter_ <= 5


def test_lbfgs_callbacks_stop_and_ctrl_c_keeps_the_model():
    X, y = _blobs()
    seen = []
    model = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=100, random_state=0,
                          callbacks=[lambda est, logs: seen.append(logs["loss"]) or
                                     len(seen) == 4], n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastnn.estimators.ConvergenceWarning)
        model.fit(X, y)  # a callback's stop is no convergence failure
    assert model.n_iter_ == 4 and len(seen) == 4 and seen[-1] < seen[0]

    def interrupt(est, logs):
        if logs["epoch"] == 3:
            raise KeyboardInterrupt
    model = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=100, random_state=0,
                          callbacks=[interrupt], n_threads=1)
    with pytest.warns(UserWarning, match="interrupted"):
        model.fit(X, y)
    assert model.score(X, y) > 0.5 and np.isfinite(model.loss_)


def test_lbfgs_on_digits_reaches_scikit_learns_accuracy():
    _sklearn()
    from sklearn import neural_network
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X / 16.0, y, test_size=0.25, random_state=0,
                                              stratify=y)
    params = dict(hidden_layer_sizes=(64,), solver="lbfgs", alpha=1e-3, max_iter=200,
                  random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = neural_network.MLPClassifier(**params).fit(X_tr, y_tr).score(X_te, y_te)
        ours = MLPClassifier(**params, n_threads=1).fit(X_tr, y_tr).score(X_te, y_te)
    assert ours >= ref - 0.01, (ours, ref)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_poisson_regressor_matches_scikit_learn(solver):
    """loss="poisson": exp output, half Poisson deviance summed over outputs
    (scikit-learn's loss_), the same fit from the same seed in float64."""
    _sklearn()
    from sklearn import neural_network
    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, 3))
    y = np.column_stack([rng.poisson(np.exp(0.5 * X[:, 0])), rng.poisson(np.exp(X[:, 1] / 3))])
    params = dict(loss="poisson", hidden_layer_sizes=(5,), solver=solver, max_iter=10,
                  learning_rate_init=0.01, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = neural_network.MLPRegressor(**params).fit(X, y)
        model = MLPRegressor(**params, dtype=None, n_threads=1).fit(X, y)
    assert model.out_activation_ == "exp"
    np.testing.assert_allclose(model.predict(X), ref.predict(X), rtol=1e-6)
    np.testing.assert_allclose(model.loss_, ref.loss_, rtol=1e-6)
    assert (model.predict(X) > 0).all()


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_dtype_none_follows_X(cls):
    X, y = _blobs(n=60)
    for X_dtype, expected in ((np.float64, np.float64), (np.float32, np.float32),
                              (np.int64, np.float64)):
        model = cls(hidden_layer_sizes=(5, 3), max_iter=3, dtype=None, n_threads=1)
        model.fit(X.astype(X_dtype), y)
        assert all(a.dtype == expected for a in model.coefs_ + model.intercepts_)
        if cls is MLPRegressor:
            assert model.predict(X).dtype == expected
        # a later partial_fit keeps the fitted dtype whatever X's
        if hasattr(model, "partial_fit"):
            model.partial_fit(X.astype(np.float32), y)
            assert model.coefs_[0].dtype == expected
    default = cls(hidden_layer_sizes=(5,), max_iter=2, n_threads=1).fit(X, y)
    assert default.coefs_[0].dtype == np.float32  # fastnn's documented default


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor, LogisticRegression])
def test_sample_weight(cls):
    X, y = _blobs(n=90)
    kw = {} if cls is LogisticRegression else dict(hidden_layer_sizes=(6,), max_iter=20,
                                                   random_state=0, n_threads=1)
    w = np.random.default_rng(0).uniform(0.2, 3.0, len(X))
    plain = cls(**kw).fit(X, y)
    ones = cls(**kw).fit(X, y, sample_weight=np.ones(len(X)))
    weighted = cls(**kw).fit(X, y, sample_weight=w)
    scalar = cls(**kw).fit(X, y, sample_weight=2.5)  # a number weighs every sample alike
    full = cls(**kw).fit(X, y, sample_weight=np.full(len(X), 2.5))
    np.testing.assert_array_equal(_predictions(ones, X), _predictions(plain, X))
    np.testing.assert_array_equal(_predictions(scalar, X), _predictions(full, X))
    assert not np.allclose(_predictions(weighted, X), _predictions(plain, X), atol=1e-4)
    pred = weighted.predict(X)
    if cls is MLPRegressor:  # the weighted R²
        expected = 1 - (np.average((y - pred) ** 2, weights=w)
                        / np.average((y - np.average(y, weights=w)) ** 2, weights=w))
    else:
        expected = np.average(pred == y, weights=w)
    assert np.isclose(weighted.score(X, y, sample_weight=w), expected)
    for bad, match in ((-w, "Negative"), (w[:-1], "shape"), (np.full(len(X), np.nan), "NaN"),
                       (np.zeros(len(X)), "zero"), (np.array(["a"] * len(X)), "real")):
        with pytest.raises(ValueError, match=match):
            cls(**kw).fit(X, y, sample_weight=bad)


def _predictions(model, X):
    return model.predict_proba(X) if hasattr(model, "predict_proba") else model.predict(X)


def test_zero_weight_batches_are_skipped():
    """A minibatch whose weights are all zero teaches nothing (and has no
    mean): the fit equals one without those samples (the same initial
    weights: they depend on the seed and the shapes only)."""
    X, y = _blobs(n=100)
    w = np.ones(len(X))
    w[:40] = 0.0  # with shuffle=False and batch_size=20: the first two batches
    params = dict(hidden_layer_sizes=(6,), solver="sgd", batch_size=20, shuffle=False,
                  max_iter=5, random_state=0, n_threads=1)
    model = MLPClassifier(**params).fit(X, y, sample_weight=w)
    ref = MLPClassifier(**params).fit(X[40:], y[40:])
    assert np.isfinite(model.loss_curve_).all()
    for a, b in zip(model.coefs_ + model.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_array_equal(a, b)


def _sparse_blobs(n=120, d=40, k=3, seed=0):
    """A sparse classification problem (about 8 non-zeros a row)."""
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = sp.random(n, d, density=0.2, random_state=seed, format="csr") * 2.0
    X = X + sp.csr_matrix((np.ones(n), (np.arange(n), y * 3)), shape=(n, d))  # class signal
    return sp.csr_matrix(X), y


@pytest.mark.parametrize("cls, solver", [
    (MLPClassifier, "adam"), (MLPClassifier, "lbfgs"), (MLPRegressor, "adam"),
    (MLPRegressor, "lbfgs"), (LogisticRegression, "gd"), (LogisticRegression, "sgd")],
    ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_sparse_X_equals_dense_X(cls, solver):
    """CSR, CSC, sparse matrices and arrays: the same fit, predictions and
    scores as X.toarray() (in float64, to rounding)."""
    import scipy.sparse as sp
    X, y = _sparse_blobs()
    target = X.toarray() @ np.arange(X.shape[1]) / X.shape[1] if cls is MLPRegressor else y
    w = np.linspace(0.5, 2.0, X.shape[0])
    if cls is LogisticRegression:
        kw = dict(solver=solver, dtype=np.float64, max_iter=50, random_state=0)
    else:
        kw = dict(hidden_layer_sizes=(7,), solver=solver, max_iter=30, random_state=0,
                  dtype=None, n_threads=1)
    dense = cls(**kw).fit(X.toarray(), target, sample_weight=w)
    for fmt in (sp.csr_matrix, sp.csc_matrix, sp.csr_array):
        model = cls(**kw).fit(fmt(X), target, sample_weight=w)
        np.testing.assert_allclose(_predictions(model, fmt(X)), _predictions(dense, X.toarray()),
                                   rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(_predictions(model, X.toarray()),
                                   _predictions(model, fmt(X)), rtol=1e-10, atol=1e-12)
        assert np.isclose(model.score(fmt(X), target), dense.score(X.toarray(), target))
    if hasattr(dense, "partial_fit"):
        np.testing.assert_allclose(
            _predictions(cls(**kw).partial_fit(X, target, **(
                {"classes": np.unique(y)} if cls is MLPClassifier else {})), X),
            _predictions(cls(**kw).partial_fit(X.toarray(), target, **(
                {"classes": np.unique(y)} if cls is MLPClassifier else {})), X.toarray()),
            rtol=1e-7, atol=1e-9)


def test_sparse_fit_never_densifies():
    """A fit on a 20000 x 50000 CSR matrix (4 GB dense in float32) allocates
    O(nnz + batch x width): far below the dense size."""
    import tracemalloc
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    n, d, per_row = 20000, 50000, 20
    cols = rng.integers(0, d, n * per_row)
    X = sp.csr_matrix((rng.random(n * per_row), (np.repeat(np.arange(n), per_row), cols)),
                      shape=(n, d))
    y = cols[::per_row] % 5
    tracemalloc.start()
    MLPClassifier(hidden_layer_sizes=(16,), max_iter=1, random_state=0).fit(X, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    weights = d * 16 * 4 * 4  # W and its gradient, Adam's two moments, float32
    assert peak < 3 * (X.data.nbytes + X.indices.nbytes) + 2 * weights + (32 << 20), peak


# ---------------------------------------------------------------------------
# labels, outputs, predictions
# ---------------------------------------------------------------------------
def test_string_labels_binary_and_multiclass():
    X, y = _blobs(k=3)
    names = np.array(["cat", "dog", "eel"])[y]
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=100, learning_rate_init=0.01,
                          random_state=0, n_threads=1).fit(X, names)
    assert list(model.classes_) == ["cat", "dog", "eel"] and model.out_activation_ == "softmax"
    assert model.predict(X).dtype == names.dtype and model.score(X, names) > 0.9
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(model.predict_log_proba(X), np.log(proba), rtol=1e-4, atol=1e-5)

    binary = names.astype(object)
    binary[binary == "eel"] = "cat"
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=100, learning_rate_init=0.01,
                          random_state=0, n_threads=1).fit(X, binary)
    # one logistic output unit, as scikit-learn
    assert model.coefs_[-1].shape == (16, 1) and model.out_activation_ == "logistic"
    assert model.n_outputs_ == 1 and set(model.predict(X)) <= {"cat", "dog"}
    assert model.predict_proba(X).shape == (len(X), 2)

    lr = LogisticRegression().fit(X, binary)
    assert lr.coef_.shape == (1, X.shape[1]) and lr.decision_function(X).shape == (len(X),)
    assert np.array_equal(lr.predict(X) == "dog", lr.decision_function(X) > 0)


def test_multilabel_and_multioutput():
    X, y = _blobs(k=3)
    Y = np.column_stack([y == 0, y != 1, X[:, 0] > 0]).astype(int)
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=150, learning_rate_init=0.01,
                          random_state=0, n_threads=1).fit(X, Y)
    assert model.predict(X).shape == Y.shape and model.predict_proba(X).shape == Y.shape
    assert np.mean(model.predict(X) == Y) > 0.9
    reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=5, random_state=0, n_threads=1)
    assert reg.fit(X, np.column_stack([X[:, 0], X[:, 1]])).predict(X).shape == (len(X), 2)
    assert reg.fit(X, X[:, 0]).predict(X).shape == (len(X),)


def test_extras_leaky_relu_dropout_l1_float64():
    X, y = _blobs()
    for extra in (dict(activation="leaky_relu"), dict(dropout=0.3), dict(l1=1e-2),
                  dict(dtype=np.float64)):
        model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=80, learning_rate_init=0.01,
                              random_state=0, n_threads=1, **extra).fit(X, y)
        assert model.score(X, y) > 0.9, extra
        assert model.coefs_[0].dtype == np.dtype(extra.get("dtype", np.float32))
    # L1 shrinks the weights
    params = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=0.01, batch_size=10,
                  max_iter=40, random_state=0, n_threads=1)
    plain = MLPRegressor(**params).fit(X, X[:, 0])
    shrunk = MLPRegressor(l1=5.0, **params).fit(X, X[:, 0])
    assert np.abs(shrunk.coefs_[0]).mean() < 0.5 * np.abs(plain.coefs_[0]).mean()


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor, LogisticRegression])
def test_input_errors(cls):
    X, y = _blobs(n=30)
    est = cls(max_iter=2)
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 1] = bad
        with pytest.raises(ValueError):
            est.fit(Xb, y)
    with pytest.raises(ValueError, match="(?i)reshape"):
        est.fit(X[:, 0], y)
    with pytest.raises(ValueError):
        est.fit(np.empty((0, 5)), np.empty(0))
    est.fit(X, y)
    with pytest.raises(ValueError, match="(?i)reshape"):
        est.predict(X[0])
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :3])
    Xb = X.copy()
    Xb[0, 0] = np.nan
    with pytest.raises(ValueError):
        est.predict(Xb)


def test_parameter_errors():
    X, y = _blobs(n=30)
    for bad, match in ((dict(solver="lbfgs", dropout=0.5), "dropout.*lbfgs"),
                       (dict(solver="lbfgs", l1=0.1), "l1.*lbfgs"),
                       (dict(solver="newton"), "solver"),
                       (dict(n_iter_no_change=0), "n_iter_no_change"),
                       (dict(max_fun=0), "max_fun")):
        with pytest.raises(ValueError, match=match):
            MLPClassifier(**bad).fit(X, y)
    for bad in (dict(activation="softplus"), dict(hidden_layer_sizes=(0,)), dict(alpha=-1),
                dict(batch_size=0), dict(dropout=1.0), dict(dtype=np.int32), dict(n_threads=0)):
        with pytest.raises(ValueError):
            MLPClassifier(**bad).fit(X, y)
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="huber").fit(X, y)
    with pytest.raises(ValueError, match="non-negative"):
        MLPRegressor(loss="poisson", max_iter=2).fit(X, y - 1.0)
    for bad in (dict(penalty="elasticnet"), dict(C=0), dict(solver="lbfgs")):
        with pytest.raises(ValueError):
            LogisticRegression(**bad).fit(X, y)
    with pytest.raises(ValueError, match="1 class"):
        MLPClassifier().fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="Unknown label type"):
        LogisticRegression().fit(X, X[:, 0])


def test_non_finite_loss_names_the_epoch():
    X, y = _blobs(n=40)
    model = MLPRegressor(hidden_layer_sizes=(4,), solver="sgd", learning_rate_init=10.0,
                         momentum=0.0, random_state=0, n_threads=1)
    with pytest.raises(ValueError, match=r"non-finite.*epoch \d+"):
        model.fit(X, 1e20 * y)


# ---------------------------------------------------------------------------
# reproducibility and threads
# ---------------------------------------------------------------------------
def _weights(model):
    return [a.copy() for a in model.coefs_ + model.intercepts_]


def test_seeded_fits_are_bit_identical():
    X, y = _blobs()
    params = dict(hidden_layer_sizes=(16, 8), dropout=0.2, max_iter=10, random_state=42,
                  early_stopping=True, n_threads=1)
    a, b = MLPClassifier(**params).fit(X, y), MLPClassifier(**params).fit(X, y)
    assert all(np.array_equal(u, v) for u, v in zip(_weights(a), _weights(b)))
    assert a.loss_curve_ == b.loss_curve_
    c = MLPClassifier(**{**params, "random_state": 43}).fit(X, y)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])
    s1 = LogisticRegression(solver="sgd", random_state=5, max_iter=5).fit(X, y)
    s2 = LogisticRegression(solver="sgd", random_state=5, max_iter=5).fit(X, y)
    assert np.array_equal(s1.coef_, s2.coef_)


def test_n_threads_used_during_fit_and_same_result():
    X, y = _blobs(n=200, d=20)
    seen = []
    before = fastnn.get_num_threads()
    params = dict(hidden_layer_sizes=(64,), max_iter=3, random_state=0,
                  callbacks=[lambda est, logs: seen.append(fastnn.get_num_threads())])
    one = MLPClassifier(n_threads=1, **params).fit(X, y)
    two = MLPClassifier(n_threads=2, **params).fit(X, y)
    assert seen == [1, 1, 1, 2, 2, 2] and fastnn.get_num_threads() == before
    # the kernels are bit-identical whatever the thread count
    assert all(np.array_equal(u, v) for u, v in zip(_weights(one), _weights(two)))
    assert np.array_equal(one.predict_proba(X), two.predict_proba(X))


# ---------------------------------------------------------------------------
# partial_fit, warm_start, early stopping, callbacks, verbose
# ---------------------------------------------------------------------------
def test_partial_fit():
    X, y = _blobs()
    labels = np.array(["a", "b", "c"])[y]
    params = dict(hidden_layer_sizes=(16,), random_state=0, n_threads=1)
    with pytest.raises(ValueError, match="classes"):
        MLPClassifier(**params).partial_fit(X, labels)
    inc = MLPClassifier(**params).partial_fit(X, labels, classes=["a", "b", "c", "d"])
    assert list(inc.classes_) == ["a", "b", "c", "d"] and inc.n_iter_ == 1 and inc.t_ == len(X)
    # one partial_fit is one epoch of fit, from the same seed
    one = MLPClassifier(max_iter=1, **params).fit(X, labels[:])
    inc3 = MLPClassifier(**params).partial_fit(X, labels, classes=["a", "b", "c"])
    assert all(np.array_equal(u, v) for u, v in zip(_weights(one), _weights(inc3)))
    inc3.set_params(learning_rate_init=0.01)
    for _ in range(30):
        inc3.partial_fit(X[:60], labels[:60])
        inc3.partial_fit(X[60:], labels[60:])
    assert len(inc3.loss_curve_) == 61 and inc3.t_ == 31 * len(X)
    assert inc3.loss_curve_[-1] < inc3.loss_curve_[0] and inc3.score(X, labels) > 0.9
    with pytest.raises(ValueError, match="not in"):
        inc3.partial_fit(X, np.array(["a", "z"] * 60))
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, X[:, 0])
    reg = MLPRegressor(**params).partial_fit(X, X[:, 0]).partial_fit(X, X[:, 0])
    assert len(reg.loss_curve_) == 2


def test_warm_start():
    X, y = _blobs()
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0, n_threads=1)
    model.fit(X, y)
    first = model.loss_curve_[:]
    model.set_params(warm_start=True).fit(X, y)
    assert model.loss_curve_[:5] == first and len(model.loss_curve_) == 10
    assert model.loss_curve_[5] < first[0] and model.n_iter_ == 5
    with pytest.raises(ValueError, match="same classes"):
        model.fit(X[y < 2], y[y < 2])
    model.set_params(warm_start=False).fit(X, y)
    assert model.loss_curve_ == first


def test_early_stopping_and_validation_data():
    X, y = _blobs(n=300)
    model = MLPClassifier(hidden_layer_sizes=(16,), early_stopping=True, n_iter_no_change=3,
                          max_iter=300, learning_rate_init=0.01, random_state=0,
                          n_threads=1).fit(X, y)
    assert model.best_loss_ is None and model.n_iter_ < 300
    assert len(model.validation_scores_) == model.n_iter_ == len(model.loss_curve_)
    assert model.best_validation_score_ == max(model.validation_scores_) > 0.9

    X_val, y_val = _blobs(n=90, seed=0)
    rng = np.random.default_rng(0)
    X_val = X_val + rng.normal(0, 1.5, X_val.shape)  # a harder set: scores vary per epoch
    model = MLPClassifier(hidden_layer_sizes=(16,), early_stopping=True, n_iter_no_change=5,
                          max_iter=60, learning_rate_init=0.03, random_state=0, n_threads=1,
                          validation_data=(X_val, y_val)).fit(X, y)
    # the weights of the best epoch are restored
    assert model.score(X_val, y_val) == model.best_validation_score_
    # without early stopping the validation set is only monitored
    mon = MLPRegressor(hidden_layer_sizes=(8,), max_iter=4, random_state=0, n_threads=1,
                       validation_data=(X_val, X_val[:, 0])).fit(X, X[:, 0])
    assert len(mon.validation_scores_) == 4 and mon.best_loss_ == min(mon.loss_curve_)


def test_callbacks_can_stop_training():
    X, y = _blobs()
    logs_seen = []

    def callback(est, logs):
        logs_seen.append(logs)
        return logs["epoch"] == 3

    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0, n_threads=1,
                          callbacks=[callback]).fit(X, y)
    assert model.n_iter_ == 3 and [l["epoch"] for l in logs_seen] == [1, 2, 3]
    assert logs_seen[-1]["loss"] == model.loss_curve_[-1]
    assert logs_seen[-1]["samples_per_second"] > 0 and logs_seen[-1]["learning_rate"] == 1e-3


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_verbose_prints_scikit_learns_lines(capsys, solver):
    X, y = _blobs()
    MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0, verbose=True,
                  solver=solver, early_stopping=solver == "adam", n_threads=1).fit(X, y)
    out = capsys.readouterr().out.splitlines()
    lines = [l for l in out if l.startswith("Iteration")]
    assert len(lines) == 3
    assert all(re.fullmatch(r"Iteration \d, loss = \d+\.\d{8}", l) for l in lines), lines
    if solver == "adam":
        assert len([l for l in out if l.startswith("Validation score: ")]) == 3


# ---------------------------------------------------------------------------
# save/load state protocol (in memory; files are tested with fastnn.io)
# ---------------------------------------------------------------------------
def _round_trip(est):
    meta, arrays = est._get_fastnn_state()
    meta = json.loads(json.dumps(meta, allow_nan=False))  # plain JSON only
    assert all(a.dtype.kind in "biufU" for a in map(np.asarray, arrays.values()))
    return type(est)._from_fastnn_state(meta, {k: np.array(v) for k, v in arrays.items()})


@pytest.mark.parametrize("labels", ["int", "str", "object"])
def test_state_round_trip_is_bit_identical(labels):
    X, y = _blobs()
    y = {"int": y + 10, "str": np.array(["x", "y", "z"])[y],
         "object": np.array(["x", "y", "z"], dtype=object)[y]}[labels]
    X_test = X + 0.1
    models = [MLPClassifier(hidden_layer_sizes=(8, 4), max_iter=5, random_state=0, n_threads=1,
                            callbacks=[lambda e, l: None], early_stopping=True),
              LogisticRegression(max_iter=20),
              MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0, n_threads=1,
                           dtype=np.float64),
              MLPClassifier(hidden_layer_sizes=(6,), solver="lbfgs", max_iter=5, dtype=None,
                            random_state=0, n_threads=1)]
    for model in models:
        target = X[:, 0] if isinstance(model, MLPRegressor) else y
        model.fit(X, target)
        loaded = _round_trip(model)
        assert np.array_equal(loaded.predict(X_test), model.predict(X_test))
        assert loaded.predict(X_test).dtype == model.predict(X_test).dtype
        if hasattr(model, "predict_proba"):
            assert np.array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
        params = model.get_params()
        params.pop("callbacks", None)
        assert {k: v for k, v in loaded.get_params().items() if k != "callbacks"} == params
        if isinstance(model, MLPClassifier) and model.solver == "lbfgs":
            assert not hasattr(loaded, "loss_curve_") and loaded.loss_ == model.loss_
            assert loaded.coefs_[0].dtype == np.float64 and loaded.dtype is None
        elif isinstance(model, MLPClassifier):
            assert loaded.loss_curve_ == model.loss_curve_
            assert loaded.validation_scores_ == model.validation_scores_
            loaded.set_params(early_stopping=False).partial_fit(X, target)  # keeps training


# ---------------------------------------------------------------------------
# without scikit-learn
# ---------------------------------------------------------------------------
def test_works_without_sklearn():
    code = textwrap.dedent("""
        import sys
        sys.modules["sklearn"] = None  # import sklearn -> ImportError
        import numpy as np, fastnn
        from fastnn.estimators import _SKLEARN, NotFittedError
        assert not _SKLEARN
        rng = np.random.default_rng(0)
        X = rng.normal(size=(80, 4)); y = np.where(X[:, 0] + X[:, 1] > 0, "pos", "neg")
        for est in (fastnn.MLPClassifier(hidden_layer_sizes=(8,), max_iter=60,
                                         learning_rate_init=0.01, random_state=0),
                    fastnn.LogisticRegression()):
            try:
                est.predict(X)
            except NotFittedError as exc:
                assert isinstance(exc, ValueError) and isinstance(exc, AttributeError)
            else:
                raise AssertionError("not fitted")
            assert est.fit(X, y).score(X, y) > 0.9
            assert est.n_features_in_ == 4
            for bad, word in ((X[:, 0], "eshape"), (np.full((3, 4), np.nan), "NaN"),
                              (X[:, :3], "features"), (np.empty((0, 4)), "empty")):
                try:
                    est.predict(bad)
                except ValueError as exc:
                    assert word in str(exc), exc
                else:
                    raise AssertionError(word)
        reg = fastnn.MLPRegressor(hidden_layer_sizes=(8,), max_iter=200, random_state=0,
                                  learning_rate_init=0.01)
        assert reg.fit(X, X[:, 0] - X[:, 1]).score(X, X[:, 0] - X[:, 1]) > 0.9
        assert reg.get_params()["max_iter"] == 200
        assert reg.set_params(max_iter=3).max_iter == 3
        assert repr(reg) == ("MLPRegressor(hidden_layer_sizes=(8,), learning_rate_init=0.01, "
                             "max_iter=3, random_state=0)")
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "FASTNN_NUM_THREADS": "1"}
    # cwd=ROOT: `python -c` puts the cwd first on sys.path, where a source
    # tree would shadow an installed fastnn.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_mlp_deeper_than_the_compiled_penalty_table_still_trains():
    """More than 64 weight matrices: the epoch's penalty table is full, so
    the penalty runs in Python (a ValueError before)."""
    X = np.random.default_rng(0).standard_normal((64, 5))
    y = (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MLPClassifier(hidden_layer_sizes=(4,) * 70, max_iter=2, batch_size=16,
                              random_state=0).fit(X, y)
    assert model.n_iter_ == 2 and np.isfinite(model.loss_curve_).all()
