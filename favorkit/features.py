"""Random-feature transformers for the softmax, Gaussian, Laplacian, Matérn and arc-cosine
kernels.

The transformers follow ``sklearn.kernel_approximation.RBFSampler``: parameters are stored
verbatim, all randomness is drawn in ``fit`` (which looks at the data only for its number of
features), ``transform`` is deterministic, float32 input gives float32 output, and CSR input
is accepted (the projection is a sparse-dense product; the output is dense).

Kernels (``kernel=``, defined in :mod:`favorkit.kernels`), with ``gamma > 0`` or
``gamma="scale"`` (``1 / (n_features X.var())``, as ``RBFSampler``):

* ``"softmax"``:  ``K(x, y) = exp(gamma * x·y)``, the Performer's SM with ``u = sqrt(gamma) x``.
* ``"gaussian"``: ``K(x, y) = exp(-gamma * |x - y|²)`` (sklearn's RBF convention), which is
  ``SM(u, v) * exp(-|u|²/2) * exp(-|v|²/2)`` with ``u = sqrt(2 gamma) x`` (below Eq. 5).
* ``"laplacian"`` and ``"matern"`` (:class:`OrthogonalRFF` only): trigonometric features with
  the kernels' own frequency laws.
* arc-cosine kernels: :class:`ArcCosineFeatures`.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

from favorkit import kernels, maps, sampling
from favorkit._dask import column_sums, is_dask_array, lazy_transform, matrix_input
from favorkit._kernels.fastexp import exp_inplace
from favorkit._kernels.feature_maps import (
    RowTerms,
    gerf_row_terms,
    gerf_rows_dense,
    plus_minus_shift_rows,
    stage_gerf_rows,
)
from favorkit._parallel import map_row_blocks
from favorkit._typing import (
    ArrayLike,
    FloatArray,
    MatrixLike,
    NDArray,
    PositiveEstimator,
    ProjectionName,
    RandomStateLike,
    Self,
)
from favorkit._validation import (
    Interval,
    StrOptions,
    _check_feature_names_in,
    _fit_context,
    check_is_fitted,
    validate_data,
)
from favorkit._warnings import AccuracyWarning, warn
from favorkit.maps import MapParams, Moments

__all__ = ["ArcCosineFeatures", "OrthogonalRFF", "PositiveRandomFeatures"]

# The accuracy check runs on transforms of at least this many feature entries (n m).
_CHECK_MIN_WORK = 1 << 20
# OrthogonalRFF's feature layouts and the maps that produce them.
_LAYOUTS = {"cossin": "trig", "cos": "cos"}


class _RandomFeatures(TransformerMixin, BaseEstimator):
    """What the two transformers share: validation, the projection draw, names, tags."""

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "gamma": [Interval(numbers.Real, 0.0, None, closed="neither"), StrOptions({"scale"})],
        "projection": [StrOptions(set(sampling.PROJECTIONS)), "array-like"],
        "random_state": ["random_state", np.random.Generator],
    }

    # Set by fit (declared for type checkers; an unfitted estimator has none of them).
    projection_: NDArray[np.float64]
    n_features_in_: int
    feature_names_in_: NDArray[np.object_]

    # Subclasses: the feature map (favorkit.maps) this transformer's parameters select.
    def _map(self):
        raise NotImplementedError

    def _kernel_params(self):
        """The kernel's own parameters besides gamma (Matérn's ``nu``)."""
        return {}

    def _resolved_projection(self):
        return self.projection

    def _input_scale_sq(self):
        """c² with u = c x (gamma for the softmax kernel, 2 gamma for the Gaussian one)."""
        return kernels.get(self.kernel).input_scale_sq(self.gamma_)

    def _draw(self, X, keys=None):
        """Validate X (and ``keys``), set ``n_features_in_`` and ``gamma_``, and draw
        ``projection_`` from the kernel's frequency law; return (X, keys, rng).

        Dask arrays are not computed unless the fit needs statistics (a fitted map's
        moments, ``gamma="scale"``): then X and keys come back as their
        :class:`~favorkit.maps.ColumnSums`, summed in one pass."""
        X, keys = self._fit_input(X, keys)
        kernel = kernels.get(self.kernel)
        projection = self._resolved_projection()
        kernel.check_projection(projection)
        self.gamma_ = kernels.resolve_gamma(self.gamma, X)
        rng = sampling.resolve_rng(self.random_state)
        self.projection_ = kernel.draw(
            projection, self.n_components, X.shape[1], rng, **self._kernel_params()
        )
        self._n_features_out = self._map().width(self.n_components)
        return X, keys, rng

    def _fit_input(self, X, keys=None):
        if not (is_dask_array(X) or is_dask_array(keys)):
            X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32])
            if keys is not None:
                keys = validate_data(
                    self, keys, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False
                )
            return X, keys
        X = (matrix_input if is_dask_array(X) else _validate_for_sums)(self, X, reset=True)
        if keys is not None:
            keys = (matrix_input if is_dask_array(keys) else _validate_for_sums)(
                self, keys, reset=False
            )
        if self._map().fitted or (isinstance(self.gamma, str) and self.gamma == "scale"):
            sums = column_sums(X, X if keys is None else keys)
            X, keys = sums[0], None if keys is None else sums[1]
        return X, keys

    def _lazy_transform(self, X, **kwargs):
        """``transform`` of a dask array: a lazy dask array (:mod:`favorkit._dask`)."""
        check_is_fitted(self)
        return lazy_transform(self, X, self._n_features_out, **kwargs)

    def _validated(self, X, ensure_all_finite=True):
        check_is_fitted(self)
        return validate_data(
            self,
            X,
            accept_sparse="csr",
            dtype=[np.float64, np.float32],
            reset=False,
            ensure_all_finite=ensure_all_finite,
        )

    def get_feature_names_out(self, input_features: ArrayLike | None = None) -> NDArray[np.object_]:
        """Output feature names: ``<classname>[_<block>]<j>`` for projection j.

        Paired maps have two blocks of ``n_components`` columns each (``_plus``/``_minus``
        for the hyperbolic map, ``_cos``/``_sin`` for trigonometric features).

        Parameters
        ----------
        input_features : array-like of str or None
            Only checked for consistency with the names seen in ``fit``.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, "_n_features_out")
        _check_feature_names_in(self, input_features, generate_names=False)
        prefix = type(self).__name__.lower()
        names = [
            f"{prefix}{'_' + block if block else ''}{j}"
            for block in self._map().blocks
            for j in range(self.n_components)
        ]
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _validate_for_sums(estimator, X, reset):
    """An in-memory array fitted beside a dask one (X or keys): dense, to be summed."""
    return validate_data(estimator, X, dtype=[np.float64, np.float32], reset=reset)


