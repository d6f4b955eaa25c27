"""favorkit.plotting: variance against the number of features, measured and closed-form.

The measurements are small (a few pairs, tens to hundreds of repeats) so the module runs
in seconds; the statistical test uses light-tailed data, where the standard error from the
repeats is reliable, and a Bonferroni threshold over its points.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.datasets import load_digits, load_wine
from sklearn.preprocessing import StandardScaler

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from favorkit import PositiveRandomFeatures, kernels, maps, theory  # noqa: E402
from favorkit import plotting as P  # noqa: E402
from favorkit.plotting import (  # noqa: E402
    VarianceCurves,
    draw_variance_curves,
    variance_vs_features,
)

ALPHA = 0.001


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def light(n=40, d=8, scale=1 / 12, seed=0):
    """Small rows: |x + y|² ≈ 0.1, every estimator light-tailed at a few hundred repeats."""
    return np.random.default_rng(seed).normal(size=(n, d)) * scale


def standardized(loader, scale):
    return StandardScaler().fit_transform(loader().data) * scale


# --------------------------------------------------------------------------- shapes, data


def test_synthetic_shapes_and_figure():
    X = light()
    curves = variance_vs_features(X, n_components=(4, 16, 64), n_pairs=3, n_repeats=30)
    assert curves.estimators == ("positive", "hyperbolic", "trig")
    assert curves.projections == ("iid", "orthogonal")
    assert curves.m.tolist() == [4, 16, 64]
    for name in ("relative_mse", "standard_error", "theory", "heavy_tailed"):
        assert getattr(curves, name).shape == (3, 2, 3), name
    assert curves.pair_relative_mse.shape == curves.pair_theory.shape == (3, 2, 3, 3)
    assert curves.pairs.shape == (3, 2) and curves.kernel_values.shape == (3, 3)
    assert curves.error_kurtosis.shape == (3, 3)
    assert np.all(curves.pairs[:, 0] != curves.pairs[:, 1])  # two different rows
    assert np.allclose(curves.relative_mse, curves.pair_relative_mse.mean(axis=2))
    assert np.all(curves.standard_error > 0)
    # Closed forms: every iid one, the orthogonal ones of the positive maps, not trig's.
    assert np.isfinite(curves.theory[:, 0]).all()
    assert np.isfinite(curves.theory[:2, 1]).all() and np.isnan(curves.theory[2, 1]).all()
    ax = curves.ax
    assert ax.get_xlabel() == "random projections m"
    assert "relative MSE" in ax.get_ylabel()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_title()


def test_same_seed_same_result_and_named_streams():
    X = light()
    kw = {"n_components": (4, 16), "n_repeats": 20, "random_state": 3}
    a = variance_vs_features(X, estimators=("positive",), **kw)
    b = variance_vs_features(X, estimators=("trig", "positive"), **kw)
    # Each estimator x projection has its own stream: adding one changes nothing else.
    np.testing.assert_array_equal(a.relative_mse[0], b.relative_mse[1])
    c = variance_vs_features(X, estimators=("positive",), **kw)
    np.testing.assert_array_equal(a.relative_mse, c.relative_mse)
    for rs in (np.random.default_rng(0), np.random.RandomState(0), None):
        variance_vs_features(
            X, estimators=("positive",), n_components=4, n_repeats=5, random_state=rs
        )


@pytest.mark.parametrize(
    ("loader", "scale", "kw"),
    [
        (load_wine, 0.25, {}),
        (load_wine, 0.25, {"estimators": ("optimal", "saderf"), "projections": ("simplex",)}),
        (
            load_digits,
            0.1,
            {"kernel": "gaussian", "gamma": 1 / 64, "estimators": ("positive", "cos")},
        ),
        (load_digits, 1.0, {"kernel": "laplacian", "gamma": 1 / 64}),
        (load_digits, 1.0, {"kernel": "matern", "gamma": 1 / 128, "nu": 0.5}),
        (load_digits, 1.0, {"kernel": "arccos", "estimators": ("arccos1",)}),
    ],
    ids=[
        "wine",
        "wine-favorpp",
        "digits-gaussian",
        "digits-laplacian",
        "digits-matern",
        "digits-arccos",
    ],
)
def test_real_data(loader, scale, kw):
    X = standardized(loader, scale)
    curves = variance_vs_features(X, n_components=(4, 32), n_repeats=40, **kw)
    n_e, n_p = len(curves.estimators), len(curves.projections)
    assert curves.relative_mse.shape == (n_e, n_p, 2)
    assert np.isfinite(curves.relative_mse).all() and (curves.relative_mse > 0).all()
    assert curves.n_features == X.shape[1] and curves.n_repeats == 40
    # Every iid point has its closed form (the kernels' defaults put iid first).
    if curves.projections[0] == "iid":
        assert np.isfinite(curves.theory[:, 0]).all()
    # MSE falls with m (8x more projections; a very loose check of the measurement).
    assert np.all(curves.relative_mse[..., 1] < curves.relative_mse[..., 0])


def test_x_y_pairs():
    rng = np.random.default_rng(0)
    Q, K = rng.normal(scale=0.15, size=(2, 30, 6))
    curves = variance_vs_features(
        Q, K[:20], estimators=("saderf",), n_components=(8,), n_pairs=5, n_repeats=10
    )
    assert curves.pairs[:, 0].max() < 30 and curves.pairs[:, 1].max() < 20
    i, j = curves.pairs.T
    np.testing.assert_allclose(curves.kernel_values[0], np.exp(np.sum(Q[i] * K[j], axis=1)))


# --------------------------------------------------------------------------- theory


def test_theory_equals_favorkit_theory_softmax():
    X = light(scale=0.2)
    gamma = 0.7
    curves = variance_vs_features(
        X,
        estimators=("positive", "hyperbolic", "trig", "optimal"),
        projections=("iid", "orthogonal", "simplex"),
        gamma=gamma,
        n_components=(3, 8, 20),
        n_repeats=4,
    )
    i, j = curves.pairs.T
    u, v = np.sqrt(gamma) * X[i][:, None], np.sqrt(gamma) * X[j][:, None]
    m = curves.m
    sm2 = theory.softmax_kernel(u, v) ** 2
    expected_iid = {
        "positive": theory.mse_positive(u, v, m) / sm2,
        "hyperbolic": theory.mse_hyperbolic(u, v, m) / sm2,
        "trig": theory.mse_trig(u, v, m) / sm2,
    }
    for e, name in enumerate(("positive", "hyperbolic", "trig")):
        np.testing.assert_allclose(curves.pair_theory[e, 0], expected_iid[name], rtol=1e-12)
    z = np.sum((u + v) ** 2, axis=-1)
    for p, coupling in ((1, "orthogonal"), (2, "simplex")):
        for e, hyperbolic in ((0, False), (1, True)):
            np.testing.assert_allclose(
                curves.pair_theory[e, p],
                theory.coupled_relative_mse(z, 8, m, coupling=coupling, hyperbolic=hyperbolic),
                rtol=1e-12,
            )
        assert np.isnan(curves.pair_theory[2, p]).all()  # trig: no coupled closed form
    # FAVOR++ with the A that PositiveRandomFeatures fits on all of X.
    a = PositiveRandomFeatures(8, estimator="optimal", gamma=gamma).fit(X).gerf_a_
    assert a < 0
    np.testing.assert_allclose(
        curves.pair_theory[3, 0], theory.gerf_relative_variance(z, 8, a) / m, rtol=1e-12
    )
    np.testing.assert_allclose(
        curves.pair_theory[3, 1], theory.coupled_relative_mse(z, 8, m, a=a), rtol=1e-12
    )
    np.testing.assert_allclose(curves.theory, curves.pair_theory.mean(axis=2))


def test_theory_equals_favorkit_theory_other_kernels():
    X = standardized(load_digits, 1.0)[:200]
    gamma = 1 / 64
    for kernel, names, kw in (
        ("gaussian", ("cossin", "cos"), {}),
        ("laplacian", ("cossin", "cos"), {}),
        ("matern", ("cossin",), {"nu": 2.5}),
    ):
        curves = variance_vs_features(
            X,
            kernel=kernel,
            gamma=gamma,
            estimators=names,
            projections=("iid",),
            n_components=(4, 16),
            n_repeats=3,
            **kw,
        )
        i, j = curves.pairs.T
        law = kernels.get(kernel)
        k = law.profile(X[i] - X[j], gamma, nu=kw.get("nu", 1.5))
        for e, features in enumerate(names):
            mse = theory.mse_random_fourier(
                X[i][:, None],
                X[j][:, None],
                curves.m,
                kernel=kernel,
                gamma=gamma,
                features=features,
                **kw,
            )
            np.testing.assert_allclose(curves.pair_theory[e, 0], mse / k[:, None] ** 2)
    curves = variance_vs_features(X, kernel="arccos", n_components=(4, 16), n_repeats=3)
    i, j = curves.pairs.T
    for degree in (0, 1, 2):
        k = kernels.arccos_pairs(X[i], X[j], degree)
        mse = theory.mse_arccos(X[i][:, None], X[j][:, None], curves.m, degree=degree)
        np.testing.assert_allclose(curves.pair_theory[degree, 0], mse / k[:, None] ** 2)
    # Gaussian kernel, positive map: the relative error of SM(u, v), u = sqrt(2 gamma) x.
    curves = variance_vs_features(
        X,
        kernel="gaussian",
        gamma=gamma,
        estimators=("positive",),
        n_components=(4,),
        projections=("iid",),
        n_repeats=3,
    )
    i, j = curves.pairs.T
    u, v = np.sqrt(2 * gamma) * X[i], np.sqrt(2 * gamma) * X[j]
    np.testing.assert_allclose(
        curves.pair_theory[0, 0, :, 0], np.expm1(np.sum((u + v) ** 2, axis=1)) / 4
    )


def test_measured_matches_theory_iid_light_tails():
    """A z-test of every iid point against its closed form, on light-tailed data (fixed
    seed; two-sided, Bonferroni over the points at family level 0.001)."""
    X = light()
    curves = variance_vs_features(
        X,
        estimators=("positive", "hyperbolic", "trig", "optimal"),
        projections=("iid",),
        n_components=(8, 32, 128),
        n_repeats=300,
    )
    assert not curves.heavy_tailed.any()
    z = curves.z[:, 0]
    threshold = stats.norm.isf(ALPHA / (2 * z.size))
    assert np.all(np.abs(z) < threshold), (z, threshold)


def test_measured_matches_theory_orthogonal_light_tails():
    X = light()
    curves = variance_vs_features(
        X,
        estimators=("positive", "hyperbolic"),
        projections=("orthogonal",),
        n_components=(4, 8, 24),
        n_repeats=300,
    )
    z = curves.z[:, 0]
    assert np.all(np.abs(z) < stats.norm.isf(ALPHA / (2 * z.size))), z


# --------------------------------------------------------------------------- heavy tails


def test_heavy_tails_are_flagged_and_drawn_hollow():
    X = light(scale=1 / 3)  # |x + y|² ≈ 1.8: one positive term's kurtosis ~ e^{4z}
    curves = variance_vs_features(
        X, estimators=("positive", "trig"), n_components=(2, 8, 32), n_repeats=50
    )
    assert curves.heavy_tailed[0].all()  # positive: flagged at every m
    assert not curves.heavy_tailed[1].any()  # trig: bounded terms, light
    assert curves.error_kurtosis[0].max() > 4 * 50 * 32
    assert any(note.startswith("positive, iid") for note in curves.notes)
    # Drawn as hollow markers, and said so in the legend.
    hollow = [
        line
        for line in curves.ax.get_lines()
        if line.get_linestyle() == "None" and line.get_markerfacecolor() == "none"
    ]
    assert hollow
    labels = [t.get_text() for t in curves.ax.get_legend().get_texts()]
    assert any("heavy tails" in label for label in labels)


def test_light_data_flag_nothing():
    curves = variance_vs_features(light(), n_components=(8, 32), n_repeats=100)
    assert not curves.heavy_tailed.any() and curves.notes == ()


def test_error_kurtosis_matches_quadrature_and_monte_carlo():
    """κ = E[(T - K)⁴]/E[(T - K)²]² of one term from the closed-form moments, against
    numerical integration (the softmax maps: T depends on one Gaussian g = ω·s/|s|, and
    FAVOR++ also on the independent χ²_{d-1} rest) and against sampled terms (bounded)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 4)) * 0.3
    Y = rng.normal(size=(3, 4)) * 0.3
    g, w = np.polynomial.hermite_e.hermegauss(160)
    w = w / w.sum()  # E over g ~ N(0, 1)

    def central(T):  # T: (pairs, nodes), relative to K = 1
        return np.sum((T - 1) ** 4 * w, 1) / np.sum((T - 1) ** 2 * w, 1) ** 2

    norm_s = np.linalg.norm(X + Y, axis=1)[:, None]
    norm_delta = np.linalg.norm(X - Y, axis=1)[:, None]
    expected = {
        "positive": central(np.exp(norm_s * g - norm_s**2 / 2)),
        "hyperbolic": central(np.cosh(norm_s * g) * np.exp(-(norm_s**2) / 2)),
        "trig": central(np.cos(norm_delta * g) * np.exp(norm_delta**2 / 2)),
    }
    fitted = PositiveRandomFeatures(8, estimator="optimal").fit(X, keys=Y)
    for name, want in expected.items():
        got = P._error_kurtosis(name, "softmax", 1.0, 1.5, X, Y, fitted)
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
    # FAVOR++ at d = 4: T = (1-4A)² e^{2A(g² + r) + B|s|g - z/2}, r ~ χ²_3 independent of g,
    # so E T^j = (1-4A)^{2j} e^{-jz/2} E_g[e^{2jAg² + jB|s|g}] E_r[e^{2jAr}].
    a = fitted.gerf_a_
    b = np.sqrt(1 - 4 * a)
    z = norm_s[:, 0] ** 2
    raw = []
    for j in (1, 2, 3, 4):
        e_g = np.sum(np.exp(2 * j * a * g**2 + j * b * norm_s * g) * w, 1)
        e_r = integrate.quad(
            lambda r, j=j: np.exp(2 * j * a * r) * stats.chi2.pdf(r, 3), 0, np.inf
        )[0]
        raw.append((1 - 4 * a) ** (2 * j) * np.exp(-j * z / 2) * e_g * e_r)
    r1, r2, r3, r4 = raw
    want = (r4 - 4 * r1 * r3 + 6 * r1**2 * r2 - 3 * r1**4) / (r2 - r1**2) ** 2
    np.testing.assert_allclose(r1, 1.0, rtol=1e-8)  # unbiased
    got = P._error_kurtosis("optimal", "softmax", 1.0, 1.5, X, Y, fitted)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Shift-invariant kernels, bounded terms: cos (α = ω·Δ) and cos + offset, sampled.
    gamma = 0.5
    W = rng.standard_normal((400_000, 4)) * np.sqrt(2 * gamma)
    k = np.exp(-gamma * np.sum((X - Y) ** 2, 1))[:, None]
    offset = rng.uniform(0, 2 * np.pi, size=W.shape[0])
    sampled = {
        "cossin": np.cos((X - Y) @ W.T),
        "cos": 2 * np.cos(X @ W.T + offset) * np.cos(Y @ W.T + offset),
    }
    for name, T in sampled.items():
        err = T - k
        want = np.mean(err**4, 1) / np.mean(err**2, 1) ** 2
        got = P._error_kurtosis(name, "gaussian", gamma, 1.5, X, Y, None)
        np.testing.assert_allclose(got, want, rtol=0.05, err_msg=name)


