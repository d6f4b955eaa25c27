"""favorkit on a Dask cluster: out-of-core features and training, one long causal sequence.

Each part starts its own ``LocalCluster`` of 2 worker processes (one thread each, on this
2-core machine), so that every worker's peak resident memory (``ru_maxrss``) belongs to that
part alone.

1. **Out-of-core features.** ``N = 2**26`` rows x 64 float64 (34 GB: more than this
   machine's 24 GiB) are generated lazily, chunk by chunk (``2**16`` rows), and mapped by
   ``OrthogonalRFF(256)`` (512 ``[cos, sin]`` columns) through its lazy dask ``transform``;
   the consumer sums the features per column, so nothing is kept. The transform's share is
   the wall time of this pass less that of the same pass without the transform (generation
   and sum only), measured in the same run; its throughput per core is compared with the
   in-memory transform's (one process, favorkit's own threads on both cores, data in memory).
   Target: >= 0.8x.
2. **Out-of-core training.** The same rows and features feed ``SGDClassifier.partial_fit``
   in a chain over the chunks (the model moves from task to task, the features stay where
   they are made, at most a few chunks in flight: the pattern of dask-ml's ``Incremental``).
   Reported: rows per second and the share of the time spent in ``partial_fit``.
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
import resource
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


def _chunk(n, i, dtype, out=None, scale=1.0):
    """Chunk ``i`` of ``n`` rows: tiles of the cached rows, each tile scaled and shifted by
    its own random numbers (two passes over the output, no temporary of its size)."""
    rng = np.random.default_rng(i + 1)
    out = np.empty((n, D), dtype=dtype) if out is None else out
    base = _base(dtype)
    for a in range(0, n, TILE):
        rows = slice(a, min(n, a + TILE))
        np.multiply(base[: rows.stop - a], dtype(scale * (1.0 + 0.1 * rng.random())), out=out[rows])
        out[rows] += rng.normal(scale=0.1 * scale, size=D).astype(dtype)
    return out


def _rows_block(block_id=None, n=ROW_CHUNK, dtype=np.float64):
    return _chunk(n, block_id[0], dtype)


def peak_rss(client):
    """Peak resident memory of each worker process, in GiB."""

    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB

    return sorted(client.run(rss).values())


def cluster(numba_threads, memory_limit="4GiB", spill=True):
    import dask
    from dask.distributed import Client, LocalCluster

    # NUMBA_NUM_THREADS must be in a worker's environment before it starts: the spawned
    # process imports this script, hence numba, before the nanny's `env` would apply.
    # The scan consumes one chunk after another while inputs are produced ahead: a worker
    # pauses at 80 % of its memory limit, which keeps the producers a few chunks ahead.
    environ = {"NUMBA_NUM_THREADS": str(numba_threads)}
    config = {"distributed.nanny.pre-spawn-environ": environ}
    if not spill:  # back-pressure by pausing only: no round trips through the disk
        config |= {"distributed.worker.memory.target": False,
                   "distributed.worker.memory.spill": False}  # fmt: skip
    with dask.config.set(config):
        lc = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            memory_limit=memory_limit,
        )  # fmt: skip
    client = Client(lc)
    threads = set(client.run(_numba_threads).values())
    assert threads == {numba_threads}, threads
    return lc, client


def _numba_threads():
    import numba

    return numba.get_num_threads()


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


def features_part(n_rows, est):
    lc, client = cluster(numba_threads=1)
    try:
        X = rows_array(n_rows)
        passes = {"generate + sum": X.sum(axis=0), "generate + transform + sum": None}
        passes["generate + transform + sum"] = est.transform(X).sum(axis=0)
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


def training_part(n_rows, est, window=4):
    import dask
    from sklearn.linear_model import SGDClassifier

    lc, client = cluster(numba_threads=1)
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


def _sequence_block(block_id=None):
    """Q, K and V of one chunk of positions, made together (one task, so the chunk's scan
    step finds all three on one worker): float32 rows of norm about 1."""
    i = block_id[1]
    out = np.empty((3, SEQ_CHUNK, D), dtype=np.float32)
    for w in range(3):
        _chunk(SEQ_CHUNK, 3 * i + w, np.float32, out=out[w], scale=0.125)
    return out


def causal_part(seq):
    import dask.array as da

    att = FavorAttention(M, causal=True, random_state=0).fit(np.zeros((1, D)))
    n_chunks = seq // SEQ_CHUNK
    stacked = da.map_blocks(
        _sequence_block, chunks=((3,), (SEQ_CHUNK,) * n_chunks, (D,)), dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )  # fmt: skip
    lazy = stacked[0], stacked[1], stacked[2]
    lc, client = cluster(numba_threads=2, memory_limit="2GiB", spill=False)
    try:
        job = att.attend(*lazy).sum(axis=0)
        job.compute()  # compile in the workers
        walls = []
        for _ in range(3):
            t = time.perf_counter()
            job.compute()
            walls.append(time.perf_counter() - t)
        rss = peak_rss(client)
    finally:
        client.close()
        lc.close()
    Q, K, V = np.concatenate([_sequence_block((0, i)) for i in range(n_chunks)], axis=1)
    att.attend(Q[:SEQ_CHUNK], K[:SEQ_CHUNK], V[:SEQ_CHUNK])
    memory = []
    for _ in range(3):
        t = time.perf_counter()
        att.attend(Q, K, V)
        memory.append(time.perf_counter() - t)
    return float(np.median(walls)), float(np.median(memory)), rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full sizes")
    args = parser.parse_args()
    n_rows = max(ROW_CHUNK * 4, int(ROWS * args.scale) // ROW_CHUNK * ROW_CHUNK)
    seq = max(SEQ_CHUNK * 4, int(SEQ * args.scale) // SEQ_CHUNK * SEQ_CHUNK)
    warnings.simplefilter("ignore")
    est = OrthogonalRFF(M, gamma=GAMMA, random_state=0)
    est.fit(np.zeros((1, D)))
    per_row = in_memory_transform_seconds_per_row(est)
    print(f"rows={n_rows} x {D} float64 ({n_rows * D * 8 / 1e9:.1f} GB), chunks of {ROW_CHUNK}")
    walls, rss = features_part(n_rows, est)
    transform_wall = walls["generate + transform + sum"] - walls["generate + sum"]
    ratio = (per_row * n_rows / N_CORES) / transform_wall  # throughput per core, cluster/memory
    print(f"  in memory: {1e9 * per_row:.0f} ns per row on {N_CORES} cores")
    for name, wall in walls.items():
        print(f"  {name}: {wall:.1f} s (median of 3)")
    print(f"  transform throughput per core, cluster / in memory: {ratio:.2f} (target >= 0.8)")
    print(f"  peak RSS per worker: {', '.join(f'{r:.2f}' for r in rss)} GiB (target < 2)")
    train_wall, accuracy, train_rss = training_part(n_rows, est)
    print(f"  training: {train_wall:.1f} s, {n_rows / train_wall / 1e6:.2f} M rows/s, "
          f"held-out accuracy {accuracy:.3f}, peak RSS {', '.join(f'{r:.2f}' for r in train_rss)}"
          " GiB")  # fmt: skip
    print(f"causal L={seq}, d={D}, m={M}, float32, chunks of {SEQ_CHUNK}")
    dask_wall, memory_wall, seq_rss = causal_part(seq)
    print(f"  in memory {memory_wall:.1f} s, on dask {dask_wall:.1f} s (medians of 3): "
          f"{dask_wall / memory_wall:.2f}x per token (target <= 1.3)")  # fmt: skip
    print(f"  peak RSS per worker: {', '.join(f'{r:.2f}' for r in seq_rss)} GiB (target < 2)")
    path = save(
        "dask",
        {
            "rows": n_rows, "row_chunk": ROW_CHUNK, "d": D, "m": M,
            "in_memory_seconds_per_row": per_row, "feature_passes": walls,
            "transform_ratio_per_core": ratio, "features_peak_rss_gib": rss,
            "training_seconds": train_wall, "training_accuracy": accuracy,
            "training_peak_rss_gib": train_rss,
            "sequence": seq, "sequence_chunk": SEQ_CHUNK, "causal_dask_seconds": dask_wall,
            "causal_memory_seconds": memory_wall, "causal_peak_rss_gib": seq_rss,
        },
    )  # fmt: skip
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
