"""favorkit: random-feature kernel approximation and FAVOR+ attention, sklearn style.

Public names: the transformers :class:`PositiveRandomFeatures` and :class:`OrthogonalRFF`,
the attention estimator :class:`FavorAttention` with its functional core
:func:`favor_attention` and exact reference :func:`softmax_attention`, the modules
:mod:`favorkit.maps` (the feature maps), :mod:`favorkit.sampling` (the projections) and
:mod:`favorkit.theory` (the closed forms), :mod:`favorkit.accuracy` (the predicted and
measured error of attention), and the warnings :class:`NumericalWarning` (a numerical
guard fired) and :class:`AccuracyWarning` (the approximation is mostly noise); filter them
like any warning.
"""

from favorkit import accuracy, maps, sampling, theory
from favorkit._warnings import AccuracyWarning, NumericalWarning
from favorkit.attention import FavorAttention, favor_attention, softmax_attention
from favorkit.features import OrthogonalRFF, PositiveRandomFeatures

__version__ = "0.1.0"

__all__ = [
    "AccuracyWarning",
    "FavorAttention",
    "NumericalWarning",
    "OrthogonalRFF",
    "PositiveRandomFeatures",
    "__version__",
    "accuracy",
    "favor_attention",
    "maps",
    "sampling",
    "softmax_attention",
    "theory",
]
