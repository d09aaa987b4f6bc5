"""The JSON contract as a schema (`workbench/schema/comparison.schema.json`, Draft 2020-12): one
contract for every model. The JSON of every shipped case (MCMC from made-up draws summarised by
the real code in one of them, left out of the others) and of the boundary cases (tau^2 = 0, a
singular slope fit, one chain with no tuning, labels like `$`) validates, is strict JSON, and its
report renders with every figure drawn or a stated reason; and the schema discriminates: a
one-way record without its aliases, a formula record with ANOVA, an estimate missing at an
interior joint mode or present without one, a method run without its block all fail."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tomllib

import jsonschema
import numpy as np
import pandas as pd
import pytest
from boundary_cases import LABELS, attach, posterior, singular_slope_frame
from conftest import DATA, ROOT

import workbench
from workbench.casefile import load_case
from workbench.jsonsafe import schema, validate
from workbench.present.report import render

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

CASES = sorted(
    p for p in (ROOT / "models").glob("*.toml") if "simulation" not in tomllib.loads(p.read_text())
)
MCMC_CASE = "small_groups"  # the shipped case given (made-up) MCMC draws
CROSSED = ROOT / "tests" / "reference" / "crossed_data"


def check(c, **render_kwargs) -> dict:
    """Validate the comparison's JSON and render its full report; return the JSON."""
    out = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    validate(out)
    html = render(c, command="test", **render_kwargs)
    for sec in ("data", "model", "estimates", "diagnostics", "provenance"):
        assert f'<section id="{sec}">' in html
    assert "could not be drawn" not in html
    return out


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_shipped_case_is_covered():
    assert {p.stem for p in CASES} >= {
        "small_groups",
        "dyestuff",
        "dyestuff2",
        "hsb82",
        "hsb82_slopes",
    }


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_shipped_case_json_matches_schema(path):
    case = load_case(path)
    kwargs = {**case.compare_kwargs, "n_starts": 1, "n_jobs": 1}
    kwargs["methods"] = [m for m in kwargs["methods"] if m != "mcmc"]
    c = workbench.compare(case.data_path, case.y, case.group, **kwargs)
    if path.stem == MCMC_CASE:
        c = attach(c, posterior(c.data))
    out = check(c, case_text=case.text, truth=case.truth)
    assert out["settings"]["methods"] == [*kwargs["methods"], *(["mcmc"] if c.mcmc else [])]
    # the general blocks for every model; the one-way aliases and ANOVA for one-way designs
    assert out["model"]["oneway"] == c.data.is_oneway
    for block in ("eb_ml", "eb_reml", "joint_map"):
        assert {"fixed_effects", "variance_components", "sigma2"} <= set(out[block]) or (
            block == "joint_map" and out[block]["status"] == "no_interior_mode"
        )
        assert ("mu" in out[block]) == c.data.is_oneway
    assert ("anova" in out) == ("anova" in kwargs["methods"])
    if path.stem == MCMC_CASE:
        assert {"anova", "eb_ml", "eb_reml", "joint_map", "mcmc", "explanation"} <= set(out)
        assert {"mu", "tau2", "fixed_effects", "variance_components"} <= set(out["mcmc"])
    if path.stem == "dyestuff2":  # the boundary tau^2 = 0
        assert out["eb_ml"]["tau2"] == 0 and out["eb_ml"]["se"]["tau2"] is None
        assert out["explanation"]["eb_ml"]["volume"] is None
        assert any("volume" in n for n in out["explanation"]["notes"])


def test_formula_mcmc_block_matches_schema(formula_record):
    """The formula model's MCMC block (draws made up: a real NUTS run is
    test_lmm_compare.test_small_mcmc_and_report)."""
    assert set(formula_record["mcmc"]["variance_components"]["g"]["correlations"]) == {
        "(Intercept):x"
    }
    assert "mu" not in formula_record["mcmc"] and "anova" not in formula_record


