"""scikit-learn-compatible estimators: MLPClassifier, MLPRegressor, LogisticRegression.

The MLPs take scikit-learn's ``MLPClassifier``/``MLPRegressor`` constructor
parameters with the same names, defaults and meaning (solvers "sgd" and
"adam"; "lbfgs" is not supported), plus ``activation="leaky_relu"``,
``dropout``, ``l1``, ``dtype``, ``n_threads``, ``validation_data`` and
``callbacks``.  They train through :mod:`fastnn.nn` and :mod:`fastnn.optim`.

scikit-learn is optional: when it is importable the estimators derive from
its ``BaseEstimator``/mixins and use its input validation (so they work in
pipelines, grid searches, ``clone`` ...); without it a small fallback base
provides ``get_params``/``set_params``/``score`` and equivalent checks.

Saving (``est.save(path)`` / ``fastnn.load``) goes through
``_get_fastnn_state``/``_from_fastnn_state``: hyper-parameters and fitted
scalars as JSON, arrays as plain numeric/string arrays.  What round-trips:
every fitted attribute needed to predict (bit-identical predictions), the
loss curve and validation scores, ``classes_`` (numeric, bool and str labels
exactly; an object array of str comes back as an object array of the same
str; other objects as their ``str``), ``feature_names_in_``.  Not saved:
``callbacks``, ``validation_data`` and ``comm`` (reset to None), a Generator or
RandomState ``random_state`` (None), the optimiser state (a ``partial_fit``
or warm-started ``fit`` after loading starts a fresh optimiser).
"""
import contextlib
import functools
import inspect
import math
import numbers
import sys
import time
import warnings

import numpy as np

from ._checks import check_real
from . import functional as F
from . import init as _init
from . import distributed as _dist
from . import nn, optim
from ._config import num_threads

try:  # scikit-learn is optional
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, NotFittedError
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
    _SKLEARN = True
except ImportError:
    _SKLEARN = False

__all__ = ["LogisticRegression", "MLPClassifier", "MLPRegressor", "NotFittedError",
           "ConvergenceWarning"]


# ---------------------------------------------------------------------------
# fallback base classes and checks (used when scikit-learn is not installed)
# ---------------------------------------------------------------------------
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


def _check_X_own(X, name="X"):
    """Own version of the checks scikit-learn's check_array makes."""
    if X is None:
        raise ValueError(f"{name} must be an array of numbers, got None")
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"sparse {name} is not supported; convert it with {name}.toarray()")
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
    n_features_in_ (set when ``reset``, checked otherwise)."""
    if y_kind is not None and y is None:
        raise ValueError(f"{type(est).__name__} requires y to be passed, but the target y is None.")
    if _SKLEARN:
        if y_kind is None:
            return validate_data(est, X, reset=reset, dtype=(np.float64, np.float32)), None
        X, y = validate_data(est, X, y, reset=reset, dtype=(np.float64, np.float32),
                             multi_output=True, y_numeric=y_kind == "numeric")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y
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


def _check_fitted(est):
    check_is_fitted(est)


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _is_int(value, low=1):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


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


class _Progress:
    """Per-epoch progress: a tqdm bar when tqdm is installed, printed lines otherwise."""

    def __init__(self, verbose, total, name):
        self.bar = None
        self.enabled = bool(verbose)
        if self.enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=name, unit="epoch")
            except ImportError:
                pass

    def update(self, epoch, loss, val_score, speed):
        if not self.enabled:
            return
        fields = {"loss": f"{loss:.6f}"}
        if val_score is not None:
            fields["validation score"] = f"{val_score:.6f}"
        fields["samples/s"] = f"{speed:,.0f}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(fields)
        else:
            print(f"Epoch {epoch}, " + ", ".join(f"{k} = {v}" for k, v in fields.items()))
            sys.stdout.flush()

    def message(self, text):
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _Unsaveable(Exception):
    pass


def _encode_param(value):
    """A constructor parameter as JSON; None when it cannot be saved
    (callbacks, validation data, random generators)."""
    try:
        return _to_json(value)
    except _Unsaveable:
        return None


def _to_json(value):
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"__dtype__": np.dtype(value).name, "type": True}
    if isinstance(value, np.dtype):
        return {"__dtype__": value.name, "type": False}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise _Unsaveable


def _decode_param(value):
    if isinstance(value, dict):
        if "__dtype__" in value:
            dt = np.dtype(value["__dtype__"])
            return dt.type if value["type"] else dt
        if "__tuple__" in value:
            return tuple(_decode_param(v) for v in value["__tuple__"])
        raise ValueError(f"unexpected parameter value {value!r}")
    if isinstance(value, list):
        return [_decode_param(v) for v in value]
    return value


def _classes_state(classes):
    """classes_ as a plain array (+ its kind) for saving."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "biufU":
        return classes, "plain"
    return classes.astype(str), "object"


def _classes_from_state(arr, kind):
    return arr.astype(object) if kind == "object" else arr


# ---------------------------------------------------------------------------
# multi-layer perceptrons
# ---------------------------------------------------------------------------
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "leaky_relu": "leaky_relu"}
_LEAKY_SLOPE = 0.01
# AdaptiveLR with this min_lr stops as soon as the no-improvement count runs
# out (scikit-learn's rule for every solver/schedule but sgd + "adaptive")
_ALWAYS_STOP = sys.float_info.max


