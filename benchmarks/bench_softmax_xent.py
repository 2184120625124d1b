"""WORKLOADS.md `softmax_xent`: mean softmax cross-entropy and its
gradient w.r.t. the logits.

Peers: fastnn.functional, fastnn.reference, PyTorch (F.cross_entropy +
backward); see fastnn/bench/workloads.py.
Run: pytest benchmarks/bench_softmax_xent.py
"""
WORKLOAD = "softmax_xent"


def bench_softmax_xent(measure, shape, impl, n_threads):
    measure(WORKLOAD, shape, impl, n_threads)
