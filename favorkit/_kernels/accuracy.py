"""Numba kernels for the closed-form prediction of FAVOR attention's error.

:func:`favorkit.accuracy.predict_attention_error` (the math is in that module's docstring,
the driver in :mod:`favorkit.attention._accuracy`) needs, for every sampled query row
``u`` and every key ``j`` of its sequence, a dozen quantities (the attention weights
``p_j``, the one-projection moments ``e_j``, ``g_j``, the coupling ``χ_jj``...) that are
only ever summed over keys, and a few hundred importance-sampled key pairs per row.
Formed with numpy as (rows x L) arrays they take a few dozen full passes through memory;
here they are formed one row at a time into buffers of length L that stay in cache, and
summed there.

:func:`row_sums` does a block of query rows of one sequence: the sums over keys that
factorize (everything but the key pairs), the sketch's samples of each sampling set's
key-pair sum to second order in ``k̃_j·k̃_l`` (one GEMM of the weights with the columns of
:func:`sketch_columns`), the cumulative importance weights of each sampling set (one per
sign of the map, then the coupled one), and, given the uniform draws, the sampled key-pair
sums right away while the row is in cache (:func:`_row_pairs`): of the rest past second
order and, as a control variate for the caller to weigh against the sketch, of the
second-order part.
The caller draws the uniforms beforehand, for every row that sees two keys or more (a row
with one visible key has no pair to sample), in the order the reference implementation
draws them (set by set; rows in order): that order is right unless such a row has no
positive sampling weight (all its visible values equal its output). The kernel reports
which rows it sampled; on a
mismatch the caller restores its generator, runs :func:`row_sums` again storing logits,
``y·v_j`` and cumulative weights, draws for the rows that were sampled, and samples them
with :func:`sampled_pairs`.

Why this shape:

* The weighted sums of values a row needs, ``Σ_j w_j [v_j, 1]`` for ``w = P, e (per
  sign), P c, P z``, are one GEMM over the block's rows (``np.dot`` calls BLAS from Numba;
  the column of ones appended to the values makes it sum the weights too), as are the
  sums of the sketch's columns for ``w = P, e, P c`` (one more: appended to the values,
  they ran slower), the logits ``u·k̃_j`` and ``y·v_j``. These GEMMs are the bulk of the
  cost; they run in the dtype of the key and value rows (float32 for float32 inputs, at
  twice float64's speed: their sums of products carry float32 round-off, which moves the
  prediction by a small fraction of its standard error, tested), everything else in
  float64.
* Everything elementwise happens in row passes between them, written branch-free so that
  they vectorize, exponentials included (:func:`~favorkit._kernels.fastexp.exp64`: Numba's
  libm ``exp`` is 5-10x slower and does not vectorize). A runtime condition inside a loop
  (the second sign, the coupled rows) kept it from vectorizing: those get loops of their
  own. Table reads (gathers) have a loop of their own for the same reason.
* Fewer exponentials per key: where ``α = 0`` and ``σγτ`` is -1, 0 or 1 (FAVOR+, the
  hyperbolic and trigonometric maps) ``e`` is ``P^(1 + σγτ)`` times a row constant, and
  ``g = e e^{σγ|k̃|²/2}`` takes that factor per key once per block (where it stays below
  e^300, so that ``e`` is not subnormal where ``g`` matters); the coupled set's sampling
  weights carry its moment from the row's mean ``z`` by the curvature instead of reading
  the table at every key (a weight only needs its size). Together about 1.5 of 12 ms a
  block of 16 rows at L = 16 384.
* Overflow safety is the reference's: every exponential is taken relative to its row's
  maximum (``e`` and ``g`` relative to ``max(max ℓ, max (ℓ + σγ|k̃|²/2))``, the sampling
  bounds to their own), and the scale ``exp(log_const + σγ|u|² + 2 shift)`` is applied by
  the caller with its ``> 700`` guard. The row constants of ``ℓ = log p + α z + σγτ b``
  (``-max b - log Σ``) cancel against the shift, so ``ℓ - shift`` is formed without them.
* ``s_1 = Σ_j p_j (v_j - y) = 0`` exactly (``y`` is that weighted mean), so the parts of
  the coupled sum that the reference multiplies by it (its round-off, ``s_cc·s_1`` and
  ``s_h·s_1``) are left out.
* Dot products and sums over keys whose order does not matter may be reassociated
  (``fastmath={"reassoc"}`` on small helpers that are not inlined, so the flag stays on
  them): in SIMD lanes they ran 4x faster, and a sum's order changes its round-off only.
  Nothing else is fast-math (NaN and inf handling matters here). ``error_model="numpy"``:
  a division by zero gives inf or NaN as in numpy, not an exception.

Layout: the per-row results go to columns of ``sums`` (the ``COL_*`` and ``SIGN_*``
indices below). A row's keys are ``j < limits[r]`` with ``keys_ok[j]`` (causal rows see
a prefix). ``moment = [alpha, gamma, tau]`` of :class:`favorkit.maps.SecondMoment`
(``tau``: its ``pair_sign``); ``coupling = [coupled (0 or 1), d, step, linear]`` and
``tables[s] = (values, slopes)`` of the block coupling's log-moment table at the cosine
``(c, -c)[s]`` (``favorkit.attention._accuracy._Coupling``).
"""

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from favorkit._kernels.fastexp import exp64

COL_SEEN = 0  # 1.0 if the row sees a key
COL_TOP = 1  # max_j u·k̃_j over visible keys
COL_TOTAL = 2  # Σ_j exp(u·k̃_j - top)
COL_Y2 = 3  # |y|²
COL_ZBAR = 4  # Σ_j p_j z_j
COL_CURV = 5  # the coupling's curvature at zbar, over (d - 1)
COL_CROSS = 6  # the coupled sum's exactly summed part
COL_WTOT = 7  # three columns: total sampling weight of each set (0: not sampled)
COL_SIGN = 10  # then SIGN_COLS columns per sign σ:
SIGN_SHIFT = 0  # max(max ℓ, max (ℓ + σγ|k̃|²/2)) without the row constants
SIGN_BOUND = 1  # max (ℓ + γ|k̃|²/2) without the row constants
SIGN_S1SQ = 2  # |Σ_j e_j (v_j - y)|²
SIGN_DIAG = 3  # Σ_j (g_j² - e_j²) |v_j - y|²
SIGN_SUM_E = 4  # Σ_j e_j
SIGN_GGEE = 5  # Σ_j (g_j² - e_j²)
SIGN_D1 = 6  # Σ_j e_j² |v_j - y|² |k̃_j|²
SIGN_D2 = 7  # Σ_j e_j² |v_j - y|² |k̃_j|⁴
SIGN_COLS = 8
N_COLS = COL_SIGN + 2 * SIGN_COLS

