"""The block engine of FAVOR attention: features per block, states per sequence, threads.

How stabilization works, and why it cannot leak. Exponential features overflow unless a
maximum is subtracted somewhere, and subtracting one that depends on future keys leaks
them into earlier outputs (the official code does, through its epsilon).

* Exponential maps (FAVOR+, hyperbolic, FAVOR++, SADERF) work in log space with one
  reference per feature column: a key's feature ``i`` is ``exp(z_ji - c_i)`` with ``c_i``
  the largest log-feature of column ``i`` over the keys seen, and a query's weights are
  ``exp(z_ti + c_i - M_t)`` with ``M_t`` the row's largest ``z_ti + c_i``, a per-row
  constant that cancels in its normalization. The largest term of every row is exactly 1,
  so its normalizer is >= 1: nothing underflows, however large and opposed the queries
  and keys, and the output is a convex combination of the visible value rows. Values are
  scaled per column by powers of two (exact) so that sums cannot overflow. In causal mode
  the references depend on earlier keys only (:mod:`favorkit._kernels.attention`).
* Signed features (the trigonometric map, activations) keep a bounded part and a float64
  log-constant per key, summed relative to a running reference; a row whose normalizer is
  not positive, or whose output is not finite, is set to 0 and counted.

No epsilon is ever added after a stabilizer, so no key can change another key's weight. A
padded key adds nothing to the numerator or the denominator. In the causal kernels a row's
references and its code path depend on earlier positions only, so a future key changes no
earlier output by even one ulp.

FAVOR++ and SADERF fit ``A`` (and ``Ψ``) from statistics of the queries and keys.
Bidirectional attention fits them per call, per sequence and head (as the official
``expplus``). Causal attention cannot: ``A`` over the whole sequence depends on future keys,
so every earlier output would change with them; it takes parameters fitted in advance.

The sizes the engine works in are a :class:`Tuning`, read once per call (``tuned()``
changes them for a block of code, e.g. to test block boundaries at small L).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import threading

import numpy as np

from favorkit._kernels.attention import (
    causal_block,
    column_moments,
    key_column_max,
    log_causal_block,
    log_causal_stage,
    merge_log_states,
    merge_normalize,
    normalize_rows,
    scaled_values,
    shift_keys,
    shift_queries,
    value_exponents,
)
from favorkit._kernels.fastexp import exp_inplace
from favorkit._kernels.feature_maps import plus_minus_shift_rows
from favorkit._parallel import map_row_blocks
from favorkit.attention._inputs import check_finite
from favorkit.maps import MapParams, Moments

__all__ = [
    "CAUSAL_GERF",
    "PositiveFeatures",
    "SignedFeatures",
    "Tuning",
    "causal_chunk",
    "current_tuning",
    "favor_positive",
    "favor_signed",
    "gerf_parameters",
    "key_states",
    "mask_keys",
    "merge_key_states",
    "positive_attention_rows",
    "read_queries",
    "sequence_moments",
    "set_gerf_parameters",
    "tuned",
]


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The sizes FAVOR attention works in (measured on the 2-core development machine).

    Attributes
    ----------
    block_rows : int
        Rows per bidirectional task (one block of one sequence, on one thread with one BLAS
        thread). At L = 16 384 (d = 64, m = 256, best of 15): 512: 28 ms, 1024: 24, 2048:
        22, 4096: 24.
    causal_block_rows : int
        Rows per causal task: 512: 30 ms, 1024: 27.5, 2048: 29, 4096: 32 (smaller blocks
        fill the pipeline sooner).
    chunk : int
        Causal chunk length C; the masked dense block is C x C. One 4096-row block, one
        thread: 16: 5.5 ms, 24: 5.6, 32: 5.1, 48: 5.9, 64: 7.6 (smaller chunks waste GEMM
        efficiency, larger ones add O(C) intra-chunk flops per row).
    key_subblock : int
        Rows of a bidirectional key block summed in the GEMM dtype before adding into the
        float64 state (keeps float32 accumulation error at ~sqrt(1024) ulp).
    exact_block_elems : int
        Logit entries per block of the exact reference (16 MiB of float64).
    signed_gap : (float, float)
        Signed features' causal kernel, float32 and float64: the largest gap between a
        row's causal reference and the one carried from earlier chunks on the fast path
        (key weights up to e^gap: float32 sums of e^20 x m x |v| stay far from overflow;
        larger gaps take the exact per-row path).
    log_gap : (float, float)
        Exponential maps' causal kernel: keys at most e^gap above the carried per-column
        references stay on the fast path.
    value_bits : (int, int)
        Values are scaled per column to at most 2^bits. Sums of 2^40 rows of such terms
        over 2^12 feature columns stay below the dtype's largest number: float32
        2^(40 + 29 + 48 + 12) < 2^128 (e^20 < 2^29), float64 2^(40 + 289 + 600 + 12) <
        2^1024 (e^200 < 2^289).
    """

    block_rows: int = 2048
    causal_block_rows: int = 1024
    chunk: int = 32
    key_subblock: int = 1024
    exact_block_elems: int = 1 << 21
    signed_gap: tuple = (20.0, 300.0)
    log_gap: tuple = (20.0, 200.0)
    value_bits: tuple = (48, 600)

    @staticmethod
    def for_dtype(pair, dtype):
        """The float32 or float64 entry of a (float32, float64) pair."""
        return pair[0] if np.dtype(dtype) == np.float32 else pair[1]


