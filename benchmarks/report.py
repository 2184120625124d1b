"""Measure the WORKLOADS.md workloads and print Markdown tables.

    python benchmarks/report.py [--quick] [--threads 1,2] [--repeats 7]
                                [--workloads softmax_xent,dense,...] [--no-ceilings]

All peers of one workload and shape run on the same arrays in one process,
interleaved (fastnn, reference, torch, ... then again), each timed as a block
of calls long enough for the clock, and the median over the repeats is
reported, after a warm-up, so that machine drift hits every peer alike.
Ratios are peer / fastnn: above 1 means fastnn is faster.  Every peer's
output is checked against the NumPy reference; a mismatch is printed and makes
the exit status 1.  PyTorch and scikit-learn are optional peers.
"""
import argparse
import concurrent.futures
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg.blas as scipy_blas  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

import fastnn  # noqa: E402
import workloads as W  # noqa: E402

BLOCK_SECONDS = 0.05     # a timed block of calls lasts at least this long
SGEMM_N = 4096
STREAM_ELEMENTS = 1 << 25  # float32: 128 MiB per array, far beyond the caches
MIN_FLOOR_BYTES = 4 << 20  # smaller working sets stay in cache: no memory floor

TITLES = {
    "softmax_xent": "softmax_xent: mean cross-entropy loss + gradient w.r.t. the logits (N, C)",
    "dense": "dense: relu(X W + b) forward + backward (dX, dW, db), shape (N, in, out)",
    "mlp_epoch": "mlp_epoch: one SGD epoch, 60000 x 784, MLP 784-256-128-10, lr 0.05",
    "logreg_gd": "logreg_gd: logistic regression, 100 full-batch GD iterations, lr 0.1",
}
PEER_NOTES = {
    "fastnn": "fastnn.functional kernels (reused out= buffers, as fastnn.nn uses them); "
              "mlp_epoch: fastnn.nn.Sequential + optim.SGD + nn.fit",
    "reference": "fastnn.reference (plain NumPy); mlp_epoch: a careful NumPy loop "
                 "(workloads.numpy_epoch)",
    "torch": "PyTorch CPU, idiomatic: F.cross_entropy / F.linear + autograd, "
             "nn.Sequential + optim.SGD, torch.set_num_threads",
    "sklearn": "sklearn.neural_network.MLPClassifier(solver='sgd', momentum=0, alpha=0, "
               "max_iter=1), one fit (includes its input checks and initialisation)",
    "fastnn.MLPClassifier": "fastnn.MLPClassifier with the same parameters as sklearn's",
}


# ---------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------
def fmt_time(seconds):
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_ratio(value):
    return "—" if value is None else f"{value:.2f}×"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------
def cpu_description():
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if flags and model:
                    break
    except OSError:
        pass
    simd = [name for name, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("FMA", "fma"))
            if flag in flags]
    return f"{model} ({', '.join(simd) or 'no AVX'})"


def environment_lines(thread_list):
    info = fastnn.build_info()
    lines = [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_description()}, {W.thread_counts()[-1]} usable cores, "
        f"{platform.system()} {platform.release()}",
        f"- threads measured: {', '.join(map(str, thread_list))} (the same budget for every "
        f"peer: fastnn.num_threads, torch.set_num_threads, threadpoolctl for NumPy/SciPy BLAS)",
        f"- load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"(other processes on the machine add noise)",
        f"- Python {platform.python_version()}, fastnn {fastnn.__version__}, NumPy "
        f"{np.__version__}, SciPy {scipy.__version__}" + "".join(
            f", {name} {version}" for name, version in optional_versions()),
        f"- fastnn build: OpenMP {info.get('openmp')} ({info.get('openmp_runtime')}), "
        f"SIMD kernels {info.get('simd_kernels')}, BLAS thread control: "
        f"{info.get('blas_thread_control')}",
        f"- OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE', '(unset: OpenBLAS detects the CPU)')}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}, "
        f"FASTNN_NUM_THREADS={os.environ.get('FASTNN_NUM_THREADS', '(unset)')}",
    ]
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            owner = os.path.basename(os.path.dirname(lib["filepath"]))
            lines.append(f"- BLAS in {owner}: {lib['internal_api']} {lib.get('version')}, "
                         f"kernels in effect: {lib.get('architecture', '?')}")
    if W.torch is not None:
        backends = W.torch.backends
        capability = getattr(getattr(backends, "cpu", None), "get_cpu_capability", lambda: "?")
        lines.append(f"- PyTorch: MKL {backends.mkl.is_available()}, oneDNN "
                     f"{backends.mkldnn.is_available()}, CPU capability {capability()}")
    return lines