def test_gerf_moments_are_the_maps_and_theory():
    z, d = np.array([0.1, 0.8, 2.5]), 6
    for j in (1, 2, 3, 4):
        for name, antithetic in (("positive", False), ("hyperbolic", True)):
            s = np.stack([np.sqrt(z), np.zeros(3), np.zeros(3)], axis=1)
            np.testing.assert_allclose(
                np.exp(P._gerf_log_moment(z, d, 0.0, j, antithetic)),
                maps.get(name).term_moment(s, np.zeros_like(s), j),
                rtol=1e-12,
            )
    a = float(theory.optimal_gerf_a(0.8, d))
    np.testing.assert_allclose(np.exp(P._gerf_log_moment(z, d, a, 1, False)), 1.0)  # unbiased
    np.testing.assert_allclose(
        np.exp(P._gerf_log_moment(z, d, a, 2, False)) - 1, theory.gerf_relative_variance(z, d, a)
    )
    np.testing.assert_allclose(
        np.exp(P._gerf_log_moment(z, d, a, 2, True)) - 1,
        maps.get("optimal_hyperbolic").relative_variance(z, d, a),
    )


def test_arccos_quadrature_matches_closed_form():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(2, 6, 5))
    for degree in range(5):
        np.testing.assert_allclose(
            P._arccos_quadrature(X, Y, degree), kernels.arccos_pairs(X, Y, degree), rtol=1e-10
        )


