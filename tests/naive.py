"""Slow, obvious references for every Numba kernel in ``favorkit/_kernels``.

Each function here computes the same thing as its kernel twin with plain numpy (or plain
Python loops), written for clarity, not speed. Tests assert that the two agree in float32
and float64. Sections: feature maps, exponential, FWHT, attention, accuracy prediction.
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


# --- accuracy prediction (favorkit/_kernels/accuracy.py, favorkit/attention/_accuracy.py) ---
#
# ``sm`` is the map's favorkit.maps.SecondMoment, ``coupled`` a favorkit _Coupling (None for
# iid projections). accuracy_row_sums and accuracy_row_pairs go row by row over each row's
# visible keys; rows_error is the whole prediction per row formed with numpy over
# (rows x L) arrays (the same importance samples from the same seeds).


def key_rows(K, V, root, psi, center, dtype=np.float64):
    """``K root / psi`` and its rows' squared norms; ``[V - center, 1]`` and its value
    rows' squared norms; the rows in ``dtype``, the norms (of the stored rows) in float64."""
    Kk = (K.astype(np.float64) * root / psi).astype(dtype)
    V = (V.astype(np.float64) - center).astype(dtype)
    Vx = np.hstack([V, np.ones((len(V), 1), dtype)])
    norms = [(a.astype(np.float64) ** 2).sum(1) for a in (Kk, V)]
    return Kk, norms[0], Vx, norms[1]