def _row_sq_norms(X, weights=None):
    """|x_i|² (or Σ_l weights_l x_il²) in float64, for dense or CSR rows.

    Accumulated in float64: a float32 sum overflows already for entries around 1e19, and
    would then blame the data for an overflow of its own.
    """
    if sp.issparse(X):
        with np.errstate(over="ignore"):  # an inf norm is reported by the caller
            sq = X.data.astype(np.float64) ** 2
            if weights is not None:
                sq *= weights[X.indices]
        X = sp.csr_matrix((sq, X.indices, X.indptr), shape=X.shape)
        return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    if weights is not None:
        return np.einsum("ij,ij,j->i", X, X, weights, dtype=np.float64)
    return np.einsum("ij,ij->i", X, X, dtype=np.float64)


def _project_into(X_rows, WT, out):
    """``out[...] = X_rows @ WT`` for dense or CSR rows (the GEMM, via BLAS)."""
    if sp.issparse(X_rows):
        out[...] = X_rows @ WT
    else:
        np.matmul(X_rows, WT, out=out)


def _log_range(dtype):
    """log of the largest finite and of the smallest normal number of ``dtype``."""
    info = np.finfo(dtype)
    return float(np.log(info.max)), float(np.log(info.tiny))


def _raise_non_finite(X_rows, fix):
    """The error for rows whose norm is not finite: NaN or inf in X (sklearn's wording), or
    finite values so large that |x|² overflows float64."""
    values = X_rows.data if sp.issparse(X_rows) else X_rows
    if np.isnan(values).any():
        raise ValueError("Input X contains NaN.")
    if not np.isfinite(values).all():
        raise ValueError(
            f"Input X contains infinity or a value too large for dtype('{X_rows.dtype}')."
        )
    raise ValueError(
        f"{X_rows.shape[0]} rows of X have a squared norm that overflows float64, so their "
        f"features would be inf or NaN. {fix}"
    )


def _projection_overflow(n_bad, n_rows, dtype, fix, at_least=False):
    return ValueError(
        f"{'At least ' if at_least else ''}{n_bad} of {n_rows} rows of X have a projection "
        f"W·x that overflows "
        f"{np.dtype(dtype).name} (the features of such a row cannot be computed in this "
        f"dtype). {fix}"
    )


def _check_log_features(row_max, n_rows, dtype, *, fix, what):
    """Raise if any feature overflows ``dtype`` or every feature of a row underflows.

    ``row_max`` holds the largest log-feature of the rows that were checked (``-inf`` when
    all of a row's features underflow). ``n_rows`` is the number of rows of X, ``what``
    the map's formula for the message. Never lets inf, NaN or all-zero rows pass silently:
    a row whose features are all 0 gives kernel estimates of 0, ``K(x, x)`` included.
    """
    log_max, log_tiny = _log_range(dtype)
    name = np.dtype(dtype).name
    over = ~(row_max <= log_max)
    if over.any():
        worst = np.nanmax(row_max) if np.isfinite(row_max).any() else np.inf
        raise ValueError(
            f"{int(over.sum())} of {n_rows} rows of X have features that overflow {name} "
            f"(largest log-feature {worst:.4g} > {log_max:.4g}), so the kernel estimates would "
            f"be inf. {fix}"
        )
    under = row_max < log_tiny
    if under.any():
        raise ValueError(
            f"{int(under.sum())} of {n_rows} rows of X have every feature below the smallest "
            f"normal {name} (largest log-feature {row_max[under].max():.4g} < {log_tiny:.4g}): "
            f"their features would be 0, so every kernel estimate involving them, K(x, x) "
            f"included, would be 0 (the features are {what}). {fix}"
        )


