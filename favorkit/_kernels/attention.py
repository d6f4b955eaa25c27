"""Numba kernels for FAVOR attention: the chunkwise causal prefix sum and row normalization.

Conventions shared with :mod:`favorkit.attention` (which computes the features):

* ``fq`` (n, r): query features with their per-row constant dropped (it cancels in the
  normalization), ``fk`` (n, r): key features divided by a per-key constant ``exp(s_j)``;
  ``s`` (n,) float64 holds those log-constants (``-inf`` for a padded key, whose feature row
  is zero). The true key feature is ``exp(s_j) * fk[j]``.
* ``u`` (n, e) is ``[V 1]``: the last column carries the normalizer (Performer, App. B).
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

from favorkit._kernels.fastexp import exp_inplace_flat


@numba.njit(nogil=True, cache=True)
def causal_block(fq, fk, s, u, chunk, thresh, state, R0, num, ref):
    """Causal linear attention over one block of positions, carrying a state in and out.

    On entry ``exp(R0) * state`` is the sum over earlier positions of
    ``exp(s[j]) fk[j]^T u[j]`` (zero state and ``R0 = -inf`` for none). For every position
    ``t`` of the block, ``exp(ref[t]) * num[t]`` becomes
    ``fq[t] . (that earlier sum + sum_{j <= t} exp(s[j]) fk[j]^T u[j])`` (j in the block),
    and on return ``exp(R) * state`` is the sum over all positions so far, with ``R`` the
    returned reference (``-inf`` while every key is padded).

    Stabilization without look-ahead, exactly (changing a future key must leave every
    earlier output unchanged, bit for bit): every number row ``t`` reads, and every choice
    of how to compute it, depends on positions ``<= t`` only.

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

    Referencing every row of a chunk to the chunk's maximum would cancel in exact
    arithmetic, but let a later key of the same chunk change earlier rows in the last ulp.

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
    A row that saw no key at all gets zeros; so does a row whose normalizer is not positive
    and finite, or whose quotient is not finite in ``out``'s dtype (signed features:
    trigonometric, or a signed activation), and it is counted.

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
        Rows that saw a key but whose normalizer was not positive and finite, or whose
        output was not finite.
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
        finite = den > 0.0 and den < np.inf
        if finite:
            # Divide (a subnormal normalizer's reciprocal overflows), then check the
            # quotient, which is not bounded for signed features.
            for k in range(dv):
                v = num[t, k] * a
                if has_cross:
                    v += cross[t, k] * b
                out[t, k] = v / den
                finite = finite and abs(out[t, k]) < np.inf
        if not finite:
            n_bad += 1
            for k in range(dv):
                out[t, k] = 0.0
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


# --------------------------------------------------------------------------------------
# Positive features in log space: per-column references
#
# The exponential-family maps (FAVOR+, its hyperbolic pair, FAVOR++, SADERF) give every
# feature as exp(log-feature). A row-wise stabilizer (each row minus its own maximum) lets
# φ(q)·φ(k) underflow to 0 when a query's large features sit in columns where every key's
# are small (large, opposed q and k): the normalizer of a whole row is then 0 or
# subnormal. These kernels keep one log-reference c_i per feature column instead: key
# features are exp(z_ji - c_i) <= e^thresh, with exactly 1 at the key that set c_i, and a
# query's weights are exp(z_ti + c_i - M_t) with M_t = max_i (z_ti + c_i), so its largest
# weight is exactly 1. Every term is non-negative, so the normalizer of any row that sees a
# key is >= 1: no underflow, no division by a subnormal, and the output is a convex
# combination of the visible value rows up to rounding.
#
# Values are stored times 2^-kappa_k per column (kappa_k >= 0, an exact power-of-two
# scaling), raised when a column holds values above 2^bits, so that sums of up to ~2^40
# rows of values below 2^bits times features below e^thresh stay finite in the dtype.


