"""Plots of favorkit's estimators on your own data, with the closed forms beside them.

:func:`variance_vs_features` answers "how many random features do I need on *my* data, and
which estimator?" in one call: it draws pairs of rows of your data, measures the relative
MSE of every estimator's kernel estimate for each number of projections m over fresh
projections, lays the closed forms of :mod:`favorkit.theory` over the measurement and
draws both. :func:`draw_variance_curves` is its drawing part, for arrays measured
elsewhere (the experiments draw their figures with it).

matplotlib is needed only to draw: it is imported inside the functions, so ``import
favorkit.plotting`` works without it, and a call without it raises an ``ImportError``
that names the ``plot`` extra (``pip install "favorkit[plot]"``).

**Heavy tails.** One projection's estimate T of the softmax (or Gaussian) kernel is
log-normal-like: its variance grows like ``exp(|u + v|²)`` (Choromanski et al. 2021,
Lemma 2) and the kurtosis of its error, ``κ = E[(T - K)⁴]/E[(T - K)²]²``, faster still.
The measured MSE averages ``n_repeats · m`` such squared errors; when that is below
``4 κ``, the mean is carried by draws rarer than the sample holds, a typical run falls
short of the expectation, and its standard error is too small to say so. Such points are
computed and returned but drawn as hollow markers, flagged in ``heavy_tailed``, never as a
confident number. κ comes from the closed-form moments of one term (the maps'
``term_moment``, the GERF moments of FAVOR++ and SADERF, the kernels' values at multiples
of ``x - y`` or of the arc-cosine degree); a point is also flagged when one repeat carries
more than half of the summed squared errors.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from favorkit import kernels, maps, theory
from favorkit._typing import ArrayLike, NDArray, ProjectionName, RandomStateLike
from favorkit._warnings import AccuracyWarning
from favorkit.features import ArcCosineFeatures, OrthogonalRFF, PositiveRandomFeatures

__all__ = ["VarianceCurves", "draw_variance_curves", "variance_vs_features"]

# Which estimator names each kernel takes, and its defaults. "trig" and "cossin" are the
# same [cos, sin] features (the paper's name and OrthogonalRFF's).
_EXPONENTIAL = maps.names("exponential")
_ALLOWED = {
    "softmax": (*_EXPONENTIAL, "trig", "cossin"),
    "gaussian": (*_EXPONENTIAL, "trig", "cossin", "cos"),
    "laplacian": ("trig", "cossin", "cos"),
    "matern": ("trig", "cossin", "cos"),
    "arccos": ("arccos0", "arccos1", "arccos2"),
}
_DEFAULT_ESTIMATORS = {
    "softmax": ("positive", "hyperbolic", "trig"),
    "gaussian": ("positive", "hyperbolic", "trig"),
    "laplacian": ("cossin", "cos"),
    "matern": ("cossin", "cos"),
    "arccos": ("arccos0", "arccos1", "arccos2"),
}
_LABELS = {
    "positive": "positive (FAVOR+)",
    "hyperbolic": "hyperbolic",
    "optimal": "optimal (FAVOR++)",
    "saderf": "SADERF",
    "optimal_hyperbolic": "optimal hyperbolic",
    "trig": "trig [cos, sin]",
    "cossin": "[cos, sin]",
    "cos": "cos + offset",
    "arccos0": "arc-cosine, degree 0",
    "arccos1": "arc-cosine, degree 1",
    "arccos2": "arc-cosine, degree 2",
}
_MARKERS = ("o", "s", "^", "D", "v", "P")
_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1)))
# Measured points of two projections are spread by this factor along the (log) m axis so
# that their error bars do not hide each other.
_SPREAD = 1.07
_HEAVY_LABEL = "hollow: heavy tails, the mean\nof n_repeats·m terms cannot\nobserve the expectation"
# Feature rows drawn per chunk of repeats (W is chunk x max(m) x d floats): bounds memory
# for large d without changing the result (each repeat's rows are drawn on their own).
_CHUNK_ENTRIES = 1 << 21


# --------------------------------------------------------------------------- the result


@dataclass
class VarianceCurves:
    """Relative MSE of kernel estimates against the number of projections m.

    Returned by :func:`variance_vs_features`; build one from your own arrays to draw them
    with :func:`draw_variance_curves`. Arrays are indexed ``[estimator, projection, m]``;
    every quantity is relative to the exact kernel value: ``E[(K̂/K - 1)²]``, averaged over
    the pairs.

    Attributes
    ----------
    m : ndarray of shape (n_m,)
        Numbers of random projections (paired maps, ``"hyperbolic"`` and ``[cos, sin]``,
        have 2m features).
    estimators, projections : tuple of str
        The rows and columns of the arrays.
    relative_mse : ndarray of shape (n_estimators, n_projections, n_m)
        Measured relative MSE, averaged over the pairs.
    standard_error : ndarray of the same shape
        Its standard error over the repeats (each repeat is one fresh projection, shared by
        the pairs, so the pairs' correlation is included).
    theory : ndarray of the same shape
        The closed form averaged over the pairs; NaN where none exists (the iid closed
        forms of Lemma 2 of Choromanski et al. 2021, Likhosherstov et al. 2022 for
        FAVOR++/SADERF, random Fourier and arc-cosine features; the exact coupled MSE of
        orthogonal and simplex blocks for the positive maps).
    heavy_tailed : ndarray of bool, same shape
        Points whose measured mean cannot observe its expectation (module docstring):
        ``n_repeats · m < 4 κ`` at some pair, or one repeat carries more than half of the
        summed squared errors.
    kernel : str
    n_repeats : int
    n_features : int
        The data's dimension d.
    pairs : ndarray of shape (n_pairs, 2) or None
        Row indices of each pair: into X, and into Y (X when Y is None).
    kernel_values : ndarray of shape (n_estimators, n_pairs) or None
        The exact kernel value of each pair (each arc-cosine degree is its own kernel).
    pair_relative_mse, pair_theory : ndarray of shape (n_estimators, n_projections, \
n_pairs, n_m) or None
        The same per pair.
    error_kurtosis : ndarray of shape (n_estimators, n_pairs) or None
        ``κ = E[(T - K)⁴]/E[(T - K)²]²`` of one projection's estimate ``T`` of ``K``, from
        closed-form moments; NaN where T is nearly constant (light-tailed).
    notes : tuple of str
        Why points are flagged, in words.
    ax : matplotlib Axes or None
        Where the curves were drawn.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit.plotting import VarianceCurves
    >>> m = np.array([4, 16, 64])
    >>> curves = VarianceCurves(
    ...     m=m, estimators=("positive",), projections=("iid",),
    ...     relative_mse=(0.5 / m)[None, None], standard_error=(0.02 / m)[None, None],
    ...     theory=(0.52 / m)[None, None])
    >>> curves.z.round(2)
    array([[[-1., -1., -1.]]])
    """

    m: NDArray[np.integer]
    estimators: tuple[str, ...]
    projections: tuple[str, ...]
    relative_mse: NDArray[np.float64]
    standard_error: NDArray[np.float64]
    theory: NDArray[np.float64] | None = None
    heavy_tailed: NDArray[np.bool_] | None = None
    kernel: str = "softmax"
    n_repeats: int = 0
    n_features: int = 0
    pairs: NDArray[np.integer] | None = None
    kernel_values: NDArray[np.float64] | None = None
    pair_relative_mse: NDArray[np.float64] | None = field(default=None, repr=False)
    pair_theory: NDArray[np.float64] | None = field(default=None, repr=False)
    error_kurtosis: NDArray[np.float64] | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()
    ax: Any = field(default=None, repr=False)  # a matplotlib Axes (imported lazily)

    def __post_init__(self) -> None:
        self.m = np.asarray(self.m)
        self.estimators = tuple(self.estimators)
        self.projections = tuple(self.projections)
        shape = (len(self.estimators), len(self.projections), self.m.size)
        self.relative_mse = np.asarray(self.relative_mse, dtype=float)
        self.standard_error = np.asarray(self.standard_error, dtype=float)
        if self.theory is None:
            self.theory = np.full(shape, np.nan)
        self.theory = np.asarray(self.theory, dtype=float)
        if self.heavy_tailed is None:
            self.heavy_tailed = np.zeros(shape, dtype=bool)
        self.heavy_tailed = np.asarray(self.heavy_tailed, dtype=bool)
        for name in ("relative_mse", "standard_error", "theory", "heavy_tailed"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"{name} must have shape (n_estimators, n_projections, n_m) = {shape}, "
                    f"got {getattr(self, name).shape}."
                )

    @property
    def z(self) -> NDArray[np.float64]:
        """``(relative_mse - theory) / standard_error``: how many standard errors the
        measurement is from the closed form (NaN without one)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.relative_mse - np.asarray(self.theory, float)) / self.standard_error


