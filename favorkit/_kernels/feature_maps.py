"""Fused elementwise passes that follow the projection GEMM ``Z = X @ W.T``.

They are serial (``nogil``) kernels applied to one row block at a time; the caller runs
blocks on a thread pool (``favorkit._parallel``) with BLAS held to one thread, so the GEMM,
these passes and the exponential of one block all happen while it is hot in cache.

The exponential itself is *not* here: the caller applies
:func:`favorkit._kernels.fastexp.exp_inplace` to the block (a vectorized float32 exp, numpy's
for float64). The row maxima for the overflow checks also come from numpy: a floating-point
max reduction does not vectorize in Numba without fastmath.

Each input array is distinct from each output array: a Numba loop handed the same buffer
as input *and* output measured ~7x slower (it cannot prove the absence of aliasing and
falls back to scalar code); in-place kernels take the buffer once.
"""

import math
from typing import NamedTuple

import numba
import numpy as np


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


class RowTerms(NamedTuple):
    """What the positive/GERF row terms and range checks need, by name.

    ``shift = log_const - |ũ|²/2 - gaussian_weight |u|²``; a row is checked when its
    lower bound ``shift + a_w_sq_max - b_w_norm |ũ|`` on every log-feature is below
    ``log_tiny`` (``a_w_sq_max = A max|ω|²``, ``b_w_norm = B max|ω|``), or always with
    ``check_all``.
    """

    log_const: float
    gaussian_weight: float
    a_w_sq_max: float
    b_w_norm: float
    log_tiny: float
    check_all: bool


@numba.njit(nogil=True, cache=True)
def gerf_row_terms(sq_u, sq_t, terms, shift, check):
    """Row term of the positive/GERF log-features and the rows that need a range check.

    ``shift[i] = log_const - sq_t[i]/2 - gaussian_weight * sq_u[i]`` (``sq_u = |u|²``,
    ``sq_t = |ũ|²``, float64), and ``check[i]`` is True when the row's largest log-feature
    might fall below ``log_tiny``, by the lower bound ``shift + A|ω|²_max - B|ũ||ω|_max``
    (or for every row when ``check_all``); ``terms`` is a :class:`RowTerms`.
    """
    for i in range(sq_u.shape[0]):
        s = terms.log_const - 0.5 * sq_t[i] - terms.gaussian_weight * sq_u[i]
        shift[i] = s
        check[i] = (
            terms.check_all
            or s + terms.a_w_sq_max - terms.b_w_norm * math.sqrt(sq_t[i]) < terms.log_tiny
        )


# fastmath "reassoc" lets LLVM split the two float64 norm sums into vector lanes: 29 µs
# instead of 98 µs for a 2048 x 64 float32 block, ~8 % of the whole transform. The order
# of the sum is fixed at compile time, so the result still does not depend on threads.
@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def stage_gerf_rows(x, c2, weights_t, terms, xs, shift, check):
    """One pass over a dense block: row norms, row terms, and the GEMM's left operand.

    ``xs[i] = [x_i, shift_i, 1, ...]`` so that ``xs @ [W^T; 1; A|ω|²]`` is the log-feature
    (the row term folded into the GEMM); ``|u|² = c2 |x|²`` and ``|ũ|² = Σ weights_t x²``
    are accumulated in float64. See :func:`gerf_row_terms` for ``terms``, ``shift`` and
    ``check``.
    """
    n, d = x.shape
    sq_u = np.empty(n)
    sq_t = np.empty(n)
    for i in range(n):
        acc_u = 0.0
        acc_t = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            acc_u += v * v
            acc_t += weights_t[j] * v * v
            xs[i, j] = x[i, j]
        sq_u[i] = c2 * acc_u
        sq_t[i] = acc_t
        for j in range(d + 1, xs.shape[1]):
            xs[i, j] = 1.0
    gerf_row_terms(sq_u, sq_t, terms, shift, check)
    for i in range(n):
        xs[i, d] = shift[i]


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def gerf_rows_dense(x, c2, weights_t, terms, shift, check):
    """Row norms of a dense block in float64 and the row terms of :func:`gerf_row_terms`.

    For maps that cannot fold the row term into the GEMM (the hyperbolic pair): one pass
    over the block, accumulating in float64 without converting it first (a float32
    accumulation overflows for entries around 1e19). ``fastmath={"reassoc"}`` as in
    :func:`stage_gerf_rows`.
    """
    n, d = x.shape
    sq_u = np.empty(n)
    sq_t = np.empty(n)
    for i in range(n):
        acc_u = 0.0
        acc_t = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            acc_u += v * v
            acc_t += weights_t[j] * v * v
        sq_u[i] = c2 * acc_u
        sq_t[i] = acc_t
    gerf_row_terms(sq_u, sq_t, terms, shift, check)
