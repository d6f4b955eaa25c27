"""Fast Walsh–Hadamard transform (unnormalized), used to build SORF blocks."""

import numba


@numba.njit(parallel=True, cache=True)
def fwht_rows_inplace(a):
    """Unnormalized Walsh–Hadamard transform of every row of ``a``, in place.

    ``a`` is a C-contiguous 2-D float array whose row length is a power of two. After the
    call each row holds ``H_p @ row`` with ``H_p`` the Sylvester-ordered ±1 Hadamard matrix
    (``H_p @ H_p = p I``). O(p log p) per row; rows run in parallel.
    """
    n_rows, p = a.shape
    if p & (p - 1) != 0:
        raise ValueError("fwht_rows_inplace: the row length must be a power of two.")
    for i in numba.prange(n_rows):
        row = a[i]
        h = 1
        while h < p:
            for start in range(0, p, 2 * h):
                for j in range(start, start + h):
                    x = row[j]
                    y = row[j + h]
                    row[j] = x + y
                    row[j + h] = x - y
            h *= 2
    return a
