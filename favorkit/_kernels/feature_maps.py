"""Fused elementwise passes that follow the projection GEMM ``Z = X @ W.T``.

They are serial (``nogil``) kernels applied to one row block at a time; the caller runs
blocks on a thread pool (``favorkit._parallel``) with BLAS held to one thread, so the GEMM,
these passes and the exponential of one block all happen while it is hot in cache.

The exponential itself is *not* here: numpy's AVX-512/AVX2 ``np.exp`` measured 1.7 G/s per
core in float32 and 1.0 G/s in float64 on the development machine, while Numba's libm
``math.exp`` (no SVML in the PyPI llvmlite) reached 0.26–0.5 G/s on two cores. So the
kernels below prepare exponents and the caller applies ``np.exp`` in place on the block
(the row maxima for the overflow checks also come from numpy: a floating-point max
reduction does not vectorize in Numba without fastmath).

Each input array is distinct from each output array: a Numba loop handed the same buffer
as input *and* output measured ~7x slower (it cannot prove the absence of aliasing and
falls back to scalar code); in-place kernels take the buffer once.
"""

import math

import numba


@numba.njit(nogil=True, cache=True)
def plus_minus_shift_rows(z, shift, out):
    """Antithetic exponents of the hyperbolic map: ``out = [z + shift, shift - z]``.

    ``z`` is (n, m), ``out`` is (n, 2m) of the same dtype and ``shift`` (n,) of that dtype
    (one precision in the loop, so it vectorizes). One pass writes both halves, which numpy
    would need two strided passes for.
    """
    n, m = z.shape
    for i in range(n):
        s = shift[i]
        for j in range(m):
            v = z[i, j]
            out[i, j] = s + v
            out[i, m + j] = s - v


@numba.njit(nogil=True, cache=True)
def cos_sin_rows(z, log_scale, out):
    """Trigonometric features ``out = exp(log_scale[i]) * [cos z, sin z]``.

    ``z`` is (n, m), ``out`` (n, 2m); ``log_scale`` (n,) float64 carries ``h(x)`` and the
    ``1/sqrt(m)`` in log space so that the caller can check it against the dtype's range.
    """
    n, m = z.shape
    for i in range(n):
        h = math.exp(log_scale[i])
        for j in range(m):
            v = z[i, j]
            out[i, j] = math.cos(v) * h
            out[i, m + j] = math.sin(v) * h


@numba.njit(nogil=True, cache=True)
def cos_offset_rows_inplace(z, offset, log_scale):
    """Random-offset features ``z[i, j] = exp(log_scale[i]) * cos(z[i, j] + offset[j])``."""
    n, m = z.shape
    for i in range(n):
        h = math.exp(log_scale[i])
        for j in range(m):
            z[i, j] = math.cos(z[i, j] + offset[j]) * h