@numba.njit(nogil=True, cache=True, inline="always")
def _shifted_row_max(z, t, c):
    """max_i (z[t, i] + c[i]) in float64, over four independent lanes (so it pipelines)."""
    r = z.shape[1]
    m0 = m1 = m2 = m3 = -np.inf
    stop = r - r % 4
    for i in range(0, stop, 4):
        y0 = np.float64(z[t, i]) + c[i]
        y1 = np.float64(z[t, i + 1]) + c[i + 1]
        y2 = np.float64(z[t, i + 2]) + c[i + 2]
        y3 = np.float64(z[t, i + 3]) + c[i + 3]
        m0 = y0 if y0 > m0 else m0
        m1 = y1 if y1 > m1 else m1
        m2 = y2 if y2 > m2 else m2
        m3 = y3 if y3 > m3 else m3
    for i in range(stop, r):
        y = np.float64(z[t, i]) + c[i]
        m0 = y if y > m0 else m0
    return max(max(m0, m1), max(m2, m3))


@numba.njit(nogil=True, cache=True, inline="always")
def _shift_key_row(zk, j, rj, c, dst, t):
    """``dst[t] = zk[j] + rj - c`` (from float64, rounded to dst's dtype); returns the
    largest of those float64 values, over four independent lanes (so it pipelines)."""
    r = zk.shape[1]
    m0 = m1 = m2 = m3 = -np.inf
    stop = r - r % 4
    for i in range(0, stop, 4):
        y0 = (np.float64(zk[j, i]) + rj) - c[i]
        y1 = (np.float64(zk[j, i + 1]) + rj) - c[i + 1]
        y2 = (np.float64(zk[j, i + 2]) + rj) - c[i + 2]
        y3 = (np.float64(zk[j, i + 3]) + rj) - c[i + 3]
        dst[t, i] = y0
        dst[t, i + 1] = y1
        dst[t, i + 2] = y2
        dst[t, i + 3] = y3
        m0 = y0 if y0 > m0 else m0
        m1 = y1 if y1 > m1 else m1
        m2 = y2 if y2 > m2 else m2
        m3 = y3 if y3 > m3 else m3
    for i in range(stop, r):
        y = (np.float64(zk[j, i]) + rj) - c[i]
        dst[t, i] = y
        m0 = y if y > m0 else m0
    return max(max(m0, m1), max(m2, m3))


@numba.njit(nogil=True, cache=True, inline="always")
def _shift_query_row(zq, j, c, dst, t):
    """``dst[t] = zq[j] + c - M`` with ``M = max_i (zq[j, i] + c[i])`` (from float64)."""
    top = _shifted_row_max(zq, j, c)
    for i in range(zq.shape[1]):
        dst[t, i] = (np.float64(zq[j, i]) + c[i]) - top


@numba.njit(nogil=True, cache=True)
def key_column_max(z, rt, c):
    """Raise the column references to the keys' log-features: ``c_i = max(c_i, z_ji + rt_j)``.

    Parameters
    ----------
    z : (n, r) float32 or float64
        Log-feature projections of a block of keys (row constants excluded).
    rt : (n,) float64
        Row constants of the keys' log-features; ``-inf`` marks a padded key (skipped).
    c : (r,) float64, input and output
        Column references.

    Returns
    -------
    finite : bool
        False if a visible row of ``z`` holds inf or NaN (the projection overflowed).
    """
    n, r = z.shape
    check = np.zeros(r)
    for j in range(n):
        rj = rt[j]
        if rj == -np.inf:
            continue
        for i in range(r):
            zi = np.float64(z[j, i])
            check[i] += zi * 0.0  # NaN from inf or NaN
            y = zi + rj
            c[i] = y if y > c[i] else c[i]
    for i in range(r):
        if check[i] != 0.0:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def shift_keys(z, rt, c):
    """``z_ji <- z_ji + rt_j - c_i`` in place (rounded once, from float64); padded rows -inf.

    After :func:`key_column_max` over the same rows every entry is <= 0, and exactly 0 where
    a key set its column's reference, so the exponential is <= 1 with a 1 in every column.
    """
    n, r = z.shape
    for j in range(n):
        rj = rt[j]
        if rj == -np.inf:
            for i in range(r):
                z[j, i] = -np.inf
            continue
        for i in range(r):
            z[j, i] = (np.float64(z[j, i]) + rj) - c[i]


