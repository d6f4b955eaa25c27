"""FAVOR attention on dask arrays, chunked along the batch/head axes and along the sequence.

One task works on one block of batch/head axes (the sequences in it, flattened as in memory)
and one chunk of positions; nothing ever holds more than a chunk of rows and the
``m x (d_v + 1)`` state of each sequence, so memory per task is O(chunk (m + d)).

* **Bidirectional** attention is a sum over keys: each key chunk gives its sequences'
  states ``φ(K)ᵀ [V 1]`` (with the engine's references: per feature column and value column
  for the exponential maps, one per key set for signed features), the states are merged
  pairwise in a tree (:func:`~favorkit.attention._engine.merge_key_states`, relative to the
  larger reference, so the order of merging changes round-off only), and each query chunk
  reads the total. The fitted maps (FAVOR++, SADERF) first sum each sequence's moments over
  its chunks in the same kind of tree and fit ``A`` (and ``Ψ``) from the totals, as one
  call over the whole sequence does.
* **Causal** attention is a chained scan: chunk ``i`` of a sequence block runs the causal
  kernel from the state chunk ``i - 1`` left (the prefix sums and their log-scale
  references, :func:`~favorkit.attention._engine.causal_chunk`), so no output depends on a
  later position. The chains of different batch blocks run in parallel.

Equality with the in-memory result: causal attention is the same computation in the same
order, bit for bit, when every chunk but the last is a multiple of
``Tuning.causal_block_rows`` (1024) positions long; other chunkings, and bidirectional
attention (whose key states are summed in another order), agree to float round-off.

The checks of an in-memory call run inside the tasks: finiteness on every chunk, the
:class:`~favorkit.AccuracyWarning` on the first chunk of each batch block (for
bidirectional attention, its queries against the first key chunk), and the count of rows
set to 0 by signed features per chunk. On a distributed cluster, warnings raised in a
task appear in the worker's log.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from favorkit._dask import dask_array
from favorkit.attention._checks import warn_if_noise, warn_nonpositive
from favorkit.attention._engine import (
    CAUSAL_GERF,
    PositiveFeatures,
    SignedFeatures,
    Tuning,
    causal_chunk,
    current_tuning,
    gerf_parameters,
    key_states,
    merge_key_states,
    read_queries,
    sequence_moments,
)
from favorkit.attention._inputs import (
    check_array,
    check_shapes,
    float_dtype,
    mask_shape,
    resolve_scale,
)
from favorkit.maps import FeatureMap, MapParams

__all__ = ["attend"]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What every task needs to build its features: small (the projection is m x d)."""

    fmap: FeatureMap
    projection: np.ndarray | None
    scale: float
    epsilon: float
    dtype: np.dtype
    tuning: Tuning
    dv: int
    causal: bool
    fitted: MapParams | None

    def features(self, params=None):
        if self.fmap.exponential:
            features = PositiveFeatures(self.fmap, self.projection, self.scale, self.dtype)
            if params is not None:
                features.set_params(params)
            return features
        return SignedFeatures(self.fmap, self.projection, self.scale, self.epsilon, self.dtype)

    def check(self, Qf, Kf, Vf, mask):
        """The AccuracyWarning check of an in-memory call, on these rows."""
        if self.fmap.attention_estimator and self.projection is not None:
            m = self.projection.shape[0]
            warn_if_noise(Qf, Kf, Vf, mask, self.causal, self.scale, self.fmap, m, self.fitted)


def _flat(X, width=None):
    """A block of shape (*batch, l, w) as (N, l, w), contiguous; None stays None."""
    if X is None:
        return None
    X = np.ascontiguousarray(X)
    return X.reshape(-1, *X.shape[-2:]) if width is None else X.reshape(-1, X.shape[-1])


def _mask(block):
    if block is None:
        return None
    mask = np.ascontiguousarray(block).reshape(-1, block.shape[-1])
    return mask if mask.any() else None


def _moments_task(q, k, mask):
    """Per-sequence column sums of a chunk's queries and of its unpadded keys (either side
    may be absent, adding nothing)."""
    Qf = _flat(q) if q is not None else None
    Kf = _flat(k) if k is not None else None
    n, d = (Qf if Qf is not None else Kf).shape[0], (Qf if Qf is not None else Kf).shape[2]
    empty = np.empty((n, 0, d))
    return sequence_moments(
        Qf if Qf is not None else empty,
        Kf if Kf is not None else empty,
        _mask(mask) if Kf is not None else None,
    )


def _sum_task(a, b):
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _params_task(spec, moments):
    return gerf_parameters(spec.fmap, spec.scale, moments)


def _key_task(spec, params, k, v, mask):
    return key_states(_flat(k), _flat(v), _mask(mask), spec.features(params), spec.tuning)


def _read_task(spec, params, q, states, first_keys):
    """One query chunk against the merged key states; the first chunk also runs the
    accuracy check against the first key chunk ``first_keys = (k, v, mask)``."""
    Qf = _flat(q)
    if first_keys is not None:
        k, v, mask = first_keys
        spec.check(Qf, _flat(k), _flat(v), _mask(mask))
    out, n_bad = read_queries(Qf, states, spec.dv, spec.features(params), spec.tuning)
    warn_nonpositive(n_bad, Qf.shape[0] * Qf.shape[1], spec.fmap)
    return out.reshape(*q.shape[:-1], spec.dv)


