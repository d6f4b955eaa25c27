"""Closed forms for the estimators beyond FAVOR+ (issue 5): GERF/OPRF variance, A*, coupled MSE.

Everything here follows ``spec/beyond.md`` (section numbers below refer to it). Notation:
``u, v`` are the kernel's inputs after the kernel scale (``u = sqrt(gamma) x`` for the softmax
kernel ``exp(gamma x·y)``, ``u = sqrt(2 gamma) x`` for the Gaussian kernel
``exp(-gamma |x - y|²)``), ``z = |u + v|²``, ``A <= 0`` the GERF parameter (``A = 0`` is the
Performer's positive map), ``m`` the number of random projections and ``d`` the dimension.
"relVar" is the variance of a one-projection estimate divided by the kernel squared; the
relative MSE of an ``m``-projection estimate is ``E[(K̂/K - 1)²]``.

==============================  =============================================================
``gerf_relative_variance``      §2.2: ``relVar(A) = ((1-4A)²/(1-8A))^{d/2} e^{z/(1-8A)} - 1``
``optimal_gerf_a``              §2.3: the variance-optimal ``A* <= 0`` (OPRF / FAVOR++)
``log_sphere_mgf``              §4.4: ``log Ω_d(s)``, ``Ω_d(s) = E_{u ~ S^{d-1}} e^{s u_1}``
``pair_covariance``             §4.4: ``Cov(c)``, relative covariance of two projections at
                                cosine ``c`` (0: orthogonal, ``-1/(d-1)``: simplex)
``coupled_relative_mse``        §4.4: exact relative MSE of iid, orthogonal and simplex
                                couplings for positive, OPRF and hyperbolic features
``expected_error``              §4.4 on a user's queries and keys: predicted relative MSE of
                                every kernel estimate (mean, median, per pair) for any
                                ``PositiveRandomFeatures`` estimator and coupling
``features_needed``             the smallest m whose predicted mean relative MSE is <= a target
==============================  =============================================================

**How the coupled MSE is computed.** An estimate from m projections is the mean of m
one-projection terms ``T_i`` with ``E[T_i] = K``. Projections in different (independent)
blocks are uncorrelated, and inside a block every pair of rows has the same joint law: two
``chi_d`` lengths ``r_i, r_j`` (independent of the directions) and directions at the fixed
cosine ``c`` under a Haar rotation. Hence

``relMSE = V1/m + (P/m²) Cov(c)``,  ``P = Σ_blocks s_b (s_b - 1)`` (ordered pairs that share
a block of ``s_b`` rows; ``P = m(m-1)`` for one block, ``P = 0`` for iid rows).

For GERF features ``Cov(c) = (1-4A)^d E[e^{2A(r_i²+r_j²)} Ω_d(B sqrt(z) |ω_i+ω_j|)] e^{-z} - 1``
(§4.4). Writing ``|ω_i + ω_j|² = R² (1 + c sin φ)`` in polar coordinates (``R² ~ χ²_{2d}``
independent of the angle ``φ``, whose density is ``∝ sin^{d-1} φ`` on ``[0, π]``) and
expanding ``Ω_d(s) = Σ_k (s²/4)^k / ((d/2)_k k!)``, the ``R`` moments are Gamma integrals and,
because ``B² = 1 - 4A``, every ``A`` cancels:

``Cov(c) = e^{-z} Σ_k (z/2)^k (d)_k / ((d/2)_k k!) E[(1 + c sin φ)^k] - 1``

(derived here; it reproduces every entry of the §4.5 table to its printed 4 digits, and the
direct χ_d × χ_d quadrature of §4.4 with ``Ω_d`` through ``scipy.special.ive``, kept as
``method="quadrature"``, agrees with it). All terms are positive, so the sum is evaluated in
log space without cancellation; the angular moments use Gauss–Legendre quadrature.
The pair covariance of the *hyperbolic* estimator (``Λ cosh(ω·(u+v))``, antithetic ``±ω``) is
``(Cov(c) + Cov(-c))/2`` and its one-projection relVar is ``cosh z - 1`` (Lemma 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import interpolate, special

__all__ = [
    "ExpectedError",
    "coupled_relative_mse",
    "expected_error",
    "features_needed",
    "gerf_relative_variance",
    "log_sphere_mgf",
    "optimal_gerf_a",
    "pair_covariance",
]

ESTIMATORS = ("positive", "hyperbolic", "optimal", "saderf")
COUPLINGS = ("iid", "orthogonal", "simplex")
# Above this many query-key pairs, Cov(z) is evaluated on a grid of z and interpolated
# (a cubic spline of log(1 + Cov), checked against the exact series in the tests).
_EXACT_PAIRS = 4096
_SPLINE_NODES = 2049
# Per-pair arrays (and exact medians) are kept up to this many pairs (8 MB of float64).
_PER_PAIR_LIMIT = 1 << 20
_ANGLE_NODES = 200


def _as_float(x):
    return np.asarray(x, dtype=np.float64)


def _check_d(d):
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}.")
    return int(d)


def _check_a(a):
    a = _as_float(a)
    if np.any(~(a < 0.125)):
        raise ValueError(
            "the GERF parameter A must be < 1/8 (1 - 8A > 0), otherwise the variance is "
            f"infinite; got A up to {np.max(a):.6g}."
        )
    return a


def _check_z(z):
    z = _as_float(z)
    if np.any(~(z >= 0)):
        raise ValueError("z = |u + v|² must be finite and >= 0.")
    return z


def gerf_relative_variance(z, d, a=0.0):
    """Relative variance of one GERF projection (``spec/beyond.md`` §2.2).

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
    >>> from favorkit._beyond_theory import gerf_relative_variance, optimal_gerf_a
    >>> round(float(gerf_relative_variance(1.0, 16)), 6)  # e - 1
    1.718282
    >>> bool(gerf_relative_variance(16.0, 16, optimal_gerf_a(16.0, 16)) < 2000)
    True
    """
    d = _check_d(d)
    z = _check_z(z)
    a = _check_a(a)
    log_second = 0.5 * d * (2.0 * np.log1p(-4.0 * a) - np.log1p(-8.0 * a)) + z / (1.0 - 8.0 * a)
    return np.expm1(log_second)[()]


def optimal_gerf_a(phi, d):
    """The variance-optimal GERF parameter ``A* <= 0`` (OPRF / FAVOR++, ``beyond.md`` §2.3).

    Minimises ``log E[f1² f2²] = (d/2) log((1-4A)²/(1-8A)) + φ/(1-8A)`` (the log second
    moment of §2.2 at ``z = φ``; for a batch, φ is the pair mean of ``|u_i + v_j|²``, which
    minimises the pair-averaged log second moment exactly). With ``ρ = 1/(1-8A)`` the
    stationarity condition is ``2φρ² + (2φ + d)ρ - d = 0``, whose root in (0, 1] is taken in
    the cancellation-free form

    ``ρ* = 2d / (sqrt((2φ + d)² + 8dφ) + 2φ + d)``,  ``A* = (1 - 1/ρ*)/8``.

    ``φ = 0`` gives ``A* = 0`` (FAVOR+); ``A*`` depends on ``φ/d`` only. Negative φ (round-off)
    is treated as 0.

    Parameters
    ----------
    phi : float or array-like
        ``|u + v|²`` (one pair) or its mean over the pairs of a batch.
    d : int
        Dimension.

    Returns
    -------
    float or ndarray

    Examples
    --------
    >>> from favorkit._beyond_theory import optimal_gerf_a
    >>> round(float(optimal_gerf_a(16.0, 64)), 4)  # beyond.md §2.3 table
    -0.0976
    >>> float(optimal_gerf_a(0.0, 8))
    0.0
    """
    d = _check_d(d)
    phi = _as_float(phi)
    if np.isnan(phi).any():
        raise ValueError("phi must not be NaN.")
    phi = np.maximum(phi, 0.0)
    # With x = φ/d: 1/ρ* = (2x + 1)(1 + sqrt(1 + 8x/(2x + 1)²)) / 2, written so that
    # nothing overflows before the result does (the form above squares 2φ + d).
    with np.errstate(over="ignore", invalid="ignore"):
        x = phi / d
        s = 2.0 * x + 1.0
        inv_rho = s * (1.0 + np.sqrt(1.0 + 8.0 * (x / s) / s)) / 2.0
        a = (1.0 - inv_rho) / 8.0
    return np.where(np.isinf(phi), -np.inf, a)[()]


def log_sphere_mgf(s, d):
    """``log Ω_d(s)``, ``Ω_d(s) = E_{u ~ Unif(S^{d-1})} e^{s u_1}`` (``beyond.md`` §4.4).

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
    >>> from favorkit._beyond_theory import log_sphere_mgf
    >>> bool(np.isclose(log_sphere_mgf(2.0, 3), np.log(np.sinh(2.0) / 2.0)))
    True
    >>> bool(np.isclose(log_sphere_mgf(2.0, 1), np.log(np.cosh(2.0))))
    True
    """
    d = _check_d(d)
    s = np.abs(_as_float(s))
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


def _coupling_cosine(coupling, d):
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


def _log_angular_moments(k_max, c, d):
    """``log E[(1 + c sin φ)^k]``, k = 0..k_max, φ with density ∝ sin^{d-1} φ on [0, π].

    Gauss–Legendre on [0, π/2] (the density is symmetric about π/2); its nodes cluster at
    π/2, where the density concentrates for large d. Normalised by the same rule, so k = 0
    gives exactly 0.
    """
    x, w = special.roots_legendre(_ANGLE_NODES)
    phi = 0.25 * np.pi * (x + 1.0)
    sin = np.sin(phi)
    log_w = np.log(w) + (d - 1) * np.log(sin)
    k = np.arange(k_max + 1)[:, None]
    return special.logsumexp(log_w + k * np.log1p(c * sin), axis=1) - special.logsumexp(log_w)


def _cov_series(z, d, c):
    """Cov(c) for an array of z by the positive series (module docstring)."""
    z = np.atleast_1d(z).astype(np.float64)
    out = np.zeros_like(z)
    pos = z > 0
    if not pos.any():
        return out
    zp = z[pos]
    # Terms decay at least geometrically (ratio <= 1/2) once k >= 2z(1+|c|); 64 more terms
    # make the tail < 2^-64 of a term that is itself below the peak.
    k_max = int(np.ceil(2.0 * zp.max() * (1.0 + abs(c)))) + 64
    k = np.arange(k_max + 1)
    log_coef = (
        special.gammaln(d + k)
        - special.gammaln(d)
        - special.gammaln(0.5 * d + k)
        + special.gammaln(0.5 * d)
        - special.gammaln(k + 1.0)
        + _log_angular_moments(k_max, c, d)
    )
    out[pos] = _cov_series_matrix(zp, k, log_coef)
    return out


def _cov_series_matrix(zp, k, log_coef, chunk=512):
    res = np.empty_like(zp)
    for s in range(0, zp.size, chunk):
        zc = zp[s : s + chunk]
        terms = np.log(0.5 * zc)[:, None] * k[None, :] + log_coef[None, :]
        res[s : s + chunk] = np.expm1(special.logsumexp(terms, axis=1) - zc)
    return res


def _cov_quadrature(z, d, c, n_nodes=160):
    """Cov(c) by the direct χ_d × χ_d expectation of §4.4 (generalised Gauss–Laguerre).

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


