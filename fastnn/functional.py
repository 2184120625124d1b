"""Checked entry points of fastnn's compiled kernels.

Each function validates its arguments (shape, dtype, label range, weights,
``out=`` buffers), converts them once to C-contiguous arrays of the compute
dtype, and calls one kernel of ``fastnn._kernels``.  The kernels never see
invalid input and never raise.  The semantics, dtype rules and errors are
specified in docs/API.md; ``fastnn.reference`` is the NumPy twin of every
function here.
"""
import math
import numbers

import numpy as np
import scipy.sparse as _sp

from ._checks import check_alpha, check_real
from . import _kernels

__all__ = [
    "ACTIVATIONS",
    "activation_backward",
    "activation_forward",
    "adam_step",
    "binary_cross_entropy_with_logits",
    "dense_backward",
    "dense_forward",
    "log_softmax",
    "logistic_loss_grad",
    "matmul_bf16",
    "mse_loss",
    "poisson_loss",
    "sgd_step",
    "softmax",
    "softmax_cross_entropy",
    "sparse_dense_backward",
    "sparse_dense_forward",
]

ACTIVATIONS = {a.name.lower(): int(a) for a in _kernels.Activation}
REDUCTIONS = ("mean", "sum", "none")
_FLOAT64 = np.dtype(np.float64)
_FLOAT32 = np.dtype(np.float32)
_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_INT32_MAX = np.iinfo(np.int32).max
_ANY_NDIM = range(1, 65)
COMPUTE_DTYPES = (None, "bfloat16")


# ---------------------------------------------------------------------------
# validation helpers: the one place for every argument check
# ---------------------------------------------------------------------------
def _array(x, name):
    """``x`` as an ndarray of a supported kind, or TypeError naming it."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array of numbers: {exc}") from None
    if x.dtype.kind not in "fiub" or x.dtype == np.float16 or x.dtype.itemsize > 8:
        raise TypeError(f"{name} must be a float32 or float64 array (or integer, promoted), "
                        f"got dtype {x.dtype}")
    return x


def _compute_dtype(x):
    """The kernel dtype chosen by the primary array: float32 stays float32,
    everything else (float64, integers, bool) computes in float64."""
    return _FLOAT32 if x.dtype == _FLOAT32 else _FLOAT64


def _contiguous(x, name, dtype, ndims):
    """Check ``x`` and return it C-contiguous in ``dtype`` (copied only when needed)."""
    x = _array(x, name)
    if x.ndim not in ndims:
        expected = ("at least 1-D" if ndims is _ANY_NDIM
                    else " or ".join(f"{d}-D" for d in ndims))
        raise ValueError(f"{name} must be {expected}, got an array of shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=dtype)


def _primary(x, name, ndims):
    x = _array(x, name)
    return _contiguous(x, name, _compute_dtype(x), ndims)


def _check_shape(x, name, shape, what=""):
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}{what}, got {x.shape}")


def _output(out, name, shape, dtype, *inputs):
    """A fresh buffer, or the caller's ``out`` after checking it.

    ``inputs`` are arrays the kernel reads while writing ``out``: they must
    not overlap it."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    for x in inputs:
        if x is not None and np.may_share_memory(out, x):
            raise ValueError(f"{name} must not overlap the input arrays")
    return out


def _unless_same(out, x):
    """The inputs ``out`` must not overlap: none when ``out`` *is* ``x``
    (the kernels that accept in-place operation read each element before
    writing it)."""
    return () if out is x else (x,)


