"""Transform speed of every kernel of OrthogonalRFF and of ArcCosineFeatures, against the
Gaussian kernel's [cos, sin] transform.

At n = 100 000, d = 64, m = 256 (float32 and float64), each transform is timed as the
median of interleaved repeats in one run and reported as a ratio to the Gaussian [cos, sin]
transform of the same dtype (target: <= 1.3 for every new kernel). The Laplacian and
Matérn kernels differ from the Gaussian one only in their frequencies (drawn once in
``fit``), so their transforms should cost the same; the arc-cosine features are one GEMM
and a ReLU-like pass, cheaper than sin and cos. scikit-learn's ``RBFSampler`` (cosine
features, m = 512 columns: the same output width) is shown for reference.

Run (an unhampered OpenBLAS, as the other benchmarks):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_kernels.py
"""

from __future__ import annotations

import sys

import numpy as np
from _common import interleaved_medians, save
from sklearn.kernel_approximation import RBFSampler

from favorkit import ArcCosineFeatures, OrthogonalRFF

N, D, M = 100_000, 64, 256


def contenders(X):
    make = {
        "gaussian": OrthogonalRFF(M, kernel="gaussian", gamma=0.01, random_state=0),
        "laplacian": OrthogonalRFF(M, kernel="laplacian", gamma=0.01, random_state=0),
        "laplacian, qmc": OrthogonalRFF(
            M, kernel="laplacian", gamma=0.01, projection="qmc", random_state=0
        ),
        **{
            f"matern {nu}": OrthogonalRFF(M, kernel="matern", nu=nu, gamma=0.01, random_state=0)
            for nu in (0.5, 1.5, 2.5)
        },
        **{f"arccos {n}": ArcCosineFeatures(M, degree=n, random_state=0) for n in (0, 1, 2)},
        "RBFSampler (2m columns)": RBFSampler(gamma=0.01, n_components=2 * M, random_state=0),
    }
    fitted = {name: t.fit(X) for name, t in make.items()}
    return {name: (lambda t=t: t.transform(X)) for name, t in fitted.items()}


def main():
    results = {}
    for dtype in (np.float32, np.float64):
        X = np.random.default_rng(0).standard_normal((N, D)).astype(dtype)
        times = interleaved_medians(contenders(X), repeats=7)
        base = times["gaussian"]
        ratios = {name: t / base for name, t in times.items()}
        name = np.dtype(dtype).name
        results[name] = {"seconds": times, "ratio_to_gaussian": ratios}
        print(f"{name}: gaussian [cos, sin] {1e3 * base:.1f} ms (median); ratios:")
        for k, r in ratios.items():
            print(f"  {k}: {r:.2f}")
    path = save("kernels", {"n": N, "d": D, "m": M, **results})
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
