"""favorkit.theory against Monte Carlo, special cases and reference values (the Performer
paper's closed forms, and an independent computation of its Fig. 2 MSE ratio).

Monte Carlo references are plain NumPy (independent of favorkit's transformers): per-draw
estimates of SM(x, y) from ``m`` projections, squared errors averaged over repeats, compared
to the closed form with a z-score built from the sample standard error.
"""

import numpy as np
import pytest
from scipy import special, stats

from favorkit import sampling, theory

Z_MAX = 4.0  # |z| < 4: a false alarm has probability 6e-5 per check under the null.


def _pair(d, length_x, length_y, angle):
    x = np.zeros(d)
    y = np.zeros(d)
    x[0] = length_x
    y[0] = length_y * np.cos(angle)
    y[1] = length_y * np.sin(angle)
    return x, y


def _estimates(kind, W, x, y):
    """Per-repeat estimates of SM(x, y); W has shape (n_rep, m, d)."""
    lam = np.exp(-0.5 * (x @ x + y @ y))
    if kind == "trig":
        return np.exp(0.5 * (x @ x + y @ y)) * np.cos(W @ (x - y)).mean(axis=1)
    if kind == "positive":
        return lam * np.exp(W @ (x + y)).mean(axis=1)
    if kind == "hyperbolic":
        return lam * np.cosh(W @ (x + y)).mean(axis=1)
    raise AssertionError(kind)


def _mse_z(errors_sq, theory_value):
    mean = errors_sq.mean()
    se = errors_sq.std(ddof=1) / np.sqrt(errors_sq.size)
    return (mean - theory_value) / se


MSE = {
    "trig": theory.mse_trig,
    "positive": theory.mse_positive,
    "hyperbolic": theory.mse_hyperbolic,
}


@pytest.mark.parametrize("kind", ["trig", "positive", "hyperbolic"])
@pytest.mark.parametrize(
    ("lx", "ly", "angle", "m"),
    [(0.5, 0.5, np.pi / 4, 4), (0.7, 0.6, np.pi / 2, 8), (1.0, 1.0, 3 * np.pi / 4, 16)],
)
def test_lemma2_against_monte_carlo(kind, lx, ly, angle, m):
    d, n_rep = 6, 40_000
    x, y = _pair(d, lx, ly, angle)
    W = np.random.default_rng(1).standard_normal((n_rep, m, d))
    err2 = (_estimates(kind, W, x, y) - np.exp(x @ y)) ** 2
    assert abs(_mse_z(err2, MSE[kind](x, y, m))) < Z_MAX


def test_lemma2_relative_forms_and_special_cases():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 50, 5)) * 0.6
    m = rng.integers(1, 300, size=50)
    sm2 = np.exp(2 * np.sum(x * y, axis=-1))
    z2 = np.sum((x + y) ** 2, axis=-1)
    d2 = np.sum((x - y) ** 2, axis=-1)
    # Lemma 2 of the Performer paper: relative forms (MSE / SM²), and the Eq. 8 forms as
    # printed in the paper.
    np.testing.assert_allclose(theory.mse_trig(x, y, m) / sm2, (np.cosh(d2) - 1) / m, rtol=1e-10)
    np.testing.assert_allclose(theory.mse_positive(x, y, m) / sm2, np.expm1(z2) / m, rtol=1e-12)
    np.testing.assert_allclose(
        theory.mse_hyperbolic(x, y, m) / sm2, (np.cosh(z2) - 1) / m, rtol=1e-10
    )
    printed_trig = np.exp(z2) / sm2 * (1 - np.exp(-d2)) ** 2 / (2 * m)
    np.testing.assert_allclose(theory.mse_trig(x, y, m), printed_trig, rtol=1e-9)
    # Trig is exact at x = y, positive and hyperbolic at x = -y.
    assert np.all(theory.mse_trig(x, x, m) == 0)
    assert np.all(theory.mse_positive(x, -x, m) == 0)
    assert np.all(theory.mse_hyperbolic(x, -x, m) == 0)
    # hyp+ with m projections beats SM+ with 2m projections (Lemma 2's consequence).
    assert np.all(theory.mse_hyperbolic(x, y, m) < theory.mse_positive(x, y, 2 * m))
    # As SM -> 0 (antipodal, long): trig's MSE relative to SM² explodes, positive's vanishes.
    far = np.array([3.0, 0.0])
    assert theory.mse_trig(far, -far, 1) / np.exp(2 * (far @ -far)) > 1e15
    assert theory.mse_positive(far, -far, 1) == 0