def accuracy_row_sums(U, Kk, V, keys_ok, limits, sm, coupled=None, sketch=None):
    """Per query row ``u`` of ``U`` (over its keys ``j < limits[r]`` with ``keys_ok[j]``),
    the sums of the error prediction and the importance weights of its key pairs.

    Returns one entry per row: None if the row sees no key, else a dict with ``top``
    (max of the logits ``b = k̃·u``), ``total`` (Σ exp(b - top)), ``y`` (the attention
    output), ``y2``, per sign lists ``shift``, ``bound`` (the maxima the exponentials are
    taken against, without ℓ's row constants -top - log total), ``s1sq``, ``diag``,
    ``sum_e``, ``ggee``, ``d1``, ``d2``; coupled: ``zbar``, ``curv``, ``cross``; ``first`` (with
    ``sketch = (A, B)``: each set's sketch samples of its first-order pair sum over all
    pairs, as the kernel's ``first``); ``weights`` (one array
    over the keys ``j < limits[r]`` per sampling set: each sign's, then the coupled one,
    0 for hidden keys; ``factor``: the weights over ``|v_j - y|``, on the visible keys) and
    the visible keys' ``e``, ``g`` (per sign), ``p``, ``z``, ``c``, ``h`` for the pair
    values.
    """
    tau, gamma, alpha = sm.pair_sign, sm.gamma, sm.alpha
    out = []
    for r in range(U.shape[0]):
        n = limits[r]
        vis = np.flatnonzero(keys_ok[:n])
        if not vis.size:
            out.append(None)
            continue
        u, K, Vv = U[r], Kk[vis], V[vis]
        b = K @ u
        top = b.max()
        P = np.exp(b - top)
        p = P / P.sum()
        y = p @ Vv
        w = Vv - y  # v_j - y
        w2 = (w * w).sum(1)
        uu, kk = u @ u, (K * K).sum(1)
        z = np.maximum(uu + 2 * tau * b + kk, 0.0)  # |u + τ k̃|²
        row = {"top": top, "total": P.sum(), "y": y, "y2": y @ y, "weights": [], "e": [], "g": []}
        row["factor"] = []
        for key in ("shift", "bound", "s1sq", "diag", "sum_e", "ggee", "d1", "d2", "first"):
            row[key] = []
        for sigma in sm.signs:
            # log p + α z + σγτ b, less log p's row constants
            ell = b + alpha * z + sigma * gamma * tau * b
            grow = ell + 0.5 * sigma * gamma * kk  # g's exponent
            bound = ell + 0.5 * gamma * kk  # bounds |e^{σγ k̃_j·k̃_l} - 1| for the sampling
            shift = max(ell.max(), grow.max())
            e, g = np.exp(ell - shift), np.exp(grow - shift)
            s1 = e @ w
            row["shift"].append(shift)
            row["bound"].append(bound.max())
            row["s1sq"].append(s1 @ s1)
            row["diag"].append(((g * g - e * e) * w2).sum())
            row["sum_e"].append(e.sum())
            row["ggee"].append((g * g - e * e).sum())
            row["d1"].append((e * e * w2 * kk).sum())
            row["d2"].append((e * e * w2 * kk * kk).sum())
            if sketch is not None:
                X = sketch_samples(e[None], Vv, y[None], K, *sketch[:2])[0]
                X2 = sketch_samples(e[None], Vv, y[None], K, *sketch)[0]
                row["first"].append(sigma * gamma * X**2 + 0.5 * gamma**2 * X2**2)
            row["factor"].append(np.exp(bound - bound.max()))
            row["weights"].append(row["factor"][-1] * np.sqrt(w2))
            row["e"].append(e)
            row["g"].append(g)
        row.update(p=p, z=z)
        if coupled is not None:
            d = len(u)
            zbar = p @ z
            curv = float(coupled.curvature(zbar)) / max(d - 1, 1)
            c = 0.5 * uu + tau * b
            s_c, s_z = (p * c) @ w, (p * z) @ w
            chi = coupled.diag(z)
            lam = coupled.linear * np.mean(sm.signs)
            cv = control(curv, d, lam, 2 * c + kk, z, z)
            row.update(zbar=zbar, curv=curv, cross=curv * (2 * d * (s_c @ s_c) - s_z @ s_z))
            if sketch is not None:
                Xp, Xc = (
                    sketch_samples(w[None], Vv, y[None], K, *sketch[:2])[0] for w in (p, p * c)
                )
                Xp2 = sketch_samples(p[None], Vv, y[None], K, *sketch)[0]
                row["first"].append(d * curv * (4 * Xc * Xp + Xp2**2) + lam * Xp**2)
            row.update(c=c, h=chi - cv, delta=sketched(curv, d, lam, 2 * c, kk))
            mag = coupled_magnitude(curv, d, coupled.linear, z, cv)
            row["factor"].append(p * np.sqrt(mag))
            row["weights"].append(row["factor"][-1] * np.sqrt(w2))
        for k, weights in enumerate(row["weights"]):  # over all keys j < n, hidden ones 0
            full = np.zeros(n)
            full[vis] = weights
            row["weights"][k] = full
        row["keys"] = vis
        out.append(row)
    return out


