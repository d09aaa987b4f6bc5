"""The text table and the HTML report of models with several grouping factors: crossed
(Penicillin: (1 | plate) + (1 | sample)), nested (Pastes: (1 | batch/cask)) and a correlated
slope beside an intercept ((1 + x | a) + (1 | b), with made-up MCMC draws summarised by the real
code: boundary_cases.posterior). Every factor's variance components appear in the table
(lme4's "Random effects:" rows, its "Number of obs ..., groups: ..." line), in every section
of the report, and every factor gets its figures."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from boundary_cases import attach, posterior
from conftest import ROOT

import workbench
from workbench.present import curves
from workbench.present.report import _fmt, render
from workbench.present.table import comparison_table, fmt

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

CROSSED = ROOT / "tests" / "reference" / "crossed_data"
FAST = {"n_starts": 2, "n_jobs": 1}


@pytest.fixture(scope="module")
def penicillin():
    return workbench.compare(
        pd.read_csv(CROSSED / "penicillin.csv"),
        formula="diameter ~ 1 + (1 | plate) + (1 | sample)",
        methods=("eb-ml", "eb-reml", "joint-map"),
        **FAST,
    )


@pytest.fixture(scope="module")
def pastes():
    return workbench.compare(
        pd.read_csv(CROSSED / "pastes.csv"),
        formula="strength ~ 1 + (1 | batch/cask)",
        methods=("eb-ml", "eb-reml"),
        **FAST,
    )


def crossed_slope_frame(seed: int = 4) -> pd.DataFrame:
    """12 levels of a crossed with 8 of b, two observations per cell: a correlated random
    intercept and slope of x by a, a random intercept by b."""
    rng = np.random.default_rng(seed)
    a, b = np.meshgrid(np.arange(12), np.arange(8), indexing="ij")
    a, b = np.repeat(a.ravel(), 2), np.repeat(b.ravel(), 2)
    x = rng.normal(size=a.size)
    u = rng.multivariate_normal([0, 0], [[4.0, 1.0], [1.0, 1.0]], size=12)
    y = 10 + 0.5 * x + u[a, 0] + u[a, 1] * x + 1.5 * rng.normal(size=8)[b] + rng.normal(size=a.size)
    return pd.DataFrame({"a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b], "x": x, "y": y})


@pytest.fixture(scope="module")
def slopes():
    c = workbench.compare(
        crossed_slope_frame(),
        formula="y ~ x + (1 + x | a) + (1 | b)",
        methods=("eb-ml", "eb-reml"),
        **FAST,
    )
    return attach(c, posterior(c.data, draws=40))


def _row(text: str, start: str) -> list[str]:
    """The cells of the table row whose label starts with `start`."""
    lines = [line for line in text.split("\n") if line.startswith(start)]
    assert len(lines) == 1, (start, lines)
    return lines[0][len(start) :].split()


def _random_effect_rows(c) -> list[tuple[str, str, str, str]]:
    """(group, name, Variance row start, Std.Dev. row start) of every variance, as the table
    labels them (the group named on its factor's first row only)."""
    d = c.data
    gw = max(8, *(len(g.name) for g in d.groupings))
    nw = max(4, *(len(n) for b in d.blocks for n in b.names))
    out = []
    for k, g in enumerate(d.groupings):
        for i, name in enumerate(d.factor_terms(k)):
            grp = g.name if i == 0 else ""
            out.append((g.name, name, f" {grp:<{gw}} {name:<{nw}} Variance"))
    return out


@pytest.mark.parametrize("name", ["penicillin", "pastes", "slopes"])
def test_table_shows_every_factor(name, request):
    c = request.getfixturevalue(name)
    d = c.data
    text = comparison_table(c, width=200)  # one block of columns
    assert all(len(line) <= 80 for line in comparison_table(c).split("\n"))
    head = text.split("\n")
    assert head[0] == d.formula
    groups = "; ".join(f"{g.name}, {g.n_levels}" for g in d.groupings)
    assert head[1] == f"Number of obs: {d.n_obs}, groups: {groups}"
    assert "Random effects:" in text and re.search(r"^ Groups +Name$", text, re.M)
    methods = ["EB-ML", "EB-REML"] + (["joint MAP"] if c.joint_maps else [])
    fits = [c.eb_ml, c.eb_reml] + ([c.joint_map] if c.joint_maps else [])
    for group, term, start in _random_effect_rows(c):
        cells = _row(text, start)
        for method, fit, cell in zip(methods, fits, cells, strict=False):
            v = fit.components_by_factor[group].variances[term]
            assert cell == fmt(v), (method, group, term)
    ml = c.eb_ml
    assert _row(text, " Residual")[1:3] == [fmt(ml.sigma2), fmt(c.eb_reml.sigma2)]
    for note in d.notes:  # the data's notes (a crossed factor that may be meant as nested)
        assert "NOTE " + note.split()[0] in text


def test_table_correlation_and_posterior_rows(slopes):
    """lme4's Corr on the slope's rows; the posterior's mean of each variance and SD."""
    text = comparison_table(slopes, width=200)
    ml = slopes.eb_ml.components_by_factor
    corr = _row(text, " " * (1 + 8 + 1 + 11 + 1) + "Corr (Intercept)")
    assert corr[0] == fmt(ml["a"].correlations["(Intercept):x"])
    summary = slopes.mcmc.to_dict()["variance_components"]
    x_var = _row(text, f" {'':<8} {'x':<11} Variance")
    assert x_var[2] == fmt(summary["a"]["variances"]["x"]["mean"])  # EB-ML, EB-REML, MCMC mean
    sd_b = slopes.mcmc.draws("sd")[:, slopes.data.factor_cols(1)[0]]
    std_rows = [line for line in text.split("\n") if line.strip().startswith("Std.Dev.")]
    assert any(fmt(float(np.mean(sd_b))) in line for line in std_rows)


@pytest.mark.parametrize("name", ["penicillin", "pastes", "slopes"])
def test_report_shows_every_factor(name, request):
    c = request.getfixturevalue(name)
    d = c.data
    html = render(c, command="test")
    for sec in ("data", "model", "estimates", "explanation", "diagnostics", "plots"):
        assert f'<section id="{sec}">' in html, sec
    assert 'id="grouping-factors"' in html
    for g in d.groupings:
        assert f"<th><code>{g.name}</code></th><td>{g.n_levels}</td>" in html
    for note in d.notes:
        assert f"<li>{note.replace(chr(39), '&#39;')}</li>" in html
    # the estimates tables (a column per quantity, the SD beneath the variance), the
    # explanation table and the lme4 printout: every factor's variance
    for group, vc in c.eb_ml.components_by_factor.items():
        for term, v in vc.variances.items():
            assert html.count(f"<th>variance of {term} ({group})</th><td>{_fmt(v)}</td>") == 1
            assert f'<th scope="col">{term} ({group})<span class="sub">variance, SD' in html
            assert f'<td>{_fmt(v)}<span class="sub">SD {_fmt(v**0.5)}</span></td>' in html
        for pair in vc.correlations:
            assert f'<th scope="col">{pair} ({group})<span class="sub">correlation' in html
    groups = "; ".join(f"{g.name}, {g.n_levels}" for g in d.groupings)
    assert f"Number of obs: {d.n_obs}, groups:  {groups}" in html
    # the explanation by factor: one row per factor and point
    by_factor = re.findall(r"<tr><th><code>([^<]+)</code></th><td>(EB-ML|joint mode)</td>", html)
    points = ["EB-ML"] + (["joint mode"] if curves.interior(c.joint_map) else [])
    assert by_factor == [(g.name, p) for g in d.groupings for p in points]
    # every factor's figures, no figure failed
    ids = re.findall(r'<figure id="fig-([\w-]+)">', html)
    assert {f"caterpillar-{k + 1}" for k in range(d.n_factors)} <= set(ids)
    assert "marginals" in ids and "scalepath" in ids
    if c.mcmc is not None:
        assert {f"funnel-{k + 1}" for k in range(d.n_factors)} <= set(ids)
    assert "could not be drawn" not in html and "could not be computed" not in html


def test_marginal_panels_and_caterpillars_per_factor(slopes):
    d = slopes.data
    keys = [p.key for p in curves.marginals(slopes)]
    assert keys == [
        "sigma2",
        "var:(Intercept)|a",
        "var:x|a",
        "cor:(Intercept):x|a",
        "var:(Intercept)|b",
    ]
    for k, g in enumerate(d.groupings):
        cats = curves.caterpillars(slopes, factor=k)
        assert [cat.term for cat in cats] == list(d.factor_terms(k))
        assert all(cat.n_groups == g.n_levels for cat in cats)
        assert {s.method for s in cats[0].series} == {"EB-ML", "MCMC mean"}


def test_report_fragment(pastes):
    """The report fragment (the report without figures): every factor's variances.
    (Jupyter's display, `Comparison._repr_html_`, is tests/test_jupyter.py's.)"""
    from workbench.present.report import render

    html = render(pastes, command="test", fragment=True)
    assert '<section id="plots">' not in html and 'id="grouping-factors"' in html
    for group in pastes.data.factor_names:
        assert f"<th>variance of (Intercept) ({group})</th>" in html


def test_scale_path_matches_the_blocked_objectives(pastes):
    """The scale path from one factorisation per point equals the blocked kernel's ML
    deviance and profiled joint at s x theta."""
    from workbench.fit import eb_blocked
    from workbench.objectives import blocked

    ml = pastes.eb_ml
    path = curves.scale_path(ml)
    tm = eb_blocked.terms(pastes.data)
    for i in (0, len(path.scale) // 2, len(path.scale) - 1):
        sol = blocked.solve(tm, path.scale[i] * np.asarray(ml.theta))
        assert path.log_marginal[i] == pytest.approx(-0.5 * sol.objective("ml"), rel=1e-12)
        assert path.log_joint[i] == pytest.approx(-0.5 * sol.objective("joint"), rel=1e-12)
    assert path.log_marginal[np.argmin(np.abs(np.log(path.scale)))] == pytest.approx(
        ml.loglik, rel=1e-3
    )
