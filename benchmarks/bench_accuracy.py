"""Cost of favorkit.accuracy and of the AccuracyWarning check, in attention calls.

At L = 16 384, d = 64, m = 256 (float32, one head), all ratios measured in one run as
medians of interleaved repeats:

* ``predict_attention_error`` (the default 32, 64 and 256 query rows) over one
  bidirectional ``attend``
  (target: <= 1 call), each call cold (the coupling tables it caches cleared first);
* ``measure_attention_error`` (256 rows, 8 redraws) over one ``attend`` (target: <= 10);
* the AccuracyWarning check inside ``attend`` (8 rows, 128 sampled keys) over one
  ``attend`` (target: <= 3 %).

Run (an unhampered OpenBLAS, as the other benchmarks):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_accuracy.py
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
from _common import interleaved_medians, save

from favorkit import FavorAttention, maps
from favorkit.accuracy import measure_attention_error, predict_attention_error
from favorkit.attention._accuracy import _coupling_tables, quick_noise_ratio

L, D, M = 16384, 64, 256


def cold(func, *args, **kwargs):
    """``func`` as on a first call: without the coupling tables an earlier call cached."""
    _coupling_tables.cache_clear()
    return func(*args, **kwargs)


def main():
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((L, D), dtype=np.float32) * s for s in (0.5, 0.5, 1.0))
    att = FavorAttention(M, random_state=0).fit(Q)
    fmap = maps.get("positive")
    Qb, Kb, Vb = Q[None], K[None], V[None]
    jobs = {
        "attend": lambda: att.attend(Q, K, V),
        "predict, default 32 rows": lambda: cold(predict_attention_error, Q, K, V, M),
        "predict, 64 rows": lambda: cold(predict_attention_error, Q, K, V, M, n_queries=64),
        "predict, 256 rows": lambda: cold(predict_attention_error, Q, K, V, M, n_queries=256),
        "measure, 256 rows, 8 redraws": lambda: measure_attention_error(Q, K, V, M),
        "warning check": lambda: quick_noise_ratio(
            Qb, Kb, Vb, None, False, math.sqrt(1 / math.sqrt(D)), fmap, M, None
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = interleaved_medians(jobs, repeats=15)
    base = times["attend"]
    ratios = {name: t / base for name, t in times.items() if name != "attend"}
    print(f"L={L} d={D} m={M}; attend {1e3 * base:.1f} ms (median); in attend calls:")
    for name, r in ratios.items():
        print(f"  {name}: {r:.2f}")
    path = save("accuracy", {"L": L, "d": D, "m": M, "seconds": times, "ratios": ratios})
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
