"""LogisticRegression: binary and multinomial, on fastnn's fused kernels."""
import functools
import math
import warnings

import numpy as np
import scipy.sparse

from .._checks import check_real
from .. import functional as F
from .. import distributed as _dist
from .. import nn, optim
from ._base import (BaseEstimator, check_classification_targets, ClassifierMixin,
                    ConvergenceWarning, _ALWAYS_STOP, _check_compute_dtype, _check_dtype,
                    _check_fitted, _check_sample_weight, _is_int, _SKLEARN,
                    _Progress, _rng_from, _sigmoid, _threads, _two_columns, _validate)
from ._state import _classes_from_state, _classes_state, _decode_param, _encode_param


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
    compute_dtype : None (default) or "bfloat16" (with dtype=np.float32).  "sgd":
        the products take bfloat16 operands and accumulate in float32, as for
        :class:`MLPClassifier`.  "gd": X is rounded to bfloat16 once (a copy) and
        the weights stay float32 (its line search needs a smooth objective); this
        models bf16 data and buys no speed (the fit is bound by reading X).
        Prediction rounds both.  A sparse X's products stay float32.
    comm : an mpi4py communicator or None: data-parallel training, as for
        :class:`MLPClassifier` (same X, y on every rank; "gd" splits the rows of
        each full-batch gradient over the ranks).
    Binary problems train one weight vector with ``F.logistic_loss_grad``
    (one fused pass over X per evaluation); K > 2 classes a (K, d) softmax
    regression.
    """

    def __init__(self, penalty="l2", *, C=1.0, solver="gd", tol=1e-4, max_iter=1000,
                 learning_rate="auto", fit_intercept=True, batch_size=32, n_iter_no_change=5,
                 random_state=None, verbose=False, dtype=np.float64, compute_dtype=None,
                 n_threads=None, comm=None):
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
        self.compute_dtype = compute_dtype
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
        dtype = _check_dtype(self.dtype)
        _check_compute_dtype(self.compute_dtype, dtype)
        return dtype

    def fit(self, X, y, sample_weight=None):
        """Fit the model.  ``sample_weight``: one non-negative weight per
        sample (None: all 1); the objective is then the weighted mean loss
        plus ||w||²/(2·C·Σweights), scikit-learn's C·Σ w_i·loss_i + ½||w||²
        scaled.  Returns self."""
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
            X = (X.astype(dtype) if scipy.sparse.issparse(X)
                 else np.ascontiguousarray(X, dtype=dtype))
            n, d = X.shape
            sw = None if sample_weight is None else _check_sample_weight(sample_weight, n, dtype)
            total = n if sw is None else float(np.sum(sw, dtype=np.float64))
            k = 1 if len(self.classes_) == 2 else len(self.classes_)
            # binary: float 0/1 targets; multinomial: int64 class indices
            target = idx.astype(dtype) if k == 1 else idx.astype(np.int64)
            lam = 0.0 if self.penalty is None else 1.0 / (self.C * total)
            if self.solver == "gd":
                if self.compute_dtype is not None and not scipy.sparse.issparse(X):
                    # X rounded to bf16 once (a copy), the weights kept float32: the
                    # line search needs a smooth objective, which rounding the
                    # weights at every evaluation is not
                    X = F._round_bf16(X)
                W, b = self._fit_gd(X, target, sw, k, lam)
            else:
                W, b = self._fit_sgd(X, target, sw, k, lam)
        self.coef_ = np.ascontiguousarray(W.T)
        self.intercept_ = b
        return self

    # -- full-batch gradient descent ------------------------------------------
    def _smooth(self, X, target, sw, W, b, lam_l2):
        """(Weighted) mean data loss + lam_l2/2·||W||² and its gradient (gW,
        gb); with ``comm``, X holds this rank's rows and the means are over
        all ranks'."""
        local = X.shape[0] if sw is None else float(np.sum(sw, dtype=np.float64))
        if local == 0:  # more ranks than samples, or only zero weights here
            loss, gW, gb = 0.0, np.zeros_like(W), np.zeros_like(b)
        elif scipy.sparse.issparse(X):  # the compiled sparse product, both ways
            Z = F.sparse_dense_forward(X, W, b)
            if W.shape[1] == 1:
                loss, G = F.binary_cross_entropy_with_logits(Z, target.reshape(-1, 1),
                                                             sample_weight=sw)
            else:
                loss, G = F.softmax_cross_entropy(Z, target, sample_weight=sw)
            gW, gb = F.sparse_dense_backward(X, W, Z, G, overwrite_grad_out=True)
        elif W.shape[1] == 1:
            loss, gw, gb = F.logistic_loss_grad(X, W[:, 0], float(b[0]), target, sample_weight=sw)
            gW, gb = gw.reshape(-1, 1), np.array([gb], X.dtype)
        else:
            Z = F.dense_forward(X, W, b)
            loss, G = F.softmax_cross_entropy(Z, target, sample_weight=sw)
            _, gW, gb = F.dense_backward(X, W, Z, G, need_input_grad=False,
                                         overwrite_grad_out=True)
        if self.comm is not None:
            loss, gW, gb = _dist.weighted_mean(self.comm, local, loss, gW, gb)
        if lam_l2:
            loss += 0.5 * lam_l2 * float(np.dot(W.ravel(), W.ravel()))
            gW += lam_l2 * W
        if not self.fit_intercept:
            gb[:] = 0
        return loss, gW, gb

    def _fit_gd(self, X, target, sw, k, lam):
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
        # (rows weighted by sw/mean(sw) with weights)
        L = (0.25 if k == 1 else 0.5) * (_mean_square_norm(X, sw) + self.fit_intercept) + lam_l2
        L = 1.0 / self.learning_rate if fixed else L
        if self.comm is not None:  # each rank evaluates the loss on its rows only
            start, stop = _dist.shard_range(n, self.comm)
            X, target = X[start:stop], target[start:stop]
            sw = None if sw is None else sw[start:stop]
        yW, yb, t = W, b, 1.0
        converged = False
        progress = _Progress(self.verbose and _dist.is_root(self.comm))
        for it in range(1, self.max_iter + 1):
            fy, gW, gb = self._smooth(X, target, sw, yW, yb, lam_l2)
            while True:
                nW, nb = prox(yW - gW / L, 1.0 / L), yb - gb / L
                if fixed:
                    break
                dW, db = nW - yW, nb - yb
                fn = self._smooth(X, target, sw, nW, nb, lam_l2)[0]
                quad = float(np.vdot(gW, dW) + np.vdot(gb, db)) + 0.5 * L * float(
                    np.vdot(dW, dW) + np.vdot(db, db))
                # sufficient decrease (with slack for rounding near the optimum)
                if fn <= fy + quad + 1e-12 * abs(fy) or L > 1e30:
                    break
                L *= 2.0
            if not math.isfinite(fy):
                raise ValueError(f"the loss became non-finite at iteration {it}")
            mapping = L * max(float(np.abs(nW - yW).max()), float(np.abs(nb - yb).max()))
            progress.iteration(it, fy)
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
        self.n_iter_ = np.array([it])
        if not converged:
            warnings.warn(f"LogisticRegression (solver='gd') did not converge in "
                          f"max_iter={self.max_iter} iterations; increase max_iter or scale "
                          "the data", ConvergenceWarning)
        return W, b

    # -- minibatch SGD ----------------------------------------------------------
    def _fit_sgd(self, X, target, sw, k, lam):
        n, d = X.shape
        dense = nn.Dense(d, k, init="zeros", bias=self.fit_intercept, dtype=X.dtype,
                         compute_dtype=self.compute_dtype)
        model = nn.Sequential(dense)
        loss = nn.BinaryCrossEntropyWithLogits() if k == 1 else nn.SoftmaxCrossEntropy()
        if self.learning_rate == "auto":
            lr = 1.0 / ((0.25 if k == 1 else 0.5) * (_mean_square_norm(X, sw)
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
                        batch_size=min(self.batch_size, n), rng=rng, sample_weight=sw,
                        callbacks=[stopper])
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
            W = np.ascontiguousarray(self.coef_.T)
            if scipy.sparse.issparse(X):
                Z = F.sparse_dense_forward(X, W, self.intercept_)
            else:
                Z = F.dense_forward(X, W, self.intercept_,
                                    compute_dtype=getattr(self, "compute_dtype", None))
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

    if _SKLEARN:
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.input_tags.sparse = True
            return tags

    # -- saving ----------------------------------------------------------------------
    def save(self, path):
        """Save the fitted estimator to ``path`` (see ``fastnn.load``)."""
        from .. import io
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


def _mean_square_norm(X, sw):
    """The (weighted) mean of the rows' squared norms."""
    if scipy.sparse.issparse(X):
        sq = np.asarray(X.multiply(X).sum(axis=1), np.float64).ravel()
    else:
        sq = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    return float(np.average(sq, weights=sw))