_TUNING = contextvars.ContextVar("favorkit_attention_tuning", default=Tuning())  # noqa: B039 (frozen)


def current_tuning():
    """The :class:`Tuning` in effect (read once per call, in the calling thread)."""
    return _TUNING.get()


@contextlib.contextmanager
def tuned(**changes):
    """Change the engine's :class:`Tuning` inside a ``with`` block (of this thread).

    Examples
    --------
    >>> from favorkit.attention._engine import current_tuning, tuned
    >>> with tuned(block_rows=48, chunk=16):
    ...     current_tuning().block_rows
    48
    >>> current_tuning().block_rows
    2048
    """
    token = _TUNING.set(dataclasses.replace(_TUNING.get(), **changes))
    try:
        yield
    finally:
        _TUNING.reset(token)


class PositiveFeatures:
    """An exponential map's log-features for attention: projections per side and sequence,
    and the keys' row constants (the engine turns them into bounded features itself).

    Every feature is ``exp(z_i(x) + ρ(x))``: a per-column log-feature ``z`` (a projection,
    in the data's dtype) plus a per-row constant ``ρ`` (float64). Queries drop their row
    constant (it cancels in a row's normalization); keys keep it, because it weighs one key
    against another. The constants the same for every query and key of a sequence
    (``(d/4) log(1 - 4A) - ½ log m``) cancel and are dropped.
    """

    def __init__(self, fmap, projection, scale, dtype):
        self.map = fmap
        self.scale = scale
        self.dtype = dtype
        self.projection = projection
        self.width = fmap.width(projection.shape[0])
        self.tables = None
        if not fmap.fitted:
            self.set_params([MapParams.identity(projection.shape[1])])

    def set_params(self, params):
        """Tables for each sequence from its :class:`~favorkit.maps.MapParams` (sequences
        with equal parameters share one; a single entry serves every sequence).

        A fitted map folds ``A|ω|²`` into the GEMM as one extra input column of ones.
        """
        cache = {}
        self.tables = []
        for p in params:
            key = (float(p.a), p.psi.tobytes())
            if key not in cache:
                cache[key] = tuple(self._table(p, side) for side in ("query", "key"))
            self.tables.append(cache[key])

    def _table(self, params, side):
        """``(WT, features, column)``: the projection (with ``A|ω|²`` folded in as one extra
        row against an input column of ones, for a one-sided fitted map), the map's
        :class:`~favorkit.maps.LogFeatures`, and the column term left to add (antithetic)."""
        features = self.map.log_features(self.projection, params, self.scale, side)
        if features.column is None:
            return np.ascontiguousarray(features.projection.T, dtype=self.dtype), features, None
        m, d = features.projection.shape
        fold = not features.antithetic
        with np.errstate(over="ignore"):
            WT = np.empty((d + fold, m), dtype=self.dtype)
            WT[:d] = features.projection.T
            column = features.column.astype(self.dtype)
            if fold:
                WT[d] = column
        if not (np.isfinite(WT).all() and np.isfinite(column).all()):
            b = math.sqrt(1.0 - 4.0 * params.a)
            raise ValueError(
                f"estimator={self.map.name!r}: the fitted parameters A = {params.a:.3g}, "
                f"B = sqrt(1 - 4A) = {b:.3g} make the projection overflow "
                f"{self.dtype.name} for these inputs; scale the queries and keys "
                "down, pass float64 data, or use estimator='positive'."
            )
        return WT, features, None if fold else column

    def _project(self, X, seq, side):
        WT, features, column = self.tables[seq if len(self.tables) > 1 else 0][side]
        with np.errstate(over="ignore", invalid="ignore"):  # checked by the engine
            if WT.shape[0] > X.shape[1]:  # A|ω|² folded in: one input column of ones
                n, d = X.shape
                Xa = np.empty((n, d + 1), dtype=self.dtype)
                Xa[:, :d] = X
                Xa[:, d] = 1.0
                return Xa @ WT, features
            Z = X @ WT
        if features.antithetic:
            # [ω·x̃, -ω·x̃]: the pair exp(±ω·x̃ - |x̃|²/2) / sqrt(2m) (Lemma 2).
            F = np.empty((Z.shape[0], 2 * Z.shape[1]), dtype=self.dtype)
            plus_minus_shift_rows(Z, np.zeros(Z.shape[0], dtype=self.dtype), F)
            if column is not None:  # the column term of both halves
                m = Z.shape[1]
                F[:, :m] += column
                F[:, m:] += column
            Z = F
        return Z, features

    def queries(self, X, seq=0):
        """Log-feature projections of query rows X, shape (n, width), in the map's dtype."""
        return self._project(X, seq, 0)[0]

    def keys(self, X, seq=0):
        """``(z, ρ)`` for key rows X: projections and float64 row constants ``-|x̃|²/2``."""
        Z, features = self._project(X, seq, 1)
        if features.norm_scale is not None:
            sq = features.norm_scale * np.einsum("ij,ij->i", X, X, dtype=np.float64)
        else:
            sq = np.einsum("ij,ij,j->i", X, X, features.norm_weights, dtype=np.float64)
        if not np.isfinite(sq).all():
            raise ValueError(
                "A key's squared norm overflows float64; scale the keys down (or pass a "
                "smaller scale)."
            )
        return Z, -0.5 * sq


