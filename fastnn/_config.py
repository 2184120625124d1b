"""Thread budget and build information: the one place for both.

fastnn's OpenMP kernels and the BLAS calls they make share one thread budget.
It comes from, in order: ``set_num_threads``/``num_threads``, the
``FASTNN_NUM_THREADS`` environment variable, ``OMP_NUM_THREADS``, and the
size of the process's CPU affinity mask.  fastnn never rewrites the user's
``OMP_*``/``OPENBLAS_*`` variables nor the BLAS's global thread count: with
OpenBLAS (SciPy's), the BLAS calls fastnn makes are issued from inside its
own OpenMP team with a thread-local BLAS thread count, so OpenMP and BLAS
threads never compete for the cores.
"""
import contextlib
import ctypes
import os
import platform

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


def _scipy_blas():
    """threadpoolctl's record of the BLAS behind scipy.linalg.cython_blas."""
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    # Wheels vendor one BLAS per package: prefer SciPy's own copy.
    scipy_own = [lib for lib in blas if "scipy" in os.path.basename(
        os.path.dirname(lib["filepath"]))]
    if scipy_own:
        return scipy_own[0]
    return blas[0] if len(blas) == 1 else None


def _install_blas_thread_control():
    """Give the kernels OpenBLAS's thread-local thread setter, when present.

    With it, every BLAS call fastnn makes uses fastnn's thread budget without
    changing the BLAS's global setting that NumPy/SciPy users rely on."""
    lib = _scipy_blas()
    if lib is None or lib.get("internal_api") != "openblas":
        return
    try:
        dll = ctypes.CDLL(lib["filepath"], mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        setter = dll.openblas_set_num_threads_local
    except (OSError, AttributeError):
        return
    _kernels.set_blas_threads_local(ctypes.cast(setter, ctypes.c_void_p).value)


def set_num_threads(n):
    """Use ``n`` threads in fastnn's kernels and in the BLAS calls they make."""
    _kernels.set_threads(_parse_thread_count(n, "n"))


def get_num_threads():
    """The number of threads fastnn's kernels use."""
    return _kernels.get_threads()


@contextlib.contextmanager
def num_threads(n):
    """Context manager: run the block with ``n`` threads, then restore."""
    n = _parse_thread_count(n, "n")
    previous = _kernels.get_threads()
    _kernels.set_threads(n)
    try:
        yield n
    finally:
        _kernels.set_threads(previous)


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
    blas = _scipy_blas()
    if blas is not None:
        info["blas"] = (f"{blas['internal_api']} {blas['version']} "
                        f"({blas.get('architecture', '?')}, {blas['filepath']})")
    info["blas_thread_control"] = ("thread-local: BLAS runs inside fastnn's OpenMP team"
                                   if _kernels.has_blas_thread_control()
                                   else "none: BLAS uses its own threads")
    return info


def show_config():
    """Print what fastnn was built with and what it runs with."""
    info = build_info()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:>{width}}: {value}")


_kernels.set_threads(_default_thread_count())
_install_blas_thread_control()
