"""The warnings an attention call gives about its result: rows set to 0 by signed
features (:class:`~favorkit.NumericalWarning`) and output that is mostly noise
(:class:`~favorkit.AccuracyWarning`)."""

from __future__ import annotations

import math

from favorkit import maps
from favorkit._warnings import AccuracyWarning, warn
from favorkit.attention._accuracy import quick_noise_ratio

__all__ = ["warn_if_noise", "warn_nonpositive"]


def warn_nonpositive(n_bad, n_rows, fmap):
    if n_bad:
        what = "estimator" if fmap.attention_estimator else "activation"
        positive = ", ".join(repr(name) for name in maps.names("exponential"))
        warn(
            f"{n_bad} of {n_rows} query rows had an attention normalizer that was not "
            f"positive and finite, or an output that was not finite, and were set to 0 "
            f"({what}={fmap.name!r} has features of either sign or zero features, whose sums "
            f"can cancel). The positive estimators ({positive}) never do this."
        )


# The accuracy check runs in calls of at least this many feature entries (N L m); its
# fixed cost (0.5-1 ms) is about 5 % of a call of this size and less in larger ones.
_CHECK_MIN_WORK = 1 << 22


def warn_if_noise(Qf, Kf, Vf, mask, causal, scale, fmap, m, fitted):
    """An :class:`~favorkit.AccuracyWarning` when the rough closed-form prediction on a few
    rows says the output is mostly noise (thresholds in the warning's docstring)."""
    n_seq, L, _ = Qf.shape
    if n_seq * L * m < _CHECK_MIN_WORK:
        return
    ratio, heavy, needed = quick_noise_ratio(
        Qf, Kf, Vf, mask, causal, math.sqrt(scale), fmap, m,
        fitted if (causal and fmap.fitted) else None,
    )  # fmt: skip
    if not (ratio >= 1.0 or (heavy and ratio >= 0.5)):
        return
    better = "" if fmap.fitted else (
        ", FAVOR++ (estimator='optimal') or SADERF (estimator='saderf'), whose variance "
        "grows far slower with |q|, |k|"
    )  # fmt: skip
    tails = "; heavy-tailed: a typical draw does better, but any one draw is mostly noise"
    warn(
        f"FAVOR attention with m={m} is mostly noise here: the predicted error of an output "
        f"row is {ratio:.2g} times the spread of the values it averages"
        f"{tails if heavy else ''}. About m={needed:.2g} projections would bring it to half "
        "the spread; other remedies: smaller query and key norms (a lower scale; the "
        f"variance grows like exp(|q̃ + k̃|²)){better}, or exact softmax_attention. "
        "favorkit.accuracy predicts and measures the error.",
        AccuracyWarning,
    )