def _activation(name, alpha):
    try:
        code = ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}") from None
    check_alpha(alpha)
    return code


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _sample_weight(sample_weight, n, dtype):
    if sample_weight is None:
        return None
    w = _contiguous(sample_weight, "sample_weight", dtype, (1,))
    _check_shape(w, "sample_weight", (n,), " (one weight per sample)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    return w


def _scale(reduction, n, weights):
    """The factor that turns the weighted loss sum into the requested loss."""
    if reduction != "mean":
        return 1.0
    total = n if weights is None else float(np.sum(weights, dtype=np.float64))
    if total <= 0:
        raise ValueError("sample_weight must not sum to 0 with reduction='mean'")
    return 1.0 / total


def _reduce(total, scale, reduction, losses):
    if reduction == "none":
        return losses
    return total * scale if reduction == "mean" else total


def _rows(x):
    """View a (N,) array as (N, 1): 1-D inputs are N single-output samples."""
    return x.reshape(x.shape[0], -1)


# ---------------------------------------------------------------------------
# activations and softmax
# ---------------------------------------------------------------------------
def activation_forward(z, name, *, alpha=0.01, out=None):
    """o = f(z) elementwise for f in ACTIVATIONS; ``out`` may be ``z``."""
    kind = _activation(name, alpha)
    z = _primary(z, "z", _ANY_NDIM)
    out = _output(out, "out", z.shape, z.dtype, *_unless_same(out, z))
    _kernels.activation_forward(z.reshape(-1), out.reshape(-1), kind, alpha)
    return out


def activation_backward(o, grad_out, name, *, alpha=0.01, out=None):
    """delta = grad_out * f'(o), with f' written in terms of the output o."""
    kind = _activation(name, alpha)
    o = _primary(o, "o", _ANY_NDIM)
    g = _contiguous(grad_out, "grad_out", o.dtype, (o.ndim,))
    _check_shape(g, "grad_out", o.shape, " (the shape of o)")
    out = _output(out, "out", o.shape, o.dtype, o, *_unless_same(out, g))
    _kernels.activation_backward(o.reshape(-1), g.reshape(-1), out.reshape(-1), kind, alpha)
    return out


def _softmax(x, out, take_log):
    x = _primary(x, "x", (2,))
    out = _output(out, "out", x.shape, x.dtype, *_unless_same(out, x))
    _kernels.softmax(x, out, take_log)
    return out


def softmax(x, *, out=None):
    """Row-wise softmax of a 2-D array (max-subtracted; NaN row policy in docs/API.md)."""
    return _softmax(x, out, False)


def log_softmax(x, *, out=None):
    """Row-wise log-softmax of a 2-D array."""
    return _softmax(x, out, True)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
def _xent_target(target, shape, dtype):
    """(int64 class indices, None) or (None, probabilities) for logits of ``shape``."""
    t = _array(target, "target")
    if t.ndim == 2:
        probs = _contiguous(t, "target", dtype, (2,))
        _check_shape(probs, "target", shape, " (probabilities, the shape of logits)")
        return None, probs
    if t.ndim != 1:
        raise ValueError(f"target must be 1-D class indices or 2-D probabilities, "
                         f"got shape {t.shape}")
    if t.size == 0:
        raise ValueError("target must not be empty")
    return _class_indices(t, *shape), None


def _pointwise_target(y, name, shape, dtype, primary_name, which=None):
    """The target of pointwise loss ``which`` (a Loss code; the train_step
    path passes it too): the primary's shape, and >= 0 for the Poisson loss."""
    y = _contiguous(y, name, dtype, (len(shape),))
    _check_shape(y, name, shape, f" (the shape of {primary_name})")
    if which == _kernels.Loss.LOSS_POISSON:
        bad = ~(y >= 0)                 # NaN too: log y has no meaning there
        if bad.any():
            raise ValueError(f"{name} must be non-negative for the Poisson loss, "
                             f"found {y[bad][0]}")
    return y


def _class_indices(target, n, n_classes):
    if target.shape != (n,):
        raise ValueError(f"target must have shape ({n},) (class indices) or ({n}, {n_classes}) "
                         f"(probabilities), got {target.shape}")
    if target.dtype.kind == "f":
        if not np.isfinite(target).all() or (target != np.round(target)).any():
            raise ValueError("target holds class indices: float values must be whole numbers")
        if target.min() < 0 or target.max() >= n_classes:  # before a cast could wrap them
            _bad_class_index(target, n_classes)
    labels = np.ascontiguousarray(target, dtype=np.int64)
    # a wide unsigned label can wrap to a negative int64: still outside [0, C)
    if _kernels.count_outside(labels, n_classes):
        _bad_class_index(target, n_classes)
    return labels


def _bad_class_index(target, n_classes):
    low, high = target.min(), target.max()
    raise ValueError(f"target holds class indices, which must lie in [0, {n_classes}); "
                     f"found {low if low < 0 else high}")


def softmax_cross_entropy(logits, target, *, sample_weight=None, reduction="mean",
                          label_smoothing=0.0, out=None):
    """Fused softmax + cross-entropy: returns (loss, gradient w.r.t. logits).

    ``target``: class indices (N,) of any integer dtype, or probabilities (N, C).
    """
    _check_reduction(reduction)
    if (sample_weight is None and reduction == "mean"
            and type(label_smoothing) is float and label_smoothing == 0.0):
        # a training loop's call, checked and computed in one compiled call;
        # None means an argument needs the conversions or errors below
        result = _kernels.xent_mean_labels(logits, target, out)
        if result is not None:
            return result
    if not (isinstance(label_smoothing, numbers.Real) and 0 <= label_smoothing < 1):
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    z = _primary(logits, "logits", (2,))
    n, c = z.shape
    labels, probs = _xent_target(target, z.shape, z.dtype)
    w = _sample_weight(sample_weight, n, z.dtype)
    scale = _scale(reduction, n, w)
    grad = _output(out, "out", z.shape, z.dtype, z, probs, labels)
    losses = np.empty(n, z.dtype) if reduction == "none" else None
    total = _kernels.softmax_cross_entropy(z, labels, probs, w, grad, losses, scale,
                                           float(label_smoothing))
    return _reduce(total, scale, reduction, losses), grad


def _pointwise_loss(which, primary_name, target_name, o, y, sample_weight, reduction, out):
    _check_reduction(reduction)
    o = _primary(o, primary_name, (1, 2))
    y = _pointwise_target(y, target_name, o.shape, o.dtype, primary_name, which)
    n = o.shape[0]
    w = _sample_weight(sample_weight, n, o.dtype)
    scale = _scale(reduction, n, w)
    grad = _output(out, "out", o.shape, o.dtype, o, y)
    losses = np.empty(n, o.dtype) if reduction == "none" else None
    total = _kernels.pointwise_loss(which, _rows(o), _rows(y), w, _rows(grad), losses, scale)
    return _reduce(total, scale, reduction, losses), grad


def binary_cross_entropy_with_logits(z, t, *, sample_weight=None, reduction="mean", out=None):
    """Binary cross-entropy on logits z (N,) or (N, K) with targets t in [0, 1]:
    returns (loss, gradient sigmoid(z) - t, scaled).  Stable for any |z|."""
    return _pointwise_loss(_kernels.Loss.LOSS_BCE, "z", "t", z, t, sample_weight, reduction, out)


def mse_loss(o, y, *, sample_weight=None, reduction="mean", out=None):
    """Squared error with the 1/2 convention: returns (loss, gradient o - y, scaled)."""
    return _pointwise_loss(_kernels.Loss.LOSS_MSE, "o", "y", o, y, sample_weight, reduction, out)


def poisson_loss(z, y, *, sample_weight=None, reduction="mean", out=None):
    """Poisson loss on the log link, z the linear predictor (N,) or (N, K),
    y >= 0 the same shape: per-sample loss sum_k exp(z) - y z + xlogy(y, y) - y
    (scikit-learn's MLP poisson loss at y_pred = exp(z)); returns (loss,
    gradient exp(z) - y, scaled).  A large z overflows to an infinite loss."""
    return _pointwise_loss(_kernels.Loss.LOSS_POISSON, "z", "y", z, y, sample_weight, reduction,
                           out)


# ---------------------------------------------------------------------------
# dense layer
# ---------------------------------------------------------------------------
def _dense_operands(A, W, b):
    W = _primary(W, "W", (2,))
    n_in, n_out = W.shape
    A = _contiguous(A, "A", W.dtype, (2,))
    if A.shape[1] != n_in:
        raise ValueError(f"A must have shape (N, {n_in}) to match W {W.shape}, got {A.shape}")
    if b is not None:
        b = _contiguous(b, "b", W.dtype, (1,))
        _check_shape(b, "b", (n_out,), " (one bias per output)")
    return A, W, b


def _check_compute_dtype(compute_dtype, W):
    """Whether the products run in bfloat16 (``compute_dtype``), which takes
    float32 weights (the master copy the bf16 operands are rounded from)."""
    if compute_dtype is None:
        return False
    if not isinstance(compute_dtype, str) or compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be None or 'bfloat16', got {compute_dtype!r}")
    if not isinstance(W, np.ndarray) or W.dtype != _FLOAT32:
        dtype = getattr(W, "dtype", type(W).__name__)
        raise TypeError(f"compute_dtype='bfloat16' needs float32 W (the float32 master "
                        f"weights), got {dtype}")
    return True


def dense_forward(A, W, b, activation="identity", *, alpha=0.01, out=None, compute_dtype=None):
    """O = f(A W + b) with W of shape (n_in, n_out); the product runs on BLAS
    (or, float32 with 9-16 outputs, fastnn's narrow GEMM), bias and activation
    in one fused pass.

    ``compute_dtype="bfloat16"`` (float32 W): the product takes A and W
    rounded to bfloat16 and accumulates in float32 (``matmul_bf16``'s
    kernel); the bias, the activation and O stay float32.
    """
    kind = _activation(activation, alpha)
    if _check_compute_dtype(compute_dtype, W):
        A, W, b = _dense_operands(A, W, b)
        out = _output(out, "out", (A.shape[0], W.shape[1]), W.dtype, A, W, b)
        _kernels.bf16_dense_forward(A, W, b, out, kind, alpha)
        return out
    result = _kernels.dense_forward_plain(A, W, b, out, kind, alpha)  # None: needs the below
    if result is not None:
        return result
    A, W, b = _dense_operands(A, W, b)
    out = _output(out, "out", (A.shape[0], W.shape[1]), W.dtype, A, W, b)
    _kernels.dense_forward(A, W, b, out, kind, alpha)
    return out


def dense_backward(A, W, O, grad_out, activation="identity", *, alpha=0.01,
                   need_input_grad=True, out=None, overwrite_grad_out=False,
                   compute_dtype=None):
    """Backward pass of ``dense_forward``: returns (dA, dW, db).

    delta = grad_out * f'(O) is fused with db = column sums of delta; dW =
    A^T delta and dA = delta W^T run on BLAS.  dA is None when
    ``need_input_grad`` is False.  ``out`` is an optional (dA, dW, db) tuple of
    buffers; ``overwrite_grad_out=True`` stores delta in ``grad_out``.
    ``compute_dtype="bfloat16"`` (float32 W): delta and db in float32 as
    always, the two products on bfloat16 operands (A, delta, W rounded),
    accumulated in float32.
    """
    kind = _activation(activation, alpha)
    bf16 = _check_compute_dtype(compute_dtype, W)
    if not bf16:
        result = _kernels.dense_backward_plain(A, W, O, grad_out, out, need_input_grad,
                                               overwrite_grad_out, kind, alpha)
        if result is not None:
            return result
    A, W, _ = _dense_operands(A, W, None)
    O, G, delta = _backward_operands(O, grad_out, overwrite_grad_out, (A.shape[0], W.shape[1]),
                                     W, A)
    dA_out, dW_out, db_out = (None, None, None) if out is None else _unpack3(out)
    inputs = (A, W, O, G)
    dW = _output(dW_out, "out[1] (dW)", W.shape, W.dtype, *inputs)
    db = _output(db_out, "out[2] (db)", (W.shape[1],), W.dtype, *inputs, dW)
    dA = None
    if need_input_grad:
        dA = _output(dA_out, "out[0] (dA)", A.shape, W.dtype, *inputs, dW, db)
    backward = _kernels.bf16_dense_backward if bf16 else _kernels.dense_backward
    backward(A, W, O, G, delta, dA, dW, db, kind, alpha)
    return dA, dW, db


def _backward_operands(O, grad_out, overwrite_grad_out, shape, W, A):
    """(O, grad_out, delta) of a dense layer's backward pass, in W's dtype
    and of ``shape``: delta is grad_out itself when it may be overwritten
    (then it must not share memory with W, the input A or O), else new."""
    O = _contiguous(O, "O", W.dtype, (2,))
    _check_shape(O, "O", shape, " (the layer's output)")
    if overwrite_grad_out:
        G = _output(grad_out, "grad_out", shape, W.dtype, W, A, O)
        return O, G, G
    G = _contiguous(grad_out, "grad_out", W.dtype, (2,))
    _check_shape(G, "grad_out", shape, " (the shape of O)")
    return O, G, np.empty_like(G)


def _unpack3(out):
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError("out must be a tuple (dA, dW, db) of arrays (dA may be None)")
    return out


# ---------------------------------------------------------------------------
# dense layer on a sparse input
# ---------------------------------------------------------------------------
def _is_sparse(X):
    """Whether ``X`` is a scipy.sparse matrix or array (an ndarray, the
    dense layers' hot case, is answered by one type test)."""
    return type(X) is not np.ndarray and _sp.issparse(X)


class _CSR(tuple):
    """A sparse input as the kernels take it: (shape, data, indices, indptr),
    data of the compute dtype, indices and indptr C-contiguous and of one
    dtype, int32 or int64.  Kept by nn.Dense between forward and backward.
    (Not a scipy matrix: scipy's constructor would downcast int64 indices
    that fit int32, a copy of the largest array.)"""

    __slots__ = ()

    @property
    def shape(self):
        return self[0]


def _csr(X, dtype, name="X"):
    """``X`` (any scipy.sparse matrix or array) as a _CSR of ``dtype``.

    CSR is taken as is; other formats (CSC, COO, ...) are converted to CSR
    once (a copy); values of another dtype are converted (a copy of the
    values only).  The index arrays are never copied to change their dtype,
    except indptr (n + 1 entries) when it differs from the indices', and
    indices of a dtype other than int32/int64.  Storage beyond indptr[-1]
    (scipy allows it) is cut off by a view.  The kernels check the
    structure (indptr monotone from 0 to nnz, indices in range) and the
    values' finiteness themselves."""
    if type(X) is _CSR:
        return X
    if not _is_sparse(X):
        raise TypeError(f"{name} must be a scipy.sparse matrix or array (CSR or CSC), got "
                        f"{type(X).__name__}; dense input goes to dense_forward/dense_backward")
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {X.shape}")
    if X.dtype.kind not in "fiub" or X.dtype == np.float16 or X.dtype.itemsize > 8:
        raise TypeError(f"{name} must hold float32 or float64 values (or integer, converted), "
                        f"got dtype {X.dtype}")
    if X.format != "csr":
        X = X.tocsr()
    data, indices, indptr = X.data, X.indices, X.indptr
    if indptr.ndim != 1 or len(indptr) != X.shape[0] + 1:
        raise ValueError(f"{name}.indptr must have n_rows + 1 = {X.shape[0] + 1} entries, "
                         f"got shape {indptr.shape}")
    if indices.ndim != 1 or data.ndim != 1:
        raise ValueError(f"{name}.indices and {name}.data must be 1-D")
    if indices.dtype not in _INDEX_DTYPES:
        indices = indices.astype(np.int64)     # a foreign index dtype: one copy
    if indptr.dtype != indices.dtype:
        # indptr, the short one, takes the dtype of the indices when its
        # values fit (else both widen)
        if indices.dtype == np.int64 or abs(int(indptr[-1])) <= _INT32_MAX:
            indptr = indptr.astype(indices.dtype)
        else:
            indices, indptr = indices.astype(np.int64), indptr.astype(np.int64)
    nnz = int(indptr[-1])
    if 0 <= nnz < min(len(data), len(indices)):
        data, indices = data[:nnz], indices[:nnz]
    return _CSR((X.shape, np.ascontiguousarray(data, dtype=dtype),
                 np.ascontiguousarray(indices), np.ascontiguousarray(indptr)))


def _checked_csr_matrix(X, dtype, name="X"):
    """A scipy.sparse ``X`` as a scipy CSR matrix (or array) of ``dtype``,
    its structure and values checked as the kernels check a batch (for
    nn.fit, which gathers batches by scipy's row indexing).  Converted once
    when another format or dtype (scipy's conversions copy the structure)."""
    if _is_sparse(X) and X.ndim == 2 and X.format != "csr":
        X = X.tocsr()
    parts = _csr(X, dtype, name)            # the type, shape and dtype checks
    _kernels.check_csr(parts[1], parts[2], parts[3], X.shape[1])
    if X.dtype != dtype:
        X = X.astype(dtype)
    return X


def _sparse_weights(W):
    """W (n_in, n_out): a float32 or float64 ndarray; its dtype is the layer's."""
    if not isinstance(W, np.ndarray) or W.dtype not in (_FLOAT32, _FLOAT64):
        got = f"dtype {W.dtype}" if isinstance(W, np.ndarray) else type(W).__name__
        raise TypeError(f"W must be a float32 or float64 numpy.ndarray (its dtype is the "
                        f"computation's), got {got}")
    return _contiguous(W, "W", W.dtype, (2,))


def _same_dtype(x, name, dtype, ndims):
    """A secondary array that must already have W's dtype (no silent cast)."""
    if not isinstance(x, np.ndarray) or x.dtype != dtype:
        got = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"{name} must have the dtype of W ({dtype}), got {got}")
    return _contiguous(x, name, dtype, ndims)


