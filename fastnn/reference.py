"""Pure-NumPy reference implementation of every fastnn kernel.

This module is the *oracle* of fastnn's test suite and the *baseline* of its
benchmarks.  Every function here has the same name, signature and semantics
as its compiled twin in :mod:`fastnn.functional` (the contract is
``docs/API.md``, the mathematics ``MATH.md``), but is written for clarity:
plain, vectorised, numerically stable NumPy, with no Python loop over rows.

What it deliberately does *not* do is the exhaustive argument checking of
:mod:`fastnn.functional`: validation here is light (enough to refuse
nonsense rather than silently return garbage).  It accepts the same argument
kinds, though: integer label dtypes, probability targets, ``sample_weight``,
``reduction``, ``label_smoothing``, ``out=`` buffers, ``need_input_grad``
and ``overwrite_grad_out``.

Dtype rules (as the contract): the compute dtype is the dtype of the primary
array (``x``, ``logits``, ``z``, ``o``, ``W`` for the dense layer, ``X`` for
logistic regression) when it is float32 or float64; integer and bool primary
arrays compute in float64; secondary arrays are cast to the compute dtype.
Arithmetic happens in the compute dtype; scalar losses are accumulated in
float64 and returned as Python floats.
"""
import numpy as np

__all__ = [
    "softmax",
    "log_softmax",
    "softmax_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "poisson_loss",
    "activation_forward",
    "activation_backward",
    "dense_forward",
    "dense_backward",
    "sparse_dense_forward",
    "sparse_dense_backward",
    "round_bf16",
    "matmul_bf16",
    "sgd_step",
    "adam_step",
    "logistic_loss_grad",
]

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")
REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _compute_dtype(arr, name):
    """The compute dtype a primary array implies (int/bool -> float64)."""
    kind = arr.dtype.kind
    if arr.dtype in (np.float32, np.float64):
        return arr.dtype.type
    if kind in "biu":
        return np.float64
    raise TypeError(f"{name} must be a float32/float64 (or integer) array, got dtype {arr.dtype}")


def _primary(arr, name):
    """``arr`` as an ndarray of its compute dtype (no copy when already one)."""
    arr = np.asarray(arr)
    if arr.ndim == 0:  # as functional (docs/API.md): arrays have at least one axis
        raise ValueError(f"{name} must be at least 1-D, got a 0-d array")
    if arr.size == 0:  # an empty batch is an error
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    return arr.astype(_compute_dtype(arr, name), copy=False)


def _secondary(arr, dtype):
    return np.asarray(arr).astype(dtype, copy=False)


def _finish(result, out):
    """Return ``result``, copied into ``out`` when a buffer was given."""
    if out is None:
        return result
    if out is not result:
        out[...] = result
    return out


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_activation(name, alpha):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha!r}")


def _sample_weights(sample_weight, n, reduction, dtype):
    """Per-sample weights (or None) and the gradient scale s of the contract.

    s = 1/sum(w) for "mean" (1/N without weights), 1 for "sum" and "none".
    """
    if sample_weight is None:
        weights = None
        total = float(n)
    else:
        weights = _secondary(sample_weight, dtype)
        if weights.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},), got {weights.shape}")
        if not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
            raise ValueError("sample_weight must be finite and >= 0")
        total = float(np.sum(weights, dtype=np.float64))
    if reduction == "mean":
        if total == 0.0:
            raise ValueError("sample_weight must not be all zero with reduction='mean'")
        scale = 1.0 / total
    else:
        scale = 1.0
    return weights, scale, total


def _reduce(per_sample, weights, reduction, total):
    """Apply sample weights and the reduction to per-sample losses."""
    if weights is not None:
        per_sample = per_sample * weights
    if reduction == "none":
        return per_sample
    loss = float(np.sum(per_sample, dtype=np.float64))
    return loss / total if reduction == "mean" else loss


def _row_scale(weights, scale, n, dtype):
    """Column vector w_i * s that multiplies each gradient row."""
    if weights is None:
        return np.full((n, 1), scale, dtype=dtype)
    return (weights * dtype(scale))[:, None]