def pair_covariance(z, d, coupling="orthogonal", *, method="series"):
    """Relative covariance ``Cov(c)`` of two projections in one coupled block (§4.4).

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
        The exact positive series (default), or the direct 2-D χ_d quadrature of §4.4 with
        ``Ω_d`` through ``scipy.special.ive`` (an independent check; slower and less accurate
        for large z).

    Returns
    -------
    ndarray or float

    Examples
    --------
    >>> from favorkit._beyond_theory import pair_covariance
    >>> round(float(pair_covariance(1.0, 16, "orthogonal")), 5)
    -0.025
    >>> bool(pair_covariance(1.0, 16, "simplex") < pair_covariance(1.0, 16, "orthogonal") < 0)
    True
    """
    d = _check_d(d)
    z = _check_z(z)
    c = _coupling_cosine(coupling, d)
    if c is None:
        return np.zeros_like(z)[()]
    if method == "series":
        out = _cov_series(z.ravel(), d, c)
    elif method == "quadrature":
        out = _cov_quadrature(z.ravel(), d, c)
    else:
        raise ValueError(f'method must be "series" or "quadrature", got {method!r}.')
    return out.reshape(z.shape)[()]


def _pair_count(m, d, coupling):
    """Ordered pairs of rows sharing a block: Σ_b s_b(s_b - 1) (blocks of d, last truncated)."""
    m = np.asarray(m)
    if coupling == "iid" or d == 1:
        return np.zeros(m.shape)
    full, rest = np.divmod(m, d)
    return full * d * (d - 1.0) + rest * (rest - 1.0)


