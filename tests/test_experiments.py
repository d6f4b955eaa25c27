"""Every experiment end to end in smoke mode, its outputs, and FAIL on a broken estimator.

Smoke mode uses tiny parameters (seconds per experiment); its verdicts are not meaningful,
so these tests check the plumbing and that a deliberately broken estimator is caught with
parameters large enough for the test to have power.
"""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS_DIR))

import _common as C  # noqa: E402
import run_all  # noqa: E402

pytest.importorskip("matplotlib")


def _run(name, tmp_path, *extra):
    module = importlib.import_module(name)
    claims = C.main_for(module, ["--smoke", "--out", str(tmp_path), "--no-progress", *extra])
    return module, claims


@pytest.mark.parametrize("name", run_all.EXPERIMENTS)
def test_experiment_smoke_end_to_end(name, tmp_path):
    _, claims = _run(name, tmp_path)
    out = tmp_path / name
    assert claims and all(c.verdict in ("PASS", "FAIL", "UNVERIFIABLE") for c in claims)
    assert all(c.reason for c in claims if c.verdict == "UNVERIFIABLE")
    parsed = C.parse_summary(out / "summary.md")
    assert [p["verdict"] for p in parsed] == [c.verdict for c in claims]
    assert [p["claim"] for p in parsed] == [c.claim for c in claims]
    assert all(p["criterion"] and p["measured"] for p in parsed)
    text = (out / "summary.md").read_text()
    assert '"git_commit"' in text and '"seed": 0' in text and '"numpy"' in text
    rows = C.read_csv(out / f"{name}.csv")
    assert len(rows) > 1
    png = out / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_do_not_depend_on_n_jobs(tmp_path):
    _run("mse_ratio", tmp_path / "a")
    _run("mse_ratio", tmp_path / "b", "--n-jobs", "2")
    a = C.read_csv(tmp_path / "a" / "mse_ratio" / "mse_ratio.csv")
    b = C.read_csv(tmp_path / "b" / "mse_ratio" / "mse_ratio.csv")
    assert a == b


def test_run_all_writes_report(tmp_path):
    status = run_all.main(
        [
            "--smoke",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--n-jobs",
            "1",
            "--only",
            "mse_ratio",
            "smreg",
        ]
    )
    assert status == 0
    report = (tmp_path / "REPORT.md").read_text()
    n_claims = sum(
        len(C.parse_summary(tmp_path / n / "summary.md")) for n in ("mse_ratio", "smreg")
    )
    lines = [line for line in report.splitlines() if line.startswith("- **")]
    assert len(lines) == n_claims
    assert all("(mse_ratio/mse_ratio.png)" in x or "(smreg/smreg.png)" in x for x in lines)
    assert all(("**PASS**" in x) != ("**FAIL**" in x) for x in lines)


def test_run_all_reports_a_crash(tmp_path, monkeypatch):
    module = importlib.import_module("smreg")

    def boom(ctx):
        raise RuntimeError("deliberate")

    monkeypatch.setattr(module, "run", boom)
    status = run_all.main(["--smoke", "--out", str(tmp_path), "--no-progress", "--only", "smreg"])
    assert status == 1
    assert "**ERROR** · `smreg` · crashed: `RuntimeError: deliberate`" in (
        (tmp_path / "REPORT.md").read_text()
    )


def test_parse_summary_rejects_malformed(tmp_path):
    bad = tmp_path / "summary.md"
    bad.write_text(
        "# t\n\n| # | Claim | Theory | Measured | Criterion | Verdict |\n|---|\n"
        "| 1 | x | y | z | w | MAYBE |\n"
    )
    with pytest.raises(ValueError, match="malformed claim row"):
        C.parse_summary(bad)
    bad.write_text("# no table\n")
    with pytest.raises(ValueError, match="no claims table"):
        C.parse_summary(bad)


def test_claim_text_with_pipes_round_trips(tmp_path):
    module = importlib.import_module("smreg")
    args = C.build_parser(module).parse_args(["--smoke", "--out", str(tmp_path)])
    ctx = C.Context("x", args, {}, tmp_path)
    claims = [C.Claim("a | b", "|x|", "m", "c", True), C.Claim("q", "t", "m", "c", False)]
    C.write_summary(ctx, "T", claims, ["n"], {"k": 1})
    parsed = C.parse_summary(tmp_path / "summary.md")
    assert [(p["claim"], p["theory"], p["verdict"]) for p in parsed] == [
        ("a | b", "|x|", "PASS"),
        ("q", "t", "FAIL"),
    ]