# --------------------------------------------------------------------------- matplotlib


def _matplotlib():
    """matplotlib, imported only when something is drawn (it is an optional dependency)."""
    try:
        import matplotlib
        import matplotlib.lines
        import matplotlib.ticker
    except ImportError as exc:
        raise ImportError(
            "favorkit.plotting draws with matplotlib, which is not installed: "
            'pip install "favorkit[plot]" (the plot extra), or pip install matplotlib.'
        ) from exc
    return matplotlib


def _new_axes():
    _matplotlib()
    import matplotlib.pyplot as plt

    # constrained layout keeps the legend, placed outside the axes, inside the figure.
    _, ax = plt.subplots(figsize=(8.0, 4.6), layout="constrained")
    return ax


def _check_axes(ax):
    if not all(hasattr(ax, attr) for attr in ("errorbar", "set_xscale", "figure")):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}.")


def draw_variance_curves(
    ax: Any, curves: VarianceCurves, *, legend: bool = True, errorbar_se: float = 2.0
) -> list[Any]:
    """Draw :class:`VarianceCurves` on ``ax``: measured points, closed forms, flags.

    One colour per estimator, one marker (measured, with error bars of ``errorbar_se``
    standard errors) and one line style (closed form, where one exists) per projection, on
    log-log axes; points spread slightly along m so that projections do not hide each
    other. Heavy-tailed points (``curves.heavy_tailed``) are hollow, faded markers without
    error bars: the measured mean there is not an estimate of the expectation. The legend
    goes outside the axes, to the right, so it never covers data.

    Parameters
    ----------
    ax : matplotlib Axes
        Where to draw.
    curves : VarianceCurves
        What to draw.
    legend : bool, default=True
        Draw the legend; with False, place the returned handles yourself (e.g. one
        figure legend for several panels).
    errorbar_se : float, default=2.0
        Half-length of the error bars, in standard errors. A lower bar that would reach
        0 is cut at a tenth of the point (log axis).

    Returns
    -------
    handles : list of matplotlib artists
        The legend entries (labelled proxies), whether or not the legend was drawn.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from favorkit.plotting import VarianceCurves, draw_variance_curves
    >>> m = np.array([4, 16, 64])
    >>> curves = VarianceCurves(
    ...     m=m, estimators=("positive",), projections=("iid",),
    ...     relative_mse=(0.5 / m)[None, None], standard_error=(0.02 / m)[None, None],
    ...     theory=(0.52 / m)[None, None])
    >>> fig, ax = plt.subplots()
    >>> [h.get_label().replace("\\n", " ") for h in draw_variance_curves(ax, curves)]
    ['positive (FAVOR+)', 'iid: measured ± 2 SE, closed form']
    >>> plt.close(fig)
    """
    mpl = _matplotlib()
    _check_axes(ax)
    if not isinstance(curves, VarianceCurves):
        raise TypeError(f"curves must be a VarianceCurves, got {type(curves).__name__}.")
    if not (isinstance(errorbar_se, numbers.Real) and 0 <= errorbar_se < math.inf):
        raise ValueError(f"errorbar_se must be a finite number >= 0, got {errorbar_se!r}.")
    Line2D = mpl.lines.Line2D
    m = curves.m.astype(float)
    n_p = len(curves.projections)
    has_theory = np.zeros((len(curves.estimators), n_p), dtype=bool)
    any_heavy = False
    for e in range(len(curves.estimators)):
        color = f"C{e % 10}"
        for p in range(n_p):
            theory_line = curves.theory[e, p]
            if np.isfinite(theory_line).any():
                has_theory[e, p] = True
                ax.plot(m, theory_line, color=color, ls=_LINESTYLES[p % 6], lw=1.4, zorder=2)
            x = m * _SPREAD ** (p - (n_p - 1) / 2)
            y = curves.relative_mse[e, p]
            se = errorbar_se * curves.standard_error[e, p]
            heavy = curves.heavy_tailed[e, p]
            good = ~heavy & np.isfinite(y) & (y > 0)
            if good.any():
                lower = np.where(y - se > 0, se, 0.9 * y)
                ax.errorbar(
                    x[good],
                    y[good],
                    yerr=np.stack([lower[good], se[good]]),
                    fmt=_MARKERS[p % 6],
                    ms=5,
                    capsize=2,
                    elinewidth=1,
                    color=color,
                    zorder=3,
                )
            shown = heavy & np.isfinite(y) & (y > 0)
            if shown.any():
                any_heavy = True
                ax.plot(
                    x[shown],
                    y[shown],
                    ls="none",
                    marker=_MARKERS[p % 6],
                    ms=6,
                    mfc="none",
                    mec=color,
                    mew=1.2,
                    alpha=0.5,
                    zorder=3,
                )
    _log_axes(ax, curves.m)
    handles = [
        Line2D([], [], color=f"C{e % 10}", lw=3, label=_LABELS.get(name, name))
        for e, name in enumerate(curves.estimators)
    ]
    for p, proj in enumerate(curves.projections):
        known = has_theory[:, p]
        text = "closed form" if known.all() else "closed form where known" if known.any() else ""
        handles.append(
            Line2D(
                [],
                [],
                color="0.3",
                marker=_MARKERS[p % 6],
                ms=5,
                ls=_LINESTYLES[p % 6] if known.any() else "none",
                label=f"{proj}: measured ± {errorbar_se:g} SE" + (f",\n{text}" if text else ""),
            )
        )
    if any_heavy:
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="o",
                ms=6,
                mfc="none",
                mec="0.55",
                mew=1.2,
                label=_HEAVY_LABEL,
            )
        )
    if legend:
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            fontsize="small",
            frameon=False,
        )
    return handles


