"""Plumbing shared by every experiment: arguments, seeds, parallel repeats, progress, output.

An experiment module defines ``NAME``, ``TITLE``, ``PARAMS = {"smoke": ..., "quick": ...,
"full": ...}`` and ``run(ctx) -> (claims, notes)``, and ends with
``if __name__ == "__main__": main_for(sys.modules[__name__])``. This module then gives it

* the command line ``[--smoke | --quick | --full] [--seed S] [--n-jobs J] [--out DIR]
  [--dask-scheduler ADDRESS]`` (plus the experiment's own options);
* independent per-task seeds (``numpy.random.SeedSequence(seed).spawn``) so results do not
  depend on ``--n-jobs`` or on the backend;
* ``ctx.map(fn, tasks)``: joblib repeats with a tqdm progress bar; on a cluster the same call
  runs on joblib's Dask backend (``--dask-scheduler``);
* ``write_csv``, ``save_figure`` (Agg backend) and ``summary.md`` with each claim, its theory
  and measured value, the statistical criterion and PASS/FAIL, plus run metadata;
* verdict helpers that state their criterion in words, and ``parse_summary`` for the report.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import joblib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from scipy import stats
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "results"
# Family-wise error rate of each claim's test. A report holds ~25 claims; at 0.001 each, the
# chance that some true claim FAILs by bad luck is about 2.5 %.
ALPHA = 0.001
MODES = ("smoke", "quick", "full")


# --------------------------------------------------------------------------- claims, verdicts


@dataclass
class Claim:
    """One checked statement: what the paper says, what theory gives, what we measured."""

    claim: str
    theory: str
    measured: str
    criterion: str
    passed: bool
    # False where heavy tails make the Monte Carlo unable to check the closed form: the
    # verdict is then UNVERIFIABLE, neither PASS nor FAIL, and ``reason`` says why.
    verifiable: bool = True
    reason: str = ""

    @property
    def verdict(self):
        if not self.verifiable:
            return "UNVERIFIABLE"
        return "PASS" if self.passed else "FAIL"

    def why(self):
        """One line: why the verdict is not PASS (empty for a PASS)."""
        if self.verdict == "PASS":
            return ""
        return self.reason or f"measured {self.measured}; needed: {self.criterion}"


def observable_sample(log_var, n):
    """Whether the mean of ``n`` log-normal-like terms of log-variance ``log_var`` can
    observe its expectation: ``n >= 4 e^{log_var}`` (below it, the typical sample mean falls
    short of the mean by more than ~5 %, the mean being carried by terms rarer than 1/n)."""
    return np.asarray(n, dtype=float) >= 4.0 * np.exp(np.minimum(log_var, 700.0))


def bonferroni(n_tests, alpha=ALPHA, two_sided=True):
    """Critical |z| for ``n_tests`` z-tests at family-wise level ``alpha`` (Bonferroni)."""
    n_tests = max(int(n_tests), 1)
    return float(stats.norm.isf(alpha / (n_tests * (2 if two_sided else 1))))


def all_within(z, alpha=ALPHA):
    """Two-sided family test of H0 "every point agrees with theory".

    Returns ``(passed, max|z|, threshold, criterion)``: PASS unless some ``|z|`` exceeds the
    Bonferroni critical value for the whole family at level ``alpha``.
    """
    z = np.asarray(z, dtype=float).ravel()
    thr = bonferroni(z.size, alpha)
    worst = float(np.max(np.abs(z))) if z.size else 0.0
    text = (
        f"all {z.size} z-scores (mean minus theory over its standard error from the repeats) "
        f"within ±{thr:.2f} (two-sided, Bonferroni, family α={alpha})"
    )
    return bool(worst < thr), worst, thr, text


def all_below(z, alpha=ALPHA, what="bound"):
    """One-sided family test of H0 "no point exceeds its upper ``what``" (z = (x - bound)/se)."""
    z = np.asarray(z, dtype=float).ravel()
    thr = bonferroni(z.size, alpha, two_sided=False)
    worst = float(np.max(z)) if z.size else -np.inf
    text = (
        f"no point above the {what} by more than {thr:.2f} standard errors "
        f"(one-sided, Bonferroni over {z.size}, family α={alpha})"
    )
    return bool(worst < thr), worst, thr, text


def significantly_positive(z, alpha=ALPHA):
    """One-sided test that a pooled effect is > 0: PASS if ``z > z_{1-alpha}``."""
    thr = float(stats.norm.isf(alpha))
    return bool(z > thr), thr, f"one-sided z > {thr:.2f} (α={alpha})"


def stouffer(z):
    """Pooled z of independent z-scores (Stouffer's method)."""
    z = np.asarray(z, dtype=float).ravel()
    return float(z.sum() / np.sqrt(z.size))


def mean_se(samples, axis=0):
    """Mean and its standard error (ddof=1) along ``axis``."""
    samples = np.asarray(samples, dtype=float)
    n = samples.shape[axis]
    return samples.mean(axis=axis), samples.std(axis=axis, ddof=1) / np.sqrt(n)


def fmt(x, digits=3):
    """Compact number formatting for summaries."""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if not np.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{digits}g}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------- run context