def test_boundary_singular_slope_fit():
    c = workbench.compare(
        singular_slope_frame(),
        formula="y ~ x + (1 + x | g)",
        n_starts=2,
        methods=["eb-ml", "eb-reml", "joint-map"],
        n_jobs=1,
    )
    out = check(c)
    assert out["eb_ml"]["singular"]
    assert out["eb_ml"]["variance_components"]["g"]["correlations"]["(Intercept):x"] is None


def test_boundary_one_chain_no_tuning():
    """One chain with no tuning (draws made up, summarised and diagnosed by the real code; a
    real one-chain NUTS run is test_mcmc.test_one_chain_diagnostics_are_nan_with_a_warning):
    R-hat is null with a note, the report draws every figure."""
    c = workbench.compare(DATA / "dyestuff2.csv", "Yield", "Batch", methods=["eb-ml"])
    c = attach(c, posterior(c.data, chains=1, draws=50))
    assert c.settings.chains == 1 and c.settings.tune == 0
    out = check(c)
    assert out["mcmc"]["diagnostics"]["r_hat_max"] is None
    assert (
        "mcmc.diagnostics.r_hat_max was NaN (not a number): reported as null"
        in out["mcmc"]["notes"]
    )
    assert any("1 chain" in w for w in out["warnings"])


def test_boundary_dollar_labels_through_the_cli(tmp_path):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"g": np.repeat(LABELS, 3), "y": rng.normal(size=3 * len(LABELS))})
    frame["y"] += np.repeat(np.arange(len(LABELS)), 3)
    frame.to_csv(tmp_path / "labels.csv", index=False)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "compare",
            "labels.csv",
            "--y",
            "y",
            "--group",
            "g",
            "--methods",
            "anova,eb-ml,eb-reml,joint-map",
            "--n-starts",
            "2",
            "--n-jobs",
            "1",
            "--quiet",
            "--report",
            "out.html",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    validate(out)
    assert set(out["eb_ml"]["random_effects"]) == set(LABELS)
    assert set(out["eb_ml"]["group_means"]) == set(LABELS)
    html = (tmp_path / "out.html").read_text()
    # no MCMC: no funnel, no rank plots; the joint MAP with priors ran: the exact posterior
    assert re.findall(r'<figure id="fig-(\w+)">', html) == [
        "framing",
        "marginals",
        "profiles",
        "taupath",
        "exact",
        "caterpillar",
    ]
    assert "could not be drawn" not in html


# ----------------------------------------------------------------------------------------------
# The schema discriminates


def mutated(record: dict, path: tuple, value=None, *, drop: bool = False) -> dict:
    """A deep copy of `record` with the value at `path` replaced (or the key dropped)."""
    bad = copy.deepcopy(record)
    node = bad
    for key in path[:-1]:
        node = node[key]
    if drop:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return bad


def rejected(record: dict) -> None:
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate(record)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("eb_ml", "tau2"), float("nan")),  # not strict JSON
        (("eb_ml", "tau2"), "0.5"),  # a string for a number
        (("mcmc", "diagnostics", "divergences"), -1),
        (("settings", "methods"), ["eb-ml", "bayes"]),
        (("joint_map", "status"), "found"),
        (("model", "oneway"), "yes"),
        (("eb_ml", "ci_profile", "sd_(Intercept)|group"), [1.0]),  # an interval of one end
    ],
)
def test_schema_rejects(path, value, oneway_record):
    rejected(mutated(oneway_record, path, value))


@pytest.mark.parametrize(
    "path",
    [
        ("eb_ml", "mu"),
        ("eb_reml", "tau2"),
        ("eb_ml", "se"),
        ("eb_ml", "group_means"),
        ("joint_map", "mu"),
        ("joint_map_posterior", "tau2"),
        ("mcmc", "tau2"),
        ("mcmc", "mu"),
        ("eb_ml", "fixed_effects"),  # the general blocks are there for one-way models too
        ("eb_ml", "variance_components"),
        ("mcmc", "variance_components"),
    ],
)
def test_schema_requires_the_oneway_aliases_and_the_general_blocks(path, oneway_record):
    rejected(mutated(oneway_record, path, drop=True))