def test_theory_validates_inputs():
    with pytest.raises(ValueError, match="same last axis"):
        theory.mse_positive(np.ones(3), np.ones(4), 2)
    with pytest.raises(ValueError, match="must be >= 1"):
        theory.mse_trig(np.ones(3), np.ones(3), 0)
    with pytest.raises(ValueError, match="last axis"):
        theory.mse_trig(1.0, 1.0, 2)
    with pytest.raises(ValueError, match="m <= d"):
        theory.orthogonal_mse_bound(np.ones(3), np.ones(3), 4)
    with pytest.raises(ValueError, match="integer"):
        theory.orthogonal_mse_bound(np.ones(3), np.ones(3), 2.5)
    with pytest.raises(ValueError, match="d >= 2"):
        theory.smreg_bounds(1)
    with pytest.raises(ValueError, match="no crossover"):
        theory.crossover_angle(0.0)
    with pytest.raises(ValueError, match="must be > 0"):
        theory.uniform_convergence_features(0.0, 16, 1.0)


@pytest.mark.parametrize(("d", "m"), [(8, 8), (16, 5), (16, 16)])
def test_theorem2_bound_against_orthogonal_monte_carlo(d, m):
    n_rep = 20_000
    x, y = _pair(d, 0.6, 0.5, np.pi / 3)
    W = sampling.orthogonal(n_rep * d, d, random_state=3).reshape(n_rep, d, d)[:, :m]
    err2 = (_estimates("positive", W, x, y) - np.exp(x @ y)) ** 2
    bound = theory.orthogonal_mse_bound(x, y, m)
    # One-sided: the measured MSE may not exceed the bound by more than Z_MAX standard errors.
    assert _mse_z(err2, bound) < Z_MAX
    # ... and the bound is informative here: below the iid MSE.
    assert bound < theory.mse_positive(x, y, m)


def test_theorem2_v4_bound_stays_positive_where_the_old_text_fails():
    # Performer Theorem 2: the older arXiv text's "- (1-1/m)(2/(d+2)) SM²" goes negative as
    # z -> 0; the v4 (Nov 2022) bound does not.
    d, m = 16, 16
    x = np.full(d, 0.01)
    y = -x + 1e-3
    old = theory.mse_positive(x, y, m) - (1 - 1 / m) * 2 / (d + 2) * np.exp(x @ y) ** 2
    assert old < 0
    assert theory.orthogonal_mse_bound(x, y, m) >= 0


def test_orthogonal_bound_blocks():
    d = 4
    x, y = _pair(d, 0.5, 0.5, 1.0)
    one = theory.orthogonal_mse_bound(x, y, d)
    # b full independent blocks: MSE / b; m <= d agrees with the plain theorem.
    np.testing.assert_allclose(theory.orthogonal_mse_bound(x, y, 3 * d, blocks=True), one / 3)
    np.testing.assert_allclose(
        theory.orthogonal_mse_bound(x, y, 3, blocks=True), theory.orthogonal_mse_bound(x, y, 3)
    )
    n_rep = 30_000
    W = sampling.orthogonal(n_rep * 8, d, random_state=4).reshape(n_rep, 8, d)[:, :6]
    err2 = (_estimates("positive", W, x, y) - np.exp(x @ y)) ** 2
    assert _mse_z(err2, theory.orthogonal_mse_bound(x, y, 6, blocks=True)) < Z_MAX


