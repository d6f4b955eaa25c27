"""The feature maps: every random-feature map of favorkit, in one place.

A feature map turns an input ``x`` (after the kernel's scale, ``u = c x``) and projection
rows ``ω_1 … ω_m`` (drawn by :mod:`favorkit.sampling`) into features whose inner products
estimate a kernel. Each map is one small object, registered by name in :data:`MAPS` as
projections are in :data:`favorkit.sampling.PROJECTIONS`; the transformers
(:mod:`favorkit.features`), attention (:mod:`favorkit.attention`), the closed forms
(:mod:`favorkit.theory`) and the experiments all ask the map, never the name.

==============  =================================================================  ========
name            features of ``u`` (with ``1/sqrt(m)``; ``Λ(u) = e^{-|u|²/2}``)      blocks
==============  =================================================================  ========
``positive``    ``Λ(u) exp(ω·u)``: FAVOR+ (Choromanski et al. 2021, Lemma 1)       1
``hyperbolic``  ``Λ(u) [exp(ω·u), exp(-ω·u)] / sqrt(2)``: the antithetic pair      2
                (Lemma 2)
``optimal``     ``D Λ(u) exp(A|ω|² + Bω·u)``, ``B = sqrt(1 - 4A)``,                 1
                ``D = (1 - 4A)^{d/4}``, with the variance-optimal ``A* <= 0``:
                FAVOR++ (GERF/OPRF of Likhosherstov et al. 2022, "Chefs' Random
                Tables")
``saderf``      ``optimal`` on ``Ψu`` (queries) and ``Ψ⁻¹v`` (keys), ``Ψ``            1
                diagonal (SADERF of Likhosherstov et al. 2023, "Dense-Exponential
                Random Features")
``trig``        ``[cos(ω·u), sin(ω·u)]``: trigonometric features (Rahimi–Recht;     2
                the Performer's baseline, times ``e^{|u|²/2}`` for the softmax
                kernel)
``cos``         ``sqrt(2) cos(ω·u + b)``, ``b ~ U[0, 2π)``: scikit-learn's          1
                ``RBFSampler``
``arccos0`` …   ``sqrt(2) Θ(ω·u) (ω·u)ⁿ``, n = 0, 1, 2: the arc-cosine kernels      1
                (Cho and Saul 2009; degree 1 is the Performer-ReLU of Eq. 5 as a
                random-feature estimator)
``relu`` …      deterministic activations of attention (any f in Eq. 5):            1
                ``f(ω·u) + ε`` with ``f`` relu, elu + 1, exp, abs or a callable
==============  =================================================================  ========

What a map offers its users:

* ``blocks``: the suffixes of its output column blocks (``width(m)`` columns in all);
* ``fit(queries, keys)``: its parameters (:class:`MapParams`) from the column moments
  (:class:`Moments`) of the scaled queries and keys, one path for every user;
* exponential maps (the positive ones): ``log_features(W, params, c, side)``, the
  log-feature ``log φ_i(x) = z_i(x) + ρ(x)`` as a projection, a per-column term and the
  weights of a per-row constant (:class:`LogFeatures`), which each user evaluates in its
  own precision and blocking;
* the variance hooks of the closed forms: ``relative_variance`` and
  ``log1p_relative_variance`` of one projection at ``z = |u + v|²``, ``second_moment``
  (the covariance of two entries that share a query, which attention's error needs),
  ``antithetic`` (its pair covariance is symmetrised), ``term_moment`` (raw moments of
  one iid term) and ``per_projection`` (per-projection estimates from features).

How to add a map: subclass :class:`ExponentialMap` (or :class:`FeatureMap`), give it a
``name`` and ``blocks``, implement the methods above that apply, and register an instance
in :data:`MAPS`. The transformers and attention accept it by name; theory and the tests
that run over ``MAPS`` pick it up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from favorkit._kernels.fastexp import exp_inplace
from favorkit._kernels.feature_maps import cos_offset_rows_inplace, cos_sin_rows
from favorkit._typing import ArrayLike, FloatArray, FloatOrArray, NDArray, Rng, Self, SparseMatrix

__all__ = [
    "MAPS",
    "ActivationMap",
    "ArcCosineMap",
    "ColumnSums",
    "CosOffsetMap",
    "ExponentialMap",
    "FeatureMap",
    "GerfMap",
    "HyperbolicMap",
    "LogFeatures",
    "MapParams",
    "Moments",
    "PositiveMap",
    "SecondMoment",
    "TrigMap",
    "get",
    "names",
    "optimal_gerf_a",
]


# --------------------------------------------------------------------------------------
# statistics and parameters


@dataclass(frozen=True)
class Moments:
    """Per-coordinate mean and mean square of a set of (kernel-scaled) rows.

    The only statistics any map fits its parameters from; they cost O(n d) and can be
    accumulated in blocks (attention sums them per sequence).

    Attributes
    ----------
    mean : ndarray of shape (d,)
    mean_sq : ndarray of shape (d,)
    """

    mean: NDArray[np.float64]
    mean_sq: NDArray[np.float64]

    @classmethod
    def of(cls, X: FloatArray | SparseMatrix | ColumnSums, scale_sq: float = 1.0) -> Self:
        """Moments of ``sqrt(scale_sq) X`` for dense or CSR rows X (or their
        :class:`ColumnSums`), in float64.

        Examples
        --------
        >>> import numpy as np
        >>> from favorkit.maps import Moments
        >>> Moments.of(np.array([[1.0, 2.0], [3.0, 2.0]]), scale_sq=4.0).mean_sq
        array([20., 16.])
        """
        if isinstance(X, ColumnSums):
            return X.moments(scale_sq)
        with np.errstate(over="ignore", invalid="ignore"):  # fit checks the result
            if sp.issparse(X):
                # scipy ships no type information: X is not narrowed to a sparse matrix
                data = X.data.astype(np.float64)  # type: ignore[union-attr]
                mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
                squares = sp.csr_matrix(
                    (data * data, X.indices, X.indptr),  # type: ignore[union-attr]
                    shape=X.shape,
                )
                mean_sq = np.asarray(squares.mean(axis=0)).ravel()
            else:
                mean = X.mean(axis=0, dtype=np.float64)
                mean_sq = np.einsum("ij,ij->j", X, X, dtype=np.float64) / X.shape[0]
            return cls(np.sqrt(scale_sq) * mean, scale_sq * mean_sq)

    @classmethod
    def from_sums(
        cls, sums: FloatArray, sums_sq: FloatArray, count: int, scale_sq: float = 1.0
    ) -> Self:
        """Moments of ``sqrt(scale_sq) x`` from column sums and sums of squares of ``count``
        unscaled rows (as accumulated in blocks)."""
        return cls(np.sqrt(scale_sq) * sums / count, scale_sq * sums_sq / count)


@dataclass(frozen=True)
class ColumnSums:
    """Column sums and sums of squares of the rows of a data set, in float64.

    What fitting needs from data that are not in memory (a dask array's rows, summed in one
    pass over its chunks): the :class:`Moments` of the maps that fit parameters and the
    variance of ``gamma="scale"``.

    Attributes
    ----------
    sums : ndarray of shape (d,)
    squares : ndarray of shape (d,)
    count : int
        The number of rows.
    """

    sums: NDArray[np.float64]
    squares: NDArray[np.float64]
    count: int

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the data summed."""
        return self.count, self.sums.shape[0]

    def moments(self, scale_sq: float = 1.0) -> Moments:
        """The :class:`Moments` of ``sqrt(scale_sq) x``.

        Examples
        --------
        >>> import numpy as np
        >>> from favorkit.maps import ColumnSums
        >>> ColumnSums(np.array([4.0, 4.0]), np.array([10.0, 8.0]), 2).moments(4.0).mean_sq
        array([20., 16.])
        """
        return Moments.from_sums(self.sums, self.squares, self.count, scale_sq)

    def variance(self) -> float:
        """The variance over all entries (numpy's ``X.var()``), from the sums."""
        n = self.count * self.sums.shape[0]
        mean = float(self.sums.sum()) / n
        return max(float(self.squares.sum()) / n - mean * mean, 0.0)


