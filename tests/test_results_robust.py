"""Nothing crashes on a result (issue 9, item 3): each input that used to crash after all the
computing -- a 0/0 correlation of a singular slope fit, one MCMC chain (R-hat NaN), chains that
never move (`--tune 0`: constant draws, a singular KDE), an infinite interval end, group labels
that matplotlib reads as mathtext (`$`, `$$`), tau^2 = 0 -- now gives strict JSON with null and a
note, "–" in the table, and a full report: the one template for every model, its one-way parts
(ANOVA, profile over sigma^2, tau path) only for one-way designs, every figure drawn or a stated
reason. Every shipped case (models/*.toml) renders. MCMC records come from `boundary_cases.lmm`
(made-up draws of the one PyMC model's variables, the real summaries and diagnostics), so these
tests need no sampler."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from boundary_cases import LABELS, lmm, singular_slope_frame
from conftest import DATA, ONEWAY_REPORT_SECTIONS, REPORT_SECTIONS, ROOT

import workbench
from workbench.casefile import load_case
from workbench.compare import METHODS
from workbench.jsonsafe import clean, finalize
from workbench.present import curves, plots
from workbench.present.report import _draw, render
from workbench.present.report import _fmt as report_fmt
from workbench.present.table import fmt

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


def strict(record: dict) -> dict:
    return json.loads(json.dumps(record, allow_nan=False))


# one-way runs with priors add the exact posterior's figure
ONEWAY_FIGURES = [
    "framing",
    "marginals",
    "profiles",
    "taupath",
    "exact",
    "funnel",
    "caterpillar",
    "rank",
]
FORMULA_FIGURES = ["framing", "marginals", "scalepath", "funnel", "caterpillar", "rank"]


def with_mcmc(c, chains: int = 2, stuck: bool = False):
    """`c` with a made-up MCMC record of its model, the settings saying so."""
    post = lmm(c.data, chains=chains, stuck=stuck)
    s = c.settings
    settings = dataclasses.replace(
        s, methods=(*s.methods, "mcmc"), chains=chains, draws=post.settings.draws, tune=0
    )
    return dataclasses.replace(c, mcmc=post, settings=settings)


def report(c, **kwargs) -> tuple[str, list[str], list[str]]:
    """The full report, its figures' ids and the notes on figures not drawn; checks that every
    section is there once, the one-way ANOVA section only for one-way designs, and nothing
    points outside the file."""
    html = render(c, command="test", **kwargs)
    for s in REPORT_SECTIONS:
        assert html.count(f'<section id="{s}">') == 1, s
    for s in ONEWAY_REPORT_SECTIONS:
        assert (f'<section id="{s}">' in html) == (c.anova is not None and c.data.is_oneway)
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    notes = re.findall(r'<ul class="figure-notes">(.*?)</ul>', html, re.S)
    return (
        html,
        re.findall(r'<figure id="fig-([\w-]+)">', html),
        re.findall(r"<li>(.*?)</li>", notes[0]) if notes else [],
    )


# ----------------------------------------------------------------------------------------------
# The helper


def test_clean_turns_non_finite_into_null_with_a_note():
    value, notes = clean(
        {
            "a": float("nan"),
            "b": [1.0, float("inf")],
            "c": np.float64(2.5),
            "d": np.array([1.0, -np.inf]),
            "e": np.int64(3),
            "f": np.bool_(True),
            "g": (1, "x", None),
        },
        "blk",
    )
    assert value == {
        "a": None,
        "b": [1.0, None],
        "c": 2.5,
        "d": [1.0, None],
        "e": 3,
        "f": True,
        "g": [1, "x", None],
    }
    assert type(value["c"]) is float and type(value["e"]) is int and type(value["f"]) is bool
    assert notes == [
        "blk.a was NaN (not a number): reported as null",
        "blk.b[1] was +infinity: reported as null",
        "blk.d[1] was -infinity: reported as null",
    ]


def test_finalize_notes_go_to_the_block_and_the_warnings():
    out = finalize(
        {
            "data": {"mean": 1.0},
            "eb_ml": {"tau": float("nan"), "notes": ["old"]},
            "mcmc": {"sd": [float("inf")] * 20},
            "warnings": ["w"],
        }
    )
    strict(out)
    assert out["eb_ml"] == {
        "tau": None,
        "notes": ["old", "eb_ml.tau was NaN (not a number): reported as null"],
    }
    assert len(out["mcmc"]["notes"]) == 13 and "8 more" in out["mcmc"]["notes"][-1]
    assert out["warnings"][0] == "w"
    assert "eb_ml: 1 non-finite value(s) reported as null (see eb_ml.notes)" in out["warnings"]
    assert "mcmc: 20 non-finite value(s)" in out["warnings"][-1]


def test_table_dash():
    assert fmt(None) == fmt(float("nan")) == fmt(float("inf")) == fmt(-math.inf) == "–"
    assert fmt(1.5) == "1.5"


def test_density_without_spread_draws_no_kde():
    import matplotlib.pyplot as plt

    for draws in (np.full(50, 3.0), np.array([]), np.array([np.nan, np.inf]), np.array([2.0])):
        fig, ax = plt.subplots()
        assert plots.density(ax, draws) is None
        plt.close(fig)
    fig, ax = plt.subplots()
    lo, hi = plots.density(ax, np.random.default_rng(0).normal(size=200))
    assert lo < -2 and hi > 2
    plt.close(fig)


def test_report_survives_a_figure_that_fails():
    def broken():
        raise ZeroDivisionError("boom")

    def skipped():
        raise plots.SkippedFigureError("a reason")

    with pytest.warns(UserWarning, match="could not be drawn"):
        images, notes = _draw([("a", "Broken", broken), ("b", "Skipped", skipped)])
    assert images == []
    assert notes == [
        "Broken: could not be drawn (ZeroDivisionError: boom).",
        "Skipped: not drawn (a reason).",
    ]


# ----------------------------------------------------------------------------------------------
# One-way designs


def oneway_compare(data, y, group, **kwargs):
    kwargs.setdefault("methods", ["anova", "eb-ml", "eb-reml", "joint-map"])
    return workbench.compare(data, y, group, n_starts=2, n_jobs=1, **kwargs)


@pytest.fixture(scope="module")
def dyestuff():
    return oneway_compare(DATA / "dyestuff.csv", "Yield", "Batch")


def test_oneway_report_every_part(dyestuff):
    c = with_mcmc(dyestuff)
    html, ids, notes = report(c, truth={"mu": 1500.0, "sigma2": 2500.0, "tau2": 1500.0})
    assert ids == ONEWAY_FIGURES and notes == []
    for part in ('id="anova"', 'id="profile-intervals"', 'id="joint-maps"', 'id="balanced"'):
        assert part in html, part
    for label in curves.JOINT_LABELS.values():  # every joint-MAP variant stated
        assert f"<strong>{label}:</strong>" in html
        assert f'<th scope="row">{label}<span class="sub">' in html  # a row of the estimates
    assert "sd_(Intercept)|Batch" in html  # the profile intervals, lme4's names
    panels = curves.marginals(c, {"mu": 1500.0, "sigma2": 2500.0, "tau2": 1500.0})
    assert [p.key for p in panels] == ["sigma2", "var:(Intercept)", "beta:(Intercept)"]
    methods = {e.method for e in panels[0].estimates}
    assert {"EB-ML", "EB-REML", "MCMC mean", "MCMC mode", "truth"} <= methods
    st = c.data.oneway  # log axes: plain tick labels, no mathtext source shown as text
    for fig in (
        plots.plot_profiles(curves.profile_curves(st, c.eb_ml.sigma2), "y"),
        plots.plot_tau_path(curves.tau_path(st, 30.0), "y", 30.0, None),
    ):
        fig.canvas.draw()
        ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels(minor=True)]
        ticks += [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
        assert any(ticks) and not any("$" in t or "mathdefault" in t for t in ticks), ticks
        plots.to_png(fig)


def test_one_chain_rhat_null_and_rank_plots_skipped(dyestuff):
    c = with_mcmc(dyestuff, chains=1)
    assert math.isnan(c.mcmc.diagnostics["r_hat_max"])  # the record keeps ArviZ's NaN
    out = strict(c.to_dict())
    assert out["mcmc"]["diagnostics"]["r_hat_max"] is None
    assert (
        "mcmc.diagnostics.r_hat_max was NaN (not a number): reported as null"
        in (out["mcmc"]["notes"])
    )
    assert any("1 chain" in w for w in out["warnings"])
    html, ids, notes = report(c)
    assert ids == ONEWAY_FIGURES[:-1]
    assert len(notes) == 1 and "1 chain" in notes[0]
    assert 'id="warning-banner"' in html


@pytest.mark.parametrize("chains", [1, 2])
def test_chains_that_never_move(dyestuff, chains):
    """--tune 0 can leave every chain where it started: constant draws (no KDE), R-hat NaN
    or huge."""
    c = with_mcmc(dyestuff, chains=chains, stuck=True)
    strict(c.to_dict())
    html, ids, notes = report(c)
    assert "marginals" in ids and "funnel" in ids
    assert all("could not be drawn" not in n for n in notes)
    assert "no density" not in html  # the note is drawn in the figure, not the page
    c.table()


def test_infinite_interval_end_is_shown_as_infinity(dyestuff):
    prof = dyestuff.profile
    iv = dataclasses.replace(prof.intervals[0], upper=math.inf)
    c = dataclasses.replace(
        dyestuff, profile=dataclasses.replace(prof, intervals=(iv, *prof.intervals[1:]))
    )
    strict(c.to_dict())
    html = render(c, command="test", fragment=True)
    assert f"<th>{iv.name}</th><td>{report_fmt(iv.estimate)}</td><td>" in html
    assert "<td>∞</td>" in html
    assert '<section id="plots">' not in html  # a fragment (Jupyter) has no figures


def test_two_groups_without_group_variance():
    """Two groups with equal means: tau^2 = 0 everywhere (a boundary EB fit; no funnel point,
    zero-width EB intervals); every figure is still drawn."""
    df = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 3, "y": [1, 2, 3, 3, 2, 1]})
    c = with_mcmc(oneway_compare(df, "y", "g"))
    assert c.eb_ml.G[0, 0] == 0
    out = strict(c.to_dict())
    assert out["eb_ml"]["tau2"] == 0
    html, ids, notes = report(c)
    assert ids == ONEWAY_FIGURES and notes == []
    assert curves.funnel(c).eb is None
    assert "–" in c.table()


def test_labels_and_column_names_are_plain_text():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"g_$": np.repeat(LABELS, 4), "$y$": rng.normal(size=4 * len(LABELS))})
    df["$y$"] += np.repeat(np.arange(len(LABELS)), 4) * 0.5
    c = with_mcmc(oneway_compare(df, "$y$", "g_$", methods=["eb-ml", "joint-map"]))
    strict(c.to_dict())
    html, ids, notes = report(c)
    assert ids == ONEWAY_FIGURES and notes == []
    fig = plots.plot_caterpillars(curves.caterpillars(c), c.data.group_name)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "$" in ticks and "$$" in ticks and "a_b^c" in ticks and "L" * 39 + "…" in ticks
    assert not any(t.get_parse_math() for t in fig.axes[0].get_yticklabels())
    plots.to_png(fig)


# ----------------------------------------------------------------------------------------------
# Formula models


@pytest.fixture(scope="module")
def singular():
    return workbench.compare(
        singular_slope_frame(),
        formula="y ~ x + (1 + x | g)",
        methods=["eb-ml", "eb-reml", "joint-map"],
        n_starts=2,
        n_jobs=1,
    )


def _zero_intercept_variance(c):
    """The same comparison with the EB-ML intercept variance exactly 0 (what lme4 reports at a
    singular fit): the intercept-slope correlation is 0/0."""
    G = c.eb_ml.G.copy()
    G[0, :] = G[:, 0] = 0.0
    return dataclasses.replace(c, eb_ml=dataclasses.replace(c.eb_ml, G=G))


def test_singular_slope_fit_correlation_null(singular):
    c = _zero_intercept_variance(singular)
    assert math.isnan(c.eb_ml.components.correlations["(Intercept):x"])
    out = strict(c.to_dict())
    assert out["eb_ml"]["variance_components"]["g"]["correlations"]["(Intercept):x"] is None
    assert any("correlations.(Intercept):x was NaN" in n for n in out["eb_ml"]["notes"])
    html, ids, notes = report(c)
    assert "Corr((Intercept):x) = –" in html and notes == []
    assert ids == ["marginals", "scalepath", "caterpillar"]  # no MCMC: no funnel, no rank plots
    assert [p.key for p in curves.marginals(c)] == [
        "sigma2",
        "var:(Intercept)",
        "var:x",
        "cor:(Intercept):x",
    ]


@pytest.mark.parametrize(("chains", "stuck"), [(1, False), (2, True)])
def test_formula_mcmc_one_chain_or_stuck(singular, chains, stuck):
    c = with_mcmc(_zero_intercept_variance(singular), chains=chains, stuck=stuck)
    strict(c.to_dict())
    _, ids, notes = report(c)
    assert ids == (FORMULA_FIGURES if chains > 1 else FORMULA_FIGURES[:-1])
    assert all("could not be drawn" not in n for n in notes)
    c.table()


def test_slopes_without_intercept_have_no_funnel():
    rng = np.random.default_rng(3)
    df = singular_slope_frame()
    df["y"] += rng.normal(size=len(df))
    c = workbench.compare(
        df, formula="y ~ x + (0 + x | g)", methods=["eb-ml", "joint-map"], n_starts=2, n_jobs=1
    )
    _, ids, notes = report(with_mcmc(c))
    assert ids == ["framing", "marginals", "scalepath", "caterpillar", "rank"] and notes == []


# ----------------------------------------------------------------------------------------------
# Every shipped case


CASES = sorted(p for p in (ROOT / "models").glob("*.toml") if "[simulation]" not in p.read_text())


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_every_shipped_case_renders(path):
    """Each case file's model and data, its methods but MCMC (made-up draws instead)."""
    case = load_case(path)
    kwargs = {**case.compare_kwargs, "n_starts": 2, "n_jobs": 1}
    kwargs["methods"] = [m for m in kwargs.get("methods", METHODS) if m != "mcmc"]
    for k in ("chains", "draws", "tune", "target_accept"):
        kwargs.pop(k, None)
    c = with_mcmc(workbench.compare(case.data_path, case.y, case.group, **kwargs))
    strict(c.to_dict())
    _, ids, notes = report(c, truth=case.truth or None, case_text=case.text)
    if c.data.n_factors > 1:  # funnel and caterpillar per factor, numbered
        per = [
            f"{f}-{k}" for k in range(1, c.data.n_factors + 1) for f in ("funnel", "caterpillar")
        ]
        assert ids == ["framing", "marginals", "scalepath", *per, "rank"]
    else:
        assert ids == (ONEWAY_FIGURES if c.data.is_oneway else FORMULA_FIGURES)
    assert notes == []
