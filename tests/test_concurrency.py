"""Python threads: kernels called from many threads at once, models trained
concurrently, the GIL released inside the kernels, and results bit-identical
whatever the OpenMP thread count."""
import threading
import time

import numpy as np
import pytest

import fastnn
from fastnn import functional as F, nn, optim
from conftest import randn, run_in_threads

N_PYTHON_THREADS = 8


def _bytes(result):
    """Every array and float of a (nested) result, as exact bytes."""
    if result is None:
        return [None]
    if isinstance(result, (tuple, list)):
        return [b for item in result for b in _bytes(item)]
    return [np.asarray(result).tobytes()]


def _kernel_calls(rng, dtype):
    """Every public kernel on shared inputs; each call allocates its own outputs."""
    z = randn(rng, (3000, 40), dtype, 3.0)
    labels = rng.integers(0, 40, 3000)
    t = (rng.random((3000, 40)) < 0.3).astype(dtype)
    A, W, b = randn(rng, (600, 90), dtype), randn(rng, (90, 70), dtype, 0.1), randn(rng, 70, dtype)
    O = F.dense_forward(A, W, b, "tanh")
    G = randn(rng, O.shape, dtype)
    X, w = randn(rng, (5000, 30), dtype), randn(rng, 30, dtype)
    y01 = (rng.random(5000) < 0.5).astype(dtype)
    p, g = randn(rng, 5000, dtype), randn(rng, 5000, dtype)
    for arr in (z, labels, t, A, W, b, O, G, X, w, y01, p, g):
        arr.flags.writeable = False  # shared inputs: any write would raise
    return [
        lambda: F.softmax(z),
        lambda: F.log_softmax(z),
        lambda: F.activation_forward(z, "sigmoid"),
        lambda: F.activation_backward(O, G, "tanh"),
        lambda: F.softmax_cross_entropy(z, labels, label_smoothing=0.1),
        lambda: F.binary_cross_entropy_with_logits(z, t),
        lambda: F.mse_loss(z, t, reduction="none"),
        lambda: F.poisson_loss(z, t, reduction="none"),
        lambda: F.dense_forward(A, W, b, "relu"),
        lambda: F.dense_backward(A, W, O, G, "tanh"),
        lambda: F.logistic_loss_grad(X, w, 0.3, y01),
        # in-place updates on per-call copies of the shared state
        lambda: F.sgd_step(p.copy(), g, np.zeros_like(p), lr=0.1, momentum=0.9, l1=1e-3),
        lambda: F.adam_step(p.copy(), g, np.zeros_like(p), np.zeros_like(p), lr=0.1, step=3),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_from_8_threads_match_serial_calls(rng, dtype):
    calls = _kernel_calls(rng, dtype)
    serial = [_bytes(call()) for call in calls]

    def worker(i):
        # each thread runs every kernel, starting at a different one, 3 times
        order = [(i + k) % len(calls) for k in range(len(calls))] * 3
        return [(k, _bytes(calls[k]())) for k in order]

    for results in run_in_threads(N_PYTHON_THREADS, worker):
        for k, got in results:
            assert got == serial[k], f"kernel call {k} differs from its serial result"


def _train(seed, X, y):
    """A small MLP trained with momentum SGD; returns its final weights."""
    model = nn.Sequential(nn.Dense(X.shape[1], 32, "relu", rng=seed),
                          nn.Dense(32, 16, "tanh", rng=seed + 1),
                          nn.Dense(16, 4, rng=seed + 2))
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                    weight_decay=1e-4)
    nn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=3, batch_size=64, rng=seed)
    return [p.data.copy() for p in model.parameters()]


def test_models_trained_concurrently_match_serial_training(rng):
    X = randn(rng, (1500, 20), np.float32)
    y = rng.integers(0, 4, 1500)
    seeds = (11, 22)
    serial = [_train(s, X, y) for s in seeds]
    assert not all(np.array_equal(a, b) for a, b in zip(*serial))  # the models differ
    for _ in range(2):
        concurrent = run_in_threads(2, lambda i: _train(seeds[i], X, y))
        for got, expected in zip(concurrent, serial):
            assert all(a.tobytes() == b.tobytes() for a, b in zip(got, expected))


@pytest.mark.parametrize("kernel", ["dense_forward", "dense_backward"])
def test_kernels_release_the_gil(rng, kernel):
    """While one thread is inside a long kernel call, the main thread keeps
    running Python code.  Were the GIL held, the main thread (woken every
    millisecond) could not resume until the call returned: no tick could fall
    strictly inside it.  Not a timing assertion: only ticks are counted."""
    n = 1200
    A, W = randn(rng, (n, n), np.float64), randn(rng, (n, n), np.float64)
    O = F.dense_forward(A, W, None)
    G = randn(rng, (n, n), np.float64)
    call = {"dense_forward": lambda: F.dense_forward(A, W, None),
            "dense_backward": lambda: F.dense_backward(A, W, O, G)}[kernel]
    span, ticks, done = {}, [], threading.Event()

    def worker():
        with fastnn.num_threads(1):  # one core for the kernel, the other for us
            span["start"] = time.perf_counter()
            call()
            span["stop"] = time.perf_counter()
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    while not done.is_set():
        time.sleep(0.001)  # needs the GIL back to return
        ticks.append(time.perf_counter())
    thread.join()
    inside = sum(span["start"] < t < span["stop"] for t in ticks)
    duration = span["stop"] - span["start"]
    assert duration > 0.05, f"the kernel ran only {duration:.3f} s: too short to tell"
    assert inside >= 5, (f"the main thread ran {inside} times during a {duration:.2f} s "
                         f"kernel call: the GIL was held")


def _big_calls(rng):
    """Shapes large enough for every kernel to split its work across threads."""
    z = randn(rng, (50000, 13), np.float64, 3.0)
    labels = rng.integers(0, 13, 50000)
    A, W, b = randn(rng, (300, 517), np.float32), randn(rng, (517, 203), np.float32, 0.1), \
        randn(rng, 203, np.float32)
    O = F.dense_forward(A, W, b, "sigmoid")
    G = randn(rng, O.shape, np.float32)
    X, w, t = z, randn(rng, 13, np.float64), (rng.random(50000) < 0.5).astype(np.float64)
    sw = rng.random(50000)
    return {
        "softmax_cross_entropy": lambda: F.softmax_cross_entropy(z, labels, sample_weight=sw),
        "softmax_cross_entropy_f32": lambda: F.softmax_cross_entropy(z.astype(np.float32), labels),
        "dense_forward": lambda: F.dense_forward(A, W, b, "sigmoid"),
        "dense_backward": lambda: F.dense_backward(A, W, O, G, "sigmoid"),
        "logistic_loss_grad": lambda: F.logistic_loss_grad(X, w, 0.1, t, sample_weight=sw),
    }


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "softmax_cross_entropy_f32",
                                  "dense_forward", "dense_backward", "logistic_loss_grad"])
def test_bit_identical_for_1_2_3_8_openmp_threads(rng, name):
    call = _big_calls(rng)[name]
    results = {}
    for n in (1, 2, 3, 8):
        with fastnn.num_threads(n):
            results[n] = _bytes(call())
    for n in (2, 3, 8):
        assert results[n] == results[1], f"{n} OpenMP threads differ from 1"
