"""Random projection matrices for random-feature maps.

Every sampler returns a float64 array of shape ``(n_components, n_features)`` whose rows
``ω_i`` are (marginally) standard Gaussian, ``ω_i ~ N(0, I_d)``, the distribution for which
the softmax and Gaussian kernel estimators of the Performer paper are unbiased (Lemma 1;
orthogonal blocks keep each row's marginal, Sec. 2.4). They differ in how the rows are
*coupled*:

==============  ============================================================
``gaussian``    independent rows (the paper's iid features).
``orthogonal``  exactly orthogonal rows inside blocks of ``d`` (ORF, Theorem 2), Haar blocks
                thanks to the QR sign fix, chi-distributed row norms (or fixed ``sqrt(d)``
                norms: the regularized kernel SMREG of Theorem 1).
``structured``  SORF, ``sqrt(p) H D3 H D2 H D1`` with Walsh–Hadamard ``H``; O(m log d) to
                apply, nearly orthogonal, *slightly biased* (the bias vanishes as d grows).
``qmc``         scrambled Sobol points pushed through the inverse normal CDF.
``simplex``     simplex random features (SimRF): the d directions of a block point to the
                vertices of a randomly rotated regular simplex (pairwise cosine -1/(d-1)),
                chi norms; the lowest-MSE weight-independent coupling for positive features.
==============  ============================================================

Each takes ``random_state`` as None, an int, a :class:`numpy.random.RandomState` or a
:class:`numpy.random.Generator`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy import stats
from sklearn.utils import check_random_state

from favorkit._kernels.fwht import fwht_rows_inplace
from favorkit._typing import ArrayLike, NDArray, ProjectionName, RandomStateLike, Rng

__all__ = [
    "PROJECTIONS",
    "draw",
    "gaussian",
    "orthogonal",
    "qmc",
    "resolve_rng",
    "simplex",
    "structured",
]


def resolve_rng(random_state: RandomStateLike) -> Rng:
    """A Generator or RandomState from any accepted seed (Generators pass through).

    ``None``, an int or a ``RandomState`` go through scikit-learn's
    ``check_random_state``; a ``numpy.random.Generator`` is used as it is.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import sampling
    >>> rng = np.random.default_rng(0)
    >>> sampling.resolve_rng(rng) is rng
    True
    >>> type(sampling.resolve_rng(0)).__name__
    'RandomState'
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    return check_random_state(random_state)


