"""The warning classes users can filter, and a ``warn`` that points at the caller's line."""

from __future__ import annotations

import os
import sys
import warnings

import sklearn

__all__ = ["NumericalWarning", "warn"]


class NumericalWarning(UserWarning):
    """A numerical guard fired: results were set to 0 or lost precision, and why.

    Examples
    --------
    >>> import warnings
    >>> from favorkit import NumericalWarning
    >>> warnings.simplefilter("error", NumericalWarning)  # make the guard an error
    >>> warnings.resetwarnings()
    """


# Frames in these directories are favorkit's own or scikit-learn's (a Pipeline, a
# validation wrapper): a warning points at the first frame outside them, the user's line.
_INTERNAL = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(sklearn.__file__)) + os.sep,
)


def warn(message, category=NumericalWarning):
    """``warnings.warn`` with the stack level of the first caller outside favorkit and
    scikit-learn, so that the warning names the line that called into them."""
    frame = sys._getframe(1)
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
