"""The bf16 products (matmul_bf16, dense_forward/dense_backward with
compute_dtype="bfloat16") on every path this machine runs, against the NumPy
twin (fastnn.reference.matmul_bf16).

Tolerance (derived in fastnn.reference.matmul_bf16): kernel and reference
multiply the same bf16-rounded operands, whose products are exact in
float32, and differ only in how the k products are summed, so elementwise

    |C - C_ref| <= k 2^-23 (|bf16(A)| |bf16(B)|) + k 2^-126

(the float32 sum's forward-error bound k u, u = 2^-24, doubled; the last
term covers the subnormals the hardware dot products flush).  Two paths
agree within twice that.  Against the exact product of the float32 operands
the two operand roundings (each at most u = 2^-8 relative: bf16 has 8
significant bits) add (2^-7 + 2^-16) (|A| |B|); the typical (rms) error is
below 2^-8 sqrt(k) times the rms of the terms.
"""
import errno
import os
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastnn
from fastnn import _config, _kernels
from fastnn import functional as F
from fastnn import reference as R

PATHS = ("emulated", "avx512_bf16", "amx")
# the 32 x 32 blocks of the packing, AMX's 32-term k steps, vdpbf16ps's pairs
SIZES = (1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65)
KS = (1, 2, 3, 16, 17, 31, 32, 33, 63, 64, 65, 127)
THREAD_COUNTS = (1, 2, 3, 8)


@pytest.fixture(params=PATHS)
def path(request):
    """Each bf16 path this CPU and OS run, the others skipped naming what is
    missing; the import-time path restored afterwards."""
    reason = _config.bf16_unavailable(request.param)
    if reason is not None:
        pytest.skip(reason)
    previous = _config._set_bf16_path(request.param)
    yield request.param
    _kernels.bf16_path(previous)


def _runnable_paths():
    return [p for p in PATHS if _config.bf16_unavailable(p) is None]


def bf16_bound(A, B):
    """The elementwise tolerance against the reference (module docstring)."""
    k = A.shape[1]
    terms = np.abs(R.round_bf16(A)).astype(np.float64) @ np.abs(R.round_bf16(B)).astype(np.float64)
    return k * 2.0 ** -23 * terms + k * 2.0 ** -126


def assert_bf16_close(C, A, B, factor=1.0):
    expected = R.matmul_bf16(A, B).astype(np.float64)
    assert C.dtype == np.float32 and C.shape == expected.shape
    allowed = factor * bf16_bound(A, B)
    error = np.abs(C.astype(np.float64) - expected)
    bad = ~(error <= allowed)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} beyond the bf16 bound; worst "
                           f"{error[bad].max():.3g} where {allowed[bad][np.argmax(error[bad])]:.3g}")


def _data(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------
# rounding
# ---------------------------------------------------------------------------
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 3.4028235e38, -3.4028235e38,
                    1.00390625, 1.01171875, 1.0039062 + 1e-7, 1e-40, -1e-40, 1.17549435e-38,
                    65504.0, 3.1415927, 0.1], dtype=np.float32)


def _rounding_cases(rng):
    x = np.concatenate([SPECIAL, rng.standard_normal(5000).astype(np.float32),
                        rng.integers(0, 2 ** 32, 5000, dtype=np.uint64).astype(np.uint32)
                        .view(np.float32)])
    return x


def test_round_bf16_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = _rounding_cases(rng)
    ours = R.round_bf16(x)
    theirs = torch.from_numpy(x.copy()).bfloat16().float().numpy()
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), theirs[~nan].view(np.uint32))