def _sparse_operands(X, W):
    W = _sparse_weights(W)
    X = _csr(X, W.dtype)
    if X.shape[1] != W.shape[0]:
        raise ValueError(f"X must have shape (N, {W.shape[0]}) to match W {W.shape}, "
                         f"got {X.shape}")
    return X, W


def sparse_dense_forward(X, W, b=None, activation="identity", *, alpha=0.01, out=None):
    """O = f(X W + b) for a scipy.sparse X (N, n_in), W of shape (n_in, n_out).

    X may be any scipy.sparse matrix or array: CSR is used as is, other
    formats (CSC, COO, ...) are converted to CSR once, values of another
    dtype converted to W's (a copy of the values; the index arrays, int32 or
    int64, are never copied).  W must be float32 or float64 and sets the
    dtype; b and ``out`` must have it too.  Each output row sums its stored
    values times their rows of W (duplicates add up, any order), then bias
    and activation, in one threaded pass.  ValueError for non-finite values
    in X or a malformed CSR structure.
    """
    kind = _activation(activation, alpha)
    X, W = _sparse_operands(X, W)
    _, data, indices, indptr = X
    n_out = W.shape[1]
    if b is not None:
        b = _same_dtype(b, "b", W.dtype, (1,))
        _check_shape(b, "b", (n_out,), " (one bias per output)")
    out = _output(out, "out", (X.shape[0], n_out), W.dtype, W, b, data)
    _kernels.sparse_dense_forward(data, indices, indptr, W, b, out, kind, alpha)
    return out


