"""favorkit.theory's random-feature MSE for the kernels of favorkit.kernels, against Monte
Carlo, scikit-learn's kernels and quadrature.

Monte Carlo references are plain NumPy: frequencies from ``kernels.get(name).draw`` scaled
by ``sqrt(input_scale_sq(gamma))``, the feature maps written out below (independent of
favorkit's transformers), R independent estimates of k(x, y) per case, and z-scores built
from the sample standard error.
"""

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.gaussian_process.kernels import Matern
from sklearn.metrics.pairwise import laplacian_kernel, rbf_kernel

from favorkit import kernels, theory

# (kernel name, nu) for every shift-invariant kernel.
SHIFT_INVARIANT = [
    ("gaussian", None),
    ("laplacian", None),
    ("matern", 0.5),
    ("matern", 1.5),
    ("matern", 2.5),
]
LAYOUTS = ["cossin", "cos"]
# (d, m, gamma, |Δ|): the pair is drawn in _pair; k(Δ) stays in about [0.2, 0.8].
TRIG_CASES = [(3, 4, 0.5, 0.8), (5, 16, 1.0, 0.6), (8, 32, 0.25, 1.5)]
# (d, m, angle between x and y): acute, right and obtuse.
ARCCOS_CASES = [(3, 8, 0.7), (5, 16, np.pi / 2), (8, 32, 2.4)]
ARCCOS_DEGREES = [0, 1, 2]
MATERN_NUS = [0.5, 1.5, 2.5]
STRUCTURED_PROJECTIONS = ["orthogonal", "qmc"]
GAIN_CASES = [("gaussian", None), ("matern", 1.5), ("matern", 2.5)]
N_REP = 4000

# Every z-check below is two-sided |z| < 4 (the orthogonal gain: one-sided z < -4), a false
# alarm of probability P(|Z| > 4) = 6.3e-5 under the null. N_CHECKS counts them all, so by
# Bonferroni the family-wise false-alarm probability of this file is at most
# N_CHECKS * 6.3e-5 < 1 % (asserted in test_family_wise_false_alarm_rate).
Z_MAX = 4.0
N_CHECKS = (
    2 * len(SHIFT_INVARIANT) * len(LAYOUTS) * len(TRIG_CASES)  # mean and MSE
    + 2 * len(ARCCOS_DEGREES) * len(ARCCOS_CASES)
    + 2  # Laplacian qmc
    + len(MATERN_NUS) * len(STRUCTURED_PROJECTIONS)
    + len(GAIN_CASES)
    + 3  # the arc-cosine kernel of degrees 2 to 4
    + 1  # the guard's check of the right formula
)


