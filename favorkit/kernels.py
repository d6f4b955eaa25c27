"""The kernels favorkit's random features estimate: exact values and frequency laws.

Every kernel is one small object registered by name in :data:`KERNELS` (as the feature maps
are in :data:`favorkit.maps.MAPS`). It knows its exact value (the reference the tests, the
theory and the experiments compare estimates to) and, for the shift-invariant ones, the law
of the frequencies ``ω`` of Bochner's theorem, ``k(x - y) = E_ω cos(ω·(x - y))``
(Rahimi and Recht 2007), which :class:`~favorkit.OrthogonalRFF` draws.

* ``"softmax"``: ``exp(gamma x·y)``, the Performer's SM (Eq. 6); frequencies ``N(0, gamma I)``.
* ``"gaussian"``: ``exp(-gamma |x - y|²)``, scikit-learn's RBF; frequencies
  ``N(0, 2 gamma I)``.
* ``"laplacian"``: ``exp(-gamma |x - y|₁)``, scikit-learn's ``laplacian_kernel``;
  frequencies with iid Cauchy coordinates of scale ``gamma``.
* ``"matern"``: the Matérn kernel of smoothness ``nu`` and length scale
  ``ℓ = 1/sqrt(2 gamma)``, scikit-learn's ``Matern``; frequencies multivariate Student t
  with ``2 nu`` degrees of freedom and scale ``sqrt(2 gamma)``.
* ``"arccos"``: the arc-cosine kernel of degree ``n``, ``(1/π) |x|ⁿ |y|ⁿ J_n(θ)`` (Cho and
  Saul 2009); features of ``N(0, I)`` rows.

**The Matérn mapping.** ``gamma`` sets the length scale ``ℓ = 1/sqrt(2 gamma)``, so that
``exp(-gamma r²) = exp(-r²/(2ℓ²))`` is the Matérn kernel's ``nu -> ∞`` limit with the same
``gamma``: ``Matern(length_scale=1/sqrt(2 gamma), nu=nu)`` in scikit-learn's terms. Its
spectral density is ``∝ (2 nu/ℓ² + |ω|²)^{-(nu + d/2)}``, the multivariate t with ``2 nu``
degrees of freedom and scale ``1/ℓ``: ``ω = z sqrt(2 nu / g) / ℓ`` with ``z ~ N(0, I)``,
``g ~ χ²_{2 nu}``. The direction of ``ω`` is uniform and independent of its length, so
orthogonal, structured and quasi-Monte Carlo directions (any rows whose marginal law is
``N(0, I)``) times an independent ``sqrt(2 nu / g)`` keep every row's law, and the
estimate stays unbiased.

**The Laplacian kernel** is a product of 1-D kernels ``exp(-gamma |t|)``, each the
characteristic function of a Cauchy law of scale ``gamma``. Its frequencies have iid
coordinates and are not isotropic: rotating them (orthogonal, structured or simplex rows)
changes their law, so only iid and quasi-Monte Carlo (the inverse Cauchy CDF of scrambled
Sobol points) frequencies are unbiased for it; the others are refused.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from scipy import stats
from scipy.spatial import distance

from favorkit import sampling
from favorkit._typing import ArrayLike, FloatArray, NDArray, ProjectionName, Rng, SparseMatrix
from favorkit.maps import ColumnSums

__all__ = [
    "KERNELS",
    "Kernel",
    "arccos_J",
    "arccos_kernel",
    "arccos_pairs",
    "check_nu",
    "get",
    "resolve_gamma",
]


def _sq_distances(X, Y):
    """``|x_i - y_j|²`` (n_x, n_y), clipped at 0 (the expansion can round below it)."""
    sx = np.einsum("ij,ij->i", X, X)
    sy = np.einsum("ij,ij->i", Y, Y)
    return np.maximum(sx[:, None] + sy[None, :] - 2.0 * (X @ Y.T), 0.0)


class Kernel:
    """A kernel: its exact value and, when shift-invariant, its frequency law.

    Attributes
    ----------
    name : str
    shift_invariant : bool
        ``k(x, y) = k(x - y)``: estimated by trigonometric features.
    projections : tuple of str
        The projections of :mod:`favorkit.sampling` whose frequencies are unbiased for it.
    """

    name: str = ""
    shift_invariant: bool = True
    projections: tuple[str, ...] = tuple(sampling.PROJECTIONS)

    def __call__(
        self, X: ArrayLike, Y: ArrayLike, gamma: float = 1.0, **params: Any
    ) -> NDArray[np.float64]:
        """The exact kernel matrix ``k(x_i, y_j)``, float64, shape ``(len(X), len(Y))``."""
        raise NotImplementedError

    def profile(self, delta: ArrayLike, gamma: float = 1.0, **params: Any) -> NDArray[np.float64]:
        """``k(Δ)`` of a shift-invariant kernel for differences ``Δ = x - y`` of shape
        ``(..., d)`` (broadcast pairs, as :mod:`favorkit.theory` takes them)."""
        raise NotImplementedError(f"kernel {self.name!r} is not shift-invariant")

    def input_scale_sq(self, gamma: float) -> float:
        """``c²`` such that the frequencies are ``c ω₀`` with ``ω₀`` of the law at
        ``c = 1`` (what ``fit`` stores as ``projection_``)."""
        return 2.0 * gamma

    def check_projection(self, projection: ProjectionName | ArrayLike) -> None:
        """A clear error for a projection that would bias this kernel's estimate."""
        if isinstance(projection, str) and projection not in self.projections:
            allowed = ", ".join(repr(p) for p in self.projections)
            raise ValueError(
                f"projection={projection!r} is not unbiased for kernel={self.name!r}: "
                f"{self._why_not()} Use one of {allowed}."
            )

    def _why_not(self):
        return ""

    def draw(
        self, projection: ProjectionName | ArrayLike, m: int, d: int, rng: Rng, **params: Any
    ) -> NDArray[np.float64]:
        """Frequency rows ``ω₀`` (m, d) of the law at unit scale (see ``input_scale_sq``),
        with directions from ``projection`` (a sampler name); a fixed array is taken as the
        frequency rows themselves."""
        return sampling.draw(projection, m, d, rng)


