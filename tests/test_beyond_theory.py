"""Closed forms for FAVOR++, SADERF and simplex features (favorkit._beyond_theory): GERF
variance, A*, coupled MSE, diagnostics.

FAVOR++/GERF: Likhosherstov et al. 2022, "Chefs' Random Tables"; simplex coupling:
Reid et al. 2023, "Simplex Random Features". The tabulated values (A* and GERF
log-variances; exact relative MSE of iid, orthogonal and simplex couplings) are reference
values (an independent computation), not numbers printed in those papers, and are compared
at their printed precision (half a unit in the last printed digit). Monte Carlo checks use
fixed seeds and z-scores whose standard errors come from the repeats.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats
from scipy.optimize import minimize_scalar

from favorkit import PositiveRandomFeatures, maps, sampling, theory
from favorkit.theory import (
    ExpectedError,
    coupled_relative_mse,
    expected_error,
    features_needed,
    gerf_relative_variance,
    log_sphere_mgf,
    optimal_gerf_a,
    pair_covariance,
)


def half_ulp(printed):
    """Half a unit in the last digit of a number printed with 4 significant digits."""
    return 0.5 * 10.0 ** (np.floor(np.log10(abs(printed))) - 3)


# ------------------------------------------------------------------ GERF variance and A*

# Reference values (an independent computation): d, z, A*, log relVar PosRF, log relVar OPRF
# (printed to 4 / 2 decimals)
TABLE_23 = [
    (16, 4, -0.0976, 3.98, 2.85),
    (16, 16, -0.3202, 16.00, 7.52),
    (16, 64, -1.1019, 64.00, 15.25),
    (64, 4, -0.0284, 3.98, 3.57),
    (64, 16, -0.0976, 16.00, 11.61),
    (64, 36, -0.1955, 36.00, 20.89),
    (64, 100, -0.4724, 100.00, 38.78),
]


@pytest.mark.parametrize("d, z, a_star, log_pos, log_oprf", TABLE_23)
def test_section_2_3_table(d, z, a_star, log_pos, log_oprf):
    a = optimal_gerf_a(z, d)
    assert abs(a - a_star) <= 0.5e-4
    assert abs(np.log(gerf_relative_variance(z, d)) - log_pos) <= 0.5e-2
    assert abs(np.log(gerf_relative_variance(z, d, a)) - log_oprf) <= 0.5e-2


@pytest.mark.parametrize("d", [1, 8, 64])
@pytest.mark.parametrize("phi", [0.0, 0.3, 4.0, 100.0])
def test_optimal_a_minimises_the_relative_variance(d, phi):
    """The closed-form A* (Likhosherstov et al. 2022) against a bounded numerical
    minimisation of log(1 + relVar(A))."""
    numeric = minimize_scalar(
        lambda a: np.log1p(gerf_relative_variance(phi, d, a)),
        bounds=(-50, 0.124),
        method="bounded",
        options={"xatol": 1e-12},
    ).x
    assert_allclose(optimal_gerf_a(phi, d), numeric, atol=1e-6)


def test_optimal_a_is_the_one_features_fits():
    """One concept in one place: the transformer fits A* with this very function."""
    assert maps.optimal_gerf_a is optimal_gerf_a
    assert_allclose(optimal_gerf_a(np.array([0.0, 16.0]), 64), [0.0, -0.0976], atol=5e-5)


def test_gerf_variance_reduces_to_lemma_2():
    x, y = np.full(8, 0.1), np.linspace(-0.2, 0.3, 8)
    z = np.sum((x + y) ** 2)
    assert_allclose(
        gerf_relative_variance(z, 8) / 16, theory.mse_positive(x, y, 16) / np.exp(2 * x @ y)
    )


def test_gerf_variance_monte_carlo():
    """One-projection relVar by simulation at a light-tailed point (A < 0, z = 1)."""
    d, z = 6, 1.0
    a = optimal_gerf_a(z, d) - 0.05
    v = np.zeros(d)
    v[0] = np.sqrt(z)
    w = np.random.default_rng(7).standard_normal((400_000, d))
    # f1 f2 / SM = D² exp(2A|ω|² + B ω·(u+v) - z/2)   (GERF, Likhosherstov et al. 2022,
    # with C = -1/2)
    t = (1 - 4 * a) ** (d / 2) * np.exp(2 * a * (w**2).sum(1) + np.sqrt(1 - 4 * a) * w @ v - z / 2)
    sq = (t - 1) ** 2
    se = sq.std(ddof=1) / np.sqrt(sq.size)
    assert abs(t.mean() - 1) / (t.std(ddof=1) / np.sqrt(t.size)) < 4
    assert abs(sq.mean() - gerf_relative_variance(z, d, a)) / se < 4


def test_gerf_rejects_infinite_variance():
    with pytest.raises(ValueError, match="must be < 1/8"):
        gerf_relative_variance(1.0, 4, 0.125)
    with pytest.raises(ValueError, match=r"z = \|u \+ v\|² must be finite and >= 0"):
        gerf_relative_variance(-1.0, 4)
    with pytest.raises(ValueError, match="d must be a positive integer"):
        optimal_gerf_a(1.0, 0)


# ------------------------------------------------------------------ Ω_d and Cov(c)


@pytest.mark.parametrize("s", [0.0, 1e-3, 0.7, 1.0, 5.0, 300.0])
def test_log_sphere_mgf_known_dimensions(s):
    assert_allclose(log_sphere_mgf(s, 1), np.log(np.cosh(s)), rtol=1e-12, atol=1e-15)
    expected = np.log(np.sinh(s) / s) if s > 0 else 0.0
    assert_allclose(log_sphere_mgf(s, 3), expected, rtol=1e-12, atol=1e-15)


def test_log_sphere_mgf_monte_carlo():
    d, s = 10, 3.0
    u = np.random.default_rng(3).standard_normal((200_000, d))
    u1 = u[:, 0] / np.linalg.norm(u, axis=1)
    e = np.exp(s * u1)
    assert abs(e.mean() - np.exp(log_sphere_mgf(s, d))) / (e.std(ddof=1) / np.sqrt(e.size)) < 4


@pytest.mark.parametrize("d", [4, 8, 16, 64])
@pytest.mark.parametrize("coupling", ["orthogonal", "simplex"])
def test_covariance_series_matches_direct_quadrature(d, coupling):
    """The A-free series against the direct χ_d × χ_d integral over the two row norms, with
    the sphere MGF Ω_d(s) = E exp(s u_1), u uniform on S^{d-1}, through ive.

    The Gauss–Laguerre rule in t = r²/2 is exact-order for c = 0 but sees sqrt(t_i t_j) for
    c != 0, so it is only ~1e-6 accurate at small d: the tolerance is the quadrature's.
    """
    z = np.array([0.05, 0.25, 1.0, 4.0])
    series = pair_covariance(z, d, coupling)
    quad = pair_covariance(z, d, coupling, method="quadrature")
    assert_allclose(series, quad, rtol=1e-8 if coupling == "orthogonal" else 1e-5)


def test_covariance_limits():
    assert pair_covariance(0.0, 16) == 0.0
    assert np.all(pair_covariance([0.5, 3.0], 16, "iid") == 0.0)
    # Cov >= -1 always, -> -1 as z grows (a pair can at most cancel its own mean)
    assert -1 <= pair_covariance(200.0, 8, "simplex") < -0.99
    # c = 0 has a closed form: e^{-z/2} 1F1(-d/2; d/2; -z/2) - 1 (Kummer), derived here
    from scipy.special import hyp1f1

    for d, z in [(4, 1.0), (16, 4.0), (64, 9.0)]:
        assert_allclose(
            pair_covariance(z, d), np.exp(-z / 2) * hyp1f1(-d / 2, d / 2, -z / 2) - 1, rtol=1e-10
        )


@pytest.mark.parametrize("coupling", ["orthogonal", "simplex"])
def test_covariance_monte_carlo(coupling):
    """Cov of two rows of one block, from favorkit's own samplers (z = 1, d = 8)."""
    d, z, n = 8, 1.0, 25_000
    v = np.full(d, np.sqrt(z / d))
    sampler = getattr(sampling, coupling)
    rng = np.random.default_rng(11)
    W = np.stack([sampler(2, d, rng) for _ in range(n)])  # (n, 2, d)
    t = np.exp(W @ v - z / 2)  # one-projection estimates / SM, A = 0
    prod = (t[:, 0] - 1) * (t[:, 1] - 1)
    se = prod.std(ddof=1) / np.sqrt(n)
    assert abs(prod.mean() - pair_covariance(z, d, coupling)) / se < 4