def _check_m(m):
    m = np.asarray(m)
    if m.dtype.kind not in "iu" and not np.all(m == np.round(m)):
        raise ValueError("m must be an integer number of projections.")
    if np.any(m < 1):
        raise ValueError("m (the number of random projections) must be >= 1.")
    return m.astype(np.int64)


def _hyperbolic_cov(z, d, coupling):
    c = _coupling_cosine(coupling, d)
    if c is None:
        return np.zeros_like(np.atleast_1d(z))
    return 0.5 * (_cov_series(z, d, c) + _cov_series(z, d, -c))


def coupled_relative_mse(z, d, m, *, a=0.0, coupling="orthogonal", hyperbolic=False):
    """Exact relative MSE of a GERF/positive estimator with m coupled projections (§4.4).

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
    FAVOR+ and FAVOR++ at d = m = 16, z = 1 (the §4.5 table: 8.396e-2 and 6.757e-2):

    >>> from favorkit._beyond_theory import coupled_relative_mse, optimal_gerf_a
    >>> float(coupled_relative_mse(1.0, 16, 16).round(5))
    0.08396
    >>> float(coupled_relative_mse(1.0, 16, 16, a=optimal_gerf_a(1.0, 16)).round(5))
    0.06757
    """
    d = _check_d(d)
    z = _check_z(z)
    m = _check_m(m)
    a = _check_a(a)
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}.")
    z, m, a = np.broadcast_arrays(z, m, a)
    if hyperbolic:
        if np.any(a != 0):
            raise ValueError("the hyperbolic estimator has A = 0; pass a=0.")
        v1 = 2.0 * np.sinh(0.5 * z) ** 2  # cosh z - 1 without cancellation near 0
        cov = _hyperbolic_cov(z.ravel(), d, coupling).reshape(z.shape)
    else:
        v1 = gerf_relative_variance(z, d, a)
        cov = pair_covariance(z, d, coupling)
    pairs = _pair_count(m, d, coupling)
    return (v1 / m + pairs / m.astype(np.float64) ** 2 * cov)[()]