@pytest.mark.parametrize(
    ("length", "expected"), [(0.5, 2.08), (1.0, 1.74), (1.5, 1.65), (2.0, 1.61)]
)
def test_fig2_crossover_values(length, expected):
    # Crossovers r = 1 of the Fig. 2 ratio r = MSE_trig / MSE_+ (reference values, an
    # independent computation from Lemma 2; the paper does not print them), to 2 decimals.
    phi = theory.crossover_angle(length)
    assert abs(phi - expected) <= 0.005
    np.testing.assert_allclose(theory.mse_ratio(phi, length), 1.0, rtol=1e-9)
    np.testing.assert_allclose(theory.mse_ratio(-phi, -length), 1.0, rtol=1e-9)


def test_fig2_ratio_values_and_symmetry():
    # r at l = 1 (reference values, an independent computation from Lemma 2), to these
    # numbers of decimals.
    quoted = [(np.pi / 2, 0.43, 2), (2 * np.pi / 3, 5.3, 1), (3 * np.pi / 4, 17.8, 1)]
    quoted.append((0.9 * np.pi, 231, 0))
    for phi, value, decimals in quoted:
        assert round(float(theory.mse_ratio(phi, 1.0)), decimals) == value
    phi = np.linspace(-3, 3, 13)[:, None]
    length = np.linspace(-2, 2, 9)[None, :]
    r = theory.mse_ratio(phi, length)
    np.testing.assert_allclose(r, theory.mse_ratio(-phi, length))
    np.testing.assert_allclose(r, theory.mse_ratio(phi, -length))
    assert np.all(theory.mse_ratio(phi, 0.0) == 0)
    assert theory.mse_ratio(np.pi, 1.0) == np.inf
    # The ratio is the quotient of the two Lemma 2 forms at |x| = |y| = l.
    for phi_, l_ in [(0.7, 0.8), (2.5, 1.3), (1.9, 0.3)]:
        x, y = _pair(3, l_, l_, phi_)
        np.testing.assert_allclose(
            theory.mse_ratio(phi_, l_),
            theory.mse_trig(x, y, 7) / theory.mse_positive(x, y, 7),
            rtol=1e-10,
        )


def _smreg_series(w, d, n_terms=200):
    """F.3's series SMREG/SM = e^{-w} sum_k w^k/k! f(k, d), f(k,d) = d^k/(d(d+2)..(d+2k-2))."""
    k = np.arange(n_terms)
    log_f = np.concatenate([[0.0], np.cumsum(np.log(d / (d + 2.0 * k[:-1])))])
    return np.exp(-w) * np.sum(np.exp(k * np.log(w) - special.gammaln(k + 1) + log_f))


@pytest.mark.parametrize("d", [2, 5, 16, 64])
def test_smreg_kernel_against_series_and_monte_carlo(d):
    x, y = _pair(d, 0.8, 0.6, 0.9)
    w = 0.5 * np.sum((x + y) ** 2)
    ratio = theory.smreg_kernel(x, y) / theory.softmax_kernel(x, y)
    np.testing.assert_allclose(ratio, _smreg_series(w, d), rtol=1e-10)
    _, hi = theory.smreg_bounds(d)
    assert ratio <= hi
    n = 200_000
    W = sampling.orthogonal(n, d, random_state=d, norms="fixed")
    samples = np.exp(-0.5 * (x @ x + y @ y)) * np.exp(W @ (x + y))
    z = (samples.mean() - theory.smreg_kernel(x, y)) / (samples.std(ddof=1) / np.sqrt(n))
    assert abs(z) < Z_MAX


def test_smreg_special_cases():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 12))
    y = rng.normal(size=(40, 12))
    # Theorem 1: SMREG <= SM for any pair; z = 0 gives exactly Λ (= SM there).
    assert np.all(theory.smreg_kernel(x, y) <= theory.softmax_kernel(x, y) * (1 + 1e-12))
    np.testing.assert_allclose(theory.smreg_kernel(x, -x), theory.softmax_kernel(x, -x))
    # Both branches agree across the switch at sqrt(d)|z| = 1, and no overflow below SM's.
    z = np.zeros(12)
    a = theory.smreg_kernel(z + (1 - 1e-9) / np.sqrt(12) * np.eye(12)[0], z)
    b = theory.smreg_kernel(z + (1 + 1e-9) / np.sqrt(12) * np.eye(12)[0], z)
    np.testing.assert_allclose(a, b, rtol=1e-7)
    big = np.full(12, 4.0)
    assert np.isfinite(theory.smreg_kernel(big, big))
    # The ratio tends to 1 as d grows at fixed w (the lower bound 1 - 2/d^{1/3} -> 1).
    ratios = [_smreg_series(1.0, d) for d in (8, 64, 512)]
    assert ratios[0] < ratios[1] < ratios[2] < 1
    lower = theory.smreg_bounds(np.array([8, 64, 512]))[0]
    np.testing.assert_allclose(lower, [0.0, 0.5, 0.75])
    assert np.all(np.array(ratios) >= lower)


