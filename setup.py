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
from setuptools.command.build_ext import build_ext as _build_ext

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


def _try_compile(code, flags, link_flags=None):
    """Compile and link ``code`` with ``flags`` (and ``link_flags`` in a
    separate link step when given); True when it works."""
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, exe = (str(Path(tmp) / name) for name in ("probe.c", "probe.o", "probe"))
        Path(src).write_text(code)
        if link_flags is None:
            steps = [[_compiler(), src, "-o", exe, *flags]]
        else:
            steps = [[_compiler(), "-c", src, "-o", obj, *flags],
                     [_compiler(), obj, "-o", exe, *link_flags]]
        try:
            return all(subprocess.run(cmd, capture_output=True).returncode == 0
                       for cmd in steps)
        except OSError:
            return False


# Where the extension modules find a bundled OpenMP runtime: fastnn/_openmp/.
RUNTIME_DIR = "_openmp"


def _llvm_libomp():
    """LLVM's OpenMP runtime to build against and ship, or None.

    GCC's own runtime, libgomp, hangs a forked child after its thread pool
    has started (GCC bug 60035), and the system's copy ties the wheel to the
    build machine's glibc; LLVM's libomp survives fork and, as the
    cmeel-libomp wheel (a build requirement) ships it, needs glibc 2.14.  It
    implements the GOMP_* entry points GCC's -fopenmp code calls, so the
    kernels are compiled by GCC as before and only linked against it.
    FASTNN_OPENMP_RUNTIME=system builds against the compiler's runtime
    instead; so does a build environment without cmeel-libomp."""
    choice = os.environ.get("FASTNN_OPENMP_RUNTIME", "llvm")
    if choice not in ("llvm", "system"):
        raise SystemExit(f"FASTNN_OPENMP_RUNTIME={choice!r}: expected 'llvm' or 'system'")
    if choice == "system" or sys.platform != "linux":
        return None
    import importlib.metadata
    try:
        files = importlib.metadata.distribution("cmeel-libomp").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libomp.so":
            return Path(f.locate()).resolve()
    return None


def _openmp_flags():
    """(compile flags, link flags, runtime to bundle or None), or None for a
    serial build."""
    if os.environ.get("FASTNN_DISABLE_OPENMP"):
        return None
    libomp = _llvm_libomp()
    if libomp is not None:
        link = [f"-L{libomp.parent}", f"-l:{libomp.name}",
                f"-Wl,-rpath,$ORIGIN/{RUNTIME_DIR}"]
        if _try_compile(OPENMP_PROBE, ["-fopenmp"], link):
            return ["-fopenmp"], link, libomp
        print(f"fastnn: cannot link against {libomp}; using the compiler's OpenMP runtime",
              file=sys.stderr)
    for flags in (["-fopenmp"], ["-Xpreprocessor", "-fopenmp", "-lomp"]):
        if _try_compile(OPENMP_PROBE, flags):
            return flags, [f for f in flags if f != "-Xpreprocessor"], None
    return None


def _compile_flags():
    if sys.platform == "win32":
        return ["/O2"]
    # -O3 for the numeric loops; no -ffast-math: NaN/inf handling is part of
    # the contract.  No value-changing flags (-ffast-math, -fassociative-math):
    # the hot reductions are vectorised explicitly with `omp simd`
    # (csrc/fastnn_simd.h), which -fopenmp-simd enables even in a build
    # without the OpenMP runtime.
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
             "-Wno-unreachable-code"]
    if os.environ.get("FASTNN_SANITIZE"):
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1"]
    return flags


# Instruction-set variants of the whole kernel module, best first; the names
# are those of FASTNN_SIMD and fastnn._kernels (the run-time dispatcher).
X86_VARIANTS = {
    "x86-64-v4": ["-march=x86-64-v4", "-mtune=generic"],   # AVX-512 F/BW/CD/DQ/VL
    "x86-64-v3": ["-march=x86-64-v3", "-mtune=generic"],   # AVX2, FMA, BMI2
    "baseline": ["-march=x86-64", "-mtune=generic"],       # SSE2: any x86-64 CPU
}


def _variants():
    """{variant name: extra compile flags} for this platform and compiler.

    Several -march variants only where the run-time dispatcher can check the
    CPU (x86-64 Linux, via /proc/cpuinfo) and the compiler knows the levels
    (GCC >= 11, Clang >= 12); everywhere else (aarch64, macOS, Windows...)
    one baseline module with the compiler's default target."""
    if os.environ.get("FASTNN_NATIVE") and sys.platform != "win32":  # this machine only
        return {"native": ["-march=native"]}
    if (platform.machine().lower() in ("x86_64", "amd64") and sys.platform.startswith("linux")
            and not os.environ.get("FASTNN_SIMD_BASELINE_ONLY")):
        usable = {name: flags for name, flags in X86_VARIANTS.items()
                  if _try_compile("int main(void) { return 0; }", flags)}
        if "baseline" in usable:
            return usable
    return {"baseline": []}


