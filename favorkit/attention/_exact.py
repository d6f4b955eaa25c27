"""Exact softmax attention, the reference for FAVOR: log-sum-exp in float64, in blocks."""

from __future__ import annotations

import math

import numpy as np

from favorkit._parallel import map_row_blocks
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

__all__ = ["softmax_attention"]


@validate_params(
    {**ARRAYS, "causal": PARAMETERS["causal"], "scale": PARAMETERS["scale"]},
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
    Qf, Kf, Vf, mask, batch, dtype = prepare(Q, K, V, key_padding_mask, causal)
    n_seq, Lq, d = Qf.shape
    Lk, dv = Vf.shape[1:]
    scale = resolve_scale(scale, d)
    out = np.empty((n_seq, Lq, dv), dtype=dtype)
    block = max(1, min(Lq, current_tuning().exact_block_elems // Lk))
    nb = -(-Lq // block)

    def task(rows):
        n, b = divmod(rows.start, nb)
        lo, hi = b * block, min(Lq, (b + 1) * block)
        kend = min(Lk, hi) if causal else Lk  # keys after the block's last query are unseen
        q = Qf[n, lo:hi]
        k = Kf[n, :kend]
        v = Vf[n, :kend]
        check_finite(q, "Q")
        if b == 0:  # once per sequence; an error in any task aborts the whole call
            check_finite(Kf[n], "K")
            check_finite(Vf[n], "V")
        q64, k64 = q.astype(np.float64), k.astype(np.float64)
        # |scale q·k| <= (scale max|q|) (d max|k|). Where a factor could pass 2^500 the
        # product could overflow float64: the logits are then computed at a power-of-two
        # scale 2^-shift (exact, but for underflow of terms that cannot matter) and only
        # their differences to the row maximum are scaled back. Those overflow to -inf,
        # weight 0, which is what they are.
        mantissa, e_scale = math.frexp(scale)
        s1 = max(0, e_scale + math.frexp(max_abs(q64))[1] - 500)
        s2 = max(0, math.frexp(float(q.shape[1]))[1] + math.frexp(max_abs(k64))[1] - 500)
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
