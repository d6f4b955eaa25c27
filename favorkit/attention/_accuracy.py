"""The closed-form prediction of FAVOR attention's error (public in :mod:`favorkit.accuracy`,
whose docstring gives the method), and the check behind :class:`~favorkit.AccuracyWarning`."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import interpolate, special

from favorkit import maps, sampling
from favorkit._kernels import accuracy as acc_kernels
from favorkit._parallel import _blas_one_thread, map_row_blocks
from favorkit._scratch import scratch
from favorkit._typing import AttentionEstimator, RandomStateLike
from favorkit.attention._inputs import check_finite, max_abs, prepare, resolve_scale
from favorkit.maps import MapParams, Moments
from favorkit.theory._diagnostics import check_target, smallest_m
from favorkit.theory._gerf import COUPLINGS, coupling_cosine, log_moment_series, pair_count

__all__ = [
    "AttentionError",
    "check_count",
    "comparable",
    "predict_attention_error",
    "predict_rows",
    "quick_noise_ratio",
    "relative_standard_error",
    "resolve_estimator",
    "row_sampling_variance",
    "sample_rows",
    "sketch_correlation",
]

# A row is unreliable when the excess kurtosis of its normalizer's m-term mean exceeds
# this (the relative standard error of a mean squared error from 100 redraws is then
# above 1), or when that normalizer's relative variance exceeds _NONLINEAR.
_KURTOSIS_LIMIT = 100.0
_NONLINEAR = 0.25
# Unreliable rows carrying more than this share of the predicted error make it heavy-tailed.
_HEAVY_SHARE = 0.1
_QUERY_CHUNK = 64
# Query rows per parallel block: the default 32 rows in 2 blocks keep both cores busy, and
# 16 rows make the block's weighted sums of values one GEMM of 64+ rows.
_BLOCK_ROWS = 16
_SPLINE_NODES = 257
_TABLE_NODES = 1 << 14
# Gaussian triples (a_i, b_i, b'_i) of the key pairs' sketch: the relative standard deviation
# of its estimate of ‖M‖_F² is sqrt(2/D) to sqrt(8/D) (flat to rank-one M). At L = 16 384,
# d = 64, bidirectional, its variance sets most of the standard error (0.6-0.8 of it, from
# mix_sketch's floor); D = 32 halves its variance for twice its key columns and sketch GEMM.
_SKETCH = 16


@dataclass(frozen=True)
class AttentionError:
    """The error of FAVOR attention against exact attention on a sample of query rows.

    Returned by :func:`predict_attention_error` and :func:`measure_attention_error`.

    Attributes
    ----------
    kind : {"predicted", "measured"}
    estimator, projection : str
    n_components : int
        The m of ``relative_error`` and ``mse``.
    relative_error : float
        ``sqrt(E‖Ŷ - Y‖²_F / ‖Y‖²_F)`` over every query row, estimated from the sampled
        rows (may be ``inf``).
    mse : float
        ``E‖Ŷ - Y‖²_F`` per output entry.
    standard_error : float
        Standard error of ``relative_error``: from the row sample, and from the sampled
        key pairs (predicted) or the redraws (measured).
    heavy_tailed : bool
        The expectation is carried by heavy tails (see ``reason``): treat the number as
        an order of magnitude at best, and the attention at this m as mostly noise.
    reason : str
        Why ``heavy_tailed`` (empty when it is False).
    n_queries : int
        Query rows sampled.
    per_draw : ndarray of shape (n_redraws,) or None
        Measured: the relative error of each redraw.
    """

    kind: str
    estimator: str
    projection: str
    n_components: int
    relative_error: float
    mse: float
    standard_error: float
    heavy_tailed: bool
    reason: str
    n_queries: int
    per_draw: np.ndarray | None = field(default=None, repr=False)
    # The m-free sums of a prediction: E‖Ŷ-Y‖² = single/m + (P(m)/m²) coupled.
    _single: float = field(default=0.0, repr=False)
    _coupled: float = field(default=0.0, repr=False)
    _output_sq: float = field(default=1.0, repr=False)
    _block: int = field(default=1, repr=False)

    def relative_error_at(self, m: ArrayLike) -> float | NDArray[np.float64]:
        """Predicted relative error with ``m`` projections (same data and estimator).

        Parameters
        ----------
        m : int or array-like of int

        Returns
        -------
        float or ndarray
        """
        self._need_prediction()
        m = np.asarray(m)
        if m.dtype.kind not in "iu" or np.any(m < 1):
            raise ValueError(f"m must be a positive integer (or integers), got {m!r}.")
        mf = m.astype(np.float64)
        pairs = pair_count(m, self._block, self.projection)
        err = self._single / mf + pairs / mf**2 * self._coupled
        return np.sqrt(np.maximum(err, 0.0) / self._output_sq)[()]

    def features_needed(self, target: float) -> int | float:
        """Smallest m whose predicted relative error is ``<= target``.

        Parameters
        ----------
        target : float > 0
            Target relative Frobenius error.

        Returns
        -------
        int or float
            ``inf`` when the predicted error is infinite; beyond ``2**62`` projections the
            estimate as a float.
        """
        self._need_prediction()
        target = check_target(target)
        if not math.isfinite(self._single):
            return math.inf
        goal = target**2 * self._output_sq
        # err²(m) = single/m + (P(m)/m²) coupled, exactly (single + (d-1) coupled)/m at
        # whole blocks; iid rows: single/m.
        coupled = self.projection != "iid" and self._block > 1
        whole = self._single + (self._block - 1) * self._coupled if coupled else self._single
        low, high = sorted((max(whole, 0.0), max(self._single, 0.0)))
        if high <= goal:
            return 1
        return smallest_m(
            lambda m: self.relative_error_at(m) <= target,
            low / goal,
            high / goal,
            self._block if coupled else 1,
        )

    def _need_prediction(self):
        if self.kind != "predicted":
            raise ValueError("only a prediction extrapolates to other m.")


def sample_rows(n_seq, lengths, n_queries, rng, causal=False):
    """``n_queries`` (sequence, row) pairs without replacement, sorted (all when fewer),
    each row's weight (the rows of the population it stands for) and its stratum.

    Bidirectional attention samples the rows uniformly (one stratum). Causal attention
    stratifies them by position, in ranges of geometrically growing width (``[0, 1)``,
    ``[1, 3)``, ``[3, 7)``, ... at most ``n_queries // 2`` of them) that share the rows
    equally, each sampled uniformly over every sequence (a range no larger than its share
    is taken whole, weight 1, and its surplus goes to the others): an early row averages
    few values, so its ``|y|²`` and error are large (at L = 1024 with N(0, 1) values the
    first 8 rows hold 40 % of ``‖Y‖²``), and a range of positions ``[a, 2a)`` holds about
    the same share of ``‖Y‖²`` as any other. With the first ``n_queries // (4 n_seq)`` rows
    of every sequence taken and the rest sampled uniformly, 32 rows of 16 sequences of
    L = 4096, d = 64 (``|q|, |k| ~ 0.5 N(0, 1)``, m = 256) held no first rows and predicted
    0.55 ± 0.04 (a spread of 0.07 over 24 seeds) where 128 rows predict 0.49; stratified,
    0.48 ± 0.03 (a spread of 0.03).
    """
    total = n_seq * lengths
    if total <= n_queries:
        flat = np.arange(total)
        return *np.divmod(flat, lengths), np.ones(total), np.zeros(total, dtype=np.int64)
    n_strata = min(int(math.log2(lengths)) + 1, max(1, n_queries // 2)) if causal else 1
    edges = np.unique(np.round(np.geomspace(1, lengths + 1, n_strata + 1)).astype(np.int64) - 1)
    width = np.diff(edges)
    population = n_seq * width
    # Equal shares, a stratum no larger than its share taken whole, the surplus shared by
    # the others (the larger, later ones first).
    take = np.zeros(width.size, dtype=np.int64)
    left, open_ = n_queries, np.ones(width.size, dtype=bool)
    while left > 0 and open_.any():
        idx = np.flatnonzero(open_)
        share = np.full(idx.size, left // idx.size)
        share[idx.size - left % idx.size :] += 1
        share = np.minimum(share, population[idx] - take[idx])
        take[idx] += share
        left -= int(share.sum())
        open_ &= take < population
    flat, weights, strata = [], [], []
    for k in np.flatnonzero(take):
        picks = rng.choice(population[k], size=take[k], replace=False)
        seq, row = np.divmod(picks, width[k])
        flat.append(seq * lengths + edges[k] + row)
        weights.append(np.full(take[k], population[k] / take[k]))
        strata.append(np.full(take[k], k))
    flat, weights, strata = (np.concatenate(a) for a in (flat, weights, strata))
    order = np.argsort(flat)
    return *np.divmod(flat[order], lengths), weights[order], strata[order]


def resolve_estimator(estimator, projection):
    fmap = maps.get(estimator) if isinstance(estimator, str) else None
    if fmap is None or not fmap.attention_estimator:
        names = ", ".join(repr(n) for n in maps.names("attention"))
        raise ValueError(
            f"estimator must be one of {names} (the estimators of the softmax kernel; "
            f"generalized attention approximates no kernel), got {estimator!r}."
        )
    return fmap


def _sequence_params(fmap, Qs, Ks, visible_keys):
    """A fitted map's parameters as bidirectional attention fits them per sequence."""
    if not fmap.fitted:
        return MapParams.identity(Qs.shape[1])
    keys = Ks[visible_keys]
    if not len(keys):
        return MapParams.identity(Qs.shape[1])
    return fmap.fit(Moments.of(Qs), Moments.of(keys))


def _fresh(name, shape, dtype=np.float64):
    """An allocator as :func:`favorkit._scratch.scratch` yields, of fresh arrays."""
    return np.empty(shape, dtype)


def _key_rows(K, V, root, psi, keys_ok, triples, dtype=np.float64, empty=_fresh):
    """The keys ``K root / psi`` and values ``[V - center, 1]`` as the kernels take them,
    in ``dtype``, their rows' squared norms in float64, ``center``, and the
    :class:`Sketch` of the ``triples`` (:meth:`Sketch.triples`) on them
    (:func:`favorkit._kernels.accuracy.key_rows`, then the sketch's columns of the same
    key block while its rows are in cache, on key blocks in parallel); the arrays from
    ``empty`` (name, shape, dtype).

    ``center`` is the mean of at most 256 visible values at a fixed stride (a padded key's
    value may be anything): it only has to be near their mean, and costs nothing at any L.
    Padded keys' rows are zeros.
    """
    L, d = K.shape
    visible = np.flatnonzero(keys_ok)
    picks = visible[:: max(1, visible.size // 256)]
    center = V[picks].mean(axis=0, dtype=np.float64) if picks.size else np.zeros(V.shape[1])
    Kk, kk = empty("keys", (L, d), dtype), empty("key norms", L)
    Vx, vv = empty("values", (L, V.shape[1] + 1), dtype), empty("value norms", L)
    columns = empty("sketch", (L, 4 * triples[0].shape[0]), dtype)
    psi = np.ascontiguousarray(np.broadcast_to(psi, (d,)), dtype=np.float64)
    fill = Sketch.filler(triples, dtype)

    def block(r):
        acc_kernels.key_rows(K[r], V[r], root, psi, center, Kk[r], kk[r], Vx[r], vv[r])
        fill(Kk[r], Vx[r], columns[r])

    map_row_blocks(block, L)
    # A padded key's row may hold anything (up to the dtype's largest number): zeroed, it
    # cannot move the float32 check, the coupling's table range or a GEMM's sums (0 x inf).
    # (A zero row's sketch columns are zeros.)
    hidden = ~keys_ok
    if hidden.any():
        Kk[hidden], kk[hidden], Vx[hidden, :-1], vv[hidden] = 0.0, 0.0, 0.0, 0.0
        columns[hidden] = 0.0
    return Kk, kk, Vx, vv, center, Sketch(*triples, columns)


def _float32_is_safe(U, kk, vv):
    """Whether the kernels' float32 GEMMs stay far from overflow (float32 ends at ~3.4e38):
    the logits ``|u·k̃| <= |u| |k̃|``, and the weighted sums of values, at most L times the
    largest centred value (weights <= 1), and of the sketch's products ``(a·v)(b·k̃)``
    (Gaussian ``a``, ``b`` of dimension up to 10⁴: below 10⁴ |v| |k̃|). An inf in ``kk`` or
    ``vv`` (a row beyond float32) fails it too."""
    with np.errstate(over="ignore", invalid="ignore"):
        logits = math.sqrt(float(np.einsum("ij,ij->i", U, U).max())) * math.sqrt(kk.max())
        sums = math.sqrt(vv.max()) * vv.size * max(1.0, 1e4 * math.sqrt(kk.max()))
    return bool(logits < 1e30 and sums < 1e30)


@dataclass(frozen=True)
class Sketch:
    """The key pairs' sketch of one sequence: Gaussian ``A`` (D, d_v), ``B`` and ``B2``
    (D, d), and the kernels' key columns (L, 4D) in ``Kk``'s dtype
    (:func:`favorkit._kernels.accuracy.sketch_columns`).

    ``X_i = a_iᵀ M b_i`` has ``E X_i² = ‖M‖_F²`` for any matrix ``M``, and
    ``M = Σ_j w_j (v_j - y) k̃_jᵀ`` gives ``X_i = Σ_j w_j (a_i·(v_j - y)) (b_i·k̃_j)``, so
    ``E X_i² = Σ_{j,l} w_j w_l (v_j - y)·(v_l - y) k̃_j·k̃_l``; with a third factor
    ``b'_i·k̃_j`` the same gives ``(k̃_j·k̃_l)²``. A row's ``X_i`` are one GEMM of its
    weights with the columns, which every row of the sequence shares.
    """

    A: NDArray[np.float64]
    B: NDArray[np.float64]
    B2: NDArray[np.float64]
    columns: NDArray

    @staticmethod
    def triples(rng, d_v, d, size=None):
        """Draw ``A``, ``B``, then ``B2`` from ``rng`` (``size`` rows, default 16)."""
        size = _SKETCH if size is None else size
        return tuple(rng.standard_normal((size, n)) for n in (d_v, d, d))

    @staticmethod
    def filler(triples, dtype):
        """``fill(Kk, Vx, out)``: the columns of a block of key rows into ``out``."""
        A, B, B2 = triples
        A_ones = np.hstack([A, np.zeros((A.shape[0], 1))]).astype(dtype)
        both = np.vstack([B, B2]).astype(dtype)
        return lambda Kk, Vx, out: acc_kernels.sketch_columns(Kk, Vx, A_ones, both, out)

    @classmethod
    def draw(cls, rng, Kk, Vx, size=None):
        """Draw the triples from ``rng`` and form the columns on key blocks in parallel."""
        triples = cls.triples(rng, Vx.shape[1] - 1, Kk.shape[1], size)
        fill = cls.filler(triples, Kk.dtype)
        columns = np.empty((Kk.shape[0], 4 * triples[0].shape[0]), Kk.dtype)
        map_row_blocks(lambda r: fill(Kk[r], Vx[r], columns[r]), Kk.shape[0])
        return cls(*triples, columns)


def _rng_state(rng, state=None):
    """Get, or with ``state`` set, the state of a Generator or a RandomState."""
    if isinstance(rng, np.random.Generator):
        if state is None:
            return rng.bit_generator.state
        rng.bit_generator.state = state
    elif state is None:
        return rng.get_state()
    else:
        rng.set_state(state)
    return state


def _rows_error(
    sm, coupled, U, Kk, Vx, vv, kk, keys_ok, limits, rng, n_pairs, center=None, sketch=None,
    key_sums=None,
):  # fmt: skip
    """Per-row sums for a block of query rows of one sequence (module docstring).

    Row ``r`` sees the keys ``j < limits[r]`` with ``keys_ok[j]``; ``Vx`` holds the values
    less ``center`` (None: 0) with a column of ones appended, ``vv``, ``kk`` the squared
    norms of those values and of the keys.
    The sums over keys are formed by the kernels of :mod:`favorkit._kernels.accuracy` on
    row blocks in parallel; the uniform draws of the key-pair samples come from ``rng``
    here, per sampling set in turn (one per sign, then the coupled one), for the rows
    with a positive total weight, so they do not depend on the blocks.

    ``sketch`` (a :class:`Sketch` of these keys; None: drawn here from ``rng`` first) sums
    the key pairs' terms to second order in k̃_j·k̃_l; the pairs sample the rest.
    ``key_sums`` (a :class:`_KeySums` of them; None: formed here where the map has a
    sign whose ``e`` does not depend on the logits) gives the controls' sums over keys.

    Returns (single, single_var, coupled, coupled_var, normalizer relVar, |y|²,
    single_first, coupled_first, controls, seen), per row and 0 where a row sees no key
    (``seen`` False); ``controls`` (rows x 2 x D x 2) are :func:`_uniform_controls`' for
    the single and the coupled sets (zeros for maps without such a sign). ``single``
    and ``coupled`` (rows x 3) hold the sum with the key pairs' rest past second order
    (sampled), the sampled second-order part, and the sketched one (the mean of
    ``single_first`` or ``coupled_first``, rows x D, less the pairs ``j = l``): the sum is
    the first plus either of the others (:func:`mix_sketch`); ``single_var`` and
    ``coupled_var`` (rows x 3) the variances of the two sampled parts and their
    covariance.
    """
    n_rows = U.shape[0]
    if sketch is None:
        sketch = Sketch.draw(rng, Kk, Vx)
    n_sk = sketch.A.shape[0]
    signs = np.array(sm.signs, dtype=np.float64)
    n_signs = signs.size
    moment = np.array([sm.alpha, sm.gamma, float(sm.pair_sign)])
    if coupled is None:
        coupling, tables = np.zeros(4), np.zeros((2, 2, 2))
    else:
        coupling = np.array([1.0, coupled.d, coupled.step, coupled.linear])
        tables = coupled.kernel_tables()
    n_sets = n_signs + (coupled is not None)
    uu = np.einsum("ij,ij->i", U, U, dtype=np.float64)
    Lk = Kk.shape[0]
    y = np.empty((n_rows, Vx.shape[1]))
    sums = np.empty((n_rows, acc_kernels.N_COLS))
    est = np.empty((n_rows, n_sets, 2))
    var = np.empty((n_rows, n_sets, 3))
    first = np.empty((n_rows, n_sets, n_sk))
    fixed = (moment, signs, coupling, tables, sketch.columns, sketch.A)
    # Every row that sees two keys or more is sampled in every set unless all its sampling
    # weights are 0: draw for those rows first and sample in the same pass as the sums; if
    # a row turns out to have no weight, draw again for the rows that have.
    n_visible = np.cumsum(keys_ok)[limits - 1]
    seen = n_visible > 1
    state = _rng_state(rng)
    draws = np.zeros((n_rows, n_sets, 2, n_pairs))
    for k in range(n_sets):
        draws[seen, k] = rng.random((int(seen.sum()), 2, n_pairs))

    def block_sums(rows, draws=draws, stored=None):
        with scratch() as empty:
            if stored is None:  # the kernel's logits and y·v_j, in this thread's buffers
                R = rows.stop - rows.start
                out = (empty("logits", (R, Lk)), empty("y.v", (R, Lk)), np.empty((R, n_sets, 0)))
            else:
                out = tuple(a[rows] for a in stored)
            acc_kernels.row_sums(
                U[rows], Kk, Vx, vv, kk, uu[rows], keys_ok, limits[rows], *fixed, draws[rows],
                y[rows], sums[rows], est[rows], var[rows], first[rows], *out,
            )  # fmt: skip

    map_row_blocks(block_sums, n_rows, _BLOCK_ROWS)
    live = sums[:, acc_kernels.COL_WTOT : acc_kernels.COL_WTOT + n_sets] > 0
    if np.any(live != seen[:, None]):
        _rng_state(rng, state)
        stored = (np.empty((n_rows, Lk)), np.empty((n_rows, Lk)), np.empty((n_rows, n_sets, Lk)))
        map_row_blocks(lambda rows: block_sums(rows, draws[:0], stored), n_rows, _BLOCK_ROWS)
        draws = np.zeros((n_rows, n_sets, 2, n_pairs))
        for k in range(n_sets):
            if live[:, k].any():
                draws[live[:, k], k] = rng.random((int(live[:, k].sum()), 2, n_pairs))

        def block_pairs(rows):
            acc_kernels.sampled_pairs(
                Kk, Vx, vv, kk, uu[rows], limits[rows], *fixed[:4], draws[rows], y[rows],
                sums[rows], *(a[rows] for a in stored), est[rows], var[rows],
            )  # fmt: skip

        map_row_blocks(block_pairs, n_rows, _BLOCK_ROWS)

    seen = sums[:, acc_kernels.COL_SEEN] > 0
    single = np.zeros((n_rows, 3))
    single_var = np.zeros((n_rows, 3))
    single_first = np.zeros((n_rows, n_sk))
    single_same = np.zeros(n_rows)
    controls = np.zeros((n_rows, 2, n_sk, 2))
    uniform = _uniform_signs(sm)
    if uniform:
        key_sums = key_sums or _KeySums(sketch, Kk, Vx, keys_ok, kk, sm.alpha)
        weight_at_rows, sums_at_rows = key_sums.at(limits)
    norm = np.zeros(n_rows)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # ℓ's row constants, -max b - log Σ exp(b - max b), left out by the kernel.
        offset = sums[:, acc_kernels.COL_TOP] + np.log(sums[:, acc_kernels.COL_TOTAL])
        for k, sigma in enumerate(sm.signs):
            col = acc_kernels.COL_SIGN + k * acc_kernels.SIGN_COLS
            shift = sums[:, col + acc_kernels.SIGN_SHIFT] - offset
            log_front = sm.log_const + sigma * sm.gamma * uu + 2.0 * shift
            scale = np.exp(np.minimum(log_front, 700.0)) / n_signs
            scale[log_front > 700.0] = np.inf
            bracket = sums[:, col + acc_kernels.SIGN_S1SQ] + sums[:, col + acc_kernels.SIGN_DIAG]
            # The pairs' terms to second order: all pairs, sketched, less the pairs j = l.
            same = (sigma * sm.gamma) * sums[:, col + acc_kernels.SIGN_D1]
            same += (0.5 * sm.gamma**2) * sums[:, col + acc_kernels.SIGN_D2]
            single_first += scale[:, None] * first[:, k]
            if k in uniform:
                # e_j = exp(ℓ_j - shift) with ℓ_j = α(|ũ|² + |k̃_j|²) = α|ũ|² + top + log h_j
                raw_shift = sums[:, col + acc_kernels.SIGN_SHIFT] - sm.alpha * uu - key_sums.top
                controls[:, 0] += _uniform_controls(
                    sigma * sm.gamma, sm.gamma, sums_at_rows, sketch.A, y, raw_shift, scale
                )
            single_same += scale * same
            single[:, 0] += scale * (bracket + est[:, k, 0])
            single[:, 1] += scale * est[:, k, 1]
            single_var += (scale**2)[:, None] * var[:, k]
            # The normalizer's one-projection relVar (its key interactions left out).
            sum_e = sums[:, col + acc_kernels.SIGN_SUM_E]
            norm += scale * (sum_e**2 + sums[:, col + acc_kernels.SIGN_GGEE])
        norm_relvar = np.maximum(norm - 1.0, 0.0)
        single[:, 2] = single_first.mean(axis=1) - single_same
    # No clipping per row: a row's sampled interactions may be negative; only the total
    # is (clipping each row would bias the sum upwards).
    single = np.where(np.isnan(single), np.inf, single)
    cross = np.zeros((n_rows, 3))
    cross_var = np.zeros((n_rows, 3))
    cross_first = np.zeros((n_rows, n_sk))
    if coupled is not None:
        cross_first = first[:, n_signs]
        cross[:, 0] = sums[:, acc_kernels.COL_CROSS] + est[:, n_signs, 0]
        cross[:, 1] = est[:, n_signs, 1]
        cross[:, 2] = cross_first.mean(axis=1)
        cross_var = var[:, n_signs]
        if uniform:
            # Its samples (weights p_j, p_j c_j) move with those of weights h_j / Σ h over
            # the row's visible keys (1/n for α = 0) where p is nearly flat: the controls.
            log_total = np.log(np.where(weight_at_rows > 0, weight_at_rows, 1.0))
            controls[:, 1] = _uniform_controls(
                1.0, math.sqrt(2.0), sums_at_rows, sketch.A, y, log_total, np.ones(n_rows)
            )
    y_out = y[:, :-1] if center is None else y[:, :-1] + center
    y2 = np.einsum("ij,ij->i", y_out, y_out)  # |y|² of the values as given
    parts = (np.where(seen[:, None], a, 0.0) for a in (single, single_var, cross, cross_var))
    rest = (np.where(seen, a, 0.0) for a in (norm_relvar, y2))
    firsts = (np.where(seen[:, None], a, 0.0) for a in (single_first, cross_first))
    controls = np.where(seen[:, None, None, None], controls, 0.0)
    return (*parts, *rest, *firsts, controls, seen)


_SUM_BLOCK = 256  # keys per block of _KeySums' partial sums


def _uniform_signs(sm):
    """The signs of the map (indices into ``sm.signs``) whose ``e`` does not depend on the
    logits, only on the key's norm: ``ℓ = (1 + 2τα + σγτ) b + α(|ũ|² + |k̃|²)`` (the
    kernels' ``_e_row``) where ``b``'s coefficient is 0, so that ``e_j = c h_j`` with a row
    constant ``c`` and ``h_j = e^{α|k̃_j|²}`` (1 for ``α = 0``: the hyperbolic and
    trigonometric maps' second sign; for FAVOR++'s hyperbolic map ``γ = 1 + 2α``)."""
    return [
        k for k, sigma in enumerate(sm.signs)
        if abs(1.0 + 2.0 * sm.pair_sign * sm.alpha + sigma * sm.gamma * sm.pair_sign) < 1e-12
    ]  # fmt: skip


class _KeySums:
    """Sums over a sequence's visible keys for :func:`_uniform_controls`, each key weighted
    by ``h_j = e^{α|k̃_j|² - top}`` (``top`` the largest ``α|k̃_j|²``; 1 for ``α = 0``): of
    ``h_j`` and of the sketch's columns (4D), of ``h_j [v_j, 1] k̃_jᵀ`` ((d_v + 1) x d; its
    last row ``s = Σ_j h_j k̃_j``) and of ``h_j [v_j, 1] (b_i·k̃_j)(b'_i·k̃_j)``
    ((d_v + 1) x D), kept cumulative over blocks of 256 keys (formed once per sequence by
    GEMMs in the stored dtype on the worker threads, accumulated in float64); :meth:`at`
    adds the rest of a row's last block."""

    def __init__(self, sketch, Kk, Vx, keys_ok, kk, alpha):
        self.sketch, self.Kk, self.Vx = sketch, Kk, Vx
        log_h = np.where(keys_ok, alpha * kk, -np.inf)
        self.top = float(log_h.max()) if keys_ok.any() and alpha else 0.0
        self.h = np.exp(log_h - self.top)  # 0 at hidden keys
        L = Kk.shape[0]
        n_blocks = -(-L // _SUM_BLOCK)
        n_sk, width = sketch.A.shape[0], Vx.shape[1]
        cols = np.zeros((n_blocks + 1, 1 + 4 * n_sk))
        G = np.zeros((n_blocks + 1, width, Kk.shape[1]))
        U = np.zeros((n_blocks + 1, width, n_sk))

        def block(rows):
            for b in range(rows.start, rows.stop):
                lo = b * _SUM_BLOCK
                cols[b + 1], G[b + 1], U[b + 1] = self._sums(lo, min(lo + _SUM_BLOCK, L))

        map_row_blocks(block, n_blocks, 8)
        # [k] holds the keys j < k * _SUM_BLOCK
        self.cumulative = [np.cumsum(a, axis=0) for a in (cols, G, U)]

    def _sums(self, lo, hi):
        columns, n_sk = self.sketch.columns, self.sketch.A.shape[0]
        h = self.h[lo:hi].astype(columns.dtype)
        values = self.Vx[lo:hi] * h[:, None]
        return (
            np.concatenate([[self.h[lo:hi].sum()], h @ columns[lo:hi]]),
            values.T @ self.Kk[lo:hi],
            values.T @ columns[lo:hi, 3 * n_sk :],
        )

    def at(self, limits):
        """Per row, over its keys ``j < limits[r]``: ``Σ_j h_j`` (rows), and the three sums
        :func:`_uniform_controls` takes (rows x ...)."""
        ends, where = np.unique(limits, return_inverse=True)
        first = ends // _SUM_BLOCK
        out = [a[first] for a in self.cumulative]
        with _blas_one_thread():
            for e in np.flatnonzero(ends % _SUM_BLOCK):
                rest = self._sums(first[e] * _SUM_BLOCK, ends[e])
                for total, part in zip(out, rest, strict=True):
                    total[e] += part
        cols, G, U = (a[where] for a in out)
        return cols[:, 0], (cols[:, 1:], G, U)


def _uniform_controls(sign_gamma, gamma, key_sums, A, y, raw_shift, scale):
    """Zero-mean control variates for the sketch's samples of a sign whose ``e`` does not
    depend on the logits (:func:`_uniform_signs`: the hyperbolic map's ``-ω``, the
    trigonometric map's ``+ω``, FAVOR++'s hyperbolic map's ``-ω``), per row and sample
    (rows x D x 2, already times the sign's ``scale``); ``key_sums`` from
    :meth:`_KeySums.at`, ``A`` the sketch's ``a_i``.

    With ``e_j = c h_j`` (``c = e^{-shift}``, ``h_j`` the key's weight in the sums), the
    sign's ``M = c Σ_j h_j (v_j - y) k̃_jᵀ = c (G - y sᵀ)`` (``G = Σ_j h_j v_j k̃_jᵀ``,
    ``s = Σ_j h_j k̃_j`` over the row's visible keys) is known, and so is ``E X_i² =
    ‖M‖²``; and ``Y_i = a_i·m_i`` with ``m_i = c Σ_j h_j (v_j - y) (b_i·k̃_j)(b'_i·k̃_j)``,
    so ``E[Y_i² | b_i, b'_i] = |m_i|²``. The controls are ``σγ (X_i² - ‖M‖²)`` and
    ``γ²/2 (Y_i² - |m_i|²)``, with ``X_i``, ``Y_i`` formed from the sums of the sketch's
    columns over the row's keys as the kernel forms the samples.
    At small ``|q|, |k|`` the other sign's weights are nearly flat too, so its samples move
    with this sign's (correlation -0.93 to -0.999 measured at |q|, |k| ~ 0.25 N(0, 1)), and
    regressing the samples' mean on these controls (:func:`_controlled_mean`) removes most
    of the sketch's noise from their difference.
    """
    col_sums, G, U = key_sums
    n_sk, d_v = A.shape
    c = np.exp(-raw_shift)
    yr = y[:, :d_v]
    ay = yr @ A.T  # a_i·y
    X = c[:, None] * (col_sums[:, :n_sk] - ay * col_sums[:, n_sk : 2 * n_sk])
    Y = c[:, None] * (col_sums[:, 2 * n_sk : 3 * n_sk] - ay * col_sums[:, 3 * n_sk :])
    # ‖G - y sᵀ‖² and |u_i - y t_i|² without forming a matrix per row.
    yy = np.einsum("ij,ij->i", yr, yr)
    Gv, s = G[:, :d_v], G[:, d_v]
    Gs = np.einsum("rkd,rd->rk", Gv, s)
    M2 = c**2 * (np.sum(Gv**2, axis=(1, 2)) - 2.0 * np.einsum("rk,rk->r", yr, Gs))
    M2 += c**2 * yy * np.einsum("rd,rd->r", s, s)
    Uv, t = U[:, :d_v], U[:, d_v]
    m2 = np.sum(Uv**2, axis=1) - 2.0 * np.einsum("rk,rki->ri", yr, Uv) * t + yy[:, None] * t**2
    m2 *= (c**2)[:, None]
    out = np.empty((y.shape[0], n_sk, 2))
    out[:, :, 0] = (scale * sign_gamma)[:, None] * (X * X - M2[:, None])
    out[:, :, 1] = (scale * 0.5 * gamma**2)[:, None] * (Y * Y - m2)
    return out


def _controlled_mean(samples, controls):
    """The mean of ``samples`` (D,) regressed on zero-mean ``controls`` (D x p): the
    estimate ``mean - mean(controls) β`` with least-squares ``β``, ``β``, the estimate's
    jackknife variance over the samples (it counts ``β``'s own noise: with D = 16 and two
    controls the residuals' spread alone covered 1.7-1.8x too little over 40 seeds of the
    hyperbolic map at |q|, |k| ~ 0.25 N(0, 1), the jackknife 0.9-1.1x), and the share of
    the samples' spread the controls explain (R²), and the estimates leaving out each
    sample in turn."""

    def fit(f, g):
        centred = g - g.mean(axis=0)
        beta = np.linalg.lstsq(centred, f - f.mean(), rcond=None)[0]
        return f.mean() - g.mean(axis=0) @ beta, beta

    estimate, beta = fit(samples, controls)
    n = samples.size
    leave_one_out = np.array(
        [fit(np.delete(samples, i), np.delete(controls, i, axis=0))[0] for i in range(n)]
    )
    variance = (n - 1) / n * float(np.sum((leave_one_out - leave_one_out.mean()) ** 2))
    centred = samples - samples.mean()
    residual = centred - (controls - controls.mean(axis=0)) @ beta
    total = float(centred @ centred)
    explained = 1.0 - float(residual @ residual) / total if total > 0 else 0.0
    return float(estimate), beta, variance, min(max(explained, 0.0), 1.0), leave_one_out


def _table_range(z_max):
    """The range ``[0, top]`` of the coupling's tables for the largest ``z`` a call reads:
    ``z_max`` rounded up to a power of ``√2`` (sequences and calls with similar norms then
    share one table, at most ``√2`` coarser), itself where it is not finite."""
    top = max(z_max, 1e-12)
    if not top < 1e300:
        return top
    return 2.0 ** (math.ceil(2.0 * math.log2(top)) / 2.0)


@functools.lru_cache(maxsize=16)
def _coupling_tables(c, d, trig, top, signs):
    """``_Coupling``'s tables on ``[0, top]`` (read-only; cached: the series costs ~1 ms
    per table, and every sequence of a call, and every call on similar data, reads the
    same one). Per sign of the map, rows: values, slopes (the last slope is never read).
    """
    grid = np.linspace(0.0, top, _SPLINE_NODES)
    fine = np.linspace(0.0, top, _TABLE_NODES)

    def table(values):
        # A cubic spline, tabulated finely once, then read by linear interpolation on the
        # uniform table (an index, not a search: this runs on every (row, key)).
        ys = interpolate.CubicSpline(grid, values)(fine)
        out = np.stack([ys, np.append(np.diff(ys), 0.0)])
        out.setflags(write=False)
        return out

    # M_c (trigonometric) or log M_c at the cosines c and, for maps that pair ±ω, -c (the
    # pair form and the curvature read c's only). Orthogonal blocks (c = 0) have one table
    # for both.
    moment = _trig_moment if trig else (lambda z, c, d: log_moment_series(z, d, c))
    tables = {1: table(moment(grid, c, d))}
    if -1 in signs:
        tables[-1] = tables[1] if c == 0 else table(moment(grid, -c, d))
    return tables


def _trig_moment(z, c, d):
    """The trigonometric map's ``M_c(z)`` (``_Coupling``), by 64-point Gauss-Legendre
    quadrature over the angle."""
    x, w = special.roots_legendre(64)
    phi = 0.25 * np.pi * (x + 1.0)
    log_w = np.log(w) + (d - 1) * np.log(np.sin(phi))
    weight = np.exp(log_w - special.logsumexp(log_w))
    half = 0.5 * z[:, None] * (1.0 + c * np.sin(phi)[None, :])
    # Kummer: 1F1(d; d/2; -x) = e^{-x} 1F1(-d/2; d/2; x).
    vals = np.exp(z[:, None] - half) * special.hyp1f1(-0.5 * d, 0.5 * d, half)
    return vals @ weight


class _Coupling:
    """``χ``, the covariance of two projections of one block at cosine ``c`` (relative).

    On the diagonal (two estimates of one entry, ``|a|² = z``) it is exact: for the
    exponential maps ``log M_c(z)`` by the positive series of
    :func:`favorkit.theory.pair_covariance` (any GERF ``A``); for the trigonometric map
    ``M_c(z) = e^z E_φ[₁F₁(d; d/2; -(z/2)(1 + c sin φ))]`` (the same derivation with
    ``a -> i a``; it can be negative, so it is kept as it is). Maps that pair ``±ω``
    average ``M_c`` and ``M_{-c}``. Between different keys (``a ≠ b``) the log-moment is
    carried over as ``λ σ a·b + (log M_c(|a||b|) - λ|a||b|) (d cos²θ - 1)/(d - 1)``, exact
    at ``a = b`` and right to second order in the projections' cosines (``λ = c (E r)²/d``
    from ``E[(ω_i·a)(ω_j·b)]``, ``r ~ χ_d``; for the trigonometric map, whose ``M`` can
    change sign, ``M - 1`` is carried over the same way instead of ``log M``).
    The spline of the diagonal covers ``[0, z_max]``.
    """

    def __init__(self, c, d, trig, z_max, signs):
        self.c, self.d, self.trig, self.signs = c, d, trig, signs
        top = _table_range(z_max)
        self.step = (_TABLE_NODES - 1) / top
        self.tables = _coupling_tables(c, d, trig, top, tuple(signs))
        mean_r_sq = 2.0 * np.exp(2.0 * (special.gammaln(0.5 * (d + 1)) - special.gammaln(0.5 * d)))
        self.linear = (-1.0 if trig else 1.0) * c * mean_r_sq / d

    def _read(self, sign, z):
        ys, slopes = self.tables[sign]
        t = np.clip(z * self.step, 0.0, _TABLE_NODES - 1.000001)
        i = t.astype(np.intp)
        return ys[i] + (t - i) * slopes[i]

    def kernel_tables(self):
        """The log-moment tables at ``(c, -c)`` as one (2, 2, nodes) array (values, slopes)
        for :mod:`favorkit._kernels.accuracy` (exponential maps only)."""
        if self.trig:
            raise ValueError("the kernels read log-moment tables (exponential maps only).")
        return np.stack([self.tables[1], self.tables.get(-1, self.tables[1])])

    def diag(self, z):
        """``χ`` of two estimates of one entry at ``z = |a|²``."""
        if self.trig:
            return np.mean([self._read(s, z) for s in self.signs], axis=0) - 1.0
        if len(self.signs) == 1:
            return np.expm1(self._read(self.signs[0], z))
        logs = [self._read(s, z) for s in self.signs]
        return np.expm1(special.logsumexp(logs, axis=0) - np.log(len(self.signs)))

    def curvature(self, z):
        """``ψ(z)/z²`` with ``ψ = log M_c`` (``M_c - 1`` for the trigonometric map): the
        coefficient of the second-order pair form; ``-1/(2(d+2))`` as ``z -> 0``."""
        z = np.asarray(z, dtype=np.float64)
        small = z < 1e-6
        zs = np.where(small, 1.0, z)
        psi = self._read(1, zs) - 1.0 if self.trig else self._read(1, zs)
        psi = psi - self.linear * zs
        return np.where(small, -0.5 / (self.d + 2), psi / zs**2)

    def pair(self, za, zb, s):
        """``χ`` of the estimates of two entries with ``|a|² = za``, ``|b|² = zb``,
        ``a·b = s``."""
        zhat = np.sqrt(za * zb)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos2 = np.where(zhat > 0, (s / np.where(zhat > 0, zhat, 1.0)) ** 2, 1.0)
        weight = (self.d * np.minimum(cos2, 1.0) - 1.0) / max(self.d - 1, 1)
        if self.trig:  # M may be negative: carried over linearly, not in logs
            rest = (self._read(1, zhat) - 1.0 - self.linear * zhat) * weight
            return np.mean([self.linear * sigma * s + rest for sigma in self.signs], axis=0)
        rest = (self._read(1, zhat) - self.linear * zhat) * weight
        logs = [self.linear * sigma * s + rest for sigma in self.signs]
        return np.expm1(special.logsumexp(logs, axis=0) - np.log(len(self.signs)))


def _lognormal_excess_kurtosis(log1p_relvar):
    s = np.minimum(log1p_relvar, 150.0)
    return np.exp(4 * s) + 2 * np.exp(3 * s) + 3 * np.exp(2 * s) - 6


def quick_noise_ratio(Qf, Kf, Vf, mask, causal, root, fmap, m, fitted, n_rows=8, n_keys=128):
    """A rough prediction of how noisy FAVOR's output is, from a few rows and sampled keys.

    The check behind :class:`~favorkit.AccuracyWarning`. For ``n_rows`` query rows and
    ``n_keys`` of each row's visible keys drawn uniformly with replacement (sums scaled to
    the whole key set: a sum over the sample of ``n`` out of ``L`` keys carries ``n/L`` of
    the full one), the predicted squared error of the output row (iid couplings, exact
    one-projection covariances without key-key interactions) is compared with the spread
    of what the row averages, ``Σ_j p_j |v_j - y|²`` (the attention-weighted variance of the
    values). Costs O(n_rows n_keys (d + d_v)) in one pass of
    :func:`favorkit._kernels.accuracy.noise_rows`, whatever L is, and is deterministic (a
    fixed seed).

    Returns
    -------
    ratio : float
        ``sqrt(Σ_rows predicted squared error / Σ_rows spread)``.
    heavy : bool
        The rows whose normalizer is heavy-tailed at this m carry over a tenth of it.
    needed : float
        The m at which ``ratio`` would be 1/2.
    """
    rng = np.random.default_rng(0)
    n_seq, Lq, d = Qf.shape
    Lk = Kf.shape[1]
    seqs, rows, _, _ = sample_rows(n_seq, Lq, n_rows, rng)
    picks, counts, keep = [], [], []
    for n, i in zip(seqs, rows, strict=True):
        last = min(Lk, i + 1) if causal else Lk
        if mask is None:  # the visible keys are 0..last-1: a draw is its own key
            picks.append(rng.integers(0, last, size=n_keys))
            counts.append(last)
            keep.append((n, i))
            continue
        visible = np.flatnonzero(~mask[n, :last])
        if visible.size:
            picks.append(visible[rng.integers(0, visible.size, size=n_keys)])
            counts.append(visible.size)
            keep.append((n, i))
    if not keep:
        return 0.0, False, 1.0
    seqs, rows = np.array(keep).T
    picks = np.array(picks)
    share = n_keys / np.array(counts, dtype=np.float64)
    U = Qf[seqs, rows].astype(np.float64) * root
    if fitted is not None or fmap.fitted:
        K = Kf[seqs[:, None], picks].astype(np.float64) * root  # (rows, keys, d)
        params = fitted or fmap.fit(Moments.of(U), Moments.of(K.reshape(-1, d)))
    else:
        params = MapParams.identity(d)
    sm = fmap.second_moment(d, params.a)
    sums = np.empty((len(rows), 3))
    moment = np.array([sm.alpha, sm.gamma, float(sm.pair_sign), sm.log_const])
    signs = np.array(sm.signs, dtype=np.float64)
    psi = np.ascontiguousarray(np.broadcast_to(params.psi, (d,)), dtype=np.float64)
    acc_kernels.noise_rows(
        U * params.psi, Kf, Vf, seqs, picks, root, psi, share, moment, signs, sums
    )
    single, relvar, spread = sums.T
    with np.errstate(over="ignore", invalid="ignore"):
        relvar = np.maximum(relvar - 1.0, 0.0)
        err = single / m
        spread_sum = float(spread.sum())
        if not spread_sum > 0:
            return 0.0, False, 1.0
        kurt = _lognormal_excess_kurtosis(np.log1p(relvar))
        unreliable = (kurt / m > _KURTOSIS_LIMIT) | (relvar / m > _NONLINEAR)
        err_sum = float(np.sum(err))
        ratio = math.sqrt(max(err_sum, 0.0) / spread_sum)
        heavy = not math.isfinite(err_sum) or float(err[unreliable].sum()) > _HEAVY_SHARE * err_sum
        needed = m * err_sum / (0.25 * spread_sum) if math.isfinite(err_sum) else math.inf
    return ratio, bool(heavy), needed


def predict_attention_error(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    n_components: int = 256,
    *,
    estimator: AttentionEstimator = "positive",
    projection: str = "orthogonal",
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: ArrayLike | None = None,
    n_queries: int = 32,
    n_pairs: int = 256,
    random_state: RandomStateLike = 0,
) -> AttentionError:
    """Predict the error of FAVOR attention from the closed forms, without redraws.

    The expected squared error of each sampled output row to first order in the kernel
    estimates' relative errors (the module docstring: the exact one-projection covariances
    of the map, the coupling of orthogonal or simplex blocks, key pairs summed exactly where
    they factorize, sketched to second order in ``k̃_j·k̃_l`` and sampled past it where they
    do not).

    Parameters
    ----------
    Q : array-like of shape (..., L_q, d)
    K : array-like of shape (..., L_k, d)
    V : array-like of shape (..., L_k, d_v)
    n_components : int, default=256
        Number of random projections m.
    estimator : {"positive", "hyperbolic", "trig", "optimal", "saderf", \
            "optimal_hyperbolic"}, default="positive"
        As in :func:`~favorkit.favor_attention`. The fitted maps take their parameters per
        sequence (bidirectional) or from all of Q and K (causal, as
        ``FavorAttention.fit(Q, keys=K)``).
    projection : {"orthogonal", "iid", "gaussian", "simplex"}, default="orthogonal"
        The couplings with a closed form (``"trig"``: ``"iid"`` only).
    causal : bool, default=False
    scale : float or None, default=None
        Logit scale; None means ``1/sqrt(d)``.
    key_padding_mask : bool array, default=None
        As in :func:`~favorkit.favor_attention` (True = padded).
    n_queries : int, default=32
        Query rows sampled (over all sequences and heads). Causal attention samples them
        stratified by position, in ranges of geometrically growing width that share the
        rows equally (an early row averages few values and carries a large share of
        ``‖Y‖²``; small ranges are taken whole).
        The cost is about linear in it: at d = 64, m = 256 the default costs about one
        attention call, each further 32 rows about half of one (any L). Their sampling
        error is part of ``standard_error``; raise it where that is not small next to
        ``relative_error``.
    n_pairs : int, default=256
        Key pairs sampled per row for the key-key interactions past second order in
        ``k̃_j·k̃_l`` (and for the second-order part, mixed with the sketch's estimate of
        it). Their sampling error is part of ``standard_error``; raise it where that is not
        small next to ``relative_error`` (cost: linear in it).
    random_state : int, Generator or None, default=0
        Seeds the row and pair samples and the sketch (not a projection: there is none).

    Returns
    -------
    AttentionError
        ``kind="predicted"``; ``relative_error_at(m)`` and ``features_needed(target)``
        extrapolate to other m.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit.accuracy import predict_attention_error
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(scale=0.5, size=(2, 512, 16))
    >>> V = rng.normal(size=(512, 16))
    >>> err = predict_attention_error(Q, K, V, 256)
    >>> bool(err.relative_error < 0.5), err.heavy_tailed
    (True, False)
    >>> m = err.features_needed(0.05)
    >>> bool(err.relative_error_at(m) <= 0.05 < err.relative_error_at(m - 1))
    True
    """
    fmap = resolve_estimator(estimator, projection)
    if isinstance(projection, str) and projection == "gaussian":
        projection = "iid"
    if not isinstance(projection, str) or projection not in COUPLINGS:
        raise ValueError(
            'projection must be "iid", "orthogonal" or "simplex" (the couplings with a closed '
            "form); measure_attention_error measures any projection."
        )
    if projection != "iid" and fmap.second_moment(1).pair_sign < 0:
        # Its coupled moment changes sign, and the pair sums then cancel to noise.
        raise ValueError(
            'the trigonometric estimator\'s error is predicted for projection="iid" only; '
            "measure_attention_error measures it with any projection."
        )
    m = check_count(n_components, "n_components")
    n_queries = check_count(n_queries, "n_queries")
    n_pairs = check_count(n_pairs, "n_pairs", minimum=2)
    Qf, Kf, Vf, mask, _, _ = prepare(Q, K, V, key_padding_mask, causal)
    for X, name in ((Qf, "Q"), (Kf, "K"), (Vf, "V")):
        check_finite(X, name)
    d = Qf.shape[2]
    root = math.sqrt(resolve_scale(scale, d))
    causal_params = None
    if causal and fmap.fitted:  # as FavorAttention.fit(Q, keys=K) fits them
        causal_params = fmap.fit(
            Moments.of(Qf.reshape(-1, d).astype(np.float64), root**2),
            Moments.of(Kf.reshape(-1, d).astype(np.float64), root**2),
        )
    with _blas_one_thread():  # once for the call's parallel steps (each would set it again)
        return predict_rows(
            Qf, Kf, Vf, mask, causal, root, fmap, projection, m, n_queries, n_pairs,
            sampling.resolve_rng(random_state), causal_params,
        )  # fmt: skip


def predict_rows(
    Qf, Kf, Vf, mask, causal, root, fmap, projection, m, n_queries, n_pairs, rng,
    causal_params=None,
):  # fmt: skip
    """:func:`predict_attention_error` on checked (N, L, d) arrays: ``root`` is
    ``sqrt(scale)``, ``causal_params`` the fitted maps' parameters for causal attention."""
    n_seq, Lq, d = Qf.shape
    Lk = Kf.shape[1]
    seqs, rows, weights, strata = sample_rows(n_seq, Lq, n_queries, rng, causal)
    dtype = np.result_type(Qf, Kf, Vf, np.float32)
    # Values far from 1 in units of a power of two near their largest visible one (exact):
    # the relative error does not depend on them, and |y|² and the float32 GEMMs' sums then
    # stay in range up to the dtype's end (a padded key's value may be anything).
    top = max_abs(Vf if mask is None else Vf[~mask])  # (np.abs: a temporary as large as V)
    unit = 1.0
    if top > 0 and not 2.0**-60 < top < 2.0**60:
        unit = 2.0 ** math.floor(math.log2(top))
        Vf = Vf / np.asarray(unit, Vf.dtype)
    c = coupling_cosine(projection, d)
    pairs = float(pair_count(np.int64(m), d, projection))
    # Per seen row: single's 3 parts, their 3 variances, the same for cross, |y|², weight,
    # unreliable, the means of its two sketch controls, its stratum.
    parts = []
    relvar_rows = []
    # Each sketch sample's key-pair terms, summed over rows (single, coupled).
    firsts = np.zeros((2, _SKETCH))
    controls = np.zeros((2, _SKETCH, 2))  # the same for the controls (_uniform_controls)
    for n in np.unique(seqs):
        keys_ok = np.ones(Lk, bool) if mask is None else ~mask[n]
        if causal_params is None and fmap.fitted:
            Ks = Kf[n].astype(np.float64) * root
            params = _sequence_params(fmap, Qf[n].astype(np.float64) * root, Ks, keys_ok)
        else:
            params = causal_params or MapParams.identity(d)
        sm = fmap.second_moment(d, params.a)
        # The sequence's key rows and sketch in this thread's scratch buffers (dead after it).
        with scratch() as empty:
            U_all = Qf[n, rows[seqs == n]].astype(np.float64) * (root * params.psi)
            triples = Sketch.triples(rng, Vf.shape[2], d)
            Kk, kk, Vx, vv, center, sketch = _key_rows(
                Kf[n], Vf[n], root, params.psi, keys_ok, triples, dtype, empty
            )
            if Kk.dtype == np.float32 and not _float32_is_safe(U_all, kk, vv):
                Kk, kk, Vx, vv, center, sketch = _key_rows(
                    Kf[n], Vf[n], root, params.psi, keys_ok, triples
                )
            U_all = U_all.astype(Kk.dtype)
            coupled = None
            if c is not None:
                z_max = float((np.sqrt((U_all**2).sum(1).max()) + np.sqrt(kk.max())) ** 2)
                coupled = _Coupling(c, d, sm.pair_sign < 0, z_max, sm.signs)
            key_sums = None
            if _uniform_signs(sm):
                key_sums = _KeySums(sketch, Kk, Vx, keys_ok, kk, sm.alpha)
            seq_rows = rows[seqs == n]
            for start in range(0, seq_rows.size, _QUERY_CHUNK):
                r = seq_rows[start : start + _QUERY_CHUNK]
                # Row i sees the keys j <= i (causal) or all, less the padded ones.
                limits = np.minimum(r + 1, Lk) if causal else np.full(r.size, Lk)
                U = U_all[start : start + _QUERY_CHUNK]
                out = _rows_error(
                    sm, coupled, U, Kk, Vx, vv, kk, keys_ok, limits.astype(np.int64), rng, n_pairs,
                    center, sketch, key_sums,
                )  # fmt: skip
                single, single_var, cross, cross_var, relvar, y2, s_first, c_first, ctrl, seen = out
                row_w = weights[seqs == n][start : start + _QUERY_CHUNK]
                row_strata = strata[seqs == n][start : start + _QUERY_CHUNK]
                with np.errstate(invalid="ignore", over="ignore"):
                    firsts += np.stack([row_w @ s_first, row_w @ c_first])
                    controls += np.tensordot(row_w, ctrl, axes=1)
                kurt = _lognormal_excess_kurtosis(np.log1p(relvar))
                unreliable = (kurt / m > _KURTOSIS_LIMIT) | (relvar / m > _NONLINEAR)
                relvar_rows.append(relvar[seen])
                parts.append(
                    np.hstack(
                        [
                            single,
                            single_var,
                            cross,
                            cross_var,
                            np.stack([y2, row_w, unreliable], 1),
                            ctrl.mean(axis=2).reshape(-1, 4),
                            row_strata[:, None],
                        ]
                    )[seen]
                )
    parts = np.concatenate(parts)
    y2, w, unreliable, row_strata = parts[:, 12], parts[:, 13], parts[:, 14] > 0, parts[:, 19]
    n_seen = y2.size
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # Each row stands for w rows of the population: its sums count w times, the
        # variances of its sampled key pairs w² times.
        single, single_var, s_sketch, s_out = mix_sketch(
            parts[:, 0:3], parts[:, 3:6], firsts[0], w, controls[0], parts[:, 15:17]
        )
        cross, cross_var, c_sketch, c_out = mix_sketch(
            parts[:, 6:9], parts[:, 9:12], firsts[1], w, controls[1], parts[:, 17:19]
        )
        row_err = single / m + pairs / m**2 * cross
        # Not finite only where terms overflowed (inf, or inf - inf): an unbounded error.
        row_err = np.where(np.isfinite(row_err), row_err, np.inf)
        sq_err = max(float(w @ row_err), 0.0)
        out_sq = float(w @ y2)
        rel = math.sqrt(sq_err / out_sq) if out_sq > 0 else math.inf
        var_sq = (w * w) @ (single_var / m**2 + (pairs / m**2) ** 2 * cross_var)
        var_sq += row_sampling_variance(row_err, y2, w, row_strata)
        # The sketch's samples are shared by the rows of a sequence (independent across
        # sequences): the variances of the means of their sums over rows, and their
        # covariance between the sets (which share the sketch's triples).
        s_sd, c_sd = math.sqrt(s_sketch) / m, pairs / m**2 * math.sqrt(c_sketch)
        rho = sketch_correlation(s_out, c_out)
        var_sq += s_sd * s_sd + c_sd * c_sd + 2.0 * rho * s_sd * c_sd
        se = relative_standard_error(sq_err, var_sq, out_sq)
        if math.isnan(se) or not math.isfinite(rel):
            se = math.inf  # an unbounded prediction (or its spread) has no finite error
        share = float(w[unreliable] @ row_err[unreliable]) / sq_err if sq_err else 0.0
        single, cross = (float(np.nan_to_num(w @ a, nan=np.inf)) for a in (single, cross))
    relvar_all = np.concatenate(relvar_rows) if relvar_rows else np.zeros(1)
    heavy = not math.isfinite(sq_err) or share > _HEAVY_SHARE
    reason = ""
    if heavy:
        reason = (
            f"the normalizer's one-projection relative variance reaches "
            f"{float(np.max(relvar_all)):.3g} (median {float(np.median(relvar_all)):.3g}) against "
            f"m = {m}: the expected error is carried by rare draws (or the first-order "
            "expansion fails), so the number is an order of magnitude at best and the "
            "attention mostly noise; smaller |q|, |k| (a lower scale), more features, or "
            "FAVOR++/SADERF help"
        )
    return AttentionError(
        kind="predicted",
        estimator=fmap.name,
        projection=projection,
        n_components=m,
        relative_error=float(rel),
        mse=float(sq_err / max(float(w.sum()) * Vf.shape[2], 1)) * unit * unit,
        standard_error=se,
        heavy_tailed=bool(heavy),
        reason=reason,
        n_queries=int(n_seen),
        _single=float(single),
        _coupled=float(cross),
        _output_sq=float(out_sq) if out_sq > 0 else 1.0,
        _block=d,
    )


def mix_sketch(sums, variances, first, weights, controls=None, row_controls=None):
    """Per row, a set's sum with its key pairs' second-order part taken ``β`` from the
    sketch and ``1 - β`` from the pairs, and the variance of its sampled part; ``β`` (in
    [0, 1]) minimizes the variance of the weighted total; and the sketch's variance times
    ``β²``.

    ``sums``, ``variances``: :func:`_rows_error`'s (rows x 3); ``first`` the sketch's
    samples summed over rows with ``weights``. The second-order part ``h`` serves as a
    control variate of the sampled pairs: with ``C_hh = Σ w² var h``, ``C_h = Σ w² cov(h,
    rest + h)`` and the sketch's variance ``V``, ``β = C_h / (C_hh + V)``. Long sequences
    (many keys, sampled pairs that cancel) take it from the sketch, short ones from the
    pairs, whose variance there is below the sketch's.

    ``V`` is the spread of the sketch's samples, but at least ``2 X̄²/D``: a sample
    ``(aᵀ M b)²`` is, given ``b``, ``|M b|²`` times a χ²₁, whose variance is at least twice
    its squared mean; with few samples their spread alone would often be far below it.
    With ``controls`` (D x 2, summed over rows as ``first``; ``row_controls`` each row's
    means), the samples' mean is regressed on them (:func:`_uniform_controls`,
    :func:`_controlled_mean`) and ``V`` is that estimate's jackknife variance, but at least
    the floor above times the share of the spread the controls leave (``1 - R²``).
    Also returned: the sketch's estimate leaving out each sample in turn (for
    :func:`sketch_correlation`).
    """
    var_rest, var_h, cov = variances.T
    w2 = weights * weights
    spread = float(np.var(first, ddof=1)) if first.size > 1 else 0.0
    centre = float(np.mean(first))
    sketch_var = max(spread, 2.0 * centre * centre) / first.size
    sketched = sums[:, 2]
    leave_one_out = (np.sum(first) - first) / max(first.size - 1, 1)
    usable = controls is not None and np.any(controls) and first.size > controls.shape[1] + 2
    if usable and np.all(np.isfinite(controls)) and np.all(np.isfinite(first)):
        # Regressed on the controls; each row's part moves by its own controls' mean
        # times the common coefficients, so that the rows still sum to the estimate.
        _, beta_c, jackknife, explained, leave_one_out = _controlled_mean(first, controls)
        sketched = sketched - row_controls @ beta_c
        # Where the controls explain little, the jackknife is the samples' spread, which
        # undercovers as above: the floor times the share the controls leave.
        sketch_var = max(jackknife, (1.0 - explained) * sketch_var)
    c_hh = float(w2 @ var_h)
    c_h = c_hh + float(w2 @ cov)
    beta = c_h / (c_hh + sketch_var) if c_hh + sketch_var > 0 else 1.0
    beta = min(max(beta, 0.0), 1.0) if math.isfinite(beta) else 1.0
    keep = 1.0 - beta
    # A part weighted 0 is left out (not multiplied: it may be inf at hostile scales).
    mixed, var = sums[:, 0].copy(), var_rest.copy()
    if keep:
        mixed += keep * sums[:, 1]
        var += 2.0 * keep * cov + keep**2 * var_h
    if beta:
        mixed += beta * sketched
    return mixed, var, beta**2 * sketch_var, leave_one_out


def sketch_correlation(single, coupled):
    """The correlation of the two sets' sketched estimates, from their estimates leaving out
    each of the sketch's samples in turn (:func:`mix_sketch`): they share the triples
    ``(a_i, b_i, b'_i)``, and at small ``|q|, |k|`` their samples move against each other
    (the single set's ``σγ X_i²`` against the coupled set's ``curv d (X_i^p)²`` with a
    negative curvature: over 12 seeds of the hyperbolic map at d = 16, L = 1024,
    ``|q|, |k| ~ 0.25 N(0, 1)`` the two sets' estimates correlated -0.39). Taken as +1 (the
    worst case), the prediction's standard error there was 2.3 times its spread over the
    seeds; with the correlation, 1.1 times. 1 where either set's estimates do not vary or
    are not finite."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a, b = single - single.mean(), coupled - coupled.mean()
        norm = math.sqrt(float(a @ a) * float(b @ b))
        rho = float(a @ b) / norm if norm > 0 else math.nan
    return min(max(rho, -1.0), 1.0) if math.isfinite(rho) else 1.0


def row_sampling_variance(row_errors, row_outputs, weights, strata):
    """The variance, from sampling the query rows, of ``Σ_i w_i err_i`` as an estimate of the
    error summed over every row (:func:`sample_rows`' weights ``w`` and strata; rows of
    weight 1 were taken with certainty). The ratio ``Σ w err / Σ w |y|²`` of a stratified
    simple random sample without replacement has the variance of a combined ratio
    estimator: per stratum, its rows' spread about the ratio times ``w² n (1 - 1/w)``
    (``1 - 1/w``: the finite population correction)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ratio = float(weights @ row_errors) / float(weights @ row_outputs)
        residual = row_errors - ratio * row_outputs
        variance = 0.0
        for k in np.unique(strata[weights > 1.0]):
            rows = strata == k
            n = int(rows.sum())
            if n < 2:
                continue
            w = float(weights[rows][0])
            variance += w * w * n * (1.0 - 1.0 / w) * float(np.var(residual[rows], ddof=1))
    return variance


def relative_standard_error(sq_err, var_sq, out_sq):
    """The standard error of ``sqrt(sq_err / out_sq)`` given the variance ``var_sq`` of
    ``sq_err``: ``d rel = d(err²) / (2 rel ‖Y‖²)``; where ``sq_err`` is within its own
    noise of 0 that noise sets the scale instead (an estimate of "0 ± that")."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        noise = math.sqrt(max(var_sq, 0.0))
        if not out_sq > 0:
            return math.inf
        if sq_err <= noise:
            return math.sqrt(noise / out_sq)
        return noise / (2.0 * math.sqrt(sq_err) * math.sqrt(out_sq))  # no underflow to 0


def comparable(predicted, measured):
    """Whether a prediction can be held to a measurement (the rule of the accuracy tests and
    of ``experiments/prediction_accuracy.py``): the prediction is below 0.5, neither is
    heavy-tailed, and the prediction's sampling noise in the squared relative error (what
    its samples estimate; ``standard_error`` converted back) is below half the *measured*
    squared error, a 25 % standard error where the two agree. Against the measurement, not
    the prediction: an upward fluctuation makes a prediction's relative noise look smaller
    and would let it through (over five prediction seeds that let 2.3-3.5x misses through).
    """
    r, se = predicted.relative_error, predicted.standard_error
    noise = max(2.0 * r * se, se**2)
    return not (
        r >= 0.5
        or predicted.heavy_tailed
        or measured.heavy_tailed
        or noise > 0.5 * measured.relative_error**2
    )


def check_count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)