def accuracy_row_pairs(row, k, draws, Kk, V, sm, coupled=None, part=0):
    """One row's key-pair sum of sampling set ``k`` by importance sampling (a row of
    :func:`accuracy_row_sums`): the estimate and its sampling variance, bounds on how
    much the round-off of the sampling weights may change them, and the sampled values.

    ``draws`` (2, n_pairs) uniform in [0, 1) pick ``j`` and ``l`` by inverting the
    normalized running sums of the set's weights; a pair contributes ``value / (w_j w_l)``
    (0 if ``j = l`` or a weight is 0), with ``value = e_j e_l (v_j - y)·(v_l - y)
    (e^x - 1 - x - x²/2)`` with ``x = σγ k̃_j·k̃_l`` (set of sign σ) or ``p_j p_l (v_j - y)·(v_l - y)
    (χ_jl - control_jl - (h_j + h_l)/2)`` (coupled set, :func:`control`): the rest past the
    sketch's part (``part=0``); or that part (``part=1``), ``x + x²/2`` in place of the
    exponential's rest, or :func:`sketched` less its values at ``j = l`` spread as above.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # hostile scales: inf, NaN
        return _row_pairs(row, k, draws, Kk, V, sm, coupled, part)


def _row_pairs(row, k, draws, Kk, V, sm, coupled, part):
    weights = row["weights"][k]
    cdf = np.cumsum(weights)
    picks = np.minimum(np.searchsorted(cdf / cdf[-1], draws), len(weights) - 1)
    where = {key: i for i, key in enumerate(row["keys"])}  # key -> index among visible
    # Round-off the result may carry, to first order (``slack``): the kernel, as the
    # reference, forms |v_j - y|² as |v_j|² - 2 y·v_j + |y|², with an error of
    # (4 + d_v) eps (|v_j|² + |y|²), and y with one of ~eps |v| (dy): relative errors of
    # the weight |v_j - y| (and of v_j - y) of rel_j, large where v_j ~ y. The pair terms
    # themselves: ~eps of their exponents (e, e^{σγ k̃_j·k̃_l}, the coupling at z) where
    # these are large, and the coupled set's terms cancel to its r (term / |r|).
    eps = np.finfo(float).eps
    vv = (V * V).sum(1)
    w2 = ((V - row["y"]) ** 2).sum(1)
    error = (4 + V.shape[1]) * eps * (vv + row["y2"])
    dy = 32 * eps * np.sqrt(vv.max())
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(w2 > 0, error / (2 * w2) + 2 * dy / np.sqrt(w2), 1.0)
    rel = np.minimum(rel, 1.0)
    vals, slack = [], []
    for j, l in zip(*picks, strict=True):
        if j == l or not (weights[j] > 0 and weights[l] > 0):
            vals.append(0.0)
            slack.append(0.0)
            continue
        a, c = where[j], where[l]
        centered = (V[j] - row["y"]) @ (V[l] - row["y"])
        key_dot = Kk[j] @ Kk[l]
        if k < len(sm.signs):
            e = row["e"][k]
            exponent = sm.signs[k] * sm.gamma * key_dot
            low = exponent + 0.5 * exponent**2
            value = e[a] * e[c] * centered * (low if part else np.expm1(exponent) - low)
            terms = 0.0
            exponents = abs(exponent) + np.abs(np.log(e[[a, c]])).sum()
        else:
            d = Kk.shape[1]
            p, z, cc, h = row["p"], row["z"], row["c"], row["h"]
            pair = coupled.pair(z[a], z[c], cc[a] + cc[c] + key_dot)
            lam = coupled.linear * np.mean(sm.signs)
            second = control(row["curv"], d, lam, cc[a] + cc[c] + key_dot, z[a], z[c])
            if part:
                dl = row["delta"]
                low = sketched(row["curv"], d, lam, cc[a] + cc[c], key_dot)
                value = p[a] * p[c] * centered * (low - 0.5 * (dl[a] + dl[c]))
                terms = abs(p[a] * p[c] * centered) * (abs(low) + abs(dl[a] + dl[c]))
            else:
                value = p[a] * p[c] * centered * (pair - second - 0.5 * (h[a] + h[c]))
                terms = abs(p[a] * p[c] * centered) * (abs(pair) + abs(second) + abs(h[a] + h[c]))
            terms *= 1 + z[a] + z[c]
            exponents = 0.0
        vals.append(float(value) / (weights[j] * weights[l]))
        rounding = abs(vals[-1]) * (rel[j] + rel[l] + 64 * eps * (1 + exponents))
        slack.append(rounding + 64 * eps * float(terms) / (weights[j] * weights[l]))
    vals, slack = np.array(vals), np.array(slack)
    total, n = weights.sum(), len(vals)
    est, var = total**2 * vals.mean(), total**4 * vals.var(ddof=1) / n
    # What that round-off may change them by, to first order: in the values, and in the
    # total weight (squared in the estimate, to the 4th power in its variance).
    rel_total = (weights * rel[: len(weights)]).sum() / total
    spread = 2 * np.mean(np.abs(vals - vals.mean()) * slack) + np.mean(slack**2)
    est_slack = total**2 * slack.mean() + 2 * rel_total * abs(est)
    var_slack = total**4 * spread * n / (n - 1) / n + 4 * rel_total * var
    return est, var, est_slack, var_slack, vals


def noise_rows(U, K, V, share, sm):
    """The AccuracyWarning check's per-row sums (each row with its own sampled keys ``K``
    (R, n, d) and values ``V``): the predicted squared error at one projection, the
    normalizer's ``1 + relVar`` and the spread ``Σ p |v - y|²``, with numpy over
    (rows x keys) arrays."""
    b = np.einsum("rkd,rd->rk", K, U)
    logp = b - b.max(axis=1, keepdims=True)
    p = np.exp(logp)
    total = p.sum(axis=1, keepdims=True)
    p /= total
    logp -= np.log(total)
    y = np.einsum("rk,rkv->rv", p, V)
    w = V - y[:, None, :]
    w2 = np.einsum("rkv,rkv->rk", w, w)
    spread = (p * w2).sum(axis=1)
    uu, kk = np.einsum("rd,rd->r", U, U), np.einsum("rkd,rkd->rk", K, K)
    z = np.maximum(uu[:, None] + 2.0 * sm.pair_sign * b + kk, 0.0)
    single = np.zeros(len(U))
    norm = np.zeros(len(U))
    with np.errstate(over="ignore", invalid="ignore"):
        for sigma in sm.signs:
            ell = logp + sm.alpha * z + sigma * sm.gamma * sm.pair_sign * b
            grow = ell + 0.5 * sigma * sm.gamma * kk
            shift = np.maximum(ell.max(axis=1), grow.max(axis=1))
            e, g = np.exp(ell - shift[:, None]), np.exp(grow - shift[:, None])
            s1 = np.einsum("rk,rkv->rv", e, w)
            front = sm.log_const + sigma * sm.gamma * uu + 2.0 * shift
            scale = np.where(front > 700.0, np.inf, np.exp(np.minimum(front, 700.0)))
            scale /= len(sm.signs)
            diag = share * ((g * g - e * e) * w2).sum(axis=1)
            single += scale * (np.einsum("rv,rv->r", s1, s1) + diag)
            norm += scale * (e.sum(axis=1) ** 2 + share * (g * g - e * e).sum(axis=1))
    return single, norm, spread


def sketch_columns(Kk, V, A, B, B2):
    """The sketch's key columns: ``(a_i·v_j)(b_i·k̃_j)``, ``b_i·k̃_j``,
    ``(a_i·v_j)(b_i·k̃_j)(b'_i·k̃_j)``, ``(b_i·k̃_j)(b'_i·k̃_j)``, in float64."""
    av, bk, bk2 = (X.astype(np.float64) @ M.T for X, M in ((V, A), (Kk, B), (Kk, B2)))
    return np.hstack([av * bk, bk, av * bk * bk2, bk * bk2])


def sketch_samples(weights, V, y, Kk, A, B, B2=None):
    """``X_i = Σ_j w_j (a_i·(v_j - y)) (b_i·k̃_j)`` per row (rows x D), times ``b'_i·k̃_j``
    in the sum with ``B2``."""
    terms = ((V @ A.T)[None] - (y @ A.T)[:, None]) * (Kk @ B.T)[None] * weights[:, :, None]
    if B2 is not None:
        terms = terms * (Kk @ B2.T)[None]
    return terms.sum(axis=1)


def coupled_magnitude(curv, d, linear, z, cv):
    """The coupled set's sampling factor ``1 + |χ̂_jj| + |cv_jj|``, ``χ̂`` with ``log M(z)``
    carried from the row's mean ``z`` by its curvature: ``(d - 1) curv z² + |λ| z``."""
    return 1.0 + np.abs(np.expm1((d - 1) * curv * z * z + abs(linear) * z)) + np.abs(cv)


