"""favorkit: random-feature kernel approximation and FAVOR+ attention, sklearn style.

Public names: the transformers :class:`PositiveRandomFeatures` and :class:`OrthogonalRFF`,
the attention estimator :class:`FavorAttention` with its functional core
:func:`favor_attention` and exact reference :func:`softmax_attention`, the modules
:mod:`favorkit.maps` (the feature maps), :mod:`favorkit.sampling` (the projections) and
:mod:`favorkit.theory` (the closed forms), and :class:`NumericalWarning`, the warning of
the numerical guards (filter it like any warning).
"""

from favorkit import maps, sampling, theory
from favorkit._warnings import NumericalWarning
from favorkit.attention import FavorAttention, favor_attention, softmax_attention
from favorkit.features import OrthogonalRFF, PositiveRandomFeatures

__version__ = "0.1.0"

__all__ = [
    "FavorAttention",
    "NumericalWarning",
    "OrthogonalRFF",
    "PositiveRandomFeatures",
    "__version__",
    "favor_attention",
    "maps",
    "sampling",
    "softmax_attention",
    "theory",
]
