"""The variance-gap decomposition against an independent dense computation (the general
mixed-model formulas of DESIGN.md: tr(Z V_b Z'), -1/2 log det(Z'Z/sigma^2 + G^-1)), the EM
identities at the ML point and at an interior joint mode, the one-way kernel against the general
one, the balanced closed form, and sentences that say what the numbers say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, REPORT_SECTIONS, simulate

from workbench import compare
from workbench.explain import explain, point_terms

FAST = {"n_starts": 4, "n_jobs": 1}


def _dense_terms(d, beta, s, G):
    """Build Z (N x m q) and G (m q x m q) explicitly and compute the terms densely."""
    m, q = d.n_groups, d.q
    Z = np.zeros((d.n_obs, m * q))
    for k in range(q):
        Z[np.arange(d.n_obs), d.codes * q + k] = d.Z[:, k]
    Gbig = np.kron(np.eye(m), np.atleast_2d(G))
    prec = Z.T @ Z / s + np.linalg.inv(Gbig)
    V_b = np.linalg.inv(prec)
    r0 = d.y - d.X @ np.atleast_1d(beta)
    b = V_b @ Z.T @ r0 / s
    resid = r0 - Z @ b
    out = {}
    if d.n_obs <= 2000:  # the N x N covariance of y
        cov_y = s * np.eye(d.n_obs) + Z @ Gbig @ Z.T
        out["log_marginal"] = -0.5 * (
            d.n_obs * np.log(2 * np.pi)
            + np.linalg.slogdet(cov_y)[1]
            + r0 @ np.linalg.solve(cov_y, r0)
        )
    return (
        out
        | {
            "missing": np.trace(V_b @ (Z.T @ Z)),  # tr(Z V_b Z')
            "volume": -0.5 * np.linalg.slogdet(prec)[1],
            "rss": resid @ resid,
            "b": b.reshape(m, q),
            "V": np.array([V_b[j * q : (j + 1) * q, j * q : (j + 1) * q] for j in range(m)]),
        }
    )


def slope_frame(seed: int = 1, m: int = 20, n: int = 15) -> pd.DataFrame:
    """A random-slope model with strong, well-identified effects: the centered h-likelihood
    has an interior mode."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    x = rng.uniform(-1, 1, m * n)
    b = rng.multivariate_normal([0, 0], [[4, 1], [1, 2]], m)
    y = 1 + 2 * x + b[g, 0] + b[g, 1] * x + 0.5 * rng.standard_normal(m * n)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{j:02d}" for j in g]})


@pytest.fixture(scope="module")
def slope():
    return compare(slope_frame(), formula="y ~ x + (1 + x | g)", methods="eb-ml,joint-map", **FAST)


@pytest.fixture(scope="module")
def small_groups():
    return compare(
        str(DATA / "small_groups.csv"), "y", "group", methods=["eb-ml", "joint-map"], **FAST
    )


@pytest.mark.parametrize(
    "name,cols", [("dyestuff", ("Yield", "Batch")), ("hsb82", ("mAch", "school"))]
)
@pytest.mark.parametrize("kernel", ["auto", "general"])
def test_terms_match_dense_mixed_model_formulas(datasets, name, cols, kernel):
    ml = compare(datasets[name], methods=["eb-ml"]).eb_ml
    d = ml.data
    pt = point_terms("EB", d, ml.beta, ml.sigma2, ml.G, kernel=kernel)
    assert pt.is_oneway == (kernel == "auto")
    ref = _dense_terms(d, ml.beta, ml.sigma2, ml.G)
    assert pt.missing == pytest.approx(ref["missing"], rel=1e-9)
    assert pt.volume == pytest.approx(ref["volume"], rel=1e-9)
    assert pt.rss == pytest.approx(ref["rss"], rel=1e-9)
    if "log_marginal" in ref:
        assert pt.log_marginal == pytest.approx(ref["log_marginal"], rel=1e-10)
    assert pt.p_d == pytest.approx(ref["missing"] / ml.sigma2, rel=1e-9)
    _check_em(pt, ml)


def _check_em(pt, ml):
    d = ml.data
    # EM identity at the ML point: the update with the missing term returns the estimate
    assert pt.sigma2_em_with == pytest.approx(ml.sigma2, rel=1e-6)
    np.testing.assert_allclose(pt.G_em_with, ml.G, rtol=1e-5)
    # Laplace, exact for the LMM: l = h(theta, b_hat) + volume + (m q / 2) log 2 pi
    assert pt.log_marginal - pt.log_joint == pytest.approx(
        pt.volume + 0.5 * d.n_groups * d.q * np.log(2 * np.pi), rel=1e-10
    )
    assert pt.log_marginal == pytest.approx(ml.loglik, rel=1e-10)


