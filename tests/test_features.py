"""PositiveRandomFeatures and OrthogonalRFF: accuracy, statistics, validation, citizenship."""

import pickle
import warnings

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from favorkit import OrthogonalRFF, PositiveRandomFeatures, maps, sampling

# sklearn's test_rbf_sampler data: rows normalised to sum to one (small, nonnegative).
_rng = np.random.RandomState(0)
X = _rng.random_sample((300, 50))
Y = _rng.random_sample((300, 50))
X /= X.sum(axis=1)[:, None]
Y /= Y.sum(axis=1)[:, None]


def exact_kernel(kernel, gamma, A, B):
    if kernel == "softmax":
        return np.exp(gamma * A @ B.T)
    sq = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T
    return np.exp(-gamma * sq)


ALL_MAPS = [
    ("positive", "softmax"),
    ("positive", "gaussian"),
    ("hyperbolic", "softmax"),
    ("hyperbolic", "gaussian"),
    ("trig", "softmax"),
    ("trig", "gaussian"),
    ("cos", "gaussian"),
]


def make_map(estimator, kernel, **kw):
    if estimator in ("trig", "cos"):
        features = "cossin" if estimator == "trig" else "cos"
        return OrthogonalRFF(kernel=kernel, features=features, **kw)
    return PositiveRandomFeatures(kernel=kernel, estimator=estimator, **kw)


# --- accuracy against the exact kernel (sklearn's three thresholds) -------------------------


@pytest.mark.parametrize("estimator, kernel", [em for em in ALL_MAPS if em[0] != "cos"])
@pytest.mark.parametrize("projection", ["orthogonal", "iid", "qmc"])
def test_kernel_approximation_accuracy(estimator, kernel, projection):
    """The bar of sklearn's test_rbf_sampler: close to unbiased, small max and mean error."""
    gamma = 1.0
    fmap = make_map(
        estimator, kernel, n_components=1000, gamma=gamma, projection=projection, random_state=42
    )
    K_hat = fmap.fit(X).transform(X) @ fmap.transform(Y).T
    error = exact_kernel(kernel, gamma, X, Y) - K_hat
    assert abs(np.mean(error)) <= 0.01  # close to unbiased
    assert np.max(np.abs(error)) <= 0.1  # nothing too far off
    assert np.mean(np.abs(error)) <= 0.05  # mean is fairly close


def test_estimates_keep_the_true_scale_far_from_one():
    """No max-subtraction, no eps: exact identities at kernel values e^-20 and e^+20.

    Positive features give SM(x, -x) = exp(-|x|²) exactly (their variance vanishes at
    x + y = 0); trigonometric ones give SM(x, x) = exp(|x|²) exactly (x - y = 0). An
    implementation that normalises features by a data-dependent max fails both.
    """
    x = np.random.default_rng(0).normal(size=(1, 5))
    x *= np.sqrt(20.0) / np.linalg.norm(x)
    for est in ("positive", "hyperbolic"):
        prf = PositiveRandomFeatures(64, estimator=est, random_state=0).fit(x)
        assert_allclose(prf.transform(x) @ prf.transform(-x).T, np.exp(-20.0), rtol=1e-12)
    rff = OrthogonalRFF(64, kernel="softmax", random_state=0).fit(x)
    assert_allclose(rff.transform(x) @ rff.transform(x).T, np.exp(20.0), rtol=1e-12)


# --- statistics at fixed (x, y): Lemma 2 and Theorem 2 -----------------------------------


def grouped_estimates(fmap_factory, x, y, m, n_groups, projection):
    """n_groups independent m-feature estimates of K(x, y) from one transformer.

    One transformer with ``n_groups * m`` projections, the features summed per group of m
    and rescaled: each group is exactly an m-feature estimator, and distinct groups use
    independent rows (``projection`` stacks independent draws).
    """
    fmap = fmap_factory(projection).fit(x[None])
    Fx, Fy = fmap.transform(x[None])[0], fmap.transform(y[None])[0]
    prod = (Fx * Fy).reshape(-1, n_groups, m).sum(axis=(0, 2))  # blocks x groups x m
    return prod * n_groups