@dataclass
class Context:
    """What ``run`` receives: parsed args, parameters for the mode, output dir, seeds."""

    name: str
    args: argparse.Namespace
    params: dict
    out: Path
    started: float = field(default_factory=time.perf_counter)

    @property
    def mode(self):
        return self.args.mode

    @property
    def smoke(self):
        return self.args.mode == "smoke"

    def seeds(self, n, stream=0):
        """``n`` independent integer seeds (the same for any --n-jobs or backend)."""
        root = np.random.SeedSequence([self.args.seed, stream])
        return [int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for s in root.spawn(n)]

    def map(self, fn, tasks, desc=None):
        """``[fn(t) for t in tasks]`` through joblib, in order, with a progress bar."""
        tasks = list(tasks)
        bar = tqdm(
            total=len(tasks),
            desc=desc or self.name,
            leave=False,
            disable=self.args.no_progress,
            file=sys.stderr,
        )
        if self.args.n_jobs == 1 and self.args.dask_scheduler is None:
            out = []
            for t in tasks:
                out.append(fn(t))
                bar.update()
            bar.close()
            return out
        with _backend(self.args):
            gen = joblib.Parallel(n_jobs=self.args.n_jobs, return_as="generator")(
                joblib.delayed(fn)(t) for t in tasks
            )
            out = []
            for r in gen:
                out.append(r)
                bar.update()
        bar.close()
        return out

    def path(self, filename):
        return self.out / filename


@contextlib.contextmanager
def _backend(args):
    """joblib's default (loky) locally, or the Dask backend on a cluster scheduler."""
    if args.dask_scheduler is None:
        yield
        return
    from dask.distributed import Client  # optional: only for cluster runs

    with Client(args.dask_scheduler), joblib.parallel_config(backend="dask"):
        yield