class _BatchPenalty:
    """scikit-learn's batch-size convention for the penalties, as an
    ``nn.fit`` callback: a batch of m samples adds alpha/(2m)·||W||² (and
    l1/m·||W||_1) to the batch loss, so the optimiser gets weight_decay
    alpha/m and l1 l1/m.  The epoch loss gets Σ_batches of the penalty
    (weighted by m, as the data loss), evaluated before each update."""

    def __init__(self, optimizer, weights, alpha, l1, n, batch_size):
        self.optimizer, self.weights = optimizer, weights
        self.alpha, self.l1, self.n, self.batch_size = alpha, l1, n, batch_size

    def start_epoch(self):
        self.seen, self.total = 0, 0.0
        self._prepare(min(self.batch_size, self.n))

    def _prepare(self, m):
        self.optimizer.weight_decay = self.alpha / m
        self.optimizer.l1 = self.l1 / m
        if self.alpha:
            self.total += 0.5 * self.alpha * sum(float(np.dot(w.ravel(), w.ravel()))
                                                 for w in self.weights)
        if self.l1:
            self.total += self.l1 * sum(float(np.abs(w).sum()) for w in self.weights)

    def batch_end(self, m):
        self.seen += m
        if self.seen < self.n:
            self._prepare(min(self.batch_size, self.n - self.seen))

    def epoch_end(self, loss):
        return False

    def epoch_penalty(self):
        return self.total / self.n


