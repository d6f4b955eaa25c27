"""favorkit._parallel: every block once, in order, errors propagate, BLAS held to one thread;
favorkit._scratch: buffers reused per thread, never shared."""

import threading

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from favorkit._parallel import map_row_blocks, row_slices
from favorkit._scratch import MAX_BYTES, scratch

THREADS = [1, 2]


def test_row_slices_cover_the_rows_in_fixed_blocks():
    slices = row_slices(10, 4)
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 10)]
    assert row_slices(0, 4) == []


@pytest.mark.parametrize("n_threads", THREADS)
def test_every_block_runs_exactly_once(n_threads, restore_numba_threads):
    numba.set_num_threads(n_threads)
    seen = np.zeros(1000, dtype=int)
    lock = threading.Lock()

    def func(rows):
        with lock:
            seen[rows] += 1

    map_row_blocks(func, 1000, block_rows=7)
    np.testing.assert_array_equal(seen, 1)


@pytest.mark.parametrize("n_threads", THREADS)
def test_a_block_may_wait_for_an_earlier_one(n_threads, restore_numba_threads):
    # The pipelined causal attention relies on blocks being taken in order: block i waits
    # for block i - 1, which some thread has already taken, so this cannot deadlock.
    numba.set_num_threads(n_threads)
    done = [threading.Event() for _ in range(50)]
    order = []

    def func(rows):
        i = rows.start
        if i > 0:
            assert done[i - 1].wait(timeout=10)
        order.append(i)
        done[i].set()

    map_row_blocks(func, 50, block_rows=1)
    assert order == list(range(50))


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("failing_block", [0, 3, 9])
def test_an_exception_propagates_and_the_pool_stays_usable(
    n_threads, failing_block, restore_numba_threads
):
    numba.set_num_threads(n_threads)

    def func(rows):
        if rows.start == failing_block:
            raise ValueError(f"block {rows.start} failed")

    with pytest.raises(ValueError, match=f"block {failing_block} failed"):
        map_row_blocks(func, 10, block_rows=1)
    seen = []
    map_row_blocks(lambda rows: seen.append(rows.start), 10, block_rows=1)
    assert sorted(seen) == list(range(10))


def test_concurrent_calls_from_two_user_threads(restore_numba_threads):
    numba.set_num_threads(2)
    results = {}

    def user(k):
        out = np.zeros(500)

        def func(rows):
            out[rows] = np.arange(rows.start, rows.stop) * k

        map_row_blocks(func, 500, block_rows=3)
        results[k] = out

    threads = [threading.Thread(target=user, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for k in (1, 2):
        np.testing.assert_array_equal(results[k], np.arange(500) * k)


def test_blas_is_held_to_one_thread_inside_blocks(restore_numba_threads):
    numba.set_num_threads(2)
    seen = []

    def func(rows):
        seen.extend(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")

    map_row_blocks(func, 4, block_rows=1)
    assert seen and set(seen) == {1}


def test_scratch_buffers_are_reused_per_thread_and_never_shared():
    """A closed block's buffer serves the next block of the thread; a nested block, a
    different dtype view too large for it, and another thread get their own memory."""
    with scratch() as empty:
        first = empty("test", (4, 5))
        with scratch() as nested:
            inner = nested("test", (4, 5))
        big = empty("test big", MAX_BYTES // 8 + 1)
    assert not np.shares_memory(first, inner)
    with scratch() as empty:
        again = empty("test", (2, 3), np.float32)
        assert np.shares_memory(first, again)  # mapped once, reused
        assert again.shape == (2, 3) and again.dtype == np.float32
        with scratch() as empty_too:
            assert not np.shares_memory(first, empty_too("test", 20))  # taken: fresh
    with scratch() as empty:
        assert not np.shares_memory(big, empty("test big", 8))  # too large: not kept
    other = []

    def worker():
        with scratch() as empty:
            other.append(empty("test", (4, 5)))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert not np.shares_memory(first, other[0])