class Softmax(Kernel):
    name = "softmax"
    shift_invariant = False

    def __call__(
        self, X: ArrayLike, Y: ArrayLike, gamma: float = 1.0, **params: Any
    ) -> NDArray[np.float64]:
        return np.exp(gamma * (np.asarray(X, float) @ np.asarray(Y, float).T))

    def input_scale_sq(self, gamma: float) -> float:
        return gamma


class Gaussian(Kernel):
    name = "gaussian"

    def __call__(
        self, X: ArrayLike, Y: ArrayLike, gamma: float = 1.0, **params: Any
    ) -> NDArray[np.float64]:
        return np.exp(-gamma * _sq_distances(np.asarray(X, float), np.asarray(Y, float)))

    def profile(self, delta: ArrayLike, gamma: float = 1.0, **params: Any) -> NDArray[np.float64]:
        delta = np.asarray(delta, float)
        return np.exp(-gamma * np.einsum("...i,...i->...", delta, delta))


class Laplacian(Kernel):
    name = "laplacian"
    projections = ("iid", "gaussian", "qmc")

    def __call__(
        self, X: ArrayLike, Y: ArrayLike, gamma: float = 1.0, **params: Any
    ) -> NDArray[np.float64]:
        l1 = distance.cdist(np.asarray(X, float), np.asarray(Y, float), "cityblock")
        return np.exp(-gamma * l1)

    def profile(self, delta: ArrayLike, gamma: float = 1.0, **params: Any) -> NDArray[np.float64]:
        return np.exp(-gamma * np.abs(np.asarray(delta, float)).sum(axis=-1))

    def input_scale_sq(self, gamma: float) -> float:
        return gamma**2

    def _why_not(self):
        return (
            "its frequencies have iid Cauchy coordinates, a law that is not rotation "
            "invariant, so rotated (orthogonal, structured or simplex) rows change it."
        )

    def draw(
        self, projection: ProjectionName | ArrayLike, m: int, d: int, rng: Rng, **params: Any
    ) -> NDArray[np.float64]:
        if not isinstance(projection, str):
            return sampling.draw(projection, m, d, rng)
        self.check_projection(projection)
        if projection == "qmc":
            # The Gaussian rows of sampling.qmc are Φ⁻¹(u): Φ takes them back to the
            # scrambled Sobol points u, and the Cauchy inverse CDF tan(π(u - ½)) to Cauchy
            # rows with the same low-discrepancy spread.
            u = stats.norm.cdf(sampling.qmc(m, d, rng))
            return np.tan(np.pi * (u - 0.5))
        return rng.standard_cauchy((m, d))


