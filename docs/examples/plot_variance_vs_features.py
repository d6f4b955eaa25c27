"""
Variance against the number of features, on your own data
==========================================================

How many random features does a kernel estimate need on *your* data, and which
estimator gives the most for them? ``favorkit.plotting.variance_vs_features`` answers in
one call: it draws pairs of rows of the data, measures the relative mean squared error
``E[(K̂/K - 1)²]`` of each estimator's kernel estimate for each number of projections m
over fresh projections, and lays the closed forms of ``favorkit.theory`` over the
measurement. Here: the wine data set, standardized, with the softmax kernel
``exp(x·y)`` of attention.
"""

# %%
# The data
# --------
# Standardized wine has 13 features of unit variance, so ``|x|² ≈ 13``. The variance of
# the positive (FAVOR+) estimate grows like ``exp(|x + y|²)`` (Choromanski et al. 2021,
# Lemma 2), so the rows are scaled down, as attention scales queries and keys by
# ``d^(-1/4)`` and trained models keep their norms modest.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_wine
from sklearn.preprocessing import StandardScaler

from favorkit.plotting import variance_vs_features

X = StandardScaler().fit_transform(load_wine().data)
print(f"{X.shape[0]} rows, d = {X.shape[1]}, mean |x|² = {np.mean(np.sum(X**2, axis=1)):.1f}")

# %%
# Two input scales
# ----------------
# At each scale, four estimators: FAVOR+ (``"positive"``), its antithetic pair
# (``"hyperbolic"``), FAVOR++ (``"optimal"``, Likhosherstov et al. 2022) and the
# trigonometric features, each with iid and orthogonal projections. Points are measured
# (± 2 standard errors over 200 projections); lines are the closed forms (iid: Lemma 2
# and the GERF variance of FAVOR++; orthogonal: the exact MSE of coupled blocks).
#
# Hollow, faded points are *flagged*: there the error of one projection's estimate is so
# heavy-tailed (its kurtosis exceeds a quarter of the 200·m squared errors averaged) that
# the measured mean cannot see its own expectation — a typical run reads low, with a
# standard error that is too small to say so. The closed form is still exact there; the
# measurement is not evidence either way.
estimators = ("positive", "hyperbolic", "optimal", "trig")
fig, axes = plt.subplots(2, 1, figsize=(8.5, 9.0), layout="constrained")
for ax, scale in zip(axes, (0.15, 0.3), strict=True):
    curves = variance_vs_features(
        X * scale, estimators=estimators, n_pairs=4, n_repeats=200, random_state=0, ax=ax
    )
    ax.set_title(f"wine, standardized × {scale}: softmax kernel, 4 pairs of rows", fontsize=10)
    for note in curves.notes:
        print(note)
fig.suptitle("Relative MSE of the kernel estimate against the number of projections m")

# %%
# At scale 0.15 the measurements sit on their closed forms (only the hyperbolic pair at
# m = 2 is flagged), FAVOR+ is the worst estimator and orthogonal projections help the
# trigonometric and hyperbolic ones most. Doubling the scale multiplies ``|x + y|²`` by
# four: FAVOR+ and the hyperbolic pair get heavy tails at every m shown, FAVOR++ up to
# m = 16, while the trigonometric features — bounded, so never heavy-tailed, but signed —
# have the lowest error on these pairs. ``curves`` holds the arrays behind the last
# panel:
print("m:", curves.m)
print("FAVOR++, iid, measured:", np.round(curves.relative_mse[2, 0], 4))
print("FAVOR++, iid, theory:  ", np.round(curves.theory[2, 0], 4))
