"""Slow, obvious references for every Numba kernel in ``favorkit/_kernels``.

Each function here computes the same thing as its kernel twin with plain numpy (or plain
Python loops), written for clarity, not speed. Tests assert that the two agree in float32
and float64. Sections: feature maps, FWHT, attention.
"""

import numpy as np

# --- feature maps (favorkit/_kernels/feature_maps.py) --------------------------------------


def plus_minus_shift_rows(z, shift):
    """[z + shift, shift - z] with the shift broadcast along rows."""
    return np.concatenate([shift[:, None] + z, shift[:, None] - z], axis=1)


def cos_sin_rows(z, log_scale):
    """exp(log_scale) * [cos z, sin z]."""
    h = np.exp(log_scale)[:, None]
    return np.concatenate([np.cos(z) * h, np.sin(z) * h], axis=1)


def cos_offset_rows(z, offset, log_scale):
    """exp(log_scale) * cos(z + offset)."""
    return np.exp(log_scale)[:, None] * np.cos(z + offset[None, :])


# --- FWHT (favorkit/_kernels/fwht.py) -------------------------------------------------------


def hadamard(p):
    """The Sylvester-ordered ±1 Hadamard matrix of order p (a power of two)."""
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    return h


def fwht_rows(a):
    """Each row times the Hadamard matrix: H @ row for every row."""
    return a @ hadamard(a.shape[1]).T