class SignedFeatures:
    """Features of the trigonometric map and of the activations, as ``(bounded features,
    key log-constants)`` (the stabilization of :func:`favor_signed`)."""

    def __init__(self, fmap, projection, scale, epsilon, dtype):
        self.map = fmap
        self.scale = scale
        self.eps = epsilon
        self.dtype = dtype
        self.root = math.sqrt(scale)
        self.WT = (
            None
            if projection is None
            else np.ascontiguousarray((projection * self.root).T, dtype=dtype)
        )

    def __call__(self, X, *, keys, seq=0):
        """Features of rows X: ``(F, s)``, ``s`` float64 for keys (None for queries)."""
        dtype = self.dtype
        with np.errstate(over="ignore", invalid="ignore"):  # checked below, with the fix
            Z = X @ self.WT if self.WT is not None else X * dtype.type(self.root)
        n = X.shape[0]
        if not self.map.attention_estimator:
            return self._activation(Z), (np.zeros(n) if keys else None)
        # [cos(ω·x̃), sin(ω·x̃)] exp(+|x̃|²/2) / sqrt(m) (the trigonometric map, Sec. 2.3);
        # signed features.
        if not np.isfinite(Z).all():
            raise overflow_error(dtype)
        F = np.empty((n, 2 * Z.shape[1]), dtype=dtype)
        self.map.features(Z, np.zeros(n), F)
        if not keys:
            return F, None
        s = 0.5 * self.scale * np.einsum("ij,ij->i", X, X, dtype=np.float64)
        if not np.isfinite(s).all():
            raise ValueError(
                "A key's squared norm overflows float64; scale the keys down (or pass a "
                "smaller scale)."
            )
        return F, s

    def _activation(self, Z):
        with np.errstate(over="ignore"):
            F = np.asarray(self.map(Z))
            if F.shape != Z.shape:
                raise ValueError(
                    f"The activation callable must map an array of shape {Z.shape} to the "
                    f"same shape, got {F.shape}."
                )
            F = F.astype(self.dtype, copy=False)
        if self.eps and self.map.adds_epsilon:
            F = F + self.dtype.type(self.eps)
        if not np.isfinite(F).all():
            raise ValueError(
                f"activation={self.map.name!r} gave non-finite features ({self.dtype.name} "
                "overflow or NaN); scale the inputs down (or pass a smaller scale)."
            )
        return np.ascontiguousarray(F)


def overflow_error(dtype):
    return ValueError(
        f"The projections W·x overflow {np.dtype(dtype).name}; scale the inputs down "
        "(or pass a smaller scale)."
    )


