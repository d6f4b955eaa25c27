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
from contextlib import contextmanager

import numba
import threadpoolctl
from threadpoolctl import ThreadpoolController

BLOCK_ROWS = 2048

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_controller: ThreadpoolController | None = None
_blas_users = 0  # calls (from any thread, nested or not) inside _blas_one_thread
_blas_limiter = None  # the limit set by the first of them, undone by the last


def _submit(func, count):
    """Submit ``count`` calls of ``func`` to the shared pool, grown to ``count`` workers.

    The pool only grows (callers in threads with different Numba thread counts share it);
    a pool being replaced is shut down without waiting, which lets its submitted tasks
    finish. Submitting under the lock keeps a pool from being shut down between a caller
    fetching it and submitting to it.
    """
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < count:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="favorkit")
            _pool_size = count
            if old is not None:
                old.shutdown(wait=False)
        return [_pool.submit(func) for _ in range(count)]


def _release_blas_control():
    """Let the calling thread set OpenBLAS's thread count.

    threadpoolctl (>= 3.7) lets only one "controlling" Python thread change the limit of an
    OpenBLAS with a process-wide thread pool, and silently ignores the others; favorkit
    may be entered and left by any thread, so it takes control for each change and gives
    it back afterwards.
    """
    controller_class = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(controller_class, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


@contextmanager
def _blas_one_thread():
    """Hold BLAS to one thread while any favorkit call runs.

    threadpoolctl's limits are process-wide, so concurrent and nested calls share one
    limit: the first call in sets it, the last one out restores what was there before
    (limits restored per call would undo each other in the wrong order and leave BLAS at
    one thread for the rest of the process). One BLAS thread also keeps the results
    independent of the calling thread: OpenBLAS's threaded GEMM rounds differently.
    """
    global _controller, _blas_users, _blas_limiter
    with _lock:
        if _blas_users == 0:
            if _controller is None:
                _controller = ThreadpoolController()
            _release_blas_control()
            _blas_limiter = _controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _lock:
            _blas_users -= 1
            if _blas_users == 0:
                _release_blas_control()
                _blas_limiter.restore_original_limits()
                _blas_limiter = None
                _release_blas_control()


def row_slices(n_rows, block_rows=BLOCK_ROWS):
    """Fixed-size row slices covering ``range(n_rows)``."""
    return [slice(start, min(start + block_rows, n_rows)) for start in range(0, n_rows, block_rows)]


def map_row_blocks(func, n_rows, block_rows=BLOCK_ROWS):
    """Call ``func(rows)`` for every fixed-size row slice, on Numba's number of threads.

    ``func`` writes its results into preallocated arrays; the first exception propagates
    (after the other threads have stopped taking blocks). Blocks are taken in order, so a
    block may wait for one taken before it (the pipelined causal attention does).

    Safe under concurrency: calls from any number of threads, with any per-thread Numba
    thread count, and calls nested inside ``func`` (say, a callable attention kernel that
    calls a transformer) share one pool and one BLAS limit and never wait for a pool task
    that has not started: the calling thread processes blocks itself, and when no block is
    left it cancels the helpers still queued behind busy workers.
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

        helpers = _submit(drain, n_threads - 1)
        try:
            drain()
        finally:
            # Every block has been taken by a running thread; a helper still queued (its
            # workers busy, e.g. with the call this one is nested in) has nothing to do. A
            # cancelled future stays "not done" for wait() until a worker dequeues it, so
            # only the helpers that did start are waited for.
            started = [future for future in helpers if not future.cancel()]
            wait(started)
        for future in started:
            future.result()
