"""Closed forms of the positive estimators beyond FAVOR+: GERF/OPRF variance, coupled MSE.

FAVOR++ is the generalized exponential map with the variance-optimal parameter (GERF/OPRF,
Likhosherstov et al. 2022, "Chefs' Random Tables"); simplex projections couple the rows of
a block at cosine ``-1/(d-1)`` (Reid et al. 2023, "Simplex Random Features"). Notation:
``u, v`` are the kernel's inputs after the kernel scale, ``z = |u + v|²``, ``A <= 0`` the
GERF parameter (``A = 0`` is the Performer's positive map), ``m`` the number of random
projections and ``d`` the dimension. "relVar" is the variance of a one-projection estimate
divided by the kernel squared; the relative MSE of an ``m``-projection estimate is
``E[(K̂/K - 1)²]``.

**How the coupled MSE is computed.** An estimate from m projections is the mean of m
one-projection terms ``T_i`` with ``E[T_i] = K``. Projections in different (independent)
blocks are uncorrelated, and inside a block every pair of rows has the same joint law: two
``chi_d`` lengths ``r_i, r_j`` (independent of the directions) and directions at the fixed
cosine ``c`` under a Haar rotation. Hence

``relMSE = V1/m + (P/m²) Cov(c)``,  ``P = Σ_blocks s_b (s_b - 1)`` (ordered pairs that share
a block of ``s_b`` rows; ``P = m(m-1)`` for one block, ``P = 0`` for iid rows).

For GERF features ``Cov(c) = (1-4A)^d E[e^{2A(r_i²+r_j²)} Ω_d(B sqrt(z) |ω_i+ω_j|)] e^{-z} - 1``
(Reid et al. 2023). Writing ``|ω_i + ω_j|² = R² (1 + c sin φ)`` in polar coordinates
(``R² ~ χ²_{2d}`` independent of the angle ``φ``, whose density is ``∝ sin^{d-1} φ`` on
``[0, π]``) and
expanding ``Ω_d(s) = Σ_k (s²/4)^k / ((d/2)_k k!)``, the ``R`` moments are Gamma integrals and,
because ``B² = 1 - 4A``, every ``A`` cancels:

``Cov(c) = e^{-z} Σ_k (z/2)^k (d)_k / ((d/2)_k k!) E[(1 + c sin φ)^k] - 1``

(derived here; a direct χ_d × χ_d quadrature with ``Ω_d`` through ``scipy.special.ive``,
kept as ``method="quadrature"``, and Monte Carlo in the tests agree with it). All terms are
positive, so the sum is evaluated in log space without cancellation; the angular moments
use Gauss–Legendre quadrature.
The pair covariance of the *hyperbolic* estimator (``Λ cosh(ω·(u+v))``, antithetic ``±ω``) is
``(Cov(c) + Cov(-c))/2`` and its one-projection relVar is ``cosh z - 1`` (Lemma 2).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import special

from favorkit import maps
from favorkit._typing import ArrayLike, FloatOrArray, NDArray
from favorkit.theory._checks import check_a, check_d, check_z, projection_count

__all__ = [
    "COUPLINGS",
    "coupled_relative_mse",
    "coupling_cosine",
    "cov_series",
    "gerf_relative_variance",
    "log_moment_series",
    "log_sphere_mgf",
    "pair_count",
    "pair_covariance",
]

COUPLINGS: tuple[str, ...] = ("iid", "orthogonal", "simplex")
_ANGLE_NODES = 200
# The maps whose one-projection variance the coupled MSE uses (any fitted A: FAVOR++'s
# form; the antithetic pair: the hyperbolic map's).
_GERF = maps.GerfMap("optimal", saderf=False)
_ANTITHETIC = maps.HyperbolicMap()


def gerf_relative_variance(z: ArrayLike, d: int, a: ArrayLike = 0.0) -> FloatOrArray:
    """Relative variance of one GERF projection (Likhosherstov et al. 2022).

    For ``f(ω, u) = D exp(A|ω|² + B ω·u - |u|²/2)`` with ``B = sqrt(1-4A)``,
    ``D = (1-4A)^{d/4}`` and ``ω ~ N(0, I_d)``, the product ``f(ω, u) f(ω, v)`` is unbiased
    for ``SM(u, v) = exp(u·v)`` and

    ``relVar(A) = Var / SM² = ((1-4A)²/(1-8A))^{d/2} exp(z/(1-8A)) - 1``,  ``z = |u+v|²``.

    ``A = 0`` is the Performer's positive map, ``relVar = e^z - 1`` (Lemma 2). With m iid
    projections the relative MSE is ``relVar/m``. Evaluated as ``expm1`` of the log.

    Parameters
    ----------
    z : float or array-like
        ``|u + v|² >= 0``.
    d : int
        Dimension.
    a : float or array-like, default=0.0
        GERF parameter ``A < 1/8`` (broadcast against ``z``).

    Returns
    -------
    ndarray or float

    Examples
    --------
    >>> from favorkit.theory import gerf_relative_variance, optimal_gerf_a
    >>> round(float(gerf_relative_variance(1.0, 16)), 6)  # e - 1
    1.718282
    >>> bool(gerf_relative_variance(16.0, 16, optimal_gerf_a(16.0, 16)) < 2000)
    True
    """
    d = check_d(d)
    z = check_z(z)
    a = check_a(a)
    return _GERF.relative_variance(z, d, a)[()]  # type: ignore[index]  # z is an array


def log_sphere_mgf(s: ArrayLike, d: int) -> FloatOrArray:
    """``log Ω_d(s)``, ``Ω_d(s) = E_{u ~ Unif(S^{d-1})} e^{s u_1}`` (Reid et al. 2023).

    ``Ω_d(s) = Γ(d/2) (s/2)^{1-d/2} I_{d/2-1}(s) = 0F1(; d/2; s²/4)``, evaluated with the
    exponentially scaled Bessel function ``scipy.special.ive`` in log space (no overflow for
    large s) and with ``hyp0f1`` for ``s < 1`` (where ``ive`` underflows for large d).

    Parameters
    ----------
    s : float or array-like
        Argument ``s >= 0``.
    d : int
        Dimension of the sphere's ambient space.

    Returns
    -------
    ndarray or float

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit.theory import log_sphere_mgf
    >>> bool(np.isclose(log_sphere_mgf(2.0, 3), np.log(np.sinh(2.0) / 2.0)))
    True
    >>> bool(np.isclose(log_sphere_mgf(2.0, 1), np.log(np.cosh(2.0))))
    True
    """
    d = check_d(d)
    s = np.abs(np.asarray(s, dtype=np.float64))
    nu = 0.5 * d - 1.0
    small = s < 1.0
    s_big = np.where(small, 1.0, s)
    with np.errstate(divide="ignore"):
        log_big = (
            special.gammaln(0.5 * d)
            - nu * np.log(0.5 * s_big)
            + np.log(special.ive(nu, s_big))
            + s_big
        )
    log_small = np.log(special.hyp0f1(0.5 * d, 0.25 * np.where(small, s, 0.0) ** 2))
    return np.where(small, log_small, log_big)[()]


def coupling_cosine(coupling: str | float, d: int) -> float | None:
    """Pairwise cosine of two rows in one block: None (iid), 0 (orthogonal), -1/(d-1)."""
    if isinstance(coupling, str):
        if coupling == "iid":
            return None
        if coupling == "orthogonal":
            return 0.0
        if coupling == "simplex":
            return -1.0 / (d - 1) if d > 1 else None
        raise ValueError(
            f'coupling must be "iid", "orthogonal", "simplex" or a cosine in [-1, 1]; '
            f"got {coupling!r}."
        )
    c = float(coupling)
    if not -1.0 <= c <= 1.0:
        raise ValueError(f"a pairwise cosine must lie in [-1, 1], got {c!r}.")
    return c


def _log_angular_moments(k, c, d):
    """``log E[(1 + c sin φ)^k]`` for the integers ``k``, φ with density ∝ sin^{d-1} φ on
    [0, π].

    Gauss–Legendre on [0, π/2] (the density is symmetric about π/2); its nodes cluster at
    π/2, where the density concentrates for large d. Normalised by the same rule, so k = 0
    gives exactly 0.
    """
    x, w = special.roots_legendre(_ANGLE_NODES)
    phi = 0.25 * np.pi * (x + 1.0)
    sin = np.sin(phi)
    log_w = np.log(w) + (d - 1) * np.log(sin)
    k = np.asarray(k, dtype=np.float64)[:, None]
    return special.logsumexp(log_w + k * np.log1p(c * sin), axis=1) - special.logsumexp(log_w)


def _series_peak(z, d):
    """Where the terms ``(z/2)^k (d)_k / ((d/2)_k k!)`` peak: the root of
    ``(z/2)(d + k) = (d/2 + k)(k + 1)`` (their ratio is 1 there and decreases in k)."""
    b = 0.5 * d + 1.0 - 0.5 * z
    return np.maximum(0.0, 0.5 * (-b + np.sqrt(b * b - 2.0 * d * (1.0 - z))))


# Terms of the series for one z are taken in a window around their peak (the log-terms are
# concave in k with curvature at least 1/(k+1), so 40 standard deviations leave out less
# than e^-800 of the sum); z values are grouped so that a block of terms stays below
# _SERIES_BLOCK numbers, whatever z is.
_SERIES_BLOCK = 1 << 22


def log_moment_series(z: ArrayLike, d: int, c: float) -> NDArray[np.float64]:
    """``log(1 + Cov(c))`` for an array of z by the positive series (module docstring).

    Memory is bounded for any z (a window of ``O(sqrt z)`` terms around the peak, in blocks)
    and the log is returned directly, so ``1 + Cov`` may be far below the smallest float
    (``Cov -> -1`` like ``e^{-z/2}`` for large z at ``c = 0``) without losing it.
    """
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    out = np.zeros_like(z)
    pos = np.flatnonzero(z > 0)
    if c == 0 and pos.size:
        # Orthogonal rows (c = 0): the series is e^{-z} ₁F₁(d; d/2; z/2), which SciPy
        # evaluates ~10x faster. Kept where it overflows (z past ~700-1300) and where the
        # log is small next to its terms (|log| < (z/2 + 1)/100: there the log of a sum
        # near 1 loses digits the series keeps); elsewhere it agrees with the series to
        # 1e-11 of the log for d from 1 to 10⁴.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            direct = np.log(special.hyp1f1(d, 0.5 * d, 0.5 * z[pos])) - z[pos]
        good = np.isfinite(direct) & (np.abs(direct) > 0.01 * (0.5 * z[pos] + 1.0))
        out[pos[good]] = direct[good]
        pos = pos[~good]
    if not pos.size:
        return out
    order = pos[np.argsort(z[pos])]
    lo_peak = _series_peak(z[order] * (1.0 - abs(c)), d)
    hi_peak = _series_peak(z[order] * (1.0 + abs(c)), d)
    k_lo = np.maximum(0, np.floor(lo_peak - 40.0 * np.sqrt(lo_peak + 1.0) - 64)).astype(np.int64)
    k_hi = np.ceil(hi_peak + 40.0 * np.sqrt(hi_peak + 1.0) + 64).astype(np.int64)
    wide = (k_hi - k_lo) > _SERIES_COARSE
    for row in order[wide]:  # a wide bracket (|c| near 1): find the peak on a coarse grid
        out[row] = _log_moment_wide(z[row], d, c, k_lo[order == row][0], k_hi[order == row][0])
    keep = ~wide
    order, k_lo, k_hi = order[keep], k_lo[keep], k_hi[keep]
    start = 0
    while start < order.size:
        stop = start + 1
        while (
            stop < order.size
            and (stop - start + 1) * (k_hi[stop] - k_lo[start] + 1) <= _SERIES_BLOCK
        ):
            stop += 1
        rows = order[start:stop]
        k = np.arange(k_lo[start], k_hi[stop - 1] + 1)
        log_coef = (
            special.gammaln(d + k)
            - special.gammaln(d)
            - special.gammaln(0.5 * d + k)
            + special.gammaln(0.5 * d)
            - special.gammaln(k + 1.0)
            + (_log_angular_moments(k, c, d) if c else 0.0)
        )
        zr = z[rows]
        terms = np.log(0.5 * zr)[:, None] * k[None, :] + log_coef[None, :]
        # logsumexp by rows, written out: scipy's costs 2-3x more on this (rows x terms)
        # block, and this runs once per prediction of orthogonal attention.
        top = terms.max(axis=1)
        out[rows] = top + np.log(np.exp(terms - top[:, None]).sum(axis=1)) - zr
        start = stop
    return out


def _log_terms(k, z, d, c):
    """The log-terms of the series at the integers ``k`` for one z."""
    k = np.asarray(k, dtype=np.float64)
    return (
        k * np.log(0.5 * z)
        + special.gammaln(d + k)
        - special.gammaln(d)
        - special.gammaln(0.5 * d + k)
        + special.gammaln(0.5 * d)
        - special.gammaln(k + 1.0)
        + (_log_angular_moments(k, c, d) if c else 0.0)
    )


_SERIES_COARSE = 1 << 14


def _log_moment_wide(z, d, c, k_lo, k_hi):
    """One z whose peak bracket is wide: locate the peak of the (unimodal) log-terms on a
    coarse grid, refine, and sum a window of 40 standard deviations around it."""
    lo, hi = int(k_lo), int(k_hi)
    while hi - lo > 64:
        grid = np.unique(np.linspace(lo, hi, 65).astype(np.int64))
        top = int(np.argmax(_log_terms(grid, z, d, c)))
        lo, hi = int(grid[max(top - 1, 0)]), int(grid[min(top + 1, grid.size - 1)])
    peak = 0.5 * (lo + hi)
    half = 40.0 * np.sqrt(peak + 1.0) + 64
    k = np.arange(max(0, int(peak - half)), int(peak + half) + 1)
    return float(special.logsumexp(_log_terms(k, z, d, c)) - z)


def cov_series(z: ArrayLike, d: int, c: float) -> NDArray[np.float64]:
    """Cov(c) for an array of z by the positive series (module docstring)."""
    return np.expm1(log_moment_series(z, d, c))


def _cov_quadrature(z, d, c, n_nodes=160):
    """Cov(c) by the direct χ_d × χ_d expectation (generalised Gauss–Laguerre).

    ``t = r²/2 ~ Gamma(d/2)``; ``|ω_i + ω_j| = sqrt(r_i² + r_j² + 2c r_i r_j)``.
    """
    t, w = special.roots_genlaguerre(n_nodes, 0.5 * d - 1.0)
    log_w = np.log(w) - special.gammaln(0.5 * d)
    r = np.sqrt(2.0 * t)
    norm2 = r[:, None] ** 2 + r[None, :] ** 2 + 2.0 * c * r[:, None] * r[None, :]
    norm = np.sqrt(np.maximum(norm2, 0.0))
    lw2 = log_w[:, None] + log_w[None, :]
    z = np.atleast_1d(z).astype(np.float64)
    out = np.empty_like(z)
    for i, zi in enumerate(z):
        vals = lw2 + log_sphere_mgf(np.sqrt(zi) * norm, d)
        out[i] = np.expm1(special.logsumexp(vals) - zi)
    return out


def pair_covariance(
    z: ArrayLike,
    d: int,
    coupling: Literal["orthogonal", "simplex", "iid"] | float = "orthogonal",
    *,
    method: Literal["series", "quadrature"] = "series",
) -> FloatOrArray:
    """Relative covariance ``Cov(c)`` of two projections in one coupled block.

    ``Cov(c) = Cov[T_i, T_j] / K²`` for the one-projection estimates ``T_i, T_j`` of a GERF
    (any A, including the positive map A = 0) whose rows have independent ``chi_d`` lengths
    and directions at cosine ``c`` under a Haar rotation:

    ``Cov(c) = (1-4A)^d E[e^{2A(r_i²+r_j²)} Ω_d(B sqrt(z) s_ij)] e^{-z} - 1``,
    ``s_ij = |ω_i + ω_j| = sqrt(r_i² + r_j² + 2c r_i r_j)``,

    which does not depend on A (module docstring). ``c = 0`` is the orthogonal coupling,
    ``c = -1/(d-1)`` the simplex; independent rows have ``Cov = 0``.

    Parameters
    ----------
    z : float or array-like
        ``|u + v|² >= 0``.
    d : int
        Dimension (the block size).
    coupling : {"orthogonal", "simplex", "iid"} or float, default="orthogonal"
        The coupling, or the pairwise cosine c itself.
    method : {"series", "quadrature"}, default="series"
        The exact positive series (default), or the direct 2-D χ_d quadrature with
        ``Ω_d`` through ``scipy.special.ive`` (an independent check; slower and less accurate
        for large z).

    Returns
    -------
    ndarray or float

    Examples
    --------
    >>> from favorkit.theory import pair_covariance
    >>> round(float(pair_covariance(1.0, 16, "orthogonal")), 5)
    -0.025
    >>> bool(pair_covariance(1.0, 16, "simplex") < pair_covariance(1.0, 16, "orthogonal") < 0)
    True
    """
    d = check_d(d)
    z = check_z(z)
    c = coupling_cosine(coupling, d)
    if c is None:
        return np.zeros_like(z)[()]
    if method == "series":
        out = cov_series(z.ravel(), d, c)
    elif method == "quadrature":
        out = _cov_quadrature(z.ravel(), d, c)
    else:
        raise ValueError(f'method must be "series" or "quadrature", got {method!r}.')
    return out.reshape(z.shape)[()]


def pair_count(m: ArrayLike, d: int, coupling: str | float) -> NDArray[np.float64]:
    """Ordered pairs of rows sharing a block: Σ_b s_b(s_b - 1) (blocks of d, last truncated)."""
    m = np.asarray(m)
    if coupling == "iid" or d == 1:
        return np.zeros(m.shape)
    full, rest = np.divmod(m, d)
    return full * d * (d - 1.0) + rest * (rest - 1.0)


def _antithetic_covariance(z, d, coupling):
    c = coupling_cosine(coupling, d)
    if c is None:
        return np.zeros_like(np.atleast_1d(z))
    return 0.5 * (cov_series(z, d, c) + cov_series(z, d, -c))


def coupled_relative_mse(
    z: ArrayLike,
    d: int,
    m: ArrayLike,
    *,
    a: ArrayLike = 0.0,
    coupling: Literal["orthogonal", "iid", "simplex"] = "orthogonal",
    hyperbolic: bool = False,
) -> FloatOrArray:
    """Exact relative MSE of a GERF/positive estimator with m coupled projections.

    ``relMSE = V1/m + (P/m²) Cov(c)`` with ``V1`` the one-projection relVar
    (:func:`gerf_relative_variance`), ``Cov(c)`` the within-block pair covariance
    (:func:`pair_covariance`) and ``P`` the number of ordered pairs of rows in the same block.
    Blocks hold d rows (``m > d``: ``floor(m/d)`` full independent blocks plus one truncated
    block, as :mod:`favorkit.sampling` draws them); rows in different blocks are independent,
    so the covariance term counts only pairs inside a block: ``P = m(m-1)`` for ``m <= d``,
    ``P = floor(m/d) d(d-1) + r(r-1)`` with ``r = m mod d`` in general, 0 for iid rows.

    ``hyperbolic=True`` is the antithetic estimator ``Λ cosh(ω·(u+v))`` (m projections, 2m
    features; A must be 0): ``V1 = cosh z - 1`` and the pair term ``(Cov(c) + Cov(-c))/2``.

    Parameters
    ----------
    z : float or array-like
        ``|u + v|²``.
    d : int
        Dimension.
    m : int or array-like of int
        Number of projections (broadcast against ``z``).
    a : float or array-like, default=0.0
        GERF parameter (0: FAVOR+ positive features; ``optimal_gerf_a(z, d)``: OPRF per pair).
    coupling : {"orthogonal", "iid", "simplex"}, default="orthogonal"
        How the rows of a block are coupled.
    hyperbolic : bool, default=False
        The hyperbolic (antithetic) positive estimator instead of the one-sided map.

    Returns
    -------
    ndarray or float

    Examples
    --------
    FAVOR+ and FAVOR++ at d = m = 16, z = 1 (8.396e-2 and 6.757e-2):

    >>> from favorkit.theory import coupled_relative_mse, optimal_gerf_a
    >>> float(coupled_relative_mse(1.0, 16, 16).round(5))
    0.08396
    >>> float(coupled_relative_mse(1.0, 16, 16, a=optimal_gerf_a(1.0, 16)).round(5))
    0.06757
    """
    d = check_d(d)
    z = check_z(z)
    m = projection_count(m)
    a = check_a(a)
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}.")
    z, m, a = np.broadcast_arrays(z, m, a)
    if hyperbolic and np.any(a != 0):
        raise ValueError("the hyperbolic estimator has A = 0; pass a=0.")
    variance = _ANTITHETIC if hyperbolic else _GERF
    v1 = variance.relative_variance(z, d, a)
    if variance.antithetic:
        cov = _antithetic_covariance(z.ravel(), d, coupling).reshape(z.shape)
    else:
        cov = pair_covariance(z, d, coupling)
    pairs = pair_count(m, d, coupling)
    return (v1 / m + pairs / m.astype(np.float64) ** 2 * cov)[()]