def _causal_task(spec, q, k, v, mask, carried):
    """One chunk of positions, going on from the states the previous chunk left."""
    Qf, Kf, Vf, maskf = _flat(q), _flat(k), _flat(v), _mask(mask)
    if carried is None:  # a sequence's first chunk: the in-memory check on its prefix
        spec.check(Qf, Kf, Vf, maskf)
    params = None if spec.fitted is None else [spec.fitted]
    out, carried, n_bad = causal_chunk(
        Qf, Kf, Vf, maskf, spec.features(params), spec.tuning, carried
    )
    warn_nonpositive(n_bad, Qf.shape[0] * Qf.shape[1], spec.fmap)
    return out.reshape(*q.shape[:-1], spec.dv), carried


def _tree(items, merge):
    """Pairwise reduction of delayed values: depth log2(len(items))."""
    while len(items) > 1:
        paired = [merge(a, b) for a, b in zip(items[::2], items[1::2], strict=False)]
        items = paired + ([items[-1]] if len(items) % 2 else [])
    return items[0]


def _as_dask(X, name, like=None):
    da = dask_array()
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        X = da.from_array(X, chunks=X.shape if like is None else like)
    return X


def attend(
    Q, K, V, projection, *, fmap, causal, scale, key_padding_mask, activation_epsilon,
    fitted_gerf,
):  # fmt: skip
    """FAVOR attention of dask arrays (any of Q, K, V, key_padding_mask): a lazy dask array
    of shape (..., L_q, d_v) chunked as Q along the batch and sequence axes."""
    import dask

    da = dask_array()
    Q, K, V = (check_array(_as_dask(X, n), n) for X, n in ((Q, "Q"), (K, "K"), (V, "V")))
    batch = check_shapes(Q, K, V, causal)
    nb = len(batch)
    dtype = float_dtype(Q, K, V)
    d, dv = Q.shape[-1], V.shape[-1]
    scale = resolve_scale(scale, d)
    fitted = None
    if causal and fmap.fitted:
        if fitted_gerf is None:
            raise ValueError(CAUSAL_GERF.format(estimator=fmap.name))
        fitted = fitted_gerf
    spec = _Spec(
        fmap, projection, scale, activation_epsilon, dtype, current_tuning(), dv, causal, fitted
    )
    # Q's chunks along the batch axes and the sequence lead; K and V follow (the same
    # positions in causal attention), with d and d_v in one chunk each.
    Q = Q.astype(dtype).rechunk({nb + 1: -1})
    key_len = Q.chunks[nb] if causal else K.chunks[nb]
    K = K.astype(dtype).rechunk((*Q.chunks[:nb], key_len, -1))
    V = V.astype(dtype).rechunk((*Q.chunks[:nb], key_len, -1))
    mask = None
    if key_padding_mask is not None:
        mask = _as_dask(key_padding_mask, "key_padding_mask")
        mask = mask.reshape(mask_shape(mask, K.shape))
        mask = da.broadcast_to(mask, (*batch, K.shape[-2])).rechunk(K.chunks[:-1])
    # Not optimized one by one: Q, K and V often share their inputs (one block of data, or
    # X projected three ways), which per-array fusion would compute once for each of them.
    # The graph is optimized as a whole when the result is computed.
    q_blocks, k_blocks, v_blocks = (X.to_delayed(optimize_graph=False)[..., 0] for X in (Q, K, V))
    m_blocks = None if mask is None else mask.to_delayed(optimize_graph=False)
    n_q, n_k = len(Q.chunks[nb]), len(K.chunks[nb])
    spec_key = dask.delayed(spec, pure=True)

    def delayed(func, **kwargs):
        return dask.delayed(func, pure=True, **kwargs)

    out_blocks = np.empty((*Q.numblocks[:nb], n_q, 1), dtype=object)
    for b in np.ndindex(*Q.numblocks[:nb]):
        masks = [None] * n_k if m_blocks is None else [m_blocks[(*b, j)] for j in range(n_k)]
        keys = [(k_blocks[(*b, j)], v_blocks[(*b, j)], masks[j]) for j in range(n_k)]
        shape = tuple(Q.chunks[a][i] for a, i in enumerate(b))
        if causal:
            carried = None
            for i in range(n_q):
                task = delayed(_causal_task, nout=2)(spec_key, q_blocks[(*b, i)], *keys[i], carried)
                out, carried = task
                out_blocks[(*b, i, 0)] = _block(out, (*shape, Q.chunks[nb][i], dv), dtype)
            continue
        params = None
        if fmap.fitted:
            parts = [delayed(_moments_task)(q_blocks[(*b, i)], None, None) for i in range(n_q)]
            parts += [delayed(_moments_task)(None, k, msk) for k, _, msk in keys]
            params = delayed(_params_task)(spec_key, _tree(parts, delayed(_sum_task)))
        states = _tree(
            [delayed(_key_task)(spec_key, params, *kv) for kv in keys], delayed(merge_key_states)
        )
        for i in range(n_q):
            first = keys[0] if i == 0 else None
            out = delayed(_read_task)(spec_key, params, q_blocks[(*b, i)], states, first)
            out_blocks[(*b, i, 0)] = _block(out, (*shape, Q.chunks[nb][i], dv), dtype)
    return da.block(out_blocks.tolist())


def _block(value, shape, dtype):
    meta = np.empty((0,) * len(shape), dtype=dtype)
    return dask_array().from_delayed(value, shape=shape, dtype=dtype, meta=meta)
