"""Random-feature transformers for the softmax and Gaussian kernels.

Both transformers follow ``sklearn.kernel_approximation.RBFSampler``: parameters are stored
verbatim, all randomness is drawn in ``fit`` (which looks at the data only for its number of
features), ``transform`` is deterministic, float32 input gives float32 output, and CSR input
is accepted (the projection is a sparse-dense product; the output is dense).

Kernels (``kernel=``), with ``gamma > 0``:

* ``"softmax"``:  ``K(x, y) = exp(gamma * x·y)``, the Performer's SM with ``u = sqrt(gamma) x``.
* ``"gaussian"``: ``K(x, y) = exp(-gamma * |x - y|²)`` (sklearn's RBF convention), which is
  ``SM(u, v) * exp(-|u|²/2) * exp(-|v|²/2)`` with ``u = sqrt(2 gamma) x`` (spec a.2).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

from favorkit import sampling
from favorkit._beyond_theory import optimal_gerf_a
from favorkit._kernels.fastexp import exp_inplace
from favorkit._kernels.feature_maps import (
    cos_offset_rows_inplace,
    cos_sin_rows,
    gerf_row_terms,
    gerf_rows_dense,
    plus_minus_shift_rows,
    stage_gerf_rows,
)
from favorkit._parallel import map_row_blocks
from favorkit._validation import (
    Interval,
    StrOptions,
    _check_feature_names_in,
    _fit_context,
    check_is_fitted,
    validate_data,
)
from favorkit._warnings import NumericalWarning

__all__ = ["NumericalWarning", "OrthogonalRFF", "PositiveRandomFeatures"]


_KERNELS = ("softmax", "gaussian")


class _RandomFeatures(TransformerMixin, BaseEstimator):
    """What the two transformers share: validation, the projection draw, names, tags."""

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "kernel": [StrOptions(set(_KERNELS))],
        "gamma": [Interval(numbers.Real, 0.0, None, closed="neither")],
        "projection": [StrOptions(set(sampling.PROJECTIONS)), "array-like"],
        "random_state": ["random_state", np.random.Generator],
    }

    # Subclasses: suffixes of the output column blocks, e.g. ("cos", "sin"), or ("",).
    def _output_blocks(self):
        raise NotImplementedError

    def _draw(self, X):
        """Validate X, set ``n_features_in_`` and draw ``projection_``; return (X, rng)."""
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32])
        rng = sampling._rng(self.random_state)
        self.projection_ = sampling.draw(self.projection, self.n_components, X.shape[1], rng)
        self._n_features_out = self.n_components * len(self._output_blocks())
        return X, rng

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

    def _scaled_projection_T(self, scale, dtype):
        """``(scale * W).T`` as a C-contiguous (d, m) array in the data's dtype."""
        return np.ascontiguousarray((self.projection_ * scale).T, dtype=dtype)

    def get_feature_names_out(self, input_features=None):
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
            for block in self._output_blocks()
            for j in range(self.n_components)
        ]
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


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
    map of Lemma 1 (``spec/math.md`` a.4) is

    .. math:: φ(x)_i = \exp(ω_i^T u - |u|^2/2 + g(x)) / \sqrt{m},

    with ``g = 0`` for the softmax kernel and ``g = -|u|^2/2`` for the Gaussian kernel, so
    that ``E[φ(x)^T φ(y)] = K(x, y)`` exactly. The other estimators:

    * ``"hyperbolic"``: the antithetic pair ``exp(±ω_i^T u)`` with ``1/sqrt(2m)`` (2m columns,
      lower variance: Lemma 2).
    * ``"optimal"`` (FAVOR++, optimal positive random features; ``spec/beyond.md`` §2): the
      generalized exponential map ``D exp(A|ω_i|² + B ω_i^T u - |u|²/2 + g(x))/sqrt(m)``
      with ``B = sqrt(1 - 4A)``, ``D = (1 - 4A)^{d/4}`` and the closed-form ``A* <= 0`` that
      minimises the variance averaged over the pairs seen in ``fit`` (it depends on the data
      only through ``φ = mean |u_i + v_j|²``, computed in O(nd)). Unbiased for any fixed A;
      positive and bounded.
    * ``"saderf"`` (``spec/beyond.md`` §3.3): queries are rescaled by a diagonal ``Ψ`` and keys
      by ``Ψ^{-1}`` (which keeps ``u·v`` and so the kernel), ``Ψ_l = (E_key,l / E_query,l)^{1/4}``
      from the per-coordinate energies, then the ``"optimal"`` map. Queries and keys get
      different maps: fit with ``fit(Q, keys=K)`` and transform with
      ``transform(Q, side="query")`` and ``transform(K, side="key")``.

    Features are computed in log space and exponentiated once, with no data-dependent
    max-subtraction, so ``transform(X) @ transform(Y).T`` estimates ``K(X, Y)`` at its true
    scale. If a feature would overflow the dtype, or every feature of a row would underflow
    to 0 (so that every kernel estimate of that row, ``K(x, x)`` included, would be 0), a
    ``ValueError`` says how many rows of X and how to fix it.

    Parameters
    ----------
    n_components : int, default=256
        Number of random projections m. The output has m columns, or 2m for
        ``"hyperbolic"``.
    kernel : {"softmax", "gaussian"}, default="softmax"
        ``exp(gamma x·y)`` or ``exp(-gamma |x - y|²)``.
    gamma : float > 0, default=1.0
        Kernel parameter.
    estimator : {"positive", "hyperbolic", "optimal", "saderf"}, default="positive"
        The paper's SM+ (m columns) or SM-hyp+ (2m columns) estimator, FAVOR++ or SADERF.
    projection : {"orthogonal", "iid", "gaussian", "structured", "qmc", "simplex"} or array \
            of shape (n_components, n_features), default="orthogonal"
        How the rows ω_i are drawn (see :mod:`favorkit.sampling`), or a fixed matrix.
        ``"structured"`` (SORF) is slightly biased; the others are unbiased.
    random_state : int, RandomState, Generator or None, default=None
        Seeds the projection draw in ``fit``.

    Attributes
    ----------
    projection_ : ndarray of shape (n_components, n_features_in_)
        The drawn projection rows ω_i (float64, before the kernel scale c).
    gerf_a_ : float
        The GERF parameter A (0 for ``"positive"`` and ``"hyperbolic"``, ``A* <= 0`` fitted
        for ``"optimal"`` and ``"saderf"``).
    query_scale_ : ndarray of shape (n_features_in_,)
        SADERF's diagonal Ψ (ones for the other estimators); keys are divided by it.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
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
        "estimator": [StrOptions({"positive", "hyperbolic", "optimal", "saderf"})],
    }

    def __init__(
        self,
        n_components=256,
        *,
        kernel="softmax",
        gamma=1.0,
        estimator="positive",
        projection="orthogonal",
        random_state=None,
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.estimator = estimator
        self.projection = projection
        self.random_state = random_state

    def _output_blocks(self):
        return ("plus", "minus") if self.estimator == "hyperbolic" else ("",)

    def _input_scale_sq(self):
        """c² with u = c x: gamma (softmax) or 2 gamma (Gaussian)."""
        return self.gamma if self.kernel == "softmax" else 2.0 * self.gamma

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, keys=None):
        """Draw the projection and, for FAVOR++/SADERF, fit A (and Ψ) from data statistics.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data: the queries (the first argument of the kernel).
        y : None
            Ignored (keeps the transformer usable in a Pipeline).
        keys : {array-like, sparse matrix} of shape (n_keys, n_features), default=None
            The second argument of the kernel, if it differs from X. Used only by
            ``"optimal"`` (for ``φ = mean |u_i + v_j|²``) and ``"saderf"`` (for Ψ);
            ``None`` means the keys are X itself.

        Returns
        -------
        self : PositiveRandomFeatures
        """
        X, _ = self._draw(X)
        d = X.shape[1]
        self.gerf_a_ = 0.0
        self.query_scale_ = np.ones(d)
        if self.estimator in ("optimal", "saderf"):
            if keys is None:
                Y = X
            else:
                Y = validate_data(
                    self, keys, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False
                )
            self.gerf_a_, self.query_scale_ = fit_gerf_parameters(
                X, Y, self._input_scale_sq(), saderf=self.estimator == "saderf"
            )
        return self

    def transform(self, X, *, side="query"):
        """Map X to positive random features.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            New data, float32 or float64 (other dtypes become float64).
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
        # Dense data are checked for NaN and inf on the fly: a non-finite entry makes its row's
        # norm, hence its row term, non-finite (saves sklearn's separate pass over X).
        X = self._validated(X, ensure_all_finite=sp.issparse(X))
        dtype = X.dtype
        n, d = X.shape
        m = self.n_components
        hyperbolic = self.estimator == "hyperbolic"
        n_cols = 2 * m if hyperbolic else m
        c2 = self._input_scale_sq()
        a = float(self.gerf_a_)
        b = np.sqrt(1.0 - 4.0 * a)
        # Per-coordinate input scale: c, times Ψ (queries) or 1/Ψ (keys) for SADERF.
        psi = self.query_scale_ if side == "query" else 1.0 / self.query_scale_
        col_scale = np.sqrt(c2) * psi
        with np.errstate(over="ignore"):
            WT = np.ascontiguousarray((self.projection_ * (b * col_scale)).T, dtype=dtype)
        # log φ_j(x) = A|ω_j|² + B ω_j·ũ - |ũ|²/2 [- |u|²/2 for the Gaussian kernel]
        #              + (d/4) log(1 - 4A) - ½ log(n_cols)     (Likhosherstov et al. 2022,
        # Eq. 7; Lemma 1) with ũ = Ψ^{±1} u (= u except for SADERF). A = 0 gives Lemma 1's
        # positive map.
        w_sq = np.einsum("ij,ij->i", self.projection_, self.projection_)
        col_term = a * w_sq
        log_const = 0.25 * d * np.log1p(-4.0 * a) - 0.5 * np.log(n_cols)
        gaussian = self.kernel == "gaussian"
        log_max, log_tiny = _log_range(dtype)
        # Completing the square, A|ω|² + Bω·ũ - |ũ|²/2 <= (1/2 - A)|ω|²: when this data-free
        # bound is inside the dtype's range no feature can overflow, and per-row maxima (an
        # extra pass) are only needed for rows that might underflow. A projection that
        # overflows the dtype (a huge gamma in float32) makes every row suspect.
        may_overflow = w_sq.max() * (0.5 - a) + log_const > log_max
        w_norm = np.sqrt(w_sq.max())
        out = np.empty((n, n_cols), dtype=dtype)
        checked = np.zeros(n, dtype=bool)
        row_max = np.full(n, -np.inf)
        row_shift = np.empty(n)
        # Dense non-hyperbolic maps fold the row term (and A|ω|²) into the GEMM as extra
        # columns ([x, shift, 1] @ [W^T; 1; A|ω|²]): the GEMM's output goes straight to
        # exp, one pass over the output fewer than adding them afterwards.
        fold = not hyperbolic and not sp.issparse(X)
        if fold:
            extra = [np.ones((1, m))] + ([col_term[None, :]] if a != 0.0 else [])
            with np.errstate(over="ignore"):
                WT = np.vstack([WT, *[e.astype(dtype) for e in extra]])
        with np.errstate(over="ignore"):
            col_term_t = col_term.astype(dtype)
        check_all = may_overflow or not np.isfinite(WT).all() or not np.isfinite(col_term_t).all()
        weights_t = col_scale**2  # |ũ|² = Σ_l (c ψ_l)² x_l²
        params = np.array(
            [
                log_const,
                0.5 if gaussian else 0.0,
                a * w_norm**2,
                b * w_norm,
                log_tiny,
                float(check_all),
            ]
        )

        def upper_bound(X_rows, shift):
            """An upper bound on each row's largest log-feature, from its norm alone:
            shift + max_j A|ω_j|² + B |ω|max |ũ| (used where the projection itself
            overflowed the dtype, to tell rows that underflow anyway)."""
            return shift + a * w_sq.min() + b * w_norm * np.sqrt(_row_sq_norms(X_rows, weights_t))

        def block(rows):
            # One Numba pass stages the block (norms, row terms, range checks, the GEMM's
            # left operand): ~10 small numpy calls per block cost ~20 % of the transform.
            Xb = X[rows]
            nb = Xb.shape[0]
            shift = row_shift[rows]
            check = np.empty(nb, dtype=np.bool_)
            z = np.empty((nb, m), dtype=dtype) if hyperbolic else out[rows]
            if fold:
                Xs = np.empty((nb, WT.shape[0]), dtype=dtype)
                stage_gerf_rows(Xb, c2, weights_t, params, Xs, shift, check)
                np.matmul(Xs, WT, out=z)
            elif sp.issparse(Xb):
                gerf_row_terms(
                    _row_sq_norms(Xb) * c2, _row_sq_norms(Xb, weights_t), params, shift, check
                )
                _project_into(Xb, WT, z)
            else:
                gerf_rows_dense(Xb, c2, weights_t, params, shift, check)
                np.matmul(Xb, WT, out=z)
            if hyperbolic:
                plus_minus_shift_rows(z, shift.astype(dtype), out[rows])
                if check.any():
                    zc = z[check]
                    row_max[rows][check] = np.maximum(zc.max(1), -zc.min(1)) + shift[check]
            else:
                if not fold:
                    z += shift.astype(dtype)[:, None]
                    if a != 0.0:
                        z += col_term_t
                if check.any():
                    row_max[rows][check] = z[check].max(axis=1)
            if check.any():
                # NaN or +inf: the projection overflowed the dtype. Such a row is an
                # underflow if its features are all tiny anyway, else an overflow error.
                rm = row_max[rows]
                lost = check & ~np.isfinite(rm) & (np.isnan(rm) | (rm > 0))
                if lost.any():
                    ub = upper_bound(Xb[lost], shift[lost])
                    rm[lost] = np.where(ub < log_tiny, -np.inf, np.nan)
            checked[rows] = check
            # Exponentiate in place, while the block is in cache (_kernels/fastexp.py).
            exp_inplace(out[rows])

        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            map_row_blocks(block, n)
        fix = "Scale X down (e.g. StandardScaler) or lower gamma" + (
            ", or pass float64 data." if dtype == np.float32 else "."
        )
        non_finite = ~np.isfinite(row_shift)
        if non_finite.any():
            _raise_non_finite(X[non_finite], fix)
        if checked.any():
            rm = row_max[checked]
            lost = np.isnan(rm)
            if lost.any():
                raise _projection_overflow(int(lost.sum()), n, dtype, fix)
            what = "exp(A|ω|² + Bω·ũ - |ũ|²/2 ...)" if a != 0.0 else "exp(ω·u - |u|²/2 ...)"
            _check_log_features(rm, n, dtype, fix=fix, what=what + ", u = c x")
        return out


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


def gerf_parameters(mean_x, mean_sq_x, mean_y, mean_sq_y, *, saderf):
    """FAVOR++/SADERF parameters ``(A*, Ψ)`` from column moments of queries and keys.

    The inputs are per-coordinate means and means of squares of the (kernel-scaled) queries
    ``u_i`` and keys ``v_j``, so the statistics cost O(nd) and can be accumulated in blocks
    (attention does). ``Ψ_l = (E v_l² / E u_l²)^{1/4}`` minimises ``mean |Ψu_i + Ψ⁻¹v_j|²``
    over diagonal Ψ (SADERF, beyond.md §3.3; ones otherwise; a coordinate that is zero on one
    side only gets the finite limit of the formula through a tiny relative epsilon); then
    ``φ = mean_{i,j} |Ψu_i + Ψ⁻¹v_j|² = Σ_l (Ψ_l² E u_l² + Ψ_l⁻² E v_l²) + 2 ū·v̄`` (the
    homogeneity heuristic, beyond.md §2.3) and ``A* = theory.optimal_gerf_a(φ, d)``.
    """
    ex = np.asarray(mean_sq_x, dtype=np.float64)
    ey = np.asarray(mean_sq_y, dtype=np.float64)
    d = ex.size
    with np.errstate(over="ignore", invalid="ignore"):
        psi = _saderf_scales(ex, ey) if saderf else np.ones(d)
        phi = float(ex @ psi**2 + ey @ psi**-2 + 2.0 * np.dot(mean_x, mean_y))
    if not (np.isfinite(phi) and np.isfinite(psi).all()):
        raise ValueError(
            "The FAVOR++/SADERF statistics of the inputs (mean squared norms of the scaled "
            "inputs) overflow float64; scale the inputs down (or lower gamma / scale)."
        )
    return float(optimal_gerf_a(phi, d)), psi


def _column_moments(X, c2=1.0):
    """Per-coordinate mean and mean of squares of ``sqrt(c2) X`` (float64; CSR or dense)."""
    with np.errstate(over="ignore", invalid="ignore"):  # gerf_parameters checks the result
        if sp.issparse(X):
            data = X.data.astype(np.float64)
            mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
            squares = sp.csr_matrix((data * data, X.indices, X.indptr), shape=X.shape)
            mean_sq = np.asarray(squares.mean(axis=0)).ravel()
        else:
            mean = X.mean(axis=0, dtype=np.float64)
            mean_sq = np.einsum("ij,ij->j", X, X, dtype=np.float64) / X.shape[0]
        return np.sqrt(c2) * mean, c2 * mean_sq


def fit_gerf_parameters(X, Y, c2, *, saderf):
    """``(A*, Ψ)`` for queries ``sqrt(c2) X`` and keys ``sqrt(c2) Y``; see gerf_parameters."""
    return gerf_parameters(*_column_moments(X, c2), *_column_moments(Y, c2), saderf=saderf)


class OrthogonalRFF(_RandomFeatures):
    r"""Trigonometric random Fourier features with orthogonal projections.

    For the Gaussian kernel ``exp(-gamma |x - y|²)`` with ``u = sqrt(2 gamma) x``:
    ``φ(x) = [cos(Wu), sin(Wu)] / sqrt(m)`` (2m columns), whose inner products average
    ``cos(ω^T(u - v))`` (Rahimi–Recht; the [cos, sin] pair has lower variance than the
    random-offset variant). For the softmax kernel ``exp(gamma x·y)`` the same map with
    ``u = sqrt(gamma) x`` is multiplied by ``h(x) = exp(gamma |x|²/2)``: the paper's
    trigonometric estimator ``SM^trig`` (``spec/math.md`` a.3), unbiased but not positive.

    ``features="cos"`` gives ``sqrt(2/m) cos(Wu + b)`` with ``b ~ U[0, 2π)`` (m columns),
    the estimator of sklearn's ``RBFSampler``, for drop-in comparisons.

    Parameters
    ----------
    n_components : int, default=256
        Number of random projections m.
    kernel : {"gaussian", "softmax"}, default="gaussian"
        ``exp(-gamma |x - y|²)`` or ``exp(gamma x·y)``.
    gamma : float > 0, default=1.0
        Kernel parameter.
    projection : {"orthogonal", "iid", "gaussian", "structured", "qmc"} or array of shape \
            (n_components, n_features), default="orthogonal"
        How the rows are drawn (see :mod:`favorkit.sampling`).
    features : {"cossin", "cos"}, default="cossin"
        ``[cos, sin]`` pairs (2m columns) or cosines with random offsets (m columns).
    random_state : int, RandomState, Generator or None, default=None
        Seeds the draws in ``fit``.

    Attributes
    ----------
    projection_ : ndarray of shape (n_components, n_features_in_)
        The drawn projection rows (float64, before the kernel scale).
    random_offset_ : ndarray of shape (n_components,)
        Offsets ``b`` (only for ``features="cos"``).
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
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
    """

    _parameter_constraints: dict = {
        **_RandomFeatures._parameter_constraints,
        "features": [StrOptions({"cossin", "cos"})],
    }

    def __init__(
        self,
        n_components=256,
        *,
        kernel="gaussian",
        gamma=1.0,
        projection="orthogonal",
        features="cossin",
        random_state=None,
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.projection = projection
        self.features = features
        self.random_state = random_state

    def _output_blocks(self):
        return ("cos", "sin") if self.features == "cossin" else ("cos",)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Draw the projection (and offsets); X is used only for its number of features.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : None
            Ignored.

        Returns
        -------
        self : OrthogonalRFF
        """
        _, rng = self._draw(X)
        if self.features == "cos":
            self.random_offset_ = rng.uniform(0.0, 2.0 * np.pi, size=self.n_components)
        return self

    def transform(self, X):
        """Map X to trigonometric random features.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            New data, float32 or float64 (other dtypes become float64).

        Returns
        -------
        X_new : ndarray of shape (n_samples, 2 * n_components) or (n_samples, n_components)
            Features in X's floating dtype.
        """
        X = self._validated(X)
        dtype = X.dtype
        n = X.shape[0]
        m = self.n_components
        c2 = 2.0 * self.gamma if self.kernel == "gaussian" else self.gamma
        fix = "Scale X down or lower gamma" + (
            ", or pass float64 data." if dtype == np.float32 else "."
        )
        with np.errstate(over="ignore"):
            WT = self._scaled_projection_T(np.sqrt(c2), dtype)
        if not np.isfinite(WT).all():
            raise ValueError(
                f"gamma={self.gamma!r} makes the scaled projection overflow {dtype.name}, so no "
                f"feature can be computed in {dtype.name}. {fix}"
            )
        # |ω·u| <= |ω|_1 max|u|: if this bound is finite in the dtype the GEMM cannot
        # overflow; otherwise each block checks its projections (cos(inf) is NaN).
        values = X.data if sp.issparse(X) else X
        x_max = max(float(values.max(initial=0.0)), -float(values.min(initial=0.0)))
        w_l1 = float(np.abs(self.projection_).sum(axis=1).max())
        may_overflow = math.sqrt(c2) * w_l1 * x_max >= float(np.finfo(dtype).max)
        # log of the row factor: h(x) = exp(gamma|x|²/2) for the softmax kernel (Lemma 1),
        # times 1/sqrt(m) ([cos, sin]) or sqrt(2/m) (cos with offsets).
        log_scale = np.full(
            n, -0.5 * np.log(m) if self.features == "cossin" else 0.5 * np.log(2 / m)
        )
        if self.kernel == "softmax":
            with np.errstate(over="ignore"):  # an overflow is an inf log-feature: checked
                log_scale += 0.5 * self.gamma * _row_sq_norms(X)
            _check_log_features(
                log_scale,
                n,
                dtype,
                fix="Scale X down or lower gamma (the softmax kernel's trigonometric features "
                "grow like exp(gamma|x|²/2); PositiveRandomFeatures does not)"
                + (", or pass float64 data." if dtype == np.float32 else "."),
                what="[cos(ω·u), sin(ω·u)] exp(gamma|x|²/2) / sqrt(m)",
            )
        out = np.empty((n, 2 * m if self.features == "cossin" else m), dtype=dtype)
        if self.features == "cos":
            offset = self.random_offset_.astype(dtype)

        def check_projection(z):
            if may_overflow and not np.isfinite(z).all():
                n_bad = int((~np.isfinite(z).all(axis=1)).sum())
                raise _projection_overflow(n_bad, n, dtype, fix, at_least=True)

        # float32: numpy's SIMD sin/cos measured 4.4x faster than Numba's libm calls; in
        # float64 numpy's are scalar here and the fused Numba loop was 1.5x faster.
        use_numpy = dtype == np.float32

        def block(rows):
            o = out[rows]
            if self.features == "cossin":
                z = np.empty((rows.stop - rows.start, m), dtype=dtype)
                with np.errstate(over="ignore", invalid="ignore"):
                    _project_into(X[rows], WT, z)
                check_projection(z)
                if use_numpy:
                    np.cos(z, out=o[:, :m])
                    np.sin(z, out=o[:, m:])
                    o *= np.exp(log_scale[rows]).astype(dtype)[:, None]
                else:
                    cos_sin_rows(z, log_scale[rows], o)
            else:
                with np.errstate(over="ignore", invalid="ignore"):
                    _project_into(X[rows], WT, o)
                check_projection(o)
                if use_numpy:
                    o += offset
                    np.cos(o, out=o)
                    o *= np.exp(log_scale[rows]).astype(dtype)[:, None]
                else:
                    cos_offset_rows_inplace(o, offset, log_scale[rows])

        map_row_blocks(block, n)
        return out