def _sigmoid(z):
    """Stable logistic function: never evaluates exp of a positive number."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _softmax_parts(x):
    """Shifted logits x - m, and log sum exp(x - m), per row.

    Rows whose maximum is not finite (a NaN, a +inf, or all -inf) are the
    rows the policy turns into all NaN; they are returned as NaN already.
    """
    m = np.max(x, axis=1, keepdims=True)
    bad_rows = ~np.isfinite(m)
    m = np.where(bad_rows, np.nan, m)
    shifted = x - m  # -inf entries of a good row stay -inf: exp gives exactly 0
    log_sum = np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    return shifted, log_sum


# --------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------
def activation_forward(z, name, *, alpha=0.01, out=None):
    """o = f(z) elementwise, for any shape."""
    _check_activation(name, alpha)
    z = _primary(z, "z")
    if name == "identity":
        o = z.copy() if out is None else z
    elif name == "sigmoid":
        o = _sigmoid(z)
    elif name == "tanh":
        o = np.tanh(z)
    elif name == "relu":
        o = np.where(z < 0, z.dtype.type(0), z)  # NaN is not < 0: it propagates
    else:
        o = np.where(z < 0, z.dtype.type(alpha) * z, z)
    return _finish(o, out)


def activation_backward(o, grad_out, name, *, alpha=0.01, out=None):
    """delta = grad_out * f'(o), with f' written in terms of the output o."""
    _check_activation(name, alpha)
    o = _primary(o, "o")
    dtype = o.dtype.type
    grad_out = _secondary(grad_out, dtype)
    if o.shape != grad_out.shape:
        raise ValueError(f"grad_out must have the shape of o {o.shape}, got {grad_out.shape}")
    if name == "identity":
        derivative = dtype(1)
    elif name == "sigmoid":
        derivative = o * (1 - o)
    elif name == "tanh":
        derivative = 1 - o * o
    elif name == "relu":
        derivative = None  # a selection, below
    else:
        derivative = np.where(o >= 0, dtype(1), dtype(alpha))
    if derivative is None:
        # relu selects (0 at z = 0 by convention): an inactive unit's delta is
        # 0 even for an inf/NaN grad_out, as the kernel and PyTorch
        delta = np.where(o > 0, grad_out, dtype(0))
    else:
        delta = grad_out * derivative
    return _finish(delta, out)


# --------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------
def _check_2d(x, name):
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {x.shape}")


def softmax(x, *, out=None):
    """Row-wise softmax of a 2-D array (N, C), stable by max subtraction."""
    x = _primary(x, "x")
    _check_2d(x, "x")
    shifted, log_sum = _softmax_parts(x)
    return _finish(np.exp(shifted - log_sum), out)


def log_softmax(x, *, out=None):
    """Row-wise log-softmax: x - m - log sum exp(x - m)."""
    x = _primary(x, "x")
    _check_2d(x, "x")
    shifted, log_sum = _softmax_parts(x)
    return _finish(shifted - log_sum, out)


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------
def _class_indices(target, n, n_classes):
    """Integer class indices from a 1-D target of any integer (or integral float) dtype."""
    if target.dtype.kind == "f":
        if not np.all(np.isfinite(target)) or np.any(target != np.round(target)):
            raise ValueError("target holds class indices, which must be integral")
    elif target.dtype.kind not in "biu":
        raise TypeError(f"target must be integer class indices or float probabilities, got {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"target must have shape ({n},), got {target.shape}")
    if np.any(target < 0) or np.any(target >= n_classes):
        raise ValueError(f"target class indices must lie in [0, {n_classes})")
    return target.astype(np.intp)


def softmax_cross_entropy(logits, target, *, sample_weight=None, reduction="mean",
                          label_smoothing=0.0, out=None):
    """Softmax cross-entropy and its gradient w.r.t. the logits.

    ``target`` is class indices (N,) or probabilities (N, C).  With label
    smoothing eps the target row becomes (1 - eps) y + eps / C.  The
    per-sample loss is -sum_k y_k log p_k (= lse(z) sum y - sum y z), with
    the terms where y_k = 0 skipped; the gradient row is
    (p sum_k y_k - y) * w_i * s.
    """
    z = _primary(logits, "logits")
    _check_2d(z, "logits")
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    dtype = z.dtype.type
    n, n_classes = z.shape
    weights, scale, total = _sample_weights(sample_weight, n, reduction, dtype)

    shifted, log_sum = _softmax_parts(z)
    log_p = shifted - log_sum
    p = np.exp(log_p)
    eps = dtype(label_smoothing)
    uniform = eps / dtype(n_classes)  # smoothing mass per class
    target = np.asarray(target)
    rows = np.arange(n)

    if target.ndim == 1:
        classes = _class_indices(target, n, n_classes)
        # One-hot rows, never materialised: y = (1 - eps) e_c + eps / C.
        per_sample = -(1 - eps) * log_p[rows, classes]
        if label_smoothing:
            per_sample = per_sample - uniform * np.sum(log_p, axis=1)
        target_sum = dtype(1)
        grad = p  # p * sum(y) with sum(y) = 1; p is a fresh array, update in place
        grad[rows, classes] -= 1 - eps
        if label_smoothing:
            grad -= uniform
    else:
        y = _secondary(target, dtype)
        if y.shape != z.shape:
            raise ValueError(f"target must have shape {z.shape} (probabilities) or ({n},), got {y.shape}")
        if label_smoothing:
            y = (1 - eps) * y + uniform
        # Skip y = 0 terms so that -inf logits with zero target give 0, not NaN.
        with np.errstate(invalid="ignore"):  # the 0 * -inf products are discarded
            per_sample = -np.sum(np.where(y != 0, y * log_p, dtype(0)), axis=1)
        target_sum = np.sum(y, axis=1, keepdims=True)
        grad = p * target_sum - y

    grad *= _row_scale(weights, scale, n, dtype)
    return _reduce(per_sample, weights, reduction, total), _finish(grad, out)


def _pointwise_operands(x, x_name, t, t_name, reduction):
    """(x, t, dtype) of a pointwise loss: x 1-D (N,) or 2-D (N, K), t of its
    shape and dtype, the reduction checked."""
    x = _primary(x, x_name)
    if x.ndim not in (1, 2):
        raise ValueError(f"{x_name} must be 1-D (N,) or 2-D (N, K), got shape {x.shape}")
    _check_reduction(reduction)
    dtype = x.dtype.type
    t = _secondary(t, dtype)
    if t.shape != x.shape:
        raise ValueError(f"{t_name} must have the shape of {x_name} {x.shape}, got {t.shape}")
    return x, t, dtype


def binary_cross_entropy_with_logits(z, t, *, sample_weight=None, reduction="mean", out=None):
    """Binary cross-entropy on logits, z of shape (N,) or (N, K).

    Element loss max(z, 0) - t z + log1p(exp(-|z|)), gradient sigmoid(z) - t;
    a sample's loss is the sum over its K outputs.
    """
    z, t, dtype = _pointwise_operands(z, "z", t, "t", reduction)
    n = z.shape[0]
    weights, scale, total = _sample_weights(sample_weight, n, reduction, dtype)

    element_loss = np.maximum(z, 0) - t * z + np.log1p(np.exp(-np.abs(z)))
    per_sample = element_loss if z.ndim == 1 else np.sum(element_loss, axis=1)
    grad = _sigmoid(z) - t
    row_scale = _row_scale(weights, scale, n, dtype)
    grad *= row_scale[:, 0] if z.ndim == 1 else row_scale
    return _reduce(per_sample, weights, reduction, total), _finish(grad, out)


def mse_loss(o, y, *, sample_weight=None, reduction="mean", out=None):
    """Half squared error: per-sample loss 1/2 sum_k (o - y)^2, gradient (o - y)."""
    o, y, dtype = _pointwise_operands(o, "o", y, "y", reduction)
    n = o.shape[0]
    weights, scale, total = _sample_weights(sample_weight, n, reduction, dtype)

    diff = o - y
    squared = diff * diff
    per_sample = squared if o.ndim == 1 else np.sum(squared, axis=1)
    per_sample = dtype(0.5) * per_sample
    row_scale = _row_scale(weights, scale, n, dtype)
    diff *= row_scale[:, 0] if o.ndim == 1 else row_scale
    return _reduce(per_sample, weights, reduction, total), _finish(diff, out)


def poisson_loss(z, y, *, sample_weight=None, reduction="mean", out=None):
    """Poisson loss on the log link, z of shape (N,) or (N, K), y >= 0.

    Element loss exp(z) - y z + xlogy(y, y) - y (scikit-learn's
    xlogy(y, y / y_pred) - y + y_pred at y_pred = exp(z)), gradient
    exp(z) - y; a sample's loss is the sum over its K outputs.  Entries with
    y = 0 contribute exp(z) alone (xlogy(0, 0) = 0, and 0 * z is not
    evaluated, so z = -inf gives 0).
    """
    z, y, dtype = _pointwise_operands(z, "z", y, "y", reduction)
    if not np.all(y >= 0):
        raise ValueError("y must be non-negative for the Poisson loss")
    n = z.shape[0]
    weights, scale, total = _sample_weights(sample_weight, n, reduction, dtype)

    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        y_pred = np.exp(z)
        positive = y > 0
        safe_y = np.where(positive, y, 1)   # log(1) = 0 where y = 0
        y_terms = np.where(positive, y * (np.log(safe_y) - z - 1), 0)
        element_loss = y_pred + y_terms
        grad = y_pred - y
    per_sample = element_loss if z.ndim == 1 else np.sum(element_loss, axis=1)
    row_scale = _row_scale(weights, scale, n, dtype)
    grad *= row_scale[:, 0] if z.ndim == 1 else row_scale
    return _reduce(per_sample, weights, reduction, total), _finish(grad, out)


# --------------------------------------------------------------------------
# bf16 products
# --------------------------------------------------------------------------
def round_bf16(x):
    """float32(bfloat16(x)): x (converted to float32 first) rounded to
    bfloat16's 8 significant bits, to nearest even; NaN stays NaN, +-inf
    stays infinite, overflow past the largest bf16 gives inf.  Subnormals are
    kept (the hardware dot products treat them as zero, see matmul_bf16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) \
        & np.uint32(0xFFFF0000)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = np.where(nan, (u | np.uint32(0x00400000)) & np.uint32(0xFFFF0000), rounded)
    return rounded.astype(np.uint32).view(np.float32).reshape(np.shape(x))


