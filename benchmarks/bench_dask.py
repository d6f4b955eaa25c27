"""favorkit on a Dask cluster: out-of-core features and training, one long causal sequence.

Each part starts its own ``LocalCluster`` of worker processes (one dask thread each, on
this 2-core machine: two single-threaded workers, or for the causal chain one worker with
both cores), so that every worker's peak resident memory (``VmHWM``) belongs to that part
alone.

1. **Out-of-core features.** ``N = 2**26`` rows x 64 float64 (34 GB: more than this
   machine's 24 GiB) are generated lazily, chunk by chunk (``2**16`` rows), and mapped by
   ``OrthogonalRFF(256)`` (512 ``[cos, sin]`` columns, 256 GB in all) through its lazy dask
   ``transform``; the consumer keeps one row per chunk, so nothing accumulates. The
   transform's share is the wall time of this pass less that of the same pass without the
   transform (generation only), interleaved in the same run; its throughput per core is
   compared with the in-memory transform's (one process, favorkit's threads on both cores,
   2**17 rows in memory). Target: >= 0.8x, with peak RSS per worker < 2 GiB.
2. **Out-of-core training.** The same rows and their features feed
   ``SGDClassifier.partial_fit`` in a chain over the chunks (the model moves from task to
   task, the features stay where they are made, at most a few chunks in flight: the
   pattern of dask-ml's ``Incremental``), on labels from a random hyperplane. Reported:
   rows per second, held-out accuracy, peak RSS per worker.
3. **One causal sequence.** ``L = 2**23`` positions (d = 64, m = 256, float32) in chunks of
   ``2**20``: favorkit's chained scan carries each chunk's state to the next; against the
   in-memory ``attend`` over the whole sequence (8 GB of arrays in one process), per token.
   Target: <= 1.3x, with peak RSS per worker < 2 GiB.

Data are generated per chunk from one cached block of 2**14 random rows (drawn once per
process), tiled, each tile scaled and shifted by its own random numbers: every chunk
differs, generation costs two passes over the chunk, and nothing larger than a chunk ever
exists.

Run (an unhampered OpenBLAS, as the other benchmarks; ``--scale 0.125`` for a quick look):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_dask.py
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings

import numpy as np
from _common import save

from favorkit import FavorAttention, OrthogonalRFF

D, M = 64, 256
ROWS, ROW_CHUNK = 2**26, 2**16
SEQ, SEQ_CHUNK = 2**23, 2**20
TILE = 2**14  # rows of the cached random block the data are made from
GAMMA = 1.0 / (2 * D)  # the Gaussian kernel on N(0, I) rows at sklearn's gamma="scale"/2
N_CORES = 2


@functools.cache
def _base(dtype):
    return np.random.default_rng(0).standard_normal((TILE, D)).astype(dtype)


def _chunk(n, i, dtype, scale=1.0):
    """Chunk ``i`` of ``n`` rows: tiles of the cached rows, each tile scaled and shifted by
    its own random numbers (two passes over the output, no temporary of its size)."""
    rng = np.random.default_rng(i + 1)
    out = np.empty((n, D), dtype=dtype)
    base = _base(dtype)
    for a in range(0, n, TILE):
        rows = slice(a, min(n, a + TILE))
        np.multiply(base[: rows.stop - a], dtype(scale * (1.0 + 0.1 * rng.random())), out=out[rows])
        out[rows] += rng.normal(scale=0.1 * scale, size=D).astype(dtype)
    return out


def _rows_block(block_id=None, n=ROW_CHUNK, dtype=np.float64):
    return _chunk(n, block_id[0], dtype)


def _peak_rss():
    """This process's peak resident memory in GiB: VmHWM, which starts afresh at exec (the
    ``ru_maxrss`` of a spawned process also counts its parent's memory when it forked)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # KiB -> GiB
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_rss(client):
    """Peak resident memory of each worker process, in GiB."""
    return sorted(client.run(_peak_rss).values())


# Dask starts its workers with MALLOC_TRIM_THRESHOLD_=65536, to hand freed memory back to
# the system. Setting it turns off glibc's adaptive mmap threshold, so every temporary above
# 128 KiB is a fresh mmap whose pages fault in on first touch: the attention engine's block
# temporaries (about 1 MiB each) then run it 2x slower. ``dask_malloc=True`` (the command
# line's ``--dask-malloc``) keeps dask's setting.
def cluster(threads, dask_malloc, n_workers=2):
    """Worker processes of one dask thread each (4 GiB each), which runs ``threads`` Numba
    and BLAS threads."""
    import dask
    from dask.distributed import Client, LocalCluster

    # A spawned worker imports this script, hence numba, before its nanny's `env` applies,
    # so the thread counts must already be in the environment it inherits. Dask's
    # `pre-spawn-environ` config would do that once, but it yields to os.environ, which the
    # first nanny has set: set os.environ itself, for the workers of this cluster only.
    config = {}
    names = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    environ = dict.fromkeys(names, str(threads))
    if not dask_malloc:
        config["distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"] = None
        environ["MALLOC_TRIM_THRESHOLD_"] = None
    saved = {name: os.environ.get(name) for name in environ}
    _set_environ(environ)
    try:
        with dask.config.set(config):
            lc = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                memory_limit="4GiB",
            )  # fmt: skip
    finally:
        _set_environ(saved)
    client = Client(lc)
    counts = set(client.run(_threads).values())
    assert counts == {(threads, threads)}, f"(numba, BLAS) threads per worker: {counts}"
    trim = set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values())
    assert trim == ({"65536"} if dask_malloc else {None}), trim
    return lc, client