class _BaseMLP(BaseEstimator):
    """Shared fit/predict machinery of MLPClassifier and MLPRegressor."""

    _kind = None  # "class" or "numeric"

    def _check_params(self, incremental):
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported by fastnn; use solver='adam' or "
                             "'sgd'")
        if self.solver not in ("sgd", "adam"):
            raise ValueError(f"solver must be 'adam' or 'sgd', got {self.solver!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError(f"learning_rate must be 'constant', 'invscaling' or 'adaptive', "
                             f"got {self.learning_rate!r}")
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if not all(_is_int(s) for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {sizes}")
        if not (self.batch_size == "auto" or _is_int(self.batch_size)):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, "
                             f"got {self.batch_size!r}")
        for name in ("max_iter", "n_iter_no_change"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name, low, high, low_open, high_open in (
                ("alpha", 0, math.inf, False, False), ("l1", 0, math.inf, False, False),
                ("learning_rate_init", 0, math.inf, True, False),
                ("power_t", 0, math.inf, False, False), ("tol", 0, math.inf, False, False),
                ("momentum", 0, 1, False, False), ("beta_1", 0, 1, False, True),
                ("beta_2", 0, 1, False, True), ("epsilon", 0, math.inf, True, False),
                ("validation_fraction", 0, 1, True, True), ("dropout", 0, 1, False, True)):
            check_real(getattr(self, name), name, low, high, low_open=low_open,
                        high_open=high_open)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if self.callbacks is not None and not all(callable(cb) for cb in self.callbacks):
            raise ValueError("callbacks must be a list of callables f(estimator, logs)")
        _threads(self.n_threads)
        return sizes, _check_dtype(self.dtype)

    # -- fitting ---------------------------------------------------------------
    def fit(self, X, y):
        """Fit the model to X and y (for up to ``max_iter`` epochs).  Returns self."""
        with _threads(self.n_threads):
            return self._fit(X, y, incremental=False)

    def _fit(self, X, y, incremental, classes=None):
        sizes, dtype = self._check_params(incremental)
        first = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = _validate(self, X, y, reset=first, y_kind=self._kind)
        target = self._encode_y(y, first, incremental, classes)
        n_out = self._n_network_outputs(target)
        if not incremental or not hasattr(self, "_rng"):
            self._rng = _rng_from(self.random_state)
            if self.comm is not None:  # same initial weights and shuffles on every rank
                self._rng = _dist.sync_generator(self._rng, self.comm)
        rng = self._rng
        if first:
            self._initialize([X.shape[1]] + sizes + [n_out], dtype, rng)
        elif self.coefs_[-1].shape[1] != n_out:
            raise ValueError(f"y has {n_out} outputs, the fitted network has "
                             f"{self.coefs_[-1].shape[1]}")
        trainer = getattr(self, "_trainer", None)
        if not incremental or trainer is None or not trainer.matches(self, dtype):
            trainer = self._trainer = _Trainer(self, dtype, rng)
        self._run_epochs(trainer, X, target, incremental, rng)
        return self

    def _initialize(self, units, dtype, rng):
        """New weights (scikit-learn's scheme: weights and biases drawn from
        U(-b, b), b = sqrt(f / (fan_in + fan_out)), f = 2 for logistic, else 6)."""
        act = _ACTIVATIONS[self.activation]
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            self.coefs_.append(_init.sklearn_uniform((fan_in, fan_out), act, rng, dtype))
            bound = math.sqrt((2.0 if act == "sigmoid" else 6.0) / (fan_in + fan_out))
            self.intercepts_.append(_init.uniform((fan_out,), bound, rng, dtype))
        self.n_layers_ = len(units)
        self.n_outputs_ = units[-1] if self._kind == "numeric" else self.n_outputs_
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self.best_loss_ = np.inf
        self.validation_scores_ = None
        self.best_validation_score_ = None
        if self.early_stopping or self.validation_data is not None:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
        if self.early_stopping:
            self.best_loss_ = None
        self._trainer = None

    def _split_validation(self, X, target, rng):
        """scikit-learn's held-out validation set: ceil(fraction·n) samples,
        stratified by class for single-output classifiers."""
        n = len(X)
        n_val = math.ceil(self.validation_fraction * n)
        perm = rng.permutation(n)
        if self._kind == "class" and target.ndim == 1:
            strata = target.ravel()[perm]
            order = perm[np.argsort(strata, kind="stable")]
            counts = np.bincount(strata.astype(np.int64))
            counts = counts[counts > 0]
            take = np.minimum(np.round(counts * n_val / n).astype(np.int64), counts - 1)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            val = np.concatenate([order[s:s + k] for s, k in zip(starts, take)])
        else:
            val = perm[:n_val]
        if len(val) < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        mask = np.ones(n, bool)
        mask[val] = False
        train = np.flatnonzero(mask)
        val = np.sort(val)
        return X[train], target[train], X[val], target[val]

    def _validation_set(self, X, target, early, rng):
        if self.validation_data is not None:
            try:
                X_val, y_val = self.validation_data
            except (TypeError, ValueError):
                raise ValueError("validation_data must be a pair (X_val, y_val)") from None
            X_val, y_val = _validate(self, X_val, y_val, reset=False, y_kind=self._kind)
            return X, target, X_val, self._encode_y(y_val, False, True, None)
        if early:
            return self._split_validation(X, target, rng)
        return X, target, None, None

    def _run_epochs(self, trainer, X, target, incremental, rng):
        early = self.early_stopping and not incremental
        X, target, X_val, t_val = self._validation_set(X, target, early, rng)
        if X_val is not None and self.validation_scores_ is None:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
        n = len(X)
        batch_size = min(200, n) if self.batch_size == "auto" else self.batch_size
        if batch_size > n:
            warnings.warn("Got `batch_size` larger than the sample size. It is going to be "
                          "clipped")
            batch_size = n
        penalty = _BatchPenalty(trainer.optimizer, self.coefs_, self.alpha, self.l1, n, batch_size)
        callbacks = [penalty] + trainer.schedules
        if trainer.invscaling is not None:
            trainer.invscaling.samples_seen = self.t_
        # scikit-learn's no-improvement count (on the loss, or on minus the
        # validation score with early stopping) and its "adaptive" rule
        stopper = optim.AdaptiveLR(
            trainer.optimizer, tol=self.tol, n_iter_no_change=self.n_iter_no_change,
            min_lr=1e-6 if self.solver == "sgd" and self.learning_rate == "adaptive"
            else _ALWAYS_STOP)
        stopper.no_improvement_count = self._no_improvement_count
        best = (-self.best_validation_score_ if early else self.best_loss_)
        stopper.best_loss = math.inf if best is None else best
        progress = _Progress(self.verbose and _dist.is_root(self.comm),
                             1 if incremental else self.max_iter, type(self).__name__)
        train = nn.fit if self.comm is None else functools.partial(_dist.fit, comm=self.comm)
        self.n_iter_ = 0  # as scikit-learn: the epochs of this call (1 for partial_fit)
        try:
            for _ in range(self.max_iter):
                start = time.perf_counter()
                penalty.start_epoch()
                data_loss = train(trainer.network, trainer.loss, trainer.optimizer, X, target,
                                epochs=1, batch_size=batch_size, shuffle=self.shuffle, rng=rng,
                                callbacks=callbacks)[0]
                speed = n / max(time.perf_counter() - start, 1e-12)
                loss = data_loss / self._loss_outputs() + penalty.epoch_penalty()
                self.n_iter_ += 1
                if not math.isfinite(loss):
                    raise ValueError(f"the training loss became non-finite ({loss}) at epoch "
                                     f"{self.n_iter_}: lower learning_rate_init, scale the "
                                     "input features, or increase alpha")
                self.t_ += n
                self.loss_ = loss
                self.loss_curve_.append(loss)
                score = None
                if X_val is not None:
                    score = self._encoded_score(X_val, t_val)
                    self.validation_scores_.append(score)
                    if score > self.best_validation_score_:
                        self.best_validation_score_ = score
                        if early:
                            self._best_params = [a.copy() for a in self.coefs_ + self.intercepts_]
                if not early:
                    self.best_loss_ = loss if self.best_loss_ is None else min(self.best_loss_, loss)
                progress.update(self.n_iter_, loss, score, speed)
                stop = stopper.epoch_end(-score if early else loss)
                self._no_improvement_count = stopper.no_improvement_count
                if stop:
                    progress.message(
                        f"{'Validation score' if early else 'Training loss'} did not improve "
                        f"more than tol={self.tol} for {self.n_iter_no_change} consecutive "
                        "epochs. Stopping.")
                logs = {"epoch": self.n_iter_, "loss": loss, "validation_score": score,
                        "learning_rate": trainer.optimizer.lr, "samples_per_second": speed}
                for cb in self.callbacks or ():
                    stop = bool(cb(self, logs)) or stop
                if stop or incremental:
                    break
            else:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                              "reached and the optimization hasn't converged yet.",
                              ConvergenceWarning)
        except KeyboardInterrupt:
            # as scikit-learn: keep what was trained so far (every compiled
            # step is whole by the time Python sees the signal)
            warnings.warn("Training interrupted by user.")
        finally:
            progress.close()
        if early and hasattr(self, "_best_params"):
            for a, best_a in zip(self.coefs_ + self.intercepts_, self._best_params):
                np.copyto(a, best_a)
            del self._best_params

    def _loss_outputs(self):
        return 1

    # -- prediction ------------------------------------------------------------
    def _forward(self, X):
        """Output-layer values (logits for classifiers) for validated X."""
        act = _ACTIVATIONS[self.activation]
        A = X
        last = len(self.coefs_) - 1
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            A = F.dense_forward(A, W, b, "identity" if i == last else act, alpha=_LEAKY_SLOPE)
        return A

    def _raw_output(self, X):
        _check_fitted(self)
        with _threads(self.n_threads):
            X, _ = _validate(self, X, reset=False)
            return self._forward(X)

    # -- saving ----------------------------------------------------------------
    def save(self, path):
        """Save the fitted estimator to ``path`` (see ``fastnn.load``)."""
        from . import io
        return io.save(self, path)

    _scalars = ("n_iter_", "t_", "n_layers_", "n_outputs_", "n_features_in_", "out_activation_")

    def _get_fastnn_state(self):
        _check_fitted(self)
        meta = {"params": {k: _encode_param(v) for k, v in self.get_params().items()},
                "fitted": {k: getattr(self, k) for k in self._scalars},
                "n_coefs": len(self.coefs_)}
        arrays = {"loss_curve_": np.asarray(self.loss_curve_, np.float64)}
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            arrays[f"coef_{i}"], arrays[f"intercept_{i}"] = W, b
        for name in ("best_loss_", "best_validation_score_", "loss_"):
            if getattr(self, name, None) is not None:
                arrays[name] = np.asarray(getattr(self, name), np.float64)
        if self.validation_scores_ is not None:
            arrays["validation_scores_"] = np.asarray(self.validation_scores_, np.float64)
        if hasattr(self, "feature_names_in_"):
            arrays["feature_names_in_"] = np.asarray(self.feature_names_in_).astype(str)
        self._extra_state(meta, arrays)
        return meta, arrays

    def _extra_state(self, meta, arrays):
        pass

    @classmethod
    def _from_fastnn_state(cls, meta, arrays):
        est = cls(**{k: _decode_param(v) for k, v in meta["params"].items()})
        for k, v in meta["fitted"].items():
            setattr(est, k, v)
        n = meta["n_coefs"]
        est.coefs_ = [np.array(arrays[f"coef_{i}"]) for i in range(n)]
        est.intercepts_ = [np.array(arrays[f"intercept_{i}"]) for i in range(n)]
        est.loss_curve_ = [float(v) for v in arrays["loss_curve_"]]
        for name in ("best_loss_", "best_validation_score_", "loss_"):
            setattr(est, name, float(arrays[name]) if name in arrays else None)
        est.validation_scores_ = ([float(v) for v in arrays["validation_scores_"]]
                                  if "validation_scores_" in arrays else None)
        if "feature_names_in_" in arrays:
            est.feature_names_in_ = np.asarray(arrays["feature_names_in_"]).astype(object)
        est._no_improvement_count = 0
        est._restore_extra(meta, arrays)
        return est

    def _restore_extra(self, meta, arrays):
        pass


