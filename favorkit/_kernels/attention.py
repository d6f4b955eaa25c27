"""Numba kernels for FAVOR attention: the chunkwise causal prefix sum and row normalization.

Conventions shared with :mod:`favorkit.attention` (which computes the features):

* ``fq`` (n, r): query features with their per-row constant dropped (it cancels in the
  normalization), ``fk`` (n, r): key features divided by a per-key constant ``exp(s_j)``;
  ``s`` (n,) float64 holds those log-constants (``-inf`` for a padded key, whose feature row
  is zero). The true key feature is ``exp(s_j) * fk[j]``.
* ``u`` (n, e) is ``[V 1]``: the last column carries the normalizer (spec a.9).
* A numerator row ``num[t]`` is stored relative to a reference ``ref[t]``: the true row is
  ``exp(ref[t]) * num[t]``. Any reference cancels in ``num[:, :-1] / num[:, -1]``; it only
  keeps the numbers representable.

Why the causal kernel is chunkwise: a per-position recurrence does O(r e) scalar work per
position with no reuse; splitting the sequence into chunks turns it into GEMMs (``np.dot``
calls BLAS from inside Numba): a masked dense ``C x C`` block inside the chunk plus the
carried ``r x e`` state between chunks (Katharopoulos et al. 2020, "chunkwise" form). The
exponentials of the features are done outside, by the vectorized
:func:`favorkit._kernels.fastexp.exp_inplace` (Numba's scalar libm exp is 4-7x slower);
inside the kernel only O(C) exps per chunk remain.
"""

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def causal_block(fq, fk, s, u, chunk, thresh, state, R0, num, ref):
    """Causal linear attention over one block of positions, carrying a state in and out.

    On entry ``exp(R0) * state`` is the sum over earlier positions of
    ``exp(s[j]) fk[j]^T u[j]`` (zero state and ``R0 = -inf`` for none). For every position
    ``t`` of the block, ``exp(ref[t]) * num[t]`` becomes
    ``fq[t] . (that earlier sum + sum_{j <= t} exp(s[j]) fk[j]^T u[j])`` (j in the block),
    and on return ``exp(R) * state`` is the sum over all positions so far, with ``R`` the
    returned reference (``-inf`` while every key is padded).

    Stabilization without look-ahead, exactly (DESIGN.md: "changing a future key must leave
    every earlier output unchanged, exactly"): every number row ``t`` reads, and every
    choice of how to compute it, depends on positions ``<= t`` only.

    * The state is kept in float64 relative to ``R``, the running maximum of ``s`` over
      the *previous* chunks, and rescaled to the new maximum at the end of each chunk.
    * Fast path: row ``t`` of a chunk uses ``R`` as its reference when its causal prefix
      maximum ``rr[t]`` (keys ``<= t``) exceeds ``R`` by at most ``thresh``, so no weight
      ``exp(s_j - R)``, ``j <= t``, can overflow. Then ``num[t]`` is row ``t`` of two GEMMs
      (the masked intra-chunk block and ``fq . state``); a row of a GEMM's output depends on
      that row of its left factor only, and the masked entries are exact zeros.
    * Slow path: rows with ``rr[t] > R + thresh`` (a new, much larger key; the first chunk
      of a sequence, where ``R = -inf``) are computed against their own ``rr[t]`` in a
      scalar loop over keys ``<= t``. Since ``rr`` only grows, the fast rows of a chunk are
      a prefix, and weights of keys past it are never formed (set to 0).

    An earlier version referenced every row of a chunk to the chunk's maximum; that
    cancels in exact arithmetic but let a later key of the same chunk change earlier rows
    in the last ulp.

    Parameters
    ----------
    fq, fk : (n, r) float32 or float64, C-contiguous
    s : (n,) float64
    u : (n, e) same dtype as ``fq``
    chunk : int
        Chunk length C.
    thresh : float
        Largest allowed ``rr[t] - R`` for the fast path (float32: a gap of 20 keeps the
        weights below e^20, far from overflow in the float32 GEMMs).
    state : (r, e) float64, input and output.
    R0 : float
        Reference of the incoming state.
    num : (n, e) float64, output.
    ref : (n,) float64, output.

    Returns
    -------
    R : float
    """
    n, r = fq.shape
    e = u.shape[1]
    R = R0
    s32 = np.empty((r, e), dtype=fq.dtype)  # the state in the GEMM dtype
    for i in range(r):
        for k in range(e):
            s32[i, k] = state[i, k]
    wu = np.empty((chunk, e), dtype=fq.dtype)
    inter = np.empty((chunk, e), dtype=fq.dtype)
    intra = np.empty((chunk, e), dtype=fq.dtype)
    ds = np.empty((r, e), dtype=fq.dtype)
    rr = np.empty(chunk)
    w = np.empty(chunk)
    for a in range(0, n, chunk):
        c = min(chunk, n - a)
        run = R
        for t in range(c):
            run = max(run, s[a + t])
            rr[t] = run
        rc = run
        if rc == -np.inf:  # nothing but padding so far
            for t in range(c):
                ref[a + t] = -np.inf
                for k in range(e):
                    num[a + t, k] = 0.0
            continue
        # Rows [0, fast) take the fast path (a prefix: rr is non-decreasing).
        fast = 0
        if R > -np.inf:
            lim = R + thresh
            while fast < c and rr[fast] <= lim:
                fast += 1
        g = np.dot(fq[a : a + c], fk[a : a + c].T)
        if fast > 0:
            for j in range(c):
                w[j] = math.exp(s[a + j] - R) if j < fast else 0.0
            pc = np.empty((c, c), dtype=fq.dtype)
            for t in range(c):
                for j in range(t + 1):
                    pc[t, j] = g[t, j] * w[j]
                for j in range(t + 1, c):
                    pc[t, j] = 0.0
            ic = intra[:c]
            np.dot(pc, u[a : a + c], ic)
            xc = inter[:c]
            np.dot(fq[a : a + c], s32, xc)
            for t in range(fast):
                ref[a + t] = R
                for k in range(e):
                    num[a + t, k] = ic[t, k] + xc[t, k]
        for t in range(fast, c):
            _exact_row(fq, s, u, g, state, R, a, t, rr[t], num, ref)
        # Carry the state to the end of the chunk, relative to the new running maximum
        # (after the slow path read the old one; later chunks may depend on this chunk).
        prev = math.exp(R - rc)  # 0 when R = -inf
        wc = wu[:c]
        for j in range(c):
            wj = math.exp(s[a + j] - rc)
            for k in range(e):
                wc[j, k] = u[a + j, k] * wj
        np.dot(fk[a : a + c].T, wc, ds)
        for i in range(r):
            for k in range(e):
                v = state[i, k] * prev + ds[i, k]
                state[i, k] = v
                s32[i, k] = v
        R = rc
    return R