# --------------------------------------------------------------------------- diagnostics


@dataclass(frozen=True)
class ExpectedError:
    """Predicted relative MSE of kernel estimates on given queries and keys.

    Returned by :func:`expected_error`. The per-pair prediction is
    ``relMSE_ij(m) = V_ij/m + (P(m)/m²) C_ij`` (``V``: one-projection relVar, ``C``: the
    within-block pair covariance, ``P(m)``: ordered same-block pairs), so pair averages of V
    and C predict the mean for *any* m (:meth:`relative_mse`, :meth:`features_needed`).

    Attributes
    ----------
    estimator, projection, kernel : str
        What the prediction is for.
    n_components : int
        The m of ``mean``, ``median`` and ``per_pair``.
    n_features : int
        Dimension d.
    gerf_a : float
        The GERF parameter A used (fitted A* for ``"optimal"`` and ``"saderf"``, else 0).
    query_scale : ndarray of shape (d,)
        SADERF's Ψ (ones otherwise).
    mean : float
        Mean over all query-key pairs of the predicted relative MSE ``E[(K̂_ij/K_ij - 1)²]``.
    median : float
        Median over pairs (over a regular subsample of rows when there are more than
        ``2**20`` pairs).
    max : float
        Largest per-pair prediction (same pairs as ``median``).
    per_pair : ndarray of shape (n_queries, n_keys) or None
        Every pair's prediction, kept when there are at most ``2**20`` pairs.
    mean_single_variance : float
        Pair mean of V (the relVar of one projection).
    mean_pair_covariance : float
        Pair mean of C (0 for iid projections).
    mean_log1p_variance : float
        Pair mean of ``log(1 + V)``, the "shifted log-variance" of ``beyond.md`` §3.2/§3.6.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit._beyond_theory import expected_error
    >>> X = np.random.default_rng(1).normal(size=(10, 16)) / 4
    >>> err = expected_error(X, X, 32, projection="simplex")
    >>> bool(err.relative_mse(64) < err.mean == err.relative_mse(32))
    True
    >>> err.features_needed(err.mean)
    32
    """

    estimator: str
    projection: str
    kernel: str
    n_components: int
    n_features: int
    gerf_a: float
    query_scale: np.ndarray = field(repr=False)
    mean: float
    median: float
    max: float
    per_pair: np.ndarray | None = field(repr=False)
    mean_single_variance: float
    mean_pair_covariance: float
    mean_log1p_variance: float

    def relative_mse(self, m):
        """Predicted mean relative MSE with ``m`` projections (same data, estimator, coupling).

        Parameters
        ----------
        m : int or array-like of int

        Returns
        -------
        float or ndarray
        """
        m = _check_m(m)
        pairs = _pair_count(m, self.n_features, self.projection)
        v, c = self.mean_single_variance, self.mean_pair_covariance
        return (v / m + pairs / m.astype(np.float64) ** 2 * c)[()]

    def features_needed(self, target):
        """Smallest m whose predicted mean relative MSE is ``<= target``.

        Parameters
        ----------
        target : float > 0
            Target mean relative MSE.

        Returns
        -------
        int
        """
        return _smallest_m(self, target)


