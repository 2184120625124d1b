"""Which BLAS the matrix products run on: the choice between the loaded
libraries, the products right on each of them, and the BLAS's own thread
setting left as fastnn found it."""
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastnn
from fastnn import _config, _kernels
from fastnn import functional as F
from conftest import DTYPES
from test_functional import (DENSE_SHAPES, assert_dense_backward_close,
                             assert_dense_forward_close, dense_data)
from test_threads import assert_thread_independent


def _record(directory, version, api="openblas"):
    return {"user_api": "blas", "internal_api": api, "version": version,
            "filepath": f"/site-packages/{directory}/libblas.so"}


SCIPY_0330 = _record("scipy.libs", "0.3.30")
NUMPY_0331 = _record("numpy.libs", "0.3.31.188.0")
NUMPY_0329 = _record("numpy.libs", "0.3.29")


@pytest.fixture
def exports_gemm64(monkeypatch):
    """Records outside scipy.libs export 64-bit-integer GEMMs, unless listed."""
    without = []
    monkeypatch.setattr(_config, "_gemm64",
                        lambda lib: None if lib in without else (1, 2))
    return without


def test_a_newer_openblas_with_64_bit_gemms_is_chosen(exports_gemm64):
    assert _config._choose_blas([SCIPY_0330, NUMPY_0331]) is NUMPY_0331
    assert _config._choose_blas([NUMPY_0331, SCIPY_0330]) is NUMPY_0331


def test_scipys_blas_is_kept_otherwise(exports_gemm64):
    # older, equal, not OpenBLAS, or without the GEMMs fastnn can call
    assert _config._choose_blas([SCIPY_0330, NUMPY_0329]) is SCIPY_0330
    assert _config._choose_blas([SCIPY_0330, _record("numpy.libs", "0.3.30")]) is SCIPY_0330
    assert _config._choose_blas([SCIPY_0330, _record("numpy.libs", "2025.1", "mkl")]) \
        is SCIPY_0330
    exports_gemm64.append(NUMPY_0331)
    assert _config._choose_blas([SCIPY_0330, NUMPY_0331]) is SCIPY_0330
    # SciPy on a BLAS whose version cannot be compared: nothing to choose
    mkl = _record("scipy.libs", "2025.1", "mkl")
    assert _config._choose_blas([mkl, NUMPY_0331]) is mkl
    assert _config._choose_blas([]) is None
    # SciPy built on a system BLAS: the only one loaded is the one it uses
    system = _record("lib", "0.3.20")
    assert _config._choose_blas([system]) is system


def test_installing_a_blas_without_both_gemms_is_refused():
    with pytest.raises(ValueError, match="both or neither"):
        _kernels.set_blas(1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="both or neither"):
        _kernels.set_blas(0, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="one thread control"):
        _kernels.set_blas(0, 0, 1, 1, 1)


def _backends():
    """Every BLAS fastnn can run on here: SciPy's, and the chosen one."""
    libs = _config._loaded_blas()
    found = {"scipy": next((lib for lib in libs if _config._is_scipys(lib)), None),
             "chosen": _config._choose_blas(libs)}
    return {name: lib for name, lib in found.items() if lib is not None}


BACKENDS = _backends()


@pytest.fixture(params=sorted(BACKENDS))
def blas(request):
    lib = BACKENDS[request.param]
    _config._install_blas(lib)
    yield lib
    _config._install_blas(_config._choose_blas(_config._loaded_blas()))


def test_the_chosen_blas_is_installed_and_reported():
    lib = _config._choose_blas(_config._loaded_blas())
    gemm64, thread_control = _kernels.blas_in_use()
    if lib is None:
        assert _config._BLAS is None and not gemm64 and not thread_control
        return
    assert _config._BLAS["filepath"] == lib["filepath"]
    assert gemm64 == (not _config._is_scipys(lib))
    assert (thread_control is not None) == (lib["internal_api"] == "openblas")
    info = fastnn.build_info()
    assert lib["filepath"] in info["blas"]
    assert ("64-bit-integer GEMM" if gemm64 else "cython_blas") in info["blas"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DENSE_SHAPES + ((128, 784, 256),))
def test_dense_products_on_every_blas(blas, rng, dtype, shape):
    A, W, b, O, G = dense_data(rng, *shape, dtype, "tanh")
    assert_dense_forward_close(F.dense_forward(A, W, b, "tanh", alpha=0.1), A, W, b, "tanh",
                               dtype)
    assert_dense_backward_close(F.dense_backward(A, W, O, G, "tanh", alpha=0.1),
                                A, W, O, G, "tanh", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_products_on_every_blas_are_thread_independent(blas, rng, dtype):
    A, W, b, O, G = dense_data(rng, 300, 517, 203, dtype, "relu")
    assert_thread_independent(lambda: F.dense_forward(A, W, b, "relu"))
    assert_thread_independent(lambda: F.dense_backward(A, W, O, G, "relu"))


def _blas_thread_counts():
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas"}


@pytest.mark.parametrize("n_threads", (1, 2))
def test_products_leave_the_blas_thread_setting_as_found(blas, rng, n_threads):
    # OpenBLAS built with pthreads (NumPy's and SciPy's wheels) has one global
    # thread count: fastnn sets it to 1 while its products run, and must give
    # the user's setting back, however its team's threads interleave
    A, W, b, O, G = dense_data(rng, 512, 300, 256, np.float32, "relu")
    before = _blas_thread_counts()
    with fastnn.num_threads(n_threads):
        for _ in range(20):
            F.dense_backward(A, W, F.dense_forward(A, W, b, "relu"), G, "relu")
    assert _blas_thread_counts() == before


def test_concurrent_products_leave_the_blas_thread_setting_as_found(blas, rng):
    A, W, b, O, G = dense_data(rng, 256, 300, 200, np.float32, "relu")
    before = _blas_thread_counts()
    errors = []

    def train():
        try:
            for _ in range(30):
                F.dense_backward(A, W, O, G, "relu")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    workers = [threading.Thread(target=train) for _ in range(4)]
    with fastnn.num_threads(2):
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert not errors
    assert _blas_thread_counts() == before