class PositiveRandomFeatures(_RandomFeatures):
    r"""Positive random features (FAVOR+, FAVOR++, SADERF) for the softmax and Gaussian kernels.

    With ``u = c x`` (``c = sqrt(gamma)`` for the softmax kernel, ``sqrt(2 gamma)`` for the
    Gaussian one) and projection rows ``ω_1 … ω_m`` (:mod:`favorkit.sampling`), the positive
    map of Lemma 1 is

    .. math:: φ(x)_i = \exp(ω_i^T u - |u|^2/2 + g(x)) / \sqrt{m},

    with ``g = 0`` for the softmax kernel and ``g = -|u|^2/2`` for the Gaussian kernel, so
    that ``E[φ(x)^T φ(y)] = K(x, y)`` exactly. The other estimators:

    * ``"hyperbolic"``: the antithetic pair ``exp(±ω_i^T u)`` with ``1/sqrt(2m)`` (2m columns,
      lower variance: Lemma 2).
    * ``"optimal"`` (FAVOR++, optimal positive random features; Likhosherstov et al. 2022): the
      generalized exponential map ``D exp(A|ω_i|² + B ω_i^T u - |u|²/2 + g(x))/sqrt(m)``
      with ``B = sqrt(1 - 4A)``, ``D = (1 - 4A)^{d/4}`` and the closed-form ``A* <= 0`` that
      minimises the variance averaged over the pairs seen in ``fit`` (it depends on the data
      only through ``φ = mean |u_i + v_j|²``, computed in O(nd)). Unbiased for any fixed A;
      positive and bounded.
    * ``"saderf"`` (Likhosherstov et al. 2023): queries are rescaled by a diagonal ``Ψ`` and keys
      by ``Ψ^{-1}`` (which keeps ``u·v`` and so the kernel), ``Ψ_l = (E_key,l / E_query,l)^{1/4}``
      from the per-coordinate energies, then the ``"optimal"`` map. Queries and keys get
      different maps: fit with ``fit(Q, keys=K)`` and transform with
      ``transform(Q, side="query")`` and ``transform(K, side="key")``.
    * ``"optimal_hyperbolic"``: the ``"optimal"`` map in antithetic pairs ``±ω_i`` with
      ``1/sqrt(2m)`` (2m columns), as ``"hyperbolic"`` pairs ``"positive"``.

    Features are computed in log space and exponentiated once, with no data-dependent
    max-subtraction, so ``transform(X) @ transform(Y).T`` estimates ``K(X, Y)`` at its true
    scale. If a feature would overflow the dtype, or every feature of a row would underflow
    to 0 (so that every kernel estimate of that row, ``K(x, x)`` included, would be 0), a
    ``ValueError`` says how many rows of X and how to fix it.

    Parameters
    ----------
    n_components : int, default=256
        Number of random projections m. The output has m columns, or 2m for the antithetic
        ``"hyperbolic"`` and ``"optimal_hyperbolic"``.
    kernel : {"softmax", "gaussian"}, default="softmax"
        ``exp(gamma x·y)`` or ``exp(-gamma |x - y|²)``.
    gamma : float > 0 or "scale", default=1.0
        The kernel's inverse length scale squared (as in scikit-learn's ``rbf_kernel``);
        ``"scale"`` is ``1 / (n_features X.var())`` on the data given to ``fit``, as
        ``RBFSampler``. For the softmax kernel of attention, ``1/sqrt(d)``.
    estimator : {"positive", "hyperbolic", "optimal", "saderf", "optimal_hyperbolic"}, \
            default="positive"
        The paper's SM+ (m columns) or SM-hyp+ (2m columns) estimator, FAVOR++, SADERF or
        FAVOR++ in antithetic pairs (:mod:`favorkit.maps`).
    projection : {"orthogonal", "iid", "gaussian", "structured", "qmc", "simplex"} or array \
            of shape (n_components, n_features), default="orthogonal"
        How the rows ω_i are drawn (see :mod:`favorkit.sampling`), or a fixed matrix.
        ``"structured"`` (SORF) is slightly biased; the others are unbiased.
    random_state : int, RandomState, Generator or None, default=None
        Seeds the projection draw in ``fit``.

    Attributes
    ----------
    projection_ : ndarray of shape (n_components, n_features)
        The drawn projection rows ω_i (float64, before the kernel scale c).
    gamma_ : float
        The kernel parameter used (``gamma``, or its value for ``"scale"``).
    gerf_a_ : float
        The GERF parameter A (0 for ``"positive"`` and ``"hyperbolic"``, ``A* <= 0`` fitted
        for ``"optimal"``, ``"saderf"`` and ``"optimal_hyperbolic"``).
    query_scale_ : ndarray of shape (n_features,)
        SADERF's diagonal Ψ (ones for the other estimators); keys are divided by it.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of the features seen in ``fit`` (only when X has string column names).

    See Also
    --------
    OrthogonalRFF : trigonometric random features (the paper's baseline).
    sklearn.kernel_approximation.RBFSampler : cos-with-offset features for the RBF kernel.

    Notes
    -----
    The positive estimator's relative MSE at (x, y) is ``(exp|u+v|² - 1)/m`` for iid
    projections (Lemma 2): it is exact for ``u = -v`` and worst for long aligned vectors.
    Orthogonal projections lower it further (Theorem 2), simplex ones further still, and
    ``"optimal"`` tames the growth in ``|u+v|²``. See :mod:`favorkit.theory`.

    Work is done in row blocks on ``numba.get_num_threads()`` threads with BLAS held to one
    thread; the output is bit-identical for any thread count.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import PositiveRandomFeatures
    >>> X = np.random.default_rng(0).normal(size=(5, 3)) / 3
    >>> prf = PositiveRandomFeatures(n_components=2000, random_state=0).fit(X)
    >>> F = prf.transform(X)
    >>> F.shape
    (5, 2000)
    >>> bool(np.all(F > 0))
    True
    >>> float(np.abs(F @ F.T / np.exp(X @ X.T) - 1).max()) < 0.1
    True

    SADERF with queries and keys of different scales:

    >>> Q, K = X * [4, 1, 0.25], X * [0.25, 1, 4]
    >>> sad = PositiveRandomFeatures(2000, estimator="saderf", random_state=0).fit(Q, keys=K)
    >>> K_hat = sad.transform(Q, side="query") @ sad.transform(K, side="key").T
    >>> float(np.abs(K_hat / np.exp(Q @ K.T) - 1).max()) < 0.1
    True
    """

    _parameter_constraints: dict = {
        **_RandomFeatures._parameter_constraints,
        "kernel": [StrOptions({"softmax", "gaussian"})],
        "estimator": [StrOptions(set(maps.names("exponential")))],
    }

    gamma_: float
    gerf_a_: float
    query_scale_: NDArray[np.float64]

    def __init__(
        self,
        n_components: int = 256,
        *,
        kernel: Literal["softmax", "gaussian"] = "softmax",
        gamma: float | Literal["scale"] = 1.0,
        estimator: PositiveEstimator = "positive",
        projection: ProjectionName | ArrayLike = "orthogonal",
        random_state: RandomStateLike = None,
    ) -> None:
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.estimator = estimator
        self.projection = projection
        self.random_state = random_state

    def _map(self):
        return maps.get(self.estimator)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(
        self, X: MatrixLike, y: ArrayLike | None = None, *, keys: MatrixLike | None = None
    ) -> Self:
        """Draw the projection and, for FAVOR++/SADERF, fit A (and Ψ) from data statistics.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            Training data: the queries (the first argument of the kernel). Of a dask array
            only the shape is read, unless the fit needs its moments (FAVOR++, SADERF) or
            variance (``gamma="scale"``): those are summed in one pass over its chunks.
        y : array-like or None, default=None
            Ignored (keeps the transformer usable in a Pipeline).
        keys : {array-like, sparse matrix} of shape (n_keys, n_features), default=None
            The second argument of the kernel, if it differs from X. Used only by
            ``"optimal"`` (for ``φ = mean |u_i + v_j|²``) and ``"saderf"`` (for Ψ);
            ``None`` means the keys are X itself.

        Returns
        -------
        self : PositiveRandomFeatures
        """
        X, keys, _ = self._draw(X, keys)
        fmap = self._map()
        params = MapParams.identity(X.shape[1])
        if fmap.fitted:
            Y = X if keys is None else keys
            c2 = self._input_scale_sq()
            params = fmap.fit(Moments.of(X, c2), Moments.of(Y, c2))
        self.gerf_a_, self.query_scale_ = params.a, params.psi
        return self

    def transform(self, X: MatrixLike, *, side: Literal["query", "key"] = "query") -> FloatArray:
        """Map X to positive random features.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            New data, float32 or float64 (other dtypes become float64). A dask array gives
            a lazy dask array with the same row chunks.
        side : {"query", "key"}, default="query"
            Which argument of the kernel X is. Only ``"saderf"`` maps the two sides
            differently; the other estimators ignore it.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components) or (n_samples, 2 * n_components)
            Positive features in X's floating dtype.
        """
        if side not in ("query", "key"):
            raise ValueError(f'side must be "query" or "key", got {side!r}.')
        if is_dask_array(X):
            return self._lazy_transform(X, side=side)
        # Dense data are checked for NaN and inf on the fly: a non-finite entry makes its row's
        # norm, hence its row term, non-finite (saves sklearn's separate pass over X).
        X = self._validated(X, ensure_all_finite=sp.issparse(X))
        plan = _PositivePlan(self, X, side)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            map_row_blocks(plan.block, X.shape[0])
        plan.check()
        self._warn_if_noise(X)
        return plan.out

    def _warn_if_noise(self, X):
        """An :class:`~favorkit.AccuracyWarning` when the median kernel estimate between the
        rows of X is mostly noise: its predicted relative MSE (one projection's closed-form
        relative variance over m, iid) is at least 1, on up to 32 rows (O(32² d), run only
        for transforms of at least 2**20 feature entries, where that is under 1 %)."""
        n, d = X.shape
        m = self.n_components
        if n * m < _CHECK_MIN_WORK:
            return
        rows = np.random.default_rng(0).choice(n, size=min(n, 32), replace=False)
        R = X[rows]
        R = np.asarray(R.todense() if sp.issparse(R) else R, dtype=np.float64)
        c = np.sqrt(self._input_scale_sq())
        U, K = R * (c * self.query_scale_), R * (c / self.query_scale_)
        z = np.maximum((U * U).sum(1)[:, None] + (K * K).sum(1)[None, :] + 2.0 * U @ K.T, 0.0)
        with np.errstate(over="ignore"):
            rel_mse = float(np.median(self._map().relative_variance(z, d, self.gerf_a_))) / m
        if rel_mse < 1.0:
            return
        better = "" if self._map().fitted else (
            ", or estimator='optimal' (FAVOR++), whose variance grows far slower with |x|"
        )  # fmt: skip
        warn(
            f"PositiveRandomFeatures with n_components={m} is mostly noise on these rows: the "
            f"median kernel estimate between them has a predicted relative error of "
            f"{np.sqrt(rel_mse):.2g} (its relative variance grows like exp(|u + v|²), "
            f"u = {np.sqrt(self._input_scale_sq()):.3g} x). About n_components="
            f"{rel_mse * m / 0.25:.2g} would bring it to 0.5; other remedies: standardize X "
            f"or lower gamma{better}. favorkit.theory.expected_error predicts the error on "
            "your data.",
            AccuracyWarning,
        )


