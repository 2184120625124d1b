"""bf16 matrix products: C (m x n) = A (m x k) B (k x n), GFLOP/s counting
2·m·k·n, float32 operands in memory.

Peers: fastnn.functional.matmul_bf16 on each bf16 path this machine runs
(amx, avx512_bf16, emulated; the conversion of the float32 operands is part
of the timed call), fastnn float32 (F.dense_forward, identity, no bias),
NumPy float32, PyTorch float32 and PyTorch bf16 (``a @ b`` on tensors
converted to bfloat16 before timing, as PyTorch users hold them).

Run: pytest benchmarks/bench_bf16.py          (pytest-benchmark tables)
     python benchmarks/bench_bf16.py [rounds]  (one interleaved table: every
         peer once per round, medians over the rounds, 1 and 2 threads)
"""
import sys
import time

import numpy as np
import pytest

import fastnn
from fastnn import _config, _kernels
from fastnn import functional as F
from fastnn.bench import workloads as W

try:
    import torch
except ImportError:  # optional peer
    torch = None

SHAPES = ((128, 784, 256), (512, 784, 256), (1024, 1024, 1024), (4096, 512, 512))  # m, k, n
PEERS = ("fastnn_bf16_amx", "fastnn_bf16_avx512_bf16", "fastnn_bf16_emulated", "fastnn_f32",
         "numpy_f32", "torch_f32", "torch_bf16")


def missing_reason(peer):
    if peer.startswith("fastnn_bf16_"):
        return _config.bf16_unavailable(peer[len("fastnn_bf16_"):])
    if peer.startswith("torch") and torch is None:
        return "PyTorch is not installed"
    return None


def make_call(peer, A, B):
    """(the timed call, its result as a NumPy array)."""
    if peer.startswith("fastnn_bf16_"):
        path = peer[len("fastnn_bf16_"):]
        out = np.empty((A.shape[0], B.shape[1]), np.float32)

        def run():
            previous = _kernels.bf16_path(path)
            F.matmul_bf16(A, B, out=out)
            _kernels.bf16_path(previous)
        return run, lambda: out
    if peer == "fastnn_f32":
        out = np.empty((A.shape[0], B.shape[1]), np.float32)
        return (lambda: F.dense_forward(A, B, None, out=out)), lambda: out
    if peer == "numpy_f32":
        out = np.empty((A.shape[0], B.shape[1]), np.float32)
        return (lambda: np.matmul(A, B, out=out)), lambda: out
    ta, tb = torch.from_numpy(A), torch.from_numpy(B)
    if peer == "torch_bf16":
        ta, tb = ta.bfloat16(), tb.bfloat16()
    result = []

    def run():
        with torch.no_grad():
            result[:] = [ta @ tb]
    return run, lambda: result[0].float().numpy()


def _data(shape):
    m, k, n = shape
    rng = np.random.default_rng(0)
    return (rng.standard_normal((m, k)).astype(np.float32),
            rng.standard_normal((k, n)).astype(np.float32))


def _check(peer, C, A, B):
    """bf16 peers within (2^-7 + k 2^-23) |A||B| of the exact product (see
    fastnn.reference.matmul_bf16); float32 peers within k 2^-22 |A||B|."""
    sub = slice(0, 64)
    exact = A[sub].astype(np.float64) @ B.astype(np.float64)
    terms = np.abs(A[sub]).astype(np.float64) @ np.abs(B).astype(np.float64)
    k = A.shape[1]
    rel = 2.0 ** -7 + 2.0 ** -16 + k * 2.0 ** -23 if "bf16" in peer else k * 2.0 ** -22
    assert np.all(np.abs(C[sub] - exact) <= rel * terms), peer


_PARAMS = [pytest.param(shape, peer, n, id=f"{'x'.join(map(str, shape))}-{n}thr-{peer}",
                        marks=(pytest.mark.skip(reason=missing_reason(peer)),)
                        if missing_reason(peer) else ())
           for shape in SHAPES for n in W.thread_counts() for peer in PEERS]


@pytest.mark.parametrize(("mkn", "peer", "n_thr"), _PARAMS)
def bench_bf16(benchmark, mkn, peer, n_thr):
    A, B = _data(mkn)
    run, result = make_call(peer, A, B)
    benchmark.group = f"bf16 {'x'.join(map(str, mkn))} threads={n_thr}"
    benchmark.extra_info.update(shape=str(mkn), impl=peer, threads=n_thr)
    with W.threads(n_thr):
        run()
        benchmark(run)
    m, k, n = mkn
    if benchmark.stats is not None:
        benchmark.extra_info["gflops"] = 2 * m * k * n / benchmark.stats.stats.median / 1e9
    _check(peer, result(), A, B)


def interleaved(rounds=9, thread_counts=(1, 2)):
    """{(shape, threads, peer): median GFLOP/s}: each round runs every peer
    once (calls worth 0.4 GFLOP), so that the machine's load falls on all of
    them alike.  With more than one thread each peer starts after a pause
    longer than the OpenMP runtimes' spin-wait (libomp's KMP_BLOCKTIME, 200
    ms): the idle team of the peer before would otherwise spin on the cores
    the next one needs (fastnn's libomp, PyTorch's libgomp, OpenBLAS's
    threads, all in one process)."""
    peers = [p for p in PEERS if missing_reason(p) is None]
    table = {}
    for shape in SHAPES:
        A, B = _data(shape)
        m, k, n = shape
        calls = {p: make_call(p, A, B) for p in peers}
        repeat = max(1, int(0.4e9 / (2 * m * k * n)))
        for t in thread_counts:
            times = {p: [] for p in peers}
            with W.threads(t):
                for run, _ in calls.values():
                    run()
                for _ in range(rounds):
                    for p in peers:
                        run = calls[p][0]
                        if t > 1:
                            time.sleep(0.25)
                            run()
                        start = time.perf_counter()
                        for _ in range(repeat):
                            run()
                        times[p].append((time.perf_counter() - start) / repeat)
            for p in peers:
                table[shape, t, p] = 2 * m * k * n / np.median(times[p]) / 1e9
                _check(p, calls[p][1](), A, B)
    return peers, table


def main(argv):
    rounds = int(argv[1]) if len(argv) > 1 else 9
    peers, table = interleaved(rounds)
    print(f"# {fastnn.build_info()['bf16']} ({fastnn.build_info()['bf16_why']}); "
          f"GFLOP/s, median of {rounds} interleaved rounds")
    print("| m x k x n | threads | " + " | ".join(peers) + " |")
    print("|---|---|" + "---|" * len(peers))
    for shape in SHAPES:
        for t in (1, 2):
            row = " | ".join(f"{table[shape, t, p]:.0f}" for p in peers)
            print(f"| {'x'.join(map(str, shape))} | {t} | {row} |")


if __name__ == "__main__":
    main(sys.argv)
