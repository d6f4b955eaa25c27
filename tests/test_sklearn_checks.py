"""scikit-learn's common estimator checks for the transformers, every kernel."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from favorkit import ArcCosineFeatures, OrthogonalRFF, PositiveRandomFeatures

# check_fit_idempotent feeds X ~ N(100, 1) (|x|² ~ 2e4). The positive features of either
# kernel are exp(ω·u - |u|²/2 ...) with u = sqrt(gamma) x (or sqrt(2 gamma) x): at gamma=1
# every one of them underflows, and transform rightly refuses (a row of zero features
# would estimate K(x, x) as 0). A gamma that keeps |u| of order one is what a user of such
# data would pick.
ESTIMATORS = [
    PositiveRandomFeatures(n_components=8, gamma=1e-4, random_state=0),
    PositiveRandomFeatures(
        n_components=8,
        kernel="gaussian",
        gamma=1e-4,
        estimator="hyperbolic",
        projection="iid",
        random_state=0,
    ),
    PositiveRandomFeatures(
        n_components=8, gamma=1e-4, estimator="optimal", projection="simplex", random_state=0
    ),
    PositiveRandomFeatures(
        n_components=8, kernel="gaussian", gamma=1e-4, estimator="saderf", random_state=0
    ),
    OrthogonalRFF(n_components=8, random_state=0),
    # Likewise |x| ~ 140: exp(gamma |x|²/2), the trigonometric softmax features' factor,
    # would overflow float64 at gamma=1 and transform rightly refuses.
    OrthogonalRFF(
        n_components=8,
        kernel="softmax",
        gamma=0.01,
        features="cos",
        projection="qmc",
        random_state=0,
    ),
    OrthogonalRFF(n_components=8, kernel="laplacian", gamma="scale", random_state=0),
    OrthogonalRFF(
        n_components=8, kernel="laplacian", projection="qmc", features="cos", random_state=0
    ),
    *(OrthogonalRFF(n_components=8, kernel="matern", nu=nu, random_state=0) for nu in (0.5, 2.5)),
    OrthogonalRFF(
        n_components=8, kernel="matern", nu=1.5, gamma="scale", projection="qmc", random_state=0
    ),
    *(ArcCosineFeatures(n_components=8, degree=n, random_state=0) for n in (0, 1, 2)),
]

# Expected failures, each with its reason.
EXPECTED_FAILED_CHECKS: dict = {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