def test_schema_requires_the_block_of_every_method_run(oneway_record):
    for block in ("eb_ml", "eb_reml", "joint_map", "mcmc", "anova", "explanation"):
        bad = {k: v for k, v in oneway_record.items() if k != block}
        with pytest.raises(jsonschema.ValidationError, match=block):
            validate(bad)


def test_schema_allows_anova_only_for_oneway_designs(oneway_record, formula_record):
    rejected({**formula_record, "anova": oneway_record["anova"]})
    rejected(mutated(oneway_record, ("model", "oneway"), False))  # ANOVA of a formula model
    without = {k: v for k, v in oneway_record.items() if k != "anova"}
    without["settings"] = {
        **without["settings"],
        "methods": [m for m in without["settings"]["methods"] if m != "anova"],
    }
    validate(without)  # a one-way model need not run ANOVA


@pytest.mark.parametrize("block", ["joint_map", "joint_map_posterior"])
def test_schema_ties_the_estimates_to_the_joint_status(block, oneway_record, formula_record):
    """An interior joint mode has finite estimates; no interior mode has none (no point is
    reported as the MAP). Both records' joint modes here are interior."""
    for record in (oneway_record, formula_record):
        assert record[block]["status"] == "interior"
        for key in ("sigma2", "log_joint"):
            rejected(mutated(record, (block, key), None))
        rejected(mutated(record, (block, "fixed_effects"), drop=True))
        rejected(mutated(record, (block, "status"), "no_interior_mode"))  # estimates kept
    for key in ("mu", "tau2"):
        rejected(mutated(oneway_record, (block, key), None))


def test_schema_ties_the_short_variants_to_their_status(oneway_record, formula_record):
    short = formula_record["joint_map_all"]["centered"]["h_likelihood"]
    assert short["status"] == "interior"
    assert oneway_record["joint_map_all"]["centered"]["h_likelihood"]["status"] == "interior"
    for key in ("mu", "tau2", "log_joint"):
        path = ("joint_map_all", "centered", "h_likelihood", key)
        rejected(mutated(oneway_record, path, None))
    rejected(mutated(formula_record, ("joint_map_all", "centered", "h_likelihood", "sigma2"), None))
    rejected(
        mutated(
            formula_record,
            ("joint_map_all", "centered", "h_likelihood", "status"),
            "no_interior_mode",
        )
    )
    rejected(mutated(formula_record, ("joint_map_all", "sideways"), {"h_likelihood": short}))


# ----------------------------------------------------------------------------------------------
# Records with every block


@pytest.fixture(scope="module")
def oneway_record():
    """A valid one-way record with every block (draws made up); its centered joint modes are
    interior (small groups, strong group effect)."""
    c = workbench.compare(
        DATA / "small_groups.csv",
        "y",
        "group",
        n_starts=2,
        n_jobs=1,
        methods=["anova", "eb-ml", "eb-reml", "joint-map"],
    )
    out = attach(c, posterior(c.data)).to_dict()
    validate(out)
    return out


