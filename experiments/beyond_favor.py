"""Beyond FAVOR+: FAVOR++ (OPRF), simplex coupling and SADERF against their exact MSE.

Reproduces reference values (an independent computation, not printed in the papers) of the
exact relative MSE of iid / orthogonal / simplex couplings (Simplex Random Features, Reid et
al. 2023) of positive and OPRF features (Chefs' Random Tables, Likhosherstov et al. 2022),
d in {16, 64}, with the closed forms of ``favorkit.theory`` and checks them by
Monte Carlo with favorkit's own ``PositiveRandomFeatures`` wherever the tails allow; measures
the relative MSE vs m on a batch of queries and keys against ``expected_error`` (FAVOR+,
FAVOR++, simplex, FAVOR++ with simplex, SADERF); recomputes reference values (an independent
computation) of mean log(1 + relVar) for query/key regimes where SADERF (Likhosherstov et al.
2023, "Dense-Exponential Random Features") should or should not help; and measures the
attention-output error against exact softmax attention (Fig. 4 protocol, L = 4096).
"""

from __future__ import annotations

import sys

import _common as C
import numpy as np
from scipy import stats

from favorkit import PositiveRandomFeatures, favor_attention, maps, sampling, softmax_attention
from favorkit.theory import (
    coupled_relative_mse,
    expected_error,
    gerf_relative_variance,
    optimal_gerf_a,
)

NAME = "beyond_favor"
TITLE = "Beyond FAVOR+: FAVOR++, simplex and SADERF vs their exact MSE"

# Couplings by name -> sampler(m, d, rng). Tests swap in a broken one (QR without the sign
# fix) to check that the verdicts notice.
SAMPLERS = {
    "iid": sampling.gaussian,
    "orthogonal": sampling.orthogonal,
    "simplex": sampling.simplex,
}

# (label, estimator, coupling) for the single-pair reference table TABLE_45.
TABLE_METHODS = [
    ("PosRF iid", "positive", "iid"),
    ("PosRF ORF (FAVOR+)", "positive", "orthogonal"),
    ("PosRF SimRF", "positive", "simplex"),
    ("OPRF iid", "optimal", "iid"),
    ("OPRF ORF (FAVOR++)", "optimal", "orthogonal"),
    ("OPRF SimRF", "optimal", "simplex"),
]
# Reference values (an independent computation, not printed in Reid et al. 2023 or
# Likhosherstov et al. 2022): d, z, then the six columns above (exact relative MSE, m = d).
TABLE_45 = [
    (16, 0.25, 1.775e-2, 1.616e-2, 1.360e-3, 1.716e-2, 1.558e-2, 7.718e-4),
    (16, 1, 1.074e-1, 8.396e-2, 2.938e-2, 9.100e-2, 6.757e-2, 1.299e-2),
    (16, 4, 3.350, 3.090, 2.955, 1.077, 0.8169, 0.6818),
    (16, 16, 5.554e5, 5.554e5, 5.554e5, 115.6, 114.7, 114.7),
    (64, 0.25, 4.438e-3, 3.975e-3, 1.232e-4, 4.399e-3, 3.937e-3, 8.470e-5),
    (64, 1, 2.685e-2, 1.963e-2, 4.578e-3, 2.562e-2, 1.840e-2, 3.345e-3),
    (64, 4, 0.8375, 0.7359, 0.6847, 0.5529, 0.4514, 0.4002),
    (64, 16, 1.388e5, 1.388e5, 1.388e5, 1726, 1725, 1725),
]
# (label, estimator, coupling) for the batch curves and the attention error.
BATCH_METHODS = [
    ("FAVOR+ (positive, ORF)", "positive", "orthogonal"),
    ("FAVOR++ (optimal, ORF)", "optimal", "orthogonal"),
    ("SimRF (positive, simplex)", "positive", "simplex"),
    ("FAVOR++ SimRF (optimal, simplex)", "optimal", "simplex"),
    ("SADERF (saderf, ORF)", "saderf", "orthogonal"),
]
# Reference values (an independent computation, not printed in Likhosherstov et al. 2023):
# L = 512, d = 64, mean ± sd over 5 seeds of mean log(1 + relVar).
TABLE_36 = {
    "isotropic": {"positive": (15.94, 0.12), "optimal": (11.58, 0.07), "saderf": (11.57, 0.07)},
    "per-dim scales": {"positive": (47.1, 2.0), "optimal": (24.9, 0.7), "saderf": (17.3, 1.1)},
}
# Monte Carlo cells are tested only where the squared error is light-tailed enough: the
# relative standard error of the MC mean predicted from the iid 4th moment must be below this.
MAX_REL_SE = 0.1
# Largest |q + k|² in the batch experiment (see batch_data).
BATCH_MAX_Z = 2.0
# Attention settings: the Fig. 4 protocol (d = 16) and d = 64 with q, k halved. At d = 16 the
# kernel-level gain of FAVOR++ turns into a *loss* of attention-output accuracy at small m
# (found in development runs with other seeds; claimed, and tested, as such).
# "repeats" = (FAVOR+ and FAVOR++, which the claims compare; the other three methods).
FIG4 = {"d": 16, "L": 4096, "scale": 1.0, "small_m_reversal": True}
HALF64 = {"d": 64, "L": 4096, "scale": 0.5}

