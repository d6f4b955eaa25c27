"""The beyond_favor experiment: a smoke run under pytest, and broken estimators that must FAIL.

The experiment lives in experiments/ (not a package); it is imported the way its own
``python experiments/beyond_favor.py`` run imports it, with experiments/ on sys.path.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from favorkit import sampling

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import _common as C  # noqa: E402
import beyond_favor as bf  # noqa: E402

UNBIASED = "unbiased"
MC_MATCHES = "Monte Carlo relative MSE of single pairs"
TABLE = "Reference values (an independent computation): exact relative MSE"


def run_smoke(out):
    C.main_for(bf, ["--smoke", "--seed", "0", "--out", str(out), "--no-progress"])
    return C.parse_summary(out / bf.NAME / "summary.md")


def verdict(claims, text):
    (row,) = [c for c in claims if text in c["claim"]]
    return row["verdict"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("beyond")
    return out, run_smoke(out)


def test_smoke_run_writes_every_output(smoke):
    out, claims = smoke
    d = out / bf.NAME
    assert (d / f"{bf.NAME}.png").stat().st_size > 10_000
    rows = C.read_csv(d / f"{bf.NAME}.csv")
    assert {r["part"] for r in rows} == {
        "table_4_5",
        "pair_mc",
        "batch_mc",
        "regime_3_6",
        "attention",
    }
    assert len(claims) >= 10
    assert all(c["verdict"] in ("PASS", "FAIL") for c in claims)
    # closed forms do not depend on the mode: the exact relative MSE reference values are
    # reproduced even in smoke mode
    assert verdict(claims, TABLE) == "PASS"
    assert verdict(claims, UNBIASED) == "PASS"
    assert verdict(claims, MC_MATCHES) == "PASS"
    text = (d / "summary.md").read_text()
    assert "computed by favorkit.favor_attention" in text


def test_qr_without_sign_fix_turns_unbiasedness_to_fail(tmp_path, monkeypatch):
    """Orthogonal blocks from unfixed QR (the peers' bug) bias the positive estimator."""

    def unfixed(m, d, rng):
        return sampling.orthogonal(m, d, rng, sign_fix=False)

    monkeypatch.setitem(bf.SAMPLERS, "orthogonal", unfixed)
    claims = run_smoke(tmp_path)
    assert verdict(claims, UNBIASED) == "FAIL"


def test_a_wrong_closed_form_turns_the_table_and_monte_carlo_to_fail(tmp_path, monkeypatch):
    """A coupled MSE that forgets the within-block covariance (the iid formula)."""
    right = bf.coupled_relative_mse

    def no_covariance(z, d, m, *, a=0.0, coupling="orthogonal"):
        return right(z, d, m, a=a, coupling="iid")

    monkeypatch.setattr(bf, "coupled_relative_mse", no_covariance)
    claims = run_smoke(tmp_path)
    assert verdict(claims, TABLE) == "FAIL"
    assert verdict(claims, MC_MATCHES) == "FAIL"


def test_tail_gate_moments():
    """log E[T^j] of one GERF projection, used by the heavy-tail gate of the experiment.

    A = 0: lognormal moments exp(j(j-1)z/2); j = 2 is the library's relVar (the GERF variance
    of Likhosherstov et al. 2022); j = 3 at A < 0 (bounded, light-tailed features) by
    simulation with a z-score.
    """
    z, d = 0.7, 5
    for j in (2, 3, 4):
        assert bf.log_moment(j, z, d, 0.0) == pytest.approx(j * (j - 1) * z / 2, rel=1e-12)
    a = bf.optimal_gerf_a(3.0, d)
    assert np.exp(bf.log_moment(2, z, d, a)) == pytest.approx(
        1 + bf.gerf_relative_variance(z, d, a), rel=1e-12
    )
    w = np.random.default_rng(0).standard_normal((400_000, d))
    v = np.zeros(d)
    v[0] = np.sqrt(z)
    t = (1 - 4 * a) ** (d / 2) * np.exp(2 * a * (w**2).sum(1) + np.sqrt(1 - 4 * a) * w @ v - z / 2)
    t3 = t**3
    zscore = (t3.mean() - np.exp(bf.log_moment(3, z, d, a))) / (t3.std() / np.sqrt(t3.size))
    assert abs(zscore) < 4
