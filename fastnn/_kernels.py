"""The compiled kernels, in the best instruction-set variant this CPU runs.

setup.py compiles fastnn/_kernels.pyx (its pieces in fastnn/_kernels/) into
one extension module per variant (fastnn._kernels_baseline,
_kernels_x86_64_v3 for AVX2+FMA, _kernels_x86_64_v4 for AVX-512 on x86-64
Linux; only the baseline elsewhere).  This module picks
one at import, once per process, and re-exports its contents, so the rest of
the package (and tests) use ``fastnn._kernels`` as if it were compiled.

``FASTNN_SIMD=baseline|x86-64-v3|x86-64-v4`` caps the choice (for testing and
debugging).  An unknown name is an error; a known variant that this build
lacks or this CPU cannot run falls back, with a RuntimeWarning, to the best
lower one that works (never a higher one: that could crash on SIGILL).
"""
import importlib
import importlib.util
import os
import warnings

# Best first.  "native" (FASTNN_NATIVE=1 builds) is tuned for the building
# machine: it is only ever built alone and taken on trust.
VARIANTS = ("native", "x86-64-v4", "x86-64-v3", "baseline")

# The CPU flags (Linux /proc/cpuinfo names) each x86-64 psABI level needs;
# "abm" is the kernel's name for LZCNT.  The kernel hides AVX/AVX-512 flags
# when the OS does not save their registers, so these are safe to trust.
_X86_V2 = {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}
_X86_V3 = _X86_V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_X86_V4 = _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
_NEEDS = {"x86-64-v4": _X86_V4, "x86-64-v3": _X86_V3}


def module_name(variant):
    return f"{__name__}_{variant.replace('-', '_')}"


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags, or None where /proc/cpuinfo has none."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_supports(variant, flags):
    """Whether a CPU with ``flags`` (from cpu_flags) runs ``variant``."""
    if variant in ("baseline", "native"):
        return True
    return flags is not None and _NEEDS[variant] <= flags


def built_variants():
    """The variants this installation holds, best first."""
    return [v for v in VARIANTS if importlib.util.find_spec(module_name(v)) is not None]


def choose(requested, built, flags):
    """(variant to load, warning or None) for FASTNN_SIMD=``requested``."""
    if requested and requested not in VARIANTS:
        raise ImportError(f"FASTNN_SIMD={requested!r}: expected one of "
                          f"{', '.join(VARIANTS[1:])} (or unset for the best)")
    if not built:
        raise ImportError(
            f"fastnn's compiled kernels are missing in {os.path.dirname(__file__)}: in a "
            "source tree run `python setup.py build_ext --inplace` (or `pip install .`). If "
            "fastnn is installed, this is the unbuilt source tree shadowing it: run from "
            "another directory, or use the `fastnn` command instead of `python -m fastnn`")
    usable = [v for v in built if cpu_supports(v, flags)]
    if not usable:
        raise ImportError(f"fastnn: this CPU runs none of the installed variants {built}")
    if not requested:
        return usable[0], None
    if requested in usable:
        return requested, None
    lower = [v for v in usable if VARIANTS.index(v) > VARIANTS.index(requested)]
    chosen = lower[0] if lower else usable[-1]
    why = "is not built in this installation" if requested not in built \
        else "needs CPU features this machine lacks"
    return chosen, f"FASTNN_SIMD={requested}: that variant {why}; using {chosen}"


def _load():
    built = built_variants()
    variant, warning = choose(os.environ.get("FASTNN_SIMD", "").strip(), built, cpu_flags())
    if warning:
        warnings.warn(warning, RuntimeWarning, stacklevel=3)
    return variant, built, importlib.import_module(module_name(variant))


SIMD_VARIANT, SIMD_VARIANTS_BUILT, compiled = _load()
globals().update({k: v for k, v in vars(compiled).items() if not k.startswith("__")})
