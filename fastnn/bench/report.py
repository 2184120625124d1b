"""The work behind ``python -m fastnn bench`` (options: :mod:`fastnn.bench`).

All peers of one workload and shape run on the same arrays in one process,
interleaved (fastnn, reference, torch, ... then again), each timed as a block
of calls long enough for the clock, and the median over the repeats is
reported, after a warm-up, so that machine drift hits every peer alike.
Ratios are peer / fastnn: above 1 means fastnn is faster.  Every peer's
output is checked against the NumPy reference; a mismatch is printed and makes
the exit status 1.
"""
import concurrent.futures
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import typing

import numpy as np
import scipy
import scipy.linalg.blas as scipy_blas
from threadpoolctl import threadpool_info

import fastnn
from fastnn.bench import workloads as W

FULL_SGEMM_N = 4096
MIN_FLOOR_BYTES = 4 << 20  # smaller working sets stay in cache: no memory floor
PAUSE_SECONDS = 0.01       # between two peers' timed blocks
# the peers of the scaling tables (the estimators' fit includes their set-up)
SCALING_PEERS = ("fastnn", "reference", "torch")

TITLES = {
    "softmax_xent": "softmax_xent: mean cross-entropy loss + gradient w.r.t. the logits (N, C)",
    "dense": "dense: relu(X W + b) forward + backward (dX, dW, db), shape (N, in, out)",
    "mlp_epoch": "mlp_epoch: one SGD epoch over 60000 x 784 samples (fewer where the shape "
                 "says so), MLP 784-256-128-10, lr 0.05",
    "logreg_gd": "logreg_gd: logistic regression, 100 full-batch GD iterations (fewer where "
                 "the shape says so), lr 0.1",
}
PEER_NOTES = {
    "fastnn": "fastnn.functional kernels (reused out= buffers, as fastnn.nn uses them); "
              "mlp_epoch: fastnn.nn.Sequential + optim.SGD + nn.fit",
    "reference": "fastnn.reference (plain NumPy); mlp_epoch: a careful NumPy loop "
                 "(fastnn.bench.workloads.numpy_epoch)",
    "torch": "PyTorch CPU, idiomatic: F.cross_entropy / F.linear + autograd, "
             "nn.Sequential + optim.SGD, torch.set_num_threads",
    "sklearn": "sklearn.neural_network.MLPClassifier(solver='sgd', momentum=0, alpha=0, "
               "max_iter=1), one fit (includes its input checks and initialisation)",
    "fastnn.MLPClassifier": "fastnn.MLPClassifier with the same parameters as sklearn's",
    "fastnn.bf16": "fastnn with compute_dtype='bfloat16' (bf16 products, float32 "
                   "accumulation, weights and activations; the bf16 path above)",
    "torch.bf16": "PyTorch bf16 mixed precision: the torch peer under "
                  "torch.autocast('cpu', dtype=torch.bfloat16), float32 master weights",
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """The sizes of one kind of run."""
    name: str
    shapes: dict                # workload -> shapes of the main tables
    repeats: int
    block_seconds: float        # a timed block of calls lasts at least this long
    sgemm_n: int
    stream_elements: int        # float32 elements per bandwidth array
    softmax_n: dict             # scaling: C -> values of N
    batches: tuple              # scaling: mlp_epoch batch sizes
    mlp_samples: int            # ... over this many samples


PROFILES = {
    "full": Profile("full", W.SHAPES, 7, 0.05, FULL_SGEMM_N, 1 << 25,
                    {10: (128, 1024, 8192, 65536, 262144), 1000: (128, 1024, 8192, 32768)},
                    (32, 64, 128, 256, 512), W.MLP_SAMPLES),
    "quick": Profile("quick", W.QUICK_SHAPES, 3, 0.02, 2048, 1 << 24,
                     {10: (128, 1024, 8192, 65536), 1000: (128, 1024, 8192)},
                     (32, 64, 128, 256, 512), W.MLP_SAMPLES // 10),
    "smoke": Profile("smoke", W.SMOKE_SHAPES, 1, 0.001, 128, 1 << 16,
                     {10: (16, 64), 1000: (16,)}, (32, 64), 256),
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


class Output:
    """Prints the report as it goes (a long run shows progress) and keeps it
    for --output."""

    def __init__(self):
        self.parts = []

    def __call__(self, text=""):
        print(text, flush=True)
        self.parts.append(text)

    def text(self):
        return "\n".join(self.parts) + "\n"


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
    simd = [name for name, flag in (("AVX-512", "avx512f"), ("AVX512_BF16", "avx512_bf16"),
                                    ("AMX-BF16", "amx_bf16"), ("AVX2", "avx2"), ("FMA", "fma"))
            if flag in flags]
    return f"{model} ({', '.join(simd) or 'no AVX'})"


def cpu_times(stat="/proc/stat"):
    """(stolen, total) CPU time of the whole machine so far, in clock ticks,
    from Linux's /proc/stat; None elsewhere.  "Stolen" is the time the
    hypervisor ran something else while a virtual CPU had work: on a cloud
    VM, the noise no repeat can average out."""
    try:
        with open(stat) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]   # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def stolen_share(start, end):
    """The share of the machine's CPU time stolen between two cpu_times(), or
    None when either is unknown or no time passed."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


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
        f"SIMD kernels {info.get('simd_kernels')}, GEMM {info.get('gemm')}, bf16 products "
        f"{info.get('bf16')} ({info.get('bf16_why')}), BLAS "
        f"{info.get('blas')}, BLAS thread "
        f"control: {info.get('blas_thread_control')}",
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


def calls_per_block(case, needs_reset, block_seconds):
    """The number of calls that makes a block >= block_seconds (one call for
    workloads whose state is reset between calls: they are long)."""
    if needs_reset:
        return 1
    single = min(timed_block(case, 1) for _ in range(2))
    if single >= block_seconds:
        return 1
    return max(1, int(block_seconds / max(single, 1e-7)) + 1)


def measure_interleaved(named_cases, repeats, needs_reset, block_seconds):
    """{name: median seconds per call}, peers timed in turn, repeat by repeat."""
    numbers = {name: calls_per_block(case, needs_reset, block_seconds)
               for name, case in named_cases.items()}
    samples = {name: [] for name in named_cases}
    for _ in range(repeats):
        for name, case in named_cases.items():
            # untimed: let the previous peer's OpenMP threads stop spinning,
            # so that no peer pays for another's runtime; then a block of
            # short calls run once untimed, because a core that has been idle
            # or waiting runs them up to 2x slower for its first ~0.1 s
            # (measured: 128x10 softmax_xent at 20 us, then 11 us), and a
            # training loop calls them back to back
            time.sleep(PAUSE_SECONDS)
            if not needs_reset:
                timed_block(case, numbers[name])
            samples[name].append(timed_block(case, numbers[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


# ---------------------------------------------------------------------------
# ceilings: sgemm and memory bandwidth through the same BLAS / NumPy
# ---------------------------------------------------------------------------
def best_time(fn, repeats):
    """The fastest of ``repeats`` runs after a warm-up: a ceiling is what the
    machine can do, and the noise of a shared machine only ever slows it."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_ceilings(n_threads, repeats, sgemm_n, stream_elements):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((sgemm_n, sgemm_n), dtype=np.float32)
    b = rng.standard_normal((sgemm_n, sgemm_n), dtype=np.float32)
    c = np.empty_like(a)
    flops = 2.0 * sgemm_n ** 3
    cf = np.empty((sgemm_n, sgemm_n), np.float32, order="F")
    # SciPy's sgemm on Fortran views of the C arrays: (a b)^T = b^T a^T, no copies
    scipy_s = best_time(lambda: scipy_blas.sgemm(1.0, b.T, a.T, beta=0.0, c=cf,
                                                   overwrite_c=True), repeats)
    numpy_s = best_time(lambda: np.matmul(a, b, out=c), repeats)
    del a, b, c, cf

    # bandwidth: n_threads Python threads over contiguous slices (NumPy drops
    # the GIL in its loops); the triad a = b + s c runs in cache-sized blocks
    # so that it is one pass over memory
    x = np.full(stream_elements, 1.0, np.float32)
    y = np.full(stream_elements, 2.0, np.float32)
    z = np.empty(stream_elements, np.float32)
    bounds = np.linspace(0, stream_elements, n_threads + 1).astype(int)
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
        copy_s = best_time(parallel(copy_part), repeats)
        triad_s = best_time(parallel(triad_part), repeats)
    nbytes = stream_elements * 4
    # the machine's ceiling: the faster of the two libraries (fastnn calls the
    # newer one, see fastnn._config._choose_blas)
    return {"sgemm_scipy": flops / scipy_s / 1e9, "sgemm_numpy": flops / numpy_s / 1e9,
            "sgemm": flops / min(scipy_s, numpy_s) / 1e9,
            "copy": 2 * nbytes / copy_s / 1e9, "triad": 3 * nbytes / triad_s / 1e9}


# OpenBLAS's AVX-512 sgemm in a child process: the machine's GEMM ceiling
# where the BLAS this process uses is held to AVX2 (OPENBLAS_CORETYPE=Haswell
# in the environment, or a CPU OpenBLAS does not know).  Only the child's
# environment is changed; fastnn and its peers run with the user's.
_AVX512_SGEMM = """
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
n_threads, repeats, n = map(int, sys.argv[1:])
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b, c = a.copy(), np.empty_like(a)
with threadpool_limits(n_threads, user_api="blas"):
    np.matmul(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - start)
kernels = {i.get("architecture") for i in threadpool_info() if i["user_api"] == "blas"}
print(json.dumps({"gflops": 2.0 * n ** 3 / best / 1e9, "kernels": sorted(map(str, kernels))}))
"""


def measure_avx512_sgemm(n_threads, repeats, sgemm_n):
    """GFLOP/s of NumPy's OpenBLAS sgemm on its AVX-512 (SkylakeX) kernels,
    measured in a child process; None where the CPU has no AVX-512 or the
    child fails."""
    flags = fastnn._kernels.cpu_flags()
    if flags is None or not fastnn._kernels.cpu_supports("x86-64-v4", flags):
        return None
    env = dict(os.environ, OPENBLAS_CORETYPE="SkylakeX")
    try:
        done = subprocess.run([sys.executable, "-c", _AVX512_SGEMM, str(n_threads),
                               str(repeats), str(sgemm_n)], env=env, capture_output=True,
                              text=True, timeout=600, check=True)
        result = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return result["gflops"] if result["kernels"] == ["SkylakeX"] else None


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------
def memory_floor_bytes(workload, shape):
    """Bytes one call must move to or from memory, or None (not a bound for
    data that stays in the caches)."""
    if workload == "softmax_xent":       # read the logits once, write the gradient once
        n, c = shape
        nbytes = 2 * 4 * n * c
        return nbytes if nbytes >= MIN_FLOOR_BYTES else None
    if workload == "logreg_gd":          # one pass over X per iteration
        return shape.iters * 4 * shape.n * shape.d
    return None


def run_shape(workload, shape, repeats, block_seconds, peers=None):
    """(times, agreement notes, errors) of the peers (default: all those
    installed) at one shape; the reference always runs, as the check."""
    wanted = W.implementations(workload)
    if peers is not None:
        wanted = [p for p in wanted if p in peers or p == "reference"]
    notes, errors, cases = {}, {}, {}
    for impl in wanted:
        try:
            cases[impl] = W.make_case(workload, shape, impl)
        except Exception as exc:  # a broken peer must not hide the others
            errors[impl] = f"setup failed: {exc!r}"
    needs_reset = workload in ("mlp_epoch", "logreg_gd")
    # warm-up; a peer that raises is dropped and reported
    for impl in list(cases):
        try:
            cases[impl].reset()
            cases[impl].run()
        except Exception as exc:
            errors[impl] = f"failed: {exc!r}"
            traceback.print_exc(file=sys.stderr)
            del cases[impl]
    times = measure_interleaved(cases, repeats, needs_reset, block_seconds)
    expected = cases["reference"].result() if "reference" in cases else None
    for impl, case in cases.items():
        if impl == "reference" or expected is None:
            continue
        try:
            W.check_agreement(workload, impl, case.result(), expected, shape)
        except AssertionError as exc:
            # one line: what differs and by how much, without the arrays
            lines = [line.strip() for line in str(exc).splitlines()]
            notes[impl] = "; ".join(line for line in lines
                                    if line and not line.startswith(("x:", "y:")))
    return times, notes, errors


class ShapeResult(typing.NamedTuple):
    times: dict         # {peer: median seconds per call}
    notes: dict         # {peer: how its output disagrees with the reference}
    errors: dict        # {peer: why it did not run}
    round_trips: tuple  # core_round_trip() before and after, or () on one thread


def core_round_trip():
    """Median seconds of a cache-line round trip between two of fastnn's
    OpenMP threads (five probes), or None where fewer than two cores are
    usable.  Every parallel region waits on it; on a virtual machine it
    changes with where the host runs the vCPUs, and two-thread times with it
    (docs/PERFORMANCE.md: Variability on a virtual machine)."""
    if W.thread_counts()[-1] < 2:
        return None
    probes = [fastnn._kernels.team_round_trip(2000, 0.05) for _ in range(5)]
    probes = [p for p in probes if p is not None]
    return statistics.median(probes) if probes else None


def measure_shapes(workload, shapes, thread_list, profile, repeats, peers=None, known=None):
    """{(shape, threads): ShapeResult}, the core round trip measured before
    and after each multi-thread shape; results already in ``known`` are reused."""
    results = {}
    for shape in shapes:
        for n in thread_list:
            if known and (shape, n) in known:
                results[(shape, n)] = known[(shape, n)]
                continue
            before = core_round_trip() if n > 1 else None
            with W.threads(n):
                times, notes, errors = run_shape(workload, shape, repeats,
                                                 profile.block_seconds, peers)
            after = core_round_trip() if n > 1 else None
            results[(shape, n)] = ShapeResult(times, notes, errors,
                                              () if None in (before, after) else (before, after))
    return results


def workload_table(workload, results, ceilings, peers=None):
    """The Markdown table of ``results`` and the list of problems in it."""
    peers = [p for p in W.PEERS[workload] if (peers is None or p in peers)
             and any(p in res[0] or p in res[2] for res in results.values())]
    others = [p for p in peers if p != "fastnn"]
    header = ["shape", "threads"] + peers + [f"{p}/fastnn" for p in others]
    if workload in ("dense", "mlp_epoch"):
        header += ["fastnn GFLOP/s", "% of sgemm"]
    if workload == "mlp_epoch":
        header += ["GEMM floor", "fastnn/floor"]
    has_floor = workload in ("softmax_xent", "logreg_gd")
    if has_floor:
        header += ["memory floor", "fastnn/floor"]
    header += ["core round trip (ns)", "agrees with reference"]
    rows, problems = [], []
    for (shape, n), (times, notes, errors, round_trips) in results.items():
        fast = times.get("fastnn")
        row = [W.shape_id(shape), n]
        row += [fmt_time(times[p]) if p in times else ("error" if p in errors else "—")
                for p in peers]
        row += [fmt_ratio(times[p] / fast if p in times and fast else None) for p in others]
        ceiling = ceilings.get(n)
        if workload in ("dense", "mlp_epoch"):
            gflops = W.gflop(workload, shape) / fast if fast else None
            share = gflops / ceiling["sgemm"] if gflops and ceiling else None
            row += [f"{gflops:.1f}" if gflops else "—", f"{share:.0%}" if share else "—"]
        if workload == "mlp_epoch":
            floor = W.gflop(workload, shape) / ceiling["sgemm"] if ceiling else None
            row += [fmt_time(floor), fmt_ratio(fast / floor if fast and floor else None)]
        if has_floor:
            nbytes = memory_floor_bytes(workload, shape)
            floor = nbytes / (ceiling["triad"] * 1e9) if nbytes and ceiling else None
            row += [fmt_time(floor), fmt_ratio(fast / floor if fast and floor else None)]
        row.append(" → ".join(f"{1e9 * t:.0f}" for t in round_trips) or "—")
        bad = sorted(p for p in set(notes) | set(errors) if p in peers)
        row.append("yes" if not bad else "NO: " + ", ".join(bad))
        rows.append(row)
        problems += [f"{W.shape_id(shape)} {n} threads, {p}: {notes.get(p) or errors.get(p)}"
                     for p in bad]
    return table(header, rows), problems


def thread_scaling_table(all_results, thread_list):
    """Time at the fewest threads / time at the most, per peer."""
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


def ratios(all_results, n_threads):
    """[(label, {peer: peer time / fastnn time})] of every workload and shape
    at ``n_threads``: the summary table and the chart."""
    out = []
    for workload, results in all_results.items():
        for (shape, n), (times, *_) in results.items():
            fast = times.get("fastnn")
            if n == n_threads and fast:
                out.append((f"{workload} {W.shape_id(shape)}",
                            {p: t / fast for p, t in times.items() if p != "fastnn"}))
    return out


def summary_table(rows):
    peers = list(dict.fromkeys(p for _, r in rows for p in r))
    return table(["workload, shape"] + [f"{p}/fastnn" for p in peers],
                 [[label] + [fmt_ratio(r.get(p)) for p in peers] for label, r in rows])


def write_chart(path, rows, n_threads):
    """Bars of the peer/fastnn ratios, log scale, a line at 1x; returns a
    sentence for the report (matplotlib is optional: never fails for it)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    if not rows:
        return "no ratios to chart"
    peers = list(dict.fromkeys(p for _, r in rows for p in r))
    # an object-oriented Figure: no pyplot, no change to the user's backend
    fig = Figure(figsize=(max(8.0, 0.55 * len(rows) + 3), 5.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(peers)
    for i, peer in enumerate(peers):
        offset = (i - (len(peers) - 1) / 2) * width
        values = [r.get(peer, math.nan) for _, r in rows]
        # bars grow from the 1x line: up where fastnn is faster, down where slower
        ax.bar([k + offset for k in range(len(rows))], [v - 1 for v in values], width,
               bottom=1.0, label=f"{peer} / fastnn")
    ax.set_yscale("log")
    finite = [v for _, r in rows for v in r.values() if math.isfinite(v) and v > 0]
    low, high = min(finite + [1.0]) / 1.3, max(finite + [1.0]) * 1.3
    ax.set_ylim(low, high)
    ticks = [2.0 ** k for k in range(-10, 11) if low <= 2.0 ** k <= high]
    ax.set_yticks(ticks, [f"{t:g}×" for t in ticks])
    ax.minorticks_off()
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=40, ha="right",
                  fontsize=8)
    ax.set_ylabel("peer time / fastnn time (> 1: fastnn faster)")
    ax.set_title(f"fastnn {fastnn.__version__} against its peers, {n_threads} threads "
                 f"({cpu_description()})", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return f"chart of the ratios at {n_threads} threads written to {path}"


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------
def _writable(path, option):
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        print(f"fastnn bench: error: {option} {path}: cannot write there", file=sys.stderr)
        return False
    return True


def run(args):
    """Measure, print the report, write --output and --chart; returns the
    exit status: 0, 1 when a peer disagrees with the reference or fails, 2
    for an unusable output path."""
    if args.output and not _writable(args.output, "--output"):
        return 2
    if not args.no_chart and not _writable(args.chart, "--chart"):
        return 2
    profile = PROFILES["smoke" if args.smoke else
                       "quick" if args.quick or W.QUICK else "full"]
    thread_list = args.threads or W.thread_counts()
    repeats = args.repeats or profile.repeats
    out = Output()
    started = time.perf_counter()
    cpu_at_start = cpu_times()

    out(f"# fastnn benchmark report ({profile.name} run)\n")
    if profile.name == "smoke":
        out("**Smoke run: toy shapes for the test suite; the times mean nothing.**\n")
    out("\n".join(environment_lines(thread_list)))
    out(f"\nEach figure is the median of {repeats} timed repeats after a warm-up, peers "
        "interleaved in one process on the same float32 arrays; ratios are peer time / "
        "fastnn time (> 1: fastnn faster). Core round trip: the time for a cache line to go "
        "from one of fastnn's threads to another and back, measured before → after each "
        "multi-thread row; every parallel region waits on it, and on a virtual machine it "
        "changes with where the host places the vCPUs. Peers:\n")
    for impl in dict.fromkeys(p for w in args.workloads for p in W.PEERS[w]):
        reason = W.missing_reason(impl)
        out(f"- {impl}: {PEER_NOTES[impl]}" + (f" — not run: {reason}" if reason else ""))
    if profile.name == "quick":
        out("\nQuick run: the small shapes only; mlp_epoch times "
            f"{W.QUICK_SHAPES['mlp_epoch'][0].samples} of the {W.MLP_SAMPLES} samples of an "
            "epoch and logreg_gd a tenth of its iterations (as the shape labels say: multiply "
            "by 10 for the full work; the ratios hold as measured); sgemm at "
            f"{profile.sgemm_n}³ instead of {FULL_SGEMM_N}³. "
            "`python -m fastnn bench` without --quick runs everything.")

    ceilings = {}
    if not args.no_ceilings:
        for n in thread_list:
            with W.threads(n):
                ceilings[n] = measure_ceilings(n, max(3, min(repeats, 5)), profile.sgemm_n,
                                               profile.stream_elements)
            avx512 = measure_avx512_sgemm(n, max(3, min(repeats, 5)), profile.sgemm_n)
            ceilings[n]["sgemm_avx512"] = avx512
            if avx512 is not None:
                ceilings[n]["sgemm"] = max(ceilings[n]["sgemm"], avx512)
        size = f"sgemm {profile.sgemm_n}³" + (
            f" (smaller than the full run's {FULL_SGEMM_N}³)"
            if profile.sgemm_n != FULL_SGEMM_N else "")
        out(f"\n## Machine ceilings\n\n{size}, 2·n³ flops, through SciPy's BLAS and NumPy's "
            "(fastnn calls the newer: see 'fastnn build' above) as this process runs them, and "
            "on a CPU with AVX-512 through NumPy's OpenBLAS on its AVX-512 kernels in a child "
            "process (OPENBLAS_CORETYPE=SkylakeX there only); the fastest taken as the sgemm "
            "ceiling below; memory bandwidth of a copy (read + write "
            f"{profile.stream_elements * 4 / 2**20:g} MiB) and a triad a = b + s·c (3 streams), "
            "NumPy loops on n Python threads; the best of the repeats.\n")
        out(table(["threads", "sgemm GFLOP/s (SciPy BLAS)", "sgemm GFLOP/s (NumPy BLAS)",
                   "sgemm GFLOP/s (OpenBLAS AVX-512)", "copy GB/s", "triad GB/s"],
                  [[n, f"{c['sgemm_scipy']:.0f}", f"{c['sgemm_numpy']:.0f}",
                    "—" if c["sgemm_avx512"] is None else f"{c['sgemm_avx512']:.0f}",
                    f"{c['copy']:.1f}", f"{c['triad']:.1f}"] for n, c in ceilings.items()]))

    all_results, problems = {}, []
    for workload in args.workloads:
        results = measure_shapes(workload, profile.shapes[workload], thread_list, profile,
                                 repeats)
        all_results[workload] = results
        text, bad = workload_table(workload, results, ceilings)
        problems += [f"{workload} {p}" for p in bad]
        out(f"\n## {TITLES[workload]}\n")
        if workload == "dense":
            out("GFLOP/s count 6·N·in·out; % of the sgemm ceiling at the same thread count.\n")
        if workload == "mlp_epoch":
            out("GFLOP/s count the epoch's matrix products "
                f"({W.gflop('mlp_epoch', W.Epoch(128)):.1f} GFLOP for 60000 samples); GEMM "
                "floor: that work at the sgemm ceiling. sklearn and fastnn.MLPClassifier use "
                "their own initialisation and order (compared by epoch loss only).\n")
        if workload in ("softmax_xent", "logreg_gd"):
            out("Memory floor: the bytes that must move (softmax_xent: read logits + write "
                "gradient; logreg_gd: read X once per iteration) at the triad bandwidth; "
                f"none below {MIN_FLOOR_BYTES >> 20} MiB, which stays in the caches.\n")
        out(text)

    if not args.no_scaling:
        problems += scaling_section(out, args.workloads, all_results, ceilings, thread_list,
                                    profile, repeats)
    if not args.no_fits:
        from . import fits
        problems += fits.section(out, args.fits, profile.name,
                                 args.repeats or (3 if profile.name == "full" else 1),
                                 thread_list[-1])
    if len(thread_list) > 1:
        out(f"\n## Thread scaling: time at {thread_list[0]} thread(s) / time at "
            f"{thread_list[-1]} threads\n")
        out(thread_scaling_table(all_results, thread_list))

    rows = ratios(all_results, thread_list[-1])
    out(f"\n## Summary: peer time / fastnn time at {thread_list[-1]} threads\n")
    out(summary_table(rows))
    stolen = stolen_share(cpu_at_start, cpu_times())
    out(f"\nTotal time {time.perf_counter() - started:.0f} s; load average at end: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}" + (
            "" if stolen is None else f"; CPU time stolen by the hypervisor during the run: "
            f"{100 * stolen:.1f}% (time the virtual CPUs were ready but the host ran "
            "something else)") + ".")
    if problems:
        out("\n## Problems\n")
        out("\n".join(f"- {p}" for p in problems))
    if not args.no_chart:
        out("\n" + write_chart(args.chart, rows, thread_list[-1]) + ".")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(out.text())
        print(f"report written to {args.output}")
    return 1 if problems else 0


def scaling_section(out, workloads, all_results, ceilings, thread_list, profile, repeats):
    """softmax_xent time against N, mlp_epoch time against batch size (fastnn,
    reference and torch; shapes measured above are reused); returns problems."""
    problems = []
    if "softmax_xent" in workloads:
        shapes = [(n, c) for c, ns in profile.softmax_n.items() for n in ns]
        results = measure_shapes("softmax_xent", shapes, thread_list, profile, repeats,
                                 SCALING_PEERS, all_results.get("softmax_xent"))
        text, bad = workload_table("softmax_xent", results, ceilings, SCALING_PEERS)
        problems += [f"softmax_xent scaling {p}" for p in bad]
        out("\n## Scaling: softmax_xent time against N, C = "
            f"{' and '.join(map(str, profile.softmax_n))}\n")
        out(text)
    if "mlp_epoch" in workloads:
        shapes = [W.Epoch(b, profile.mlp_samples) for b in profile.batches]
        results = measure_shapes("mlp_epoch", shapes, thread_list, profile, repeats,
                                 SCALING_PEERS, all_results.get("mlp_epoch"))
        text, bad = workload_table("mlp_epoch", results, ceilings, SCALING_PEERS)
        problems += [f"mlp_epoch scaling {p}" for p in bad]
        out(f"\n## Scaling: mlp_epoch time against batch size ({profile.mlp_samples} "
            "samples)\n")
        out(text)
    return problems
