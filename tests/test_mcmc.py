"""NUTS through the one PyMC model and the one record (workbench/fit/mcmc.py): a one-way model
(the default: collapsed, nutpie) and a random-slope model (centered, PyMC's NUTS) run with
small draws, their summaries and the one-way aliases are present, finite and consistent with
the draws, the same seed gives the same draws, and one chain gives NaN R-hat with a warning
instead of an error."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from boundary_cases import slope_frame
from conftest import DATA

from workbench.fit import mcmc
from workbench.model import design
from workbench.model.priors import make_priors

SMALL = {"chains": 2, "draws": 200, "tune": 200}
SUMMARY_KEYS = {"mean", "median", "sd", "hdi", "mode"}


def _finite_summary(s: dict) -> bool:
    return set(s) >= SUMMARY_KEYS and all(
        math.isfinite(v) for v in (s["mean"], s["median"], s["sd"], s["mode"], *s["hdi"])
    )


def _run(d, seed=1, **kw):
    return mcmc.fit(d, make_priors(d, {}), mcmc.McmcSettings(**SMALL, seed=seed, **kw))


@pytest.fixture(scope="module")
def dyestuff():
    return design.from_frame(pd.read_csv(DATA / "dyestuff.csv"), "Yield ~ 1 + (1 | Batch)")


@pytest.fixture(scope="module")
def oneway(dyestuff):
    return _run(dyestuff)


@pytest.fixture(scope="module")
def slopes():
    d = design.from_frame(slope_frame(10, 8), "y ~ x + (1 + x | g)")
    return d, _run(d, parametrization="centered", sampler="pymc")  # PyMC's own NUTS


def test_oneway_record_has_the_general_and_the_oneway_summaries(oneway, dyestuff):
    out = oneway.to_dict()
    for q in ("mu", "sigma", "sigma2", "tau", "tau2"):
        assert _finite_summary(out[q]), q
    fe = out["fixed_effects"]["(Intercept)"]
    assert _finite_summary(fe) and fe["estimate"] == out["mu"]["mean"] and fe["se"] == fe["sd"]
    var = out["variance_components"]["Batch"]
    assert var["variances"]["(Intercept)"] == out["tau2"] and var["correlations"] == {}
    # random_effects: today's one-way shape (group means); random_effects_b: the general one
    assert list(out["random_effects"]) == list(dyestuff.labels)
    assert all(_finite_summary(s) for s in out["random_effects"].values())
    theta, b = oneway.draws("group_mean"), oneway.draws("b")[:, :, 0]
    mu = oneway.draws("mu")
    np.testing.assert_array_equal(mu, oneway.draws("beta")[:, 0])
    np.testing.assert_allclose(theta, mu[:, None] + b)
    np.testing.assert_allclose(oneway.draws("tau2"), oneway.draws("sd")[:, 0] ** 2)
    for j, lab in enumerate(dyestuff.labels):
        assert out["random_effects"][lab]["mean"] == pytest.approx(theta[:, j].mean())
        assert out["random_effects_b"][lab]["(Intercept)"] == {
            "mean": pytest.approx(b[:, j].mean()),
            "sd": pytest.approx(b[:, j].std(ddof=1)),
        }
    s2 = oneway.draws("sigma2")
    assert s2.shape == (400,) and out["sigma2"]["median"] == pytest.approx(np.median(s2))
    lo, hi = out["sigma2"]["hdi"]
    assert np.mean((s2 >= lo) & (s2 <= hi)) == pytest.approx(0.94, abs=0.01)
    assert out["sampler"] == "nutpie" and out["settings"]["seed"] == 1
    assert out["settings"]["parametrization"] == "collapsed"
    diag = out["diagnostics"]
    assert diag["divergences"] >= 0 and math.isfinite(diag["r_hat_max"])
    assert len(diag["e_bfmi"]) == 2 and math.isfinite(diag["ess_bulk_min"])
    # the old record's names still answer
    assert oneway.summary["tau"] == out["tau"] and oneway.group_summary == out["random_effects"]


def test_slope_model_runs_and_is_summarised(slopes):
    d, post = slopes
    out = post.to_dict()
    assert out["sampler"] == "pymc" and out["settings"]["parametrization"] == "centered"
    assert set(out["fixed_effects"]) == {"(Intercept)", "x"}
    assert all(_finite_summary(s) for s in out["fixed_effects"].values())
    comps = out["variance_components"]["g"]
    assert set(comps["variances"]) == {"(Intercept)", "x"}
    assert set(comps["correlations"]) == {"(Intercept):x"}
    assert all(_finite_summary(s) for s in [*comps["variances"].values(), out["sigma2"]])
    r = post.correlation_draws()["(Intercept):x"]
    assert comps["correlations"]["(Intercept):x"]["mean"] == pytest.approx(r.mean())
    assert np.all(np.abs(r) <= 1)
    assert out["random_effects"] == out["random_effects_b"]
    assert set(out["random_effects"]["s0"]) == {"(Intercept)", "x"}
    assert "mu" not in out and "tau" not in out and "group_mean" not in post.idata.posterior
    assert post.draws("b").shape == (400, 10, 2) and post.draws("beta").shape == (400, 2)
    np.testing.assert_array_equal(post.effect_draws("g"), post.draws("b"))
    assert set(post.variance_draws()) == {"(Intercept)", "x"}
    assert {"b_0", "chol_0_corr", "sd", "sigma2"} <= set(post.idata.posterior.data_vars)


def test_same_seed_same_draws(oneway, dyestuff):
    again = _run(dyestuff)
    for v in ("beta", "sigma", "sd_0", "b"):
        np.testing.assert_array_equal(again.draws(v), oneway.draws(v))
    assert again.to_dict() == oneway.to_dict()


def test_one_chain_diagnostics_are_nan_with_a_warning(oneway, dyestuff, tmp_path):
    one = mcmc.from_idata(dyestuff, oneway.idata.isel(chain=[0]), oneway.settings, oneway.sampler)
    assert math.isnan(one.diagnostics["r_hat_max"])
    assert math.isfinite(one.diagnostics["ess_bulk_min"])
    assert len(one.diagnostics["e_bfmi"]) == 1
    assert any("1 chain" in w for w in one.warnings)
    assert _finite_summary(one.to_dict()["tau"])
    mcmc.save_netcdf(one, tmp_path / "p.nc")
    assert (tmp_path / "p.nc").stat().st_size > 0