def _log_axes(ax, m):
    """Log-log axes ticked at the measured m, with plain labels (matplotlib's default
    labels the minor ticks of a short log range, and they overlap)."""
    import matplotlib.ticker as ticker

    m = np.asarray(m)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    step = max(1, math.ceil(m.size / 9))  # at most 9 labels, so they never touch
    ax.set_xticks(m.astype(float))
    ax.set_xticklabels([str(int(v)) if k % step == 0 else "" for k, v in enumerate(m)])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlim(m.min() / 1.3, m.max() * 1.3)
    ax.set_xlabel("random projections m")
    ax.set_ylabel(r"relative MSE  $E[(\hat{K}/K - 1)^2]$")
    ax.grid(True, which="major", color="0.9", lw=0.8)
    ax.set_axisbelow(True)


# --------------------------------------------------------------------------- validation


def _as_data(A: ArrayLike, name: str, min_rows: int) -> np.ndarray:
    try:
        A = np.asarray(A, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 2-D array of real numbers: {exc}") from None
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got {A.ndim}-D.")
    if A.shape[0] < min_rows or A.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least {min_rows} row(s) and 1 column, got shape {A.shape}."
        )
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or inf; pass finite data.")
    return A


def _as_count(value: int, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def _as_names(values: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of names, got {values!r}.")
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name} must hold strings, got {values!r}.")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a name, got {values!r}.")
    return tuple(values)


