"""Formula models end to end: joint MAP (the general kernel against the one-way kernel, the EM
equations and PyMC's own density), the Laplace identity, the JSON contract, one record for every
route to the one-way model, the CLI's errors, a small MCMC."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, HSB82_LEVELS, REPORT_SECTIONS

from workbench.compare import Comparison, compare
from workbench.explain import point_terms
from workbench.fit import eb, joint_map
from workbench.model import design
from workbench.model.priors import make_priors


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


def test_oneway_formula_joint_map_general_kernel_equals_oneway_kernel(hsb82_frame):
    """The centered h-likelihood of y ~ 1 + (1 | g): the general (profiled) kernel forced on the
    one-way design finds the mode the one-way kernel (the dispatch's choice) finds."""
    d = design.from_frame(hsb82_frame, "mAch ~ 1 + (1 | school)")
    assert d.is_oneway
    ml = eb.fit(d, "ml")
    general = joint_map.fit(d, ml, n_starts=8, _kernel="profiled")
    one = joint_map.fit(d, ml, n_starts=8)
    assert general.status == one.status == "interior"
    assert abs(general.sigma2 / one.sigma2 - 1) < 1e-7
    assert abs(general.G[0, 0] / one.tau2 - 1) < 1e-6
    assert abs(general.beta[0] - one.mu) < 1e-6
    assert abs(general.log_joint - one.log_joint) < 1e-6
    np.testing.assert_allclose(general.re_mode, one.re_mode, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kernel", [None, "profiled", "general"])
def test_dyestuff_has_no_interior_joint_mode(kernel):
    d = design.from_frame(pd.read_csv(DATA / "dyestuff.csv"), "Yield ~ 1 + (1 | Batch)")
    res = joint_map.fit(d, eb.fit(d, "ml"), n_starts=6, _kernel=kernel)
    assert res.status == "no_interior_mode" and res.counts() == {"collapse": 6}
    assert res.best is None and res.to_dict().get("fixed_effects") is None


def test_joint_mode_solves_em_without_the_missing_terms(slopes):
    d, fit, jm = slopes
    assert jm.status == "interior"
    t = point_terms("joint MAP", d, jm.beta, jm.sigma2, jm.G)  # b: the conditional modes
    # the joint mode's own effects are the conditional modes at its parameters
    own = point_terms("joint MAP", d, jm.beta, jm.sigma2, jm.G, effects=jm.re_mode)
    assert abs(own.rss / t.rss - 1) < 1e-8 and abs(own.log_joint - t.log_joint) < 1e-8
    # the joint mode: sigma^2 = RSS / N and G = sum_j b_j b_j' / m (no V_b terms)
    assert abs(t.sigma2_em_without / jm.sigma2 - 1) < 1e-6
    np.testing.assert_allclose(t.G_em_without, jm.G, rtol=1e-4)
    # ... while the ML point solves them with the V_b terms
    e = point_terms("EB-ML", d, fit.beta, fit.sigma2, fit.G)
    assert abs(e.sigma2_em_with / fit.sigma2 - 1) < 1e-6
    np.testing.assert_allclose(e.G_em_with, fit.G, rtol=1e-4)
    assert jm.sigma2 < fit.sigma2 and jm.log_joint > e.log_joint
    assert abs(t.log_joint - jm.log_joint) < 1e-6


def test_laplace_identity(slopes):
    d, fit, _ = slopes
    t = point_terms("EB-ML", d, fit.beta, fit.sigma2, fit.G)
    mq = d.n_groups * d.q
    assert abs(t.log_marginal - (t.log_joint + t.volume + 0.5 * mq * np.log(2 * np.pi))) < 1e-8
    assert abs(t.log_marginal - fit.loglik) < 1e-8


def test_log_joint_is_pymcs_density(slopes):
    """Our h at a point = PyMC's log density of y and the centered b (jacobian=False)."""
    from workbench.model.pymc import build_model

    d, fit, _ = slopes
    model = build_model(d, make_priors(d, None), "centered")
    t = point_terms("EB-ML", d, fit.beta, fit.sigma2, fit.G)
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


def test_json_contract(hsb82_frame):
    c = compare(
        hsb82_frame,
        formula="mAch ~ ses + sector + (1 + ses | school)",
        levels=HSB82_LEVELS,
        methods="eb-ml,eb-reml,joint-map",
        n_starts=4,
    )
    out = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert out["model"]["oneway"] is False and "anova" not in out
    ml, reml = out["eb_ml"], out["eb_reml"]
    assert list(ml["fixed_effects"]) == ["(Intercept)", "ses", "sectorCatholic"]
    assert set(ml["fixed_effects"]["ses"]) >= {"estimate", "se"}
    vc = ml["variance_components"]["school"]
    assert set(vc["variances"]) == {"(Intercept)", "ses"}
    assert list(vc["correlations"]) == ["(Intercept):ses"]
    assert "loglik" in ml and "reml_criterion" in reml and ml["sigma2"] > 0
    for block in ("eb_ml", "eb_reml"):  # no one-way aliases for a formula model
        assert not {"mu", "tau2", "group_means"} & set(out[block])
    assert out["joint_map"]["status"] in ("interior", "no_interior_mode")
    assert out["joint_map"]["parametrization"] == "centered"
    assert set(out["joint_map_all"]) == {"centered", "noncentered"}
    assert out["explanation"]["eb_ml"]["missing"] > 0
    assert "tau2" not in out["explanation"]["eb_ml"]


def test_every_route_to_the_oneway_model_gives_one_record(hsb82_frame, datasets):
    """y/group, the formula, the formula with levels= and a GroupedData all build the one
    Comparison of the one-way design, with the same numbers."""
    routes = {
        "columns": compare(hsb82_frame, y="mAch", group="school", methods="eb-ml,eb-reml"),
        "formula": compare(hsb82_frame, formula="mAch ~ 1 + (1 | school)", methods="eb-ml,eb-reml"),
        "levels": compare(
            hsb82_frame,
            formula="mAch ~ 1 + (1 | school)",
            levels=HSB82_LEVELS,
            methods="eb-ml,eb-reml",
        ),
        "grouped": compare(datasets["hsb82"], methods="eb-ml,eb-reml"),
    }
    ref = routes["columns"].to_dict()
    for name, c in routes.items():
        assert type(c) is Comparison, name
        assert c.data.is_oneway and c.data.formula == "mAch ~ 1 + (1 | school)", name
        assert type(c.eb_ml) is type(routes["columns"].eb_ml), name
        out = c.to_dict()
        for block in ("eb_ml", "eb_reml", "explanation"):
            assert out[block] == ref[block], (name, block)
        assert out["model"] == ref["model"], name
    assert (
        ref["eb_ml"]["tau2"]
        == ref["eb_ml"]["variance_components"]["school"]["variances"]["(Intercept)"]
    )


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
        ("mAch ~ ses + (1 | school + sector)", "joined by ':' (interaction"),
        ("mAch ~ ses + (1 | school/school)", "the grouping column 'school' twice"),
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
