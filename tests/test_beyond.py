"""FAVOR++ (optimal GERF), SADERF and simplex coupling: unbiasedness and gains.

FAVOR++: Likhosherstov et al. 2022, "Chefs' Random Tables"; SADERF: Likhosherstov et al.
2023, "Dense-Exponential Random Features"; simplex: Reid et al. 2023, "Simplex Random
Features".

Standard errors come from the exact single-feature variance of GERF
(Likhosherstov et al. 2022): relVar(A) = ((1-4A)²/(1-8A))^{d/2} exp(z/(1-8A)) - 1,
z = |u+v|², divided by m for iid rows. Orthogonal and simplex couplings only lower the
variance of positive/GERF estimators (Likhosherstov et al. 2022 for orthogonal OPRFs,
Reid et al. 2023 for simplex), so the z-scores are conservative there.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from favorkit import PositiveRandomFeatures, sampling
from favorkit.theory import optimal_gerf_a

D, M, N_GROUPS = 8, 8, 20000


def gerf_rel_var(a, z, d):
    return ((1 - 4 * a) ** 2 / (1 - 8 * a)) ** (d / 2) * np.exp(z / (1 - 8 * a)) - 1


def grouped(fmap, x, y, m, n_groups):
    """n_groups independent m-feature estimates of K(x, y) (see test_features.grouped_estimates)."""
    fx = fmap.transform(x[None], side="query")[0]
    fy = fmap.transform(y[None], side="key")[0]
    return (fx * fy).reshape(n_groups, m).sum(axis=1) * n_groups


SAMPLERS = {
    "iid": sampling.gaussian,
    "orthogonal": sampling.orthogonal,
    "simplex": sampling.simplex,
}


def stacked(name, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([SAMPLERS[name](M, D, rng) for _ in range(N_GROUPS)])


PAIRS = {
    "generic": (np.linspace(-0.3, 0.4, D), np.linspace(0.2, -0.1, D) ** 2),
    "axis_aligned": (0.4 * np.eye(D)[0], 0.3 * np.eye(D)[0]),
}


@pytest.mark.parametrize("estimator", ["optimal", "saderf", "positive"])
@pytest.mark.parametrize("projection", list(SAMPLERS))
@pytest.mark.parametrize("pair", list(PAIRS))
def test_unbiased_with_every_coupling(estimator, projection, pair):
    x, y = PAIRS[pair]
    rng = np.random.default_rng(1)
    # fit statistics from small clouds around the pair, as in attention (A, Ψ per batch)
    Q = x + 0.1 * rng.normal(size=(6, D))
    K = y + 0.1 * rng.normal(size=(6, D))
    fmap = PositiveRandomFeatures(
        M * N_GROUPS, estimator=estimator, projection=stacked(projection, seed=len(pair))
    )
    fmap.fit(Q, keys=K)
    est = grouped(fmap, x, y, M, N_GROUPS)
    psi = fmap.query_scale_
    z = np.sum((psi * x + y / psi) ** 2)
    se = np.exp(x @ y) * np.sqrt(gerf_rel_var(fmap.gerf_a_, z, D) / M / N_GROUPS)
    assert abs(est.mean() - np.exp(x @ y)) / se < 4


def test_optimal_fits_phi_from_data():
    rng = np.random.default_rng(0)
    Q, K = rng.normal(size=(50, 4)), rng.normal(size=(40, 4)) + 0.5
    fmap = PositiveRandomFeatures(8, estimator="optimal", gamma=0.3).fit(Q, keys=K)
    phi = 0.3 * np.mean([np.sum((q + k) ** 2) for q in Q for k in K])  # O(n²) definition
    assert_allclose(fmap.gerf_a_, optimal_gerf_a(phi, 4), rtol=1e-12)


def test_saderf_with_equal_statistics_is_oprf():
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(30, 5)) * [3, 1, 1, 0.5, 2]
    K = -Q[::-1]  # same per-coordinate energies
    sad = PositiveRandomFeatures(16, estimator="saderf", random_state=0).fit(Q, keys=K)
    opt = PositiveRandomFeatures(16, estimator="optimal", random_state=0).fit(Q, keys=K)
    assert_allclose(sad.query_scale_, 1.0)
    assert_allclose(sad.gerf_a_, opt.gerf_a_)
    assert_allclose(sad.transform(Q, side="key"), opt.transform(Q), rtol=1e-12)


def test_saderf_scale_is_the_energy_ratio_and_keeps_the_kernel():
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(200, 3)) * [4, 1, 0.25]
    K = rng.normal(size=(300, 3)) * [0.25, 1, 4]
    sad = PositiveRandomFeatures(4, estimator="saderf").fit(Q, keys=K)
    expected = ((K**2).mean(0) / (Q**2).mean(0)) ** 0.25
    assert_allclose(sad.query_scale_, expected)
    # Ψx · Ψ^{-1}y = x·y: the kernel the features estimate is unchanged
    assert_allclose((Q * sad.query_scale_) @ (K / sad.query_scale_).T, Q @ K.T, atol=1e-12)


def test_saderf_beats_oprf_when_scales_differ():
    """Mean relative squared error over pairs, same projections, Q and K scaled unevenly."""
    rng = np.random.default_rng(0)
    s = np.exp(rng.normal(0, 0.75, 8))
    Q = rng.normal(size=(64, 8)) * s / 8**0.25
    K = rng.normal(size=(64, 8)) / s / 8**0.25
    exact = np.exp(Q @ K.T)
    errors = {}
    for est in ("optimal", "saderf"):
        rel = []
        for seed in range(20):
            f = PositiveRandomFeatures(64, estimator=est, random_state=seed).fit(Q, keys=K)
            K_hat = f.transform(Q, side="query") @ f.transform(K, side="key").T
            rel.append(np.mean((K_hat / exact - 1) ** 2))
        errors[est] = np.array(rel)
    diff = errors["optimal"] - errors["saderf"]
    assert diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff))) > 3


def test_simplex_mse_below_orthogonal_at_small_z():
    """|x+y|² <= 1: simplex coupling has lower MSE than orthogonal (Reid et al. 2023)."""
    x, y = PAIRS["generic"]
    assert np.sum((x + y) ** 2) <= 1
    sq = {}
    for name in ("orthogonal", "simplex"):
        f = PositiveRandomFeatures(M * N_GROUPS, projection=stacked(name, seed=3)).fit(x[None])
        sq[name] = (grouped(f, x, y, M, N_GROUPS) - np.exp(x @ y)) ** 2
    diff = sq["orthogonal"] - sq["simplex"]
    assert diff.mean() / (diff.std(ddof=1) / np.sqrt(N_GROUPS)) > 4


def test_side_must_be_query_or_key():
    f = PositiveRandomFeatures(4).fit(np.ones((2, 3)))
    with pytest.raises(ValueError, match='side must be "query" or "key"'):
        f.transform(np.ones((2, 3)), side="value")


def test_keys_with_the_wrong_number_of_features():
    with pytest.raises(ValueError, match="X has 2 features, but .* is expecting 3"):
        PositiveRandomFeatures(4, estimator="optimal").fit(np.ones((2, 3)), keys=np.ones((2, 2)))


def test_optimal_features_are_bounded_and_positive():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 6)) * 2
    f = PositiveRandomFeatures(32, estimator="optimal", random_state=0).fit(X)
    F = f.transform(X)
    assert f.gerf_a_ < 0 and np.all(F > 0) and np.all(np.isfinite(F))
    # OPRFs are bounded (Likhosherstov et al. 2022): for A < 0, A|ω|² + B ω·u peaks at
    # ω = -Bu/(2A), so log f <= logD + B²|u|²/(-4A) - |u|²/2 - ½ log m
    a = f.gerf_a_
    sq = (X * X).sum(1)
    bound = 0.25 * 6 * np.log1p(-4 * a) + (1 - 4 * a) * sq / (-4 * a) - sq / 2
    assert np.all(np.log(F) <= (bound - 0.5 * np.log(32))[:, None] + 1e-9)
