"""Exact attention, the reference for FAVOR: softmax attention with log-sum-exp in float64,
and attention with any other non-negative kernel, in blocks of query rows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from favorkit._parallel import map_row_blocks
from favorkit._typing import ArrayLike, FloatArray, NDArray
from favorkit._validation import validate_params
from favorkit.attention._engine import current_tuning
from favorkit.attention._inputs import (
    ARRAYS,
    PARAMETERS,
    check_finite,
    max_abs,
    prepare,
    resolve_scale,
)
from favorkit.kernels import arccos_kernel

__all__ = ["kernel_attention", "softmax_attention"]


_ROWS_BLOCK = 64  # query rows per block of softmax_attention_rows (32 to 128 measured alike)
_CONVERT_BYTES = 1 << 25  # float64 copies of keys and values it holds at once


def _over_query_blocks(n_seq, Lq, Lk, causal, body):
    """Run ``body(n, lo, hi, kend)`` for every block of query rows ``lo:hi`` of every
    sequence ``n`` on the worker threads; ``kend`` is the number of keys the block can see
    (causal: none after its last query). Blocks hold a few MiB of logits (the tuning's
    ``exact_block_elems``), whatever L is."""
    block = max(1, min(Lq, current_tuning().exact_block_elems // Lk))
    nb = -(-Lq // block)

    def task(rows):
        n, b = divmod(rows.start, nb)
        lo, hi = b * block, min(Lq, (b + 1) * block)
        body(n, lo, hi, min(Lk, hi) if causal else Lk)

    map_row_blocks(task, n_seq * nb, block_rows=1)


def softmax_rows(q, k, v, scale, positions=None, hidden=None, k_max=None):
    """Exact softmax attention of the query rows ``q`` over the keys ``k`` and values ``v``
    in float64, with log-sum-exp per row: the core of :func:`softmax_attention` and of
    :func:`softmax_attention_rows`.

    ``positions`` (causal): row ``i`` sees the keys ``j <= positions[i]``; ``hidden``: keys
    no row sees; ``k_max``: a bound on ``|k|``'s entries (None: taken here). A row that
    sees no key gets 0. The inputs must be finite. Keys and values in float64 are used as
    they are (callers with many blocks of one sequence convert them once).
    """
    q64 = q.astype(np.float64)
    k64 = k.astype(np.float64, copy=False)
    k_max = max_abs(k64) if k_max is None else k_max
    # |scale q·k| <= (scale max|q|) (d max|k|). Where a factor could pass 2^500 the
    # product could overflow float64: the logits are then computed at a power-of-two
    # scale 2^-shift (exact, but for underflow of terms that cannot matter) and only
    # their differences to the row maximum are scaled back. Those overflow to -inf,
    # weight 0, which is what they are.
    mantissa, e_scale = math.frexp(scale)
    s1 = max(0, e_scale + math.frexp(max_abs(q64))[1] - 500)
    s2 = max(0, math.frexp(float(q.shape[1]))[1] + math.frexp(k_max)[1] - 500)
    shift = s1 + s2
    if shift:
        logits = np.ldexp(q64 * mantissa, e_scale - s1) @ np.ldexp(k64, -s2).T
    else:
        logits = (q64 * scale) @ k64.T
    if positions is not None:
        logits[np.arange(k.shape[0])[None, :] > positions[:, None]] = -np.inf
    if hidden is not None:
        logits[:, hidden] = -np.inf
    top = logits.max(axis=1, keepdims=True)
    empty = ~np.isfinite(top[:, 0])
    top[empty] = 0.0
    logits -= top
    if shift:
        with np.errstate(over="ignore"):
            logits = np.ldexp(logits, shift)
    with np.errstate(under="ignore"):
        np.exp(logits, out=logits)
    den = logits.sum(axis=1)
    res = logits @ v.astype(np.float64, copy=False)
    den[empty] = 1.0
    res /= den[:, None]
    res[empty] = 0.0
    return res


def softmax_attention_rows(Qf, Kf, Vf, mask, causal, scale, seqs, rows):
    """Exact softmax attention (:func:`softmax_rows`) for the query rows ``(seqs, rows)``
    of checked (N, L, d) arrays only, in blocks on the worker threads: the reference of
    :func:`favorkit.accuracy.measure_attention_error`. ``(seqs, rows)`` sorted by sequence;
    returns (len(rows), d_v) float64.

    The keys and values of a few sequences at a time (``_CONVERT_BYTES``) are converted to
    float64 once, not per block: converted per block they cost more than the logits.
    """
    Lk = Kf.shape[1]
    out = np.empty((rows.size, Vf.shape[2]))
    block = max(1, min(_ROWS_BLOCK, current_tuning().exact_block_elems // Lk))
    per_seq = Lk * (Kf.shape[2] + Vf.shape[2]) * 8
    used, starts = np.unique(seqs, return_index=True)
    bounds = np.append(starts, rows.size)
    group = max(1, _CONVERT_BYTES // per_seq)
    for g in range(0, used.size, group):
        converted = {}
        tasks = []
        for i in range(g, min(g + group, used.size)):
            n = int(used[i])
            k64 = Kf[n].astype(np.float64)
            converted[n] = (k64, Vf[n].astype(np.float64), max_abs(k64))
            lo, hi = bounds[i], bounds[i + 1]
            tasks += [(n, a, min(a + block, hi)) for a in range(lo, hi, block)]

        def task(chunk, tasks=tasks, converted=converted):
            n, lo, hi = tasks[chunk.start]
            k64, v64, k_max = converted[n]
            positions = rows[lo:hi] if causal else None
            kend = int(positions.max()) + 1 if causal else Lk
            hidden = None if mask is None else mask[n, :kend]
            q = Qf[n, rows[lo:hi]]
            out[lo:hi] = softmax_rows(q, k64[:kend], v64[:kend], scale, positions, hidden, k_max)

        map_row_blocks(task, len(tasks), block_rows=1)
    return out


@validate_params(
    {**ARRAYS, "causal": PARAMETERS["causal"], "scale": PARAMETERS["scale"]},
    prefer_skip_nested_validation=True,
)
def softmax_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: ArrayLike | None = None,
) -> FloatArray:
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
    Qf, Kf, Vf, mask, batch, dtype = prepare(Q, K, V, key_padding_mask, causal)
    n_seq, Lq, d = Qf.shape
    Lk, dv = Vf.shape[1:]
    scale = resolve_scale(scale, d)
    out = np.empty((n_seq, Lq, dv), dtype=dtype)

    def task(n, lo, hi, kend):
        q = Qf[n, lo:hi]
        check_finite(q, "Q")
        if lo == 0:  # once per sequence; an error in any task aborts the whole call
            check_finite(Kf[n], "K")
            check_finite(Vf[n], "V")
        positions = np.arange(lo, hi) if causal else None
        hidden = None if mask is None else mask[n, :kend]
        out[n, lo:hi] = softmax_rows(q, Kf[n, :kend], Vf[n, :kend], scale, positions, hidden)

    _over_query_blocks(n_seq, Lq, Lk, causal, task)
    return out.reshape(*batch, Lq, dv)


@validate_params(
    {**ARRAYS, "causal": PARAMETERS["causal"]},
    prefer_skip_nested_validation=True,
)
def kernel_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    kernel: Literal["arccos0", "arccos1", "arccos2"]
    | Callable[[NDArray[np.float64], NDArray[np.float64]], ArrayLike] = "arccos1",
    *,
    causal: bool = False,
    key_padding_mask: ArrayLike | None = None,
) -> FloatArray:
    """Exact attention with a non-negative kernel: ``out_i = Σ_j k(q_i, k_j) v_j / Σ_j k(q_i,
    k_j)`` — the reference of generalized attention (Choromanski et al. 2021, Eq. 5).

    Computed in float64 in blocks of query rows (memory a few MiB beyond the inputs).

    Parameters
    ----------
    Q : array-like of shape (..., L_q, d)
    K : array-like of shape (..., L_k, d)
    V : array-like of shape (..., L_k, d_v)
    kernel : {"arccos0", "arccos1", "arccos2"} or callable, default="arccos1"
        The arc-cosine kernel of that degree (:func:`favorkit.kernels.arccos_kernel`,
        estimated by ``FavorAttention(activation="arccos<n>")``), or a callable
        ``k(X, Y) -> (len(X), len(Y))`` array of non-negative values. The arc-cosine
        kernels are homogeneous, so FAVOR's scaling of q and k by ``d^{-1/4}`` does not
        change their attention.
    causal : bool, default=False
        Query ``t`` attends to keys ``j <= t`` only.
    key_padding_mask : bool array, default=None
        As in :func:`softmax_attention` (True = padded).

    Returns
    -------
    out : ndarray of shape (..., L_q, d_v)
        float32 if all inputs are float32, else float64. A query whose weights are all 0
        (it sees no key, or the kernel is 0 on every key it sees) gets a zero row.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import FavorAttention, kernel_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(size=(3, 64, 8))
    >>> exact = kernel_attention(Q, K, V, "arccos1")
    >>> approx = FavorAttention(4096, activation="arccos1", random_state=0).fit(Q).attend(Q, K, V)
    >>> bool(np.linalg.norm(approx - exact) / np.linalg.norm(exact) < 0.1)
    True
    """
    if isinstance(kernel, str):
        if kernel not in ("arccos0", "arccos1", "arccos2"):
            raise ValueError(
                f'kernel must be "arccos0", "arccos1", "arccos2" or a callable, got {kernel!r}.'
            )
        degree = int(kernel[-1])

        def weights_of(q, k):
            return arccos_kernel(q, k, degree)

    elif callable(kernel):
        weights_of = kernel
    else:
        raise ValueError(f"kernel must be a name or a callable, got {kernel!r}.")
    Qf, Kf, Vf, mask, batch, dtype = prepare(Q, K, V, key_padding_mask, causal)
    for X, name in ((Qf, "Q"), (Kf, "K"), (Vf, "V")):
        check_finite(X, name)
    n_seq, Lq, _ = Qf.shape
    Lk, dv = Vf.shape[1:]
    out = np.empty((n_seq, Lq, dv), dtype=dtype)

    def task(n, lo, hi, kend):
        w = np.asarray(
            weights_of(Qf[n, lo:hi].astype(np.float64), Kf[n, :kend].astype(np.float64)),
            dtype=np.float64,
        )
        if w.shape != (hi - lo, kend) or not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError(
                "The kernel must give finite non-negative weights of shape (len(X), len(Y)); "
                f"got shape {w.shape}."
            )
        if causal:
            w[np.arange(kend)[None, :] > np.arange(lo, hi)[:, None]] = 0.0
        if mask is not None:
            w[:, mask[n, :kend]] = 0.0
        den = w.sum(axis=1)
        res = w @ Vf[n, :kend].astype(np.float64)
        empty = ~(den > 0)
        res /= np.where(empty, 1.0, den)[:, None]
        res[empty] = 0.0
        out[n, lo:hi] = res

    _over_query_blocks(n_seq, Lq, Lk, causal, task)
    return out.reshape(*batch, Lq, dv)
