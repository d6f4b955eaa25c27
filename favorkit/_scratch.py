"""Scratch arrays reused across calls, one set per thread.

Why: a fresh array of a few MiB costs a page fault for every 4 KiB page it touches first.
glibc hands freed blocks of that size back to the system (its trim and mmap thresholds),
so a call that allocates them anew faults on all of them every time: the error prediction
at L = 16 384, d = 64 (float32) took ~1 760 faults a call, and its key rows 5-8 ms instead
of the 1 ms they take on memory already mapped. Buffers kept per thread (the worker threads
of :mod:`favorkit._parallel` live as long as the process) are mapped once.

Safe under concurrency and nesting: each thread has its own buffers, and a name already
taken by an open :func:`scratch` block of the same thread (a nested call) gets a fresh
array instead. Arrays from a block must not be used after it closes.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

# Larger arrays are allocated fresh (their faults are then a smaller share of the work on
# them, and memory kept per thread stays bounded: a few names at most this size each).
MAX_BYTES = 64 << 20

_local = threading.local()


@contextmanager
def scratch():
    """Yield ``empty(name, shape, dtype=float64)``: an uninitialized array backed by this
    thread's buffer ``name`` (grown as needed), or a fresh one where ``name`` is taken by
    an open block of this thread or the array is larger than :data:`MAX_BYTES`.

    Examples
    --------
    >>> from favorkit._scratch import scratch
    >>> with scratch() as empty:
    ...     a = empty("example", (2, 3))
    ...     a[:] = 1.0
    ...     float(a.sum())
    6.0
    """
    state = _local.__dict__
    buffers = state.setdefault("buffers", {})
    held = state.setdefault("held", set())
    taken = []

    def empty(name, shape, dtype=np.float64):
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64))
        nbytes = size * dtype.itemsize
        if name in held or nbytes > MAX_BYTES:
            return np.empty(shape, dtype)
        buffer = buffers.get(name)
        if buffer is None or buffer.size < nbytes:
            # float64 storage: 8-byte aligned for any dtype viewed on it
            buffer = buffers[name] = np.empty(-(-nbytes // 8), np.float64).view(np.uint8)
        held.add(name)
        taken.append(name)
        return buffer[:nbytes].view(dtype).reshape(shape)

    try:
        yield empty
    finally:
        held.difference_update(taken)
