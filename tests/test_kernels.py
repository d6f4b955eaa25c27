"""Every Numba kernel against its slow obvious twin in tests/naive.py."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from favorkit._kernels import feature_maps as fm
from favorkit._kernels.fastexp import exp64_inplace, exp_inplace, exp_inplace_float32
from favorkit._kernels.fwht import fwht_rows_inplace
from tests import naive

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-6, np.float64: 1e-13}


def _rows(dtype, n=7, m=13, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, m)).astype(dtype), rng.normal(size=n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plus_minus_shift_rows(dtype):
    z, shift = _rows(dtype)
    shift = shift.astype(dtype)
    out = np.empty((z.shape[0], 2 * z.shape[1]), dtype=dtype)
    fm.plus_minus_shift_rows(z, shift, out)
    assert_allclose(out, naive.plus_minus_shift_rows(z, shift), rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cos_sin_rows(dtype):
    z, log_scale = _rows(dtype)
    out = np.empty((z.shape[0], 2 * z.shape[1]), dtype=dtype)
    fm.cos_sin_rows(z, log_scale, out)
    assert out.dtype == dtype
    assert_allclose(out, naive.cos_sin_rows(z, log_scale), rtol=RTOL[dtype], atol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cos_offset_rows_inplace(dtype):
    z, log_scale = _rows(dtype)
    offset = np.random.default_rng(1).uniform(0, 2 * np.pi, z.shape[1]).astype(dtype)
    expected = naive.cos_offset_rows(z.astype(np.float64), offset, log_scale)
    fm.cos_offset_rows_inplace(z, offset, log_scale)
    assert_allclose(z, expected, rtol=10 * RTOL[dtype], atol=10 * RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2, 8, 64])
def test_fwht_rows_inplace(dtype, p):
    a = np.random.default_rng(p).normal(size=(5, p)).astype(dtype)
    expected = naive.fwht_rows(a.astype(np.float64))
    fwht_rows_inplace(a)
    assert_allclose(a, expected, rtol=RTOL[dtype] * np.log2(2 * p), atol=RTOL[dtype] * p)


def test_fwht_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        fwht_rows_inplace(np.zeros((2, 6)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("check_all", [0.0, 1.0])
def test_stage_gerf_rows_and_row_terms(dtype, check_all):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 5)).astype(dtype) * 3
    weights = rng.uniform(0.5, 2, 5)
    params = fm.RowTerms(-2.0, 0.5, -0.3, 4.0, -60.0, bool(check_all))
    xs = np.empty((9, 7), dtype=dtype)
    shift = np.empty(9)
    check = np.empty(9, dtype=bool)
    fm.stage_gerf_rows(x, 1.7, weights, params, xs, shift, check)
    xs_ref, shift_ref, check_ref = naive.stage_gerf_rows(x, 1.7, weights, params, 7)
    assert_allclose(shift, shift_ref, rtol=1e-13)
    assert_array_equal(check, check_ref)
    assert 0 < check.sum() < 9 or check_all
    assert_allclose(xs, xs_ref, rtol=RTOL[dtype])
    sq_u, sq_t = 1.7 * (x.astype(float) ** 2).sum(1), (x.astype(float) ** 2) @ weights
    fm.gerf_row_terms(sq_u, sq_t, params, shift, check)
    assert_allclose(shift, shift_ref, rtol=1e-13)
    assert_array_equal(check, check_ref)
    shift[:], check[:] = np.nan, False
    fm.gerf_rows_dense(x, 1.7, weights, params, shift, check)
    shift_dense, check_dense = naive.gerf_rows_dense(x, 1.7, weights, params)
    assert_allclose(shift, shift_dense, rtol=1e-13)
    assert_array_equal(check, check_dense)


def test_row_norms_accumulate_in_float64():
    """float32 entries of 1e19: |x|² = 4e38 overflows float32, not the float64 accumulator."""
    x = np.full((2, 4), 1e19, dtype=np.float32)
    shift = np.empty(2)
    check = np.empty(2, dtype=bool)
    params = fm.RowTerms(0.0, 0.0, 0.0, 1.0, -80.0, False)
    fm.gerf_rows_dense(x, 1.0, np.ones(4), params, shift, check)
    assert np.isfinite(shift).all()
    assert_allclose(shift, naive.gerf_rows_dense(x, 1.0, np.ones(4), params)[0], rtol=1e-13)


# --- exponential -----------------------------------------------------------------------------


def _exp32(x):
    y = x.copy()
    exp_inplace_float32(y)
    return y


def _ulp_error(x):
    y = _exp32(x)
    return np.abs(y - naive.exp_exact(x)) / naive.float32_ulp(naive.exp_exact(x))


def test_exp_float32_is_within_1_5_ulp_over_the_normal_range():
    # Every float32 in [-8, 8) spaced 2^-10 apart plus 2 million uniform draws over the
    # whole normal range. Truncation (5e-9 relative) and ~10 roundings bound the error by
    # a little over 1 ulp; measured 0.92 ulp with FMA, 1.18 without (numpy's float32 exp: 2.4).
    grid = np.arange(-8, 8, 2.0**-10, dtype=np.float32)
    draws = np.random.default_rng(0).uniform(-87.3, 88.72, 2_000_000).astype(np.float32)
    for x in (grid, draws):
        assert _ulp_error(x).max() <= 1.5


def test_exp_float32_subnormal_results_round_once():
    # exp(x) for x in [-103.9, -87.4] is subnormal: 2^n is applied as two normal factors,
    # so the result is rounded once, to within one subnormal spacing (2^-149).
    x = np.linspace(-103.9, -87.4, 100_001, dtype=np.float32)
    assert _ulp_error(x).max() <= 1.0
    assert np.all(_exp32(x) > 0)


def test_exp_float32_edge_values_match_numpy():
    f32 = np.float32
    x = np.array(
        [0, -0.0, 1, -1, 88.72283, 88.7229, 89, 1e30, np.inf, -87.33655, -103.9, -104, -105,
         -1e30, -np.inf, np.nan],
        dtype=f32,
    )  # fmt: skip
    with np.errstate(over="ignore", under="ignore"):
        expected = np.exp(x)
    got = _exp32(x)
    # Same zeros, infs, NaN and ones; finite values to within 1.5 ulp.
    assert_array_equal(np.isinf(got), np.isinf(expected))
    assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_array_equal(got == 0, expected == 0)
    assert got[0] == got[1] == f32(1)
    finite = np.isfinite(expected) & (expected > 0)
    assert _ulp_error(x[finite]).max() <= 1.5
    assert np.isfinite(got[4]) and got[4] > f32(3.4e38)  # the largest finite exp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_exp_inplace_dispatch(dtype, contiguous):
    """2-D blocks in place; float64 and strided views go to numpy's exp bit for bit."""
    base = np.random.default_rng(1).uniform(-30, 30, (64, 40)).astype(dtype)
    a = base.copy() if contiguous else base.copy()[:, ::2]
    x = a.copy()
    assert exp_inplace(a) is a
    if dtype == np.float32 and contiguous:
        assert_array_equal(a, _exp32(x.reshape(-1)).reshape(x.shape))
        assert_allclose(a, naive.exp_exact(x), rtol=2 * np.finfo(np.float32).eps)
    else:
        assert_array_equal(a, np.exp(x))


