"""What every estimator shares: scikit-learn's base classes and checks when it
is installed, a small fallback otherwise, and the input and parameter checks."""
import contextlib
import inspect
import numbers
import sys

import numpy as np
import scipy.sparse

from .. import functional as F
from .. import init as _init
from .._config import num_threads

try:  # scikit-learn is optional
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, NotFittedError
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
    _SKLEARN = True
except ImportError:
    _SKLEARN = False


if not _SKLEARN:
    class NotFittedError(ValueError, AttributeError):
        """Raised when an estimator is used before ``fit`` (as scikit-learn's)."""

    class ConvergenceWarning(UserWarning):
        """The solver stopped at ``max_iter`` before converging."""

    class BaseEstimator:
        """get_params/set_params/repr from the constructor signature."""

        @classmethod
        def _get_param_names(cls):
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values()
                          if p.name != "self" and p.kind != p.VAR_KEYWORD)

        def get_params(self, deep=True):
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            valid = self._get_param_names()
            for key, value in params.items():
                if key not in valid:
                    raise ValueError(f"Invalid parameter {key!r} for estimator {self!r}. "
                                     f"Valid parameters are: {valid}")
                setattr(self, key, value)
            return self

        def __repr__(self):
            defaults = {name: p.default for name, p in
                        inspect.signature(type(self).__init__).parameters.items()}
            changed = [f"{k}={v!r}" for k, v in self.get_params().items()
                       if not _same_param(v, defaults.get(k))]
            return f"{type(self).__name__}({', '.join(changed)})"

    class ClassifierMixin:
        _estimator_type = "classifier"

        def score(self, X, y, sample_weight=None):
            """Mean accuracy of ``predict(X)`` against ``y``."""
            pred = self.predict(X)
            correct = np.all(pred == np.asarray(y), axis=1) if pred.ndim == 2 else pred == np.asarray(y)
            return float(np.average(correct, weights=sample_weight))

    class RegressorMixin:
        _estimator_type = "regressor"

        def score(self, X, y, sample_weight=None):
            """Coefficient of determination R² of ``predict(X)``."""
            return _r2_score(np.asarray(y, dtype=np.float64), self.predict(X), sample_weight)

    def check_is_fitted(estimator):
        if not [k for k in vars(estimator) if k.endswith("_") and not k.startswith("__")]:
            raise NotFittedError(f"This {type(estimator).__name__} instance is not fitted yet. "
                                 "Call 'fit' with appropriate arguments before using this "
                                 "estimator.")

    def check_classification_targets(y):
        y = np.asarray(y)
        if y.dtype.kind == "f" and np.any(y != np.round(y)):
            raise ValueError("Unknown label type: continuous. A classifier needs discrete "
                             "class labels, not continuous regression targets.")


def _same_param(a, b):
    try:
        return bool(a is b or a == b)
    except Exception:  # arrays and such: compare by identity only
        return a is b


def _r2_score(y, pred, sample_weight=None):
    """R², averaged uniformly over outputs (scikit-learn's r2_score)."""
    y = y.reshape(len(y), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(y), -1)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    ss_res = (w[:, None] * (y - pred) ** 2).sum(axis=0)
    ss_tot = (w[:, None] * (y - np.average(y, axis=0, weights=w)) ** 2).sum(axis=0)
    ok = ss_tot != 0
    scores = np.where(ss_res == 0, 1.0, 0.0)  # constant target: perfect or 0
    scores[ok] = 1.0 - ss_res[ok] / ss_tot[ok]
    return float(scores.mean())


def _check_sparse_own(X, name):
    """The checks of _check_X_own for a scipy.sparse X; returns CSR, float."""
    X = X.tocsr()
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {X.shape} (at least 1 sample and 1 "
                         f"feature are required)")
    if X.dtype.kind not in "f":
        X = X.astype(np.float64)
    if not np.isfinite(X.data).all():
        raise ValueError(f"Input {name} contains NaN or infinity.")
    return X


def _check_X_own(X, name="X"):
    """Own version of the checks scikit-learn's check_array makes."""
    if X is None:
        raise ValueError(f"{name} must be an array of numbers, got None")
    if scipy.sparse.issparse(X):
        return _check_sparse_own(X, name)
    X = np.asarray(X)
    if X.dtype.kind == "c":
        raise ValueError(f"complex data is not supported in {name}")
    if X.dtype.kind not in "fiub":
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must hold numbers: {exc}") from None
    if X.ndim == 1:
        raise ValueError(f"Expected a 2-D array {name}, got a 1-D array of shape {X.shape}. "
                         f"Reshape your data using {name}.reshape(-1, 1) if it has a single "
                         f"feature or {name}.reshape(1, -1) if it is a single sample.")
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-D array {name}, got {X.ndim} dimensions")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {X.shape} (at least 1 sample and 1 "
                         f"feature are required)")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise ValueError(f"Input {name} contains NaN or infinity.")
    if X.dtype.kind == "b":
        X = X.astype(np.float64)
    return X


