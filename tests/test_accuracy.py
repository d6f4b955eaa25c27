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
from scipy import stats

from favorkit import AccuracyWarning, FavorAttention, PositiveRandomFeatures, maps, sampling
from favorkit.accuracy import (
    AttentionError,
    measure_attention_error,
    predict_attention_error,
)
from favorkit.attention._accuracy import _Coupling, comparable, sample_rows, sketch_correlation
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
    """The first-order prediction against real FAVOR attention. The prediction samples
    2048 key pairs per row (not the default 256) so that its own sampling error (its
    standard_error, checked by the Monte Carlo test above) stays small next to the bar: at
    256 pairs FAVOR++ at d = 16, scale 0.25, m = 64, bidirectional, is predicted 0.034 ±
    0.008 against a measured 0.046, at 2048 pairs 0.045 ± 0.004. The reference is measured
    over 32 redraws (not the default 8): at m = 64 a redraw's squared error is right-skewed
    (skewness 2-3), and 8 redraws mostly miss its upper tail: 0.121-0.146 over four seeds
    for the hyperbolic map at d = 16, scale 0.5, causal, where 384 redraws measure 0.140."""
    Q, K, V = _data(1024, d, scale)
    projection = "iid" if estimator == "trig" else "orthogonal"
    misses = []
    for m in (64, 1024):
        kw = dict(estimator=estimator, projection=projection, causal=causal)
        predicted = predict_attention_error(Q, K, V, m, n_queries=256, n_pairs=2048, **kw)
        measured = measure_attention_error(Q, K, V, m, n_redraws=32, **kw)
        if not comparable(predicted, measured):
            continue  # flagged, or the prediction's own sampling noise is too large
        ratio = predicted.relative_error / measured.relative_error
        if not 1 / 1.5 <= ratio <= 1.5:
            misses.append((m, round(ratio, 3)))
    assert not misses, misses


def test_long_sequences_are_predicted_with_a_small_standard_error():
    """At L = 16 384 (bidirectional: every row sees every key) the sampled key pairs'
    terms cancel in sign; alone, 256 of them per row predicted 0.08 ± 0.63 here. The
    sketch of their second-order part keeps the default prediction's standard error below
    a quarter of it, and the prediction agrees (z < 4) with one from 8x the rows and 32x
    the pairs, on other samples."""
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((16384, 64), dtype=np.float32) * s for s in (0.5, 0.5, 1))
    default = predict_attention_error(Q, K, V, 256)
    reference = predict_attention_error(Q, K, V, 256, n_queries=256, n_pairs=8192, random_state=1)
    assert default.standard_error < default.relative_error / 4, default
    z = (default.relative_error - reference.relative_error) / math.hypot(
        default.standard_error, reference.standard_error
    )
    assert abs(z) < 4, (default, reference)


def _uniform_sign_case(seed=11, L=300, d=8, d_v=6, R=20):
    """Keys and values with padded keys (whose rows hold values like any other: the
    controls must leave them out), a sketch of them, and rows with causal limits, outputs,
    shifts and scales."""
    from favorkit.attention import _accuracy as acc_mod

    rng = np.random.default_rng(seed)
    Kk = rng.normal(scale=0.5, size=(L, d))
    V = rng.normal(size=(L, d_v))
    keys_ok = rng.random(L) > 0.2
    Vx = np.hstack([V, np.ones((L, 1))])
    limits = np.sort(rng.integers(1, L + 1, R)).astype(np.int64)
    y = np.hstack([rng.normal(size=(R, d_v)), np.zeros((R, 1))])
    shift, scale = rng.normal(size=R), rng.uniform(0.5, 2.0, R)
    sketch = acc_mod.Sketch.draw(rng, Kk, Vx)
    return Kk, V, Vx, keys_ok, limits, y, shift, scale, sketch