@numba.njit(nogil=True, cache=True)
def shift_queries(z, c):
    """``z_ti <- z_ti + c_i - M_t`` in place, ``M_t = max_i (z_ti + c_i)``.

    The exponential is then a query's feature weights against column references ``c``:
    all <= 1, the largest exactly 1 (the per-row constant ``M_t`` cancels in the row's
    normalization).

    Returns
    -------
    finite : bool
        False if ``z`` holds inf or NaN (the projection overflowed).
    """
    n, r = z.shape
    check = np.zeros(r)
    for t in range(n):
        for i in range(r):
            check[i] += np.float64(z[t, i]) * 0.0
        top = _shifted_row_max(z, t, c)
        for i in range(r):
            z[t, i] = (np.float64(z[t, i]) + c[i]) - top
    for i in range(r):
        if check[i] != 0.0:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _value_scales(kappa, out, sign=-1):
    """``out = 2^(sign kappa)``: exact powers of two (scaling by them is exact)."""
    for k in range(kappa.shape[0]):
        out[k] = math.ldexp(1.0, sign * int(kappa[k]))


@numba.njit(nogil=True, cache=True)
def value_exponents(v, rt, bits, kappa):
    """Raise ``kappa_k`` so that every visible ``|v_jk| 2^-kappa_k <= 2^bits``.

    ``kappa`` (float64 holding integers >= 0) only grows; rows with ``rt_j = -inf`` (padded
    keys) are skipped, so padding never changes how visible values are scaled.
    """
    n, dv = v.shape
    top = np.zeros(dv)
    for j in range(n):
        if rt[j] == -np.inf:
            continue
        for k in range(dv):
            a = abs(np.float64(v[j, k]))
            top[k] = a if a > top[k] else top[k]
    for k in range(dv):
        if top[k] > 0.0:
            e = math.frexp(top[k])[1]  # top < 2^e
            need = float(e - bits)
            if need > kappa[k]:
                kappa[k] = need


@numba.njit(nogil=True, cache=True)
def scaled_values(v, kappa, u):
    """``u = [v 2^-kappa, 1]``: values scaled per column (exactly) and the normalizer column."""
    n, dv = v.shape
    scale = np.empty(dv)
    for k in range(dv):
        scale[k] = math.ldexp(1.0, -int(kappa[k]))
    for j in range(n):
        for k in range(dv):
            u[j, k] = np.float64(v[j, k]) * scale[k]
        u[j, dv] = 1.0


@numba.njit(nogil=True, cache=True)
def normalize_rows(num, kappa, out):
    """``out[t, k] = num[t, k] / num[t, -1] * 2^kappa_k`` (a division, in float64).

    For positive features in log space the normalizer ``num[t, -1]`` is >= 1.
    """
    n, e = num.shape
    vpow = np.empty(e - 1)
    _value_scales(kappa, vpow, 1)
    for t in range(n):
        den = np.float64(num[t, e - 1])
        for k in range(e - 1):
            out[t, k] = (np.float64(num[t, k]) / den) * vpow[k]


