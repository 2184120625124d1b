"""pytest-benchmark harness for the WORKLOADS.md workloads.

Each bench_*.py module names its ``WORKLOAD`` and asks for the ``shape``,
``impl`` and ``n_threads`` parameters; this file parametrises them (peers
that are not installed are skipped with the reason), groups every peer of
one workload, shape and thread count into one pytest-benchmark table, and
checks each peer's output against the NumPy reference after timing it.

The workloads, shapes, peers and agreement checks are those of
``python -m fastnn bench`` (fastnn.bench.workloads): one definition for both.
FASTNN_BENCH_QUICK=1 runs the quick shapes of that command instead (the small
shapes, a tenth of an mlp_epoch epoch and of the logreg_gd iterations).
"""
import functools

import pytest

from fastnn.bench import workloads as W

# long workloads: one warm-up, then few rounds of one call (an mlp_epoch is
# seconds long); the others are calibrated by pytest-benchmark
ROUNDS = {"mlp_epoch": 1, "logreg_gd": 3}


def pytest_generate_tests(metafunc):
    if not {"shape", "impl", "n_threads"} <= set(metafunc.fixturenames):
        return
    workload = metafunc.module.WORKLOAD
    params = []
    for shape in (W.QUICK_SHAPES if W.QUICK else W.SHAPES)[workload]:
        for n in W.thread_counts():
            for impl in W.PEERS[workload]:
                reason = W.missing_reason(impl)
                marks = (pytest.mark.skip(reason=reason),) if reason else ()
                label = W.shape_id(shape).replace(", ", "-").replace(" ", "")
                params.append(pytest.param(shape, impl, n, marks=marks,
                                           id=f"{label}-{n}thr-{impl}"))
    metafunc.parametrize(("shape", "impl", "n_threads"), params)


@functools.lru_cache(maxsize=4)
def reference_result(workload, shape):
    case = W.make_case(workload, shape, "reference")
    case.reset()
    case.run()
    return case.result()


@pytest.fixture
def measure(benchmark):
    """measure(workload, shape, impl, n_threads): time one peer, then check
    that its output agrees with the reference (fast and wrong must fail)."""
    def measure(workload, shape, impl, n_threads):
        case = W.make_case(workload, shape, impl)
        benchmark.group = f"{workload} {W.shape_id(shape)} threads={n_threads}"
        benchmark.extra_info.update(workload=workload, shape=str(shape), impl=impl,
                                    threads=n_threads)
        with W.threads(n_threads):
            case.reset()
            case.run()  # warm-up: first-call allocations, lazy imports, page faults
            if workload in ROUNDS:
                benchmark.pedantic(case.run, setup=case.reset, rounds=ROUNDS[workload],
                                   iterations=1)
            else:
                case.reset()
                benchmark(case.run)
        gflop = W.gflop(workload, shape)
        if gflop is not None and benchmark.stats is not None:
            benchmark.extra_info["gflops"] = gflop / benchmark.stats.stats.median
        if impl != "reference":
            W.check_agreement(workload, impl, case.result(), reference_result(workload, shape),
                              shape)
    return measure