def sparse_dense_backward(X, W, O, grad_out, activation="identity", *, alpha=0.01, out=None,
                          overwrite_grad_out=False):
    """Backward pass of ``sparse_dense_forward``: returns (dW, db).

    delta = grad_out * f'(O) is fused with db = column sums of delta, as in
    ``dense_backward``; dW = X^T delta (every element written, zero for a
    feature no sample holds) through the transpose of X, bit-identical at
    any thread count.  There is no input gradient.  X as in
    ``sparse_dense_forward``; O and grad_out are converted to W's dtype
    when needed (a copy).  ``out`` is an optional (dW, db) pair of buffers
    (either may be None); ``overwrite_grad_out=True`` stores delta in
    ``grad_out``.
    """
    kind = _activation(activation, alpha)
    X, W = _sparse_operands(X, W)
    _, data, indices, indptr = X
    O, G, delta = _backward_operands(O, grad_out, overwrite_grad_out, (X.shape[0], W.shape[1]),
                                     W, data)
    if out is None:
        dW_out = db_out = None
    elif isinstance(out, (tuple, list)) and len(out) == 2:
        dW_out, db_out = out
    else:
        raise TypeError("out must be a pair (dW, db) of arrays (either may be None)")
    inputs = (W, O, G, data)
    dW = _output(dW_out, "out[0] (dW)", W.shape, W.dtype, *inputs)
    db = _output(db_out, "out[1] (db)", (W.shape[1],), W.dtype, *inputs, dW)
    _kernels.sparse_dense_backward(data, indices, indptr, O, G, delta, dW, db, kind, alpha)
    return dW, db


