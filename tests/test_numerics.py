"""Hostile but finite input: every reproducer of a silent inf, NaN or zero row, as a test.

Attention with the positive estimators keeps every output row finite and inside the range
of the value rows it sees; the exact reference stays finite for finite logits of any size;
the transformers return finite features or raise an error that names the fix.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from favorkit import (
    FavorAttention,
    NumericalWarning,
    OrthogonalRFF,
    PositiveRandomFeatures,
    favor_attention,
    maps,
    softmax_attention,
)

POSITIVE = list(maps.names("exponential"))
EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


def _rows_of_norm(rng, n, d, norm):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * norm


def assert_in_visible_range(out, V, causal, n_terms):
    """Each output row inside [min, max] of the value rows it sees, per column, up to the
    rounding of a weighted average of ``n_terms`` products (n eps of the largest value)."""
    tol = n_terms * EPS[np.asarray(out).dtype.type]
    out = np.asarray(out, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    for t in range(out.shape[-2]):
        seen = V[..., : t + 1, :] if causal else V
        lo, hi = seen.min(axis=-2), seen.max(axis=-2)
        slack = tol * np.abs(seen).max(axis=-2)
        assert np.all(out[..., t, :] >= lo - slack), t
        assert np.all(out[..., t, :] <= hi + slack), t


def _no_warnings(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return func(*args, **kwargs)


# --- attention: the positive estimators ---------------------------------------------------


def test_a_subnormal_normalizer_is_divided_not_inverted():
    """A query against its own negative: q·k = -|q|²/sqrt(2) ~ -23 000; one key, so the
    output is that key's value. The row-wise stabilizer's normalizer was subnormal here and
    its reciprocal inf."""
    q = np.array([[0.6, 0.8]]) * 180
    out = _no_warnings(favor_attention, q, -q, np.array([[1.0, 2.0]]), random_state=0)
    assert_allclose(out, [[1.0, 2.0]], rtol=1e-14)


@pytest.mark.parametrize("sign", [1, -1])
def test_a_single_key_far_from_the_query_gives_its_value(sign):
    q = np.array([[0.6, 0.8]]) * 187
    for causal in (False, True):
        out = _no_warnings(
            favor_attention, q, sign * q, np.array([[1.0, 2.0]]), causal=causal, random_state=0
        )
        assert_allclose(out, [[1.0, 2.0]], rtol=1e-14)


@pytest.mark.parametrize("estimator", POSITIVE)
@pytest.mark.parametrize("causal", [False, True])
def test_rows_of_norm_100_stay_finite_and_in_range(estimator, causal):
    """L = 256, d = 16, m = 64, float64: FAVOR++ gave 19 of 256 non-finite rows, SADERF 11."""
    rng = np.random.default_rng(0)
    Q, K = _rows_of_norm(rng, 256, 16, 100), _rows_of_norm(rng, 256, 16, 100)
    V = rng.normal(size=(256, 16))
    att = FavorAttention(64, estimator=estimator, causal=causal, random_state=0).fit(Q, keys=K)
    out = _no_warnings(att.attend, Q, K, V)
    assert np.isfinite(out).all()
    assert_in_visible_range(out, V, causal, 256 + 128)


@pytest.mark.parametrize("estimator", POSITIVE)
def test_float32_features_that_underflow_against_each_other_give_no_zero_rows(estimator):
    """float32, d = 64, L = 1024, q, k ~ N(0, 8²), m = 256: FAVOR++ zeroed 75-370 rows."""
    rng = np.random.default_rng(1)
    Q, K = (8 * rng.normal(size=(2, 1024, 64))).astype(np.float32)
    V = rng.uniform(1, 2, size=(1024, 8)).astype(np.float32)  # a zero row is out of range
    out = _no_warnings(favor_attention, Q, K, V, estimator=estimator, random_state=0)
    assert np.all(np.abs(out).min(axis=1) > 0)
    assert_in_visible_range(out, V, False, 1024 + 512)


@pytest.mark.parametrize("estimator", POSITIVE)
def test_float32_causal_rows_stay_in_range(estimator):
    """float32 FAVOR++ causal rows fell outside the visible range by up to 5e-3 (of 1)."""
    rng = np.random.default_rng(2)
    Q, K = (_rows_of_norm(rng, 256, 16, 30) for _ in range(2))
    V = rng.uniform(0, 1, size=(256, 4))
    Q, K, V = (X.astype(np.float32) for X in (Q, K, V))
    att = FavorAttention(64, estimator=estimator, causal=True, random_state=0).fit(Q, keys=K)
    out = _no_warnings(att.attend, Q, K, V)
    assert_in_visible_range(out, V, True, 256 + 128)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("estimator", POSITIVE)
def test_logits_far_beyond_1e4_stay_finite_and_in_range(dtype, causal, estimator):
    """No logit bound: |scale q·k| up to 1e8 (the property tests draw up to 1e4)."""
    rng = np.random.default_rng(13)
    Q, K = (rng.normal(size=(2, 50, 6)) * [[[1e4]], [[1e4]]]).astype(dtype)
    V = rng.uniform(1, 2, size=(50, 3)).astype(dtype)
    att = FavorAttention(16, estimator=estimator, causal=causal, scale=1.0, random_state=0)
    out = _no_warnings(att.fit(Q, keys=K).attend, Q, K, V)
    assert np.isfinite(out).all()
    assert_in_visible_range(out, V, causal, 50 + 32)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("estimator", POSITIVE)
def test_float32_values_near_the_largest_float32(causal, estimator):
    """V *= 1e38 overflowed the float32 state: 118 non-finite outputs bidirectional."""
    rng = np.random.default_rng(3)
    Q, K, V = (rng.normal(scale=0.5, size=(3, 40, 8)).astype(np.float32) for _ in range(3))
    V[..., :4] *= np.float32(1e38)
    att = FavorAttention(32, estimator=estimator, causal=causal, random_state=0).fit(Q, keys=K)
    out = _no_warnings(att.attend, Q, K, V)
    assert np.isfinite(out).all()
    assert_in_visible_range(out, V, causal, 40 + 64)
    # Power-of-two scaling is exact: small columns beside huge ones keep their precision.
    # (The GEMMs differ in width, so compare to the rounding of a weighted average.)
    small = att.attend(Q, K, V[..., 4:])
    slack = (40 + 64) * EPS[np.float32] * np.abs(V[..., 4:]).max()
    assert np.abs(out[..., 4:] - small).max() <= slack


def test_float64_values_near_the_largest_float64():
    rng = np.random.default_rng(4)
    Q, K, V = (rng.normal(scale=0.5, size=(60, 8)) for _ in range(3))
    V *= 1e307
    for causal in (False, True):
        out = _no_warnings(favor_attention, Q, K, V, causal=causal, random_state=0)
        assert np.isfinite(out).all()
        assert_in_visible_range(out, V, causal, 60 + 512)


@pytest.mark.parametrize("scale", [1e154, 1e155, 1e200])
@pytest.mark.parametrize("causal", [False, True])
def test_exact_attention_with_logits_that_overflow(scale, causal):
    """Q, K * 1e154: logits of ~1e308 overflowed and gave zero rows (all rows at 1e155).
    At that size every row's softmax is one-hot at its largest logit."""
    rng = np.random.default_rng(5)
    Q, K, V = (rng.normal(size=(6, 4)) for _ in range(3))
    out = softmax_attention(Q * scale, K * scale, V, causal=causal)
    logits = Q @ K.T
    if causal:
        logits[np.triu_indices(6, 1)] = -np.inf
    assert_array_equal(out, V[logits.argmax(axis=1)])