PARAMS = {
    "smoke": {
        "pair_ds": [8],
        "zs": [0.25, 1.0, 2.25],
        "pair_repeats": 1500,
        "batch": {"d": 8, "L": 12, "ms": [2, 4, 8, 16], "repeats": 200},
        "regime_L": 64,
        "regime_seeds": 2,
        "attention": [{"d": 8, "L": 256, "scale": 1.0, "ms": [8, 32], "repeats": (3, 2)}],
        "chunk": 1500,
    },
    "quick": {
        "pair_ds": [16, 64],
        "zs": [0.25, 1.0, 4.0],
        "pair_repeats": 1600,
        "batch": {"d": 16, "L": 32, "ms": [4, 8, 16, 32, 64], "repeats": 1000},
        "regime_L": 512,
        "regime_seeds": 5,
        "attention": [
            dict(FIG4, ms=[16, 128, 1024], repeats=(16, 5)),
            dict(HALF64, ms=[16, 64, 256], repeats=(10, 4)),
        ],
        "chunk": 800,
    },
    "full": {
        "pair_ds": [16, 64],
        "zs": [0.25, 1.0, 4.0],
        "pair_repeats": 40000,
        "batch": {"d": 16, "L": 64, "ms": [4, 8, 16, 32, 64, 128], "repeats": 20000},
        "regime_L": 512,
        "regime_seeds": 5,
        "attention": [
            dict(FIG4, ms=[16, 32, 64, 128, 256, 512, 1024], repeats=(40, 20)),
            dict(HALF64, ms=[16, 32, 64, 128, 256, 512, 1024], repeats=(40, 20)),
        ],
        "chunk": 2000,
    },
}


# --------------------------------------------------------------------------- helpers


def half_ulp(printed):
    """Half a unit in the 4th significant digit: the precision of the printed tables."""
    return 0.5 * 10.0 ** (np.floor(np.log10(abs(printed))) - 3)


def pair_for(z, d):
    """An axis-aligned pair with |x + y|² = z (axis-aligned sums expose the QR sign bias)."""
    x = np.zeros(d)
    x[0] = 0.5 * np.sqrt(z)
    return x, x.copy()


def ms_for(d):
    return [2**k for k in range(int(np.log2(2 * d)) + 1)]


def stacked(coupling, n_groups, G, d, rng):
    """n_groups independent G-row projections drawn by SAMPLERS[coupling], stacked."""
    return np.concatenate([SAMPLERS[coupling](G, d, rng) for _ in range(n_groups)])


def log_moment(j, z, d, a):
    """log E[T^j] of one GERF projection's estimate T/K (E[T] = 1), ω ~ N(0, I)."""
    return (
        0.5 * j * d * np.log1p(-4 * a)
        - 0.5 * d * np.log1p(-4 * j * a)
        + j * j * (1 - 4 * a) * z / (2 * (1 - 4 * j * a))
        - 0.5 * j * z
    )


def iid_rel_se(z, d, a, m, R):
    """Relative standard error of an R-repeat MC mean of the squared error (iid rows, H0).

    The mean of m iid terms with central moments μ2, μ4 has E[err²] = μ2/m and
    E[err⁴] = (μ4 + 3(m-1)μ2²)/m³. Used as the "tails allow" gate (coupling lowers μ2).
    """
    e2, e3, e4 = (np.exp(log_moment(j, z, d, a)) for j in (2, 3, 4))
    mu2 = gerf_relative_variance(z, d, a)  # = e2 - 1 (GERF variance, Likhosherstov et al. 2022)
    mu4 = e4 - 4 * e3 + 6 * e2 - 3.0
    var_sq = (mu4 + 3 * (m - 1) * mu2**2) / m**3 - (mu2 / m) ** 2
    return np.sqrt(max(var_sq, 0.0) / R) / (mu2 / m)


# --------------------------------------------------------------------------- tasks


def pair_task(job):
    """Single pairs, one coupling: per-group estimates K̂/K for every z and estimator.

    The pairs have x = y, so one transform gives both sides; the positive map does not
    depend on the fitted statistics, so one fit serves every z.
    """
    d, coupling, zs, n_groups, seed = job
    rng = np.random.default_rng(seed)
    G = 2 * d
    W = stacked(coupling, n_groups, G, d, rng)
    ms = ms_for(d)
    X = np.array([pair_for(z, d)[0] for z in zs])
    out = {}

    def prefixes(f_row, x):
        s = n_groups * G * (f_row**2).reshape(n_groups, G) / np.exp(x @ x)
        c = np.cumsum(s, axis=1)
        return np.stack([c[:, m - 1] / m for m in ms], axis=1)

    F = PositiveRandomFeatures(W.shape[0], projection=W).fit(X).transform(X)
    for i, z in enumerate(zs):
        x = X[i : i + 1]
        out[(z, "positive")] = prefixes(F[i], X[i])
        f = PositiveRandomFeatures(W.shape[0], estimator="optimal", projection=W)
        out[(z, "optimal")] = prefixes(f.fit(x, keys=x).transform(x)[0], X[i])
    return d, coupling, out


