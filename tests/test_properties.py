"""Property-based tests (hypothesis) of every public kernel of fastnn.functional.

Each example draws shapes (0 to 100 rows and columns), dtypes (float32,
float64, integer/bool that the contract promotes, and unsupported float16,
complex64, object), memory layouts (C, F, strided, read-only), values
(normal data mixed with +-0, subnormals, +-1e30, +-inf and NaN), keyword
arguments (valid and invalid) and ``out=`` buffers.  The example then either

- raises the exception docs/API.md documents for what was drawn (empty
  arrays, invalid arguments -> ValueError; unsupported dtypes, wrong buffer
  dtypes -> TypeError), and nothing else; or
- returns what ``fastnn.reference`` returns, within the tolerances of
  conftest (elementwise tolerance, plus the forward-error bound of a sum of
  n products for results of sums), with the same NaN and inf positions; and
  satisfies the function's mathematical properties.

Examples per test: env FASTNN_HYPOTHESIS_EXAMPLES (default 200).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastnn import functional as F, reference as R
from conftest import ACTIVATIONS, ELEMENTWISE_TOL, LAYOUTS, REDUCTIONS, as_layout, nan_buffer

EXAMPLES = int(os.environ.get("FASTNN_HYPOTHESIS_EXAMPLES", "200"))
SETTINGS = settings(derandomize=True, deadline=None, max_examples=EXAMPLES, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
PROMOTED = tuple(np.dtype(d) for d in (np.int32, np.int64, np.uint8, np.bool_))
UNSUPPORTED = tuple(np.dtype(d) for d in (np.float16, np.complex64, object))
# Float dtypes most of the time: that is where the arithmetic is.
ANY_DTYPE = st.sampled_from(FLOATS * 4 + PROMOTED + UNSUPPORTED)
DIM = st.integers(0, 100)


# ---------------------------------------------------------------------------
# drawing inputs
# ---------------------------------------------------------------------------
def compute_dtype(dtype):
    """The kernel dtype a primary array implies (float64 for unsupported ones too:
    the call raises before it matters)."""
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


def specials(dtype):
    """+-0, subnormals, +-1e30, +-inf and NaN of a float dtype."""
    sub = float(np.finfo(dtype).smallest_subnormal)
    big_sub = float(np.finfo(dtype).smallest_normal) / 2
    return np.array([0.0, -0.0, sub, -sub, big_sub, -big_sub, 1e30, -1e30,
                     np.inf, -np.inf, np.nan])


@st.composite
def arrays(draw, shape, dtype, special=True, unit=False, layout=None):
    """An array of ``shape`` and ``dtype`` in a drawn layout.  Floats are
    normal data (or uniform [0, 1] with ``unit``), a drawn fraction of them
    replaced by special values; integers are small."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        x = rng.random(shape) < 0.5
    elif dtype.kind in "iu":
        x = rng.integers(0 if unit or dtype.kind == "u" else -4, 2 if unit else 5, shape)
    else:
        x = rng.random(shape) if unit else draw(st.sampled_from((1.0, 1.0, 30.0))) * rng.standard_normal(shape)
        # a large common offset makes near-ties at large magnitude (softmax
        # rows whose max is not unique, cancellation in sums)
        x = x + (draw(st.sampled_from((0.0, 0.0, 0.0, 1e12, -1e30)))
                 if special and not unit else 0.0)
        fraction = draw(st.sampled_from((0.0, 0.0, 0.1, 0.5))) if special else 0.0
        if fraction:
            mask = rng.random(shape) < fraction
            palette = specials(np.float32 if dtype == np.float32 else np.float64)
            x[mask] = rng.choice(palette, int(mask.sum()))
    with np.errstate(all="ignore"):
        x = np.asarray(x).astype(dtype)
    return as_layout(x, layout or draw(st.sampled_from(LAYOUTS)))


def input_errors(x, supported=FLOATS + PROMOTED):
    """The documented errors of an input array: TypeError for an unsupported
    dtype, ValueError when empty."""
    errors = set()
    if x.dtype not in supported:
        errors.add(TypeError)
    if x.size == 0:
        errors.add(ValueError)
    return errors


def buffer_errors(buf, shape, dtype):
    """The documented errors of an ``out=`` (or in-place) buffer."""
    if not isinstance(buf, np.ndarray) or buf.dtype != dtype:
        return {TypeError}
    if buf.shape != tuple(shape) or not buf.flags.c_contiguous or not buf.flags.writeable:
        return {ValueError}
    return set()


