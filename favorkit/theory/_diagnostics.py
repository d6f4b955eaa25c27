"""How accurate will an approximation be? Predicted error on a user's own data.

For positive random features the relative MSE of every kernel estimate is exact in closed
form (the one-projection variance of the map and the pair covariance of its coupling), so
the error can be predicted from the queries and keys alone, without a single draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import interpolate

from favorkit import kernels, maps
from favorkit._typing import ArrayLike, FloatOrArray, NDArray, PositiveEstimator
from favorkit.maps import MapParams, Moments
from favorkit.theory._checks import projection_count
from favorkit.theory._gerf import COUPLINGS, coupling_cosine, log_moment_series, pair_count

__all__ = ["ExpectedError", "check_target", "expected_error", "features_needed", "smallest_m"]

# Above this many query-key pairs, Cov(z) is evaluated on a grid of z and interpolated
# (a cubic spline of log(1 + Cov), checked against the exact series in the tests).
_EXACT_PAIRS = 4096
_SPLINE_NODES = 2049
# Per-pair arrays (and exact medians) are kept up to this many pairs (8 MB of float64).
_PER_PAIR_LIMIT = 1 << 20


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
        Pair mean of ``log(1 + V)``, the "shifted log-variance" SADERF minimises
        (Likhosherstov et al. 2023).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit.theory import expected_error
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
    query_scale: NDArray[np.float64] = field(repr=False)
    mean: float
    median: float
    max: float
    per_pair: NDArray[np.float64] | None = field(repr=False)
    mean_single_variance: float
    mean_pair_covariance: float
    mean_log1p_variance: float

    def relative_mse(self, m: ArrayLike) -> FloatOrArray:
        """Predicted mean relative MSE with ``m`` projections (same data, estimator, coupling).

        Parameters
        ----------
        m : int or array-like of int

        Returns
        -------
        float or ndarray
        """
        m = projection_count(m)
        pairs = pair_count(m, self.n_features, self.projection)
        v, c = self.mean_single_variance, self.mean_pair_covariance
        return (v / m + pairs / m.astype(np.float64) ** 2 * c)[()]

    def features_needed(self, target: float) -> int | float:
        """Smallest m whose predicted mean relative MSE is ``<= target``.

        Parameters
        ----------
        target : float > 0
            Target mean relative MSE.

        Returns
        -------
        int or float
            The smallest m; past ``2**62`` projections (no such m is of use) the
            whole-block estimate ``max(V, V + (d-1) C) / target`` as a float, ``inf`` when
            the predicted error is infinite.
        """
        return _smallest_m(self, target)


def check_target(target: float) -> float:
    """A target error: a finite number > 0, as float."""
    if isinstance(target, bool) or not isinstance(target, (int, float, np.number)):
        raise ValueError(f"target must be > 0 (a number), got {target!r}.")
    target = float(target)
    if not target > 0 or not np.isfinite(target):
        raise ValueError(f"target must be > 0 and finite, got {target!r}.")
    return target


def smallest_m(meets: Callable[[Any], Any], low: float, high: float, d: int) -> int | float:
    """The smallest m >= 1 with ``meets(m)`` (vectorised over int64 arrays).

    The error at m lies between the lines ``low/m`` and ``high/m`` in units of the target
    (for coupled blocks of d rows, one of them is exact at whole blocks m = n d, and a
    partial last block moves it by less than a block), so the answer lies between their
    crossings; that range is scanned exactly, or, when it is huge (a tiny target), the first
    whole block that meets the target is found by bisection and the two blocks before it
    scanned. Past ``2**62`` projections no answer is of use: ``high`` is returned as a float.
    """
    hi = math.ceil(high / d) * d + d
    if not hi < _M_LIMIT:
        return float(high)
    lo = min(max(1, math.floor(low) - d), hi)
    if hi - lo > 1 << 22:
        n_lo, n_hi = 1, hi // d
        while n_lo < n_hi:
            mid = (n_lo + n_hi) // 2
            if meets(np.int64(mid * d)):
                n_hi = mid
            else:
                n_lo = mid + 1
        lo, hi = max(1, (n_lo - 2) * d), n_lo * d
    for start in range(lo, hi + 1, 1 << 20):
        ms = np.arange(start, min(hi, start + (1 << 20) - 1) + 1, dtype=np.int64)
        ok = np.nonzero(meets(ms))[0]
        if ok.size:
            return int(ms[ok[0]])
    return int(hi)


def _smallest_m(err, target):
    """The smallest m with ``err.relative_mse(m) <= target``: an int, or beyond ``2**62``
    projections the whole-block estimate as a float (``inf`` when the error is unbounded)."""
    target = check_target(target)
    v, c, d = err.mean_single_variance, err.mean_pair_covariance, err.n_features
    if v <= 0:
        return 1
    if not np.isfinite(v):
        return math.inf
    # relMSE = v/m + (P/m²) c, exactly (v + (d-1)c)/m at whole blocks; iid rows: v/m.
    coupled = err.projection != "iid" and d > 1
    whole = v + (d - 1) * c if coupled else v
    low, high = sorted((whole, v))
    return smallest_m(
        lambda m: err.relative_mse(m) <= target, low / target, high / target, d if coupled else 1
    )


_M_LIMIT = 2.0**62


def _prepare(Q, K, estimator, kernel, gamma):
    """The map, scaled (u, v) arrays and its parameters, as ``PositiveRandomFeatures.fit(Q,
    keys=K)`` has them."""
    exponential = maps.names("exponential")
    if estimator not in exponential:
        raise ValueError(f"estimator must be one of {exponential}, got {estimator!r}.")
    if kernel not in ("softmax", "gaussian"):
        raise ValueError(f'kernel must be "softmax" or "gaussian", got {kernel!r}.')
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}.")
    Q = np.atleast_2d(np.asarray(Q, dtype=np.float64))
    K = np.atleast_2d(np.asarray(K, dtype=np.float64))
    if Q.ndim != 2 or K.ndim != 2 or Q.shape[1] != K.shape[1]:
        raise ValueError(
            f"Q and K must be 2-D with the same number of columns, got {Q.shape} and {K.shape}."
        )
    if not (np.all(np.isfinite(Q)) and np.all(np.isfinite(K))):
        raise ValueError("Q and K must be finite.")
    fmap = maps.get(estimator)
    c2 = kernels.get(kernel).input_scale_sq(gamma)
    params = MapParams.identity(Q.shape[1])
    if fmap.fitted:
        params = fmap.fit(Moments.of(Q, c2), Moments.of(K, c2))
    c = np.sqrt(c2)
    return fmap, Q * (c * params.psi), K * (c / params.psi), params


def _pair_z(U, V, rows):
    """``|u_i + v_j|²`` for the query rows ``rows`` and all keys."""
    Ub = U[rows]
    z = (Ub**2).sum(1)[:, None] + (V**2).sum(1)[None, :] + 2.0 * Ub @ V.T
    return np.maximum(z, 0.0)


def _cov_function(z_min, z_max, d, coupling, antithetic, n_pairs):
    """Pair covariance C(z) as a function on [z_min, z_max] (exact, or spline for many pairs);
    an antithetic map's is symmetrised in the cosine."""
    c = coupling_cosine(coupling, d)
    if c is None:
        return lambda z: np.zeros_like(z)

    def log_moment(z):  # log(1 + C): finite even where C rounds to -1 (large z)
        z = z.ravel()
        if antithetic:
            both = np.logaddexp(log_moment_series(z, d, c), log_moment_series(z, d, -c))
            return both - np.log(2.0)
        return log_moment_series(z, d, c)

    if n_pairs <= _EXACT_PAIRS or z_max <= z_min:
        return lambda z: np.expm1(log_moment(z)).reshape(z.shape)
    grid = np.linspace(z_min, z_max, _SPLINE_NODES)
    # log(1 + C) is smooth and O(z): a cubic spline of it is accurate to ~1e-10 here.
    spline = interpolate.CubicSpline(grid, log_moment(grid))
    return lambda z: np.expm1(spline(z))


