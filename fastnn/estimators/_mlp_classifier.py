"""MLPClassifier: scikit-learn's, trained by fastnn."""

import numpy as np

from .. import functional as F
from .. import nn
from ._base import (check_classification_targets, ClassifierMixin, _check_dtype, _sigmoid,
                    _SKLEARN, _threads, _two_columns)
from ._mlp import _BaseMLP, _stochastic_only
from ._state import _classes_from_state, _classes_state


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, a drop-in for scikit-learn's.

    Softmax output and cross-entropy for more than two classes, one logistic
    output for two (as scikit-learn), independent logistic outputs for a
    multilabel indicator ``y``.  Parameters, solvers ("adam", "sgd",
    "lbfgs"), ``sample_weight`` and sparse ``X`` (CSR/CSC; the first layer
    runs the compiled sparse product, X is never densified) as in
    ``sklearn.neural_network.MLPClassifier``; a seed (None, an int, a
    RandomState) draws scikit-learn's initial weights, epoch orders and
    validation split.  Plus:

    activation : also "leaky_relu" (slope 0.01).
    l1 : float, default 0.  L1 penalty with alpha's batch convention
        (l1/m·Σ|W| per batch of m samples; weights clipped at zero).
    dropout : float in [0, 1), default 0.  Inverted dropout after each hidden layer.
    dtype : float32 (default), float64, or None (follow X, as scikit-learn: float32
        X stays float32, anything else computes in float64); the dtype of the
        weights and computations.
    compute_dtype : None (default) or "bfloat16".  With float32 weights, the matrix
        products of fit and predict take bfloat16 operands (round to nearest even) and
        accumulate in float32, on AMX or AVX512_BF16 where the CPU has them
        (``fastnn.build_info()["bf16"]``); weights, optimiser state, activations and
        losses stay float32.  Not with solver="lbfgs"; a sparse X's first-layer
        products stay float32.
    n_threads : int or None.  Threads for fit/predict (None: fastnn's current setting).
    validation_data : (X_val, y_val) or None.  A validation set scored after every
        epoch (``validation_scores_``); with ``early_stopping=True`` it replaces the
        split-off ``validation_fraction``.
    callbacks : list of callables ``f(estimator, logs)`` called after every epoch (every
        iteration with lbfgs) with logs = {"epoch", "loss", "validation_score",
        "learning_rate", "samples_per_second"} (None where a solver has no such
        value); a True return value stops training.
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
                 l1=0.0, dropout=0.0, dtype=np.float32, compute_dtype=None, n_threads=None,
                 validation_data=None, callbacks=None, comm=None):
        self._store_params(locals())

    @_stochastic_only
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y).  ``classes`` (all labels) is required on the
        first call and may be omitted afterwards."""
        with _threads(self.n_threads):
            return self._fit(X, y, sample_weight, incremental=True, classes=classes)

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

    def _strata(self, target):
        """What the validation split stratifies on: scikit-learn's binarised
        labels for single-output y, nothing for multilabel y."""
        if self._multilabel:
            return None
        if self._binary:
            return target.reshape(-1, 1).astype(bool)
        return np.eye(len(self.classes_), dtype=bool)[target]

    def _encoded_score(self, X, target, sample_weight=None):
        logits = self._forward(X)
        if not np.isfinite(logits).all():
            return float("nan")
        pred = self._encoded_predict(logits)
        if self._multilabel:
            correct = np.all(pred == target, axis=1)
        else:
            correct = pred == target.astype(np.int64)
        return float(np.average(correct, weights=sample_weight))

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