# --------------------------------------------------------------------------- drawing


def test_legend_is_outside_the_axes():
    curves = variance_vs_features(light(), n_components=(4, 16), n_repeats=10)
    fig = curves.ax.figure
    fig.canvas.draw()
    legend = curves.ax.get_legend().get_window_extent()
    axes = curves.ax.get_window_extent()
    assert legend.x0 >= axes.x1  # to the right of the data, never on it
    tick_labels = [t.get_text() for t in curves.ax.get_xticklabels() if t.get_text()]
    assert tick_labels == ["4", "16"]


def test_draws_on_a_given_axes():
    _, (a, b) = plt.subplots(1, 2)
    b.set_title("mine")
    curves = variance_vs_features(light(), n_components=(4,), n_repeats=5, ax=b)
    assert curves.ax is b and b.get_title() == "mine" and not a.lines


def test_draw_variance_curves_from_arrays():
    m = np.array([2, 4, 8, 16])
    heavy = np.zeros((2, 1, 4), dtype=bool)
    heavy[1, 0, :2] = True
    curves = VarianceCurves(
        m=m,
        estimators=("positive", "optimal"),
        projections=("iid",),
        relative_mse=np.stack([1 / m, 0.5 / m])[:, None],
        standard_error=np.stack([0.05 / m, 0.02 / m])[:, None],
        heavy_tailed=heavy,
    )
    assert np.isnan(curves.theory).all()
    _, ax = plt.subplots()
    handles = draw_variance_curves(ax, curves, legend=False)
    labels = [h.get_label() for h in handles]
    assert labels[:2] == ["positive (FAVOR+)", "optimal (FAVOR++)"]
    assert labels[2] == "iid: measured ± 2 SE"  # no closed form given
    assert "heavy tails" in labels[3]
    assert ax.get_legend() is None
    with pytest.raises(ValueError, match="relative_mse must have shape"):
        VarianceCurves(
            m=m,
            estimators=("a",),
            projections=("iid",),
            relative_mse=np.ones(3),
            standard_error=np.ones((1, 1, 4)),
        )
    with pytest.raises(TypeError, match="curves must be a VarianceCurves"):
        draw_variance_curves(ax, {"m": m})
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        draw_variance_curves("ax", curves)
    with pytest.raises(ValueError, match="errorbar_se must be"):
        draw_variance_curves(ax, curves, errorbar_se=-1)