class _PositivePlan:
    """One transform of :class:`PositiveRandomFeatures`: the map's log-features, evaluated
    in row blocks, and the range checks that keep them finite and non-zero.

    ``log φ_j(x) = A|ω_j|² + B ω_j·ũ - |ũ|²/2 [- |u|²/2 for the Gaussian kernel] + (d/4)
    log(1 - 4A) - ½ log(width)`` (:meth:`favorkit.maps.ExponentialMap.log_features`), with
    the row term (and ``A|ω|²``) folded into the GEMM where the map allows it.
    """

    def __init__(self, est, X, side):
        self.X = X
        dtype = self.dtype = X.dtype
        n = X.shape[0]
        m = est.n_components
        self.c2 = est._input_scale_sq()
        self.a = a = float(est.gerf_a_)
        self.b = b = np.sqrt(1.0 - 4.0 * a)
        log_features = est._map().log_features(
            est.projection_, MapParams(a, est.query_scale_), self.c2, side
        )
        self.antithetic = log_features.antithetic
        with np.errstate(over="ignore"):
            WT = np.ascontiguousarray(log_features.projection.T, dtype=dtype)
        # Completing the square, A|ω|² + Bω·ũ - |ũ|²/2 <= (1/2 - A)|ω|²: when this data-free
        # bound is inside the dtype's range no feature can overflow, and per-row maxima (an
        # extra pass) are only needed for rows that might underflow. A projection that
        # overflows the dtype (a huge gamma in float32) makes every row suspect.
        self.w_sq = w_sq = np.einsum("ij,ij->i", est.projection_, est.projection_)
        col_term = a * w_sq
        self.log_max, self.log_tiny = _log_range(dtype)
        may_overflow = w_sq.max() * (0.5 - a) + log_features.const > self.log_max
        self.w_norm = w_norm = np.sqrt(w_sq.max())
        # Dense one-sided maps fold the row term (and A|ω|²) into the GEMM as extra
        # columns ([x, shift, 1] @ [W^T; 1; A|ω|²]): the GEMM's output goes straight to
        # exp, one pass over the output fewer than adding them afterwards.
        self.fold = not self.antithetic and not sp.issparse(X)
        if self.fold:
            extra = [np.ones((1, m))] + ([col_term[None, :]] if a != 0.0 else [])
            with np.errstate(over="ignore"):
                WT = np.vstack([WT, *[e.astype(dtype) for e in extra]])
        self.WT = WT
        with np.errstate(over="ignore"):
            self.col_term_t = col_term.astype(dtype)
        check_all = may_overflow or not np.isfinite(WT).all()
        check_all = check_all or not np.isfinite(self.col_term_t).all()
        self.weights_t = log_features.norm_weights  # |ũ|² = Σ_l (c ψ_l)² x_l²
        self.terms = RowTerms(
            log_const=log_features.const,
            gaussian_weight=0.5 if est.kernel == "gaussian" else 0.0,
            a_w_sq_max=a * w_norm**2,
            b_w_norm=b * w_norm,
            log_tiny=self.log_tiny,
            check_all=bool(check_all),
        )
        self.m = m
        self.out = np.empty((n, est._map().width(m)), dtype=dtype)
        self.checked = np.zeros(n, dtype=bool)
        self.row_max = np.full(n, -np.inf)
        self.row_shift = np.empty(n)

    def upper_bound(self, X_rows, shift):
        """An upper bound on each row's largest log-feature, from its norm alone:
        shift + max_j A|ω_j|² + B |ω|max |ũ| (used where the projection itself overflowed
        the dtype, to tell rows that underflow anyway)."""
        sq_t = _row_sq_norms(X_rows, self.weights_t)
        return shift + self.a * self.w_sq.min() + self.b * self.w_norm * np.sqrt(sq_t)

    def block(self, rows):
        # One Numba pass stages the block (norms, row terms, range checks, the GEMM's
        # left operand): ~10 small numpy calls per block cost ~20 % of the transform.
        dtype = self.dtype
        Xb = self.X[rows]
        nb = Xb.shape[0]
        shift = self.row_shift[rows]
        check = np.empty(nb, dtype=np.bool_)
        out = self.out[rows]
        z = np.empty((nb, self.m), dtype=dtype) if self.antithetic else out
        if self.fold:
            Xs = np.empty((nb, self.WT.shape[0]), dtype=dtype)
            stage_gerf_rows(Xb, self.c2, self.weights_t, self.terms, Xs, shift, check)
            np.matmul(Xs, self.WT, out=z)
        elif sp.issparse(Xb):
            sq_u = _row_sq_norms(Xb) * self.c2
            gerf_row_terms(sq_u, _row_sq_norms(Xb, self.weights_t), self.terms, shift, check)
            _project_into(Xb, self.WT, z)
        else:
            gerf_rows_dense(Xb, self.c2, self.weights_t, self.terms, shift, check)
            np.matmul(Xb, self.WT, out=z)
        row_max = self.row_max[rows]
        if self.antithetic:
            plus_minus_shift_rows(z, shift.astype(dtype), out)
            if self.a != 0.0:  # the column term A|ω|² of both halves
                out[:, : self.m] += self.col_term_t
                out[:, self.m :] += self.col_term_t
            if check.any():
                zc = z[check]
                if self.a != 0.0:
                    top = np.maximum((zc + self.col_term_t).max(1), (self.col_term_t - zc).max(1))
                else:
                    top = np.maximum(zc.max(1), -zc.min(1))
                row_max[check] = top + shift[check]
        else:
            if not self.fold:
                z += shift.astype(dtype)[:, None]
                if self.a != 0.0:
                    z += self.col_term_t
            if check.any():
                row_max[check] = z[check].max(axis=1)
        if check.any():
            # NaN or +inf: the projection overflowed the dtype. Such a row is an
            # underflow if its features are all tiny anyway, else an overflow error.
            lost = check & ~np.isfinite(row_max) & (np.isnan(row_max) | (row_max > 0))
            if lost.any():
                ub = self.upper_bound(Xb[lost], shift[lost])
                row_max[lost] = np.where(ub < self.log_tiny, -np.inf, np.nan)
        self.checked[rows] = check
        # Exponentiate in place, while the block is in cache (_kernels/fastexp.py).
        exp_inplace(out)

    def check(self):
        """Raise for NaN/inf in X, overflowing projections or features, or rows whose
        features all underflow."""
        dtype, n = self.dtype, self.X.shape[0]
        fix = "Scale X down (e.g. StandardScaler) or lower gamma" + (
            ", or pass float64 data." if dtype == np.float32 else "."
        )
        non_finite = ~np.isfinite(self.row_shift)
        if non_finite.any():
            _raise_non_finite(self.X[non_finite], fix)
        if self.checked.any():
            rm = self.row_max[self.checked]
            lost = np.isnan(rm)
            if lost.any():
                raise _projection_overflow(int(lost.sum()), n, dtype, fix)
            what = "exp(A|ω|² + Bω·ũ - |ũ|²/2 ...)" if self.a != 0.0 else "exp(ω·u - |u|²/2 ...)"
            _check_log_features(rm, n, dtype, fix=fix, what=what + ", u = c x")