class Matern(Kernel):
    name = "matern"
    NUS: tuple[float, ...] = (0.5, 1.5, 2.5)

    def __call__(
        self, X: ArrayLike, Y: ArrayLike, gamma: float = 1.0, nu: float = 1.5, **params: Any
    ) -> NDArray[np.float64]:
        r = np.sqrt(_sq_distances(np.asarray(X, float), np.asarray(Y, float)))
        return self._of_distance(r, gamma, nu)

    def profile(
        self, delta: ArrayLike, gamma: float = 1.0, nu: float = 1.5, **params: Any
    ) -> NDArray[np.float64]:
        return self._of_distance(np.linalg.norm(np.asarray(delta, float), axis=-1), gamma, nu)

    @staticmethod
    def _of_distance(r, gamma, nu):
        # scikit-learn's closed forms at ν = 1/2, 3/2, 5/2, t = sqrt(2ν) r / ℓ, ℓ = 1/sqrt(2γ).
        t = math.sqrt(2.0 * check_nu(nu)) * r * math.sqrt(2.0 * gamma)
        if nu == 0.5:
            return np.exp(-t)
        if nu == 1.5:
            return (1.0 + t) * np.exp(-t)
        return (1.0 + t + t**2 / 3.0) * np.exp(-t)

    def draw(
        self,
        projection: ProjectionName | ArrayLike,
        m: int,
        d: int,
        rng: Rng,
        nu: float = 1.5,
        **params: Any,
    ) -> NDArray[np.float64]:
        W = sampling.draw(projection, m, d, rng)
        if not isinstance(projection, str):
            return W
        # Multivariate t rows: an N(0, I) row times an independent sqrt(2ν/g), g ~ χ²_{2ν}.
        # The radial factor is independent of the row, so the row's direction (orthogonal,
        # structured, qmc) is kept and its law is exactly the t law: unbiased.
        g = rng.chisquare(2.0 * check_nu(nu), size=m)
        return W * np.sqrt(2.0 * nu / g)[:, None]


class ArcCosine(Kernel):
    name = "arccos"
    shift_invariant = False
    DEGREES: tuple[int, ...] = (0, 1, 2)

    def __call__(
        self, X: ArrayLike, Y: ArrayLike, gamma: float = 1.0, degree: int = 1, **params: Any
    ) -> NDArray[np.float64]:
        return arccos_kernel(X, Y, degree)

    def input_scale_sq(self, gamma: float) -> float:
        return 1.0


def check_nu(nu: float) -> float:
    """``nu`` if it is one of the Matérn orders with a closed form, else a clear error."""
    if nu not in Matern.NUS:
        raise ValueError(
            f"nu={nu!r} is not supported: the Matérn kernel is available for nu in "
            f"{Matern.NUS} (closed forms, as scikit-learn's fast paths); for nu -> inf use "
            'kernel="gaussian" with the same gamma.'
        )
    return float(nu)


def arccos_J(theta: ArrayLike, degree: int) -> NDArray[np.float64]:
    """``J_n(θ)`` of the arc-cosine kernel (Cho and Saul 2009, Eq. 6), n = 0 … 4.

    ``J_n(θ) = (-1)ⁿ (sin θ)^{2n+1} ((1/sin θ) ∂/∂θ)ⁿ ((π - θ)/sin θ)``, written out (the
    degrees 3 and 4 are the second moments of the degrees 1 and 2 estimators).
    """
    t = np.asarray(theta, dtype=np.float64)
    s, c, p = np.sin(t), np.cos(t), np.pi - t
    if degree == 0:
        return p
    if degree == 1:
        return s + p * c
    if degree == 2:
        return 3.0 * s * c + p * (1.0 + 2.0 * c**2)
    if degree == 3:
        return 4.0 * s + 11.0 * s * c**2 + p * (9.0 * c + 6.0 * c**3)
    if degree == 4:
        return 55.0 * s * c + 50.0 * s * c**3 + p * (9.0 + 72.0 * c**2 + 24.0 * c**4)
    raise ValueError(f"degree must be 0, 1, 2, 3 or 4, got {degree!r}.")


