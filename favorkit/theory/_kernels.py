"""Closed-form MSE of iid random features for the kernels of :mod:`favorkit.kernels`.

Every function is vectorised: ``x`` and ``y`` are arrays of shape ``(..., d)`` (pairs along
the leading axes, broadcast against each other) and ``m`` broadcasts against the leading
axes. The kernel values come from :mod:`favorkit.kernels` (``profile`` for the
shift-invariant kernels, ``arccos_pairs`` for the arc-cosine kernels); this module only adds
the second moments of the estimators.

Notation: ``Δ = x - y``, ``k`` the kernel, ``m`` the number of random frequencies (rows
``ω_i``, drawn iid).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from favorkit import kernels
from favorkit._typing import ArrayLike, NDArray
from favorkit.theory._checks import as_pairs, projections

__all__ = ["FEATURE_LAYOUTS", "mse_arccos", "mse_random_fourier"]

# The trigonometric layouts, named as favorkit.features names them.
FEATURE_LAYOUTS: tuple[str, ...] = ("cossin", "cos")


def _check_gamma(gamma):
    gamma = float(gamma)
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}.")
    return gamma


def mse_random_fourier(
    x: ArrayLike,
    y: ArrayLike,
    m: ArrayLike,
    *,
    kernel: Literal["gaussian", "laplacian", "matern"] = "gaussian",
    gamma: float = 1.0,
    nu: float = 1.5,
    features: Literal["cossin", "cos"] = "cossin",
) -> NDArray[np.float64]:
    """Exact MSE of the iid random Fourier estimate of a shift-invariant kernel.

    By Bochner's theorem ``k(Δ) = E_ω cos(ω·Δ)`` (Rahimi and Recht 2007), and the two
    trigonometric feature maps estimate it by an average of m iid terms:

    ``features="cossin"``: ``φ(x) = [cos(ω_i·x), sin(ω_i·x)] / sqrt(m)`` (2m columns), whose
    inner product is ``(1/m) Σ_i cos(ω_i·Δ)``. With ``E[cos²(ω·Δ)] = (1 + k(2Δ))/2``
    (``cos² t = (1 + cos 2t)/2``),

    ``MSE = (1 + k(2Δ) - 2 k(Δ)²) / (2m)``.

    ``features="cos"``: ``φ(x) = sqrt(2/m) cos(ω_i·x + b_i)``, ``b_i ~ U[0, 2π)`` (m
    columns). Each term is ``2 cos(ω·x + b) cos(ω·y + b) = cos(ω·Δ) + cos(ω·(x + y) + 2b)``;
    the second summand has mean 0, is uncorrelated with the first and has second moment
    ``1/2`` (``2b`` is uniform modulo ``2π``), so

    ``MSE = (1 + k(2Δ)/2 - k(Δ)²) / m``.

    These are the variances of Sutherland and Schneider 2015 ("On the Error of Random
    Fourier Features", Sec. 2) with their ``D = 2m`` and ``D = m`` columns. At the same
    number of columns the ``"cossin"`` layout is strictly better whenever
    ``k(2Δ) < 2 k(Δ)²``, e.g. for the Gaussian kernel (``k(2Δ) = k(Δ)⁴``: the MSE is
    ``(1 - k²)²/(2m)``, the Performer's trigonometric form) and the Laplacian kernel
    (``k(2Δ) = k(Δ)²``: ``(1 - k²)/(2m)``).

    Parameters
    ----------
    x, y : array-like of shape (..., d)
        Pairs of vectors (broadcast against each other).
    m : int or array-like
        Number of random frequencies (``features="cossin"`` has ``2m`` columns).
    kernel : {"gaussian", "laplacian", "matern"}, default="gaussian"
        A shift-invariant kernel of :mod:`favorkit.kernels`.
    gamma : float, default=1.0
        The kernel's ``gamma > 0`` (as in :mod:`favorkit.kernels`).
    nu : {0.5, 1.5, 2.5}, default=1.5
        Smoothness of the Matérn kernel (ignored by the others).
    features : {"cossin", "cos"}, default="cossin"
        ``[cos, sin]`` pairs or cosines with random offsets.

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import kernels, theory
    >>> x, y = np.array([0.5, 0.0, 0.2]), np.array([0.0, 0.5, 0.1])
    >>> round(float(theory.mse_random_fourier(x, y, 16, kernel="laplacian")), 6)
    0.027787
    >>> # Against Monte Carlo: 2000 iid [cos, sin] estimates from 16 Cauchy frequencies.
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_cauchy((2000, 16, 3))
    >>> k = kernels.get("laplacian").profile(x - y)
    >>> mse = np.mean((np.cos(W @ (x - y)).mean(axis=1) - k) ** 2)
    >>> bool(abs(mse / theory.mse_random_fourier(x, y, 16, kernel="laplacian") - 1) < 0.1)
    True
    """
    k_obj = kernels.get(kernel)
    if not k_obj.shift_invariant:
        raise ValueError(
            f"kernel={kernel!r} is not shift-invariant, so it has no random Fourier "
            "features; use mse_arccos for the arc-cosine kernels and mse_trig, "
            "mse_positive or mse_hyperbolic for the softmax kernel."
        )
    if features not in FEATURE_LAYOUTS:
        raise ValueError(
            f"features must be one of {FEATURE_LAYOUTS} ([cos, sin] pairs or cosines with "
            f"random offsets), got {features!r}."
        )
    x, y = as_pairs(x, y)
    m = projections(m)
    gamma = _check_gamma(gamma)
    delta = x - y
    k1 = k_obj.profile(delta, gamma, nu=nu)
    k2 = k_obj.profile(2.0 * delta, gamma, nu=nu)
    if features == "cossin":
        # Var cos(ω·Δ) = (1 + k(2Δ))/2 - k(Δ)², over m iid frequencies.
        var = 0.5 * (1.0 + k2) - k1**2
    else:
        # Var [cos(ω·Δ) + cos(ω·(x+y) + 2b)] = (1 + k(2Δ))/2 + 1/2 - k(Δ)².
        var = 1.0 + 0.5 * k2 - k1**2
    # The variance is >= 0 exactly; rounding near Δ = 0 may leave -1e-16.
    return np.maximum(var, 0.0) / m


def mse_arccos(x: ArrayLike, y: ArrayLike, m: ArrayLike, *, degree: int = 1) -> NDArray[np.float64]:
    """Exact MSE of the iid arc-cosine estimate of degree ``n`` (Cho and Saul 2009).

    The features ``φ(x) = sqrt(2/m) Θ(ω_i·x) (ω_i·x)ⁿ``, ``ω_i ~ N(0, I)`` iid (``Θ`` the
    Heaviside step, ``Θ(0) = 0``), estimate ``k_n(x, y) = 2 E[Θ(ω·x) Θ(ω·y) (ω·x)ⁿ (ω·y)ⁿ]``
    (Cho and Saul 2009, Eq. 1) by the mean of m iid terms ``T = 2 Θ Θ (ω·x)ⁿ (ω·y)ⁿ``.
    Since ``Θ² = Θ``, ``E[T²] = 4 E[Θ Θ (ω·x)^{2n} (ω·y)^{2n}] = 2 k_{2n}(x, y)``, so

    ``MSE = (2 k_{2n}(x, y) - k_n(x, y)²) / m``,

    with ``k_{2n}`` the same closed form ``(1/π) |x|^{2n} |y|^{2n} J_{2n}(θ)`` (Eq. 6).

    Parameters
    ----------
    x, y : array-like of shape (..., d)
        Pairs of vectors (broadcast against each other).
    m : int or array-like
        Number of random projections (= number of features).
    degree : {0, 1, 2}, default=1
        The degree ``n`` (0: step, 1: ReLU, 2: ramp squared).

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import theory
    >>> x, y = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    >>> round(float(theory.mse_arccos(x, y, 10, degree=1)), 6)  # (2·(1/2) - (1/π)²)/10
    0.089868
    >>> # Against Monte Carlo: 4000 iid ReLU estimates from 10 projections.
    >>> W = np.random.default_rng(0).standard_normal((4000, 10, 2))
    >>> est = 2 * np.mean(np.maximum(W @ x, 0) * np.maximum(W @ y, 0), axis=1)
    >>> mse = np.mean((est - 1 / np.pi) ** 2)
    >>> bool(abs(mse / theory.mse_arccos(x, y, 10, degree=1) - 1) < 0.1)
    True
    """
    degrees = kernels.get("arccos").DEGREES  # type: ignore[attr-defined]  # ArcCosine's
    if isinstance(degree, bool) or degree not in degrees:
        raise ValueError(
            f"degree must be one of {degrees} (the second moment needs J_(2n), written out "
            f"up to 2n = 4), got {degree!r}."
        )
    x, y = as_pairs(x, y)
    m = projections(m)
    k_n = kernels.arccos_pairs(x, y, degree)
    k_2n = kernels.arccos_pairs(x, y, 2 * degree)
    return np.maximum(2.0 * k_2n - k_n**2, 0.0) / m