def sequence_moments(Qf, Kf, mask):
    """Per-sequence column moments of the queries and the *unpadded* keys.

    Returns ``(sum_q, sq_q, n_q, sum_k, sq_k, n_k)`` with arrays of shape (N, d) and (N,).
    One O(L d) Numba pass per sequence and side, in the calling thread: 0.15 ms for
    16 384 x 64 float32 rows, less than waking the thread pool for it (a pooled version
    measured 0.55 ms plus the wake-up). Also checks that Q and K are finite (NaN statistics
    would give NaN parameters before the usual check).
    """
    n_seq, _, d = Qf.shape
    moments = np.zeros((2, n_seq, 2, d))
    counts = np.zeros((2, n_seq))
    no_skip = np.zeros(0, dtype=bool)
    for n in range(n_seq):
        for side, (X, name) in enumerate(((Qf[n], "Q"), (Kf[n], "K"))):
            # statistics of the visible keys only
            skip = mask[n] if side == 1 and mask is not None else no_skip
            counts[side, n] = column_moments(X, skip, moments[side, n])
            if not np.isfinite(moments[side, n]).all():
                check_finite(X, name)  # the usual error for NaN/inf (a mere overflow passes)
    (q, k) = moments
    return q[:, 0], q[:, 1], counts[0], k[:, 0], k[:, 1], counts[1]


def mask_keys(F, s, mask_rows):
    """Padded keys: zero feature rows and ``s = -inf`` (masks act on features)."""
    if mask_rows is not None and mask_rows.any():
        F[mask_rows] = 0.0
        s[mask_rows] = -np.inf


def ones_column(v, dtype):
    u = np.empty((v.shape[0], v.shape[1] + 1), dtype=dtype)
    u[:, :-1] = v
    u[:, -1] = 1.0
    return u


def merge_state(prev, block):
    """Sum of two (state, reference) pairs, relative to the larger reference."""
    if prev is None or prev[1] == -np.inf:
        return block
    if block[1] == -np.inf:
        return prev
    (S1, R1), (S2, R2) = prev, block
    R = max(R1, R2)
    return S1 * math.exp(R1 - R) + S2 * math.exp(R2 - R), R


def run_blocks(n_seq, n_blocks, prepare, step, after=None, n_tail=0, tail=None):
    """Run ``n_blocks`` blocks of each of ``n_seq`` sequences in one pool run, each block's
    ``step`` strictly after the previous block's in the same sequence; then ``n_tail``
    further tasks.

    ``prepare(n, b)`` runs as soon as a thread takes block ``b`` of sequence ``n``, in
    parallel with anything else; ``step(n, b, prepared)`` once block ``b - 1`` of the same
    sequence has stepped; ``after(n, b, stepped)`` once the next block may go on. Blocks
    are queued block-major (the first blocks of all sequences before any second one), so
    with several sequences a block rarely waits, and every sequence goes through the same
    steps in the same order: results do not depend on the thread count. Then ``tail(j,
    wait)`` for each ``j``, where ``wait(n)`` blocks until sequence ``n``'s last step and
    returns False if a block failed. A failure anywhere releases everything waiting and
    propagates.
    """
    n_ordered = n_seq * n_blocks
    events = [threading.Event() for _ in range(n_ordered)]
    failed = []

    def wait(n):
        events[(n_blocks - 1) * n_seq + n].wait()
        return not failed

    def task(rows):
        i = rows.start
        if i >= n_ordered:
            tail(i - n_ordered, wait)
            return
        b, n = divmod(i, n_seq)
        released = False
        try:
            prepared = prepare(n, b)
            if b > 0:
                events[i - n_seq].wait()
                if failed:
                    return
            stepped = step(n, b, prepared)
            events[i].set()
            released = True
            if after is not None:
                after(n, b, stepped)
        except BaseException:
            failed.append(True)
            raise
        finally:
            if not released:  # never leave a waiting block behind
                events[i].set()

    map_row_blocks(task, n_ordered + n_tail, block_rows=1)