def optional_versions():
    if W.torch is not None:
        yield "PyTorch", W.torch.__version__
    if W.SklearnMLP is not None:
        import sklearn
        yield "scikit-learn", sklearn.__version__


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------
def timed_block(case, number):
    """Seconds per call of ``number`` calls of case.run (reset untimed)."""
    case.reset()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            case.run()
        return (time.perf_counter() - start) / number
    finally:
        if gc_was_enabled:
            gc.enable()


def calls_per_block(case, needs_reset):
    """The number of calls that makes a block >= BLOCK_SECONDS (one call for
    workloads whose state is reset between calls: they are long)."""
    if needs_reset:
        return 1
    single = min(timed_block(case, 1) for _ in range(2))
    if single >= BLOCK_SECONDS:
        return 1
    return max(1, int(BLOCK_SECONDS / max(single, 1e-7)) + 1)


def measure_interleaved(named_cases, repeats, needs_reset):
    """{name: median seconds per call}, peers timed in turn, repeat by repeat."""
    numbers = {name: calls_per_block(case, needs_reset) for name, case in named_cases.items()}
    samples = {name: [] for name in named_cases}
    for _ in range(repeats):
        for name, case in named_cases.items():
            samples[name].append(timed_block(case, numbers[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


# ---------------------------------------------------------------------------
# ceilings: sgemm and memory bandwidth through the same BLAS / NumPy
# ---------------------------------------------------------------------------
def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_ceilings(n_threads, repeats):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    b = rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    c = np.empty_like(a)
    flops = 2.0 * SGEMM_N ** 3
    cf = np.empty((SGEMM_N, SGEMM_N), np.float32, order="F")
    # SciPy's sgemm on Fortran views of the C arrays: (a b)^T = b^T a^T, no copies
    scipy_s = median_time(lambda: scipy_blas.sgemm(1.0, b.T, a.T, beta=0.0, c=cf,
                                                   overwrite_c=True), repeats)
    numpy_s = median_time(lambda: np.matmul(a, b, out=c), repeats)
    del a, b, c, cf

    # bandwidth: n_threads Python threads over contiguous slices (NumPy drops
    # the GIL in its loops); the triad a = b + s c runs in cache-sized blocks
    # so that it is one pass over memory
    x = np.full(STREAM_ELEMENTS, 1.0, np.float32)
    y = np.full(STREAM_ELEMENTS, 2.0, np.float32)
    z = np.empty(STREAM_ELEMENTS, np.float32)
    bounds = np.linspace(0, STREAM_ELEMENTS, n_threads + 1).astype(int)
    block = 1 << 16

    def copy_part(i):
        np.copyto(z[bounds[i]:bounds[i + 1]], x[bounds[i]:bounds[i + 1]])

    def triad_part(i):
        for lo in range(bounds[i], bounds[i + 1], block):
            hi = min(lo + block, bounds[i + 1])
            out = z[lo:hi]
            np.multiply(y[lo:hi], np.float32(3.0), out=out)
            np.add(out, x[lo:hi], out=out)

    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        def parallel(part):
            return lambda: list(pool.map(part, range(n_threads)))
        copy_s = median_time(parallel(copy_part), repeats)
        triad_s = median_time(parallel(triad_part), repeats)
    nbytes = STREAM_ELEMENTS * 4
    return {"sgemm_scipy": flops / scipy_s / 1e9, "sgemm_numpy": flops / numpy_s / 1e9,
            "copy": 2 * nbytes / copy_s / 1e9, "triad": 3 * nbytes / triad_s / 1e9}


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------
def mlp_epoch_gflop():
    """GEMM work of one epoch: forward A W, backward A^T Δ for every layer,
    Δ W^T for all but the first (no input gradient needed)."""
    sizes = (W.MLP_FEATURES, *W.MLP_HIDDEN, W.MLP_CLASSES)
    pairs = list(zip(sizes[:-1], sizes[1:]))
    per_sample = sum(6 * a * b for a, b in pairs) - 2 * pairs[0][0] * pairs[0][1]
    return per_sample * W.MLP_SAMPLES / 1e9


def memory_floor_bytes(workload, shape):
    """Bytes one call must move to or from memory, or None (not a bound for
    data that stays in the caches)."""
    if workload == "softmax_xent":       # read the logits once, write the gradient once
        n, c = shape
        nbytes = 2 * 4 * n * c
        return nbytes if nbytes >= MIN_FLOOR_BYTES else None
    if workload == "logreg_gd":          # one pass over X per iteration
        n, d = shape
        return W.LOGREG_ITERS * 4 * n * d
    return None


def run_shape(workload, shape, repeats):
    """Times, agreement notes and errors of every peer at one shape."""
    notes, errors, cases = {}, {}, {}
    for impl in W.implementations(workload):
        try:
            cases[impl] = W.make_case(workload, shape, impl)
        except Exception as exc:  # a broken peer must not hide the others
            errors[impl] = f"setup failed: {exc!r}"
    needs_reset = workload in ("mlp_epoch", "logreg_gd")
    # a peer that raises while running is dropped and reported
    for impl in list(cases):
        try:
            cases[impl].reset()
            cases[impl].run()
        except Exception as exc:
            errors[impl] = f"failed: {exc!r}"
            traceback.print_exc(file=sys.stderr)
            del cases[impl]
    times = measure_interleaved(cases, repeats, needs_reset)
    expected = cases["reference"].result() if "reference" in cases else None
    for impl, case in cases.items():
        if impl == "reference" or expected is None:
            continue
        try:
            W.check_agreement(workload, impl, case.result(), expected)
        except AssertionError as exc:
            notes[impl] = str(exc).strip().splitlines()[0]
    return times, notes, errors


def workload_table(workload, results, ceilings, thread_list):
    peers = [p for p in W.PEERS[workload]
             if any(p in res[0] or p in res[2] for res in results.values())]
    others = [p for p in peers if p != "fastnn"]
    header = ["shape", "threads"] + peers + [f"{p}/fastnn" for p in others]
    if workload == "dense":
        header += ["fastnn GFLOP/s", "% of sgemm"]
    if workload == "mlp_epoch":
        header += ["GEMM floor", "fastnn/floor"]
    has_floor = workload in ("softmax_xent", "logreg_gd")
    if has_floor:
        header += ["memory floor", "fastnn/floor"]
    header.append("agrees with reference")
    rows, problems = [], []
    for (shape, n), (times, notes, errors) in results.items():
        fast = times.get("fastnn")
        row = [W.shape_id(shape), n]
        row += [fmt_time(times[p]) if p in times else ("error" if p in errors else "—")
                for p in peers]
        row += [fmt_ratio(times[p] / fast if p in times and fast else None) for p in others]
        ceiling = ceilings.get(n)
        if workload == "dense":
            gflops = W.gflop(workload, shape) / fast if fast else None
            share = gflops / ceiling["sgemm_scipy"] if gflops and ceiling else None
            row += [f"{gflops:.1f}" if gflops else "—", f"{share:.0%}" if share else "—"]
        if workload == "mlp_epoch":
            floor = mlp_epoch_gflop() / ceiling["sgemm_scipy"] if ceiling else None
            row += [fmt_time(floor), fmt_ratio(fast / floor if fast and floor else None)]
        if has_floor:
            nbytes = memory_floor_bytes(workload, shape)
            floor = nbytes / (ceiling["triad"] * 1e9) if nbytes and ceiling else None
            row += [fmt_time(floor), fmt_ratio(fast / floor if fast and floor else None)]
        bad = sorted(set(notes) | set(errors))
        row.append("yes" if not bad else "NO: " + ", ".join(bad))
        rows.append(row)
        problems += [f"{W.shape_id(shape)} {n} threads, {p}: {notes.get(p) or errors.get(p)}"
                     for p in bad]
    return table(header, rows), problems


def scaling_table(all_results, thread_list):
    """Time at 1 thread / time at the most threads, per peer."""
    lo, hi = thread_list[0], thread_list[-1]
    peers = ["fastnn", "reference", "torch", "sklearn", "fastnn.MLPClassifier"]
    rows = []
    for workload, results in all_results.items():
        for shape in dict.fromkeys(s for s, _ in results):
            a, b = results.get((shape, lo)), results.get((shape, hi))
            if a is None or b is None:
                continue
            row = [workload, W.shape_id(shape)]
            row += [fmt_ratio(a[0][p] / b[0][p]) if p in a[0] and p in b[0] else "—"
                    for p in peers]
            rows.append(row)
    used = [i for i, p in enumerate(peers) if any(r[2 + i] != "—" for r in rows)]
    header = ["workload", "shape"] + [peers[i] for i in used]
    rows = [r[:2] + [r[2 + i] for i in used] for r in rows]
    return table(header, rows)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="only the small shapes (also: FASTNN_BENCH_QUICK=1)")
    parser.add_argument("--threads", default=",".join(map(str, W.thread_counts())),
                        help="comma-separated thread counts (default: 1 and all cores)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed repeats per peer, the median is reported (default 7)")
    parser.add_argument("--workloads", default=",".join(W.WORKLOADS),
                        help=f"comma-separated subset of {', '.join(W.WORKLOADS)}")
    parser.add_argument("--no-ceilings", action="store_true",
                        help="skip the sgemm and bandwidth measurements")
    args = parser.parse_args(argv)
    try:
        args.threads = sorted({int(t) for t in args.threads.split(",")})
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if not args.threads or args.threads[0] < 1:
        parser.error("--threads must be positive")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(W.WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {list(W.WORKLOADS)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    args.quick = args.quick or W.QUICK
    return args


def main(argv=None):
    args = parse_args(argv)
    shapes = W.QUICK_SHAPES if args.quick else W.SHAPES
    started = time.perf_counter()
    print(f"# fastnn benchmark report{' (quick)' if args.quick else ''}\n")
    print("\n".join(environment_lines(args.threads)))
    print(f"\nEach figure is the median of {args.repeats} timed repeats after a warm-up, "
          "peers interleaved in one process on the same float32 arrays; ratios are "
          "peer time / fastnn time (> 1: fastnn faster). Peers:\n")
    for impl in dict.fromkeys(p for w in args.workloads for p in W.PEERS[w]):
        reason = W.missing_reason(impl)
        print(f"- {impl}: {PEER_NOTES[impl]}" + (f" — not run: {reason}" if reason else ""))
    sys.stdout.flush()

    ceilings = {}
    if not args.no_ceilings:
        for n in args.threads:
            with W.threads(n):
                ceilings[n] = measure_ceilings(n, max(3, min(args.repeats, 5)))
        print(f"\n## Machine ceilings\n\nsgemm {SGEMM_N}³ (2·n³ flops) through SciPy's BLAS "
              "(the one fastnn calls) and NumPy's; memory bandwidth of a copy (read + write "
              f"{STREAM_ELEMENTS * 4 >> 20} MiB) and a triad a = b + s·c (3 streams), NumPy "
              "loops on n Python threads.\n")
        print(table(["threads", "sgemm GFLOP/s (SciPy BLAS)", "sgemm GFLOP/s (NumPy BLAS)",
                     "copy GB/s", "triad GB/s"],
                    [[n, f"{c['sgemm_scipy']:.0f}", f"{c['sgemm_numpy']:.0f}",
                      f"{c['copy']:.1f}", f"{c['triad']:.1f}"] for n, c in ceilings.items()]))
        sys.stdout.flush()

    all_results, problems = {}, []
    for workload in args.workloads:
        results = {}
        for shape in shapes[workload]:
            for n in args.threads:
                with W.threads(n):
                    results[(shape, n)] = run_shape(workload, shape, args.repeats)
        all_results[workload] = results
        text, bad = workload_table(workload, results, ceilings, args.threads)
        problems += [f"{workload} {p}" for p in bad]
        print(f"\n## {TITLES[workload]}\n")
        if workload == "dense":
            print("GFLOP/s count 6·N·in·out; % of the sgemm ceiling at the same thread count.\n")
        if workload == "mlp_epoch":
            print(f"GEMM floor: the epoch's {mlp_epoch_gflop():.1f} GFLOP of matrix products at "
                  "the sgemm ceiling. sklearn and fastnn.MLPClassifier use their own "
                  "initialisation and order (compared by epoch loss only).\n")
        if workload in ("softmax_xent", "logreg_gd"):
            print("Memory floor: the bytes that must move (softmax_xent: read logits + write "
                  "gradient; logreg_gd: read X once per iteration) at the triad bandwidth; "
                  f"none below {MIN_FLOOR_BYTES >> 20} MiB, which stays in the caches.\n")
        print(text)
        sys.stdout.flush()

    if len(args.threads) > 1:
        print(f"\n## Thread scaling: time at {args.threads[0]} thread / time at "
              f"{args.threads[-1]} threads\n")
        print(scaling_table(all_results, args.threads))
    print(f"\nTotal time {time.perf_counter() - started:.0f} s; load average at end: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    if problems:
        print("\n## Problems\n")
        print("\n".join(f"- {p}" for p in problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
