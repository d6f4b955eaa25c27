"""Run every experiment (``--quick`` by default) and write ``results/REPORT.md``.

``make reproduce`` calls ``python experiments/run_all.py --quick``. Each experiment writes
``results/<name>/`` (CSV, PNG, summary.md); the report has one line per claim with its
verdict and links to the figure and the summary. A FAIL is a result and is reported, not an
error: the exit status is 1 only if an experiment crashed (or, with ``--strict``, if any
claim FAILed).

On your own data, run one experiment with ``--data``: ``variance_vs_features`` (an (n, d)
.npy of vectors), ``attention_error`` and ``attention_regimes`` (an .npz of Q, K and V, or an
(n, d) .npy that attends to itself); see ``python experiments/<name>.py --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

EXPERIMENTS = [
    "mse_ratio",
    "variance_vs_features",
    "orthogonal_vs_iid",
    "smreg",
    "attention_error",
    "attention_regimes",
    "uniform_convergence",
    "official_pitfalls",
    "beyond_favor",
    "kernel_zoo",
]


def parse(argv):
    p = argparse.ArgumentParser(prog="python experiments/run_all.py", description=__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="reduced repeats, about 2 minutes on 2 cores (what make reproduce runs)",
    )
    g.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="the paper's scale, about 25 minutes on 2 cores",
    )
    g.add_argument(
        "--smoke",
        dest="mode",
        action="store_const",
        const="smoke",
        help="tiny parameters for the test suite (verdicts not meaningful)",
    )
    p.set_defaults(mode="quick")
    p.add_argument("--seed", type=int, default=0, help="root seed of every experiment")
    p.add_argument("--n-jobs", type=int, default=2, help="joblib workers per experiment")
    p.add_argument(
        "--out", type=Path, default=C.DEFAULT_OUT, help="results root (default results/)"
    )
    p.add_argument(
        "--dask-scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the repeats on a Dask cluster (joblib's dask backend)",
    )
    p.add_argument("--only", nargs="+", choices=EXPERIMENTS, help="run only these")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--strict", action="store_true", help="exit 1 if any claim FAILs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    names = args.only or EXPERIMENTS
    common = [
        f"--{args.mode}",
        "--seed",
        str(args.seed),
        "--n-jobs",
        str(args.n_jobs),
        "--out",
        str(args.out),
    ]
    if args.dask_scheduler:
        common += ["--dask-scheduler", args.dask_scheduler]
    if args.no_progress:
        common.append("--no-progress")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    outcomes = []
    for name in names:
        t = time.perf_counter()
        try:
            module = importlib.import_module(name)
            claims = C.main_for(module, common)
            outcomes.append((name, claims, None, time.perf_counter() - t))
        except Exception:  # one broken experiment must not hide the others
            err = traceback.format_exc()
            print(err, file=sys.stderr)
            outcomes.append((name, [], err, time.perf_counter() - t))
    total = time.perf_counter() - t0
    report = write_report(args, outcomes, total)
    n_fail = sum(c.verdict == "FAIL" for _, cs, _, _ in outcomes for c in cs)
    n_err = sum(e is not None for _, _, e, _ in outcomes)
    print(f"{_tally(outcomes)}; {total:.0f} s -> {report}", file=sys.stderr)
    return 1 if n_err or (args.strict and n_fail) else 0


def _tally(outcomes):
    verdicts = [c.verdict for _, cs, _, _ in outcomes for c in cs]
    n_err = sum(e is not None for _, _, e, _ in outcomes)
    return (
        f"{verdicts.count('PASS')}/{len(verdicts)} claims PASS, {verdicts.count('FAIL')} FAIL, "
        f"{verdicts.count('UNVERIFIABLE')} UNVERIFIABLE, {n_err} crashed"
    )


def write_report(args, outcomes, total):
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    lines = [
        "# favorkit: the Performer paper's approximation-error claims, reproduced",
        "",
        f"Mode `{args.mode}`, seed {args.seed}, {args.n_jobs} joblib workers, total wall time "
        f"{total:.0f} s, git `{C._git_commit()}`, {stamp} UTC.",
        "",
        f"**{_tally(outcomes)}.**",
        "",
    ]
    not_passed = [
        (name, c) for name, claims, _, _ in outcomes for c in claims if c.verdict != "PASS"
    ]
    if not_passed:
        lines += ["Why each claim that did not PASS:", ""]
        lines += [
            f"{i}. {c.verdict} · `{name}` · {c.claim}: {c.why()}"
            for i, (name, c) in enumerate(not_passed, 1)
        ]
        lines.append("")
    lines += [
        "Each line: verdict · experiment · claim → figure, summary (theory, measured value and "
        "the statistical criterion are in the summary). UNVERIFIABLE: heavy tails keep the "
        "Monte Carlo from checking the closed form with these repeats (neither PASS nor FAIL).",
        "",
    ]
    for name, claims, err, dt in outcomes:
        fig = f"[figure]({name}/{name}.png)"
        summ = f"[summary]({name}/summary.md)"
        if err is not None:
            last = err.strip().splitlines()[-1]
            lines.append(f"- **ERROR** · `{name}` · crashed: `{last}` ({dt:.0f} s)")
            continue
        for c in claims:
            lines.append(f"- **{c.verdict}** · `{name}` · {c.claim} → {fig}, {summ}")
    if args.mode == "smoke":
        lines += ["", "_Smoke mode: tiny parameters, verdicts are not meaningful._"]
    lines += [
        "",
        "Per-experiment wall time: "
        + ", ".join(f"`{n}` {dt:.0f} s" for n, _, _, dt in outcomes)
        + ".",
        "",
    ]
    path = args.out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    sys.exit(main())