class _Trainer:
    """The training objects of an MLP: a Sequential sharing the estimator's
    coefs_/intercepts_ arrays, its loss, optimiser and LR schedules."""

    def __init__(self, est, dtype, rng):
        act = _ACTIVATIONS[est.activation]
        layers, last = [], len(est.coefs_) - 1
        for i, (W, b) in enumerate(zip(est.coefs_, est.intercepts_)):
            dense = nn.Dense(W.shape[0], W.shape[1], "identity" if i == last else act,
                             alpha=_LEAKY_SLOPE, dtype=dtype,
                             init=lambda shape, rng=None, dtype=None, W=W: W)
            dense.bias.data[...] = b
            layers.append(dense)
            if i < last and est.dropout > 0:
                layers.append(nn.Dropout(est.dropout, rng=rng))
        self.network = nn.Sequential(*layers)
        dense_layers = [layer for layer in layers if isinstance(layer, nn.Dense)]
        # from now on the estimator's arrays are the network's parameters
        est.coefs_ = [layer.weight.data for layer in dense_layers]
        est.intercepts_ = [layer.bias.data for layer in dense_layers]
        self.loss = est._make_loss()
        params = self.network.parameters()
        if est.solver == "sgd":
            self.optimizer = optim.SGD(params, lr=est.learning_rate_init, momentum=est.momentum,
                                       nesterov=est.nesterovs_momentum)
        else:
            self.optimizer = optim.Adam(params, lr=est.learning_rate_init,
                                        betas=(est.beta_1, est.beta_2), eps=est.epsilon)
        if est.comm is not None:  # gradients averaged over the ranks at each step
            self.optimizer = _dist.DistributedOptimizer(self.optimizer, est.comm)
        self.invscaling = None
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            self.invscaling = optim.InverseScalingLR(self.optimizer, power_t=est.power_t)
        self.schedules = [self.invscaling] if self.invscaling is not None else []

    def matches(self, est, dtype):
        """Still bound to the estimator's arrays (not replaced since)?"""
        return (all(a is b for a, b in zip(est.coefs_, self.network.parameters()[::2]))
                and est.coefs_[0].dtype == dtype
                and getattr(self.optimizer, "comm", None) is est.comm)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, a drop-in for scikit-learn's.

    Softmax output and cross-entropy for more than two classes, one logistic
    output for two (as scikit-learn), independent logistic outputs for a
    multilabel indicator ``y``.  Parameters as in
    ``sklearn.neural_network.MLPClassifier`` (solver "lbfgs" excepted), plus:

    activation : also "leaky_relu" (slope 0.01).
    l1 : float, default 0.  L1 penalty with alpha's batch convention
        (l1/m·Σ|W| per batch of m samples; weights clipped at zero).
    dropout : float in [0, 1), default 0.  Inverted dropout after each hidden layer.
    dtype : float32 (default) or float64, the dtype of the weights and computations.
    n_threads : int or None.  Threads for fit/predict (None: fastnn's current setting).
    validation_data : (X_val, y_val) or None.  A validation set scored after every
        epoch (``validation_scores_``); with ``early_stopping=True`` it replaces the
        split-off ``validation_fraction``.
    callbacks : list of callables ``f(estimator, logs)`` called after every epoch with
        logs = {"epoch", "loss", "validation_score", "learning_rate",
        "samples_per_second"}; a True return value stops training.
    comm : an mpi4py communicator (e.g. ``MPI.COMM_WORLD``) or None.  Data-parallel
        training (:mod:`fastnn.distributed`): call ``fit`` on every rank with the same
        X and y; each rank computes its part of every minibatch, the gradients are
        averaged over the ranks, and every rank ends with the same model, the one a
        single process would train (up to rounding).  Not saved by ``save``.
    """

    _kind = "class"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 l1=0.0, dropout=0.0, dtype=np.float32, n_threads=None, validation_data=None,
                 callbacks=None, comm=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun  # accepted for compatibility; lbfgs only
        self.l1 = l1
        self.dropout = dropout
        self.dtype = dtype
        self.n_threads = n_threads
        self.validation_data = validation_data
        self.callbacks = callbacks
        self.comm = comm

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y).  ``classes`` (all labels) is required on the
        first call and may be omitted afterwards."""
        with _threads(self.n_threads):
            return self._fit(X, y, incremental=True, classes=classes)

    def _encode_y(self, y, first, incremental, classes):
        """Training targets: int64 class indices (softmax), float 0/1
        (logistic, binary or multilabel).  Sets classes_ on the first fit."""
        y = np.asarray(y)
        if y.ndim == 2:  # multilabel indicator
            if not np.isin(y, (0, 1)).all():
                raise ValueError("Unknown label type: a 2-D y must be a multilabel indicator "
                                 "matrix of 0/1 (multiclass-multioutput is not supported)")
            if first:
                self.classes_, self._multilabel, self._binary = np.arange(y.shape[1]), True, False
                self.n_outputs_, self.out_activation_ = y.shape[1], "logistic"
            elif not getattr(self, "_multilabel", False) or y.shape[1] != len(self.classes_):
                raise ValueError(f"y must be a multilabel indicator with {len(self.classes_)} "
                                 "columns, like the data the model was fitted on")
            return y.astype(_check_dtype(self.dtype))
        check_classification_targets(y)
        if incremental and not hasattr(self, "classes_") or (first and classes is not None):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._set_classes(np.unique(np.asarray(classes)))
        elif incremental and classes is not None and not np.array_equal(
                np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={classes!r} is not the same as on the last call to "
                             f"partial_fit, was: {self.classes_!r}")
        elif first:
            labels = np.unique(y)
            if len(labels) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes, "
                                 f"got 1 class: {labels[0]!r}")
            self._set_classes(labels)
        elif getattr(self, "_multilabel", False):
            raise ValueError("y must be a multilabel indicator, like the data the model was "
                             "fitted on")
        elif self.warm_start and not incremental and set(np.unique(y)) != set(self.classes_):
            raise ValueError(f"warm_start can only be used where `y` has the same classes as "
                             f"in the previous call to fit. Previously got {self.classes_}, "
                             f"`y` has {np.unique(y)}")
        idx = np.searchsorted(self.classes_, y)
        idx[idx == len(self.classes_)] = 0
        unknown = self.classes_[idx] != y
        if np.any(unknown):
            raise ValueError(f"`y` has classes not in `self.classes_`: "
                             f"{np.unique(y[unknown])!r}; `self.classes_` is {self.classes_!r}")
        if self._binary:
            return idx.astype(_check_dtype(self.dtype))
        return idx.astype(np.int64)

    def _set_classes(self, classes):
        self.classes_ = classes
        self._multilabel = False
        self._binary = len(classes) <= 2
        self.n_outputs_ = 1 if self._binary else len(classes)
        self.out_activation_ = "logistic" if self._binary else "softmax"

    def _n_network_outputs(self, target):
        return self.n_outputs_

    def _make_loss(self):
        if self.out_activation_ == "logistic":
            return nn.BinaryCrossEntropyWithLogits()
        return nn.SoftmaxCrossEntropy()

    def _proba(self, logits):
        if self.out_activation_ == "softmax":
            return F.softmax(logits)
        p = _sigmoid(logits)
        return p if self._multilabel else _two_columns(p[:, 0])

    def _encoded_predict(self, logits):
        if self._multilabel:
            return (logits > 0).astype(np.int64)
        if self._binary:
            return (logits[:, 0] > 0).astype(np.int64)
        # argmax of the probabilities, so predict agrees with predict_proba on ties
        return np.argmax(F.softmax(logits), axis=1)

    def _encoded_score(self, X, target):
        logits = self._forward(X)
        if not np.isfinite(logits).all():
            return float("nan")
        pred = self._encoded_predict(logits)
        if self._multilabel:
            return float(np.mean(np.all(pred == target, axis=1)))
        return float(np.mean(pred == target.astype(np.int64)))

    def predict(self, X):
        """Predicted class labels (an indicator matrix for multilabel y)."""
        pred = self._encoded_predict(self._raw_output(X))
        return pred if self._multilabel else self.classes_[pred]

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in classes_ order."""
        return self._proba(self._raw_output(X))

    def predict_log_proba(self, X):
        """Logarithm of ``predict_proba`` (log_softmax for the softmax output)."""
        logits = self._raw_output(X)
        if self.out_activation_ == "softmax":
            return F.log_softmax(logits)
        return np.log(self._proba(logits))

    if _SKLEARN:
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.classifier_tags.multi_label = True
            return tags

    def _extra_state(self, meta, arrays):
        arrays["classes_"], meta["classes_kind"] = _classes_state(self.classes_)
        meta["multilabel"] = bool(self._multilabel)

    def _restore_extra(self, meta, arrays):
        self.classes_ = _classes_from_state(np.asarray(arrays["classes_"]), meta["classes_kind"])
        self._multilabel = meta["multilabel"]
        self._binary = not self._multilabel and len(self.classes_) <= 2


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, a drop-in for scikit-learn's.

    Identity output, squared error (½ convention; the reported loss is
    averaged over outputs, as scikit-learn's).  Parameters as in
    ``sklearn.neural_network.MLPRegressor`` (solver "lbfgs" and
    loss="poisson" excepted), plus the extras documented on
    :class:`MLPClassifier` (leaky_relu, l1, dropout, dtype, n_threads,
    validation_data, callbacks, comm).
    """

    _kind = "numeric"

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 l1=0.0, dropout=0.0, dtype=np.float32, n_threads=None, validation_data=None,
                 callbacks=None, comm=None):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun  # accepted for compatibility; lbfgs only
        self.l1 = l1
        self.dropout = dropout
        self.dtype = dtype
        self.n_threads = n_threads
        self.validation_data = validation_data
        self.callbacks = callbacks
        self.comm = comm

    def _check_params(self, incremental):
        if self.loss != "squared_error":
            raise ValueError(f"loss must be 'squared_error' (fastnn does not support "
                             f"{self.loss!r}), got {self.loss!r}")
        return super()._check_params(incremental)

    def partial_fit(self, X, y):
        """One epoch over (X, y)."""
        with _threads(self.n_threads):
            return self._fit(X, y, incremental=True)

    def _encode_y(self, y, first, incremental, classes):
        y = np.asarray(y, dtype=_check_dtype(self.dtype))
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if first:
            self.out_activation_ = "identity"
        return y

    def _n_network_outputs(self, target):
        return target.shape[1]

    def _make_loss(self):
        return nn.MSELoss()

    def _loss_outputs(self):
        return self.n_outputs_  # scikit-learn averages the squared error over outputs

    def _encoded_score(self, X, target):
        pred = self._forward(X)
        if not np.isfinite(pred).all():
            return float("nan")
        return _r2_score(target.astype(np.float64), pred)

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        out = self._raw_output(X)
        return out.ravel() if out.shape[1] == 1 else out


