"""Predicted and measured attention error (favorkit.accuracy) and the AccuracyWarning.

The prediction is checked three ways: its pieces against a dense O(L²) evaluation of the
same formula, the formula against Monte Carlo of the linearized error (z-scores from the
Monte Carlo's own spread), and the prediction against the measured error of real FAVOR
attention (within a factor 1.5 wherever the prediction is below 0.5 and not flagged as
heavy-tailed, the accuracy promised in the docs).
"""

import math
import warnings

import numpy as np
import pytest

from favorkit import AccuracyWarning, FavorAttention, PositiveRandomFeatures, maps, sampling
from favorkit.accuracy import (
    AttentionError,
    measure_attention_error,
    predict_attention_error,
)
from favorkit.attention._accuracy import _Coupling
from favorkit.theory._gerf import pair_count

ESTIMATORS = maps.names("attention")
POSITIVE = maps.names("exponential")


def _data(L, d, scale, seed=0, n_seq=None):
    rng = np.random.default_rng(seed)
    shape = (L, d) if n_seq is None else (n_seq, L, d)
    Q, K = rng.normal(scale=scale, size=(2, *shape))
    V = rng.normal(size=shape)
    return Q, K, V


# --- the map's second moment -------------------------------------------------------------


@pytest.mark.parametrize("name", ESTIMATORS)
def test_second_moment_matches_monte_carlo(name):
    """E[T(a_1) T(a_2)] of one projection, closed form against 400 000 draws (|z| < 4)."""
    fmap = maps.get(name)
    d = 6
    a = -0.05 if fmap.fitted else 0.0
    sm = fmap.second_moment(d, a)
    rng = np.random.default_rng(1)
    u, v1, v2 = rng.normal(scale=0.3, size=(3, d))
    W = rng.normal(size=(400_000, d))
    b, D = math.sqrt(1 - 4 * a), (1 - 4 * a) ** (d / 4)

    def term(v):  # one projection's estimate of K(u, v), relative to it
        if sm.pair_sign < 0:  # [cos, sin]: cos(ω·(u - v)) e^{|u - v|²/2}
            diff = u - v
            return np.cos(W @ diff) * np.exp(diff @ diff / 2)
        col = a * np.einsum("ij,ij->i", W, W)
        sides = [1.0, -1.0] if len(sm.signs) == 2 else [1.0]
        est = sum(
            D
            * np.exp(col + s * b * (W @ u) - u @ u / 2)
            * D
            * np.exp(col + s * b * (W @ v) - v @ v / 2)
            for s in sides
        ) / len(sides)
        return est / np.exp(u @ v)

    product = term(v1) * term(v2)
    a1, a2 = u + sm.pair_sign * v1, u + sm.pair_sign * v2
    closed = math.exp(sm.log_const + sm.alpha * (a1 @ a1 + a2 @ a2)) * np.mean(
        [math.exp(s * sm.gamma * (a1 @ a2)) for s in sm.signs]
    )
    z = (product.mean() - closed) / (product.std() / math.sqrt(product.size))
    assert abs(z) < 4, (name, product.mean(), closed, z)


@pytest.mark.parametrize("name", POSITIVE)
def test_second_moment_diagonal_is_the_relative_variance(name):
    fmap = maps.get(name)
    z = np.array([0.0, 0.3, 2.0, 7.0])
    a = -0.07 if fmap.fitted else 0.0
    sm = fmap.second_moment(16, a)
    logs = [sm.gamma * s * z for s in sm.signs]
    log_moment = sm.log_const + 2 * sm.alpha * z + np.log(np.mean(np.exp(logs), axis=0))
    np.testing.assert_allclose(log_moment, fmap.log1p_relative_variance(z, 16, a), rtol=1e-12)


# --- the prediction against a dense evaluation of its formula -------------------------------


def _dense_prediction(Q, K, V, m, fmap, coupling):
    """The same first-order formula summed over every key pair (O(L²) per row)."""
    d = Q.shape[1]
    u, k = Q / d**0.25, K / d**0.25
    logits = u @ k.T
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    Y = P @ V
    sm = fmap.second_moment(d)
    coupled = None
    if coupling != "iid":
        coupled = _Coupling(0.0, d, sm.pair_sign < 0, 200.0, sm.signs)
    pairs = float(pair_count(np.int64(m), d, coupling))
    err = 0.0
    for i in range(len(Q)):
        A = u[i] + sm.pair_sign * k
        z, s = (A * A).sum(1), A @ A.T
        rho = (
            np.exp(sm.log_const + sm.alpha * (z[:, None] + z[None, :]))
            * np.mean([np.exp(sig * sm.gamma * s) for sig in sm.signs], axis=0)
            - 1.0
        )
        cov = rho / m
        if coupled is not None:
            chi = coupled.pair(z[:, None] + 0 * z[None, :], z[None, :] + 0 * z[:, None], s)
            np.fill_diagonal(chi, coupled.diag(z))
            cov = cov + pairs / m**2 * chi
        W = (V - Y[i]) * P[i][:, None]
        err += np.sum((W @ W.T) * cov)
    return math.sqrt(err / np.sum(Y**2))


