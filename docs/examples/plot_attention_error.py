"""
FAVOR attention error against the number of features
====================================================

FAVOR (Choromanski et al. 2021) replaces the ``L × L`` softmax attention matrix by
random features of the queries and keys: ``D⁻¹ φ(Q)(φ(K)ᵀV)``, linear in L. How far is
its output from exact attention, and how does that fall with the number of features
m? ``favorkit.accuracy.predict_attention_error`` answers from the closed forms, without
a single draw (a first-order expansion of the normalized output in the kernel
estimates' errors, with the exact covariances of Lemma 2 and of orthogonal blocks), and
``measure_attention_error`` checks it against ``softmax_attention`` over redraws.
"""

# %%
# Inputs at a moderate scale
# --------------------------
# Queries and keys with entries of standard deviation 0.4 at d = 32, so that after the
# logit scale ``1/sqrt(d)`` the scaled rows have ``|q̃|² ≈ 0.9``: the regime where
# random-feature attention works. (With unit entries, ``|q̃|² = sqrt(d) ≈ 5.7`` and one
# estimate's relative variance is about ``e^{23}``: no feasible m helps.)
import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np

from favorkit.accuracy import measure_attention_error, predict_attention_error

rng = np.random.default_rng(0)
L, d = 1024, 32
Q, K = rng.normal(scale=0.4, size=(2, L, d))
V = rng.normal(size=(L, d))
ms = np.array([16, 32, 64, 128, 256, 512])

# %%
# Predicted and measured, three estimators
# ----------------------------------------
# FAVOR+ (``"positive"``), its antithetic pair (``"hyperbolic"``) and FAVOR++
# (``"optimal"``, Likhosherstov et al. 2022), each with orthogonal projections. One
# prediction per estimator gives every m (``relative_error_at``); each measurement uses
# 8 redraws on 256 query rows.
estimators = ("positive", "hyperbolic", "optimal")
predicted, measured, se = {}, {}, {}
for name in estimators:
    prediction = predict_attention_error(Q, K, V, 256, estimator=name, n_queries=256)
    predicted[name] = prediction.relative_error_at(ms)
    runs = [measure_attention_error(Q, K, V, int(m), estimator=name, n_redraws=8) for m in ms]
    measured[name] = np.array([r.relative_error for r in runs])
    se[name] = np.array([r.standard_error for r in runs])
    print(f"{name:10s} predicted at m = 256: {prediction.relative_error:.4f}")

# %%
# The figure
# ----------
# Lines: the prediction; points: the measurement, ± 2 standard errors over the redraws.
fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
labels = {"positive": "FAVOR+", "hyperbolic": "hyperbolic", "optimal": "FAVOR++"}
for k, name in enumerate(estimators):
    color = f"C{k}"
    ax.plot(ms, predicted[name], color=color, lw=1.5, label=f"{labels[name]}: predicted")
    ax.errorbar(
        ms,
        measured[name],
        yerr=2 * se[name],
        fmt="o",
        ms=5,
        capsize=2,
        color=color,
        label=f"{labels[name]}: measured ± 2 SE",
    )
ax.plot(
    ms,
    predicted["positive"][0] * np.sqrt(ms[0] / ms),
    color="0.6",
    ls=":",
    lw=1,
    label=r"slope $1/\sqrt{m}$",
)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xticks(ms, [str(m) for m in ms])
ax.xaxis.set_minor_locator(ticker.NullLocator())
ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
ax.yaxis.set_minor_formatter(ticker.NullFormatter())
ax.grid(True, color="0.9")
ax.set_xlabel("random projections m")
ax.set_ylabel(r"relative error  $\|\hat{Y} - Y\|_F \,/\, \|Y\|_F$")
ax.set_title(
    f"Bidirectional attention, L = {L}, d = {d}, Q and K entries ~ N(0, 0.4²)", fontsize=10
)
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)

# %%
# Both fall like ``1/sqrt(m)``, and the prediction is within about a quarter of the
# measurement at every m: it is a first-order expansion of the normalized output, exact
# for the kernel estimates themselves, and it errs on the high side for the antithetic
# pair, whose output normalizes away part of its error. At this scale the hyperbolic
# pair (with twice the features) and FAVOR++ each lower FAVOR+'s error at the same m.
# The prediction costs about as much as a few attention calls and needs no redraw;
# ``features_needed(target)`` inverts it.
print("m for a 5 % error, FAVOR+:", predict_attention_error(Q, K, V).features_needed(0.05))