def sketched(curv, d, lam, cs, kd):
    """The control's terms in ``k̃_j·k̃_l`` (the sketch's part) at ``c_j + c_l = cs``."""
    return curv * d * (2 * cs * kd + kd**2) + lam * (cs + kd)


def control(curv, d, lam, s, za, zb):
    """The coupled set's control variate at a key pair with ``a_j·a_l = s``: the pair form
    to second order, ``curv (d s² - z_j z_l) + λ̄ s``."""
    return curv * (d * s**2 - za * zb) + lam * s


def rows_error(sm, coupled, d, U, Kk, V, visible, rng, n_pairs, sketch=None):
    """Per-row sums for a block of query rows of one sequence (module docstring).

    ``sketch``: (A, B, B2), Gaussian (D, d_v), (D, d), (D, d), drawn from ``rng`` first
    (D = 16) if None. Returns (single, single_var, coupled, coupled_var, normalizer
    relVar, |y|², single_first, coupled_first, controls) as ``_rows_error`` does: the sums
    (rows x 3: with the pairs' rest, the sampled and the sketched second-order part), the
    sampled parts' variances and covariance, the sketch's samples (rows x D), and the
    controls of a map with a sign whose ``e`` does not depend on the logits (rows x 2 x D
    x 2; :func:`uniform_controls`).
    """
    if sketch is None:
        sketch = tuple(rng.standard_normal((16, n)) for n in (V.shape[1], d, d))
    A, B, B2 = sketch
    tau = sm.pair_sign
    hidden = None if visible.all() else ~visible
    b = U @ Kk.T  # the logits u·k̃_j
    logp = b.copy()
    if hidden is not None:
        logp[hidden] = -np.inf
        b[hidden] = 0.0
    top = logp.max(axis=1, keepdims=True)
    logp -= top
    p = np.exp(logp)
    total = p.sum(axis=1, keepdims=True)
    p /= total
    logp -= np.log(total)
    y = p @ V
    y2 = np.einsum("ij,ij->i", y, y)
    vv = np.einsum("ij,ij->i", V, V)
    w2 = vv[None, :] - 2.0 * (y @ V.T)
    w2 += y2[:, None]
    np.maximum(w2, 0.0, out=w2)
    if hidden is not None:
        w2[hidden] = 0.0
    uu = np.einsum("ij,ij->i", U, U)
    kk = np.einsum("ij,ij->i", Kk, Kk)
    z = (2.0 * tau) * b
    z += uu[:, None]
    z += kk[None, :]
    np.maximum(z, 0.0, out=z)
    n_rows = U.shape[0]
    pairs_ok = (visible.sum(axis=1) >= 2)[:, None]  # rows with a key pair j ≠ l to sample

    single = np.zeros((n_rows, 3))  # the rest, the sampled second order, the sketched one
    single_var = np.zeros((n_rows, 3))
    single_first = np.zeros((n_rows, A.shape[0]))
    single_same = np.zeros(n_rows)
    controls = np.zeros((n_rows, 2, A.shape[0], 2))
    norm_terms = []
    for sigma in sm.signs:
        ell = logp + sm.alpha * z + sigma * sm.gamma * tau * b  # -inf where hidden
        grow = ell + 0.5 * sigma * sm.gamma * kk[None, :]
        shift = np.maximum(ell.max(axis=1), grow.max(axis=1))[:, None]
        e = np.exp(ell - shift)
        g = np.exp(grow - shift)
        s1 = e @ V - y * e.sum(axis=1, keepdims=True)
        diag = ((g * g - e * e) * w2).sum(axis=1)
        # |e^{σγ k̃_j·k̃_l} - 1| <= e^{γ(|k̃_j|² + |k̃_l|²)/2} for either sign: sampling with
        # these weights keeps every sampled ratio below 1 in size.
        bound = ell + 0.5 * sm.gamma * kk[None, :]
        bound = np.exp(bound - bound.max(axis=1, keepdims=True))

        def interaction(rows, j, l, e=e, sigma=sigma):
            x = sigma * sm.gamma * np.einsum("ij,ij->i", Kk[j], Kk[l])
            front = e[rows, j] * e[rows, l] * dot_centered(V, y, rows, j, l)
            low = x + 0.5 * x**2
            return front * (np.expm1(x) - low), front * low

        # Their first two orders in x, over j ≠ l: sketched over all pairs, less j = l.
        X = sketch_samples(e, V, y, Kk, A, B)
        X2 = sketch_samples(e, V, y, Kk, A, B, B2)
        first = sigma * sm.gamma * X**2 + 0.5 * sm.gamma**2 * X2**2
        same = e * e * w2 * kk[None, :]  # their pairs j = l
        same = sigma * sm.gamma * same.sum(axis=1) + 0.5 * sm.gamma**2 * (same * kk).sum(axis=1)

        inter, inter_var = sampled_pairs_reference(
            weights=bound * np.sqrt(w2) * pairs_ok, value=interaction, rng=rng, n_pairs=n_pairs
        )
        log_front = sm.log_const + sigma * sm.gamma * uu + 2.0 * shift[:, 0]
        scale = np.exp(np.minimum(log_front, 700.0)) / len(sm.signs)
        scale[log_front > 700.0] = np.inf
        bracket = np.einsum("ij,ij->i", s1, s1) + diag + inter[:, 0]
        with np.errstate(invalid="ignore", over="ignore"):
            single[:, 0] += scale * bracket
            single[:, 1] += scale * inter[:, 1]
            single_var += (scale**2)[:, None] * inter_var
            single_first += scale[:, None] * first
            single_same += scale * same
            if abs(1 + 2 * tau * sm.alpha + sigma * sm.gamma * tau) < 1e-12:
                # e does not depend on the logits (ℓ's coefficient of b is 0): a row
                # constant times e^{α|k̃_j|²}
                controls[:, 0] += scale[:, None, None] * uniform_controls(
                    e, V, y, Kk, A, B, B2, sigma * sm.gamma, sm.gamma
                )
                flat = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
            # The normalizer's one-projection relVar (its key interactions left out).
            norm_terms.append(scale * (e.sum(axis=1) ** 2 + (g * g - e * e).sum(axis=1)))
    with np.errstate(invalid="ignore", over="ignore"):
        norm_relvar = np.maximum(sum(norm_terms) - 1.0, 0.0)
        single[:, 2] = single_first.mean(axis=1) - single_same
    # No clipping per row: a row's sampled interactions may be negative; only the total
    # is (clipping each row would bias the sum upwards).
    single = np.where(np.isnan(single), np.inf, single)

    cross = np.zeros((n_rows, 3))
    cross_var = np.zeros((n_rows, 3))
    cross_first = np.zeros((n_rows, A.shape[0]))
    if coupled is not None:
        cross, cross_var, cross_first = coupled_sum(
            coupled, d, p, V, y, w2 * pairs_ok, z, b, uu, Kk, tau, visible, rng, n_pairs, sketch
        )
        if np.any(controls[:, 0]):  # that sign's weights normalized over each row's keys
            controls[:, 1] = uniform_controls(flat, V, y, Kk, A, B, B2, 1.0, np.sqrt(2.0))
    return (
        single, single_var, cross, cross_var, norm_relvar, y2, single_first, cross_first,
        controls,
    )  # fmt: skip


