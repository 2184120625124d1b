"""fastnn.functional against fastnn.reference, and the mathematics both must obey.

Every kernel is compared with its NumPy twin over float32/float64, awkward
shapes, every input layout and NaN-prefilled ``out=`` buffers; property tests
(extreme logits, NaN policy, finite differences, L1 clipping) run on both
implementations through the ``impl`` fixture.
"""
import numpy as np
import pytest

import fastnn
from fastnn import _kernels, functional, reference
from conftest import (
    ACTIVATIONS,
    DTYPES,
    LAYOUTS,
    REDUCTIONS,
    SHAPES_2D,
    as_layout,
    assert_close,
    assert_close_accumulated,
    assert_gradient_matches,
    assert_loss_close,
    nan_buffer,
    randn,
)

# More than a million elements: larger than any OpenMP chunk or block.
LARGE_2D = (8192, 131)
INDEX_DTYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)


def activation_input(rng, shape, dtype, name):
    """Pre-activations, with exact zeros for the relus (their kink)."""
    z = randn(rng, shape, dtype, 3.0)
    if name in ("relu", "leaky_relu"):
        z.reshape(-1)[::5] = 0
    return z


def activation_output(rng, shape, dtype, name):
    """Valid stored outputs o = f(z) for the backward pass."""
    return reference.activation_forward(activation_input(rng, shape, dtype, name), name,
                                        alpha=0.1)


def labels(rng, n, n_classes, dtype=np.int64):
    return rng.integers(0, n_classes, n).astype(dtype)


def probabilities(rng, n, n_classes, dtype):
    return rng.dirichlet(np.ones(n_classes), n).astype(dtype)


def weights_or_none(rng, n, weighted):
    # Some zero weights: they must drop their samples, not break anything.
    if not weighted:
        return None
    w = rng.uniform(0, 2, n)
    w[::4] = 0
    w[0] = 0.5
    return w