_JIT = dict(nogil=True, cache=True, error_model="numpy")
_INLINE = dict(_JIT, inline="always")
_REASSOC = dict(_JIT, fastmath={"reassoc"})
_AHEAD = 8  # sampled pairs whose rows are prefetched ahead of the one being summed


@intrinsic
def _prefetch(typingctx, arr, i, k):
    """Hint the CPU to fetch the cache line of ``arr[i, k]`` (LLVM's prefetch: for
    reading, into every cache level)."""
    sig = types.void(arr, i, k)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        flags = [ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
        builder.call(fn, [builder.bitcast(ptr, i8p), *flags])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(**_INLINE)
def _prefetch_row(arr, i):
    for k in range(0, arr.shape[1], 64 // arr.itemsize):  # a 64-byte line at a time
        _prefetch(arr, i, k)


@numba.njit(**_INLINE)
def _read(tables, s, z, step):
    """Linear interpolation on the uniform table ``s``, as ``_Coupling``'s reader (NaN ->
    NaN). It indexes ``tables`` in place: a view per call (an atomic reference count each)
    made it 10x slower."""
    t = z * step
    if t != t:
        return t
    top = tables.shape[2] - 1.000001
    t = min(max(t, 0.0), top)
    i = int(t)
    return tables[s, 0, i] + (t - i) * tables[s, 1, i]


@numba.njit(**_INLINE)
def _lse2_minus_log2(a, b):
    """``log((e^a + e^b)/2)`` as scipy's logsumexp forms it (max + log1p of the rest)."""
    hi = a if a >= b else b
    lo = b if a >= b else a
    if hi == -np.inf or hi != hi or hi == np.inf:
        return hi - math.log(2.0)
    return (math.log1p(math.exp(lo - hi)) + hi) - math.log(2.0)


@numba.njit(**_INLINE)
def _chi_diag(tables, n_signs, z, step):
    """``χ`` of two estimates of one entry at ``z = |a|²`` (``_Coupling.diag``)."""
    if n_signs == 1:
        return math.expm1(_read(tables, 0, z, step))
    return math.expm1(_lse2_minus_log2(_read(tables, 0, z, step), _read(tables, 1, z, step)))


@numba.njit(**_INLINE)
def _curvature(tables, z, step, linear, d):
    """``_Coupling.curvature``: ``(log M_c(z) - λ z)/z²``, ``-1/(2(d+2))`` below 1e-6."""
    if z < 1e-6:
        return -0.5 / (d + 2)
    psi = _read(tables, 0, z, step) - linear * z
    return psi / z**2


@numba.njit(**_INLINE)
def _pair(tables, n_signs, za, zb, s, step, linear, d):
    """``_Coupling.pair``: ``χ`` of the entries with ``|a|² = za``, ``|b|² = zb``,
    ``a·b = s``."""
    zhat = math.sqrt(za * zb)
    cos2 = (s / zhat) ** 2 if zhat > 0 else 1.0
    weight = (d * min(cos2, 1.0) - 1.0) / max(d - 1.0, 1.0)
    rest = (_read(tables, 0, zhat, step) - linear * zhat) * weight
    if n_signs == 1:
        return math.expm1(linear * s + rest)
    return math.expm1(_lse2_minus_log2(linear * s + rest, -linear * s + rest))


@numba.njit(**_INLINE)
def _mean(a):
    acc = 0.0
    for x in a:
        acc += x
    return acc / a.size


@numba.njit(**_INLINE)
def _control(curv, d, lam, s, za, zb):
    """The coupled set's control variate at a key pair with ``a_j·a_l = s``: the coupling's
    pair form to second order, ``curv (d s² - z_j z_l) + λ̄ s`` (summed over all pairs
    exactly where it factorizes, through the sketch where it does not)."""
    return curv * (d * s * s - za * zb) + lam * s


@numba.njit(**_INLINE)
def _coupled_magnitude(curv, d, linear, z, cv):
    """The coupled set's sampling factor at a key, ``1 + |χ̂_jj| + |cv_jj|``: ``χ̂`` is
    ``χ_jj`` with ``log M(z)`` carried from the row's mean ``z`` by its curvature,
    ``(d - 1) curv z² + |λ| z``, not read from the table (a gather per key); a sampling
    weight only needs its size (and ``exp - 1`` for ``expm1``, which would not vectorize,
    errs by 1e-16 next to the 1)."""
    return 1.0 + abs(exp64((d - 1.0) * curv * z * z + abs(linear) * z) - 1.0) + abs(cv)


@numba.njit(**_INLINE)
def _sketched(curv, d, lam, cs, kd):
    """The control's terms in ``k̃_j·k̃_l`` at ``c_j + c_l = cs``: ``curv d (2 cs k̃_j·k̃_l +
    (k̃_j·k̃_l)²) + λ̄ (cs + k̃_j·k̃_l)`` (the ``λ̄ cs`` part sums to 0 over all pairs)."""
    return curv * d * (2.0 * cs * kd + kd * kd) + lam * (cs + kd)


@numba.njit(**_INLINE)
def _z(two_tau, bj, ur, kj):
    """``z = |ũ + τ k̃|² = max(2τ b + |ũ|² + |k̃|², 0)``, in the reference's order."""
    x = (two_tau * bj + ur) + kj
    return 0.0 if x < 0.0 else x


@numba.njit(**_REASSOC)
def _diag_sums(G, E, w2, kk, n):
    """``Σ_j (g_j² - e_j²) w2_j``, ``Σ_j (g_j² - e_j²)``, ``Σ_j e_j² w2_j kk_j`` and
    ``Σ_j e_j² w2_j kk_j²`` over ``j < n``."""
    diag = 0.0
    total = 0.0
    first = 0.0
    second = 0.0
    for j in range(n):
        ee = E[j] * E[j]
        t = G[j] * G[j] - ee
        diag += t * w2[j]
        total += t
        x = ee * w2[j] * kk[j]
        first += x
        second += x * kk[j]
    return diag, total, first, second


@numba.njit(**_REASSOC)
def _dot(a, i, b, j):
    """``a[i]·b[j]``."""
    acc = 0.0
    for k in range(a.shape[1]):
        acc += a[i, k] * b[j, k]
    return acc


@numba.njit(**_REASSOC)
def _dot_centered(V, j, l, y, n):
    """``(v_j - y)·(v_l - y)`` over the first ``n`` columns."""
    acc = 0.0
    for k in range(n):
        acc += (V[j, k] - y[k]) * (V[l, k] - y[k])
    return acc


@numba.njit(**_INLINE)
def _search_all(c, n, draws, base):
    """``np.searchsorted(c[:n] / c[n - 1], draws)`` (side "left"; NaN sorts last), clipped
    to ``n - 1``, into ``base``: the keys the draws sample.

    A branch-free lower bound (the interval halves whatever the comparison says, so every
    draw takes the same steps), all draws a level at a time: a binary search that branches
    mispredicts half its steps and waits on a cache miss at each (~160 ns a search at
    L = 16 384); in lockstep the draws' loads and comparisons overlap.
    """
    m = draws.size
    last = c[n - 1]
    for q in range(m):
        base[q] = 0
    length = n
    while length > 1:
        half = length >> 1
        for q in range(m):
            i = base[q] + half
            base[q] = i if c[i] / last < draws[q] else base[q]
        length -= half
    for q in range(m):
        i = base[q]
        i = i + 1 if c[i] / last < draws[q] else i
        base[q] = i if i < n else n - 1


@numba.njit(**_INLINE)
def _row_pairs(
    k, c, n, draws, br, yvr, yr, row, ur, Kk, Vx, vv, kk, signs, moment, coupling, tables,
    idx, ent, vals, hvals,
):  # fmt: skip
    """One row's key-pair sums ``Σ_{j≠l}`` of sampling set ``k``, by importance sampling:
    of the rest past the sketch's part and of the sketch's part (``h``), their estimates,
    variances and covariance ``(rest, h, var rest, var h, cov)``.

    Pairs ``(j, l)`` are drawn from ``weights ⊗ weights`` (``c[:n]``: their running sums)
    by inverting the normalized running sums at the uniform ``draws`` (the first half
    picks the ``j``, the second the ``l``); each contributes ``value(j, l) / (w_j w_l)``
    (0 for ``j = l`` or a zero weight). Set ``k < S`` (sign σ): ``value = e_j e_l
    (v_j - y)·(v_l - y) (e^x - 1 - x - x²/2)`` with ``x = σγ k̃_j·k̃_l``, the key
    interactions of ``ρ`` past second order, and ``h`` the same with ``x + x²/2``; set
    ``S`` (coupled): ``value = p_j p_l (v_j - y)·(v_l - y) r_jl``, ``r_jl`` the coupling's
    pair form less its second-order form (:func:`_control`) and ``h`` the latter's terms
    in ``k̃_j·k̃_l`` (:func:`_sketched`), each less its ``j = l`` values spread as
    ``(h_j + h_l)/2``, a zero sum over all pairs
    (``favorkit.attention._accuracy._rows_error``).
    ``br``, ``yvr``, ``yr``: the row's logits, ``y·v_j`` and output; ``idx``, ``ent``,
    ``vals``: scratch.
    """
    S = signs.size
    d_v = Vx.shape[1] - 1
    n_pairs = vals.size
    gamma = moment[1]
    d, step, linear = coupling[1], coupling[2], coupling[3]
    lam = linear * _mean(signs)  # λ̄: the pair form's first order, averaged over the signs
    _search_all(c, n, draws, idx)
    # The sampled keys' quantities, formed as row_sums forms them: ent[q] = (weight, e or p,
    # z, c, h) (the last three for the coupled set; h = χ_jj less its second-order part).
    alpha, tau = moment[0], moment[2]
    y2 = row[COL_Y2]
    if k < S:
        col = COL_SIGN + k * SIGN_COLS
        lin = signs[k] * gamma * tau
        shift, top_b = row[col + SIGN_SHIFT], row[col + SIGN_BOUND]
        for q in range(2 * n_pairs):
            j = idx[q]
            bj = br[j]
            x = (vv[j] - 2.0 * yvr[j]) + y2
            ell = (bj + alpha * _z(2.0 * tau, bj, ur, kk[j])) + lin * bj
            bound = exp64((ell + 0.5 * gamma * kk[j]) - top_b)
            ent[q, 0] = bound * math.sqrt(0.0 if x < 0.0 else x)
            ent[q, 1] = exp64(ell - shift)
    else:
        curv, top, total = row[COL_CURV], row[COL_TOP], row[COL_TOTAL]
        for q in range(2 * n_pairs):
            j = idx[q]
            bj = br[j]
            x = (vv[j] - 2.0 * yvr[j]) + y2
            zj = _z(2.0 * tau, bj, ur, kk[j])
            p = exp64(bj - top) / total
            cj = 0.5 * ur + tau * bj
            cv = _control(curv, d, lam, 2.0 * cj + kk[j], zj, zj)
            mag = _coupled_magnitude(curv, d, linear, zj, cv)
            ent[q, 0] = p * math.sqrt(0.0 if x < 0.0 else x) * math.sqrt(mag)
            ent[q, 1] = p
            ent[q, 2] = zj
            ent[q, 3] = cj
            ent[q, 4] = _chi_diag(tables, S, zj, step) - cv
            ent[q, 5] = _sketched(curv, d, lam, 2.0 * cj, kk[j])
    # The pairs' key and value rows are random rows of L-row arrays: prefetched a few pairs
    # ahead, their cache misses overlap.
    for q in range(min(_AHEAD, n_pairs)):
        _prefetch_row(Kk, idx[q])
        _prefetch_row(Kk, idx[n_pairs + q])
        _prefetch_row(Vx, idx[q])
        _prefetch_row(Vx, idx[n_pairs + q])
    for q in range(n_pairs):
        if q + _AHEAD < n_pairs:
            _prefetch_row(Kk, idx[q + _AHEAD])
            _prefetch_row(Kk, idx[n_pairs + q + _AHEAD])
            _prefetch_row(Vx, idx[q + _AHEAD])
            _prefetch_row(Vx, idx[n_pairs + q + _AHEAD])
        j = idx[q]
        l = idx[n_pairs + q]
        qj = q
        ql = n_pairs + q
        vals[q] = 0.0
        hvals[q] = 0.0
        if j == l or not (ent[qj, 0] > 0 and ent[ql, 0] > 0):
            continue
        dc = _dot_centered(Vx, j, l, yr, d_v)
        kd = _dot(Kk, j, Kk, l)
        if k < S:
            # Its first two orders in x = σγ k̃_j·k̃_l (the sketch's part), and the rest.
            x = signs[k] * gamma * kd
            low = x + 0.5 * x * x
            rest = math.expm1(x) - low
            front = ent[qj, 1] * ent[ql, 1] * dc
        else:
            za, zb = ent[qj, 2], ent[ql, 2]
            cs = ent[qj, 3] + ent[ql, 3]
            s = cs + kd
            cv = _control(row[COL_CURV], d, lam, s, za, zb)
            rest = _pair(tables, S, za, zb, s, step, linear, d) - cv
            rest = rest - 0.5 * (ent[qj, 4] + ent[ql, 4])
            # The control's terms in k̃_j·k̃_l (the sketch's part), with their j = l
            # values spread as h_j (a zero sum over all pairs).
            low = _sketched(row[COL_CURV], d, lam, cs, kd) - 0.5 * (ent[qj, 5] + ent[ql, 5])
            front = ent[qj, 1] * ent[ql, 1] * dc
        weight = ent[qj, 0] * ent[ql, 0]
        vals[q] = front * rest / weight
        hvals[q] = front * low / weight
    mean = 0.0
    hmean = 0.0
    for q in range(n_pairs):
        mean += vals[q]
        hmean += hvals[q]
    mean /= n_pairs
    hmean /= n_pairs
    spread = 0.0
    hspread = 0.0
    cross = 0.0
    for q in range(n_pairs):
        spread += (vals[q] - mean) ** 2
        hspread += (hvals[q] - hmean) ** 2
        cross += (vals[q] - mean) * (hvals[q] - hmean)
    scale = c[n - 1] ** 2
    norm = scale**2 / ((n_pairs - 1) * n_pairs)
    return scale * mean, scale * hmean, norm * spread, norm * hspread, norm * cross


@numba.njit(**_JIT)
def _dots(A, B, out):
    """``A @ B.T`` into ``out`` (float64), for a few rows ``A`` (a block's) and many rows
    ``B`` (every key's). BLAS forms the tall ``B @ A.T`` (1.7x faster than the wide
    ``A @ B.T`` with 16 rows, measured), 1024 rows of ``B`` at a time (a product small
    enough to be transposed in cache, and not a fresh multi-MiB array per call)."""
    R, n = A.shape[0], B.shape[0]
    AT = A.T
    for j0 in range(0, n, 1024):
        j1 = min(j0 + 1024, n)
        BT = np.dot(B[j0:j1], AT)
        for r in range(R):
            for j in range(j0, j1):
                out[r, j] = BT[j - j0, r]


_KEY_CHUNK = 2048  # keys per GEMM of the weight rows: 16 rows x 4 weights x 2048 keys fit L2


@numba.njit(**_INLINE)
def _weight_rows(r, j0, j1, br, ur, kk, keys_ok, row, alpha, tau, lin0, lin1, S, coupled, W):
    """Pass 2 over the keys ``[j0, j1)`` of row ``r``: ``W[:, r, j - j0]`` = P (the
    unnormalized p), e per sign, P c, P z (branch-free, so that the loops vectorize,
    exps included; hidden keys weigh 0)."""
    two_tau = 2.0 * tau
    top = row[COL_TOP]
    P = W[0, r]
    if coupled:
        C = W[1 + S, r]
        Z = W[2 + S, r]
        for j in range(j0, j1):
            bj = br[j]
            pj = exp64(bj - top if keys_ok[j] else -np.inf)
            P[j - j0] = pj
            C[j - j0] = pj * (0.5 * ur + tau * bj)
            Z[j - j0] = pj * _z(two_tau, bj, ur, kk[j])
    else:
        for j in range(j0, j1):
            P[j - j0] = exp64(br[j] - top if keys_ok[j] else -np.inf)
    for s in range(S):
        lin = lin0 if s == 0 else lin1
        _e_row(j0, j1, br, ur, kk, keys_ok, top, row[COL_SIGN + s * SIGN_COLS + SIGN_SHIFT],
               alpha, tau, lin, P, W[1 + s, r])  # fmt: skip


@numba.njit(**_INLINE)
def _e_row(j0, j1, br, ur, kk, keys_ok, top, shift, alpha, tau, lin, P, E):
    """``e = exp(ℓ - shift)`` of one sign over ``[j0, j1)`` (0 for hidden keys), with
    ``ℓ = b + α z + lin b``. Where ``α = 0`` and ``lin`` is -1, 0 or 1 (FAVOR+, the
    hyperbolic and trigonometric maps) ``e = P^(1 + lin) e^((1 + lin) top - shift)``, a
    power of the row's ``P = e^(b - top)`` times a constant (at most 1: the shift bounds
    ``(1 + lin) top``), without an exponential of its own."""
    if alpha == 0.0 and lin == 1.0:
        c = math.exp(2.0 * top - shift)
        for j in range(j0, j1):
            p = P[j - j0]
            E[j - j0] = (p * p) * c
    elif alpha == 0.0 and lin == 0.0:
        c = math.exp(top - shift)
        for j in range(j0, j1):
            E[j - j0] = P[j - j0] * c
    elif alpha == 0.0 and lin == -1.0:
        c = math.exp(-shift)
        for j in range(j0, j1):
            E[j - j0] = c if keys_ok[j] else 0.0
    else:
        two_tau = 2.0 * tau
        for j in range(j0, j1):
            bj = br[j]
            ell = (bj + alpha * _z(two_tau, bj, ur, kk[j])) + lin * bj
            E[j - j0] = exp64(ell - shift if keys_ok[j] else -np.inf)


@numba.njit(**_JIT)
def row_sums(
    U, Kk, Vx, vv, kk, uu, keys_ok, limits, moment, signs, coupling, tables, sketch, A,
    draws, y, sums, est, var, first, b_out, yv_out, cdf_out,
):  # fmt: skip
    """The per-row sums of the error prediction over keys, for a block of query rows.

    Parameters
    ----------
    U : (R, d) float32 or float64 (the dtype of ``Kk`` and ``Vx``), C-contiguous
        The block's query rows ``ũ`` (scaled and, for fitted maps, times ``Ψ``).
    Kk : (L, d) float32 or float64, C-contiguous
        The sequence's keys ``k̃``.
    Vx : (L, d_v + 1) float32 or float64, C-contiguous
        Its values (less a centre, :func:`key_rows`) with a column of ones appended.
    vv, kk : (L,) float64
        ``|v_j|²``, ``|k̃_j|²``.
    uu : (R,) float64
        ``|ũ|²``.
    keys_ok : (L,) bool
        Keys not padded.
    limits : (R,) int64
        Row ``r`` sees keys ``j < limits[r]`` with ``keys_ok[j]``.
    moment : (3,) float64
        ``alpha, gamma, tau`` of the map's :class:`~favorkit.maps.SecondMoment`.
    signs : (S,) float64
        Its signs, ``(1,)`` or ``(1, -1)``.
    coupling : (4,) float64
        ``coupled, d, step, linear``: ``coupled = 0`` for iid projections (the rest unused),
        else the block coupling's table step and linear coefficient (exponential maps).
    tables : (2, 2, N) float64
        The coupling's log-moment tables at ``(c, -c)``: values and slopes.
    sketch : (L, 4 D) float32 or float64 (the dtype of ``Kk``), C-contiguous
        The sketch's key columns (:func:`sketch_columns`), for ``D`` Gaussian triples
        ``(a_i, b_i, b'_i)``.
    A : (D, d_v) float64
        The ``a_i``.
    draws : (R, n_sets, 2, n_pairs) float64, or with 0 rows
        The uniform draws of every row and set (``[r, k, 0]`` pick the first keys of the
        pairs, ``[r, k, 1]`` the second): rows with a positive total weight in a set are
        sampled here. With 0 rows nothing is sampled (store the running weights in
        ``cdf_out`` for :func:`sampled_pairs`, with ``b_out`` and ``yv_out``).
    y : (R, d_v + 1) float64, output
        The exact attention output rows, and a 0 (0 where a row sees no key).
    sums : (R, N_COLS) float64, output
        See the ``COL_*``, ``SIGN_*`` indices.
    est : (R, n_sets, 2) float64, output
        The key-pair sums over ``j ≠ l`` of the rest past the sketch's part, and of the
        sketch's part (0 where not sampled).
    var : (R, n_sets, 3) float64, output
        Their sampling variances and covariance.
    first : (R, n_sets, D) float64, output
        The sketch's samples of each set's key-pair sum over all pairs to second order in
        ``k̃_j·k̃_l`` (0 where a row sees no key): ``σγ X_i² + γ²/2 Y_i²`` per sign, with
        ``X_i = Σ_j e_j (a_i·(v_j - y)) (b_i·k̃_j)`` (``E X_i² = ‖Σ_j e_j (v_j - y)
        k̃_jᵀ‖²``) and ``Y_i = Σ_j e_j (a_i·(v_j - y)) (b_i·k̃_j) (b'_i·k̃_j)``; coupled,
        ``curv d (4 X^c_i X^p_i + (Y^p_i)²) + λ̄ (X^p_i)²`` with the weights ``p_j``
        (``X^p``, ``Y^p``) and ``p_j c_j`` (``X^c``).
    b_out, yv_out : (R, L) float64, output
        The logits ``ũ·k̃_j`` and ``y·v_j``, ``[:max(limits)]`` of each row: the kernel's
        own buffers, which the caller provides (reused, they spare the page faults of
        fresh multi-MiB arrays on every call).
    cdf_out : (R, n_sets, L) float64, output
        Running sums of the sampling weights, ``[:limits[r]]`` of each row; with 0 columns,
        not written.
    """
    R = U.shape[0]
    d_v = Vx.shape[1] - 1
    S = signs.size
    n_sets = est.shape[1]
    sample = draws.shape[0] > 0
    store = cdf_out.shape[2] > 0
    alpha, gamma, tau = moment[0], moment[1], moment[2]
    coupled = coupling[0] != 0.0
    d, step, linear = coupling[1], coupling[2], coupling[3]
    n_w = 1 + S + (2 if coupled else 0)  # weight rows: P, e per sign, P c, P z
    two_tau = 2.0 * tau
    half_gamma = 0.5 * gamma
    lin0, lin1 = signs[0] * gamma * tau, signs[S - 1] * gamma * tau  # of b in ℓ
    gk0, gk1 = 0.5 * signs[0] * gamma, 0.5 * signs[S - 1] * gamma  # of |k̃|² in g's
    sums[:] = 0.0
    y[:] = 0.0
    est[:] = 0.0
    var[:] = 0.0
    first[:] = 0.0
    n_sk = sketch.shape[1] // 4
    lam = linear * _mean(signs)
    # The sketched weight rows, one run of W: P, e per sign, P c (coupled) or the e's.
    lo, hi = (0, 2 + S) if coupled else (1, 1 + S)
    Lb = 0
    for r in range(R):
        Lb = max(Lb, limits[r])
    if Lb == 0:
        return
    if b_out.shape[1] < Lb or yv_out.shape[1] < Lb:
        raise ValueError("row_sums: b_out and yv_out need max(limits) columns")
    b = b_out  # the logits u·k̃_j
    _dots(U, Kk[:Lb], b)
    pairs_ok = np.zeros(R, dtype=np.bool_)
    for r in range(R):
        n = limits[r]
        ur = uu[r]
        br = b[r]
        # Pass 1: the maxima every exponential is taken relative to: of the logits, and
        # per sign of ℓ = log p + α z + σγτ b without its row constants, of g's exponent
        # ℓ + σγ|k̃|²/2 and of the sampling bound's ℓ + γ|k̃|²/2. Hidden keys: -inf.
        top = e0 = g0 = m0 = e1 = g1 = m1 = -np.inf
        count = 0
        for j in range(n):
            count += keys_ok[j]
            bj = br[j] if keys_ok[j] else -np.inf
            kj = kk[j]
            ell = (bj + alpha * _z(two_tau, bj, ur, kj)) + lin0 * bj
            grow = ell + gk0 * kj
            bound = ell + half_gamma * kj
            top = bj if bj > top else top
            e0 = ell if ell > e0 else e0
            g0 = grow if grow > g0 else g0
            m0 = bound if bound > m0 else m0
        if S == 2:
            for j in range(n):
                bj = br[j] if keys_ok[j] else -np.inf
                kj = kk[j]
                ell = (bj + alpha * _z(two_tau, bj, ur, kj)) + lin1 * bj
                grow = ell + gk1 * kj
                bound = ell + half_gamma * kj
                e1 = ell if ell > e1 else e1
                g1 = grow if grow > g1 else g1
                m1 = bound if bound > m1 else m1
        if top == -np.inf:  # sees no key: no weights, nothing sampled
            continue
        pairs_ok[r] = count >= 2  # a key pair j ≠ l to sample
        sums[r, COL_SEEN] = 1.0
        sums[r, COL_TOP] = top
        sums[r, COL_SIGN + SIGN_SHIFT] = max(e0, g0)
        sums[r, COL_SIGN + SIGN_BOUND] = m0
        if S == 2:
            sums[r, COL_SIGN + SIGN_COLS + SIGN_SHIFT] = max(e1, g1)
            sums[r, COL_SIGN + SIGN_COLS + SIGN_BOUND] = m1
    # Σ_j w_j [v_j, 1] for the weight rows P (unnormalized p), e per sign, P c, P z at once:
    # the weighted sums of the values and the sums of the weights (P's is the
    # normalizer). One GEMM per chunk of keys, so that the weights stay in cache.
    sv = np.zeros((n_w * R, d_v + 1))
    sk = np.zeros(((hi - lo) * R, 4 * n_sk))
    chunk = min(_KEY_CHUNK, Lb)
    w_buf = np.empty(n_w * R * chunk, dtype=Vx.dtype)  # one buffer: no page faults per chunk
    for j0 in range(0, Lb, _KEY_CHUNK):
        j1 = min(j0 + _KEY_CHUNK, Lb)
        W = w_buf[: n_w * R * (j1 - j0)].reshape((n_w, R, j1 - j0))
        for r in range(R):
            # Keys past the row's limit (and every key of a row that sees none) weigh 0.
            stop = min(limits[r], j1) if sums[r, COL_SEEN] != 0.0 else j0
            if stop > j0:
                _weight_rows(r, j0, stop, b[r], uu[r], kk, keys_ok, sums[r], alpha, tau,
                             lin0, lin1, S, coupled, W)  # fmt: skip
            for w in range(n_w):
                for j in range(max(stop, j0) - j0, j1 - j0):
                    W[w, r, j] = 0.0
        sv += np.dot(W.reshape(n_w * R, j1 - j0), Vx[j0:j1])
        start, width = lo * R * (j1 - j0), (hi - lo) * R * (j1 - j0)
        sk += np.dot(w_buf[start : start + width].reshape((hi - lo) * R, j1 - j0), sketch[j0:j1])
    for r in range(R):
        if sums[r, COL_SEEN] == 0.0:
            continue
        total = sv[r, d_v]
        sums[r, COL_TOTAL] = total
        y2 = 0.0
        for k in range(d_v):
            y[r, k] = sv[r, k] / total
            y2 += y[r, k] * y[r, k]
        sums[r, COL_Y2] = y2
        for s in range(S):
            # s_1 = Σ_j e_j (v_j - y)
            col = COL_SIGN + s * SIGN_COLS
            row = (1 + s) * R + r
            se = sv[row, d_v]
            acc = 0.0
            for k in range(d_v):
                t = sv[row, k] - y[r, k] * se
                acc += t * t
            sums[r, col + SIGN_S1SQ] = acc
            sums[r, col + SIGN_SUM_E] = se
        if coupled:
            # The coupled sum's factorizing part, curv (2d |s_c|² - |s_z|²) with
            # s_w = Σ_j p_j w_j (v_j - y).
            zbar = sv[(2 + S) * R + r, d_v] / total
            curv = _curvature(tables, zbar, step, linear, d) / max(d - 1.0, 1.0)
            sums[r, COL_ZBAR] = zbar
            sums[r, COL_CURV] = curv
            pc = sv[(1 + S) * R + r, d_v] / total
            cc = 0.0
            zz = 0.0
            for k in range(d_v):
                sc = sv[(1 + S) * R + r, k] / total - y[r, k] * pc
                sz = sv[(2 + S) * R + r, k] / total - y[r, k] * zbar
                cc += sc * sc
                zz += sz * sz
            sums[r, COL_CROSS] = curv * (d * (2.0 * cc) - zz)
    # The sketch's samples: X_i = Σ_j w_j (a_i·(v_j - y)) (b_i·k̃_j) from the GEMM's sums
    # of (a_i·v_j)(b_i·k̃_j) and of b_i·k̃_j; Y_i the same with (b_i·k̃_j)(b'_i·k̃_j).
    ay = np.empty(n_sk)
    for r in range(R):
        if sums[r, COL_SEEN] == 0.0:
            continue
        for i in range(n_sk):
            acc = 0.0
            for k in range(d_v):
                acc += A[i, k] * y[r, k]
            ay[i] = acc
        for s in range(S):
            row = (1 + s - lo) * R + r
            for i in range(n_sk):
                x = sk[row, i] - ay[i] * sk[row, n_sk + i]
                x2 = sk[row, 2 * n_sk + i] - ay[i] * sk[row, 3 * n_sk + i]
                first[r, s, i] = signs[s] * gamma * x * x + half_gamma * gamma * x2 * x2
        if coupled:
            total = sums[r, COL_TOTAL]
            dc = d * sums[r, COL_CURV]
            row = (1 + S) * R + r
            for i in range(n_sk):
                xp = (sk[r, i] - ay[i] * sk[r, n_sk + i]) / total
                xp2 = (sk[r, 2 * n_sk + i] - ay[i] * sk[r, 3 * n_sk + i]) / total
                xc = (sk[row, i] - ay[i] * sk[row, n_sk + i]) / total
                first[r, S, i] = dc * (4.0 * xc * xp + xp2 * xp2) + lam * xp * xp
    # y·v_j, for |v_j - y|² (y's last entry, 0, drops the ones)
    yv = yv_out
    _dots(y.astype(Vx.dtype), Vx[:Lb], yv)
    w2 = np.empty(Lb)
    G = np.empty(Lb)
    PE = np.empty((1 + S, 1, Lb))  # one row's P and e
    cdf = np.empty((n_sets, Lb))
    n_pairs = draws.shape[3]
    idx = np.empty(2 * n_pairs, dtype=np.int64)
    ent = np.empty((2 * n_pairs, 6))
    vals = np.empty(n_pairs)
    hvals = np.empty(n_pairs)
    # g = e e^{σγ|k̃|²/2}: the key's factor once per block instead of an exponential per row
    # and key, where the factor stays below e^300 (no overflow, and e is not subnormal
    # where g matters).
    H = np.empty((S, Lb))
    by_key = np.zeros(S, dtype=np.bool_)
    for s in range(S):
        grow_k = 0.5 * signs[s] * gamma
        top_k = -np.inf
        for j in range(Lb):
            x = grow_k * kk[j]
            top_k = x if x > top_k else top_k
            H[s, j] = exp64(x)
        by_key[s] = top_k < 300.0
    for r in range(R):
        if sums[r, COL_SEEN] == 0.0:
            continue
        n = limits[r]
        ur = uu[r]
        br = b[r]
        y2 = sums[r, COL_Y2]
        # Pass 3: |v_j - y|², P and e again (as pass 2 formed them: kept, they made the
        # GEMM's weights too large for the cache), g and the sampling weights; then the
        # sums over them.
        for j in range(n):
            x = (vv[j] - 2.0 * yv[r, j]) + y2
            w2[j] = (0.0 if x < 0.0 else x) if keys_ok[j] else 0.0
        _weight_rows(0, 0, n, br, ur, kk, keys_ok, sums[r], alpha, tau, lin0, lin1, S,
                     False, PE)  # fmt: skip
        for s in range(S):
            col = COL_SIGN + s * SIGN_COLS
            lin = signs[s] * gamma * tau
            grow_k = 0.5 * signs[s] * gamma
            shift = sums[r, col + SIGN_SHIFT]
            weights = cdf[s]
            # The sampling weights: bound * |v - y|. For σ = +1 the bound's exponent is g's
            # (γ > 0: g's exponent is the larger one, so its max is the shift).
            if by_key[s]:
                E = PE[1 + s, 0]
                Hs = H[s]
                for j in range(n):
                    gj = E[j] * Hs[j]
                    G[j] = gj
                    weights[j] = gj * math.sqrt(w2[j])
            else:
                for j in range(n):
                    bj = br[j]
                    ell = (bj + alpha * _z(two_tau, bj, ur, kk[j])) + lin * bj
                    gj = exp64((ell + grow_k * kk[j]) - shift if keys_ok[j] else -np.inf)
                    G[j] = gj
                    weights[j] = gj * math.sqrt(w2[j])
            if signs[s] < 0:
                top_b = sums[r, col + SIGN_BOUND]
                for j in range(n):
                    bj = br[j]
                    ell = (bj + alpha * _z(two_tau, bj, ur, kk[j])) + lin * bj
                    x = (ell + half_gamma * kk[j]) - top_b if keys_ok[j] else -np.inf
                    weights[j] = exp64(x) * math.sqrt(w2[j])
            diag, ggee, d1, d2 = _diag_sums(G, PE[1 + s, 0], w2, kk, n)
            sums[r, col + SIGN_DIAG] = diag
            sums[r, col + SIGN_GGEE] = ggee
            sums[r, col + SIGN_D1] = d1
            sums[r, col + SIGN_D2] = d2
        if coupled:
            total = sums[r, COL_TOTAL]
            curv = sums[r, COL_CURV]
            weights = cdf[S]
            P = PE[0, 0]
            for j in range(n):
                bj = br[j]
                zj = _z(two_tau, bj, ur, kk[j])
                cj = 0.5 * ur + tau * bj
                cv = _control(curv, d, lam, 2.0 * cj + kk[j], zj, zj)
                mag = _coupled_magnitude(curv, d, linear, zj, cv)
                wj = (P[j] / total) * math.sqrt(w2[j]) * math.sqrt(mag)
                weights[j] = wj if keys_ok[j] else 0.0
        # Running sums, the sets' chains interleaved in one loop (so they pipeline), in
        # scalars (array accumulators wait on store-to-load forwarding).
        c0 = cdf[0]
        c1 = cdf[min(1, n_sets - 1)]
        c2 = cdf[n_sets - 1]
        a0 = a1 = a2 = 0.0
        if n_sets == 1:
            for j in range(n):
                a0 += c0[j]
                c0[j] = a0
        elif n_sets == 2:
            for j in range(n):
                a0 += c0[j]
                a1 += c1[j]
                c0[j] = a0
                c1[j] = a1
        else:
            for j in range(n):
                a0 += c0[j]
                a1 += c1[j]
                a2 += c2[j]
                c0[j] = a0
                c1[j] = a1
                c2[j] = a2
        if not pairs_ok[r]:  # one visible key: nothing to sample
            a0 = a1 = a2 = 0.0
        sums[r, COL_WTOT] = a0
        if n_sets > 1:
            sums[r, COL_WTOT + 1] = a1
        if n_sets > 2:
            sums[r, COL_WTOT + 2] = a2
        if store:
            for j in range(n):
                for k in range(n_sets):
                    cdf_out[r, k, j] = cdf[k, j]
        for k in range(n_sets):
            if sample and sums[r, COL_WTOT + k] > 0:
                out = _row_pairs(
                    k, cdf[k], n, draws[r, k].reshape(2 * n_pairs), br, yv[r], y[r],
                    sums[r], ur, Kk, Vx, vv, kk, signs, moment, coupling, tables, idx,
                    ent, vals, hvals,
                )  # fmt: skip
                est[r, k, 0], est[r, k, 1] = out[0], out[1]
                var[r, k, 0], var[r, k, 1], var[r, k, 2] = out[2], out[3], out[4]


@numba.njit(**_JIT)
def sampled_pairs(
    Kk, Vx, vv, kk, uu, limits, moment, signs, coupling, tables, draws, y, sums, b, yv,
    cdf, est, var,
):  # fmt: skip
    """The key-pair sums of :func:`row_sums` run without draws, from what it stored.

    Parameters
    ----------
    Kk, Vx, vv, kk, uu, limits, moment, signs, coupling, tables
        As for :func:`row_sums`, on the same block.
    draws : (R, n_sets, 2, n_pairs) float64
        As for :func:`row_sums`; rows with a total weight of 0 in a set are skipped.
    y, sums, b, yv, cdf
        :func:`row_sums`'s ``y``, ``sums``, ``b_out``, ``yv_out``, ``cdf_out``.
    est, var : (R, n_sets, 2) and (R, n_sets, 3) float64, output
        As for :func:`row_sums` (0 where skipped).
    """
    R = uu.shape[0]
    n_sets = cdf.shape[1]
    n_pairs = draws.shape[3]
    idx = np.empty(2 * n_pairs, dtype=np.int64)
    ent = np.empty((2 * n_pairs, 6))
    vals = np.empty(n_pairs)
    hvals = np.empty(n_pairs)
    est[:] = 0.0
    var[:] = 0.0
    for r in range(R):
        for k in range(n_sets):
            if sums[r, COL_WTOT + k] > 0:
                out = _row_pairs(
                    k, cdf[r, k], limits[r], draws[r, k].reshape(2 * n_pairs), b[r], yv[r],
                    y[r], sums[r], uu[r], Kk, Vx, vv, kk, signs, moment, coupling, tables,
                    idx, ent, vals, hvals,
                )  # fmt: skip
                est[r, k, 0], est[r, k, 1] = out[0], out[1]
                var[r, k, 0], var[r, k, 1], var[r, k, 2] = out[2], out[3], out[4]


@numba.njit(**_REASSOC)
def _sum_squares(a, j, n):
    """``Σ_k a[j, k]²`` over ``k < n``, in float64."""
    acc = 0.0
    for k in range(n):
        t = np.float64(a[j, k])
        acc += t * t
    return acc


@numba.njit(**_JIT)
def key_rows(K, V, root, psi, center, Kk, kk, Vx, vv):
    """The sequence's keys and values as :func:`row_sums` takes them, in one pass.

    ``Kk = K root / psi`` and ``kk = |Kk|²`` per row, ``Vx = [V - center, 1]`` and
    ``vv = |V - center|²`` per row, from ``K``, ``V`` of any float dtype into ``Kk``,
    ``Vx`` of float32 or float64 (the norms, in float64, are those of the stored rows).
    ``root``: the square root of the logit scale; ``psi``: a fitted map's key scaling,
    ones otherwise; ``center``: a point near the values' mean. The prediction does not
    change when every value moves by one vector, and centred values keep the weighted
    sums of values (:func:`row_sums`'s GEMMs, float32 for float32 inputs) from rounding
    away the differences ``v_j - y`` when the values share a large offset. Four numpy
    passes take ~6 ms for this at L = 16 384, d = 64.
    """
    d = K.shape[1]
    d_v = V.shape[1]
    for j in range(K.shape[0]):
        for k in range(d):
            Kk[j, k] = (np.float64(K[j, k]) * root) / psi[k]
        kk[j] = _sum_squares(Kk, j, d)
        for k in range(d_v):
            Vx[j, k] = np.float64(V[j, k]) - center[k]
        Vx[j, d_v] = 1.0
        vv[j] = _sum_squares(Vx, j, d_v)


@numba.njit(**_JIT)
def sketch_columns(Kk, Vx, A, B, out):
    """The sketch's key columns for a block of keys, in four runs of D:
    ``(a_i·v_j)(b_i·k̃_j)``, ``b_i·k̃_j``, ``(a_i·v_j)(b_i·k̃_j)(b'_i·k̃_j)``,
    ``(b_i·k̃_j)(b'_i·k̃_j)``; ``A`` (D, d_v + 1) holds the ``a_i`` with a 0 appended (for
    ``Vx``'s column of ones), ``B`` (2D, d) the ``b_i`` then the ``b'_i`` (one GEMM of 2D
    columns: 10 % faster than two of D at D = 16), in ``Kk``'s dtype."""
    n_sk = A.shape[0]
    av = np.dot(Vx, A.T)
    bk = np.dot(Kk, B.T)
    for j in range(Kk.shape[0]):
        for i in range(n_sk):
            b1 = bk[j, i]
            b2 = bk[j, n_sk + i]
            x = av[j, i] * b1
            out[j, i] = x
            out[j, n_sk + i] = b1
            out[j, 2 * n_sk + i] = x * b2
            out[j, 3 * n_sk + i] = b1 * b2


@numba.njit(**_REASSOC)
def _row_dot(a, i, b, j):
    """``a[i]·b[j]`` for 2-D ``a``, ``b``."""
    acc = 0.0
    for k in range(a.shape[1]):
        acc += a[i, k] * b[j, k]
    return acc


@numba.njit(**_REASSOC)
def _row_dist2(a, i, y):
    """``|a[i] - y|²``."""
    acc = 0.0
    for k in range(a.shape[1]):
        t = a[i, k] - y[k]
        acc += t * t
    return acc


@numba.njit(**_JIT)
def noise_rows(U, Kf, Vf, seqs, picks, root, psi, share, moment, signs, out):
    """The sums of the AccuracyWarning check (``favorkit.attention._accuracy.
    quick_noise_ratio``) for a few query rows, each with its own sampled keys.

    Parameters
    ----------
    U : (R, d) float64
        The query rows ``ũ``.
    Kf, Vf : (N, L, d), (N, L, d_v) float arrays
        The keys and values of every sequence (any float dtype).
    seqs : (R,) int64
        The sequence of each row.
    picks : (R, n) int64
        Each row's sampled keys: ``k̃ = Kf[seqs[r], picks[r, j]] root / psi`` and its value.
    root : float
        The square root of the logit scale.
    psi : (d,) float64
        A fitted map's key scaling (ones otherwise).
    share : (R,) float64
        The sample's share of the row's visible keys (``n`` over their number): the sums
        of one-key terms are scaled by it, as a sample of the keys carries that share.
    moment : (4,) float64
        ``alpha, gamma, tau, log_const`` of the map's :class:`~favorkit.maps.SecondMoment`.
    signs : (S,) float64
    out : (R, 3) float64, output
        Per row: the predicted squared error of the output at one projection (the exact
        one-projection covariances without key-key interactions, iid couplings); the
        normalizer's one-projection ``1 + relVar``; the attention-weighted spread of the
        values ``Σ_j p_j |v_j - y|²``. The scales ``exp(log_const + σγ|u|² + 2 shift)``
        are inf above ``e^700``, as in the prediction.

    In numpy its few thousand numbers take ~40 calls (~0.4 ms however small the arrays);
    here the sampled keys and values are gathered, scaled and summed in one pass.
    """
    R, n = picks.shape
    d = Kf.shape[2]
    d_v = Vf.shape[2]
    S = signs.size
    alpha, gamma, tau, log_const = moment[0], moment[1], moment[2], moment[3]
    krows = np.empty((n, d))
    vrows = np.empty((n, d_v))
    b = np.empty(n)
    kk = np.empty(n)
    p = np.empty(n)
    w2 = np.empty(n)
    y = np.empty(d_v)
    s1 = np.empty(d_v)
    for r in range(R):
        seq = seqs[r]
        for j in range(n):
            key = picks[r, j]
            for k in range(d):
                krows[j, k] = (np.float64(Kf[seq, key, k]) * root) / psi[k]
            for k in range(d_v):
                vrows[j, k] = Vf[seq, key, k]
        ur = _row_dot(U, r, U, r)
        top = -np.inf
        for j in range(n):
            b[j] = _row_dot(krows, j, U, r)
            kk[j] = _row_dot(krows, j, krows, j)
            top = b[j] if b[j] > top else top
        total = 0.0
        for j in range(n):
            p[j] = exp64(b[j] - top)
            total += p[j]
        y[:] = 0.0
        for j in range(n):
            p[j] = p[j] / total
            for k in range(d_v):
                y[k] += p[j] * vrows[j, k]
        spread = 0.0
        for j in range(n):
            w2[j] = _row_dist2(vrows, j, y)
            spread += p[j] * w2[j]
        log_total = math.log(total)
        single = 0.0
        norm = 0.0
        for s in range(S):
            lin = signs[s] * gamma * tau
            grow_k = 0.5 * signs[s] * gamma
            shift = -np.inf
            for j in range(n):
                ell = (b[j] + alpha * _z(2.0 * tau, b[j], ur, kk[j])) + lin * b[j]
                shift = max(shift, ell, ell + grow_k * kk[j])
            # ℓ without its row constants -max b - log Σ: e, g relative to the shift are
            # the same; the scale takes them back.
            front = log_const + signs[s] * gamma * ur + 2.0 * (shift - top - log_total)
            scale = (np.inf if front > 700.0 else math.exp(front)) / S
            s1[:] = 0.0
            diag = 0.0
            sum_e = 0.0
            ggee = 0.0
            for j in range(n):
                ell = (b[j] + alpha * _z(2.0 * tau, b[j], ur, kk[j])) + lin * b[j]
                e = exp64(ell - shift)
                g = exp64((ell + grow_k * kk[j]) - shift)
                for k in range(d_v):
                    s1[k] += e * (vrows[j, k] - y[k])
                t = g * g - e * e
                diag += t * w2[j]
                ggee += t
                sum_e += e
            s1sq = 0.0
            for k in range(d_v):
                s1sq += s1[k] * s1[k]
            single += scale * (s1sq + share[r] * diag)
            norm += scale * (sum_e * sum_e + share[r] * ggee)
        out[r, 0] = single
        out[r, 1] = norm
        out[r, 2] = spread