def test_round_bf16_properties(rng):
    x = _rounding_cases(rng)
    r = R.round_bf16(x)
    assert not (r.view(np.uint32) & 0xFFFF).any()          # 8 significant bits
    finite = np.isfinite(x) & (np.abs(x) < 3.38e38)
    assert np.all(np.abs(r[finite].astype(np.float64) - x[finite])
                  <= 2.0 ** -8 * np.abs(x[finite]) + 2.0 ** -134)  # subnormals: absolute
    assert np.isnan(r[np.isnan(x)]).all()
    assert np.array_equal(r[np.isinf(x)], x[np.isinf(x)])
    assert R.round_bf16(np.float32(1.00390625)) == 1.0      # a tie: to even
    assert R.round_bf16(np.float32(1.01171875)) == 1.015625  # a tie: to even (up)
    assert np.isinf(R.round_bf16(np.float32(3.4028235e38)))  # overflow rounds to inf


def test_kernel_rounding_is_the_reference(rng):
    x = _rounding_cases(rng).reshape(2, -1)
    out = np.empty_like(x)
    _kernels.bf16_round(x, out)
    ref = R.round_bf16(x)
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out[~nan].view(np.uint32), ref[~nan].view(np.uint32))


# ---------------------------------------------------------------------------
# matmul_bf16 on each path
# ---------------------------------------------------------------------------
def test_every_blocking_remainder(path, rng):
    for m in SIZES:
        for n in SIZES:
            for k in KS[::3] if (m, n) != (33, 17) else KS:
                A, B = _data(rng, m, k), _data(rng, k, n)
                assert_bf16_close(F.matmul_bf16(A, B), A, B)


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 300, 785), (257, 1, 64), (7, 9, 11),
                                     (100, 33, 1), (129, 257, 513), (600, 300, 1001),
                                     (128, 256, 784), (1030, 70, 96)])
def test_shapes(path, rng, m, n, k):
    A, B = _data(rng, m, k), _data(rng, k, n)
    assert_bf16_close(F.matmul_bf16(A, B), A, B)


def test_large(path, rng):
    A, B = _data(rng, 1100, 700), _data(rng, 700, 530)
    assert_bf16_close(F.matmul_bf16(A, B), A, B)


@pytest.mark.parametrize("layout_a", ["C", "F", "strided", "float64"])
@pytest.mark.parametrize("layout_b", ["C", "F", "strided"])
def test_layouts(path, rng, layout_a, layout_b):
    def make(shape, layout):
        x = _data(rng, *shape)
        if layout == "F":
            return np.asfortranarray(x)
        if layout == "strided":
            big = np.full((shape[0], 2 * shape[1]), np.nan, np.float32)
            big[:, ::2] = x
            return big[:, ::2]
        if layout == "float64":
            return x.astype(np.float64)
        return x

    A, B = make((67, 131), layout_a), make((131, 45), layout_b)
    C = F.matmul_bf16(A, B)
    assert_bf16_close(C, np.ascontiguousarray(A, np.float32), np.ascontiguousarray(B))


def test_transposed_views_read_in_place(path, rng):
    A, B = _data(rng, 200, 90), _data(rng, 70, 200)
    C = F.matmul_bf16(A.T, B.T)      # both Fortran-ordered views
    assert_bf16_close(C, A.T.copy(), B.T.copy())


def test_transposed_operand_remainders(path, rng):
    # op(A) = A^T and op(B) = B^T are packed through 16 x 16 register
    # transposes: every remainder of their 16 rows and 16 pairs of k
    for m in (1, 15, 16, 17, 33, 48, 65):
        for k in (1, 2, 31, 32, 33, 63, 65, 97):
            A, B = _data(rng, k, m), _data(rng, 21, k)
            assert_bf16_close(F.matmul_bf16(A.T, B.T), A.T.copy(), B.T.copy())
            assert_bf16_close(F.matmul_bf16(A.T, B.T.copy()), A.T.copy(), B.T.copy())


def test_exact_on_bf16_representable_inputs(path, rng):
    # small integers and halves are bf16 numbers; their products and sums
    # (below 2^24) are exact in float32 whatever the order
    A = (rng.integers(-16, 17, (65, 97)) / 2).astype(np.float32)
    B = (rng.integers(-16, 17, (97, 66)) * 4).astype(np.float32)
    assert np.array_equal(F.matmul_bf16(A, B), (A.astype(np.float64) @ B).astype(np.float32))


