"""The shift-invariant (Laplacian, Matérn) and arc-cosine kernels through the transformers
and attention: unbiased for every allowed projection, scikit-learn's conventions, clear
errors, and arc-cosine attention against its exact reference."""

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose
from sklearn.gaussian_process.kernels import Matern
from sklearn.kernel_approximation import RBFSampler
from sklearn.metrics.pairwise import laplacian_kernel, rbf_kernel

from favorkit import (
    ArcCosineFeatures,
    FavorAttention,
    OrthogonalRFF,
    kernel_attention,
    kernels,
    sampling,
)
from tests import naive

RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 5)) * 0.6

# (transformer, exact kernel matrix of X) for every kernel x allowed projection.
SHIFT_INVARIANT = [
    *(("gaussian", {}, p) for p in ("iid", "orthogonal", "qmc", "simplex")),
    *(("laplacian", {}, p) for p in ("iid", "qmc")),
    *(("matern", {"nu": nu}, p) for nu in (0.5, 1.5, 2.5) for p in ("iid", "orthogonal", "qmc")),
]


def _sklearn_kernel(kernel, gamma, **params):
    if kernel == "gaussian":
        return rbf_kernel(X, gamma=gamma)
    if kernel == "laplacian":
        return laplacian_kernel(X, gamma=gamma)
    return Matern(length_scale=1 / np.sqrt(2 * gamma), nu=params["nu"])(X)


def _z_unbiased(estimates, exact):
    """Largest |mean - exact| / SE over the entries (independent seeds along axis 0)."""
    mean = estimates.mean(axis=0)
    se = estimates.std(axis=0, ddof=1) / np.sqrt(len(estimates))
    return float(np.max(np.abs(mean - exact) / np.where(se > 0, se, np.inf)))


# Each test below is one family of z-tests over at most 36 kernel entries; |z| < 4 bounds
# its family-wise false-alarm rate at 36 * 6.3e-5 < 0.3 %.
Z_MAX = 4.0


@pytest.mark.parametrize("kernel, params, projection", SHIFT_INVARIANT)
@pytest.mark.parametrize("features", ["cossin", "cos"])
def test_trigonometric_features_are_unbiased(kernel, params, projection, features):
    gamma = 0.4
    exact = _sklearn_kernel(kernel, gamma, **params)
    estimates = np.stack(
        [
            (F := OrthogonalRFF(
                16, kernel=kernel, gamma=gamma, projection=projection, features=features,
                random_state=seed, **params,
            ).fit_transform(X)) @ F.T
            for seed in range(400)
        ]
    )  # fmt: skip
    assert _z_unbiased(estimates, exact) < Z_MAX


@pytest.mark.parametrize("degree", [0, 1, 2])
@pytest.mark.parametrize("projection", ["iid", "orthogonal", "simplex", "qmc"])
def test_arccos_features_are_unbiased(degree, projection):
    exact = kernels.arccos_kernel(X, X, degree)
    estimates = np.stack(
        [
            (F := ArcCosineFeatures(
                16, degree=degree, projection=projection, random_state=seed
            ).fit_transform(X)) @ F.T
            for seed in range(400)
        ]
    )  # fmt: skip
    assert _z_unbiased(estimates, exact) < Z_MAX


def test_a_biased_frequency_law_is_caught():
    """The unbiasedness test has power: Gaussian frequencies for the Laplacian kernel (the
    wrong law, same scale) fail it by far."""
    W = sampling.gaussian(16 * 400, 5, random_state=0).reshape(400, 16, 5)
    exact = laplacian_kernel(X, gamma=0.4)
    estimates = np.stack(
        [
            (F := OrthogonalRFF(16, kernel="laplacian", gamma=0.4, projection=w).fit_transform(X))
            @ F.T
            for w in W
        ]
    )
    assert _z_unbiased(estimates, exact) > 10


def test_gamma_scale_is_rbf_samplers():
    Xs = RNG.normal(size=(40, 7)) * 3
    expected = 1.0 / (7 * Xs.var())
    ours = OrthogonalRFF(8, gamma="scale", random_state=0).fit(Xs)
    assert ours.gamma_ == pytest.approx(expected, rel=1e-12)
    sparse = OrthogonalRFF(8, gamma="scale", random_state=0).fit(sp.csr_matrix(Xs))
    assert sparse.gamma_ == pytest.approx(expected, rel=1e-12)
    rbf = RBFSampler(gamma="scale", n_components=8, random_state=0).fit(Xs)
    assert ours.gamma_ == pytest.approx(rbf._gamma, rel=1e-12)
    with pytest.raises(ValueError, match='gamma="scale" needs X with a positive variance'):
        OrthogonalRFF(gamma="scale").fit(np.ones((4, 3)))


def test_cos_features_are_named_as_rbf_sampler_names_them():
    ours = OrthogonalRFF(4, features="cos", random_state=0).fit(X).get_feature_names_out()
    theirs = RBFSampler(n_components=4, random_state=0).fit(X).get_feature_names_out()
    assert [n.replace("orthogonalrff", "rbfsampler") for n in ours] == list(theirs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: OrthogonalRFF(64, kernel="laplacian", random_state=0),
        lambda: OrthogonalRFF(64, kernel="matern", nu=0.5, projection="qmc", random_state=0),
        lambda: ArcCosineFeatures(64, degree=2, random_state=0),
    ],
)
def test_float32_stays_float32_and_csr_equals_dense(make):
    Xd = RNG.normal(size=(20, 6))
    Xd[Xd < 0.3] = 0.0
    dense = make().fit(Xd).transform(Xd)
    assert_allclose(make().fit(Xd).transform(sp.csr_matrix(Xd)), dense, rtol=1e-12, atol=1e-14)
    F32 = make().fit(Xd).transform(Xd.astype(np.float32))
    assert F32.dtype == np.float32
    assert_allclose(F32, dense, rtol=2e-4, atol=2e-5)


