"""Outputs of every public path for fixed seeds, to prove a refactoring changes no bit.

Run it before and after a change that must not alter results, then compare::

    .venv/bin/python -m tests.golden_outputs save /tmp/before.pkl
    # ... the change ...
    .venv/bin/python -m tests.golden_outputs compare /tmp/before.pkl

It covers the transformers (every estimator, kernel, projection and feature layout, float32
and float64, dense and CSR, several row blocks), attention (every estimator and
generalized kernel, bidirectional and causal, masked, several heads and blocks, the
diagnostic matrix, the functions), exact attention, every function of
:mod:`favorkit.theory` and the experiments' estimator helpers. ``compare`` prints every
output that differs, with the largest difference in ulps, and exits 1 if any does.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

PROJECTIONS = ("iid", "gaussian", "orthogonal", "structured", "qmc", "simplex")
DTYPES = (np.float32, np.float64)


def _transformers(out):
    from favorkit import OrthogonalRFF, PositiveRandomFeatures

    rng = np.random.default_rng(0)
    X = rng.normal(scale=0.4, size=(4500, 12))  # three row blocks
    Y = rng.normal(scale=0.4, size=(300, 12)) * np.linspace(0.5, 2, 12)
    for dtype in DTYPES:
        for sparse in (False, True):
            Xd = X.astype(dtype)
            Xi = sp.csr_matrix(np.where(np.abs(Xd) < 0.2, 0, Xd)) if sparse else Xd
            for projection in PROJECTIONS:
                for kernel in ("softmax", "gaussian"):
                    for estimator in ("positive", "hyperbolic", "optimal", "saderf"):
                        prf = PositiveRandomFeatures(
                            16,
                            kernel=kernel,
                            gamma=0.7,
                            estimator=estimator,
                            projection=projection,
                            random_state=3,
                        ).fit(Xi, keys=Y)
                        key = ("prf", dtype.__name__, sparse, projection, kernel, estimator)
                        out[(*key, "query")] = prf.transform(Xi)
                        out[(*key, "key")] = prf.transform(Xi, side="key")
                        out[(*key, "params")] = np.append(prf.query_scale_, prf.gerf_a_)
                    for features in ("cossin", "cos"):
                        rff = OrthogonalRFF(
                            16,
                            kernel=kernel,
                            gamma=0.3,
                            projection=projection,
                            features=features,
                            random_state=3,
                        ).fit(Xi)
                        key = ("rff", dtype.__name__, sparse, projection, kernel, features)
                        out[key] = rff.transform(Xi)


def _activation(kernel):
    """Attention's activation argument, under whichever name the code being compared uses."""
    from favorkit import FavorAttention

    if kernel == "softmax":
        return {}
    return {"activation" if "activation" in FavorAttention().get_params() else "kernel": kernel}


@contextlib.contextmanager
def _small_blocks():
    """Blocks of 48 (causal 40) rows, chunks of 16 (through ``tuned`` or module globals)."""
    try:
        from favorkit.attention._engine import tuned
    except ImportError:
        import favorkit.attention as fa

        saved = (fa.BLOCK_ROWS, fa.CAUSAL_BLOCK_ROWS, fa.CHUNK, fa.KEY_SUBBLOCK)
        fa.BLOCK_ROWS, fa.CAUSAL_BLOCK_ROWS, fa.CHUNK, fa.KEY_SUBBLOCK = 48, 40, 16, 20
        try:
            yield
        finally:
            fa.BLOCK_ROWS, fa.CAUSAL_BLOCK_ROWS, fa.CHUNK, fa.KEY_SUBBLOCK = saved
        return
    with tuned(block_rows=48, causal_block_rows=40, chunk=16, key_subblock=20):
        yield


