"""FavorAttention, favor_attention and softmax_attention (FAVOR+, Choromanski et al. 2021).

Structure: kernels against their naive twins; FAVOR against a dense quadratic computation
with the same features; the guarantees (no future leak, masking = truncation, convex hull,
shapes, determinism); statistical behaviour against exact attention; the estimator; every
error message.
"""

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from favorkit import (
    FavorAttention,
    NumericalWarning,
    PositiveRandomFeatures,
    favor_attention,
    maps,
    softmax_attention,
)
from favorkit._kernels import attention as ka
from favorkit.attention import _exact as exact_module
from favorkit.attention._engine import tuned
from favorkit.attention._inputs import prepare
from tests import naive

POSITIVE = list(maps.names("exponential"))  # attention's positive estimators
FITTED = [name for name in POSITIVE if maps.get(name).fitted]  # FAVOR++, SADERF, ...

DTYPES = [np.float32, np.float64]
# FAVOR vs the dense computation with the same features: relative error bounds.
REL = {np.float32: 1e-5, np.float64: 1e-10}


def _qkv(shape, d=16, dv=None, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    Q = rng.normal(size=(*shape, d))
    K = rng.normal(size=(*shape, d))
    V = rng.normal(size=(*shape, dv or d))
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype)


def _rel(a, b):
    """Max-entry error relative to the largest reference entry."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture
def small_blocks():
    """Blocks of 48 (causal 40) rows, chunks of 16: exercises block chaining at small L."""
    with tuned(block_rows=48, causal_block_rows=40, chunk=16, key_subblock=20):
        yield


# --- kernels against tests/naive.py ---------------------------------------------------------


def _block_inputs(dtype, n=37, r=11, e=5, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    fq = rng.uniform(0.1, 1, size=(n, r)).astype(dtype)
    fk = rng.uniform(0.1, 1, size=(n, r)).astype(dtype)
    s = rng.normal(scale=spread, size=n)
    s[[3, 4, 20]] = -np.inf  # padded keys
    u = np.concatenate([rng.normal(size=(n, e - 1)), np.ones((n, 1))], axis=1).astype(dtype)
    state = rng.uniform(0, 1, size=(r, e))
    return fq, fk, s, u, state


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thresh", [300.0, 0.5, -1.0])  # 0.5: some rows slow, -1: all
@pytest.mark.parametrize("R0", [-np.inf, 0.7])
def test_causal_block_matches_naive(dtype, thresh, R0):
    fq, fk, s, u, state0 = _block_inputs(dtype)
    state_in = np.zeros_like(state0) if R0 == -np.inf else state0
    state = state_in.copy()
    num = np.empty((fq.shape[0], u.shape[1]))
    ref = np.empty(fq.shape[0])
    R = ka.causal_block(fq, fk, s, u, 8, thresh, state, R0, num, ref)
    want_num, want_total = naive.causal_block(fq, fk, s, u, state_in, R0)
    rtol = REL[dtype]
    # Signed values cancel in the sums: measure error relative to the largest entry.
    assert _rel(np.exp(ref)[:, None] * num, want_num) <= rtol
    assert _rel(np.exp(R) * state, want_total) <= rtol


def test_causal_block_all_padded_prefix():
    fq, fk, s, u, _ = _block_inputs(np.float64)
    s[:10] = -np.inf
    fk[:10] = 0.0
    state = np.zeros((fq.shape[1], u.shape[1]))
    num = np.empty((fq.shape[0], u.shape[1]))
    ref = np.empty(fq.shape[0])
    ka.causal_block(fq, fk, s, u, 8, 20.0, state, -np.inf, num, ref)
    assert np.all(ref[:10] == -np.inf) and np.all(num[:10] == 0)
    want, _ = naive.causal_block(fq, fk, s, u, np.zeros_like(state), -np.inf)
    assert_allclose(np.exp(ref[10:])[:, None] * num[10:], want[10:], rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_cross", [False, True])
def test_merge_normalize_matches_naive(dtype, with_cross):
    rng = np.random.default_rng(1)
    n, e = 9, 4
    num = rng.normal(size=(n, e))
    num[:, -1] = rng.uniform(-0.5, 2, size=n)  # some non-positive normalizers
    ref = rng.normal(size=n)
    ref[2] = -np.inf
    cross = rng.uniform(0, 1, size=(n, e)).astype(dtype) if with_cross else np.empty((0, e))
    out = np.empty((n, e - 1), dtype=dtype)
    bad = ka.merge_normalize(num, ref, cross.astype(dtype), 0.3, out)
    want, want_bad = naive.merge_normalize(num, ref, cross.astype(np.float64), 0.3)
    assert bad == want_bad
    assert_allclose(out, want, rtol=REL[dtype] / 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_column_moments_matches_naive(dtype, masked):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(57, 6)).astype(dtype)
    skip = rng.random(57) < 0.3 if masked else np.zeros(0, dtype=bool)
    out = np.full((2, 6), 0.5)  # accumulates into what is there
    count = ka.column_moments(X, skip, out)
    want, want_count = naive.column_moments(X, skip)
    assert count == want_count
    assert_allclose(out, want + 0.5, rtol=1e-13)


def test_merge_normalize_divides_by_a_subnormal_normalizer():
    """1/den overflows for a subnormal den; num/den does not (and is counted if it does)."""
    num = np.array([[2e-310, 1e-310], [1.0, 1e-310]])
    out = np.empty((2, 1))
    bad = ka.merge_normalize(num, np.zeros(2), np.empty((0, 2)), 0.0, out)
    assert out[0, 0] == 2.0
    assert bad == 1 and out[1, 0] == 0.0  # 1 / 1e-310 overflows: zero row, counted


# --- positive features in log space: kernels against tests/naive.py ---------------------------


def _log_inputs(dtype, n=37, r=11, dv=3, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    zq = rng.normal(scale=spread, size=(n, r)).astype(dtype)
    zk = rng.normal(scale=spread, size=(n, r)).astype(dtype)
    rt = rng.normal(scale=spread, size=n)
    rt[[3, 4, 20]] = -np.inf  # padded keys
    v = rng.normal(size=(n, dv)).astype(dtype)
    return zq, zk, rt, v


@pytest.mark.parametrize("dtype", DTYPES)
def test_key_column_max_and_shift_keys_match_naive(dtype):
    _, zk, rt, _ = _log_inputs(dtype)
    c0 = np.full(zk.shape[1], 1.5)
    c = c0.copy()
    assert ka.key_column_max(zk, rt, c)
    want, finite = naive.key_column_max(zk, rt, c0)
    assert finite
    assert_array_equal(c, want)
    z = zk.copy()
    ka.shift_keys(z, rt, c)
    assert_array_equal(z, naive.shift_keys(zk, rt, c))
    assert z[rt > -np.inf].max() <= 0  # exp(z) <= 1 ...
    zk[5, 2] = np.inf  # ... and a projection that overflowed is reported
    assert not ka.key_column_max(zk, rt, np.full(zk.shape[1], -np.inf))


@pytest.mark.parametrize("dtype", DTYPES)
def test_shift_queries_matches_naive(dtype):
    zq, _, _, _ = _log_inputs(dtype, r=13)  # 13: the four-lane maximum's tail
    c = np.random.default_rng(3).normal(scale=50, size=13)
    z = zq.copy()
    assert ka.shift_queries(z, c)
    want, _ = naive.shift_queries(zq, c)
    assert_array_equal(z, want)
    assert np.all(z.max(axis=1) == 0)  # the largest weight of every row is exactly 1
    zq[0, 0] = np.nan
    assert not ka.shift_queries(zq, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_value_exponents_scaled_values_and_normalize_rows_match_naive(dtype):
    _, _, rt, v = _log_inputs(dtype, dv=4)
    v[:, 1] *= 1e30 if dtype == np.float32 else 1e200
    v[3, 2] = 1e37 if dtype == np.float32 else 1e300  # a padded key's value: ignored
    kappa = np.array([0.0, 2.0, 0.0, 0.0])
    want = naive.value_exponents(v, rt, 48, kappa)
    ka.value_exponents(v, rt, 48, kappa)
    assert_array_equal(kappa, want)
    assert kappa[0] == 0 and kappa[1] > 0 and kappa[2] == 0
    u = np.empty((v.shape[0], 5), dtype=dtype)
    ka.scaled_values(v, kappa, u)
    assert_array_equal(u, naive.scaled_values(v.astype(np.float64), kappa).astype(dtype))
    num = np.random.default_rng(4).uniform(1, 2, size=(6, 5))
    out = np.empty((6, 4), dtype=dtype)
    ka.normalize_rows(num, kappa, out)
    assert_allclose(out, naive.normalize_rows(num, kappa), rtol=REL[dtype] / 10)


def test_merge_log_states_matches_naive():
    rng = np.random.default_rng(5)
    r, e = 6, 4
    a = (rng.uniform(1, 2, (r, e)), rng.normal(size=r), np.array([0.0, 3.0, 1.0]))
    b = (rng.uniform(1, 2, (r, e)), rng.normal(size=r), np.array([2.0, 0.0, 1.0]))
    a[1][0] = b[1][1] = -np.inf  # a column without a visible key on one side
    a[0][0] = b[0][1] = 0.0
    want = naive.log_state_true_scale(*a) + naive.log_state_true_scale(*b)
    state, c, kappa = (x.copy() for x in a)
    ka.merge_log_states(state, c, kappa, *b)
    assert_array_equal(kappa, [2.0, 3.0, 1.0])
    assert_allclose(naive.log_state_true_scale(state, c, kappa), want, rtol=1e-13)


def _log_causal(zq, zk, rt, v, chunk, thresh, state, c, kappa, ahead=False):
    """Run log_causal_block (with the stage's features if ``ahead``); returns out, breaks."""
    dtype = zq.dtype
    out = np.full(v.shape, np.nan, dtype=dtype)
    n, r = zq.shape
    if ahead:
        buffers = (
            np.empty((n, r), dtype),
            np.empty((n, r), dtype),
            np.empty((n, v.shape[1] + 1), dtype),
            np.empty(n, bool),
        )
        ka.log_causal_stage(zq, zk, rt, v, c, kappa, thresh, 48, *buffers)
    else:
        buffers = (
            np.empty((0, r), dtype),
            np.empty((0, r), dtype),
            np.empty((0, v.shape[1] + 1), dtype),
            np.empty(0, bool),
        )
    n_breaks = ka.log_causal_block(
        zq, zk, rt, v, chunk, thresh, 48, state, c, kappa, out, ahead, *buffers
    )
    return out, n_breaks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thresh", [20.0, 0.5, -1.0])  # 0.5: some breaks, -1: more
@pytest.mark.parametrize("carried", [False, True])
def test_log_causal_block_matches_naive(dtype, thresh, carried):
    zq, zk, rt, v = _log_inputs(dtype)
    r, e = zq.shape[1], v.shape[1] + 1
    rng = np.random.default_rng(6)
    if carried:
        state0, c0, kappa0 = rng.uniform(1, 2, (r, e)), rng.normal(size=r), np.zeros(3)
    else:
        state0, c0, kappa0 = np.zeros((r, e)), np.full(r, -np.inf), np.zeros(3)
    state, c, kappa = state0.copy(), c0.copy(), kappa0.copy()
    out, n_breaks = _log_causal(zq, zk, rt, v, 8, thresh, state, c, kappa)
    want, total = naive.log_causal_block(zq, zk, rt, v, state0, c0, kappa0)
    assert n_breaks >= (not carried)  # without a carried state the first key is a break
    if thresh < 20:
        assert n_breaks > 1
    assert _rel(out, want) <= REL[dtype]
    assert _rel(naive.log_state_true_scale(state, c, kappa), total) <= REL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thresh", [20.0, 0.5])
@pytest.mark.parametrize("m", [11, 16])  # 11: the vectorized exp's scalar tail too
def test_features_computed_ahead_give_the_same_bits(dtype, thresh, m):
    """The stage computes a block's features against the references it guesses; the kernel
    uses them while the guess holds (up to the first break) and must match itself."""
    zq, zk, rt, v = _log_inputs(dtype, n=61, r=m)
    rng = np.random.default_rng(7)
    r, e = m, v.shape[1] + 1
    start = (rng.uniform(1, 2, (r, e)), rng.normal(scale=3, size=r), np.zeros(3))
    results = []
    for ahead in (False, True):
        state, c, kappa = (x.copy() for x in start)
        out, n_breaks = _log_causal(zq, zk, rt, v, 8, thresh, state, c, kappa, ahead=ahead)
        results.append((out, state, c, kappa, n_breaks))
    for got, want in zip(results[1], results[0], strict=True):
        assert_array_equal(got, want)
    if thresh < 20:
        assert results[0][-1] > 0  # a break: the kernel went on without the features


def test_log_causal_block_rows_before_any_key_are_zero():
    zq, zk, rt, v = _log_inputs(np.float64)
    rt[:10] = -np.inf
    r = zq.shape[1]
    state, c, kappa = np.zeros((r, 4)), np.full(r, -np.inf), np.zeros(3)
    out, _ = _log_causal(zq, zk, rt, v, 8, 20.0, state, c, kappa)
    assert np.all(out[:10] == 0)
    assert_allclose(out[10], v[10], rtol=1e-15)  # the first visible key alone: its value


# --- FAVOR against the dense computation with the same features -----------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("estimator", ["positive", "hyperbolic"])
@pytest.mark.parametrize("blocks", ["default", "small"])
def test_favor_matches_dense_same_features(dtype, causal, estimator, blocks, request):
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    Q, K, V = _qkv((150,), d=16, dv=7, seed=2)
    att = FavorAttention(64, estimator=estimator, random_state=0).fit(Q)
    out = att.attend(Q.astype(dtype), K.astype(dtype), V.astype(dtype), causal=causal)
    assert out.dtype == dtype
    fq = naive.favor_features(Q, att.projection_, att.scale_, estimator)
    fk = naive.favor_features(K, att.projection_, att.scale_, estimator)
    want = naive.linear_attention_dense(fq, fk, V, causal=causal)
    assert _rel(out, want) <= REL[dtype]


@pytest.mark.filterwarnings("ignore::favorkit.AccuracyWarning")  # N(0, 1) data, on purpose
@pytest.mark.parametrize("estimator", ["positive", "optimal"])
@pytest.mark.parametrize("causal", [False, True])
def test_float32_accuracy_holds_at_long_length(causal, estimator):
    """At L = 20 000 (five blocks, 313 chunks) float32 stays within 1e-5 of float64.

    The float64 path is the one checked against the dense computation above; a dense
    20 000 x 20 000 reference would not fit, and the float32 error budget is where long
    sums would show (float32 sums are kept to <= 1024 terms, the rest is float64).
    """
    Q, K, V = _qkv((20000,), d=64, seed=23)
    att = FavorAttention(256, estimator=estimator, random_state=0).fit(Q)
    ref = att.attend(Q, K, V, causal=causal)
    out = att.attend(*(x.astype(np.float32) for x in (Q, K, V)), causal=causal)
    assert _rel(out, ref) <= REL[np.float32]


@pytest.mark.parametrize("causal", [False, True])
def test_trig_matches_dense_and_reports_nonpositive_rows(causal):
    Q, K, V = _qkv((120,), d=8, seed=3)
    Q, K = 2 * Q, 2 * K  # long vectors: the trigonometric normalizer goes negative often
    att = FavorAttention(4, estimator="trig", random_state=0).fit(Q)
    fq = naive.favor_features(Q, att.projection_, att.scale_, "trig")
    fk = naive.favor_features(K, att.projection_, att.scale_, "trig")
    A = fq @ fk.T
    if causal:
        A = np.tril(A)
    den = A.sum(axis=1)
    n_bad = int((den <= 0).sum())
    assert n_bad > 0
    with pytest.warns(
        NumericalWarning,
        match=rf"{n_bad} of 120 query rows had an attention normalizer that was not positive",
    ):
        out = att.attend(Q, K, V, causal=causal)
    ok = den > 0
    assert np.all(out[~ok] == 0)
    assert _rel(out[ok], (A @ V)[ok] / den[ok, None]) <= 1e-10


@pytest.mark.parametrize("kernel", ["relu", "elu", "exp", "abs", np.tanh])
@pytest.mark.parametrize("projection", ["iid", None])
@pytest.mark.parametrize("causal", [False, True])
def test_generalized_kernels_match_dense(kernel, projection, causal, small_blocks):
    Q, K, V = _qkv((100,), d=8, seed=4)
    att = FavorAttention(32, activation=kernel, projection=projection, random_state=0).fit(Q)
    funcs = {
        "relu": lambda z: np.maximum(z, 0),
        "elu": lambda z: np.where(z > 0, z + 1, np.exp(np.minimum(z, 0))),
        "exp": np.exp,
        "abs": np.abs,
    }
    f = funcs.get(kernel, kernel)
    W = np.eye(8) if projection is None else att.projection_
    fq = f(np.sqrt(att.scale_) * Q @ W.T) + 1e-3
    fk = f(np.sqrt(att.scale_) * K @ W.T) + 1e-3
    A = fq @ fk.T
    if causal:
        A = np.tril(A)
    den = A.sum(axis=1)
    ok = den > 0
    with pytest.warns(NumericalWarning) if not ok.all() else _no_warning():
        out = att.attend(Q, K, V, causal=causal)
    assert _rel(out[ok], (A @ V)[ok] / den[ok, None]) <= 1e-10


class _no_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", NumericalWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


# --- FAVOR++ and SADERF ---------------------------------------------------------------------


def _gerf_reference(Q, K, V, W, scale, estimator, *, causal=False, mask=None, fitted=None):
    """Dense attention with FAVOR++/SADERF features at true scale, parameters from
    PositiveRandomFeatures.fit (an independent implementation of A* and Ψ), per head."""
    lead = Q.shape[:-2]
    Q, K, V = (x.reshape(-1, *x.shape[-2:]).astype(np.float64) for x in (Q, K, V))
    out = np.empty((Q.shape[0], Q.shape[1], V.shape[-1]))
    root = np.sqrt(scale)
    for h in range(Q.shape[0]):
        if fitted is None:
            keys = K[h] if mask is None else K[h][~mask]
            f = PositiveRandomFeatures(W.shape[0], estimator=estimator, projection=W)
            f.fit(root * Q[h], keys=root * keys)
            a, psi = f.gerf_a_, f.query_scale_
        else:
            a, psi = fitted
        fq = naive.favor_features(Q[h], W, scale, "gerf", a, psi)
        fk = naive.favor_features(K[h], W, scale, "gerf", a, 1 / psi)
        if maps.get(estimator).antithetic:  # [φ(ω), φ(-ω)] / sqrt(2)
            fq = np.hstack([fq, naive.favor_features(Q[h], -W, scale, "gerf", a, psi)])
            fk = np.hstack([fk, naive.favor_features(K[h], -W, scale, "gerf", a, 1 / psi)])
        out[h] = naive.linear_attention_dense(fq, fk, V[h], causal=causal, mask=mask)
    return out.reshape(*lead, *out.shape[1:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("estimator", FITTED)
@pytest.mark.parametrize("projection", ["orthogonal", "simplex"])
@pytest.mark.parametrize("blocks", ["default", "small"])
def test_gerf_matches_dense_same_features(dtype, estimator, projection, blocks, request):
    """Bidirectional FAVOR++/SADERF with A* (and Ψ) per head, per call: 2 x 3 heads whose
    queries and keys have different per-coordinate scales (so every head has its own Ψ, A)."""
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    Q, K, V = _qkv((2, 3, 150), d=16, dv=7, seed=30)
    rng = np.random.default_rng(31)
    Q = Q * np.exp(rng.normal(0, 0.5, size=(2, 3, 1, 16)))
    K = K * np.exp(rng.normal(0, 0.5, size=(2, 3, 1, 16)))
    att = FavorAttention(64, estimator=estimator, projection=projection, random_state=0).fit(Q)
    out = att.attend(Q.astype(dtype), K.astype(dtype), V.astype(dtype))
    assert out.dtype == dtype
    want = _gerf_reference(Q, K, V, att.projection_, att.scale_, estimator)
    assert _rel(out, want) <= REL[dtype]
    # The parameters really differ between heads (a shared A would fail the check above).
    assert_allclose(att.attention_matrix(Q, K) @ V, want, rtol=1e-10)


@pytest.mark.parametrize("estimator", FITTED)
def test_gerf_statistics_use_only_unpadded_keys(estimator, small_blocks):
    Q, K, V = _qkv((130,), d=8, seed=32)
    mask = np.zeros(130, dtype=bool)
    mask[[3, 50, 51, 52]] = True
    mask[97:] = True
    K = K.copy()
    K[mask] *= 30  # padded keys are huge: in the statistics they would change A and Ψ a lot
    att = FavorAttention(32, estimator=estimator, random_state=0).fit(Q)
    out = att.attend(Q, K, V, key_padding_mask=mask)
    want = _gerf_reference(Q, K, V, att.projection_, att.scale_, estimator, mask=mask)
    assert _rel(out, want) <= REL[np.float64]
    keep = ~mask
    assert_allclose(out, att.attend(Q, K[keep], V[keep]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("estimator", FITTED)
def test_causal_gerf_uses_the_fitted_parameters(dtype, estimator, small_blocks):
    Q, K, V = _qkv((2, 100), d=8, dv=5, seed=33)
    K = K * np.exp(np.random.default_rng(34).normal(0, 0.5, size=8))
    att = FavorAttention(32, estimator=estimator, causal=True, random_state=0).fit(Q, keys=K)
    # Fitted from all rows of the data passed to fit, with PositiveRandomFeatures' formulas.
    root = np.sqrt(att.scale_)
    f = PositiveRandomFeatures(32, estimator=estimator, projection=att.projection_)
    f.fit(root * Q.reshape(-1, 8), keys=root * K.reshape(-1, 8))
    assert att.causal_gerf_a_ < 0
    assert att.causal_gerf_a_ == pytest.approx(f.gerf_a_, rel=1e-12)
    assert_allclose(att.causal_query_scale_, f.query_scale_, rtol=1e-12)
    out = att.attend(Q.astype(dtype), K.astype(dtype), V.astype(dtype))
    fitted = (att.causal_gerf_a_, att.causal_query_scale_)
    want = _gerf_reference(
        Q, K, V, att.projection_, att.scale_, estimator, causal=True, fitted=fitted
    )
    assert _rel(out, want) <= REL[dtype]
    assert_allclose(att.attention_matrix(Q, K) @ V, want, rtol=1e-10)


def test_saderf_with_equal_statistics_is_favor_plus_plus():
    """Self-attention: queries and keys have the same per-coordinate energies, so Ψ = 1
    exactly and SADERF is FAVOR++ bit for bit (SADERF's Ψ_l = (Σ_j k_jl² / Σ_i q_il²)^{1/4},
    Likhosherstov et al. 2023, "Dense-Exponential Random Features")."""
    X = _qkv((2, 120), d=8, seed=35)[0] * np.exp(np.linspace(-1, 1, 8))
    opt = FavorAttention(32, estimator="optimal", random_state=0).fit(X)
    sad = FavorAttention(32, estimator="saderf", random_state=0).fit(X)
    assert_array_equal(sad.causal_query_scale_, 1.0)
    assert_array_equal(sad.transform(X), opt.transform(X))
    # ... and with mismatched key scales they differ.
    K = X * np.exp(np.linspace(1, -1, 8))
    assert not np.allclose(sad.attend(X, K, X), opt.attend(X, K, X), rtol=1e-3)


@pytest.mark.parametrize("estimator", POSITIVE)
@pytest.mark.parametrize("causal", [False, True])
def test_simplex_projection_for_every_positive_estimator(estimator, causal):
    Q, K, V = _qkv((100,), d=8, seed=36)
    att = FavorAttention(24, estimator=estimator, projection="simplex", random_state=0).fit(Q)
    out = att.attend(Q, K, V, causal=causal)
    if estimator in FITTED:
        fitted = (att.causal_gerf_a_, att.causal_query_scale_) if causal else None
        want = _gerf_reference(
            Q, K, V, att.projection_, att.scale_, estimator, causal=causal, fitted=fitted
        )
    else:
        fq = naive.favor_features(Q, att.projection_, att.scale_, estimator)
        fk = naive.favor_features(K, att.projection_, att.scale_, estimator)
        want = naive.linear_attention_dense(fq, fk, V, causal=causal)
    assert _rel(out, want) <= 1e-10


@pytest.mark.parametrize("estimator", FITTED)
@pytest.mark.parametrize("causal", [False, True])
def test_gerf_outputs_stay_in_the_range_of_V(estimator, causal):
    Q, K, V = _qkv((3, 80), d=8, seed=37)
    Q, K = 2 * Q, 2 * K * np.exp(np.linspace(-1, 1, 8))
    att = FavorAttention(16, estimator=estimator, causal=causal, random_state=0).fit(Q, keys=K)
    out = att.attend(Q, K, V)
    for h in range(3):
        for t in range(80):
            seen = V[h, : t + 1] if causal else V[h]
            assert np.all(out[h, t] >= seen.min(axis=0) - 1e-12)
            assert np.all(out[h, t] <= seen.max(axis=0) + 1e-12)


@pytest.mark.parametrize("estimator", FITTED)
@pytest.mark.parametrize("causal", [False, True])
def test_gerf_heads_and_threads(estimator, causal, small_blocks, restore_numba_threads):
    Q, K, V = _qkv((2, 3, 70), d=8, dv=5, seed=38, dtype=np.float32)
    att = FavorAttention(16, estimator=estimator, causal=causal, random_state=0).fit(Q)
    out = att.attend(Q, K, V)
    for b in range(2):
        for h in range(3):
            assert_array_equal(out[b, h], att.attend(Q[b, h], K[b, h], V[b, h]))
    numba.set_num_threads(1)
    one = att.attend(Q, K, V)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert_array_equal(out, one)


def test_favor_plus_plus_below_favor_plus_at_d64_half_scale():
    """d = 64 with q, k ~ N(0, 0.25 I) (experiments/beyond_favor.py's second attention
    setting, which measured FAVOR+/FAVOR++ output-MSE ratios x1.05-x1.4; x1.29 here, z = 7.6
    at L = 256, m = 128): FAVOR++'s error
    against exact attention is below FAVOR+'s, paired over seeds (same data and projection)."""
    seeds = range(16)
    pos = _mse_vs_exact(128, "orthogonal", "positive", seeds, L=256, d=64)
    opt = _mse_vs_exact(128, "orthogonal", "optimal", seeds, L=256, d=64)
    assert _paired_z(np.log(pos), np.log(opt)) > Z_CRIT


def test_causal_gerf_errors():
    Q, K, V = _good()
    for estimator in FITTED:
        with pytest.raises(ValueError, match="with causal=True needs A .* fixed in advance"):
            favor_attention(Q, K, V, estimator=estimator, causal=True)
    with pytest.raises(ValueError, match="is expecting 4 features"):
        FavorAttention(8, estimator="optimal").fit(Q, keys=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="keys contains NaN or inf"):
        FavorAttention(8, estimator="saderf").fit(Q, keys=np.full((1, 3, 4), np.nan))


# --- guarantees -----------------------------------------------------------------------------


def _future_changes(att, K, V, t):
    """(K2, V2) changed from position t on: keys scaled, keys set to the largest key
    log-constant there is (k̃ = ω_i gives s = |ω_i|²/2 in the positive features of the
    Performer paper's Lemma 1 / Eq. 7: a new running maximum),
    values shifted, and keys and values both."""
    w_big = att.projection_[np.argmax((att.projection_**2).sum(axis=1))]
    for change in ("scale_keys", "aligned_keys", "values", "both"):
        K2, V2 = K.copy(), V.copy()
        if change in ("scale_keys", "both"):
            K2[..., t:, :] *= 8
        if change == "aligned_keys":
            K2[..., t:, :] = (w_big / np.sqrt(att.scale_)).astype(K.dtype)
        if change in ("values", "both"):
            V2[..., t:, :] += 5
        yield K2, V2


@pytest.mark.filterwarnings("ignore::favorkit.NumericalWarning")  # trig rows
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("estimator", maps.names("attention"))
@pytest.mark.parametrize("n_heads", [1, 4])
@pytest.mark.parametrize("blocks", ["default", "small"])
def test_no_future_leak(dtype, estimator, n_heads, blocks, request):
    """Changing keys or values at positions >= t leaves outputs before t unchanged.

    t = 101 lies inside a chunk (default 32, small 16) and, with small blocks, inside a
    block: rows t' < t of that chunk share its reference with the changed keys.
    """
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    L, d, t = 200, 16, 101
    Q, K, V = _qkv((n_heads, L), d=d, seed=5, dtype=dtype)
    att = FavorAttention(32, estimator=estimator, causal=True, random_state=0).fit(Q)
    base = att.attend(Q, K, V)
    for K2, V2 in _future_changes(att, K, V, t):
        out = att.attend(Q, K2, V2)
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        assert_allclose(out[..., :t, :], base[..., :t, :], rtol=rtol, atol=rtol)
        # ... and the change is visible from t on (the test would be vacuous otherwise).
        assert np.abs(out[..., t:, :] - base[..., t:, :]).max() > 1e-3


@pytest.mark.filterwarnings("ignore::favorkit.NumericalWarning")  # trig rows
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [101, 96, 80])
@pytest.mark.parametrize("path", ["fast", "mixed", "slow"])
@pytest.mark.parametrize("estimator", ["positive", "hyperbolic", "trig", "optimal"])
@pytest.mark.parametrize("blocks", ["default", "small"])
def test_causal_outputs_before_t_are_bitwise_unchanged(dtype, t, path, estimator, blocks, request):
    """Changing a future key leaves every earlier output unchanged, *exactly*.

    t = 101 lies inside a chunk (32, or 16 with small blocks), t = 96 on a chunk boundary,
    t = 80 on a block boundary with small blocks (40 rows). ``path`` sets the causal
    kernel's fast-path gap: the default (almost every row on the fast path), 0.3 (rows
    switch between the paths wherever a key raises the running maximum) or -1 (every row
    on the exact per-row path).
    """
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    gap = {"fast": None, "mixed": 0.3, "slow": -1.0}[path]
    # signed features' and exponential maps' causal kernels alike
    gaps = {} if gap is None else {"signed_gap": (gap, gap), "log_gap": (gap, gap)}
    with tuned(**gaps):
        Q, K, V = _qkv((2, 200), d=16, seed=39, dtype=dtype)
        att = FavorAttention(32, estimator=estimator, causal=True, random_state=0).fit(Q)
        base = att.attend(Q, K, V)
        for K2, V2 in _future_changes(att, K, V, t):
            out = att.attend(Q, K2, V2)
            assert_array_equal(out[..., :t, :], base[..., :t, :])
            assert np.abs(out[..., t:, :] - base[..., t:, :]).max() > 1e-3


def test_the_leak_test_catches_the_official_stabilizer():
    """The same perturbation leaks through the official code's key stabilizer.

    A numpy mirror of ``nonnegative_softmax_kernel_feature_creator`` (the official Performer
    code, google-research ``performer/fast_attention/jax/fast_attention.py``): key
    features ``exp(z - |k̃|²/2 - max(z) over features and all positions) + eps``,
    eps = 1e-6. Scaling the
    keys from position t on changes that max, and through eps every earlier output
    (a causal leak shared by the official Performer code and performer-pytorch) -- so the
    test above would fail for it.
    """
    L, d, t = 64, 16, 40
    Q, K, V = _qkv((L,), d=d, seed=24)
    att = FavorAttention(64, causal=True, random_state=0).fit(Q)
    W = att.projection_ * np.sqrt(att.scale_)

    def official(K):
        zq = Q @ W.T
        fq = np.exp(zq - zq.max(axis=1, keepdims=True)) + 1e-6
        zk = K @ W.T  # data_dash; its max over features *and positions* is subtracted
        diag = att.scale_ * (K**2).sum(axis=1, keepdims=True) / 2
        fk = np.exp(zk - diag - zk.max()) + 1e-6
        return naive.linear_attention_dense(fq, fk, V, causal=True)

    K2 = K.copy()
    K2[t:] *= 8
    assert np.abs(official(K2)[:t] - official(K)[:t]).max() > 1e-2
    assert_allclose(att.attend(Q, K2, V)[:t], att.attend(Q, K, V)[:t], rtol=1e-12)


def test_no_future_leak_under_extreme_dynamic_range(small_blocks):
    """A tiny early key followed by a dominant one: the early rows must still see their own."""
    Q, K, V = _qkv((64,), d=16, seed=6)
    att = FavorAttention(16, causal=True, random_state=0).fit(Q)
    K = K.copy()
    K[:20] *= 50  # huge norms: s_j ~ -|k̃|²/2 ~ -5000, far below any normal key
    base = att.attend(Q, K, V)
    K2 = K.copy()
    K2[20:] /= 50
    out = att.attend(Q, K2, V)
    assert_allclose(out[:20], base[:20], rtol=1e-12)
    fq = naive.favor_features(Q[:20], att.projection_, att.scale_)
    # Exact key features are ~e^-5000 and differ by e^±1000 between keys (far outside
    # float64): the reference works in log space, row by row.
    log_fk = (
        np.sqrt(att.scale_) * K[:20] @ att.projection_.T
        - att.scale_ * (K[:20] ** 2).sum(1, keepdims=True) / 2
    )
    assert log_fk.max() < -700
    log_a = np.log(fq)[:, None, :] + log_fk[None, :, :]  # (t, j, i)
    top = log_a.max(axis=2, keepdims=True)
    log_a = (top[..., 0] + np.log(np.exp(log_a - top).sum(axis=2))).copy()
    log_a[np.triu_indices(20, 1)] = -np.inf
    weights = np.exp(log_a - log_a.max(axis=1, keepdims=True))
    want = weights @ V[:20] / weights.sum(axis=1, keepdims=True)
    assert _rel(out[:20], want) < 1e-9
    # The diagnostic matrix uses the same causal references: its rows agree too.
    assert _rel(att.attention_matrix(Q, K)[:20] @ V, want) < 1e-9


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_masking_equals_truncation(causal, dtype, small_blocks):
    L, keep = 130, 97
    Q, K, V = _qkv((2, 3, L), d=8, seed=7, dtype=dtype)
    mask = np.zeros((2, L), dtype=bool)  # (B, L_k), broadcast over the 3 heads
    mask[:, keep:] = True
    att = FavorAttention(32, random_state=0).fit(Q)
    masked = att.attend(Q, K, V, causal=causal, key_padding_mask=mask)
    Kt, Vt = K[..., :keep, :], V[..., :keep, :]
    if causal:
        truncated = att.attend(Q[..., :keep, :], Kt, Vt, causal=True)
        got = masked[..., :keep, :]
    else:
        truncated = att.attend(Q, Kt, Vt)
        got = masked
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert_allclose(got, truncated, rtol=tol, atol=tol)
    exact = softmax_attention(Q, K, V, causal=causal, key_padding_mask=mask)
    exact_t = softmax_attention(Q[..., : keep if causal else L, :], Kt, Vt, causal=causal)
    assert_allclose(exact[..., : keep if causal else L, :], exact_t, rtol=tol, atol=tol)


def test_masking_in_the_middle_matches_dense():
    Q, K, V = _qkv((90,), d=8, seed=8)
    mask = np.random.default_rng(0).random(90) < 0.3
    att = FavorAttention(32, random_state=0).fit(Q)
    fq = naive.favor_features(Q, att.projection_, att.scale_)
    fk = naive.favor_features(K, att.projection_, att.scale_)
    for causal in (False, True):
        out = att.attend(Q, K, V, causal=causal, key_padding_mask=mask)
        want = naive.linear_attention_dense(fq, fk, V, causal=causal, mask=mask)
        seen = ~np.isnan(want).any(axis=1)
        assert _rel(out[seen], want[seen]) < 1e-10
        assert np.all(out[~seen] == 0)  # no visible key: zero row, as softmax_attention
        assert_array_equal(
            softmax_attention(Q, K, V, causal=causal, key_padding_mask=mask)[~seen], 0
        )


@pytest.mark.parametrize("activation", [None, "relu", "elu", "exp", "abs"])
@pytest.mark.parametrize("causal", [False, True])
def test_positive_features_stay_in_the_range_of_V(activation, causal):
    """The softmax estimator (no activation) and every positive activation."""
    Q, K, V = _qkv((3, 80), d=8, seed=9)
    Q, K = 2 * Q, 2 * K
    att = FavorAttention(16, activation=activation, causal=causal, random_state=0).fit(Q)
    out = att.attend(Q, K, V)
    for h in range(3):
        for t in range(80):
            seen = V[h, : t + 1] if causal else V[h]
            assert np.all(out[h, t] >= seen.min(axis=0) - 1e-12)
            assert np.all(out[h, t] <= seen.max(axis=0) + 1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_heads_equal_a_loop_over_heads(causal, small_blocks):
    Q, K, V = _qkv((2, 3, 70), d=8, dv=5, seed=10, dtype=np.float32)
    att = FavorAttention(16, causal=causal, random_state=0).fit(Q)
    out = att.attend(Q, K, V)
    assert out.shape == (2, 3, 70, 5) and out.dtype == np.float32
    for b in range(2):
        for h in range(3):
            # Every sequence goes through the same blocks in the same order: bit-identical.
            assert_array_equal(out[b, h], att.attend(Q[b, h], K[b, h], V[b, h]))
    three = att.attend(Q[0], K[0], V[0])
    assert out.shape[:-2] == (2, 3) and three.shape == (3, 70, 5)


def test_cross_attention_shapes_and_dtypes():
    rng = np.random.default_rng(11)
    Q = rng.normal(size=(2, 30, 8)).astype(np.float32)
    K = rng.normal(size=(2, 50, 8)).astype(np.float32)
    V = rng.normal(size=(2, 50, 3)).astype(np.float32)
    out = favor_attention(Q, K, V, n_components=16, random_state=0)
    assert out.shape == (2, 30, 3) and out.dtype == np.float32
    assert favor_attention(Q, K, V.astype(np.float64), random_state=0).dtype == np.float64
    assert favor_attention(Q, K, (V * 10).astype(int), random_state=0).dtype == np.float64
    exact = softmax_attention(Q, K, V)
    assert exact.shape == (2, 30, 3) and exact.dtype == np.float32


@pytest.mark.parametrize("causal", [False, True])
def test_bit_identical_for_any_thread_count(causal, small_blocks, restore_numba_threads):
    Q, K, V = _qkv((300,), d=8, seed=12, dtype=np.float32)
    att = FavorAttention(16, causal=causal, random_state=0).fit(Q)
    numba.set_num_threads(1)
    one = att.attend(Q, K, V)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert_array_equal(att.attend(Q, K, V), one)


# --- against exact attention (statistics with fixed seeds) ----------------------------------


def _mse_vs_exact(m, projection, estimator, seeds, L=64, d=16):
    """Output MSE against exact attention, one value per seed (fresh data and features).

    Queries and keys are N(0, 0.25 I): |q̃ + k̃|² ~ 2, where the estimators are accurate
    enough for the output error to scale like their variance (Performer Lemma 2 / Eq. 8; at
    N(0, I) the relative MSE e^{|q̃+k̃|²}/m ~ 3000/m saturates the convex combination
    instead).
    """
    errors = []
    for seed in seeds:
        Q, K, V = _qkv((L,), d=d, seed=100 + seed)
        Q, K = Q / 2, K / 2
        exact = softmax_attention(Q, K, V)
        att = FavorAttention(m, estimator=estimator, projection=projection, random_state=seed)
        errors.append(np.mean((att.fit(Q).attend(Q, K, V) - exact) ** 2))
    return np.array(errors)


def _paired_z(worse, better):
    """z-score of mean(worse - better) > 0 over paired seeds (same data, own features)."""
    diff = worse - better
    return diff.mean() / (diff.std(ddof=1) / np.sqrt(diff.size))


# One-sided z at the 0.1 % level: a pass is not luck. The seed counts below were chosen so
# that the expected z is ~5 (measured effect sizes), so a pass is not fragile either.
Z_CRIT = 3.09


def test_error_falls_as_m_grows():
    seeds = range(24)
    mse = {m: _mse_vs_exact(m, "orthogonal", "positive", seeds) for m in (8, 32, 128)}
    assert _paired_z(mse[8], mse[32]) > Z_CRIT
    assert _paired_z(mse[32], mse[128]) > Z_CRIT
    # Unbiased features: output MSE ~ variance / m, so 4x the features gives ~4x less error
    # (measured 2.6x and 3.0x here; a factor 2 either way of 4 is far outside the spread).
    assert 2 < mse[32].mean() / mse[128].mean() < 8


def test_orthogonal_below_iid_on_average():
    # Theorem 2: at m = d the orthogonal gain is ~10-20 % of the iid MSE, small against the
    # per-draw spread, hence many (cheap) seeds.
    seeds = range(400)
    iid = _mse_vs_exact(16, "iid", "positive", seeds, L=32)
    ort = _mse_vs_exact(16, "orthogonal", "positive", seeds, L=32)
    assert _paired_z(iid, ort) > Z_CRIT


def test_hyperbolic_below_positive_at_equal_projections():
    # Lemma 2: MSE_hyp = (1 - e^{-|z|²})/2 * MSE_+ with the same m projections.
    seeds = range(40)
    pos = _mse_vs_exact(16, "orthogonal", "positive", seeds)
    hyp = _mse_vs_exact(16, "orthogonal", "hyperbolic", seeds)
    assert _paired_z(pos, hyp) > Z_CRIT


# --- softmax_attention ----------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_attention_matches_definition(causal, dtype):
    with tuned(exact_block_elems=700):  # many row blocks
        _softmax_attention_matches_definition(causal, dtype)


def _softmax_attention_matches_definition(causal, dtype):
    Q, K, V = _qkv((2, 60), d=8, dv=3, seed=13, dtype=dtype)
    mask = np.zeros(60, dtype=bool)
    mask[[5, 40]] = True
    out = softmax_attention(Q, K, V, causal=causal, scale=0.3, key_padding_mask=mask)
    assert out.dtype == dtype
    for b in range(2):
        want = naive.softmax_attention_dense(Q[b], K[b], V[b], causal, 0.3, mask)
        assert_allclose(out[b], want, rtol=REL[dtype], atol=REL[dtype])


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_rows_are_those_of_the_whole_output(causal, monkeypatch):
    # Blocks of 3 rows, and one sequence's float64 copies at a time (a group per sequence).
    monkeypatch.setattr(exact_module, "_ROWS_BLOCK", 3)
    monkeypatch.setattr(exact_module, "_CONVERT_BYTES", 1)
    Q, K, V = _qkv((3, 2, 40), d=8, dv=3, seed=12)
    mask = np.zeros((3, 40), dtype=bool)
    mask[0, [0, 7]] = True
    mask[2, :] = True  # every key padded: the rows see none and get 0
    want = softmax_attention(Q, K, V, causal=causal, scale=0.3, key_padding_mask=mask)
    Qf, Kf, Vf, flat_mask, _, _ = prepare(Q, K, V, mask, causal)
    rng = np.random.default_rng(0)
    flat = np.sort(rng.choice(6 * 40, size=50, replace=False))
    seqs, rows = np.divmod(flat, 40)
    got = exact_module.softmax_attention_rows(Qf, Kf, Vf, flat_mask, causal, 0.3, seqs, rows)
    assert_allclose(got, want.reshape(6, 40, 3)[seqs, rows], rtol=1e-12, atol=1e-14)
    assert np.all(got[seqs >= 4] == 0)


def test_softmax_attention_is_stable_for_large_logits():
    Q, K, V = _qkv((40,), d=8, seed=14)
    out = softmax_attention(100 * Q, 100 * K, V)
    assert np.all(np.isfinite(out))
    assert_allclose(out, naive.softmax_attention_dense(100 * Q, 100 * K, V), rtol=1e-10)


# --- the estimator --------------------------------------------------------------------------


def test_fit_needs_only_d_and_never_redraws_by_itself():
    Q, K, V = _qkv((2, 20), d=6, seed=15)
    att = FavorAttention(12, random_state=0).fit(np.zeros((1, 6)))
    assert att.projection_.shape == (12, 6) and att.n_features_in_ == 6
    W = att.projection_.copy()
    first = att.attend(Q, K, V)
    assert_array_equal(att.attend(Q, K, V), first)
    assert_array_equal(att.projection_, W)
    assert_array_equal(att.fit(Q).projection_, W)  # same random_state, same draw
    att.redraw()
    assert not np.array_equal(att.projection_, W)
    again = FavorAttention(12, random_state=0).fit(Q).redraw()
    assert_array_equal(again.projection_, att.projection_)  # the stream is reproducible


def test_scale_means_the_same_as_in_exact_attention():
    Q, K, V = _qkv((50,), d=8, seed=16)
    Q, K = Q / 2, K / 2
    for scale in (None, 0.05, 0.5):
        att = FavorAttention(4096, scale=scale, random_state=0).fit(Q)
        exact = softmax_attention(Q, K, V, scale=scale)
        # |q̃ + k̃|² <= ~2 here, so the kernel's relative MSE (e^{|q̃+k̃|²} - 1)/m is
        # <= ~2e-3 and output errors are a few 1e-2 at most; a wrong scale (say d^-1/4
        # on only one side) would be off by O(1).
        assert np.abs(att.attend(Q, K, V) - exact).max() < 0.1
        fq = naive.favor_features(Q, att.projection_, att.scale_)
        fk = naive.favor_features(K, att.projection_, att.scale_)
        assert_allclose(att.attend(Q, K, V), naive.linear_attention_dense(fq, fk, V), rtol=1e-9)


def test_transform_is_self_attention_and_fits_in_a_pipeline():
    X = np.random.default_rng(17).normal(size=(40, 5))
    att = FavorAttention(16, random_state=0)
    pipe = make_pipeline(StandardScaler(), att).fit(X)
    Xs = StandardScaler().fit_transform(X)
    assert_allclose(pipe.transform(X), att.attend(Xs, Xs, Xs))
    X3 = np.random.default_rng(18).normal(size=(2, 40, 5))
    assert_allclose(att.transform(X3), att.attend(X3, X3, X3))
    # Output column k averages column k of V = X: the names carry over.
    assert list(pipe.get_feature_names_out(["a", "b", "c", "d", "e"])) == list("abcde")


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matrix(causal):
    Q, K, V = _qkv((2, 30), d=8, seed=19)
    mask = np.zeros((2, 30), dtype=bool)
    mask[1, 25:] = True
    att = FavorAttention(32, causal=causal, random_state=0).fit(Q)
    A = att.attention_matrix(Q, K, key_padding_mask=mask)
    assert A.shape == (2, 30, 30)
    assert_allclose(A.sum(axis=-1), 1.0)
    assert np.all(A >= 0) and np.all(A[1, :, 25:] == 0)
    if causal:
        assert np.all(np.triu(A, 1) == 0)
    assert_allclose(A @ V, att.attend(Q, K, V, key_padding_mask=mask), rtol=1e-10)


def test_attention_matrix_trig_reports_and_all_padded():
    Q, K, _ = _qkv((60,), d=8, seed=3)
    att = FavorAttention(4, estimator="trig", random_state=0).fit(Q)
    with pytest.warns(NumericalWarning, match="normalizer that was not positive and finite"):
        A = att.attention_matrix(2 * Q, 2 * K)
    assert np.all((A.sum(axis=1) == 0) | np.isclose(A.sum(axis=1), 1))
    assert np.all(att.attention_matrix(Q, K, key_padding_mask=np.ones(60, bool)) == 0)


@parametrize_with_checks(
    [FavorAttention(8, random_state=0)],
    expected_failed_checks=lambda est: {
        "check_methods_subset_invariance": "self-attention mixes rows by design",
    },
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# --- errors ---------------------------------------------------------------------------------


def _good(L=10, d=4):
    return _qkv((L,), d=d, seed=20)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda Q, K, V: (Q[:, :3], K, V), "same last dimension d"),
        (lambda Q, K, V: (Q, K, V[:7]), "same length L_k"),
        (lambda Q, K, V: (Q[None], K, V), "same batch and head axes"),
        (lambda Q, K, V: (Q[0], K, V), "at least 2 dimensions"),
        (lambda Q, K, V: (Q.astype(complex), K, V), "real numeric array"),
        (lambda Q, K, V: (Q[:0], K, V), "Empty input"),
    ],
)
@pytest.mark.parametrize("func", [favor_attention, softmax_attention])
def test_bad_shapes(change, match, func):
    with pytest.raises(ValueError, match=match):
        func(*change(*_good()))


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("func", [favor_attention, softmax_attention])
def test_nan_or_inf(which, bad, causal, func):
    arrays = list(_good())
    arrays[which][7, 1] = bad
    with pytest.raises(ValueError, match=f"{'QKV'[which]} contains NaN or inf"):
        func(*arrays, causal=causal)


def test_bad_masks():
    Q, K, V = _qkv((2, 3, 10), d=4, seed=21)
    with pytest.raises(ValueError, match="key_padding_mask has shape"):
        favor_attention(Q, K, V, key_padding_mask=np.zeros((2, 9), bool))
    with pytest.raises(ValueError, match="key_padding_mask has shape"):
        favor_attention(Q, K, V, key_padding_mask=np.zeros((3, 10), bool))
    with pytest.raises(ValueError, match="must be a boolean array"):
        softmax_attention(Q, K, V, key_padding_mask=np.zeros((2, 10)))


def test_bad_parameters():
    Q, K, V = _good()
    with pytest.raises(ValueError, match="needs as many queries as keys"):
        favor_attention(Q[:5], K, V, causal=True)
    for func in (favor_attention, softmax_attention):
        name = func.__name__
        with pytest.raises(ValueError, match=rf"'scale' parameter of {name} must be a float"):
            func(Q, K, V, scale=-1.0)
        with pytest.raises(ValueError, match=rf"'causal' parameter of {name} must be an instance"):
            func(Q, K, V, causal="no")  # truthy: it ran causal attention
    with pytest.raises(ValueError, match="'scale' parameter .* Got inf instead"):
        favor_attention(Q, K, V, scale=np.inf)
    with pytest.raises(ValueError, match="'kernel' parameter of favor_attention must be a str"):
        favor_attention(Q, K, V, kernel="gelu")
    with pytest.raises(ValueError, match="'estimator' parameter of favor_attention must be a str"):
        favor_attention(Q, K, V, estimator="cos")
    with pytest.raises(ValueError, match="'n_components' parameter of favor_attention must be an"):
        favor_attention(Q, K, V, n_components=0)
    with pytest.raises(ValueError, match="only for deterministic activations"):
        favor_attention(Q, K, V, projection=None)
    with pytest.raises(ValueError, match="only for deterministic activations"):
        FavorAttention(projection=None).fit(Q)
    with pytest.raises(ValueError, match="same shape"):
        favor_attention(Q, K, V, activation=lambda z: z[:, :1])


def test_the_function_and_the_estimator_reject_alike():
    """favor_attention accepted a negative epsilon, which FavorAttention rejects."""
    Q, K, V = _good()
    for bad in ({"activation_epsilon": -1}, {"causal": "no"}, {"n_components": 0.5}):
        with pytest.raises(ValueError) as by_function:
            favor_attention(Q, K, V, **bad)
        with pytest.raises(ValueError) as by_estimator:
            FavorAttention(**bad).fit(Q)
        function_message = str(by_function.value)
        assert function_message == str(by_estimator.value).replace(
            "of FavorAttention", "of favor_attention"
        )
    att = FavorAttention(4, random_state=0).fit(Q)
    with pytest.raises(ValueError, match="'causal' parameter of FavorAttention.attend"):
        att.attend(Q, K, V, causal="no")


def test_fit_takes_the_batched_lists_that_attend_takes():
    X = np.random.default_rng(23).normal(size=(2, 10, 4)).tolist()
    att = FavorAttention(8, random_state=0).fit(X)
    assert att.n_features_in_ == 4
    assert att.attend(X, X, X).shape == (2, 10, 4)
    assert att.transform(X).shape == (2, 10, 4)


def test_a_projection_of_the_wrong_shape_names_what_is_wrong():
    Q, K, V = _qkv((6,), d=5, seed=24)
    with pytest.raises(ValueError, match=r"\(n_components, d\) = \(5, 5\): 4 columns, not d = 5"):
        favor_attention(Q, K, V, projection=np.ones((5, 4)))


def test_overflow_errors():
    Q, K, V = _good()
    big = np.full(Q.shape, 3e38, dtype=np.float32)  # finite, but W·x is not
    for causal in (False, True):
        for big_q, big_k in ((big, K), (Q, big)):
            with pytest.raises(ValueError, match="overflow float32"):
                favor_attention(
                    big_q.astype(np.float32),
                    big_k.astype(np.float32),
                    V.astype(np.float32),
                    causal=causal,
                    random_state=0,
                )
    with pytest.raises(ValueError, match="squared norm overflows float64"):
        favor_attention(Q, K * 1e160, V)
    with pytest.raises(ValueError, match="gave non-finite features"):
        favor_attention(Q * 1e3, K * 1e3, V, activation="exp")


def test_estimator_dimension_errors():
    att = FavorAttention(8, random_state=0).fit(np.zeros((2, 5, 4)))
    assert att.n_features_in_ == 4
    Q, K, V = _qkv((5,), d=3, seed=22)
    with pytest.raises(ValueError, match="fitted with d=4"):
        att.attend(Q, K, V)
    with pytest.raises(ValueError, match="fitted with d=4"):
        att.attention_matrix(Q, K)
    with pytest.raises(ValueError, match="is expecting 4 features"):
        att.transform(np.zeros((2, 5, 3)))