def build_parser(module):
    p = argparse.ArgumentParser(
        prog=f"python experiments/{module.NAME}.py",
        description=(module.__doc__ or "").strip().splitlines()[0],
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="seconds to a minute on 2 cores (default)",
    )
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="paper scale")
    g.add_argument(
        "--smoke",
        dest="mode",
        action="store_const",
        const="smoke",
        help="tiny parameters for the test suite (verdicts not meaningful)",
    )
    p.set_defaults(mode="quick")
    p.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    p.add_argument("--n-jobs", type=int, default=1, help="joblib workers (-1: all cores)")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="results root; writes OUT/<name>/ (default results/)",
    )
    p.add_argument(
        "--dask-scheduler",
        default=None,
        metavar="ADDRESS",
        help="run repeats on a Dask cluster (joblib's dask backend)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    if hasattr(module, "add_arguments"):
        module.add_arguments(p)
    return p


def main_for(module, argv=None):
    """Parse ``argv``, run ``module.run``, write ``summary.md``; return the claims."""
    args = build_parser(module).parse_args(argv)
    out = Path(args.out) / module.NAME
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(module.NAME, args, dict(module.PARAMS[args.mode]), out)
    claims, notes = module.run(ctx)
    meta = metadata(ctx)
    write_summary(ctx, module.TITLE, claims, notes, meta)
    if not args.no_progress:
        verdicts = ", ".join(c.verdict for c in claims)
        print(f"{module.NAME}: {verdicts} ({meta['wall_time_s']:.1f} s)", file=sys.stderr)
    return claims


# --------------------------------------------------------------------------- outputs


def write_csv(path, rows):
    """Write a list of flat dicts (same keys) as CSV."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in r.items()})


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plain_log_ticks(ax, values, axis="x"):
    """A log axis ticked at ``values`` with plain labels and no minor labels (matplotlib's
    default labels every minor tick of a short log range, and they overlap)."""
    values = np.asarray(values)
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    getattr(ax, f"set_{axis}scale")("log")
    setter(values, [fmt(v) for v in values])
    getattr(ax, f"{axis}axis").set_minor_formatter(matplotlib.ticker.NullFormatter())


def save_figure(fig, path):
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _git_commit():
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def metadata(ctx):
    import numba
    import scipy
    import sklearn

    import favorkit

    try:
        from threadpoolctl import threadpool_info

        blas = sorted({f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info()})
    except Exception:  # metadata must never break a run
        blas = []
    return {
        "experiment": ctx.name,
        "mode": ctx.mode,
        "seed": ctx.args.seed,
        "n_jobs": ctx.args.n_jobs,
        "backend": "dask" if ctx.args.dask_scheduler else "loky",
        "numba_threads": numba.get_num_threads(),
        "blas_threads": blas,
        "cpu_count": os.cpu_count(),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "favorkit": favorkit.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "numba": numba.__version__,
        "joblib": joblib.__version__,
        "matplotlib": matplotlib.__version__,
        "params": {
            k: (v if not isinstance(v, np.ndarray) else v.tolist()) for k, v in ctx.params.items()
        },
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_time_s": round(time.perf_counter() - ctx.started, 2),
    }


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_summary(ctx, title, claims, notes, meta):
    lines = [
        f"# {title}",
        "",
        f"Experiment `{ctx.name}`, mode `{ctx.mode}`, seed {ctx.args.seed}; figure "
        f"[`{ctx.name}.png`]({ctx.name}.png), data [`{ctx.name}.csv`]({ctx.name}.csv).",
        "",
        "## Claims",
        "",
        "| # | Claim | Theory | Measured | Criterion | Verdict |",
        "|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(claims, 1):
        cells = [str(i), c.claim, c.theory, c.measured, c.criterion, c.verdict]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    if ctx.smoke:
        lines += ["", "_Smoke mode: tiny parameters, verdicts are not meaningful._"]
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in notes] or ["- none"]
    lines += ["", "## Metadata", "", "```json", json.dumps(meta, indent=2, default=str), "```", ""]
    ctx.path("summary.md").write_text("\n".join(lines))


def parse_summary(path):
    """Read back a ``summary.md``: list of dicts with claim, theory, measured, criterion,
    verdict; raises ValueError if the claims table is missing or malformed."""
    text = Path(path).read_text()
    rows = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("| # | Claim |"):
            in_table = True
            continue
        if in_table:
            if line.startswith("|---"):
                continue
            if not line.startswith("|"):
                break
            cells = [c.strip().replace("\\|", "|") for c in _split_row(line)]
            if len(cells) != 6 or cells[5] not in ("PASS", "FAIL", "UNVERIFIABLE"):
                raise ValueError(f"malformed claim row in {path}: {line!r}")
            rows.append(
                dict(
                    zip(
                        ["n", "claim", "theory", "measured", "criterion", "verdict"],
                        cells,
                        strict=True,
                    )
                )
            )
    if not rows:
        raise ValueError(f"no claims table in {path}")
    return rows


def _split_row(line):
    cells, cur, i = [], "", 1
    body = line.strip()
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cur += "\\|"
            i += 2
            continue
        if ch == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    return cells


# --------------------------------------------------------------------------- test pairs


def planar_pairs(specs, d):
    """Pairs (x_i, y_i) in R^d with |x| = lx, |y| = ly at angle phi, in the first two axes.

    ``specs`` holds ``(lx, ly, phi)`` triples; every closed form here depends on a pair only
    through these three numbers, so the plane is chosen without loss of generality.
    """
    X = np.zeros((len(specs), d))
    Y = np.zeros((len(specs), d))
    for i, (lx, ly, phi) in enumerate(specs):
        X[i, 0] = lx
        Y[i, 0] = ly * np.cos(phi)
        if d > 1:
            Y[i, 1] = ly * np.sin(phi)
    return X, Y


# --------------------------------------------------------------------------- estimators


def kernel_samples(estimator, W, X, Y):
    """Per-projection samples of the softmax-kernel estimators, through favorkit's API.

    ``W`` (M, d) is handed to the transformer as a user projection; the return value
    ``S`` (n, M) has ``S[i, k]`` = the estimate of ``SM(X[i], Y[i]) = exp(X[i]·Y[i])`` from
    projection k alone, so the estimator with projections ``k in G`` is ``S[:, G].mean(1)``:

    * ``"positive"``:   ``Λ exp(ω_k·z)`` (``PositiveRandomFeatures``, Lemma 1);
    * ``"hyperbolic"``: ``Λ cosh(ω_k·z)`` (``PositiveRandomFeatures(estimator="hyperbolic")``);
    * ``"trig"``:       ``exp((|x|²+|y|²)/2) cos(ω_k·(x-y))`` (``OrthogonalRFF(kernel="softmax")``).

    The map knows its column blocks and scaling (``per_projection``).
    """
    from favorkit import OrthogonalRFF, PositiveRandomFeatures, maps

    M = W.shape[0]
    fmap = maps.get(estimator)
    if fmap.exponential:
        t = PositiveRandomFeatures(M, kernel="softmax", estimator=estimator, projection=W).fit(X)
    elif isinstance(fmap, maps.TrigMap):
        t = OrthogonalRFF(M, kernel="softmax", projection=W).fit(X)
    else:
        raise ValueError(f"no softmax-kernel transformer for the map {estimator!r}")
    return fmap.per_projection(t.transform(X), t.transform(Y))


def draw_groups(projection, n_groups, group_size, d, seed, **kwargs):
    """``n_groups`` independent projection matrices of ``group_size`` rows, stacked.

    ``group_size`` is rounded up to a multiple of ``d`` so that orthogonal blocks never
    straddle two groups (each group is then an independent draw). Returns (W, G).
    """
    from favorkit import sampling

    G = -(-group_size // d) * d
    if projection == "iid":
        W = sampling.gaussian(n_groups * G, d, random_state=seed)
    elif projection == "orthogonal":
        W = sampling.orthogonal(n_groups * G, d, random_state=seed, **kwargs)
    else:
        raise ValueError(f"unknown projection {projection!r}")
    return W, G


def prefix_estimates(samples, G, ms):
    """Estimates from the first ``m`` projections of each group: shape (n, n_groups, len(ms))."""
    n, M = samples.shape
    s = samples.reshape(n, M // G, G)
    c = np.cumsum(s, axis=2)
    return np.stack([c[:, :, m - 1] / m for m in ms], axis=2)


def iid_sq_error_sd(estimator, x, y, m):
    """Standard deviation of the squared error of an iid estimator with m projections.

    The mean of m iid terms with central moments μ2, μ4 has E[err²] = μ2/m and
    E[err⁴] = (μ4 + 3(m-1)μ2²)/m³, so sd(err²) = sqrt(E[err⁴] - (μ2/m)²). Used as the
    standard error under H0 for the Lemma 2 z-tests: the sample sd of heavy-tailed squared
    errors is itself too noisy (and correlated with the sample mean) to standardize with.
    """
    from favorkit import maps

    fmap = maps.get(estimator)
    r1, r2, r3, r4 = (fmap.term_moment(x, y, j) for j in (1, 2, 3, 4))
    mu2 = r2 - r1**2
    mu4 = r4 - 4 * r1 * r3 + 6 * r1**2 * r2 - 3 * r1**4
    m = np.asarray(m, dtype=float)
    e4 = (mu4 + 3 * (m - 1) * mu2**2) / m**3
    return np.sqrt(np.maximum(e4 - (mu2 / m) ** 2, 0.0))


# --------------------------------------------------------------------------- attention data


def add_attention_data_argument(p):
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="your own attention inputs: an .npz with arrays Q (L, d), K (L, d) and "
        "optionally V (L, d_v), or an (n, d) .npy whose rows attend to themselves "
        "(Q = K = rows); V ~ N(0, 1) when not given; at most the mode's L rows are used",
    )


def load_attention_data(path, max_rows, seed):
    """``(Q, K, V, source)`` in float64 from ``--data`` (see :func:`add_attention_data_argument`).

    Rows beyond ``max_rows`` are subsampled (the same rows of Q, K and V) with ``seed``.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    if path.suffix == ".npz":
        with np.load(path) as f:
            if "Q" not in f or "K" not in f:
                raise SystemExit(f"--data {path}: an .npz needs arrays 'Q' and 'K' (and 'V')")
            Q, K = f["Q"], f["K"]
            V = f["V"] if "V" in f else None
    else:
        Q = K = np.load(path)
        V = None
    if Q.ndim != 2 or K.ndim != 2 or Q.shape[1] != K.shape[1] or len(Q) < 2 or len(K) < 2:
        raise SystemExit(
            f"--data {path}: Q and K must be (L, d) arrays with the same d and L >= 2, got "
            f"{Q.shape} and {K.shape}"
        )
    if V is None:
        V = rng.standard_normal((len(K), Q.shape[1]))
    if V.ndim != 2 or len(V) != len(K):
        raise SystemExit(f"--data {path}: V must be (L_k, d_v) with L_k = {len(K)}, got {V.shape}")
    if len(Q) > max_rows:
        Q = Q[np.sort(rng.choice(len(Q), max_rows, replace=False))]
    if len(K) > max_rows:
        keep = np.sort(rng.choice(len(K), max_rows, replace=False))
        K, V = K[keep], V[keep]
    Q, K, V = (np.asarray(X, dtype=np.float64) for X in (Q, K, V))
    if not all(np.isfinite(X).all() for X in (Q, K, V)):
        raise SystemExit(f"--data {path}: the arrays hold NaN or inf")
    return Q, K, V, str(path)


def scaled_norm(Q, K):
    """The root-mean-square of ``|x|/d^{1/4}`` over the rows of Q and K (the norm of the
    inputs after the logit scaling ``q·k/√d = (q/d^{1/4})·(k/d^{1/4})``)."""
    d = Q.shape[1]
    sq = np.concatenate([np.einsum("ij,ij->i", X, X) for X in (Q, K)])
    return float(np.sqrt(sq.mean() / np.sqrt(d)))


# --------------------------------------------------------------------------- attention error

# Fig. 4's estimators and projections, shared by attention_error and attention_regimes.
ATTENTION_ESTIMATORS = ("trig", "positive", "hyperbolic")
ATTENTION_PROJECTIONS = ("iid", "orthogonal")
# The prediction's samples (query rows, key pairs per row): larger than the library's
# defaults, so that its own sampling error stays small next to the repeats'.
PREDICT = {"n_queries": 256, "n_pairs": 1024}
# A prediction whose standard error exceeds this share of its value is not resolved (its
# sampled key-pair sums are noise) and is not checked against the measurement; where it is
# resolved, below 0.5 and not heavy-tailed it must be within FACTOR of the measured error.
RESOLVED = 0.25
FACTOR = 1.5


def n_projections(estimator, r):
    """Projections m giving r features (the paired maps have two blocks of m)."""
    from favorkit import maps

    return max(r // len(maps.get(estimator).blocks), 1)


def predict_grid(Q, K, V, rs):
    """``predict_attention_error`` for every Fig. 4 estimator x projection x feature count r:
    (e, p, r, [relative error, its SE, heavy-tailed, MSE per entry]), NaN where there is no
    closed form (trig with orthogonal projections)."""
    from favorkit.accuracy import predict_attention_error

    out = np.full((len(ATTENTION_ESTIMATORS), len(ATTENTION_PROJECTIONS), len(rs), 4), np.nan)
    for e, est in enumerate(ATTENTION_ESTIMATORS):
        for p, proj in enumerate(ATTENTION_PROJECTIONS):
            if est == "trig" and proj != "iid":
                continue
            for j, r in enumerate(rs):
                pred = predict_attention_error(
                    Q, K, V, n_projections(est, r), estimator=est, projection=proj, **PREDICT
                )
                out[e, p, j] = (
                    pred.relative_error,
                    pred.standard_error,
                    pred.heavy_tailed,
                    pred.mse,
                )
    return out
