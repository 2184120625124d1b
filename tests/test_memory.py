"""Memory: repeated kernel calls, failing calls and training steps leak nothing.

After a warm-up, N calls of each kernel on small arrays must grow
tracemalloc's net traced allocations by < 64 KiB and the process's resident
set (/proc/self/statm) by < 1 MiB; so must the same number of calls that
raise, and 1,000 training steps.  N = env FASTNN_MEMORY_CALLS (default
20,000 in the test suite; the release check runs FASTNN_MEMORY_CALLS=100000).
"""
import gc
import os
import threading
import tracemalloc

import numpy as np
import pytest

from fastnn import functional as F, nn, optim
from conftest import randn

CALLS = int(os.environ.get("FASTNN_MEMORY_CALLS", "20000"))
TRAIN_STEPS = 1000
WARMUP = 200
MAX_TRACED = 64 * 1024
MAX_RSS = 1024 * 1024

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="RSS is read from /proc/self/statm (Linux)")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module", autouse=True)
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def assert_no_growth(fn, calls, what):
    for _ in range(WARMUP):
        fn()
    gc.collect()
    traced0, rss0 = tracemalloc.get_traced_memory()[0], rss_bytes()
    for _ in range(calls):
        fn()
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced0
    rss = rss_bytes() - rss0
    assert traced < MAX_TRACED, f"{what}: {calls} calls grew traced memory by {traced} bytes"
    assert rss < MAX_RSS, f"{what}: {calls} calls grew the RSS by {rss} bytes"


def _small_calls():
    rng = np.random.default_rng(0)
    f32, f64 = np.float32, np.float64
    z = randn(rng, (16, 7), f64)
    zF = np.asfortranarray(randn(rng, (16, 7), f32))  # converted on every call
    labels = rng.integers(0, 7, 16)
    t = rng.random((16, 7))
    sw = rng.random(16)
    A, W, b = randn(rng, (16, 9), f32), randn(rng, (9, 7), f32), randn(rng, 7, f32)
    O = F.dense_forward(A, W, b, "tanh")
    G = randn(rng, O.shape, f32)
    X, w, y01 = randn(rng, (32, 5), f64), randn(rng, 5, f64), (rng.random(32) < 0.5) * 1.0
    p, g = randn(rng, 50, f32), randn(rng, 50, f32)
    v, m, s = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    out = np.empty_like(z)
    bufs = (np.empty_like(A), np.empty_like(W), np.empty_like(b))
    return {
        "softmax": lambda: F.softmax(z),
        "log_softmax(out=)": lambda: F.log_softmax(z, out=out),
        "activation_forward(F order)": lambda: F.activation_forward(zF, "sigmoid"),
        "activation_backward": lambda: F.activation_backward(O, G, "tanh"),
        "softmax_cross_entropy": lambda: F.softmax_cross_entropy(z, labels, sample_weight=sw,
                                                                 label_smoothing=0.1),
        "softmax_cross_entropy(probs)": lambda: F.softmax_cross_entropy(z, t, reduction="none"),
        "binary_cross_entropy_with_logits": lambda: F.binary_cross_entropy_with_logits(z, t),
        "mse_loss": lambda: F.mse_loss(z, t, reduction="none"),
        "poisson_loss": lambda: F.poisson_loss(z, t, sample_weight=sw, reduction="none"),
        "dense_forward": lambda: F.dense_forward(A, W, b, "relu"),
        "dense_backward": lambda: F.dense_backward(A, W, O, G, "tanh"),
        "dense_backward(out=)": lambda: F.dense_backward(A, W, O, G, "tanh", out=bufs),
        "logistic_loss_grad": lambda: F.logistic_loss_grad(X, w, 0.1, y01),
        "sgd_step": lambda: F.sgd_step(p, g, v, lr=1e-6, momentum=0.9, l1=1e-6),
        "adam_step": lambda: F.adam_step(p, g, m, s, lr=1e-6, step=5),
    }


def _raising_calls():
    """Calls that fail validation at different depths (after some arrays were
    already converted)."""
    rng = np.random.default_rng(1)
    z = randn(rng, (16, 7), np.float64)
    zF = np.asfortranarray(z)
    A, W = randn(rng, (16, 9), np.float32), randn(rng, (8, 7), np.float32)
    p = np.zeros(10)
    return {
        "softmax(empty)": lambda: F.softmax(np.zeros((0, 3))),
        "softmax(float16)": lambda: F.softmax(z.astype(np.float16)),
        "softmax_cross_entropy(label out of range)":
            lambda: F.softmax_cross_entropy(zF, np.full(16, 7)),
        "softmax_cross_entropy(bad weights)":
            lambda: F.softmax_cross_entropy(zF, np.zeros(16, int), sample_weight=-np.ones(16)),
        "mse_loss(bad out)": lambda: F.mse_loss(zF, z, out=np.empty((16, 7), np.float32)),
        "poisson_loss(negative y)": lambda: F.poisson_loss(zF, -np.abs(z)),
        "dense_forward(shape)": lambda: F.dense_forward(A, W, None),
        "logistic_loss_grad(b)": lambda: F.logistic_loss_grad(z, np.zeros(7), "0", np.zeros(16)),
        "sgd_step(lr)": lambda: F.sgd_step(p, p.copy(), lr=-1.0),
        "adam_step(step)": lambda: F.adam_step(p, p.copy(), p.copy(), p.copy(), lr=0.1, step=0),
    }


SMALL_CALLS = sorted(_small_calls())
RAISING_CALLS = sorted(_raising_calls())


@pytest.mark.parametrize("name", SMALL_CALLS)
def test_repeated_kernel_calls_do_not_leak(name):
    assert_no_growth(_small_calls()[name], CALLS, name)


@pytest.mark.parametrize("name", RAISING_CALLS)
def test_failing_calls_do_not_leak(name):
    fn = _raising_calls()[name]

    def call():
        try:
            fn()
        except (TypeError, ValueError):
            return
        raise AssertionError(f"{name} did not raise")

    assert_no_growth(call, CALLS // 2, name)


@pytest.mark.parametrize("make_optimizer", [
    lambda params: optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4),
    lambda params: optim.Adam(params, lr=1e-3),
], ids=["sgd", "adam"])
def test_training_steps_do_not_leak(make_optimizer):
    rng = np.random.default_rng(2)
    X = randn(rng, (64, 20), np.float32)
    y = rng.integers(0, 5, 64)
    model = nn.Sequential(nn.Dense(20, 32, "relu", rng=0), nn.Dropout(0.2, rng=1),
                          nn.Dense(32, 5, rng=2))
    loss, opt = nn.SoftmaxCrossEntropy(), make_optimizer(model.parameters())
    assert_no_growth(lambda: nn.train_step(model, loss, opt, X, y), TRAIN_STEPS, "train_step")


def test_bf16_packing_buffers_outlive_no_thread():
    # the bf16 packing buffers (about 0.8 MiB for this shape) are pooled
    # between products, not kept per thread: threads that exit leave none
    rng = np.random.default_rng(3)
    A, B = randn(rng, (128, 784), np.float32), randn(rng, (784, 256), np.float32)

    def product():
        F.matmul_bf16(A, B)

    def in_threads():
        for _ in range(10):
            threads = [threading.Thread(target=product) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    assert_no_growth(product, 1000, "matmul_bf16")
    in_threads()
    gc.collect()
    rss0 = rss_bytes()
    for _ in range(5):
        in_threads()     # 200 threads: 160 MiB if each kept its buffers
    gc.collect()
    assert rss_bytes() - rss0 < 16 * MAX_RSS, "threads' bf16 buffers outlive them"