# --- float64 exponential (inside kernels) ---------------------------------------------------


def _exp64(x):
    y = np.array(x, dtype=np.float64)
    exp64_inplace(y)
    return y


def _ulp_error64(x):
    exact = naive.exp_long(x)
    return np.abs(_exp64(x) - exact) / naive.float64_ulp(exact.astype(np.float64))


def test_exp64_is_within_1_5_ulp_over_the_normal_range():
    # Every float64 in [-8, 8) spaced 2^-12 apart plus 2 million uniform draws over the
    # whole normal range. Truncation (4e-18 relative) and ~16 roundings bound the error by
    # a little over 1 ulp; measured 0.86 ulp with FMA, 1.19 without.
    grid = np.arange(-8, 8, 2.0**-12)
    draws = np.random.default_rng(0).uniform(-708.3, 709.78, 2_000_000)
    for x in (grid, draws):
        assert _ulp_error64(x).max() <= 1.5


def test_exp64_subnormal_results_round_once():
    # exp(x) for x in [-745.1, -708.5] is subnormal: 2^n is applied as two normal factors,
    # so the result is rounded once, to within one subnormal spacing (2^-1074).
    x = np.linspace(-745.1, -708.5, 100_001)
    assert _ulp_error64(x).max() <= 1.0
    assert np.all(_exp64(x) > 0)


def test_exp64_edge_values_match_numpy():
    x = np.array(
        [0, -0.0, 1, -1, 709.782712893383, 709.7828, 710, 1e300, np.inf, -708.39, -745.1,
         -745.2, -746, -1e300, -np.inf, np.nan]
    )  # fmt: skip
    with np.errstate(over="ignore", under="ignore"):
        expected = np.exp(x)
    got = _exp64(x)
    # Same zeros, infs, NaN and ones; finite values to within 1.5 ulp.
    assert_array_equal(np.isinf(got), np.isinf(expected))
    assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_array_equal(got == 0, expected == 0)
    assert got[0] == got[1] == 1.0
    finite = np.isfinite(expected) & (expected > 0)
    assert _ulp_error64(x[finite]).max() <= 1.5
    assert np.isfinite(got[4]) and got[4] > 1.79e308  # the largest finite exp