class OrthogonalRFF(_RandomFeatures):
    r"""Trigonometric random Fourier features with orthogonal projections.

    Random Fourier features (Rahimi and Recht 2007) for the shift-invariant kernels of
    :mod:`favorkit.kernels` — Gaussian, Laplacian and Matérn — and the paper's trigonometric
    estimator of the softmax kernel. Each kernel's frequencies come from its own spectral law:
    Gaussian rows for the Gaussian kernel, multivariate Student t rows (``2 nu`` degrees of
    freedom) for the Matérn kernel, iid Cauchy coordinates for the Laplacian one. The
    Gaussian and Matérn laws are isotropic, so their directions may be orthogonal,
    structured or quasi-Monte Carlo; the Laplacian law is not, and takes only ``"iid"`` or
    ``"qmc"`` frequencies (others raise a ``ValueError`` that says why).

    For the Gaussian kernel ``exp(-gamma |x - y|²)`` with ``u = sqrt(2 gamma) x``:
    ``φ(x) = [cos(Wu), sin(Wu)] / sqrt(m)`` (2m columns), whose inner products average
    ``cos(ω^T(u - v))`` (Rahimi–Recht; the [cos, sin] pair has lower variance than the
    random-offset variant). For the softmax kernel ``exp(gamma x·y)`` the same map with
    ``u = sqrt(gamma) x`` is multiplied by ``h(x) = exp(gamma |x|²/2)``: the paper's
    trigonometric estimator ``SM^trig`` (Sec. 2.3), unbiased but not positive.

    ``features="cos"`` gives ``sqrt(2/m) cos(Wu + b)`` with ``b ~ U[0, 2π)`` (m columns,
    named ``orthogonalrff0 …`` as ``RBFSampler`` names its own), the estimator of sklearn's
    ``RBFSampler``, for drop-in comparisons.

    Parameters
    ----------
    n_components : int, default=256
        Number of random projections m.
    kernel : {"gaussian", "laplacian", "matern", "softmax"}, default="gaussian"
        ``exp(-gamma |x - y|²)``, ``exp(-gamma |x - y|₁)`` (scikit-learn's
        ``laplacian_kernel``), the Matérn kernel of smoothness ``nu`` and length scale
        ``1/sqrt(2 gamma)`` (scikit-learn's ``Matern(length_scale=1/sqrt(2 gamma), nu)``; its
        ``nu -> ∞`` limit is the Gaussian kernel with the same gamma), or ``exp(gamma x·y)``.
    gamma : float > 0 or "scale", default=1.0
        The kernel's inverse scale (see ``kernel``); ``"scale"`` is
        ``1 / (n_features X.var())`` on the data given to ``fit``, as ``RBFSampler``.
    nu : {0.5, 1.5, 2.5}, default=1.5
        Smoothness of the Matérn kernel (ignored by the other kernels): 0.5 is the
        exponential kernel ``exp(-sqrt(2 gamma) |x - y|)``.
    projection : {"auto", "orthogonal", "iid", "gaussian", "structured", "qmc", "simplex"} \
            or array of shape (n_components, n_features), default="auto"
        How the frequency directions are drawn (see :mod:`favorkit.sampling`), or fixed
        frequency rows (used as ``projection_``). ``"auto"`` is ``"orthogonal"``, or ``"iid"``
        for the Laplacian kernel, which takes ``"iid"``, ``"gaussian"`` or ``"qmc"`` only.
    features : {"cossin", "cos"}, default="cossin"
        ``[cos, sin]`` pairs (2m columns) or cosines with random offsets (m columns).
    random_state : int, RandomState, Generator or None, default=None
        Seeds the draws in ``fit``.

    Attributes
    ----------
    projection_ : ndarray of shape (n_components, n_features)
        The drawn frequency rows (float64, before the kernel scale: ``sqrt(2 gamma)`` for
        the Gaussian and Matérn kernels, ``gamma`` for the Laplacian one).
    gamma_ : float
        The kernel parameter used (``gamma``, or its value for ``"scale"``).
    random_offset_ : ndarray of shape (n_components,)
        Offsets ``b`` (only for ``features="cos"``).
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of the features seen in ``fit`` (only when X has string column names).

    See Also
    --------
    PositiveRandomFeatures : positive features (FAVOR+), far more accurate where the
        softmax kernel is small.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import OrthogonalRFF
    >>> X = np.random.default_rng(0).normal(size=(5, 3))
    >>> rff = OrthogonalRFF(n_components=2000, gamma=0.5, random_state=0).fit(X)
    >>> F = rff.transform(X)
    >>> F.shape
    (5, 4000)
    >>> K = np.exp(-0.5 * ((X[:, None] - X[None]) ** 2).sum(-1))
    >>> float(np.abs(F @ F.T - K).max()) < 0.05
    True

    The Laplacian kernel, against scikit-learn's:

    >>> from sklearn.metrics.pairwise import laplacian_kernel
    >>> lap = OrthogonalRFF(4000, kernel="laplacian", gamma=0.3, projection="qmc",
    ...                     random_state=0).fit(X)
    >>> F = lap.transform(X)
    >>> float(np.abs(F @ F.T - laplacian_kernel(X, gamma=0.3)).max()) < 0.05
    True
    """

    _parameter_constraints: dict = {
        **_RandomFeatures._parameter_constraints,
        "kernel": [StrOptions({"gaussian", "laplacian", "matern", "softmax"})],
        "projection": [StrOptions({"auto", *sampling.PROJECTIONS}), "array-like"],
        "nu": [numbers.Real],
        "features": [StrOptions(set(_LAYOUTS))],
    }

    gamma_: float
    random_offset_: NDArray[np.float64]

    def __init__(
        self,
        n_components: int = 256,
        *,
        kernel: Literal["gaussian", "laplacian", "matern", "softmax"] = "gaussian",
        gamma: float | Literal["scale"] = 1.0,
        nu: float = 1.5,
        projection: Literal["auto"] | ProjectionName | ArrayLike = "auto",
        features: Literal["cossin", "cos"] = "cossin",
        random_state: RandomStateLike = None,
    ) -> None:
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.nu = nu
        self.projection = projection
        self.features = features
        self.random_state = random_state

    def _map(self):
        return maps.get(_LAYOUTS[self.features])

    def _kernel_params(self):
        return {"nu": kernels.check_nu(self.nu)} if self.kernel == "matern" else {}

    def _resolved_projection(self):
        if isinstance(self.projection, str) and self.projection == "auto":
            return "iid" if self.kernel == "laplacian" else "orthogonal"
        return self.projection

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: MatrixLike, y: ArrayLike | None = None) -> Self:
        """Draw the frequencies (and offsets); X is used only for its number of features
        (and its variance, for ``gamma="scale"``).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : array-like or None, default=None
            Ignored.

        Returns
        -------
        self : OrthogonalRFF
        """
        _, _, rng = self._draw(X)
        fmap = self._map()
        if isinstance(fmap, maps.CosOffsetMap):
            self.random_offset_ = fmap.draw_offsets(self.n_components, rng)
        return self

    def transform(self, X: MatrixLike) -> FloatArray:
        """Map X to trigonometric random features.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            New data, float32 or float64 (other dtypes become float64). A dask array gives
            a lazy dask array with the same row chunks.

        Returns
        -------
        X_new : ndarray of shape (n_samples, 2 * n_components) or (n_samples, n_components)
            Features in X's floating dtype.
        """
        if is_dask_array(X):
            return self._lazy_transform(X)
        X = self._validated(X)
        dtype = X.dtype
        n = X.shape[0]
        m = self.n_components
        fmap = self._map()
        c2 = self._input_scale_sq()
        fix = "Scale X down or lower gamma" + (
            ", or pass float64 data." if dtype == np.float32 else "."
        )
        with np.errstate(over="ignore"):
            WT = np.ascontiguousarray((self.projection_ * np.sqrt(c2)).T, dtype=dtype)
        if not np.isfinite(WT).all():
            raise ValueError(
                f"gamma={self.gamma_!r} makes the scaled projection overflow {dtype.name}, so no "
                f"feature can be computed in {dtype.name}. {fix}"
            )
        # |ω·u| <= |ω|_1 max|u|: if this bound is finite in the dtype the GEMM cannot
        # overflow; otherwise each block checks its projections (cos(inf) is NaN).
        values = X.data if sp.issparse(X) else X
        x_max = max(float(values.max(initial=0.0)), -float(values.min(initial=0.0)))
        w_l1 = float(np.abs(self.projection_).sum(axis=1).max())
        may_overflow = math.sqrt(c2) * w_l1 * x_max >= float(np.finfo(dtype).max)
        # log of the row factor: h(x) = exp(gamma|x|²/2) for the softmax kernel (Lemma 1),
        # times the map's constant.
        log_scale = np.full(n, fmap.log_row_scale(m))
        if self.kernel == "softmax":
            with np.errstate(over="ignore"):  # an overflow is an inf log-feature: checked
                log_scale += 0.5 * self.gamma_ * _row_sq_norms(X)
            _check_log_features(
                log_scale,
                n,
                dtype,
                fix="Scale X down or lower gamma (the softmax kernel's trigonometric features "
                "grow like exp(gamma|x|²/2); PositiveRandomFeatures does not)"
                + (", or pass float64 data." if dtype == np.float32 else "."),
                what="[cos(ω·u), sin(ω·u)] exp(gamma|x|²/2) / sqrt(m)",
            )
        out = np.empty((n, fmap.width(m)), dtype=dtype)
        offset = self.random_offset_.astype(dtype) if fmap.offsets else None
        # float32: numpy's SIMD sin/cos measured 4.4x faster than Numba's libm calls; in
        # float64 numpy's are scalar here and the fused Numba loop was 1.5x faster.
        vectorized = dtype == np.float32

        def block(rows):
            o = out[rows]
            z = o if fmap.in_place else np.empty((rows.stop - rows.start, m), dtype=dtype)
            with np.errstate(over="ignore", invalid="ignore"):
                _project_into(X[rows], WT, z)
            if may_overflow and not np.isfinite(z).all():
                n_bad = int((~np.isfinite(z).all(axis=1)).sum())
                raise _projection_overflow(n_bad, n, dtype, fix, at_least=True)
            fmap.features(z, log_scale[rows], o, offset=offset, vectorized=vectorized)

        map_row_blocks(block, n)
        return out