@pytest.mark.parametrize("alpha", [0.0, -0.07])
def test_uniform_sign_controls_match_their_definition(alpha):
    """The controls of a sign whose ``e`` does not depend on the logits, ``e_j = c h_j``
    with ``h_j = e^{α|k̃_j|²}`` over the visible keys (the same at every key for α = 0),
    from the weighted sums of the sketch's columns, against their definition: ``σγ (X_i²
    - ‖M‖²)`` and ``γ²/2 (Y_i² - |m_i|²)`` with the samples formed as the twin forms
    them, ``M = Σ_j e_j (v_j - y) k̃_jᵀ`` and ``m_i = Σ_j e_j (v_j - y)(b_i·k̃_j)
    (b'_i·k̃_j)`` over the row's keys; and the sums of ``h_j``."""
    from favorkit.attention import _accuracy as acc_mod
    from tests import naive

    Kk, V, Vx, keys_ok, limits, y, shift, scale, sketch = _uniform_sign_case()
    kk = (Kk * Kk).sum(1)
    key_sums = acc_mod._KeySums(sketch, Kk, Vx, keys_ok, kk, alpha)
    h = np.exp(alpha * kk - key_sums.top) * keys_ok
    weight, sums = key_sums.at(limits)
    got = acc_mod._uniform_controls(-0.8, 0.8, sums, sketch.A, y, shift, scale)
    A, B, B2 = sketch.A, sketch.B, sketch.B2
    for r, stop in enumerate(limits):
        visible = keys_ok & (np.arange(len(keys_ok)) < stop)
        np.testing.assert_allclose(weight[r], h[:stop].sum(), rtol=1e-12)
        e = math.exp(-shift[r]) * h * visible
        yr = y[r : r + 1, :-1]
        X = naive.sketch_samples(e[None, :], V, yr, Kk, A, B)[0]
        Y = naive.sketch_samples(e[None, :], V, yr, Kk, A, B, B2)[0]
        centred = e[:, None] * (V - yr)
        M = centred.T @ Kk
        m = centred.T @ ((Kk @ B.T) * (Kk @ B2.T))
        np.testing.assert_allclose(
            got[r, :, 0], scale[r] * -0.8 * (X**2 - np.sum(M * M)), rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(
            got[r, :, 1], scale[r] * 0.32 * (Y**2 - np.sum(m * m, axis=0)), rtol=1e-9,
            atol=1e-12,
        )  # fmt: skip


def test_uniform_sign_controls_have_mean_zero():
    """Over 400 sketches (6400 samples) each control's mean is within 4 standard errors of 0:
    ``E X_i² = ‖M‖²`` over the sketch, ``E[Y_i² | b_i, b'_i] = |m_i|²`` over its ``a_i``."""
    from favorkit.attention import _accuracy as acc_mod

    Kk, _, Vx, keys_ok, limits, y, shift, scale, _ = _uniform_sign_case(R=5)
    rng = np.random.default_rng(12)
    samples = []
    for _ in range(400):
        sketch = acc_mod.Sketch.draw(rng, Kk, Vx)
        kk = (Kk * Kk).sum(1)
        _, sums = acc_mod._KeySums(sketch, Kk, Vx, keys_ok, kk, -0.07).at(limits)
        controls = acc_mod._uniform_controls(1.0, 1.0, sums, sketch.A, y, shift, scale)
        samples.append(controls.sum(axis=0))
    samples = np.concatenate(samples)
    mean, se = samples.mean(axis=0), samples.std(axis=0, ddof=1) / math.sqrt(len(samples))
    assert np.all(np.abs(mean) < 4 * se), (mean, se)


@pytest.mark.parametrize("estimator", ["hyperbolic", "optimal_hyperbolic"])
def test_hyperbolic_maps_at_small_scale_are_predicted_with_a_small_standard_error(estimator):
    """|q|, |k| ~ 0.25 N(0, 1): the hyperbolic maps' two signs' sketch samples move
    together and their difference is small; without controls (the sign whose ``e`` does
    not depend on the logits, and for the coupled set that sign's weights normalized) the
    hyperbolic map's prediction was 0.0029 ± 0.011 where redraws measure 0.0084
    (L = 4096, d = 64), and FAVOR++'s hyperbolic map's (whose sign ``-ω`` has ``e_j ∝
    e^{α|k̃_j|²}``) 0.0071 ± 0.0091 here. Here at L = 1024 the prediction's standard error
    is below a third of it and it agrees with the measured error within a factor 1.5."""
    Q, K, V = _data(1024, 64, 0.25)
    kw = dict(estimator=estimator)
    predicted = predict_attention_error(Q, K, V, 1024, n_queries=256, n_pairs=1024, **kw)
    measured = measure_attention_error(Q, K, V, 1024, n_redraws=32, **kw)
    assert predicted.standard_error < predicted.relative_error / 3, predicted
    assert 1 / 1.5 < predicted.relative_error / measured.relative_error < 1.5, (
        predicted,
        measured,
    )


def test_the_sets_sketched_errors_are_combined_with_their_correlation():
    """The single and coupled sets' sketch samples share their triples and, for the
    hyperbolic map at small |q|, |k|, move against each other; taken as correlated at worst
    the standard error was 0.0028 for a prediction of 0.0068 (d = 16, L = 1024, m = 256,
    bidirectional; 0.0012 over seeds), too wide to check against redraws. With their
    correlation the prediction is checkable (``comparable``) and within a factor 1.5."""
    Q, K, V = _data(1024, 16, 0.25)
    kw = dict(estimator="hyperbolic")
    predicted = predict_attention_error(Q, K, V, 256, n_queries=256, n_pairs=1024, **kw)
    measured = measure_attention_error(Q, K, V, 256, n_redraws=32, **kw)
    assert comparable(predicted, measured), (predicted, measured)
    assert 1 / 1.5 < predicted.relative_error / measured.relative_error < 1.5


def test_sketch_correlation_of_leave_one_out_estimates():
    rng = np.random.default_rng(0)
    a = rng.normal(size=16)
    assert sketch_correlation(a, -3.0 * a) == pytest.approx(-1.0)
    assert sketch_correlation(a, 2.0 * a + 1.0) == pytest.approx(1.0)
    b = rng.normal(size=16)
    assert sketch_correlation(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    # undefined (a set that does not vary, or overflowed): the worst case
    assert sketch_correlation(a, np.ones(16)) == 1.0
    assert sketch_correlation(a, np.full(16, np.inf)) == 1.0


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


@pytest.mark.parametrize(("n_seq", "length", "n_queries"), [(3, 1000, 120), (16, 4096, 32)])
def test_causal_row_samples_are_stratified_by_position(n_seq, length, n_queries):
    rng = np.random.default_rng(0)
    seqs, rows, weights, strata = sample_rows(n_seq, length, n_queries, rng, causal=True)
    flat = seqs * length + rows
    assert flat.size == n_queries and np.all(np.diff(flat) > 0)
    assert math.isclose(weights.sum(), n_seq * length)  # the weights stand for every row
    # Ranges of positions [a, 2a + 1) or so, each sampled uniformly over every sequence:
    # a stratum's weights stand for its rows, and the later ranges are wider.
    starts = []
    for k in np.unique(strata):
        in_k = strata == k
        lo, hi = rows[in_k].min(), rows[in_k].max()
        assert np.all(weights[in_k] == weights[in_k][0])
        assert in_k.sum() >= 2 or weights[in_k][0] == 1
        starts.append(lo)
        if weights[in_k][0] == 1:  # taken whole: every sequence's rows of the range
            assert np.unique(seqs[in_k]).size == n_seq
        assert hi < length
    assert starts[0] == 0 and np.all(np.diff(starts) > 0)
    assert np.all(weights[rows == 0] <= n_seq / 2)  # row 0 is never left to chance alone
    seqs, rows, weights, strata = sample_rows(n_seq, length, n_queries, rng)  # bidirectional
    assert np.all(weights == n_seq * length / n_queries) and np.all(strata == 0)
    assert np.array_equal(sample_rows(2, 10, 64, rng, causal=True)[2], np.ones(20))


@pytest.mark.parametrize(("n_seq", "n_queries"), [(1, 64), (16, 32)])
@pytest.mark.parametrize("kind", ["predicted", "measured"])
def test_standard_error_covers_the_row_sample(kind, n_seq, n_queries):
    """Rows are a sample: over 16 seeds, each drawing its own causal rows (64 of one
    sequence of 1024, or 32 of 16 such sequences) and its own projections or key pairs, the
    spread of the estimates matches their standard errors. With the sample spread in place
    of the mean (15 degrees of freedom), ``Σ z²/15`` lies within its chi-square 0.1 % and
    99.9 % quantiles. (Without the row sample's variance the measured ``Σ z²/15`` was 206;
    with a uniform sample, which an early causal row with its large ``|y|²`` may or may
    not enter, the spread was 3x wider; with the first rows of every sequence taken and
    the rest uniform, 32 rows of 16 sequences hold no first rows and the predicted
    ``Σ z²/15`` was 3.0.)"""
    Q, K, V = _data(1024, 16, 0.5, n_seq=n_seq if n_seq > 1 else None)
    kw = dict(causal=True, n_queries=n_queries)
    if kind == "predicted":
        results = [predict_attention_error(Q, K, V, 256, random_state=s, **kw) for s in range(16)]
    else:
        results = [
            measure_attention_error(Q, K, V, 256, n_redraws=16, random_state=s, **kw)
            for s in range(16)
        ]
    rel = np.array([r.relative_error for r in results])
    se = np.array([r.standard_error for r in results])
    statistic = float(np.sum(((rel - rel.mean()) / se) ** 2)) / 15
    low, high = stats.chi2.ppf([0.001, 0.999], 15) / 15
    assert low < statistic < high, (statistic, rel, se)


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


# --- the kernels against the numpy implementation of the same prediction ----------------------


def _reference_rows_error(
    sm, coupled, U, Kk, Vx, vv, kk, keys_ok, limits, rng, n_pairs, center=None, sketch=None,
    key_sums=None,
):  # fmt: skip
    """``_rows_error``'s interface over tests/naive.py's ``rows_error``, the numpy
    implementation of the same sums (same samples from the same seeds), on the values as
    given (not centred); it forms the controls' sums over keys itself (``key_sums`` is not
    read)."""
    from tests import naive

    visible = keys_ok[None, :] & (np.arange(len(keys_ok))[None, :] < limits[:, None])
    d = U.shape[1]
    V = Vx[:, :-1].astype(np.float64) + (0.0 if center is None else center)
    U, Kk = U.astype(np.float64), Kk.astype(np.float64)
    with np.errstate(all="ignore"):
        pair = None if sketch is None else (sketch.A, sketch.B, sketch.B2)
        out = naive.rows_error(sm, coupled, d, U, Kk, V, visible, rng, n_pairs, pair)
    seen = visible.any(axis=1)
    parts = (np.where(seen[:, None], a, 0.0) for a in out[:4])
    rest = (np.where(seen, a, 0.0) for a in out[4:6])
    firsts = (np.where(seen[:, None], a, 0.0) for a in out[6:8])
    controls = np.where(seen[:, None, None, None], out[8], 0.0)
    return (*parts, *rest, *firsts, controls, seen)


def _assert_rows_error_close(new, old):
    """The per-row sums to 1e-10; the sketch's per-sample first-order sums (``σγ X_i²``
    less the pairs j = l, which may cancel) and the controls to 1e-10 of the largest of
    them."""
    for got, expected in zip(new[:6], old[:6], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=0)
    for got, expected in zip(new[6:9], old[6:9], strict=True):
        atol = 1e-10 * np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=atol)


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("coupling", ["iid", "orthogonal", "simplex"])
@pytest.mark.parametrize("causal", [False, True])
def test_rows_error_matches_the_numpy_reference(name, coupling, causal):
    """Per-row sums and their sampling variances: to 1e-10, from the same draws (and the
    generator left in the same state)."""
    from favorkit.attention import _accuracy as acc_mod
    from favorkit.theory._gerf import coupling_cosine

    if name == "trig" and coupling != "iid":
        pytest.skip("the trigonometric estimator is predicted for iid projections only")
    rng = np.random.default_rng(5)
    L, d, d_v, R = 300, 8, 6, 40
    fmap = maps.get(name)
    sm = fmap.second_moment(d, -0.05 if fmap.fitted else 0.0)
    U = rng.normal(scale=0.5, size=(R, d)) / d**0.25
    Kk = rng.normal(scale=0.5, size=(L, d)) / d**0.25
    V = rng.normal(size=(L, d_v))
    keys_ok = rng.random(L) > 0.2
    rows = np.sort(rng.choice(L, R, replace=False))
    limits = (np.minimum(rows + 1, L) if causal else np.full(R, L)).astype(np.int64)
    Vx, vv, kk = np.hstack([V, np.ones((L, 1))]), (V * V).sum(1), (Kk * Kk).sum(1)
    c = coupling_cosine(coupling, d)
    coupled = None
    if c is not None:
        z_max = float((np.sqrt((U**2).sum(1).max()) + np.sqrt(kk.max())) ** 2)
        coupled = acc_mod._Coupling(c, d, sm.pair_sign < 0, z_max, sm.signs)
    args = (sm, coupled, U, Kk, Vx, vv, kk, keys_ok, limits)
    new_rng, old_rng = np.random.default_rng(9), np.random.default_rng(9)
    new = acc_mod._rows_error(*args, new_rng, 256)
    old = _reference_rows_error(*args, old_rng, 256)
    assert new_rng.random() == old_rng.random()
    np.testing.assert_array_equal(new[-1], old[-1])
    _assert_rows_error_close(new, old)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("causal", [False, True])
def test_float32_inputs_predict_as_float64(offset, causal):
    """float32 inputs run the kernels' GEMMs in float32: the prediction moves by their
    round-off only, a small fraction of its own standard error, also where the values
    share an offset a thousand times their spread (they are centred first)."""
    Q, K, V = _data(2048, 64, 0.5, seed=7)
    single = [a.astype(np.float32) for a in (Q, K, V + offset)]
    double = [a.astype(np.float64) for a in single]  # the same numbers
    for estimator in ("positive", "hyperbolic", "optimal"):
        kw = dict(estimator=estimator, causal=causal)
        got = predict_attention_error(*single, 256, **kw)
        want = predict_attention_error(*double, 256, **kw)
        assert abs(got.relative_error - want.relative_error) <= want.standard_error / 20
        assert (got.heavy_tailed, got.n_queries) == (want.heavy_tailed, want.n_queries)


def test_values_near_the_end_of_their_dtype_predict_as_moderate_ones():
    """Values whose squares or weighted sums overflow their dtype (|v| ~ 1e36 in float32,
    1e154 in float64) predict the relative error of the same values scaled to ~1 (the
    prediction works in units of a power of two near the largest visible value), and a
    padded key's value at the dtype's largest changes nothing."""
    Q, K, V = _data(1024, 16, 0.5, seed=8)
    mask = np.zeros(1024, bool)
    mask[-1] = True
    kw = dict(key_padding_mask=mask)
    for dtype, big in ((np.float32, 2.0**120), (np.float64, 2.0**511)):
        Qd, Kd, Vd = (a.astype(dtype) for a in (Q, K, V))
        moderate = predict_attention_error(Qd, Kd, Vd, 64, **kw)
        scaled = predict_attention_error(Qd, Kd, Vd * dtype(big), 64, **kw)
        assert scaled.relative_error == moderate.relative_error
        assert scaled.standard_error == moderate.standard_error
        assert scaled.mse == pytest.approx(moderate.mse * big * big, rel=1e-12)
        padded = np.where(mask[:, None], np.finfo(dtype).max, Vd)
        assert predict_attention_error(Qd, Kd, padded, 64, **kw) == moderate


def test_rows_error_draws_again_for_rows_without_pairs():
    """A row that sees key pairs but has no sampling weight (its three visible values are
    equal, so |v_j - y| = 0) takes no draws: the kernel's first guess of who is sampled
    fails, and it draws again as the reference does."""
    from favorkit._kernels import accuracy as acc_kernels
    from favorkit.attention import _accuracy as acc_mod

    rng = np.random.default_rng(6)
    L, d, d_v = 200, 8, 4
    sm = maps.get("positive").second_moment(d)
    U = rng.normal(scale=0.5, size=(20, d)) / d**0.25
    Kk = rng.normal(scale=0.5, size=(L, d)) / d**0.25
    V = rng.integers(-3, 4, size=(L, d_v)).astype(np.float64)  # exact |v|², v·v
    V[:3] = 0.0  # row 0 sees these three: y = 0 exactly
    keys_ok = np.ones(L, bool)
    limits = np.concatenate([[3], rng.integers(2, L, 19)]).astype(np.int64)
    Vx, vv, kk = np.hstack([V, np.ones((L, 1))]), (V * V).sum(1), (Kk * Kk).sum(1)
    coupled = acc_mod._Coupling(0.0, d, False, 50.0, sm.signs)
    args = (sm, coupled, U, Kk, Vx, vv, kk, keys_ok, limits)
    calls = []
    sampled_pairs = acc_kernels.sampled_pairs

    def spy(*a):
        calls.append(1)
        return sampled_pairs(*a)

    new_rng, old_rng = np.random.default_rng(9), np.random.default_rng(9)
    try:
        acc_kernels.sampled_pairs = spy
        new = acc_mod._rows_error(*args, new_rng, 64)
    finally:
        acc_kernels.sampled_pairs = sampled_pairs
    old = _reference_rows_error(*args, old_rng, 64)
    assert calls  # the second path ran
    assert new[-1][0] and np.all(new[0][0] == 0)  # row 0's values are equal: FAVOR is exact there
    assert new_rng.random() == old_rng.random()
    _assert_rows_error_close(new, old)


@pytest.mark.parametrize(
    ("estimator", "projection", "causal", "n_seq"),
    [
        ("positive", "orthogonal", False, None),
        ("hyperbolic", "simplex", True, 3),
        ("optimal", "orthogonal", True, None),
        ("saderf", "iid", False, 2),
        ("trig", "iid", True, 2),
    ],
)
def test_prediction_matches_the_numpy_reference(estimator, projection, causal, n_seq):
    """predict_attention_error with the kernels and with the numpy reference: the same
    numbers to 1e-10 (several sequences, masks, more rows than one chunk)."""
    from favorkit.attention import _accuracy as acc_mod

    Q, K, V = _data(400, 16, 0.5, seed=4, n_seq=n_seq)
    mask = None
    if n_seq:
        mask = np.zeros((n_seq, 400), bool)
        mask[0, 350:] = True
    kw = dict(estimator=estimator, projection=projection, causal=causal, n_queries=150)
    new = predict_attention_error(Q, K, V, 128, key_padding_mask=mask, **kw)
    rows_error = acc_mod._rows_error
    try:
        acc_mod._rows_error = _reference_rows_error
        old = predict_attention_error(Q, K, V, 128, key_padding_mask=mask, **kw)
    finally:
        acc_mod._rows_error = rows_error
    for field in ("relative_error", "mse", "standard_error", "_single", "_coupled"):
        np.testing.assert_allclose(getattr(new, field), getattr(old, field), rtol=1e-10)
    assert (new.heavy_tailed, new.n_queries) == (old.heavy_tailed, old.n_queries)
