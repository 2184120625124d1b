"""fastnn's own AVX-512 GEMM (csrc/fastnn_gemm.h, x86-64-v4 variant only):
every operand layout and awkward size against NumPy in float64, the same
products on BLAS, thread independence, and the switch between the two."""
import numpy as np
import pytest

import fastnn
from fastnn import _config, _kernels
from conftest import assert_close_accumulated, randn
from test_threads import assert_thread_independent

HAVE_OWN_GEMM = _kernels.own_gemm()   # on by default wherever it is compiled in
needs_own_gemm = pytest.mark.skipif(
    not HAVE_OWN_GEMM, reason=f"fastnn's GEMM is compiled into the x86-64-v4 variant only; "
                              f"this process runs {_kernels.SIMD_VARIANT}")

# (m, n, k), m and n >= 32 so that the tiles reach fastnn's GEMM: rows not a
# multiple of its 12-row micro-kernel (the remainder on the 8-row kernel, 1 to
# 11 rows: the last rows of A, read in place, must not be read beyond),
# columns ending in a partial 32-wide panel (the 12-row kernel through its
# buffer) and a partial 16-wide one, a few terms (fewer than one 8 x 8 block
# of B's packing), k over one 384-term block (accumulated into C), products
# the tile grid splits over threads (A's rows read inside a wider matrix),
# and A B^T with at least twice as many columns as rows and more terms than
# rows (computed as (B A^T)^T), and a transposed A with more than 64 columns
# (packed 48 rows at a time: 75 rows end in a partial 12-row panel of a
# partial block).
SHAPES = ((32, 32, 32), (37, 33, 35), (64, 40, 1), (128, 256, 10), (45, 40, 100),
          (64, 48, 385), (300, 63, 50), (130, 257, 800), (700, 300, 290), (33, 200, 390),
          (32, 784, 256), (75, 129, 390), (47, 49, 17), (36, 50, 400), (59, 70, 2))
BACKENDS = ("fastnn", "blas") if HAVE_OWN_GEMM else ("blas",)


@pytest.fixture(params=BACKENDS)
def backend(request):
    previous = _kernels.own_gemm(request.param == "fastnn")
    yield request.param
    _kernels.own_gemm(previous)


def _operands(rng, m, n, k, trans_a, trans_b):
    A = randn(rng, (k, m) if trans_a else (m, k), np.float32)
    B = randn(rng, (n, k) if trans_b else (k, n), np.float32)
    return A, B


def _product(A, B, trans_a, trans_b, m, n):
    out = np.full((m, n), np.nan, np.float32)   # nothing of it may be read
    _kernels.product(A, B, out, trans_a, trans_b)
    return out


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_products_match_numpy(backend, rng, m, n, k, trans_a, trans_b):
    A, B = _operands(rng, m, n, k, trans_a, trans_b)
    a = A.T if trans_a else A
    b = B.T if trans_b else B
    got = _product(A, B, trans_a, trans_b, m, n)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    assert_close_accumulated(got, expected, np.abs(a.astype(np.float64)) @ np.abs(b), k,
                             np.float32)


@pytest.mark.parametrize("n_threads", (1, 2))
def test_products_match_numpy_at_each_thread_count(backend, rng, n_threads):
    m, n, k = 700, 300, 290
    A, B = _operands(rng, m, n, k, False, True)
    with fastnn.num_threads(n_threads):
        got = _product(A, B, False, True, m, n)
    expected = A.astype(np.float64) @ B.T.astype(np.float64)
    assert_close_accumulated(got, expected, np.abs(A.astype(np.float64)) @ np.abs(B.T), k,
                             np.float32)


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
def test_products_are_thread_independent(backend, rng, trans_a, trans_b):
    m, n, k = 700, 300, 290
    A, B = _operands(rng, m, n, k, trans_a, trans_b)
    assert_thread_independent(lambda: _product(A, B, trans_a, trans_b, m, n))


@needs_own_gemm
def test_non_finite_values_propagate_like_blas(rng):
    m, n, k = 40, 70, 50
    A, B = _operands(rng, m, n, k, False, False)
    A[3, 7] = np.nan
    A[5, 0] = np.inf
    B[:, 66] = 0                       # inf * 0 = nan in row 5, column 66
    results = {}
    for own in (True, False):
        _kernels.own_gemm(own)
        try:
            results[own] = _product(A, B, False, False, m, n)
        finally:
            _kernels.own_gemm(True)
    mine, blas = results[True], results[False]
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(blas))
    np.testing.assert_array_equal(np.isinf(mine), np.isinf(blas))
    assert np.isnan(mine[3]).all() and np.isnan(mine[5, 66])
    assert np.isfinite(np.delete(mine, [3, 5], axis=0)).all()