@dataclass(frozen=True)
class MapParams:
    """Parameters fitted by a map: the GERF ``A`` and SADERF's diagonal ``Ψ``.

    ``A = 0`` and ``Ψ = 1`` for every map whose parameters do not depend on the data.

    Attributes
    ----------
    a : float
        The GERF parameter ``A <= 0``.
    psi : ndarray of shape (d,)
        Queries are scaled by ``Ψ``, keys by ``Ψ⁻¹``.
    """

    a: float
    psi: NDArray[np.float64]

    @classmethod
    def identity(cls, d: int) -> Self:
        return cls(0.0, np.ones(d))


def optimal_gerf_a(phi: ArrayLike, d: int) -> FloatOrArray:
    """The variance-optimal GERF parameter ``A* <= 0`` (FAVOR++'s OPRF; Likhosherstov et al.
    2022, "Chefs' Random Tables").

    Minimises ``log E[f1² f2²] = (d/2) log((1-4A)²/(1-8A)) + φ/(1-8A)``, the log second
    moment of one projection at ``z = φ``; for a batch, φ is the pair mean of ``|u_i +
    v_j|²``, which minimises the pair-averaged log second moment exactly. With
    ``ρ = 1/(1-8A)`` the stationarity condition is ``2φρ² + (2φ + d)ρ - d = 0``, whose root
    in (0, 1] is taken in the cancellation-free form

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
    >>> from favorkit.maps import optimal_gerf_a
    >>> round(float(optimal_gerf_a(16.0, 64)), 4)
    -0.0976
    >>> float(optimal_gerf_a(0.0, 8))
    0.0
    """
    d = _check_d(d)
    phi = np.asarray(phi, dtype=np.float64)
    if np.isnan(phi).any():
        raise ValueError("phi must not be NaN.")
    phi = np.maximum(phi, 0.0)
    # With x = φ/d: 1/ρ* = (2x + 1)(1 + sqrt(1 + 8x/(2x + 1)²)) / 2, written so that
    # nothing overflows before the result does (the form above squares 2φ + d).
    with np.errstate(over="ignore", invalid="ignore"):
        x = phi / d  # type: ignore[operator]  # an array: np.maximum is typed Any
        s = 2.0 * x + 1.0
        inv_rho = s * (1.0 + np.sqrt(1.0 + 8.0 * (x / s) / s)) / 2.0
        a = (1.0 - inv_rho) / 8.0
    return np.where(np.isinf(phi), -np.inf, a)[()]