class ArcCosineFeatures(_RandomFeatures):
    r"""Random features of the arc-cosine kernels (Cho and Saul 2009).

    ``φ(x)_i = sqrt(2/m) Θ(ω_i·x) (ω_i·x)ⁿ`` with ``ω_i ~ N(0, I)`` (rows of
    :mod:`favorkit.sampling`), non-negative, whose inner products are unbiased for the
    arc-cosine kernel of degree n,

    .. math:: k_n(x, y) = \frac{1}{\pi} |x|^n |y|^n J_n(θ),

    θ the angle between x and y (:func:`favorkit.kernels.arccos_kernel`): the kernel of an
    infinitely wide layer of step (n = 0), ReLU (n = 1) or squared-ReLU (n = 2) units, and
    the kernel behind the Performer's ReLU attention (``FavorAttention(activation="arccos1")``).
    Orthogonal rows keep each row's law (N(0, I)), so they stay unbiased. The relative MSE
    of one estimate is ``(2 k_{2n}(x, y) / k_n(x, y)² - 1)/m`` for iid rows
    (:func:`favorkit.theory.mse_arccos`).

    Parameters
    ----------
    n_components : int, default=256
        Number of random projections m (the output has m columns).
    degree : {0, 1, 2}, default=1
        The kernel's degree n.
    projection : {"orthogonal", "iid", "gaussian", "structured", "qmc", "simplex"} or array \
            of shape (n_components, n_features), default="orthogonal"
        How the rows ω_i are drawn (:mod:`favorkit.sampling`), or a fixed matrix.
    random_state : int, RandomState, Generator or None, default=None
        Seeds the draw in ``fit``.

    Attributes
    ----------
    projection_ : ndarray of shape (n_components, n_features)
        The drawn rows ω_i (float64).
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of the features seen in ``fit`` (only when X has string column names).

    See Also
    --------
    sklearn.kernel_approximation.Nystroem : a data-dependent approximation of any kernel.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import ArcCosineFeatures
    >>> from favorkit.kernels import arccos_kernel
    >>> X = np.random.default_rng(0).normal(size=(5, 3))
    >>> F = ArcCosineFeatures(20000, degree=1, random_state=0).fit_transform(X)
    >>> bool(np.all(F >= 0))
    True
    >>> K = arccos_kernel(X, X, degree=1)
    >>> float(np.abs(F @ F.T - K).max() / K.max()) < 0.05
    True
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "degree": [Interval(numbers.Integral, 0, 2, closed="both")],
        "projection": [StrOptions(set(sampling.PROJECTIONS)), "array-like"],
        "random_state": ["random_state", np.random.Generator],
    }

    def __init__(
        self,
        n_components: int = 256,
        *,
        degree: int = 1,
        projection: ProjectionName | ArrayLike = "orthogonal",
        random_state: RandomStateLike = None,
    ) -> None:
        self.n_components = n_components
        self.degree = degree
        self.projection = projection
        self.random_state = random_state

    def _map(self):
        return maps.get(f"arccos{self.degree}")

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: MatrixLike, y: ArrayLike | None = None) -> Self:
        """Draw the projection; X is used only for its number of features.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : array-like or None, default=None
            Ignored.

        Returns
        -------
        self : ArcCosineFeatures
        """
        if is_dask_array(X):
            X = matrix_input(self, X, reset=True)  # only its shape is read
        else:
            X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32])
        rng = sampling.resolve_rng(self.random_state)
        self.projection_ = sampling.draw(self.projection, self.n_components, X.shape[1], rng)
        self._n_features_out = self.n_components
        return self

    def transform(self, X: MatrixLike) -> FloatArray:
        """Map X to arc-cosine random features.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            New data, float32 or float64 (other dtypes become float64). A dask array gives
            a lazy dask array with the same row chunks.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            Non-negative features in X's floating dtype.
        """
        if is_dask_array(X):
            return self._lazy_transform(X)
        X = self._validated(X)
        dtype = X.dtype
        fmap = self._map()
        WT = np.ascontiguousarray(self.projection_.T, dtype=dtype)
        out = np.empty((X.shape[0], self.n_components), dtype=dtype)

        def block(rows):
            o = out[rows]
            with np.errstate(over="ignore", invalid="ignore"):
                _project_into(X[rows], WT, o)
                fmap.features(o, o)

        map_row_blocks(block, X.shape[0])
        if not np.isfinite(out).all():
            n_bad = int((~np.isfinite(out).all(axis=1)).sum())
            raise ValueError(
                f"{n_bad} of {X.shape[0]} rows of X give features that overflow {dtype.name} "
                f"(Θ(ω·x)(ω·x)^{self.degree}). Scale X down"
                + (", or pass float64 data." if dtype == np.float32 else ".")
            )
        return out
