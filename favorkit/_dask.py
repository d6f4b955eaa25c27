"""Dask arrays in favorkit's transformers: lazy transforms and one-pass fit statistics.

favorkit never imports dask itself: a dask array can only exist once ``dask.array`` has been
imported, so :func:`is_dask_array` looks for the module in ``sys.modules`` and checks the
type there; ``import favorkit`` stays free of dask. The functions here run only when a dask
array has been passed.

* ``transform`` of a dask array is ``map_blocks`` of the in-memory transform over row
  chunks (the columns in one chunk): lazy, chunks and dtype known without computing, each
  task shipping the fitted estimator (its projection, ``m x d`` floats, not the data).
* ``fit`` of a dask array reads only its shape, unless it needs statistics (FAVOR++/SADERF's
  moments, the variance of ``gamma="scale"``): then the column sums and sums of squares of
  every array involved are computed in one pass (:func:`column_sums`).
"""

from __future__ import annotations

import copy
import sys

import numpy as np

from favorkit.maps import ColumnSums

__all__ = ["column_sums", "dask_array", "is_dask_array", "lazy_transform", "matrix_input"]


def is_dask_array(X) -> bool:
    """Whether X is a dask array (without importing dask)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(X, module.Array)


def dask_array():
    """The ``dask.array`` module (only called once a dask array has been seen)."""
    import dask.array

    return dask.array


def output_dtype(dtype, name="X"):
    """The dtype favorkit computes in for input of ``dtype``: float32 stays, the other real
    dtypes become float64 (as scikit-learn's validation does)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {dtype}.")
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


def matrix_input(estimator, X, *, reset):
    """Check a 2-D dask array's shape and dtype for ``fit`` (``reset``) or ``transform``,
    without computing anything; returns it with its columns in one chunk."""
    name = type(estimator).__name__
    if X.ndim != 2:
        raise ValueError(
            f"{name} takes a 2-D array of shape (n_samples, n_features); got a dask array "
            f"of shape {X.shape}."
        )
    output_dtype(X.dtype)
    if reset:
        estimator.n_features_in_ = int(X.shape[1])
        estimator.__dict__.pop("feature_names_in_", None)  # a dask array has no names
    elif X.shape[1] != estimator.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {name} is expecting "
            f"{estimator.n_features_in_} features as input."
        )
    return X.rechunk({1: -1})


def column_sums(*arrays, names=None) -> list[ColumnSums]:
    """:class:`~favorkit.maps.ColumnSums` of each 2-D array (numpy or dask), the dask ones
    computed together: one pass over their chunks, shared where they are the same array.
    ``names`` (default "X") name the arrays in the error for non-finite data."""
    import dask

    def sums(X):
        X = X.astype(np.float64)
        return X.sum(axis=0), (X * X).sum(axis=0)

    lazy = [sums(X) if is_dask_array(X) else None for X in arrays]
    computed = iter(dask.compute(*[s for s in lazy if s is not None]))
    out = []
    for i, (X, s) in enumerate(zip(arrays, lazy, strict=True)):
        if s is None:
            X = np.asarray(X, dtype=np.float64)
            total, squares = X.sum(axis=0), np.einsum("ij,ij->j", X, X)
        else:
            total, squares = next(computed)
        if not (np.isfinite(total).all() and np.isfinite(squares).all()):
            name = "X" if names is None else names[i]
            raise ValueError(
                f"{name} contains NaN or inf (or values whose squares overflow float64); "
                "fitting needs finite data."
            )
        out.append(ColumnSums(total, squares, int(X.shape[0])))
    return out


def _transform_block(block, estimator, kwargs, n_out, dtype):
    if block.shape[0] == 0:  # dask allows empty chunks; sklearn's validation does not
        return np.empty((0, n_out), dtype=dtype)
    return estimator.transform(block, **kwargs)


def lazy_transform(estimator, X, n_out, **kwargs):
    """``estimator.transform`` of a dask array X, lazily: one task per row chunk, the
    columns in one chunk, the output ``(X.chunks[0], (n_out,))`` in the transform's dtype.

    The graph holds one copy of the fitted estimator, taken now (refitting it later does
    not change this array), as one key that every task reads: it travels to each worker
    once. Each chunk goes through exactly the in-memory ``transform``, so a row's features
    are those of the in-memory transform of the same row up to the GEMM's blocking over
    rows (which can change the last bit of a dot product in some BLAS kernels).
    """
    import dask
    from dask.base import tokenize

    X = matrix_input(estimator, X, reset=False)
    dtype = output_dtype(X.dtype)
    snapshot = copy.deepcopy(estimator)
    token = tokenize(X, snapshot, kwargs)
    fitted = dask.delayed(snapshot, pure=True, name=f"{type(estimator).__name__}-{token}")
    return X.map_blocks(
        _transform_block,
        fitted,
        kwargs,
        n_out,
        dtype,
        dtype=dtype,
        chunks=(X.chunks[0], (n_out,)),
        meta=np.empty((0, n_out), dtype=dtype),
        name=f"{type(estimator).__name__.lower()}-transform-{token}",
    )