def _smallest_m(err, target):
    target = float(target)
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target!r}.")
    v, c, d = err.mean_single_variance, err.mean_pair_covariance, err.n_features
    if v <= 0:
        return 1
    if err.projection == "iid" or d == 1:
        return max(1, int(np.ceil(v / target * (1 - 1e-12))))
    # For m = n d (whole blocks) relMSE = (v + (d-1)c)/m exactly; a partial last block of r
    # rows adds c r(r-d)/m², of the sign of -c. So the answer lies between the two
    # straight-line crossings below (scanned exactly, in chunks).
    slopes = np.array([v, v + (d - 1) * c])
    lo = max(1, int(np.floor(min(slopes.min(), v) / target)) - d)
    hi = int(np.ceil(max(slopes.max(), v) / target / d)) * d + d
    lo = min(lo, hi)
    for start in range(lo, hi + 1, 1 << 20):
        ms = np.arange(start, min(hi, start + (1 << 20) - 1) + 1)
        ok = np.nonzero(err.relative_mse(ms) <= target)[0]
        if ok.size:
            return int(ms[ok[0]])
    return int(hi)


def _prepare(Q, K, estimator, kernel, gamma):
    """Scaled (u, v) arrays, A and Ψ, exactly as ``PositiveRandomFeatures.fit(Q, keys=K)``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")
    if kernel not in ("softmax", "gaussian"):
        raise ValueError(f'kernel must be "softmax" or "gaussian", got {kernel!r}.')
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}.")
    Q = np.atleast_2d(_as_float(Q))
    K = np.atleast_2d(_as_float(K))
    if Q.ndim != 2 or K.ndim != 2 or Q.shape[1] != K.shape[1]:
        raise ValueError(
            f"Q and K must be 2-D with the same number of columns, got {Q.shape} and {K.shape}."
        )
    if not (np.all(np.isfinite(Q)) and np.all(np.isfinite(K))):
        raise ValueError("Q and K must be finite.")
    d = Q.shape[1]
    c2 = gamma if kernel == "softmax" else 2.0 * gamma
    psi = np.ones(d)
    a = 0.0
    if estimator in ("optimal", "saderf"):
        # The data statistics live with the transformer; importing them here (not at module
        # level) keeps favorkit.features free to import this module.
        from favorkit.features import fit_gerf_parameters

        a, psi = fit_gerf_parameters(Q, K, c2, saderf=estimator == "saderf")
    c = np.sqrt(c2)
    return Q * (c * psi), K * (c / psi), a, psi


def _pair_z(U, V, rows):
    """``|u_i + v_j|²`` for the query rows ``rows`` and all keys."""
    Ub = U[rows]
    z = (Ub**2).sum(1)[:, None] + (V**2).sum(1)[None, :] + 2.0 * Ub @ V.T
    return np.maximum(z, 0.0)


def _cov_function(z_min, z_max, d, coupling, hyperbolic, n_pairs):
    """Pair covariance C(z) as a function on [z_min, z_max] (exact, or spline for many pairs)."""
    c = _coupling_cosine(coupling, d)
    if c is None:
        return lambda z: np.zeros_like(z)

    def exact(z):
        z = z.ravel()
        if hyperbolic:
            return 0.5 * (_cov_series(z, d, c) + _cov_series(z, d, -c))
        return _cov_series(z, d, c)

    if n_pairs <= _EXACT_PAIRS or z_max <= z_min:
        return lambda z: exact(z).reshape(z.shape)
    grid = np.linspace(z_min, z_max, _SPLINE_NODES)
    # log(1 + C) is smooth and O(z): a cubic spline of it is accurate to ~1e-10 here.
    spline = interpolate.CubicSpline(grid, np.log1p(exact(grid)))
    return lambda z: np.expm1(spline(z))


def expected_error(
    Q,
    K,
    n_components,
    *,
    estimator="positive",
    projection="orthogonal",
    kernel="softmax",
    gamma=1.0,
):
    """Predict the relative MSE of the kernel estimates on your own queries and keys (§4.4).

    For ``PositiveRandomFeatures(n_components, estimator=..., projection=..., kernel=...,
    gamma=...)`` fitted with ``fit(Q, keys=K)``, the estimate ``K̂_ij`` of ``K(q_i, k_j)``
    has relative MSE ``E[(K̂_ij/K_ij - 1)²] = V_ij/m + (P/m²) C_ij`` with

    * ``V_ij``: the one-projection relVar at ``z_ij = |u_i + v_j|²``: ``e^z - 1`` (positive),
      ``cosh z - 1`` (hyperbolic), or the GERF form of §2.2 with the same ``A*`` (and, for
      SADERF, the same Ψ: ``u = Ψ q``, ``v = Ψ^{-1} k``) that ``fit`` computes;
    * ``C_ij``: the covariance of two projections of one block, :func:`pair_covariance` at
      cosine 0 (orthogonal) or ``-1/(d-1)`` (simplex), symmetrised for the hyperbolic map;
    * ``P``: ordered pairs of rows in the same block. For ``m > d`` the projection has
      ``floor(m/d)`` independent blocks plus a truncated one; rows of different blocks are
      independent, so the covariance term counts pairs inside a block only:
      ``P = floor(m/d) d(d-1) + r(r-1)``, ``r = m mod d`` (``P = 0`` for iid rows).

    ``A`` and Ψ depend on the data only, never on the random draw, so the estimator is
    unbiased and these formulas are exact for every pair (not bounds).

    Parameters
    ----------
    Q : array-like of shape (n_queries, d)
        Queries (the first kernel argument; the data passed to ``fit``).
    K : array-like of shape (n_keys, d)
        Keys (the ``keys=`` of ``fit``; pass ``Q`` again for a Gram matrix).
    n_components : int
        Number of random projections m (``hyperbolic`` outputs 2m features).
    estimator : {"positive", "hyperbolic", "optimal", "saderf"}, default="positive"
    projection : {"orthogonal", "iid", "simplex"}, default="orthogonal"
        The coupling (``"gaussian"`` is accepted as an alias of ``"iid"``). Structured, QMC
        and user-supplied projections have no closed form and raise.
    kernel : {"softmax", "gaussian"}, default="softmax"
        ``exp(gamma q·k)`` or ``exp(-gamma |q - k|²)`` (the Gaussian factors are exact, so
        the relative error is that of ``SM(u, v)`` with ``u = sqrt(2 gamma) q``).
    gamma : float > 0, default=1.0

    Returns
    -------
    ExpectedError
        ``.mean``, ``.median``, ``.max``, ``.per_pair`` and the pair averages that predict
        other m (``.relative_mse(m)``, ``.features_needed(target)``).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit._beyond_theory import expected_error
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(size=(20, 8)) / 8**0.5, rng.normal(size=(30, 8)) / 8**0.5
    >>> err = expected_error(Q, K, 64, estimator="optimal", projection="simplex")
    >>> err.per_pair.shape
    (20, 30)
    >>> bool(err.mean < expected_error(Q, K, 64, projection="iid").mean)
    True
    >>> m = err.features_needed(0.01)
    >>> bool(err.relative_mse(m) <= 0.01 < err.relative_mse(m - 1))
    True
    """
    m = int(_check_m(n_components))
    if isinstance(projection, str) and projection == "gaussian":
        projection = "iid"
    if not isinstance(projection, str) or projection not in COUPLINGS:
        raise ValueError(
            'projection must be "iid", "orthogonal" or "simplex" (the couplings with a closed '
            f"form); got {projection if isinstance(projection, str) else 'an array'!r}."
        )
    U, V, a, psi = _prepare(Q, K, estimator, kernel, gamma)
    n_q, d = U.shape
    n_k = V.shape[0]
    n_pairs = n_q * n_k
    hyperbolic = estimator == "hyperbolic"
    pairs = float(_pair_count(np.int64(m), d, projection))

    # Pass 1: range of z (for the covariance spline). Rows in blocks keep memory O(block·n_k).
    step = max(1, (1 << 18) // max(n_k, 1))
    blocks = [slice(s, min(n_q, s + step)) for s in range(0, n_q, step)]
    z_min, z_max = np.inf, -np.inf
    for rows in blocks:
        z = _pair_z(U, V, rows)
        z_min, z_max = min(z_min, z.min()), max(z_max, z.max())
    cov_of = _cov_function(z_min, z_max, d, projection, hyperbolic, n_pairs)

    keep = n_pairs <= _PER_PAIR_LIMIT
    stride = 1 if keep else int(np.ceil(np.sqrt(n_pairs / _PER_PAIR_LIMIT)))
    sums = np.zeros(3)
    kept = []
    log_const = 0.5 * d * (2.0 * np.log1p(-4.0 * a) - np.log1p(-8.0 * a))
    for rows in blocks:
        z = _pair_z(U, V, rows)
        if hyperbolic:
            log1p_v = np.logaddexp(z, -z) - np.log(2.0)  # log cosh z, no overflow
        else:
            log1p_v = log_const + z / (1.0 - 8.0 * a)
        v = np.expm1(log1p_v)
        cov = cov_of(z)
        rel = v / m + pairs / m**2 * cov
        sums += (v.sum(), cov.sum(), log1p_v.sum())
        r0 = (-rows.start) % stride
        kept.append(rel if keep else rel[r0::stride, ::stride])
    mean_v, mean_c, mean_log = sums / n_pairs
    rel_kept = np.concatenate(kept, axis=0)
    mean = mean_v / m + pairs / m**2 * mean_c
    return ExpectedError(
        estimator=estimator,
        projection=projection,
        kernel=kernel,
        n_components=m,
        n_features=d,
        gerf_a=float(a),
        query_scale=psi,
        mean=float(mean),
        median=float(np.median(rel_kept)),
        max=float(rel_kept.max()),
        per_pair=rel_kept if keep else None,
        mean_single_variance=float(mean_v),
        mean_pair_covariance=float(mean_c),
        mean_log1p_variance=float(mean_log),
    )


def features_needed(
    Q,
    K,
    target,
    *,
    estimator="positive",
    projection="orthogonal",
    kernel="softmax",
    gamma=1.0,
):
    """Smallest number of projections m whose predicted mean relative MSE is ``<= target``.

    Uses the pair averages of :func:`expected_error` (which do not depend on m) and the
    exact block structure: ``relMSE(m) = mean V/m + (P(m)/m²) mean C``.

    Parameters
    ----------
    Q, K : array-like of shape (n, d)
        Queries and keys.
    target : float > 0
        Target mean relative MSE over all pairs.
    estimator, projection, kernel, gamma
        As in :func:`expected_error`.

    Returns
    -------
    int

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit._beyond_theory import features_needed
    >>> X = np.random.default_rng(0).normal(size=(16, 4)) / 2
    >>> m_plus = features_needed(X, X, 0.05)
    >>> m_pp = features_needed(X, X, 0.05, estimator="optimal", projection="simplex")
    >>> bool(m_pp < m_plus)
    True
    """
    err = expected_error(
        Q,
        K,
        1,
        estimator=estimator,
        projection=projection,
        kernel=kernel,
        gamma=gamma,
    )
    return err.features_needed(target)
