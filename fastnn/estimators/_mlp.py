"""What the two MLPs share: hyper-parameter checks, the training loop over
``fastnn.nn.fit`` (early stopping, progress, Ctrl-C), the batch penalty,
saving, and the cached network and optimiser (``_Trainer``)."""
import functools
import inspect
import math
import time
import warnings

import numpy as np

from .._checks import check_real
from .. import functional as F
from .. import init as _init
from .. import distributed as _dist
from .. import nn, optim
from ._base import (BaseEstimator, ConvergenceWarning, _ALWAYS_STOP, _check_dtype, _check_fitted,
                    _is_int, _Progress, _rng_from, _threads, _validate)
from ._state import _decode_param, _encode_param


_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "leaky_relu": "leaky_relu"}
_LEAKY_SLOPE = 0.01


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

    def _store_params(self, params):
        """The constructor's arguments, stored as given (scikit-learn's rule:
        ``__init__`` neither checks nor changes them)."""
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self":
                setattr(self, name, params[name])

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
        from .. import io
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