def matmul_bf16(A, B, *, out=None):
    """C = round_bf16(A) round_bf16(B), the products of the rounded operands
    (exact in float32: 8-bit significands) accumulated in float64, returned
    as float32.

    Tolerance of fastnn.functional.matmul_bf16 against this: both multiply
    the same rounded operands and differ only in float32 accumulation (k
    terms, any order), so elementwise
        |C - C_ref| <= k 2^-23 (|round_bf16(A)| |round_bf16(B)|)
    (the forward-error bound gamma_k of a float32 sum, u = 2^-24, doubled for
    the final rounding and the hardware's pairwise order), plus subnormal
    products the hardware paths flush (at most k 2^-126 per element).
    Against the float64 product of the unrounded float32 operands, each
    rounding of an operand adds at most u = 2^-8 relative (bf16 carries 8
    significant bits): |C - A B| <= (2^-7 + 2^-16 + k 2^-23) (|A| |B|)
    elementwise, and for random signs the error is typically below
    2^-8 sqrt(k) times the rms term (each product errs by about 0.8 u rms).
    """
    A, B = np.asarray(A), np.asarray(B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"A (m, k) and B (k, n) do not match: {A.shape} @ {B.shape}")
    if A.size == 0 or B.size == 0:
        raise ValueError(f"A and B must not be empty, got {A.shape} @ {B.shape}")
    with np.errstate(invalid="ignore", over="ignore"):    # NaN and inf propagate
        C = round_bf16(A).astype(np.float64) @ round_bf16(B).astype(np.float64)
        C = C.astype(np.float32)
    return _finish(C, out)