def test_oneway_kernel_equals_general_kernel(small_groups):
    """Both kernels, at the EB-ML point (conditional modes) and at the joint mode (its own
    effects), give every term."""
    c = small_groups
    d, ml, jm = c.data, c.eb_ml, c.joint_map
    assert d.is_oneway and jm.status == "interior"
    for args, effects in (
        ((ml.beta, ml.sigma2, ml.G), None),
        ((jm.beta, jm.sigma2, jm.G), jm.re_mode),
    ):
        a = point_terms("x", d, *args, effects=effects).to_dict()
        b = point_terms("x", d, *args, effects=effects, kernel="general").to_dict()
        for key, value in b.items():
            if key == "variances":
                assert a[key] == pytest.approx(value, rel=1e-12)
            elif key != "label":
                np.testing.assert_allclose(a[key], value, rtol=1e-9, err_msg=key)
        assert a["tau2"] == a["G"][0][0] and a["mu"] == float(args[0][0])
        assert a["tau2_em_with"] == a["G_em_with"][0][0]


def test_joint_mode_solves_the_em_equations_without_the_missing_term(small_groups):
    ex = explain(small_groups)
    j = ex.joint
    assert j is not None and ex.joint_status == "interior"
    assert j.sigma2_em_without == pytest.approx(j.sigma2, rel=1e-7)
    assert j.tau2_em_without == pytest.approx(j.tau2, rel=1e-7)
    assert j.log_joint > ex.eb.log_joint and j.log_marginal < ex.eb.log_marginal
    low = 1 - j.sigma2 / ex.eb.sigma2
    assert low >= 0.15
    assert f"sigma^2 comes out {100 * low:.0f}% low" in " ".join(ex.sentences)
    b = ex.balanced
    assert b.interior_exists and b.sigma2_joint == pytest.approx(j.sigma2, rel=1e-6)
    assert ex.balanced_note is None


def test_slope_model_em_identities_and_dense_terms(slope):
    """y ~ x + (1 + x | g): the general terms equal the dense formulas at ML, the EM identities
    hold with the V terms at the ML point and without them at the interior joint mode."""
    ex = explain(slope)
    ml, jm, d = slope.eb_ml, slope.joint_map, slope.data
    e = ex.eb
    ref = _dense_terms(d, ml.beta, ml.sigma2, ml.G)
    assert e.missing == pytest.approx(ref["missing"], rel=1e-8)
    assert e.volume == pytest.approx(ref["volume"], rel=1e-8)
    assert e.rss == pytest.approx(ref["rss"], rel=1e-8)
    assert e.log_marginal == pytest.approx(ref["log_marginal"], rel=1e-10)
    # at the ML point: sigma^2 = (RSS + tr(Z V_b Z')) / N and G = mean(b b' + V_b)
    assert e.sigma2_em_with == pytest.approx(ml.sigma2, rel=1e-6)
    G_em = (ref["b"].T @ ref["b"] + ref["V"].sum(axis=0)) / d.n_groups
    np.testing.assert_allclose(e.G_em_with, G_em, rtol=1e-8)
    np.testing.assert_allclose(e.G_em_with, ml.G, rtol=1e-4)
    assert e.variances == {"(Intercept)": ml.G[0, 0], "x": ml.G[1, 1]}
    # at the interior joint mode: sigma^2 = RSS / N and G = mean(b b')
    j = ex.joint
    assert ex.joint_status == "interior" and j is not None
    assert j.sigma2_em_without == pytest.approx(jm.sigma2, rel=1e-6)
    np.testing.assert_allclose(j.G_em_without, jm.G, rtol=1e-5)
    assert j.sigma2 < j.sigma2_em_with and j.log_marginal < e.log_marginal
    # to_dict: the general vocabulary, no one-way aliases
    out = ex.to_dict()
    assert set(out["eb_ml"]) == BLOCK_KEYS
    assert out["balanced"] is None and "one-way model" in out["balanced_note"]
    text = " ".join(ex.sentences)
    assert "the variance of (Intercept) comes out" in text and "the variance of x" in text
    assert f"sigma^2 = (RSS + {e.missing:.4g}) / N = {e.sigma2_em_with:.5g}" in text


