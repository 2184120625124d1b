"""WORKLOADS.md `logreg_gd`: binary logistic regression, 100
iterations of full-batch gradient descent (lr 0.1) on 100000 x 128.

Peers: fastnn.functional.logistic_loss_grad, fastnn.reference, PyTorch
(autograd); see fastnn/bench/workloads.py.
Run: pytest benchmarks/bench_logreg.py
"""
WORKLOAD = "logreg_gd"


def bench_logreg_gd(measure, shape, impl, n_threads):
    measure(WORKLOAD, shape, impl, n_threads)
