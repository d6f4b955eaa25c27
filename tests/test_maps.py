"""The feature-map layer: the registry, the moments path, log-features against their
formula, the variance hooks against Monte Carlo, and every registered map through the
transformers, attention and theory.

Tests that loop over ``MAPS`` pick up a newly registered map by themselves.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal

from favorkit import FavorAttention, OrthogonalRFF, PositiveRandomFeatures, maps, sampling, theory
from favorkit.maps import MAPS, MapParams, Moments
from tests import naive

EXPONENTIAL = maps.names("exponential")
ACTIVATIONS = maps.names("activation")


def _data(seed=0, n=40, d=6, scale=0.4):
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=scale, size=(n, d))
    Y = rng.normal(scale=scale, size=(n, d)) * np.linspace(0.5, 2.0, d)
    return X, Y


def test_registry():
    for name, fmap in MAPS.items():
        assert fmap.name == name
        assert maps.get(name) is fmap
        assert fmap.width(5) == 5 * len(fmap.blocks)
    assert set(EXPONENTIAL) <= set(maps.names("attention")) <= set(maps.names("random"))
    assert not set(ACTIVATIONS) & set(maps.names("random"))
    assert isinstance(maps.get(np.tanh), maps.ActivationMap) and maps.get(np.tanh).name == "tanh"
    with pytest.raises(ValueError, match="unknown feature map 'gelu'; the maps are"):
        maps.get("gelu")


def test_moments_of_dense_csr_and_sums_agree():
    X, _ = _data()
    X[X < 0] = 0.0  # sparse enough for CSR to matter
    dense = Moments.of(X, 2.5)
    assert_allclose(Moments.of(sp.csr_matrix(X), 2.5).mean, dense.mean, rtol=1e-14)
    assert_allclose(Moments.of(sp.csr_matrix(X), 2.5).mean_sq, dense.mean_sq, rtol=1e-14)
    sums = Moments.from_sums(X.sum(axis=0), (X**2).sum(axis=0), X.shape[0], 2.5)
    assert_allclose(sums.mean, dense.mean, rtol=1e-14)
    assert_allclose(sums.mean_sq, dense.mean_sq, rtol=1e-14)
    assert_allclose(dense.mean_sq, 2.5 * (X**2).mean(axis=0), rtol=1e-14)


@pytest.mark.parametrize("name", EXPONENTIAL)
@pytest.mark.parametrize("side", ["query", "key"])
def test_log_features_are_the_features_of_the_formula(name, side):
    """exp(log-features) against tests/naive.py's features at true scale (Lemma 1 and the
    GERF map), with the map's own fitted parameters."""
    fmap = maps.get(name)
    X, Y = _data(1)
    W = sampling.gaussian(9, X.shape[1], random_state=2)
    c2 = 0.7
    params = MapParams.identity(X.shape[1])
    if fmap.fitted:
        params = fmap.fit(Moments.of(X, c2), Moments.of(Y, c2))
    rows = X if side == "query" else Y
    lf = fmap.log_features(W, params, c2, side)
    z = rows @ lf.projection.T
    if lf.antithetic:
        z = np.concatenate([z, -z], axis=1)
    column = 0.0 if lf.column is None else np.tile(lf.column, z.shape[1] // W.shape[0])
    rho = lf.const - 0.5 * (rows**2) @ lf.norm_weights
    log_phi = z + column + rho[:, None]
    if fmap.fitted:
        psi = params.psi if side == "query" else 1.0 / params.psi
        want = naive.favor_features(rows, W, c2, "gerf", params.a, psi)
        if lf.antithetic:  # [φ(ω), φ(-ω)], each half carrying 1/sqrt(2m)
            minus = naive.favor_features(rows, -W, c2, "gerf", params.a, psi)
            want = np.concatenate([want, minus], axis=1) / np.sqrt(2.0)
    else:
        want = naive.favor_features(rows, W, c2, name)
    assert_allclose(np.exp(log_phi), want, rtol=1e-12)
    # ... and the transformer evaluates exactly these.
    prf = PositiveRandomFeatures(9, gamma=c2, estimator=name, projection=W).fit(X, keys=Y)
    assert_allclose(prf.transform(rows, side=side), want, rtol=1e-12)


def _per_projection_samples(name, x, y, M, seed):
    """Per-projection estimates of SM(x, y) from M iid projections, through the transformer
    and the map's per_projection (the column layout is the map's business)."""
    fmap = maps.get(name)
    W = sampling.gaussian(M, x.shape[0], random_state=seed)
    if fmap.exponential:
        t = PositiveRandomFeatures(M, estimator=name, projection=W).fit(x[None], keys=y[None])
        return fmap.per_projection(t.transform(x[None]), t.transform(y[None], side="key"))[0]
    t = OrthogonalRFF(M, kernel="softmax", projection=W).fit(x[None])
    return fmap.per_projection(t.transform(x[None]), t.transform(y[None]))[0]


@pytest.mark.parametrize("name", EXPONENTIAL)
def test_the_variance_hook_is_the_variance(name):
    """One projection's estimate T of SM(u, v): E T = SM (z-score with the closed-form
    variance) and Var T / SM² = relative_variance (z-score with the sample's fourth moment)."""
    fmap = maps.get(name)
    rng = np.random.default_rng(3)
    # Small inputs: T is close to lognormal with log-variance ~ |u + v|², and the z-score
    # of the sample variance needs its eighth moment tame (here |u + v|² = 0.35).
    x, y = rng.normal(scale=0.1, size=(2, 5))
    M = 200_000
    T = _per_projection_samples(name, x, y, M, seed=4) / np.exp(x @ y)
    a = 0.0
    if fmap.fitted:
        a = fmap.fit(Moments.of(x[None]), Moments.of(y[None])).a
    psi = fmap.fit(Moments.of(x[None]), Moments.of(y[None])).psi if fmap.fitted else 1.0
    z = np.sum((x * psi + y / psi) ** 2)
    rel_var = float(fmap.relative_variance(z, x.shape[0], a))
    assert abs((T.mean() - 1) / np.sqrt(rel_var / M)) < 4
    centred = T - T.mean()
    s2, m4 = np.mean(centred**2), np.mean(centred**4)
    assert abs((s2 - rel_var) / np.sqrt((m4 - s2**2) / M)) < 4
    assert_allclose(np.log1p(rel_var), fmap.log1p_relative_variance(z, x.shape[0], a), rtol=1e-12)


@pytest.mark.parametrize("name", [n for n in maps.names("random") if n not in ("cos",)])
def test_term_moments_are_the_moments(name):
    """The raw moments E[T^j] the experiments standardize with, against Monte Carlo."""
    fmap = maps.get(name)
    rng = np.random.default_rng(5)
    x, y = rng.normal(scale=0.3, size=(2, 4))
    try:
        moments = [fmap.term_moment(x, y, j) for j in (1, 2, 4)]
    except NotImplementedError:
        pytest.skip(f"{name}: its moments depend on fitted parameters")
    T = _per_projection_samples(name, x, y, 200_000, seed=6)
    for j, (mj, m2j) in zip(
        (1, 2), ((moments[0], moments[1]), (moments[1], moments[2])), strict=True
    ):
        se = np.sqrt((m2j - mj**2) / T.size)
        assert abs((np.mean(T**j) - mj) / se) < 4, j


@pytest.mark.parametrize("name", list(MAPS))
def test_every_map_through_its_users(name):
    """A registered map works wherever its kind is accepted, by name alone."""
    fmap = maps.get(name)
    X, Y = _data(7, n=30, d=4)
    rng = np.random.default_rng(8)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 30, 4))
    if fmap.exponential:
        F = PositiveRandomFeatures(8, estimator=name, random_state=0).fit(X, keys=Y).transform(X)
        assert np.all(F > 0) and F.shape == (30, fmap.width(8))
        err = theory.expected_error(X, Y, 8, estimator=name)
        assert np.isfinite(err.mean) and err.mean > 0
    if fmap.attention_estimator:
        for causal in (False, True):
            att = FavorAttention(8, estimator=name, causal=causal, random_state=0).fit(Q, keys=K)
            out = att.attend(Q, K, V)
            assert np.isfinite(out).all() and out.shape == V.shape
    if name in ACTIVATIONS:
        out = FavorAttention(8, activation=name, random_state=0).fit(Q).attend(Q, K, V)
        assert np.isfinite(out).all()
    if isinstance(fmap, (maps.TrigMap, maps.CosOffsetMap)):
        features = "cossin" if isinstance(fmap, maps.TrigMap) else "cos"
        rff = OrthogonalRFF(8, features=features, random_state=0).fit(X)
        assert rff.transform(X).shape == (30, fmap.width(8))
        assert_array_equal(
            rff.get_feature_names_out()[::8],
            [f"orthogonalrff{'_' + b if b else ''}0" for b in fmap.blocks],
        )