def test_bad_parameters_get_clear_errors():
    with pytest.raises(ValueError, match=r"nu=1.0 is not supported.*0.5, 1.5, 2.5"):
        OrthogonalRFF(kernel="matern", nu=1.0).fit(X)
    with pytest.raises(ValueError, match="not unbiased for kernel='laplacian'.*not rotation"):
        OrthogonalRFF(kernel="laplacian", projection="orthogonal").fit(X)
    with pytest.raises(ValueError, match="not unbiased for kernel='laplacian'"):
        kernels.get("laplacian").draw("structured", 4, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="'degree' parameter"):
        ArcCosineFeatures(degree=3).fit(X)
    with pytest.raises(ValueError, match="'kernel' parameter"):
        OrthogonalRFF(kernel="arccos").fit(X)
    with pytest.raises(ValueError, match="unknown kernel 'cauchy'"):
        kernels.get("cauchy")
    with pytest.raises(ValueError, match="overflow float32"):
        ArcCosineFeatures(8, degree=2, random_state=0).fit(X).transform(
            np.full((2, 5), 1e20, dtype=np.float32)
        )
    # nu is checked only where it is used (as scikit-learn's RBFSampler ignores it).
    OrthogonalRFF(kernel="gaussian", nu=1.0).fit(X)


def test_laplacian_defaults_to_an_unbiased_projection():
    rff = OrthogonalRFF(8, kernel="laplacian", random_state=0).fit(X)
    assert rff.projection == "auto" and rff.transform(X).shape == (6, 16)


def test_exact_kernels_match_their_definitions():
    """The Matérn mapping ``ℓ = 1/sqrt(2 gamma)`` tends to the Gaussian kernel with the same
    gamma as nu grows (ν = 2.5 is already within a few percent at these distances)."""
    Y = RNG.normal(size=(4, 5))
    for nu in (0.5, 1.5, 2.5):
        assert_allclose(
            kernels.get("matern")(X, Y, 0.3, nu=nu),
            Matern(length_scale=1 / np.sqrt(0.6), nu=nu)(X, Y),
            rtol=1e-12,
        )
    gaps = [
        np.abs(kernels.get("matern")(X, Y, 0.3, nu=nu) - rbf_kernel(X, Y, gamma=0.3)).max()
        for nu in (0.5, 1.5, 2.5)
    ]
    assert gaps[0] > gaps[1] > gaps[2]


# --- arc-cosine attention --------------------------------------------------------------------


def test_kernel_attention_matches_the_dense_definition():
    Q, K = RNG.normal(size=(2, 2, 9, 4))
    V = RNG.normal(size=(2, 9, 3))
    mask = np.zeros((2, 9), dtype=bool)
    mask[1, 5:] = True
    for degree in (0, 1, 2):
        for causal in (False, True):
            out = kernel_attention(Q, K, V, f"arccos{degree}", causal=causal, key_padding_mask=mask)
            for b in range(2):
                W = kernels.arccos_kernel(Q[b], K[b], degree)
                if causal:
                    W = np.tril(W)
                W[:, mask[b]] = 0.0
                expected = W @ V[b] / W.sum(axis=1, keepdims=True)
                assert_allclose(out[b], expected, rtol=1e-12, atol=1e-14)


def test_kernel_attention_rejects_bad_kernels():
    Q = RNG.normal(size=(4, 3))
    with pytest.raises(ValueError, match="kernel must be"):
        kernel_attention(Q, Q, Q, "arccos3")
    with pytest.raises(ValueError, match="non-negative weights"):
        kernel_attention(Q, Q, Q, lambda a, b: a @ b.T)


@pytest.mark.parametrize("degree", [0, 1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_arccos_attention_is_linear_attention_with_arccos_features(degree, causal):
    """FavorAttention(activation="arccos<n>") with a projection W is exactly linear attention
    on ArcCosineFeatures with the same W (d^{-1/4} scaling and the constant cancel)."""
    Q, K, V = RNG.normal(size=(3, 12, 4))
    W = sampling.orthogonal(32, 4, random_state=1)
    att = FavorAttention(32, activation=f"arccos{degree}", projection=W)
    out = att.fit(Q).attend(Q, K, V, causal=causal)
    fq = ArcCosineFeatures(32, degree=degree, projection=W).fit(Q).transform(Q)
    fk = ArcCosineFeatures(32, degree=degree, projection=W).fit(K).transform(K)
    expected = naive.linear_attention_dense(fq, fk, V, causal=causal)
    assert_allclose(out, expected, rtol=1e-9, atol=1e-12)


def test_arccos_attention_converges_to_its_exact_reference():
    """The relative error falls like m^{-1/2} (the estimator is consistent, not a surrogate):
    16x the features, a quarter of the error, within the spread of 8 redraws."""
    Q, K, V = RNG.normal(size=(3, 128, 8))
    exact = kernel_attention(Q, K, V, "arccos1")

    def errors(m):
        return np.array(
            [
                np.linalg.norm(
                    FavorAttention(m, activation="arccos1", random_state=s).fit(Q).attend(Q, K, V)
                    - exact
                )
                / np.linalg.norm(exact)
                for s in range(8)
            ]
        )

    small, large = np.log(errors(64)), np.log(errors(1024))
    slope = (large.mean() - small.mean()) / np.log(16)
    se = np.sqrt(small.var(ddof=1) / 8 + large.var(ddof=1) / 8) / np.log(16)
    assert abs(slope + 0.5) < 4 * se
