"""The JSON contract as a schema (`workbench/schema/comparison.schema.json`, Draft 2020-12):
the JSON of every shipped case (MCMC tiny in one of them, left out of the others) and of the
boundary cases (tau^2 = 0, a singular slope fit, one chain with no tuning, labels like `$`)
validates, is strict JSON, and its report renders with every figure drawn or a stated reason."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import jsonschema
import numpy as np
import pandas as pd
import pytest
from boundary_cases import LABELS, attach, lmm, oneway, singular_slope_frame
from conftest import DATA, ROOT

import workbench
from workbench.casefile import load_case
from workbench.jsonsafe import schema, validate
from workbench.present.report import render

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

CASES = sorted(
    p for p in (ROOT / "models").glob("*.toml") if "simulation" not in tomllib.loads(p.read_text())
)
MCMC_CASE = "small_groups"  # the one shipped case run with (tiny) MCMC
TINY_MCMC = {"chains": 2, "draws": 100, "tune": 100}


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
    if path.stem == MCMC_CASE:
        kwargs.update(TINY_MCMC)
    else:
        kwargs["methods"] = [m for m in kwargs["methods"] if m != "mcmc"]
    c = workbench.compare(case.data_path, case.y, case.group, **kwargs)
    out = check(c, case_text=case.text, truth=case.truth)
    assert out["settings"]["methods"] == list(kwargs["methods"])
    if path.stem == MCMC_CASE:
        assert {"anova", "eb_ml", "eb_reml", "joint_map", "mcmc", "explanation"} <= set(out)
    if path.stem == "dyestuff2":  # the boundary tau^2 = 0
        assert out["eb_ml"]["tau2"] == 0 and out["eb_ml"]["se"]["tau2"] is None
        assert out["explanation"]["eb_ml"]["volume"] is None
        assert any("volume" in n for n in out["explanation"]["notes"])


def test_formula_mcmc_block_matches_schema(hsb82_frame):
    """The formula route's MCMC block (draws made up: a real NUTS run is
    test_lmm_compare.test_small_mcmc_and_report)."""
    small = hsb82_frame[hsb82_frame.school.isin(hsb82_frame.school.unique()[:12])]
    c = workbench.compare(
        small, formula="mAch ~ ses + (1 + ses | school)", methods=["eb-ml", "eb-reml"], n_jobs=1
    )
    c.mcmc = lmm(c.data, chains=2)
    out = check(c)
    assert set(out["mcmc"]["variance_components"]["school"]["correlations"]) == {"(Intercept):ses"}


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


def test_boundary_one_chain_no_tuning():
    """A real NUTS run with one chain and --tune 0: R-hat is null with a note."""
    c = workbench.compare(
        DATA / "dyestuff2.csv",
        "Yield",
        "Batch",
        methods=["eb-ml", "mcmc"],
        chains=1,
        draws=50,
        tune=0,
        seed=2,
    )
    out = check(c)
    assert out["mcmc"]["diagnostics"]["r_hat_max"] is None
    assert (
        "mcmc.diagnostics.r_hat_max was NaN (not a number): reported as null"
        in out["mcmc"]["notes"]
    )


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
    html = (tmp_path / "out.html").read_text()
    assert html.count('<figure id="fig-') == 3 and "could not be drawn" not in html


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("eb_ml", "tau2"), float("nan")),  # not strict JSON
        (("eb_ml", "tau2"), "0.5"),  # a string for a number
        (("mcmc", "diagnostics", "divergences"), -1),
        (("settings", "methods"), ["eb-ml", "bayes"]),
        (("joint_map", "status"), "found"),
    ],
)
def test_schema_rejects(path, value, mcmc_record):
    bad = json.loads(json.dumps(mcmc_record))
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate(bad)


def test_schema_requires_the_block_of_every_method_run(mcmc_record):
    for block in ("eb_ml", "eb_reml", "joint_map", "mcmc", "anova", "explanation"):
        bad = {k: v for k, v in mcmc_record.items() if k != block}
        with pytest.raises(jsonschema.ValidationError, match=block):
            validate(bad)


@pytest.fixture(scope="module")
def mcmc_record():
    """A valid one-way record with every block (draws made up)."""
    c = workbench.compare(
        DATA / "dyestuff.csv",
        "Yield",
        "Batch",
        n_starts=2,
        n_jobs=1,
        methods=["anova", "eb-ml", "eb-reml", "joint-map"],
    )
    out = attach(c, oneway(c.data)).to_dict()
    validate(out)
    return out
