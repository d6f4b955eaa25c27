"""FAVOR attention (Performer) and exact softmax attention, in O(L) memory on CPU.

Three public names:

* :func:`softmax_attention`: the exact reference ``softmax(scale Q K^T) V`` with
  log-sum-exp and float64 accumulation, in query row blocks (L = 32 768 fits in memory).
* :func:`favor_attention`: the functional core of linear attention with random features
  (Choromanski et al. 2021, Eq. 4 and Sec. 2.7): bidirectional ``φ(Q) (φ(K)^T [V 1])``, or causal
  prefix sums of ``φ(k_j) [v_j 1]^T``, never forming an L x L matrix, an L x m x d tensor or
  even a whole L x m feature matrix.
* :class:`FavorAttention`: the sklearn-style estimator that draws the projection in ``fit``
  and keeps it (``redraw()`` draws a new one).

How stabilization works, and why it cannot leak. Exponential features overflow unless a
maximum is subtracted somewhere, and subtracting one that depends on future keys leaks
them into earlier outputs (the official code does, through its epsilon).

* Positive estimators (FAVOR+, hyperbolic, FAVOR++, SADERF) work in log space with one
  reference per feature column: a key's feature ``i`` is ``exp(z_ji - c_i)`` with ``c_i``
  the largest log-feature of column ``i`` over the keys seen, and a query's weights are
  ``exp(z_ti + c_i - M_t)`` with ``M_t`` the row's largest ``z_ti + c_i``, a per-row
  constant that cancels in its normalization. The largest term of every row is exactly 1,
  so its normalizer is >= 1: nothing underflows, however large and opposed the queries
  and keys, and the output is a convex combination of the visible value rows. Values are
  scaled per column by powers of two (exact) so that sums cannot overflow. In causal mode
  the references depend on earlier keys only (:func:`favorkit._kernels.attention.log_causal_block`).
* Signed features (the trigonometric estimator, generalized kernels) keep a bounded part
  and a float64 log-constant per key, summed relative to a running reference; a row whose
  normalizer is not positive, or whose output is not finite, is set to 0 and counted in
  a :class:`~favorkit.NumericalWarning`.

No epsilon is ever added after a stabilizer, so no key can change another key's weight. A
padded key adds nothing to the numerator or the denominator. In the causal kernels a row's
references and its code path depend on earlier positions only, so a future key changes no
earlier output by even one ulp.

FAVOR++ and SADERF (Likhosherstov et al. 2022, 2023) fit ``A*`` (and ``Ψ``) from statistics of
the queries and keys. Bidirectional attention fits them per call, per sequence and head
(as the official ``expplus``); the features then go through the same stabilization as
FAVOR+. Causal attention cannot: ``A*`` over the whole sequence depends on future keys,
so every earlier output would change with them. It uses parameters fitted once in
:meth:`FavorAttention.fit` instead, and the functional form refuses causal FAVOR++/SADERF.
"""

from __future__ import annotations

import math
import numbers
import threading

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from favorkit import sampling
from favorkit._kernels.attention import (
    causal_block,
    column_moments,
    key_column_max,
    log_causal_block,
    log_causal_stage,
    merge_log_states,
    merge_normalize,
    normalize_rows,
    scaled_values,
    shift_keys,
    shift_queries,
    value_exponents,
)
from favorkit._kernels.fastexp import exp_inplace
from favorkit._kernels.feature_maps import cos_sin_rows, plus_minus_shift_rows
from favorkit._parallel import map_row_blocks
from favorkit._validation import (
    Interval,
    StrOptions,
    _fit_context,
    check_is_fitted,
    validate_data,
    validate_params,
)
from favorkit._warnings import warn
from favorkit.features import gerf_parameters

__all__ = ["FavorAttention", "favor_attention", "softmax_attention"]

ESTIMATORS = ("positive", "hyperbolic", "trig", "optimal", "saderf")
# Estimators whose features are exponentials: computed in log space (_favor_positive).
POSITIVE = ("positive", "hyperbolic", "optimal", "saderf")
# Generalized exponential (GERF) estimators whose parameters A (and Ψ) are fitted from the
# statistics of the queries and keys (spec/beyond.md §2.3, §3.3).
GERF = ("optimal", "saderf")
GENERALIZED = ("relu", "elu", "exp", "abs")

# Parameter constraints shared by FavorAttention and favor_attention (one definition, so
# both reject the same values with the same messages), and those of the arrays.
_PARAMETERS = {
    "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
    "kernel": [StrOptions({"softmax", *GENERALIZED}), callable],
    "estimator": [StrOptions(set(ESTIMATORS))],
    "projection": [StrOptions(set(sampling.PROJECTIONS)), "array-like", None],
    "causal": ["boolean"],
    "scale": [Interval(numbers.Real, 0.0, None, closed="neither"), None],
    "kernel_epsilon": [Interval(numbers.Real, 0.0, None, closed="left")],
    "random_state": ["random_state", np.random.Generator],
}
_ARRAYS = {
    "Q": ["array-like"],
    "K": ["array-like"],
    "V": ["array-like"],
    "key_padding_mask": ["array-like", None],
}

# Rows per task (one task = one block of one sequence, on one thread with one BLAS thread).
# Measured on the 2-core development machine at L = 16 384 (d = 64, m = 256, best of 15):
# bidirectional 512: 28 ms, 1024: 24, 2048: 22, 4096: 24; causal 512: 30, 1024: 27.5,
# 2048: 29, 4096: 32 (smaller causal blocks fill the pipeline sooner).
BLOCK_ROWS = 2048
CAUSAL_BLOCK_ROWS = 1024
# Causal chunk length: the masked dense block is CHUNK x CHUNK. Measured on the 2-core
# development machine (d = 64, m = 256, one 4096-row block, one thread): 16: 5.5 ms,
# 24: 5.6, 32: 5.1, 48: 5.9, 64: 7.6 (smaller chunks waste GEMM efficiency, larger ones
# add O(C) intra-chunk flops per row).
CHUNK = 32
# Rows of a bidirectional key block summed in the GEMM dtype before adding into the
# float64 state (keeps float32 accumulation error at ~sqrt(1024) ulp).
KEY_SUBBLOCK = 1024
# Largest gap between a row's causal reference (the largest key log-constant up to it) and
# the reference carried from the previous chunks, on the causal kernel's fast path: key
# weights relative to the carried reference are at most e^gap, so float32 sums of
# e^20 (5e8) x m x |v| stay far from overflow (3e38); larger gaps (a new, much larger key)
# take the exact per-row path.
_THRESH = {np.dtype(np.float32): 20.0, np.dtype(np.float64): 300.0}
# The positive (log-space) causal kernel's fast path: keys at most e^thresh above the
# carried per-column references, values at most 2^bits after their per-column power-of-two
# scaling. Sums of 2^40 rows of such terms over 2^12 feature columns stay below the dtype's
# largest number: float32 2^(40 + 29 + 48 + 12) < 2^128 (e^20 < 2^29), float64
# 2^(40 + 289 + 600 + 12) < 2^1024 (e^200 < 2^289).
_LOG_THRESH = {np.dtype(np.float32): 20.0, np.dtype(np.float64): 200.0}
_VALUE_BITS = {np.dtype(np.float32): 48, np.dtype(np.float64): 600}
# Logit entries per block of the exact reference (16 MiB of float64).
_EXACT_BLOCK_ELEMS = 1 << 21