# ---------------------------------------------------------------------------
# bf16 matrix product
# ---------------------------------------------------------------------------
def _bf16_operand(x, name):
    """(2-D float32 operand, transposed): a Fortran-ordered float32 array
    (a transposed view) goes to the kernel as its C-ordered transpose, no
    copy; anything else is converted once to C-contiguous float32."""
    x = _array(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got an array of shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    if x.dtype == _FLOAT32 and x.flags.f_contiguous and not x.flags.c_contiguous:
        return x.T, True
    return np.ascontiguousarray(x, dtype=_FLOAT32), False


def _round_bf16(x):
    """A float32 copy of ``x`` rounded to bfloat16 (RNE), any shape."""
    x = np.ascontiguousarray(x, dtype=_FLOAT32)
    out = np.empty_like(x)
    if x.size:
        _kernels.bf16_round(x.reshape(-1, x.shape[-1] if x.ndim else 1),
                            out.reshape(-1, x.shape[-1] if x.ndim else 1))
    return out


def matmul_bf16(A, B, *, out=None):
    """C = A B in float32 from bfloat16 operands: A (m, k) and B (k, n),
    converted to float32 first if they are not, are rounded to bfloat16
    (round to nearest even) as they are packed, and the products accumulate
    in float32.  Runs on AMX-BF16, AVX512_BF16 or the emulated path
    (``fastnn.build_info()["bf16"]``); the same bits at any thread count.
    Transposed (Fortran-ordered) float32 views are read in place.
    """
    a, trans_a = _bf16_operand(A, "A")
    b, trans_b = _bf16_operand(B, "B")
    m, k = a.shape[::-1] if trans_a else a.shape
    kb, n = b.shape[::-1] if trans_b else b.shape
    if kb != k:
        raise ValueError(f"B must have shape ({k}, n) to match A {(m, k)}, got {(kb, n)}")
    out = _output(out, "out", (m, n), _FLOAT32, a, b)
    _kernels.bf16_product(a, b, out, trans_a, trans_b)
    return out


# ---------------------------------------------------------------------------
# logistic regression
# ---------------------------------------------------------------------------
def logistic_loss_grad(X, w, b, t, *, sample_weight=None, out=None):
    """Mean binary cross-entropy of sigmoid(X w + b) against t, and its
    gradient, in one pass over X: returns (loss, grad_w, grad_b)."""
    X = _primary(X, "X", (2,))
    n, d = X.shape
    w = _contiguous(w, "w", X.dtype, (1,))
    _check_shape(w, "w", (d,), " (one weight per column of X)")
    if not isinstance(b, numbers.Real):
        raise TypeError(f"b must be a real number, got {type(b).__name__}")
    t = _contiguous(t, "t", X.dtype, (1,))
    _check_shape(t, "t", (n,), " (one target per row of X)")
    sw = _sample_weight(sample_weight, n, X.dtype)
    scale = _scale("mean", n, sw)
    grad_w = _output(out, "out", (d,), X.dtype, X, w, t)
    loss_sum, grad_b = _kernels.logistic_loss_grad(X, w, float(b), t, sw, grad_w, scale)
    return loss_sum * scale, grad_w, grad_b


# ---------------------------------------------------------------------------
# optimiser updates (in place)
# ---------------------------------------------------------------------------
def _state(x, name, like):
    """A state array updated in place: exactly like ``like`` (shape, dtype, C order)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != like.dtype:
        raise TypeError(f"{name} must have dtype {like.dtype}, got {x.dtype}")
    _check_shape(x, name, like.shape)
    if not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable (it is updated in place)")
    return x.reshape(-1)


def _param_and_grad(param, grad):
    if not isinstance(param, np.ndarray) or param.dtype not in (_FLOAT32, _FLOAT64):
        raise TypeError("param must be a float32 or float64 numpy.ndarray")
    if param.size == 0:
        raise ValueError("param must not be empty")
    p = _state(param, "param", param)
    g = _contiguous(grad, "grad", param.dtype, (param.ndim,))
    _check_shape(g, "grad", param.shape, " (the shape of param)")
    return p, g.reshape(-1)


def sgd_step(param, grad, velocity=None, *, lr, momentum=0.0, nesterov=False, l2=0.0, l1=0.0):
    """One fused SGD update of ``param`` in place (scikit-learn's convention)."""
    p, g = _param_and_grad(param, grad)
    v = _state(velocity, "velocity", param) if velocity is not None else None
    _sgd_update([(p, g, v)], [True], lr, momentum, nesterov, l2, l1)
    return param


def _sgd_update(views, regularize, lr, momentum, nesterov, l2, l1):
    """sgd_step of several parameters in one kernel call, on flat views
    already checked by _param_and_grad and _state (fastnn.optim keeps those
    across steps): ``views`` holds (p, g, velocity or None) per parameter,
    ``regularize`` whether l2 and l1 apply to it."""
    hyper = _sgd_hyperparameters([v for _, _, v in views], lr, momentum, nesterov, l2, l1)
    for group, flags in _by_dtype(views, regularize):
        _kernels.sgd_step(group, flags, *hyper)


def _sgd_hyperparameters(velocities, lr, momentum, nesterov, l2, l1):
    """The checked (lr, momentum, nesterov, l2, l1) of an SGD update, as the
    kernels take them; ``velocities``: one per parameter, or None."""
    lr, momentum = check_real(lr, "lr"), check_real(momentum, "momentum", 0.0, 1.0)
    l2, l1 = check_real(l2, "l2"), check_real(l1, "l1")
    if momentum != 0 and any(v is None for v in velocities):
        raise ValueError("velocity is required when momentum > 0")
    return lr, momentum, bool(nesterov), l2, l1


def adam_step(param, grad, m, v, *, lr, step, beta1=0.9, beta2=0.999, eps=1e-8, l2=0.0, l1=0.0,
              weight_decay=0.0):
    """One fused Adam/AdamW update of ``param``, ``m`` and ``v`` in place."""
    p, g = _param_and_grad(param, grad)
    _adam_update([(p, g, _state(m, "m", param), _state(v, "v", param))], [True], lr, step,
                 beta1, beta2, eps, l2, l1, weight_decay)
    return param


def _adam_update(views, regularize, lr, step, beta1, beta2, eps, l2, l1, weight_decay):
    """adam_step of several parameters in one kernel call, as _sgd_update:
    ``views`` holds (p, g, m, v) per parameter."""
    lr, beta1, beta2, eps, l2, l1, weight_decay = _adam_hyperparameters(
        lr, beta1, beta2, eps, l2, l1, weight_decay)
    if not isinstance(step, numbers.Integral) or isinstance(step, bool) or step < 1:
        raise ValueError(f"step must be an integer >= 1 (updates so far, this one included), "
                         f"got {step!r}")
    # (the compiled epoch's _adam_lr computes the same, with C's pow and sqrt)
    lr_t = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    for group, flags in _by_dtype(views, regularize):
        _kernels.adam_step(group, flags, lr_t, beta1, beta2, eps, l2, l1, lr * weight_decay)


def _adam_hyperparameters(lr, beta1, beta2, eps, l2, l1, weight_decay):
    """The checked (lr, beta1, beta2, eps, l2, l1, weight_decay) of an Adam
    update."""
    return (check_real(lr, "lr"), check_real(beta1, "beta1", 0.0, 1.0, high_open=True),
            check_real(beta2, "beta2", 0.0, 1.0, high_open=True), check_real(eps, "eps"),
            check_real(l2, "l2"), check_real(l1, "l1"),
            check_real(weight_decay, "weight_decay"))


def _by_dtype(views, regularize):
    """The update kernels take parameters of one dtype per call: (views,
    flags) pairs, one per dtype (usually just the one)."""
    dtype = views[0][0].dtype if views else None
    if all(entry[0].dtype == dtype for entry in views):
        return [(views, regularize)] if views else []
    groups = {}
    for entry, flag in zip(views, regularize):
        group = groups.setdefault(entry[0].dtype, ([], []))
        group[0].append(entry)
        group[1].append(flag)
    return list(groups.values())
