"""Threads: results bit-identical whatever the thread count, the thread-count
API and environment variables, and proof that the build really runs in parallel."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fastnn
from fastnn import _kernels
from fastnn import functional as F
from fastnn import nn, optim
from conftest import DTYPES, randn

THREAD_COUNTS = (1, 2, 3)


def _as_bytes(result):
    """Every array and float of a (nested) result, as exact bytes."""
    if result is None:
        return [None]
    if isinstance(result, (tuple, list)):
        return [b for item in result for b in _as_bytes(item)]
    return [np.asarray(result).tobytes()]


def assert_thread_independent(call):
    """``call()`` gives the very same bits with 1, 2 and 3 threads."""
    results = {}
    for n in THREAD_COUNTS:
        with fastnn.num_threads(n):
            results[n] = _as_bytes(call())
    for n in THREAD_COUNTS[1:]:
        assert results[n] == results[1], f"{n} threads differ from 1 thread"


# Every kernel on shapes well above the parallel thresholds (>= 32768
# elements, >= 2^20 multiply-adds for the GEMMs) and spanning many row chunks.
def _kernel_calls(rng, dtype):
    z = randn(rng, (70000, 17), dtype, 3.0)
    y = rng.integers(0, 17, 70000)
    p = rng.dirichlet(np.ones(17), 70000).astype(dtype)
    t = rng.uniform(size=z.shape).astype(dtype)
    sw = rng.uniform(0, 2, 70000)
    o = np.tanh(z)
    counts = rng.poisson(2.0, z.shape).astype(dtype)     # with zeros
    z10 = randn(rng, (70001, 10), dtype, 3.0)    # C <= 16: AVX-512's sixteen-row blocks
    y10 = rng.integers(0, 10, 70001)
    sw10 = rng.uniform(0, 2, 70001)
    calls = {
        "xent_few_classes": lambda: F.softmax_cross_entropy(z10, y10),
        "xent_few_classes_weighted": lambda: F.softmax_cross_entropy(
            z10, y10, sample_weight=sw10, reduction="none"),
        "softmax": lambda: F.softmax(z),
        "log_softmax": lambda: F.log_softmax(z),
        "xent_index_mean": lambda: F.softmax_cross_entropy(z, y, sample_weight=sw),
        "xent_index_sum_smoothed": lambda: F.softmax_cross_entropy(
            z, y, reduction="sum", label_smoothing=0.1),
        "xent_prob_none": lambda: F.softmax_cross_entropy(z, p, reduction="none"),
        "bce": lambda: F.binary_cross_entropy_with_logits(z, t, sample_weight=sw),
        "bce_none": lambda: F.binary_cross_entropy_with_logits(z, t, reduction="none"),
        "mse": lambda: F.mse_loss(z, t, reduction="sum"),
        "poisson": lambda: F.poisson_loss(z / 3, counts, sample_weight=sw),
        "poisson_none": lambda: F.poisson_loss(z / 3, counts, reduction="none"),
        "activation_forward": lambda: [F.activation_forward(z, a) for a in
                                       ("sigmoid", "tanh", "relu", "leaky_relu")],
        "activation_backward": lambda: [F.activation_backward(o, t, a) for a in
                                        ("sigmoid", "tanh", "relu", "leaky_relu")],
    }
    # (2000, 300, 10): float32 runs its forward and dW on the narrow GEMM, in tiles
    for n, n_in, n_out in ((300, 517, 203), (128, 784, 256), (2000, 300, 10)):
        A = randn(rng, (n, n_in), dtype)
        W = randn(rng, (n_in, n_out), dtype) / np.sqrt(n_in)
        b = randn(rng, (n_out,), dtype)
        O = F.dense_forward(A, W, b, "relu")
        G = randn(rng, (n, n_out), dtype)
        calls[f"dense_forward_{n}x{n_in}x{n_out}"] = \
            lambda A=A, W=W, b=b: F.dense_forward(A, W, b, "relu")
        calls[f"dense_backward_{n}x{n_in}x{n_out}"] = \
            lambda A=A, W=W, O=O, G=G: F.dense_backward(A, W, O, G, "relu")
        calls[f"dense_backward_first_layer_{n}x{n_in}x{n_out}"] = \
            lambda A=A, W=W, O=O, G=G: F.dense_backward(A, W, O, G, "tanh", need_input_grad=False)
    X = randn(rng, (100000, 33), dtype)
    w = randn(rng, (33,), dtype) / 6
    tl = (rng.uniform(size=100000) < 0.5).astype(dtype)
    swl = rng.uniform(0, 2, 100000)
    calls["logistic"] = lambda: F.logistic_loss_grad(X, w, 0.1, tl)
    calls["logistic_weighted"] = lambda: F.logistic_loss_grad(X, w, 0.1, tl, sample_weight=swl)

    param = randn(rng, (70000, 17), dtype)
    states = [randn(rng, param.shape, dtype) * 0.1 for _ in range(2)]
    states[1] = np.abs(states[1])

    def sgd():
        p, v = param.copy(), states[0].copy()
        F.sgd_step(p, z, v, lr=0.1, momentum=0.9, nesterov=True, l1=0.01, l2=0.01)
        return p, v

    def adam():
        p, m, v = param.copy(), states[0].copy(), states[1].copy()
        F.adam_step(p, z, m, v, lr=0.01, step=3, l1=0.01, weight_decay=0.01)
        return p, m, v

    calls["sgd_step"] = sgd
    calls["adam_step"] = adam
    return calls


KERNELS = sorted(_kernel_calls(np.random.default_rng(0), np.float32))


@pytest.fixture(scope="module")
def kernel_calls():
    rng = np.random.default_rng(1234)
    return {dtype: _kernel_calls(rng, dtype) for dtype in DTYPES}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_bit_identical_across_thread_counts(kernel_calls, kernel, dtype):
    assert_thread_independent(kernel_calls[dtype][kernel])


@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_bit_identical_up_to_eight_threads(dtype):
    # more threads than cores, and an odd count: chunks still add in order
    rng = np.random.default_rng(11)
    z = randn(rng, (50001, 7), dtype)
    y = rng.poisson(np.exp(z.astype(np.float64))).astype(dtype)
    sw = rng.uniform(0, 2, 50001)
    X = randn(rng, (4099, 20), dtype)
    counts = rng.poisson(1.5, (4099, 3)).astype(dtype)

    def fused_step():
        model = nn.Sequential(nn.Dense(20, 16, "tanh", dtype=dtype, rng=0),
                              nn.Dense(16, 3, dtype=dtype, rng=1))
        value = nn.train_step(model, nn.PoissonLoss(), optim.SGD(model.parameters(), lr=0.01),
                              X, counts)
        return value, [p.data for p in model.parameters()]

    calls = (lambda: F.poisson_loss(z, y, sample_weight=sw),
             lambda: F.poisson_loss(z, y, reduction="none"),
             fused_step)
    for call in calls:
        results = {}
        for n in (1, 2, 3, 8):
            with fastnn.num_threads(n):
                results[n] = _as_bytes(call())
        for n in (2, 3, 8):
            assert results[n] == results[1], f"{n} threads differ from 1 thread"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((100003, 128), (20001, 17), (9000, 300), (4097, 1)))
def test_logistic_bit_identical_across_1_2_3_8_threads(dtype, shape):
    # every chunk and 16-row group remainder, weighted and not, fractional t
    rng = np.random.default_rng(7)
    n, d = shape
    X = randn(rng, (n, d), dtype)
    w = randn(rng, (d,), dtype, 3 / np.sqrt(d))
    t = rng.uniform(size=n).astype(dtype)
    sw = rng.uniform(0, 2, n)
    results = {}
    for threads in (1, 2, 3, 8):
        with fastnn.num_threads(threads):
            results[threads] = [_as_bytes(F.logistic_loss_grad(X, w, 0.1, t)),
                                _as_bytes(F.logistic_loss_grad(X, w, 0.1, t, sample_weight=sw))]
    for threads in (2, 3, 8):
        assert results[threads] == results[1], f"{threads} threads differ from 1 thread"


# ---------------------------------------------------------------------------
# the thread-count API
# ---------------------------------------------------------------------------
@pytest.fixture
def restore_threads():
    before = fastnn.get_num_threads()
    yield before
    fastnn.set_num_threads(before)


def test_set_and_get_num_threads(restore_threads):
    for n in (1, 3, 2):
        fastnn.set_num_threads(n)
        assert fastnn.get_num_threads() == n
        assert fastnn.build_info()["num_threads"] == n
    fastnn.set_num_threads(np.int64(4))
    assert fastnn.get_num_threads() == 4


def test_num_threads_context_restores(restore_threads):
    fastnn.set_num_threads(2)
    with fastnn.num_threads(3) as n:
        assert n == 3 and fastnn.get_num_threads() == 3
        with fastnn.num_threads(1):
            assert fastnn.get_num_threads() == 1
        assert fastnn.get_num_threads() == 3
    assert fastnn.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"):
        with fastnn.num_threads(1):
            raise RuntimeError("boom")
    assert fastnn.get_num_threads() == 2


@pytest.mark.parametrize("bad", (0, -1, 1.5, "two", None, True, float("nan")))
def test_invalid_thread_counts_raise(restore_threads, bad):
    before = fastnn.get_num_threads()
    with pytest.raises(ValueError, match="^n must be a positive integer"):
        fastnn.set_num_threads(bad)
    with pytest.raises(ValueError, match="^n must be a positive integer"):
        with fastnn.num_threads(bad):
            pass
    assert fastnn.get_num_threads() == before


def test_parallel_regions_really_run_in_parallel():
    # A prange compiled without OpenMP runs serially: a team of one.
    if fastnn.build_info()["openmp"]:
        assert _kernels.openmp_team_size(2) == 2
        assert _kernels.openmp_team_size(3) == 3
    else:
        assert _kernels.openmp_team_size(2) == 1


def test_team_round_trip_probe():
    # fastnn bench's measure of how far apart the cores are
    seconds = _kernels.team_round_trip(500, 10.0)  # (a loaded machine is slow)
    if not fastnn.build_info()["openmp"]:
        assert seconds is None
    elif len(os.sched_getaffinity(0)) >= 2:
        assert 0 < seconds < 0.1       # ~100 ns idle, ms on a loaded machine: a unit check
    # the budget ends it, even in the untimed warm-up (then nothing is timed)
    started = time.perf_counter()
    assert _kernels.team_round_trip(2 ** 62, 0.01) is None     # and no counter overflow
    assert time.perf_counter() - started < 10
    for iterations, budget in ((0, 1.0), (-5, 1.0), (10, 0.0), (10, float("nan"))):
        with pytest.raises(ValueError, match="iterations and budget must be positive"):
            _kernels.team_round_trip(iterations, budget)


# ---------------------------------------------------------------------------
# environment variables (read at import: a fresh interpreter each)
# ---------------------------------------------------------------------------
def _threads_in_subprocess(tmp_path, **env_vars):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTNN_NUM_THREADS", "OMP_NUM_THREADS")}
    # Import this very fastnn (in-tree or installed), not whatever the cwd holds.
    package_root = os.path.dirname(os.path.dirname(fastnn.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.update(env_vars)
    code = ("import os, fastnn; "
            "print(fastnn.get_num_threads(), len(os.sched_getaffinity(0)), fastnn.__file__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    return result


def _count(result):
    assert result.returncode == 0, result.stderr
    threads, cores, path = result.stdout.split()
    assert os.path.samefile(path, fastnn.__file__)
    return int(threads), int(cores)


@pytest.mark.parametrize("n", ("1", "3"))
def test_fastnn_num_threads_environment_variable(tmp_path, n):
    # FASTNN_NUM_THREADS wins over OMP_NUM_THREADS
    result = _threads_in_subprocess(tmp_path, FASTNN_NUM_THREADS=n, OMP_NUM_THREADS="2")
    assert _count(result)[0] == int(n)


def test_omp_num_threads_respected(tmp_path):
    assert _count(_threads_in_subprocess(tmp_path, OMP_NUM_THREADS="3"))[0] == 3
    # a nested-parallelism list: the first level counts
    assert _count(_threads_in_subprocess(tmp_path, OMP_NUM_THREADS="1,4"))[0] == 1


def test_default_is_the_affinity_mask(tmp_path):
    threads, cores = _count(_threads_in_subprocess(tmp_path))
    assert threads == cores


def test_invalid_fastnn_num_threads_fails_loudly(tmp_path):
    result = _threads_in_subprocess(tmp_path, FASTNN_NUM_THREADS="0")
    assert result.returncode != 0
    assert "FASTNN_NUM_THREADS must be a positive integer" in result.stderr