def _as_ms(n_components: int | Sequence[int]) -> np.ndarray:
    values = [n_components] if isinstance(n_components, numbers.Integral) else n_components
    try:
        ms = np.asarray(values)
    except (TypeError, ValueError):
        ms = np.asarray([None])
    if (
        ms.ndim != 1
        or ms.size == 0
        or ms.dtype.kind not in "iu"
        or np.any(ms < 1)
        or np.unique(ms).size != ms.size
    ):
        raise ValueError(
            "n_components must be a positive integer or a sequence of distinct positive "
            f"integers (the numbers of projections m), got {n_components!r}."
        )
    return np.sort(ms.astype(np.int64))


def _as_seed(random_state: RandomStateLike) -> np.random.SeedSequence:
    """A SeedSequence from None, an int, a Generator or a RandomState."""
    if random_state is None or isinstance(random_state, numbers.Integral):
        return np.random.SeedSequence(None if random_state is None else int(random_state))
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(int(random_state.randint(2**31)))
    raise ValueError(
        f"random_state must be None, an int, a Generator or a RandomState, got {random_state!r}."
    )


def _check_estimators(estimators: Sequence[str], kernel: str) -> tuple[str, ...]:
    estimators = _as_names(estimators, "estimators")
    for name in estimators:
        if name not in _ALLOWED[kernel]:
            allowed = ", ".join(repr(a) for a in _ALLOWED[kernel])
            raise ValueError(
                f"estimators: {name!r} does not estimate the {kernel} kernel here; the "
                f"estimators of kernel={kernel!r} are {allowed}."
            )
    return estimators


def _check_projections(projections: Sequence[str], kernel: str) -> tuple[str, ...]:
    projections = _as_names(projections, "projections")
    k = kernels.get(kernel)
    for proj in projections:
        if proj not in k.projections:
            allowed = ", ".join(repr(p) for p in k.projections)
            raise ValueError(
                f"projections: {proj!r} is not an unbiased projection for kernel={kernel!r}; "
                f"use {allowed}."
            )
    return projections


# --------------------------------------------------------------------------- estimators


def _map_of(name):
    return maps.get({"cossin": "trig"}.get(name, name))


def _transformer(name, kernel, gamma, nu, W, seed):
    """The transformer of estimator ``name`` with the fixed projection rows ``W``."""
    M = W.shape[0]
    if name in _EXPONENTIAL:
        return PositiveRandomFeatures(
            M, kernel=kernel, gamma=gamma, estimator=name, projection=W, random_state=seed
        )
    if name in ("trig", "cossin", "cos"):
        return OrthogonalRFF(
            M,
            kernel=kernel,
            gamma=gamma,
            nu=nu,
            projection=W,
            features="cos" if name == "cos" else "cossin",
            random_state=seed,
        )
    return ArcCosineFeatures(M, degree=_map_of(name).degree, projection=W, random_state=seed)


def _kernel_values(name, kernel, gamma, nu, Xp, Yp):
    if kernel == "arccos":
        return kernels.arccos_pairs(Xp, Yp, _map_of(name).degree)
    if kernel == "softmax":
        return np.exp(gamma * np.einsum("ij,ij->i", Xp, Yp))
    return kernels.get(kernel).profile(Xp - Yp, gamma, nu=nu)