def uniform_controls(e, V, y, Kk, A, B, B2, sign_gamma, gamma):
    """Per row (rows x D x 2): ``σγ (X_i² - ‖M‖²)`` and ``γ²/2 (Y_i² - |m_i|²)`` for weights
    ``e`` (rows x L), with ``M = Σ_j e_j (v_j - y) k̃_jᵀ``, ``m_i = Σ_j e_j (v_j - y)
    (b_i·k̃_j)(b'_i·k̃_j)`` and the sketch's samples ``X_i``, ``Y_i`` of them."""
    X = sketch_samples(e, V, y, Kk, A, B)
    Y = sketch_samples(e, V, y, Kk, A, B, B2)
    out = np.zeros((e.shape[0], A.shape[0], 2))
    beta = (Kk @ B.T) * (Kk @ B2.T)  # (b_i·k̃_j)(b'_i·k̃_j)
    for r in range(e.shape[0]):
        centred = e[r][:, None] * (V - y[r])
        M = centred.T @ Kk
        m = centred.T @ beta
        out[r, :, 0] = sign_gamma * (X[r] ** 2 - np.sum(M * M))
        out[r, :, 1] = 0.5 * gamma**2 * (Y[r] ** 2 - np.sum(m * m, axis=0))
    return out


def weighted_centered(weights, V, y):
    """``Σ_j weights_j (v_j - y)`` per row."""
    return weights @ V - y * weights.sum(axis=1, keepdims=True)