class _Call:
    """One attention call's inputs in fixed row blocks, and the output.

    Subclasses compute a causal pipeline (``_causal``) or a bidirectional key fold
    (``_bidirectional``) with :func:`run_blocks`; their state per sequence lives in lists
    indexed by the sequence, each entry written by one block at a time.
    """

    def __init__(self, Qf, Kf, Vf, mask, features, causal, tuning, carried=None):
        self.Qf, self.Kf, self.Vf, self.mask = Qf, Kf, Vf, mask
        self.features, self.causal, self.tuning = features, causal, tuning
        self.dtype = features.dtype
        self.block_rows = tuning.causal_block_rows if causal else tuning.block_rows
        self.n_seq, self.Lq, _ = Qf.shape
        self.Lk, self.dv = Vf.shape[1:]
        self.e = self.dv + 1
        self.out = np.empty((self.n_seq, self.Lq, self.dv), dtype=self.dtype)
        # Per sequence, the state carried from block to block (None before the first key):
        # copies of the states another call left, where a sequence goes on from there.
        self.carried = (
            [None] * self.n_seq
            if carried is None
            else [None if c is None else _copied(c) for c in carried]
        )

    def rows(self, b, L):
        return b * self.block_rows, min(L, (b + 1) * self.block_rows)

    def n_blocks(self, L):
        return -(-L // self.block_rows)

    def queries(self, n, lo, hi):
        q = self.Qf[n, lo:hi]
        check_finite(q, "Q")
        return q

    def keys(self, n, lo, hi):
        k, v = self.Kf[n, lo:hi], self.Vf[n, lo:hi]
        check_finite(k, "K")
        check_finite(v, "V")
        return k, v

    def padded(self, n, lo, hi):
        return None if self.mask is None else self.mask[n, lo:hi]

    def run(self):
        (self._causal if self.causal else self._bidirectional)()
        return self.out

    def _bidirectional(self):
        """Fold the key blocks of every sequence into its final state (``_key_state`` in
        parallel, ``_fold`` in order), then read every query block against it."""
        self.final = [None] * self.n_seq
        self.nbk = self.n_blocks(self.Lk)
        run_blocks(
            self.n_seq, self.nbk, self._key_state, self._fold,
            n_tail=self.n_seq * self.n_blocks(self.Lq), tail=self._query_task,
        )  # fmt: skip

    def key_states(self):
        """Only the key fold: every sequence's float64 state over its keys (as
        :meth:`read` and :func:`merge_key_states` take it)."""
        self.final = [None] * self.n_seq
        self.nbk = self.n_blocks(self.Lk)
        run_blocks(self.n_seq, self.nbk, self._key_state, self._fold)
        return self.carried

    def read(self, states):
        """Only the query reads, against key states folded elsewhere."""
        self.final = [None if s is None else self.final_state(s) for s in states]
        n_tasks = self.n_seq * self.n_blocks(self.Lq)
        map_row_blocks(lambda rows: self._query_task(rows.start, _no_wait), n_tasks, 1)
        return self.out


def _copied(state):
    """A state tuple with its arrays copied (the kernels update states in place)."""
    return tuple(x.copy() if isinstance(x, np.ndarray) else x for x in state)


def _no_wait(n):
    return True


class _SignedCall(_Call):
    """Signed features: a bounded part and a float64 log-constant per key, summed relative
    to a running reference; rows whose normalizer or output is not usable are counted."""

    def __init__(self, *args):
        super().__init__(*args)
        self.n_bad = 0
        self.lock = threading.Lock()
        self.no_cross = np.empty((0, self.e), dtype=self.dtype)

    def count(self, k):
        if k:
            with self.lock:
                self.n_bad += k

    def key_features(self, n, lo, hi):
        k, v = self.keys(n, lo, hi)
        fk, s = self.features(k, keys=True, seq=n)
        mask_keys(fk, s, self.padded(n, lo, hi))
        return fk, s, ones_column(v, self.dtype)

    def normalize(self, num, ref, n, lo, hi):
        self.count(merge_normalize(num, ref, self.no_cross, -np.inf, self.out[n, lo:hi]))

    # A pipeline: while one thread runs a block's prefix-sum kernel, another computes the
    # next block's features.
    def _causal(self):
        self.thresh = self.tuning.for_dtype(self.tuning.signed_gap, self.dtype)
        run_blocks(
            self.n_seq, self.n_blocks(self.Lq), self._causal_features, self._causal_kernel,
            after=self._causal_normalize,
        )  # fmt: skip

    def _causal_features(self, n, b):
        lo, hi = self.rows(b, self.Lq)
        fq = self.features(self.queries(n, lo, hi), keys=False, seq=n)[0]
        return (fq, *self.key_features(n, lo, hi))

    def _causal_kernel(self, n, b, prepared):
        fq, fk, s, u = prepared
        num, ref = np.empty((fq.shape[0], self.e)), np.empty(fq.shape[0])
        carried = self.carried[n]
        state, R = (np.zeros((fq.shape[1], self.e)), -np.inf) if carried is None else carried
        R = causal_block(fq, fk, s, u, self.tuning.chunk, self.thresh, state, R, num, ref)
        self.carried[n] = (state, R)
        return num, ref

    def _causal_normalize(self, n, b, stepped):
        self.normalize(*stepped, n, *self.rows(b, self.Lq))

    def _key_state(self, n, b):
        lo, hi = self.rows(b, self.Lk)
        fk, s, u = self.key_features(n, lo, hi)
        R = float(s.max())
        state = np.zeros((fk.shape[1], self.e))
        if R > -np.inf:
            # [V 1] weighted by the key constants relative to the block's largest, built
            # once in the GEMM dtype.
            dv, step = self.dv, self.tuning.key_subblock
            w = np.exp(s - R).astype(self.dtype)
            wu = np.empty((hi - lo, self.e), dtype=self.dtype)
            np.multiply(u[:, :dv], w[:, None], out=wu[:, :dv])
            wu[:, dv] = w
            for a in range(0, hi - lo, step):
                rows = slice(a, a + step)
                state += fk[rows].T @ wu[rows]
        return state, R

    def _fold(self, n, b, pair):
        self.carried[n] = merge_state(self.carried[n], pair)
        if b == self.nbk - 1:
            self.final[n] = self.final_state(self.carried[n])

    def final_state(self, pair):
        """The state queries read, in the GEMM dtype; None if no key is visible."""
        state, R = pair
        return state.astype(self.dtype) if R > -np.inf else None

    def _query_task(self, j, wait):
        b, n = divmod(j, self.n_seq)
        lo, hi = self.rows(b, self.Lq)
        fq = self.features(self.queries(n, lo, hi), keys=False, seq=n)[0]
        if not wait(n):
            return
        if self.final[n] is None:  # every key padded: no key to attend to
            self.out[n, lo:hi] = 0.0
            return
        self.normalize(fq @ self.final[n], np.zeros(hi - lo), n, lo, hi)


def favor_signed(Qf, Kf, Vf, mask, features, causal, tuning):
    """FAVOR attention with signed features (trigonometric, activations) on flattened
    (N, L, d) inputs; returns (out, n_bad), n_bad the rows set to 0."""
    call = _SignedCall(Qf, Kf, Vf, mask, features, causal, tuning)
    return call.run(), call.n_bad


class _PositiveCall(_Call):
    """Exponential maps in log space, against per-column references (see
    :mod:`favorkit._kernels.attention`): every row that sees a key has a normalizer >= 1
    and an output that is a convex combination of the visible value rows."""

    def __init__(self, *args):
        super().__init__(*args)
        self.r = self.features.width
        self.thresh = self.tuning.for_dtype(self.tuning.log_gap, self.dtype)
        self.bits = self.tuning.for_dtype(self.tuning.value_bits, self.dtype)

    def key_log_features(self, n, lo, hi):
        k, v = self.keys(n, lo, hi)
        zk, rt = self.features.keys(k, seq=n)
        padded = self.padded(n, lo, hi)
        if padded is not None:
            rt[padded] = -np.inf  # masks act on features: a padded key adds nothing
        return zk, rt, v

    def _causal(self):
        # The references each sequence's kernel left after its latest block (a snapshot):
        # a block computes its features against them while the previous block runs.
        self.published = [
            None if c is None or c[1][0] == -np.inf else (c[1].copy(), c[2].copy())
            for c in self.carried
        ]
        r, e, dtype = self.r, self.e, self.dtype
        self.nothing_ahead = (
            np.empty((0, r), dtype=dtype),
            np.empty((0, r), dtype=dtype),
            np.empty((0, e), dtype=dtype),
            np.empty(0, dtype=bool),
        )
        run_blocks(self.n_seq, self.n_blocks(self.Lq), self._causal_features, self._causal_kernel)

    def _causal_features(self, n, b):
        """Projections and, against the latest published references, features."""
        lo, hi = self.rows(b, self.Lq)
        zq = self.features.queries(self.queries(n, lo, hi), seq=n)
        zk, rt, v = self.key_log_features(n, lo, hi)
        if not (np.isfinite(zq).all() and np.isfinite(zk).all()):
            raise overflow_error(self.dtype)
        guess, ahead = self.published[n], None
        if guess is not None:
            ahead = (
                np.empty(zq.shape, dtype=self.dtype),
                np.empty(zk.shape, dtype=self.dtype),
                np.empty((hi - lo, self.e), dtype=self.dtype),
                np.empty(hi - lo, dtype=bool),
            )
            log_causal_stage(zq, zk, rt, v, *guess, self.thresh, self.bits, *ahead)
        return zq, zk, rt, v, guess, ahead

    def _causal_kernel(self, n, b, prepared):
        zq, zk, rt, v, guess, ahead = prepared
        lo, hi = self.rows(b, self.Lq)
        if self.carried[n] is None:
            state, c, kappa = (
                np.zeros((self.r, self.e)),
                np.full(self.r, -np.inf),
                np.zeros(self.dv),
            )
        else:
            state, c, kappa = self.carried[n]
        # Features computed ahead are used only if the guess was right; the kernel would
        # compute the same bits itself.
        use = guess is not None and all(map(np.array_equal, guess, (c, kappa)))
        log_causal_block(
            zq, zk, rt, v, self.tuning.chunk, self.thresh, self.bits, state, c, kappa,
            self.out[n, lo:hi], use, *(ahead if use else self.nothing_ahead),
        )  # fmt: skip
        self.carried[n] = (state, c, kappa)
        if c[0] > -np.inf:
            self.published[n] = (c.copy(), kappa.copy())

    def _key_state(self, n, b):
        """One key block's (state, c, kappa), against its own column references."""
        lo, hi = self.rows(b, self.Lk)
        zk, rt, v = self.key_log_features(n, lo, hi)
        c = np.full(self.r, -np.inf)
        if not key_column_max(zk, rt, c):
            raise overflow_error(self.dtype)
        kappa = np.zeros(self.dv)
        state = np.zeros((self.r, self.e))
        if c[0] > -np.inf:  # some key of the block is visible
            value_exponents(v, rt, self.bits, kappa)
            shift_keys(zk, rt, c)
            fk = exp_inplace(zk)
            u = np.empty((hi - lo, self.e), dtype=self.dtype)
            scaled_values(v, kappa, u)
            step = self.tuning.key_subblock
            for a in range(0, hi - lo, step):
                rows = slice(a, a + step)
                state += fk[rows].T @ u[rows]
        return state, c, kappa

    def _fold(self, n, b, block):
        if self.carried[n] is None:
            self.carried[n] = block
        else:
            merge_log_states(*self.carried[n], *block)
        if b == self.nbk - 1:
            self.final[n] = self.final_state(self.carried[n])

    def final_state(self, triple):
        """The state queries read: ``(state in the GEMM dtype, c, kappa)``."""
        state, c, kappa = triple
        return state.astype(self.dtype), c, kappa

    def _query_task(self, j, wait):
        b, n = divmod(j, self.n_seq)
        lo, hi = self.rows(b, self.Lq)
        zq = self.features.queries(self.queries(n, lo, hi), seq=n)
        if not wait(n):
            return
        state, c, kappa = self.final[n]
        if c[0] == -np.inf:  # every key padded: no key to attend to
            self.out[n, lo:hi] = 0.0
            return
        if not shift_queries(zq, c):
            raise overflow_error(self.dtype)
        normalize_rows(exp_inplace(zq) @ state, kappa, self.out[n, lo:hi])


def favor_positive(Qf, Kf, Vf, mask, features, causal, tuning):
    """FAVOR attention with an exponential map's features (:class:`PositiveFeatures`), in log
    space, on flattened (N, L, d) inputs."""
    return _PositiveCall(Qf, Kf, Vf, mask, features, causal, tuning).run()


def _call(features):
    return _PositiveCall if isinstance(features, PositiveFeatures) else _SignedCall


def causal_chunk(Qf, Kf, Vf, mask, features, tuning, carried):
    """Causal attention over one chunk of positions of every sequence, going on from the
    states ``carried`` (per sequence; None at a sequence's start) the previous chunk left.

    Returns ``(out, carried after this chunk, rows set to 0)``; a sequence cut into chunks
    and run chunk after chunk gives what one call over it gives, bit for bit when every
    chunk but the last is a multiple of ``tuning.causal_block_rows`` long (the same blocks
    then meet the same states). The carried state is the kernel's own: ``(state, c,
    kappa)`` of an exponential map with its per-column references, or ``(state, R)``.
    """
    call = _call(features)(Qf, Kf, Vf, mask, features, True, tuning, carried)
    out = call.run()
    return out, call.carried, getattr(call, "n_bad", 0)


def key_states(Kf, Vf, mask, features, tuning):
    """Bidirectional attention's key side alone: per sequence, the float64 sum over its
    keys ``φ(K)ᵀ [V 1]`` with its references (``(state, c, kappa)`` or ``(state, R)``)."""
    Qf = np.empty((Kf.shape[0], 0, Kf.shape[2]), dtype=features.dtype)
    return _call(features)(Qf, Kf, Vf, mask, features, False, tuning).key_states()


def merge_key_states(first, second):
    """Key states of two disjoint sets of keys of the same sequences, summed (new arrays:
    neither input changes). Sums are formed relative to the larger reference, as the
    engine folds its own blocks, so any order of merging agrees up to round-off."""
    merged = []
    for a, b in zip(first, second, strict=True):
        if len(a) == 2:
            merged.append(merge_state(a, b))
        else:
            a = _copied(a)
            merge_log_states(*a, *b)
            merged.append(a)
    return merged


def read_queries(Qf, states, dv, features, tuning):
    """Bidirectional attention's query side alone, against per-sequence key ``states``
    (from :func:`key_states`, merged): returns ``(out, rows set to 0)``."""
    n_seq, _, d = Qf.shape
    Kf = np.empty((n_seq, 0, d), dtype=features.dtype)
    Vf = np.empty((n_seq, 0, dv), dtype=features.dtype)
    call = _call(features)(Qf, Kf, Vf, None, features, False, tuning)
    return call.read(states), getattr(call, "n_bad", 0)


def positive_attention_rows(zq, zk, rt, causal, out):
    """Normalized attention rows of a positive estimator from its float64 log-features.

    The same per-column references as the engine, but exact for every row: row ``t``
    references the keys it sees (all keys, or keys ``j <= t`` in causal mode), so its
    largest term is 1 and no later key can push it into underflow. O(L_q L_k m): for
    diagnostics at small L.
    """
    Lq, Lk = out.shape
    visible = rt > -np.inf
    with np.errstate(invalid="ignore"):
        Y = zk + rt[:, None]  # -inf rows for padded keys

    def weights(rows, stop):
        vis = visible[:stop]
        c = Y[:stop][vis].max(axis=0)
        F = np.zeros((stop, Y.shape[1]))
        F[vis] = np.exp(Y[:stop][vis] - c)
        y = zq[rows] + c
        W = np.exp(y - y.max(axis=-1, keepdims=True))
        a = W @ F.T
        return a / a.sum(axis=-1, keepdims=True)

    with np.errstate(under="ignore"):
        if not causal:
            if visible.any():
                out[:] = weights(slice(None), Lk)
            return
        for t in range(Lq):
            if visible[: t + 1].any():
                out[t, : t + 1] = weights(t, t + 1)


CAUSAL_GERF = (
    "estimator={estimator!r} with causal=True needs A (and Ψ) fixed in advance: fitted from "
    "the whole sequence they would let future queries and keys change earlier outputs. Use "
    "FavorAttention(estimator={estimator!r}, causal=True).fit(X) (or .fit(X, keys=K)), which "
    "fits them once from the data passed to fit."
)


def set_gerf_parameters(features, Qf, Kf, mask, causal, fitted):
    """Give a fitted map (FAVOR++, SADERF) its parameters; a no-op for the others.

    Bidirectional: the map fits ``(A, Ψ)`` to each sequence's (each head's) own queries and
    unpadded keys, per call, as the official ``expplus`` does; every output of a sequence
    sees all of its keys anyway. A sequence without queries or visible keys gets ``A = 0``,
    ``Ψ = 1``. Causal: statistics over the sequence would make ``A`` depend on future
    positions, so every earlier output would change when a future key does; the parameters
    ``fitted`` (from ``FavorAttention.fit``) are used instead, and without them this raises.
    """
    fmap = features.map
    if not fmap.fitted:
        return
    if causal:
        if fitted is None:
            raise ValueError(CAUSAL_GERF.format(estimator=fmap.name))
        features.set_params([fitted])
        return
    features.set_params(gerf_parameters(fmap, features.scale, sequence_moments(Qf, Kf, mask)))


def gerf_parameters(fmap, scale, moments):
    """Per sequence, a fitted map's parameters from :func:`sequence_moments` (or their sums
    over chunks of the sequences); ``A = 0``, ``Ψ = 1`` for a sequence without queries or
    visible keys."""
    sum_q, sq_q, n_q, sum_k, sq_k, n_k = moments
    return [
        fmap.fit(
            Moments.from_sums(sum_q[n], sq_q[n], n_q[n], scale),
            Moments.from_sums(sum_k[n], sq_k[n], n_k[n], scale),
        )
        if n_q[n] and n_k[n]
        else MapParams.identity(sum_q.shape[1])
        for n in range(sum_q.shape[0])
    ]
