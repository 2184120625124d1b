"""Thread budget and build information: the one place for both.

fastnn's OpenMP kernels and the BLAS calls they make share one thread budget.
At import it comes from, in order: the ``FASTNN_NUM_THREADS`` environment
variable, ``OMP_NUM_THREADS``, and the size of the process's CPU affinity
mask.  Later, ``set_num_threads``, ``num_threads(n)`` and threadpoolctl's
``threadpool_limits`` (through the controller registered below) set it: the
last call wins, and the two context managers restore what they found.
fastnn never rewrites the user's ``OMP_*``/``OPENBLAS_*`` variables.

After ``fork()`` the child keeps the parent's budget when the runtime is
LLVM's libomp (what the wheel ships: fork-safe).  Under GNU libgomp (a
source build with ``FASTNN_OPENMP_RUNTIME=system``), or under libomp with
its fork handlers off (``KMP_INIT_AT_FORK=FALSE`` when fastnn was imported,
see _runtime_survives_fork), a child of a process whose team had started
would hang in its first parallel region (GCC bug 60035), so the child runs
every kernel on one thread, and asking it for more warns and keeps one.

With OpenBLAS, the BLAS calls fastnn makes are issued from inside its own
OpenMP team on one BLAS thread each, so OpenMP and BLAS threads never
compete for the cores: through a thread-local BLAS thread count, or, where OpenBLAS has only a global one (its pthreads
builds), by holding that at one only while fastnn's products run and giving
the user's value back (``_kernels.set_blas``).
"""
import contextlib
import ctypes
import os
import platform
import sys
import warnings

from . import _kernels

__all__ = ["set_num_threads", "get_num_threads", "num_threads", "build_info", "show_config"]


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _parse_thread_count(value, source):
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a positive integer, got {value!r}") from None
    if isinstance(value, float) and value != n:
        raise ValueError(f"{source} must be a positive integer, got {value!r}")
    if isinstance(value, bool) or n < 1:
        raise ValueError(f"{source} must be a positive integer, got {value!r}")
    return n


def _default_thread_count():
    env = os.environ.get("FASTNN_NUM_THREADS")
    if env:
        return _parse_thread_count(env, "FASTNN_NUM_THREADS")
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return _available_cores()


def _loaded_blas():
    """threadpoolctl's records of the BLAS libraries in the process, once
    SciPy's is loaded."""
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [lib for lib in threadpool_info() if lib["user_api"] == "blas"]


def _is_scipys(lib):
    """Whether ``lib`` is the copy SciPy's wheel vendors (in scipy.libs)."""
    return "scipy" in os.path.basename(os.path.dirname(lib["filepath"]))


def _openblas_version(lib):
    """OpenBLAS's version as a tuple of ints ('0.3.31.188.0'), else None."""
    if lib.get("internal_api") != "openblas":
        return None
    try:
        return tuple(int(part) for part in str(lib.get("version")).split("."))
    except ValueError:
        return None