def _seed_from(rng):
    """A 63-bit integer seed drawn from ``rng`` (for samplers that need their own Generator)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**63 - 1))
    return int(rng.randint(0, 2**31 - 1)) * 2**31 + int(rng.randint(0, 2**31 - 1))


def _check_shape(n_components, n_features):
    for name, value in (("n_components", n_components), ("n_features", n_features)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _chi_norms(rng, n_rows, dim):
    """Lengths of fresh N(0, I_dim) vectors: chi_dim samples, independent of the directions.

    Drawing them from *fresh* Gaussians (not from the block that gave the directions) is
    what makes each row exactly N(0, I): direction and length of a Gaussian vector are
    independent; lengths taken from the block's own rows would correlate with its
    directions and bias the estimators.
    """
    return np.linalg.norm(rng.standard_normal((n_rows, dim)), axis=1)


def _haar_rows(rng, d, sign_fix=True):
    """The rows of a Haar-distributed d x d orthogonal matrix.

    QR of a Gaussian block, then ``Q *= sign(diag(R))``: Householder QR alone does not give
    a Haar matrix (row i leans towards ±e_i), and that lean biases the positive softmax
    estimator by 7–15 % (Mezzadri 2007, "How to generate random matrices from the classical
    compact groups"; the official Performer code misses the fix).
    """
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    if sign_fix:
        q *= np.sign(np.diag(r))
    return q.T


def gaussian(
    n_components: int, n_features: int, random_state: RandomStateLike = None
) -> NDArray[np.float64]:
    """Independent standard Gaussian rows (the paper's iid random features).

    Parameters
    ----------
    n_components : int
        Number of rows m.
    n_features : int
        Input dimension d.
    random_state : None, int, RandomState or Generator, default=None
        Source of randomness.

    Returns
    -------
    W : ndarray of shape (n_components, n_features), float64

    Examples
    --------
    >>> from favorkit import sampling
    >>> sampling.gaussian(3, 2, random_state=0).shape
    (3, 2)
    """
    _check_shape(n_components, n_features)
    return resolve_rng(random_state).standard_normal((n_components, n_features))


def orthogonal(
    n_components: int,
    n_features: int,
    random_state: RandomStateLike = None,
    *,
    norms: Literal["chi", "fixed"] = "chi",
    sign_fix: bool = True,
) -> NDArray[np.float64]:
    """Orthogonal random features (ORF): Haar-orthogonal blocks with chi or fixed norms.

    Rows come in independent blocks of ``d = n_features`` exactly orthogonal directions; the
    last block is truncated when ``m`` is not a multiple of ``d`` (Sec. 2.4). A block is
    the Q factor of a Gaussian ``d x d`` matrix with its column signs set by
    ``Q *= sign(diag(R))`` (see ``_haar_rows`` for why the fix matters).

    Parameters
    ----------
    n_components : int
        Number of rows m (any positive integer; m > d uses ceil(m / d) independent blocks).
    n_features : int
        Input dimension d.
    random_state : None, int, RandomState or Generator, default=None
        Source of randomness.
    norms : {"chi", "fixed"}, default="chi"
        ``"chi"`` gives every row an independent chi_d length, so each row is exactly
        N(0, I_d) and the estimators stay unbiased. ``"fixed"`` sets every length to
        ``sqrt(d)``: the paper's regularized softmax kernel SMREG (Theorem 1), which
        *underestimates* the softmax kernel.
    sign_fix : bool, default=True
        Apply the QR sign fix. ``False`` reproduces the biased construction of the official
        Performer code and of performer-pytorch; it exists only so that experiments and tests
        can measure that bias. Do not use it for estimation.

    Returns
    -------
    W : ndarray of shape (n_components, n_features), float64

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import sampling
    >>> W = sampling.orthogonal(4, 4, random_state=0, norms="fixed")
    >>> np.allclose(W @ W.T, 4 * np.eye(4))
    True
    """
    _check_shape(n_components, n_features)
    if norms not in ("chi", "fixed"):
        raise ValueError(f'norms must be "chi" or "fixed", got {norms!r}.')
    rng = resolve_rng(random_state)
    d = n_features
    n_blocks = -(-n_components // d)
    blocks = [_haar_rows(rng, d, sign_fix) for _ in range(n_blocks)]
    directions = np.concatenate(blocks, axis=0)[:n_components]
    if norms == "chi":
        lengths = _chi_norms(rng, n_components, d)
    else:
        lengths = np.full(n_components, np.sqrt(d))
    return directions * lengths[:, None]


def structured(
    n_components: int, n_features: int, random_state: RandomStateLike = None
) -> NDArray[np.float64]:
    """Structured orthogonal random features (SORF): ``H D3 H D2 H D1`` blocks.

    ``d`` is padded to the next power of two ``p``; each block is the ``p x p`` matrix
    ``H D3 H D2 H D1`` (``H`` the normalized Walsh–Hadamard matrix, ``D_k`` independent
    random sign diagonals), whose rows are orthonormal and close to uniform on the sphere.
    Each row gets an independent chi_p length and is then restricted to the first ``d``
    coordinates (the zero padding). Blocks are independent; the last is truncated.

    The rows are only approximately Gaussian: estimators built on SORF carry a small bias
    that vanishes as ``d`` grows (Yu et al. 2016, "Orthogonal Random Features"). Prefer
    ``orthogonal`` when unbiasedness matters; SORF is built in O(p log p) per row.

    Parameters
    ----------
    n_components : int
        Number of rows m.
    n_features : int
        Input dimension d.
    random_state : None, int, RandomState or Generator, default=None
        Source of randomness.

    Returns
    -------
    W : ndarray of shape (n_components, n_features), float64

    Examples
    --------
    >>> from favorkit import sampling
    >>> sampling.structured(8, 5, random_state=0).shape
    (8, 5)
    """
    _check_shape(n_components, n_features)
    rng = resolve_rng(random_state)
    d = n_features
    p = 1 << (d - 1).bit_length()
    n_blocks = -(-n_components // p)
    blocks = []
    for _ in range(n_blocks):
        signs = np.where(rng.random((3, p)) < 0.5, -1.0, 1.0)
        # Columns j < d of the block are M e_j: push the basis vectors through
        # D1, H, D2, H, D3, H (rows of `cols` are the vectors being transformed).
        cols = np.zeros((d, p))
        cols[np.arange(d), np.arange(d)] = 1.0
        for k in range(3):
            cols *= signs[k]
            fwht_rows_inplace(cols)
        cols *= p**-1.5  # three unnormalized transforms: H_normalized = H / sqrt(p)
        blocks.append(cols.T)  # (p, d): row i of the block restricted to the first d coords
    directions = np.concatenate(blocks, axis=0)[:n_components]
    return directions * _chi_norms(rng, n_components, p)[:, None]


def qmc(
    n_components: int, n_features: int, random_state: RandomStateLike = None
) -> NDArray[np.float64]:
    """Quasi-Monte Carlo rows: scrambled Sobol points through the inverse normal CDF.

    Each scrambled Sobol point is marginally uniform on the unit cube, so each row is
    marginally N(0, I_d) and the estimators stay unbiased; the points are spread more evenly
    than iid draws. The sequence is drawn at the next power of two (Sobol's balance
    property) and truncated.

    Parameters
    ----------
    n_components : int
        Number of rows m.
    n_features : int
        Input dimension d (at most 21201, scipy's Sobol limit).
    random_state : None, int, RandomState or Generator, default=None
        Source of randomness (seeds the scrambling).

    Returns
    -------
    W : ndarray of shape (n_components, n_features), float64

    Examples
    --------
    >>> from favorkit import sampling
    >>> sampling.qmc(5, 3, random_state=0).shape
    (5, 3)
    """
    _check_shape(n_components, n_features)
    if n_features > 21201:
        raise ValueError(
            f"projection='qmc' supports n_features <= 21201 (scipy's Sobol), got {n_features}; "
            "use projection='orthogonal' instead."
        )
    seed = _seed_from(resolve_rng(random_state))
    sobol = stats.qmc.Sobol(n_features, scramble=True, seed=np.random.default_rng(seed))
    u = sobol.random_base2(max(0, (int(n_components) - 1).bit_length()))[:n_components]
    # Scrambled points are never exactly 0 or 1, but guard against ±inf all the same.
    eps = np.finfo(np.float64).eps
    return stats.norm.ppf(np.clip(u, eps, 1.0 - eps))


def simplex(
    n_components: int, n_features: int, random_state: RandomStateLike = None
) -> NDArray[np.float64]:
    """Simplex random features (SimRF; Reid et al. 2023, "Simplex Random Features").

    Each block of ``d`` rows is ``D_chi S R``: ``R`` a Haar rotation (sign-fixed QR), ``S``
    the unit vectors ``s_i = (e_i - 1/d) / sqrt(1 - 1/d)`` of a regular simplex (pairwise
    cosine ``-1/(d-1)``) and ``D_chi`` independent chi_d lengths. Each row is marginally
    N(0, I_d), so every positive estimator stays unbiased, and the negative coupling gives
    the smallest MSE among weight-independent couplings of positive (and OPRF) features
    (Reid et al. 2023). For trigonometric features there is no such guarantee. Blocks are
    independent; the last is truncated. For ``d = 1`` a block is a single ±1 direction.

    Parameters
    ----------
    n_components : int
        Number of rows m.
    n_features : int
        Input dimension d.
    random_state : None, int, RandomState or Generator, default=None
        Source of randomness.

    Returns
    -------
    W : ndarray of shape (n_components, n_features), float64

    Examples
    --------
    >>> import numpy as np
    >>> from favorkit import sampling
    >>> W = sampling.simplex(4, 4, random_state=0)
    >>> U = W / np.linalg.norm(W, axis=1, keepdims=True)
    >>> np.allclose(U @ U.T, np.where(np.eye(4) == 1, 1.0, -1 / 3))
    True
    """
    _check_shape(n_components, n_features)
    rng = resolve_rng(random_state)
    d = n_features
    n_blocks = -(-n_components // d)
    if d == 1:
        directions = np.where(rng.random((n_blocks, 1)) < 0.5, -1.0, 1.0)
    else:
        vertices = (np.eye(d) - 1.0 / d) / np.sqrt(1.0 - 1.0 / d)
        directions = np.concatenate([vertices @ _haar_rows(rng, d) for _ in range(n_blocks)])
    return directions[:n_components] * _chi_norms(rng, n_components, d)[:, None]


# A sampler: (n_components, n_features, random_state) -> W of that shape, float64.
PROJECTIONS: dict[str, Callable[[int, int, RandomStateLike], NDArray[np.float64]]] = {
    "iid": gaussian,
    "gaussian": gaussian,
    "orthogonal": orthogonal,
    "structured": structured,
    "qmc": qmc,
    "simplex": simplex,
}


def draw(
    projection: ProjectionName | ArrayLike,
    n_components: int,
    n_features: int,
    random_state: RandomStateLike = None,
) -> NDArray[np.float64]:
    """Draw (or validate) a projection matrix by name.

    Parameters
    ----------
    projection : str or array-like of shape (n_components, n_features)
        One of ``"iid"`` (alias ``"gaussian"``), ``"orthogonal"``, ``"structured"``,
        ``"qmc"``, ``"simplex"``, or a user-supplied matrix, which is validated and
        returned as float64.
    n_components, n_features : int
        The shape asked for.
    random_state : None, int, RandomState or Generator, default=None

    Returns
    -------
    W : ndarray of shape (n_components, n_features), float64

    Examples
    --------
    >>> from favorkit import sampling
    >>> sampling.draw("orthogonal", 6, 3, random_state=0).shape
    (6, 3)
    """
    if isinstance(projection, str):
        try:
            sampler = PROJECTIONS[projection]
        except KeyError:
            names = ", ".join(repr(k) for k in PROJECTIONS)
            raise ValueError(
                f"projection must be one of {names} or an array of shape "
                f"(n_components, n_features); got {projection!r}."
            ) from None
        return sampler(n_components, n_features, random_state)
    W = np.asarray(projection)
    if W.dtype.kind not in "fiu":
        raise ValueError(f"A user projection must be a real numeric array, got dtype {W.dtype}.")
    W = W.astype(np.float64)
    if W.shape != (n_components, n_features):
        if W.ndim != 2:
            problem = f"it has {W.ndim} dimensions"
        else:
            problems = []
            if W.shape[0] != n_components:
                problems.append(f"{W.shape[0]} rows, not n_components = {n_components}")
            if W.shape[1] != n_features:
                problems.append(
                    f"{W.shape[1]} columns, not d = {n_features}, the input's number of features"
                )
            problem = "; ".join(problems)
        raise ValueError(
            f"projection has shape {W.shape}, but a projection matrix has one row ω_i per "
            f"random projection and one column per input feature, i.e. shape (n_components, "
            f"d) = ({n_components}, {n_features}): {problem}."
        )
    if not np.all(np.isfinite(W)):
        raise ValueError("projection contains NaN or inf; pass a finite matrix.")
    return W