def expected_error(
    Q: ArrayLike,
    K: ArrayLike,
    n_components: int,
    *,
    estimator: PositiveEstimator = "positive",
    projection: Literal["orthogonal", "iid", "gaussian", "simplex"] = "orthogonal",
    kernel: Literal["softmax", "gaussian"] = "softmax",
    gamma: float = 1.0,
) -> ExpectedError:
    """Predict the relative MSE of the kernel estimates on your own queries and keys.

    For ``PositiveRandomFeatures(n_components, estimator=..., projection=..., kernel=...,
    gamma=...)`` fitted with ``fit(Q, keys=K)``, the estimate ``K̂_ij`` of ``K(q_i, k_j)``
    has relative MSE ``E[(K̂_ij/K_ij - 1)²] = V_ij/m + (P/m²) C_ij`` with

    * ``V_ij``: the one-projection relVar at ``z_ij = |u_i + v_j|²``: ``e^z - 1`` (positive),
      ``cosh z - 1`` (hyperbolic), or the GERF form with the same ``A*`` (and, for
      SADERF, the same Ψ: ``u = Ψ q``, ``v = Ψ^{-1} k``) that ``fit`` computes (each map's
      ``relative_variance``, :mod:`favorkit.maps`);
    * ``C_ij``: the covariance of two projections of one block, :func:`pair_covariance` at
      cosine 0 (orthogonal) or ``-1/(d-1)`` (simplex), symmetrised for the antithetic maps;
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
        Number of random projections m (the antithetic maps output 2m features).
    estimator : {"positive", "hyperbolic", "optimal", "saderf", "optimal_hyperbolic"}, \
            default="positive"
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
    >>> from favorkit.theory import expected_error
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
    m = int(projection_count(n_components))
    if isinstance(projection, str) and projection == "gaussian":
        projection = "iid"
    if not isinstance(projection, str) or projection not in COUPLINGS:
        raise ValueError(
            'projection must be "iid", "orthogonal" or "simplex" (the couplings with a closed '
            f"form); got {projection if isinstance(projection, str) else 'an array'!r}."
        )
    fmap, U, V, params = _prepare(Q, K, estimator, kernel, gamma)
    a, psi = params.a, params.psi
    n_q, d = U.shape
    n_k = V.shape[0]
    n_pairs = n_q * n_k
    pairs = float(pair_count(np.int64(m), d, projection))

    # Pass 1: range of z (for the covariance spline). Rows in blocks keep memory O(block·n_k).
    step = max(1, (1 << 18) // max(n_k, 1))
    blocks = [slice(s, min(n_q, s + step)) for s in range(0, n_q, step)]
    z_min, z_max = np.inf, -np.inf
    for rows in blocks:
        z = _pair_z(U, V, rows)
        z_min, z_max = min(z_min, z.min()), max(z_max, z.max())
    cov_of = _cov_function(z_min, z_max, d, projection, fmap.antithetic, n_pairs)

    keep = n_pairs <= _PER_PAIR_LIMIT
    stride = 1 if keep else int(np.ceil(np.sqrt(n_pairs / _PER_PAIR_LIMIT)))
    sums = np.zeros(3)
    kept = []
    for rows in blocks:
        z = _pair_z(U, V, rows)
        log1p_v = fmap.log1p_relative_variance(z, d, a)
        with np.errstate(over="ignore"):  # an infinite variance is the honest answer
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
    Q: ArrayLike,
    K: ArrayLike,
    target: float,
    *,
    estimator: PositiveEstimator = "positive",
    projection: Literal["orthogonal", "iid", "gaussian", "simplex"] = "orthogonal",
    kernel: Literal["softmax", "gaussian"] = "softmax",
    gamma: float = 1.0,
) -> int | float:
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
    int or float
        As :meth:`ExpectedError.features_needed`: a float only past ``2**62``
        projections, ``inf`` where the predicted error is infinite.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit.theory import features_needed
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
