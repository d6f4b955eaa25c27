"""FAVOR attention's public layer: :func:`favor_attention` and :class:`FavorAttention`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from favorkit import sampling
from favorkit._dask import column_sums, is_dask_array
from favorkit._typing import (
    ActivationName,
    ArrayLike,
    AttentionEstimator,
    FloatArray,
    NDArray,
    ProjectionName,
    RandomStateLike,
    Self,
)
from favorkit._validation import _fit_context, check_is_fitted, validate_data, validate_params
from favorkit.attention._checks import warn_if_noise, warn_nonpositive
from favorkit.attention._engine import (
    PositiveFeatures,
    SignedFeatures,
    current_tuning,
    favor_positive,
    favor_signed,
    mask_keys,
    positive_attention_rows,
    set_gerf_parameters,
)
from favorkit.attention._inputs import (
    ARRAYS,
    PARAMETERS,
    as_array,
    check_array,
    check_finite,
    prepare,
    resolve_map,
    resolve_scale,
)
from favorkit.maps import MapParams

__all__ = ["FavorAttention", "favor_attention"]


def _attend(
    Q, K, V, projection, *, fmap, causal, scale, key_padding_mask, activation_epsilon,
    fitted_gerf=None,
):  # fmt: skip
    if any(map(is_dask_array, (Q, K, V, key_padding_mask))):
        from favorkit.attention import _dask

        return _dask.attend(
            Q, K, V, projection, fmap=fmap, causal=causal, scale=scale,
            key_padding_mask=key_padding_mask, activation_epsilon=activation_epsilon,
            fitted_gerf=fitted_gerf,
        )  # fmt: skip
    Qf, Kf, Vf, mask, batch, dtype = prepare(Q, K, V, key_padding_mask, causal)
    scale = resolve_scale(scale, Qf.shape[2])
    tuning = current_tuning()
    with np.errstate(under="ignore"):
        if fmap.attention_estimator and projection is not None:
            warn_if_noise(Qf, Kf, Vf, mask, causal, scale, fmap, projection.shape[0], fitted_gerf)
        if fmap.exponential:
            features = PositiveFeatures(fmap, projection, scale, dtype)
            set_gerf_parameters(features, Qf, Kf, mask, causal, fitted_gerf)
            out = favor_positive(Qf, Kf, Vf, mask, features, causal, tuning)
        else:
            features = SignedFeatures(fmap, projection, scale, activation_epsilon, dtype)
            out, n_bad = favor_signed(Qf, Kf, Vf, mask, features, causal, tuning)
            warn_nonpositive(n_bad, Qf.shape[0] * Qf.shape[1], fmap)
    return out.reshape(*batch, Qf.shape[1], Vf.shape[2])


@validate_params({**ARRAYS, **PARAMETERS}, prefer_skip_nested_validation=True)
def favor_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    n_components: int = 256,
    kernel: Literal["softmax"] = "softmax",
    estimator: AttentionEstimator = "positive",
    activation: ActivationName | Callable[[FloatArray], FloatArray] | None = None,
    projection: ProjectionName | ArrayLike | None = "orthogonal",
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: ArrayLike | None = None,
    activation_epsilon: float = 1e-3,
    random_state: RandomStateLike = None,
) -> FloatArray:
    r"""FAVOR attention: linear-time attention with random features (Performer).

    With features ``φ`` (below), bidirectional attention is
    ``D^{-1} φ(Q̃) (φ(K̃)^T V)`` with ``D = diag(φ(Q̃) φ(K̃)^T 1)`` (Choromanski et al. 2021,
    Eq. 4), computed as ``φ(K̃)^T [V 1]`` and then ``φ(Q̃) (that)`` in row blocks; causal
    attention uses inclusive prefix sums of ``φ(k_j) [v_j 1]^T`` (App. B, Eq. 11) in a chunkwise
    Numba kernel with a float64 ``r x (d_v + 1)`` state. Queries and keys are each
    multiplied by ``sqrt(scale)`` so that ``scale`` means what it means in
    :func:`softmax_attention`.

    Estimators of the softmax kernel ``exp(q̃·k̃)`` (``kernel="softmax"``):
    ``"positive"`` (FAVOR+, Lemma 1: ``exp(ω·x - |x|²/2)``), ``"hyperbolic"`` (the
    antithetic pair ``exp(±ω·x)``, 2m features, lower variance), ``"trig"`` (the paper's
    unstable ``[cos, sin]`` baseline), ``"optimal"`` (FAVOR++, optimal positive random
    features: ``exp(A|ω|² + Bω·x - |x|²/2)`` with ``B = sqrt(1 - 4A)`` and ``A <= 0``
    minimizing the variance for this sequence's queries and keys; Likhosherstov et al.
    2022) and ``"saderf"`` (queries times a diagonal ``Ψ``, keys times ``Ψ⁻¹``, then FAVOR++;
    Likhosherstov et al. 2023); ``"optimal_hyperbolic"`` pairs FAVOR++'s features
    antithetically as ``"hyperbolic"`` pairs FAVOR+'s. These fitted maps fit ``A`` (and
    ``Ψ``) per call, per sequence and head, from that head's scaled queries and unpadded
    keys (O(L d), as the official ``expplus``); they are bidirectional only here, because
    statistics over the whole sequence would let future keys change earlier outputs: causal
    FAVOR++/SADERF takes its parameters from :meth:`FavorAttention.fit`. The maps are those
    of :mod:`favorkit.maps`.

    Generalized attention (Eq. 5 with any f) replaces the estimator by a deterministic
    ``activation``: ``"relu"``, ``"elu"`` (elu + 1), ``"exp"``, ``"abs"`` or a callable
    ``f`` give ``φ(x) = f(W x̃) + activation_epsilon`` (or ``f(x̃) + activation_epsilon``
    with ``projection=None``); it approximates no kernel, softmax included. The exception is
    ``"arccos0"``, ``"arccos1"`` (ReLU) and ``"arccos2"``: ``Θ(W x̃)(W x̃)ⁿ`` without
    ``activation_epsilon`` is the random-feature estimator of the arc-cosine kernel of
    degree n (Cho and Saul 2009), whose exact attention is
    :func:`~favorkit.kernel_attention`.

    Numerics. The positive estimators (all but ``"trig"``) are computed in log space with one
    reference per feature column, so for any finite input every output row that sees a key
    is finite and inside the range of the value rows it sees (up to rounding): no row
    underflows to 0, however large the logits, and values up to the dtype's largest number
    are scaled by exact powers of two.
    The only errors are inputs whose projections ``W·x̃`` overflow the dtype or whose
    squared norms overflow float64. Signed features (``"trig"``, activations) can
    make a row's normalizer ``<= 0``; such rows, and rows whose output is not finite, are
    set to 0 and counted in a :class:`~favorkit.NumericalWarning`.

    Parameters
    ----------
    Q : array-like or dask array of shape (..., L_q, d)
        Queries, with any leading batch and head axes. With dask arrays (any of Q, K, V
        and the mask) the result is a lazy dask array chunked as Q along the batch, head
        and sequence axes (bidirectional: a tree of key states; causal: a chained scan
        over the sequence chunks; see the "Scaling out" guide).
    K : array-like of shape (..., L_k, d)
        Keys.
    V : array-like of shape (..., L_k, d_v)
        Values.
    n_components : int, default=256
        Number of random projections m (ignored when ``projection`` is an array).
    kernel : {"softmax"}, default="softmax"
        The kernel the features estimate: ``exp(scale q·k)``.
    estimator : {"positive", "hyperbolic", "trig", "optimal", "saderf", \
            "optimal_hyperbolic"}, default="positive"
        The random-feature map (:mod:`favorkit.maps`). The fitted maps (``"optimal"``,
        ``"saderf"``, ``"optimal_hyperbolic"``) need ``causal=False`` (see above).
    activation : {"relu", "elu", "exp", "abs", "arccos0", "arccos1", "arccos2"}, callable \
            or None, default=None
        Generalized attention with this activation instead of an estimator of the softmax
        kernel (``"arccos<n>"``: the arc-cosine kernel's estimator).
    projection : str, array of shape (m, d) or None, default="orthogonal"
        A sampler name from :mod:`favorkit.sampling`, a fixed matrix, or None (activations
        only: no projection).
    causal : bool, default=False
        Query ``t`` attends to keys ``j <= t`` (needs L_q = L_k).
    scale : float or None, default=None
        Logit scale, None means ``1/sqrt(d)``.
    key_padding_mask : bool array of shape (L_k,), (..., L_k) or (B, L_k), default=None
        ``True`` = padded key, ignored in numerator and denominator (PyTorch's
        ``nn.MultiheadAttention`` convention); a shorter leading shape is broadcast over
        the trailing (head) axes. A query that sees no key gets a zero row.
    activation_epsilon : float, default=1e-3
        Added to an activation's features (the official code's ``kernel_epsilon``).
    random_state : int, RandomState, Generator or None, default=None
        Seeds the projection when ``projection`` is a name.

    Returns
    -------
    out : ndarray or dask array of shape (..., L_q, d_v)
        float32 if all inputs are float32, else float64.

    See Also
    --------
    FavorAttention : the same, with the projection drawn once in ``fit`` and kept.
    softmax_attention : the exact reference.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import favor_attention, softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(size=(3, 64, 8)) * [[[0.5]], [[0.5]], [[1.0]]]
    >>> approx = favor_attention(Q, K, V, n_components=512, random_state=0)
    >>> exact = softmax_attention(Q, K, V)
    >>> float(np.abs(approx - exact).max()) < 0.05
    True
    >>> plus2 = favor_attention(Q, K, V, n_components=512, estimator="optimal", random_state=0)
    >>> float(np.abs(plus2 - exact).max()) < 0.05
    True
    """
    d = np.shape(Q)[-1] if np.ndim(Q) else 0
    fmap = resolve_map(estimator, activation, projection)
    if projection is None:
        W = None
    else:
        if isinstance(projection, str):
            m = n_components
        else:
            m = np.shape(projection)[0] if np.ndim(projection) == 2 else n_components
        W = sampling.draw(projection, m, d, sampling.resolve_rng(random_state))
    return _attend(
        Q,
        K,
        V,
        W,
        fmap=fmap,
        causal=causal,
        scale=scale,
        key_padding_mask=key_padding_mask,
        activation_epsilon=activation_epsilon,
    )


class FavorAttention(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    r"""FAVOR attention with the random projection drawn once in ``fit`` (Performer).

    ``fit(X)`` only reads ``d = X.shape[-1]`` and draws ``projection_`` from
    ``random_state``; ``attend(Q, K, V)`` is then deterministic. The projection changes
    only when you call :meth:`redraw` (the paper redraws periodically during training;
    favorkit never does it behind your back). See :func:`favor_attention` for the maps,
    the stabilization and the shapes.

    Parameters
    ----------
    n_components : int, default=256
        Number of random projections m (the antithetic maps and ``"trig"`` use 2m
        features).
    kernel : {"softmax"}, default="softmax"
        The kernel the features estimate: ``exp(scale q·k)``.
    estimator : {"positive", "hyperbolic", "trig", "optimal", "saderf", \
            "optimal_hyperbolic"}, default="positive"
        The random-feature map (:mod:`favorkit.maps`): FAVOR+ (default), its antithetic
        (lower-variance) pair, the unstable trigonometric baseline, FAVOR++ (``"optimal"``),
        SADERF, or FAVOR++ in antithetic pairs. The fitted maps fit their parameters per call, per
        sequence and head, in bidirectional attention, and use ``causal_gerf_a_`` /
        ``causal_query_scale_`` (fitted in :meth:`fit`) in causal attention, where per-call
        statistics would leak the future.
    activation : {"relu", "elu", "exp", "abs", "arccos0", "arccos1", "arccos2"}, callable \
            or None, default=None
        The paper's generalized attention ``φ(x) = f(W x̃) + activation_epsilon`` (Eq. 5)
        with this deterministic activation, instead of an estimator of the softmax kernel;
        ``"arccos<n>"`` is the arc-cosine kernel's random-feature estimator (no epsilon,
        needs a projection), with :func:`~favorkit.kernel_attention` as exact reference.
    projection : {"orthogonal", "iid", "gaussian", "structured", "qmc", "simplex"}, array \
            of shape (n_components, d) or None, default="orthogonal"
        How the rows ω_i are drawn (:mod:`favorkit.sampling`); None means no projection
        (activations only).
    causal : bool, default=False
        Default for :meth:`attend`'s ``causal``; :meth:`transform` uses it.
    scale : float or None, default=None
        Logit scale; None means ``1/sqrt(d)``. Queries and keys are each multiplied by
        ``sqrt(scale)``.
    activation_epsilon : float, default=1e-3
        Added to an activation's features.
    random_state : int, RandomState, Generator or None, default=None
        Seeds ``fit`` and then :meth:`redraw`.

    Attributes
    ----------
    projection_ : ndarray of shape (n_components, n_features) or None
        The drawn rows ω_i (float64, before the ``sqrt(scale)``).
    scale_ : float
        The logit scale in use.
    causal_gerf_a_ : float
        FAVOR++/SADERF parameter ``A <= 0`` fitted in :meth:`fit` from the data passed there,
        for causal attention (0, i.e. FAVOR+, for the other estimators; bidirectional
        attention fits its own per call).
    causal_query_scale_ : ndarray of shape (n_features,)
        SADERF's ``Ψ`` fitted in :meth:`fit` (queries times Ψ, keys times Ψ⁻¹), for causal
        attention (ones for the other estimators).
    n_features_in_ : int
        The dimension d seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Names seen in ``fit`` (only for 2-D X with string column names).

    See Also
    --------
    favor_attention : the functional form.
    softmax_attention : exact attention, the reference.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import FavorAttention, softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(size=(3, 2, 64, 8))  # (batch=2, L=64, d=8) each
    >>> Q, K = Q / 2, K / 2
    >>> att = FavorAttention(n_components=512, causal=True, random_state=0).fit(Q)
    >>> out = att.attend(Q, K, V)
    >>> out.shape
    (2, 64, 8)
    >>> float(np.abs(out - softmax_attention(Q, K, V, causal=True)).max()) < 0.2
    True
    """

    _parameter_constraints: dict = dict(PARAMETERS)

    # Set by fit (declared for type checkers; an unfitted estimator has none of them).
    projection_: NDArray[np.float64] | None
    scale_: float
    causal_gerf_a_: float
    causal_query_scale_: NDArray[np.float64]
    n_features_in_: int
    feature_names_in_: NDArray[np.object_]

    def __init__(
        self,
        n_components: int = 256,
        *,
        kernel: Literal["softmax"] = "softmax",
        estimator: AttentionEstimator = "positive",
        activation: ActivationName | Callable[[FloatArray], FloatArray] | None = None,
        projection: ProjectionName | ArrayLike | None = "orthogonal",
        causal: bool = False,
        scale: float | None = None,
        activation_epsilon: float = 1e-3,
        random_state: RandomStateLike = None,
    ) -> None:
        self.n_components = n_components
        self.kernel = kernel
        self.estimator = estimator
        self.activation = activation
        self.projection = projection
        self.causal = causal
        self.scale = scale
        self.activation_epsilon = activation_epsilon
        self.random_state = random_state

    def _map(self):
        return resolve_map(self.estimator, self.activation, self.projection)

    def _validate_X(self, X: Any, reset: bool) -> NDArray[Any]:
        """2-D X goes through sklearn's validation (feature names, n_features_in_); a
        batched array-like (..., L, d), as :meth:`attend` takes, is checked here."""
        ndim = getattr(X, "ndim", None)
        if ndim is None and isinstance(X, (list, tuple)):
            ndim = np.ndim(X)
        dask = is_dask_array(X)
        if not (ndim is not None and ndim > 2) and not dask:
            return validate_data(self, X, dtype=[np.float64, np.float32], reset=reset)
        X = check_array(X, "X") if dask else as_array(X, "X")  # a dask array stays lazy
        if reset:
            self.n_features_in_ = X.shape[-1]
        elif X.shape[-1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[-1]} features, but FavorAttention is expecting "
                f"{self.n_features_in_} features as input."
            )
        return X

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(
        self, X: ArrayLike, y: ArrayLike | None = None, *, keys: ArrayLike | None = None
    ) -> Self:
        """Draw the projection and, for causal FAVOR++/SADERF, fit ``A`` (and ``Ψ``).

        For the maps without fitted parameters, and for activations, only ``d = X.shape[-1]`` is
        used. For the fitted maps (``"optimal"``, ``"saderf"``, ``"optimal_hyperbolic"``)
        the rows of X (all leading axes pooled) are the queries and those of ``keys``
        (default X) the keys from which ``causal_gerf_a_`` and ``causal_query_scale_`` are
        fitted (the map's own fit, as in :func:`favor_attention`); causal attention uses
        them, because per-call statistics over a sequence would let future positions change
        earlier outputs. Bidirectional attention ignores them and fits its own per call, per
        sequence and head.

        Parameters
        ----------
        X : array-like of shape (..., L, d)
            Queries (or self-attention inputs): representative data for causal
            FAVOR++/SADERF; otherwise only the last dimension is read.
        y : array-like or None, default=None
            Ignored.
        keys : array-like of shape (..., L_k, d), default=None
            Representative keys for causal FAVOR++/SADERF; None means X.

        Returns
        -------
        self : FavorAttention

        Examples
        --------
        >>> import numpy as np
        >>> from favorkit import FavorAttention
        >>> X = np.random.default_rng(0).normal(size=(2, 128, 16))
        >>> att = FavorAttention(64, estimator="optimal", causal=True, random_state=0).fit(X)
        >>> bool(att.causal_gerf_a_ < 0)
        True
        >>> att.attend(X, X, X).shape
        (2, 128, 16)
        """
        X = self._validate_X(X, reset=True)
        d = X.shape[-1]
        fmap = self._map()
        self._rng = sampling.resolve_rng(self.random_state)
        self.scale_ = resolve_scale(self.scale, d)
        params = MapParams.identity(d)
        if fmap.fitted:
            Y = X if keys is None else self._validate_X(keys, reset=False)
            # One pass over the rows (dask arrays: over their chunks, both together).
            sums = column_sums(X.reshape(-1, d), Y.reshape(-1, d), names=("X", "keys"))
            params = fmap.fit(*(s.moments(self.scale_) for s in sums))
        self.causal_gerf_a_, self.causal_query_scale_ = params.a, params.psi
        self._draw()
        return self

    def _draw(self):
        if self.projection is None:
            self.projection_ = None
        else:
            self.projection_ = sampling.draw(
                self.projection, self.n_components, self.n_features_in_, self._rng
            )

    def redraw(self) -> Self:
        """Draw a new projection from the estimator's random stream (same shape).

        Successive calls continue the stream that ``fit`` started, so a fixed
        ``random_state`` gives a reproducible sequence of projections.

        Returns
        -------
        self : FavorAttention

        Examples
        --------
        >>> import numpy as np
        >>> from favorkit import FavorAttention
        >>> att = FavorAttention(n_components=4, random_state=0).fit(np.zeros((1, 3)))
        >>> W0 = att.projection_.copy()
        >>> bool(np.array_equal(W0, att.redraw().projection_))
        False
        """
        check_is_fitted(self)
        self._draw()
        return self

    @validate_params({**ARRAYS, "causal": ["boolean", None]}, prefer_skip_nested_validation=True)
    def attend(
        self,
        Q: ArrayLike,
        K: ArrayLike,
        V: ArrayLike,
        *,
        causal: bool | None = None,
        key_padding_mask: ArrayLike | None = None,
    ) -> FloatArray:
        """Attention of queries Q over keys K with values V.

        Parameters
        ----------
        Q : array-like or dask array of shape (..., L_q, d)
            Dask arrays (any of Q, K, V and the mask) give a lazy dask array, as in
            :func:`favor_attention`.
        K : array-like of shape (..., L_k, d)
        V : array-like of shape (..., L_k, d_v)
        causal : bool or None, default=None
            None uses the estimator's ``causal``.
        key_padding_mask : bool array of shape (L_k,), (..., L_k) or (B, L_k), default=None
            ``True`` = padded key (ignored).

        Returns
        -------
        out : ndarray or dask array of shape (..., L_q, d_v)
        """
        check_is_fitted(self)
        self._check_d(Q)
        return _attend(
            Q,
            K,
            V,
            self.projection_,
            fmap=self._map(),
            causal=self.causal if causal is None else bool(causal),
            scale=self.scale_,
            key_padding_mask=key_padding_mask,
            activation_epsilon=self.activation_epsilon,
            fitted_gerf=self._fitted_gerf(),
        )

    def _fitted_gerf(self):
        return MapParams(
            float(self.causal_gerf_a_), np.asarray(self.causal_query_scale_, dtype=np.float64)
        )

    def _check_d(self, Q):
        d = np.shape(Q)[-1] if np.ndim(Q) else None
        if d != self.n_features_in_:
            raise ValueError(
                f"Q has {d} features, but FavorAttention was fitted with d={self.n_features_in_}."
            )

    def transform(self, X: ArrayLike) -> FloatArray:
        """Self-attention ``attend(X, X, X)``, so the estimator can sit in a Pipeline.

        Parameters
        ----------
        X : array-like of shape (..., L, d)

        Returns
        -------
        X_new : ndarray of shape (..., L, d)
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        return self.attend(X, X, X)

    @validate_params(
        {
            "Q": ARRAYS["Q"],
            "K": ARRAYS["K"],
            "causal": ["boolean", None],
            "key_padding_mask": ARRAYS["key_padding_mask"],
        },
        prefer_skip_nested_validation=True,
    )
    def attention_matrix(
        self,
        Q: ArrayLike,
        K: ArrayLike,
        *,
        causal: bool | None = None,
        key_padding_mask: ArrayLike | None = None,
    ) -> NDArray[np.float64]:
        """The normalized attention matrix ``D^{-1} φ(Q̃) φ(K̃)^T`` (small L; diagnostics).

        Computed densely in float64 from the same features as :meth:`attend`, so
        ``attention_matrix(Q, K) @ V`` equals ``attend(Q, K, V)`` to rounding.

        Parameters
        ----------
        Q : array-like of shape (..., L_q, d)
        K : array-like of shape (..., L_k, d)
        causal : bool or None, default=None
        key_padding_mask : bool array, default=None

        Returns
        -------
        A : ndarray of shape (..., L_q, L_k), float64
            Rows sum to 1 (rows with no visible key, or a non-positive normalizer, are 0).
        """
        check_is_fitted(self)
        self._check_d(Q)
        causal = self.causal if causal is None else bool(causal)
        V = np.zeros((*np.shape(K)[:-1], 1))
        Qf, Kf, _, mask, batch, _ = prepare(Q, K, V, key_padding_mask, causal)
        Qf, Kf = Qf.astype(np.float64), Kf.astype(np.float64)
        for X, name in ((Qf, "Q"), (Kf, "K")):
            check_finite(X, name)
        n_seq, Lq, _ = Qf.shape
        Lk = Kf.shape[1]
        A = np.zeros((n_seq, Lq, Lk))
        f64 = np.dtype(np.float64)
        fmap = self._map()
        if fmap.exponential:
            features = PositiveFeatures(fmap, self.projection_, self.scale_, f64)
            set_gerf_parameters(features, Qf, Kf, mask, causal, self._fitted_gerf())
            for n in range(n_seq):
                zk, rt = features.keys(Kf[n], seq=n)
                if mask is not None:
                    rt[mask[n]] = -np.inf
                positive_attention_rows(features.queries(Qf[n], seq=n), zk, rt, causal, A[n])
            return A.reshape(*batch, Lq, Lk)
        signed = SignedFeatures(fmap, self.projection_, self.scale_, self.activation_epsilon, f64)
        n_bad = 0
        for n in range(n_seq):
            fq = signed(Qf[n], keys=False, seq=n)[0]
            fk, s = signed(Kf[n], keys=True, seq=n)
            mask_keys(fk, s, None if mask is None else mask[n])
            if not np.isfinite(s).any():
                continue
            if causal:
                # Each row relative to its own causal reference (the prefix maximum of s),
                # so that no later key can push an earlier row into underflow.
                ref = np.maximum.accumulate(s)[:, None]
                logw = np.where(np.tri(Lq, Lk, dtype=bool), s[None, :] - ref, -np.inf)
            else:
                logw = (s - s.max())[None, :]
            with np.errstate(under="ignore", invalid="ignore"):
                a = (fq @ fk.T) * np.exp(logw)
            a[~np.isfinite(a)] = 0.0  # rows with no visible key yet: -inf - (-inf)
            den = a.sum(axis=1)
            valid = np.isfinite(s)[None, :]
            if causal:
                valid = valid & np.tril(np.ones((Lq, Lk), dtype=bool))
            seen = valid.any(axis=1)
            ok = (den > 0) & np.isfinite(den)
            with np.errstate(over="ignore", invalid="ignore"):
                a[ok] /= den[ok, None]
            ok &= np.isfinite(a).all(axis=1)
            n_bad += int((seen & ~ok).sum())
            a[~ok] = 0.0
            A[n] = a
        warn_nonpositive(n_bad, n_seq * Lq, fmap)
        return A.reshape(*batch, Lq, Lk)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
