"""How far will FAVOR attention be from exact attention? Predicted and measured error.

Two functions answer it for your own queries, keys and values, for every estimator of
the softmax kernel, causal or not, with a key padding mask:

* :func:`predict_attention_error` — from the closed forms, without a single draw, for iid,
  orthogonal and simplex projections (the trigonometric estimator: iid);
* :func:`measure_attention_error` — against :func:`~favorkit.softmax_attention`, over
  redraws of any projection.

Both look at a sample of query rows (all rows when there are few) and return an
:class:`AttentionError`: the relative Frobenius error ``‖Ŷ - Y‖ / ‖Y‖`` over every query
row (the root of its expectation) estimated from the sample, with a standard error that
includes the row sample's, the mean squared error per output entry, and whether the
expectation is carried by heavy tails, so that no feasible number of redraws would observe
it. A prediction also gives the error at any other m and the m needed for a target error.

**The prediction.** A FAVOR output row is ``ŷ = Σ_j K̂_j v_j / Σ_j K̂_j`` with unbiased
estimates ``K̂_j`` of the kernel entries ``K_j = exp(q̃·k̃_j)``. To first order in their
relative errors ``δ_j = K̂_j / K_j - 1`` (the delta method),
``ŷ - y = Σ_j p_j δ_j (v_j - y)`` with ``p_j`` the exact attention weights, so

``E‖ŷ - y‖² = Σ_{j,l} p_j p_l (v_j - y)·(v_l - y) Cov(δ_j, δ_l)``,
``Cov(δ_j, δ_l) = ρ_jl / m + (P(m) / m²) χ_jl``.

``ρ_jl`` is the covariance of one projection's estimates of two entries that share the
query, in closed form for every positive map and the trigonometric one
(:meth:`favorkit.maps.FeatureMap.second_moment`: ``e^{a_j·a_l} - 1`` for FAVOR+ with
``a = u + v``, Choromanski et al. 2021, Lemma 2; the GERF form of Likhosherstov et al. 2022
for FAVOR++ and SADERF; ``cosh`` for the antithetic maps and for ``[cos, sin]``). ``χ_jl`` is
the covariance between two projections of one orthogonal (or simplex) block, ``P(m)`` the
number of ordered pairs of rows sharing a block: exact on the diagonal ``j = l``
(:func:`favorkit.theory.pair_covariance`), and between different keys the same value
carried to the pair's geometry to second order in the cosines (exact at ``a_j = a_l``).

The double sum over keys is split so that nothing of size L x L is formed. The parts that
factorize over keys (all of ``ρ`` but ``e^{γ k̃_j·k̃_l} - 1``, and of ``χ`` the pair form's
terms without ``k̃_j·k̃_l``) are summed exactly. The key-key interactions are expanded to
second order in ``k̃_j·k̃_l``: summed over all pairs, that part is a sum of squared norms
of ``Σ_j w_j (v_j - y) ⊗ k̃_j`` (and ``⊗ k̃_j ⊗ k̃_j``), which a Gaussian rank-one sketch
shared by every row estimates (``E (aᵀ M b)² = ‖M‖²``; 16 samples). For the hyperbolic and
trigonometric maps and FAVOR++'s hyperbolic map, one of whose signs weighs the keys
independently of the logits (alike, or by ``e^{α|k̃_j|²}``), the samples are regressed on
control variates of known mean (that sign's own ``‖M‖²``, exact from sums over keys, and for
orthogonal or simplex blocks the same with that sign's weights normalized): at small
``|q|, |k|`` the two signs' samples move together and their difference was mostly the
sketch's noise (L = 4096, d = 64, hyperbolic, ``|q|, |k| ~ 0.25 N(0, 1)``: 0.0029 ± 0.011 without
them, 0.0084-0.0087 ± 0.0015-0.0030 with them, where redraws measure 0.0084). The rest is
sampled over key pairs by importance sampling with a fixed seed, and so is the second-order
part again, as a control variate: the two estimates of it are mixed with the weight that
minimizes the variance of the total. The pairs' estimate wins for short sequences; the
sketch's for long ones, where the sampled terms cancel in sign and their sampling error
grows with the keys a row sees (at L = 16 384, d = 64, bidirectional, 256 pairs per row
alone predict 0.08 ± 0.63 where redraws measure 0.41; with the sketch 0.47 ± 0.07). The
standard error of all of it is part of the result: the pairs', the sketch's (its two
sampling sets' parts, which share its triples, with their correlation) and the row
sample's (causal rows are stratified by position: an early row averages few values and
carries a large share of the output's norm). Where it is not small next to the
prediction, raise ``n_pairs`` or ``n_queries``. Cost: O(n_queries
L (d + d_v)): GEMMs over the sampled rows and every key (float32 for float32 inputs), and
Numba passes over each row's keys while they are in cache; at L = 16 384, d = 64, m = 256
the default 32 rows cost about one attention call (0.86-1.13, median 0.93, over 16 runs of
``benchmarks/bench_accuracy.py``), each further 32 rows about half of one more. Its arrays
of a few MiB are scratch buffers kept per thread for later calls (about 20 MiB at that
size; none above 64 MiB).

The expansion is first order: the ratio ``N/D`` normalizes itself, so where one-projection
estimates are heavy-tailed a typical draw does better than the expectation and the
prediction is an upper estimate (tests: within a factor 1.5 of the measured error wherever
it is below 0.5 and not flagged, on d in {16, 64}, ``|q|, |k| ~ 0.25 or 0.5 N(0, 1)``, every
estimator, causal and bidirectional, predicted from 2048 key pairs per row and measured
over 32 redraws: ratios 0.85-1.32; over five seeds of its samples all 376 compared cases
within the factor, 0.85-1.35). At m = 64 the expansion's own overestimate shows:
1.22-1.32x at d = 16, ``|q|, |k| ~ 0.5 N(0, 1)``, L = 1024, against 384 redraws.

**Heavy tails.** The one-projection estimates are log-normal-like: with ``σ²`` the
log-variance of a row's normalizer estimate, the mean of m of them has excess kurtosis
``κ(σ²)/m`` (the log-normal's). Where it exceeds 100, the mean squared error exists but is
carried by draws rarer than a feasible number of redraws can sample (a typical draw does
better, and the error of any one draw is mostly noise), and where a row's normalizer has
relative variance above 1/4 at this m the first-order expansion no longer holds. Rows of
either kind are *unreliable*; when they carry more than a tenth of the predicted error the
result says ``heavy_tailed=True`` and its ``reason``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from favorkit import sampling
from favorkit._typing import ArrayLike, AttentionEstimator, ProjectionName, RandomStateLike
from favorkit._warnings import AccuracyWarning
from favorkit.attention import FavorAttention
from favorkit.attention._accuracy import (
    AttentionError,
    check_count,
    predict_attention_error,
    relative_standard_error,
    resolve_estimator,
    row_sampling_variance,
    sample_rows,
)
from favorkit.attention._exact import softmax_attention_rows
from favorkit.attention._inputs import check_finite, prepare, resolve_scale

__all__ = ["AttentionError", "measure_attention_error", "predict_attention_error"]


def measure_attention_error(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    n_components: int = 256,
    *,
    estimator: AttentionEstimator = "positive",
    projection: ProjectionName | ArrayLike = "orthogonal",
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: ArrayLike | None = None,
    n_queries: int = 256,
    n_redraws: int = 8,
    random_state: RandomStateLike = 0,
) -> AttentionError:
    """Measure the error of FAVOR attention against exact attention over redraws.

    ``FavorAttention(n_components, estimator=..., projection=...)``, fitted to Q (and K
    as keys), attends ``n_redraws`` times with fresh projections; each time the sampled
    query rows are compared with :func:`~favorkit.softmax_attention` on those rows (the
    rows as :func:`predict_attention_error` samples them). ``standard_error`` adds the
    spread of the redraws and that of the row sample; with few redraws it can still be
    low, because a redraw's squared error is right-skewed at small m and a few redraws
    tend to miss its upper tail (hyperbolic map, m = 64, d = 16, causal, L = 1024,
    ``|q|, |k| ~ 0.5 N(0, 1)``: 8 redraws of all rows measured 0.121-0.146 over four seeds,
    384 redraws 0.140).

    Parameters
    ----------
    Q, K, V, n_components, estimator, causal, scale, key_padding_mask, n_queries
        As in :func:`predict_attention_error`.
    projection : str or array of shape (n_components, d), default="orthogonal"
        Any projection of :mod:`favorkit.sampling` (a fixed array is not redrawn).
    n_redraws : int, default=8
        Independent projections.
    random_state : int, RandomState, Generator or None, default=0
        Seeds the row sample and the projections.

    Returns
    -------
    AttentionError
        ``kind="measured"``; ``per_draw`` holds each redraw's relative error, and
        ``heavy_tailed`` says when one redraw carries half of the squared error (the mean
        is then not settled by this many redraws).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit.accuracy import measure_attention_error, predict_attention_error
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(scale=0.5, size=(2, 512, 16))
    >>> V = rng.normal(size=(512, 16))
    >>> measured = measure_attention_error(Q, K, V, 256, n_redraws=16)
    >>> predicted = predict_attention_error(Q, K, V, 256)
    >>> bool(abs(measured.relative_error / predicted.relative_error - 1) < 0.5)
    True
    """
    fmap = resolve_estimator(estimator, projection)
    m = check_count(n_components, "n_components")
    n_queries = check_count(n_queries, "n_queries")
    n_redraws = check_count(n_redraws, "n_redraws")
    Qf, Kf, Vf, mask, _, _ = prepare(Q, K, V, key_padding_mask, causal)
    for X, name in ((Qf, "Q"), (Kf, "K"), (Vf, "V")):
        check_finite(X, name)
    n_seq, Lq, _ = Qf.shape
    rng = sampling.resolve_rng(random_state)
    seqs, rows, weights, strata = sample_rows(n_seq, Lq, n_queries, rng, causal)
    used = np.unique(seqs)
    exact = softmax_attention_rows(
        Qf, Kf, Vf, mask, causal, resolve_scale(scale, Qf.shape[2]), seqs, rows
    )
    att = FavorAttention(
        m, estimator=fmap.name, projection=projection, scale=scale, random_state=rng
    ).fit(Qf, keys=Kf)
    # Bidirectional attention of the maps fitted to nothing needs only the sampled queries
    # (every key is still summed); the others attend to whole sequences.
    rows_only = not causal and not fmap.fitted
    row_errors = np.empty((n_redraws, rows.size))
    with warnings.catch_warnings():  # this is the measurement the warning points to
        warnings.simplefilter("ignore", AccuracyWarning)
        for r in range(n_redraws):
            if r:
                att.redraw()
            approx = np.empty_like(exact)
            for n in used:
                pick = np.flatnonzero(seqs == n)
                keys_mask = None if mask is None else mask[n]
                queries = Qf[n, rows[pick]] if rows_only else Qf[n]
                out = att.attend(queries, Kf[n], Vf[n], causal=causal, key_padding_mask=keys_mask)
                approx[pick] = out if rows_only else out[rows[pick]]
            row_errors[r] = np.sum((approx - exact) ** 2, axis=-1)
    errors = row_errors @ weights  # each row stands for `weight` rows of the population
    row_outputs = np.sum(exact**2, axis=-1)
    out_sq = float(weights @ row_outputs)
    mean = float(errors.mean())
    rel = math.sqrt(mean / out_sq) if out_sq > 0 else math.inf
    # Two samples: the projections (the redraws' totals vary together across rows) and the
    # query rows (a row's error, averaged over the redraws, varies from row to row). Their
    # variances add; the part of each row's redraw noise that is independent across rows
    # is counted in both, which errs on the side of a larger standard error.
    var_mean = float(errors.var(ddof=1) / n_redraws) if n_redraws > 1 else math.inf
    var_mean += row_sampling_variance(row_errors.mean(axis=0), row_outputs, weights, strata)
    se = relative_standard_error(mean, var_mean, out_sq) if mean > 0 else 0.0
    top = float(errors.max() / errors.sum()) if errors.sum() > 0 else 0.0
    heavy = n_redraws > 1 and top > 0.5
    reason = (
        f"one redraw of {n_redraws} carries {100 * top:.0f} % of the squared error: the "
        "mean is carried by rare draws and is not settled by this many redraws"
        if heavy
        else ""
    )
    return AttentionError(
        kind="measured",
        estimator=fmap.name,
        projection=projection if isinstance(projection, str) else "array",
        n_components=m,
        relative_error=rel,
        mse=mean / max(float(weights.sum()) * exact.shape[-1], 1),
        standard_error=se,
        heavy_tailed=bool(heavy),
        reason=reason,
        n_queries=int(rows.size),
        per_draw=np.sqrt(errors / out_sq) if out_sq > 0 else errors * np.inf,
    )
