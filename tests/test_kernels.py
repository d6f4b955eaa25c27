"""Every Numba kernel against its slow obvious twin in tests/naive.py."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from favorkit import maps
from favorkit._kernels import accuracy as acc
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


# --- accuracy prediction --------------------------------------------------------------------

ROW_CASES = [
    (name, coupling, kind)
    for name in ("positive", "hyperbolic", "optimal", "trig")
    for coupling in ("iid", "orthogonal")
    for kind in ("moderate", "large", "overflow")
    if not (name == "trig" and coupling != "iid")  # predicted for iid projections only
]


def _accuracy_case(name, coupling, kind, seed=0, d=8, d_v=5, L=257, R=12):
    """Query rows, keys, values and visibility for the accuracy kernels.

    ``moderate``: |u|, |k̃| ~ 0.5 N(0, 1). ``large``: logits near -τ 900 (exps overflow or
    underflow without their shifts) with |u + τ k̃|² small, so the sums stay finite.
    ``overflow``: logits near +τ 900, |u + τ k̃|² in the thousands: the moments overflow
    relative to the row's scale (the prediction is inf there) but every kernel sum is
    taken relative to its maximum and stays finite. Keys: 30 % padded; rows see all keys,
    a causal prefix, one key (rows 1, 2) or none (row 0).
    """
    from favorkit.attention._accuracy import _Coupling
    from favorkit.theory._gerf import coupling_cosine

    rng = np.random.default_rng(seed)
    fmap = maps.get(name)
    sm = fmap.second_moment(d, -0.05 if fmap.fitted else 0.0)
    tau = sm.pair_sign
    if kind == "moderate":
        U, Kk = rng.normal(scale=0.5, size=(2, R, d)) / d**0.25
        Kk = rng.normal(scale=0.5, size=(L, d)) / d**0.25
    else:
        k0 = rng.normal(size=d)
        k0 *= 30.0 / np.linalg.norm(k0)
        Kk = k0 + rng.normal(scale=0.3, size=(L, d))
        U = (-tau if kind == "large" else tau) * k0 + rng.normal(scale=0.3, size=(R, d))
    V = rng.normal(size=(L, d_v))
    keys_ok = rng.random(L) > 0.3
    keys_ok[:3] = [False, True, False]
    limits = rng.integers(1, L + 1, size=R)
    limits[:3] = [1, 2, 3]
    limits[3] = L
    c = coupling_cosine(coupling, d)
    coupled = None
    if c is not None:
        kk = (Kk**2).sum(1)
        z_max = float((np.sqrt((U**2).sum(1).max()) + np.sqrt(kk.max())) ** 2)
        coupled = _Coupling(c, d, tau < 0, z_max, sm.signs)
    return U, Kk, V, keys_ok, limits.astype(np.int64), sm, coupled


# Below the smallest normal float64 round-off is absolute (subnormal squares of tiny X_i).
_TINY = np.finfo(np.float64).tiny
# The key pairs' sketch's Gaussian triples (a_i, b_i, b'_i), for the cases' d_v = 5, d = 8.
_SKETCH = tuple(np.random.default_rng(11).standard_normal((6, n)) for n in (5, 8, 8))


def _sketch_norms():
    """The largest ``|a_i| |b_i|`` and ``|a_i| |b_i| |b'_i|`` of the sketch."""
    A, B, B2 = (np.linalg.norm(x, axis=1) for x in _SKETCH)
    return (A * B).max(), (A * B * B2).max()


def _kernel_args(U, Kk, V, keys_ok, limits, sm, coupled):
    """``row_sums``' inputs (through ``key_rows``) and its outputs, allocated."""
    R, d = U.shape
    L, d_v = V.shape
    Kk2, kk, Vx, vv = (np.empty((L, d)), np.empty(L), np.empty((L, d_v + 1)), np.empty(L))
    acc.key_rows(Kk, V, 1.0, np.ones(d), np.zeros(d_v), Kk2, kk, Vx, vv)
    signs = np.array(sm.signs, dtype=np.float64)
    moment = np.array([sm.alpha, sm.gamma, float(sm.pair_sign)])
    if coupled is None:
        coupling, tables = np.zeros(4), np.zeros((2, 2, 2))
    else:
        coupling = np.array([1.0, d, coupled.step, coupled.linear])
        tables = coupled.kernel_tables()
    n_sets = signs.size + (coupled is not None)
    A, B, B2 = _SKETCH
    sketch = naive.sketch_columns(Kk2, Vx[:, :-1], A, B, B2)
    inputs = (U, Kk2, Vx, vv, kk, (U * U).sum(1), keys_ok, limits, moment, signs, coupling,
              tables, sketch, A)  # fmt: skip
    outputs = dict(
        y=np.empty((R, d_v + 1)),
        sums=np.empty((R, acc.N_COLS)),
        est=np.empty((R, n_sets, 2)),
        var=np.empty((R, n_sets, 3)),
        first=np.empty((R, n_sets, A.shape[0])),
        b=np.empty((R, L)),
        yv=np.empty((R, L)),
        cdf=np.empty((R, n_sets, L)),
    )
    return inputs, outputs, n_sets