@numba.njit(nogil=True, cache=True)
def merge_log_states(state, c, kappa, block_state, block_c, block_kappa):
    """Add a block's ``(state, c, kappa)`` into the running one, relative to the larger
    references (per column of features and of values). Columns of a block without a visible
    key have ``block_c = -inf`` and add nothing."""
    r, e = state.shape
    dv = e - 1
    kn = np.empty(dv)
    for k in range(dv):
        kn[k] = max(kappa[k], block_kappa[k])
    for i in range(r):
        cn = max(c[i], block_c[i])
        if cn == -np.inf:
            continue
        f_old = math.exp(c[i] - cn) if c[i] > -np.inf else 0.0
        f_new = math.exp(block_c[i] - cn) if block_c[i] > -np.inf else 0.0
        for k in range(dv):
            state[i, k] = state[i, k] * math.ldexp(f_old, int(kappa[k] - kn[k])) + block_state[
                i, k
            ] * math.ldexp(f_new, int(block_kappa[k] - kn[k]))
        state[i, dv] = state[i, dv] * f_old + block_state[i, dv] * f_new
        c[i] = cn
    for k in range(dv):
        kappa[k] = kn[k]


@numba.njit(nogil=True, cache=True, inline="always")
def _key_row(zk, v, rt, j, c, vscale, vlim, thresh, fk, u, t):
    """Row ``t`` of a chunk's key log-features ``fk`` and scaled values ``u`` for key ``j``
    against references ``c``; returns whether the key stays in the fast path's range
    (log-features at most ``thresh`` above ``c``, values at most ``vlim`` after scaling).
    A padded key gets a ``-inf`` row (feature 0), a zero value row, and is in range."""
    dv = v.shape[1]
    rj = rt[j]
    if rj == -np.inf:
        for i in range(fk.shape[1]):
            fk[t, i] = -np.inf
        for k in range(dv + 1):
            u[t, k] = 0.0
        return True
    in_range = _shift_key_row(zk, j, rj, c, fk, t) <= thresh  # +inf before the first key
    for k in range(dv):
        x = np.float64(v[j, k]) * vscale[k]
        u[t, k] = x
        in_range = in_range and abs(x) <= vlim
    u[t, dv] = 1.0
    return in_range


@numba.njit(nogil=True, cache=True)
def log_causal_stage(zq, zk, rt, v, c, kappa, thresh, bits, fk, wq, u, in_range):
    """A block's features against given references, ahead of :func:`log_causal_block`.

    The causal kernel's features depend on the references carried in from earlier blocks,
    so they are known only when the previous block is done. References rarely change after
    a sequence's first keys, so a block can compute its features while the previous block
    runs, against the latest references published, and hand them to the kernel if they
    turn out to be the ones carried in. The arithmetic is the kernel's own, element by
    element, so the output is the same bits either way.

    Parameters
    ----------
    zq, zk, rt, v, thresh, bits
        As in :func:`log_causal_block`.
    c : (r,) float64
        The references to compute against (finite).
    kappa : (dv,) float64
        The value exponents to scale against.
    fk, wq : (n, r), same dtype as ``zq``, output
        ``exp(zk + rt - c)`` (0 for padded keys) and ``exp(zq + c - M)``.
    u : (n, dv + 1), same dtype, output
        ``[v 2^-kappa, 1]`` (zeros for padded keys).
    in_range : (n,) bool, output
        Whether each key stays on the kernel's fast path.
    """
    n = zq.shape[0]
    vscale = np.empty(v.shape[1])
    _value_scales(kappa, vscale)
    vlim = math.ldexp(1.0, bits)
    for j in range(n):
        in_range[j] = _key_row(zk, v, rt, j, c, vscale, vlim, thresh, fk, u, j)
        _shift_query_row(zq, j, c, wq, j)
    exp_inplace_flat(fk.reshape(-1))
    exp_inplace_flat(wq.reshape(-1))


