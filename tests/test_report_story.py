"""The top of the report (issue 13, "story first"): the headline, the question's second framing
and the joint MAP variants' one-sentence roles (`workbench.explain`), and the explanation's
sentences, fed the cases where boilerplate goes wrong: an interior joint mode (small_groups),
no joint mode (Dyestuff, balanced: proved by F below the threshold), EB at the boundary
tau^2 = 0 (Dyestuff2), a formula model with a singular random slope, several grouping factors
(Penicillin, with a made-up MCMC record), without MCMC and without EB-ML. Every number a
sentence quotes must be one of the JSON's numbers; no sentence may claim a mode where none
exists or call effects uncertain that are not. No sampler runs: the one-way cases get the exact
posterior (quadrature), the others `boundary_cases.posterior`'s draws made up in numpy."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import boundary_cases as bc
import jsonschema
import numpy as np
import pytest

import workbench
from workbench.casefile import load_case
from workbench.fit.exact_oneway import exact_posterior

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = jsonschema.Draft202012Validator(
    json.loads((ROOT / "workbench/schema/comparison.schema.json").read_text())
)
NUMBER = re.compile(r"(?<![\w.^])[-−]?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w%.]*%)(?!\d)")


def _case(name: str, methods, exact: bool = True, **kw):
    """A shipped case compared with `methods` (one start per joint MAP: the sentences, not the
    optimiser, are under test) and, for a one-way model, its exact posterior attached."""
    case = load_case(ROOT / "models" / f"{name}.toml")
    opts = {**case.compare_kwargs, "methods": methods, "n_starts": 1, "n_jobs": 1, **kw}
    c = workbench.compare(case.data_path, case.y, case.group, **opts)
    if exact and c.data.is_oneway and c.exact_posterior is None:
        c = dataclasses.replace(c, exact_posterior=exact_posterior(c.data.oneway, c.priors))
    return c, case


@pytest.fixture(scope="module")
def cases():
    sg, sg_case = _case("small_groups", ["eb-ml", "joint-map:centered", "joint-map:noncentered",
                                         "joint-map+priors:noncentered"])  # fmt: skip
    dy, _ = _case("dyestuff", ["eb-ml", "joint-map:centered"])
    dy2, _ = _case("dyestuff2", ["eb-ml", "joint-map:centered"])
    pen, _ = _case("penicillin", ["eb-ml", "joint-map:centered"])
    slope = workbench.compare(
        bc.singular_slope_frame(),
        formula="y ~ x + (1 + x | g)",
        methods=["eb-ml", "joint-map:centered"],
        n_starts=1,
        n_jobs=1,
    )
    made = {
        "interior": sg,
        "no_mode": dy,
        "boundary": dy2,
        "several": bc.attach(pen, bc.posterior(pen.data)),
        "slope": slope,
        "slope_mcmc": bc.attach(slope, bc.posterior(slope.data)),
        "no_mcmc": dataclasses.replace(dy, exact_posterior=None),
        "no_eb_ml": dataclasses.replace(
            sg, settings=dataclasses.replace(sg.settings, methods=("joint-map:centered",))
        ),
    }
    return {"c": made, "out": {k: json.loads(json.dumps(v.to_dict())) for k, v in made.items()},
            "case": sg_case}  # fmt: skip


CASES = ("interior", "no_mode", "boundary", "several", "slope", "slope_mcmc", "no_mcmc")


def _numbers(tree) -> list[float]:
    """Every number in a JSON tree."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [float(tree)]
    return []


def _quoted(text: str) -> list[str]:
    """The numbers a sentence quotes, percentages and ratios ('3.2 times') left out."""
    text = re.sub(r"\d+(?:\.\d+)?(?:e[+-]?\d+)? times", "", text)
    text = re.sub(r"[-−]?\d+(?:\.\d+)?(?:e[+-]?\d+)?%", "", text)
    text = re.sub(r"\b\d+(?:\.\d+)? (below|above) the (interior local )?mode", "", text)
    return [t.replace("−", "-") for t in NUMBER.findall(text)]


def _allowed(out: dict) -> set[str]:
    """The JSON's numbers as a sentence may print them (3 to 6 significant digits)."""
    nums = _numbers({k: v for k, v in out.items() if k != "story"})
    nums += _numbers((out["story"]["framing"] or {}).get("rows", []))  # e.g. MCMC log-SD modes
    nums += [np.sqrt(v) for v in nums if v > 0] + [0.5 * np.log(v) for v in nums if v > 0]
    return {f"{v:.{d}g}" for v in nums for d in range(1, 7)} | {"0", "1", "2"}


