"""Data-parallel throughput on this machine and a paper model of N machines.

    python benchmarks/distributed_scaling.py serial THREADS      # nn.fit, one process
    mpiexec -n P python benchmarks/distributed_scaling.py mpi     # distributed.fit, 1 thread a rank
    python benchmarks/distributed_scaling.py model GFLOPS         # docs/PERFORMANCE.md's scaling table

The workload is one epoch of mlp_epoch (fastnn.bench.workloads: 60000 x 784
float32, MLP 784-256-128-10 ReLU, SGD lr 0.05, global batch 128); three
epochs, the median reported as samples/s.  Under MPI it also times one
Allreduce of the gradient buffer (300 times, after a barrier each).
"""
import sys
import time

import numpy as np

from fastnn import nn, optim, set_num_threads
from fastnn.bench import workloads as W

BATCH = 128
PARAMETERS = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10   # 235,146
FLOP_PER_SAMPLE = 6 * (784 * 256 + 256 * 128 + 128 * 10)      # forward + backward GEMMs
ALPHA = 25e-6   # assumed latency of one message (TCP), seconds


def epochs(fit, model_and_optimizer, X, y):
    times = []
    for _ in range(3):
        model, opt = model_and_optimizer()
        start = time.perf_counter()
        fit(model, opt)
        times.append(time.perf_counter() - start)
    return len(X) / np.median(times), times


def serial(threads):
    set_num_threads(threads)
    data = W._mlp_data(W.MLP_SAMPLES)
    X, y = data["X"], data["y"]

    def make():
        model = W._fastnn_mlp()
        return model, optim.SGD(model.parameters(), lr=W.MLP_LR)
    rate, times = epochs(lambda m, o: nn.fit(m, nn.SoftmaxCrossEntropy(), o, X, y, epochs=1,
                                             batch_size=BATCH, rng=W.SEED), make, X, y)
    print(f"1 rank x {threads} threads: {rate:,.0f} samples/s "
          f"(epochs {[round(t, 2) for t in times]} s)")


def distributed():
    from mpi4py import MPI
    from fastnn import distributed as dist
    comm = MPI.COMM_WORLD
    set_num_threads(1)
    data = W._mlp_data(W.MLP_SAMPLES)
    X, y = data["X"], data["y"]
    made = {}

    def make():
        model = W._fastnn_mlp()
        made["opt"] = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=W.MLP_LR), comm)
        return model, made["opt"]

    def fit(model, opt):
        comm.Barrier()
        dist.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=BATCH,
                 rng=W.SEED, comm=comm)
        comm.Barrier()
    with dist.abort_on_error(comm):
        rate, times = epochs(fit, make, X, y)
        buffer = np.zeros(made["opt"].nbytes // 4, np.float32)   # the gradients' size
        allreduce = []
        for _ in range(300):
            comm.Barrier()
            start = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer)
            allreduce.append(time.perf_counter() - start)
    if comm.rank == 0:
        print(f"{comm.size} ranks x 1 thread: {rate:,.0f} samples/s "
              f"(epochs {[round(t, 2) for t in times]} s); {buffer.nbytes:,} B per Allreduce, "
              f"median {1e6 * np.median(allreduce):.0f} us, "
              f"p90 {1e6 * np.quantile(allreduce, 0.9):.0f} us")


def speedup(n, batch, gbit, flops):
    """t(1) / t(n) for a ring allreduce of the gradients after each step."""
    one = batch * FLOP_PER_SAMPLE / flops
    if n == 1:
        return 1.0
    message = 2 * (n - 1) / n * (PARAMETERS + 1) * 4 * 8 / (gbit * 1e9) + 2 * (n - 1) * ALPHA
    return one / (one / n + message)


def model(gflops):
    flops = gflops * 1e9
    print("| link | batch | compute per step, 1 machine | N=2 | N=10 | N=100 | best N ≤ 100 |")
    print("|---|---|---|---|---|---|---|")
    for gbit in (1, 10, 100):
        for batch in (128, 512, 4096):
            best = max(range(1, 101), key=lambda n: speedup(n, batch, gbit, flops))
            print(f"| {gbit} Gbit/s | {batch} | {1e3 * batch * FLOP_PER_SAMPLE / flops:.2f} ms | "
                  + " | ".join(f"{speedup(n, batch, gbit, flops):.1f}" for n in (2, 10, 100))
                  + f" | {best} ({speedup(best, batch, gbit, flops):.1f}×) |")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "serial":
        serial(int(sys.argv[2]))
    elif mode == "mpi":
        distributed()
    elif mode == "model":
        model(float(sys.argv[2]))
    else:
        sys.exit(__doc__)
