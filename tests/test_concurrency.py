"""favorkit called from many threads at once, and from inside its own workers.

Concurrent calls, with any per-thread Numba thread count, and nested calls give results
bitwise equal to serial calls, leave BLAS's thread limit as they found it and never hang.
"""

import os
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest
from numpy.testing import assert_array_equal
from threadpoolctl import threadpool_info, threadpool_limits

from favorkit import FavorAttention, PositiveRandomFeatures
from favorkit._parallel import map_row_blocks
from favorkit.accuracy import predict_attention_error

TIMEOUT = 120  # seconds; a hang fails the test instead of the suite


def _blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def predict(Q, K, V):
    """A causal error prediction's numbers."""
    err = predict_attention_error(Q, K, V, 64, causal=True, random_state=0)
    return np.array([err.relative_error, err.standard_error, err.mse])


def _run_in_threads(targets):
    """Start one thread per callable, join them (with a timeout); re-raise any error."""
    errors = []

    def guarded(target):
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a call hung"
    if errors:
        raise errors[0]


def test_overlapping_calls_restore_the_blas_limit(restore_numba_threads):
    """A enters, B enters, A leaves, B leaves: limits set and restored per call undo each
    other (B ran on every BLAS thread once A left; with threadpoolctl < 3.7, BLAS stayed at
    one thread for the rest of the process)."""
    numba.set_num_threads(1)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def call_a():
        def func(rows):
            a_in.set()
            assert b_in.wait(TIMEOUT)

        map_row_blocks(func, 1)
        a_out.set()

    def call_b():
        def func(rows):
            assert a_in.wait(TIMEOUT)
            b_in.set()
            assert a_out.wait(TIMEOUT)
            seen.extend(_blas_threads())  # A has left; B still holds BLAS to one thread

        map_row_blocks(func, 1)

    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert before and min(before) == 2
        _run_in_threads([call_a, call_b])
        assert seen and set(seen) == {1}
        assert _blas_threads() == before


def test_a_call_from_another_thread_holds_blas_to_one_thread_too(restore_numba_threads):
    """threadpoolctl lets one controlling thread change an OpenBLAS limit and ignores the
    others: a call from a second thread ran its GEMMs on every BLAS thread, which round
    differently, so its output differed from the main thread's."""
    numba.set_num_threads(1)
    seen = {}

    def call():
        map_row_blocks(lambda rows: seen.setdefault("blas", _blas_threads()), 1)

    map_row_blocks(lambda rows: None, 1)  # the main thread sets and restores a limit first
    _run_in_threads([call])
    assert seen["blas"] and set(seen["blas"]) == {1}
    rng = np.random.default_rng(2)
    X = rng.normal(scale=0.3, size=(2048, 16)).astype(np.float32)
    prf = PositiveRandomFeatures(64, random_state=0).fit(X)
    want, got = prf.transform(X), []
    _run_in_threads([lambda: got.append(prf.transform(X))])
    assert_array_equal(got[0], want)


def mixed_thread_counts(max_threads):
    """Eight threads with per-thread Numba thread counts 1..max_threads run transforms,
    causal and bidirectional attention and error predictions (whose kernels work in
    per-thread scratch buffers) three times each, all at once; every result must equal the
    serial one bitwise and BLAS's limit must be what it was."""
    rng = np.random.default_rng(0)
    X = rng.normal(scale=0.3, size=(9000, 16)).astype(np.float32)
    Q, K, V = rng.normal(scale=0.5, size=(3, 2, 3000, 16))
    prf = PositiveRandomFeatures(64, random_state=0).fit(X)
    att = FavorAttention(64, random_state=0).fit(Q)
    want = {
        "features": prf.transform(X),
        "bidirectional": att.attend(Q, K, V),
        "causal": att.attend(Q, K, V, causal=True),
        "prediction": predict(Q, K, V),
    }
    before = _blas_threads()
    got = []

    def worker(n_threads, job):
        def run():
            numba.set_num_threads(n_threads)
            for _ in range(3):
                if job == "features":
                    out = prf.transform(X)
                elif job == "prediction":
                    out = predict(Q, K, V)
                else:
                    out = att.attend(Q, K, V, causal=job == "causal")
                got.append((job, out))

        return run

    jobs = ["features", "bidirectional", "causal", "prediction"] * 2
    _run_in_threads([worker(1 + i % max_threads, job) for i, job in enumerate(jobs)])
    assert len(got) == 3 * len(jobs)
    for job, out in got:
        assert_array_equal(out, want[job])
    assert _blas_threads() == before


def test_concurrent_calls_with_different_numba_thread_counts_match_serial():
    """The shared pool was shut down under another caller: 'RuntimeError: cannot schedule
    new futures after shutdown'."""
    mixed_thread_counts(numba.config.NUMBA_NUM_THREADS)


def test_four_numba_thread_counts_at_once():
    """Counts 1 to 4 need NUMBA_NUM_THREADS >= 4, which is fixed at import: a subprocess."""
    code = "from tests.test_concurrency import mixed_thread_counts; mixed_thread_counts(4)"
    env = {**os.environ, "NUMBA_NUM_THREADS": "4"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_a_call_nested_in_a_worker_does_not_hang(restore_numba_threads):
    """A callable attention kernel that runs a multi-block transform inside a favorkit
    worker: the inner helper tasks queue behind the busy workers and must not be waited for."""
    numba.set_num_threads(2)
    rng = np.random.default_rng(1)
    inner = PositiveRandomFeatures(8, random_state=0).fit(rng.normal(size=(10, 8)))
    big = rng.normal(scale=0.3, size=(5000, 8))  # 3 row blocks
    want = inner.transform(big)

    def kernel(Z):
        assert np.array_equal(inner.transform(big), want)
        return np.maximum(Z, 0)

    Q, K, V = rng.normal(size=(3, 4, 300, 8))
    att = FavorAttention(16, activation=kernel, random_state=0).fit(Q)
    reference = FavorAttention(16, activation="relu", random_state=0).fit(Q)
    result = []
    _run_in_threads([lambda: result.append(att.attend(Q, K, V))])
    assert_array_equal(result[0], reference.attend(Q, K, V))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_nested_map_row_blocks_completes_every_block(n_threads, restore_numba_threads):
    numba.set_num_threads(n_threads)
    seen = np.zeros((6, 50), dtype=int)
    lock = threading.Lock()

    def outer(rows):
        def inner(inner_rows):
            with lock:
                seen[rows.start, inner_rows] += 1

        map_row_blocks(inner, 50, block_rows=3)

    _run_in_threads([lambda: map_row_blocks(outer, 6, block_rows=1)])
    assert_array_equal(seen, 1)
