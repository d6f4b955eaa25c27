"""The warning classes users can filter, and a ``warn`` that points at the caller's line."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

import sklearn

__all__ = ["AccuracyWarning", "NumericalWarning", "warn"]


class NumericalWarning(UserWarning):
    """A numerical guard fired and says what it did: rows set to 0, and why.

    Raised by attention with signed features (the trigonometric estimator, the
    activation maps of generalized attention), whose normalizer can be ``<= 0``. The
    positive estimators and the transformers raise a ``ValueError`` instead where a result
    cannot be represented.
    Filter it like any warning.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from favorkit import NumericalWarning, favor_attention
    >>> Q, K, V = np.random.default_rng(0).normal(scale=2.0, size=(3, 64, 4))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always", NumericalWarning)
    ...     out = favor_attention(Q, K, V, n_components=4, estimator="trig", random_state=0)
    >>> caught[0].category.__name__, "set to 0" in str(caught[0].message)
    ('NumericalWarning', True)
    """


class AccuracyWarning(UserWarning):
    """The approximation at this number of features is mostly noise.

    Raised by FAVOR attention (:func:`~favorkit.favor_attention`,
    :meth:`FavorAttention.attend <favorkit.FavorAttention.attend>`) when the closed-form
    prediction on a few of the call's query rows
    (:func:`~favorkit.accuracy.predict_attention_error` with iid couplings, which orthogonal
    ones improve by at most a small factor) gives a relative error of at least 1 — as far
    from exact attention as an output of zeros — or heavy tails with a relative error of
    at least 0.5; and by :class:`~favorkit.PositiveRandomFeatures` ``transform`` when the
    median predicted relative MSE of the kernel estimates between the transformed rows is
    at least 1. It names the m that would help and the alternatives. Filter it like any
    warning.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from favorkit import AccuracyWarning, favor_attention
    >>> Q, K, V = np.random.default_rng(0).normal(size=(3, 4, 4096, 64))  # |q|²/sqrt(d) = 8
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always", AccuracyWarning)
    ...     out = favor_attention(Q, K, V, n_components=256, random_state=0)
    >>> caught[0].category.__name__
    'AccuracyWarning'
    """


# Frames in these directories are favorkit's own or scikit-learn's (a Pipeline, a
# validation wrapper): a warning points at the first frame outside them, the user's line.
_INTERNAL = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(sklearn.__file__)) + os.sep,
)


def warn(message: str, category: type[Warning] = NumericalWarning) -> None:
    """``warnings.warn`` with the stack level of the first caller outside favorkit and
    scikit-learn, so that the warning names the line that called into them."""
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
