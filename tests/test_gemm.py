"""fastnn's own GEMM (csrc/fastnn_gemm.h) against BLAS and the float64 reference.

The dense kernels reach the GEMM through three products: A W (forward),
A^T dZ (dW) and dZ W^T (dA).  The shapes below hit every path of its
blocking: edges of the 6 x 16 (float64: 6 x 8) micro-tile in m and n,
several KC = 256 slices of k, more than one MC = 144 row block and
NC = 512 column panel, and products large enough to be cut into a grid of
tiles spread over the threads.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import functional as F
from fastnn import _kernels

from conftest import DTYPES, assert_close_accumulated, randn

SHAPES = (  # (N, n_in, n_out)
    (1, 1, 1),
    (5, 3, 7),        # fewer rows than MR, columns than NR
    (6, 256, 16),     # exactly one micro-tile, one k slice
    (7, 257, 17),     # one past each
    (13, 600, 33),    # three k slices
    (150, 40, 530),   # two row blocks, two column panels
    (128, 784, 256),  # the first layer of the benchmark MLP (tiled)
    (301, 129, 95),
)


@pytest.fixture(params=fastnn._config.GEMMS)
def gemm(request):
    before = fastnn.get_gemm()
    fastnn.set_gemm(request.param)
    yield request.param
    fastnn.set_gemm(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_products_match_float64(gemm, shape, dtype, rng):
    n, n_in, n_out = shape
    A = randn(rng, (n, n_in), dtype)
    W = randn(rng, (n_in, n_out), dtype)
    G = randn(rng, (n, n_out), dtype)
    A64, W64, G64 = (x.astype(np.float64) for x in (A, W, G))
    O = F.dense_forward(A, W, None)
    assert_close_accumulated(O, A64 @ W64, np.abs(A64) @ np.abs(W64), n_in, dtype)
    dA, dW, db = F.dense_backward(A, W, O, G, "identity")
    assert_close_accumulated(dW, A64.T @ G64, np.abs(A64.T) @ np.abs(G64), n, dtype)
    assert_close_accumulated(dA, G64 @ W64.T, np.abs(G64) @ np.abs(W64.T), n_out, dtype)


def test_own_gemm_agrees_with_blas(rng):
    A = randn(rng, (97, 300), np.float64)
    W = randn(rng, (300, 45), np.float64)
    results = {}
    before = fastnn.get_gemm()
    try:
        for name in fastnn._config.GEMMS:
            fastnn.set_gemm(name)
            results[name] = F.dense_forward(A, W, None)
    finally:
        fastnn.set_gemm(before)
    np.testing.assert_allclose(results["fastnn"], results["blas"], rtol=1e-12, atol=1e-12)


def test_default_is_the_own_gemm_where_built():
    # x86-64-v3 and v4 have the AVX2+FMA micro-kernel; baseline uses BLAS
    expected = "fastnn" if _kernels.SIMD_VARIANT != "baseline" else "blas"
    assert _kernels.has_own_gemm() == (expected == "fastnn")
    if not os.environ.get("FASTNN_GEMM"):
        assert fastnn.get_gemm() == expected


def test_set_gemm_rejects_unknown_names():
    with pytest.raises(ValueError, match="gemm must be one of"):
        fastnn.set_gemm("mkl")


@pytest.mark.parametrize("value, expected", [("blas", "blas"), ("bogus", None)])
def test_fastnn_gemm_environment_variable(tmp_path, value, expected):
    code = "import fastnn; print(fastnn.get_gemm())"
    # this very fastnn (in-tree or installed), not whatever the cwd holds
    package_root = os.path.dirname(os.path.dirname(fastnn.__file__))
    env = dict(os.environ, FASTNN_GEMM=value,
               PYTHONPATH=os.pathsep.join(filter(None, [package_root,
                                                        os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    if expected is None:
        assert result.returncode != 0
        assert "FASTNN_GEMM" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (expected if _kernels.has_own_gemm() else "blas")
