"""Slow, obvious references for every Numba kernel in ``favorkit/_kernels``.

Each function here computes the same thing as its kernel twin with plain numpy (or plain
Python loops), written for clarity, not speed. Tests assert that the two agree in float32
and float64. Sections: feature maps, exponential, FWHT, attention.
"""

import numpy as np

# --- feature maps (favorkit/_kernels/feature_maps.py) --------------------------------------


def plus_minus_shift_rows(z, shift):
    """[z + shift, shift - z] with the shift broadcast along rows."""
    return np.concatenate([shift[:, None] + z, shift[:, None] - z], axis=1)


def cos_sin_rows(z, log_scale):
    """exp(log_scale) * [cos z, sin z]."""
    h = np.exp(log_scale)[:, None]
    return np.concatenate([np.cos(z) * h, np.sin(z) * h], axis=1)


def cos_offset_rows(z, offset, log_scale):
    """exp(log_scale) * cos(z + offset)."""
    return np.exp(log_scale)[:, None] * np.cos(z + offset[None, :])


def gerf_row_terms(sq_u, sq_t, terms):
    """shift = c - sq_t/2 - gw sq_u; check: shift + A|w|²max - B|w|max sqrt(sq_t) < log_tiny."""
    shift = terms.log_const - 0.5 * sq_t - terms.gaussian_weight * sq_u
    bound = shift + terms.a_w_sq_max - terms.b_w_norm * np.sqrt(sq_t)
    return shift, (bound < terms.log_tiny) | bool(terms.check_all)


def stage_gerf_rows(x, c2, weights_t, terms, n_cols):
    """[x, shift, 1, ...] with the row terms of gerf_row_terms, norms in float64."""
    x64 = x.astype(np.float64)
    shift, check = gerf_row_terms(c2 * (x64**2).sum(1), (x64**2) @ weights_t, terms)
    xs = np.ones((x.shape[0], n_cols))
    xs[:, : x.shape[1]] = x64
    xs[:, x.shape[1]] = shift
    return xs.astype(x.dtype), shift, check


def gerf_rows_dense(x, c2, weights_t, terms):
    """gerf_row_terms of the float64 norms c2 |x|² and Σ weights_t x²."""
    x64 = x.astype(np.float64)
    return gerf_row_terms(c2 * (x64**2).sum(1), (x64**2) @ weights_t, terms)


# --- exponential (favorkit/_kernels/fastexp.py) --------------------------------------------


def exp_exact(x):
    """exp(x) in float64 (|relative error| < 1e-16), the reference for float32 exps."""
    return np.exp(np.asarray(x, dtype=np.float64))


def exp_long(x):
    """exp(x) in long double (64-bit significand on x86-64: |relative error| < 1e-19), the
    reference for float64 exps."""
    return np.exp(np.asarray(x, dtype=np.longdouble))


def float64_ulp(y):
    """The spacing of float64 numbers at |y| (the subnormal spacing 2^-1074 below 2^-1022)."""
    return np.spacing(np.abs(np.asarray(y, dtype=np.float64)))


def float32_ulp(y):
    """The spacing of float32 numbers at |y| (the subnormal spacing 2^-149 below 2^-126)."""
    y = np.abs(np.asarray(y, dtype=np.float64))
    exponent = np.floor(np.log2(np.maximum(y, np.finfo(np.float32).tiny)))
    return np.exp2(exponent - 23)


# --- FWHT (favorkit/_kernels/fwht.py) -------------------------------------------------------


def hadamard(p):
    """The Sylvester-ordered ±1 Hadamard matrix of order p (a power of two)."""
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    return h


def fwht_rows(a):
    """Each row times the Hadamard matrix: H @ row for every row."""
    return a @ hadamard(a.shape[1]).T


# --- attention (favorkit/_kernels/attention.py, favorkit/attention.py) ----------------------


