"""The closed forms answer for every finite input: a number (inf where the answer is
unbounded) or a clear ValueError, never a library's internal error; memory O(1) in z.

The first tests are the reproducers of failures seen on real data; the properties then
sweep log-uniform input ranges (hypothesis, 200 examples each).
"""

import math
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler

from favorkit import theory

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def log_uniform(low, high):
    return st.floats(math.log10(low), math.log10(high)).map(lambda e: float(10.0**e))


def _small_data(scale, seed=0):
    return np.random.default_rng(seed).normal(scale=0.5, size=(50, 4)) * scale


# --- reproducers --------------------------------------------------------------------------


def test_expected_error_on_all_of_digits_with_the_spline():
    """1797 standardized digits, gaussian, gamma = 0.01: > 4096 pairs take the spline path,
    whose covariance rounds to -1 for large z (log1p(-1) = -inf broke the spline)."""
    X = StandardScaler().fit_transform(load_digits().data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = theory.expected_error(X, X, 1000, kernel="gaussian", gamma=0.01)
    assert np.isfinite(err.mean) and err.mean > 0


@pytest.mark.parametrize(("scale", "target"), [(3, 0.05), (10, 0.05), (1, 1e-20)])
def test_features_needed_answers_huge_requirements(scale, target):
    X = _small_data(scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = theory.features_needed(X, X, target)
    assert isinstance(m, float) and m >= 2.0**62  # beyond any usable m, as a number


def test_features_needed_is_exact_for_tiny_targets_within_range():
    X = _small_data(1)
    err = theory.expected_error(X, X, 1)
    m = err.features_needed(1e-12)  # ~3e13 projections: bisection, then an exact scan
    assert isinstance(m, int)
    assert err.relative_mse(m) <= 1e-12 < err.relative_mse(m - 1)


def test_pair_covariance_memory_is_bounded_in_z():
    tracemalloc.start()
    value = theory.pair_covariance(3e5, 16)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert value == -1.0  # 1 + Cov = e^{-1.5e5}, below the smallest float
    assert peak < 64 * 2**20


def test_optimal_gerf_a_at_the_ends_of_float64():
    assert theory.optimal_gerf_a(1e300, 8) == pytest.approx(-3.125e298, rel=1e-12)
    assert theory.optimal_gerf_a(np.inf, 8) == -np.inf
    with pytest.raises(ValueError, match="NaN"):
        theory.optimal_gerf_a(np.nan, 8)


@pytest.mark.parametrize("target", [0.0, -1.0, np.nan, np.inf, "0.1", True])
def test_features_needed_rejects_bad_targets(target):
    X = _small_data(1)
    with pytest.raises(ValueError, match="target must be > 0"):
        theory.features_needed(X, X, target)


# --- properties ---------------------------------------------------------------------------


@PROPERTY
@given(
    z=log_uniform(1e-8, 1e6),
    d=st.integers(1, 256),
    coupling=st.sampled_from(["orthogonal", "simplex", "iid"]),
)
def test_pair_covariance_is_a_covariance_for_any_z(z, d, coupling):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = float(theory.pair_covariance(z, d, coupling))
    assert -1.0 <= value < np.inf


@PROPERTY
@given(phi=log_uniform(1e-300, 1e300), d=st.integers(1, 4096))
def test_optimal_gerf_a_is_finite_and_non_positive(phi, d):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = float(theory.optimal_gerf_a(phi, d))
    assert np.isfinite(a) and a <= 0.0
    assert float(theory.optimal_gerf_a(2 * phi, d)) <= a


@PROPERTY
@given(
    scale=log_uniform(1e-3, 1e2),
    target=log_uniform(1e-20, 10.0),
    estimator=st.sampled_from(["positive", "hyperbolic", "optimal", "saderf"]),
    projection=st.sampled_from(["iid", "orthogonal", "simplex"]),
)
def test_expected_error_and_features_needed_answer_any_scale(scale, target, estimator, projection):
    X = _small_data(scale, seed=1)[:12]
    kw = dict(estimator=estimator, projection=projection)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            err = theory.expected_error(X, X, 64, **kw)
        except ValueError as exc:  # only inputs whose statistics overflow float64
            assert "overflow" in str(exc)
            return
        m = err.features_needed(target)
    assert not np.isnan(err.mean) and err.mean >= 0
    if isinstance(m, int):
        assert m >= 1 and err.relative_mse(m) <= target
    else:
        assert m >= 2.0**62 or m == np.inf
