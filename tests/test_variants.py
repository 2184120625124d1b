"""The instruction-set variants of the kernels (fastnn/_kernels.py).

Every variant this CPU runs is loaded in its own process (FASTNN_SIMD) and
must give the default variant's results within the documented tolerances;
the choice logic itself is tested with made-up CPU flags.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import _kernels
from conftest import ELEMENTWISE_TOL, assert_close, assert_close_accumulated

# Run in a child process with FASTNN_SIMD set: fixed seeded data through the
# kernels, results saved to argv[1] (one .npz per variant).
CHILD = r"""
import sys
import numpy as np
import fastnn
from fastnn import functional as F

out = {"variant": fastnn.build_info()["simd_variant"], "compiled_for": fastnn._kernels.simd_variant()}
rng = np.random.default_rng(20240605)
for dt in (np.float32, np.float64):
    key = np.dtype(dt).name
    r = lambda *shape, s=1.0: (s * rng.standard_normal(shape)).astype(dt)
    # Odd sizes: no SIMD width divides them, so the loop tails run too.
    z = r(301, 37, s=3.0)
    labels = rng.integers(0, 37, 301)
    loss, grad = F.softmax_cross_entropy(z, labels, reduction="none")
    out[f"xent_losses_{key}"], out[f"xent_grad_{key}"] = loss, grad
    out[f"xent_mean_{key}"] = F.softmax_cross_entropy(z, labels)[0]
    out[f"logsoftmax_{key}"] = F.log_softmax(z)
    for act in ("sigmoid", "tanh", "relu", "leaky_relu"):
        o = F.activation_forward(z, act)
        out[f"act_{act}_{key}"] = o
        out[f"dact_{act}_{key}"] = F.activation_backward(o, z, act)
    A, W, b, G = r(203, 71), r(71, 45), r(45), r(203, 45)
    out[f"dense_{key}"] = F.dense_forward(A, W, b, "tanh")
    out[f"dA_{key}"], out[f"dW_{key}"], out[f"db_{key}"] = F.dense_backward(
        A, W, F.dense_forward(A, W, b), G)
    X, w, t = r(509, 29), r(29, s=0.3), (rng.random(509) < 0.5).astype(dt)
    # The inputs of the long sums, for their error bounds.
    out.update({f"in_{name}_{key}": x for name, x in dict(A=A, W=W, b=b, G=G, X=X, w=w).items()})
    out[f"logreg_loss_{key}"], out[f"logreg_gw_{key}"], out[f"logreg_gb_{key}"] = \
        F.logistic_loss_grad(X, w, 0.1, t)
    p, g, m, v = r(1001), r(1001), r(1001, s=0.1), np.abs(r(1001, s=0.1))
    for step in (1, 2, 3):
        F.adam_step(p, g, m, v, lr=1e-2, step=step, weight_decay=0.01)
    out[f"adam_p_{key}"], out[f"adam_m_{key}"], out[f"adam_v_{key}"] = p, m, v