def arccos_kernel(X: ArrayLike, Y: ArrayLike, degree: int = 1) -> NDArray[np.float64]:
    """The arc-cosine kernel ``k_n(x, y) = (1/π) |x|ⁿ |y|ⁿ J_n(θ)`` (Cho and Saul 2009).

    ``k_n(x, y) = 2 E_ω[Θ(ω·x) Θ(ω·y) (ω·x)ⁿ (ω·y)ⁿ]``, ``ω ~ N(0, I)``: the kernel of an
    infinitely wide layer of ``Θ(z) zⁿ`` units (degree 1: ReLU).

    Parameters
    ----------
    X : array-like of shape (n_x, d)
    Y : array-like of shape (n_y, d)
    degree : int, default=1

    Returns
    -------
    K : ndarray of shape (n_x, n_y)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit.kernels import arccos_kernel
    >>> x = np.array([[1.0, 0.0]])
    >>> float(arccos_kernel(x, x, 1)[0, 0])  # |x|²/π · J_1(0) = π/π
    1.0
    """
    X, Y = np.asarray(X, float), np.asarray(Y, float)
    return arccos_pairs(X[:, None, :], Y[None, :, :], degree)


def arccos_pairs(x: ArrayLike, y: ArrayLike, degree: int = 1) -> NDArray[np.float64]:
    """``k_n(x, y)`` for broadcast pairs ``x``, ``y`` of shape ``(..., d)``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    nx = np.linalg.norm(x, axis=-1)
    ny = np.linalg.norm(y, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("...i,...i->...", x, y) / (nx * ny)
    theta = np.arccos(np.clip(np.nan_to_num(cos, nan=0.0), -1.0, 1.0))
    # A zero vector has no angle: its features Θ(ω·0)(ω·0)ⁿ are 0 (Θ(0) = 0), and so is
    # the kernel, for every degree (the factor |x|ⁿ already says so for n >= 1).
    if degree == 0:
        return np.where((nx > 0) & (ny > 0), arccos_J(theta, 0) / np.pi, 0.0)
    return (nx * ny) ** degree * arccos_J(theta, degree) / np.pi


def resolve_gamma(
    gamma: float | Literal["scale"], X: FloatArray | SparseMatrix | ColumnSums
) -> float:
    """``gamma``, or with ``gamma="scale"`` scikit-learn's ``1 / (n_features X.var())``
    (``RBFSampler``), the variance over all entries of X (sparse: zeros included; from
    the sums for :class:`~favorkit.maps.ColumnSums`)."""
    if not (isinstance(gamma, str) and gamma == "scale"):
        return float(gamma)
    if isinstance(X, ColumnSums):
        var = X.variance()
    elif sp.issparse(X):
        var = X.multiply(X).mean() - X.mean() ** 2  # type: ignore[union-attr]
    else:
        var = np.asarray(X, dtype=np.float64).var()
    if not var > 0:
        raise ValueError(
            'gamma="scale" needs X with a positive variance (it is 1 / (n_features X.var())); '
            "X is constant. Pass a number for gamma."
        )
    return float(1.0 / (X.shape[1] * var))


KERNELS: dict[str, Kernel] = {
    k.name: k for k in (Softmax(), Gaussian(), Laplacian(), Matern(), ArcCosine())
}


def get(name: str) -> Kernel:
    """The kernel registered under ``name``.

    Examples
    --------
    >>> from favorkit import kernels
    >>> kernels.get("laplacian").projections
    ('iid', 'gaussian', 'qmc')
    """
    try:
        return KERNELS[name]
    except KeyError:
        names = ", ".join(repr(k) for k in KERNELS)
        raise ValueError(f"unknown kernel {name!r}; the kernels are {names}.") from None