def test_exact_attention_with_a_huge_scale_matches_the_unscaled_one():
    """scale = 1e300 with inputs 1e-150: the logits are ordinary; scaling inside is exact."""
    rng = np.random.default_rng(6)
    Q, K, V = (rng.normal(size=(5, 7, 4)) for _ in range(3))
    want = softmax_attention(Q, K, V, scale=0.5)
    got = softmax_attention(Q * 1e-150, K * 1e-150, V, scale=0.5e300)
    assert_allclose(got, want, rtol=1e-13)


# --- attention: signed features keep their guard, and it counts everything -------------------


def test_the_trig_guard_counts_non_finite_outputs_and_points_at_the_caller():
    rng = np.random.default_rng(7)
    Q, K, V = (rng.normal(scale=2.0, size=(64, 4)) for _ in range(3))
    with pytest.warns(NumericalWarning, match=r"(\d+) of 64 query rows") as record:
        out = favor_attention(Q, K, V, n_components=4, estimator="trig", random_state=0)
    assert record[0].filename == __file__
    n_bad = int(str(record[0].message).split(" of ")[0])
    zero_rows = np.all(out == 0, axis=1)
    assert np.isfinite(out).all() and zero_rows.sum() == n_bad > 0


def test_a_warning_inside_a_pipeline_points_at_the_caller():
    rng = np.random.default_rng(8)
    X = rng.normal(scale=2.0, size=(3, 64, 4))
    pipe = make_pipeline(FavorAttention(4, estimator="trig", random_state=0))
    with pytest.warns(NumericalWarning) as record:
        pipe.fit_transform(X)
    assert record[0].filename == __file__


# --- transformers -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_csr_rows_whose_norm_overflows_get_the_dense_error(dtype):
    X = np.random.default_rng(9).normal(size=(6, 5))
    prf = PositiveRandomFeatures(8, random_state=0).fit(X)
    huge = X.copy()
    huge[2] = 1e200 if dtype == np.float64 else 3e38
    if dtype == np.float32:  # |x|² = 4.5e77: finite in float64, every feature underflows
        match = "every feature below the smallest normal float32"
    else:
        match = "squared norm that overflows float64"
    for data in (huge.astype(dtype), sp.csr_matrix(huge.astype(dtype))):
        with pytest.raises(ValueError, match=match):
            prf.transform(data)