@numba.njit(nogil=True, cache=True)
def log_causal_block(
    zq,
    zk,
    rt,
    v,
    chunk,
    thresh,
    bits,
    state,
    c,
    kappa,
    out,
    ahead,
    fk_ahead,
    wq_ahead,
    u_ahead,
    ok_ahead,
):
    """Causal attention with positive features over one block of positions, in log space.

    Carries ``(state, c, kappa)`` in and out: ``state[i] = sum_j exp(z_ji - c_i)
    [v_j 2^-kappa, 1]`` over the keys so far, with per-column references ``c`` (all -inf
    before the first visible key). Row ``t`` of ``out`` becomes the attention of query
    ``t`` over keys ``j <= t``.

    Exactly causal: everything row ``t`` reads, and every choice of how to compute it,
    depends on positions ``<= t`` only.

    * Fast rows: in a chunk of ``C`` positions the references stay those carried in. Key
      features ``exp(z_j - c)`` are then at most ``e^thresh`` as long as no key exceeds a
      reference by more than ``thresh`` (and no value a column's range ``2^(kappa + bits)``);
      row ``t`` is row ``t`` of two GEMMs of fixed shape (the masked ``C x C`` block inside
      the chunk, and ``w_t . state``), whose entries past ``t`` are exact zeros.
    * A break: at the first key ``b`` that exceeds them, rows before ``b`` are done as
      above; keys up to ``b`` are committed to the state against new references (their
      column maxima) and a new ``kappa``; row ``b`` is read from the state alone, and the
      next chunk starts at ``b + 1``. Before the first visible key every key is a break.

    Parameters
    ----------
    zq : (n, r) float32 or float64
        Query log-features (per-row constants dropped: they cancel).
    zk : (n, r), same dtype
        Key log-feature projections, without the row constants ``rt``.
    rt : (n,) float64
        Key row constants; ``-inf`` for a padded key.
    v : (n, dv), same dtype
        Values.
    chunk : int
    thresh : float
        Largest key log-feature above its carried reference on the fast path.
    bits : int
        Values are kept below ``2^bits`` after scaling.
    state : (r, dv + 1) float64, input and output
    c : (r,) float64, input and output
    kappa : (dv,) float64, input and output
    out : (n, dv), same dtype as ``zq``, output
        Rows that see no visible key are 0.
    ahead : bool
        Whether ``fk_ahead, wq_ahead, u_ahead, ok_ahead`` hold the block's features from
        :func:`log_causal_stage`, computed against this call's incoming ``c`` and ``kappa``
        (the caller checks); they are used until the first break. Otherwise they may be
        empty arrays of the right dtypes.

    Returns
    -------
    n_breaks : int
        Number of breaks (for tests and diagnostics).

    ``zq`` and ``zk`` must be finite (the caller checks the projections).
    """
    n, r = zq.shape
    dv = v.shape[1]
    e = dv + 1
    fk = np.empty((chunk, r), dtype=zq.dtype)
    wq = np.empty((chunk, r), dtype=zq.dtype)
    u = np.empty((chunk, e), dtype=zq.dtype)
    intra = np.empty((chunk, e), dtype=zq.dtype)
    inter = np.empty((chunk, e), dtype=zq.dtype)
    ds = np.empty((r, e), dtype=zq.dtype)
    s_gemm = np.empty((r, e), dtype=zq.dtype)  # the state in the GEMM dtype
    for i in range(r):
        for k in range(e):
            s_gemm[i, k] = state[i, k]
    vscale = np.empty(dv)
    vpow = np.empty(dv)  # 2^kappa: the outputs' scale
    vlim = math.ldexp(1.0, bits)
    seen = c[0] > -np.inf  # any key committed (all references become finite together)
    use_ahead = ahead
    n_breaks = 0
    a = 0
    while a < n:
        cl = min(chunk, n - a)
        _value_scales(kappa, vscale)
        _value_scales(kappa, vpow, 1)
        # Keys against the carried references; the first one out of range is the break.
        brk = cl
        if use_ahead:
            F, W, U = fk_ahead[a : a + cl], wq_ahead[a : a + cl], u_ahead[a : a + cl]
            for j in range(cl):
                if not ok_ahead[a + j]:
                    brk = j
                    break
        else:
            F, W, U = fk[:cl], wq[:cl], u[:cl]
            for j in range(cl):
                if j > brk:
                    for i in range(r):
                        fk[j, i] = -np.inf
                    for k in range(e):
                        u[j, k] = 0.0
                elif not _key_row(zk, v, rt, a + j, c, vscale, vlim, thresh, fk, u, j):
                    brk = j
                    for i in range(r):
                        fk[j, i] = -np.inf
                    for k in range(e):
                        u[j, k] = 0.0
        # Fast rows [0, brk).
        if brk > 0 and not seen:  # only padded keys so far
            for t in range(brk):
                for k in range(dv):
                    out[a + t, k] = 0.0
        elif brk > 0:
            if not use_ahead:
                exp_inplace_flat(fk[:cl].reshape(-1))
                for t in range(cl):
                    if t < brk:
                        _shift_query_row(zq, a + t, c, wq, t)
                    else:
                        for i in range(r):
                            wq[t, i] = -np.inf
                exp_inplace_flat(wq[:cl].reshape(-1))
            g = np.dot(W, F.T)
            pc = np.empty((cl, cl), dtype=zq.dtype)
            for t in range(cl):
                for j in range(t + 1):
                    pc[t, j] = g[t, j]
                for j in range(t + 1, cl):
                    pc[t, j] = 0.0
            np.dot(pc, U, intra[:cl])
            np.dot(W, s_gemm, inter[:cl])
            for t in range(brk):
                den = np.float64(intra[t, dv]) + np.float64(inter[t, dv])
                for k in range(dv):
                    num = np.float64(intra[t, k]) + np.float64(inter[t, k])
                    out[a + t, k] = (num / den) * vpow[k]
        if brk == cl:
            if seen:
                np.dot(F.T, U, ds)
                for i in range(r):
                    for k in range(e):
                        x = state[i, k] + ds[i, k]
                        state[i, k] = x
                        s_gemm[i, k] = x
            a += cl
            continue
        # A break at key b = a + brk: commit keys [a, b] against new references. The
        # features computed ahead were for the old ones: the rest of the block goes without.
        use_ahead = False
        n_breaks += 1
        b = a + brk
        cn = c.copy()
        kn = kappa.copy()
        for j in range(a, b + 1):
            rj = rt[j]
            if rj == -np.inf:
                continue
            for i in range(r):
                y = np.float64(zk[j, i]) + rj
                cn[i] = y if y > cn[i] else cn[i]
        value_exponents(v[a : b + 1], rt[a : b + 1], bits, kn)
        for i in range(r):
            f = math.exp(c[i] - cn[i]) if c[i] > -np.inf else 0.0
            for k in range(dv):
                state[i, k] *= math.ldexp(f, int(kappa[k] - kn[k]))
            state[i, dv] *= f
        for i in range(r):
            c[i] = cn[i]
        for k in range(dv):
            kappa[k] = kn[k]
        _value_scales(kappa, vscale)
        for j in range(brk + 1):
            _key_row(zk, v, rt, a + j, c, vscale, vlim, thresh, fk, u, j)
        exp_inplace_flat(fk[: brk + 1].reshape(-1))
        np.dot(fk[: brk + 1].T, u[: brk + 1], ds)
        for i in range(r):
            for k in range(e):
                x = state[i, k] + ds[i, k]
                state[i, k] = x
                s_gemm[i, k] = x
        seen = True
        # Row b from the state alone (every key <= b is in it).
        _shift_query_row(zq, b, c, wq, 0)
        exp_inplace_flat(wq[0])
        np.dot(wq[:1], s_gemm, inter[:1])
        den = np.float64(inter[0, dv])
        _value_scales(kappa, vpow, 1)
        for k in range(dv):
            out[b, k] = (np.float64(inter[0, k]) / den) * vpow[k]
        a = b + 1
    return n_breaks
