"""Type aliases of favorkit's public signatures.

Every module that uses them has ``from __future__ import annotations``, so annotations are
never evaluated on import; the aliases are still defined at run time, so that
``typing.get_type_hints`` resolves every public signature (``tests/test_typing.py``).
The ``Literal`` name sets are checked against the registries they mirror
(:data:`favorkit.sampling.PROJECTIONS`, :data:`favorkit.maps.MAPS`) by the same tests.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, TypeAlias

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover - Python 3.10 never evaluates the (string) annotations
    Self = Any

__all__ = [
    "ActivationName",
    "ArrayLike",
    "AttentionEstimator",
    "FloatArray",
    "FloatOrArray",
    "MatrixLike",
    "NDArray",
    "PositiveEstimator",
    "ProjectionName",
    "RandomStateLike",
    "Rng",
    "Self",
    "SparseMatrix",
]

# Anything sampling.resolve_rng accepts: None, a seed, a RandomState or a Generator.
RandomStateLike: TypeAlias = int | np.random.RandomState | np.random.Generator | None
# What sampling.resolve_rng returns (a Generator passes through).
Rng: TypeAlias = np.random.Generator | np.random.RandomState

SparseMatrix: TypeAlias = sp.spmatrix | sp.sparray
# Data the transformers accept: anything numpy can convert, or a scipy sparse matrix (CSR).
MatrixLike: TypeAlias = ArrayLike | SparseMatrix

# Real arrays, float32 or float64 (the transformers and attention keep float32).
FloatArray: TypeAlias = NDArray[np.floating[Any]]
# The closed forms: a float64 array, or a numpy float64 scalar (a float) for a single pair.
FloatOrArray: TypeAlias = float | NDArray[np.float64]

# sampling.PROJECTIONS
ProjectionName: TypeAlias = Literal["orthogonal", "iid", "gaussian", "structured", "qmc", "simplex"]
# maps.names("exponential"): the positive estimators
PositiveEstimator: TypeAlias = Literal[
    "positive", "hyperbolic", "optimal", "saderf", "optimal_hyperbolic"
]
# maps.names("attention"): attention's estimators of the softmax kernel
AttentionEstimator: TypeAlias = Literal[
    "positive", "hyperbolic", "optimal", "saderf", "optimal_hyperbolic", "trig"
]
# maps.names("activation"): the activations of generalized attention
ActivationName: TypeAlias = Literal["relu", "elu", "exp", "abs", "arccos0", "arccos1", "arccos2"]