np.savez(sys.argv[1], **out)
"""


def _run_child(tmp_path, variant, script=CHILD):
    """Run ``script`` under FASTNN_SIMD=variant against the imported fastnn
    (not whatever a tmp cwd would find), in a directory without sources."""
    env = dict(os.environ, PYTHONPATH=str(Path(fastnn.__file__).parent.parent))
    env.pop("FASTNN_SIMD", None)
    if variant:
        env["FASTNN_SIMD"] = variant
    path = tmp_path / f"{variant or 'default'}.npz"
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc, path


def _runnable():
    flags = _kernels.cpu_flags()
    return [v for v in _kernels.SIMD_VARIANTS_BUILT if _kernels.cpu_supports(v, flags)]


@pytest.fixture(scope="module")
def default_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("default")
    return dict(np.load(_run_child(tmp, None)[1]))


@pytest.mark.parametrize("variant", _runnable())
def test_variant_matches_default(variant, default_results, tmp_path):
    proc, path = _run_child(tmp_path, variant)
    got = dict(np.load(path))
    ref = default_results
    assert str(got["variant"]) == variant
    # The module really was compiled for the level its name says
    # (FASTNN_NATIVE builds: whatever the building CPU has).
    assert variant == "native" or str(got["compiled_for"]).startswith(variant), \
        got["compiled_for"]
    assert "RuntimeWarning" not in proc.stderr    # no fallback: this CPU runs it
    for dt in (np.float32, np.float64):
        key = np.dtype(dt).name

        def check(name, bound=None, n_terms=None):
            if bound is None:
                assert_close(got[f"{name}_{key}"], ref[f"{name}_{key}"], dt)
            else:
                assert_close_accumulated(got[f"{name}_{key}"], ref[f"{name}_{key}"],
                                         bound, n_terms, dt)

        # Elementwise results: the elementwise tolerance.
        for name in ("act_", "dact_"):
            for act in ("sigmoid", "tanh", "relu", "leaky_relu"):
                check(name + act)
        for name in ("adam_p", "adam_m", "adam_v"):
            check(name)
        # Sums, whose order depends on the SIMD width (vectorised reductions)
        # and on FMA contraction: conftest's accumulation bound, sum |terms|.
        # Softmax rows: a sum of 37 exps (relative error ~37 eps), then a log
        # or a division: absolute error ~37 eps on log-probabilities and
        # probabilities alike.
        ones = np.ones((301, 37))
        for name in ("xent_grad", "logsoftmax"):
            check(name, ones, 37)
        check("xent_losses", ones[:, 0], 37)
        A, W, b, G, X, w = (np.abs(ref[f"in_{n}_{key}"]) for n in "AWbGXw")
        # tanh is 1-Lipschitz: the bound of the pre-activation sum carries over.
        check("dense", A @ W + b, A.shape[1] + 1)
        check("dA", G @ W.T, W.shape[1])
        check("dW", A.T @ G, A.shape[0])
        check("db", G.sum(axis=0), G.shape[0])
        # grad_w = X^T (sigmoid(Xw + b) - t) / n with |residual| <= 1, plus
        # the residuals' own error (a sum of 29 products, 1-Lipschitz).
        n, d = X.shape
        check("logreg_gw", X.T @ (1 + X @ w) / n, n + d)
        # Scalars, accumulated in float64 from the dtype's terms: the mean of
        # the per-row errors bounded above.
        z_bound = np.mean(X @ w + 0.1)
        eps, tol = np.finfo(dt).eps, ELEMENTWISE_TOL[np.dtype(dt)]
        for name, bound, n_terms in (("xent_mean", 1.0, 37), ("logreg_loss", z_bound, d),
                                     ("logreg_gb", z_bound, d)):
            expected = float(ref[f"{name}_{key}"])
            allowed = 2 * (n_terms + 8) * eps * bound + tol["rtol"] * abs(expected) + tol["atol"]
            assert abs(float(got[f"{name}_{key}"]) - expected) <= allowed, name


# ---------------------------------------------------------------------------
# choosing the variant
# ---------------------------------------------------------------------------
ALL = ["x86-64-v4", "x86-64-v3", "baseline"]
V3_CPU = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
          "cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}


def test_cpu_flags_parses_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre\n")
    assert _kernels.cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "fma"}
    assert _kernels.cpu_flags(tmp_path / "missing") is None


@pytest.mark.parametrize("flags, best", [
    (None, "baseline"),                          # no /proc/cpuinfo: trust nothing
    ({"sse2", "avx2", "fma"}, "baseline"),       # AVX2 without the rest of v3
    (V3_CPU, "x86-64-v3"),
    (V3_CPU | {"avx512f", "avx512bw", "avx512cd", "avx512dq"}, "x86-64-v3"),  # no VL
    (V3_CPU | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}, "x86-64-v4"),
])
def test_choose_best_supported(flags, best):
    assert _kernels.choose("", ALL, flags) == (best, None)


def test_choose_forced_variant():
    v4_cpu = V3_CPU | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    assert _kernels.choose("baseline", ALL, v4_cpu) == ("baseline", None)
    assert _kernels.choose("x86-64-v3", ALL, v4_cpu) == ("x86-64-v3", None)
    # Never a variant the CPU lacks: the best lower one, with a reason.
    variant, warning = _kernels.choose("x86-64-v4", ALL, V3_CPU)
    assert variant == "x86-64-v3" and "lacks" in warning
    variant, warning = _kernels.choose("x86-64-v3", ["baseline"], v4_cpu)
    assert variant == "baseline" and "not built" in warning
    with pytest.raises(ImportError, match="FASTNN_SIMD='avx512'"):
        _kernels.choose("avx512", ALL, v4_cpu)


def test_every_compiled_variant_is_installed():
    # A variant the build compiled but the installation lacks (a wheel that
    # dropped a module) would silently cost speed.
    from fastnn._build_config import BUILD_CONFIG
    assert set(_kernels.SIMD_VARIANTS_BUILT) == set(BUILD_CONFIG["simd_variants_compiled"])
    assert "baseline" in _kernels.SIMD_VARIANTS_BUILT or "native" in _kernels.SIMD_VARIANTS_BUILT
    assert fastnn.build_info()["simd_variant"] == _kernels.SIMD_VARIANT


SHOW = "import fastnn; fastnn.show_config()"


def test_unknown_variant_is_an_import_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(fastnn.__file__).parent.parent),
               FASTNN_SIMD="sse9")
    proc = subprocess.run([sys.executable, "-c", SHOW], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "FASTNN_SIMD='sse9'" in proc.stderr


def test_unrunnable_variant_falls_back_with_a_warning(tmp_path):
    unrunnable = [v for v in _kernels.SIMD_VARIANTS_BUILT if v not in _runnable()]
    if not unrunnable:
        pytest.skip("this CPU runs every built variant")
    proc, _ = _run_child(tmp_path, unrunnable[0], SHOW)
    assert "RuntimeWarning" in proc.stderr and "lacks" in proc.stderr
    assert f"simd_variant: {_runnable()[0]}" in proc.stdout