# --------------------------------------------------------------------------------------
# validation


def _as_array(X, name):
    X = np.asarray(X)
    if X.dtype.kind not in "fiu" or X.dtype.kind == "b":
        raise ValueError(f"{name} must be a real numeric array, got dtype {X.dtype}.")
    if X.ndim < 2:
        raise ValueError(
            f"{name} must have shape (..., L, d) with at least 2 dimensions, got shape {X.shape}."
        )
    return X


def _float_dtype(*arrays):
    dtype = np.result_type(*[a.dtype for a in arrays])
    if dtype == np.float32 or (dtype.kind == "f" and dtype.itemsize < 4):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _prepare(Q, K, V, key_padding_mask, causal):
    """Validate shapes, pick the dtype, flatten the batch axes: (N, L, d) views."""
    Q, K, V = _as_array(Q, "Q"), _as_array(K, "K"), _as_array(V, "V")
    batch = Q.shape[:-2]
    if K.shape[:-2] != batch or V.shape[:-2] != batch:
        raise ValueError(
            "Q, K and V must have the same batch and head axes in front of (L, d); got "
            f"shapes {Q.shape}, {K.shape} and {V.shape}."
        )
    if K.shape[-1] != Q.shape[-1]:
        raise ValueError(
            f"Q and K must have the same last dimension d, got {Q.shape[-1]} and {K.shape[-1]}."
        )
    if V.shape[-2] != K.shape[-2]:
        raise ValueError(
            f"K and V must have the same length L_k (axis -2), got {K.shape[-2]} and {V.shape[-2]}."
        )
    Lq, d = Q.shape[-2:]
    Lk, dv = V.shape[-2:]
    if min(Lq, Lk, d, dv) < 1:
        raise ValueError(f"Empty input: Q {Q.shape}, K {K.shape}, V {V.shape}.")
    if causal and Lq != Lk:
        raise ValueError(
            f"Causal attention needs as many queries as keys, got L_q={Lq} and L_k={Lk}."
        )
    dtype = _float_dtype(Q, K, V)
    n = math.prod(batch)
    Qf, Kf, Vf = (np.ascontiguousarray(X, dtype=dtype).reshape(n, *X.shape[-2:]) for X in (Q, K, V))
    mask = None
    if key_padding_mask is not None:
        mask = np.asarray(key_padding_mask)
        if mask.dtype != np.bool_:
            raise ValueError(
                "key_padding_mask must be a boolean array (True = padded key, PyTorch's "
                f"nn.MultiheadAttention convention), got dtype {mask.dtype}."
            )
        lead = mask.shape[:-1]
        if mask.ndim < 1 or mask.shape[-1] != Lk or lead != batch[: len(lead)]:
            raise ValueError(
                f"key_padding_mask has shape {mask.shape}; with K of shape {K.shape} it must "
                f"be (L_k,) = ({Lk},) or (*batch[:k], L_k), e.g. {(*batch, Lk)} or "
                f"{(*batch[:1], Lk)} (broadcast over the heads)."
            )
        # Broadcast over the trailing batch axes (the heads), not numpy's leading ones.
        full = mask.reshape(lead + (1,) * (len(batch) - len(lead)) + (Lk,))
        mask = np.ascontiguousarray(np.broadcast_to(full, (*batch, Lk))).reshape(n, Lk)
        if not mask.any():
            mask = None
    return Qf, Kf, Vf, mask, batch, dtype


def _check_finite(X, name):
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf; attention needs finite inputs.")


def _max_abs(X):
    return max(float(X.max(initial=0.0)), -float(X.min(initial=0.0)))


def _resolve_scale(scale, d):
    if scale is None:
        return 1.0 / math.sqrt(d)
    if not isinstance(scale, numbers.Real) or not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}.")
    return float(scale)


# --------------------------------------------------------------------------------------
# exact reference