@pytest.mark.parametrize("name", ["positive", "hyperbolic", "trig"])
@pytest.mark.parametrize("coupling", ["iid", "orthogonal"])
def test_prediction_equals_its_dense_formula(name, coupling):
    if name == "trig" and coupling != "iid":
        pytest.skip("the trigonometric estimator is predicted for iid projections only")
    Q, K, V = _data(96, 8, 0.5, seed=3)
    m = 64
    dense = _dense_prediction(Q, K, V, m, maps.get(name), coupling)
    err = predict_attention_error(
        Q, K, V, m, estimator=name, projection=coupling, n_queries=96, n_pairs=4096
    )
    z = (err.relative_error - dense) / err.standard_error
    assert abs(z) < 4, (dense, err.relative_error, err.standard_error)


def test_formula_matches_monte_carlo_of_the_linearized_error():
    """E|Σ_j p_j δ_j (v_j - y)|² over 3000 iid draws of the estimates: z-score < 4."""
    Q, K, V = _data(64, 8, 0.4, seed=1)
    m, d = 128, 8
    u, k = Q / d**0.25, K / d**0.25
    logits = u @ k.T
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    Y = P @ V
    draws = []
    for r in range(3000):
        W = np.random.default_rng(100 + r).normal(size=(m, d))
        fq = np.exp(u @ W.T - (u * u).sum(1, keepdims=True) / 2)
        fk = np.exp(k @ W.T - (k * k).sum(1, keepdims=True) / 2)
        delta = (fq @ fk.T / m) / np.exp(logits) - 1.0
        dy = (P * delta) @ V - (P * delta).sum(1)[:, None] * Y
        draws.append(np.sum(dy**2))
    draws = np.array(draws)
    err = predict_attention_error(Q, K, V, m, projection="iid", n_queries=64, n_pairs=4096)
    predicted_sq = err.relative_error**2 * np.sum(Y**2)
    predicted_se = 2 * err.relative_error * err.standard_error * np.sum(Y**2)
    z = (draws.mean() - predicted_sq) / math.hypot(
        draws.std() / math.sqrt(draws.size), predicted_se
    )
    assert abs(z) < 4, (draws.mean(), predicted_sq)


# --- predicted against measured ---------------------------------------------------------------


@pytest.mark.parametrize("d", [16, 64])
@pytest.mark.parametrize("scale", [0.25, 0.5])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_predicted_within_factor_1_5_of_measured(d, scale, causal, estimator):
    Q, K, V = _data(1024, d, scale)
    projection = "iid" if estimator == "trig" else "orthogonal"
    misses = []
    for m in (64, 1024):
        kw = dict(estimator=estimator, projection=projection, causal=causal)
        predicted = predict_attention_error(Q, K, V, m, n_queries=256, **kw)
        measured = measure_attention_error(Q, K, V, m, n_redraws=8, **kw)
        if predicted.relative_error >= 0.5 or predicted.heavy_tailed or measured.heavy_tailed:
            continue
        if predicted.standard_error > 0.25 * predicted.relative_error:
            continue  # the prediction's own sampling noise is too large to compare
        ratio = predicted.relative_error / measured.relative_error
        if not 1 / 1.5 <= ratio <= 1.5:
            misses.append((m, round(ratio, 3)))
    known = KNOWN_MISSES.get((d, scale, causal, estimator))
    if known:  # a strict expected failure: it must still miss, by what is written down
        same = [m for m, _ in misses] == [m for m, _ in known] and all(
            abs(r - k) < 0.02 for (_, r), (_, k) in zip(misses, known, strict=True)
        )
        assert same, f"the known miss changed: {misses} (was {known})"
        pytest.xfail(f"known miss of the first-order prediction: (m, ratio) = {known}")
    assert not misses, misses


# FAVOR++ and SADERF at d = 16, |q|, |k| ~ 0.25 N(0, 1), m = 64 (four orthogonal blocks):
# predicted 1.51-1.52x the measured error, just outside the 1.5 bar; the off-diagonal
# coupling of fitted GERF maps is carried over from A = 0 (see favorkit.accuracy).
KNOWN_MISSES = {
    (16, 0.25, False, "optimal"): [(64, 1.513)],
    (16, 0.25, False, "saderf"): [(64, 1.522)],
}