def assert_result_close(actual, expected, dtype):
    """(loss, grad) pairs of the losses."""
    assert_loss_close(actual[0], expected[0], dtype)
    assert_close(actual[1], expected[1], dtype)


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------
ACTIVATION_SHAPES = ((1,), (7,), *SHAPES_2D, (3, 4, 5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("shape", ACTIVATION_SHAPES)
def test_activation_forward_matches_reference(rng, dtype, name, shape):
    z = activation_input(rng, shape, dtype, name)
    out = nan_buffer(shape, dtype)
    got = functional.activation_forward(z, name, alpha=0.1, out=out)
    assert got is out
    assert_close(got, reference.activation_forward(z, name, alpha=0.1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("shape", ACTIVATION_SHAPES)
def test_activation_backward_matches_reference(rng, dtype, name, shape):
    o = activation_output(rng, shape, dtype, name)
    g = randn(rng, shape, dtype)
    out = nan_buffer(shape, dtype)
    got = functional.activation_backward(o, g, name, alpha=0.1, out=out)
    assert got is out
    assert_close(got, reference.activation_backward(o, g, name, alpha=0.1), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_accept_every_layout(rng, layout, name):
    z = activation_input(rng, (33, 17), np.float64, name)
    o = reference.activation_forward(z, name)
    g = randn(rng, z.shape, np.float64)
    assert_close(functional.activation_forward(as_layout(z, layout), name), o)
    assert_close(functional.activation_backward(as_layout(o, layout), as_layout(g, layout), name),
                 reference.activation_backward(o, g, name))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_in_place(rng, impl, dtype, name):
    z = activation_input(rng, (41, 13), dtype, name)
    expected_o = reference.activation_forward(z, name)
    o = z.copy()
    assert impl.activation_forward(o, name, out=o) is o
    assert_close(o, expected_o, dtype)

    g = randn(rng, z.shape, dtype)
    expected_delta = reference.activation_backward(o, g, name)
    assert impl.activation_backward(o, g, name, out=g) is g
    assert_close(g, expected_delta, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_special_values(impl, dtype, name):
    z = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e4, -1e4, 88.8, -100.0, -745.0, 1e-30],
                 dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):  # the stable sigmoid never overflows
        got = impl.activation_forward(z, name, alpha=0.5)
    with np.errstate(all="ignore"):
        z64 = z.astype(np.float64)
        exact = {
            "identity": z64,
            "sigmoid": np.where(z64 >= 0, 1 / (1 + np.exp(-z64)), np.exp(z64) / (1 + np.exp(z64))),
            "tanh": np.tanh(z64),
            "relu": np.where(z64 < 0, 0.0, z64),
            "leaky_relu": np.where(z64 < 0, 0.5 * z64, z64),
        }[name].astype(dtype)
    # relative accuracy in the tails too (sigmoid(-100) is 3.7e-44, not 0)
    tiny = np.finfo(dtype).smallest_subnormal
    assert_close(got, exact, dtype, atol=tiny)
    assert np.isnan(got[0])


def test_relu_derivative_is_zero_at_zero(impl):
    o = np.array([0.0, -0.0, 1e-300, 2.0])
    g = np.ones(4)
    np.testing.assert_array_equal(impl.activation_backward(o, g, "relu"), [0, 0, 1, 1])
    np.testing.assert_array_equal(impl.activation_backward(o, g, "leaky_relu", alpha=0.25),
                                  [1, 1, 1, 1])
    np.testing.assert_array_equal(impl.activation_backward(-o, g, "leaky_relu", alpha=0.25),
                                  [1, 1, 0.25, 0.25])


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_backward_gradient_check(rng, impl, name):
    # The derivative of sum(r * f(z)) w.r.t. z is the delta for grad_out = r.
    z = rng.standard_normal((4, 5)) * 2
    z[np.abs(z) < 1e-3] = 0.5  # keep away from the relu kink
    r = rng.standard_normal(z.shape)
    delta = impl.activation_backward(impl.activation_forward(z, name, alpha=0.1), r, name,
                                     alpha=0.1)
    assert_gradient_matches(
        delta, lambda x: np.sum(r * impl.activation_forward(x, name, alpha=0.1)), z)


# ---------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("func", ("softmax", "log_softmax"))
def test_softmax_matches_reference(rng, func, shape, dtype):
    x = randn(rng, shape, dtype, 4.0)
    out = nan_buffer(shape, dtype)
    got = getattr(functional, func)(x, out=out)
    assert got is out
    assert_close(got, getattr(reference, func)(x), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", ("softmax", "log_softmax"))
def test_softmax_accepts_every_layout(rng, func, layout):
    x = randn(rng, (31, 12), np.float64, 4.0)
    assert_close(getattr(functional, func)(as_layout(x, layout)), getattr(reference, func)(x))


@pytest.mark.parametrize("func", ("softmax", "log_softmax"))
def test_softmax_in_place(rng, func):
    x = randn(rng, (20, 9), np.float32, 4.0)
    expected = getattr(reference, func)(x)
    assert getattr(functional, func)(x, out=x) is x
    assert_close(x, expected)


def extreme_logits(dtype):
    """Rows that overflow a naive softmax, underflow it, or hold -inf entries;
    each row's max is finite.  With their labels (never on a -inf entry)."""
    inf = np.inf
    rows = [
        [1e4, -1e4, 88.8, 0.0, -inf, 1.0, 2.0],
        [-1e4, -1e4, -1e4 + 1, -inf, -1e4, -1e4 - 3, -1e4],
        [88.8, 88.8, 88.7, -88.8, 0.0, -inf, 88.0],
        [1e4, 1e4, 1e4, 1e4, 1e4, 1e4, 1e4],
        [-inf, -inf, 0.0, -inf, -inf, -inf, -inf],
        [-inf, 88.8, -inf, -1e4, 1e4, -inf, 5.0],
        [-1e4, 1e4, -1e4, 1e4, -inf, 0.0, 88.8],
    ]
    return np.array(rows, dtype=dtype), np.array([2, 2, 4, 6, 2, 1, 3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_extreme_logits(impl, dtype):
    x, _ = extreme_logits(dtype)
    p = impl.softmax(x)
    assert np.isfinite(p).all()
    assert (p[np.isneginf(x)] == 0).all()
    row_tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p.sum(axis=1, dtype=np.float64), 1, rtol=0, atol=row_tol)
    log_p = impl.log_softmax(x)
    assert (np.isneginf(log_p) == np.isneginf(x)).all()
    assert np.isfinite(log_p[np.isfinite(x)]).all()
    assert_close(np.exp(log_p), p, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_logits(impl, dtype):
    x, y = extreme_logits(dtype)
    losses, grad = impl.softmax_cross_entropy(x, y, reduction="none")
    x64 = x.astype(np.float64)
    m = x64.max(axis=1)
    lse = m + np.log(np.sum(np.exp(x64 - m[:, None]), axis=1))
    expected = lse - x64[np.arange(len(y)), y]
    assert np.isfinite(losses).all() and np.isfinite(grad).all()
    # Relative 1e-11 in float64; the atol is the float64 rounding of lse
    # itself, which the cancellation lse - z[y] exposes when the loss is ~0
    # and |lse| ~ 1e4.
    rtol, atol = (1e-11, 0.0) if dtype == np.float64 else (1e-5, 1e-6)
    atol = atol + 4 * np.spacing(np.abs(m))
    assert np.all(np.abs(losses - expected) <= rtol * np.abs(expected) + atol)
    row_tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(grad.sum(axis=1, dtype=np.float64), 0, atol=row_tol)
    assert (grad[np.isneginf(x)] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nan_row_policy(impl, dtype):
    inf, nan = np.inf, np.nan
    x = np.array([
        [1.0, 2.0, 3.0, 4.0],
        [-inf, -inf, -inf, -inf],     # all -inf
        [1.0, nan, 2.0, 3.0],         # NaN
        [1.0, inf, 2.0, -inf],        # +inf
        [inf, inf, 0.0, 0.0],
        [-inf, 1.0, -inf, -inf],      # fine: one finite entry
    ], dtype=dtype)
    bad = [1, 2, 3, 4]
    for func in (impl.softmax, impl.log_softmax):
        got = func(x)
        assert np.isnan(got[bad]).all(), func.__name__
        assert not np.isnan(np.delete(got, bad, axis=0)).any(), func.__name__
    np.testing.assert_array_equal(impl.softmax(x)[5], [0, 1, 0, 0])


# ---------------------------------------------------------------------------
# softmax cross-entropy
# ---------------------------------------------------------------------------
XENT_OPTIONS = [  # (weighted, label_smoothing)
    (False, 0.0),
    (True, 0.0),
    (True, 0.1),
]


# and the edges of the float32 few-classes paths (C < 32: eight rows at a
# time; on AVX-512 sixteen, each row one vector, two from C = 17): several
# chunks with a partial last block, rows shorter than half a vector in a
# partial block, the widest one-vector rows, the narrowest and widest
# two-vector rows, the first row-at-a-time width
XENT_SHAPES = (*SHAPES_2D, (1003, 10), (35, 3), (145, 16), (33, 17), (77, 31), (40, 32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", XENT_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted, smoothing", XENT_OPTIONS)
@pytest.mark.parametrize("target_kind", ("index", "prob"))
def test_softmax_cross_entropy_matches_reference(rng, dtype, shape, reduction, weighted,
                                                 smoothing, target_kind):
    n, c = shape
    z = randn(rng, shape, dtype, 3.0)
    t = labels(rng, n, c) if target_kind == "index" else probabilities(rng, n, c, dtype)
    kwargs = dict(sample_weight=weights_or_none(rng, n, weighted), reduction=reduction,
                  label_smoothing=smoothing)
    out = nan_buffer(shape, dtype)
    got = functional.softmax_cross_entropy(z, t, out=out, **kwargs)
    assert got[1] is out
    assert_result_close(got, reference.softmax_cross_entropy(z, t, **kwargs), dtype)


@pytest.mark.parametrize("c", (1, 3, 7, 10, 16, 17, 24, 31))
@pytest.mark.parametrize("threads", (1, 2))
def test_few_class_cross_entropy_writes_only_its_rows(rng, c, threads):
    # the sixteen-row blocks store whole vectors that spill into the next
    # rows: never past the last row of a call (nor of a thread's chunk)
    for n in (1, 15, 16, 17, 33, 129, 300):
        z = randn(rng, (n, c), np.float32, 3.0)
        y = labels(rng, n, c)
        buffer = np.full(n * c + 32, np.nan, np.float32)
        out = buffer[:n * c].reshape(n, c)
        with fastnn.num_threads(threads):
            got = functional.softmax_cross_entropy(z, y, out=out)
        assert np.isnan(buffer[n * c:]).all(), f"n={n}: wrote past the end"
        assert_result_close(got, reference.softmax_cross_entropy(z, y), np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", XENT_SHAPES)
def test_cross_entropy_one_call_path_is_the_general_path(rng, dtype, shape):
    # int64 labels and no options: the one-call path (_kernels.xent_mean_labels);
    # int32 labels: the general checks and conversion.  Same kernel, same bits.
    n, c = shape
    z = randn(rng, shape, dtype, 3.0)
    y = labels(rng, n, c)
    assert _kernels.xent_mean_labels(z, y, None) is not None     # the path is taken
    one_call = functional.softmax_cross_entropy(z, y)
    general = functional.softmax_cross_entropy(z, y.astype(np.int32))
    assert one_call[0] == general[0]
    np.testing.assert_array_equal(one_call[1], general[1])


def test_cross_entropy_one_call_path_declines_what_it_cannot_take(rng):
    z = randn(rng, (6, 4), np.float32)
    y = labels(rng, 6, 4)
    out = np.empty_like(z)
    assert _kernels.xent_mean_labels(z, y, out) is not None
    readonly = np.empty_like(z)
    readonly.flags.writeable = False
    storage = np.zeros(z.size + 6, np.float64)            # out over the labels' bytes
    labels_in_out = storage[z.size // 2:][:6].view(np.int64)
    labels_in_out[:] = y
    declined = {
        "float16 logits": (z.astype(np.float16), y, None),
        "strided logits": (np.repeat(z, 2, axis=1)[:, ::2], y, None),
        "big-endian logits": (z.astype(">f4"), y, None),
        "subclass logits": (z.view(type("Sub", (np.ndarray,), {})), y, None),
        "1-D logits": (z[0], y[:1], None),
        "empty logits": (z[:0], y[:0], None),
        "int32 labels": (z, y.astype(np.int32), None),
        "label list": (z, list(y), None),
        "labels too short": (z, y[:5], None),
        "label -1": (z, np.where(np.arange(6) == 2, -1, y), None),
        "label C": (z, np.where(np.arange(6) == 5, 4, y), None),
        "out float64": (z, y, out.astype(np.float64)),
        "out transposed": (z, y, np.empty((4, 6), np.float32).T),
        "out read-only": (z, y, readonly),
        "out is logits": (z, y, z),
        "out over labels": (z.astype(np.float64), labels_in_out,
                            storage[:z.size].reshape(z.shape)),
    }
    for what, args in declined.items():
        assert _kernels.xent_mean_labels(*args) is None, what


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (4, 10, 40))
def test_cross_entropy_nan_row_policy(impl, dtype, c):
    # the softmax policy: a row with NaN or +inf, or all -inf, has a NaN loss
    # and gradient row; the other rows (same block of eight) are untouched
    z = np.tile(np.linspace(-2, 2, c), (11, 1)).astype(dtype)
    z[1, c // 2] = np.nan
    z[4, 0] = np.inf
    z[9] = -np.inf
    bad = [1, 4, 9]
    y = np.arange(11) % c
    losses, grad = impl.softmax_cross_entropy(z, y, reduction="none")
    assert np.isnan(losses[bad]).all() and np.isnan(grad[bad]).all()
    good = np.delete(np.arange(11), bad)
    expected = reference.softmax_cross_entropy(z[good], y[good], reduction="none")
    assert_close(losses[good], expected[0], dtype)
    assert_close(grad[good], expected[1], dtype)
    assert np.isnan(impl.softmax_cross_entropy(z, y)[0])


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_cross_entropy_index_dtypes(rng, index_dtype):
    z = randn(rng, (50, 7), np.float64)
    y = labels(rng, 50, 7)
    expected = functional.softmax_cross_entropy(z, y)
    # every integer dtype gives the very same result
    for impl in (functional, reference):
        loss, grad = impl.softmax_cross_entropy(z, y.astype(index_dtype))
        assert loss == pytest.approx(expected[0], rel=1e-12)
        assert_close(grad, expected[1])
    assert functional.softmax_cross_entropy(z, y.astype(index_dtype))[0] == expected[0]


def test_cross_entropy_integral_float_labels(rng):
    z = randn(rng, (10, 4), np.float32)
    y = labels(rng, 10, 4)
    got = functional.softmax_cross_entropy(z, y.astype(np.float64))
    assert_result_close(got, functional.softmax_cross_entropy(z, y), np.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("target_kind", ("index", "prob"))
def test_cross_entropy_accepts_every_layout(rng, layout, target_kind):
    z = randn(rng, (30, 6), np.float64, 3.0)
    t = labels(rng, 30, 6) if target_kind == "index" else probabilities(rng, 30, 6, np.float64)
    w = rng.uniform(0.5, 2, 30)
    got = functional.softmax_cross_entropy(as_layout(z, layout), as_layout(t, layout),
                                           sample_weight=as_layout(w, layout))
    assert_result_close(got, reference.softmax_cross_entropy(z, t, sample_weight=w), np.float64)


def test_cross_entropy_probability_targets_properties(impl):
    # one-hot probability rows equal index targets; targets not summing to 1
    # follow lse * sum(y) - y.z; zero targets on -inf logits are skipped.
    z = np.array([[1.0, 2.0, -np.inf], [0.5, -1.0, 3.0]])
    onehot = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    by_index = impl.softmax_cross_entropy(z, np.array([1, 0]), reduction="none")
    by_prob = impl.softmax_cross_entropy(z, onehot, reduction="none")
    assert_close(by_prob[0], by_index[0])
    assert_close(by_prob[1], by_index[1])

    y = np.array([[0.5, 1.0, 0.0], [0.2, 0.2, 0.1]])
    losses, grad = impl.softmax_cross_entropy(z, y, reduction="none")
    m = np.max(z, axis=1, keepdims=True)
    lse = (m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))[:, 0]
    y_dot_z = np.array([0.5 * 1.0 + 1.0 * 2.0, 0.2 * 0.5 - 0.2 + 0.3])
    assert_close(losses, lse * y.sum(axis=1) - y_dot_z)
    assert_close(grad, reference.softmax(z) * y.sum(axis=1, keepdims=True) - y)


def test_label_smoothing_is_a_smoothed_probability_target(rng, impl):
    z = rng.standard_normal((12, 5))
    y = labels(rng, 12, 5)
    smoothed = 0.8 * np.eye(5)[y] + 0.2 / 5
    got = impl.softmax_cross_entropy(z, y, label_smoothing=0.2)
    expected = impl.softmax_cross_entropy(z, smoothed)
    assert_result_close(got, expected, np.float64)


def test_sample_weights_are_a_weighted_mean(rng, impl):
    z = rng.standard_normal((12, 5))
    y = labels(rng, 12, 5)
    w = rng.uniform(0, 3, 12)
    losses, grad_sum = impl.softmax_cross_entropy(z, y, reduction="none")
    loss, grad = impl.softmax_cross_entropy(z, y, sample_weight=w)
    assert loss == pytest.approx(np.sum(w * losses) / w.sum(), rel=1e-12)
    assert_close(grad, grad_sum * w[:, None] / w.sum())
    # integer weights equal repeated samples
    reps = np.array([1, 2, 0, 3] * 3)
    loss_w, _ = impl.softmax_cross_entropy(z, y, sample_weight=reps)
    loss_rep, _ = impl.softmax_cross_entropy(np.repeat(z, reps, 0), np.repeat(y, reps))
    assert loss_w == pytest.approx(loss_rep, rel=1e-12)


# ---------------------------------------------------------------------------
# binary cross-entropy, mean squared error and Poisson
# ---------------------------------------------------------------------------
POINTWISE_SHAPES = ((1,), (13,), *SHAPES_2D)


def bce_data(rng, shape, dtype):
    return randn(rng, shape, dtype, 4.0), rng.uniform(0, 1, shape).astype(dtype)


def mse_data(rng, shape, dtype):
    return randn(rng, shape, dtype, 2.0), randn(rng, shape, dtype, 2.0)


def poisson_data(rng, shape, dtype):
    """Log-rates z and counts y drawn at rate exp(z): many zeros, some
    fractional targets (rates are not only counts)."""
    z = randn(rng, shape, dtype, 1.5)
    y = rng.poisson(np.exp(z.astype(np.float64))).astype(np.float64)
    y.reshape(-1)[1::7] *= 0.37
    return z, y.astype(dtype)


POINTWISE = {
    "binary_cross_entropy_with_logits": bce_data,
    "mse_loss": mse_data,
    "poisson_loss": poisson_data,
}


def poisson_loss_tolerance(z, y, sample_weight, reduction, dtype):
    """Per-sample (N,) and total tolerances of the Poisson loss: a few
    roundings of the terms exp(z), y z, y log y, y before they cancel (where
    exp(z) ~ y the loss is a small difference of large terms)."""
    z64, y64 = z.astype(np.float64), y.astype(np.float64)
    terms = np.exp(z64) + np.abs(y64 * z64) + np.abs(y64 * np.log(np.where(y64 > 0, y64, 1))) + y64
    k = 1 if z.ndim == 1 else z.shape[1]
    w = np.ones(z.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    per_sample = (terms if z.ndim == 1 else terms.sum(axis=1)) * w
    s = 1 / w.sum() if reduction == "mean" else 1.0
    return per_sample, 2 * (k + 8) * np.finfo(dtype).eps * float(per_sample.sum()) * s, k


def assert_poisson_close(got, z, y, kwargs, dtype):
    """Poisson (loss, grad) against the reference, within the rounding of the
    terms: the two implementations' exp may differ by an ulp."""
    expected = reference.poisson_loss(z, y, **kwargs)
    w, reduction = kwargs.get("sample_weight"), kwargs.get("reduction", "mean")
    per_sample, allowed, k = poisson_loss_tolerance(z, y, w, reduction, dtype)
    w = np.ones(z.shape[0]) if w is None else np.asarray(w, np.float64)
    s = 1 / w.sum() if reduction == "mean" else 1.0
    row = w * s if z.ndim == 1 else (w * s)[:, None]
    bound = (np.exp(z.astype(np.float64)) + y.astype(np.float64)) * row
    assert_close_accumulated(got[1], expected[1], bound, 1, dtype)
    if reduction == "none":
        assert_close_accumulated(got[0], expected[0], per_sample, k, dtype)
        return
    assert isinstance(got[0], float), f"loss is {type(got[0]).__name__}, expected float"
    allowed += 1e-10 * abs(expected[0])
    assert abs(got[0] - expected[0]) <= allowed, (got[0], expected[0], allowed)


def assert_pointwise_close(func, got, z, t, kwargs, dtype):
    if func == "poisson_loss":
        assert_poisson_close(got, z, t, kwargs, dtype)
    else:
        assert_result_close(got, getattr(reference, func)(z, t, **kwargs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POINTWISE_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", (False, True))
@pytest.mark.parametrize("func", sorted(POINTWISE))
def test_pointwise_losses_match_reference(rng, func, dtype, shape, reduction, weighted):
    z, t = POINTWISE[func](rng, shape, dtype)
    kwargs = dict(sample_weight=weights_or_none(rng, shape[0], weighted), reduction=reduction)
    out = nan_buffer(shape, dtype)
    got = getattr(functional, func)(z, t, out=out, **kwargs)
    assert got[1] is out
    assert_pointwise_close(func, got, z, t, kwargs, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", sorted(POINTWISE))
def test_pointwise_losses_accept_every_layout(rng, func, layout):
    z, t = POINTWISE[func](rng, (25, 3), np.float64)
    w = rng.uniform(0.5, 2, 25)
    got = getattr(functional, func)(as_layout(z, layout), as_layout(t, layout),
                                    sample_weight=as_layout(w, layout))
    assert_pointwise_close(func, got, z, t, dict(sample_weight=w), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_stable_for_huge_logits(impl, dtype):
    z = np.array([1e4, 1e4, -1e4, -1e4, 1e4, -1e4, 500.0, -500.0, 88.8, -88.8, 0.0], dtype=dtype)
    t = np.array([0.0, 1.0, 0.0, 1.0, 0.3, 0.7, 0.0, 1.0, 1.0, 0.0, 0.5], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):
        losses, grad = impl.binary_cross_entropy_with_logits(z, t, reduction="none")
    z64, t64 = z.astype(np.float64), t.astype(np.float64)
    expected = np.logaddexp(0, z64) - t64 * z64  # softplus(z) - t z
    assert_close(losses, expected.astype(dtype), dtype)
    assert_close(grad, (reference.activation_forward(z64, "sigmoid") - t64).astype(dtype), dtype)
    # integer and bool targets are cast
    assert_result_close(impl.binary_cross_entropy_with_logits(z, t > 0.5),
                        impl.binary_cross_entropy_with_logits(z, (t > 0.5).astype(dtype)), dtype)


def test_bce_sums_outputs_and_averages_samples(rng, impl):
    z, t = bce_data(rng, (6, 3), np.float64)
    per_sample, _ = impl.binary_cross_entropy_with_logits(z, t, reduction="none")
    elementwise = [impl.binary_cross_entropy_with_logits(z[:, k], t[:, k], reduction="none")[0]
                   for k in range(3)]
    assert_close(per_sample, np.sum(elementwise, axis=0))
    loss, grad = impl.binary_cross_entropy_with_logits(z, t)
    assert loss == pytest.approx(per_sample.mean(), rel=1e-12)
    assert_close(grad, (reference.activation_forward(z, "sigmoid") - t) / 6)


def test_mse_half_convention(impl):
    o = np.array([[1.0, 2.0], [3.0, 5.0]])
    y = np.array([[0.0, 2.0], [1.0, 1.0]])
    losses, grad = impl.mse_loss(o, y, reduction="none")
    assert_close(losses, np.array([0.5, 10.0]))
    assert_close(grad, o - y)
    loss, grad = impl.mse_loss(o, y)
    assert loss == pytest.approx(5.25, rel=1e-15)
    assert_close(grad, (o - y) / 2)


# chunk remainders (128-row chunks) and one output or many
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((127, 1), (128, 3), (129, 2), (257, 5), (300,), (1, 40)))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poisson_chunk_remainders_match_reference(rng, dtype, shape, reduction):
    z, y = poisson_data(rng, shape, dtype)
    w = weights_or_none(rng, shape[0], True)
    got = functional.poisson_loss(z, y, sample_weight=w, reduction=reduction,
                                  out=nan_buffer(shape, dtype))
    assert_poisson_close(got, z, y, dict(sample_weight=w, reduction=reduction), dtype)


def test_poisson_known_values(impl):
    z = np.array([[0.0, np.log(3.0)], [1.0, -2.0]])
    y = np.array([[0.0, 3.0], [2.0, 0.0]])
    losses, grad = impl.poisson_loss(z, y, reduction="none")
    # y = 0: exp(z) alone; y = exp(z): 0; else exp(z) - y z + y log y - y
    e = np.exp(1.0)
    assert_close(losses, np.array([1.0, e - 2 + 2 * np.log(2.0) - 2 + np.exp(-2.0)]))
    assert_close(grad, np.exp(z) - y, atol=1e-15)
    loss, grad = impl.poisson_loss(z, y, sample_weight=np.array([1.0, 3.0]))
    assert loss == pytest.approx((losses[0] + 3 * losses[1]) / 4, rel=1e-14)
    assert_close(grad, (np.exp(z) - y) * np.array([[0.25], [0.75]]), atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_zero_targets_and_infinite_logits(impl, dtype):
    # xlogy(0, 0) = 0: a zero target leaves exp(z), 0 at z = -inf (not 0 * inf)
    z = np.array([-np.inf, -30.0, 0.0, 2.0], dtype=dtype)
    y = np.zeros(4, dtype=dtype)
    losses, grad = impl.poisson_loss(z, y, reduction="none")
    expected = np.exp(z.astype(np.float64)).astype(dtype)
    assert_close(losses, expected, dtype)
    assert_close(grad, expected, dtype)
    assert impl.poisson_loss(z, y, reduction="sum")[0] == pytest.approx(float(expected.sum()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_overflow_is_an_infinite_loss(impl, dtype):
    # exp(z) beyond the dtype's range: inf loss and gradient, no exception
    big = 1000.0 if dtype == np.float64 else 100.0
    z = np.array([[big, 0.0], [0.5, 0.0]], dtype=dtype)
    y = np.array([[1.0, 2.0], [0.0, 1.0]], dtype=dtype)
    losses, grad = impl.poisson_loss(z, y, reduction="none")
    assert losses[0] == np.inf and np.isfinite(losses[1])
    assert grad[0, 0] == np.inf and np.isfinite(grad[[0, 1, 1], [1, 0, 1]]).all()
    assert impl.poisson_loss(z, y)[0] == np.inf
    # NaN logits propagate (data, not arguments: docs/API.md)
    losses, grad = impl.poisson_loss(np.array([np.nan, 0.0], dtype), np.ones(2, dtype),
                                     reduction="none")
    assert np.isnan(losses[0]) and np.isnan(grad[0]) and losses[1] == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((1,), (9, 1), (130, 3), (257, 4)))
@pytest.mark.parametrize("weighted", (False, True))
def test_poisson_equals_scikit_learn(rng, dtype, shape, weighted):
    base = pytest.importorskip("sklearn.neural_network._base",
                               reason="scikit-learn is not installed")
    z, y = poisson_data(rng, shape, dtype)
    w = rng.uniform(0.1, 2, shape[0]) if weighted else None
    y2 = y.reshape(shape[0], -1).astype(np.float64)
    y_pred = np.exp(z.reshape(shape[0], -1).astype(np.float64))
    # scikit-learn's value computed in float64 on the same (rounded) inputs
    expected = base.poisson_loss(y2, y_pred, sample_weight=w)
    loss, _ = functional.poisson_loss(z, y, sample_weight=w)
    _, allowed, _ = poisson_loss_tolerance(z, y, w, "mean", dtype)
    assert abs(loss - float(expected)) <= allowed + 1e-12 * abs(expected), (loss, expected)


# ---------------------------------------------------------------------------
# finite-difference checks of every loss (float64)
# ---------------------------------------------------------------------------
def _loss_cases(rng):
    n, c = 5, 4
    z = rng.standard_normal((n, c))
    w = rng.uniform(0.2, 2, n)
    y = labels(rng, n, c)
    p = probabilities(rng, n, c, np.float64)
    return {
        "xent_index": ("softmax_cross_entropy", z, y, {}),
        "xent_prob": ("softmax_cross_entropy", z, p, {}),
        "xent_unnormalised": ("softmax_cross_entropy", z, 1.5 * p, {}),
        "xent_smoothing": ("softmax_cross_entropy", z, y, dict(label_smoothing=0.15)),
        "xent_weights": ("softmax_cross_entropy", z, p, dict(sample_weight=w)),
        "bce_1d": ("binary_cross_entropy_with_logits", 3 * z[:, 0], p[:, 0], {}),
        "bce_2d": ("binary_cross_entropy_with_logits", 3 * z, p, dict(sample_weight=w)),
        "mse_1d": ("mse_loss", z[:, 0], p[:, 0], {}),
        "mse_2d": ("mse_loss", z, p, dict(sample_weight=w)),
        "poisson_1d": ("poisson_loss", z[:, 0], 3 * p[:, 0], {}),
        "poisson_2d": ("poisson_loss", 2 * z, rng.poisson(2.0, (n, c)).astype(float),
                       dict(sample_weight=w)),
    }


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", sorted(_loss_cases(np.random.default_rng(0))))
def test_loss_gradient_check(rng, impl, case, reduction):
    func, z, t, kwargs = _loss_cases(rng)[case]
    loss_fn = getattr(impl, func)

    def total(x):  # "none": grad is the gradient of the sum of per-sample losses
        return float(np.sum(loss_fn(x, t, reduction=reduction, **kwargs)[0]))

    _, grad = loss_fn(z, t, reduction=reduction, **kwargs)
    assert_gradient_matches(grad, total, z)


# ---------------------------------------------------------------------------
# dense layer
# ---------------------------------------------------------------------------
# n_out <= 16 in float32 takes the own narrow GEMM (dW from 1 column, the
# forward product from 9); (700, 300, 10) splits it into tiles over threads
DENSE_SHAPES = ((1, 1, 1), (1, 7, 3), (9, 1, 4), (6, 5, 1), (97, 101, 13), (130, 3, 29),
                (33, 40, 16), (700, 300, 10))


def dense_data(rng, n, n_in, n_out, dtype, name="tanh"):
    A = randn(rng, (n, n_in), dtype)
    W = randn(rng, (n_in, n_out), dtype, 1 / np.sqrt(n_in))
    b = randn(rng, (n_out,), dtype, 0.5)
    O = reference.dense_forward(A, W, b, name, alpha=0.1)
    G = randn(rng, (n, n_out), dtype)
    return A, W, b, O, G


def assert_dense_forward_close(got, A, W, b, name, dtype):
    expected = reference.dense_forward(A, W, b, name, alpha=0.1)
    # A GEMM sums n_in products (plus the bias): compare within the
    # accumulation bound; every activation is 1-Lipschitz, so the bound of
    # A W + b carries over to f(A W + b).
    bound = np.abs(A.astype(np.float64)) @ np.abs(W.astype(np.float64))
    if b is not None:
        bound += np.abs(b.astype(np.float64))
    assert_close_accumulated(got, expected, bound, A.shape[1] + 1, dtype)


def assert_dense_backward_close(got, A, W, O, G, name, dtype, need_input_grad=True):
    dA, dW, db = got
    eA, eW, eb = reference.dense_backward(A, W, O, G, name, alpha=0.1,
                                          need_input_grad=need_input_grad)
    # GEMMs and a column sum: compare within their accumulation bounds
    # (sums of N or n_out products).
    delta = np.abs(reference.activation_backward(O, G, name, alpha=0.1).astype(np.float64))
    A64, W64 = np.abs(A.astype(np.float64)), np.abs(W.astype(np.float64))
    n, n_out = G.shape
    assert_close_accumulated(dW, eW, A64.T @ delta, n, dtype)
    assert_close_accumulated(db, eb, delta.sum(axis=0), n, dtype)
    if need_input_grad:
        assert_close_accumulated(dA, eA, delta @ W64.T, n_out, dtype)
    else:
        assert dA is None and eA is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_dense_forward_matches_reference(rng, dtype, shape, name):
    A, W, b, _, _ = dense_data(rng, *shape, dtype)
    out = nan_buffer((shape[0], shape[2]), dtype)
    got = functional.dense_forward(A, W, b, name, alpha=0.1, out=out)
    assert got is out
    assert_dense_forward_close(got, A, W, b, name, dtype)
    assert_dense_forward_close(functional.dense_forward(A, W, None, name, alpha=0.1),
                               A, W, None, name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_dense_backward_matches_reference(rng, dtype, shape, name):
    A, W, b, O, G = dense_data(rng, *shape, dtype, name)
    n, n_in, n_out = shape
    buffers = (nan_buffer((n, n_in), dtype), nan_buffer((n_in, n_out), dtype),
               nan_buffer((n_out,), dtype))
    got = functional.dense_backward(A, W, O, G, name, alpha=0.1, out=buffers)
    assert all(x is y for x, y in zip(got, buffers))
    assert_dense_backward_close(got, A, W, O, G, name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_without_input_grad(rng, dtype):
    A, W, b, O, G = dense_data(rng, 40, 11, 6, dtype, "sigmoid")
    got = functional.dense_backward(A, W, O, G, "sigmoid", alpha=0.1, need_input_grad=False)
    assert_dense_backward_close(got, A, W, O, G, "sigmoid", dtype, need_input_grad=False)
    buffers = (None, nan_buffer(W.shape, dtype), nan_buffer((6,), dtype))
    got = functional.dense_backward(A, W, O, G, "sigmoid", alpha=0.1, out=buffers)
    assert got[0] is not None and got[1] is buffers[1] and got[2] is buffers[2]
    assert_dense_backward_close(got, A, W, O, G, "sigmoid", dtype)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_dense_backward_overwrite_grad_out(rng, impl, name):
    A, W, b, O, G = dense_data(rng, 20, 7, 5, np.float64, name)
    expected = impl.dense_backward(A, W, O, G.copy(), name, alpha=0.1)
    buffer = G.copy()
    got = impl.dense_backward(A, W, O, buffer, name, alpha=0.1, overwrite_grad_out=True)
    for x, y in zip(got, expected):
        assert_close(x, y)
    # grad_out now holds delta
    assert_close(buffer, reference.activation_backward(O, G, name, alpha=0.1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DENSE_SHAPES)
def test_dense_one_call_path_is_the_general_path(rng, dtype, shape):
    # C-ordered arrays take the one-call paths (_kernels.dense_*_plain); a
    # Fortran-ordered A the general checks and a C-ordered copy: same bits
    A, W, b, O, G = dense_data(rng, *shape, dtype, "tanh")
    F_A = np.asfortranarray(A)
    for need_input_grad in (True, False):
        assert _kernels.dense_backward_plain(A, W, O, G, None, need_input_grad, False,
                                             functional.ACTIVATIONS["tanh"], 0.1) is not None
        one_call = functional.dense_backward(A, W, O, G, "tanh", need_input_grad=need_input_grad)
        general = functional.dense_backward(F_A, W, O, G, "tanh",
                                            need_input_grad=need_input_grad)
        for x, y in zip(one_call, general):
            np.testing.assert_array_equal(x, y)
    assert _kernels.dense_forward_plain(A, W, b, None, functional.ACTIVATIONS["tanh"],
                                        0.1) is not None
    np.testing.assert_array_equal(functional.dense_forward(A, W, b, "tanh"),
                                  functional.dense_forward(F_A, W, b, "tanh"))


def test_dense_one_call_paths_decline_what_they_cannot_take(rng):
    A, W, b, O, G = dense_data(rng, 6, 5, 3, np.float32, "tanh")
    relu = functional.ACTIVATIONS["relu"]
    forward = lambda A=A, W=W, b=b, out=None: _kernels.dense_forward_plain(  # noqa: E731
        A, W, b, out, relu, 0.0)
    assert forward() is not None and forward(b=None, out=np.empty((6, 3), np.float32)) is not None
    declined = {
        "float16 W": forward(W=W.astype(np.float16)),
        "float64 A": forward(A=A.astype(np.float64)),
        "Fortran A": forward(A=np.asfortranarray(A)),
        "A too wide": forward(A=np.zeros((6, 6), np.float32)),
        "b too long": forward(b=np.zeros(4, np.float32)),
        "b list": forward(b=list(b)),
        "out wrong shape": forward(out=np.empty((6, 4), np.float32)),
        "out read-only": forward(out=_readonly(np.empty((6, 3), np.float32))),
        "out is A": forward(A=(square := np.zeros((6, 6), np.float32)),
                            W=np.zeros((6, 6), np.float32), b=None, out=square),
    }
    for what, result in declined.items():
        assert result is None, what

    def backward(A=A, W=W, O=O, G=G, out=None, need_input_grad=True, overwrite=False):
        return _kernels.dense_backward_plain(A, W, O, G, out, need_input_grad, overwrite, relu,
                                             0.0)
    bufs = lambda: [np.empty((6, 5), np.float32), np.empty((5, 3), np.float32),  # noqa: E731
                    np.empty(3, np.float32)]
    assert backward() is not None and backward(out=bufs(), overwrite=True, G=G.copy()) is not None
    readonly = np.empty((5, 3), np.float32)
    readonly.flags.writeable = False
    declined = {
        "O wrong shape": backward(O=O[:5]),
        "G float64": backward(G=G.astype(np.float64)),
        "G read-only, overwritten": backward(G=_readonly(G), overwrite=True),
        "G is O, overwritten": backward(G=O, overwrite=True),
        "out of two": backward(out=bufs()[:2]),
        "out dict": backward(out={}),
        "dW read-only": backward(out=[None, readonly, None]),
        "db over dW": backward(out=[None, (dw := np.empty((5, 3), np.float32)), dw[0]]),
        "dA is A": backward(out=[A, None, None]),
        "dW over G, overwritten": backward(
            G=(g := np.zeros((6, 3), np.float32)), overwrite=True,
            out=[None, g[:5], None]),
    }
    for what, result in declined.items():
        assert result is None, what
    # without need_input_grad, out[0] is not used, so not checked
    assert backward(out=[A, None, None], need_input_grad=False)[0] is None


def _readonly(x):
    x = x.copy()
    x.flags.writeable = False
    return x


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dense_accepts_every_layout(rng, layout):
    A, W, b, O, G = dense_data(rng, 30, 9, 7, np.float64)
    L = lambda x: as_layout(x, layout)  # noqa: E731
    assert_dense_forward_close(functional.dense_forward(L(A), L(W), L(b), "tanh", alpha=0.1),
                               A, W, b, "tanh", np.float64)
    got = functional.dense_backward(L(A), L(W), L(O), L(G), "tanh", alpha=0.1)
    assert_dense_backward_close(got, A, W, O, G, "tanh", np.float64)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_dense_gradient_check(rng, impl, name):
    # dA, dW, db of the scalar loss sum(R * dense_forward(A, W, b)).
    A, W, b, _, _ = dense_data(rng, 5, 4, 3, np.float64)
    A[np.abs(A) < 1e-2] = 0.3
    R = rng.standard_normal((5, 3))

    def loss(A=A, W=W, b=b):
        return float(np.sum(R * impl.dense_forward(A, W, b, name, alpha=0.1)))

    O = impl.dense_forward(A, W, b, name, alpha=0.1)
    dA, dW, db = impl.dense_backward(A, W, O, R, name, alpha=0.1)
    assert_gradient_matches(dA, lambda x: loss(A=x), A)
    assert_gradient_matches(dW, lambda x: loss(W=x), W)
    assert_gradient_matches(db, lambda x: loss(b=x), b)


# ---------------------------------------------------------------------------
# logistic regression
# ---------------------------------------------------------------------------
def logistic_data(rng, n, d, dtype):
    X = randn(rng, (n, d), dtype)
    w = randn(rng, (d,), dtype, 1 / np.sqrt(d))
    t = (rng.uniform(size=n) < 0.5).astype(dtype)
    return X, w, 0.3, t


def assert_logistic_close(got, X, w, b, t, sample_weight, dtype):
    loss, grad_w, grad_b = got
    e_loss, e_grad_w, e_grad_b = reference.logistic_loss_grad(X, w, b, t,
                                                              sample_weight=sample_weight)
    assert isinstance(loss, float) and isinstance(grad_b, float)
    # The loss is a weighted mean of positive terms: elementwise tolerance.
    assert_loss_close(loss, e_loss, dtype)
    # grad_w and grad_b sum N signed products: accumulation bound.
    r = reference.activation_forward(X.astype(np.float64) @ w + b, "sigmoid") - t
    s = np.ones(len(t)) if sample_weight is None else np.asarray(sample_weight)
    r = np.abs(r) * s / s.sum()
    n = X.shape[0]
    assert_close_accumulated(grad_w, e_grad_w, np.abs(X.astype(np.float64)).T @ r, n, dtype)
    # grad_b is a Python float either way; its accuracy is the compute dtype's.
    assert_close_accumulated(np.asarray(grad_b, dtype), np.asarray(e_grad_b, dtype), r.sum(), n,
                             dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("weighted", (False, True))
def test_logistic_loss_grad_matches_reference(rng, dtype, shape, weighted):
    X, w, b, t = logistic_data(rng, *shape, dtype)
    sw = weights_or_none(rng, shape[0], weighted)
    out = nan_buffer((shape[1],), dtype)
    got = functional.logistic_loss_grad(X, w, b, t, sample_weight=sw, out=out)
    assert got[1] is out
    assert_logistic_close(got, X, w, b, t, sw, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logistic_accepts_every_layout(rng, layout):
    X, w, b, t = logistic_data(rng, 40, 9, np.float64)
    sw = rng.uniform(0.5, 2, 40)
    L = lambda x: as_layout(x, layout)  # noqa: E731
    got = functional.logistic_loss_grad(L(X), L(w), b, L(t), sample_weight=L(sw))
    assert_logistic_close(got, X, w, b, t, sw, np.float64)


@pytest.mark.parametrize("weighted", (False, True))
def test_logistic_gradient_check(rng, impl, weighted):
    X, w, b, t = logistic_data(rng, 8, 3, np.float64)
    sw = weights_or_none(rng, 8, weighted)
    _, grad_w, grad_b = impl.logistic_loss_grad(X, w, b, t, sample_weight=sw)
    assert_gradient_matches(
        grad_w, lambda x: impl.logistic_loss_grad(X, x, b, t, sample_weight=sw)[0], w)
    assert_gradient_matches(
        np.array([grad_b]),
        lambda x: impl.logistic_loss_grad(X, w, float(x[0]), t, sample_weight=sw)[0],
        np.array([b]))


def test_logistic_equals_bce_of_linear_model(rng, impl):
    X, w, b, t = logistic_data(rng, 30, 4, np.float64)
    loss, grad_w, grad_b = impl.logistic_loss_grad(X, w, b, t)
    bce, grad_z = impl.binary_cross_entropy_with_logits(X @ w + b, t)
    assert loss == pytest.approx(bce, rel=1e-12)
    assert_close(grad_w, X.T @ grad_z)
    assert grad_b == pytest.approx(grad_z.sum(), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("margins", ((0, 13), (13, 30), (30, 100)))
@pytest.mark.parametrize("correct", (True, False))
@pytest.mark.parametrize("weighted", (False, True))
def test_logistic_large_margins_keep_relative_accuracy(rng, dtype, margins, correct, weighted):
    # z = x exactly (one feature, w = 1, b = 0), |z| over the given range and
    # labels all right (loss and residual ~ exp(-|z|), down to 1e-44, where
    # sigmoid rounds to 0 or 1) or all wrong (loss ~ |z|, residual ~ 1):
    # loss and gradient must keep their relative accuracy, not just an
    # absolute one.  Exact values from the float64 formulas.
    n = 301
    z = np.linspace(*margins, n) * np.where(np.arange(n) % 2, 1, -1)
    X = z.astype(dtype)[:, None]
    z = X[:, 0].astype(np.float64)
    t = ((z > 0) == correct).astype(dtype)
    sw = weights_or_none(rng, n, weighted)
    s = np.ones(n) if sw is None else sw
    e = np.exp(-np.abs(z))
    loss = np.maximum(z, 0) - t * z + np.log1p(e)
    q = e / (1 + e)                     # sigmoid(-|z|)
    r = np.where(z >= 0, (1 - t) - q, q - t)
    got_loss, got_w, got_b = functional.logistic_loss_grad(X, np.ones(1, dtype), 0.0, t,
                                                           sample_weight=sw)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got_loss, s @ loss / s.sum(), rtol=rtol, atol=0)
    # the gradients are signed sums: relative to the sums of magnitudes
    assert abs(got_b - s @ r / s.sum()) <= rtol * (s @ np.abs(r) / s.sum())
    assert abs(got_w[0] - (s * r) @ z / s.sum()) <= rtol * (s @ np.abs(r * z) / s.sum())


# Every remainder of the float32 kernel's blocking: 16-row groups, 128-row
# chunks, 16-column vectors, column blocks of 8 x 16 (and 1-4 vectors, where
# rows alternate between sets of accumulators).
LOGISTIC_ROWS = (1, 2, 15, 16, 17, 127, 128, 129, 255, 257)
LOGISTIC_COLS = (1, 7, 15, 16, 17, 31, 33, 64, 65, 127, 128, 129, 143, 257)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LOGISTIC_ROWS)
def test_logistic_every_blocking_remainder(rng, dtype, n):
    for d in LOGISTIC_COLS:
        X, w, b, t = logistic_data(rng, n, d, dtype)
        w = w * 3                                    # logits of a few units: both signs
        t = rng.uniform(size=n).astype(dtype)        # fractional targets
        for sw in (None, weights_or_none(rng, n, True)):
            got = functional.logistic_loss_grad(X, w, b, t, sample_weight=sw,
                                                out=nan_buffer((d,), dtype))
            assert_logistic_close(got, X, w, b, t, sw, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", (100003,))
def test_logistic_many_chunks(rng, dtype, n):
    X, w, b, t = logistic_data(rng, n, 33, dtype)
    t[::3] = rng.uniform(size=len(t[::3]))
    sw = weights_or_none(rng, n, True)
    for weights in (None, sw):
        got = functional.logistic_loss_grad(X, w * 2, b, t, sample_weight=weights)
        assert_logistic_close(got, X, w * 2, b, t, weights, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", (False, True))
def test_logistic_extreme_logits_and_fractional_targets(rng, dtype, weighted):
    # z = x exactly (w = 1, b = 0) at +-100, +-1e4, +-88 (exp(-|z|) subnormal
    # in float32), 0 and small values, each row with t in {0, 1, fractions}:
    # loss and gradient against the float64 formulas (the float32 reference
    # itself rounds sigmoid to 1 there).
    zs = np.array([0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 20, -20, 88, -88, 100, -100,
                   1e4, -1e4])
    ts = np.array([0.0, 1.0, 0.5, 0.25, 0.999])
    z = np.repeat(zs, len(ts)).astype(dtype)
    t = np.tile(ts, len(zs)).astype(dtype)
    X = z[:, None]
    n = len(z)
    sw = weights_or_none(rng, n, weighted)
    s = np.ones(n) if sw is None else sw
    z64, t64 = z.astype(np.float64), t.astype(np.float64)
    e = np.exp(-np.abs(z64))
    loss = np.maximum(z64, 0) - t64 * z64 + np.log1p(e)
    q = e / (1 + e)
    r = np.where(z64 >= 0, (1 - t64) - q, q - t64)
    got_loss, got_w, got_b = functional.logistic_loss_grad(X, np.ones(1, dtype), 0.0, t,
                                                           sample_weight=sw)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got_loss, s @ loss / s.sum(), rtol=rtol, atol=0)
    assert abs(got_b - s @ r / s.sum()) <= rtol * (s @ np.abs(r) / s.sum())
    assert abs(got_w[0] - (s * r) @ z64 / s.sum()) <= rtol * (s @ np.abs(r * z64) / s.sum())
    # one row at a time too: each loss and residual on its own (the residual,
    # at most 1, to the dtype's epsilon: near z = 0 with t = 1/2 it cancels)
    # (the loss, where exp(-|z|) is subnormal, to the subnormals' spacing)
    eps, sub = float(np.finfo(dtype).eps), float(np.finfo(dtype).smallest_subnormal)
    for i in range(n):
        li, gi, bi = functional.logistic_loss_grad(X[i:i + 1], np.ones(1, dtype), 0.0, t[i:i + 1])
        assert li == pytest.approx(loss[i], rel=rtol, abs=sub), (z[i], t[i])
        assert bi == pytest.approx(r[i], rel=rtol, abs=eps), (z[i], t[i])


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_nan_propagates(rng, dtype):
    # a NaN in one row of X, or in one target, makes the loss and gradient NaN
    for n, d in ((1, 1), (17, 7), (300, 129)):
        X, w, b, t = logistic_data(rng, n, d, dtype)
        for where in ("X", "t", "w"):
            Xn, tn, wn = X.copy(), t.copy(), w.copy()
            {"X": lambda: Xn.__setitem__((n // 2, d // 2), np.nan),
             "t": lambda: tn.__setitem__(n - 1, np.nan),
             "w": lambda: wn.__setitem__(d - 1, np.nan)}[where]()
            loss, grad_w, grad_b = functional.logistic_loss_grad(Xn, wn, b, tn)
            assert np.isnan(loss) and np.isnan(grad_b), (n, d, where)
            assert np.isnan(grad_w).any(), (n, d, where)


# ---------------------------------------------------------------------------
# optimiser updates
# ---------------------------------------------------------------------------
SGD_OPTIONS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.5, l2=0.01, l1=0.02),
    dict(lr=0.3, l1=0.5),
]
ADAM_OPTIONS = [
    dict(lr=1e-3, step=1),
    dict(lr=1e-2, step=7, beta1=0.8, beta2=0.99, eps=1e-6),
    dict(lr=1e-2, step=3, l2=0.01, l1=0.02),
    dict(lr=1e-1, step=2, weight_decay=0.05),
    dict(lr=0.5, step=1, l1=1.0, weight_decay=0.1),
]
PARAM_SHAPES = ((1,), (7, 3), (97, 101))


def optimiser_state(rng, shape, dtype, n_states):
    param = randn(rng, shape, dtype)
    param.reshape(-1)[::7] = 0  # sign(0) = 0 for L1
    grad = randn(rng, shape, dtype)
    states = [randn(rng, shape, dtype, 0.1) for _ in range(n_states)]
    if n_states == 2:  # Adam's second moment is non-negative
        states[1] = np.abs(states[1])
    return param, grad, states


def run_step(impl, which, param, grad, states, options):
    param, states = param.copy(), [s.copy() for s in states]
    if which == "sgd":
        velocity = states[0] if options.get("momentum") else None
        result = impl.sgd_step(param, grad, velocity, **options)
    else:
        result = impl.adam_step(param, grad, *states, **options)
    assert result is param
    return param, states


OPTIMISER_CASES = [("sgd", o) for o in SGD_OPTIONS] + [("adam", o) for o in ADAM_OPTIONS]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PARAM_SHAPES)
@pytest.mark.parametrize("which, options", OPTIMISER_CASES)
def test_optimiser_step_matches_reference(rng, dtype, shape, which, options):
    param, grad, states = optimiser_state(rng, shape, dtype, 1 if which == "sgd" else 2)
    got_param, got_states = run_step(functional, which, param, grad, states, options)
    ref_param, ref_states = run_step(reference, which, param, grad, states, options)
    assert_close(got_param, ref_param, dtype)
    for got, ref in zip(got_states, ref_states):
        assert_close(got, ref, dtype)


@pytest.mark.parametrize("which, options", OPTIMISER_CASES)
def test_optimiser_accepts_strided_grad(rng, which, options):
    param, grad, states = optimiser_state(rng, (13, 6), np.float64, 1 if which == "sgd" else 2)
    expected = run_step(functional, which, param, grad, states, options)
    for layout in ("F", "strided", "readonly"):
        got = run_step(functional, which, param, as_layout(grad, layout), states, options)
        np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("which, options",
                         [c for c in OPTIMISER_CASES if c[1].get("l1")])
def test_l1_never_flips_a_sign(rng, impl, which, options):
    # Small weights, big gradients: many steps would cross zero.
    param, grad, states = optimiser_state(rng, (200,), np.float64, 1 if which == "sgd" else 2)
    param *= 0.01
    grad *= 10
    new, _ = run_step(impl, which, param, grad, states, options)
    assert np.all(new * param >= 0)
    assert np.any((new == 0) & (param != 0)), "no weight was clipped at zero"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which, options", OPTIMISER_CASES)
def test_zero_learning_rate_leaves_weights_unchanged(rng, impl, dtype, which, options):
    param, grad, states = optimiser_state(rng, (50,), dtype, 1 if which == "sgd" else 2)
    states[0][:] = 0  # a non-zero velocity would still move the weights
    new, _ = run_step(impl, which, param, grad, states, dict(options, lr=0.0))
    np.testing.assert_array_equal(new, param)


def test_adam_first_step_is_lr_times_sign(impl):
    # With m = v = 0 and eps -> 0, Adam's first step is -lr * sign(grad).
    param = np.array([1.0, -2.0, 0.5])
    grad = np.array([0.3, -5.0, 1e-3])
    impl.adam_step(param, grad, np.zeros(3), np.zeros(3), lr=0.1, step=1, eps=1e-12)
    assert_close(param, np.array([0.9, -1.9, 0.4]), rtol=1e-8)


# ---------------------------------------------------------------------------
# more than a million elements: beyond any chunk or block size
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_softmax_and_losses(rng, dtype):
    n, c = LARGE_2D
    z = randn(rng, LARGE_2D, dtype, 3.0)
    assert_close(functional.softmax(z, out=nan_buffer(z.shape, dtype)), reference.softmax(z),
                 dtype)
    y = labels(rng, n, c)
    w = rng.uniform(0, 2, n)
    for reduction in ("mean", "none"):
        got = functional.softmax_cross_entropy(z, y, sample_weight=w, reduction=reduction,
                                               out=nan_buffer(z.shape, dtype))
        assert_result_close(got, reference.softmax_cross_entropy(
            z, y, sample_weight=w, reduction=reduction), dtype)
    t = rng.uniform(size=z.shape).astype(dtype)
    for func in sorted(POINTWISE):
        got = getattr(functional, func)(z, t, out=nan_buffer(z.shape, dtype))
        assert_pointwise_close(func, got, z, t, {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_activations_and_optimisers(rng, dtype):
    z = activation_input(rng, LARGE_2D, dtype, "leaky_relu")
    g = randn(rng, LARGE_2D, dtype)
    for name in ("sigmoid", "leaky_relu"):
        o = functional.activation_forward(z, name, out=nan_buffer(z.shape, dtype))
        assert_close(o, reference.activation_forward(z, name), dtype)
        assert_close(functional.activation_backward(o, g, name, out=nan_buffer(z.shape, dtype)),
                     reference.activation_backward(o, g, name), dtype)
    param, grad, states = optimiser_state(rng, LARGE_2D, dtype, 2)
    for which, options in (("sgd", SGD_OPTIONS[3]), ("adam", ADAM_OPTIONS[2])):
        got = run_step(functional, which, param, grad, states, options)
        expected = run_step(reference, which, param, grad, states, options)
        assert_close(got[0], expected[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_dense_and_logistic(rng, dtype):
    n, n_in, n_out = 4100, 257, 255
    A, W, b, O, G = dense_data(rng, n, n_in, n_out, dtype, "relu")
    got = functional.dense_forward(A, W, b, "relu", out=nan_buffer(O.shape, dtype))
    assert_dense_forward_close(got, A, W, b, "relu", dtype)
    buffers = (nan_buffer(A.shape, dtype), nan_buffer(W.shape, dtype), nan_buffer((n_out,), dtype))
    got = functional.dense_backward(A, W, O, G, "relu", alpha=0.1, out=buffers)
    assert_dense_backward_close(got, A, W, O, G, "relu", dtype)
    X, w, b, t = logistic_data(rng, 40000, 27, dtype)
    got = functional.logistic_loss_grad(X, w, b, t, out=nan_buffer((27,), dtype))
    assert_logistic_close(got, X, w, b, t, None, dtype)