def stacked(sampler, m, d, n_groups, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([sampler(m, d, rng) for _ in range(n_groups)])


def pair(d, norm_x, norm_y, cos_angle, seed=0):
    rng = np.random.default_rng(seed)
    a, b = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
    x = norm_x * a
    y = norm_y * (cos_angle * a + np.sqrt(1 - cos_angle**2) * b)
    return x, y


def mse_z_score(estimates, truth, mse_theory):
    sq = (estimates - truth) ** 2
    return (sq.mean() - mse_theory) / (sq.std(ddof=1) / np.sqrt(len(sq)))


def lemma2_relative_mse(estimator, x, y, m):
    """Relative forms (MSE / SM²) of the Performer paper's Lemma 2 (Eq. 8), iid projections."""
    s_plus, s_minus = np.sum((x + y) ** 2), np.sum((x - y) ** 2)
    return {
        "trig": (np.cosh(s_minus) - 1) / m,
        "positive": (np.exp(s_plus) - 1) / m,
        "hyperbolic": (np.cosh(s_plus) - 1) / m,
    }[estimator]


@pytest.mark.parametrize("estimator", ["trig", "positive", "hyperbolic"])
@pytest.mark.parametrize("m", [4, 16, 64])
def test_lemma2_mse_matches_closed_form(estimator, m):
    d, n_groups = 8, 20000
    x, y = pair(d, 0.6, 0.7, 0.3)
    W = stacked(sampling.gaussian, m, d, n_groups, seed=m)

    def factory(projection):
        if estimator == "trig":
            return OrthogonalRFF(m * n_groups, kernel="softmax", projection=projection)
        return PositiveRandomFeatures(m * n_groups, estimator=estimator, projection=projection)

    est = grouped_estimates(factory, x, y, m, n_groups, W)
    sm = np.exp(x @ y)
    assert abs(mse_z_score(est, sm, sm**2 * lemma2_relative_mse(estimator, x, y, m))) < 4
    assert abs(est.mean() - sm) / (est.std() / np.sqrt(n_groups)) < 4  # unbiased


def test_mse_falls_like_one_over_m():
    """log MSE against log m has slope -1 (within three standard errors of the fit)."""
    d, n_groups = 8, 20000
    x, y = pair(d, 0.6, 0.7, 0.3)
    ms = np.array([2, 8, 32, 128])
    log_mse, log_se = [], []
    for m in ms:
        W = stacked(sampling.gaussian, m, d, n_groups, seed=int(m))
        est = grouped_estimates(
            lambda p, m=m: PositiveRandomFeatures(m * n_groups, projection=p), x, y, m, n_groups, W
        )
        sq = (est - np.exp(x @ y)) ** 2
        log_mse.append(np.log(sq.mean()))
        log_se.append(sq.std(ddof=1) / np.sqrt(n_groups) / sq.mean())  # delta method
    A = np.vstack([np.log(ms), np.ones(len(ms))]).T
    w = 1 / np.asarray(log_se) ** 2
    cov = np.linalg.inv(A.T @ (A * w[:, None]))
    slope = (cov @ A.T @ (w * np.asarray(log_mse)))[0]
    assert abs(slope + 1) < 3 * np.sqrt(cov[0, 0]), (slope, np.sqrt(cov[0, 0]))


@pytest.mark.parametrize("m", [8, 16])
def test_theorem2_orthogonal_mse_at_most_iid(m):
    """Theorem 2 (v4): MSE_ort <= MSE_iid - 2(m-1)/(m(d+2)) (SM - Λ)², for m <= d."""
    d, n_groups = 16, 40000
    x, y = pair(d, 0.6, 0.6, 0.6)
    sm = np.exp(x @ y)
    lam = np.exp(-(x @ x + y @ y) / 2)
    mse_iid = sm**2 * lemma2_relative_mse("positive", x, y, m)
    bound = mse_iid - 2 * (m - 1) / (m * (d + 2)) * (sm - lam) ** 2
    W = stacked(sampling.orthogonal, m, d, n_groups, seed=m)
    est = grouped_estimates(
        lambda p: PositiveRandomFeatures(m * n_groups, projection=p), x, y, m, n_groups, W
    )
    # Not significantly above the bound, and significantly below the iid MSE.
    assert mse_z_score(est, sm, bound) < 3
    assert mse_z_score(est, sm, mse_iid) < -3


# --- behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator, kernel", ALL_MAPS)
def test_output_shape_dtype_and_names(estimator, kernel):
    fmap = make_map(estimator, kernel, n_components=7, random_state=0).fit(X)
    for dtype in (np.float32, np.float64):
        out = fmap.transform(X.astype(dtype))
        assert out.dtype == dtype
        assert out.shape == (len(X), len(fmap.get_feature_names_out()))
    paired = estimator in ("hyperbolic", "trig")
    assert out.shape[1] == (14 if paired else 7)
    names = fmap.get_feature_names_out()
    assert len(set(names)) == len(names)
    if estimator == "hyperbolic":
        assert names[0] == "positiverandomfeatures_plus0"
        assert names[7] == "positiverandomfeatures_minus0"
    if estimator == "trig":
        assert names[7] == "orthogonalrff_sin0"


def test_float32_and_float64_agree_and_share_weights():
    prf = PositiveRandomFeatures(64, estimator="hyperbolic", random_state=0)
    f64 = prf.fit(X).transform(X)
    W64 = prf.projection_.copy()
    f32 = prf.fit(X.astype(np.float32)).transform(X.astype(np.float32))
    assert_array_equal(prf.projection_, W64)
    assert_allclose(f32, f64, rtol=2e-5)


def test_positive_features_are_positive():
    for est in ("positive", "hyperbolic"):
        F = PositiveRandomFeatures(50, estimator=est, random_state=0).fit(X).transform(3 * X)
        assert np.all(F > 0)


def test_cos_features_are_rbfsampler_features():
    """features="cos" is RBFSampler's map: sqrt(2/m) cos(sqrt(2 gamma) W x + b)."""
    W = np.random.default_rng(0).normal(size=(9, X.shape[1]))
    rff = OrthogonalRFF(9, gamma=3.0, projection=W, features="cos", random_state=0).fit(X)
    expected = np.sqrt(2 / 9) * np.cos(np.sqrt(6.0) * X @ W.T + rff.random_offset_)
    assert_allclose(rff.transform(X), expected, rtol=1e-12, atol=1e-14)


def test_gaussian_kernel_estimate_is_exact_on_the_diagonal_for_trig():
    F = OrthogonalRFF(5, random_state=0).fit(X).transform(X)
    assert_allclose((F * F).sum(1), 1.0)


def test_user_projection_is_used_verbatim():
    W = np.random.default_rng(0).normal(size=(6, X.shape[1]))
    prf = PositiveRandomFeatures(6, projection=W).fit(X)
    assert_array_equal(prf.projection_, W)
    expected = np.exp(X @ W.T - 0.5 * (X * X).sum(1)[:, None]) / np.sqrt(6)
    assert_allclose(prf.transform(X), expected, rtol=1e-12)


def test_random_state_reproducible_and_transform_deterministic():
    a = PositiveRandomFeatures(20, random_state=3).fit(X)
    b = PositiveRandomFeatures(20, random_state=3).fit(X)
    assert_array_equal(a.transform(X), b.transform(X))
    assert_array_equal(a.transform(X), a.transform(X))
    c = PositiveRandomFeatures(20, random_state=np.random.default_rng(3)).fit(X)
    assert c.projection_.shape == (20, 50)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("estimator, kernel", ALL_MAPS)
def test_bit_identical_with_one_and_two_threads(dtype, estimator, kernel, restore_numba_threads):
    rng = np.random.default_rng(0)
    Z = (rng.normal(size=(10000, 16)) / 4).astype(dtype)
    fmap = make_map(estimator, kernel, n_components=32, random_state=0).fit(Z)
    numba.set_num_threads(1)
    one = fmap.transform(Z)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    two = fmap.transform(Z)
    assert_array_equal(one, two)


@pytest.mark.parametrize("estimator, kernel", ALL_MAPS)
def test_sparse_csr_input_equals_dense(estimator, kernel):
    Xs = X.copy()
    Xs[Xs < 0.02] = 0
    fmap = make_map(estimator, kernel, n_components=16, random_state=0).fit(Xs)
    assert_allclose(fmap.transform(sp.csr_matrix(Xs)), fmap.transform(Xs), rtol=1e-12)


# --- sklearn integration ---------------------------------------------------------------------


def test_pipeline_example_from_the_readme():
    X_d, y_d = load_digits(return_X_y=True)
    pipe = make_pipeline(
        StandardScaler(),
        PositiveRandomFeatures(n_components=1000, kernel="gaussian", gamma=0.01, random_state=0),
        LogisticRegression(max_iter=3000),
    )
    pipe.fit(X_d[:1200], y_d[:1200])
    assert pipe.score(X_d[1200:], y_d[1200:]) > 0.85  # chance is 0.1; RBFSampler gets 0.91


def test_grid_search_over_n_components():
    X_d, y_d = load_digits(return_X_y=True)
    pipe = make_pipeline(
        StandardScaler(), OrthogonalRFF(gamma=0.01, random_state=0), RidgeClassifier()
    )
    search = GridSearchCV(pipe, {"orthogonalrff__n_components": [8, 256]}, cv=3)
    search.fit(X_d, y_d)
    assert search.best_params_["orthogonalrff__n_components"] == 256


def test_clone_and_pickle():
    prf = PositiveRandomFeatures(12, kernel="gaussian", estimator="hyperbolic", random_state=1)
    assert clone(prf).get_params() == prf.get_params()
    prf.fit(X)
    restored = pickle.loads(pickle.dumps(prf))
    assert_array_equal(restored.transform(X), prf.transform(X))


def test_set_output_pandas():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(X[:, :4], columns=["a", "b", "c", "d"])
    rff = OrthogonalRFF(3, random_state=0).set_output(transform="pandas").fit(df)
    out = rff.transform(df)
    assert list(out.columns) == [f"orthogonalrff_cos{j}" for j in range(3)] + [
        f"orthogonalrff_sin{j}" for j in range(3)
    ]
    assert list(rff.feature_names_in_) == ["a", "b", "c", "d"]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PositiveRandomFeatures, OrthogonalRFF])