@validate_params(
    {**_ARRAYS, "causal": _PARAMETERS["causal"], "scale": _PARAMETERS["scale"]},
    prefer_skip_nested_validation=True,
)
def softmax_attention(Q, K, V, *, causal=False, scale=None, key_padding_mask=None):
    """Exact softmax attention ``softmax(scale Q K^T) V``, the reference for FAVOR.

    Computed with log-sum-exp in float64 in blocks of query rows, so memory beyond the
    inputs and output is a few MiB even at L = 32 768; blocks run on
    ``numba.get_num_threads()`` threads with one BLAS thread each.

    Parameters
    ----------
    Q : array-like of shape (..., L_q, d)
        Queries; any leading batch and head axes.
    K : array-like of shape (..., L_k, d)
        Keys, with the same leading axes.
    V : array-like of shape (..., L_k, d_v)
        Values.
    causal : bool, default=False
        Query ``t`` attends to keys ``j <= t`` only (diagonal included; needs L_q = L_k).
    scale : float or None, default=None
        Multiplies ``q·k``; None means ``1/sqrt(d)``.
    key_padding_mask : bool array of shape (L_k,), (..., L_k) or (B, L_k), default=None
        ``True`` marks a padded key that is ignored (PyTorch's ``nn.MultiheadAttention``
        convention). A shorter leading shape is broadcast over the trailing (head) axes.
        A query that sees no key gets a zero row.

    Returns
    -------
    out : ndarray of shape (..., L_q, d_v)
        float32 if all inputs are float32, else float64.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(size=(3, 4, 2))
    >>> out = softmax_attention(Q, K, V, causal=True)
    >>> out.shape
    (4, 2)
    >>> bool(np.allclose(out[0], V[0]))  # the first query sees only the first key
    True
    """
    Qf, Kf, Vf, mask, batch, dtype = _prepare(Q, K, V, key_padding_mask, causal)
    n_seq, Lq, d = Qf.shape
    Lk, dv = Vf.shape[1:]
    scale = _resolve_scale(scale, d)
    out = np.empty((n_seq, Lq, dv), dtype=dtype)
    block = max(1, min(Lq, _EXACT_BLOCK_ELEMS // Lk))
    nb = -(-Lq // block)

    def task(rows):
        n, b = divmod(rows.start, nb)
        lo, hi = b * block, min(Lq, (b + 1) * block)
        kend = min(Lk, hi) if causal else Lk  # keys after the block's last query are unseen
        q = Qf[n, lo:hi]
        k = Kf[n, :kend]
        v = Vf[n, :kend]
        _check_finite(q, "Q")
        if b == 0:  # once per sequence; an error in any task aborts the whole call
            _check_finite(Kf[n], "K")
            _check_finite(Vf[n], "V")
        q64, k64 = q.astype(np.float64), k.astype(np.float64)
        # |scale q·k| <= (scale max|q|) (d max|k|). Where a factor could pass 2^500 the
        # product could overflow float64: the logits are then computed at a power-of-two
        # scale 2^-shift (exact, but for underflow of terms that cannot matter) and only
        # their differences to the row maximum are scaled back. Those overflow to -inf,
        # weight 0, which is what they are.
        mantissa, e_scale = math.frexp(scale)
        s1 = max(0, e_scale + math.frexp(_max_abs(q64))[1] - 500)
        s2 = max(0, math.frexp(float(q.shape[1]))[1] + math.frexp(_max_abs(k64))[1] - 500)
        shift = s1 + s2
        if shift:
            logits = np.ldexp(q64 * mantissa, e_scale - s1) @ np.ldexp(k64, -s2).T
        else:
            logits = (q64 * scale) @ k64.T
        if causal:
            t = np.arange(lo, hi)[:, None]
            logits[np.arange(kend)[None, :] > t] = -np.inf
        if mask is not None:
            logits[:, mask[n, :kend]] = -np.inf
        top = logits.max(axis=1, keepdims=True)
        empty = ~np.isfinite(top[:, 0])
        top[empty] = 0.0
        logits -= top
        if shift:
            with np.errstate(over="ignore"):
                logits = np.ldexp(logits, shift)
        np.exp(logits, out=logits)
        den = logits.sum(axis=1)
        res = logits @ v.astype(np.float64)
        den[empty] = 1.0
        res /= den[:, None]
        res[empty] = 0.0
        out[n, lo:hi] = res

    with np.errstate(under="ignore"):
        map_row_blocks(task, n_seq * nb, block_rows=1)
    return out.reshape(*batch, Lq, dv)


# --------------------------------------------------------------------------------------
# feature maps for attention


class _LogFeatureMap:
    """Log-features of the exponential estimators (FAVOR+, hyperbolic, FAVOR++, SADERF).

    Every feature of these maps is ``exp(z_i(x) + ρ(x))``: a per-column log-feature ``z``
    (a projection, in the data's dtype) plus a per-row constant ``ρ`` (float64). Queries
    drop their row constant (it cancels in a row's normalization); keys keep it, because
    it weighs one key against another. The engine turns them into bounded features with
    per-column references (:mod:`favorkit._kernels.attention`), so nothing here
    exponentiates.
    """

    def __init__(self, projection, estimator, scale, dtype):
        self.estimator = estimator
        self.scale = scale
        self.dtype = dtype
        self.root = math.sqrt(scale)
        # Queries and keys are each multiplied by sqrt(scale) (d^{-1/4} each, Sec. 2.2);
        # folding it into W avoids a scaled copy of the inputs.
        self.WT = np.ascontiguousarray((projection * self.root).T, dtype=dtype)
        self.projection = projection
        self.width = 2 * projection.shape[0] if estimator == "hyperbolic" else projection.shape[0]
        self.tables = None  # GERF: per-sequence tables, see set_gerf

    def set_gerf(self, params):
        """GERF tables for each sequence from its ``(A, Ψ)`` (``Ψ`` = ones for FAVOR++).

        The log-feature of ``x`` (query ``x̃ = sqrt(scale) Ψ x``, key ``x̃ = sqrt(scale)
        Ψ⁻¹ x``) is ``A|ω|² + B ω·x̃ - |x̃|²/2 + (d/4) log(1 - 4A) - ½ log m`` with
        ``B = sqrt(1 - 4A)`` (Likhosherstov et al. 2022, Eq. 7 and Sec. 3.3). The last two
        terms are the same for every query and key of a sequence, so they cancel in its
        normalization and are dropped. ``A|ω|²`` is folded into the GEMM as one extra
        input column of ones. Sequences with equal parameters share one table (causal
        mode: one for all).
        """
        W = self.projection
        w_sq = np.einsum("ij,ij->i", W, W)
        d = W.shape[1]
        cache = {}
        self.tables = []
        for a, psi in params:
            key = (float(a), psi.tobytes())
            if key not in cache:
                b = math.sqrt(1.0 - 4.0 * a)
                sides = []
                for col in (psi, 1.0 / psi):  # queries x Ψ, keys x Ψ⁻¹
                    with np.errstate(over="ignore"):
                        WT = np.empty((d + 1, W.shape[0]), dtype=self.dtype)
                        WT[:d] = (W * (self.root * b * col)).T
                        WT[d] = a * w_sq
                    if not np.isfinite(WT).all():
                        raise ValueError(
                            f"estimator={self.estimator!r}: the fitted parameters A = {a:.3g}, "
                            f"B = sqrt(1 - 4A) = {b:.3g} make the projection overflow "
                            f"{self.dtype.name} for these inputs; scale the queries and keys "
                            "down, pass float64 data, or use estimator='positive'."
                        )
                    sides.append((WT, (self.root * col) ** 2))
                cache[key] = sides
            self.tables.append(cache[key])

    def _project(self, X, seq, side):
        """``(z, weights)``: the log-feature projections of rows X and the per-coordinate
        weights of the squared norm in the row constant (``|x̃|² = Σ_l w_l x_l²``)."""
        if self.tables is not None:
            WT, weights = self.tables[seq][side]
            n, d = X.shape
            Xa = np.empty((n, d + 1), dtype=self.dtype)
            Xa[:, :d] = X
            Xa[:, d] = 1.0
            with np.errstate(over="ignore", invalid="ignore"):  # checked by the engine
                return Xa @ WT, weights
        with np.errstate(over="ignore", invalid="ignore"):
            Z = X @ self.WT
        if self.estimator == "hyperbolic":
            # [ω·x̃, -ω·x̃]: the antithetic pair exp(±ω·x̃ - |x̃|²/2) / sqrt(2m) (Lemma 2).
            F = np.empty((Z.shape[0], 2 * Z.shape[1]), dtype=self.dtype)
            plus_minus_shift_rows(Z, np.zeros(Z.shape[0], dtype=self.dtype), F)
            Z = F
        return Z, None

    def queries(self, X, seq=0):
        """Log-feature projections of query rows X, shape (n, width), in the map's dtype."""
        return self._project(X, seq, 0)[0]

    def keys(self, X, seq=0):
        """``(z, ρ)`` for key rows X: projections and float64 row constants ``-|x̃|²/2``."""
        Z, weights = self._project(X, seq, 1)
        if weights is None:
            sq = self.scale * np.einsum("ij,ij->i", X, X, dtype=np.float64)
        else:
            sq = np.einsum("ij,ij,j->i", X, X, weights, dtype=np.float64)
        if not np.isfinite(sq).all():
            raise ValueError(
                "A key's squared norm overflows float64; scale the keys down (or pass a "
                "smaller scale)."
            )
        return Z, -0.5 * sq


class _SignedFeatureMap:
    """Features of the trigonometric estimator and the generalized kernels, as
    ``(bounded features, key log-constants)`` (the stabilization of :func:`_favor_signed`)."""

    def __init__(self, projection, kernel, scale, kernel_epsilon, dtype):
        self.kernel = kernel
        self.scale = scale
        self.eps = kernel_epsilon
        self.dtype = dtype
        self.root = math.sqrt(scale)
        self.WT = (
            None
            if projection is None
            else np.ascontiguousarray((projection * self.root).T, dtype=dtype)
        )

    def __call__(self, X, *, keys, seq=0):
        """Features of rows X: ``(F, s)``, ``s`` float64 for keys (None for queries)."""
        dtype = self.dtype
        with np.errstate(over="ignore", invalid="ignore"):  # checked below, with the fix
            Z = X @ self.WT if self.WT is not None else X * dtype.type(self.root)
        n = X.shape[0]
        if self.kernel != "softmax":
            return self._generalized(Z), (np.zeros(n) if keys else None)
        # [cos(ω·x̃), sin(ω·x̃)] exp(+|x̃|²/2) / sqrt(m) (Lemma 1's trigonometric map);
        # signed features.
        if not np.isfinite(Z).all():
            raise _overflow_error(dtype)
        F = np.empty((n, 2 * Z.shape[1]), dtype=dtype)
        cos_sin_rows(Z, np.zeros(n), F)
        if not keys:
            return F, None
        s = 0.5 * self.scale * np.einsum("ij,ij->i", X, X, dtype=np.float64)
        if not np.isfinite(s).all():
            raise ValueError(
                "A key's squared norm overflows float64; scale the keys down (or pass a "
                "smaller scale)."
            )
        return F, s

    def _generalized(self, Z):
        kernel = self.kernel
        with np.errstate(over="ignore"):
            if kernel == "relu":
                F = np.maximum(Z, 0, out=Z)
            elif kernel == "elu":  # elu(z) + 1 (Katharopoulos et al. 2020)
                F = np.where(Z > 0, Z + 1, np.exp(np.minimum(Z, 0)))
            elif kernel == "exp":
                F = exp_inplace(Z)
            elif kernel == "abs":
                F = np.abs(Z, out=Z)
            else:
                F = np.asarray(kernel(Z))
                if F.shape != Z.shape:
                    raise ValueError(
                        f"The kernel callable must map an array of shape {Z.shape} to the "
                        f"same shape, got {F.shape}."
                    )
                F = F.astype(self.dtype, copy=False)
        if self.eps:
            F = F + self.dtype.type(self.eps)
        if not np.isfinite(F).all():
            raise ValueError(
                f"kernel={kernel!r} gave non-finite features ({self.dtype.name} overflow or "
                "NaN); scale the inputs down (or pass a smaller scale)."
            )
        return np.ascontiguousarray(F)


def _overflow_error(dtype):
    return ValueError(
        f"The projections W·x overflow {np.dtype(dtype).name}; scale the inputs down "
        "(or pass a smaller scale)."
    )


def _column_moments(X):
    """Column sums and sums of squares of X (float64), and its row count."""
    return (
        X.sum(axis=0, dtype=np.float64),
        np.einsum("ij,ij->j", X, X, dtype=np.float64),
        X.shape[0],
    )


def _sequence_moments(Qf, Kf, mask):
    """Per-sequence column moments of the queries and the *unpadded* keys.

    Returns ``(sum_q, sq_q, n_q, sum_k, sq_k, n_k)`` with arrays of shape (N, d) and (N,).
    One O(L d) Numba pass per sequence and side, in the calling thread: 0.15 ms for
    16 384 x 64 float32 rows, less than waking the thread pool for it (a pooled version
    measured 0.55 ms plus the wake-up). Also checks that Q and K are finite (NaN statistics
    would give NaN parameters before the usual check).
    """
    n_seq, _, d = Qf.shape
    moments = np.zeros((2, n_seq, 2, d))
    counts = np.zeros((2, n_seq))
    no_skip = np.zeros(0, dtype=bool)
    for n in range(n_seq):
        for side, (X, name) in enumerate(((Qf[n], "Q"), (Kf[n], "K"))):
            # statistics of the visible keys only
            skip = mask[n] if side == 1 and mask is not None else no_skip
            counts[side, n] = column_moments(X, skip, moments[side, n])
            if not np.isfinite(moments[side, n]).all():
                _check_finite(X, name)  # the usual error for NaN/inf (a mere overflow passes)
    (q, k) = moments
    return q[:, 0], q[:, 1], counts[0], k[:, 0], k[:, 1], counts[1]


def _gerf_parameters(moments, scale, d, estimator):
    """``(A, Ψ)`` per sequence from column moments of its (unscaled) queries and keys.

    The formulas are :func:`favorkit.features.gerf_parameters` (the transformers' ``fit``
    uses the same function), applied to the moments of ``x̃ = sqrt(scale) x``. A sequence
    without queries or visible keys gets ``A = 0``, ``Ψ = 1`` (FAVOR+).
    """
    sum_q, sq_q, n_q, sum_k, sq_k, n_k = moments
    params = []
    for n in range(len(n_q)):
        if n_q[n] == 0 or n_k[n] == 0:
            params.append((0.0, np.ones(d)))
            continue
        params.append(
            gerf_parameters(
                np.sqrt(scale) * sum_q[n] / n_q[n],
                scale * sq_q[n] / n_q[n],
                np.sqrt(scale) * sum_k[n] / n_k[n],
                scale * sq_k[n] / n_k[n],
                saderf=estimator == "saderf",
            )
        )
    return params


def _mask_keys(F, s, mask_rows):
    """Padded keys: zero feature rows and ``s = -inf`` (masks act on features)."""
    if mask_rows is not None and mask_rows.any():
        F[mask_rows] = 0.0
        s[mask_rows] = -np.inf


def _ones_column(v, dtype):
    u = np.empty((v.shape[0], v.shape[1] + 1), dtype=dtype)
    u[:, :-1] = v
    u[:, -1] = 1.0
    return u


def _merge_state(prev, block):
    """Sum of two (state, reference) pairs, relative to the larger reference."""
    if prev is None or prev[1] == -np.inf:
        return block
    if block[1] == -np.inf:
        return prev
    (S1, R1), (S2, R2) = prev, block
    R = max(R1, R2)
    return S1 * math.exp(R1 - R) + S2 * math.exp(R2 - R), R


# --------------------------------------------------------------------------------------
# FAVOR


def _run_blocks(n_seq, n_blocks, prepare, step, after=None, n_tail=0, tail=None):
    """Run ``n_blocks`` blocks of each of ``n_seq`` sequences in one pool run, each block's
    ``step`` strictly after the previous block's in the same sequence; then ``n_tail``
    further tasks.

    ``prepare(n, b)`` runs as soon as a thread takes block ``b`` of sequence ``n``, in
    parallel with anything else; ``step(n, b, prepared)`` once block ``b - 1`` of the same
    sequence has stepped; ``after(n, b, stepped)`` once the next block may go on. Blocks
    are queued block-major (the first blocks of all sequences before any second one), so
    with several sequences a block rarely waits, and every sequence goes through the same
    steps in the same order: results do not depend on the thread count. Then ``tail(j,
    wait)`` for each ``j``, where ``wait(n)`` blocks until sequence ``n``'s last step and
    returns False if a block failed. A failure anywhere releases everything waiting and
    propagates.
    """
    n_ordered = n_seq * n_blocks
    events = [threading.Event() for _ in range(n_ordered)]
    failed = []

    def wait(n):
        events[(n_blocks - 1) * n_seq + n].wait()
        return not failed

    def task(rows):
        i = rows.start
        if i >= n_ordered:
            tail(i - n_ordered, wait)
            return
        b, n = divmod(i, n_seq)
        released = False
        try:
            prepared = prepare(n, b)
            if b > 0:
                events[i - n_seq].wait()
                if failed:
                    return
            stepped = step(n, b, prepared)
            events[i].set()
            released = True
            if after is not None:
                after(n, b, stepped)
        except BaseException:
            failed.append(True)
            raise
        finally:
            if not released:  # never leave a waiting block behind
                events[i].set()

    map_row_blocks(task, n_ordered + n_tail, block_rows=1)


def _favor_signed(Qf, Kf, Vf, mask, fmap, causal):
    """FAVOR attention with signed features (trigonometric, generalized kernels) on
    flattened (N, L, d) inputs; returns (out, n_bad), n_bad the rows set to 0."""
    # read at call time (tests shrink them)
    chunk, block_rows = CHUNK, (CAUSAL_BLOCK_ROWS if causal else BLOCK_ROWS)
    n_seq, Lq, _ = Qf.shape
    Lk, dv = Vf.shape[1:]
    dtype = fmap.dtype
    e = dv + 1
    out = np.empty((n_seq, Lq, dv), dtype=dtype)
    n_bad = [0]
    bad_lock = threading.Lock()
    no_cross = np.empty((0, e), dtype=dtype)

    def count(k):
        if k:
            with bad_lock:
                n_bad[0] += k

    def rows_of(b, L):
        return b * block_rows, min(L, (b + 1) * block_rows)

    def query_block(n, lo, hi):
        q = Qf[n, lo:hi]
        _check_finite(q, "Q")
        return fmap(q, keys=False, seq=n)[0]

    def key_block(n, lo, hi):
        k = Kf[n, lo:hi]
        v = Vf[n, lo:hi]
        _check_finite(k, "K")
        _check_finite(v, "V")
        fk, s = fmap(k, keys=True, seq=n)
        _mask_keys(fk, s, None if mask is None else mask[n, lo:hi])
        return fk, s, _ones_column(v, dtype)

    if causal:
        # A pipeline: while one thread runs a block's prefix-sum kernel, another computes
        # the next block's features.
        thresh = _THRESH[dtype]
        carried = [None] * n_seq

        def features(n, b):
            lo, hi = rows_of(b, Lq)
            return (query_block(n, lo, hi), *key_block(n, lo, hi))

        def kernel(n, b, prepared):
            fq, fk, s, u = prepared
            num, ref = np.empty((fq.shape[0], e)), np.empty(fq.shape[0])
            state, R = (np.zeros((fq.shape[1], e)), -np.inf) if b == 0 else carried[n]
            R = causal_block(fq, fk, s, u, chunk, thresh, state, R, num, ref)
            carried[n] = (state, R)
            return num, ref

        def normalize(n, b, stepped):
            lo, hi = rows_of(b, Lq)
            count(merge_normalize(*stepped, no_cross, -np.inf, out[n, lo:hi]))

        _run_blocks(n_seq, -(-Lq // block_rows), features, kernel, after=normalize)
        return out, n_bad[0]

    def key_local(n, b):
        lo, hi = rows_of(b, Lk)
        fk, s, u = key_block(n, lo, hi)
        R = float(s.max())
        state = np.zeros((fk.shape[1], e))
        if R > -np.inf:
            # [V 1] weighted by the key constants relative to the block's largest, built
            # once in the GEMM dtype.
            w = np.exp(s - R).astype(dtype)
            wu = np.empty((hi - lo, e), dtype=dtype)
            np.multiply(u[:, :dv], w[:, None], out=wu[:, :dv])
            wu[:, dv] = w
            for a in range(0, hi - lo, KEY_SUBBLOCK):
                rows = slice(a, a + KEY_SUBBLOCK)
                state += fk[rows].T @ wu[rows]
        return state, R

    carried = [None] * n_seq
    S = [None] * n_seq
    nbk = -(-Lk // block_rows)

    def fold(n, b, pair):
        carried[n] = _merge_state(carried[n], pair)
        if b == nbk - 1 and carried[n][1] > -np.inf:
            S[n] = carried[n][0].astype(dtype)

    def query_task(j, wait):
        b, n = divmod(j, n_seq)
        lo, hi = rows_of(b, Lq)
        fq = query_block(n, lo, hi)
        if not wait(n):
            return
        if S[n] is None:  # every key padded: no key to attend to
            out[n, lo:hi] = 0.0
            return
        num = fq @ S[n]
        count(merge_normalize(num, np.zeros(hi - lo), no_cross, -np.inf, out[n, lo:hi]))

    _run_blocks(n_seq, nbk, key_local, fold, n_tail=n_seq * -(-Lq // block_rows), tail=query_task)
    return out, n_bad[0]


def _favor_positive(Qf, Kf, Vf, mask, fmap, causal):
    """FAVOR attention with the positive (log-space) features, on flattened (N, L, d) inputs.

    Keys and queries are turned into bounded features against per-column log-references
    (see :mod:`favorkit._kernels.attention`), so the normalizer of every row that sees a
    key is >= 1 and its output a convex combination of the visible value rows.
    """
    # read at call time (tests shrink them)
    chunk, block_rows = CHUNK, (CAUSAL_BLOCK_ROWS if causal else BLOCK_ROWS)
    thresh, bits = _LOG_THRESH[fmap.dtype], _VALUE_BITS[fmap.dtype]
    n_seq, Lq, _ = Qf.shape
    Lk, dv = Vf.shape[1:]
    dtype, r, e = fmap.dtype, fmap.width, dv + 1
    out = np.empty((n_seq, Lq, dv), dtype=dtype)

    def rows_of(b, L):
        return b * block_rows, min(L, (b + 1) * block_rows)

    def query_block(n, lo, hi):
        q = Qf[n, lo:hi]
        _check_finite(q, "Q")
        return fmap.queries(q, seq=n)

    def key_block(n, lo, hi):
        k, v = Kf[n, lo:hi], Vf[n, lo:hi]
        _check_finite(k, "K")
        _check_finite(v, "V")
        zk, rt = fmap.keys(k, seq=n)
        if mask is not None:
            rt[mask[n, lo:hi]] = -np.inf  # masks act on features: a padded key adds nothing
        return zk, rt, v

    if causal:
        carried = [None] * n_seq
        # The references each sequence's kernel left after its latest block (a snapshot):
        # a block computes its features against them while the previous block runs.
        published = [None] * n_seq
        nothing_ahead = (
            np.empty((0, r), dtype=dtype),
            np.empty((0, r), dtype=dtype),
            np.empty((0, e), dtype=dtype),
            np.empty(0, dtype=bool),
        )

        def features(n, b):
            """Projections and, against the latest published references, features."""
            lo, hi = rows_of(b, Lq)
            zq = query_block(n, lo, hi)
            zk, rt, v = key_block(n, lo, hi)
            if not (np.isfinite(zq).all() and np.isfinite(zk).all()):
                raise _overflow_error(dtype)
            guess, ahead = published[n], None
            if guess is not None:
                ahead = (
                    np.empty(zq.shape, dtype=dtype),
                    np.empty(zk.shape, dtype=dtype),
                    np.empty((hi - lo, e), dtype=dtype),
                    np.empty(hi - lo, dtype=bool),
                )
                log_causal_stage(zq, zk, rt, v, *guess, thresh, bits, *ahead)
            return zq, zk, rt, v, guess, ahead

        def kernel(n, b, prepared):
            zq, zk, rt, v, guess, ahead = prepared
            lo, hi = rows_of(b, Lq)
            if b == 0:
                state, c, kappa = np.zeros((r, e)), np.full(r, -np.inf), np.zeros(dv)
            else:
                state, c, kappa = carried[n]
            # Features computed ahead are used only if the guess was right; the kernel
            # would compute the same bits itself.
            use = guess is not None and all(map(np.array_equal, guess, (c, kappa)))
            log_causal_block(
                zq, zk, rt, v, chunk, thresh, bits, state, c, kappa, out[n, lo:hi],
                use, *(ahead if use else nothing_ahead),
            )  # fmt: skip
            carried[n] = (state, c, kappa)
            if c[0] > -np.inf:
                published[n] = (c.copy(), kappa.copy())

        _run_blocks(n_seq, -(-Lq // block_rows), features, kernel)
        return out

    def key_local(n, b):
        """One key block's (state, c, kappa), against its own column references."""
        lo, hi = rows_of(b, Lk)
        zk, rt, v = key_block(n, lo, hi)
        c = np.full(r, -np.inf)
        if not key_column_max(zk, rt, c):
            raise _overflow_error(dtype)
        kappa = np.zeros(dv)
        state = np.zeros((r, e))
        if c[0] > -np.inf:  # some key of the block is visible
            value_exponents(v, rt, bits, kappa)
            shift_keys(zk, rt, c)
            fk = exp_inplace(zk)
            u = np.empty((hi - lo, e), dtype=dtype)
            scaled_values(v, kappa, u)
            for a in range(0, hi - lo, KEY_SUBBLOCK):
                rows = slice(a, a + KEY_SUBBLOCK)
                state += fk[rows].T @ u[rows]
        return state, c, kappa

    carried = [None] * n_seq
    final = [None] * n_seq
    nbk = -(-Lk // block_rows)

    def fold(n, b, block):
        if b == 0:
            carried[n] = block
        else:
            merge_log_states(*carried[n], *block)
        if b == nbk - 1:
            state, c, kappa = carried[n]
            final[n] = (state.astype(dtype), c, kappa)

    def query_task(j, wait):
        b, n = divmod(j, n_seq)
        lo, hi = rows_of(b, Lq)
        zq = query_block(n, lo, hi)
        if not wait(n):
            return
        state, c, kappa = final[n]
        if c[0] == -np.inf:  # every key padded: no key to attend to
            out[n, lo:hi] = 0.0
            return
        if not shift_queries(zq, c):
            raise _overflow_error(dtype)
        num = exp_inplace(zq) @ state
        normalize_rows(num, kappa, out[n, lo:hi])

    _run_blocks(n_seq, nbk, key_local, fold, n_tail=n_seq * -(-Lq // block_rows), tail=query_task)
    return out


def _positive_attention_rows(zq, zk, rt, causal, out):
    """Normalized attention rows of a positive estimator from its float64 log-features.

    The same per-column references as the engine, but exact for every row: row ``t``
    references the keys it sees (all keys, or keys ``j <= t`` in causal mode), so its
    largest term is 1 and no later key can push it into underflow. O(L_q L_k m): for
    diagnostics at small L.
    """
    Lq, Lk = out.shape
    visible = rt > -np.inf
    with np.errstate(invalid="ignore"):
        Y = zk + rt[:, None]  # -inf rows for padded keys

    def weights(rows, stop):
        vis = visible[:stop]
        c = Y[:stop][vis].max(axis=0)
        F = np.zeros((stop, Y.shape[1]))
        F[vis] = np.exp(Y[:stop][vis] - c)
        y = zq[rows] + c
        W = np.exp(y - y.max(axis=-1, keepdims=True))
        a = W @ F.T
        return a / a.sum(axis=-1, keepdims=True)

    with np.errstate(under="ignore"):
        if not causal:
            if visible.any():
                out[:] = weights(slice(None), Lk)
            return
        for t in range(Lq):
            if visible[: t + 1].any():
                out[t, : t + 1] = weights(t, t + 1)


def _warn_nonpositive(n_bad, n_rows, kernel, estimator):
    if n_bad:
        what = f"estimator={estimator!r}" if kernel == "softmax" else f"kernel={kernel!r}"
        warn(
            f"{n_bad} of {n_rows} query rows had an attention normalizer that was not "
            f"positive and finite, or an output that was not finite, and were set to 0 "
            f"({what} has features of either sign or zero features, whose sums can cancel). "
            f"The positive estimators ({', '.join(repr(e) for e in POSITIVE)}) never do this."
        )


_CAUSAL_GERF = (
    "estimator={estimator!r} with causal=True needs A (and Ψ) fixed in advance: fitted from "
    "the whole sequence they would let future queries and keys change earlier outputs. Use "
    "FavorAttention(estimator={estimator!r}, causal=True).fit(X) (or .fit(X, keys=K)), which "
    "fits them once from the data passed to fit."
)


def _setup_gerf(fmap, Qf, Kf, mask, causal, fitted):
    """Give a FAVOR++/SADERF map its per-sequence parameters (no-op for other maps).

    Bidirectional: ``(A, Ψ)`` from each sequence's (each head's) own queries and unpadded
    keys, per call, as the official ``expplus`` does; every output of a sequence sees all of
    its keys anyway. Causal: statistics over the sequence would make A depend on future
    positions, so every earlier output would change when a future key does (the leak
    DESIGN.md forbids); the parameters ``fitted`` (from ``FavorAttention.fit``) are used
    instead, and without them this raises.
    """
    if not isinstance(fmap, _LogFeatureMap) or fmap.estimator not in GERF:
        return
    n_seq, _, d = Qf.shape
    if causal:
        if fitted is None:
            raise ValueError(_CAUSAL_GERF.format(estimator=fmap.estimator))
        params = [fitted] * n_seq
    else:
        moments = _sequence_moments(Qf, Kf, mask)
        params = _gerf_parameters(moments, fmap.scale, d, fmap.estimator)
    fmap.set_gerf(params)


def _attend(
    Q,
    K,
    V,
    projection,
    *,
    kernel,
    estimator,
    causal,
    scale,
    key_padding_mask,
    kernel_epsilon,
    fitted_gerf=None,
):
    Qf, Kf, Vf, mask, batch, dtype = _prepare(Q, K, V, key_padding_mask, causal)
    scale = _resolve_scale(scale, Qf.shape[2])
    with np.errstate(under="ignore"):
        if kernel == "softmax" and estimator in POSITIVE:
            fmap = _LogFeatureMap(projection, estimator, scale, dtype)
            _setup_gerf(fmap, Qf, Kf, mask, causal, fitted_gerf)
            out = _favor_positive(Qf, Kf, Vf, mask, fmap, causal)
        else:
            fmap = _SignedFeatureMap(projection, kernel, scale, kernel_epsilon, dtype)
            out, n_bad = _favor_signed(Qf, Kf, Vf, mask, fmap, causal)
            _warn_nonpositive(n_bad, Qf.shape[0] * Qf.shape[1], kernel, estimator)
    return out.reshape(*batch, Qf.shape[1], Vf.shape[2])


@validate_params({**_ARRAYS, **_PARAMETERS}, prefer_skip_nested_validation=True)
def favor_attention(
    Q,
    K,
    V,
    *,
    n_components=256,
    kernel="softmax",
    estimator="positive",
    projection="orthogonal",
    causal=False,
    scale=None,
    key_padding_mask=None,
    kernel_epsilon=1e-3,
    random_state=None,
):
    r"""FAVOR attention: linear-time attention with random features (Performer).

    With features ``φ`` (below), bidirectional attention is
    ``D^{-1} φ(Q̃) (φ(K̃)^T V)`` with ``D = diag(φ(Q̃) φ(K̃)^T 1)`` (Choromanski et al. 2021,
    Eq. 4), computed as ``φ(K̃)^T [V 1]`` and then ``φ(Q̃) (that)`` in row blocks; causal
    attention uses inclusive prefix sums of ``φ(k_j) [v_j 1]^T`` (Sec. 2.7) in a chunkwise
    Numba kernel with a float64 ``r x (d_v + 1)`` state. Queries and keys are each
    multiplied by ``sqrt(scale)`` so that ``scale`` means what it means in
    :func:`softmax_attention`.

    Estimators of the softmax kernel ``exp(q̃·k̃)`` (``kernel="softmax"``):
    ``"positive"`` (FAVOR+, Lemma 1: ``exp(ω·x - |x|²/2)``), ``"hyperbolic"`` (the
    antithetic pair ``exp(±ω·x)``, 2m features, lower variance), ``"trig"`` (the paper's
    unstable ``[cos, sin]`` baseline), ``"optimal"`` (FAVOR++, optimal positive random
    features: ``exp(A|ω|² + Bω·x - |x|²/2)`` with ``B = sqrt(1 - 4A)`` and ``A <= 0``
    minimizing the variance for this sequence's queries and keys; Likhosherstov et al.
    2022) and ``"saderf"`` (queries times a diagonal ``Ψ``, keys times ``Ψ⁻¹``, then
    FAVOR++; Likhosherstov et al. 2023). FAVOR++ and SADERF fit ``A`` (and ``Ψ``) per
    call, per sequence and head, from that head's scaled queries and unpadded keys (O(L d),
    as the official ``expplus``); they are bidirectional only here, because statistics
    over the whole sequence would let future keys change earlier outputs: causal
    FAVOR++/SADERF takes its parameters from :meth:`FavorAttention.fit`. Generalized
    kernels (Sec. 2.2): ``"relu"``, ``"elu"`` (elu + 1), ``"exp"``, ``"abs"`` or a callable
    ``f`` give ``φ(x) = f(W x̃) + kernel_epsilon`` (or ``f(x̃) + kernel_epsilon`` with
    ``projection=None``); they are not softmax approximations.

    Numerics. The positive estimators (``"positive"``, ``"hyperbolic"``, ``"optimal"``,
    ``"saderf"``) are computed in log space with one reference per feature column, so for
    any finite input every output row that sees a key is finite and inside the range of
    the value rows it sees (up to rounding): no row underflows to 0, however large the
    logits, and values up to the dtype's largest number are scaled by exact powers of two.
    The only errors are inputs whose projections ``W·x̃`` overflow the dtype or whose
    squared norms overflow float64. Signed features (``"trig"``, generalized kernels) can
    make a row's normalizer ``<= 0``; such rows, and rows whose output is not finite, are
    set to 0 and counted in a :class:`~favorkit.NumericalWarning`.

    Parameters
    ----------
    Q : array-like of shape (..., L_q, d)
        Queries, with any leading batch and head axes.
    K : array-like of shape (..., L_k, d)
        Keys.
    V : array-like of shape (..., L_k, d_v)
        Values.
    n_components : int, default=256
        Number of random projections m (ignored when ``projection`` is an array).
    kernel : {"softmax", "relu", "elu", "exp", "abs"} or callable, default="softmax"
    estimator : {"positive", "hyperbolic", "trig", "optimal", "saderf"}, default="positive"
        Only for ``kernel="softmax"``. ``"optimal"`` and ``"saderf"`` need
        ``causal=False`` (see above).
    projection : str, array of shape (m, d) or None, default="orthogonal"
        A sampler name from :mod:`favorkit.sampling`, a fixed matrix, or None (generalized
        kernels only: no projection).
    causal : bool, default=False
        Query ``t`` attends to keys ``j <= t`` (needs L_q = L_k).
    scale : float or None, default=None
        Logit scale, None means ``1/sqrt(d)``.
    key_padding_mask : bool array of shape (L_k,), (..., L_k) or (B, L_k), default=None
        ``True`` = padded key, ignored in numerator and denominator (PyTorch's
        ``nn.MultiheadAttention`` convention); a shorter leading shape is broadcast over
        the trailing (head) axes. A query that sees no key gets a zero row.
    kernel_epsilon : float, default=1e-3
        Added to generalized-kernel features (the official code's default).
    random_state : int, RandomState, Generator or None, default=None
        Seeds the projection when ``projection`` is a name.

    Returns
    -------
    out : ndarray of shape (..., L_q, d_v)
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
    if projection is None:
        if kernel == "softmax":
            raise ValueError(
                "projection=None (no random projection) is only for generalized kernels; "
                "the softmax estimators need a projection."
            )
        W = None
    else:
        if isinstance(projection, str):
            m = n_components
        else:
            m = np.shape(projection)[0] if np.ndim(projection) == 2 else n_components
        W = sampling.draw(projection, m, d, sampling._rng(random_state))
    return _attend(
        Q,
        K,
        V,
        W,
        kernel=kernel,
        estimator=estimator,
        causal=causal,
        scale=scale,
        key_padding_mask=key_padding_mask,
        kernel_epsilon=kernel_epsilon,
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
        Number of random projections m (``"hyperbolic"`` and ``"trig"`` use 2m features).
    kernel : {"softmax", "relu", "elu", "exp", "abs"} or callable, default="softmax"
        ``"softmax"`` estimates ``exp(scale q·k)``; the others are the paper's generalized
        attention ``φ(x) = f(W x̃) + kernel_epsilon`` (spec a.10).
    estimator : {"positive", "hyperbolic", "trig", "optimal", "saderf"}, default="positive"
        Softmax-kernel estimator: FAVOR+ (default), its antithetic (lower-variance) pair,
        the unstable trigonometric baseline, FAVOR++ (``"optimal"``) or SADERF. FAVOR++ and
        SADERF fit their parameters per call, per sequence and head, in bidirectional
        attention, and use ``gerf_a_`` / ``query_scale_`` (fitted in :meth:`fit`) in causal
        attention, where per-call statistics would leak the future.
    projection : {"orthogonal", "iid", "gaussian", "structured", "qmc", "simplex"}, array \
            of shape (n_components, d) or None, default="orthogonal"
        How the rows ω_i are drawn (:mod:`favorkit.sampling`); None means no projection
        (generalized kernels only).
    causal : bool, default=False
        Default for :meth:`attend`'s ``causal``; :meth:`transform` uses it.
    scale : float or None, default=None
        Logit scale; None means ``1/sqrt(d)``. Queries and keys are each multiplied by
        ``sqrt(scale)``.
    kernel_epsilon : float, default=1e-3
        Added to generalized-kernel features.
    random_state : int, RandomState, Generator or None, default=None
        Seeds ``fit`` and then :meth:`redraw`.

    Attributes
    ----------
    projection_ : ndarray of shape (n_components, n_features_in_) or None
        The drawn rows ω_i (float64, before the ``sqrt(scale)``).
    scale_ : float
        The logit scale in use.
    gerf_a_ : float
        FAVOR++/SADERF parameter ``A <= 0`` fitted in :meth:`fit` from the data passed there;
        used by causal attention only (0, i.e. FAVOR+, for the other estimators).
    query_scale_ : ndarray of shape (n_features_in_,)
        SADERF's ``Ψ`` fitted in :meth:`fit` (queries times Ψ, keys times Ψ⁻¹); used by
        causal attention only (ones for the other estimators).
    n_features_in_ : int
        The dimension d seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
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

    _parameter_constraints: dict = dict(_PARAMETERS)

    def __init__(
        self,
        n_components=256,
        *,
        kernel="softmax",
        estimator="positive",
        projection="orthogonal",
        causal=False,
        scale=None,
        kernel_epsilon=1e-3,
        random_state=None,
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.estimator = estimator
        self.projection = projection
        self.causal = causal
        self.scale = scale
        self.kernel_epsilon = kernel_epsilon
        self.random_state = random_state

    def _validate_X(self, X, reset):
        """2-D X goes through sklearn's validation (feature names, n_features_in_); a
        batched array-like (..., L, d), as :meth:`attend` takes, is checked here."""
        ndim = getattr(X, "ndim", None)
        if ndim is None and isinstance(X, (list, tuple)):
            ndim = np.ndim(X)
        if not (ndim is not None and ndim > 2):
            return validate_data(self, X, dtype=[np.float64, np.float32], reset=reset)
        X = _as_array(X, "X")
        if reset:
            self.n_features_in_ = X.shape[-1]
        elif X.shape[-1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[-1]} features, but FavorAttention is expecting "
                f"{self.n_features_in_} features as input."
            )
        return X

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, keys=None):
        """Draw the projection and, for causal FAVOR++/SADERF, fit ``A`` (and ``Ψ``).

        For ``"positive"``, ``"hyperbolic"``, ``"trig"`` and the generalized kernels only
        ``d = X.shape[-1]`` is used. For ``"optimal"`` and ``"saderf"`` the rows of X (all
        leading axes pooled) are the queries and those of ``keys`` (default X) the keys from
        which ``gerf_a_`` and ``query_scale_`` are fitted (the formulas of
        :func:`favor_attention`); causal attention uses them, because per-call statistics
        over a sequence would let future positions change earlier outputs. Bidirectional
        attention ignores them and fits its own per call, per sequence and head.

        Parameters
        ----------
        X : array-like of shape (..., L, d)
            Queries (or self-attention inputs): representative data for causal
            FAVOR++/SADERF; otherwise only the last dimension is read.
        y : None
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
        >>> bool(att.gerf_a_ < 0)
        True
        >>> att.attend(X, X, X).shape
        (2, 128, 16)
        """
        X = self._validate_X(X, reset=True)
        d = X.shape[-1]
        if self.projection is None and self.kernel == "softmax":
            raise ValueError(
                "projection=None (no random projection) is only for generalized kernels; "
                "the softmax estimators need a projection."
            )
        self._rng = sampling._rng(self.random_state)
        self.scale_ = _resolve_scale(self.scale, d)
        self.gerf_a_, self.query_scale_ = 0.0, np.ones(d)
        if self.kernel == "softmax" and self.estimator in GERF:
            Y = X if keys is None else self._validate_X(keys, reset=False)
            Xr = np.asarray(X, dtype=np.float64).reshape(-1, d)
            Yr = np.asarray(Y, dtype=np.float64).reshape(-1, d)
            _check_finite(Xr, "X")
            _check_finite(Yr, "keys")
            moments = [np.array(v)[None] for v in (*_column_moments(Xr), *_column_moments(Yr))]
            ((a, psi),) = _gerf_parameters(moments, self.scale_, d, self.estimator)
            self.gerf_a_, self.query_scale_ = a, psi
        self._draw()
        return self

    def _draw(self):
        if self.projection is None:
            self.projection_ = None
        else:
            self.projection_ = sampling.draw(
                self.projection, self.n_components, self.n_features_in_, self._rng
            )

    def redraw(self):
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

    @validate_params({**_ARRAYS, "causal": ["boolean", None]}, prefer_skip_nested_validation=True)
    def attend(self, Q, K, V, *, causal=None, key_padding_mask=None):
        """Attention of queries Q over keys K with values V.

        Parameters
        ----------
        Q : array-like of shape (..., L_q, d)
        K : array-like of shape (..., L_k, d)
        V : array-like of shape (..., L_k, d_v)
        causal : bool or None, default=None
            None uses the estimator's ``causal``.
        key_padding_mask : bool array of shape (L_k,), (..., L_k) or (B, L_k), default=None
            ``True`` = padded key (ignored).

        Returns
        -------
        out : ndarray of shape (..., L_q, d_v)
        """
        check_is_fitted(self)
        self._check_d(Q)
        return _attend(
            Q,
            K,
            V,
            self.projection_,
            kernel=self.kernel,
            estimator=self.estimator,
            causal=self.causal if causal is None else bool(causal),
            scale=self.scale_,
            key_padding_mask=key_padding_mask,
            kernel_epsilon=self.kernel_epsilon,
            fitted_gerf=self._fitted_gerf(),
        )

    def _fitted_gerf(self):
        return (float(self.gerf_a_), np.asarray(self.query_scale_, dtype=np.float64))

    def _check_d(self, Q):
        d = np.shape(Q)[-1] if np.ndim(Q) else None
        if d != self.n_features_in_:
            raise ValueError(
                f"Q has {d} features, but FavorAttention was fitted with d={self.n_features_in_}."
            )

    def transform(self, X):
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
            "Q": _ARRAYS["Q"],
            "K": _ARRAYS["K"],
            "causal": ["boolean", None],
            "key_padding_mask": _ARRAYS["key_padding_mask"],
        },
        prefer_skip_nested_validation=True,
    )
    def attention_matrix(self, Q, K, *, causal=None, key_padding_mask=None):
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
        Qf, Kf, _, mask, batch, _ = _prepare(Q, K, V, key_padding_mask, causal)
        Qf, Kf = Qf.astype(np.float64), Kf.astype(np.float64)
        for X, name in ((Qf, "Q"), (Kf, "K")):
            _check_finite(X, name)
        n_seq, Lq, _ = Qf.shape
        Lk = Kf.shape[1]
        A = np.zeros((n_seq, Lq, Lk))
        f64 = np.dtype(np.float64)
        if self.kernel == "softmax" and self.estimator in POSITIVE:
            fmap = _LogFeatureMap(self.projection_, self.estimator, self.scale_, f64)
            _setup_gerf(fmap, Qf, Kf, mask, causal, self._fitted_gerf())
            for n in range(n_seq):
                zk, rt = fmap.keys(Kf[n], seq=n)
                if mask is not None:
                    rt[mask[n]] = -np.inf
                _positive_attention_rows(fmap.queries(Qf[n], seq=n), zk, rt, causal, A[n])
            return A.reshape(*batch, Lq, Lk)
        fmap = _SignedFeatureMap(
            self.projection_, self.kernel, self.scale_, self.kernel_epsilon, f64
        )
        n_bad = 0
        for n in range(n_seq):
            fq = fmap(Qf[n], keys=False, seq=n)[0]
            fk, s = fmap(Kf[n], keys=True, seq=n)
            _mask_keys(fk, s, None if mask is None else mask[n])
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
        _warn_nonpositive(n_bad, n_seq * Lq, self.kernel, self.estimator)
        return A.reshape(*batch, Lq, Lk)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
