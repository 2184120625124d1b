"""What the two MLPs share: hyper-parameter checks, the training loop over
``fastnn.nn.fit`` (early stopping, progress, Ctrl-C), the batch penalty,
saving, and the cached network and optimiser (``_Trainer``)."""
import functools
import inspect
import math
import time
import types
import warnings

import numpy as np
import scipy.sparse
from threadpoolctl import threadpool_limits

from .._checks import check_real
from .. import functional as F
from .. import init as _init
from .. import distributed as _dist
from .. import _kernels, nn, optim
from ._base import (BaseEstimator, ConvergenceWarning, _ALWAYS_STOP, _check_compute_dtype,
                    _check_dtype, _check_fitted,
                    _check_sample_weight, _is_int, _Progress, _rng_from, _SKLEARN, _threads,
                    _validate)
from ._state import _decode_param, _encode_param


_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "leaky_relu": "leaky_relu"}
_LEAKY_SLOPE = 0.01
_STOCHASTIC = ("sgd", "adam")
_NONFINITE = ("Solver produced non-finite parameter weights. The input data may contain large "
              "values and need to be preprocessed.")


def _penalty(weights, alpha, l1):
    """½·alpha·Σ||W||² + l1·Σ|W| (the penalties' numerator), in double: the
    kernel that the compiled epoch computes it with, so both give the same
    bits."""
    if not (alpha or l1):
        return 0.0
    return _kernels.penalty(list(weights), alpha, l1)


def _stochastic_only(method):
    """``partial_fit`` exists for the stochastic solvers only:
    ``hasattr(est, "partial_fit")`` is False with solver="lbfgs", as in
    scikit-learn."""
    def get(self):
        if self.solver not in _STOCHASTIC:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver!r} is not stochastic.")
        return method.__get__(self, type(self))
    return property(get, doc=method.__doc__)


class _BatchPenalty:
    """scikit-learn's batch convention for the penalties, as an ``nn.fit``
    callback: a batch of m samples of weight sum s (s = m without weights)
    adds alpha/(2s)·||W||² (and l1/s·||W||_1) to the batch loss, so the
    optimiser gets weight_decay alpha/s and l1 l1/s.  The epoch loss gets
    Σ_batches (m/n)·(that penalty), evaluated before each update.  The
    compiled epoch of ``nn.fit`` takes it over where there are no sample
    weights (``stack_penalty``, ``batches_done``)."""

    def __init__(self, optimizer, weights, alpha, l1, n):
        self.optimizer, self.weights = optimizer, weights
        self.alpha, self.l1, self.n = alpha, l1, n
        self.stack_penalty = (float(alpha), float(l1))

    def start_epoch(self):
        self.total = 0.0

    def batch_start(self, m, weight):
        self.optimizer.weight_decay = self.alpha / weight
        self.optimizer.l1 = self.l1 / weight
        if self.alpha or self.l1:
            self.total += m / weight * _penalty(self.weights, self.alpha, self.l1)

    def batches_done(self, penalties, last_rows):
        """What batch_start did for each batch of a compiled epoch (the
        penalty of each before its step; the weight of m samples is m):
        the same sums, and the optimiser left as after the last."""
        for value in penalties.tolist():
            self.total += value         # m / m * value
        self.optimizer.weight_decay = self.alpha / last_rows
        self.optimizer.l1 = self.l1 / last_rows

    def epoch_end(self, loss):
        return False

    def epoch_penalty(self):
        return self.total / self.n


