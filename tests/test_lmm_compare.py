"""Formula models end to end: joint MAP (against the one-way estimator, the EM equations and
PyMC's own density), the Laplace identity, the JSON contract, the CLI's errors, a small MCMC."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, HSB82_LEVELS, REPORT_SECTIONS

from workbench.compare import Comparison, compare
from workbench.explain_lmm import terms
from workbench.fit import eb
from workbench.fit import eb_oneway as oneway_eb
from workbench.fit import joint_oneway as oneway_jm
from workbench.fit import joint_profiled as joint_map
from workbench.model import design
from workbench.objectives.oneway import Stats


def _slopes(m=30, n=20, seed=3):
    """Strong-signal random intercepts and slopes (an interior joint mode exists)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    x = rng.standard_normal(m * n)
    b = rng.multivariate_normal([0, 0], [[9.0, 1.5], [1.5, 4.0]], m)
    y = 5 + 1.0 * x + b[g, 0] + b[g, 1] * x + rng.standard_normal(m * n)
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{j}" for j in g]})


@pytest.fixture(scope="module")
def slopes():
    d = design.from_frame(_slopes(), "y ~ x + (1 + x | g)")
    fit = eb.fit(d, "ml")
    return d, fit, joint_map.fit(d, fit, n_starts=8, seed=1)


def test_oneway_formula_joint_map_equals_oneway_estimator(datasets, hsb82_frame):
    d = design.from_frame(hsb82_frame, "mAch ~ 1 + (1 | school)")
    general = joint_map.fit(d, eb.fit(d, "ml"), n_starts=8)
    gd = datasets["hsb82"]
    ml = oneway_eb.fit(gd, "ml")
    one = oneway_jm.fit(
        Stats.of(gd),
        parametrization="centered",
        eb_point=(ml.mu, ml.sigma2, ml.tau2),
        sd_y=float(gd.y.std(ddof=1)),
        labels=gd.labels,
        n_starts=8,
    )
    assert general.status == one.status == "interior"
    assert abs(general.sigma2 / one.sigma2 - 1) < 1e-7
    assert abs(general.G[0, 0] / one.tau2 - 1) < 1e-6
    assert abs(general.beta[0] - one.mu) < 1e-6
    assert abs(general.log_joint - one.log_joint) < 1e-6


def test_dyestuff_has_no_interior_joint_mode():
    d = design.from_frame(pd.read_csv(DATA / "dyestuff.csv"), "Yield ~ 1 + (1 | Batch)")
    res = joint_map.fit(d, eb.fit(d, "ml"), n_starts=6)
    assert res.status == "no_interior_mode" and res.counts() == {"collapse": 6}
    assert res.to_dict().get("fixed_effects") is None


def test_joint_mode_solves_em_without_the_missing_terms(slopes):
    d, fit, jm = slopes
    assert jm.status == "interior"
    t = terms(jm.pls, jm.sigma2, d.factors.ztz)
    # the joint mode: sigma^2 = RSS / N and G = sum_j b_j b_j' / m (no V_b terms)
    assert abs(t.em_sigma2_no_missing / jm.sigma2 - 1) < 1e-6
    np.testing.assert_allclose(t.em_G_no_missing, jm.G, rtol=1e-4)
    # ... while the ML point solves them with the V_b terms
    e = terms(fit.pls, fit.sigma2, d.factors.ztz)
    assert abs(e.em_sigma2 / fit.sigma2 - 1) < 1e-6
    np.testing.assert_allclose(e.em_G, fit.G, rtol=1e-4)
    assert jm.sigma2 < fit.sigma2 and jm.log_joint > e.log_joint


def test_laplace_identity(slopes):
    d, fit, _ = slopes
    t = terms(fit.pls, fit.sigma2, d.factors.ztz)
    mq = d.n_groups * d.q
    assert abs(t.log_marginal - (t.log_joint + t.volume + 0.5 * mq * np.log(2 * np.pi))) < 1e-8
    assert abs(t.log_marginal - fit.loglik) < 1e-8