def test_nan_and_inf_propagate(path, rng):
    A, B = np.abs(_data(rng, 40, 70)) + 0.5, np.abs(_data(rng, 70, 50)) + 0.5
    A[3, 5] = np.nan
    A[7, 6] = np.inf
    B[9, 11] = -np.inf
    C = F.matmul_bf16(A, B)
    expected = R.matmul_bf16(A, B)
    assert np.array_equal(np.isnan(C), np.isnan(expected))
    assert np.isnan(C[3]).all() and np.isnan(C[7, 11])      # NaN, and inf - inf
    others = np.arange(50) != 11
    assert np.isposinf(C[7, others]).all()
    assert np.isneginf(np.delete(C[:, 11], [3, 7])).all()
    assert np.array_equal(np.isposinf(C), np.isposinf(expected))
    assert np.array_equal(np.isneginf(C), np.isneginf(expected))
    finite = np.isfinite(expected)
    assert finite.sum() > 1000
    A0, B0 = A.copy(), B.copy()
    A0[[3, 7]] = 1
    B0[:, 11] = 1     # the finite elements' bound, without the non-finite terms
    assert np.all(np.abs(C[finite] - expected[finite]) <= bf16_bound(A0, B0)[finite])


def test_out_buffer(path, rng):
    A, B = _data(rng, 50, 40), _data(rng, 40, 30)
    out = np.full((50, 30), np.nan, np.float32)
    assert F.matmul_bf16(A, B, out=out) is out
    assert_bf16_close(out, A, B)


# each product large enough for the team (BF16_MIN_PARALLEL multiply-adds)
@pytest.mark.parametrize("m, n, k", [(700, 300, 513), (64, 1000, 300), (4000, 40, 33)])
def test_same_bits_at_any_thread_count(path, rng, m, n, k):
    A, B = _data(rng, m, k), _data(rng, k, n)
    results = {}
    for t in THREAD_COUNTS:
        with fastnn.num_threads(t):
            results[t] = F.matmul_bf16(A, B).tobytes()
            results[t, "dense"] = F.dense_forward(A, B, None, "relu",
                                                  compute_dtype="bfloat16").tobytes()
    for t in THREAD_COUNTS[1:]:
        assert results[t] == results[1], f"{t} threads differ from 1"
        assert results[t, "dense"] == results[1, "dense"], f"{t} threads differ from 1 (dense)"


def test_concurrent_products_share_the_packing_buffers(path, rng):
    # more Python threads than the pool has buffer pairs: each product still
    # gets buffers of its own (pooled or allocated), the same bits as alone
    cases = [(_data(rng, 64 + 7 * i, 96 + i), _data(rng, 96 + i, 40 + 3 * i)) for i in range(12)]
    alone = [F.matmul_bf16(A, B) for A, B in cases]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            together = list(pool.map(lambda c: F.matmul_bf16(*c), cases))
            for got, want in zip(together, alone):
                assert np.array_equal(got, want)


def test_paths_agree():
    paths = _runnable_paths()
    if len(paths) < 2:
        pytest.skip("one bf16 path runs here: " + "; ".join(
            filter(None, map(_config.bf16_unavailable, PATHS))))
    rng = np.random.default_rng(7)
    previous = _kernels.bf16_path()
    try:
        for m, n, k in [(128, 256, 784), (33, 65, 17), (300, 31, 129)]:
            A, B = _data(rng, m, k), _data(rng, k, n)
            results = {}
            for p in paths:
                _config._set_bf16_path(p)
                results[p] = F.matmul_bf16(A, B).astype(np.float64)
            allowed = 2 * bf16_bound(A, B)
            for p in paths[1:]:
                assert np.all(np.abs(results[p] - results[paths[0]]) <= allowed), (p, paths[0])
    finally:
        _kernels.bf16_path(previous)


