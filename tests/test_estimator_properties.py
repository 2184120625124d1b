"""Property-based tests (hypothesis) of the estimators: random shapes (0 to
100 samples and features), dtypes, layouts and values (NaN, inf, huge,
subnormal).  Each example either fits and predicts something well-formed,
or raises the documented ValueError/TypeError before training; never a
crash, never another exception.

Examples per test: env FASTNN_HYPOTHESIS_EXAMPLES (default 200).
"""
import warnings

import numpy as np
from hypothesis import given, strategies as st

from fastnn import LogisticRegression, MLPClassifier, MLPRegressor
from conftest import as_layout
from test_properties import DIM, SETTINGS

VALUE_DTYPES = st.sampled_from([np.float32, np.float64, np.float64, np.int64, np.uint8,
                                np.bool_, np.float16, np.complex64, object])
SPECIALS = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 5e-324, -0.0])


def _estimator(kind, seed):
    small = dict(max_iter=3, random_state=seed, n_threads=1)
    if kind == "classifier":
        return MLPClassifier(hidden_layer_sizes=(4,), batch_size=16, **small)
    if kind == "regressor":
        return MLPRegressor(hidden_layer_sizes=(4,), batch_size=16, **small)
    return LogisticRegression(max_iter=3, random_state=seed)


@SETTINGS
@given(data=st.data())
def test_estimators_fit_predict_or_raise_documented(data):
    draw = data.draw
    kind = draw(st.sampled_from(["classifier", "regressor", "logistic"]))
    n, d = draw(DIM), draw(DIM)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((n, d)) * draw(st.sampled_from([1.0, 1e3]))
    n_special = draw(st.sampled_from([0, 0, 1]))
    if n_special and X.size:
        X.flat[rng.integers(0, X.size)] = draw(st.sampled_from(list(SPECIALS)))
    dtype = draw(VALUE_DTYPES)
    with np.errstate(all="ignore"):
        X = X.astype(dtype)
    if X.ndim == 2 and X.size and X.dtype != object:
        X = as_layout(X, draw(st.sampled_from(["C", "F", "strided", "readonly"])))
    if kind == "regressor":
        y = rng.standard_normal(n)
    else:
        labels = draw(st.sampled_from([np.array([0, 1]), np.array(["a", "b", "c"]),
                                       np.array([-1.0, 2.0, 7.0])]))
        y = labels[rng.integers(0, len(labels), n)]
    estimator = _estimator(kind, draw(st.integers(0, 3)))

    # documented rejections: empty arrays, no features, non-finite values,
    # complex data, a single class
    finite = X.dtype.kind not in "fc" or bool(np.isfinite(X).all())
    invalid = (n == 0 or d == 0 or not finite or X.dtype.kind == "c"
               or (kind != "regressor" and len(np.unique(y)) < 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of 3-iteration fits
        try:
            estimator.fit(X, y)
        except (ValueError, TypeError) as exc:
            # valid input may still make training diverge (values of 1e30):
            # that is the documented non-finite-loss error, nothing else
            assert invalid or "non-finite" in str(exc), f"valid input rejected: {exc!r}"
            return
    assert not invalid, "invalid input was accepted"
    prediction = estimator.predict(X)
    assert prediction.shape == (n,)
    if kind == "regressor":
        assert np.isfinite(prediction).all()
    else:
        assert set(np.unique(prediction)) <= set(estimator.classes_)
        proba = estimator.predict_proba(X)
        assert proba.shape == (n, len(estimator.classes_))
        assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