# ------------------------------------------ reference values (an independent computation)

# d, z, PosRF iid, PosRF ORF, PosRF SimRF, OPRF iid, OPRF ORF, OPRF SimRF (m = d)
TABLE_45 = [
    (16, 0.25, 1.775e-2, 1.616e-2, 1.360e-3, 1.716e-2, 1.558e-2, 7.718e-4),
    (16, 1, 1.074e-1, 8.396e-2, 2.938e-2, 9.100e-2, 6.757e-2, 1.299e-2),
    (16, 4, 3.350, 3.090, 2.955, 1.077, 0.8169, 0.6818),
    (16, 16, 5.554e5, 5.554e5, 5.554e5, 115.6, 114.7, 114.7),
    (64, 0.25, 4.438e-3, 3.975e-3, 1.232e-4, 4.399e-3, 3.937e-3, 8.470e-5),
    (64, 1, 2.685e-2, 1.963e-2, 4.578e-3, 2.562e-2, 1.840e-2, 3.345e-3),
    (64, 4, 0.8375, 0.7359, 0.6847, 0.5529, 0.4514, 0.4002),
    (64, 16, 1.388e5, 1.388e5, 1.388e5, 1726, 1725, 1725),
]


@pytest.mark.parametrize("row", TABLE_45, ids=lambda r: f"d{r[0]}-z{r[1]}")
def test_section_4_5_table(row):
    d, z, *printed = row
    a = optimal_gerf_a(z, d)
    ours = [
        coupled_relative_mse(z, d, d, a=aa, coupling=c)
        for aa in (0.0, a)
        for c in ("iid", "orthogonal", "simplex")
    ]
    for value, ref in zip(ours, printed, strict=True):
        assert abs(value - ref) <= half_ulp(ref) * (1 + 1e-9), (value, ref)


