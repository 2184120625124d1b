"""The dense layer on a sparse TF-IDF input: fastnn.functional.sparse_dense_forward
(O = X W) and sparse_dense_backward (dW = X^T D, db) against SciPy's CSR
products and torch.sparse.mm (a peer only, when installed).

Shapes: a minibatch of 200 x 50000 with 60 non-zeros a row (random columns),
W 50000 x 100 float32 ("batch"), and the forward of the whole 20000 x 50000
set ("full", and its backward).  The backward peers get X^T prepared outside the timing
(SciPy's X.T is a free CSC view; PyTorch's CSR transpose is built once);
fastnn transposes inside its call.  fastnn's backward also fills db.

Run: pytest benchmarks/bench_sparse.py                (pytest-benchmark tables)
     python benchmarks/bench_sparse.py [rounds]       (peers interleaved, medians)
"""
import functools
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp

import fastnn
from fastnn import functional as F
from fastnn.bench import workloads as W

try:
    import torch
except ImportError:   # an optional peer
    torch = None

N_FEATURES, NNZ_PER_ROW, N_OUT = 50000, 60, 100
CASES = {"forward batch": 200, "backward batch": 200, "forward full": 20000, "backward full": 20000}
PEERS = ("fastnn", "scipy", "torch")


def tfidf(n, seed=0):
    """n x N_FEATURES CSR float32, NNZ_PER_ROW random sorted columns a row."""
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.integers(0, N_FEATURES, (n, NNZ_PER_ROW)), axis=1)
    indptr = np.arange(0, n * NNZ_PER_ROW + 1, NNZ_PER_ROW)
    data = rng.uniform(0.01, 1, n * NNZ_PER_ROW).astype(np.float32)
    return sp.csr_matrix((data, indices.ravel().astype(np.int32), indptr.astype(np.int32)),
                         shape=(n, N_FEATURES))


@functools.lru_cache(maxsize=None)
def operands(case):
    n = CASES[case]
    X = tfidf(n)
    rng = np.random.default_rng(1)
    Wt = (rng.standard_normal((N_FEATURES, N_OUT)) / np.sqrt(NNZ_PER_ROW)).astype(np.float32)
    D = rng.standard_normal((n, N_OUT)).astype(np.float32)
    return X, Wt, D


def make_call(case, peer):
    """A no-argument callable computing ``case`` with ``peer``, and a function
    turning its result into the array compared across peers."""
    X, Wt, D = operands(case)
    forward = case.startswith("forward")
    if peer == "fastnn":
        out = np.empty((X.shape[0], N_OUT), np.float32)
        dW, db = np.empty_like(Wt), np.empty(N_OUT, np.float32)
        if forward:
            return (lambda: F.sparse_dense_forward(X, Wt, out=out)), np.asarray
        # identity activation: delta = D, then dW = X^T delta
        return (lambda: F.sparse_dense_backward(X, Wt, out, D, out=(dW, db))), lambda r: r[0]
    if peer == "scipy":
        if forward:
            return (lambda: X @ Wt), np.asarray
        XT = X.T
        return (lambda: XT @ D), np.asarray
    if torch is None:
        return None, None
    tX = torch.sparse_csr_tensor(torch.from_numpy(X.indptr.astype(np.int64)),
                                 torch.from_numpy(X.indices.astype(np.int64)),
                                 torch.from_numpy(X.data), size=X.shape)
    if forward:
        tW = torch.from_numpy(Wt)
        return (lambda: torch.sparse.mm(tX, tW)), lambda r: r.numpy()
    XT = X.T.tocsr()
    tXT = torch.sparse_csr_tensor(torch.from_numpy(XT.indptr.astype(np.int64)),
                                  torch.from_numpy(XT.indices.astype(np.int64)),
                                  torch.from_numpy(XT.data), size=XT.shape)
    tD = torch.from_numpy(D)
    return (lambda: torch.sparse.mm(tXT, tD)), lambda r: r.numpy()


def _params():
    params = []
    for case in CASES:
        for n in W.thread_counts():
            for peer in PEERS:
                marks = (pytest.mark.skip(reason="PyTorch is not installed"),) \
                    if peer == "torch" and torch is None else ()
                params.append(pytest.param(case, peer, n, marks=marks,
                                           id=f"{case.replace(' ', '-')}-{n}thr-{peer}"))
    return params


@pytest.mark.parametrize(("case", "peer", "n_threads"), _params())
def bench_sparse(benchmark, case, peer, n_threads):
    call, result = make_call(case, peer)
    benchmark.group = f"sparse {case} threads={n_threads}"
    benchmark.extra_info.update(case=case, impl=peer, threads=n_threads)
    with W.threads(n_threads):
        call()                       # warm-up: first-call allocations, page faults
        got = result(benchmark(call))
    expected = np.asarray(make_call(case, "scipy")[0]())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)   # fast and wrong fails


def interleaved(rounds=30):
    """Every peer of a case and thread count timed in turn, ``rounds`` times,
    in one process; prints the medians in milliseconds."""
    print(f"# {_cpu()}; fastnn {fastnn.__version__}, simd "
          f"{fastnn._kernels.simd_variant()}, torch {getattr(torch, '__version__', '-')}")
    print(f"{'case':16} {'threads':>7} " + " ".join(f"{p:>10}" for p in PEERS))
    for case in CASES:
        for n in W.thread_counts():
            calls = {p: make_call(case, p)[0] for p in PEERS}
            calls = {p: c for p, c in calls.items() if c is not None}
            times = {p: [] for p in calls}
            with W.threads(n):
                for c in calls.values():
                    c()
                for _ in range(rounds if "full" not in case else max(rounds // 3, 5)):
                    for p, c in calls.items():
                        t = time.perf_counter()
                        c()
                        times[p].append(time.perf_counter() - t)
            medians = {p: 1e3 * float(np.median(t)) for p, t in times.items()}
            print(f"{case:16} {n:7} " + " ".join(
                f"{medians[p]:10.3f}" if p in medians else f"{'-':>10}" for p in PEERS))


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    interleaved(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