@needs_own_gemm
def test_dense_layers_train_the_same_on_either_gemm(rng):
    # a few SGD steps of a 784-256-10 network: the same losses on both
    X = randn(rng, (128, 784), np.float32)
    y = rng.integers(0, 10, 128)
    losses = {}
    for own in (True, False):
        _kernels.own_gemm(own)
        try:
            model = fastnn.nn.Sequential(fastnn.nn.Dense(784, 256, "relu", rng=0),
                                         fastnn.nn.Dense(256, 10, rng=1))
            opt = fastnn.optim.SGD(model.parameters(), lr=0.05)
            loss = fastnn.nn.SoftmaxCrossEntropy()
            losses[own] = [fastnn.nn.train_step(model, loss, opt, X, y) for _ in range(5)]
        finally:
            _kernels.own_gemm(True)
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert losses[True][-1] < losses[True][0]


@needs_own_gemm
@pytest.mark.parametrize("lda", (1024, 2048, 1000))
def test_rows_sharing_one_l1_set_take_the_8_row_kernel(rng, lda):
    """A read in place with rows a multiple of the L1's way size apart: on
    an 8-way L1 the GEMM steps 8 rows at a time, on a 12-way one 12; the
    same sums either way (m = 100: 12 blocks of 8 and a 4-row remainder)."""
    previous = _kernels.gemm_kernel()
    A = randn(rng, (100, lda), np.float32)
    B = randn(rng, (lda, 70), np.float32)
    try:
        got = {}
        for ways in (8, 12):
            _kernels.gemm_kernel((ways, 4096))
            assert _kernels.gemm_kernel()[2] == (8 if ways == 8 else 12)
            got[ways] = _product(A, B, False, False, 100, 70)
    finally:
        _kernels.gemm_kernel(previous[:2])
    a = A.astype(np.float64)
    assert_close_accumulated(got[8], a @ B, np.abs(a) @ np.abs(B), lda, np.float32)
    np.testing.assert_array_equal(got[8], got[12])


def test_the_switch_and_the_report():
    info = fastnn.build_info()
    if HAVE_OWN_GEMM:
        assert _kernels.SIMD_VARIANT == "x86-64-v4"
        assert info["gemm"].startswith("fastnn's AVX-512 GEMM")
        assert _kernels.own_gemm(False) is True
        try:
            assert fastnn.build_info()["gemm"] == "BLAS"
        finally:
            assert _kernels.own_gemm(True) is False
    else:
        assert info["gemm"] == "BLAS"
        with pytest.raises(ValueError, match="not compiled into"):
            _kernels.own_gemm(True)
        assert _kernels.own_gemm(False) is False


def test_product_checks_its_shapes_and_empty_sums(rng):
    A, B = randn(rng, (5, 3), np.float32), randn(rng, (3, 4), np.float32)
    with pytest.raises(ValueError, match="do not chain"):
        _kernels.product(A, B, np.empty((5, 5), np.float32), False, False)
    with pytest.raises(ValueError, match="do not chain"):
        _kernels.product(A, B, np.empty((5, 4), np.float32), True, False)
    out = np.full((5, 4), np.nan, np.float32)
    _kernels.product(np.empty((5, 0), np.float32), np.empty((0, 4), np.float32), out,
                     False, False)
    assert (out == 0).all()


@needs_own_gemm
def test_a_product_in_one_tile_wider_than_a_packed_block(rng):
    # without BLAS thread control nothing is tiled: one call takes the whole
    # product, and its B is packed 1024 columns at a time
    _config._install_blas(None)
    try:
        for trans_b in (False, True):
            m, n, k = 40, 2100, 70
            A, B = _operands(rng, m, n, k, False, trans_b)
            b = B.T if trans_b else B
            got = _product(A, B, False, trans_b, m, n)
            assert_close_accumulated(got, A.astype(np.float64) @ b.astype(np.float64),
                                     np.abs(A.astype(np.float64)) @ np.abs(b), k, np.float32)
    finally:
        _config._install_blas(_config._choose_blas(_config._loaded_blas()))
