"""Samplers: shapes, seeding, orthogonality and — above all — unbiasedness.

The bias test is a per-feature MGF check across several directions z (it catches
orthogonal blocks that are not Haar, e.g. QR without the sign fix): for rows ω that are
marginally N(0, I_d), E[exp(ω·z)] = exp(|z|²/2) for every z. Its standard error comes
from the exact variance Var exp(ω·z) = exp(2|z|²) - exp(|z|²) of an iid row (Lemma 2's
ingredient); for orthogonal blocks the variance of the mean is smaller still (Theorem 6:
exp has nonnegative Taylor coefficients), so the z-score is conservative there.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from favorkit import sampling

D = 8
Z_DIRECTIONS = {
    "diagonal": np.ones(D) / np.sqrt(D),
    "e1": np.eye(D)[0],
    "e_last": np.eye(D)[-1],
    "random": np.random.default_rng(7).normal(size=D),
}
Z_NORM = 0.8
Z_LIMIT = 4.0  # |z-score| above which a mean is called biased (two-sided p ~ 6e-5 per check)


def mgf_z_scores(make_block, n_draws=2000, seed=0):
    """z-scores of the mean of exp(ω·z) over all rows of n_draws blocks, per direction."""
    rng = np.random.default_rng(seed)
    W = np.concatenate([make_block(rng) for _ in range(n_draws)])
    scores = {}
    for name, direction in Z_DIRECTIONS.items():
        z = Z_NORM * direction / np.linalg.norm(direction)
        s2 = z @ z
        target = np.exp(s2 / 2)
        se = np.sqrt((np.exp(2 * s2) - np.exp(s2)) / W.shape[0])
        scores[name] = (np.exp(W @ z).mean() - target) / se
    return scores


UNBIASED = {
    "iid": lambda rng: sampling.gaussian(16, D, rng),
    "orthogonal": lambda rng: sampling.orthogonal(16, D, rng),
    "orthogonal_truncated": lambda rng: sampling.orthogonal(13, D, rng),
    "qmc": lambda rng: sampling.qmc(16, D, rng),
    "simplex": lambda rng: sampling.simplex(16, D, rng),
    "simplex_truncated": lambda rng: sampling.simplex(13, D, rng),
}


@pytest.mark.parametrize("name", list(UNBIASED))
def test_unbiased_projections_have_gaussian_mgf(name):
    scores = mgf_z_scores(UNBIASED[name])
    assert all(abs(s) < Z_LIMIT for s in scores.values()), scores


def test_qr_without_sign_fix_is_caught_by_the_bias_test():
    """The same test must fail on the construction used by the official code."""
    scores = mgf_z_scores(lambda rng: sampling.orthogonal(16, D, rng, sign_fix=False))
    assert max(abs(s) for s in scores.values()) > 3 * Z_LIMIT, scores
    # and the lean is direction dependent: the all-ones direction is underestimated
    assert scores["diagonal"] < -Z_LIMIT


def test_smreg_rows_have_fixed_norm_and_underestimate():
    W = sampling.orthogonal(40, D, 0, norms="fixed")
    assert_allclose(np.linalg.norm(W, axis=1), np.sqrt(D))
    scores = mgf_z_scores(lambda rng: sampling.orthogonal(16, D, rng, norms="fixed"))
    # SMREG <= SM (Theorem 1): the mean of exp(ω·z) falls short of exp(|z|²/2).
    assert all(s < 0 for s in scores.values()), scores


@pytest.mark.parametrize("m", [1, 5, 8, 9, 24])
def test_orthogonal_blocks_are_orthogonal(m):
    W = sampling.orthogonal(m, D, 0)
    directions = W / np.linalg.norm(W, axis=1, keepdims=True)
    for start in range(0, m, D):
        block = directions[start : start + D]
        assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-12)


def test_orthogonal_blocks_are_independent():
    W = sampling.orthogonal(2 * D, D, 0)
    a, b = W[:D], W[D:]
    assert not np.allclose(np.abs(a @ b.T), np.diag(np.diag(np.abs(a @ b.T))))


@pytest.mark.parametrize("m", [3, 8, 20])
def test_simplex_blocks_point_to_simplex_vertices(m):
    W = sampling.simplex(m, D, 0)
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    for start in range(0, m, D):
        block = U[start : start + D]
        expected = np.where(np.eye(len(block)) == 1, 1.0, -1.0 / (D - 1))
        assert_allclose(block @ block.T, expected, atol=1e-12)


def test_simplex_in_one_dimension_has_random_signs():
    W = sampling.simplex(400, 1, 0)
    assert 150 < (W > 0).sum() < 250


def test_structured_blocks_are_orthogonal_when_d_is_a_power_of_two():
    W = sampling.structured(2 * D, D, 0)
    directions = W / np.linalg.norm(W, axis=1, keepdims=True)
    assert_allclose(directions[:D] @ directions[:D].T, np.eye(D), atol=1e-12)


def test_structured_pads_to_a_power_of_two():
    # d = 5 is padded to p = 8: one block holds 8 rows, restricted to 5 coordinates.
    W = sampling.structured(8, 5, 0)
    assert W.shape == (8, 5)
    assert np.all(np.isfinite(W))


@pytest.mark.parametrize(
    "sampler", [sampling.gaussian, sampling.orthogonal, sampling.structured, sampling.qmc]
)
def test_seeding(sampler):
    a = sampler(10, 6, 3)
    assert a.dtype == np.float64 and a.shape == (10, 6)
    assert_allclose(sampler(10, 6, 3), a)
    assert_allclose(sampler(10, 6, np.random.RandomState(3)), a)
    assert not np.allclose(sampler(10, 6, 4), a)
    g1 = sampler(10, 6, np.random.default_rng(5))
    assert_allclose(sampler(10, 6, np.random.default_rng(5)), g1)


def test_qmc_rows_are_more_even_than_iid():
    """Scrambled Sobol: the sample mean of the rows is much closer to 0 than iid's."""
    iid = np.mean([np.linalg.norm(sampling.gaussian(256, 4, s).mean(0)) for s in range(50)])
    qmc = np.mean([np.linalg.norm(sampling.qmc(256, 4, s).mean(0)) for s in range(50)])
    assert qmc < iid / 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_shapes(bad):
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        sampling.gaussian(bad, 3)
    with pytest.raises(ValueError, match="n_features must be a positive integer"):
        sampling.orthogonal(3, bad)


