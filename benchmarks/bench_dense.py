"""WORKLOADS.md `dense`: relu(X W + b) forward and backward
(dX, dW, db from dY), the report's GFLOP/s counting 6·N·in·out.

Peers: fastnn.functional, fastnn.reference, PyTorch (F.linear + relu +
autograd); see fastnn/bench/workloads.py.
Run: pytest benchmarks/bench_dense.py
"""
WORKLOAD = "dense"


def bench_dense(measure, shape, impl, n_threads):
    measure(WORKLOAD, shape, impl, n_threads)