def test_against_the_exact_product(path, rng):
    # the operand roundings: within (2^-7 + 2^-16 + k 2^-23) |A| |B| of the
    # float64 product of the float32 operands; rms below 2^-8 sqrt(k) rms terms
    A, B = _data(rng, 96, 500), _data(rng, 500, 80)
    exact = A.astype(np.float64) @ B.astype(np.float64)
    terms = np.abs(A).astype(np.float64) @ np.abs(B)
    error = np.abs(F.matmul_bf16(A, B) - exact)
    assert np.all(error <= (2.0 ** -7 + 2.0 ** -16 + 500 * 2.0 ** -23) * terms)
    rms = np.sqrt(np.mean((A.astype(np.float64) ** 2).mean(1)[:, None]
                          * (B.astype(np.float64) ** 2).mean(0)[None, :]))
    assert np.sqrt(np.mean(error ** 2)) < 2.0 ** -8 * np.sqrt(500) * rms


# ---------------------------------------------------------------------------
# dense layer with compute_dtype="bfloat16"
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["identity", "relu", "tanh"])
def test_dense_forward_bf16(path, rng, activation):
    A, W, b = _data(rng, 130, 97), _data(rng, 97, 65), _data(rng, 65)
    O = F.dense_forward(A, W, b, activation, compute_dtype="bfloat16")
    expected = R.dense_forward(A, W, b, activation, compute_dtype="bfloat16")
    # the activations are 1-Lipschitz: the product's bound carries over
    assert np.all(np.abs(O - expected) <= bf16_bound(A, W) + 1e-6 * np.abs(expected) + 1e-6)


def test_dense_default_is_float32_bit_for_bit(rng):
    A, W, b = _data(rng, 64, 50), _data(rng, 50, 40), _data(rng, 40)
    O = F.dense_forward(A, W, b, "relu")
    assert np.array_equal(F.dense_forward(A, W, b, "relu", compute_dtype=None), O)
    G = _data(rng, 64, 40)
    plain = F.dense_backward(A, W, O, G, "relu")
    keyword = F.dense_backward(A, W, O, G, "relu", compute_dtype=None)
    for x, y in zip(plain, keyword):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_dense_backward_bf16(path, rng, activation):
    n, n_in, n_out = 129, 70, 33
    A, W, b = _data(rng, n, n_in), _data(rng, n_in, n_out), _data(rng, n_out)
    O = R.dense_forward(A, W, b, activation)
    G = _data(rng, n, n_out)
    delta = G.copy()      # receives the kernel's delta, whose bf16 roundings the
    dA, dW, db = F.dense_backward(A, W, O, delta, activation, overwrite_grad_out=True,
                                  compute_dtype="bfloat16")   # reference then shares
    assert np.allclose(delta, R.activation_backward(O, G, activation), rtol=1e-5, atol=1e-6)
    rA, rW, rb = R.dense_backward(A, W, O, delta, "identity", compute_dtype="bfloat16")
    assert np.all(np.abs(dA - rA) <= bf16_bound(delta, W.T) + 1e-6)
    assert np.all(np.abs(dW - rW) <= bf16_bound(A.T, delta) + 1e-6)
    assert np.allclose(db, rb, rtol=1e-5, atol=1e-5)
    _, dW2, db2 = F.dense_backward(A, W, O, G.copy(), activation, need_input_grad=False,
                                   compute_dtype="bfloat16")
    assert np.array_equal(dW2, dW) and np.array_equal(db2, db)