BLOCK_KEYS = {
    "label", "sigma2", "G", "variances", "rss", "missing", "p_d", "volume", "log_joint",
    "log_marginal", "sigma2_em_with", "sigma2_em_without", "G_em_with", "G_em_without",
}  # fmt: skip
ONEWAY_KEYS = BLOCK_KEYS | {"mu", "tau2", "tau2_em_with", "tau2_em_without"}


def test_no_interior_case_is_worded_differently(datasets):
    ex = explain(compare(datasets["dyestuff"], methods=["eb-ml", "joint-map"], **FAST))
    assert ex.joint is None and ex.joint_status == "no_interior_mode"
    text = " ".join(ex.sentences)
    assert "no interior maximum" in text and "below the threshold" in text
    assert "The joint mode maximises" not in text and "comes out" not in text
    out = ex.to_dict()
    assert out["joint_map"] is None and set(out["eb_ml"]) == ONEWAY_KEYS
    assert out["eb_ml"]["missing"] == pytest.approx(ex.eb.missing)


def test_boundary_fit_sentences_are_true(datasets):
    """Dyestuff2: tau^2 = 0 at ML. No uncertainty is claimed, the infinite terms are named."""
    ex = explain(compare(datasets["dyestuff2"], methods=["eb-ml", "joint-map"], **FAST))
    e = ex.eb
    assert e.tau2 == 0 and e.missing == 0 and e.p_d == 0
    assert e.volume == -np.inf and e.log_joint == np.inf
    text = " ".join(ex.sentences)
    assert "on the boundary (tau^2 = 0)" in text and "are uncertain" not in text
    assert f"sigma^2 = (RSS + 0) / N = {e.sigma2_em_with:.5g}, the ML estimate itself" in text
    assert ex.joint_status == "no_interior_mode" and "no interior maximum" in text
    out = ex.to_dict()
    assert out["eb_ml"]["volume"] is None and out["eb_ml"]["log_joint"] is None
    assert any("tau^2 = 0" in n for n in out["notes"])


def test_unbalanced_oneway_has_a_note_not_a_closed_form():
    d = simulate(8, [2, 3, 4, 5, 2, 3, 4, 5], 0.0, 1.0, 1.0, seed=3)
    ex = explain(compare(d, methods=["eb-ml"]))
    assert ex.balanced is None and "range from 2 to 5" in ex.balanced_note
    assert ex.joint_status == "not_run" and "not computed" in ex.sentences[-1]


def test_large_f_ratio_tends_to_n_minus_1_over_n():
    d = simulate(200, 2, 0.0, 1.0, 20.0, seed=5)  # n = 2, huge F
    ex = explain(compare(d, methods=["eb-ml", "joint-map"], **FAST))
    assert ex.joint.sigma2 / ex.eb.sigma2 == pytest.approx(0.5, abs=0.02)


def test_report_fragment(datasets):
    """The report without figures (Jupyter's display is tests/test_jupyter.py's)."""
    from workbench.present.report import render

    c = compare(datasets["dyestuff"], methods=["eb-ml", "eb-reml", "joint-map"], **FAST)
    html = render(c, command="test", fragment=True)
    assert 'id="estimates"' in html and 'id="explanation"' in html and "<html" not in html


def test_full_report_renders_for_the_boundary_case(datasets):
    from workbench.present.report import render

    c = compare(datasets["dyestuff2"], methods=["anova", "eb-ml", "eb-reml", "joint-map"], **FAST)
    html = render(c, command="workbench test")
    for section in REPORT_SECTIONS:
        assert f'id="{section}"' in html
    assert "MCMC was not run" in html and "boundary" in html.lower()
    assert html.count("data:image/png;base64,") >= 7


def test_singular_slope_fit_names_the_terms():
    """A random-slope fit on the boundary through a correlation of +1 (sleepstudy, 3 subjects):
    the sentences name the terms and the correlation, and claim no interior joint mode."""
    df = pd.read_csv(DATA.parents[1] / "tests/reference/battery_data/sleepstudy_tiny.csv")
    c = compare(df, formula="Reaction ~ Days + (Days | Subject)", methods="eb-ml", **FAST)
    ex = explain(c)
    e = ex.eb
    r = e.G[0, 1] / np.sqrt(e.G[0, 0] * e.G[1, 1])
    assert r == pytest.approx(1.0, abs=1e-6) and e.volume == -np.inf
    text = " ".join(ex.sentences)
    assert "on the boundary (G is singular: (Intercept) and Days correlated +1)" in text
    assert "the variances (Intercept) " in text and ", Days " in text
    assert e.sigma2_em_with == pytest.approx(e.sigma2, rel=1e-6)
    assert ex.joint_status == "not_run" and "not computed" in text
