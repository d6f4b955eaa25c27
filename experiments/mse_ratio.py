"""Fig. 2: the utility MSE_trig / MSE_positive over angle and length, with its crossover.

Draws the analytic surface r(φ, l) of Lemma 2 on [-π, π] x [-2, 2] (|x| = |y| = l, angle
φ), its slice at l = 1 with the crossover angle (≈ 1.74) where both estimators are equally
accurate, and lays Monte Carlo ratios, measured with favorkit's trigonometric
(``OrthogonalRFF(kernel="softmax")``) and positive (``PositiveRandomFeatures``) estimators on
iid projections, over it.
"""

from __future__ import annotations

import sys

import _common as C
import numpy as np

from favorkit import theory

NAME = "mse_ratio"
TITLE = "Fig. 2: MSE ratio of trigonometric to positive features"
# Measured points (l, φ); |x+y|² <= 2.2 so the positive estimator's errors stay testable.
POINTS = [
    (1.0, 1.5),
    (1.0, 1.74),
    (1.0, 2.0),
    (1.0, 2.5),
    (0.5, 1.2),
    (0.5, 2.08),
    (0.5, 2.6),
    (1.5, 2.2),
    (1.5, 2.6),
    (-1.0, -2.0),
]
# Roots of r(φ, l) = 1 to 2 decimals: reference values (an independent computation from Lemma 2;
# the paper prints only the plot of Fig. 2).
QUOTED_CROSSOVERS = {0.5: 2.08, 1.0: 1.74, 1.5: 1.65, 2.0: 1.61}
PARAMS = {
    "smoke": {"d": 4, "m": 16, "repeats": 100, "chunk": 50, "grid": 41},
    "quick": {"d": 8, "m": 128, "repeats": 2000, "chunk": 500, "grid": 301},
    "full": {"d": 8, "m": 128, "repeats": 40000, "chunk": 2000, "grid": 601},
}


def pairs(d):
    return C.planar_pairs([(length, length, phi) for length, phi in POINTS], d)


def task(job):
    d, m, n_rep, seed = job
    X, Y = pairs(d)
    out = []
    for est, ss in zip(("trig", "positive"), np.random.SeedSequence(seed).spawn(2), strict=True):
        W, G = C.draw_groups("iid", n_rep, m, d, np.random.default_rng(ss))
        out.append(C.prefix_estimates(C.kernel_samples(est, W, X, Y), G, [m])[..., 0])
    return np.stack(out)  # (estimator, point, repeat)


