"""Row-block parallelism for the feature maps and attention.

Work is cut into row blocks of a *fixed* size (independent of the thread count), each block
is processed start to finish by one thread (GEMM, fused Numba pass, exp), and
BLAS is held to one thread for the duration. Why:

* OpenBLAS worker threads spin for ~0.1 s after each call; a parallel Numba loop started in
  that window ran ~2.2x slower on the 2-core development machine. One BLAS thread per worker
  removes the contention.
* A block's GEMM output is exponentiated while it is still in cache. Measured for the
  feature map at n = 100 000, d = 64, m = 256 on the 2-core development machine (1 MiB L2
  per core): 1024 rows 41 ms, 2048 rows 36 ms, 4096 rows 36 ms in float32; 2048 rows
  69 ms, 4096 rows 76 ms in float64. 2048 rows (2 MiB of float32 output) it is; the block overflows
  L2 into L3, but smaller blocks pay more per-block overhead than they gain.
* Fixed block boundaries and one BLAS thread per call make the output bit-identical for any
  thread count.

The number of threads (the calling one plus a pool) is Numba's (``numba.get_num_threads()``, i.e.
``NUMBA_NUM_THREADS`` or ``numba.set_num_threads``), so one knob controls all of favorkit.
The BLAS limit is process-wide while a call runs (threadpoolctl cannot do better).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba
from threadpoolctl import ThreadpoolController

BLOCK_ROWS = 2048

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_controller: ThreadpoolController | None = None


def _get_pool(n_threads):
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n_threads:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="favorkit")
            _pool_size = n_threads
        return _pool


def _blas_one_thread():
    global _controller
    with _lock:
        if _controller is None:
            _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def row_slices(n_rows, block_rows=BLOCK_ROWS):
    """Fixed-size row slices covering ``range(n_rows)``."""
    return [slice(start, min(start + block_rows, n_rows)) for start in range(0, n_rows, block_rows)]


def map_row_blocks(func, n_rows, block_rows=BLOCK_ROWS):
    """Call ``func(rows)`` for every fixed-size row slice, on Numba's number of threads.

    ``func`` writes its results into preallocated arrays; the first exception propagates
    (after the other threads have stopped taking blocks). Blocks are taken in order, so a
    block may wait for one taken before it (the pipelined causal attention does).
    """
    slices = row_slices(n_rows, block_rows)
    n_threads = min(numba.get_num_threads(), len(slices))
    with _blas_one_thread():
        if n_threads <= 1:
            for rows in slices:
                func(rows)
            return
        # Each thread, the calling one included, pulls the next block until none is left:
        # dynamic balance on a shared machine, and one pool task per thread instead of a
        # future per block (futures per block cost ~1 ms of a 37 ms transform in
        # hand-offs and in the garbage collections their allocations trigger).
        blocks = iter(slices)
        take = threading.Lock()
        failed = threading.Event()

        def drain():
            while not failed.is_set():
                with take:
                    rows = next(blocks, None)
                if rows is None:
                    return
                try:
                    func(rows)
                except BaseException:
                    failed.set()
                    raise

        pool = _get_pool(numba.get_num_threads() - 1)
        helpers = [pool.submit(drain) for _ in range(n_threads - 1)]
        try:
            drain()
        finally:
            wait(helpers)
        for future in helpers:
            future.result()