def test_float32_csr_norms_accumulate_in_float64():
    """Entries of 1e19 with gamma = 1e-38: u = x / 1e19 is ordinary; a float32 norm sum
    overflowed at these entries."""
    X = np.random.default_rng(10).normal(size=(6, 5)).astype(np.float32) * np.float32(1e19)
    prf = PositiveRandomFeatures(8, gamma=1e-38, random_state=0).fit(X)
    dense = prf.transform(X)
    assert np.isfinite(dense).all() and np.all(dense > 0)
    assert_allclose(prf.transform(sp.csr_matrix(X)), dense, rtol=1e-5)


@pytest.mark.parametrize(
    ("dtype", "gamma", "scale", "match"),
    [
        (np.float32, 1e77, 1.0, "makes the scaled projection overflow float32"),
        (np.float64, 1.0, 1e308, "projection W·x that overflows float64"),
        (np.float32, 1.0, 3e38, "projection W·x that overflows float32"),
    ],
)
@pytest.mark.parametrize("features", ["cossin", "cos"])
# scikit-learn's finiteness check sums X first; that sum overflows for entries this large.
@pytest.mark.filterwarnings("ignore:invalid value encountered in reduce:RuntimeWarning")
def test_orthogonal_rff_never_returns_nan(dtype, gamma, scale, match, features):
    X = np.random.default_rng(11).normal(size=(5, 4))
    rff = OrthogonalRFF(16, gamma=gamma, features=features, random_state=0).fit(X)
    Xs = (np.sign(X) * scale if scale > 1 else X).astype(dtype)
    with pytest.raises(ValueError, match=match):
        rff.transform(Xs)


def test_float32_huge_gamma_is_an_underflow_as_in_float64():
    """gamma = 1e77: every feature underflows; float32 said 'overflow' (its scaled
    projection overflows, the features do not)."""
    X = np.random.default_rng(12).normal(size=(5, 4))
    prf = PositiveRandomFeatures(8, gamma=1e77, random_state=0).fit(X)
    for dtype in (np.float64, np.float32):
        with pytest.raises(
            ValueError, match=f"5 of 5 rows .* below the smallest normal {dtype.__name__}"
        ):
            prf.transform(X.astype(dtype))


@pytest.mark.parametrize("estimator", ["positive", "hyperbolic"])
def test_float32_entries_of_1e19_do_not_blame_float64(estimator):
    X = np.full((3, 4), 1e19, dtype=np.float32)
    prf = PositiveRandomFeatures(8, estimator=estimator, random_state=0).fit(X)
    with pytest.raises(ValueError, match="every feature below the smallest normal float32"):
        prf.transform(X)


def test_a_row_whose_features_all_underflow_is_an_error_that_counts_rows_of_x():
    """Raw digits (|x|² ~ 1e3) with the softmax kernel: every feature of most rows is 0,
    and a model trained on them learns nothing. It is an error, not a warning."""
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(
        PositiveRandomFeatures(100, random_state=0), LogisticRegression(max_iter=100)
    )
    with pytest.raises(
        ValueError, match=r"\d+ of 1200 rows of X have every feature below.*StandardScaler"
    ):
        pipe.fit(X[:1200], y[:1200])


def test_gerf_parameters_from_huge_moments():
    """Energies near the largest float64: Ψ is scale-free, so finite moments whose sum
    overflows still give finite parameters; moments whose φ overflows are an error."""
    from favorkit.maps import MAPS, Moments

    def gerf_parameters(mean_x, mean_sq_x, mean_y, mean_sq_y, saderf):
        fmap = MAPS["saderf" if saderf else "optimal"]
        params = fmap.fit(
            Moments(mean_x, np.array(mean_sq_x)), Moments(mean_y, np.array(mean_sq_y))
        )
        return params.a, params.psi

    zero = np.zeros(2)
    a, psi = gerf_parameters(zero, [1e308, 1.0], zero, [1.0, 1e308], saderf=True)
    assert np.isfinite(a) and a < 0
    # ((E v² + ε) / (E u² + ε))^{1/4} with ε = 1e-12 of the mean energy: 1e-3 and 1e3.
    assert_allclose(psi, [1e-3, 1e3], rtol=1e-6)
    with pytest.raises(ValueError, match="statistics .* overflow float64"):
        gerf_parameters(zero, [1e308, 1e308], zero, [1e308, 1e308], saderf=True)
    with pytest.raises(ValueError, match="statistics .* overflow float64"):
        PositiveRandomFeatures(4, estimator="optimal").fit(np.full((3, 2), 1e200))