def test_uniform_convergence_scaling():
    f = theory.uniform_convergence_features
    # m ∝ (d/δ²) log(4 d^{3/4} R / δ) with δ = ε e^{-R²/sqrt(d)}, constant 1.
    eps, d, R = 0.1, 16, 2.0
    delta = eps * np.exp(-(R**2) / 4)
    np.testing.assert_allclose(f(eps, d, R), d / delta**2 * np.log(4 * 8 * R / delta))
    # Halving ε multiplies m by 4 (times the log factor's growth).
    ratio = f(eps / 2, d, R) / f(eps, d, R)
    assert 4 < ratio < 4 * np.log(8 * 8 * R / delta) / np.log(4 * 8 * R / delta) + 1e-12
    # Exponential in R²/sqrt(d): going from R to R' multiplies 1/δ² by e^{2(R'²-R²)/sqrt(d)}.
    r = f(eps, d, 3.0) / f(eps, d, 2.0)
    assert r > np.exp(2 * (9 - 4) / 4)
    # Vectorised.
    assert f(np.array([0.1, 0.2]), 16, np.array([[1.0], [2.0]])).shape == (2, 2)


def test_monte_carlo_reference_detects_a_wrong_formula():
    # Guard against a vacuous z-test: a 10 % error in the theory value must be caught.
    d, m, n_rep = 6, 8, 40_000
    x, y = _pair(d, 0.7, 0.6, np.pi / 2)
    W = np.random.default_rng(6).standard_normal((n_rep, m, d))
    err2 = (_estimates("positive", W, x, y) - np.exp(x @ y)) ** 2
    assert abs(_mse_z(err2, 1.1 * theory.mse_positive(x, y, m))) > Z_MAX
    assert stats.norm.sf(Z_MAX) < 1e-4


@pytest.mark.parametrize(("angle", "length"), [(1.2, 0.5), (2.3, 0.8)])
def test_fig2_ratio_against_monte_carlo(angle, length):
    d, m, n_rep = 4, 8, 60_000
    x, y = _pair(d, length, length, angle)
    rng = np.random.default_rng(7)
    sm = np.exp(x @ y)
    mse = {}
    for kind in ("trig", "positive"):
        err2 = (_estimates(kind, rng.standard_normal((n_rep, m, d)), x, y) - sm) ** 2
        mse[kind] = (err2.mean(), err2.std(ddof=1) / np.sqrt(n_rep) / err2.mean())
    log_r = np.log(mse["trig"][0] / mse["positive"][0])
    se = np.hypot(mse["trig"][1], mse["positive"][1])  # delta method on the log ratio
    assert abs(log_r - np.log(theory.mse_ratio(angle, length))) / se < Z_MAX


@pytest.mark.parametrize("d", [2, 16, 1024, 4096])
@pytest.mark.parametrize("z_norm", [1e-6, 0.3, 2.0, 30.0])
def test_smreg_kernel_stable_for_large_d_and_large_z(d, z_norm):
    # Both evaluation paths (hyp0f1, log-ive) must agree with F.3's series where it converges.
    z = np.zeros(d)
    z[0] = z_norm / 2
    ratio = theory.smreg_kernel(z, z) / theory.softmax_kernel(z, z)
    w = 0.5 * z_norm**2
    if w < 50:
        np.testing.assert_allclose(ratio, _smreg_series(w, d, n_terms=400), rtol=1e-9)
    assert 0 < ratio <= 1