@st.composite
def out_buffers(draw, shape, dtype):
    """(buffer or None, its documented errors): mostly None or a valid buffer
    prefilled with NaN, sometimes one of the wrong dtype, non-contiguous or read-only."""
    choice = draw(st.sampled_from(("none", "none", "valid", "valid", "dtype", "strided",
                                   "readonly", "list")))
    if choice == "none":
        return None, set()
    if choice == "list":
        return np.zeros(shape).tolist(), {TypeError}
    other = FLOATS[0] if dtype == FLOATS[1] else FLOATS[1]
    buf = nan_buffer(shape, other if choice == "dtype" else dtype)
    if choice in ("strided", "readonly"):
        buf = as_layout(buf, choice)
    return buf, buffer_errors(buf, shape, dtype)


def sample_weights(draw, n):
    """(sample_weight, errors, all weights zero)."""
    choice = draw(st.sampled_from(("none", "none", "valid", "valid", "zeros", "negative",
                                   "nan", "float16")))
    if choice == "none":
        return None, set(), False
    w = draw(arrays((n,), np.float64, special=False, unit=True))
    if choice == "valid":
        w = np.where(w < 0.2, 0.0, 2 * w)  # some zero weights
    elif choice == "zeros":
        w = np.zeros(n)
    elif choice == "negative":
        w = w - 2.0
    elif choice == "nan":
        w = np.full(n, np.nan)
    else:
        w = w.astype(np.float16)
    errors = input_errors(w)
    if choice in ("negative", "nan") and n:
        errors.add(ValueError)
    return w, errors, not np.any(w)