def test_bad_norms():
    with pytest.raises(ValueError, match='norms must be "chi" or "fixed"'):
        sampling.orthogonal(3, 3, norms="unit")


def test_qmc_dimension_limit():
    with pytest.raises(ValueError, match="n_features <= 21201"):
        sampling.qmc(2, 30000)


def test_draw_by_name_and_array():
    assert sampling.draw("iid", 4, 3, 0).shape == (4, 3)
    W = np.arange(12).reshape(4, 3)
    out = sampling.draw(W, 4, 3)
    assert out.dtype == np.float64
    assert_allclose(out, W)


def test_draw_errors():
    with pytest.raises(ValueError, match="projection must be one of"):
        sampling.draw("hadamard", 4, 3)
    with pytest.raises(
        ValueError, match=r"= \(4, 3\): 3 rows, not n_components = 4; 4 columns, not d = 3,"
    ):
        sampling.draw(np.zeros((3, 4)), 4, 3)
    with pytest.raises(ValueError, match=r"= \(4, 3\): it has 1 dimensions"):
        sampling.draw(np.zeros(12), 4, 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        sampling.draw(np.full((4, 3), np.nan), 4, 3)
    with pytest.raises(ValueError, match="real numeric array"):
        sampling.draw(np.zeros((4, 3), dtype=complex), 4, 3)
