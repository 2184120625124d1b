"""WORKLOADS.md `mlp_epoch`: one epoch of minibatch SGD (lr 0.05, no
momentum, shuffled) of an MLP 784-256-128-10 over 60000 x 784 samples.

Peers: fastnn.nn.fit, a careful NumPy loop, PyTorch (nn.Sequential +
optim.SGD), scikit-learn MLPClassifier and fastnn.MLPClassifier; see fastnn/bench/workloads.py.
Run: pytest benchmarks/bench_mlp_epoch.py
"""
WORKLOAD = "mlp_epoch"


def bench_mlp_epoch(measure, shape, impl, n_threads):
    measure(WORKLOAD, shape, impl, n_threads)
