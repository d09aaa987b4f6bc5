"""The comparison end to end: the JSON contract, determinism, MCMC summaries and diagnostics,
and the case-file runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DATA, ROOT, simulate

from workbench import compare
from workbench.cli import main

SMALL = ["--chains", "2", "--draws", "200", "--tune", "200", "--n-starts", "4"]


@pytest.fixture(scope="module")
def dyestuff_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    paths = []
    for i in range(2):
        p = out / f"run{i}.json"
        assert (
            main(
                [
                    "compare",
                    str(DATA / "dyestuff.csv"),
                    "--y",
                    "Yield",
                    "--group",
                    "Batch",
                    "--seed",
                    "7",
                    *SMALL,
                    "--json",
                    str(p),
                    "--quiet",
                    "--posterior",
                    str(out / f"post{i}.nc"),
                ]
            )
            == 0
        )
        paths.append(p)
    return [p.read_text() for p in paths], out


def test_json_contract(dyestuff_json):
    """The general blocks of every model and the one-way aliases, consistent with each other;
    the headline joint MAP is the centered h-likelihood whatever --parametrization says."""
    d = json.loads(dyestuff_json[0][0])
    assert d["model"]["oneway"] is True and d["model"]["formula"] == "Yield ~ 1 + (1 | Batch)"
    for block in ("eb_ml", "eb_reml"):
        b = d[block]
        assert {"mu", "sigma2", "tau2", "se", "ci_profile", "random_effects"} <= set(b)
        assert set(b["se"]) == {"mu", "sigma2", "tau2"}
        assert set(b["ci_profile"]) == {"sd_(Intercept)|Batch", "sigma", "tau"}
        assert b["ci_profile"]["tau"] == b["ci_profile"]["sd_(Intercept)|Batch"]
        assert set(b["random_effects"]) == set("ABCDEF")
        assert set(b["random_effects"]["A"]) == {"(Intercept)"}
        assert set(b["random_effects"]["A"]["(Intercept)"]) >= {"mode", "sd"}
        assert b["fixed_effects"]["(Intercept)"]["estimate"] == b["mu"]
        assert b["variance_components"]["Batch"]["variances"]["(Intercept)"] == b["tau2"]
        assert b["group_means"]["A"] == pytest.approx(
            b["mu"] + b["random_effects"]["A"]["(Intercept)"]["mode"], rel=1e-12
        )
    assert "loglik" in d["eb_ml"] and "reml_criterion" in d["eb_reml"]
    assert d["eb_ml"]["loglik"] == pytest.approx(-163.66353, rel=1e-7)
    assert {"mu", "sigma2", "tau2", "f_statistic", "p_value"} <= set(d["anova"])
    assert d["settings"]["parametrization"] == "collapsed"  # the MCMC's, not the headline's
    for block, objective in (("joint_map", "h-likelihood"), ("joint_map_posterior", "priors")):
        b = d[block]
        assert b["status"] in ("interior", "no_interior_mode")
        assert {"mu", "sigma2", "tau2", "log_joint", "starts"} <= set(b)
        assert b["parametrization"] == "centered" and objective in b["objective"]
        for s in b["starts"]:
            assert {"status", "log_joint", "sigma2", "tau2", "theta"} <= set(s)
    assert d["joint_map"]["status"] == "no_interior_mode" and d["joint_map"]["log_joint"] is None
    assert d["joint_map"]["mu"] is None and "fixed_effects" not in d["joint_map"]
    assert set(d["joint_map"]["start_counts"]) == {"collapse"}  # tau -> 0 (Dyestuff)
    for par in ("centered", "noncentered"):
        assert d["joint_map_all"][par]["h_likelihood"]["status"] == "no_interior_mode"
    assert d["joint_map_all"]["centered"]["h_likelihood"]["message"] == d["joint_map"]["message"]
    for q in ("mu", "sigma2", "tau2"):
        assert {"mean", "median", "mode", "hdi"} <= set(d["mcmc"][q])
        assert len(d["mcmc"][q]["hdi"]) == 2
    assert d["mcmc"]["fixed_effects"]["(Intercept)"]["mean"] == d["mcmc"]["mu"]["mean"]
    assert d["mcmc"]["variance_components"]["Batch"]["variances"]["(Intercept)"][
        "mean"
    ] == pytest.approx(d["mcmc"]["tau2"]["mean"], rel=1e-12)
    assert {"r_hat_max", "ess_bulk_min", "divergences"} <= set(d["mcmc"]["diagnostics"])
    assert d["model"]["priors"]["text"]["tau"].startswith("HalfNormal")


def test_same_seed_identical_json(dyestuff_json):
    texts, out = dyestuff_json
    assert texts[0] == texts[1]
    assert (out / "post0.nc").stat().st_size > 0


def test_python_api_to_dict_is_the_json(dyestuff_json):
    import pandas as pd

    df = pd.read_csv(DATA / "dyestuff.csv")
    c = compare(df, y="Yield", group="Batch", seed=7, chains=2, draws=200, tune=200, n_starts=4)
    d = json.loads(json.dumps(c.to_dict()))
    ref = json.loads(dyestuff_json[0][0])
    d["data"].pop("source"), ref["data"].pop("source")
    # the CSV's data set is cited from the README beside it; a DataFrame has no citation
    assert ref["data"].pop("citation").startswith("O.L. Davies")
    assert d["data"].pop("citation") is None
    assert d == ref
    table = c.table()
    assert "EB-ML" in table and "JM nc+pri" in table
    assert "joint MAP [centered h-likelihood (the joint mode)]: No interior joint mode" in table


def test_mcmc_summaries_agree_with_draws_and_cover_truth():
    d = simulate(40, 6, 3.0, 1.0, 0.8, seed=11)
    c = compare(d, methods=["eb-reml", "mcmc"], seed=3, chains=2, draws=500, tune=500)
    s = c.mcmc.summary
    draws = c.mcmc.draws("sigma2")
    assert s["sigma2"]["mean"] == pytest.approx(draws.mean())
    assert s["sigma2"]["median"] == pytest.approx(np.median(draws))
    lo, hi = s["sigma2"]["hdi"]
    assert np.mean((draws >= lo) & (draws <= hi)) == pytest.approx(0.94, abs=0.01)
    # HDI <= ETI, up to one gap between sorted draws (the HDI spans a whole number of gaps,
    # the quantiles interpolate between draws)
    gap = np.diff(np.sort(draws)).max()
    assert hi - lo <= np.quantile(draws, 0.97) - np.quantile(draws, 0.03) + gap
    assert lo < 1.0 < hi and s["tau2"]["hdi"][0] < 0.64 < s["tau2"]["hdi"][1]
    assert s["sigma2"]["median"] == pytest.approx(c.eb_reml.sigma2, rel=0.1)
    assert c.mcmc.diagnostics["r_hat_max"] < 1.05
    # the one-way aliases are the general summaries under their one-way names
    general = c.mcmc.summaries
    for alias, block in (("tau2", "variances"), ("mu", "fixed_effects")):
        for key in ("mean", "median", "sd", "mode", "hdi"):
            assert general[block]["(Intercept)"][key] == pytest.approx(s[alias][key], rel=1e-12)


def test_diagnostics_warn_on_disagreeing_chains_and_divergences():
    import arviz as az

    from workbench.fit.diagnostics import diagnose

    rng = np.random.default_rng(0)
    shift = np.array([[0.0], [3.0]])  # the second chain sits elsewhere
    post = {v: rng.normal(size=(2, 200)) + shift for v in ("sigma", "sigma2")}
    post["beta"] = (rng.normal(size=(2, 200)) + shift)[..., None]
    post["sd"] = np.exp(rng.normal(size=(2, 200, 1)))
    post["b"] = rng.normal(size=(2, 200, 3, 1))
    div = np.zeros((2, 200), bool)
    div[0, :5] = True
    idata = az.from_dict(
        {"posterior": post, "sample_stats": {"diverging": div, "energy": rng.normal(size=(2, 200))}}
    )
    diag, warns = diagnose(idata, idata.posterior.to_dataset())
    assert diag["r_hat_max"] > 1.01 and diag["divergences"] == 5
    assert any("R-hat" in w for w in warns) and any("5 divergent" in w for w in warns)


def test_case_file_runs(tmp_path, monkeypatch, capsys):
    case = tmp_path / "case.toml"
    case.write_text(
        f'title = "t"\n[data]\npath = "{DATA / "dyestuff2.csv"}"\ny = "Yield"\n'
        f'group = "Batch"\n[compare]\nmethods = ["anova", "eb-ml", "eb-reml"]\n'
        f'seed = 1\n[output]\njson = "{tmp_path / "o.json"}"\n'
        f'report = "{tmp_path / "o.html"}"\n'
    )
    assert main(["run", str(case), "--quiet"]) == 0
    d = json.loads((tmp_path / "o.json").read_text())
    assert d["eb_ml"]["boundary"] is True and d["eb_ml"]["tau2"] == 0.0
    assert "boundary" in capsys.readouterr().out
    assert (tmp_path / "o.html").is_file() and (tmp_path / "o.posterior.nc").exists() is False
    from workbench.casefile import load_case

    for shipped in (ROOT / "models").glob("*.toml"):
        if "[simulation]" not in shipped.read_text():
            assert load_case(shipped).data_path.is_file()