def batch_data(d, L, seed, max_z=BATCH_MAX_Z):
    """Queries and keys with mismatched per-dimension scales, rescaled to max |q + k|² = max_z.

    The common rescaling bounds the heavy tails of the positive estimator's squared error
    (4th moment ~ e^{6z}) whatever the seed, so the Monte Carlo z-tests stay valid.
    """
    rng = np.random.default_rng(seed)
    s = np.exp(rng.normal(0.0, 0.5, d))
    Q, K = rng.normal(size=(L, d)) * s, rng.normal(size=(L, d)) / s
    z_max = ((Q[:, None] + K[None]) ** 2).sum(-1).max()
    c = np.sqrt(max_z / z_max)
    return Q * c, K * c


def batch_task(job):
    """Batch of queries/keys: per-group mean over pairs of (K̂/K - 1)², for each m."""
    d, L, ms, data_seed, est, coupling, n_groups, seed = job
    Q, K = batch_data(d, L, data_seed)
    G = max(ms)
    W = stacked(coupling, n_groups, G, d, np.random.default_rng(seed))
    f = PositiveRandomFeatures(W.shape[0], estimator=est, projection=W).fit(Q, keys=K)
    Fq = f.transform(Q, side="query").reshape(L, n_groups, G)
    Fk = f.transform(K, side="key").reshape(L, n_groups, G)
    exact = np.exp(Q @ K.T)
    out = np.empty((n_groups, len(ms)))
    for j, m in enumerate(ms):
        est_m = n_groups * G / m * np.einsum("igk,jgk->gij", Fq[..., :m], Fk[..., :m])
        out[:, j] = ((est_m / exact - 1.0) ** 2).mean(axis=(1, 2))
    return est, coupling, out


def attention_task(job):
    """Attention-output MSE against exact attention for one setting, method, m and seed."""
    setting, ms, est, coupling, seed = job
    Qs, Ks, V, exact = _attention_data(setting)
    out = []
    for m in ms:
        W = SAMPLERS[coupling](m, Qs.shape[1], np.random.default_rng([seed, m]))
        # favorkit's own attention: A* (and Ψ) fitted from these queries and keys per call;
        # Qs, Ks already carry the d^{-1/4} of the logit scale, hence scale=1.
        approx = favor_attention(Qs, Ks, V, estimator=est, projection=W, scale=1.0)
        out.append(float(np.mean((approx - exact) ** 2)))
    return out


_ATTN_CACHE: dict = {}


def _attention_data(setting):
    """Q, K, V ~ N(0, 1) (q, k times ``scale``), scaled q/d^{1/4}, and exact attention."""
    key = (setting["d"], setting["L"], setting["scale"], setting["seed"])
    if key not in _ATTN_CACHE:
        d, L = setting["d"], setting["L"]
        rng = np.random.default_rng(setting["seed"])
        Q, K, V = (rng.normal(size=(L, d)) for _ in range(3))
        Q, K = Q * setting["scale"], K * setting["scale"]
        exact = softmax_attention(Q, K, V)  # logits q·k/sqrt(d)
        _ATTN_CACHE.clear()
        _ATTN_CACHE[key] = (Q / d**0.25, K / d**0.25, V, exact)
    return _ATTN_CACHE[key]


# --------------------------------------------------------------------------- regimes (TABLE_36)


def regime(name, d, L, seed):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(L, d))
    h = rng.normal(size=(L, d))
    if name == "isotropic":
        q, k = g, h
    elif name == "per-dim scales":
        q = g * np.exp(rng.normal(0.0, 0.75, d))
        k = h * np.exp(rng.normal(0.0, 0.75, d))
    elif name == "random covariances":
        # Our reading of "x = (g·C·1.5 + μ)/d^{1/4}": C a random d x d matrix with N(0, 1/d)
        # entries and μ ~ N(0, 0.5² I), drawn independently for Q and K (the reference
        # computation does not give its recipe, so this regime is not a reproduction).
        cq, ck = (rng.normal(size=(d, d)) / np.sqrt(d) for _ in range(2))
        mq, mk = (rng.normal(0.0, 0.5, d) for _ in range(2))
        q, k = g @ cq * 1.5 + mq, h @ ck * 1.5 + mk
    else:
        raise ValueError(name)
    return q / d**0.25, k / d**0.25


def regime_values(name, d, L, seed):
    Q, K = regime(name, d, L, seed)
    return {
        est: expected_error(Q, K, 1, estimator=est, projection="iid").mean_log1p_variance
        for est in ("positive", "optimal", "saderf")
    }


# --------------------------------------------------------------------------- run