def _check_compute_dtype(compute_dtype):
    if compute_dtype is None:
        return False
    if compute_dtype != "bfloat16":
        raise ValueError(f"compute_dtype must be None or 'bfloat16', got {compute_dtype!r}")
    return True


# --------------------------------------------------------------------------
# dense layer
# --------------------------------------------------------------------------
def dense_forward(A, W, b, activation="identity", *, alpha=0.01, out=None, compute_dtype=None):
    """O = f(A W + b); W is (n_in, n_out) and sets the compute dtype.
    ``compute_dtype="bfloat16"``: the product is matmul_bf16's."""
    _check_activation(activation, alpha)
    bf16 = _check_compute_dtype(compute_dtype)
    W = _primary(W, "W")
    dtype = W.dtype.type
    A = _primary(A, "A").astype(dtype, copy=False)  # refuses empty batches and complex A
    if A.ndim != 2 or W.ndim != 2 or A.shape[1] != W.shape[0]:
        raise ValueError(f"A (N, n_in) and W (n_in, n_out) do not match: {A.shape} @ {W.shape}")
    Z = matmul_bf16(A, W) if bf16 else A @ W
    if b is not None:
        b = _secondary(b, dtype)
        if b.shape != (W.shape[1],):
            raise ValueError(f"b must have shape ({W.shape[1]},), got {b.shape}")
        Z += b
    return activation_forward(Z, activation, alpha=alpha, out=Z if out is None else out)