def run(ctx):
    P = ctx.params
    d, m = P["d"], P["m"]
    n_tasks = -(-P["repeats"] // P["chunk"])
    est = np.concatenate(
        ctx.map(task, [(d, m, P["chunk"], s) for s in ctx.seeds(n_tasks)], desc=NAME), axis=2
    )
    R = est.shape[2]
    X, Y = pairs(d)
    sm = theory.softmax_kernel(X, Y)
    err2 = (est - sm[None, :, None]) ** 2
    mse = err2.mean(axis=2)
    th = np.stack([theory.mse_trig(X, Y, m), theory.mse_positive(X, Y, m)])
    # se of each MSE under H0 from the closed-form 4th moment; log-ratio se by the delta method.
    sd0 = np.stack([C.iid_sq_error_sd(e, X, Y, m) for e in ("trig", "positive")])
    rel_se = sd0 / np.sqrt(R) / th
    log_r = np.log(mse[0] / mse[1])
    log_r_se = np.hypot(rel_se[0], rel_se[1])
    r_theory = theory.mse_ratio(np.array([p for _, p in POINTS]), np.array([s for s, _ in POINTS]))
    z = (log_r - np.log(r_theory)) / log_r_se

    rows = []
    for i, (length, phi) in enumerate(POINTS):
        for r in range(R):
            rows.append(
                {
                    "length": length,
                    "angle": phi,
                    "d": d,
                    "m": m,
                    "repeat": r,
                    "sm": sm[i],
                    "trig_estimate": est[0, i, r],
                    "positive_estimate": est[1, i, r],
                    "trig_sq_error": err2[0, i, r],
                    "positive_sq_error": err2[1, i, r],
                    "theory_ratio": r_theory[i],
                }
            )
    C.write_csv(ctx.path(f"{NAME}.csv"), rows)

    claims = []
    roots = {length: theory.crossover_angle(length) for length in QUOTED_CROSSOVERS}
    ok = all(abs(roots[k] - v) <= 0.005 for k, v in QUOTED_CROSSOVERS.items())
    claims.append(
        C.Claim(
            "Fig. 2: the crossover angle r = 1 is ≈ 2.08, 1.74, 1.65, 1.61 at l = 0.5, 1, 1.5, 2",
            "quoted: " + ", ".join(f"{v}" for v in QUOTED_CROSSOVERS.values()),
            "root of r(φ, l) = 1: " + ", ".join(f"{roots[k]:.4f}" for k in QUOTED_CROSSOVERS),
            "each root rounds to the quoted 2 decimals (|root − quoted| ≤ 0.005); a check of "
            "the reconstructed formula, not of an estimator",
            ok,
        )
    )
    ok, worst, _, crit = C.all_within(z)
    k = int(np.argmax(np.abs(z)))
    claims.append(
        C.Claim(
            f"Measured MSE_trig / MSE_+ matches r(φ, l) at {len(POINTS)} points "
            f"(m = {m}, {R} repeats, iid)",
            f"e.g. l={POINTS[k][0]}, φ={POINTS[k][1]}: r = {C.fmt(r_theory[k])}",
            f"{C.fmt(np.exp(log_r[k]))} (×/÷ {C.fmt(np.exp(log_r_se[k]))}); max |z| = {worst:.2f}",
            crit + " on log r; se from the closed-form 4th moments under H0",
            ok,
        )
    )
    below = POINTS.index((1.0, 1.5))
    above = POINTS.index((1.0, 2.0))
    z_lo, z_hi = -log_r[below] / log_r_se[below], log_r[above] / log_r_se[above]
    ok_lo, _, crit = C.significantly_positive(z_lo)
    ok_hi, _, _ = C.significantly_positive(z_hi)
    # Measured crossover: interpolate log r linearly in φ between the l = 1 points.
    on_slice = [i for i, (s, _) in enumerate(POINTS) if s == 1.0]
    phis = np.array([POINTS[i][1] for i in on_slice])
    cross = float(np.interp(0.0, log_r[on_slice], phis))
    claims.append(
        C.Claim(
            "At l = 1 trig features win below the crossover and positive features above it",
            f"crossover φ* = {roots[1.0]:.3f}; r(1.5) = {C.fmt(r_theory[below])}, "
            f"r(2.0) = {C.fmt(r_theory[above])}",
            f"r(1.5) = {C.fmt(np.exp(log_r[below]))} (z = {-z_lo:.1f}), "
            f"r(2.0) = {C.fmt(np.exp(log_r[above]))} (z = {z_hi:.1f}); "
            f"interpolated measured crossover {cross:.3f}",
            "log r < 0 at φ = 1.5 and > 0 at φ = 2.0, each " + crit,
            ok_lo and ok_hi,
        )
    )
    _plot(ctx, log_r, log_r_se, roots, m, R)
    notes = [
        "r(φ, l) = MSE_trig / MSE_+ from Lemma 2 at |x| = |y| = l (our reconstruction: the "
        "paper prints only the plot of Fig. 2). It does not depend on m "
        "or d; negative l means y = l·(cos φ, sin φ) with x = (l, 0), which gives the same r.",
        f"Both estimators use m = {m} iid projections (trig has 2m = {2 * m} features, "
        f"positive {m}); d = {d}.",
    ]
    return claims, notes


def _plot(ctx, log_r, log_r_se, roots, m, R):
    import matplotlib.pyplot as plt
    from matplotlib import colors

    n = ctx.params["grid"]
    phi = np.linspace(-np.pi, np.pi, n)
    length = np.linspace(-2, 2, n)
    F, L = np.meshgrid(phi, length)
    with np.errstate(divide="ignore"):
        lr = np.log10(theory.mse_ratio(F, L))
    lr = np.clip(np.nan_to_num(lr, nan=0.0, neginf=-6, posinf=6), -6, 6)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    im = a1.pcolormesh(
        F, L, lr, cmap="RdBu_r", norm=colors.TwoSlopeNorm(0.0, -6, 6), shading="auto"
    )
    a1.contour(F, L, lr, levels=[0.0], colors="k", linewidths=1)
    fig.colorbar(im, ax=a1, label="log10 r = log10(MSE_trig / MSE_+)  (clipped to ±6)")
    pts = np.array(POINTS)
    a1.scatter(
        pts[:, 1],
        pts[:, 0],
        c=np.log10(np.exp(log_r)),
        cmap="RdBu_r",
        norm=colors.TwoSlopeNorm(0.0, -6, 6),
        edgecolors="k",
        s=40,
        label="measured points (colour = measured)",
    )
    a1.set_xlabel("angle φ between x and y (rad)")
    a1.set_ylabel("length l = |x| = |y|")
    a1.set_title("analytic surface (black: r = 1)", fontsize=9)
    a1.legend(fontsize=7, loc="lower left")
    ph = np.linspace(0.05, np.pi - 0.05, 400)
    a2.plot(ph, theory.mse_ratio(ph, 1.0), color="k", lw=1.5, label="r(φ, l=1), Lemma 2")
    on = [i for i, (s, _) in enumerate(POINTS) if abs(s) == 1.0]
    a2.errorbar(
        np.abs(pts[on, 1]),
        np.exp(log_r[on]),
        yerr=[
            np.exp(log_r[on]) * (1 - np.exp(-2 * log_r_se[on])),
            np.exp(log_r[on]) * (np.exp(2 * log_r_se[on]) - 1),
        ],
        fmt="o",
        color="tab:red",
        ms=5,
        label=f"measured (m={m}, {R} repeats, ± 2 se)",
    )
    a2.axhline(1.0, color="0.5", lw=0.8, ls=":")
    a2.axvline(
        roots[1.0], color="tab:blue", lw=1, ls="--", label=f"crossover φ* = {roots[1.0]:.3f}"
    )
    a2.set_yscale("log")
    a2.set_xlabel("angle φ (rad)")
    a2.set_ylabel("MSE_trig / MSE_+  (dimensionless)")
    a2.set_title("slice at l = 1", fontsize=9)
    a2.legend(fontsize=8)
    fig.suptitle("Fig. 2: where positive features beat trigonometric ones (r > 1)")
    C.save_figure(fig, ctx.path(f"{NAME}.png"))


if __name__ == "__main__":
    C.main_for(sys.modules[__name__])