# ---------------------------------------------------------------------------
# logistic regression
# ---------------------------------------------------------------------------
class LogisticRegression(ClassifierMixin, BaseEstimator):
    """Binary (sigmoid) and multinomial (softmax) logistic regression.

    Minimises, as scikit-learn, C·Σ_i loss_i + 0.5·||W||² (penalty="l2"),
    C·Σ_i loss_i + ||W||_1 ("l1") or Σ_i loss_i (None); the intercept is
    not penalised.  Internally the equivalent mean-scaled objective
    mean_i loss_i + penalty/(C·n) is optimised.

    solver : "gd" (default): full-batch proximal gradient descent.  With
        ``learning_rate="auto"`` it is accelerated (FISTA with adaptive
        restart) and the step comes from a backtracking line search started at
        a Lipschitz bound of the data, so it converges to the same optimum as
        scikit-learn's lbfgs; a float ``learning_rate`` gives plain (proximal)
        gradient descent with that fixed step.  Stops when the largest entry
        of the gradient mapping is <= ``tol``.
        "sgd": minibatch SGD (``batch_size``, ``random_state``) for up to
        ``max_iter`` epochs; "auto" learning rate 1/L from the mean squared
        row norm; stops when the epoch loss improves by less than ``tol`` for
        ``n_iter_no_change`` epochs.
    comm : an mpi4py communicator or None: data-parallel training, as for
        :class:`MLPClassifier` (same X, y on every rank; "gd" splits the rows of
        each full-batch gradient over the ranks).
    Binary problems train one weight vector with ``F.logistic_loss_grad``
    (one fused pass over X per evaluation); K > 2 classes a (K, d) softmax
    regression.
    """

    def __init__(self, penalty="l2", *, C=1.0, solver="gd", tol=1e-4, max_iter=1000,
                 learning_rate="auto", fit_intercept=True, batch_size=32, n_iter_no_change=5,
                 random_state=None, verbose=False, dtype=np.float64, n_threads=None, comm=None):
        self.penalty = penalty
        self.C = C
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.fit_intercept = fit_intercept
        self.batch_size = batch_size
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype
        self.n_threads = n_threads
        self.comm = comm

    def _check_params(self):
        if self.penalty not in (None, "l2", "l1"):
            raise ValueError(f"penalty must be None, 'l2' or 'l1', got {self.penalty!r}")
        if self.solver not in ("gd", "sgd"):
            raise ValueError(f"solver must be 'gd' or 'sgd', got {self.solver!r}")
        check_real(self.C, "C", 0, low_open=True)
        check_real(self.tol, "tol", 0)
        if not self.learning_rate == "auto":
            check_real(self.learning_rate, "learning_rate", 0, low_open=True)
        for name in ("max_iter", "batch_size", "n_iter_no_change"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        _threads(self.n_threads)
        return _check_dtype(self.dtype)

    def fit(self, X, y):
        """Fit the model.  Returns self."""
        dtype = self._check_params()
        with _threads(self.n_threads):
            X, y = _validate(self, X, y, reset=True, y_kind="class")
            if y.ndim != 1:
                raise ValueError(f"y must be 1-D class labels, got shape {y.shape}")
            check_classification_targets(y)
            self.classes_, idx = np.unique(y, return_inverse=True)
            if len(self.classes_) < 2:
                raise ValueError(f"LogisticRegression needs samples of at least 2 classes, got "
                                 f"1 class: {self.classes_[0]!r}")
            X = np.ascontiguousarray(X, dtype=dtype)
            n, d = X.shape
            k = 1 if len(self.classes_) == 2 else len(self.classes_)
            # binary: float 0/1 targets; multinomial: int64 class indices
            target = idx.astype(dtype) if k == 1 else idx.astype(np.int64)
            lam = 0.0 if self.penalty is None else 1.0 / (self.C * n)
            if self.solver == "gd":
                W, b = self._fit_gd(X, target, k, lam)
            else:
                W, b = self._fit_sgd(X, target, k, lam)
        self.coef_ = np.ascontiguousarray(W.T)
        self.intercept_ = b
        return self

    # -- full-batch gradient descent ------------------------------------------
    def _smooth(self, X, target, W, b, lam_l2):
        """Mean data loss + lam_l2/2·||W||² and its gradient (gW, gb); with
        ``comm``, X holds this rank's rows and the means are over all ranks'."""
        if X.shape[0] == 0:  # more ranks than samples
            loss, gW, gb = 0.0, np.zeros_like(W), np.zeros_like(b)
        elif W.shape[1] == 1:
            loss, gw, gb = F.logistic_loss_grad(X, W[:, 0], float(b[0]), target)
            gW, gb = gw.reshape(-1, 1), np.array([gb], X.dtype)
        else:
            Z = F.dense_forward(X, W, b)
            loss, G = F.softmax_cross_entropy(Z, target)
            _, gW, gb = F.dense_backward(X, W, Z, G, need_input_grad=False,
                                         overwrite_grad_out=True)
        if self.comm is not None:
            loss, gW, gb = _dist.weighted_mean(self.comm, X.shape[0], loss, gW, gb)
        if lam_l2:
            loss += 0.5 * lam_l2 * float(np.dot(W.ravel(), W.ravel()))
            gW += lam_l2 * W
        if not self.fit_intercept:
            gb[:] = 0
        return loss, gW, gb

    def _fit_gd(self, X, target, k, lam):
        n, d = X.shape
        lam_l2 = lam if self.penalty == "l2" else 0.0
        lam_l1 = lam if self.penalty == "l1" else 0.0

        def prox(W, step):  # soft-thresholding for the l1 term
            if lam_l1:
                return np.sign(W) * np.maximum(np.abs(W) - step * lam_l1, 0)
            return W

        W = np.zeros((d, k), X.dtype)
        b = np.zeros(k, X.dtype)
        fixed = self.learning_rate != "auto"
        # Lipschitz bound of the mean loss's gradient: (1/4 or 1/2)·||[X 1]||_F²/n
        L = (0.25 if k == 1 else 0.5) * (float(np.einsum("ij,ij->", X, X)) / n
                                         + self.fit_intercept) + lam_l2
        L = 1.0 / self.learning_rate if fixed else L
        if self.comm is not None:  # each rank evaluates the loss on its rows only
            start, stop = _dist.shard_range(n, self.comm)
            X, target = X[start:stop], target[start:stop]
        yW, yb, t = W, b, 1.0
        converged = False
        progress = _Progress(self.verbose and _dist.is_root(self.comm), self.max_iter,
                             "LogisticRegression")
        for it in range(1, self.max_iter + 1):
            start = time.perf_counter()
            fy, gW, gb = self._smooth(X, target, yW, yb, lam_l2)
            while True:
                nW, nb = prox(yW - gW / L, 1.0 / L), yb - gb / L
                if fixed:
                    break
                dW, db = nW - yW, nb - yb
                fn = self._smooth(X, target, nW, nb, lam_l2)[0]
                quad = float(np.vdot(gW, dW) + np.vdot(gb, db)) + 0.5 * L * float(
                    np.vdot(dW, dW) + np.vdot(db, db))
                # sufficient decrease (with slack for rounding near the optimum)
                if fn <= fy + quad + 1e-12 * abs(fy) or L > 1e30:
                    break
                L *= 2.0
            if not math.isfinite(fy):
                raise ValueError(f"the loss became non-finite at iteration {it}")
            mapping = L * max(float(np.abs(nW - yW).max()), float(np.abs(nb - yb).max()))
            progress.update(it, fy, None, n / max(time.perf_counter() - start, 1e-12))
            if fixed:
                W, b, yW, yb = nW, nb, nW, nb
            else:
                # FISTA momentum, restarted when it points uphill (O'Donoghue & Candès)
                if float(np.vdot(yW - nW, nW - W) + np.vdot(yb - nb, nb - b)) > 0:
                    t = 1.0
                t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
                beta = (t - 1.0) / t_next
                yW, yb = nW + beta * (nW - W), nb + beta * (nb - b)
                W, b, t = nW, nb, t_next
                L *= 0.9  # let the step grow again
            if mapping <= self.tol:
                converged = True
                break
        progress.close()
        self.n_iter_ = np.array([it])
        if not converged:
            warnings.warn(f"LogisticRegression (solver='gd') did not converge in "
                          f"max_iter={self.max_iter} iterations; increase max_iter or scale "
                          "the data", ConvergenceWarning)
        return W, b

    # -- minibatch SGD ----------------------------------------------------------
    def _fit_sgd(self, X, target, k, lam):
        n, d = X.shape
        dense = nn.Dense(d, k, init="zeros", bias=self.fit_intercept, dtype=X.dtype)
        model = nn.Sequential(dense)
        loss = nn.BinaryCrossEntropyWithLogits() if k == 1 else nn.SoftmaxCrossEntropy()
        if self.learning_rate == "auto":
            lr = 1.0 / ((0.25 if k == 1 else 0.5) * (float(np.einsum("ij,ij->", X, X)) / n
                                                     + self.fit_intercept) + lam)
        else:
            lr = self.learning_rate
        opt = optim.SGD(model.parameters(), lr=lr,
                        weight_decay=lam if self.penalty == "l2" else 0.0,
                        l1=lam if self.penalty == "l1" else 0.0)
        rng, train = _rng_from(self.random_state), nn.fit
        if self.comm is not None:
            opt = _dist.DistributedOptimizer(opt, self.comm)
            train = functools.partial(_dist.fit, comm=self.comm)
        stopper = optim.AdaptiveLR(opt, tol=self.tol, n_iter_no_change=self.n_iter_no_change,
                                   min_lr=_ALWAYS_STOP)
        history = train(model, loss, opt, X, target, epochs=self.max_iter,
                        batch_size=min(self.batch_size, n), rng=rng, callbacks=[stopper])
        if not np.isfinite(history).all():
            bad = int(np.flatnonzero(~np.isfinite(history))[0]) + 1
            raise ValueError(f"the training loss became non-finite at epoch {bad}: lower "
                             "learning_rate or scale the data")
        self.n_iter_ = np.array([len(history)])
        self.loss_curve_ = history
        if len(history) == self.max_iter:
            warnings.warn(f"LogisticRegression (solver='sgd') did not converge in "
                          f"max_iter={self.max_iter} epochs", ConvergenceWarning)
        b = dense.bias.data if self.fit_intercept else np.zeros(k, X.dtype)
        return dense.weight.data, b

    # -- prediction ----------------------------------------------------------------
    def decision_function(self, X):
        """Scores X·coef_ᵀ + intercept_: shape (n,) for two classes, (n, K) otherwise."""
        _check_fitted(self)
        with _threads(self.n_threads):
            X, _ = _validate(self, X, reset=False)
            Z = F.dense_forward(X, self.coef_.T, self.intercept_)
        return Z[:, 0] if Z.shape[1] == 1 else Z

    def predict_proba(self, X):
        """Class probabilities, shape (n, n_classes), columns in classes_ order."""
        Z = self.decision_function(X)
        return _two_columns(_sigmoid(Z)) if Z.ndim == 1 else F.softmax(Z)

    def predict_log_proba(self, X):
        Z = self.decision_function(X)
        return np.log(_two_columns(_sigmoid(Z))) if Z.ndim == 1 else F.log_softmax(Z)

    def predict(self, X):
        """Predicted class labels."""
        Z = self.decision_function(X)
        idx = (Z > 0).astype(np.int64) if Z.ndim == 1 else np.argmax(F.softmax(Z), axis=1)
        return self.classes_[idx]

    # -- saving ----------------------------------------------------------------------
    def save(self, path):
        """Save the fitted estimator to ``path`` (see ``fastnn.load``)."""
        from . import io
        return io.save(self, path)

    def _get_fastnn_state(self):
        _check_fitted(self)
        classes, kind = _classes_state(self.classes_)
        meta = {"params": {k: _encode_param(v) for k, v in self.get_params().items()},
                "n_features_in_": int(self.n_features_in_), "classes_kind": kind}
        arrays = {"coef_": self.coef_, "intercept_": self.intercept_, "classes_": classes,
                  "n_iter_": self.n_iter_}
        if hasattr(self, "feature_names_in_"):
            arrays["feature_names_in_"] = np.asarray(self.feature_names_in_).astype(str)
        return meta, arrays

    @classmethod
    def _from_fastnn_state(cls, meta, arrays):
        est = cls(**{k: _decode_param(v) for k, v in meta["params"].items()})
        est.coef_ = np.array(arrays["coef_"])
        est.intercept_ = np.array(arrays["intercept_"])
        est.n_iter_ = np.array(arrays["n_iter_"])
        est.classes_ = _classes_from_state(np.asarray(arrays["classes_"]), meta["classes_kind"])
        est.n_features_in_ = meta["n_features_in_"]
        if "feature_names_in_" in arrays:
            est.feature_names_in_ = np.asarray(arrays["feature_names_in_"]).astype(object)
        return est