def test_coupled_mse_block_structure():
    """m > d: independent blocks, the covariance term counts same-block pairs only."""
    d, z = 8, 0.7
    cov = pair_covariance(z, d)
    v1 = gerf_relative_variance(z, d)
    for m, pairs in [(5, 20), (8, 56), (12, 56 + 12), (24, 3 * 56)]:
        assert_allclose(coupled_relative_mse(z, d, m), v1 / m + pairs / m**2 * cov, rtol=1e-12)
    assert_allclose(coupled_relative_mse(z, d, 24, coupling="iid"), v1 / 24)
    # whole blocks: the same as one block averaged (relMSE ∝ 1/n_blocks)
    assert_allclose(coupled_relative_mse(z, d, 3 * d), coupled_relative_mse(z, d, d) / 3)


def test_coupled_mse_hyperbolic_iid_is_lemma_2():
    x, y = np.full(4, 0.2), np.array([0.1, -0.3, 0.2, 0.0])
    z = np.sum((x + y) ** 2)
    assert_allclose(
        coupled_relative_mse(z, 4, 10, coupling="iid", hyperbolic=True),
        theory.mse_hyperbolic(x, y, 10) / np.exp(2 * x @ y),
    )
    with pytest.raises(ValueError, match="hyperbolic estimator has A = 0"):
        coupled_relative_mse(z, 4, 10, a=-0.1, hyperbolic=True)


