"""Thread budget and build information: the one place for both.

fastnn's OpenMP kernels and the BLAS calls they make share one thread budget.
It comes from, in order: ``set_num_threads``/``num_threads``, the
``FASTNN_NUM_THREADS`` environment variable, ``OMP_NUM_THREADS``, and the
size of the process's CPU affinity mask.  fastnn never rewrites the user's
``OMP_*``/``OPENBLAS_*`` variables; an explicit ``set_num_threads(n)`` limits
the BLAS that fastnn calls (SciPy's) to ``n`` threads as well, through
threadpoolctl, and ``num_threads(n)`` restores it on exit.
"""
import contextlib
import os
import platform
import sys

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


def _blas_controller():
    """threadpoolctl's handle on the BLAS that scipy.linalg.cython_blas uses."""
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    controller = ThreadpoolController()
    scipy_dir = os.path.dirname(os.path.dirname(sys.modules["scipy"].__file__))
    blas = controller.select(user_api="blas")
    # Prefer SciPy's own copy of the BLAS (wheels vendor one per package).
    for lib in blas.lib_controllers:
        if "scipy" in os.path.basename(os.path.dirname(lib.filepath)) or \
                lib.filepath.startswith(os.path.join(scipy_dir, "scipy")):
            return lib
    return blas.lib_controllers[0] if blas.lib_controllers else None


_blas = None
_blas_looked_up = False


def _set_blas_threads(n):
    global _blas, _blas_looked_up
    if not _blas_looked_up:
        _blas, _blas_looked_up = _blas_controller(), True
    if _blas is None:
        return None
    previous = _blas.num_threads
    _blas.set_num_threads(n)
    return previous


def set_num_threads(n):
    """Use ``n`` threads in fastnn's kernels and in the BLAS calls they make."""
    n = _parse_thread_count(n, "n")
    _kernels.set_threads(n)
    _set_blas_threads(n)


def get_num_threads():
    """The number of threads fastnn's kernels use."""
    return _kernels.get_threads()


@contextlib.contextmanager
def num_threads(n):
    """Context manager: run the block with ``n`` threads, then restore."""
    n = _parse_thread_count(n, "n")
    previous = _kernels.get_threads()
    previous_blas = _set_blas_threads(n)
    _kernels.set_threads(n)
    try:
        yield n
    finally:
        _kernels.set_threads(previous)
        if previous_blas is not None:
            _blas.set_num_threads(previous_blas)


def _simd_level():
    """The best x86 SIMD level the CPU offers (what the compiler may use is
    reported separately in the compile flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return platform.machine()
    for level, needed in (("AVX-512", {"avx512f"}), ("AVX2+FMA", {"avx2", "fma"}),
                          ("AVX", {"avx"}), ("SSE4.2", {"sse4_2"})):
        if needed <= set(flags):
            return level
    return "baseline"


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
        "blas": None,
        "python": platform.python_version(),
        "numpy_version": numpy.__version__,
        "scipy_version": scipy.__version__,
    }
    info.update(BUILD_CONFIG)
    info["openmp"] = has_openmp   # what the binary really has, not what was asked
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib["user_api"] == "openmp" and info["openmp_runtime"] is None:
                info["openmp_runtime"] = f"{lib['internal_api']} ({lib['filepath']})"
    except ImportError:
        pass
    blas = _blas_controller()
    if blas is not None:
        info["blas"] = (f"{blas.internal_api} {blas.version} "
                        f"({getattr(blas, 'architecture', '?')}, {blas.num_threads} threads)")
    return info


def show_config():
    """Print what fastnn was built with and what it runs with."""
    for key, value in build_info().items():
        print(f"{key:>20}: {value}")


_kernels.set_threads(_default_thread_count())