def _set_environ(values):
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _threads():
    import numba
    from threadpoolctl import threadpool_info

    return numba.get_num_threads(), max(pool["num_threads"] for pool in threadpool_info())


def rows_array(n_rows):
    import dask.array as da

    return da.map_blocks(
        _rows_block, chunks=((ROW_CHUNK,) * (n_rows // ROW_CHUNK), (D,)), dtype=np.float64,
        meta=np.empty((0, D)),
    )  # fmt: skip


def in_memory_transform_seconds_per_row(est, repeats=7):
    X = _chunk(2**17, 0, np.float64)
    est.transform(X)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        est.transform(X)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / X.shape[0]


def _first_row(block):
    return block[:1].copy()  # a copy: a view would keep the whole chunk alive


def first_rows(A):
    """One row of each chunk: a consumer that costs nothing, so that a pass's time is that
    of making the chunks."""
    return A.map_blocks(_first_row, chunks=((1,) * A.numblocks[0], (A.shape[1],)))


def features_part(n_rows, est, dask_malloc):
    lc, client = cluster(threads=1, dask_malloc=dask_malloc)
    try:
        X = rows_array(n_rows)
        passes = {"generate": first_rows(X), "generate + transform": first_rows(est.transform(X))}
        walls = {name: [] for name in passes}
        for _ in range(3):  # interleaved, medians
            for name, job in passes.items():
                t = time.perf_counter()
                job.compute()
                walls[name].append(time.perf_counter() - t)
        walls = {k: float(np.median(v)) for k, v in walls.items()}
        return walls, peak_rss(client)
    finally:
        client.close()
        lc.close()


def _partial_fit(model, F, y):
    model.partial_fit(F, y, classes=np.array([0, 1]))
    return model


def _labels(block, w):
    return (block @ w > 0).astype(np.int8)


def training_part(n_rows, est, dask_malloc, window=4):
    import dask
    from sklearn.linear_model import SGDClassifier

    lc, client = cluster(threads=1, dask_malloc=dask_malloc)
    try:
        X = rows_array(n_rows)
        w = np.random.default_rng(1).standard_normal(D)
        y = X.map_blocks(_labels, w, drop_axis=1, dtype=np.int8)
        F = est.transform(X)
        f_blocks, y_blocks = F.to_delayed().ravel(), y.to_delayed().ravel()
        model = client.scatter(SGDClassifier(loss="hinge", random_state=0))
        fit = dask.delayed(_partial_fit, pure=False)
        pending = []
        t = time.perf_counter()
        for f_block, y_block in zip(f_blocks, y_blocks, strict=True):
            model = client.compute(fit(model, f_block, y_block))
            pending.append(model)
            if len(pending) > window:  # at most `window` chunks in flight
                pending.pop(0).result()
        model = model.result()
        wall = time.perf_counter() - t
        Xt = _chunk(ROW_CHUNK, 10**6, np.float64)
        accuracy = float(model.score(est.transform(Xt), _labels(Xt, w)))
        return wall, accuracy, peak_rss(client)
    finally:
        client.close()
        lc.close()


def _sequence_block(which, block_id=None):
    """Chunk ``block_id[0]`` of the sequence's queries, keys or values (``which`` = 0, 1,
    2): float32 rows of norm about 1."""
    return _chunk(SEQ_CHUNK, 3 * block_id[0] + which, np.float32, scale=0.125)


def causal_part(seq, dask_malloc):
    import dask
    import dask.array as da

    att = FavorAttention(M, causal=True, random_state=0).fit(np.zeros((1, D)))
    n_chunks = seq // SEQ_CHUNK
    chunks = ((SEQ_CHUNK,) * n_chunks, (D,))
    meta = np.empty((0, 0), np.float32)
    lazy = [
        da.map_blocks(_sequence_block, which, chunks=chunks, dtype=np.float32, meta=meta)
        for which in range(3)
    ]
    lc, client = cluster(threads=2, dask_malloc=dask_malloc, n_workers=1)
    try:
        # Consumed chunk by chunk (one small result per chunk): one reduction over the whole
        # output would let dask keep every output chunk until the chain ends.
        out = att.attend(*lazy)
        job = [out.blocks[i].sum(axis=0) for i in range(n_chunks)]
        dask.compute(*job)  # compile in the workers
        walls = []
        for _ in range(3):
            t = time.perf_counter()
            dask.compute(*job)
            walls.append(time.perf_counter() - t)
        rss = peak_rss(client)
    finally:
        client.close()
        lc.close()
    Q, K, V = (
        np.concatenate([_sequence_block(which, (i,)) for i in range(n_chunks)])
        for which in range(3)
    )
    att.attend(Q[:SEQ_CHUNK], K[:SEQ_CHUNK], V[:SEQ_CHUNK])
    memory = []
    for _ in range(3):
        t = time.perf_counter()
        att.attend(Q, K, V)
        memory.append(time.perf_counter() - t)
    return float(np.median(walls)), float(np.median(memory)), rss


def _gib(values):
    return ", ".join(f"{v:.2f}" for v in values) + " GiB"


def run_features(n_rows, est, dask_malloc, record):
    print(f"rows={n_rows} x {D} float64 ({n_rows * D * 8 / 1e9:.1f} GB), chunks of {ROW_CHUNK}")
    before = in_memory_transform_seconds_per_row(est)
    walls, rss = features_part(n_rows, est, dask_malloc)
    # The faster of the in-memory medians before and after: the harder comparison.
    per_row = min(before, in_memory_transform_seconds_per_row(est))
    transform_wall = walls["generate + transform"] - walls["generate"]
    # Both run on the machine's N_CORES cores (one worker process per core, or favorkit's
    # threads in one process), so the ratio of throughputs per core is that of wall times.
    ratio = per_row * n_rows / transform_wall
    print(f"  in memory: {1e9 * per_row:.0f} ns per row on {N_CORES} cores")
    for name, wall in walls.items():
        print(f"  {name}: {wall:.1f} s (median of 3)")
    print(f"  transform throughput per core, cluster / in memory: {ratio:.2f} (target >= 0.8)")
    print(f"  peak RSS per worker: {_gib(rss)} (target < 2)")
    record.update(
        rows=n_rows, row_chunk=ROW_CHUNK, in_memory_seconds_per_row=per_row,
        feature_passes=walls, transform_ratio_per_core=ratio, features_peak_rss_gib=rss,
    )  # fmt: skip


def run_training(n_rows, est, dask_malloc, record):
    wall, accuracy, rss = training_part(n_rows, est, dask_malloc)
    print(f"training on {n_rows} rows: {wall:.1f} s, {n_rows / wall / 1e6:.2f} M rows/s, "
          f"held-out accuracy {accuracy:.3f}, peak RSS per worker {_gib(rss)}")  # fmt: skip
    record.update(
        rows=n_rows, training_seconds=wall, training_accuracy=accuracy,
        training_peak_rss_gib=rss,
    )  # fmt: skip


def run_causal(seq, dask_malloc, record):
    print(f"causal L={seq}, d={D}, m={M}, float32, chunks of {SEQ_CHUNK}")
    dask_wall, memory_wall, rss = causal_part(seq, dask_malloc)
    print(f"  in memory {memory_wall:.1f} s, on dask {dask_wall:.1f} s (medians of 3): "
          f"{dask_wall / memory_wall:.2f}x per token (target <= 1.3)")  # fmt: skip
    print(f"  peak RSS per worker: {_gib(rss)} (target < 2)")
    record.update(
        sequence=seq, sequence_chunk=SEQ_CHUNK, causal_dask_seconds=dask_wall,
        causal_memory_seconds=memory_wall, causal_peak_rss_gib=rss,
    )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full sizes")
    parts = ("features", "training", "causal")
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts, help="parts to run")
    parser.add_argument(
        "--dask-malloc", action="store_true",
        help="keep dask's MALLOC_TRIM_THRESHOLD_=65536 in the workers (2x slower attention)",
    )  # fmt: skip
    args = parser.parse_args()
    n_rows = max(ROW_CHUNK * 4, int(ROWS * args.scale) // ROW_CHUNK * ROW_CHUNK)
    seq = max(SEQ_CHUNK * 4, int(SEQ * args.scale) // SEQ_CHUNK * SEQ_CHUNK)
    warnings.simplefilter("ignore")
    est = OrthogonalRFF(M, gamma=GAMMA, random_state=0).fit(np.zeros((1, D)))
    record = {"d": D, "m": M, "scale": args.scale, "dask_malloc": args.dask_malloc}
    if "features" in args.parts:
        run_features(n_rows, est, args.dask_malloc, record)
    if "training" in args.parts:
        run_training(n_rows, est, args.dask_malloc, record)
    if "causal" in args.parts:
        run_causal(seq, args.dask_malloc, record)
    print(f"written to {save('dask', record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