def _pair(d, length, seed):
    """A pair (x, y) with |x - y| = length in a random direction (x itself random)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=d) * 0.5
    u = rng.normal(size=d)
    return x, x - length * u / np.linalg.norm(u)


def _frequencies(name, projection, m, d, n_rep, rng, gamma=1.0, nu=None):
    """(n_rep, m, d): n_rep independent draws of the m frequencies ω = c ω₀."""
    kernel = kernels.get(name)
    params = {} if nu is None else {"nu": nu}
    c = np.sqrt(kernel.input_scale_sq(gamma))
    return np.stack([kernel.draw(projection, m, d, rng, **params) * c for _ in range(n_rep)])


def _trig_estimates(W, x, y, layout, rng):
    """φ(x)·φ(y) per repeat for W of shape (n_rep, m, d)."""
    m = W.shape[1]
    if layout == "cossin":
        # φ(u) = [cos(ω_i·u), sin(ω_i·u)] / sqrt(m), 2m columns.
        def phi(u):
            z = W @ u
            return np.concatenate([np.cos(z), np.sin(z)], axis=1) / np.sqrt(m)

        return np.sum(phi(x) * phi(y), axis=1)
    # φ(u) = sqrt(2/m) cos(ω_i·u + b_i), b ~ U[0, 2π), the same b for x and y.
    b = rng.uniform(0.0, 2.0 * np.pi, size=W.shape[:2])
    return np.sum(np.sqrt(2.0 / m) * np.cos(W @ x + b) * np.sqrt(2.0 / m) * np.cos(W @ y + b), 1)


def _arccos_estimates(W, x, y, degree):
    """φ(x)·φ(y) per repeat, φ(u) = sqrt(2/m) Θ(ω_i·u)(ω_i·u)ⁿ with Θ(0) = 0."""
    m = W.shape[1]

    def phi(u):
        z = W @ u
        return np.sqrt(2.0 / m) * np.where(z > 0, z**degree, 0.0)

    return np.sum(phi(x) * phi(y), axis=1)


def _z_mean(samples, target):
    return (samples.mean() - target) / (samples.std(ddof=1) / np.sqrt(samples.size))


@pytest.mark.parametrize(("name", "nu"), SHIFT_INVARIANT)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("d", "m", "gamma", "length"), TRIG_CASES)
def test_random_fourier_mse_against_monte_carlo(name, nu, layout, d, m, gamma, length):
    x, y = _pair(d, length, seed=d)
    rng = np.random.default_rng([d, m, LAYOUTS.index(layout), SHIFT_INVARIANT.index((name, nu))])
    W = _frequencies(name, "iid", m, d, N_REP, rng, gamma, nu)
    est = _trig_estimates(W, x, y, layout, rng)
    params = {} if nu is None else {"nu": nu}
    k = kernels.get(name).profile(x - y, gamma, **params)
    assert 0.1 < k < 0.9  # the case is informative: neither exact nor vanishing
    # (a) unbiased, (b) the sample MSE matches the closed form.
    assert abs(_z_mean(est, k)) < Z_MAX
    mse = theory.mse_random_fourier(x, y, m, kernel=name, gamma=gamma, features=layout, **params)
    assert abs(_z_mean((est - k) ** 2, mse)) < Z_MAX


@pytest.mark.parametrize("degree", ARCCOS_DEGREES)
@pytest.mark.parametrize(("d", "m", "angle"), ARCCOS_CASES)
def test_arccos_mse_against_monte_carlo(degree, d, m, angle):
    rng = np.random.default_rng([d, m, degree])
    x = np.zeros(d)
    y = np.zeros(d)
    x[0] = 1.2
    y[:2] = 0.9 * np.cos(angle), 0.9 * np.sin(angle)
    # The degree-2 squared errors have heavy tails (eighth moments of ω·x): more repeats.
    n_rep = 5 * N_REP if degree == 2 else N_REP
    W = _frequencies("arccos", "iid", m, d, n_rep, rng)
    est = _arccos_estimates(W, x, y, degree)
    k = kernels.arccos_pairs(x, y, degree)
    assert abs(_z_mean(est, k)) < Z_MAX
    assert abs(_z_mean((est - k) ** 2, theory.mse_arccos(x, y, m, degree=degree))) < Z_MAX


@pytest.mark.parametrize("m", [16, 12])  # a power of two and a truncated Sobol sequence
def test_laplacian_qmc_frequencies_are_unbiased(m):
    d, gamma = 4, 0.7
    x, y = _pair(d, 0.9, seed=11)
    rng = np.random.default_rng(m)
    # One independent scramble per repeat: the repeats are iid, each estimate unbiased.
    W = _frequencies("laplacian", "qmc", m, d, 1000, rng, gamma)
    est = _trig_estimates(W, x, y, "cossin", rng)
    assert abs(_z_mean(est, kernels.get("laplacian").profile(x - y, gamma))) < Z_MAX


@pytest.mark.parametrize("nu", MATERN_NUS)
@pytest.mark.parametrize("projection", STRUCTURED_PROJECTIONS)
def test_matern_structured_directions_are_unbiased(nu, projection):
    d, m, gamma = 6, 12, 0.8  # two orthogonal blocks; qmc truncated from 16 points
    x, y = _pair(d, 0.7, seed=13)
    rng = np.random.default_rng([int(10 * nu), len(projection)])
    W = _frequencies("matern", projection, m, d, 1000, rng, gamma, nu)
    est = _trig_estimates(W, x, y, "cossin", rng)
    assert abs(_z_mean(est, kernels.get("matern").profile(x - y, gamma, nu=nu))) < Z_MAX


@pytest.mark.parametrize(("name", "nu"), GAIN_CASES)
def test_orthogonal_frequencies_lower_the_mse(name, nu):
    # Measured only: no closed form is used for the orthogonal MSE (nor, to keep the two
    # arms alike, for the iid one). One-sided: orthogonal MSE < iid MSE by Z_MAX joint SEs.
    d = m = 8
    gamma = 0.5
    x, y = _pair(d, 1.2, seed=17)
    params = {} if nu is None else {"nu": nu}
    k = kernels.get(name).profile(x - y, gamma, **params)
    rng = np.random.default_rng(len(name))
    err2 = {}
    for projection in ("iid", "orthogonal"):
        W = _frequencies(name, projection, m, d, N_REP, rng, gamma, nu)
        err2[projection] = (_trig_estimates(W, x, y, "cossin", rng) - k) ** 2
    diff = err2["orthogonal"].mean() - err2["iid"].mean()
    se = np.hypot(*(e.std(ddof=1) / np.sqrt(e.size) for e in err2.values()))
    assert diff / se < -Z_MAX


def test_monte_carlo_reference_detects_a_wrong_formula():
    # Guard against a vacuous z-test: a 10 % error in the MSE, or the [cos, sin] formula
    # used for the offset features, must be caught by the same check.
    d, m, gamma = 5, 16, 1.0
    x, y = _pair(d, 0.6, seed=5)
    rng = np.random.default_rng(19)
    # 4 N_REP repeats: the 10 % error then sits near 10 standard errors, not at the edge.
    W = _frequencies("matern", "iid", m, d, 4 * N_REP, rng, gamma, 1.5)
    k = kernels.get("matern").profile(x - y, gamma, nu=1.5)
    err2 = (_trig_estimates(W, x, y, "cos", rng) - k) ** 2
    mse = theory.mse_random_fourier(x, y, m, kernel="matern", gamma=gamma, features="cos")
    assert abs(_z_mean(err2, mse)) < Z_MAX
    assert abs(_z_mean(err2, 1.1 * mse)) > Z_MAX
    wrong = theory.mse_random_fourier(x, y, m, kernel="matern", gamma=gamma, features="cossin")
    assert abs(_z_mean(err2, wrong)) > Z_MAX


def test_family_wise_false_alarm_rate():
    assert N_CHECKS * 2 * stats.norm.sf(Z_MAX) < 0.01


def test_kernel_values_agree_with_scikit_learn():
    rng = np.random.default_rng(23)
    X = rng.normal(size=(7, 4))
    Y = rng.normal(size=(5, 4))
    delta = X[:, None, :] - Y[None, :, :]
    for gamma in (0.3, 1.7):
        gaussian = kernels.get("gaussian")
        np.testing.assert_allclose(gaussian.profile(delta, gamma), rbf_kernel(X, Y, gamma=gamma))
        laplacian = kernels.get("laplacian")
        np.testing.assert_allclose(
            laplacian.profile(delta, gamma), laplacian_kernel(X, Y, gamma=gamma)
        )
        for nu in MATERN_NUS:
            reference = Matern(length_scale=1 / np.sqrt(2 * gamma), nu=nu)(X, Y)
            matern = kernels.get("matern")
            np.testing.assert_allclose(matern.profile(delta, gamma, nu=nu), reference)
            np.testing.assert_allclose(matern(X, Y, gamma, nu=nu), reference)


def test_closed_forms_special_cases():
    rng = np.random.default_rng(29)
    x, y = rng.normal(size=(2, 30, 4)) * 0.6
    m = rng.integers(1, 200, size=30)
    mse = theory.mse_random_fourier
    # Gaussian: k(2Δ) = k⁴, so the [cos, sin] MSE is (1 - k²)²/(2m); at gamma = 1/2 it is
    # the Performer's trigonometric MSE without the factor exp(|x|² + |y|²) (Lemma 2).
    k = np.exp(-0.5 * np.sum((x - y) ** 2, axis=-1))
    np.testing.assert_allclose(mse(x, y, m, gamma=0.5), (1 - k**2) ** 2 / (2 * m), rtol=1e-10)
    scale = np.exp(np.sum(x**2, axis=-1) + np.sum(y**2, axis=-1))
    np.testing.assert_allclose(scale * mse(x, y, m, gamma=0.5), theory.mse_trig(x, y, m))
    # Laplacian (and Matérn 1/2): k(2Δ) = k², so (1 - k²)/(2m) and (1 - k²/2)/m.
    k = np.exp(-0.8 * np.abs(x - y).sum(axis=-1))
    lap = mse(x, y, m, kernel="laplacian", gamma=0.8)
    np.testing.assert_allclose(lap, (1 - k**2) / (2 * m), rtol=1e-12)
    np.testing.assert_allclose(
        mse(x, y, m, kernel="laplacian", gamma=0.8, features="cos"), (1 - k**2 / 2) / m
    )
    # At equal columns (2m) [cos, sin] beats the offset features for every kernel here
    # (Sutherland and Schneider 2015), and at Δ = 0 [cos, sin] is exact, offsets are not.
    for name, nu in SHIFT_INVARIANT:
        params = {} if nu is None else {"nu": nu}
        cossin = mse(x, y, m, kernel=name, **params)
        offset = mse(x, y, 2 * m, kernel=name, features="cos", **params)
        assert np.all(cossin < offset)
        assert np.all(mse(x, x, m, kernel=name, **params) == 0)
        np.testing.assert_allclose(mse(x, x, m, kernel=name, features="cos", **params), 0.5 / m)
    # Arc-cosine: 0 for a zero vector; at x = y degree 0 has MSE 1/m (k_0 = 1).
    assert np.all(theory.mse_arccos(x, np.zeros(4), m, degree=1) == 0)
    assert np.all(theory.mse_arccos(x, np.zeros(4), m, degree=0) == 0)
    np.testing.assert_allclose(theory.mse_arccos(x, x, m, degree=0), 1 / m)
    # Vectorised over pairs and m.
    assert mse(x[:, None], y[None, :5], m[:, None]).shape == (30, 5)
    assert theory.mse_arccos(x[:, None], y[None, :5], m[:, None], degree=2).shape == (30, 5)


def _j_quadrature(theta, n):
    """J_n(θ) = π k_n(e_1, (cos θ, sin θ)) as a 1-D integral (θ in [0, π]).

    In polar coordinates ω = r(cos α, sin α): the radial integral of r^{2n+1} e^{-r²/2}/(2π)
    is 2ⁿ n!/(2π), and Θ(ω·x)Θ(ω·y) keeps α in (θ - π/2, π/2), so
    k_n = (2ⁿ n!/π) ∫ cosⁿ α cosⁿ(α - θ) dα.
    """
    value, _ = integrate.quad(
        lambda a: np.cos(a) ** n * np.cos(a - theta) ** n,
        theta - np.pi / 2,
        np.pi / 2,
        epsabs=1e-13,
        epsrel=1e-12,
    )
    return 2.0**n * np.prod(np.arange(1, n + 1)) * value


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_arccos_j_against_quadrature(degree):
    thetas = np.linspace(0.0, np.pi, 13)
    expected = [_j_quadrature(t, degree) for t in thetas]
    np.testing.assert_allclose(kernels.arccos_J(thetas, degree), expected, rtol=1e-9, atol=1e-9)


def test_arccos_kernel_degrees_2_to_4_against_monte_carlo():
    # k_n(x, y) = 2 E[Θ(ω·x)Θ(ω·y)(ω·x)ⁿ(ω·y)ⁿ] (Cho and Saul 2009, Eq. 1) at n = 2, 3, 4:
    # degrees 2 and 4 are the second moments of the degree 1 and 2 estimators, which
    # mse_arccos uses. Three z-checks (counted in N_CHECKS).
    rng = np.random.default_rng(31)
    d, n = 4, 400_000
    x = np.array([1.0, 0.3, 0.0, -0.2])
    y = np.array([0.4, 0.9, 0.5, 0.0])
    z = rng.standard_normal((n, d))
    zx, zy = z @ x, z @ y
    both = (zx > 0) & (zy > 0)
    for degree in (2, 3, 4):
        samples = 2.0 * np.where(both, (zx * zy) ** degree, 0.0)
        assert abs(_z_mean(samples, kernels.arccos_pairs(x, y, degree))) < Z_MAX


def test_theory_kernels_validate_inputs():
    x = np.ones(3)
    with pytest.raises(ValueError, match="not shift-invariant"):
        theory.mse_random_fourier(x, x, 4, kernel="softmax")
    with pytest.raises(ValueError, match="not shift-invariant"):
        theory.mse_random_fourier(x, x, 4, kernel="arccos")
    with pytest.raises(ValueError, match="unknown kernel"):
        theory.mse_random_fourier(x, x, 4, kernel="rbf")
    with pytest.raises(ValueError, match="features must be one of"):
        theory.mse_random_fourier(x, x, 4, features="sin")
    with pytest.raises(ValueError, match="nu=1.0 is not supported"):
        theory.mse_random_fourier(x, x, 4, kernel="matern", nu=1.0)
    with pytest.raises(ValueError, match="gamma must be"):
        theory.mse_random_fourier(x, x, 4, gamma=0.0)
    with pytest.raises(ValueError, match="must be >= 1"):
        theory.mse_random_fourier(x, x, 0)
    with pytest.raises(ValueError, match="same last axis"):
        theory.mse_arccos(x, np.ones(4), 2)
    for degree in (3, -1, True, "1"):
        with pytest.raises(ValueError, match="degree must be one of"):
            theory.mse_arccos(x, x, 2, degree=degree)
