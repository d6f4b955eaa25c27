"""
Causal attention on a long sequence: time and memory
====================================================

Exact causal softmax attention costs ``O(L²)`` time: every position attends to all
earlier ones. Causal FAVOR (Choromanski et al. 2021, the prefix sums of its Appendix B)
carries an ``m × d`` running state instead, so time and memory grow linearly in L, and it
stays exactly causal: no later key can change an earlier output. Here both run on the
same float32 queries, keys and values, from L = 256 up to L = 16 384 (exact attention
only up to 8192).
"""

# %%
# Timing and memory
# -----------------
# Time is the fastest of a few calls after an untimed one; memory is the peak that
# ``tracemalloc`` sees above the inputs during one call (every NumPy allocation; the
# small per-block scratch of favorkit's compiled kernels is not traced).
import time
import tracemalloc

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np

from favorkit import FavorAttention, softmax_attention

d, m = 64, 256
lengths = [256, 512, 1024, 2048, 4096, 8192, 16384]
EXACT_UP_TO = 8192
rng = np.random.default_rng(0)
att = FavorAttention(m, random_state=0)


def measure(attention, Q, K, V, runs):
    """Best time of ``runs`` causal calls, and the peak memory of one."""

    def call():
        attention(Q, K, V, causal=True)

    call()  # untimed: warms caches and compiled kernels
    best = min(_timed(call) for _ in range(runs))
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


favor_time, favor_mem, exact_time, exact_mem, errors = [], [], [], [], []
for L in lengths:
    # Entries of standard deviation 0.3: |q̃|² ≈ 0.7 after the 1/sqrt(d) logit scale,
    # where 256 features approximate softmax attention well.
    Q, K, V = (0.3 * rng.standard_normal((3, L, d))).astype(np.float32)
    att.fit(Q)
    t, mem = measure(att.attend, Q, K, V, runs=3)
    favor_time.append(t)
    favor_mem.append(mem)
    if L <= EXACT_UP_TO:
        t, mem = measure(softmax_attention, Q, K, V, runs=1 if L > 2048 else 3)
        exact_time.append(t)
        exact_mem.append(mem)
        out = att.attend(Q, K, V, causal=True)
        exact = softmax_attention(Q, K, V, causal=True)
        errors.append(np.linalg.norm(out - exact) / np.linalg.norm(exact))
        print(
            f"L = {L:5d}: FAVOR {1e3 * favor_time[-1]:7.1f} ms, exact {1e3 * t:7.1f} ms, "
            f"relative error {errors[-1]:.3f}"
        )

# %%
# The figure
# ----------
# The dotted line is the memory an ``L × L`` float32 attention matrix alone would take;
# favorkit's exact reference never forms it (it works in blocks of rows), but it still
# does ``O(L²)`` work.
lengths = np.array(lengths)
n_exact = len(exact_time)
fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.3), layout="constrained")
left.plot(lengths, 1e3 * np.array(favor_time), "o-", color="C0", label="causal FAVOR, m = 256")
left.plot(
    lengths[:n_exact],
    1e3 * np.array(exact_time),
    "s-",
    color="C3",
    label="exact causal softmax attention",
)
ref = 1e3 * exact_time[-1] * (lengths / lengths[n_exact - 1]) ** 2
left.plot(lengths, ref, ":", color="0.6", label=r"slope $L^2$")
right.plot(lengths, np.array(favor_mem) / 2**20, "o-", color="C0", label="causal FAVOR, m = 256")
right.plot(
    lengths[:n_exact], np.array(exact_mem) / 2**20, "s-", color="C3", label="exact (blocked)"
)
right.plot(
    lengths, 4.0 * lengths**2 / 2**20, ":", color="0.6", label=r"an $L \times L$ float32 matrix"
)
for ax in (left, right):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [f"{L // 1024}k" if L >= 1024 else str(L) for L in lengths])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("sequence length L")
    ax.grid(True, color="0.9")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
left.set_ylabel("time per call (ms, best of runs)")
right.set_ylabel("peak memory above the inputs (MiB)")
left.set_title(f"Time, d = {d}, float32", fontsize=10)
right.set_title("Memory (tracemalloc)", fontsize=10)
left.set_ylim(top=ref.max() * 3)

# %%
# FAVOR's time and memory grow linearly; exact attention's time grows like ``L²`` and
# overtakes FAVOR's at a few hundred positions. The relative error of the output stays
# near its value at small L (it depends on the scale of the inputs and on m, not on L).
print("relative errors:", np.round(errors, 3))