def test_dense_backward_bf16_gradcheck(path, rng):
    """Central differences of L = sum(G * tanh(A W + b)) in float64 against
    the bf16 backward, within a bf16-sized tolerance: the roundings of the
    operands (2^-8 relative each) over |A|^T |delta| and |delta| |W|^T."""
    n, n_in, n_out = 40, 37, 19
    A, W, b = (x.astype(np.float64) for x in (_data(rng, n, n_in), _data(rng, n_in, n_out),
                                              _data(rng, n_out)))
    A, W, b = A.astype(np.float32), W.astype(np.float32), b.astype(np.float32)
    G = _data(rng, n, n_out)

    def loss(A64, W64):
        return float(np.sum(G * np.tanh(A64 @ W64 + b)))

    A64, W64 = A.astype(np.float64), W.astype(np.float64)
    O = np.tanh(A64 @ W64 + b).astype(np.float32)
    dA, dW, db = F.dense_backward(A, W, O, G, "tanh", compute_dtype="bfloat16")
    delta = np.abs(G * (1 - O.astype(np.float64) ** 2))
    tol_w = (2.0 ** -7 + 2.0 ** -16 + n * 2.0 ** -22) * (np.abs(A64).T @ delta) + 1e-5
    tol_a = (2.0 ** -7 + 2.0 ** -16 + n_out * 2.0 ** -22) * (delta @ np.abs(W64).T) + 1e-5
    h = 1e-6
    for i, j in [(0, 0), (5, 7), (36, 18), (20, 3), (11, 11)]:
        Wp, Wm = W64.copy(), W64.copy()
        Wp[i, j] += h
        Wm[i, j] -= h
        fd = (loss(A64, Wp) - loss(A64, Wm)) / (2 * h)
        assert abs(dW[i, j] - fd) <= tol_w[i, j], (i, j, dW[i, j], fd)
    for i, j in [(0, 0), (39, 36), (17, 5)]:
        Ap, Am = A64.copy(), A64.copy()
        Ap[i, j] += h
        Am[i, j] -= h
        fd = (loss(Ap, W64) - loss(Am, W64)) / (2 * h)
        assert abs(dA[i, j] - fd) <= tol_a[i, j], (i, j, dA[i, j], fd)
    fd_b = (G * (1 - O.astype(np.float64) ** 2)).sum(0)
    assert np.allclose(db, fd_b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# the choice of path, and errors
# ---------------------------------------------------------------------------
def test_build_info_reports_the_path():
    info = fastnn.build_info()
    assert info["bf16"] in PATHS and info["bf16"] == _kernels.bf16_path()
    assert isinstance(info["bf16_why"], str) and info["bf16_why"]


def _run_child(args, **env_changes):
    """``python args`` on this very fastnn (in-tree or installed) from an
    empty directory (``python -c`` puts the cwd first on sys.path, where an
    unbuilt source tree would shadow an installed fastnn); ``env_changes``
    None unsets a variable."""
    root = os.path.dirname(os.path.dirname(fastnn.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    env.update(env_changes)
    env = {k: v for k, v in env.items() if v is not None}
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=cwd)


def _child(env_value):
    code = ("import warnings; warnings.simplefilter('always');\n"
            "import fastnn, numpy as np; from fastnn import functional as F;\n"
            "i = fastnn.build_info(); print(i['bf16']); print(i['bf16_why']);\n"
            "A = np.ones((33, 65), np.float32); print(float(F.matmul_bf16(A, A.T)[0, 0]))")
    return _run_child(["-c", code], FASTNN_BF16=env_value)


def test_forcing_emulated_in_a_subprocess():
    proc = _child("emulated")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "emulated" and lines[1] == "FASTNN_BF16=emulated" and lines[2] == "65.0"


def test_forcing_each_runnable_path_in_a_subprocess():
    for p in _runnable_paths():
        proc = _child(p)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == p
        assert "RuntimeWarning" not in proc.stderr


def test_unknown_fastnn_bf16_is_an_error():
    proc = _child("fp8")
    assert proc.returncode != 0 and "FASTNN_BF16='fp8'" in proc.stderr


def test_unavailable_request_falls_back_with_a_warning():
    flags = {"avx512f", "avx512bw", "avx512_bf16"}          # no AMX
    path, why, warning = _config._choose_bf16("amx", flags)
    assert path == "avx512_bf16" and "amx_tile" in warning and "amx_bf16" in warning
    path, why, warning = _config._choose_bf16("", {"sse2"})
    assert path == "emulated" and warning is None and "avx512_bf16" in why
    path, _, warning = _config._choose_bf16("emulated", flags)
    assert path == "emulated" and warning is None


def test_amx_permission_denied_is_refused_cleanly(monkeypatch):
    if "amx" not in _kernels.bf16_compiled():
        pytest.skip("amx: not compiled")
    monkeypatch.setattr(_config, "_AMX_PERMISSION", [errno.EPERM])
    flags = set(_config._BF16_NEEDS["amx"])
    # a CPU with AMX as far as the checks see, on any machine: the refusal
    # must come from the permission, never reach the AMX kernels
    monkeypatch.setattr(_kernels, "cpu_flags", lambda: flags)
    reason = _config.bf16_unavailable("amx", flags)
    assert reason.startswith("amx: tile data permission denied")
    path, why, warning = _config._choose_bf16("", flags)
    assert path == "avx512_bf16" and "permission denied" in why and warning is None
    with pytest.raises(ValueError, match="permission denied"):
        _config._set_bf16_path("amx")


def test_bad_inputs():
    A = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="A must be 2-D"):
        F.matmul_bf16(np.ones(3, np.float32), A)
    with pytest.raises(ValueError, match=r"B must have shape \(3, n\)"):
        F.matmul_bf16(A, A)
    with pytest.raises(ValueError, match="B must not be empty"):
        F.matmul_bf16(A, np.ones((3, 0), np.float32))
    with pytest.raises(TypeError, match="A must be"):
        F.matmul_bf16(np.ones((4, 3), complex), A.T)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        F.matmul_bf16(A, A.T, out=np.empty((4, 4)))
    with pytest.raises(ValueError, match="out must have shape"):
        F.matmul_bf16(A, A.T, out=np.empty((4, 5), np.float32))
    big = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="out must not overlap"):
        F.matmul_bf16(big, big, out=big)
    with pytest.raises(ValueError, match="compute_dtype must be None or 'bfloat16'"):
        F.dense_forward(A, A.T, None, compute_dtype="float16")
    with pytest.raises(TypeError, match="compute_dtype='bfloat16' needs float32 W"):
        F.dense_forward(A, A.T.astype(np.float64), None, compute_dtype="bfloat16")
    with pytest.raises(ValueError, match="compute_dtype must be None or 'bfloat16'"):
        F.dense_backward(A, A.T, big, big, compute_dtype="bf16")
    with pytest.raises(ValueError, match="bf16 path must be one of"):
        _config.bf16_unavailable("fp8")


