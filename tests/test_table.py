"""The one text table: methods as columns, quantities as rows (one-way names for the one-way
model), 80 characters wide, wrapped into blocks without breaking a number, long names cut in the
middle; its EB-REML objective is the HTML report's (the restricted log likelihood)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import DATA, ROOT
from test_explain import FAST, slope_frame

from workbench import compare
from workbench.present import report
from workbench.present.table import clip, comparison_table, fmt


@pytest.fixture(scope="module")
def oneway():
    return compare(
        str(DATA / "small_groups.csv"),
        "y",
        "group",
        methods=["anova", "eb-ml", "eb-reml", "joint-map"],
        **FAST,
    )


@pytest.fixture(scope="module")
def slope():
    return compare(slope_frame(), formula="y ~ x + (1 + x | g)", methods="eb-ml,joint-map", **FAST)


def _grid(text: str) -> dict[str, dict[str, str]]:
    """{column header: {row label: cell}} from every block of the table."""
    lines = text.split("\n")
    out: dict = {}
    i = 2  # head line, blank line
    while i < len(lines) and lines[i].strip():
        headers = _headers(lines[i])
        i += 1
        while i < len(lines) and lines[i].strip():
            label, cells = _split(lines[i], len(headers))
            for h, cell in zip(headers, cells, strict=True):
                out.setdefault(h, {})[label] = cell
            i += 1
        i += 1
        if i < len(lines) and not lines[i].startswith(" "):
            break
    return out


def _headers(line: str) -> list[str]:
    return [h.strip() for h in line.strip().split("  ") if h.strip()]


def _split(line: str, k: int) -> tuple[str, list[str]]:
    parts = line.split()
    return " ".join(parts[:-k]), parts[-k:]


def test_oneway_table_rows_and_columns(oneway):
    text = comparison_table(oneway)
    grid = _grid(text)
    assert list(grid)[:4] == ["ANOVA", "EB-ML", "EB-REML", "joint MAP"]
    assert list(grid["EB-ML"]) == ["mu", "sigma²", "tau²", "sigma", "tau", "objective"]
    ml, jm = oneway.eb_ml, oneway.joint_map
    assert grid["EB-ML"]["sigma²"] == fmt(ml.sigma2) and grid["EB-ML"]["tau²"] == fmt(ml.tau2)
    assert grid["EB-ML"]["objective"] == fmt(ml.loglik)
    assert grid["joint MAP"]["sigma²"] == fmt(jm.sigma2)
    assert grid["ANOVA"]["objective"] == "–"
    assert all(len(line) <= 80 for line in text.split("\n"))
    assert "ANOVA: F = " in text and "JM nc [non-centered h-likelihood]" in text


def test_slope_table_names_every_term(slope):
    text = comparison_table(slope)
    grid = _grid(text)
    rows = list(grid["EB-ML"])
    assert rows == [
        "beta: (Intercept)",
        "beta: x",
        "var: (Intercept)",
        "var: x",
        "sd: (Intercept)",
        "sd: x",
        "cor: (Intercept):x",
        "sigma²",
        "sigma",
        "objective",
    ]
    ml = slope.eb_ml
    assert grid["EB-ML"]["var: x"] == fmt(ml.G[1, 1])
    assert grid["EB-ML"]["sd: x"] == fmt(ml.G[1, 1] ** 0.5)
    assert grid["joint MAP"]["sigma²"] == fmt(slope.joint_map.sigma2)
    # a variant without an interior mode is a verdict line, not a column of dashes
    for key, r in slope.joint_maps.items():
        if key != ("centered", False) and r.status != "interior":
            assert "no interior mode" in text
    # the report's answer and each other variant's one-sentence role are printed too
    assert "In words: " in text and "a different density" in text
    assert all(len(line) <= 80 for line in text.split("\n"))


def test_narrow_tables_wrap_columns_and_keep_numbers_whole(oneway):
    wide, narrow = comparison_table(oneway, width=200), comparison_table(oneway, width=50)
    assert _grid(narrow) == _grid(wide)
    table_lines = narrow.split("\n\n")[1:-1]
    assert len(table_lines) >= 2  # at least two blocks of columns
    assert all(len(line) <= 50 for block in table_lines for line in block.split("\n"))


def test_mcmc_columns_from_the_posterior_summary(slope):
    """MCMC mean and mode columns read Posterior.to_dict() (general keys)."""
    d, ml = slope.data, slope.eb_ml

    def describe(v):
        return {"mean": v, "mode": v / 2}

    summary = {
        "fixed_effects": {n: describe(float(ml.beta[k])) for k, n in enumerate(d.fixed_names)},
        "variance_components": {
            d.group_name: {
                "variances": {n: describe(v) for n, v in ml.components.variances.items()},
                "correlations": {n: describe(v) for n, v in ml.components.correlations.items()},
            }
        },
        "sigma2": describe(ml.sigma2),
    }
    post = SimpleNamespace(
        to_dict=lambda: summary,
        diagnostics={"r_hat_max": 1.001, "ess_bulk_min": 900, "divergences": 0},
        settings=SimpleNamespace(parametrization="noncentered"),
        sampler="nutpie",
        warnings=(),
    )
    text = comparison_table(dataclasses.replace(slope, mcmc=post))
    grid = _grid(text)
    assert grid["MCMC mean"]["var: x"] == fmt(ml.G[1, 1])
    assert grid["MCMC mode"]["sigma²"] == fmt(ml.sigma2 / 2)
    assert grid["MCMC mean"]["objective"] == "–"
    assert "R-hat max 1.0010" in text and all(len(line) <= 80 for line in text.split("\n"))


# Penicillin's crossed factors under names longer than a terminal line is wide
LONG = {
    "plate": "petri_dish_plate_identifier_with_a_name_longer_than_a_terminal_line_is_wide",
    "sample": "petri_dish_plate_identifier_with_a_name_longer_than_a_terminal_line_is_high",
}


@pytest.fixture(scope="module")
def crossed():
    df = pd.read_csv(ROOT / "tests" / "reference" / "crossed_data" / "penicillin.csv")
    a, b = LONG.values()
    return compare(
        df.rename(columns=LONG),
        formula=f"diameter ~ 1 + (1 | {a}) + (1 | {b})",
        methods="eb-ml,eb-reml",
        n_jobs=1,
    )


@pytest.mark.parametrize("which", ["oneway", "slope", "crossed"])
def test_every_line_fits_80_columns_and_numbers_stay_whole(which, request):
    c = request.getfixturevalue(which)
    text = comparison_table(c)
    assert max(map(len, text.split("\n"))) <= 80
    words = set(text.split())
    for fit in filter(None, (c.eb_ml, c.eb_reml)):  # every number whole, on one line
        assert {fmt(fit.sigma2), fmt(fit.loglik), *map(fmt, fit.beta)} <= words
        assert {fmt(v) for v in curves_variances(fit)} <= words


def curves_variances(fit) -> list[float]:
    return [v for vc in fit.components_by_factor.values() for v in vc.variances.values()]


def test_long_names_are_cut_in_the_middle_and_stay_apart(crossed):
    text = comparison_table(crossed)
    a, b = (clip(n, 18) for n in LONG.values())
    assert a != b and a.endswith("is_wide") and b.endswith("is_high")
    rows = [line for line in text.split("\n") if "Variance" in line]
    assert [r.split()[0] for r in rows[:2]] == [a, b]
    assert all(len(r.split()[0]) <= 40 for r in rows)  # labels take at most half the width
    assert LONG["plate"] in text  # whole in the head lines (wrapped there, not cut)


def test_reml_objective_is_the_same_quantity_in_the_text_and_the_html(oneway):
    """Both show the restricted log likelihood under that name; both give the REML criterion
    (lme4's "REML criterion at convergence", -2 times it) in words."""
    reml = oneway.eb_reml
    assert reml.loglik == pytest.approx(-0.5 * reml.objective)
    text = comparison_table(oneway)
    assert _grid(text)["EB-REML"]["objective"] == fmt(reml.loglik)
    words = " ".join(text.split())
    assert "restricted log likelihood (EB-REML: lme4's logLik; its REML criterion is -2" in words
    assert f"-2 times it, {fmt(reml.objective)})" in words
    cells = {
        m: dict(zip([h for h, _ in t["head"]], cs, strict=True))
        for t in report.estimates(oneway)
        for m, _, cs in t["rows"]
    }
    assert cells["EB-REML"]["objective"] == (report._fmt(reml.loglik), "restricted log lik")
    assert report._fmt(reml.loglik) == fmt(reml.loglik)
    html = report.render(oneway, command="test", fragment=True)
    assert f"REML criterion at convergence” is\n−2 × it, {report._fmt(reml.objective)}" in html


@pytest.mark.parametrize("which", ["oneway", "slope", "crossed"])
def test_html_estimates_tables_are_narrow_and_complete(which, request):
    """The report's estimates: methods as rows in every table, at most MAX_COLUMNS quantities a
    table (what fits 800 px and A4), every fixed effect, variance, correlation, the residual and
    the objective in one of them."""
    c = request.getfixturevalue(which)
    tables = report.estimates(c)
    heads = [h for t in tables for h, _ in t["head"]]
    assert all(len(t["head"]) <= report.MAX_COLUMNS for t in tables)
    assert len(heads) == len(set(heads))  # each quantity once
    d = c.data
    n_var = sum(len(b.names) * (len(b.names) + 1) // 2 for b in d.blocks)
    assert len(heads) == d.p + n_var + 2  # + the residual, + the objective
    methods = [m for m, _, _ in tables[0]["rows"]]
    assert all([m for m, _, _ in t["rows"]] == methods for t in tables)
    assert methods[: 1 + (c.anova is not None)][-1] == "EB-ML"