@numba.njit(nogil=True, cache=True)
def _exact_row(fq, s, u, g, state, R, a, t, rt, num, ref):
    """Row ``a + t`` of :func:`causal_block` against its own causal reference ``rt``."""
    r = fq.shape[1]
    e = u.shape[1]
    ref[a + t] = rt
    for k in range(e):
        num[a + t, k] = 0.0
    if rt == -np.inf:
        return
    if R > -np.inf:
        f = math.exp(R - rt)
        for i in range(r):
            q = fq[a + t, i] * f
            for k in range(e):
                num[a + t, k] += q * state[i, k]
    for j in range(t + 1):
        wj = g[t, j] * math.exp(s[a + j] - rt)
        for k in range(e):
            num[a + t, k] += wj * u[a + j, k]


@numba.njit(nogil=True, cache=True)
def merge_normalize(num, ref, cross, r_cross, out):
    """Add a carried-in contribution and divide by the normalizer column.

    Row ``t`` of the numerator is ``exp(ref[t]) num[t] + exp(r_cross) cross[t]`` (``cross``
    may have zero rows, meaning no carried-in state). Writes ``out[t] = row[:-1] / row[-1]``.
    A row whose normalizer is not positive (trigonometric or signed generalized features) or
    that saw no key at all gets zeros.

    Parameters
    ----------
    num : (n, e) float64
    ref : (n,) float64
    cross : (n, e) or (0, e), any float dtype
    r_cross : float
    out : (n, e - 1) float32 or float64, output.

    Returns
    -------
    n_bad : int
        Rows that saw a key but whose normalizer was not positive (or not finite).
    """
    n, e = num.shape
    dv = e - 1
    has_cross = cross.shape[0] == n and r_cross > -np.inf
    n_bad = 0
    for t in range(n):
        rt = ref[t]
        top = max(rt, r_cross) if has_cross else rt
        if top == -np.inf:
            for k in range(dv):
                out[t, k] = 0.0
            continue
        a = math.exp(rt - top)
        b = math.exp(r_cross - top) if has_cross else 0.0
        den = num[t, dv] * a
        if has_cross:
            den += cross[t, dv] * b
        if not (den > 0.0 and den < np.inf):
            n_bad += 1
            for k in range(dv):
                out[t, k] = 0.0
            continue
        inv = 1.0 / den
        for k in range(dv):
            v = num[t, k] * a
            if has_cross:
                v += cross[t, k] * b
            out[t, k] = v * inv
    return n_bad


@numba.njit(nogil=True, cache=True)
def column_moments(X, skip, out):
    """Add the column sums and sums of squares of the rows of X not skipped, in float64.

    One pass over the block, without the GIL, for the FAVOR++/SADERF statistics (numpy's
    float64 reductions of a float32 block take two passes and hold the GIL long enough that
    two threads ran slower than one).

    Parameters
    ----------
    X : (n, d) float32 or float64, C-contiguous
    skip : (n,) bool, or (0,) for none
        True = leave the row out (a padded key).
    out : (2, d) float64, input and output
        ``out[0] += sum of rows``, ``out[1] += sum of squared rows``.

    Returns
    -------
    count : int
        Rows added.
    """
    n, d = X.shape
    s1 = np.zeros(d)
    s2 = np.zeros(d)
    count = 0
    masked = skip.shape[0] == n
    for i in range(n):
        if masked and skip[i]:
            continue
        count += 1
        for j in range(d):
            x = np.float64(X[i, j])
            s1[j] += x
            s2[j] += x * x
    for j in range(d):
        out[0, j] += s1[j]
        out[1, j] += s2[j]
    return count
