"""The variance-gap decomposition against an independent dense computation (the general
mixed-model formulas of DESIGN.md: tr(Z V_b Z'), -1/2 log det(Z'Z/sigma^2 + G^-1)), the EM
identity at the ML point, the stationarity of the joint mode, and the balanced closed form."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, REPORT_SECTIONS, simulate

from workbench import compare
from workbench.explain import explain, point_terms
from workbench.objectives.oneway import Stats


def _dense_terms(d, mu, s, t):
    """Build Z explicitly and compute the terms with dense linear algebra."""
    Z = np.zeros((d.n_obs, d.n_groups))
    Z[np.arange(d.n_obs), d.codes] = 1.0
    prec = Z.T @ Z / s + np.eye(d.n_groups) / t
    V_b = np.linalg.inv(prec)
    b = V_b @ Z.T @ (d.y - mu) / s
    resid = d.y - mu - Z @ b
    return {
        "missing": np.trace(V_b @ (Z.T @ Z)),  # tr(Z V_b Z')
        "volume": -0.5 * np.linalg.slogdet(prec)[1],
        "rss": resid @ resid,
        "a": b,
    }


@pytest.mark.parametrize(
    "name,cols", [("dyestuff", ("Yield", "Batch")), ("hsb82", ("mAch", "school"))]
)
def test_terms_match_dense_mixed_model_formulas(datasets, name, cols):
    d = datasets[name]
    c = compare(d, methods=["eb-ml"])
    ml = c.eb_ml
    pt = point_terms("EB", ml.mu, ml.sigma2, ml.tau2, Stats.of(d))
    ref = _dense_terms(d, ml.mu, ml.sigma2, ml.tau2)
    assert pt.missing == pytest.approx(ref["missing"], rel=1e-9)
    assert pt.volume == pytest.approx(ref["volume"], rel=1e-9)
    assert pt.rss == pytest.approx(ref["rss"], rel=1e-9)
    assert pt.p_d == pytest.approx(ref["missing"] / ml.sigma2, rel=1e-9)
    # EM identity at the ML point: the update with the missing term returns the estimate
    assert pt.sigma2_em_with == pytest.approx(ml.sigma2, rel=1e-7)
    assert pt.tau2_em_with == pytest.approx(ml.tau2, rel=1e-6)
    assert pt.log_marginal - pt.log_joint == pytest.approx(
        pt.volume + 0.5 * d.n_groups * np.log(2 * np.pi), rel=1e-10
    )


def test_joint_mode_solves_the_em_equations_without_the_missing_term():
    c = compare(str(DATA / "small_groups.csv"), "y", "group", methods=["eb-ml", "joint-map"])
    ex = explain(c)
    j = ex.joint
    assert j is not None
    assert j.sigma2_em_without == pytest.approx(j.sigma2, rel=1e-7)
    assert j.tau2_em_without == pytest.approx(j.tau2, rel=1e-7)
    assert j.log_joint > ex.eb.log_joint and j.log_marginal < ex.eb.log_marginal
    low = 1 - j.sigma2 / ex.eb.sigma2
    assert low >= 0.15
    assert f"sigma^2 comes out {100 * low:.0f}% low" in " ".join(ex.sentences)
    b = ex.balanced
    assert b.interior_exists and b.sigma2_joint == pytest.approx(j.sigma2, rel=1e-6)


def test_no_interior_case_is_worded_differently(datasets):
    ex = explain(compare(datasets["dyestuff"], methods=["eb-ml", "joint-map"]))
    assert ex.joint is None and ex.joint_status == "no_interior_mode"
    text = " ".join(ex.sentences)
    assert "no interior maximum" in text and "below the threshold" in text


def test_large_f_ratio_tends_to_n_minus_1_over_n():
    d = simulate(200, 2, 0.0, 1.0, 20.0, seed=5)  # n = 2, huge F
    ex = explain(compare(d, methods=["eb-ml", "joint-map"]))
    assert ex.joint.sigma2 / ex.eb.sigma2 == pytest.approx(0.5, abs=0.02)


def test_repr_html_fragment(datasets):
    c = compare(datasets["dyestuff"], methods=["eb-ml", "eb-reml", "joint-map"])
    html = c._repr_html_()
    assert 'id="estimates"' in html and 'id="explanation"' in html and "<html" not in html


def test_full_report_renders_for_the_boundary_case(datasets):
    from workbench.present.report import render

    c = compare(datasets["dyestuff2"], methods=["anova", "eb-ml", "eb-reml", "joint-map"])
    html = render(c, command="workbench test")
    for section in REPORT_SECTIONS:
        assert f'id="{section}"' in html
    assert "MCMC was not run" in html and "boundary" in html.lower()
    assert html.count("data:image/png;base64,") >= 7