def test_accuracy_row_sums_rejects_too_small_logit_buffers():
    """The logits and ``y·v_j`` live in buffers the caller provides: too few columns raise
    (unchecked, the kernel would write past them)."""
    case = _accuracy_case(*ROW_CASES[0])
    inputs, out, n_sets = _kernel_args(*case)
    no_draws = np.empty((0, n_sets, 2, 8))
    out["b"] = out["b"][:, :-1]
    with pytest.raises(ValueError, match="max\\(limits\\) columns"):
        acc.row_sums(*inputs, no_draws, *out.values())


@pytest.mark.parametrize(("name", "coupling", "kind"), ROW_CASES)
def test_accuracy_row_sums(name, coupling, kind):
    U, Kk, V, keys_ok, limits, sm, coupled = case = _accuracy_case(name, coupling, kind)
    inputs, out, n_sets = _kernel_args(*case)
    no_draws = np.empty((0, n_sets, 2, 8))
    acc.row_sums(*inputs, no_draws, *out.values())
    rows = naive.accuracy_row_sums(U, Kk, V, keys_ok, limits, sm, coupled, _SKETCH)
    sums, S = out["sums"], len(sm.signs)
    assert np.all(np.isfinite(sums))
    assert [row is None for row in rows] == list(sums[:, acc.COL_SEEN] == 0)
    assert rows[0] is None and rows[1] is not None and rows[2] is not None
    close = dict(rtol=1e-11, atol=0)
    for r, row in enumerate(rows):
        if row is None:
            assert np.all(sums[r] == 0) and np.all(out["est"][r] == 0)
            assert np.all(out["first"][r] == 0)
            continue
        col = sums[r]
        assert_allclose(col[acc.COL_TOP], row["top"], **close)
        assert_allclose(col[acc.COL_TOTAL], row["total"], **close)
        assert_allclose(out["y"][r, :-1], row["y"], rtol=1e-11, atol=1e-13)
        assert out["y"][r, -1] == 0
        assert_allclose(col[acc.COL_Y2], row["y2"], **close)
        for s in range(S):
            base = acc.COL_SIGN + s * acc.SIGN_COLS
            for key, offset in (("shift", acc.SIGN_SHIFT), ("bound", acc.SIGN_BOUND),
                                ("sum_e", acc.SIGN_SUM_E)):  # fmt: skip
                assert_allclose(col[base + offset], row[key][s], **close)
            # Sums whose terms cancel, to the round-off of their terms: the kernel forms
            # |v_j - y|² as |v_j|² - 2 y·v_j + |y|² (as the reference did), whose error is
            # eps |v_j|² whatever the difference; Σ e_j (v_j - y) as Σ e_j v_j - y Σ e_j.
            e, g, vmax = row["e"][s], row["g"][s], (V**2).sum(1).max() + row["y2"]
            ee, gg = e @ e, g @ g
            s1_scale = (e.sum() * np.sqrt(vmax)) ** 2
            assert_allclose(col[base + acc.SIGN_S1SQ], row["s1sq"][s], rtol=1e-9,
                            atol=1e-13 * s1_scale)  # fmt: skip
            assert_allclose(col[base + acc.SIGN_DIAG], row["diag"][s], rtol=1e-9,
                            atol=1e-13 * (gg + ee) * vmax)  # fmt: skip
            assert_allclose(col[base + acc.SIGN_GGEE], row["ggee"][s], rtol=1e-9,
                            atol=1e-13 * (gg + ee))  # fmt: skip
            kmax = (Kk**2).sum(1).max()
            assert_allclose(col[base + acc.SIGN_D1], row["d1"][s], rtol=1e-9,
                            atol=1e-13 * ee * vmax * kmax)  # fmt: skip
            assert_allclose(col[base + acc.SIGN_D2], row["d2"][s], rtol=1e-9,
                            atol=1e-13 * ee * vmax * kmax**2)  # fmt: skip
            # X_i = Σ_j e_j (a_i·v_j)(b_i·k̃_j) - (a_i·y) Σ_j e_j b_i·k̃_j: the round-off of
            # its terms, |a_i| |b_i| Σ_j e_j |v_j - y| |k̃_j|, squared (Y_i: times |b'_i| |k̃_j|).
            ab, abb = _sketch_norms()
            x_scale = ab * e.sum() * np.sqrt(vmax * kmax)
            x2_scale = abb * e.sum() * np.sqrt(vmax) * kmax
            atol = 1e-13 * (sm.gamma * x_scale**2 + sm.gamma**2 * x2_scale**2) + _TINY
            assert_allclose(out["first"][r, s], row["first"][s], rtol=1e-9, atol=atol)
        if coupled is not None:
            assert_allclose(col[acc.COL_ZBAR], row["zbar"], **close)
            assert_allclose(col[acc.COL_CURV], row["curv"], rtol=1e-9)
            scale = abs(row["curv"]) * Kk.shape[1] * (row["zbar"] + 1) ** 2 * (V**2).sum(1).max()
            assert_allclose(col[acc.COL_CROSS], row["cross"], rtol=1e-9, atol=1e-12 * scale)
            # X^p, X^c, Y^p as X, Y above with the weights p_j, p_j c_j (sum 1, and ~ zbar).
            ab, abb = _sketch_norms()
            kmax = (Kk**2).sum(1).max()
            vkmax = np.sqrt(((V**2).sum(1).max() + row["y2"]) * kmax)
            x_scale = (ab * vkmax) ** 2 * (1 + row["zbar"])
            x2_scale = (abb * vkmax) ** 2 * kmax
            lam = coupled.linear * np.mean(sm.signs)
            dc = Kk.shape[1] * abs(row["curv"])
            atol = 1e-13 * (x_scale * (4 * dc + abs(lam)) + x2_scale * dc)
            assert_allclose(out["first"][r, S], row["first"][S], rtol=1e-9, atol=atol + _TINY)
        n = limits[r]
        vmax = (V[:n] ** 2).sum(1).max() + row["y2"]
        assert_allclose(out["b"][r, :n], Kk[:n] @ U[r], rtol=1e-12, atol=1e-12)
        assert_allclose(out["yv"][r, :n], V[:n] @ out["y"][r, :-1], rtol=1e-12, atol=1e-12)
        for k, weights in enumerate(row["weights"]):
            running = np.cumsum(weights)
            # The weights are factor_j |v_j - y|, and |v_j - y|² carries the error
            # eps |v_j|² (above): |v_j - y| then up to sqrt(eps |v_j|²) where v_j ~ y.
            atol = 1e-7 * np.sqrt(vmax) * row["factor"][k].sum()
            assert_allclose(out["cdf"][r, k, :n], running, rtol=1e-11, atol=atol)
            assert_allclose(col[acc.COL_WTOT + k], running[-1], rtol=1e-11, atol=atol)