def strong_slopes_frame(seed: int = 1) -> pd.DataFrame:
    """30 groups of 4 with strong independent intercept and slope effects (sd 6 and 3 against
    a residual sd of 1): the centered joint modes of y ~ x + (1 + x | g) are interior."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(30), 4)
    x = rng.normal(size=g.size)
    b0, b1 = 6 * rng.normal(size=30), 3 * rng.normal(size=30)
    y = 50 + b0[g] + (1 + b1[g]) * x + rng.normal(size=g.size)
    return pd.DataFrame({"g": [f"g{j}" for j in g], "x": x, "y": y})


@pytest.fixture(scope="module")
def formula_record():
    """A valid formula record (correlated random intercepts and slopes) with every block (draws
    made up); its centered joint modes are interior."""
    c = workbench.compare(
        strong_slopes_frame(),
        formula="y ~ x + (1 + x | g)",
        methods=["eb-ml", "eb-reml", "joint-map"],
        n_starts=2,
        n_jobs=1,
    )
    out = check(attach(c, posterior(c.data)))
    assert out["model"]["oneway"] is False
    return out


# ----------------------------------------------------------------------------------------------
# Several grouping factors (crossed and nested random effects)


@pytest.fixture(scope="module")
def crossed_record():
    """Penicillin, (1 | plate) + (1 | sample) crossed: EB-ML, EB-REML and the joint MAP."""
    c = workbench.compare(
        pd.read_csv(CROSSED / "penicillin.csv"),
        formula="diameter ~ 1 + (1 | plate) + (1 | sample)",
        methods=["eb-ml", "eb-reml", "joint-map"],
        n_starts=2,
        n_jobs=1,
    )
    return c, check(c)


def test_several_factor_records_match_schema(crossed_record):
    c, out = crossed_record
    d = c.data
    factors = out["data"]["grouping_factors"]
    assert [f["name"] for f in factors] == ["plate", "sample"]
    assert [f["n_levels"] for f in factors] == [24, 6]
    assert not {"group", "n_groups", "balanced"} & set(out["data"])
    assert out["data"]["notes"] == list(d.notes) and d.notes  # 'sample' crossed with 'plate'
    for block in ("eb_ml", "eb_reml", "joint_map"):
        assert set(out[block]["variance_components"]) == {"plate", "sample"}, block
    for block in ("eb_ml", "eb_reml", "joint_map"):  # the contract: keyed by factor, then level
        re_ = out[block]["random_effects"]
        assert set(re_) == {"plate", "sample"}
        assert set(re_["sample"]) == set(d.groupings[1].labels)
        assert set(re_["plate"]["a"]) == {"(Intercept)"}


def test_nested_and_slope_records_match_schema():
    """Pastes, (1 | batch/cask) = (1 | cask:batch) + (1 | batch); a correlated slope of one
    factor beside another factor's intercept, with made-up MCMC draws."""
    from test_crossed_report import crossed_slope_frame

    c = workbench.compare(
        pd.read_csv(CROSSED / "pastes.csv"),
        formula="strength ~ 1 + (1 | batch/cask)",
        methods=["eb-ml", "eb-reml"],
    )
    out = check(c)
    assert [f["name"] for f in out["data"]["grouping_factors"]] == ["cask:batch", "batch"]
    assert "a:A" in out["eb_ml"]["random_effects"]["cask:batch"]  # lme4: cask:batch
    c = workbench.compare(
        crossed_slope_frame(),
        formula="y ~ x + (1 + x | a) + (1 | b)",
        methods=["eb-ml", "eb-reml"],
    )
    out = check(attach(c, posterior(c.data)))
    vc = out["mcmc"]["variance_components"]
    assert set(vc) == {"a", "b"} and set(vc["a"]["correlations"]) == {"(Intercept):x"}
    assert set(out["mcmc"]["random_effects_b"]) == {"a", "b"}
    assert out["eb_ml"]["variance_components"]["a"]["correlations"]["(Intercept):x"] is not None


def test_schema_ties_the_data_summary_to_the_number_of_factors(crossed_record, oneway_record):
    _, crossed = crossed_record
    rejected(mutated(crossed, ("data", "group"), "plate"))  # one factor's keys with two
    rejected(mutated(crossed, ("data", "grouping_factors"), drop=True))
    rejected(mutated(crossed, ("data", "notes"), drop=True))
    rejected(mutated(oneway_record, ("data", "n_groups"), drop=True))  # needed with one
    rejected(mutated(oneway_record, ("data", "grouping_factors"), []))
    rejected(mutated(crossed, ("data", "grouping_factors", 0, "n_levels"), 0))


def test_schema_keys_random_effects_by_factor_with_several(crossed_record, formula_record):
    _, crossed = crossed_record
    flat = crossed["eb_ml"]["random_effects"]["plate"]  # one factor's {label: {term: ...}}
    rejected(mutated(crossed, ("eb_ml", "random_effects"), flat))
    nested = {"g": formula_record["eb_ml"]["random_effects"], "h": {}}
    rejected(mutated(formula_record, ("eb_ml", "random_effects"), nested))
