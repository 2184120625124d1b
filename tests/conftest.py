"""Shared helpers of the kernel tests: layouts, tolerances, finite differences.

Tolerances (see ``assert_close`` and ``assert_close_accumulated``):
- elementwise results: float64 rtol 1e-10, float32 rtol 1e-5 / atol 1e-6;
- results of long sums (GEMMs, sums over rows) are compared against the
  classical forward-error bound of a sum of n products, |error| <= n eps
  sum |x_i y_i|, which both implementations satisfy; two implementations may
  therefore differ by twice that.  Loose enough to be independent of the
  summation order (BLAS blocking, chunked reductions), tight enough to catch
  any wrong term.
"""
import threading
import zlib

import numpy as np
import pytest

from fastnn import functional, reference

DTYPES = (np.float32, np.float64)
LAYOUTS = ("C", "F", "strided", "readonly")
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")
REDUCTIONS = ("mean", "sum", "none")
# Small and awkward shapes of 2-D data: single element, single row, single
# column, odd sizes that no SIMD width or chunk size divides.
SHAPES_2D = ((1, 1), (1, 7), (9, 1), (97, 101), (130, 3))

ELEMENTWISE_TOL = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-13),
}

IMPLEMENTATIONS = {"functional": functional, "reference": reference}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request):
    """Both implementations: mathematical property tests check the oracle too."""
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def rng(request):
    # A per-test seed derived from the test id: reproducible, yet different
    # data for different parametrisations.
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


def randn(rng, shape, dtype, scale=1.0):
    """Normal data of ``dtype`` (drawn in float64, then rounded)."""
    return (scale * rng.standard_normal(shape)).astype(dtype)


def as_layout(arr, layout):
    """A new array equal to ``arr`` with the requested memory layout.

    "strided" is a view with step 2 along the last axis of a buffer whose
    skipped elements are NaN, so a kernel that ignores the strides reads NaN.
    """
    arr = np.asarray(arr)
    if layout == "C":
        return np.array(arr, order="C")
    if layout == "F":
        return np.array(arr, order="F")
    if layout == "strided":
        fill = np.nan if arr.dtype.kind in "fc" else 0
        buffer = np.full(arr.shape[:-1] + (2 * arr.shape[-1],), fill, dtype=arr.dtype)
        buffer[..., ::2] = arr
        view = buffer[..., ::2]
        assert not view.flags.c_contiguous or arr.size <= 1
        return view
    if layout == "readonly":
        copy = arr.copy()
        copy.flags.writeable = False
        return copy
    raise AssertionError(layout)


def nan_buffer(shape, dtype):
    """An out= buffer prefilled with NaN: any element a kernel forgets stays NaN."""
    return np.full(shape, np.nan, dtype=dtype)


def assert_close(actual, expected, dtype=None, *, rtol=None, atol=None):
    """Elementwise comparison with the dtype's tolerance; dtype and shape must match."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dtype = np.dtype(dtype if dtype is not None else expected.dtype)
    assert actual.dtype == dtype, f"dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    tol = dict(ELEMENTWISE_TOL[dtype])
    if rtol is not None:
        tol["rtol"] = rtol
    if atol is not None:
        tol["atol"] = atol
    np.testing.assert_allclose(actual, expected, **tol)


def assert_close_accumulated(actual, expected, bound, n_terms, dtype):
    """Compare results of sums of ``n_terms`` products.

    ``bound`` is sum |x_i y_i| per element (e.g. |A| @ |W|).  Each
    implementation errs by at most about n eps bound (plus a few roundings of
    the elementwise work around the sum), so they agree within twice that.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dtype = np.dtype(dtype)
    assert actual.dtype == dtype, f"dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    eps = np.finfo(dtype).eps
    tol = ELEMENTWISE_TOL[dtype]
    allowed = 2 * (n_terms + 8) * eps * np.abs(bound) + tol["rtol"] * np.abs(expected) + tol["atol"]
    error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bad = ~(error <= allowed)
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} elements differ beyond the accumulation bound; "
        f"worst error {error[bad].max():.3g} where {allowed[bad][np.argmax(error[bad])]:.3g} allowed"
    )


def assert_loss_close(actual, expected, dtype):
    """Scalar losses (Python floats accumulated in float64) or per-sample arrays."""
    if isinstance(expected, np.ndarray):
        assert_close(actual, expected, dtype)
    else:
        assert isinstance(actual, float), f"loss is {type(actual).__name__}, expected float"
        np.testing.assert_allclose(actual, expected, **ELEMENTWISE_TOL[np.dtype(dtype)])


# ---------------------------------------------------------------------------
# finite differences (float64)
# ---------------------------------------------------------------------------
FD_STEP = 1e-6
FD_RTOL = 5e-6


def numerical_gradient(f, x, h=FD_STEP):
    """Central differences (f(x + h e_i) - f(x - h e_i)) / 2h of scalar f at x (float64)."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + h
        f_plus = f(x)
        x[index] = saved - h
        f_minus = f(x)
        x[index] = saved
        grad[index] = (f_plus - f_minus) / (2 * h)
    return grad


def assert_gradient_matches(analytic, f, x, h=FD_STEP, rtol=FD_RTOL):
    """Check an analytic gradient of f at x against central differences.

    Criterion: |a - n| <= rtol * max(|a|, |n|) + atol, elementwise.  The
    relative part is robust near 0 because it uses the larger of the two
    magnitudes; atol covers the rounding noise of the difference quotient
    itself, about eps_mach * |f(x)| / h, of which we allow 100 times.
    """
    numeric = numerical_gradient(f, x, h)
    analytic = np.asarray(analytic, dtype=np.float64)
    assert analytic.shape == numeric.shape
    scale = max(1.0, abs(float(f(np.array(x, dtype=np.float64)))))
    atol = 100 * np.finfo(np.float64).eps * scale / h
    error = np.abs(analytic - numeric)
    allowed = rtol * np.maximum(np.abs(analytic), np.abs(numeric)) + atol
    bad = ~(error <= allowed)
    assert not bad.any(), (
        f"gradient check failed at {np.argwhere(bad)[:5].tolist()}: "
        f"analytic {analytic[bad][:5]}, numeric {numeric[bad][:5]}"
    )


def run_in_threads(n, target, on_error=None):
    """Run ``target(i)`` in ``n`` threads started together; returns the results
    in order, re-raising the first exception.  ``on_error()`` runs in a thread
    that failed (e.g. to release the others from a barrier)."""
    start = threading.Barrier(n)
    results, errors = [None] * n, []

    def worker(i):
        try:
            start.wait()
            results[i] = target(i)
        except BaseException as exc:  # noqa: B036 - reported in the main thread
            errors.append(exc)
            if on_error is not None:
                on_error()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