def _check_d(d):
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}.")
    return int(d)


def _saderf_scales(ex, ey):
    """``Ψ_l = ((E v_l² + ε) / (E u_l² + ε))^{1/4}``, ε a tiny fraction of the mean energy.

    Ψ does not change when both energies are scaled alike, so moments whose sum overflows
    (each of them finite) are divided by their largest first.
    """
    total = ex.sum() + ey.sum()
    if not np.isfinite(total):
        top = max(ex.max(), ey.max())
        ex, ey = ex / top, ey / top
        total = ex.sum() + ey.sum()
    eps = 1e-12 * max(total, np.finfo(np.float64).tiny) / ex.size
    return ((ey + eps) / (ex + eps)) ** 0.25


@dataclass(frozen=True)
class LogFeatures:
    """The log-features of an exponential map on one side, ready to be evaluated.

    ``log φ_i(x) = (P x)_i + t_i + ρ(x)``, one row of ``P`` per projection, with the row
    constant ``ρ(x) = const - |x̃|²/2`` and ``|x̃|² = Σ_l w_l x_l²`` (times 2 for the
    Gaussian kernel's factor, which a transformer adds itself). An antithetic map has
    ``2m`` columns ``[z + t, -z + t]`` of ``z = P x``.

    Attributes
    ----------
    projection : ndarray of shape (m, d), float64
        ``P = B c Ψ^{±1} ω``: the projection rows times the input scale.
    column : ndarray of shape (m,) or None
        ``t = A|ω|²``: None for the maps without a fitted ``A`` (where ``A = 0``).
    norm_weights : ndarray of shape (d,)
        ``w = (c Ψ^{±1})²``.
    norm_scale : float or None
        ``c²`` for the maps without a fitted Ψ, whose weights all equal it: then
        ``|x̃|² = c² |x|²``.
    const : float
        ``(d/4) log(1 - 4A) - ½ log(width)``: the same for every row.
    antithetic : bool
        Columns ``[z, -z]``.
    """

    projection: NDArray[np.float64]
    column: NDArray[np.float64] | None
    norm_weights: NDArray[np.float64]
    norm_scale: float | None
    const: float
    antithetic: bool


