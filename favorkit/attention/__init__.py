"""FAVOR attention (Performer) and exact softmax attention, in O(L) memory on CPU.

Four public names:

* :func:`~favorkit.softmax_attention`: the exact reference ``softmax(scale Q K^T) V`` with
  log-sum-exp and float64 accumulation, in query row blocks (L = 32 768 fits in memory);
  :func:`~favorkit.kernel_attention` the same for other non-negative kernels (arc-cosine).
* :func:`~favorkit.favor_attention`: the functional core of linear attention with random
  features (Choromanski et al. 2021, Eq. 4 and App. B, Eq. 11): bidirectional
  ``φ(Q) (φ(K)^T [V 1])``, or causal prefix sums of ``φ(k_j) [v_j 1]^T``, never forming an
  L x L matrix, an L x m x d tensor or even a whole L x m feature matrix.
* :class:`~favorkit.FavorAttention`: the sklearn-style estimator that draws the projection
  in ``fit`` and keeps it (``redraw()`` draws a new one).

The modules behind them, one concern each: ``_inputs`` (shapes, dtypes, checks and the
parameter constraints the function and the estimator share), ``_exact`` (the reference),
``_engine`` (features per block, states per sequence, the threads and the stabilization
that never leaks nor underflows), ``_checks`` (the warnings a call gives about its result),
``_favor`` (the public layer) and ``_dask`` (the same engine as a task graph over dask
arrays chunked along the batch and sequence axes). The feature maps
themselves are those of :mod:`favorkit.maps`.
"""

from favorkit.attention._exact import kernel_attention, softmax_attention
from favorkit.attention._favor import FavorAttention, favor_attention

__all__ = ["FavorAttention", "favor_attention", "kernel_attention", "softmax_attention"]
