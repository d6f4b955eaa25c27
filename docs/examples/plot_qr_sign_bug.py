"""
The QR sign bug of orthogonal random features
=============================================

Orthogonal random features (Yu et al. 2016; Choromanski et al. 2021, Sec. 2.4 and
Theorem 2) take the directions of each block of d projections from the Q factor of a
Gaussian matrix. The Q factor of a Householder QR is *not* Haar-distributed unless its
columns' signs are fixed to those of ``diag(R)``; the official Performer code and
performer-pytorch skip that fix. The directions are then biased, and so is the positive
estimator built on them: each feature's mean ``E exp(ω·z - |z|²/2)`` should be exactly 1.
``favorkit.sampling.orthogonal(..., sign_fix=False)`` reproduces the unfixed
construction for exactly this comparison.
"""

# %%
# Per-feature moment, with and without the fix
# ---------------------------------------------
# d = 8, blocks of two orthogonal 8 × 8 matrices (m = 16) with chi-distributed norms.
# For a direction ``z``, the positive estimate of ``SM(z, 0) = 1`` from one projection is
# ``exp(ω·z - |z|²/2)``: computed here by ``PositiveRandomFeatures`` with the drawn
# matrices as its projection, one per-projection estimate per row (``favorkit.maps``).
import matplotlib.pyplot as plt
import numpy as np

from favorkit import PositiveRandomFeatures, maps, sampling

d, m, N = 8, 16, 3000
rng = np.random.default_rng(0)


def per_matrix_means(sign_fix, Z):
    """The mean over each matrix's m rows of the per-feature estimate, (len(Z), N)."""
    W = np.concatenate(
        [sampling.orthogonal(m, d, random_state=rng, sign_fix=sign_fix) for _ in range(N)]
    )
    prf = PositiveRandomFeatures(len(W), projection=W).fit(Z)
    samples = maps.get("positive").per_projection(prf.transform(Z), prf.transform(0 * Z))
    return samples.reshape(len(Z), N, m).mean(axis=2)


# %%
# Three directions of norm 0.8 (the spread of the bias over directions is the point:
# a Haar construction has none), and the bias along ``e_1`` as the norm grows.
labels = ["0.8·(1, …, 1)/√8", "0.8·e₁", "0.8·e₈"]
Z = np.zeros((3, d))
Z[0] = 0.8 / np.sqrt(d)
Z[1, 0] = Z[2, -1] = 0.8
norms = np.array([0.2, 0.4, 0.6, 0.8, 1.0, 1.2])
Zn = np.outer(norms, np.eye(d)[0])
results = {}
for fix in (False, True):
    ratio = per_matrix_means(fix, np.vstack([Z, Zn]))
    results[fix] = (ratio.mean(axis=1) - 1, ratio.std(axis=1, ddof=1) / np.sqrt(N))

# %%
# The figure
# ----------
# Bars: ± 2 standard errors over the N = 3000 matrices.
fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2), layout="constrained")
style = {
    False: ("no sign fix (official code)", "C3", "s"),
    True: ("sign fix (favorkit)", "C0", "o"),
}
for fix, (label, color, marker) in style.items():
    bias, se = results[fix]
    x = np.arange(3) + (0.12 if fix else -0.12)
    left.errorbar(
        x, 100 * bias[:3], yerr=200 * se[:3], fmt=marker, ms=6, capsize=3, color=color, label=label
    )
    right.errorbar(
        norms,
        100 * bias[3:],
        yerr=200 * se[3:],
        fmt=marker + "-",
        ms=5,
        capsize=3,
        color=color,
        label=label,
    )
for ax in (left, right):
    ax.axhline(0, color="0.4", lw=0.8)
    ax.grid(True, axis="y", color="0.9")
    ax.set_ylabel(r"bias of $E\,\exp(\omega\cdot z - |z|^2/2)$  (%)")
left.set_xticks(range(3), labels)
left.set_xlim(-0.6, 2.6)
left.set_xlabel("direction z")
left.set_title(f"Per-feature moment, d = {d}, m = {m}", fontsize=10)
handles, names = left.get_legend_handles_labels()
fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
right.set_xlabel("|z| (along e₁)")
right.set_title("Bias grows with the input norm", fontsize=10)

# %%
# Without the fix, the mean misses 1 by several percent, with a sign and size that
# depend on the direction — a bias no amount of features averages away. With the fix
# (favorkit's default), every direction is unbiased within its standard error.
for fix, (bias, se) in results.items():
    name = "sign fix" if fix else "no fix  "
    print(
        name,
        " ".join(f"{100 * b:+.1f}% ± {200 * s:.1f}" for b, s in zip(bias[:3], se[:3], strict=True)),
    )