def test_log_joint_is_pymcs_density(slopes):
    """Our h at a point = PyMC's log density of y and the centered b (jacobian=False)."""
    from workbench.model.lmm_priors import build_model, make_priors

    d, fit, _ = slopes
    model = build_model(d, make_priors(d), "centered")
    t = terms(fit.pls, fit.sigma2, d.factors.ztz)
    chol = np.linalg.cholesky(np.asarray(t.G))
    # chol_0 enters b_0's density: its packed value (row-major lower triangle, log diagonal)
    packed = chol[np.tril_indices(2)]
    packed[[0, 2]] = np.log(packed[[0, 2]])
    point = {
        "beta": fit.beta,
        "sigma_log__": np.log(np.sqrt(fit.sigma2)),
        "b_0": fit.re_mode,
        "chol_0_cholesky-cov-packed__": packed,
    }
    logp = model.compile_logp(vars=[model["y"], model["b_0"]], jacobian=False)
    assert abs(float(logp(point)) - t.log_joint) < 1e-6


def test_json_contract_and_oneway_route(hsb82_frame, datasets):
    c = compare(
        hsb82_frame,
        formula="mAch ~ ses + sector + (1 + ses | school)",
        levels=HSB82_LEVELS,
        methods="eb-ml,eb-reml,joint-map",
        n_starts=4,
    )
    out = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    ml, reml = out["eb_ml"], out["eb_reml"]
    assert list(ml["fixed_effects"]) == ["(Intercept)", "ses", "sectorCatholic"]
    assert set(ml["fixed_effects"]["ses"]) >= {"estimate", "se"}
    vc = ml["variance_components"]["school"]
    assert set(vc["variances"]) == {"(Intercept)", "ses"}
    assert list(vc["correlations"]) == ["(Intercept):ses"]
    assert "loglik" in ml and "reml_criterion" in reml and ml["sigma2"] > 0
    assert out["joint_map"]["status"] in ("interior", "no_interior_mode")
    assert out["explanation"]["eb_ml"]["missing"] > 0
    # the one-way formula takes the sufficient-statistics path: identical numbers
    via_formula = compare(hsb82_frame, formula="mAch ~ 1 + (1 | school)", methods="eb-ml")
    via_columns = compare(datasets["hsb82"], methods="eb-ml")
    assert isinstance(via_formula, Comparison)
    assert via_formula.eb_ml.sigma2 == via_columns.eb_ml.sigma2
    assert via_formula.eb_ml.tau2 == via_columns.eb_ml.tau2


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "formula, expect",
    [
        ("mAch ~ sesx + (1 | school)", "column 'sesx'"),
        ("mAch ~ ses + (1 | school", "unbalanced '('"),
        ("mAch ~ ses + sector", "no random-effect term"),
        ("mAch ~ ses + meanses + cses + (1 | school)", "rank deficient"),
        ("mAch ~ ses + (1 | school) + (1 | sector)", "grouping factors"),
        ("mAch ~ ses + (1 | school:sector)", "one column name"),
    ],
)
def test_bad_formulas_exit_2_with_one_line(tmp_path, formula, expect):
    out = tmp_path / "out.json"
    r = _cli(
        "compare",
        str(DATA / "hsb82.csv"),
        "--formula",
        formula,
        "--json",
        str(out),
        "--quiet",
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and not out.exists()


def test_missing_covariate_value_names_column_and_row(tmp_path):
    df = pd.read_csv(DATA / "hsb82.csv").head(400)
    df.loc[17, "ses"] = np.nan
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    r = _cli(
        "compare",
        str(path),
        "--formula",
        "mAch ~ ses + (1 + ses | school)",
        "--quiet",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "column 'ses'" in r.stderr and "row 18" in r.stderr


def test_small_mcmc_and_report(hsb82_frame, tmp_path):
    """A short NUTS run on 25 schools: the MCMC block has the EB block's quantities, and the
    report has every section and its plots."""
    from workbench.present.report import render

    small = hsb82_frame[hsb82_frame.school.isin(hsb82_frame.school.unique()[:25])]
    c = compare(
        small,
        formula="mAch ~ ses + (1 + ses | school)",
        chains=2,
        draws=150,
        tune=150,
        n_starts=4,
        seed=2,
    )
    out = c.to_dict()
    mc = out["mcmc"]
    assert set(mc["fixed_effects"]) == set(out["eb_ml"]["fixed_effects"])
    assert set(mc["variance_components"]["school"]["variances"]) == {"(Intercept)", "ses"}
    assert set(mc["variance_components"]["school"]["correlations"]) == {"(Intercept):ses"}
    assert mc["diagnostics"]["divergences"] >= 0 and np.isfinite(mc["diagnostics"]["r_hat_max"])
    html = render(c, command="test")
    for sec in REPORT_SECTIONS:
        assert f'<section id="{sec}">' in html
    assert html.count("data:image/png;base64,") >= 6
