"""Argument checks shared by the closed forms (one place for each)."""

from __future__ import annotations

import numpy as np

from favorkit._typing import ArrayLike, NDArray

__all__ = ["as_pairs", "check_a", "check_d", "check_z", "projection_count", "projections"]


def as_pairs(x: ArrayLike, y: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``x`` and ``y`` as float64 arrays of pairs ``(..., d)`` with the same last axis."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError("x and y must have a last axis holding the d coordinates.")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same last axis, got {x.shape} and {y.shape}.")
    return x, y


def projections(m: ArrayLike) -> NDArray[np.float64]:
    """A number of projections m >= 1 as float64 (the paper's formulas take real m)."""
    m = np.asarray(m, dtype=np.float64)
    if np.any(~(m >= 1)):
        raise ValueError("m (the number of random projections) must be >= 1.")
    return m


def projection_count(m: ArrayLike) -> NDArray[np.int64]:
    """A whole number of projections m >= 1 as int64 (block counts need integers)."""
    m = np.asarray(m)
    if m.dtype.kind not in "iu" and not np.all(m == np.round(m)):
        raise ValueError("m must be an integer number of projections.")
    if np.any(m < 1):
        raise ValueError("m (the number of random projections) must be >= 1.")
    return m.astype(np.int64)


def check_d(d: int) -> int:
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}.")
    return int(d)


def check_a(a: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(a, dtype=np.float64)
    if np.any(~(a < 0.125)):
        raise ValueError(
            "the GERF parameter A must be < 1/8 (1 - 8A > 0), otherwise the variance is "
            f"infinite; got A up to {np.max(a):.6g}."
        )
    return a


def check_z(z: ArrayLike) -> NDArray[np.float64]:
    z = np.asarray(z, dtype=np.float64)
    if np.any(~(z >= 0)):
        raise ValueError("z = |u + v|² must be finite and >= 0.")
    return z