def causal_block(fq, fk, s, u, state, R0):
    """Prefix sums position by position, at true scale (no stabilizer), in float64.

    Returns ``(num, total)``: ``num[t] = fq[t] . (exp(R0) state + sum_{j<=t} exp(s_j)
    fk[j]^T u[j])`` and ``total`` the whole sum over the block plus the incoming state.
    """
    fq, fk, u = (np.asarray(a, dtype=np.float64) for a in (fq, fk, u))
    acc = np.exp(R0) * state if np.isfinite(R0) else np.zeros_like(state)
    num = np.zeros((fq.shape[0], u.shape[1]))
    for t in range(fq.shape[0]):
        acc = acc + np.exp(s[t]) * np.outer(fk[t], u[t])
        num[t] = fq[t] @ acc
    return num, acc


def merge_normalize(num, ref, cross, r_cross):
    """``row = exp(ref) num + exp(r_cross) cross``; ``row[:-1] / row[-1]``, 0 where the
    normalizer is not positive and finite or the quotient is not finite."""
    rows = np.exp(ref)[:, None] * num
    if cross.shape[0]:
        rows = rows + np.exp(r_cross) * cross
    den = rows[:, -1]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        quotient = rows[:, :-1] / den[:, None]
    ok = (den > 0) & np.isfinite(den) & np.isfinite(quotient).all(axis=1)
    out = np.zeros((num.shape[0], num.shape[1] - 1))
    out[ok] = quotient[ok]
    seen = np.isfinite(ref) | (cross.shape[0] > 0 and np.isfinite(r_cross))
    return out, int((seen & ~ok).sum())


def favor_features(X, W, scale, estimator="positive", a=0.0, psi=None):
    """The Performer feature maps at true scale, float64, no stabilizer: trigonometric
    (Eq. 5 with sin/cos) and positive/hyperbolic (Lemma 1, Eq. 7) of Choromanski et al. 2021.

    ``estimator="gerf"``: the generalized exponential map (GERF) of FAVOR++/SADERF
    (Likhosherstov et al. 2022, "Chefs' Random Tables")
    ``D exp(A|ω|² + B ω·x̃ - |x̃|²/2) / sqrt(m)``, ``B = sqrt(1 - 4A)``, ``D = (1 - 4A)^{d/4}``,
    with ``x̃ = sqrt(scale) psi x`` (pass ``1/Ψ`` for keys).
    """
    X = np.asarray(X, dtype=np.float64) * np.sqrt(scale)
    if estimator == "gerf":
        Xt = X * (1.0 if psi is None else psi)
        m, d = W.shape
        b = np.sqrt(1 - 4 * a)
        log_f = a * (W**2).sum(axis=1) + b * Xt @ W.T - (Xt**2).sum(axis=1, keepdims=True) / 2
        return (1 - 4 * a) ** (d / 4) * np.exp(log_f) / np.sqrt(m)
    Z = X @ W.T
    m = W.shape[0]
    sq = (X**2).sum(axis=1, keepdims=True)
    if estimator == "positive":
        return np.exp(Z - sq / 2) / np.sqrt(m)
    if estimator == "hyperbolic":
        return np.concatenate([np.exp(Z - sq / 2), np.exp(-Z - sq / 2)], axis=1) / np.sqrt(2 * m)
    return np.exp(sq / 2) * np.concatenate([np.cos(Z), np.sin(Z)], axis=1) / np.sqrt(m)


def linear_attention_dense(fq, fk, V, causal=False, mask=None):
    """``D^{-1} A V`` with ``A = fq fk^T`` formed densely (L x L), padded keys dropped."""
    A = fq @ fk.T
    if causal:
        A = np.tril(A)
    if mask is not None:
        A = A * ~mask[None, :]
    return (A @ V) / A.sum(axis=1, keepdims=True)


