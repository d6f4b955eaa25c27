"""Checks and shapes shared by exact and FAVOR attention, and their parameter constraints."""

from __future__ import annotations

import math
import numbers

import numpy as np

from favorkit import maps, sampling
from favorkit._validation import Interval, StrOptions

__all__ = [
    "ARRAYS",
    "PARAMETERS",
    "as_array",
    "check_array",
    "check_finite",
    "check_shapes",
    "float_dtype",
    "mask_shape",
    "max_abs",
    "prepare",
    "resolve_map",
    "resolve_scale",
]

# Parameter constraints shared by FavorAttention and favor_attention (one definition, so
# both reject the same values with the same messages), and those of the arrays.
PARAMETERS = {
    "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
    "kernel": [StrOptions({"softmax"})],
    "estimator": [StrOptions(set(maps.names("attention")))],
    "activation": [StrOptions(set(maps.names("activation"))), callable, None],
    "projection": [StrOptions(set(sampling.PROJECTIONS)), "array-like", None],
    "causal": ["boolean"],
    "scale": [Interval(numbers.Real, 0.0, None, closed="neither"), None],
    "activation_epsilon": [Interval(numbers.Real, 0.0, None, closed="left")],
    "random_state": ["random_state", np.random.Generator],
}
ARRAYS = {
    "Q": ["array-like"],
    "K": ["array-like"],
    "V": ["array-like"],
    "key_padding_mask": ["array-like", None],
}


def as_array(X, name):
    return check_array(np.asarray(X), name)


def check_array(X, name):
    """A real numeric array with at least 2 dimensions (numpy or dask: only ``dtype`` and
    ``shape`` are read)."""
    if X.dtype.kind not in "fiu" or X.dtype.kind == "b":
        raise ValueError(f"{name} must be a real numeric array, got dtype {X.dtype}.")
    if X.ndim < 2:
        raise ValueError(
            f"{name} must have shape (..., L, d) with at least 2 dimensions, got shape {X.shape}."
        )
    return X


def float_dtype(*arrays):
    dtype = np.result_type(*[a.dtype for a in arrays])
    if dtype == np.float32 or (dtype.kind == "f" and dtype.itemsize < 4):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def check_shapes(Q, K, V, causal):
    """The shape rules of attention's inputs (checked arrays); returns the batch axes."""
    batch = Q.shape[:-2]
    if K.shape[:-2] != batch or V.shape[:-2] != batch:
        raise ValueError(
            "Q, K and V must have the same batch and head axes in front of (L, d); got "
            f"shapes {Q.shape}, {K.shape} and {V.shape}."
        )
    if K.shape[-1] != Q.shape[-1]:
        raise ValueError(
            f"Q and K must have the same last dimension d, got {Q.shape[-1]} and {K.shape[-1]}."
        )
    if V.shape[-2] != K.shape[-2]:
        raise ValueError(
            f"K and V must have the same length L_k (axis -2), got {K.shape[-2]} and {V.shape[-2]}."
        )
    Lq, d = Q.shape[-2:]
    Lk, dv = V.shape[-2:]
    if min(Lq, Lk, d, dv) < 1:
        raise ValueError(f"Empty input: Q {Q.shape}, K {K.shape}, V {V.shape}.")
    if causal and Lq != Lk:
        raise ValueError(
            f"Causal attention needs as many queries as keys, got L_q={Lq} and L_k={Lk}."
        )
    return batch


def mask_shape(mask, K_shape):
    """The shape that broadcasts ``key_padding_mask`` (numpy or dask) to ``(*batch, L_k)``:
    a shorter leading shape is broadcast over the trailing batch axes (the heads), not
    numpy's leading ones."""
    if mask.dtype != np.bool_:
        raise ValueError(
            "key_padding_mask must be a boolean array (True = padded key, PyTorch's "
            f"nn.MultiheadAttention convention), got dtype {mask.dtype}."
        )
    batch, Lk = K_shape[:-2], K_shape[-2]
    lead = mask.shape[:-1]
    if mask.ndim < 1 or mask.shape[-1] != Lk or lead != batch[: len(lead)]:
        raise ValueError(
            f"key_padding_mask has shape {mask.shape}; with K of shape {K_shape} it must "
            f"be (L_k,) = ({Lk},) or (*batch[:k], L_k), e.g. {(*batch, Lk)} or "
            f"{(*batch[:1], Lk)} (broadcast over the heads)."
        )
    return lead + (1,) * (len(batch) - len(lead)) + (Lk,)


def prepare(Q, K, V, key_padding_mask, causal):
    """Validate shapes, pick the dtype, flatten the batch axes: (N, L, d) views."""
    Q, K, V = as_array(Q, "Q"), as_array(K, "K"), as_array(V, "V")
    batch = check_shapes(Q, K, V, causal)
    Lk = K.shape[-2]
    dtype = float_dtype(Q, K, V)
    n = math.prod(batch)
    Qf, Kf, Vf = (np.ascontiguousarray(X, dtype=dtype).reshape(n, *X.shape[-2:]) for X in (Q, K, V))
    mask = None
    if key_padding_mask is not None:
        mask = np.asarray(key_padding_mask)
        full = mask.reshape(mask_shape(mask, K.shape))
        mask = np.ascontiguousarray(np.broadcast_to(full, (*batch, Lk))).reshape(n, Lk)
        if not mask.any():
            mask = None
    return Qf, Kf, Vf, mask, batch, dtype


def check_finite(X, name):
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf; attention needs finite inputs.")


def max_abs(X):
    return max(float(X.max(initial=0.0)), -float(X.min(initial=0.0)))


def resolve_scale(scale, d):
    if scale is None:
        return 1.0 / math.sqrt(d)
    if not isinstance(scale, numbers.Real) or not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}.")
    return float(scale)


def resolve_map(estimator, activation, projection):
    """The feature map of FAVOR attention: the ``activation``'s if one is given, else the
    ``estimator``'s; only a deterministic activation can go without a random projection."""
    fmap = maps.get(estimator if activation is None else activation)
    if projection is None and fmap.needs_projection:
        raise ValueError(
            "projection=None (no random projection) is only for deterministic activations; "
            f"{fmap.name!r} estimates a kernel and needs a projection."
        )
    return fmap