def test_verdict_helpers_fail_when_they_should():
    assert C.all_within([0.1, -0.5])[0]
    assert not C.all_within([0.1, 9.0])[0]
    assert C.all_below([-9.0, 1.0])[0]
    assert not C.all_below([0.0, 9.0])[0]
    assert C.significantly_positive(5.0)[0] and not C.significantly_positive(1.0)[0]
    # Bonferroni thresholds grow with the family size.
    assert C.bonferroni(100) > C.bonferroni(1)


# --------------------------------------------------------------- a broken estimator FAILs


def test_biased_positive_estimator_fails_lemma2_and_unbiasedness(tmp_path, monkeypatch):
    module = importlib.import_module("variance_vs_features")
    real = C.kernel_samples

    def broken(estimator, W, X, Y):
        s = real(estimator, W, X, Y)
        return 1.25 * s if estimator == "positive" else s  # a 25 % scale bug

    monkeypatch.setattr(C, "kernel_samples", broken)
    monkeypatch.setitem(
        module.PARAMS, "smoke", {"d": 8, "ms": [4, 8, 16], "repeats": 400, "chunk": 200}
    )
    claims = C.main_for(module, ["--smoke", "--out", str(tmp_path), "--no-progress"])
    verdict = {c.claim.split(" (")[0]: c.verdict for c in claims}
    lemma2_pos = next(c for c in claims if "positive estimator with iid" in c.claim)
    assert lemma2_pos.verdict == "FAIL"
    assert next(c for c in claims if "unbiased" in c.claim).verdict == "FAIL"
    # The untouched estimators still pass their Lemma 2 check.
    assert next(c for c in claims if "trig estimator with iid" in c.claim).verdict == "PASS"
    assert verdict


def test_unfixed_qr_in_favorkit_fails_official_pitfalls(tmp_path, monkeypatch):
    module = importlib.import_module("official_pitfalls")
    real = module.draw
    monkeypatch.setattr(module, "draw", lambda fix, n, m, d, rng: real(False, n, m, d, rng))
    monkeypatch.setattr(module, "favorkit_causal", module.official_causal)
    monkeypatch.setitem(
        module.PARAMS, "smoke", {**module.PARAMS["smoke"], "draws": 1000, "chunk": 500}
    )
    claims = C.main_for(module, ["--smoke", "--out", str(tmp_path), "--no-progress"])
    by = {c.claim: c.verdict for c in claims}
    assert next(v for k, v in by.items() if k.startswith("favorkit's orthogonal")) == "FAIL"
    assert next(v for k, v in by.items() if k.startswith("Haar check")) == "FAIL"
    assert next(v for k, v in by.items() if k.startswith("favorkit's causal")) == "FAIL"
    assert next(v for k, v in by.items() if k.startswith("Exact causality")) == "FAIL"


def test_chi_norms_instead_of_smreg_fail_the_closed_form(tmp_path, monkeypatch):
    module = importlib.import_module("smreg")
    real = module.sampling.orthogonal

    class FakeSampling:
        @staticmethod
        def orthogonal(m, d, random_state=None, norms="chi"):
            return real(m, d, random_state=random_state, norms="chi")  # not SMREG

    monkeypatch.setattr(module, "sampling", FakeSampling)
    monkeypatch.setitem(module.PARAMS, "smoke", {"ds": [4, 16], "repeats": 2000, "budget": 2**20})
    claims = C.main_for(module, ["--smoke", "--out", str(tmp_path), "--no-progress"])
    assert claims[0].verdict == "FAIL"  # closed form vs measured


def test_smoke_mode_is_fast_and_deterministic(tmp_path):
    _run("orthogonal_vs_iid", tmp_path / "a")
    _run("orthogonal_vs_iid", tmp_path / "b")
    a = C.read_csv(tmp_path / "a" / "orthogonal_vs_iid" / "orthogonal_vs_iid.csv")
    b = C.read_csv(tmp_path / "b" / "orthogonal_vs_iid" / "orthogonal_vs_iid.csv")
    assert a == b
    est = np.array([float(r["estimate"]) for r in a])
    assert np.all(np.isfinite(est)) and np.all(est > 0)