@pytest.mark.parametrize("name", CASES)
def test_quoted_numbers_are_the_jsons(cases, name):
    """Every number in the headline, the second framing and the variants' roles is one of the
    JSON's numbers (or its square root / log SD on the framing's scales), and the story in the
    JSON is the one the report shows; the JSON validates against the schema."""
    out = cases["out"][name]
    VALIDATOR.validate(out)
    st = out["story"]
    allowed = _allowed(out)
    texts = list(st["headline"]) + list(st["joint_map_roles"].values())
    texts += (st["framing"] or {}).get("sentences", [])
    for text in texts:
        bad = [t for t in _quoted(text) if t not in allowed]
        assert not bad, f"{name}: {bad} not in the JSON: {text}"


def test_interior_headline(cases):
    """small_groups: the centered joint mode's sigma^2, EB-ML's and the exact mode's, with the
    relative distances computed here from the JSON."""
    out = cases["out"]["interior"]
    h = out["story"]["headline"]
    j, e = out["joint_map"]["sigma2"], out["eb_ml"]["sigma2"]
    m = out["exact_posterior"]["sigma2"]["mode"]
    assert out["joint_map"]["parametrization"] == "centered"
    assert out["joint_map"]["objective"].endswith("(h-likelihood)")
    assert f"σ² at {j:.4g}, {100 * (1 - j / e):.2g}% below EB-ML's {e:.4g}" in h[0]
    assert f"{100 * (1 - j / m):.2g}% below the exact posterior's mode of σ² ({m:.4g})" in h[0]
    assert out["joint_map"]["ci_hessian"]["sigma2"][0] < j < out["joint_map"]["ci_hessian"][
        "sigma2"][1]  # fmt: skip
    assert "log sigma" in out["joint_map"]["ci_scale"]
    # EB and the exact posterior: "agree" only within 10%, with the distance quoted
    r = e / m - 1
    assert ("agree within 10% on σ²" in h[1]) == (abs(r) <= 0.10)


def test_prior_driven_noncentered_mode_is_explained(cases):
    """small_groups: the non-centered '+priors' mode's tau (tau^2 ~ 419 against ML's ~23) is
    said to be where the prior stops it, because the non-centered h-likelihood has no mode."""
    out = cases["out"]["interior"]
    nc = out["joint_map_all"]["noncentered"]
    assert nc["h_likelihood"]["status"] == "no_interior_mode"
    assert set(nc["h_likelihood"]["start_counts"]) == {"escape"}
    role = out["story"]["joint_map_roles"]["noncentered/posterior"]
    tau = np.sqrt(nc["posterior"]["tau2"])
    assert nc["posterior"]["tau2"] > 5 * out["eb_ml"]["tau2"]
    assert role.startswith("Prior-driven")
    assert f"τ = {tau:.4g} (EB-ML {np.sqrt(out['eb_ml']['tau2']):.4g}; prior HalfNormal(" in role
    assert "escaped" in out["story"]["joint_map_roles"]["noncentered/h_likelihood"]
    assert "headline joint MAP" in out["story"]["joint_map_roles"]["centered/h_likelihood"]


@pytest.mark.parametrize("name", ["no_mode", "boundary", "slope", "slope_mcmc", "no_mcmc"])
def test_no_mode_claimed_where_none_exists(cases, name):
    c, out = cases["c"][name], cases["out"][name]
    assert out["joint_map"]["status"] == "no_interior_mode"
    st = out["story"]
    assert re.match(r"(There is no joint mode|No joint mode was found)", st["headline"][0])
    every = st["headline"] + (st["framing"] or {}).get("sentences", [])
    every += out["explanation"]["sentences"]
    for text in every:
        assert "joint mode (centered, no priors) puts" not in text
        assert "joint mode (centered, no priors) reads" not in text
        assert "The joint mode maximises" not in text
    if c.data.is_oneway:  # balanced one-way data: F below the threshold proves it
        b = out["explanation"]["balanced"]
        assert b["f_statistic"] < b["f_threshold"]
        assert "There is no joint mode" in st["headline"][0]
        assert f"F = {b['f_statistic']:.3g}" in st["headline"][0]