def test_saves_with_agg_and_no_display(tmp_path):
    code = textwrap.dedent(
        f"""
        import numpy as np
        from favorkit.plotting import variance_vs_features
        X = np.random.default_rng(0).normal(size=(20, 4)) / 8
        curves = variance_vs_features(X, n_components=(4, 8), n_repeats=5)
        curves.ax.figure.savefig({str(tmp_path / "fig.png")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "Agg"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_import_without_matplotlib():
    """``import favorkit.plotting`` needs no matplotlib; a call says which extra to install."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["matplotlib"] = None  # any import of it now raises ImportError
        import numpy as np
        import favorkit.plotting as plotting
        try:
            plotting.variance_vs_features(np.ones((3, 2)))
        except ImportError as exc:
            assert "favorkit[plot]" in str(exc), exc
        else:
            raise AssertionError("no ImportError")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        ((np.ones(5),), {}, "X must be a 2-D array"),
        ((np.ones((1, 3)),), {}, "X must have at least 2 row"),
        ((np.full((4, 2), np.nan),), {}, "X contains NaN"),
        ((np.ones((4, 2)), np.ones((4, 3))), {}, "Y must have as many columns as X"),
        ((np.ones((4, 2)),), {"kernel": "rbf"}, "kernel must be one of"),
        ((np.ones((4, 2)),), {"kernel": "laplacian", "estimators": ("positive",)}, "estimators:"),
        ((np.ones((4, 2)),), {"estimators": "positive"}, "estimators must be a non-empty"),
        ((np.ones((4, 2)),), {"estimators": ("positive", "positive")}, "estimators must not"),
        (
            (np.ones((4, 2)),),
            {"kernel": "laplacian", "projections": ("orthogonal",)},
            "projections:",
        ),
        ((np.ones((4, 2)),), {"projections": ()}, "projections must be a non-empty"),
        ((np.ones((4, 2)),), {"n_components": (0, 4)}, "n_components must be"),
        ((np.ones((4, 2)),), {"n_components": (2.5,)}, "n_components must be"),
        ((np.ones((4, 2)),), {"n_components": (4, 4)}, "n_components must be"),
        ((np.ones((4, 2)),), {"n_components": ()}, "n_components must be"),
        ((np.ones((4, 2)),), {"n_repeats": 1}, "n_repeats must be an integer >= 2"),
        ((np.ones((4, 2)),), {"n_pairs": 0}, "n_pairs must be an integer >= 1"),
        ((np.ones((4, 2)),), {"gamma": -1.0}, "gamma must be a number > 0"),
        ((np.ones((4, 2)),), {"gamma": np.inf}, "gamma must be finite"),
        ((np.ones((4, 2)),), {"kernel": "matern", "nu": 1.0}, "nu:"),
        ((np.ones((4, 2)),), {"random_state": "seed"}, "random_state must be"),
        ((np.ones((4, 2)) * 30,), {}, "kernel value of pair"),
    ],
)
def test_bad_inputs_name_the_parameter(args, kw, match):
    with pytest.raises(ValueError, match=match):
        variance_vs_features(*args, n_repeats=kw.pop("n_repeats", 2), **kw)


def test_bad_axes():
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        variance_vs_features(np.ones((4, 2)), ax=object())