def test_heavy_tails_are_flagged_on_the_performer_regime():
    """N(0, 1) queries and keys at d = 64 (|q|²/sqrt(d) = 8): the expectation is carried by
    rare draws; the prediction says so instead of a confident number."""
    Q, K, V = _data(512, 64, 1.0)
    err = predict_attention_error(Q, K, V, 256, causal=True)
    assert err.heavy_tailed and "rare draws" in err.reason
    assert err.relative_error > 1


def test_extrapolation_in_m_and_features_needed():
    Q, K, V = _data(256, 16, 0.5, seed=2)
    err = predict_attention_error(Q, K, V, 128, projection="iid")
    assert math.isclose(err.relative_error_at(128), err.relative_error, rel_tol=1e-9)
    assert math.isclose(err.relative_error_at(512), err.relative_error / 2, rel_tol=1e-9)
    m = err.features_needed(0.05)
    assert err.relative_error_at(m) <= 0.05 < err.relative_error_at(m - 1)
    ortho = predict_attention_error(Q, K, V, 128)
    m = ortho.features_needed(0.05)
    assert ortho.relative_error_at(m) <= 0.05 < ortho.relative_error_at(m - 1)


def test_masks_batches_and_causal_rows():
    Q, K, V = _data(128, 8, 0.5, n_seq=3)
    mask = np.zeros((3, 128), bool)
    mask[:, 100:] = True
    for causal in (False, True):
        err = predict_attention_error(Q, K, V, 64, causal=causal, key_padding_mask=mask)
        measured = measure_attention_error(Q, K, V, 64, causal=causal, key_padding_mask=mask)
        assert np.isfinite(err.relative_error) and np.isfinite(measured.relative_error)
    # the first causal row sees one key: FAVOR's output there is exact, error 0
    first = predict_attention_error(Q[0, :1], K[0, :1], V[0, :1], 64, causal=True)
    assert first.relative_error < 1e-6  # 0 up to the round-off of |v_j - y|²


def test_measured_error_equals_a_direct_measurement():
    Q, K, V = _data(64, 8, 0.5)
    err = measure_attention_error(Q, K, V, 32, n_queries=64, n_redraws=3, random_state=0)
    from favorkit import softmax_attention

    exact = softmax_attention(Q, K, V)
    att = FavorAttention(32, random_state=sampling.resolve_rng(0)).fit(Q, keys=K)
    rel = []
    for r in range(3):
        if r:
            att.redraw()
        out = att.attend(Q, K, V)
        rel.append(np.linalg.norm(out - exact) / np.linalg.norm(exact))
    np.testing.assert_allclose(err.per_draw, rel, rtol=1e-5)
    assert isinstance(err, AttentionError) and err.kind == "measured"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"estimator": "relu"}, "estimator must be one of"),
        ({"projection": "structured"}, "couplings with a closed form"),
        ({"estimator": "trig", "projection": "orthogonal"}, 'projection="iid" only'),
        ({"n_queries": 0}, "n_queries must be an integer"),
        ({"n_pairs": 1}, "n_pairs must be an integer"),
    ],
)
def test_prediction_rejects_what_it_cannot_predict(kwargs, match):
    Q, K, V = _data(16, 4, 0.5)
    with pytest.raises(ValueError, match=match):
        predict_attention_error(Q, K, V, 8, **kwargs)


def test_only_predictions_extrapolate():
    Q, K, V = _data(16, 4, 0.5)
    measured = measure_attention_error(Q, K, V, 8, n_redraws=2)
    with pytest.raises(ValueError, match="only a prediction"):
        measured.features_needed(0.1)


# --- AccuracyWarning ----------------------------------------------------------------------


def test_attention_warns_when_the_output_is_noise():
    Q, K, V = _data(4096, 64, 1.0, n_seq=4)  # the Performer regime: |q|²/sqrt(d) = 8
    with pytest.warns(AccuracyWarning, match="mostly noise") as caught:
        favor = FavorAttention(256, random_state=0).fit(Q)
        favor.attend(Q, K, V, causal=True)
    assert "m=" in str(caught[0].message) and "estimator='optimal'" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller's line


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_attention_is_silent_where_the_estimate_is_good(estimator):
    Q, K, V = _data(4096, 64, 0.35, n_seq=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        FavorAttention(256, estimator=estimator, random_state=0).fit(Q).attend(Q, K, V)


def test_accuracy_warning_is_filtered_like_any_warning():
    Q, K, V = _data(4096, 64, 1.0, n_seq=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=AccuracyWarning)
        FavorAttention(256, random_state=0).fit(Q).attend(Q, K, V)


def test_transformer_warns_on_raw_digits_only():
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    X = np.tile(load_digits().data, (3, 1))
    prf = PositiveRandomFeatures(1000, kernel="gaussian", gamma=0.01, random_state=0)
    with pytest.warns(AccuracyWarning, match="n_components="):
        prf.fit(X).transform(X)
    Xs = StandardScaler().fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        prf.fit(Xs).transform(Xs)
