"""The one module that touches scikit-learn's private helpers.

If a future scikit-learn moves them, this is the only file to change.

scikit-learn ships no type information, so a type checker would see its two decorators
as returning ``Any`` and erase the signatures of everything they decorate (``fit``,
``favor_attention``, ...); under ``TYPE_CHECKING`` they are declared as returning the
decorated function unchanged, which is what they do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted, validate_data

if TYPE_CHECKING:
    _F = TypeVar("_F", bound=Callable[..., Any])

    def _fit_context(*, prefer_skip_nested_validation: bool) -> Callable[[_F], _F]: ...

    def validate_params(
        parameter_constraints: dict[str, Any], *, prefer_skip_nested_validation: bool
    ) -> Callable[[_F], _F]: ...

else:
    from sklearn.base import _fit_context
    from sklearn.utils._param_validation import validate_params

__all__ = [
    "Interval",
    "StrOptions",
    "_check_feature_names_in",
    "_fit_context",
    "check_is_fitted",
    "validate_data",
    "validate_params",
]