class _LbfgsObjective:
    """The full-batch objective L-BFGS minimises, f(θ) = data loss +
    alpha/(2s)·Σ||W||² (s: the weight sum), and its gradient, θ packed as
    scikit-learn packs it (every layer's W, then every layer's b).  One
    evaluation is one compiled forward/backward call (``nn.forward_backward``)."""

    def __init__(self, network, loss, X, target, sample_weight, alpha):
        dense = [layer for layer in network.layers if isinstance(layer, nn.Dense)]
        self.params = [d.weight for d in dense] + [d.bias for d in dense]
        self.n_coefs = len(dense)
        self.network, self.loss, self.X, self.target = network, loss, X, target
        self.sample_weight = sample_weight
        self.weight = X.shape[0] if sample_weight is None else float(np.sum(sample_weight))
        self.alpha = alpha
        self.grad = np.empty(sum(p.size for p in self.params))

    def pack(self):
        return np.concatenate([p.data.ravel() for p in self.params]).astype(np.float64)

    def unpack(self, theta):
        start = 0
        for p in self.params:
            np.copyto(p.data, theta[start:start + p.size].reshape(p.shape), casting="unsafe")
            start += p.size

    def __call__(self, theta):
        self.unpack(theta)
        coefs = [p.data for p in self.params[:self.n_coefs]]
        self.data_loss = nn.forward_backward(self.network, self.loss, self.X, self.target,
                                             self.sample_weight)
        self.penalty = _penalty(coefs, self.alpha, 0.0) / self.weight
        start = 0
        for i, p in enumerate(self.params):
            g = self.grad[start:start + p.size].reshape(p.shape)
            np.copyto(g, p.grad)
            if i < self.n_coefs and self.alpha:
                g += (self.alpha / self.weight) * p.data
            start += p.size
        return self.data_loss + self.penalty, self.grad


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
        if self.solver not in _STOCHASTIC + ("lbfgs",):
            raise ValueError(f"solver must be 'adam', 'sgd' or 'lbfgs', got {self.solver!r}")
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
        for name in ("max_iter", "max_fun"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not (_is_int(self.n_iter_no_change) or self.n_iter_no_change == math.inf):
            raise ValueError(f"n_iter_no_change must be a positive integer or np.inf, "
                             f"got {self.n_iter_no_change!r}")
        for name, low, high, low_open, high_open in (
                ("alpha", 0, math.inf, False, False), ("l1", 0, math.inf, False, False),
                ("learning_rate_init", 0, math.inf, True, False),
                ("power_t", 0, math.inf, False, False), ("tol", 0, math.inf, False, False),
                ("momentum", 0, 1, False, False), ("beta_1", 0, 1, False, True),
                ("beta_2", 0, 1, False, True), ("epsilon", 0, math.inf, True, False),
                ("validation_fraction", 0, 1, True, True), ("dropout", 0, 1, False, True)):
            check_real(getattr(self, name), name, low, high, low_open=low_open,
                        high_open=high_open)
        if self.solver == "lbfgs":
            for name, value in (("dropout", self.dropout), ("l1", self.l1)):
                if value:
                    raise ValueError(f"{name} is not supported with solver='lbfgs' (a "
                                     "deterministic, smooth objective); use 'adam' or 'sgd'")
            if self.comm is not None:
                raise ValueError("comm (data-parallel training) needs a stochastic solver, "
                                 "'adam' or 'sgd'")
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if self.callbacks is not None and not all(callable(cb) for cb in self.callbacks):
            raise ValueError("callbacks must be a list of callables f(estimator, logs)")
        dtype = None if self.dtype is None else _check_dtype(self.dtype)
        if _check_compute_dtype(self.compute_dtype, dtype) and self.solver == "lbfgs":
            raise ValueError("compute_dtype='bfloat16' needs a stochastic solver, 'adam' or "
                             "'sgd' (L-BFGS's line search needs the exact float32 gradient)")
        _threads(self.n_threads)
        return sizes, dtype

    # -- fitting ---------------------------------------------------------------
    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y (for up to ``max_iter`` epochs, or L-BFGS
        iterations).  ``sample_weight``: one non-negative weight per sample
        (None: all 1).  Returns self."""
        with _threads(self.n_threads):
            return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        sizes, dtype = self._check_params(incremental)
        first = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = _validate(self, X, y, reset=first, y_kind=self._kind)
        if dtype is None:  # follow X (scikit-learn's rule: float32 stays, the rest float64)
            dtype = X.dtype if first else self.coefs_[0].dtype
            _check_compute_dtype(self.compute_dtype, dtype)
        if sample_weight is not None:
            if self.comm is not None:
                raise ValueError("sample_weight is not supported with comm")
            sample_weight = _check_sample_weight(sample_weight, X.shape[0], dtype)
        target = self._encode_y(y, first, incremental, classes)
        n_out = self._n_network_outputs(target)
        if not incremental or not hasattr(self, "_rng"):
            self._rng = self._random_source()
        rng = self._rng
        if first:
            self._initialize([X.shape[1]] + sizes + [n_out], dtype, rng)
        elif self.coefs_[-1].shape[1] != n_out:
            raise ValueError(f"y has {n_out} outputs, the fitted network has "
                             f"{self.coefs_[-1].shape[1]}")
        trainer = getattr(self, "_trainer", None)
        if not incremental or trainer is None or not trainer.matches(self, dtype):
            trainer = self._trainer = _Trainer(self, dtype, rng)
        trainer.network.compute_dtype = self.compute_dtype
        X = X.astype(dtype, copy=False)
        if self.solver == "lbfgs":
            self._fit_lbfgs(trainer, X, target, sample_weight)
        else:
            self._run_epochs(trainer, X, target, sample_weight, incremental, rng)
        if not all(np.isfinite(a).all() for a in self.coefs_ + self.intercepts_):
            raise ValueError(_NONFINITE)
        return self

    def _random_source(self):
        """What draws the initial weights, the shuffles and the validation
        split.  For the seeds scikit-learn takes (None, an int, a RandomState)
        it is scikit-learn's RandomState, drawn from in scikit-learn's order,
        so the same seed gives scikit-learn's initial weights, epoch orders
        and split; for a numpy Generator, that Generator; with ``comm``, a
        Generator synchronised over the ranks."""
        rs = self.random_state
        if isinstance(rs, (np.random.Generator, np.random.RandomState)):
            source = rs
        elif rs is None:  # numpy's global RandomState, as scikit-learn (a new one with comm)
            source = np.random.mtrand._rand if self.comm is None else np.random.RandomState()
        else:
            _rng_from(rs)  # checks the seed
            source = np.random.RandomState(rs)
        if self.comm is not None:  # the same weights and shuffles on every rank
            source = _dist.sync_generator(source, self.comm)
        return source

    def _initialize(self, units, dtype, rng):
        """New weights (scikit-learn's scheme: weights and biases drawn from
        U(-b, b), b = sqrt(f / (fan_in + fan_out)), f = 2 for logistic, else 6)."""
        act = _ACTIVATIONS[self.activation]
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            bound = math.sqrt((2.0 if act == "sigmoid" else 6.0) / (fan_in + fan_out))
            if isinstance(rng, np.random.RandomState):  # scikit-learn's draws, in its order
                self.coefs_.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype))
                self.intercepts_.append(rng.uniform(-bound, bound, fan_out).astype(dtype))
            else:
                self.coefs_.append(_init.sklearn_uniform((fan_in, fan_out), act, rng, dtype))
                self.intercepts_.append(_init.uniform((fan_out,), bound, rng, dtype))
        self.n_layers_ = len(units)
        self.n_outputs_ = units[-1] if self._kind == "numeric" else self.n_outputs_
        self.n_iter_ = 0
        self.t_ = 0
        self._no_improvement_count = 0
        self._trainer = None
        if self.solver == "lbfgs":  # scikit-learn keeps no curve or best score for lbfgs
            for name in ("loss_curve_", "best_loss_", "validation_scores_",
                         "best_validation_score_"):
                self.__dict__.pop(name, None)
            return
        self.loss_curve_ = []
        self.best_loss_ = np.inf
        self.validation_scores_ = None
        self.best_validation_score_ = None
        if self.early_stopping or self.validation_data is not None:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
        if self.early_stopping:
            self.best_loss_ = None

    def _split_validation(self, X, target, sample_weight, rng):
        """scikit-learn's held-out validation set: ``validation_fraction`` of
        the samples, stratified by class for single-output classifiers
        (scikit-learn's own train_test_split where it is installed)."""
        n = X.shape[0]
        strata = self._strata(target)
        if _SKLEARN:
            from sklearn.model_selection import train_test_split
            seed = rng if isinstance(rng, np.random.RandomState) else int(rng.integers(2**31 - 1))
            train, val = train_test_split(np.arange(n), test_size=self.validation_fraction,
                                          random_state=seed, stratify=strata)
        else:
            train, val = self._own_split(n, strata, rng)
        if len(val) < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        w = sample_weight  # (the training rows stay in the split's order, as scikit-learn's)
        return (X[train], target[train], None if w is None else w[train],
                X[val], target[val], None if w is None else w[val])

    def _own_split(self, n, strata, rng):
        """The split without scikit-learn: ceil(fraction·n) samples, each
        stratum keeping at least one training sample."""
        n_val = math.ceil(self.validation_fraction * n)
        perm = rng.permutation(n)
        if strata is None:
            return perm[n_val:], perm[:n_val]
        codes = np.unique(strata, axis=0, return_inverse=True)[1].ravel()[perm]
        order = perm[np.argsort(codes, kind="stable")]
        counts = np.bincount(codes)
        counts = counts[counts > 0]
        take = np.minimum(np.round(counts * n_val / n).astype(np.int64), counts - 1)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        val = np.concatenate([order[s:s + k] for s, k in zip(starts, take)])
        return np.setdiff1d(perm, val), np.sort(val)

    def _strata(self, target):
        return None

    def _validation_set(self, X, target, sample_weight, early, rng):
        if self.validation_data is not None:
            try:
                X_val, y_val = self.validation_data
            except (TypeError, ValueError):
                raise ValueError("validation_data must be a pair (X_val, y_val)") from None
            X_val, y_val = _validate(self, X_val, y_val, reset=False, y_kind=self._kind)
            return X, target, sample_weight, X_val, self._encode_y(y_val, False, True, None), None
        if early:
            return self._split_validation(X, target, sample_weight, rng)
        return X, target, sample_weight, None, None, None

    def _run_epochs(self, trainer, X, target, sample_weight, incremental, rng):
        early = self.early_stopping and not incremental
        X, target, sample_weight, X_val, t_val, w_val = self._validation_set(
            X, target, sample_weight, early, rng)
        if X_val is not None and self.validation_scores_ is None:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
        n = X.shape[0]
        batch_size = min(200, n) if self.batch_size == "auto" else self.batch_size
        if batch_size > n:
            warnings.warn("Got `batch_size` larger than the sample size. It is going to be "
                          "clipped")
            batch_size = n
        penalty = _BatchPenalty(trainer.optimizer, self.coefs_, self.alpha, self.l1, n)
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
        progress = _Progress(self.verbose and _dist.is_root(self.comm))
        train = nn.fit if self.comm is None else functools.partial(_dist.fit, comm=self.comm)
        order = np.arange(n)  # shuffled on from epoch to epoch, as scikit-learn's
        self.n_iter_ = 0  # as scikit-learn: the epochs of this call (1 for partial_fit)
        try:
            for _ in range(self.max_iter):
                start = time.perf_counter()
                penalty.start_epoch()
                data_loss = train(trainer.network, trainer.loss, trainer.optimizer, X, target,
                                  epochs=1, batch_size=batch_size, shuffle=self.shuffle, rng=rng,
                                  sample_weight=sample_weight, callbacks=callbacks,
                                  order=order)[0]
                speed = n / max(time.perf_counter() - start, 1e-12)
                loss = data_loss / self._loss_outputs() + penalty.epoch_penalty()
                self.n_iter_ += 1
                self.t_ += n
                self.loss_ = loss
                self.loss_curve_.append(loss)
                progress.iteration(self.n_iter_, loss)
                diverged = not math.isfinite(loss)
                if diverged and not early:
                    raise ValueError(f"{_NONFINITE} (The training loss became {loss} at epoch "
                                     f"{self.n_iter_}: lower learning_rate_init, scale the "
                                     "input features, or increase alpha.)")
                score = None
                if X_val is not None:
                    score = self._encoded_score(X_val, t_val, w_val)
                    self.validation_scores_.append(score)
                    progress.message(f"Validation score: {score:f}")
                    if score > self.best_validation_score_:
                        self.best_validation_score_ = score
                        if early:
                            self._best_params = [a.copy() for a in self.coefs_ + self.intercepts_]
                if diverged:  # early stopping keeps the best (finite) weights seen
                    break
                if not early:
                    self.best_loss_ = loss if self.best_loss_ is None else min(self.best_loss_, loss)
                stop = stopper.epoch_end(-score if early else loss)
                self._no_improvement_count = stopper.no_improvement_count
                if stop:
                    progress.message(
                        f"{'Validation score' if early else 'Training loss'} did not improve "
                        f"more than tol={self.tol:f} for {self.n_iter_no_change} consecutive "
                        "epochs. Learning rate too small. Stopping."
                        if self.learning_rate == "adaptive" and self.solver == "sgd" else
                        f"{'Validation score' if early else 'Training loss'} did not improve "
                        f"more than tol={self.tol:f} for {self.n_iter_no_change} consecutive "
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
        if early and hasattr(self, "_best_params"):
            for a, best_a in zip(self.coefs_ + self.intercepts_, self._best_params):
                np.copyto(a, best_a)
            del self._best_params

    def _fit_lbfgs(self, trainer, X, target, sample_weight):
        """scipy's L-BFGS-B on the full-batch objective (_LbfgsObjective),
        with scikit-learn's meaning of max_iter (iterations), max_fun
        (function evaluations) and tol (the projected-gradient tolerance)."""
        import scipy.optimize
        objective = _LbfgsObjective(trainer.network, trainer.loss, X, target, sample_weight,
                                    self.alpha)
        progress = _Progress(self.verbose)
        iteration = [0]

        def each_iteration(intermediate_result):
            iteration[0] += 1
            loss = self._lbfgs_loss(objective)
            progress.iteration(iteration[0], loss)
            logs = {"epoch": iteration[0], "loss": loss, "validation_score": None,
                    "learning_rate": None, "samples_per_second": None}
            if any([bool(cb(self, logs)) for cb in self.callbacks or ()]):
                raise StopIteration

        theta = objective.pack()
        status, message = 0, ""
        try:
            # L-BFGS-B's vector updates on one BLAS thread: BLAS threads left
            # spinning between evaluations took the cores from fastnn's team
            # (measured: 3.1 s -> 0.38 s for 200 iterations on digits, 2 cores)
            with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
                # an overflow in the objective shows as a non-finite loss instead
                warnings.simplefilter("ignore", RuntimeWarning)
                result = scipy.optimize.minimize(
                    objective, theta, method="L-BFGS-B", jac=True, callback=each_iteration,
                    options={"maxfun": self.max_fun, "maxiter": self.max_iter,
                             "gtol": self.tol})
            theta, n_iter, status, message = result.x, result.nit, result.status, result.message
        except KeyboardInterrupt:  # keep the last parameters evaluated
            warnings.warn("Training interrupted by user.")
            theta, n_iter = None, iteration[0]
        if theta is not None:
            objective(theta)  # the parameters (and loss_) of the solution
        if status not in (0, 99):  # 99: a callback asked to stop
            hint = ("Increase the number of iterations (max_iter={}) or max_fun (max_fun={}), "
                    "or scale the data.".format(self.max_iter, self.max_fun))
            if status == 2 and X.dtype == np.float32:  # the line search hit float32 rounding
                hint = ("In float32 the objective is flat below its rounding error: "
                        "dtype=np.float64 (or dtype=None with float64 X) reaches a smaller tol.")
            warnings.warn(f"lbfgs failed to converge after {n_iter} iteration(s) "
                          f"(status={status}): {message}. {hint}", ConvergenceWarning)
        self.n_iter_ = min(n_iter, self.max_iter)
        self.loss_ = self._lbfgs_loss(objective)

    @property
    def _optimizer(self):
        """What scikit-learn code reads of its optimiser: ``learning_rate``,
        the current rate of the stochastic solver."""
        trainer = self.__dict__.get("_trainer")
        if trainer is None or trainer.optimizer is None:
            raise AttributeError(f"{type(self).__name__} has no stochastic optimizer yet")
        return types.SimpleNamespace(learning_rate=trainer.optimizer.lr)

    def _lbfgs_loss(self, objective):
        """The reported loss of the last evaluation (scikit-learn's convention:
        the squared error averaged over outputs)."""
        return objective.data_loss / self._loss_outputs() + objective.penalty

    def _loss_grad_lbfgs(self, packed_coef_inter, X, y, sample_weight, activations, deltas,
                         coef_grads, intercept_grads):
        """scikit-learn's private entry point: the objective and its packed
        gradient at ``packed_coef_inter`` on (X, y) as scikit-learn passes
        them (y binarised for classifiers), in X's dtype.  The scratch lists
        are scikit-learn's and are not needed here."""
        _check_fitted(self)
        X = np.asarray(X)
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        act, last = _ACTIVATIONS[self.activation], len(self.coefs_) - 1
        network = nn.Sequential(*[
            nn.Dense(W.shape[0], W.shape[1], "identity" if i == last else act,
                     alpha=_LEAKY_SLOPE, dtype=dtype, init="zeros")
            for i, W in enumerate(self.coefs_)])
        y = np.asarray(y)
        target = (y.astype(np.int64) if isinstance(self._make_loss(), nn.SoftmaxCrossEntropy)
                  and y.ndim == 1 else y.astype(dtype).reshape(len(y), -1))
        objective = _LbfgsObjective(network, self._make_loss(), X.astype(dtype, copy=False),
                                    target, sample_weight, self.alpha)
        value, grad = objective(np.asarray(packed_coef_inter, np.float64))
        return value, grad.copy()

    def _loss_outputs(self):
        return 1

    # -- prediction ------------------------------------------------------------
    def _forward(self, X):
        """Output-layer values (logits for classifiers) for validated X
        (dense, or CSR: then the first layer runs the sparse product)."""
        act = _ACTIVATIONS[self.activation]
        A = X
        last = len(self.coefs_) - 1
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            kind = "identity" if i == last else act
            if scipy.sparse.issparse(A):
                A = F.sparse_dense_forward(A, W, b, kind, alpha=_LEAKY_SLOPE)
            else:
                A = F.dense_forward(A, W, b, kind, alpha=_LEAKY_SLOPE, compute_dtype=(
                    self.compute_dtype if W.dtype == np.float32 else None))
        return A

    def _raw_output(self, X):
        _check_fitted(self)
        with _threads(self.n_threads):
            X, _ = _validate(self, X, reset=False)
            return self._forward(X)

    if _SKLEARN:
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.input_tags.sparse = True
            return tags

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
        arrays = {}
        if hasattr(self, "loss_curve_"):  # (not for lbfgs, as scikit-learn)
            arrays["loss_curve_"] = np.asarray(self.loss_curve_, np.float64)
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            arrays[f"coef_{i}"], arrays[f"intercept_{i}"] = W, b
        for name in ("best_loss_", "best_validation_score_", "loss_"):
            if getattr(self, name, None) is not None:
                arrays[name] = np.asarray(getattr(self, name), np.float64)
        if getattr(self, "validation_scores_", None) is not None:
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
        if "loss_curve_" in arrays:
            est.loss_curve_ = [float(v) for v in arrays["loss_curve_"]]
            est.validation_scores_ = ([float(v) for v in arrays["validation_scores_"]]
                                      if "validation_scores_" in arrays else None)
            for name in ("best_loss_", "best_validation_score_"):
                setattr(est, name, float(arrays[name]) if name in arrays else None)
        est.loss_ = float(arrays["loss_"]) if "loss_" in arrays else None
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
                if isinstance(rng, np.random.RandomState):  # Dropout draws from a Generator
                    rng = np.random.default_rng(rng.randint(2**31 - 1))
                layers.append(nn.Dropout(est.dropout, rng=rng))
        self.network = nn.Sequential(*layers)
        dense_layers = [layer for layer in layers if isinstance(layer, nn.Dense)]
        # from now on the estimator's arrays are the network's parameters
        est.coefs_ = [layer.weight.data for layer in dense_layers]
        est.intercepts_ = [layer.bias.data for layer in dense_layers]
        self.loss = est._make_loss()
        params = self.network.parameters()
        if est.solver == "lbfgs":   # the objective is evaluated, no optimiser steps
            self.optimizer = None
        elif est.solver == "sgd":
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
        return (all(a is p.data for a, p in zip(est.coefs_, self.network.parameters()[::2]))
                and est.coefs_[0].dtype == dtype
                and getattr(self.optimizer, "comm", None) is est.comm)