def dense_backward(A, W, O, grad_out, activation="identity", *, alpha=0.01,
                   need_input_grad=True, out=None, overwrite_grad_out=False,
                   compute_dtype=None):
    """(dA, dW, db) of a dense layer from its input A, weights W, output O.

    delta = grad_out * f'(O); dW = A^T delta; db = sum of delta's rows;
    dA = delta W^T (None when ``need_input_grad`` is False).
    ``compute_dtype="bfloat16"``: dW and dA are matmul_bf16's products.
    """
    _check_activation(activation, alpha)
    bf16 = _check_compute_dtype(compute_dtype)
    W = _primary(W, "W")
    dtype = W.dtype.type
    A = _primary(A, "A").astype(dtype, copy=False)  # refuses empty batches and complex A
    O = _secondary(O, dtype)
    if A.ndim != 2 or W.ndim != 2 or A.shape[1] != W.shape[0]:
        raise ValueError(f"A (N, n_in) and W (n_in, n_out) do not match: {A.shape} @ {W.shape}")
    if O.shape != (A.shape[0], W.shape[1]):
        raise ValueError(f"O must have shape {(A.shape[0], W.shape[1])}, got {O.shape}")
    delta_out = grad_out if overwrite_grad_out else None
    delta = activation_backward(O, grad_out, activation, alpha=alpha, out=delta_out)

    product = matmul_bf16 if bf16 else np.matmul
    dW = product(A.T, delta)
    db = np.sum(delta, axis=0)
    dA = product(delta, W.T) if need_input_grad else None
    if out is not None:
        out_dA, out_dW, out_db = out
        dW = _finish(dW, out_dW)
        db = _finish(db, out_db)
        if dA is not None and out_dA is not None:
            dA = _finish(dA, out_dA)
    return dA, dW, db


def _densify(X, dtype):
    """A scipy.sparse X as a dense array of ``dtype`` (duplicates summed)."""
    if not hasattr(X, "toarray"):
        raise TypeError(f"X must be a scipy.sparse matrix or array, got {type(X).__name__}")
    return np.asarray(X.toarray(), dtype=dtype)


def sparse_dense_forward(X, W, b=None, activation="identity", *, alpha=0.01, out=None):
    """dense_forward of the densified scipy.sparse X."""
    W = _primary(W, "W")
    return dense_forward(_densify(X, W.dtype), W, b, activation, alpha=alpha, out=out)


def sparse_dense_backward(X, W, O, grad_out, activation="identity", *, alpha=0.01, out=None,
                          overwrite_grad_out=False):
    """(dW, db): dense_backward of the densified X, without the input gradient."""
    W = _primary(W, "W")
    _, dW, db = dense_backward(_densify(X, W.dtype), W, O, grad_out, activation, alpha=alpha,
                               need_input_grad=False,
                               out=None if out is None else (None, *out),
                               overwrite_grad_out=overwrite_grad_out)
    return dW, db


# --------------------------------------------------------------------------
# optimisers (in place)
# --------------------------------------------------------------------------
def _regularised_grad(param, grad, l2, l1):
    """g' = grad + l2 theta + l1 sign(theta), in param's dtype."""
    g = grad.astype(param.dtype, copy=True)
    if l2:
        g += param.dtype.type(l2) * param
    if l1:
        g += param.dtype.type(l1) * np.sign(param)
    return g