def softmax_attention_dense(Q, K, V, causal=False, scale=None, mask=None):
    """``softmax(scale Q K^T) V`` straight from the definition (Performer Sec. 2.1), float64."""
    Q, K, V = (np.asarray(a, dtype=np.float64) for a in (Q, K, V))
    scale = 1 / np.sqrt(Q.shape[-1]) if scale is None else scale
    logits = scale * Q @ K.T
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape, dtype=bool)), logits, -np.inf)
    if mask is not None:
        logits = np.where(mask[None, :], -np.inf, logits)
    A = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (A / A.sum(axis=1, keepdims=True)) @ V


def column_moments(X, skip):
    """``[column sums, column sums of squares]`` of the rows not skipped, and their count."""
    X = np.asarray(X, dtype=np.float64)
    if len(skip):
        X = X[~skip]
    return np.stack([X.sum(axis=0), (X**2).sum(axis=0)]), X.shape[0]


# --- positive features in log space (favorkit/_kernels/attention.py) -----------------------


def key_column_max(z, rt, c):
    """max(c, column maxima of z + rt over the rows with rt > -inf); and all those finite."""
    visible = rt > -np.inf
    rows = z[visible].astype(np.float64)
    c = c.copy()
    if rows.size:
        c = np.maximum(c, (rows + rt[visible, None]).max(axis=0))
    return c, bool(np.isfinite(rows).all())


def shift_keys(z, rt, c):
    """z + rt - c (rounded once to z's dtype), -inf rows where rt = -inf."""
    out = (z.astype(np.float64) + rt[:, None]) - c[None, :]
    out[rt == -np.inf] = -np.inf
    return out.astype(z.dtype)


def shift_queries(z, c):
    """y - max_i y with y = z + c, per row (rounded once to z's dtype)."""
    y = z.astype(np.float64) + c[None, :]
    return (y - y.max(axis=1, keepdims=True)).astype(z.dtype), bool(np.isfinite(z).all())


def value_exponents(v, rt, bits, kappa):
    """Smallest kappa_k >= kappa0_k with max |v_jk| 2^-kappa_k <= 2^bits over visible rows."""
    kappa = kappa.copy()
    top = np.abs(v[rt > -np.inf].astype(np.float64)).max(axis=0, initial=0.0)
    for k, x in enumerate(top):
        while x > 0 and x * 2.0 ** -kappa[k] > 2.0**bits:
            kappa[k] += 1
    return kappa


def scaled_values(v, kappa):
    """[v 2^-kappa, 1]."""
    return np.concatenate([v * 2.0**-kappa, np.ones((v.shape[0], 1))], axis=1)


def normalize_rows(num, kappa):
    """num[:, :-1] / num[:, -1] 2^kappa."""
    return num[:, :-1] / num[:, -1:] * 2.0**kappa


def log_state_true_scale(state, c, kappa):
    """The sums a (state, c, kappa) triple stands for: exp(c_i) state_i [2^kappa, 1]."""
    with np.errstate(invalid="ignore"):
        full = np.exp(c)[:, None] * state * np.append(2.0**kappa, 1.0)[None, :]
    return np.nan_to_num(full)  # columns with c = -inf hold nothing


def log_causal_block(zq, zk, rt, v, state, c, kappa):
    """Causal positive attention at true scale, position by position, in float64.

    ``out[t] = num[:-1] / num[-1]`` with ``num = sum_i exp(zq_ti) (carried_i + sum_{j<=t}
    exp(zk_ji + rt_j) [v_j, 1])``; also returns the total carried sums after the block.
    """
    zq, zk, v = (np.asarray(a, dtype=np.float64) for a in (zq, zk, v))
    acc = log_state_true_scale(state, c, kappa)
    out = np.zeros((zq.shape[0], v.shape[1]))
    seen = np.isfinite(c).any()
    for t in range(zq.shape[0]):
        if rt[t] > -np.inf:
            acc = acc + np.outer(np.exp(zk[t] + rt[t]), np.append(v[t], 1.0))
            seen = True
        if seen:
            num = np.exp(zq[t]) @ acc
            out[t] = num[:-1] / num[-1]
    return out, acc