def test_variance_vs_features_on_user_data(tmp_path):
    points = np.random.default_rng(0).normal(size=(30, 5)) * 0.3
    np.save(tmp_path / "points.npy", points)
    _, claims = _run(
        "variance_vs_features", tmp_path, "--data", str(tmp_path / "points.npy"), "--n-pairs", "2"
    )
    rows = C.read_csv(tmp_path / "variance_vs_features" / "variance_vs_features.csv")
    assert {r["pair"] for r in rows} == {"0", "1"}
    assert {r["d"] for r in rows} == {"5"}
    # Each pair is two rows of the user's array.
    norms = {round(float(r["norm_x"]), 10) for r in rows}
    assert norms <= {round(float(np.linalg.norm(p)), 10) for p in points}
    assert claims
    with pytest.raises(SystemExit):
        np.save(tmp_path / "bad.npy", np.ones(3))
        _run("variance_vs_features", tmp_path, "--data", str(tmp_path / "bad.npy"))


def test_heavy_tailed_user_data_is_unverifiable_not_pass(tmp_path):
    """Standardized wine (|x|² ≈ 13): the positive and hyperbolic closed forms cannot be
    checked by Monte Carlo there; the verdict says so instead of PASS, the report says why,
    and the metadata record the data's real dimension."""
    from sklearn.datasets import load_wine
    from sklearn.preprocessing import StandardScaler

    np.save(tmp_path / "wine.npy", StandardScaler().fit_transform(load_wine().data))
    _, claims = _run("variance_vs_features", tmp_path, "--data", str(tmp_path / "wine.npy"))
    verdicts = {c.claim.split(" with ")[0]: c.verdict for c in claims}
    assert verdicts["Lemma 2: MSE of the positive estimator"] == "UNVERIFIABLE"
    assert verdicts["Lemma 2: MSE of the hyperbolic estimator"] == "UNVERIFIABLE"
    assert all("heavy tails" in c.why() for c in claims if c.verdict == "UNVERIFIABLE")
    summary = (tmp_path / "variance_vs_features" / "summary.md").read_text()
    assert '"d": 13' in summary
    assert [r["verdict"] for r in C.parse_summary(tmp_path / "variance_vs_features" / "summary.md")]


def test_report_opens_with_the_tally_and_reasons(tmp_path, monkeypatch):
    monkeypatch.setattr(
        C.Claim, "verdict", property(lambda self: "FAIL" if "Theorem 1" in self.claim else "PASS")
    )
    run_all.main(["--smoke", "--out", str(tmp_path), "--no-progress", "--only", "smreg"])
    report = (tmp_path / "REPORT.md").read_text().splitlines()
    tally = next(i for i, line in enumerate(report) if "claims PASS" in line)
    first_claim = next(i for i, line in enumerate(report) if line.startswith("- **"))
    assert tally < first_claim and "UNVERIFIABLE" in report[tally]
    reasons = [line for line in report if line[:3] == "1. "]
    assert reasons and "needed:" in reasons[0]