@pytest.mark.parametrize(("name", "coupling", "kind"), ROW_CASES)
def test_accuracy_row_pairs(name, coupling, kind):
    """The key-pair samples, in the same pass as the sums and from the stored running
    weights, against the twin on the same draws."""
    U, Kk, V, keys_ok, limits, sm, coupled = case = _accuracy_case(name, coupling, kind)
    inputs, out, n_sets = _kernel_args(*case)
    R, n_pairs = U.shape[0], 64
    draws = np.random.default_rng(7).random((R, n_sets, 2, n_pairs))
    L = Kk.shape[0]
    unstored = (np.empty((R, L)), np.empty((R, L)), np.empty((R, n_sets, 0)))  # no cdf
    acc.row_sums(
        *inputs, draws, out["y"], out["sums"], out["est"], out["var"], out["first"], *unstored
    )  # fmt: skip
    fused = out["est"].copy(), out["var"].copy()
    acc.row_sums(*inputs, draws[:0], *out.values())
    acc.sampled_pairs(
        *inputs[1:6], inputs[7], *inputs[8:12], draws, out["y"], out["sums"], out["b"],
        out["yv"], out["cdf"], out["est"], out["var"],
    )  # fmt: skip
    assert_array_equal(out["est"], fused[0])
    assert_array_equal(out["var"], fused[1])
    rows = naive.accuracy_row_sums(U, Kk, V, keys_ok, limits, sm, coupled)
    sampled = 0
    for r, row in enumerate(rows):
        for k in range(n_sets):
            if row is None or not out["sums"][r, acc.COL_WTOT + k] > 0:
                assert np.all(out["est"][r, k] == 0) and np.all(out["var"][r, k] == 0)
                continue
            both = []  # the rest past the sketch's part, then that part
            for part in (0, 1):
                pairs = naive.accuracy_row_pairs(row, k, draws[r, k], Kk, V, sm, coupled, part)
                est, var, est_slack, var_slack, vals = pairs
                scale = abs(est) + np.sqrt(var)  # the sum's size, or its noise where it is ~0
                assert_allclose(out["est"][r, k, part], est, rtol=1e-9,
                                atol=1e-12 * scale + est_slack)  # fmt: skip
                atol = 1e-12 * scale**2 + var_slack
                assert_allclose(out["var"][r, k, part], var, rtol=1e-9, atol=atol)
                both.append((vals, var, var_slack))
            (g, var_g, slack_g), (h, var_h, slack_h) = both
            n = g.size
            with np.errstate(invalid="ignore", over="ignore"):  # inf, NaN at hostile scales
                cov = row["weights"][k].sum() ** 4 * np.cov(g, h)[0, 1] / n
            atol = np.sqrt(slack_g * var_h) + np.sqrt(var_g * slack_h) + 1e-12 * (var_g + var_h)
            assert_allclose(out["var"][r, k, 2], cov, rtol=1e-9, atol=atol)
            sampled += est != 0
    if kind == "moderate":  # (the others' e^{±k̃_j·k̃_l} may overflow: inf or NaN sums)
        assert sampled >= (R - 3) * n_sets  # rows 0-2 see at most one key: no pairs