def run(ctx):
    P = ctx.params
    claims, rows = [], []
    notes = []

    # ---- 1. the reference table TABLE_45 from the closed forms
    table_dev = []
    best_everywhere = True
    for d, z, *printed in TABLE_45:
        a = optimal_gerf_a(z, d)
        ours = [
            float(coupled_relative_mse(z, d, d, a=a if maps.get(est).fitted else 0.0, coupling=cp))
            for _, est, cp in TABLE_METHODS
        ]
        best_everywhere &= int(np.argmin(ours)) == len(ours) - 1 or np.isclose(
            min(ours), ours[-1], rtol=1e-12
        )
        for (label, est, cp), val, ref in zip(TABLE_METHODS, ours, printed, strict=True):
            table_dev.append(abs(val - ref) / half_ulp(ref))
            rows.append(
                {
                    "part": "table_4_5",
                    "d": d,
                    "z": z,
                    "method": label,
                    "estimator": est,
                    "coupling": cp,
                    "m": d,
                    "theory": val,
                    "reference": ref,
                    "measured": float("nan"),
                    "se": float("nan"),
                    "repeats": 0,
                }
            )
    worst = max(table_dev)
    claims.append(
        C.Claim(
            "Reference values (an independent computation): exact relative MSE of "
            "PosRF/OPRF × iid/ORF/SimRF, m = d ∈ {16, 64}",
            "closed forms of favorkit.theory (A-free covariance series)",
            f"{len(table_dev)} cells; worst |ours − printed| = {worst:.2f} half-units of the "
            "4th significant digit",
            "every cell within half a unit of the printed 4th significant digit",
            worst <= 1.0 + 1e-9,
        )
    )
    claims.append(
        C.Claim(
            "OPRF + SimRF (FAVOR++ with simplex) is the best cell in every row of the reference "
            "table",
            "closed forms, 8 rows",
            "best in every row" if best_everywhere else "not best in some row",
            "argmin over the six closed-form columns is OPRF SimRF (ties allowed)",
            bool(best_everywhere),
        )
    )

    # ---- 2. Monte Carlo of the single-pair cells (all m), where the tails allow
    n_chunks = -(-P["pair_repeats"] // P["chunk"])
    jobs = [
        (d, cp, P["zs"], P["chunk"], s)
        for d in P["pair_ds"]
        for ci, cp in enumerate(SAMPLERS)
        for s in ctx.seeds(n_chunks, stream=100 * d + ci)
    ]
    res = ctx.map(pair_task, jobs, desc=f"{NAME}: pairs")
    pair_est = {}
    for d, cp, out in res:
        for key, arr in out.items():
            pair_est.setdefault((d, cp, *key), []).append(arr)
    z_mse, z_bias, skipped, curves = [], [], [], {}
    for (d, cp, z, est), parts in pair_est.items():
        e = np.concatenate(parts)  # (R, n_m) of K̂/K
        R = e.shape[0]
        ms = np.array(ms_for(d))
        a = optimal_gerf_a(z, d) if maps.get(est).fitted else 0.0
        th = coupled_relative_mse(z, d, ms, a=a, coupling=cp)
        mse, se = C.mean_se((e - 1.0) ** 2)
        bias, bias_se = C.mean_se(e[:, -1] - 1.0)
        z_bias.append(bias / bias_se)
        curves[(d, cp, z, est)] = (ms, mse, se, th, R)
        for j, m in enumerate(ms):
            ok = iid_rel_se(z, d, a, m, R) <= MAX_REL_SE
            zz = (mse[j] - th[j]) / se[j]
            (z_mse if ok else skipped).append(zz if ok else (d, z, est, cp, int(m)))
            rows.append(
                {
                    "part": "pair_mc",
                    "d": d,
                    "z": z,
                    "method": f"{est} {cp}",
                    "estimator": est,
                    "coupling": cp,
                    "m": int(m),
                    "theory": float(th[j]),
                    "reference": float("nan"),
                    "measured": float(mse[j]),
                    "se": float(se[j]),
                    "repeats": R,
                    "mc_tested": bool(ok),
                }
            )
    ok, worst, _, crit = C.all_within(z_mse)
    n_skip_cells = len(skipped)
    claims.append(
        C.Claim(
            "Monte Carlo relative MSE of single pairs (PositiveRandomFeatures, axis-aligned x+y) "
            "matches the exact coupled MSE, every m from 1 to 2d",
            "coupled_relative_mse (exact MSE of a fixed-angle coupling; blocks of d, covariance "
            "only within a block)",
            f"{len(z_mse)} cells tested, max |z| = {worst:.2f}; {n_skip_cells} heavy-tailed "
            "cells left to the exact formula",
            crit + f"; cells tested only if the iid-moment relative se ≤ {MAX_REL_SE}",
            ok,
        )
    )
    ok, worst, _, crit = C.all_within(z_bias)
    claims.append(
        C.Claim(
            "Every estimator × coupling is unbiased (K̂/K averages to 1; catches the QR sign bug)",
            "E[K̂] = K for any fixed A and any Haar coupling with χ_d norms",
            f"max |z| = {worst:.2f} over {len(z_bias)} (d, z, estimator, coupling) cells at m = 2d",
            crit,
            ok,
        )
    )
    # Measured gains at m = d where MC is trustworthy (both sides tested cells).
    gains = []
    for d in P["pair_ds"]:
        for z in P["zs"]:
            ms, mse_o, se_o, th_o, R = curves[(d, "orthogonal", z, "positive")]
            _, mse_s, se_s, th_s, _ = curves[(d, "simplex", z, "optimal")]
            j = list(ms).index(d)
            if iid_rel_se(z, d, 0.0, d, R) > MAX_REL_SE:
                continue  # FAVOR+'s own MSE is not measurable there
            # independent draws: the ratio's se by the delta method
            r = mse_o[j] / mse_s[j]
            r_se = r * np.hypot(se_o[j] / mse_o[j], se_s[j] / mse_s[j])
            gains.append((d, z, r, r_se, th_o[j] / th_s[j]))
    if gains:
        zg = [np.log(r) / (r_se / r) for _, _, r, r_se, _ in gains]
        ok, _, crit = C.significantly_positive(min(zg))
        claims.append(
            C.Claim(
                "FAVOR++ with simplex beats FAVOR+ (positive, ORF) at m = d, measured",
                "; ".join(f"d={d}, z={z}: ×{C.fmt(t)}" for d, z, _, _, t in gains),
                "; ".join(
                    f"d={d}, z={z}: ×{C.fmt(r)} ± {C.fmt(r_se)}" for d, z, r, r_se, _ in gains
                ),
                "smallest z of log(MSE_FAVOR+ / MSE_FAVOR++SimRF) over the cells: " + crit,
                ok,
            )
        )

    # ---- 3. batch of queries and keys: relative MSE vs m, all five methods
    B = P["batch"]
    data_seed = ctx.seeds(1, stream=7)[0]
    n_chunks = -(-B["repeats"] // P["chunk"])
    jobs = [
        (B["d"], B["L"], B["ms"], data_seed, est, cp, min(P["chunk"], B["repeats"]), s)
        for mi, (_, est, cp) in enumerate(BATCH_METHODS)
        for s in ctx.seeds(n_chunks, stream=1000 + mi)
    ]
    res = ctx.map(batch_task, jobs, desc=f"{NAME}: batch")
    Qb, Kb = batch_data(B["d"], B["L"], data_seed)
    zb = ((Qb[:, None] + Kb[None]) ** 2).sum(-1)
    batch = {}
    z_batch = []
    for label, est, cp in BATCH_METHODS:
        e = np.concatenate([o for ee, cc, o in res if (ee, cc) == (est, cp)])
        mse, se = C.mean_se(e)
        pred = expected_error(Qb, Kb, 1, estimator=est, projection=cp)
        th = pred.relative_mse(np.array(B["ms"]))
        batch[label] = (mse, se, th, e.shape[0])
        z_batch.extend((mse - th) / se)
        for j, m in enumerate(B["ms"]):
            rows.append(
                {
                    "part": "batch_mc",
                    "d": B["d"],
                    "z": float(zb.mean()),
                    "method": label,
                    "estimator": est,
                    "coupling": cp,
                    "m": int(m),
                    "theory": float(th[j]),
                    "reference": float("nan"),
                    "measured": float(mse[j]),
                    "se": float(se[j]),
                    "repeats": e.shape[0],
                }
            )
    ok, worst, _, crit = C.all_within(z_batch)
    claims.append(
        C.Claim(
            f"expected_error predicts the measured mean relative MSE over {B['L']}×{B['L']} "
            f"query-key pairs (d={B['d']}, mismatched per-dim scales) for all five methods "
            f"and m ∈ {B['ms']}",
            "expected_error(Q, K, m, estimator, projection).mean",
            f"max |z| = {worst:.2f}; measured/predicted in "
            f"[{min((b[0] / b[2]).min() for b in batch.values()):.3g}, "
            f"{max((b[0] / b[2]).max() for b in batch.values()):.3g}]",
            crit,
            ok,
        )
    )
    base = batch[BATCH_METHODS[0][0]]
    gain_txt, zs_gain = [], []
    for label, _, _ in BATCH_METHODS[1:]:
        mse, se, th, _ = batch[label]
        j = len(B["ms"]) - 1
        r = base[0][j] / mse[j]
        r_se = r * np.hypot(base[1][j] / base[0][j], se[j] / mse[j])
        short = label.split(" (")[0]
        gain_txt.append(f"{short} ×{C.fmt(r)}±{C.fmt(r_se)} (theory ×{C.fmt(base[2][j] / th[j])})")
        zs_gain.append(np.log(r) / (r_se / r))
    zmin = min(zs_gain)
    ok, _, crit = C.significantly_positive(zmin)
    claims.append(
        C.Claim(
            f"On that batch every method beats FAVOR+ at m = {B['ms'][-1]}, measured",
            "ratios MSE_FAVOR+ / MSE_method from expected_error (in parentheses below)",
            "; ".join(gain_txt),
            "smallest z of log(MSE ratio) > threshold; " + crit,
            ok,
        )
    )

    # ---- 4. TABLE_36 regimes (closed-form mean log(1 + relVar) on drawn data)
    L, n_seeds = P["regime_L"], P["regime_seeds"]
    reg = {}
    for name in ("isotropic", "per-dim scales", "random covariances"):
        seeds = ctx.seeds(n_seeds if name != "random covariances" else 1, stream=3000)
        vals = [regime_values(name, 64, L, s) for s in seeds]
        reg[name] = {est: np.array([v[est] for v in vals]) for est in vals[0]}
        for est, arr in reg[name].items():
            rows.append(
                {
                    "part": "regime_3_6",
                    "d": 64,
                    "z": float("nan"),
                    "method": name,
                    "estimator": est,
                    "coupling": "iid (one feature)",
                    "m": 1,
                    "theory": float(arr.mean()),
                    "reference": TABLE_36.get(name, {}).get(est, (float("nan"),))[0],
                    "measured": float(arr.mean()),
                    "se": float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
                    "repeats": arr.size,
                }
            )
    zr, txt = [], []
    for name, ref in TABLE_36.items():
        for est, (mu, sd) in ref.items():
            arr = reg[name][est]
            # two independent n-seed means (ours, the table's) plus the table's rounding
            s = np.sqrt((sd**2 + arr.std(ddof=1) ** 2) / max(arr.size, 2))
            zr.append((arr.mean() - mu) / s)
            txt.append(f"{name}/{est}: {arr.mean():.2f}±{arr.std(ddof=1):.2f} (table {mu}±{sd})")
    ok, worst, _, crit = C.all_within(zr)
    claims.append(
        C.Claim(
            f"Query/key regimes (L={L}, d=64, {n_seeds} seeds): mean log(1+relVar) of PosRF, "
            "OPRF, SADERF",
            "reference values, an independent computation (isotropic; per-dim scales)",
            "; ".join(txt),
            crit + "; se of the difference of two seed-means, sd pooled",
            ok,
        )
    )
    iso, het = reg["isotropic"], reg["per-dim scales"]
    d_iso = (iso["positive"] - iso["optimal"]).mean()
    d_sad = (het["optimal"] - het["saderf"]).mean()
    d_sad_iso = (iso["optimal"] - iso["saderf"]).mean()
    claims.append(
        C.Claim(
            "SADERF gains over OPRF only when Q and K scales differ; OPRF gains over PosRF",
            "reference values: OPRF − PosRF ≈ −4.4 (isotropic); SADERF − OPRF ≈ −7.6 "
            "(scales), ≈ 0 (isotropic)",
            f"PosRF − OPRF = {d_iso:.2f} (e^{d_iso:.1f}); OPRF − SADERF = {d_sad:.2f} with "
            f"mismatched scales, {d_sad_iso:.3f} isotropic",
            "computed differences: > 1 (a factor e) where a gain is claimed, |·| < 0.1 isotropic",
            bool(d_iso > 1 and d_sad > 1 and abs(d_sad_iso) < 0.1),
        )
    )
    sd_ratio = het["positive"].std(ddof=1) / TABLE_36["per-dim scales"]["positive"][1]
    notes.append(
        "'per-dim scales' regime: our seed-to-seed sd of the PosRF value is "
        f"{sd_ratio:.1f}× the reference table's (we redraw the scales s_l with every seed; the "
        "reference computation may not have), so the comparison uses the pooled sd and is "
        "correspondingly loose."
    )
    rc = {k: float(v.mean()) for k, v in reg["random covariances"].items()}
    notes.append(
        "'random covariances' regime: the reference computation does not give its recipe, so "
        "we use our "
        "reading (C with N(0, 1/d) entries, μ ~ N(0, 0.5²I), independent for Q and K; one seed) "
        f"and report it without a verdict: PosRF {rc['positive']:.2f}, OPRF {rc['optimal']:.2f}, "
        f"SADERF {rc['saderf']:.2f} (table: 42.28, 23.23, 23.13)."
    )

    # ---- 5. attention output against exact attention
    attn, attn_setting = {}, {}
    for si, setting in enumerate(P["attention"]):
        setting = dict(setting, seed=ctx.seeds(1, stream=5000 + si)[0])
        # FAVOR+ and FAVOR++ (the claims) get more repeats than the others; repeat r uses
        # the same seed for every method, so comparisons are paired
        n_claim, n_other = setting["repeats"]
        seeds = ctx.seeds(n_claim, stream=6000 + si)
        n_rep = [n_claim if mi < 2 else n_other for mi in range(len(BATCH_METHODS))]
        jobs = [
            (setting, setting["ms"], est, cp, s)
            for (_, est, cp), n in zip(BATCH_METHODS, n_rep, strict=True)
            for s in seeds[:n]
        ]
        res = ctx.map(attention_task, jobs, desc=f"{NAME}: attention d={setting['d']}")
        arr, start = [], 0
        for n in n_rep:
            arr.append(np.array(res[start : start + n]))
            start += n
        attn[(setting["d"], setting["scale"])] = arr
        attn_setting[(setting["d"], setting["scale"])] = setting
        for mi, (label, est, cp) in enumerate(BATCH_METHODS):
            mean, se = C.mean_se(arr[mi])
            for j, m in enumerate(setting["ms"]):
                rows.append(
                    {
                        "part": "attention",
                        "d": setting["d"],
                        "z": setting["scale"],
                        "method": label,
                        "estimator": est,
                        "coupling": cp,
                        "m": int(m),
                        "theory": float("nan"),
                        "reference": float("nan"),
                        "measured": float(mean[j]),
                        "se": float(se[j]),
                        "repeats": n_rep[mi],
                    }
                )
    for (d, scale), arr in attn.items():
        setting = attn_setting[(d, scale)]
        # kernel-level prediction on (a subsample of) the same queries and keys
        Qs, Ks, _, _ = _attention_data(setting)
        sub = slice(0, min(512, len(Qs)))
        kern = {
            est: expected_error(Qs[sub], Ks[sub], setting["ms"][-1], estimator=est)
            for est in ("positive", "optimal")
        }

        def kern_txt(m, kern=kern, sub=sub):
            pos, opt = (kern[e].relative_mse(m) for e in ("positive", "optimal"))
            return (
                f"expected_error on {sub.stop}×{sub.stop} of these pairs, m={m}: mean kernel "
                f"relMSE {C.fmt(pos)} (FAVOR+) → {C.fmt(opt)} (FAVOR++)"
            )

        # paired (same projection seed) log-ratio FAVOR+ / FAVOR++ per repeat
        lr = np.log(arr[0] / arr[1])
        mu, se = C.mean_se(lr)
        n = lr.shape[0]
        # one-sided paired t-tests, reported as the z of the same p-value
        t_stat = mu / se
        z_eq = stats.norm.isf(stats.t.sf(t_stat, n - 1))
        ratios = ", ".join(
            f"m={m}: ×{C.fmt(r)}" for m, r in zip(setting["ms"], np.exp(mu), strict=True)
        )
        geo = [np.exp(np.log(arr[0][: len(a), -1] / a[:, -1]).mean()) for a in arr]
        others = ", ".join(
            f"{BATCH_METHODS[i][0].split(' (')[0]} ×{C.fmt(geo[i])}"
            for i in range(2, len(BATCH_METHODS))
        )
        m_min, m_max = setting["ms"][0], setting["ms"][-1]
        where = f"L={setting['L']}, d={d}, q,k ×{scale}"
        ok, _, crit = C.significantly_positive(z_eq[-1])
        claims.append(
            C.Claim(
                f"Attention output ({where}): FAVOR++ has lower output MSE than FAVOR+ at "
                f"m = {m_max}",
                kern_txt(m_max)
                + f"; median {C.fmt(kern['positive'].median)} → {C.fmt(kern['optimal'].median)}",
                f"output MSE FAVOR+/FAVOR++ (geometric mean over {n} paired repeats) {ratios}; "
                f"at m={m_max} vs FAVOR+: {others}",
                f"paired one-sided t-test at m={m_max} (t = {t_stat[-1]:.2f}, {n - 1} dof) as "
                "the z of the same p-value; " + crit,
                ok,
            )
        )
        if setting.get("small_m_reversal"):
            ok, _, crit = C.significantly_positive(-z_eq[0])
            claims.append(
                C.Claim(
                    f"Attention output ({where}): at m = {m_min} FAVOR++ has *higher* output MSE "
                    "than FAVOR+ (the kernel-level gain does not carry over at small m)",
                    kern_txt(m_min),
                    f"output MSE FAVOR+/FAVOR++ at m={m_min}: ×{C.fmt(np.exp(mu[0]))}",
                    f"paired one-sided t-test at m={m_min} (t = {t_stat[0]:.2f}, {n - 1} dof) "
                    "as the z of the same p-value; " + crit,
                    ok,
                )
            )
    notes += [
        "Attention outputs are computed by favorkit.favor_attention (bidirectional, "
        "estimator='positive'/'optimal'/'saderf', the coupling's projection passed as a fixed "
        "matrix), which fits A* (and Ψ) per call from these queries and keys, as the official "
        "expplus does; exact attention is favorkit.softmax_attention.",
        "Single pairs: x = y = (√z/2) e₁ (axis-aligned, so that an unfixed QR sign would show as "
        "bias); OPRF uses A* of that pair. Groups of 2d rows drawn by favorkit.sampling are "
        "stacked into one user projection; the estimate with m projections uses the first m "
        "rows of a group (one truncated block for m ≤ d, a full block plus a truncated one "
        "above), exactly the block structure of the closed form.",
        "Heavy tails: a Monte Carlo cell is tested only if the relative standard error predicted "
        "from the closed-form iid fourth moment is ≤ "
        f"{MAX_REL_SE} (CSV column mc_tested); skipped (d, z, estimator, coupling, m) cells: "
        + (", ".join(str(s) for s in skipped[:12]) + (" …" if len(skipped) > 12 else "") or "none")
        + ". The z = 16 rows of the reference table rely on the exact coupled-MSE formula alone.",
        f"Batch: d={B['d']}, L={B['L']} queries and keys, per-dimension scales "
        "exp(N(0, 0.5²)) on queries and their inverses on keys, then both rescaled so that "
        f"max |q+k|² = {BATCH_MAX_Z}; "
        f"|q+k|² from {zb.min():.2f} to {zb.max():.2f} (mean {zb.mean():.2f}).",
    ]
    for r in rows:  # one header for every part: was the point z-tested against theory?
        r.setdefault("mc_tested", r["part"] == "batch_mc")
    C.write_csv(ctx.path(f"{NAME}.csv"), rows)
    _plot(ctx, curves, batch, B, reg, attn, attn_setting)
    return claims, notes


def _plot(ctx, curves, batch, B, reg, attn, attn_setting):
    import matplotlib.pyplot as plt

    P = ctx.params
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    colors = {"iid": "tab:gray", "orthogonal": "tab:blue", "simplex": "tab:green"}
    # Per estimator: line style, label, x offset (so the error bars do not overlap), marker,
    # and whether markers are hollow.
    styles = {"positive": "-", "optimal": "--"}
    labels = {"positive": "PosRF", "optimal": "OPRF"}
    offsets = {"positive": 1.0, "optimal": 1.04}
    markers = {"positive": "o", "optimal": "s"}
    hollow = {"positive": False, "optimal": True}
    # (a), (b): single pairs at z = 1 for the two dimensions
    for ax, d in zip(axes[0, :2], (P["pair_ds"] * 2)[:2], strict=True):
        z = 1.0 if 1.0 in P["zs"] else P["zs"][0]
        for cp in SAMPLERS:
            for est in ("positive", "optimal"):
                ms, mse, se, th, _ = curves[(d, cp, z, est)]
                lab = f"{labels[est]} {cp}"
                ax.plot(ms, th, styles[est], color=colors[cp], lw=1.2, label=f"{lab} (exact)")
                ax.errorbar(
                    ms * offsets[est],
                    mse,
                    yerr=2 * se,
                    fmt=markers[est],
                    ms=3.5,
                    color=colors[cp],
                    mfc="none" if hollow[est] else colors[cp],
                )
        ax.set(xscale="log", yscale="log", xlabel="projections m", ylabel="relative MSE")
        ax.set_title(f"single pair, d={d}, |x+y|²={z} (points: MC ± 2 se)", fontsize=9)
        ax.axvline(d, color="0.7", lw=0.8, ls=":")
    axes[0, 0].legend(fontsize=6)
    # (c): batch
    ax = axes[0, 2]
    for i, (label, (mse, se, th, _R)) in enumerate(batch.items()):
        col = f"C{i}"
        ax.plot(B["ms"], th, color=col, lw=1.2, label=label)
        ax.errorbar(
            np.array(B["ms"]) * (1 + 0.03 * i), mse, yerr=2 * se, fmt="o", ms=3.5, color=col
        )
    ax.set(
        xscale="log", yscale="log", xlabel="projections m", ylabel="mean relative MSE over pairs"
    )
    ax.set_xticks(B["ms"], [str(m) for m in B["ms"]])
    ax.minorticks_off()
    ax.set_title(f"batch d={B['d']}, L={B['L']} (lines: expected_error)", fontsize=9)
    ax.legend(fontsize=6)
    # (d), (e): attention
    for ax, ((d, scale), arr) in zip(axes[1, :2], list(attn.items())[:2], strict=False):
        for i, (label, _, _) in enumerate(BATCH_METHODS):
            mean, se = C.mean_se(arr[i])
            ax.errorbar(
                np.array(attn_setting[(d, scale)]["ms"]) * (1 + 0.03 * i),
                mean,
                yerr=2 * se,
                fmt="o-",
                ms=3.5,
                color=f"C{i}",
                label=label,
            )
        C.plain_log_ticks(ax, attn_setting[(d, scale)]["ms"])
        ax.set(yscale="log", xlabel="projections m", ylabel="attention output MSE")
        ax.set_title(f"attention vs exact, d={d}, q,k×{scale}", fontsize=9)
        ax.legend(fontsize=6)
    # (f): regimes
    ax = axes[1, 2]
    names = list(reg)
    for i, est in enumerate(("positive", "optimal", "saderf")):
        vals = [reg[n][est].mean() for n in names]
        ax.bar(np.arange(len(names)) + 0.27 * (i - 1), vals, 0.27, label=est)
        for j, n in enumerate(names):
            if n in TABLE_36:
                ax.plot(j + 0.27 * (i - 1), TABLE_36[n][est][0], "k_", ms=12)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("mean log(1 + relVar), one feature")
    ax.set_title("Query/key regimes (bars: ours; black ticks: reference values)", fontsize=9)
    ax.legend(fontsize=7)
    if len(attn) < 2:
        axes[1, 1].set_visible(False)
    fig.suptitle("Beyond FAVOR+: exact MSE vs Monte Carlo, batch predictions, attention error")
    fig.tight_layout()
    C.save_figure(fig, ctx.path(f"{NAME}.png"))


if __name__ == "__main__":
    C.main_for(sys.modules[__name__])