def _digits(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    X = StandardScaler().fit_transform(load_digits().data)
    np.save(tmp_path / "digits.npy", X)
    return tmp_path / "digits.npy", X


def test_attention_error_on_user_data(tmp_path):
    """An .npz of Q, K, V replaces the protocols; the CSV and the metadata carry its real
    shapes; a file without K is refused with a message."""
    rng = np.random.default_rng(0)
    Q, K = rng.normal(scale=0.25, size=(2, 96, 6))
    V = rng.normal(size=(96, 3))
    np.savez(tmp_path / "qkv.npz", Q=Q, K=K, V=V)
    _, claims = _run("attention_error", tmp_path, "--data", str(tmp_path / "qkv.npz"))
    rows = C.read_csv(tmp_path / "attention_error" / "attention_error.csv")
    assert {r["protocol"] for r in rows} == {"data"} and {r["d"] for r in rows} == {"6"}
    assert [c.claim for c in claims] and all("protocol data" in c.claim for c in claims)
    summary = (tmp_path / "attention_error" / "summary.md").read_text()
    assert '"d": 6' in summary and '"d_v": 3' in summary and '"L": 96' in summary
    np.savez(tmp_path / "bad.npz", Q=Q)
    with pytest.raises(SystemExit, match="'K'"):
        _run("attention_error", tmp_path, "--data", str(tmp_path / "bad.npz"))


def test_heavy_tailed_attention_data_is_unverifiable_not_pass(tmp_path):
    """Standardized digits attending to themselves (s = |x|/d^{1/4} ≈ 2.8): every
    prediction is heavy-tailed, so the check of the prediction is UNVERIFIABLE, with the
    reason in the report line."""
    path, _ = _digits(tmp_path)
    _, claims = _run("attention_error", tmp_path, "--data", str(path))
    assert [c.verdict for c in claims] == ["UNVERIFIABLE"]
    assert "heavy tails" in claims[0].why()


def test_attention_regimes_rescales_user_data(tmp_path):
    """The regime map sweeps the user's data over the scales, records the data's own scale
    and real d, writes the measured and predicted errors, and calls a comparison whose
    every cell is heavy-tailed UNVERIFIABLE."""
    path, X = _digits(tmp_path)
    _, claims = _run("attention_regimes", tmp_path, "--data", str(path))
    out = tmp_path / "attention_regimes"
    summary = (out / "summary.md").read_text()
    assert '"d": 64' in summary
    own = float(np.sqrt(np.mean(np.sum(X**2, axis=1)) / 8.0))
    assert f"{own:.3g}"[:3] in summary
    errors = C.read_csv(out / "attention_regimes_errors.csv")
    top = [r["heavy_tailed"] for r in errors if float(r["scale"]) == 2.0]
    assert top and all(h == "True" for h in top)
    err = {
        float(r["scale"]): float(r["measured_relative_error"])
        for r in errors
        if (r["estimator"], r["projection"]) == ("positive", "iid")
    }
    assert err[0.5] < err[2.0]
    cells = C.read_csv(out / "attention_regimes.csv")
    assert {r["class"] for r in cells} <= {"holds", "n.s.", "reversed"}
    for claim in claims[:-1]:
        text = claim.claim.split(": ")[1].split(" attention")[0]
        all_heavy = all(r["heavy_tailed"] == "True" for r in cells if r["claim"] == text)
        assert (claim.verdict == "UNVERIFIABLE") == all_heavy


def test_paired_z_and_regions():
    import attention_regimes as R

    rng = np.random.default_rng(0)
    worse = np.exp(rng.normal(size=12))
    assert R.paired_z(worse / 3.0, worse) > 5  # better by a factor 3 every time
    assert R.paired_z(worse * 3.0, worse) < -5
    assert R.paired_z(worse, worse) == 0.0
    z_noise = R.paired_z(worse * np.exp(rng.normal(scale=0.1, size=12)), worse)
    assert abs(z_noise) < 4
    runs = R._runs([0.25, 0.5, 1, 2], ["holds", "holds", "n.s.", "holds"])
    assert runs == {"holds": "0.25–0.5, 2", "n.s.": "1"}


@pytest.mark.parametrize("kernel", [["laplacian"], ["matern", "--nu", "0.5"], ["arccos"]])
def test_variance_vs_features_for_other_kernels(kernel, tmp_path):
    """--kernel swaps the softmax estimators for the kernel's own, with their closed forms
    (a laplacian run uses qmc, not orthogonal, frequencies) and records the kernel."""
    _, claims = _run("variance_vs_features", tmp_path, "--kernel", *kernel)
    rows = C.read_csv(tmp_path / "variance_vs_features" / "variance_vs_features.csv")
    assert {r["kernel"] for r in rows} == {kernel[0]}
    second = {"laplacian": "qmc"}.get(kernel[0], "orthogonal")
    assert {r["projection"] for r in rows} == {"iid", second}
    assert all(float(r["theory_mse_iid"]) > 0 for r in rows)
    assert len(claims) == 2 and "closed form" in claims[0].claim
    summary = (tmp_path / "variance_vs_features" / "summary.md").read_text()
    assert f'"kernel": "{kernel[0]}"' in summary