def test_no_warning_at_import():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proc = _run_child(["-W", "error", "-c", "import fastnn"], FASTNN_BF16=None)
    assert proc.returncode == 0, proc.stderr


VARIANT_CHILD = """
import numpy as np, fastnn
from fastnn import _config, _kernels, functional as F, reference as R
rng = np.random.default_rng(3)
A, B = rng.standard_normal((70, 97)).astype(np.float32), rng.standard_normal((97, 40)).astype(np.float32)
bound = 97 * 2.0 ** -23 * (np.abs(R.round_bf16(A)).astype(np.float64) @ np.abs(R.round_bf16(B)))
ran = []
for p in ("emulated", "avx512_bf16", "amx"):
    if _config.bf16_unavailable(p) is None:
        _config._set_bf16_path(p)
        assert np.all(np.abs(F.matmul_bf16(A, B) - R.matmul_bf16(A, B)) <= bound + 1e-30), p
        ran.append(p)
print(_kernels.SIMD_VARIANT, " ".join(ran))
"""


def test_every_simd_variant_runs_the_bf16_paths():
    """The hardware paths are compiled with target attributes into every
    variant, the SSE2 baseline included."""
    for variant in _kernels.SIMD_VARIANTS_BUILT:
        if not _kernels.cpu_supports(variant, _kernels.cpu_flags()):
            continue
        proc = _run_child(["-c", VARIANT_CHILD], FASTNN_BF16=None, FASTNN_SIMD=variant)
        assert proc.returncode == 0, proc.stderr
        name, *ran = proc.stdout.split()
        assert name == variant and ran == _runnable_paths()