@dataclass(frozen=True)
class SecondMoment:
    """The second moment of one projection's estimates at two pairs that share a query.

    With ``T(a) = K̂_1(q, k) / K(q, k)`` the one-projection estimate of a kernel entry
    relative to the entry, and pair vectors ``a = u + v`` (``a = u - v`` where
    ``pair_sign = -1``: the trigonometric map), for one projection ``ω ~ N(0, I_d)``

    ``log E[T(a_1) T(a_2)] = log_const + alpha (|a_1|² + |a_2|²)
    + log mean_{σ in signs} exp(σ gamma a_1·a_2)``.

    At ``a_1 = a_2`` it is ``1 + relVar``; between different keys it is what the error of a
    weighted sum of entries (an attention output) needs. Derived from
    ``E e^{ω·s + A'|ω|²} = (1 - 2A')^{-d/2} e^{|s|²/(2(1 - 2A'))}`` (and its
    ``s -> i s`` form for the trigonometric map).

    Attributes
    ----------
    log_const, alpha, gamma : float
    signs : tuple of int
        ``(1,)``, or ``(1, -1)`` for the maps that pair ``±ω`` (and for ``cos``).
    pair_sign : int
        ``+1``: ``a = u + v``; ``-1``: ``a = u - v``.
    """

    log_const: float
    alpha: float
    gamma: float
    signs: tuple[int, ...]
    pair_sign: int


# --------------------------------------------------------------------------------------
# the maps