def test_coupled_mse_validation():
    with pytest.raises(ValueError, match="coupling must be one of"):
        coupled_relative_mse(1.0, 4, 4, coupling="qmc")
    with pytest.raises(ValueError, match="must be >= 1"):
        coupled_relative_mse(1.0, 4, 0)
    with pytest.raises(ValueError, match="integer number of projections"):
        coupled_relative_mse(1.0, 4, 2.5)
    with pytest.raises(ValueError, match="a pairwise cosine must lie in"):
        pair_covariance(1.0, 4, 1.5)
    with pytest.raises(ValueError, match='method must be "series" or "quadrature"'):
        pair_covariance(1.0, 4, method="grid")


# ------------------------------------------------------------------ expected_error

D = 8
N_GROUPS = 3000
ESTIMATORS = list(maps.names("exponential"))  # every positive map, new ones included
PROJECTIONS = ["iid", "orthogonal", "simplex"]
SAMPLERS = {
    "iid": sampling.gaussian,
    "orthogonal": sampling.orthogonal,
    "simplex": sampling.simplex,
}


def qk_data():
    """Queries and keys with uneven per-coordinate scales and z = |q + k|² around 0.3."""
    rng = np.random.default_rng(2026)
    s = np.exp(rng.normal(0, 0.4, D))
    return rng.normal(size=(12, D)) * 0.14 * s, rng.normal(size=(10, D)) * 0.14 / s + 0.03


def measured_group_errors(estimator, projection, m, seed):
    """Mean over pairs of (K̂/K - 1)² for N_GROUPS independent m-projection estimators.

    The groups are independent draws stacked into one user projection, so one
    ``PositiveRandomFeatures`` transform gives them all (A and Ψ depend on the data only).
    """
    Q, K = qk_data()
    rng = np.random.default_rng(seed)
    W = np.concatenate([SAMPLERS[projection](m, D, rng) for _ in range(N_GROUPS)])
    f = PositiveRandomFeatures(m * N_GROUPS, estimator=estimator, projection=W).fit(Q, keys=K)
    Fq, Fk = f.transform(Q, side="query"), f.transform(K, side="key")
    halves = len(maps.get(estimator).blocks)  # antithetic maps: [φ(ω), φ(-ω)]
    Fq = Fq.reshape(len(Q), halves, N_GROUPS, m)
    Fk = Fk.reshape(len(K), halves, N_GROUPS, m)
    # features carry 1/sqrt(total columns): a group's estimate is N_GROUPS × its partial sum
    est = N_GROUPS * np.einsum("ihgk,jhgk->gij", Fq, Fk)
    return ((est / np.exp(Q @ K.T) - 1) ** 2).mean(axis=(1, 2)), f


@pytest.mark.parametrize("m", [6, 12])  # a truncated block; one full block plus a partial one
@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_expected_error_matches_measured(estimator, projection, m):
    """Prediction vs measurement on the same Q, K: |z| < 4 and within a factor of 1.25."""
    Q, K = qk_data()
    seed = 100 * ESTIMATORS.index(estimator) + 10 * PROJECTIONS.index(projection) + m
    errs, f = measured_group_errors(estimator, projection, m, seed)
    pred = expected_error(Q, K, m, estimator=estimator, projection=projection)
    assert pred.gerf_a == f.gerf_a_
    assert_allclose(pred.query_scale, f.query_scale_)
    mean, se = errs.mean(), errs.std(ddof=1) / np.sqrt(errs.size)
    assert abs(mean - pred.mean) / se < 4, (mean, se, pred.mean)
    assert 1 / 1.25 < mean / pred.mean < 1.25
    # The check can fail: the iid prediction is rejected for the coupled projections.
    if projection != "iid":
        wrong = expected_error(Q, K, m, estimator=estimator, projection="iid").mean
        assert abs(mean - wrong) / se > 4


