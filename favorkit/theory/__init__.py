"""Closed forms: the error of every positive estimator, exactly, and the paper's bounds.

Every function is vectorised: pairs ``x``, ``y`` are arrays of shape ``(..., d)`` broadcast
against each other, and ``m`` broadcasts against the leading axes. The softmax kernel is
``SM(x, y) = exp(x·y)`` (Eq. 6 of Choromanski et al., "Rethinking Attention with
Performers", ICLR 2021); for attention, queries and keys are pre-scaled by ``d**-0.25``.
Equation, lemma and theorem numbers refer to that paper. The one-projection variances are
those of the feature maps themselves (:mod:`favorkit.maps`), so a new map brings its own.

==================================  ======================================================
The Performer's estimators
``softmax_kernel``                  ``SM(x, y) = exp(x·y)`` (Eq. 6)
``mse_trig``                        Lemma 2 (Eq. 8), trigonometric estimator ``SM^trig_m``
``mse_positive``                    Lemma 2 (Eq. 8), positive estimator ``SM^+_m``
``mse_hyperbolic``                  Lemma 2 (Eq. 8), hyperbolic estimator ``SM^hyp+_m``
``orthogonal_mse_bound``            Theorem 2, orthogonal positive features, ``m <= d``
``mse_ratio``                       Fig. 2's utility ``MSE_trig / MSE_+`` at ``|x| = |y|``
``crossover_angle``                 the angle where ``MSE_trig = MSE_+`` (Fig. 2)
``smreg_kernel``                    the regularized kernel SMREG of Theorem 1
``smreg_bounds``                    Theorem 1's bounds on ``SMREG / SM``
``uniform_convergence_features``    Theorem 4: projections for ``‖Â - A‖∞ <= ε``
Later estimators and couplings
``gerf_relative_variance``          GERF's one-projection relative variance (FAVOR++)
``optimal_gerf_a``                  FAVOR++'s variance-optimal ``A* <= 0``
``log_sphere_mgf``                  ``log Ω_d(s)``, ``Ω_d(s) = E_{u ~ S^{d-1}} e^{s u_1}``
``pair_covariance``                 relative covariance of two projections at a fixed
                                    cosine (0: orthogonal, ``-1/(d-1)``: simplex)
``coupled_relative_mse``            exact relative MSE of iid, orthogonal and simplex
                                    couplings of positive, GERF and hyperbolic features
Other kernels
``mse_random_fourier``              iid random Fourier features of a shift-invariant
                                    kernel, ``[cos, sin]`` or cosines with offsets
                                    (Rahimi and Recht 2007; Sutherland and Schneider 2015)
``mse_arccos``                      iid arc-cosine features, degree 0, 1, 2 (Cho and
                                    Saul 2009)
Your own data
``expected_error``                  predicted relative MSE of every kernel estimate
                                    (:class:`ExpectedError`) for a transformer's fit
``features_needed``                 the smallest m whose predicted error meets a target
==================================  ======================================================

This module knows no estimator object; it is what tests and experiments compare
measurements to.
"""

from favorkit.maps import optimal_gerf_a
from favorkit.theory._diagnostics import ExpectedError, expected_error, features_needed
from favorkit.theory._gerf import (
    coupled_relative_mse,
    gerf_relative_variance,
    log_sphere_mgf,
    pair_covariance,
)
from favorkit.theory._kernels import mse_arccos, mse_random_fourier
from favorkit.theory._paper import (
    crossover_angle,
    mse_hyperbolic,
    mse_positive,
    mse_ratio,
    mse_trig,
    orthogonal_mse_bound,
    smreg_bounds,
    smreg_kernel,
    softmax_kernel,
    uniform_convergence_features,
)

__all__ = [
    "ExpectedError",
    "coupled_relative_mse",
    "crossover_angle",
    "expected_error",
    "features_needed",
    "gerf_relative_variance",
    "log_sphere_mgf",
    "mse_arccos",
    "mse_hyperbolic",
    "mse_positive",
    "mse_random_fourier",
    "mse_ratio",
    "mse_trig",
    "optimal_gerf_a",
    "orthogonal_mse_bound",
    "pair_covariance",
    "smreg_bounds",
    "smreg_kernel",
    "softmax_kernel",
    "uniform_convergence_features",
]