def coupled_sum(coupled, d, p, V, y, w2, z, b, uu, Kk, tau, visible, rng, n_pairs, sketch):
    """``Σ_{j,l} p_j p_l (v_j - y)·(v_l - y) χ_jl`` per row as ``rows_error``'s parts (rows
    x 3), their sampling variances (rows x 3), and the sketch's samples (rows x D).

    With ``a_j·a_l = c_j + c_l + k̃_j·k̃_l`` (``c_j = |u|²/2 ± u·k̃_j``), the pair form of
    ``χ`` (:class:`_Coupling`) is, to second order, ``K (d (a_j·a_l)² - z_j z_l)/(d-1)``.
    Its part without the key-key products, ``cv_jl = K (d (c_j + c_l)² - z_j z_l)/(d-1)``
    with ``K`` taken at the row's mean ``z``, factorizes over keys and is summed exactly, as
    is every part of the form ``h_j + h_l``; only the rest, which is small unless keys are
    close, is sampled. (Sampled whole, the sum of this many near-cancelling terms is noise.)
    So are ``cv``'s terms in ``k̃_j·k̃_l``, ``K d (2 (c_j + c_l) k̃_j·k̃_l + (k̃_j·k̃_l)²)/(d-1)``,
    and the pair form's first order ``λ̄ (c_j + c_l + k̃_j·k̃_l)``: over all pairs they sum to
    ``K d (4 <M_pc, M_p> + ‖T_p‖²)/(d-1) + λ̄ ‖M_p‖²`` (``M_w = Σ_j w_j (v_j - y) k̃_jᵀ``,
    ``T_p = Σ_j p_j (v_j - y) ⊗ k̃_j ⊗ k̃_j``), sketched.
    """
    lam = coupled.linear * np.mean(coupled.signs)
    kk = (Kk * Kk).sum(1)
    chi_diag = np.where(visible, coupled.diag(z), 0.0)
    cvec = np.where(visible, 0.5 * uu[:, None] + tau * b, 0.0)
    zbar = (p * z).sum(axis=1)
    curv = coupled.curvature(zbar)[:, None] / max(d - 1, 1)
    cv_diag = control(curv, d, lam, 2 * cvec + kk[None, :], z, z)
    delta = sketched(curv, d, lam, 2 * cvec, kk[None, :])  # the sketched part at j = l
    h = chi_diag - cv_diag
    s_1 = weighted_centered(p, V, y)
    s_c = weighted_centered(p * cvec, V, y)
    s_cc = weighted_centered(p * cvec**2, V, y)
    s_z = weighted_centered(p * z, V, y)
    s_h = weighted_centered(p * h, V, y)
    dot = lambda A, B: np.einsum("ij,ij->i", A, B)  # noqa: E731
    full_cv = curv[:, 0] * (d * (2.0 * dot(s_c, s_c) + 2.0 * dot(s_cc, s_1)) - dot(s_z, s_z))
    # All pairs, j = l included: Σ_{j,l} = full_cv + Σ_{j≠l} (h_j + h_l)/2 + Σ_j |X_j|² h_j
    # + sampled, and Σ_{j≠l} (h_j + h_l)/2 X_j·X_l = s_h·s_1 - Σ_j |X_j|² h_j.
    exact = full_cv + dot(s_h, s_1)

    def rest(rows, j, l):
        za, zb = z[rows, j], z[rows, l]
        kd = np.einsum("ij,ij->i", Kk[j], Kk[l])
        s = cvec[rows, j] + cvec[rows, l] + kd
        cv = control(curv[rows, 0], d, lam, s, za, zb)
        r = coupled.pair(za, zb, s) - cv - 0.5 * (h[rows, j] + h[rows, l])
        cs = cvec[rows, j] + cvec[rows, l]
        low = sketched(curv[rows, 0], d, lam, cs, kd) - 0.5 * (delta[rows, j] + delta[rows, l])
        front = p[rows, j] * p[rows, l] * dot_centered(V, y, rows, j, l)
        return front * r, front * low

    sampled, var = sampled_pairs_reference(
        weights=p * np.sqrt(w2) * np.sqrt(coupled_magnitude(curv, d, coupled.linear, z, cv_diag)),
        value=rest,
        rng=rng,
        n_pairs=n_pairs,
    )
    A, B, B2 = sketch
    Xp, Xc = (sketch_samples(w, V, y, Kk, A, B) for w in (p, p * cvec))
    Xp2 = sketch_samples(p, V, y, Kk, A, B, B2)
    first = d * curv * (4.0 * Xc * Xp + Xp2**2) + lam * Xp**2
    sampled[:, 0] += exact
    return np.column_stack([sampled, first.mean(axis=1)]), var, first