class FeatureMap:
    """A random (or deterministic) feature map; see the module docstring.

    Attributes
    ----------
    name : str
        Its key in :data:`MAPS`.
    blocks : tuple of str
        Suffixes of its output column blocks of ``m`` columns each.
    exponential : bool
        Every feature is ``exp`` of a log-feature: positive features, computed in log space.
    fitted : bool
        Its parameters depend on data statistics (:meth:`fit`).
    attention_estimator : bool
        Attention can use it as an estimator of the softmax kernel.
    """

    name: str = ""
    blocks: tuple[str, ...] = ("",)
    needs_projection: bool = True
    exponential: bool = False
    fitted: bool = False
    attention_estimator: bool = False

    def width(self, m: int) -> int:
        """Number of output columns for ``m`` projections."""
        return m * len(self.blocks)

    def fit(self, queries: Moments, keys: Moments) -> MapParams:
        """Parameters from the moments of the scaled queries and keys (:class:`Moments`)."""
        return MapParams.identity(queries.mean.shape[0])

    def term_moment(self, x: FloatArray, y: FloatArray, j: int) -> FloatOrArray:
        """Raw moment ``E[T^j]`` of one iid term ``T = width φ_k(x) φ_k(y)`` (ω ~ N(0, I))
        of the softmax kernel's estimate at the pairs ``(x, y)``; the closed forms exist for
        maps whose parameters do not depend on the data."""
        raise NotImplementedError(f"no closed-form term moments for the map {self.name!r}")

    def second_moment(self, d: int, a: float = 0.0) -> SecondMoment:
        """:class:`SecondMoment` of one projection's estimates (GERF parameter ``a``)."""
        raise NotImplementedError(f"no closed-form second moment for the map {self.name!r}")

    def per_projection(self, Fx: FloatArray, Fy: FloatArray) -> FloatArray:
        """Per-projection kernel estimates ``S[i, k]`` of ``K(x_i, y_i)`` from the features
        of paired rows (each feature carries ``1/sqrt(width)`` of its block's scale), so
        that ``S[:, G].mean(1)`` is the estimate from the projections ``G``."""
        m = Fx.shape[1] // len(self.blocks)
        blocks = [slice(k * m, (k + 1) * m) for k in range(len(self.blocks))]
        terms = [Fx[:, block] * Fy[:, block] for block in blocks]
        return m * sum(terms[1:], terms[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ExponentialMap(FeatureMap):
    """A map whose features are ``exp(A|ω|² + B ω·ũ - |ũ|²/2) D / sqrt(m)`` (positive)."""

    exponential = True
    attention_estimator = True
    antithetic: bool = False

    def log_features(
        self,
        W: NDArray[np.float64],
        params: MapParams,
        scale_sq: float,
        side: Literal["query", "key"] = "query",
    ) -> LogFeatures:
        """The log-features of rows on one side, for projection rows ``W`` (m, d).

        ``scale_sq`` is ``c²`` with ``u = c x`` (``gamma`` or ``2 gamma`` in the
        transformers, the logit scale in attention). SADERF's queries take ``Ψ``, its keys
        ``Ψ⁻¹``.
        """
        a = float(params.a)
        b = np.sqrt(1.0 - 4.0 * a)
        psi = params.psi if side == "query" else 1.0 / params.psi
        col_scale = np.sqrt(scale_sq) * psi
        m, d = W.shape
        with np.errstate(over="ignore"):  # the users check what they evaluate
            projection = W * (b * col_scale)
            column = a * np.einsum("ij,ij->i", W, W)
        return LogFeatures(
            projection=projection,
            column=column if self.fitted or a != 0.0 else None,
            norm_weights=col_scale**2,
            norm_scale=None if self.fitted else float(scale_sq),
            const=0.25 * d * np.log1p(-4.0 * a) - 0.5 * np.log(self.width(m)),
            antithetic=self.antithetic,
        )

    def log1p_relative_variance(
        self, z: FloatOrArray, d: int, a: FloatOrArray = 0.0
    ) -> FloatOrArray:
        """``log(1 + relVar)`` of one projection at ``z = |u + v|²``, the GERF variance of
        Likhosherstov et al. (2022): ``(d/2) log((1-4A)²/(1-8A)) + z/(1-8A)``."""
        return 0.5 * d * (2.0 * np.log1p(-4.0 * a) - np.log1p(-8.0 * a)) + z / (1.0 - 8.0 * a)

    def relative_variance(self, z: FloatOrArray, d: int, a: FloatOrArray = 0.0) -> FloatOrArray:
        """Variance of one projection's estimate over the kernel squared, at ``z``."""
        return np.expm1(self.log1p_relative_variance(z, d, a))

    def second_moment(self, d: int, a: float = 0.0) -> SecondMoment:
        """GERF (Likhosherstov et al. 2022): ``E[T(a_1)T(a_2)] = (1-4A)^d (1-8A)^{-d/2}
        exp(γ|a_1 + a_2|²/2 - (|a_1|² + |a_2|²)/2)`` with ``γ = (1-4A)/(1-8A)``; ``A = 0``
        gives FAVOR+'s ``e^{a_1·a_2}``, an antithetic map the mean over ``±a_2``."""
        gamma = (1.0 - 4.0 * a) / (1.0 - 8.0 * a)
        return SecondMoment(
            log_const=0.5 * d * (2.0 * np.log1p(-4.0 * a) - np.log1p(-8.0 * a)),
            alpha=0.5 * (gamma - 1.0),
            gamma=gamma,
            signs=(1, -1) if self.antithetic else (1,),
            pair_sign=1,
        )


class PositiveMap(ExponentialMap):
    """FAVOR+: ``Λ(u) exp(ω·u) / sqrt(m)`` (Choromanski et al. 2021, Lemma 1)."""

    name = "positive"

    def term_moment(self, x: FloatArray, y: FloatArray, j: int) -> FloatOrArray:
        """``T = Λ(x)Λ(y) e^{ω·(x+y)}``, with ``E e^{λ ω·s} = e^{λ²|s|²/2}``."""
        sx, sy = np.sum(x * x, -1), np.sum(y * y, -1)
        s = np.sum((x + y) ** 2, -1)
        return np.exp(-0.5 * j * (sx + sy) + 0.5 * j * j * s)


class HyperbolicMap(ExponentialMap):
    """The antithetic pair ``Λ(u) [exp(ω·u), exp(-ω·u)] / sqrt(2m)`` (Lemma 2)."""

    name = "hyperbolic"
    blocks = ("plus", "minus")
    antithetic = True

    def log1p_relative_variance(
        self, z: FloatOrArray, d: int, a: FloatOrArray = 0.0
    ) -> FloatOrArray:
        """``log cosh z`` (relVar ``cosh z - 1``, Lemma 2), without overflow."""
        return np.logaddexp(z, -z) - np.log(2.0)

    def relative_variance(self, z: FloatOrArray, d: int, a: FloatOrArray = 0.0) -> FloatOrArray:
        """``cosh z - 1 = 2 sinh²(z/2)``, without cancellation near 0."""
        return 2.0 * np.sinh(0.5 * z) ** 2

    def term_moment(self, x: FloatArray, y: FloatArray, j: int) -> FloatOrArray:
        """``T = Λ(x)Λ(y) cosh(ω·(x+y))``: binomial expansion of ``cosh^j``."""
        sx, sy = np.sum(x * x, -1), np.sum(y * y, -1)
        s = np.sum((x + y) ** 2, -1)
        tot = sum(math.comb(j, k) * np.exp(0.5 * (j - 2 * k) ** 2 * s) for k in range(j + 1))
        return np.exp(-0.5 * j * (sx + sy)) * tot / 2**j


class GerfMap(ExponentialMap):
    """FAVOR++ (``saderf=False``) and SADERF: GERF features with fitted ``A`` (and ``Ψ``).

    ``fit`` takes ``Ψ_l = (E v_l² / E u_l²)^{1/4}``, which minimises ``mean |Ψu_i +
    Ψ⁻¹v_j|²`` over diagonal Ψ (SADERF; ones for FAVOR++; a coordinate that is zero on one
    side only gets the finite limit of the formula through a tiny relative epsilon), then
    ``φ = mean_{i,j} |Ψu_i + Ψ⁻¹v_j|² = Σ_l (Ψ_l² E u_l² + Ψ_l⁻² E v_l²) + 2 ū·v̄`` and
    ``A = optimal_gerf_a(φ, d)``.
    """

    fitted = True

    def __init__(self, name: str, *, saderf: bool) -> None:
        self.name = name
        self.saderf = saderf

    def fit(self, queries: Moments, keys: Moments) -> MapParams:
        ex = np.asarray(queries.mean_sq, dtype=np.float64)
        ey = np.asarray(keys.mean_sq, dtype=np.float64)
        d = ex.size
        with np.errstate(over="ignore", invalid="ignore"):
            psi = _saderf_scales(ex, ey) if self.saderf else np.ones(d)
            phi = float(ex @ psi**2 + ey @ psi**-2 + 2.0 * np.dot(queries.mean, keys.mean))
        if not (np.isfinite(phi) and np.isfinite(psi).all()):
            raise ValueError(
                "The FAVOR++/SADERF statistics of the inputs (mean squared norms of the "
                "scaled inputs) overflow float64; scale the inputs down (or lower gamma / "
                "scale)."
            )
        return MapParams(float(optimal_gerf_a(phi, d)), psi)


class HyperbolicGerfMap(GerfMap):
    """FAVOR++ in antithetic pairs: ``D Λ(u) e^{A|ω|²} [e^{Bω·u}, e^{-Bω·u}] / sqrt(2m)``.

    The hyperbolic map's pairing (Choromanski et al. 2021, Lemma 2) on the GERF of
    Likhosherstov et al. (2022), with FAVOR++'s fitted ``A``. Either half alone is an
    unbiased GERF estimate, so the pair is too, for any ``A <= 0``. One projection's
    estimate is ``D² Λ(u)Λ(v) e^{2A|ω|²} cosh(Bω·(u+v))``; with ``ω ~ N(0, I)``, ``B² = 1 - 4A``
    and ``C = (1-4A)²/(1-8A)`` its relative variance is
    ``½ C^{d/2} (e^{z/(1-8A)} + e^{-z}) - 1`` at ``z = |u + v|²``: never above FAVOR++'s
    ``C^{d/2} e^{z/(1-8A)} - 1``, and ``cosh z - 1`` (the hyperbolic map's) at ``A = 0``.
    At equal width (FAVOR++ with 2m projections) its iid variance is the lower one where
    ``C^{d/2} < e^z``.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import PositiveRandomFeatures
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(scale=0.3, size=(2, 50, 8))
    >>> prf = PositiveRandomFeatures(500, estimator="optimal_hyperbolic", random_state=0)
    >>> prf.fit(Q, keys=K).transform(Q).shape
    (50, 1000)
    >>> relative = prf.transform(Q) @ prf.transform(K, side="key").T / np.exp(Q @ K.T) - 1
    >>> bool(np.sqrt(np.mean(relative**2)) < 0.05)
    True
    """

    blocks = ("plus", "minus")
    antithetic = True

    def __init__(self) -> None:
        super().__init__("optimal_hyperbolic", saderf=False)

    def log1p_relative_variance(
        self, z: FloatOrArray, d: int, a: FloatOrArray = 0.0
    ) -> FloatOrArray:
        """``log(½ C^{d/2} (e^{z/(1-8A)} + e^{-z}))``, without overflow."""
        log_c = 0.5 * d * (2.0 * np.log1p(-4.0 * a) - np.log1p(-8.0 * a))
        return log_c - np.log(2.0) + np.logaddexp(z / (1.0 - 8.0 * a), -z)


class TrigMap(FeatureMap):
    """Trigonometric features ``[cos(ω·u), sin(ω·u)] / sqrt(m)`` (Rahimi and Recht 2007).

    Inner products average ``cos(ω·(u - v))``: the Gaussian kernel ``exp(-|u - v|²/2)``; times
    ``h(x) = exp(|u|²/2)`` per row, the softmax kernel (the Performer's ``SM^trig``, signed).
    """

    name = "trig"
    blocks = ("cos", "sin")
    attention_estimator = True
    offsets: bool = False  # no random offsets to draw
    in_place: bool = False  # the projections are not overwritten by the features

    def log_row_scale(self, m: int) -> float:
        """Log of the constant factor of every feature."""
        return -0.5 * np.log(m)

    def features(
        self,
        z: FloatArray,
        log_scale: FloatArray,
        out: FloatArray,
        *,
        offset: FloatArray | None = None,
        vectorized: bool = False,
    ) -> None:
        """``out = exp(log_scale) [cos z, sin z]`` for projections ``z`` (n, m).

        ``vectorized`` takes numpy's SIMD sin/cos (faster in float32), otherwise one fused
        Numba pass (faster in float64).
        """
        if vectorized:
            m = z.shape[1]
            np.cos(z, out=out[:, :m])
            np.sin(z, out=out[:, m:])
            out *= np.exp(log_scale).astype(out.dtype)[:, None]
        else:
            cos_sin_rows(z, log_scale, out)

    def second_moment(self, d: int, a: float = 0.0) -> SecondMoment:
        """``E[T(a_1)T(a_2)] = cosh(a_1·a_2)`` with ``a = u - v`` and ``T = e^{|a|²/2}
        cos(ω·a)`` (so ``relVar = cosh z - 1``, Lemma 2)."""
        return SecondMoment(log_const=0.0, alpha=0.0, gamma=1.0, signs=(1, -1), pair_sign=-1)

    def term_moment(self, x: FloatArray, y: FloatArray, j: int) -> FloatOrArray:
        """``T = e^{(|x|²+|y|²)/2} cos(ω·(x-y))``: binomial expansion of ``cos^j``."""
        sx, sy = np.sum(x * x, -1), np.sum(y * y, -1)
        t = np.sum((x - y) ** 2, -1)
        tot = sum(math.comb(j, k) * np.exp(-0.5 * (j - 2 * k) ** 2 * t) for k in range(j + 1))
        return np.exp(0.5 * j * (sx + sy)) * tot / 2**j


class CosOffsetMap(FeatureMap):
    """Cosines with random offsets ``sqrt(2/m) cos(ω·u + b)``, ``b ~ U[0, 2π)``
    (scikit-learn's ``RBFSampler``)."""

    name = "cos"
    blocks = ("",)  # one block, named as RBFSampler names its columns
    offsets: bool = True
    in_place: bool = True  # the features overwrite the projections

    def log_row_scale(self, m: int) -> float:
        return 0.5 * np.log(2 / m)

    def draw_offsets(self, m: int, rng: Rng) -> NDArray[np.float64]:
        """The offsets ``b``, drawn once in ``fit``."""
        return rng.uniform(0.0, 2.0 * np.pi, size=m)

    def features(
        self,
        z: FloatArray,
        log_scale: FloatArray,
        out: FloatArray,
        *,
        offset: FloatArray,
        vectorized: bool = False,
    ) -> None:
        """``z = exp(log_scale) cos(z + offset)`` in place (``out`` is ``z``)."""
        if vectorized:
            z += offset
            np.cos(z, out=z)
            z *= np.exp(log_scale).astype(z.dtype)[:, None]
        else:
            cos_offset_rows_inplace(z, offset, log_scale)


class ActivationMap(FeatureMap):
    """A deterministic activation of attention's generalized attention: ``f(ω·u) + ε``.

    Not a random-feature estimator of any kernel (Choromanski et al. 2021, Eq. 5): the
    attention it gives is defined by ``f``.
    """

    adds_epsilon: bool = True  # attention adds its activation_epsilon to these features
    needs_projection = False  # f(x̃) itself, or f(W x̃) with a projection

    def __init__(self, name: str, function: Callable[[FloatArray], FloatArray]) -> None:
        self.name = name
        self.function = function

    def __call__(self, Z: FloatArray) -> FloatArray:
        return self.function(Z)


class ArcCosineMap(ActivationMap):
    """Arc-cosine features ``sqrt(2/m) Θ(ω·x) (ω·x)ⁿ`` (Cho and Saul 2009), ``ω ~ N(0, I)``.

    An unbiased estimator of the arc-cosine kernel of degree n
    (:func:`favorkit.kernels.arccos_kernel`); as an attention "activation" (Eq. 5) it is
    ReLU attention for n = 1 with the constant and no ``ε``, whose exact attention is
    :func:`favorkit.kernel_attention`.
    """

    adds_epsilon = False  # an estimator: ε would bias it
    needs_projection = True

    def __init__(self, degree: int) -> None:
        self.degree = degree
        super().__init__(f"arccos{degree}", self._activation)

    def _activation(self, Z):
        """``Θ(z) zⁿ`` in place (without the constant, which attention's ratio cancels)."""
        if self.degree == 0:
            return np.greater(Z, 0, out=Z, casting="unsafe")
        np.maximum(Z, 0, out=Z)
        if self.degree == 2:
            np.multiply(Z, Z, out=Z)
        return Z

    def log_row_scale(self, m: int) -> float:
        return 0.5 * np.log(2 / m)

    def features(self, z: FloatArray, out: FloatArray) -> FloatArray:
        """``out = sqrt(2/m) Θ(z) zⁿ`` for projections ``z`` (n, m); ``out`` may be ``z``."""
        if out is not z:
            out[...] = z
        self._activation(out)
        out *= out.dtype.type(np.exp(self.log_row_scale(z.shape[1])))
        return out


def _elu_plus_one(Z):
    """``elu(z) + 1`` (Katharopoulos et al. 2020)."""
    return np.where(Z > 0, Z + 1, np.exp(np.minimum(Z, 0)))


MAPS: dict[str, FeatureMap] = {
    "positive": PositiveMap(),
    "hyperbolic": HyperbolicMap(),
    "optimal": GerfMap("optimal", saderf=False),
    "saderf": GerfMap("saderf", saderf=True),
    "optimal_hyperbolic": HyperbolicGerfMap(),
    "trig": TrigMap(),
    "cos": CosOffsetMap(),
    "relu": ActivationMap("relu", lambda Z: np.maximum(Z, 0, out=Z)),
    "elu": ActivationMap("elu", _elu_plus_one),
    "exp": ActivationMap("exp", exp_inplace),
    "abs": ActivationMap("abs", lambda Z: np.abs(Z, out=Z)),
    **{f"arccos{n}": ArcCosineMap(n) for n in (0, 1, 2)},
}


def get(name: str | Callable[[FloatArray], FloatArray]) -> FeatureMap:
    """The map registered under ``name`` (a callable gives an :class:`ActivationMap`).

    Examples
    --------
    >>> from favorkit import maps
    >>> maps.get("hyperbolic").blocks
    ('plus', 'minus')
    >>> [name for name, m in maps.MAPS.items() if m.exponential]
    ['positive', 'hyperbolic', 'optimal', 'saderf', 'optimal_hyperbolic']
    """
    if callable(name):
        return ActivationMap(getattr(name, "__name__", "callable"), name)
    try:
        return MAPS[name]
    except KeyError:
        names = ", ".join(repr(k) for k in MAPS)
        raise ValueError(f"unknown feature map {name!r}; the maps are {names}.") from None


def names(kind: Literal["exponential", "attention", "random", "activation"]) -> tuple[str, ...]:
    """Names of the registered maps of one kind, in registration order: ``"exponential"``
    (positive features), ``"attention"`` (attention's estimators of the softmax kernel),
    ``"random"`` (every random-feature estimator) or ``"activation"``."""
    tests = {
        "exponential": lambda m: m.exponential,
        "attention": lambda m: m.attention_estimator,
        "random": lambda m: not isinstance(m, ActivationMap),
        "activation": lambda m: isinstance(m, ActivationMap),
    }
    return tuple(name for name, m in MAPS.items() if tests[kind](m))
