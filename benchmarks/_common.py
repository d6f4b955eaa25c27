"""Timing helpers shared by the benchmarks.

The machine is shared and noisy, so every number is a median over interleaved repeats
(each round runs every contender once, in turn), and results are reported as ratios of
times measured in the same run. "This machine's limit" for an operation is built from rates
measured here and now: the BLAS GEMM rate and the best two-core exp rate.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

RESULTS = Path(__file__).resolve().parent.parent / "results" / "benchmarks"


def interleaved_medians(contenders, repeats=9, warmup=1, rest=0.15):
    """Median wall time of each callable, running them in turn ``repeats`` times.

    An untimed ``rest`` (seconds) precedes every timed call: OpenBLAS (and torch) worker
    threads keep spinning for ~0.1 s after a call and slowed whatever ran next by up to 2x
    on the development machine, which would charge one contender for another's threads.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            time.sleep(rest)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def gemm_job(n, k, m, dtype):
    """A callable computing an (n, k) @ (k, m) product with numpy's BLAS (all cores)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, k)).astype(dtype)
    b = rng.standard_normal((k, m)).astype(dtype)
    return lambda: a @ b


class ExpJob:
    """A callable computing ``size`` exps on ``n_threads`` cores at the best measured rate.

    numpy's SIMD exp (the best two-core exp found on the development machine; Numba's libm
    exp was 3-4x slower) on cache-resident blocks: each task exponentiates one 256 KiB block
    of values in the range features take (about -10..0) into a per-task output, so memory
    bandwidth does not enter the limit. Use it as a context manager so the pool is closed.
    """

    def __init__(self, size, dtype, n_threads=2, block=1 << 16, tasks_per_thread=4):
        self.values = np.random.default_rng(0).uniform(-10, 0, block).astype(dtype)
        n_blocks = -(-size // block)
        n_tasks = n_threads * tasks_per_thread
        # Few large tasks: a pool hand-off costs about as much as exponentiating one block.
        self.blocks_per_task = [len(range(i, n_blocks, n_tasks)) for i in range(n_tasks)]
        self.outs = [np.empty_like(self.values) for _ in range(n_tasks)]
        self.pool = ThreadPoolExecutor(n_threads)
        self.size = n_blocks * block

    def _one(self, i):
        for _ in range(self.blocks_per_task[i]):
            np.exp(self.values, out=self.outs[i])

    def __call__(self):
        with threadpool_limits(1, "blas"):
            list(self.pool.map(self._one, range(len(self.outs))))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown()


def environment():
    """Facts that make a benchmark result interpretable later."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    import numba
    import sklearn

    blas = [
        {k: lib.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numba": numba.__version__,
        "sklearn": sklearn.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "blas": blas,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "commit": commit,
    }


def save(name, payload):
    """Write ``results/benchmarks/<name>.json`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2))
    return path
