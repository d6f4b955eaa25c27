"""The exponential of the feature maps, in place on a row block.

Every positive feature is one ``exp``, so after the GEMM the exponential is the largest
cost of a transform. numpy's float32 ``np.exp`` (AVX-512) measured 2.2 G/s per core on the
development machine (AMD Zen 4), Numba's libm ``math.exp`` 0.2-0.5 G/s. The float32 kernel
below is written to vectorize instead: 3.7 G/s per core there, 1.6x numpy, with a maximum
error of 0.92 ulp against the exact exp (1.18 ulp on a CPU without FMA; numpy's: 2.4 ulp).

* Range reduction (Cody-Waite): ``n = round(x log2 e)``, ``r = x - n ln2`` with ln 2 split
  into a 9-bit head (so ``n ln2_hi`` is exact) and a tail, ``|r| <= ln2 / 2``.
* ``exp(r)`` by its degree-7 Taylor polynomial in Horner form: truncation error
  ``(ln2/2)^8 / 8! = 5e-9``, below float32's half ulp (3e-8).
* ``2^n`` from exponent bits (an LLVM bitcast), split as ``2^(n>>1) 2^(n - n>>1)`` so both
  factors are normal floats for every ``n`` in [-150, 128]: the largest finite results
  (``n = 128``) and gradual underflow down to the smallest subnormal come out right.
* ``x`` is clamped to [-104, ln(FLT_MAX)] first, so ``n`` stays in that range; below -104
  the product rounds to 0 like ``np.exp``, above ln(FLT_MAX) the result is ``inf``, NaN
  propagates.

``fastmath={"contract"}`` only lets LLVM fuse multiply-adds (the Horner steps and the
reduction become FMAs, which also makes them more accurate); without it the kernel ran at
2.4 G/s. No reassociation: ``(t + 1.5 2^23) - 1.5 2^23`` is the round-to-nearest and must
not be simplified away. The code is fixed at compile time, so results do not depend on the
thread count. The float64 transforms keep numpy's exp: they are already several times
faster than the alternatives and a float64 polynomial needs twice the degree.

:func:`exp64` is the same construction in float64 for exponentials taken *inside* Numba
kernels (the accuracy prediction's, :mod:`favorkit._kernels.accuracy`), where numpy's exp
cannot be called and Numba's libm ``math.exp`` measured 6.9 ns per value on the
development machine (AMD Zen 5): :func:`exp64` in a loop over an array, 0.66 ns (numpy's
vectorized float64 exp: 1.4 ns), with a maximum error of 0.86 ulp (1.2 ulp without FMA).
Degree 13 Taylor on ``|r| <= ln2 / 2``: truncation ``(ln2/2)^14 / 14! = 4e-18``, below
float64's half ulp (1.1e-16); ``ln 2`` split into fdlibm's 32-bit head and its tail; ``x``
clamped to [-746, ln(DBL_MAX)] (``2^n`` as two normal factors for every ``n`` in
[-1076, 1024], so subnormal results round once).
"""

import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def _bits_as_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


_F = np.float32
_X_MIN = _F(-104.0)  # exp(-104) = 6.8e-46 rounds to 0 in float32
_X_MAX = _F(88.72283)  # ln(FLT_MAX): exp of anything larger overflows
_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693359375)  # 9 significant bits: n * _LN2_HI is exact for |n| <= 2^15
_LN2_LO = _F(0.6931471805599453 - 0.693359375)
_ROUND = _F(12582912.0)  # 1.5 * 2^23: adding and subtracting it rounds to an integer
_C2, _C3, _C4, _C5, _C6, _C7 = (_F(1.0 / f) for f in (2, 6, 24, 120, 720, 5040))
_ONE = _F(1.0)
_INF = _F(np.inf)


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def exp_inplace_float32(a):
    """``a[i] = exp(a[i])`` for a contiguous 1-D float32 array (see the module docstring)."""
    for i in range(a.size):
        x = a[i]
        xc = min(max(x, _X_MIN), _X_MAX)
        n_f = (xc * _LOG2E + _ROUND) - _ROUND
        r = (xc - n_f * _LN2_HI) - n_f * _LN2_LO
        p = ((((((_C7 * r + _C6) * r + _C5) * r + _C4) * r + _C3) * r + _C2) * r + _ONE) * r + _ONE
        n = np.int32(n_f)
        n_half = n >> np.int32(1)
        scale_a = _bits_as_float32((n_half + np.int32(127)) << np.int32(23))
        scale_b = _bits_as_float32((n - n_half + np.int32(127)) << np.int32(23))
        a[i] = _INF if x > _X_MAX else p * scale_a * scale_b


