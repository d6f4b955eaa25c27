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
from threadpoolctl import ThreadpoolController, threadpool_info

from favorkit._kernels.fastexp import exp_inplace_float32

RESULTS = Path(__file__).resolve().parent.parent / "results" / "benchmarks"


def interleaved_medians(contenders, repeats=9, warmup=1, rest=0.15, warm=True):
    """Median wall time of each callable, running them in turn ``repeats`` times.

    The order is shuffled from round to round.

    An untimed ``rest`` (seconds) precedes every timed call: OpenBLAS (and torch) worker
    threads keep spinning for ~0.1 s after a call and slowed whatever ran next by up to 2x
    on the development machine, which would charge one contender for another's threads.
    With ``warm``, an untimed call of the same contender then runs right before the timed
    one, so that what is timed is a call in steady use: on the development machine (a
    2-vCPU VM) the first parallel call after the CPUs had idled for 0.15 s ran up to 1.8x
    slower (FAVOR attention at L = 16 384: 22 ms back to back, 38 ms after the pause, with
    ~13 involuntary context switches per call), an effect of the idle vCPUs, not of the
    code being timed.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    shuffle = np.random.default_rng(0).permutation
    for _ in range(repeats):
        # Each round runs the contenders in a new (seeded) order, so that no contender
        # always follows the same one: what ran just before measurably slowed the next call.
        for name in shuffle(list(contenders)):
            fn = contenders[name]
            time.sleep(rest)
            if warm:
                fn()
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
    """A callable computing ``size`` exps on ``n_threads`` cores with one exp implementation.

    ``impl="numpy"``: ``np.exp`` from each task's cache-resident 256 KiB block of values in
    the range features take (about -10..0) into a per-task output, so memory bandwidth does
    not enter the limit. ``impl="favorkit"``: favorkit's float32 exp kernel, in place on
    each task's block; its code is branch-free, so its cost does not depend on the values
    (measured: the same on values in range and on the infs that repeated exps reach).
    Use it as a context manager so the pool is closed.
    """

    def __init__(self, size, dtype, impl="numpy", n_threads=2, block=1 << 16, tasks_per_thread=4):
        self.values = np.random.default_rng(0).uniform(-10, 0, block).astype(dtype)
        n_blocks = -(-size // block)
        n_tasks = n_threads * tasks_per_thread
        # Few large tasks: a pool hand-off costs about as much as exponentiating one block.
        self.blocks_per_task = [len(range(i, n_blocks, n_tasks)) for i in range(n_tasks)]
        self.outs = [self.values.copy() for _ in range(n_tasks)]
        if impl == "numpy":
            self._exp = lambda out: np.exp(self.values, out=out)
        elif impl == "favorkit" and self.values.dtype == np.float32:
            self._exp = exp_inplace_float32
        else:
            raise ValueError(f"no {impl!r} exp for {self.values.dtype}")
        self.pool = ThreadPoolExecutor(n_threads)
        self.size = n_blocks * block
        # A controller built once: threadpoolctl's threadpool_limits() rescans the loaded
        # libraries on every call (~2 ms here, which would be charged to the exps).
        self.controller = ThreadpoolController()

    def _one(self, i):
        for _ in range(self.blocks_per_task[i]):
            self._exp(self.outs[i])

    def __call__(self):
        with self.controller.limit(limits=1, user_api="blas"):
            list(self.pool.map(self._one, range(len(self.outs))))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown()


class ExpJobs(dict):
    """The exps the machine limit may use, as named :class:`ExpJob` callables.

    numpy's exp, and for float32 favorkit's own kernel (faster than numpy's on the
    development machine). Time them all; :meth:`best_rate` is "the best measured exp".
    """

    def __init__(self, size, dtype):
        impls = ["numpy"] + (["favorkit"] if np.dtype(dtype) == np.float32 else [])
        super().__init__({f"limit: exp ({impl})": ExpJob(size, dtype, impl) for impl in impls})

    def best_rate(self, times):
        """Pop this object's entries from ``times``; return the best rate (exps per second)."""
        return max(job.size / times.pop(name) for name, job in self.items())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for job in self.values():
            job.__exit__(*exc)


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