@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_components": 0}, "'n_components' parameter .* must be an int in the range"),
        ({"gamma": 0.0}, "'gamma' parameter .* must be a float in the range \\(0.0, inf\\)"),
        ({"gamma": -1.0}, "'gamma' parameter"),
        ({"kernel": "cauchy"}, "'kernel' parameter .* must be a str among"),
        ({"projection": "hadamard"}, "'projection' parameter"),
    ],
)
def test_bad_parameters(cls, params, match):
    with pytest.raises(ValueError, match=match):
        cls(**params).fit(X)


def test_bad_estimator_and_features_names():
    with pytest.raises(ValueError, match="'estimator' parameter .* must be a str among"):
        PositiveRandomFeatures(estimator="trig").fit(X)
    with pytest.raises(ValueError, match="'features' parameter .* must be a str among"):
        OrthogonalRFF(features="sin").fit(X)


def test_user_projection_of_wrong_shape():
    with pytest.raises(ValueError, match=r"= \(4, 50\): 3 columns, not d = 50"):
        PositiveRandomFeatures(4, projection=np.zeros((4, 3))).fit(X)


@pytest.mark.parametrize("cls", [PositiveRandomFeatures, OrthogonalRFF])
def test_bad_input_data(cls):
    fitted = cls(4, random_state=0).fit(X)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        fitted.transform(bad)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        cls(4).fit(bad)
    with pytest.raises(ValueError, match="X has 3 features, but .* is expecting 50 features"):
        fitted.transform(X[:, :3])
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        fitted.transform(X[0])
    with pytest.raises(ValueError, match="Found array with 0 sample"):
        fitted.transform(X[:0])
    with pytest.raises(ValueError, match="Complex data not supported"):
        fitted.transform(X + 1j)
    with pytest.raises(ValueError, match="not fitted|NotFittedError|This .* instance is not"):
        cls(4).transform(X)


