"""Accuracy of the vectorised float32 exp behind softmax and cross-entropy."""
import numpy as np
import pytest

from fastnn import _kernels


def _exp_f32(x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.full_like(x, np.nan)
    _kernels.exp_f32(x, out)
    return out


def test_exp_within_two_ulp_over_the_whole_range():
    # every representable result from the smallest subnormal to FLT_MAX
    x = np.linspace(-104.0, 88.72, 2_000_003, dtype=np.float32)
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    err_ulp = np.abs(_exp_f32(x) - exact) / ulp
    assert err_ulp.max() <= 2.0, f"max error {err_ulp.max():.2f} ulp at x={x[err_ulp.argmax()]}"


def test_exp_special_values():
    x = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 88.8, 1e30, -1e30, -87.4, -103.0, -105.0],
                 dtype=np.float32)
    got = _exp_f32(x)
    assert got[0] == 1.0 and got[1] == 1.0
    assert np.isnan(got[2])
    assert got[3] == np.inf and got[5] == np.inf and got[6] == np.inf
    assert got[4] == 0.0 and got[7] == 0.0 and got[10] == 0.0
    # subnormal results are kept, not flushed to zero
    assert 0 < got[8] < np.finfo(np.float32).tiny and 0 < got[9] < np.finfo(np.float32).tiny


def _exp_shifted_f32(x, m):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.full_like(x, np.nan)
    total = _kernels.exp_shifted_f32(x, out, m)
    return out, total


def test_shifted_exp_of_the_kernels_within_two_ulp():
    # the form every kernel uses: exp(z - m), m the row max, over all of
    # [-104, 0] (shifts of a few sizes: z - m is then rounded in float32)
    for m in (0.0, 3.5, -1000.0):
        x = np.float32(m) + np.linspace(-104.0, 0.0, 1_000_003, dtype=np.float32)
        x = np.minimum(x, np.float32(m))
        got, total = _exp_shifted_f32(x, m)
        exact = np.exp((x - np.float32(m)).astype(np.float64))
        ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
        err_ulp = np.abs(got - exact) / ulp
        assert err_ulp.max() <= 2.0, f"m={m}: max error {err_ulp.max():.2f} ulp"
        np.testing.assert_allclose(total, exact.sum(), rtol=1e-5)


def test_shifted_exp_special_values():
    got, total = _exp_shifted_f32([0.0, -0.0, -np.inf, -87.4, -103.0, -105.0, -1e30], 0.0)
    assert got[0] == 1.0 and got[1] == 1.0
    assert got[2] == 0.0 and got[5] == 0.0 and got[6] == 0.0
    assert 0 < got[3] < np.finfo(np.float32).tiny and 0 < got[4] < np.finfo(np.float32).tiny
    assert total == np.float32(2.0) + got[3] + got[4]
    # a NaN argument gives NaN, and so a NaN sum: the softmax NaN-row policy
    got, total = _exp_shifted_f32([-1.0, np.nan, -2.0], 0.0)
    assert np.isnan(got[1]) and np.isnan(total)
    assert abs(got[0] - np.exp(-1.0)) <= 2 * np.spacing(np.float32(np.exp(-1.0)))


@pytest.mark.parametrize("m", (0.0, -1000.0))
def test_shifted_exp_every_length_leaves_the_rest_alone(m):
    # every tail length of a vector loop (16 lanes on AVX-512, 8 on AVX2),
    # and lanes beyond the end neither written nor counted, even where m < 0
    # makes their (zero) padding exponentiate to a huge value
    rng = np.random.default_rng(0)
    for c in range(0, 50):
        x = (np.float32(m) - rng.exponential(3.0, c)).astype(np.float32)
        buffer = np.full(c + 20, np.nan, np.float32)
        total = _kernels.exp_shifted_f32(x, buffer[:c], m)
        exact = np.exp((x - np.float32(m)).astype(np.float64))
        np.testing.assert_allclose(buffer[:c], exact, rtol=3e-7, atol=0)
        assert np.isnan(buffer[c:]).all(), f"c={c}: wrote past the end"
        np.testing.assert_allclose(total, exact.sum(), rtol=1e-6)


def test_exp_entry_points_refuse_a_short_out():
    x = np.zeros(5, np.float32)
    for call in (lambda out: _kernels.exp_f32(x, out),
                 lambda out: _kernels.exp_shifted_f32(x, out, 0.0)):
        with pytest.raises(ValueError, match="out must hold"):
            call(np.empty(4, np.float32))


# ---------------------------------------------------------------------------
# the float32 log1p of the logistic kernel: log1p(e) for e = exp(-|z|) in [0, 1]
# ---------------------------------------------------------------------------
def _log1p_unit_f32(x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.full_like(x, np.nan)
    _kernels.log1p_unit_f32(x, out)
    return out


def test_log1p_unit_within_two_ulp_over_all_of_its_domain():
    # a dense sweep of [0, 1], and every binade from 1 down to the smallest
    # subnormal (log1p(e) ~ e there: relative accuracy, not just absolute)
    dense = np.linspace(0.0, 1.0, 2_000_003, dtype=np.float32)
    binades = np.ldexp(np.float32(1) + np.linspace(0, 1, 257, dtype=np.float32)[:-1, None],
                       -np.arange(1, 150)[None, :]).astype(np.float32).ravel()
    x = np.concatenate([dense, binades[binades > 0], [np.float32(1.0)]])
    exact = np.log1p(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    err_ulp = np.abs(_log1p_unit_f32(x) - exact) / ulp
    assert err_ulp.max() <= 2.0, f"max error {err_ulp.max():.2f} ulp at x={x[err_ulp.argmax()]}"


def test_log1p_unit_special_values_and_every_length():
    got = _log1p_unit_f32([0.0, -0.0, np.nan, 1.0, 1e-45, 2.0 ** -25, 2.0 ** -24])
    assert got[0] == 0.0 and got[1] == 0.0 and np.isnan(got[2])
    assert got[3] == np.float32(np.log(2.0))
    assert got[4] == np.float32(1e-45)             # subnormal in, itself out
    assert got[5] == np.float32(2.0 ** -25)
    assert abs(got[6] - np.log1p(2.0 ** -24)) <= np.spacing(np.float32(2.0 ** -24))
    rng = np.random.default_rng(0)
    for c in range(0, 40):                          # every tail of a vector loop
        x = rng.uniform(0, 1, c).astype(np.float32)
        buffer = np.full(c + 20, np.nan, np.float32)
        _kernels.log1p_unit_f32(x, buffer[:c])
        np.testing.assert_allclose(buffer[:c], np.log1p(x.astype(np.float64)), rtol=3e-7, atol=0)
        assert np.isnan(buffer[c:]).all(), f"c={c}: wrote past the end"