@pytest.mark.parametrize("dtype", DTYPES)
def test_sketch_columns(dtype):
    """The kernel (a's with a 0 appended for the column of ones) against the twin, to the
    dtype's round-off of the products' sizes."""
    rng = np.random.default_rng(4)
    Kk, V = rng.normal(size=(300, 8)), rng.normal(size=(300, 5))
    A, B, B2 = _SKETCH
    Vx = np.hstack([V, np.ones((300, 1))]).astype(dtype)
    A_ones = np.hstack([A, np.zeros((6, 1))]).astype(dtype)
    out = np.empty((300, 24), dtype)
    both = np.vstack([B, B2]).astype(dtype)
    acc.sketch_columns(Kk.astype(dtype), Vx, A_ones, both, out)
    expected = naive.sketch_columns(Kk.astype(dtype), Vx[:, :-1], A, B, B2)
    scale = np.abs(naive.sketch_columns(np.abs(Kk), np.abs(V), np.abs(A), np.abs(B), np.abs(B2)))
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(out - expected) <= 16 * eps * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_key_rows(dtype, out_dtype):
    rng = np.random.default_rng(3)
    K, V = rng.normal(scale=4, size=(2, 37, 6)).astype(dtype)
    psi = rng.uniform(0.5, 2, 6)
    center = rng.normal(size=6)
    out = (np.empty((37, 6), out_dtype), np.empty(37), np.empty((37, 7), out_dtype), np.empty(37))
    acc.key_rows(K, V, 0.7, psi, center, *out)
    expected = naive.key_rows(K, V, 0.7, psi, center, out_dtype)
    for got, want in zip(out, expected, strict=True):
        assert_allclose(got, want, rtol=1e-14)


@pytest.mark.parametrize("name", ["positive", "hyperbolic", "optimal", "trig"])
@pytest.mark.parametrize("scale", [0.3, 8.0])
def test_noise_rows(name, scale):
    """The AccuracyWarning check's sums; at scale 8 the logits reach ±300 (their exps
    overflow without a shift) and the moments e^{|u + k̃|²} overflow (inf, as the twin's)."""
    rng = np.random.default_rng(4)
    n_seq, L, d, d_v = 2, 300, 16, 7
    Kf = (rng.normal(scale=scale, size=(n_seq, L, d))).astype(np.float32)
    Vf = rng.normal(size=(n_seq, L, d_v))
    seqs = np.array([0, 1, 1, 0, 1])
    picks = rng.integers(0, L, size=(5, 40))
    U = rng.normal(scale=scale, size=(5, d)) / d**0.25
    root, psi = d**-0.25, rng.uniform(0.8, 1.25, d)
    share = rng.uniform(0.1, 1, 5)
    fmap = maps.get(name)
    sm = fmap.second_moment(d, -0.05 if fmap.fitted else 0.0)
    out = np.empty((5, 3))
    moment = np.array([sm.alpha, sm.gamma, float(sm.pair_sign), sm.log_const])
    signs = np.array(sm.signs, dtype=np.float64)
    acc.noise_rows(U, Kf, Vf, seqs, picks, root, psi, share, moment, signs, out)
    K = Kf[seqs[:, None], picks].astype(np.float64) * root / psi
    expected = naive.noise_rows(U, K, Vf[seqs[:, None], picks], share, sm)
    for got, want in zip(out.T, expected, strict=True):
        assert_allclose(got, want, rtol=1e-10)
    if scale > 1:  # the hostile regime was reached
        assert np.nanmax(out[:, 0]) > 1e100