def call(errors, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``: it must raise one of ``errors`` when that set is
    not empty (any other exception propagates and fails the test), else succeed."""
    if errors:
        with pytest.raises(tuple(errors)):
            fn(*args, **kwargs)
        return None
    return fn(*args, **kwargs)


def snapshot(*arrays_):
    return [None if a is None else np.array(a, copy=True) for a in arrays_]


def assert_unchanged(arrays_, saved):
    for a, s in zip(arrays_, saved):
        if a is not None:
            assert np.asarray(a).tobytes() == s.tobytes(), "an input array was modified"


def f64(x, dtype=None):
    """``x`` rounded to ``dtype`` (the compute dtype), then as float64 (for bounds)."""
    x = np.asarray(x)
    return (x.astype(dtype) if dtype is not None else x).astype(np.float64)


# ---------------------------------------------------------------------------
# comparing
# ---------------------------------------------------------------------------
def products_overflow(A, W, dtype):
    """Where the finite terms of A @ W sum to more than ``dtype`` holds: there
    the order of the sum and fused multiply-adds decide whether a partial sum
    overflows, and between +-inf and NaN (fma(a, b, -inf) is -inf where a b
    alone rounds to +inf), so two right implementations may differ."""
    def finite(x):
        x = np.abs(np.asarray(x, dtype=np.float64))
        return np.where(np.isfinite(x), x, 0.0)
    return finite(A) @ finite(W) > np.finfo(dtype).max


def assert_matches(actual, expected, dtype, bound=None, n_terms=0, skip=None):
    """fastnn's ``actual`` against the reference's ``expected``.

    Same type/dtype and shape; the same NaN positions and the same infinities;
    finite values within the elementwise tolerance of ``dtype`` plus, for
    results of sums, the forward-error bound 2 (n_terms + 8) eps ``bound``
    (``bound`` = the sum of the absolute values of the summed terms).
    Elements where ``skip`` is set are not compared (see products_overflow).
    """
    dtype = np.dtype(dtype)
    if isinstance(expected, float):
        assert isinstance(actual, float), f"got {type(actual).__name__}, expected float"
    else:
        assert actual.dtype == expected.dtype, f"dtype {actual.dtype}, expected {expected.dtype}"
        assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if skip is not None:
        a, e = np.where(skip, 0.0, a), np.where(skip, 0.0, e)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (
        f"NaN positions differ: fastnn {np.argwhere(nan_a & ~nan_e)[:5].tolist()} "
        f"reference {np.argwhere(nan_e & ~nan_a)[:5].tolist()}")
    inf = np.isinf(e)
    assert np.array_equal(np.isinf(a), inf) and np.array_equal(a[inf], e[inf]), (
        f"infinities differ: fastnn {a[inf | np.isinf(a)][:5]} reference {e[inf | np.isinf(a)][:5]}")
    tol = ELEMENTWISE_TOL[dtype]
    allowed = tol["rtol"] * np.abs(e) + tol["atol"]
    if bound is not None:
        allowed = allowed + 2 * (n_terms + 8) * np.finfo(dtype).eps * np.asarray(bound)
    finite = np.isfinite(e)
    if skip is not None:  # (their bound may be NaN: the products overflowed)
        finite &= ~np.asarray(skip, bool)
    with np.errstate(invalid="ignore"):
        bad = finite & ~(np.abs(a - e) <= allowed)
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.size} values differ: fastnn {a[bad][:5]}, "
        f"reference {e[bad][:5]}, allowed {np.broadcast_to(allowed, bad.shape)[bad][:5]}")


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------
ACTIVATION_NAMES = st.sampled_from(ACTIVATIONS * 3 + ("softplus",))
ALPHAS = st.sampled_from((0.01, 0.01, 0.2, 1.0, 0.0, -1.0, float("nan")))


def activation_errors(name, alpha):
    return set() if name in ACTIVATIONS and np.isfinite(alpha) and alpha > 0 else {ValueError}


@SETTINGS
@given(st.data())
def test_activation_forward_backward(data):
    draw = data.draw
    shape = draw(st.sampled_from(((DIM, DIM), (DIM,), (DIM, 3, DIM))))
    shape = tuple(draw(d) if not isinstance(d, int) else d for d in shape)
    name, alpha = draw(ACTIVATION_NAMES), draw(ALPHAS)
    z = draw(arrays(shape, draw(ANY_DTYPE)))
    dtype = compute_dtype(z.dtype)
    errors = activation_errors(name, alpha) | input_errors(z)

    # forward, out= a buffer or z itself (in place)
    if draw(st.booleans()):
        out, out_errors = z, buffer_errors(z, z.shape, dtype)
    else:
        out, out_errors = draw(out_buffers(z.shape, dtype))
    saved = snapshot(z)
    with np.errstate(all="ignore"):
        result = call(errors | out_errors, F.activation_forward, z, name, alpha=alpha, out=out)
        if result is not None:
            if out is not None:
                assert result is out
            if out is not z:
                assert_unchanged([z], saved)
            assert_matches(result, R.activation_forward(saved[0], name, alpha=alpha), dtype)

    # backward on an arbitrary o (the kernel does not assume o is f(z))
    g = draw(arrays(shape, draw(ANY_DTYPE)))
    errors |= input_errors(g)
    o = z if out is not z else saved[0]
    out, out_errors = draw(out_buffers(shape, dtype))
    saved = snapshot(o, g)
    with np.errstate(all="ignore"):
        result = call(errors | out_errors, F.activation_backward, o, g, name, alpha=alpha, out=out)
        if result is not None:
            assert_unchanged([o, g], saved)
            expected = R.activation_backward(o, g, name, alpha=alpha)
            assert_matches(result, expected, dtype)


# ---------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------
@SETTINGS
@given(st.data())
def test_softmax_and_log_softmax(data):
    draw = data.draw
    n, c = draw(DIM), draw(DIM)
    x = draw(arrays((n, c), draw(ANY_DTYPE)))
    dtype = compute_dtype(x.dtype)
    take_log = draw(st.booleans())
    fn, ref = (F.log_softmax, R.log_softmax) if take_log else (F.softmax, R.softmax)
    out, out_errors = draw(out_buffers((n, c), dtype))
    saved = snapshot(x)
    with np.errstate(all="ignore"):
        result = call(input_errors(x) | out_errors, fn, x, out=out)
        if result is None:
            return
        assert_unchanged([x], saved)
        assert_matches(result, ref(x), dtype)
        p = np.exp(f64(result)) if take_log else f64(result)

    xc = f64(x, dtype)
    m = xc.max(axis=1)
    nan_rows = np.isnan(xc).any(axis=1) | ~np.isfinite(m)  # NaN, +inf or all -inf
    # the NaN-row policy, and probability exactly 0 for -inf entries of other rows
    assert np.isnan(p[nan_rows]).all()
    assert not np.isnan(p[~nan_rows]).any()
    assert (p[~nan_rows][np.isneginf(xc[~nan_rows])] == 0).all()
    # rows sum to 1 (each of the c terms carries a few roundings)
    sums = p[~nan_rows].sum(axis=1)
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=2 * (c + 8) * np.finfo(dtype).eps)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
def reduction_errors(reduction, all_zero_weights):
    if reduction not in REDUCTIONS:
        return {ValueError}
    return {ValueError} if reduction == "mean" and all_zero_weights else set()


def loss_bounds(term_bound, weights, reduction, n):
    """Bounds of the returned loss from per-sample bounds (already weighted)."""
    if reduction == "none":
        return term_bound
    total = float(np.sum(term_bound))
    if reduction == "mean":
        total /= n if weights is None else float(np.sum(weights, dtype=np.float64))
    return total


def row_scale(weights, reduction, n, dtype):
    """w_i s: what multiplies each gradient row."""
    w = np.ones(n) if weights is None else f64(weights, dtype)
    if reduction == "mean":
        w = w / w.sum()
    return w


@st.composite
def class_targets(draw, n, c):
    """(target, errors, dense float64 target rows or None)."""
    kind = draw(st.sampled_from(("int64", "int32", "uint8", "whole", "fraction", "probs",
                                 "probs", "float16", "out_of_range")))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "probs":
        t = draw(arrays((n, c), draw(st.sampled_from(FLOATS)), special=False, unit=True))
        t = np.where(t < 0.3, 0, t)  # exact zeros: their terms are skipped
        sums = t.sum(axis=1, keepdims=True)
        t = as_layout(t / np.where(sums > 0, sums, 1), draw(st.sampled_from(LAYOUTS)))
        return t, input_errors(t), t
    labels = rng.integers(0, max(c, 1), n)
    if kind == "out_of_range" and n:
        labels[rng.integers(0, n)] += c
    dtype = {"int64": np.int64, "int32": np.int32, "uint8": np.uint8, "whole": np.float64,
             "fraction": np.float64, "float16": np.float16, "out_of_range": np.int64}[kind]
    t = labels.astype(dtype) + (0.5 if kind == "fraction" else 0)
    t = as_layout(t, draw(st.sampled_from(LAYOUTS)))
    errors = input_errors(t, FLOATS + PROMOTED[:3])
    if kind in ("fraction", "out_of_range") or c == 0:
        errors.add(ValueError)
    dense = np.zeros((n, c))
    if not errors:
        dense[np.arange(n), labels] = 1.0
    return t, errors, dense


@SETTINGS
@given(st.data())
def test_softmax_cross_entropy(data):
    draw = data.draw
    n, c = draw(DIM), draw(DIM)
    z = draw(arrays((n, c), draw(ANY_DTYPE)))
    dtype = compute_dtype(z.dtype)
    target, errors, dense = draw(class_targets(n, c))
    w, w_errors, all_zero = sample_weights(draw, n)
    reduction = draw(st.sampled_from(REDUCTIONS * 2 + ("avg",)))
    smoothing = draw(st.sampled_from((0.0, 0.0, 0.1, 0.5, 1.0, -0.1)))
    out, out_errors = draw(out_buffers((n, c), dtype))
    errors |= input_errors(z) | w_errors | out_errors | reduction_errors(reduction, all_zero)
    if not 0 <= smoothing < 1:
        errors.add(ValueError)
    kwargs = dict(sample_weight=w, reduction=reduction, label_smoothing=smoothing)
    saved = snapshot(z, target, w)
    with np.errstate(all="ignore"):
        result = call(errors, F.softmax_cross_entropy, z, target, out=out, **kwargs)
        if result is None:
            return
        assert_unchanged([z, target, w], saved)
        loss, grad = result
        expected_loss, expected_grad = R.softmax_cross_entropy(z, target, **kwargs)

        # bounds: |y| |log p| per term, (p |sum y| + |y|) w s per gradient entry
        y = (1 - smoothing) * f64(dense, dtype) + smoothing / c
        log_p = R.log_softmax(f64(z, dtype))
        p = np.exp(log_p)
        ws = row_scale(w, reduction, n, dtype)
        sample_bound = np.where(y != 0, np.abs(y * log_p), 0).sum(axis=1)
        sample_bound *= np.ones(n) if w is None else f64(w, dtype)
        grad_bound = (p * np.abs(y.sum(axis=1, keepdims=True)) + np.abs(y)) * ws[:, None]
        assert_matches(loss, expected_loss, dtype, loss_bounds(sample_bound, w, reduction, n),
                       c + n)
        assert_matches(grad, expected_grad, dtype, grad_bound, c)
    if out is not None:
        assert grad is out
    # gradient rows sum to 0 (finite rows)
    g = f64(grad)
    rows = np.isfinite(g).all(axis=1)
    allowed = 2 * (c + 8) * np.finfo(dtype).eps * grad_bound[rows].sum(axis=1)
    assert (np.abs(g[rows].sum(axis=1)) <= allowed).all(), "gradient rows do not sum to 0"


@SETTINGS
@given(st.data())
def test_binary_cross_entropy_and_mse(data):
    draw = data.draw
    mse = draw(st.booleans())
    shape = (draw(DIM),) if draw(st.booleans()) else (draw(DIM), draw(DIM))
    n = shape[0]
    z = draw(arrays(shape, draw(ANY_DTYPE)))
    dtype = compute_dtype(z.dtype)
    # BCE targets in [0, 1] (floats, or int/bool 0/1); MSE targets anything
    t = draw(arrays(shape, draw(ANY_DTYPE), unit=not mse))
    w, w_errors, all_zero = sample_weights(draw, n)
    reduction = draw(st.sampled_from(REDUCTIONS * 2 + ("avg",)))
    out, out_errors = draw(out_buffers(shape, dtype))
    errors = (input_errors(z) | input_errors(t) | w_errors | out_errors
              | reduction_errors(reduction, all_zero))
    fn, ref = ((F.mse_loss, R.mse_loss) if mse
               else (F.binary_cross_entropy_with_logits, R.binary_cross_entropy_with_logits))
    kwargs = dict(sample_weight=w, reduction=reduction)
    saved = snapshot(z, t, w)
    with np.errstate(all="ignore"):
        result = call(errors, fn, z, t, out=out, **kwargs)
        if result is None:
            return
        assert_unchanged([z, t, w], saved)
        loss, grad = result
        zc, tc = f64(z, dtype), f64(t, dtype)
        ws = row_scale(w, reduction, n, dtype)
        ws = ws if z.ndim == 1 else ws[:, None]
        if mse:
            d = zc - tc
            term_bound = np.abs(d) * (np.abs(zc) + np.abs(tc)) + d * d
            grad_bound = (np.abs(zc) + np.abs(tc)) * ws
            # the kernel accumulates the squares in float64, where the float32
            # reference may overflow: the loss oracle is the float64 reference
            expected_loss = ref(zc, tc, sample_weight=None if w is None else f64(w, dtype),
                                reduction=reduction)[0]
            if reduction == "none":
                expected_loss = expected_loss.astype(dtype)
            expected_grad = ref(z, t, **kwargs)[1]
        else:
            term_bound = np.maximum(zc, 0) + np.abs(tc * zc) + np.log1p(np.exp(-np.abs(zc)))
            grad_bound = (1 + np.abs(tc)) * ws
            expected_loss, expected_grad = ref(z, t, **kwargs)
        sample_bound = term_bound if z.ndim == 1 else term_bound.sum(axis=1)
        sample_bound = sample_bound * (1 if w is None else f64(w, dtype))
        k = 1 if z.ndim == 1 else z.shape[1]
        assert_matches(loss, expected_loss, dtype, loss_bounds(sample_bound, w, reduction, n),
                       k + n)
        assert_matches(grad, expected_grad, dtype, grad_bound)
        if out is not None:
            assert grad is out
        # the losses are >= 0 wherever they are not NaN (BCE: for targets in [0, 1])
        if mse or ((tc >= 0) & (tc <= 1)).all():
            assert not (np.asarray(loss) < 0).any()
        if mse and np.isfinite(zc).all():
            # 0 exactly at equality, with a zero gradient
            zero, zero_grad = fn(z, z, **kwargs)
            assert np.all(np.asarray(zero) == 0) and np.all(zero_grad == 0)


@SETTINGS
@given(st.data())
def test_poisson_loss(data):
    draw = data.draw
    shape = (draw(DIM),) if draw(st.booleans()) else (draw(DIM), draw(DIM))
    n = shape[0]
    z = draw(arrays(shape, draw(ANY_DTYPE)))
    dtype = compute_dtype(z.dtype)
    # targets: rates in [0, 1] with exact zeros, or signed data; either with specials
    t = draw(arrays(shape, draw(ANY_DTYPE), unit=draw(st.booleans())))
    if t.dtype.kind == "f" and draw(st.booleans()):
        t = np.where(np.asarray(t) < 0.3, 0, t).astype(t.dtype)
    w, w_errors, all_zero = sample_weights(draw, n)
    reduction = draw(st.sampled_from(REDUCTIONS * 2 + ("avg",)))
    out, out_errors = draw(out_buffers(shape, dtype))
    errors = (input_errors(z) | input_errors(t) | w_errors | out_errors
              | reduction_errors(reduction, all_zero))
    bad_target = False
    if t.dtype in FLOATS + PROMOTED and t.size:
        with np.errstate(all="ignore"):
            bad_target = not (np.asarray(t).astype(dtype) >= 0).all()   # negative or NaN
    if bad_target:
        errors.add(ValueError)
    kwargs = dict(sample_weight=w, reduction=reduction)
    saved = snapshot(z, t, w)
    with np.errstate(all="ignore"):
        result = call(errors, F.poisson_loss, z, t, out=out, **kwargs)
        if result is None:
            if bad_target and not (errors - {ValueError}) and w is None and out is None:
                call({ValueError}, R.poisson_loss, z, t, **kwargs)   # the oracle refuses it too
            return
        assert_unchanged([z, t, w], saved)
        loss, grad = result
        zc, tc = f64(z, dtype), f64(t, dtype)
        # the loss oracle: the prediction exp(z) in the compute dtype (it
        # overflows there), the y terms in float64 (where the kernel keeps them)
        e = np.exp(np.asarray(z).astype(dtype)).astype(np.float64)
        positive = tc > 0
        log_t = np.log(np.where(positive, tc, 1))
        element = e + np.where(positive, tc * (log_t - zc - 1), 0)
        per_sample = element if z.ndim == 1 else element.sum(axis=1)
        term_bound = e + np.where(positive, np.abs(tc * zc) + np.abs(tc * log_t) + tc, 0)
        sample_bound = term_bound if z.ndim == 1 else term_bound.sum(axis=1)
        ws_rows = np.ones(n) if w is None else f64(w, dtype)
        per_sample, sample_bound = per_sample * ws_rows, sample_bound * ws_rows
        if reduction == "none":
            expected_loss = per_sample.astype(dtype)
        else:
            expected_loss = float(np.sum(per_sample))
            if reduction == "mean":
                expected_loss /= float(np.sum(ws_rows))
        k = 1 if z.ndim == 1 else z.shape[1]
        assert_matches(loss, expected_loss, dtype, loss_bounds(sample_bound, w, reduction, n),
                       k + n)
        ws = row_scale(w, reduction, n, dtype)
        ws = ws if z.ndim == 1 else ws[:, None]
        assert_matches(grad, R.poisson_loss(z, t, **kwargs)[1], dtype, (e + np.abs(tc)) * ws)
        if out is not None:
            assert grad is out
        # each element's loss is >= 0 (exp(z) - y z + y log y - y is, for y >= 0):
        # only rounding goes below
        assert not (np.asarray(loss) < -np.asarray(loss_bounds(sample_bound, w, reduction, n))
                    * 1e-5).any()


# ---------------------------------------------------------------------------
# dense layer
# ---------------------------------------------------------------------------
def dense_case(draw):
    n, n_in, n_out = draw(DIM), draw(DIM), draw(DIM)
    W = draw(arrays((n_in, n_out), draw(ANY_DTYPE)))
    dtype = compute_dtype(W.dtype)
    A = draw(arrays((n, n_in), draw(ANY_DTYPE)))
    name, alpha = draw(ACTIVATION_NAMES), draw(st.sampled_from((0.01, 0.2, -1.0)))
    errors = input_errors(W) | input_errors(A) | activation_errors(name, alpha)
    return n, n_in, n_out, A, W, dtype, name, alpha, errors


@SETTINGS
@given(st.data())
def test_dense_forward(data):
    draw = data.draw
    n, n_in, n_out, A, W, dtype, name, alpha, errors = dense_case(draw)
    b = draw(arrays((n_out,), draw(ANY_DTYPE))) if draw(st.booleans()) else None
    if b is not None:
        errors |= input_errors(b)
    out, out_errors = draw(out_buffers((n, n_out), dtype))
    saved = snapshot(A, W, b)
    with np.errstate(all="ignore"):
        result = call(errors | out_errors, F.dense_forward, A, W, b, name, alpha=alpha, out=out)
        if result is None:
            return
        assert_unchanged([A, W, b], saved)
        # f is 1-Lipschitz for these slopes: the bound of A W + b bounds f(A W + b)
        bound = np.abs(f64(A, dtype)) @ np.abs(f64(W, dtype))
        if b is not None:
            bound += np.abs(f64(b, dtype))
        assert_matches(result, R.dense_forward(A, W, b, name, alpha=alpha), dtype, bound, n_in,
                       skip=products_overflow(f64(A, dtype), f64(W, dtype), dtype))
    if out is not None:
        assert result is out


@SETTINGS
@given(st.data())
def test_dense_backward(data):
    draw = data.draw
    n, n_in, n_out, A, W, dtype, name, alpha, errors = dense_case(draw)
    O = draw(arrays((n, n_out), draw(ANY_DTYPE)))
    G = draw(arrays((n, n_out), draw(ANY_DTYPE)))
    errors |= input_errors(O) | input_errors(G)
    need_input_grad = draw(st.booleans())
    overwrite = draw(st.booleans())
    if overwrite:
        errors |= buffer_errors(G, (n, n_out), dtype)
    choice = draw(st.sampled_from(("none", "none", "valid", "no_dA", "bad_dW", "not_tuple")))
    out = None
    if choice != "none":
        out = (None if choice == "no_dA" else nan_buffer((n, n_in), dtype),
               nan_buffer((n_in, n_out), np.float16 if choice == "bad_dW" else dtype),
               nan_buffer((n_out,), dtype))
        if choice == "bad_dW":
            errors.add(TypeError)
        if choice == "not_tuple":
            out, errors = list(out[:2]), errors | {TypeError}
    saved = snapshot(A, W, O, G)
    with np.errstate(all="ignore"):
        result = call(errors, F.dense_backward, A, W, O, G, name, alpha=alpha,
                      need_input_grad=need_input_grad, out=out, overwrite_grad_out=overwrite)
        if result is None:
            return
        assert_unchanged([A, W, O] if overwrite else [A, W, O, G], saved)
        dA, dW, db = result
        eA, eW, eb = R.dense_backward(*saved, name, alpha=alpha, need_input_grad=need_input_grad)
        delta = np.abs(R.activation_backward(f64(O, dtype), f64(saved[3], dtype), name,
                                             alpha=alpha))
        assert_matches(dW, eW, dtype, np.abs(f64(A, dtype)).T @ delta, n)
        assert_matches(db, eb, dtype, delta.sum(axis=0), n)
        if need_input_grad:
            assert_matches(dA, eA, dtype, delta @ np.abs(f64(W, dtype)).T, n_out)
        else:
            assert dA is None
    if out is not None:
        assert dW is out[1] and db is out[2] and (out[0] is None or not need_input_grad
                                                  or dA is out[0])


# ---------------------------------------------------------------------------
# logistic regression
# ---------------------------------------------------------------------------
@SETTINGS
@given(st.data())
def test_logistic_loss_grad(data):
    draw = data.draw
    n, d = draw(DIM), draw(DIM)
    X = draw(arrays((n, d), draw(ANY_DTYPE)))
    dtype = compute_dtype(X.dtype)
    w = draw(arrays((d,), draw(ANY_DTYPE)))
    # targets in [0, 1] as documented (outside it the float32 reference's
    # per-sample losses overflow where the kernel's float64 ones do not)
    t = draw(arrays((n,), draw(ANY_DTYPE), special=False, unit=True))
    b = draw(st.sampled_from((0.0, 0.5, -3.0, np.float32(2.0), 1e30, -np.inf, np.nan, 7,
                              "1", None, 1j)))
    sw, w_errors, all_zero = sample_weights(draw, n)
    out, out_errors = draw(out_buffers((d,), dtype))
    errors = input_errors(X) | input_errors(w) | input_errors(t) | w_errors | out_errors
    if all_zero:
        errors.add(ValueError)
    if not isinstance(b, (int, float, np.floating)):
        errors.add(TypeError)
    saved = snapshot(X, w, t, sw)
    with np.errstate(all="ignore"):
        result = call(errors, F.logistic_loss_grad, X, w, b, t, sample_weight=sw, out=out)
        if result is None:
            return
        assert_unchanged([X, w, t, sw], saved)
        loss, grad_w, grad_b = result
        e_loss, e_grad_w, e_grad_b = R.logistic_loss_grad(X, w, b, t, sample_weight=sw)
        assert isinstance(grad_b, float)
        # bounds: z = X w + b errs by ~ d eps (|X| |w| + |b|), which moves the
        # loss by at most (1 + |t|) times that and the residual by a quarter of it
        Xc, wc, tc = f64(X, dtype), f64(w, dtype), f64(t, dtype)
        z_bound = np.abs(Xc) @ np.abs(wc) + abs(float(b))
        z = Xc @ wc + float(b)
        ws = row_scale(sw, "mean", n, dtype)
        loss_terms = (np.maximum(z, 0) + np.abs(tc * z) + np.log1p(np.exp(-np.abs(z)))
                      + (1 + np.abs(tc)) * z_bound)
        # (the residual is off by at most 1 + |t| whatever z's error: cap it)
        r_bound = (1 + np.abs(tc) + np.minimum(z_bound, 1 / np.finfo(dtype).eps)) * ws
        assert_matches(loss, e_loss, dtype, float(np.sum(loss_terms * ws)), n + d)
        assert_matches(grad_w, e_grad_w, dtype, np.abs(Xc).T @ r_bound, n + d)
        assert_matches(grad_b, e_grad_b, dtype, float(np.sum(r_bound)), n + d)
    if out is not None:
        assert grad_w is out


# ---------------------------------------------------------------------------
# optimiser updates
# ---------------------------------------------------------------------------
LRS = st.sampled_from((0.0, 0.0, 1e-3, 0.1, 1.0, -0.1, float("nan")))
REGULARISATION = st.sampled_from((0.0, 0.0, 1e-4, 0.1, -1.0))


def hyper_errors(**values):
    return {ValueError} if any(not np.isfinite(v) or v < 0 for v in values.values()) else set()


@st.composite
def params(draw):
    """(param, errors): mostly a valid float array, sometimes one the kernels
    must refuse (integer, float16, read-only, non-contiguous, empty, a list)."""
    shape = (draw(DIM),) if draw(st.booleans()) else (draw(DIM), draw(DIM))
    dtype = draw(ANY_DTYPE)
    layout = draw(st.sampled_from(("C",) * 6 + LAYOUTS))
    p = draw(arrays(shape, dtype, layout=layout))
    if draw(st.integers(0, 20)) == 0:
        return p.tolist(), {TypeError}
    errors = input_errors(p, FLOATS)
    if not errors:
        errors = buffer_errors(p, shape, p.dtype)
    return p, errors


def state(draw, p, nonneg=False):
    """(state array like param, errors): zeros or random, sometimes invalid."""
    dtype = p.dtype if p.dtype in FLOATS else np.dtype(np.float64)
    choice = draw(st.sampled_from(("zeros", "random", "random", "dtype", "readonly")))
    if choice == "zeros":
        return np.zeros(p.shape, dtype), set()
    s = draw(arrays(p.shape, dtype, layout="C"))
    if nonneg:
        s = np.abs(s)
    if choice == "dtype":
        s = s.astype(FLOATS[0] if dtype == FLOATS[1] else FLOATS[1])
    elif choice == "readonly":
        s = as_layout(s, "readonly")
    return s, buffer_errors(s, p.shape, dtype)


def sign_flips(old, new):
    """Weights whose sign changed from strictly + to strictly - or back."""
    with np.errstate(invalid="ignore"):
        return np.sign(f64(old)) * np.sign(f64(new)) < 0


@SETTINGS
@given(st.data())
def test_sgd_step(data):
    draw = data.draw
    p, errors = draw(params())
    g = draw(arrays(np.shape(p), draw(ANY_DTYPE)))
    errors |= input_errors(g)
    momentum = draw(st.sampled_from((0.0, 0.0, 0.9, 1.0, 1.5)))
    velocity, v_errors = (None, set()) if draw(st.booleans()) else state(draw, np.asarray(p))
    errors |= v_errors
    if momentum and velocity is None:
        errors.add(ValueError)
    kwargs = dict(lr=draw(LRS), momentum=momentum, nesterov=draw(st.booleans()),
                  l2=draw(REGULARISATION), l1=draw(REGULARISATION))
    errors |= hyper_errors(lr=kwargs["lr"], l2=kwargs["l2"], l1=kwargs["l1"],
                           momentum=1 - momentum)
    p0, g0, v0 = snapshot(p, g, velocity)
    with np.errstate(all="ignore"):
        result = call(errors, F.sgd_step, p, g, velocity, **kwargs)
        if result is None:
            return
        assert result is p
        assert_unchanged([g], [g0])
        ep, ev = p0.copy(), None if v0 is None else v0.copy()
        R.sgd_step(ep, g0, ev, **kwargs)
        assert_matches(p, ep, p.dtype, np.abs(f64(p0)) + np.abs(f64(ep)), 2)
        if velocity is not None:
            assert_matches(velocity, ev, p.dtype, np.abs(f64(v0)) + np.abs(f64(ev)), 2)
    if kwargs["l1"] > 0:
        assert not sign_flips(p0, p).any(), "an L1 step flipped a weight's sign"
    # lr = 0 with finite data and no velocity yet: nothing moves
    fresh = velocity is None or not v0.any()
    if kwargs["lr"] == 0 and fresh and np.isfinite(p0).all() and np.isfinite(f64(g0)).all():
        assert np.array_equal(p, p0), "SGD with lr=0 changed the weights"


@SETTINGS
@given(st.data())
def test_adam_step(data):
    draw = data.draw
    p, errors = draw(params())
    g = draw(arrays(np.shape(p), draw(ANY_DTYPE)))
    errors |= input_errors(g)
    if isinstance(p, np.ndarray):
        (m, m_errors), (v, v_errors) = state(draw, p), state(draw, p, nonneg=True)
    else:
        (m, m_errors), (v, v_errors) = (np.zeros(1), set()), (np.zeros(1), set())
    errors |= m_errors | v_errors
    lr = draw(LRS)
    kwargs = dict(lr=lr, step=draw(st.sampled_from((1, 2, 10, 1000, 0, 1.5))),
                  beta1=draw(st.sampled_from((0.9, 0.0, 1.0))), beta2=draw(st.sampled_from((0.999, 1.0))),
                  eps=draw(st.sampled_from((1e-8, 1e-8, 0.0))), l2=draw(REGULARISATION),
                  l1=draw(REGULARISATION),
                  weight_decay=draw(st.sampled_from((0.0, 0.01))) if abs(lr) < 1 else 0.0)
    errors |= hyper_errors(lr=lr, l2=kwargs["l2"], l1=kwargs["l1"], beta1=1 - kwargs["beta1"] - 1e-9,
                           beta2=1 - kwargs["beta2"] - 1e-9)
    if kwargs["step"] not in (1, 2, 10, 1000):
        errors.add(ValueError)
    p0, g0, m0, v0 = snapshot(p, g, m, v)
    with np.errstate(all="ignore"):
        result = call(errors, F.adam_step, p, g, m, v, **kwargs)
        if result is None:
            return
        assert result is p
        assert_unchanged([g], [g0])
        ep, em, ev = p0.copy(), m0.copy(), v0.copy()
        R.adam_step(ep, g0, em, ev, **kwargs)
        assert_matches(m, em, p.dtype, np.abs(f64(m0)) + np.abs(f64(em)), 2)
        assert_matches(v, ev, p.dtype, np.abs(f64(v0)) + np.abs(f64(ev)), 2)
        assert_matches(p, ep, p.dtype, np.abs(f64(p0)) + np.abs(f64(ep)), 2)
    if kwargs["l1"] > 0:
        assert not sign_flips(p0, p).any(), "an L1 step flipped a weight's sign"
