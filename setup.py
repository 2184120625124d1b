"""Build script for fastnn's compiled kernels.

Everything declarative lives in pyproject.toml; this file only does what
needs code: probing the compiler for OpenMP, choosing optimisation flags and
recording what the build used (read back by ``fastnn.build_info()``).
"""
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent.resolve()

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def _compiler():
    return os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0]


def _try_compile(code, flags):
    """Compile and link ``code`` with ``flags``; True when it works."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(code)
        cmd = [_compiler(), str(src), "-o", str(Path(tmp) / "probe"), *flags]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


def _openmp_flags():
    if os.environ.get("FASTNN_DISABLE_OPENMP"):
        return None
    for flags in (["-fopenmp"], ["-Xpreprocessor", "-fopenmp", "-lomp"]):
        if _try_compile(OPENMP_PROBE, flags):
            return flags
    return None


def _compile_flags():
    if sys.platform == "win32":
        return ["/O2"]
    # -O3 for the numeric loops; no -ffast-math: NaN/inf handling is part of
    # the contract.  The baseline ISA is the platform's own (portable wheel);
    # FASTNN_NATIVE=1 tunes for the building machine instead.
    # No value-changing flags (-ffast-math, -fassociative-math): the hot
    # reductions are vectorised explicitly with `omp simd` (csrc/fastnn_simd.h),
    # which -fopenmp-simd enables even in a build without the OpenMP runtime.
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
             "-Wno-unreachable-code"]
    if os.environ.get("FASTNN_NATIVE"):
        flags.append("-march=native")
    if os.environ.get("FASTNN_SANITIZE"):
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1"]
    return flags


def _cython_directives():
    debug = bool(os.environ.get("FASTNN_CYTHON_DEBUG"))
    return {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
        "embedsignature": True,
    }


def _extensions():
    omp = _openmp_flags()
    if omp is None:
        warnings.warn(
            "fastnn: the C compiler does not support OpenMP; building SERIAL "
            "kernels (fastnn.show_config() will report openmp: False)",
            stacklevel=1,
        )
        print("*" * 72 + "\nWARNING: building fastnn WITHOUT OpenMP\n" + "*" * 72,
              file=sys.stderr)
    cflags = _compile_flags()
    ldflags = list(cflags) if os.environ.get("FASTNN_SANITIZE") else []
    if omp:
        cflags = cflags + omp
        ldflags = ldflags + [f for f in omp if f != "-Xpreprocessor"]
    _write_build_config(omp is not None, cflags)
    ext = [
        Extension(
            f"fastnn.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            include_dirs=[numpy.get_include(), "csrc"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for pyx in sorted((HERE / "fastnn").glob("_*.pyx"))
    ]
    return cythonize(ext, compiler_directives=_cython_directives(),
                     compile_time_env={"FASTNN_OPENMP": omp is not None})


def _write_build_config(openmp, cflags):
    import Cython

    cc = _compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True,
                                 text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        version = "unknown"
    config = {
        "openmp": openmp,
        "compiler": shutil.which(cc) or cc,
        "compiler_version": version,
        "compile_flags": " ".join(cflags),
        "machine": platform.machine(),
        "cython_version": Cython.__version__,
        "numpy_build_version": numpy.__version__,
    }
    body = "# Written by setup.py at build time; read by fastnn.build_info().\n"
    body += f"BUILD_CONFIG = {config!r}\n"
    (HERE / "fastnn" / "_build_config.py").write_text(body)


setup(ext_modules=_extensions())