def _symbols(lib, *names):
    """The addresses of ``names`` in the already loaded ``lib``, or None."""
    try:
        dll = ctypes.CDLL(lib["filepath"], mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        return [ctypes.cast(getattr(dll, name), ctypes.c_void_p).value for name in names]
    except (OSError, AttributeError):
        return None


def _openblas_symbol(lib, name, suffixes=("", "64_")):
    """The address of OpenBLAS's ``name`` in ``lib``, under the spellings of
    its builds (plain, or with the scipy_ prefix of NumPy's and SciPy's
    wheels; the 64_ suffix of 64-bit-integer builds), or None."""
    for prefix in ("", "scipy_"):
        for suffix in suffixes:
            found = _symbols(lib, prefix + name + suffix)
            if found is not None:
                return found[0]
    return None


def _gemm64(lib):
    """(sgemm, dgemm) addresses of ``lib``'s 64-bit-integer GEMMs, or None."""
    found = [_openblas_symbol(lib, name, ("64_",)) for name in ("sgemm_", "dgemm_")]
    return None if None in found else found


def _thread_control(lib):
    """set_blas's (threads_local, get_threads, set_threads) for ``lib``: the
    thread-local setter of an OpenMP (or sequential) OpenBLAS, the global
    getter and setter of a pthreads one (where the "local" setter is global),
    zeros for anything else."""
    if lib is None or lib.get("internal_api") != "openblas":
        return 0, 0, 0
    get_parallel = _openblas_symbol(lib, "openblas_get_parallel")
    mode = ctypes.CFUNCTYPE(ctypes.c_int)(get_parallel)() if get_parallel else None
    if mode == 1:
        pair = [_openblas_symbol(lib, name) for name in ("openblas_get_num_threads",
                                                        "openblas_set_num_threads")]
        return (0, 0, 0) if None in pair else (0, *pair)
    if mode in (0, 2):
        return _openblas_symbol(lib, "openblas_set_num_threads_local") or 0, 0, 0
    return 0, 0, 0


def _choose_blas(libs):
    """The BLAS fastnn's products run on, from the loaded ``libs``: SciPy's
    (through scipy.linalg.cython_blas), unless another OpenBLAS in the
    process is newer and exports 64-bit-integer GEMMs -- NumPy's own, with
    current wheels.  Measured here: NumPy's OpenBLAS 0.3.31 ran the
    mlp_epoch products 1.05-1.43x faster than SciPy's 0.3.30 (the same
    Haswell kernels, single-threaded, same operands).  Returns the record,
    or None when SciPy's BLAS cannot be told apart."""
    scipy_own = [lib for lib in libs if _is_scipys(lib)]
    base = scipy_own[0] if scipy_own else (libs[0] if len(libs) == 1 else None)
    base_version = None if base is None else _openblas_version(base)
    if base_version is None:
        return base
    newer = [lib for lib in libs if (_openblas_version(lib) or ()) > base_version
             and _gemm64(lib) is not None]
    return max(newer, key=_openblas_version) if newer else base


def _install_blas(lib):
    """Point the kernels at ``lib`` (a record from _loaded_blas, or None for
    SciPy's cython_blas without thread control): at its 64-bit-integer GEMMs
    unless it is SciPy's own copy or has none, with its thread control
    (_thread_control).  With that every BLAS call fastnn makes runs on one
    thread inside fastnn's team, and the BLAS's own setting that NumPy/SciPy
    users rely on is theirs again when fastnn returns."""
    global _BLAS
    gemm = None if lib is None or _is_scipys(lib) else _gemm64(lib)
    _kernels.set_blas(*(gemm or (0, 0)), *_thread_control(lib))
    _BLAS = lib


_BLAS = None        # the record of the BLAS in use


def _set_threads(n):
    if n > 1 and _kernels.forked_serial():
        warnings.warn(f"fastnn runs on one thread in this forked child: its OpenMP runtime "
                      f"({os.path.basename(_openmp_runtime() or '?')}) cannot start a team "
                      f"after fork (libgomp, or libomp with KMP_INIT_AT_FORK=FALSE); {n} "
                      "threads were asked for", RuntimeWarning, stacklevel=3)
    _kernels.set_threads(n)


def set_num_threads(n):
    """Use ``n`` threads in fastnn's kernels and in the BLAS calls they make."""
    _set_threads(_parse_thread_count(n, "n"))


def get_num_threads():
    """The number of threads fastnn's kernels use."""
    return _kernels.get_threads()


@contextlib.contextmanager
def num_threads(n):
    """Context manager: run the block with ``n`` threads, then restore."""
    n = _parse_thread_count(n, "n")
    previous = _kernels.get_threads()
    _set_threads(n)
    try:
        yield n
    finally:
        _kernels.set_threads(previous)


# ---------------------------------------------------------------------------
# the bf16 products' path (fastnn/_kernels/bf16.pxi, csrc/fastnn_bf16.h)
# ---------------------------------------------------------------------------
# Best first.  What each hardware path needs of the CPU (/proc/cpuinfo names;
# the packing of both uses AVX-512 BW and vcvtne2ps2bf16); AMX also needs the
# OS to grant the tile data state.
BF16_PATHS = ("amx", "avx512_bf16", "emulated")
_BF16_NEEDS = {
    "amx": ("amx_tile", "amx_bf16", "avx512f", "avx512bw", "avx512_bf16"),
    "avx512_bf16": ("avx512f", "avx512bw", "avx512_bf16"),
    "emulated": (),
}
_AMX_PERMISSION = []      # the OS's answer, asked once per process: [errno]


def _amx_permission():
    """0 when the OS grants AMX tile data to this process, else an errno.
    Asked once, at import, before any thread uses a tile (the permission is
    the process's, for every thread, and a forked child inherits it)."""
    if not _AMX_PERMISSION:
        _AMX_PERMISSION.append(_kernels.bf16_amx_request())
    return _AMX_PERMISSION[0]


def bf16_unavailable(path, flags=None):
    """Why the bf16 ``path`` cannot run here (a sentence naming the missing
    CPU feature, compiler support or OS permission), or None when it can."""
    if path not in BF16_PATHS:
        raise ValueError(f"bf16 path must be one of {', '.join(BF16_PATHS)}, got {path!r}")
    if path == "emulated":
        return None
    if path not in _kernels.bf16_compiled():
        return f"{path}: not compiled (the compiler does not know its intrinsics)"
    flags = _kernels.cpu_flags() if flags is None else flags
    if flags is None:
        return f"{path}: no CPU flags to check (/proc/cpuinfo)"
    missing = [f for f in _BF16_NEEDS[path] if f not in flags]
    if missing:
        return f"{path}: the CPU lacks {', '.join(missing)}"
    if path == "amx":
        errno = _amx_permission()
        if errno:
            return (f"amx: tile data permission denied by the OS "
                    f"(arch_prctl(ARCH_REQ_XCOMP_PERM): {os.strerror(errno)})")
    return None


def _choose_bf16(requested, flags=None):
    """(path, why, warning or None) for FASTNN_BF16=``requested`` (empty:
    the best).  The variable caps the choice as FASTNN_SIMD does: an unknown
    name is an error; a path this machine cannot run falls back to the best
    lower one that can, with a warning giving the reason."""
    if requested and requested not in BF16_PATHS:
        raise ImportError(f"FASTNN_BF16={requested!r}: expected one of "
                          f"{', '.join(BF16_PATHS)} (or unset for the best)")
    start = BF16_PATHS.index(requested) if requested else 0
    reasons = []
    for path in BF16_PATHS[start:]:
        reason = bf16_unavailable(path, flags)
        if reason is None:
            break
        reasons.append(reason)
    why = "; ".join(reasons) if reasons else "the best path of this CPU"
    if requested:
        why = f"FASTNN_BF16={requested}" + (f" ({why})" if reasons else "")
    warning = (f"FASTNN_BF16={requested}: {'; '.join(reasons)}; using {path}"
               if requested and reasons else None)
    return path, why, warning


def _set_bf16_path(path):
    """Run the bf16 products on ``path`` from now on (for tests and
    measurements: every path this machine runs in one process); ValueError
    with the reason where it cannot run.  Returns the previous path."""
    reason = bf16_unavailable(path)
    if reason is not None:
        raise ValueError(f"bf16 path unavailable: {reason}")
    return _kernels.bf16_path(path)


def _install_bf16():
    global _BF16_CHOICE
    path, why, warning = _choose_bf16(os.environ.get("FASTNN_BF16", "").strip())
    if warning:
        warnings.warn(warning, RuntimeWarning, stacklevel=4)
    _kernels.bf16_path(path)
    _BF16_CHOICE = (path, why)


_BF16_CHOICE = (None, None)     # (the path chosen at import, why)


def _simd_level():
    """The best x86-64 level the CPU offers (what fastnn runs is reported
    separately, as simd_variant)."""
    flags = _kernels.cpu_flags()
    if flags is None:
        return platform.machine()
    for level in ("x86-64-v4", "x86-64-v3"):
        if _kernels.cpu_supports(level, flags):
            return level
    return "baseline"


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _openmp_runtime():
    """The file of the OpenMP runtime the kernels call (other packages may
    have loaded runtimes of their own), found with dladdr on the address the
    kernel module resolved."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except (OSError, AttributeError):
        return None
    found = _DlInfo()
    if not dladdr(ctypes.c_void_p(_kernels.openmp_symbol_address()), ctypes.byref(found)):
        return None
    return os.path.realpath(found.dli_fname.decode())


def build_info():
    """A dict describing how fastnn was built and what it runs with."""
    import numpy
    import scipy

    try:
        from ._build_config import BUILD_CONFIG
    except ImportError:
        BUILD_CONFIG = {}
    from ._version import __version__

    has_openmp, omp_version, _ = _kernels.openmp_info()
    info = {
        "version": __version__,
        "openmp": has_openmp,
        "openmp_version": omp_version,
        "openmp_runtime": None,
        "num_threads": get_num_threads(),
        "cpu_simd": _simd_level(),
        # The kernel module in use (FASTNN_SIMD caps it), what it was compiled
        # for, and every variant this installation holds.
        "simd_variant": _kernels.SIMD_VARIANT,
        "simd_kernels": _kernels.simd_variant(),
        "simd_variants_built": ", ".join(_kernels.SIMD_VARIANTS_BUILT),
        "blas": None,
        "python": platform.python_version(),
        "numpy_version": numpy.__version__,
        "scipy_version": scipy.__version__,
    }
    info.update(BUILD_CONFIG)
    info["openmp"] = has_openmp   # what the binary really has, not what was asked
    if has_openmp:
        info["openmp_runtime"] = _openmp_runtime()
    gemm64, thread_control = _kernels.blas_in_use()
    if _BLAS is not None:
        info["blas"] = (f"{_BLAS['internal_api']} {_BLAS['version']} "
                        f"({_BLAS.get('architecture', '?')}, {_BLAS['filepath']}, "
                        + ("64-bit-integer GEMM)" if gemm64 else "scipy.linalg.cython_blas)"))
    info["gemm"] = ("fastnn's AVX-512 GEMM for float32 products of at least 32 rows and "
                    "columns; BLAS for the rest" if _kernels.own_gemm() else "BLAS")
    if _kernels.own_gemm():
        ways, way_bytes, rows = _kernels.gemm_kernel()
        info["gemm_kernel"] = (
            f"12 x 32 micro-kernel; L1d {ways}-way, {way_bytes // 1024} KiB a way: "
            + ("8 x 32 for an A read in place with rows a multiple of that apart (12 rows "
               "would share one L1 set)" if rows < 12 else "12 rows fit one L1 set")
            if ways else "12 x 32 micro-kernel; L1d geometry unknown (CPUID)")
    info["bf16"] = _kernels.bf16_path()
    info["bf16_why"] = (_BF16_CHOICE[1] if info["bf16"] == _BF16_CHOICE[0]
                        else "set by fastnn._config._set_bf16_path")
    info["blas_thread_control"] = {
        "thread-local": "thread-local: one BLAS thread per call, inside fastnn's OpenMP team",
        "global": "global: one BLAS thread per call, inside fastnn's OpenMP team; the BLAS's "
                  "own count restored when fastnn's product ends",
        None: "none: BLAS uses its own threads"}[thread_control]
    return info


def show_config():
    """Print what fastnn was built with and what it runs with."""
    info = build_info()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:>{width}}: {value}")


def _register_with_threadpoolctl():
    """Make threadpoolctl see and limit fastnn's team.  Its own OpenMP control
    (omp_set_num_threads) cannot: the kernels pass their team size to every
    parallel region.  So fastnn registers a controller (threadpoolctl >= 3.5)
    for its kernel module, user_api "openmp": threadpool_limits(n) and
    threadpool_limits(n, user_api="openmp") set fastnn's budget and restore
    it; threadpool_info() lists it with the runtime it calls."""
    try:
        import threadpoolctl
    except ImportError:
        return
    if not hasattr(threadpoolctl, "register"):
        return
    from ._version import __version__

    class FastnnController(threadpoolctl.LibController):
        user_api = "openmp"
        internal_api = "fastnn"
        filename_prefixes = ("_kernels_",)
        check_symbols = tuple("PyInit__kernels_" + v.replace("-", "_")
                              for v in _kernels.VARIANTS)

        def set_additional_attributes(self):
            # Only the module fastnn loaded (a foreign file with the same
            # prefix and symbols is no controller of ours).
            if os.path.realpath(self.filepath) != os.path.realpath(_kernels.compiled.__file__):
                raise OSError(f"{self.filepath} is not fastnn's kernel module")
            self.openmp_runtime = _openmp_runtime()

        def get_num_threads(self):
            return _kernels.get_threads()

        def set_num_threads(self, num_threads):
            _set_threads(max(1, int(num_threads)))

        def get_version(self):
            return __version__

    threadpoolctl.register(FastnnController)


def _runtime_survives_fork():
    """Whether the kernels' OpenMP runtime starts a new team in a forked
    child.  GNU libgomp never does.  LLVM's libomp does through fork
    handlers that it registers when it initialises, unless KMP_INIT_AT_FORK
    is false then -- and scikit-learn and joblib set it to FALSE at import
    (a workaround for an old Intel runtime), in their process and in every
    child it starts.  So libomp is initialised here, and the variable read
    at the same moment."""
    runtime = os.path.basename(_openmp_runtime() or "")
    _kernels.openmp_info()       # omp_get_max_threads: libomp initialises now
    init_at_fork = os.environ.get("KMP_INIT_AT_FORK", "true").strip().lower()
    return not runtime.startswith("libgomp") and init_at_fork not in (
        "0", "f", "false", ".false.", "n", "no", "off")


_kernels.set_threads(_default_thread_count())
# A child of a runtime that cannot fork runs serially (see the docstring).
_SERIAL_AFTER_FORK = not _runtime_survives_fork()
_kernels.set_fork_policy(_SERIAL_AFTER_FORK)
_install_blas(_choose_blas(_loaded_blas()))
_register_with_threadpoolctl()
_install_bf16()
