"""The kernels release the GIL: two Python threads, each making the same
single-threaded kernel call, finish in about the time of one call on a
2-core machine (they would take twice as long if the GIL serialised them).

Compare the two rows of each group: "2 Python threads" / "1 call" near 1.0
means the calls ran concurrently, near 2.0 that they were serialised.
Run: pytest benchmarks/bench_gil.py
"""
import threading

import numpy as np
import pytest

import fastnn
import fastnn.functional as F

RNG = np.random.default_rng(0)
LOGITS = RNG.standard_normal((16384, 1000), dtype=np.float32)
LABELS = RNG.integers(0, 1000, 16384)
A = RNG.standard_normal((512, 1024), dtype=np.float32)
W = RNG.standard_normal((1024, 1024), dtype=np.float32)
B = np.zeros(1024, np.float32)

KERNELS = {
    "softmax_cross_entropy": lambda out: F.softmax_cross_entropy(LOGITS, LABELS, out=out),
    "dense_forward": lambda out: F.dense_forward(A, W, B, "relu", out=out),
}
OUTPUT_SHAPES = {"softmax_cross_entropy": LOGITS.shape, "dense_forward": (512, 1024)}


def _in_threads(kernel, outs):
    threads = [threading.Thread(target=kernel, args=(out,)) for out in outs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("n_python_threads", [1, 2], ids=["1 call", "2 Python threads"])
@pytest.mark.parametrize("name", sorted(KERNELS))
def bench_gil_release(benchmark, name, n_python_threads):
    benchmark.group = f"gil: {name}, 1 OpenMP thread per call"
    outs = [np.empty(OUTPUT_SHAPES[name], np.float32) for _ in range(n_python_threads)]
    with fastnn.num_threads(1):
        benchmark.pedantic(_in_threads, args=(KERNELS[name], outs), rounds=15, warmup_rounds=2)
    first = outs[0]
    for out in outs[1:]:  # concurrent calls computed the same thing
        np.testing.assert_array_equal(out, first)