def _clip_sign_flips(new_param, old_param, l1):
    """With L1, a weight that would cross zero stops at exactly zero."""
    if l1 > 0:  # signs compared, not the product: it underflows for tiny weights
        new_param[np.sign(new_param) * np.sign(old_param) < 0] = 0


def sgd_step(param, grad, velocity=None, *, lr, momentum=0.0, nesterov=False, l2=0.0, l1=0.0):
    """One SGD update of ``param`` (and ``velocity``) in place; returns ``param``.

    v <- momentum v - lr g'; update u = v (or momentum v - lr g' with
    Nesterov); without velocity u = -lr g'.
    """
    if velocity is None and momentum:
        raise ValueError("velocity is required when momentum > 0")
    _primary(param, "param")
    dtype = param.dtype.type
    g = _regularised_grad(param, grad, l2, l1)
    g *= dtype(lr)  # from here g holds lr * g'
    if velocity is None:
        update = -g
    else:
        velocity *= dtype(momentum)
        velocity -= g
        update = dtype(momentum) * velocity - g if nesterov else velocity
    new_param = param + update
    _clip_sign_flips(new_param, param, l1)
    param[...] = new_param
    return param


def adam_step(param, grad, m, v, *, lr, step, beta1=0.9, beta2=0.999, eps=1e-8,
              l2=0.0, l1=0.0, weight_decay=0.0):
    """One Adam(W) update of ``param``, ``m`` and ``v`` in place (step t >= 1); returns ``param``."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step!r}")
    _primary(param, "param")
    dtype = param.dtype.type
    # Decoupled (AdamW) decay first; the rest of the step sees the decayed theta.
    theta = param * dtype(1 - lr * weight_decay) if weight_decay else param.copy()
    decayed = theta.copy()
    g = _regularised_grad(theta, grad, l2, l1)
    m *= dtype(beta1)
    m += dtype(1 - beta1) * g
    v *= dtype(beta2)
    v += dtype(1 - beta2) * (g * g)
    lr_t = lr * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    theta -= dtype(lr_t) * m / (np.sqrt(v) + dtype(eps))
    _clip_sign_flips(theta, decayed, l1)
    param[...] = theta
    return param


def penalty(weights, alpha, l1=0.0):
    """alpha/2 sum ||W||^2 + l1 sum ||W||_1 over ``weights``, in float64
    (scikit-learn's MLP penalty numerator, before its division by the batch
    weight)."""
    sq = sum(float(np.sum(np.asarray(w, dtype=np.float64) ** 2)) for w in weights)
    ab = sum(float(np.sum(np.abs(np.asarray(w, dtype=np.float64)))) for w in weights)
    return 0.5 * alpha * sq + l1 * ab


# --------------------------------------------------------------------------
# logistic regression
# --------------------------------------------------------------------------
def logistic_loss_grad(X, w, b, t, *, sample_weight=None, out=None):
    """Mean (or weighted mean) binary cross-entropy of z = X w + b and its gradient.

    Returns (loss, grad_w, grad_b); loss and grad_b are Python floats.
    """
    X = _primary(X, "X")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (N, D), got shape {X.shape}")
    dtype = X.dtype.type
    w = _secondary(w, dtype)
    t = _secondary(t, dtype)
    n, d = X.shape
    if w.shape != (d,):
        raise ValueError(f"w must have shape ({d},), got {w.shape}")
    if t.shape != (n,):
        raise ValueError(f"t must have shape ({n},), got {t.shape}")
    weights, scale, total = _sample_weights(sample_weight, n, "mean", dtype)

    z = X @ w + dtype(b)
    per_sample = np.maximum(z, 0) - t * z + np.log1p(np.exp(-np.abs(z)))
    residual = _sigmoid(z) - t
    residual *= _row_scale(weights, scale, n, dtype)[:, 0]
    grad_w = X.T @ residual
    grad_b = float(np.sum(residual, dtype=np.float64))
    return _reduce(per_sample, weights, "mean", total), _finish(grad_w, out), grad_b