def _validate(est, X, y=None, *, reset, y_kind=None):
    """Validate X (and y when y_kind is "class", "numeric") and track
    n_features_in_ (set when ``reset``, checked otherwise).  X: a float32 or
    float64 array, or a scipy.sparse matrix/array, returned as CSR."""
    if y_kind is not None and y is None:
        raise ValueError(f"{type(est).__name__} requires y to be passed, but the target y is None.")
    if _SKLEARN:
        kw = dict(reset=reset, dtype=(np.float64, np.float32), accept_sparse=("csr", "csc"))
        if y_kind is None:
            return _as_csr(validate_data(est, X, **kw)), None
        X, y = validate_data(est, X, y, multi_output=True, y_numeric=y_kind == "numeric", **kw)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return _as_csr(X), y
    X = _check_X_own(X)
    if reset:
        est.n_features_in_ = X.shape[1]
    elif X.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {type(est).__name__} is expecting "
                         f"{est.n_features_in_} features as input.")
    if y_kind is None:
        return X, None
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != len(X):
        raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                         f"X has {len(X)}, y has {y.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim > 2:
        raise ValueError(f"y must be 1-D or 2-D, got shape {y.shape}")
    if y_kind == "numeric" and y.dtype.kind not in "fiub":
        y = y.astype(np.float64)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("Input y contains NaN or infinity.")
    return X, y


def _check_sample_weight(sample_weight, n, dtype):
    """scikit-learn's sample_weight rules: a number (the same weight for every
    sample) or one finite, non-negative weight per sample, not all zero."""
    if isinstance(sample_weight, numbers.Number):
        sample_weight = np.full(n, sample_weight)
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "fiub":
        raise ValueError(f"sample_weight must hold real numbers, got dtype {w.dtype}")
    if w.shape != (n,):
        raise ValueError(f"sample_weight.shape == {w.shape}, expected ({n},)!")
    w = np.ascontiguousarray(w, dtype=dtype)
    if not np.isfinite(w).all():
        raise ValueError("Input sample_weight contains NaN or infinity.")
    if (w < 0).any():
        raise ValueError("Negative values in data passed to sample_weight")
    if not w.any():
        raise ValueError("sample_weight must not be all zero")
    return w


def _as_csr(X):
    """Sparse X as CSR (the compiled first layer's format), dense X as is."""
    return X.tocsr() if scipy.sparse.issparse(X) else X


def _check_fitted(est):
    check_is_fitted(est)


def _is_int(value, low=1):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _check_compute_dtype(compute_dtype, dtype):
    """compute_dtype None, or "bfloat16" with float32 (or, dtype None, a
    float32 X: checked again once X is seen) master weights."""
    if compute_dtype not in (None, "bfloat16"):
        raise ValueError(f"compute_dtype must be None or 'bfloat16', got {compute_dtype!r}")
    if compute_dtype is not None and dtype is not None and np.dtype(dtype) != np.float32:
        raise ValueError(f"compute_dtype={compute_dtype!r} needs float32 weights (dtype="
                         f"np.float32), got dtype {np.dtype(dtype)}")
    return compute_dtype


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _rng_from(random_state):
    """A numpy Generator from scikit-learn style ``random_state``."""
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    if random_state is None or isinstance(random_state, np.random.Generator) or _is_int(random_state, 0):
        return _init.as_generator(random_state)
    raise ValueError(f"random_state must be None, an int >= 0, a numpy Generator or RandomState, "
                     f"got {random_state!r}")


def _threads(n_threads):
    if n_threads is None:
        return contextlib.nullcontext()
    if not _is_int(n_threads):
        raise ValueError(f"n_threads must be None or a positive integer, got {n_threads!r}")
    return num_threads(n_threads)


def _sigmoid(z):
    return F.activation_forward(z, "sigmoid")


def _two_columns(p1):
    """Binary probabilities [1 - p, p] from p = P(class 1)."""
    return np.column_stack([1 - p1, p1])


# AdaptiveLR with this min_lr stops as soon as the no-improvement count runs
# out (scikit-learn's rule for every solver/schedule but sgd + "adaptive")
_ALWAYS_STOP = sys.float_info.max


class _Progress:
    """scikit-learn's verbose output: a line per iteration on stdout."""

    def __init__(self, verbose):
        self.enabled = bool(verbose)

    def iteration(self, n, loss):
        self.message(f"Iteration {n}, loss = {loss:.8f}")

    def message(self, text):
        if self.enabled:
            print(text, flush=True)