def test_expected_error_per_pair_and_summaries():
    Q, K = qk_data()
    err = expected_error(Q, K, 16, estimator="optimal", projection="simplex")
    assert isinstance(err, ExpectedError)
    z = ((Q[:, None] + K[None]) ** 2).sum(-1)  # softmax kernel, gamma = 1: u = q, v = k
    direct = coupled_relative_mse(z, D, 16, a=err.gerf_a, coupling="simplex")
    assert_allclose(err.per_pair, direct, rtol=1e-10)
    assert err.mean == pytest.approx(direct.mean(), rel=1e-10)
    assert err.median == pytest.approx(np.median(direct), rel=1e-10)
    assert err.max == pytest.approx(direct.max(), rel=1e-10)
    assert err.relative_mse(16) == pytest.approx(err.mean, rel=1e-12)
    assert err.mean_log1p_variance == pytest.approx(
        np.mean(np.log1p(gerf_relative_variance(z, D, err.gerf_a))), rel=1e-12
    )


def test_expected_error_gaussian_kernel_uses_the_scaled_inputs():
    Q, K = qk_data()
    g = expected_error(Q, K, 8, kernel="gaussian", gamma=0.5, estimator="optimal")
    s = expected_error(Q, K, 8, kernel="softmax", gamma=1.0, estimator="optimal")
    assert g.mean == pytest.approx(s.mean, rel=1e-12)  # u = sqrt(2 gamma) x in both
    f = PositiveRandomFeatures(8, kernel="gaussian", gamma=0.5, estimator="optimal").fit(Q, keys=K)
    assert g.gerf_a == f.gerf_a_


def test_expected_error_many_pairs_uses_an_accurate_spline():
    rng = np.random.default_rng(5)
    Q, K = rng.normal(size=(80, 16)) / 2, rng.normal(size=(90, 16)) / 2  # 7200 pairs
    for est in ("positive", "hyperbolic"):
        err = expected_error(Q, K, 20, estimator=est, projection="simplex")
        z = ((Q[:, None] + K[None]) ** 2).sum(-1)
        direct = coupled_relative_mse(z, 16, 20, coupling="simplex", hyperbolic=est == "hyperbolic")
        assert_allclose(err.per_pair, direct, rtol=1e-8)


def test_features_needed():
    Q, K = qk_data()
    for est in ESTIMATORS:
        for proj in PROJECTIONS:
            err = expected_error(Q, K, 1, estimator=est, projection=proj)
            for target in (0.3, 0.02, 1e-3):
                m = features_needed(Q, K, target, estimator=est, projection=proj)
                assert m == err.features_needed(target)
                assert err.relative_mse(m) <= target
                if m > 1:
                    assert err.relative_mse(m - 1) > target
    # simplex + optimal needs fewer features than FAVOR+ (orthogonal + positive)
    assert features_needed(Q, K, 1e-3, estimator="optimal", projection="simplex") < (
        features_needed(Q, K, 1e-3)
    )


def test_features_needed_is_confirmed_by_measurement():
    """At the predicted m the measured mean relative MSE meets the target (one-sided z)."""
    Q, K = qk_data()
    target = 0.02
    m = features_needed(Q, K, target, estimator="optimal", projection="simplex")
    errs, _ = measured_group_errors("optimal", "simplex", m, seed=77)
    z = (errs.mean() - target) / (errs.std(ddof=1) / np.sqrt(errs.size))
    assert z < stats.norm.isf(1e-4)


def test_expected_error_validation():
    Q, K = qk_data()
    with pytest.raises(ValueError, match="the couplings with a closed form"):
        expected_error(Q, K, 8, projection="qmc")
    with pytest.raises(ValueError, match="the couplings with a closed form"):
        expected_error(Q, K, 8, projection=np.ones((8, D)))
    with pytest.raises(ValueError, match="estimator must be one of"):
        expected_error(Q, K, 8, estimator="trig")
    with pytest.raises(ValueError, match='kernel must be "softmax" or "gaussian"'):
        expected_error(Q, K, 8, kernel="laplace")
    with pytest.raises(ValueError, match="gamma must be > 0"):
        expected_error(Q, K, 8, gamma=0.0)
    with pytest.raises(ValueError, match="same number of columns"):
        expected_error(Q, K[:, :3], 8)
    with pytest.raises(ValueError, match="must be finite"):
        expected_error(np.full((2, D), np.nan), K, 8)
    with pytest.raises(ValueError, match="target must be > 0"):
        features_needed(Q, K, 0.0)