def _attention(out):
    from favorkit import FavorAttention, favor_attention, softmax_attention

    rng = np.random.default_rng(1)
    Q, K, V = rng.normal(scale=0.6, size=(3, 2, 2, 2300, 8))  # two bidirectional blocks
    V[..., 0] = 1e20  # a huge value column
    mask = rng.random((2, 2300)) < 0.1
    kernels = [("softmax", e) for e in ("positive", "hyperbolic", "trig", "optimal", "saderf")]
    kernels += [(k, "positive") for k in ("relu", "elu", "exp", "abs", np.tanh)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dtype in DTYPES:
            Qd, Kd, Vd = (A.astype(dtype) for A in (Q, K, V))
            for projection in PROJECTIONS:
                for kernel, estimator in kernels:
                    att = FavorAttention(
                        16, estimator=estimator, projection=projection, random_state=5,
                        **_activation(kernel),
                    ).fit(Qd, keys=Kd)  # fmt: skip
                    name = getattr(kernel, "__name__", kernel)
                    key = ("att", dtype.__name__, projection, name, estimator)
                    for causal in (False, True):
                        out[(*key, causal)] = att.attend(Qd, Kd, Vd, causal=causal)
                        out[(*key, causal, "mask")] = att.attend(
                            Qd, Kd, Vd, causal=causal, key_padding_mask=mask
                        )
                        out[(*key, causal, "matrix")] = att.attention_matrix(
                            Qd[:, :, :50], Kd[:, :, :50], causal=causal
                        )
            out[("favor_attention", dtype.__name__)] = favor_attention(
                Qd, Kd, Vd, n_components=32, random_state=2
            )
            out[("softmax_attention", dtype.__name__)] = softmax_attention(
                Qd[..., :500, :], Kd[..., :500, :], Vd[..., :500, :], causal=True
            )
        # The causal kernels with breaks at many keys, and small blocks.
        with _small_blocks():
            for estimator in ("positive", "hyperbolic", "trig", "optimal"):
                att = FavorAttention(16, estimator=estimator, random_state=5).fit(Q * 30)
                for causal in (False, True):
                    out[("small blocks", estimator, causal)] = att.attend(
                        Q[..., :300, :] * 30, K[..., :300, :] * 30, V[..., :300, :],
                        causal=causal, key_padding_mask=mask[:, :300],
                    )  # fmt: skip


def _theory(out):
    from favorkit import theory

    rng = np.random.default_rng(2)
    x, y = rng.normal(scale=0.5, size=(2, 7, 6))
    for name in ("softmax_kernel", "smreg_kernel"):
        out[("theory", name)] = getattr(theory, name)(x, y)
    for name in ("mse_trig", "mse_positive", "mse_hyperbolic", "orthogonal_mse_bound"):
        out[("theory", name)] = getattr(theory, name)(x, y, 4)
    out[("theory", "mse_ratio")] = theory.mse_ratio(np.linspace(0.1, 3, 9), 1.3)
    out[("theory", "crossover_angle")] = np.asarray(theory.crossover_angle(1.2))
    out[("theory", "smreg_bounds")] = np.asarray(theory.smreg_bounds(16))
    out[("theory", "uniform_convergence_features")] = np.asarray(
        theory.uniform_convergence_features(0.1, 16, 2.0)
    )
    z = np.linspace(0, 30, 13)
    out[("theory", "gerf_relative_variance")] = theory.gerf_relative_variance(z, 16, -0.1)
    out[("theory", "optimal_gerf_a")] = theory.optimal_gerf_a(z, 16)
    out[("theory", "log_sphere_mgf")] = theory.log_sphere_mgf(z, 16)
    for coupling in ("iid", "orthogonal", "simplex"):
        out[("theory", "pair_covariance", coupling)] = theory.pair_covariance(z, 16, coupling)
        for hyperbolic in (False, True):
            out[("theory", "coupled_relative_mse", coupling, hyperbolic)] = (
                theory.coupled_relative_mse(
                    z,
                    16,
                    64,
                    a=0.0 if hyperbolic else -0.05,
                    coupling=coupling,
                    hyperbolic=hyperbolic,
                )
            )
    Q, K = rng.normal(scale=0.3, size=(2, 40, 16))
    for estimator in ("positive", "hyperbolic", "optimal", "saderf"):
        for kernel in ("softmax", "gaussian"):
            for projection in ("iid", "orthogonal", "simplex"):
                e = theory.expected_error(
                    Q, K, 64, estimator=estimator, kernel=kernel, gamma=0.5,
                    projection=projection,
                )  # fmt: skip
                key = ("theory", "expected_error", estimator, kernel, projection)
                out[key] = np.array(
                    [
                        e.mean, e.median, e.max, e.gerf_a, e.mean_single_variance,
                        e.mean_pair_covariance, e.mean_log1p_variance, e.relative_mse(100),
                        *e.query_scale,
                    ]
                )  # fmt: skip
                out[(*key, "per_pair")] = e.per_pair
        out[("theory", "features_needed", estimator)] = np.asarray(
            theory.features_needed(Q, K, 0.1, estimator=estimator)
        )


def _experiments(out):
    root = Path(__file__).resolve().parent.parent / "experiments"
    sys.path.insert(0, str(root))
    import _common

    rng = np.random.default_rng(3)
    x, y = rng.normal(scale=0.5, size=(2, 5, 4))
    W = rng.normal(size=(12, 4))
    for estimator in ("positive", "hyperbolic", "trig"):
        out[("experiments", "kernel_samples", estimator)] = _common.kernel_samples(
            estimator, W, x, y
        )
        out[("experiments", "iid_sq_error_sd", estimator)] = _common.iid_sq_error_sd(
            estimator, x[:, None], y[:, None], np.array([4, 16])
        )


def collect():
    out = {}
    for part in (_transformers, _attention, _theory, _experiments):
        part(out)
    return out


def _ulps(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind != "f":
        return np.inf
    spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(a.dtype))
    with np.errstate(invalid="ignore"):
        return float(np.nanmax(np.abs(a.astype(float) - b.astype(float)) / spacing))


def compare(before, after):
    differ = []
    for key in sorted(set(before) | set(after), key=str):
        if key not in before or key not in after:
            differ.append((key, "missing on one side"))
            continue
        a, b = np.asarray(before[key]), np.asarray(after[key])
        if a.shape != b.shape or a.dtype != b.dtype:
            differ.append((key, f"shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}"))
        elif not np.array_equal(a, b, equal_nan=True):
            differ.append((key, f"{_ulps(a, b):.3g} ulp at most"))
    return differ


def main(argv):
    if len(argv) != 2 or argv[0] not in ("save", "compare"):
        print(__doc__)
        return 2
    outputs = collect()
    if argv[0] == "save":
        with open(argv[1], "wb") as f:
            pickle.dump(outputs, f)
        print(f"{len(outputs)} outputs saved to {argv[1]}")
        return 0
    with open(argv[1], "rb") as f:
        before = pickle.load(f)
    differ = compare(before, outputs)
    for key, what in differ:
        print("DIFFERS", key, what)
    print(f"{len(before)} outputs compared, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
