"""The one module that touches scikit-learn's private helpers.

If a future scikit-learn moves them, this is the only file to change.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted, validate_data

__all__ = [
    "Interval",
    "StrOptions",
    "_check_feature_names_in",
    "_fit_context",
    "check_is_fitted",
    "validate_data",
    "validate_params",
]