@intrinsic
def _bits_as_float64(typingctx, bits):
    """Reinterpret an int64's bits as a float64 (no conversion)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


_X64_MIN = -746.0  # exp(-746) < 2^-1076 rounds to 0
_X64_MAX = 709.782712893384  # ln(DBL_MAX)
_LOG2E64 = 1.4426950408889634
_LN2_HI64 = 6.93147180369123816490e-01  # 32 significant bits: n * _LN2_HI64 is exact
_LN2_LO64 = 1.90821492927058770002e-10
_ROUND64 = 6755399441055744.0  # 1.5 * 2^52
_D = [1.0 / math.factorial(k) for k in range(14)]
_D2, _D3, _D4, _D5, _D6, _D7, _D8, _D9, _D10, _D11, _D12, _D13 = _D[2:]


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def exp64(x):
    """``exp(x)`` in float64 for use inside Numba kernels (see the module docstring).

    Written to vectorize when called in a loop over an array. ``exp(-inf) = 0``,
    ``exp(inf) = inf``, NaN propagates.
    """
    xc = min(max(x, _X64_MIN), _X64_MAX)
    n_f = (xc * _LOG2E64 + _ROUND64) - _ROUND64
    r = (xc - n_f * _LN2_HI64) - n_f * _LN2_LO64
    p = _D13 * r + _D12
    p = p * r + _D11
    p = p * r + _D10
    p = p * r + _D9
    p = p * r + _D8
    p = p * r + _D7
    p = p * r + _D6
    p = p * r + _D5
    p = p * r + _D4
    p = p * r + _D3
    p = p * r + _D2
    p = (p * r + 1.0) * r + 1.0
    n = np.int64(n_f)
    n_half = n >> np.int64(1)
    scale_a = _bits_as_float64((n_half + np.int64(1023)) << np.int64(52))
    scale_b = _bits_as_float64((n - n_half + np.int64(1023)) << np.int64(52))
    y = p * scale_a * scale_b
    return math.inf if x > _X64_MAX else (x if x != x else y)


@numba.njit(nogil=True, cache=True)
def exp64_inplace(a):
    """``a[i] = exp64(a[i])`` for a contiguous 1-D float64 array."""
    for i in range(a.size):
        a[i] = exp64(a[i])


@numba.njit(nogil=True, cache=True)
def exp_inplace_float64(a):
    """``a[i] = exp(a[i])`` for a contiguous 1-D float64 array, with libm's exp.

    For exponentials taken inside other kernels (the causal attention kernel); outside
    them, :func:`exp_inplace` uses numpy's.
    """
    for i in range(a.size):
        a[i] = math.exp(a[i])


def exp_inplace_flat(a):
    """``exp`` in place of a contiguous 1-D array, for use inside Numba kernels.

    Dispatches on the dtype at compile time: float32 to :func:`exp_inplace_float32`,
    float64 to :func:`exp_inplace_float64`. Calling it from Python raises.
    """
    raise TypeError("exp_inplace_flat is for Numba kernels; call exp_inplace from Python.")


@overload(exp_inplace_flat, jit_options={"nogil": True})
def _exp_inplace_flat(a):
    if a.dtype == types.float32:
        return lambda a: exp_inplace_float32(a)
    return lambda a: exp_inplace_float64(a)


def exp_inplace(a):
    """Exponentiate a float array in place, with the fastest exp measured for its dtype.

    Contiguous float32 arrays go through :func:`exp_inplace_float32`; anything else through
    ``np.exp`` (float64, where numpy's exp is the best measured, and strided views). Like
    ``np.exp`` under ``errstate(over="ignore")``, overflow gives ``inf`` silently: callers
    check their exponents' range in log space and raise with the fix.
    """
    if a.dtype == np.float32 and a.flags.c_contiguous:
        exp_inplace_float32(a.reshape(-1))
    else:
        with np.errstate(over="ignore", under="ignore"):
            np.exp(a, out=a)
    return a