def test_boundary_sentences(cases):
    """Dyestuff2 (EB-ML tau^2 = 0): no 'uncertain' effects; the exact posterior's boundary
    modes are said to be at the boundary; EB and the posterior both at 0 for tau."""
    out = cases["out"]["boundary"]
    ex = out["explanation"]
    assert out["eb_ml"]["tau2"] == 0 and ex["eb_ml"]["missing"] == 0
    for text in ex["sentences"] + out["story"]["headline"]:
        assert not re.search(r"\buncertain\b", text), text
    assert "no uncertainty left" in ex["sentences"][0]
    e = out["exact_posterior"]
    frame = " ".join(out["story"]["framing"]["sentences"])
    assert e["tau2"]["mode"] == 0 and "τ²: 0 (a boundary mode" in frame
    if e["tau"]["mode"] == 0:
        assert "τ: 0 (a boundary mode" in frame
        assert "τ (both 0, the boundary)" in out["story"]["headline"][1]


def test_uncertain_only_with_hidden_degrees_of_freedom(cases):
    """'uncertain' effects are claimed only where p_D is not negligible, and the trace quoted
    is the JSON's."""
    for name in CASES:
        ex = cases["out"][name]["explanation"]
        first = ex["sentences"][0]
        if "are uncertain" in first:
            assert ex["eb_ml"]["p_d"] >= 1e-3
            assert f"= {ex['eb_ml']['missing']:.4g}, worth p_D" in first
        if "stay uncertain" in first:  # a singular G: the zero directions shrunk to 0
            assert ex["eb_ml"]["missing"] > 0 and ex["eb_ml"]["volume"] is None


def test_several_factors_and_mcmc_modes(cases):
    """Penicillin: every variance named in the headline; the MCMC framing says the mode of a
    variance is 0 (a boundary mode) and quotes the half-sample modes of the draws."""
    out = cases["out"]["several"]
    h = out["story"]["headline"]
    assert "(plate)" in h[0] and "(sample)" in h[0]
    fr = out["story"]["framing"]
    assert fr["source"] == "MCMC posterior"
    var_rows = [r for r in fr["rows"] if r["scale"] == "variance" and r["quantity"] != "sigma"]
    assert var_rows and all(r["boundary"] and r["posterior_mode"] == 0 for r in var_rows)
    s2 = next(r for r in fr["rows"] if r["quantity"] == "sigma" and r["scale"] == "variance")
    assert s2["posterior_mode"] == pytest.approx(out["mcmc"]["sigma2"]["mode"], rel=1e-9)


def test_without_mcmc_and_without_eb_ml(cases):
    out = cases["out"]["no_mcmc"]
    assert out["story"]["framing"] is None
    assert "The posterior was not computed" in out["story"]["headline"][1]
    h = cases["out"]["no_eb_ml"]["story"]["headline"]
    assert "EB-ML" not in " ".join(h) and "No EB fit was run" in h[1]


def test_report_top_order_and_title(cases):
    """The report opens with the case file's title, then the headline box, the question and
    its second framing, the estimates and the explanation; data and model after."""
    from workbench.present.report import render

    case = cases["case"]
    html = render(cases["c"]["interior"], command="x", case_text=case.text, fragment=True)
    assert f"<h1>{case.title}</h1>" in html
    ids = ["headline", "question", "second-framing", "estimates", "explanation", "data", "model"]
    at = [html.index(f'id="{i}"') for i in ids]
    assert at == sorted(at), dict(zip(ids, at, strict=True))
    assert html.count("headline-answer") == 2
    assert cases["c"]["interior"].mcmc is None and "MCMC mean" not in html  # no MCMC sentences


def test_lkj_prior_stated_only_with_correlations():
    """Penicillin's two intercept-only factors have no correlation: no LKJ prior in the report;
    a correlated slope has one."""
    import pandas as pd

    from workbench.present.report import priors_text

    pen = pd.read_csv(ROOT / "models" / "data" / "penicillin.csv")
    c = workbench.compare(
        pen, formula="diameter ~ 1 + (1 | plate) + (1 | sample)", methods=["eb-ml"]
    )
    assert "correlations" not in priors_text(c) and "correlations" in c.priors.describe()
    hsb = pd.read_csv(ROOT / "models" / "data" / "hsb82.csv")
    c = workbench.compare(hsb, formula="mAch ~ ses + (1 + ses | school)", methods=["eb-ml"])
    assert priors_text(c)["correlations"].startswith("LKJ")
