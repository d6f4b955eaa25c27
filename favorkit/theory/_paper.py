"""Closed-form MSE, variance and bounds of the Performer's softmax-kernel estimators.

Every function is vectorised: ``x`` and ``y`` are arrays of shape ``(..., d)`` (pairs along
the leading axes, broadcast against each other) and ``m`` broadcasts against the leading
axes. The softmax kernel is ``SM(x, y) = exp(x·y)`` (Eq. 6 of Choromanski et al., ICLR
2021, arXiv v4); for attention, queries and keys are pre-scaled by ``d**-0.25``. Equation
numbers refer to that paper.

Notation: ``z = x + y``, ``Δ = x - y``, ``Λ = exp(-(|x|² + |y|²)/2)``, ``m`` the number of
random projections (the trigonometric and hyperbolic estimators output ``2m`` features).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

from favorkit._typing import ArrayLike, FloatOrArray, NDArray
from favorkit.theory._checks import as_pairs, projections

__all__ = [
    "crossover_angle",
    "mse_hyperbolic",
    "mse_positive",
    "mse_ratio",
    "mse_trig",
    "orthogonal_mse_bound",
    "smreg_bounds",
    "smreg_kernel",
    "softmax_kernel",
    "uniform_convergence_features",
]


def _sq(v):
    return np.einsum("...i,...i->...", v, v)


def _sq_dot(x, y):
    return np.einsum("...i,...i->...", x, y)


def softmax_kernel(x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """The softmax kernel ``SM(x, y) = exp(x·y)`` (Eq. 6).

    Parameters
    ----------
    x, y : array-like of shape (..., d)
        Pairs of vectors (broadcast against each other).

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import theory
    >>> float(theory.softmax_kernel([1.0, 0.0], [0.5, 2.0]))
    1.6487212707001282
    """
    x, y = as_pairs(x, y)
    return np.exp(np.einsum("...i,...i->...", x, y))


def mse_trig(x: ArrayLike, y: ArrayLike, m: ArrayLike) -> NDArray[np.float64]:
    """MSE of the trigonometric estimator ``SM^trig_m`` with iid projections (Lemma 2, Eq. 8).

    ``MSE = (1/(2m)) exp(|x+y|²) SM(x,y)^-2 (1 - exp(-|x-y|²))²``, computed in the equal
    relative form ``SM² (cosh|x-y|² - 1) / m``. It vanishes at
    ``x = y`` and blows up relative to SM as SM -> 0.

    Parameters
    ----------
    x, y : array-like of shape (..., d)
        Pairs of vectors (broadcast against each other).
    m : int or array-like
        Number of random projections (the estimator has ``2m`` features ``sin, cos``).

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import theory
    >>> x, y = np.array([0.5, 0.0]), np.array([0.0, 0.5])
    >>> round(float(theory.mse_trig(x, y, 16)), 6)
    0.007977
    """
    x, y = as_pairs(x, y)
    m = projections(m)
    d2 = _sq(x - y)
    # SM² (cosh|Δ|² - 1)/m; cosh u - 1 = 2 sinh²(u/2) keeps precision near x = y.
    return np.exp(2.0 * _sq_dot(x, y)) * 2.0 * np.sinh(0.5 * d2) ** 2 / m


def mse_positive(x: ArrayLike, y: ArrayLike, m: ArrayLike) -> NDArray[np.float64]:
    """MSE of the positive estimator ``SM^+_m`` with iid projections (Lemma 2, Eq. 8).

    ``MSE = (1/m) exp(|x+y|²) SM(x,y)² (1 - exp(-|x+y|²))``, i.e. relative MSE
    ``(exp|x+y|² - 1)/m``: zero at ``x = -y``, worst for long
    aligned vectors.

    Parameters
    ----------
    x, y : array-like of shape (..., d)
        Pairs of vectors (broadcast against each other).
    m : int or array-like
        Number of random projections (= number of features).

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import theory
    >>> x, y = np.array([0.5, 0.0]), np.array([0.0, 0.5])
    >>> round(float(theory.mse_positive(x, y, 16)), 6)
    0.040545
    """
    x, y = as_pairs(x, y)
    m = projections(m)
    return np.exp(2.0 * _sq_dot(x, y)) * np.expm1(_sq(x + y)) / m


def mse_hyperbolic(x: ArrayLike, y: ArrayLike, m: ArrayLike) -> NDArray[np.float64]:
    """MSE of the hyperbolic estimator ``SM^hyp+_m`` with iid projections (Lemma 2, Eq. 8).

    ``MSE = ½ (1 - exp(-|x+y|²)) MSE(SM^+_m)``, i.e. relative MSE ``(cosh|x+y|² - 1)/m``.
    With ``m`` projections (``2m`` features) it beats ``SM^+_{2m}`` everywhere.

    Parameters
    ----------
    x, y : array-like of shape (..., d)
        Pairs of vectors (broadcast against each other).
    m : int or array-like
        Number of random projections (the estimator has ``2m`` features ``exp(±ω·x)``).

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import theory
    >>> x, y = np.array([0.5, 0.0]), np.array([0.0, 0.5])
    >>> round(float(theory.mse_hyperbolic(x, y, 16)), 6)
    0.007977
    """
    x, y = as_pairs(x, y)
    m = projections(m)
    z2 = _sq(x + y)
    return 0.5 * -np.expm1(-z2) * mse_positive(x, y, m)


def orthogonal_mse_bound(
    x: ArrayLike, y: ArrayLike, m: ArrayLike, *, blocks: bool = False
) -> NDArray[np.float64]:
    """Upper bound on the MSE of orthogonal positive features (Theorem 2, arXiv v4).

    For ``m <= d`` exactly orthogonal projections with Gaussian marginals,

    ``MSE(SM^ort+_m) <= MSE(SM^+_m) - 2(m-1)/(m(d+2)) (SM(x,y) - exp(-(|x|²+|y|²)/2))²``

    (v4 statement; the older ``... SM²`` version is wrong and not used). The same bound
    holds for SMREG features. ``d`` is the length of ``x``'s last axis.

    Parameters
    ----------
    x, y : array-like of shape (..., d)
        Pairs of vectors (broadcast against each other).
    m : int or array-like
        Number of projections. Must be ``<= d`` unless ``blocks=True``.
    blocks : bool, default=False
        For ``m > d``, favorkit (like the paper, App. B.2) stacks ``ceil(m/d)`` independent
        orthogonal blocks, the last truncated to ``m mod d`` rows. The estimator is then the
        size-weighted mean of independent unbiased block estimators, so its MSE is at most
        ``sum_j (s_j/m)² bound(s_j)`` over block sizes ``s_j`` [derived, not in the paper].

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import theory
    >>> x = np.full(16, 0.1); y = np.full(16, -0.05)
    >>> bool(theory.orthogonal_mse_bound(x, y, 16) < theory.mse_positive(x, y, 16))
    True
    """
    x, y = as_pairs(x, y)
    m = projections(m)
    d = x.shape[-1]
    if not np.all(m == np.round(m)):
        raise ValueError("m must be an integer number of projections.")
    if np.any(m > d) and not blocks:
        raise ValueError(
            f"Theorem 2 covers m <= d = {d} projections (one orthogonal block); got m up to "
            f"{int(np.max(m))}. Pass blocks=True for the bound on stacked independent blocks."
        )

    def one_block(s):
        # Theorem 2 (v4): MSE_iid - 2(s-1)/(s(d+2)) (SM - Λ)².
        lam = np.exp(-0.5 * (_sq(x) + _sq(y)))
        gap = (softmax_kernel(x, y) - lam) ** 2
        return mse_positive(x, y, s) - 2.0 * (s - 1.0) / (s * (d + 2.0)) * gap

    n_full = np.floor(m / d)
    rest = m - n_full * d
    # Independent blocks: MSE of the size-weighted mean is sum_j (s_j/m)² MSE_j.
    out = n_full * (d / m) ** 2 * one_block(np.float64(d))
    rest_term = (rest / m) ** 2 * one_block(np.maximum(rest, 1.0))
    return out + np.where(rest > 0, rest_term, 0.0)


def mse_ratio(angle: ArrayLike, length: ArrayLike) -> FloatOrArray:
    """Fig. 2's utility ``r = MSE(SM^trig_m) / MSE(SM^+_m)`` at ``|x| = |y| = length``.

    With ``φ`` the angle between x and y and ``l`` the common length, Lemma 2 gives
    (derived from Lemma 2; the paper prints only the plot)

    ``r(φ, l) = (1 - e^{-2l²(1-cos φ)})² / (2 e^{4l² cos φ} (1 - e^{-2l²(1+cos φ)}))``,

    independent of m and d, even in ``φ`` and ``l``. ``r < 1`` means trigonometric features
    are the more accurate; ``r -> inf`` as ``φ -> ±π`` (SM -> 0), ``r -> 0`` as ``φ -> 0``.
    At ``l = 0`` (both estimators exact) the limit ``0`` is returned.

    Parameters
    ----------
    angle : array-like
        Angle φ between x and y, radians.
    length : array-like
        Common norm l (broadcast against ``angle``).

    Returns
    -------
    float or ndarray
        The ratio (``inf`` at ``φ = ±π``, ``l != 0``).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import theory
    >>> round(float(theory.mse_ratio(np.pi / 2, 1.0)), 2)
    0.43
    """
    phi, l2 = np.broadcast_arrays(
        np.asarray(angle, dtype=np.float64), np.asarray(length, dtype=np.float64) ** 2
    )
    c = np.cos(phi)
    num = np.expm1(-2.0 * l2 * (1.0 - c)) ** 2
    den = 2.0 * np.exp(4.0 * l2 * c) * -np.expm1(-2.0 * l2 * (1.0 + c))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.where(l2 == 0.0, 0.0, np.where(den == 0.0, np.inf, r))[()]


def crossover_angle(length: float) -> float:
    """Angle ``φ in (0, π)`` where ``mse_ratio(φ, length) = 1`` (Fig. 2's crossover).

    Trigonometric features win for ``|φ|`` below it, positive features above it
    (2.08, 1.74, 1.65, 1.61 at ``l`` = 0.5, 1, 1.5, 2, as read off Fig. 2).

    Parameters
    ----------
    length : float
        Common norm ``l != 0``.

    Returns
    -------
    float

    Examples
    --------
    >>> from favorkit import theory
    >>> round(theory.crossover_angle(1.0), 2)
    1.74
    """
    if length == 0:
        raise ValueError("At length 0 both estimators are exact; there is no crossover.")
    # log r is increasing in φ on (0, π): from -inf (φ -> 0) to +inf (φ -> π).
    return float(
        optimize.brentq(lambda p: np.log(mse_ratio(p, length)), 1e-6, np.pi - 1e-9, xtol=1e-12)
    )


def smreg_kernel(x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """The regularized softmax kernel SMREG(x, y) of Theorem 1 in closed form.

    SMREG is what positive features estimate when every projection has length ``sqrt(d)``
    (``ω ~ Unif(sqrt(d) S^{d-1})``, :func:`favorkit.sampling.orthogonal` with
    ``norms="fixed"``). Averaging ``exp(ω·z)`` over that sphere gives

    ``SMREG(x, y) = Λ 0F1(; d/2; d|z|²/4)
    = Λ Γ(d/2) (sqrt(d)|z|/2)^{1-d/2} I_{d/2-1}(sqrt(d)|z|)``,

    evaluated with ``scipy.special.hyp0f1`` where it is finite and otherwise with the
    exponentially scaled Bessel function ``ive`` in log space (hyp0f1 overflows when
    ``sqrt(d)|z|`` is large against ``d``; ``ive`` underflows when ``d`` is large against it).

    Parameters
    ----------
    x, y : array-like of shape (..., d)
        Pairs of vectors (broadcast against each other), ``d >= 1``.

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import theory
    >>> x = np.full(8, 0.2); y = np.full(8, 0.1)
    >>> bool(theory.smreg_kernel(x, y) <= theory.softmax_kernel(x, y))
    True
    """
    x, y = as_pairs(x, y)
    d = x.shape[-1]
    log_lam = -0.5 * (_sq(x) + _sq(y))
    t = np.sqrt(d * _sq(x + y))  # sqrt(d) |z|
    nu = 0.5 * d - 1.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # hyp0f1 is accurate until it overflows (t large against d) ...
        log_h = np.log(special.hyp0f1(0.5 * d, 0.25 * t**2))
        # ... and the log form Γ(d/2) (t/2)^{1-d/2} e^t ive(ν, t) until ive underflows
        # (d large against t), so one of the two is finite.
        t_pos = np.where(t > 0, t, 1.0)
        log_i = special.gammaln(0.5 * d) - nu * np.log(0.5 * t_pos)
        log_i = log_i + np.log(special.ive(nu, t_pos)) + t_pos
    ok_h = np.isfinite(log_h)
    if not np.all(ok_h | np.isfinite(log_i)):
        raise FloatingPointError("SMREG is not representable for these inputs (|x + y| too large).")
    return np.exp(log_lam + np.where(ok_h, log_h, log_i))


def smreg_bounds(d: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Theorem 1's bounds on ``SMREG / SM`` for dimension ``d``: ``(lower, upper)``.

    ``upper = 1`` holds for every ``d >= 2`` and every pair: SMREG never exceeds SM.
    ``lower = 1 - 2/d^{1/3}`` is the leading term of ``inf_ij A^reg_ij / A_ij >=
    1 - 2/d^{1/3} + o(d^{-1/3})``, stated for attention matrices with ``‖A‖∞ <= C``; the
    ``o(d^{-1/3})`` term is dropped here, so the lower bound is asymptotic.

    Parameters
    ----------
    d : int or array-like
        Dimension(s), ``>= 2``.

    Returns
    -------
    lower, upper : ndarray

    Examples
    --------
    >>> from favorkit import theory
    >>> lower, upper = theory.smreg_bounds(64)
    >>> float(lower), float(upper)
    (0.5, 1.0)
    """
    d = np.asarray(d, dtype=np.float64)
    if np.any(~(d >= 2)):
        raise ValueError("Theorem 1 needs d >= 2.")
    return 1.0 - 2.0 / np.cbrt(d), np.ones_like(d)


def uniform_convergence_features(
    epsilon: ArrayLike, d: ArrayLike, R: ArrayLike
) -> NDArray[np.float64]:
    """Projections m for ``‖Â - A‖∞ <= ε`` with orthogonal trig features (Theorem 4, v4).

    With ``|q_i|, |k_j| <= R``, ``l = R d^{-1/4}``, ``h* = exp(l²/2)`` and
    ``δ = ε / h*² = ε exp(-R²/sqrt(d))``, the theorem gives

    ``m = Θ((d/δ²) log(4 d^{3/4} R / δ))``,

    independent of the sequence length L. The constant in ``Θ`` is not given; this function
    takes it to be **1**, so only ratios (the scaling in ε, d, R) are meaningful.

    Parameters
    ----------
    epsilon : float or array-like
        Target max-entry error ``ε > 0`` of the unnormalized attention matrix
        ``A = exp(QKᵀ/sqrt(d))``.
    d : int or array-like
        Query/key dimension.
    R : float or array-like
        Bound on the query and key norms (before the ``d^{-1/4}`` scaling).

    Returns
    -------
    ndarray
        ``(d/δ²) log(4 d^{3/4} R / δ)`` (not rounded; constant 1).

    Examples
    --------
    >>> from favorkit import theory
    >>> m1 = theory.uniform_convergence_features(0.1, 16, 2.0)
    >>> m2 = theory.uniform_convergence_features(0.05, 16, 2.0)
    >>> bool(m2 > 4 * m1)
    True
    """
    eps = np.asarray(epsilon, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    if np.any(~(eps > 0)) or np.any(~(d >= 1)) or np.any(~(R > 0)):
        raise ValueError("epsilon and R must be > 0 and d >= 1.")
    delta = eps * np.exp(-(R**2) / np.sqrt(d))
    return (d / delta**2) * np.log(4.0 * d**0.75 * R / delta)