@pytest.mark.parametrize("estimator", maps.names("exponential"))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transform_rejects_nan_and_inf_found_on_the_fly(estimator, dtype):
    """Dense transform checks finiteness through the row norms, not a separate pass."""
    fitted = PositiveRandomFeatures(4, estimator=estimator, random_state=0).fit(X)
    bad = np.repeat(X, 20, axis=0).astype(dtype)  # several row blocks
    bad[5000, 3] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        fitted.transform(bad)
    bad[5000, 3] = -np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        fitted.transform(bad)


def test_finite_values_whose_norm_overflows():
    fitted = PositiveRandomFeatures(4, random_state=0).fit(X)
    huge = X.copy()
    huge[0, 0] = 1e200
    with pytest.raises(ValueError, match="squared norm that overflows float64.*Scale X down"):
        fitted.transform(huge)


def test_overflow_raises_with_the_fix():
    # A projection row of norm 20 and a data row along it: exponent w·x - |x|²/2 = 200 > 88.
    W = np.zeros((2, 3))
    W[0, 0] = 20.0
    prf = PositiveRandomFeatures(2, projection=W).fit(np.zeros((1, 3)))
    Xo = np.array([[20.0, 0.0, 0.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="overflow float32.*pass float64 data"):
        prf.transform(Xo)
    assert np.isfinite(prf.transform(Xo.astype(np.float64))).all()
    with pytest.raises(ValueError, match="overflow float32.*grow like exp"):
        OrthogonalRFF(2, kernel="softmax").fit(Xo).transform(Xo)


def test_underflow_raises_with_the_fix():
    Xu = np.full((3, 4), 5.0, dtype=np.float32)
    prf = PositiveRandomFeatures(8, kernel="gaussian", random_state=0).fit(Xu)
    with pytest.raises(
        ValueError, match="3 of 3 rows .* below the smallest normal float32.*float64"
    ):
        prf.transform(Xu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(prf.transform(Xu.astype(np.float64)) > 0)