def _measure(name, proj, kernel, gamma, nu, X, Y, Xp, Yp, ms, n_repeats, seed):
    """Per-pair estimates ``(n_pairs, n_repeats, n_m)``, and the fitted transformer.

    Each repeat draws ``max(m)`` projection rows with the kernel's law; the estimate from m
    projections is the mean of the first m per-projection estimates (prefixes of one draw
    are draws of m rows: orthogonal blocks are consecutive rows), so one transform per
    chunk of repeats serves every m.
    """
    rng = np.random.default_rng(seed)
    law = kernels.get(kernel)
    d = Xp.shape[1]
    G = int(ms[-1])
    chunk = max(1, min(n_repeats, _CHUNK_ENTRIES // (G * d)))
    fmap = _map_of(name)
    out = np.empty((Xp.shape[0], n_repeats, ms.size))
    fitted = None
    for start in range(0, n_repeats, chunk):
        n = min(chunk, n_repeats - start)
        W = np.concatenate([law.draw(proj, G, d, rng, nu=nu) for _ in range(n)])
        t = _transformer(name, kernel, gamma, nu, W, int(rng.integers(2**31)))
        with warnings.catch_warnings():
            # This is the measurement an AccuracyWarning would point to.
            warnings.simplefilter("ignore", AccuracyWarning)
            if name in _EXPONENTIAL:
                # FAVOR++ and SADERF fit A (and Ψ) to all of the data, as a user's fit would.
                t.fit(X, keys=Y)
                Fx, Fy = t.transform(Xp), t.transform(Yp, side="key")
            else:
                t.fit(X)
                Fx, Fy = t.transform(Xp), t.transform(Yp)
        S = fmap.per_projection(Fx, Fy).reshape(Xp.shape[0], n, G)
        prefix = np.cumsum(S, axis=2)[:, :, ms - 1]
        out[:, start : start + n] = prefix / ms
        fitted = t
    return out, fitted


# --------------------------------------------------------------------------- closed forms


def _pair_z(fitted, kernel, gamma, Xp, Yp):
    """``z = |Ψu + Ψ⁻¹v|²`` of each pair and the GERF parameter, as the transformer fit them."""
    c = math.sqrt(kernels.get(kernel).input_scale_sq(gamma))
    psi = np.asarray(fitted.query_scale_, dtype=float)
    s = c * (Xp * psi + Yp / psi)
    return np.einsum("ij,ij->i", s, s), float(fitted.gerf_a_)


def _relative_theory(name, proj, kernel, gamma, nu, Xp, Yp, kvals, ms, fitted):
    """Closed-form relative MSE per pair, ``(n_pairs, n_m)``; NaN where there is none."""
    x, y, m = Xp[:, None, :], Yp[:, None, :], ms[None, :]
    k2 = (kvals**2)[:, None]
    iid = proj in ("iid", "gaussian")
    nan = np.full((Xp.shape[0], ms.size), np.nan)
    if name in _EXPONENTIAL:
        c = math.sqrt(kernels.get(kernel).input_scale_sq(gamma))
        u, v = c * x, c * y
        z, a = _pair_z(fitted, kernel, gamma, Xp, Yp)
        z, d = z[:, None], Xp.shape[1]
        if iid:
            # The Gaussian kernel's extra factors are deterministic: its relative error is
            # that of SM(u, v), u = sqrt(2 gamma) x.
            if name in ("positive", "hyperbolic"):
                mse = theory.mse_positive if name == "positive" else theory.mse_hyperbolic
                rel = mse(u, v, m) / theory.softmax_kernel(u, v) ** 2
                # Where SM² overflows, the same relative MSE without the kernel's scale.
                scale_free = _map_of(name).relative_variance(z, d) / m
                return np.where(np.isfinite(rel), rel, scale_free)
            if name in ("optimal", "saderf"):
                return theory.gerf_relative_variance(z, d, a) / m
            return _map_of(name).relative_variance(z, d, a) / m  # GERF in antithetic pairs
        if proj in ("orthogonal", "simplex") and name != "optimal_hyperbolic":
            return theory.coupled_relative_mse(
                z, d, m, a=a, coupling=proj, hyperbolic=name == "hyperbolic"
            )
        return nan
    if not iid:
        return nan
    if kernel == "softmax":  # trig
        c = math.sqrt(gamma)
        return theory.mse_trig(c * x, c * y, m) / theory.softmax_kernel(c * x, c * y) ** 2
    if kernel == "arccos":
        return theory.mse_arccos(x, y, m, degree=_map_of(name).degree) / k2
    features = "cos" if name == "cos" else "cossin"
    mse = theory.mse_random_fourier(x, y, m, kernel=kernel, gamma=gamma, nu=nu, features=features)
    return mse / k2


def _raw_moments(name, kernel, gamma, nu, Xp, Yp, fitted):
    """``[E T, E T², E T³, E T⁴]`` of one projection's estimate T at each pair, up to a
    constant factor per pair.

    A constant factor changes no standardized moment, so the exponential maps and the
    softmax trig map are evaluated at ``(u + v, 0)`` and ``(u - v, 0)`` (the maps'
    ``term_moment``): the same law up to a factor, without the kernel's own scale.
    """
    fmap = _map_of(name)
    c = math.sqrt(kernels.get(kernel).input_scale_sq(gamma))
    if name in ("positive", "hyperbolic") or (name in ("trig", "cossin") and kernel == "softmax"):
        s = c * (Xp + Yp) if fmap.exponential else c * (Xp - Yp)
        return [fmap.term_moment(s, np.zeros_like(s), j) for j in (1, 2, 3, 4)]
    if name in _EXPONENTIAL:  # FAVOR++ and SADERF: the GERF moments at the fitted A
        z, a = _pair_z(fitted, kernel, gamma, Xp, Yp)
        return [
            np.exp(_gerf_log_moment(z, Xp.shape[1], a, j, fmap.antithetic)) for j in (1, 2, 3, 4)
        ]
    if kernel == "arccos":
        # T = 2 Θ(ω·x)Θ(ω·y)(ω·x)ⁿ(ω·y)ⁿ and Θ^j = Θ: E T^j = 2^{j-1} k_{jn}(x, y).
        n = fmap.degree
        return [2.0 ** (j - 1) * _arccos_any_degree(Xp, Yp, j * n) for j in (1, 2, 3, 4)]
    # Shift-invariant kernels, a = cos α with α = ω·(x - y): cos^j expanded in cos(kα),
    # E cos(kα) = k(kΔ). cos + offset adds cos β, β uniform and independent of α
    # (E cos β = E cos³β = 0, E cos²β = 1/2, E cos⁴β = 3/8).
    law = kernels.get(kernel)
    k1, k2, k3, k4 = (law.profile(f * (Xp - Yp), gamma, nu=nu) for f in (1.0, 2.0, 3.0, 4.0))
    r = [k1, (1.0 + k2) / 2.0, (3.0 * k1 + k3) / 4.0, (3.0 + 4.0 * k2 + k4) / 8.0]
    if name == "cos":
        r = [r[0], r[1] + 0.5, r[2] + 1.5 * r[0], r[3] + 3.0 * r[1] + 0.375]
    return r


def _arccos_any_degree(Xp, Yp, degree):
    """The arc-cosine kernel ``k_n(x, y)`` of any degree (``favorkit.kernels`` has n <= 4).

    ``k_n = 2 E[Θ(ω·x)Θ(ω·y)(ω·x)ⁿ(ω·y)ⁿ]`` (Cho and Saul 2009) depends on ω only through
    its projection on the plane of x and y: ``ω·x̂ = r cos φ``, ``ω·ŷ = r cos(φ - θ)`` with
    ``r ~ χ_2`` independent of ``φ ~ U[0, 2π)``, ``E r^{2n} = 2ⁿ n!``. Both are positive on
    ``φ ∈ (θ - π/2, π/2)``, where the smooth integrand is integrated by Gauss–Legendre.
    """
    if degree <= 4:
        return kernels.arccos_pairs(Xp, Yp, degree)
    return _arccos_quadrature(Xp, Yp, degree)


def _arccos_quadrature(Xp, Yp, degree):
    nx, ny = np.linalg.norm(Xp, axis=-1), np.linalg.norm(Yp, axis=-1)
    cos = np.einsum("ij,ij->i", Xp, Yp) / (nx * ny)
    theta = np.arccos(np.clip(cos, -1.0, 1.0))[:, None]
    nodes, weights = np.polynomial.legendre.leggauss(64)
    half = (np.pi - theta) / 2.0  # half the wedge's width
    phi = half * nodes + (theta - np.pi / 2.0 + half)
    wedge = half[:, 0] * ((np.cos(phi) * np.cos(phi - theta)) ** degree @ weights)
    radial = 2.0**degree * math.factorial(degree)
    return 2.0 * (nx * ny) ** degree * radial * wedge / (2.0 * np.pi)


def _error_kurtosis(name, kernel, gamma, nu, Xp, Yp, fitted):
    """``κ = E[(T - K)⁴] / E[(T - K)²]²`` of one projection's estimate T at each pair.

    NaN where T is nearly
    constant (relative variance below 1e-6: the central moments would be rounding
    noise; such terms are light-tailed, κ near 3 or 15); inf where the fourth moment
    overflows.
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        r1, r2, r3, r4 = _raw_moments(name, kernel, gamma, nu, Xp, Yp, fitted)
        mu2 = r2 - r1**2
        mu4 = r4 - 4.0 * r1 * r3 + 6.0 * r1**2 * r2 - 3.0 * r1**4
        kappa = np.where(np.isinf(r4), np.inf, mu4 / mu2**2)
        kappa = np.where(mu2 > 1e-6 * r1**2, kappa, np.nan)
    return kappa


def _gerf_log_moment(z, d, a, j, antithetic):
    """``log E[(T/K)^j]`` of one GERF projection (Likhosherstov et al. 2022).

    ``T/K = D² e^{2A|ω|² + Bω·s - z/2}`` with ``s = u + v``, ``z = |s|²``, ``D² = (1-4A)^{d/2}``,
    ``B² = 1 - 4A`` (``cosh(Bω·s)`` in place of ``e^{Bω·s}`` for the antithetic pair). With
    ``ω ~ N(0, I)``, ``E e^{c|ω|² + b ω·s} = (1 - 2c)^{-d/2} e^{b²z/(2(1-2c))}``; at
    ``c = 2jA``, and the antithetic ``cosh^j`` expanded binomially:
    ``(jd/2) log(1-4A) - (d/2) log(1-4jA) - jz/2 + log Σ_k w_k e^{(j-2k)²(1-4A)z/(2(1-4jA))}``
    with ``w_k = C(j, k)/2^j`` (one-sided: ``w_0 = 1`` only). At A = 0 these are the positive
    and hyperbolic maps' ``term_moment``.
    """
    ks = range(j + 1) if antithetic else (0,)
    logs = [
        math.log(math.comb(j, k) / 2**j if antithetic else 1.0)
        + (j - 2 * k) ** 2 * (1.0 - 4.0 * a) * z / (2.0 * (1.0 - 4.0 * j * a))
        for k in ks
    ]
    return (
        0.5 * j * d * math.log1p(-4.0 * a)
        - 0.5 * d * math.log1p(-4.0 * j * a)
        - 0.5 * j * z
        + np.logaddexp.reduce(np.stack(logs), axis=0)
    )


# --------------------------------------------------------------------------- the one call


def variance_vs_features(
    X: ArrayLike,
    Y: ArrayLike | None = None,
    *,
    estimators: Sequence[str] | None = None,
    kernel: Literal["softmax", "gaussian", "laplacian", "matern", "arccos"] = "softmax",
    gamma: float = 1.0,
    n_components: int | Sequence[int] = (2, 4, 8, 16, 32, 64, 128, 256),
    projections: Sequence[ProjectionName] | None = None,
    n_pairs: int = 4,
    n_repeats: int = 200,
    nu: float = 1.5,
    random_state: RandomStateLike = 0,
    ax: Any = None,
) -> VarianceCurves:
    """Measure and draw the relative MSE of kernel estimates on your data against m.

    ``n_pairs`` pairs of rows are drawn from X (two different rows), or one row of X and
    one of Y. For each estimator and projection, ``n_repeats`` independent projections of
    ``max(n_components)`` rows are drawn; the estimate with m projections is the mean of
    the first m one-projection estimates (``favorkit.maps`` ``per_projection``), so one
    transform serves every m. The relative squared error ``(K̂/K - 1)²`` is averaged over
    the pairs and the repeats; its standard error comes from the repeats. The closed
    forms of :mod:`favorkit.theory` (averaged over the same pairs) are laid over it, and
    points whose mean cannot observe its expectation (heavy tails: see the module
    docstring) are flagged rather than reported.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Your data (the first argument of the kernel). Standardize it, and scale it down for
        the softmax kernel: the positive estimators' variance grows like ``exp(|x + y|²)``.
    Y : array-like of shape (n_samples_Y, n_features), default=None
        The second argument (keys); None draws both rows of a pair from X.
    estimators : sequence of str, default=None
        Names of :mod:`favorkit.maps` estimators of ``kernel``: for ``"softmax"`` and
        ``"gaussian"`` ``"positive"``, ``"hyperbolic"``, ``"optimal"`` (FAVOR++),
        ``"saderf"``, ``"optimal_hyperbolic"`` (``PositiveRandomFeatures``) and ``"trig"``
        (``OrthogonalRFF``'s ``[cos, sin]``, alias ``"cossin"``); ``"gaussian"``,
        ``"laplacian"`` and ``"matern"`` take ``"cossin"`` and ``"cos"`` (cosines with
        random offsets, as ``RBFSampler``); ``"arccos"`` takes ``"arccos0"``,
        ``"arccos1"``, ``"arccos2"`` (``ArcCosineFeatures``, each its own degree). None
        means ``("positive", "hyperbolic", "trig")`` for the softmax and Gaussian kernels,
        ``("cossin", "cos")`` for the Laplacian and Matérn ones and all three degrees for
        ``"arccos"``.
    kernel : {"softmax", "gaussian", "laplacian", "matern", "arccos"}, default="softmax"
        The kernel of :mod:`favorkit.kernels`.
    gamma : float > 0, default=1.0
        The kernel's ``gamma`` (unused by ``"arccos"``).
    n_components : int or sequence of int, default=(2, 4, ..., 256)
        The numbers of projections m (paired maps have 2m features).
    projections : sequence of str, default=None
        Samplers of :mod:`favorkit.sampling` unbiased for ``kernel``; None means
        ``("iid", "orthogonal")`` (``("iid", "qmc")`` for the Laplacian kernel).
    n_pairs : int, default=4
        Pairs of rows.
    n_repeats : int >= 2, default=200
        Independent projections per estimator and projection.
    nu : {0.5, 1.5, 2.5}, default=1.5
        The Matérn kernel's smoothness (ignored by the others).
    random_state : int, Generator, RandomState or None, default=0
        Seeds the pairs and the projections (each estimator and projection has its own
        stream, named by both: adding or reordering estimators changes no other result).
    ax : matplotlib Axes, default=None
        Where to draw; None creates a figure.

    Returns
    -------
    VarianceCurves
        The arrays (``m``, ``relative_mse``, ``standard_error``, ``theory``,
        ``heavy_tailed``, per-pair versions, ``notes``) and ``ax``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from favorkit.plotting import variance_vs_features
    >>> X = np.random.default_rng(0).normal(size=(40, 8)) / 12
    >>> curves = variance_vs_features(X, n_components=(8, 32, 128), n_repeats=100)
    >>> curves.relative_mse.shape  # (estimators, projections, m)
    (3, 2, 3)
    >>> bool(curves.heavy_tailed.any())  # small |x|: light tails at every point
    False
    >>> bool(np.all(np.abs(curves.z[:, 0]) < 4))  # iid: measured within 4 SE of theory
    True
    >>> curves.ax.get_xlabel()
    'random projections m'

    Larger inputs: the positive estimators' tails get heavy and their points are flagged.

    >>> heavy = variance_vs_features(X * 4, n_components=(8, 32, 128), n_repeats=100)
    >>> heavy.heavy_tailed.any(axis=(1, 2))  # positive, hyperbolic, trig
    array([ True,  True, False])
    """
    # Fail before the measurement, not after it, when matplotlib is missing.
    _matplotlib()
    if ax is not None:
        _check_axes(ax)
    if not isinstance(kernel, str) or kernel not in kernels.KERNELS:
        raise ValueError(
            f"kernel must be one of {', '.join(repr(k) for k in kernels.KERNELS)}, got {kernel!r}."
        )
    names = _check_estimators(
        _DEFAULT_ESTIMATORS[kernel] if estimators is None else estimators, kernel
    )
    default = ("iid", "qmc") if kernel == "laplacian" else ("iid", "orthogonal")
    projs = _check_projections(default if projections is None else projections, kernel)
    if kernel == "arccos":
        gamma = 1.0
    elif isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not gamma > 0:
        raise ValueError(f"gamma must be a number > 0, got {gamma!r}.")
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma!r}.")
    if kernel == "matern":
        try:
            kernels.check_nu(nu)
        except ValueError as exc:
            raise ValueError(f"nu: {exc}") from None
    data_x = _as_data(X, "X", 2 if Y is None else 1)
    data_y = None if Y is None else _as_data(Y, "Y", 1)
    if data_y is not None and data_y.shape[1] != data_x.shape[1]:
        raise ValueError(
            f"Y must have as many columns as X ({data_x.shape[1]}), got {data_y.shape[1]}."
        )
    n_pairs = _as_count(n_pairs, "n_pairs", 1)
    n_repeats = _as_count(n_repeats, "n_repeats", 2)
    curves = _measure_curves(
        data_x,
        data_y,
        names,
        projs,
        kernel,
        float(gamma),
        float(nu) if kernel == "matern" else 1.5,  # the others have no nu
        _as_ms(n_components),
        n_pairs,
        n_repeats,
        _as_seed(random_state),
    )
    if ax is None:
        ax = _new_axes()
    draw_variance_curves(ax, curves)
    if not ax.get_title():
        ax.set_title(
            f"{kernel} kernel: {n_pairs} pairs of rows, d = {data_x.shape[1]}, "
            f"{n_repeats} projections per point",
            fontsize="medium",
        )
    curves.ax = ax
    return curves


def _measure_curves(
    X: np.ndarray,
    Y: np.ndarray | None,
    estimators: tuple[str, ...],
    projections: tuple[str, ...],
    kernel: str,
    gamma: float,
    nu: float,
    ms: np.ndarray,
    n_pairs: int,
    n_repeats: int,
    root: np.random.SeedSequence,
) -> VarianceCurves:
    """The measurement and the closed forms of :func:`variance_vs_features` (validated)."""

    def stream(*key):
        # Streams named by estimator and projection: the same numbers whatever else runs.
        return np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, *key))

    pick = np.random.default_rng(stream(0))
    if Y is None:
        pairs = np.array([pick.choice(X.shape[0], 2, replace=False) for _ in range(n_pairs)])
        Xp, Yp = X[pairs[:, 0]], X[pairs[:, 1]]
    else:
        pairs = np.stack(
            [pick.integers(X.shape[0], size=n_pairs), pick.integers(Y.shape[0], size=n_pairs)],
            axis=1,
        )
        Xp, Yp = X[pairs[:, 0]], Y[pairs[:, 1]]
    with np.errstate(over="ignore", under="ignore"):  # checked right below
        kvals = np.stack([_kernel_values(e, kernel, gamma, nu, Xp, Yp) for e in estimators])
    bad = ~(np.isfinite(kvals) & (kvals > 0))
    if bad.any():
        e, i = np.argwhere(bad)[0]
        raise ValueError(
            f"the {kernel} kernel value of pair {i} (rows {tuple(int(r) for r in pairs[i])}) "
            f"is {kvals[e, i]:.3g}, so its relative error is undefined; scale the data "
            "(or gamma) so that kernel values are positive and finite."
        )

    shape = (len(estimators), len(projections), n_pairs, ms.size)
    pair_mse, pair_theory = np.empty(shape), np.empty(shape)
    mse, se = np.empty(shape[:2] + shape[3:]), np.empty(shape[:2] + shape[3:])
    heavy = np.zeros(mse.shape, dtype=bool)
    kurt = np.empty((len(estimators), n_pairs))
    notes = []
    for e, name in enumerate(estimators):
        for p, proj in enumerate(projections):
            est, fitted = _measure(
                name,
                proj,
                kernel,
                gamma,
                nu,
                X,
                Y,
                Xp,
                Yp,
                ms,
                n_repeats,
                stream(1, *name.encode(), 0, *proj.encode()),
            )
            sq = (est / kvals[e][:, None, None] - 1.0) ** 2  # (pair, repeat, m)
            per_repeat = sq.mean(axis=0)  # the pairs share each repeat's projection
            mse[e, p] = per_repeat.mean(axis=0)
            se[e, p] = per_repeat.std(axis=0, ddof=1) / math.sqrt(n_repeats)
            pair_mse[e, p] = sq.mean(axis=1)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                # An infinite closed form is the honest answer for extreme inputs.
                pair_theory[e, p] = _relative_theory(
                    name, proj, kernel, gamma, nu, Xp, Yp, kvals[e], ms, fitted
                )
            # One repeat carrying most of the sum: the mean is not settled (any estimator).
            with np.errstate(invalid="ignore", divide="ignore"):
                share = per_repeat.max(axis=0) / per_repeat.sum(axis=0)
            dominated = share > max(0.5, 2.0 / n_repeats)
            if p == 0:
                kurt[e] = _error_kurtosis(name, kernel, gamma, nu, Xp, Yp, fitted)
            # The mean of n log-normal-like terms q observes its expectation when
            # n >= 4 E[q²]/E[q]² (the experiments' rule; below it the typical mean falls
            # short by more than ~5 %, the expectation being carried by terms rarer than
            # 1/n). For the squared errors q = (T - K)², E[q²]/E[q]² is κ; n = n_repeats·m.
            with np.errstate(invalid="ignore"):
                unobservable = (n_repeats * ms[None, :] < 4.0 * kurt[e][:, None]).any(axis=0)
            heavy[e, p] = unobservable | dominated
            if heavy[e, p].any():
                flagged = ", ".join(str(int(v)) for v in ms[heavy[e, p]])
                why = (
                    f"E[(T - K)⁴]/E[(T - K)²]² of one projection's estimate T reaches "
                    f"{np.nanmax(kurt[e]):.3g}, more than n_repeats × m / 4"
                    if unobservable.any()
                    else "one repeat carries over half of the summed squared errors"
                )
                notes.append(f"{name}, {proj}: m = {flagged} flagged (heavy tails): {why}.")
    with np.errstate(invalid="ignore"):
        theory_mean = pair_theory.mean(axis=2)
    return VarianceCurves(
        m=ms,
        estimators=estimators,
        projections=projections,
        relative_mse=mse,
        standard_error=se,
        theory=theory_mean,
        heavy_tailed=heavy,
        kernel=kernel,
        n_repeats=n_repeats,
        n_features=X.shape[1],
        pairs=pairs,
        kernel_values=kvals,
        pair_relative_mse=pair_mse,
        pair_theory=pair_theory,
        error_kurtosis=kurt,
        notes=tuple(notes),
    )
