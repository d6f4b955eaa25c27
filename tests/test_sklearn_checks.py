"""scikit-learn's common estimator checks for both transformers."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from favorkit import OrthogonalRFF, PositiveRandomFeatures

ESTIMATORS = [
    PositiveRandomFeatures(n_components=8, random_state=0),
    PositiveRandomFeatures(
        n_components=8, kernel="gaussian", estimator="hyperbolic", projection="iid", random_state=0
    ),
    PositiveRandomFeatures(
        n_components=8, estimator="optimal", projection="simplex", random_state=0
    ),
    PositiveRandomFeatures(n_components=8, kernel="gaussian", estimator="saderf", random_state=0),
    OrthogonalRFF(n_components=8, random_state=0),
    # check_fit_idempotent feeds |x| ~ 140: exp(gamma |x|²/2), the trigonometric softmax
    # features' factor, would overflow float64 at gamma=1 and transform rightly refuses.
    OrthogonalRFF(
        n_components=8,
        kernel="softmax",
        gamma=0.01,
        features="cos",
        projection="qmc",
        random_state=0,
    ),
]

# Expected failures, each with its reason.
EXPECTED_FAILED_CHECKS: dict = {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
