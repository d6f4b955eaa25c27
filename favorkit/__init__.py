"""favorkit: random-feature kernel approximation and FAVOR+ attention, sklearn style.

Public names: the transformers :class:`PositiveRandomFeatures`, :class:`OrthogonalRFF` and
:class:`ArcCosineFeatures`, the attention estimator :class:`FavorAttention` with its
functional core :func:`favor_attention` and exact references :func:`softmax_attention` and
:func:`kernel_attention`, the modules :mod:`favorkit.kernels` (the kernels),
:mod:`favorkit.maps` (the feature maps), :mod:`favorkit.sampling` (the projections) and
:mod:`favorkit.theory` (the closed forms), :mod:`favorkit.accuracy` (the predicted and
measured error of attention), and the warnings :class:`NumericalWarning` (a numerical
guard fired) and :class:`AccuracyWarning` (the approximation is mostly noise); filter them
like any warning.
"""

from favorkit import accuracy, kernels, maps, plotting, sampling, theory
from favorkit._warnings import AccuracyWarning, NumericalWarning
from favorkit.attention import FavorAttention, favor_attention, kernel_attention, softmax_attention
from favorkit.features import ArcCosineFeatures, OrthogonalRFF, PositiveRandomFeatures

__version__ = "0.1.0"

__all__ = [
    "AccuracyWarning",
    "ArcCosineFeatures",
    "FavorAttention",
    "NumericalWarning",
    "OrthogonalRFF",
    "PositiveRandomFeatures",
    "__version__",
    "accuracy",
    "favor_attention",
    "kernel_attention",
    "kernels",
    "maps",
    "plotting",
    "sampling",
    "softmax_attention",
    "theory",
]