def _module_name(variant):
    return "_kernels_" + variant.replace("-", "_")


def _variant_shim(variant):
    """A two-line C file that compiles the one Cython output as another module.

    Cython names the module's init function after the module (PyInit__kernels
    for fastnn/_kernels.pyx) and CPython looks for PyInit_<last part of the
    module name>, so each variant renames it with a #define before including
    fastnn/_kernels.c: one .pyx, one Cython run, one .c, several modules.
    (Everything else in the module takes its name from the import spec.)
    A separate file per variant also keeps the object files apart."""
    shim = Path("build") / "fastnn_variants" / f"{_module_name(variant)}.c"
    shim.parent.mkdir(parents=True, exist_ok=True)
    text = (f"#define PyInit__kernels PyInit_{_module_name(variant)}\n"
            '#include "_kernels.c"\n')
    if not shim.exists() or shim.read_text() != text:
        shim.write_text(text)
    return str(shim)


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
    global BUNDLED_RUNTIME
    if omp:
        omp_cflags, omp_ldflags, BUNDLED_RUNTIME = omp
        cflags = cflags + omp_cflags
        ldflags = ldflags + omp_ldflags
    variants = _variants()
    _write_build_config(omp is not None, cflags, variants,
                        BUNDLED_RUNTIME.name if BUNDLED_RUNTIME else None)
    # An in-place build must not leave an older build's variant beside the
    # new ones: fastnn._kernels would load it.
    wanted = {_module_name(v) for v in variants}
    for old in Path("fastnn").glob("_kernels_*"):
        if old.suffix in (".so", ".pyd") and old.name.split(".")[0] not in wanted:
            old.unlink()
    # One Cython run: fastnn/_kernels.pyx (with the fastnn/_kernels/*.pxi it
    # includes and fastnn/_kernels.pxd; cythonize tracks them) -> fastnn/_kernels.c.
    cythonize([Extension("fastnn._kernels", ["fastnn/_kernels.pyx"])],
              compiler_directives=_cython_directives(),
              compile_time_env={"FASTNN_OPENMP": omp is not None})
    return [
        Extension(
            f"fastnn.{_module_name(variant)}",
            [_variant_shim(variant)],
            # fastnn/_kernels.c and its headers; the .c is a dependency so that
            # editing the .pyx, .pxd or a .pxi rebuilds every variant.
            include_dirs=[numpy.get_include(), "csrc", "fastnn"],
            depends=["fastnn/_kernels.c", *map(str, sorted(Path("csrc").glob("*.h")))],
            extra_compile_args=cflags + flags,
            extra_link_args=ldflags,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for variant, flags in variants.items()
    ]


def _write_build_config(openmp, cflags, variants, bundled_runtime):
    import Cython

    cc = _compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True,
                                 text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        version = "unknown"
    config = {
        "openmp": openmp,
        "openmp_runtime_bundled": bundled_runtime,
        "compiler": shutil.which(cc) or cc,
        "compiler_version": version,
        "compile_flags": " ".join(cflags),
        "simd_variants_compiled": {name: " ".join(flags) for name, flags in variants.items()},
        "machine": platform.machine(),
        "cython_version": Cython.__version__,
        "numpy_build_version": numpy.__version__,
    }
    body = "# Written by setup.py at build time; read by fastnn.build_info().\n"
    body += f"BUILD_CONFIG = {config!r}\n"
    (HERE / "fastnn" / "_build_config.py").write_text(body)


BUNDLED_RUNTIME = None   # the libomp.so the modules link against, set by _extensions


class build_ext(_build_ext):
    """Builds the modules, then puts the OpenMP runtime they link against,
    and its licence, beside them (fastnn/_openmp/, found through their
    $ORIGIN run path): a plain `pip install .` then works without the build
    environment, and auditwheel finds the runtime to vendor."""

    def run(self):
        super().run()
        if BUNDLED_RUNTIME is None:
            return
        root = Path(".") if self.inplace else Path(self.build_lib)
        dest = root / "fastnn" / RUNTIME_DIR
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUNDLED_RUNTIME, dest / BUNDLED_RUNTIME.name)
        shutil.copy2(HERE / "licenses" / "LLVM-OpenMP.txt", dest / "LICENSE.txt")


setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext})