def dot_centered(V, y, rows, j, l):
    return np.einsum("ij,ij->i", V[j] - y[rows], V[l] - y[rows])


def sampled_pairs_reference(weights, value, rng, n_pairs):
    """``Σ_{j≠l} value(j, l)`` per row by importance sampling of pairs from
    ``weights ⊗ weights``, for ``value`` returning two arrays (the rest and the sketch's
    part): the estimates (rows x 2) and their variances and covariance (rows x 3)."""
    n_rows = weights.shape[0]
    total = weights.sum(axis=1)
    est = np.zeros((n_rows, 2))
    var = np.zeros((n_rows, 3))
    live = np.flatnonzero(total > 0)
    if not live.size:
        return est, var
    cdf = np.cumsum(weights[live], axis=1)
    cdf /= cdf[:, -1:]
    draws = rng.random((live.size, 2, n_pairs))
    j = np.empty((live.size, n_pairs), dtype=np.int64)
    l = np.empty((live.size, n_pairs), dtype=np.int64)
    last = weights.shape[1] - 1
    for r in range(live.size):
        j[r] = np.minimum(np.searchsorted(cdf[r], draws[r, 0]), last)
        l[r] = np.minimum(np.searchsorted(cdf[r], draws[r, 1]), last)
    rows = np.repeat(live, n_pairs)
    jf, lf = j.ravel(), l.ravel()
    wj, wl = weights[rows, jf], weights[rows, lf]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        vals, hvals = (
            np.where((jf != lf) & (wj > 0) & (wl > 0), v / (wj * wl), 0.0).reshape(
                live.size, n_pairs
            )
            for v in value(rows, jf, lf)
        )
    scale = total[live] ** 2
    est[live, 0] = scale * vals.mean(axis=1)
    est[live, 1] = scale * hvals.mean(axis=1)
    norm = scale**2 / n_pairs
    var[live, 0] = norm * vals.var(axis=1, ddof=1)
    var[live, 1] = norm * hvals.var(axis=1, ddof=1)
    centered = (vals - vals.mean(axis=1, keepdims=True)) * (
        hvals - hvals.mean(axis=1, keepdims=True)
    )
    var[live, 2] = norm * centered.sum(axis=1) / (n_pairs - 1)
    return est, var
