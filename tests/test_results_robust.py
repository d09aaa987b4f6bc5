"""Nothing crashes on a result (issue 9, item 3): each input that used to crash after all the
computing -- a 0/0 correlation of a singular slope fit, one MCMC chain (R-hat NaN), chains that
never move (`--tune 0`: constant draws, a singular KDE), an infinite interval end, group labels
that matplotlib reads as mathtext (`$`, `$$`) -- now gives strict JSON with null and a note,
"–" in the table, and a full report. MCMC records come from `boundary_cases` (made-up draws,
the real summaries and diagnostics), so these tests need no sampler."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from boundary_cases import LABELS, attach, lmm, oneway, singular_slope_frame
from conftest import DATA

import workbench
from workbench.jsonsafe import clean, finalize, validate
from workbench.present import plots
from workbench.present.report import _draw, render
from workbench.present.table import fmt

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


def strict(record: dict) -> dict:
    return json.loads(json.dumps(record, allow_nan=False))


def report(c) -> tuple[str, list[str], list[str]]:
    """The full report, its figures' ids and the notes on figures not drawn."""
    html = render(c, command="test")
    notes = re.findall(r'<ul class="figure-notes">(.*?)</ul>', html, re.S)
    return (
        html,
        re.findall(r'<figure id="fig-(\w+)">', html),
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
# One-way route


@pytest.fixture(scope="module")
def dyestuff():
    return workbench.compare(DATA / "dyestuff.csv", "Yield", "Batch", methods=["eb-ml"])


def test_one_chain_rhat_null_and_rank_plots_skipped(dyestuff):
    c = attach(dataclasses.replace(dyestuff), oneway(dyestuff.data, chains=1))
    assert math.isnan(c.mcmc.diagnostics["r_hat_max"])  # the record keeps ArviZ's NaN
    out = strict(c.to_dict())
    validate(out)
    assert out["mcmc"]["diagnostics"]["r_hat_max"] is None
    assert out["mcmc"]["notes"] == [
        "mcmc.diagnostics.r_hat_max was NaN (not a number): reported as null"
    ]
    assert any("1 chain" in w for w in out["warnings"])
    assert "R-hat max –" in c.table()
    html, ids, notes = report(c)
    assert ids == ["marginals", "profiles", "taupath", "funnel", "caterpillar"]
    assert len(notes) == 1 and "1 chain" in notes[0]
    assert 'id="warning-banner"' in html


@pytest.mark.parametrize("chains", [1, 2])
def test_chains_that_never_move(dyestuff, chains):
    """--tune 0 can leave every chain where it started: constant draws (no KDE), R-hat NaN
    or huge."""
    c = attach(dataclasses.replace(dyestuff), oneway(dyestuff.data, chains=chains, stuck=True))
    validate(strict(c.to_dict()))
    _, ids, notes = report(c)
    assert "marginals" in ids and "funnel" in ids
    assert all("could not be drawn" not in n for n in notes)
    c.table()


def test_infinite_interval_end_is_null_with_a_note(dyestuff):
    c = dataclasses.replace(dyestuff)
    c.eb_ml = dataclasses.replace(
        c.eb_ml, ci_profile={"sigma": (40.0, 70.0), "tau": (0.0, math.inf)}
    )
    out = strict(c.to_dict())
    validate(out)
    assert out["eb_ml"]["ci_profile"]["tau"] == [0.0, None]
    assert "eb_ml.ci_profile.tau[1] was +infinity: reported as null" in out["eb_ml"]["notes"]
    assert "[0, ∞]" in render(c, command="test", fragment=True)


def test_two_groups_without_group_variance():
    """Two groups with equal means: tau^2 = 0 everywhere; the joint MAP with priors has a
    flat direction in log tau (its Wald interval for tau^2 overflows to infinity)."""
    df = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 3, "y": [1, 2, 3, 3, 2, 1]})
    c = workbench.compare(
        df, "y", "g", methods=["anova", "eb-ml", "eb-reml", "joint-map"], n_starts=2, n_jobs=1
    )
    c = attach(c, oneway(c.data, chains=2))
    out = strict(c.to_dict())
    validate(out)
    assert out["eb_ml"]["tau2"] == 0 and out["eb_ml"]["se"]["tau2"] is None
    post = out["joint_map_posterior"]
    if post["status"] == "interior" and None in post["ci_hessian"]["tau2"]:
        assert any("ci_hessian.tau2" in n for n in post["notes"])
    _, ids, notes = report(c)
    assert len(ids) == 6 and notes == []
    assert "–" in c.table()


def test_labels_and_column_names_are_plain_text():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"g_$": np.repeat(LABELS, 4), "$y$": rng.normal(size=4 * len(LABELS))})
    df["$y$"] += np.repeat(np.arange(len(LABELS)), 4) * 0.5
    c = workbench.compare(df, "$y$", "g_$", methods=["eb-ml", "joint-map"], n_starts=2, n_jobs=1)
    c = attach(c, oneway(c.data, chains=2))
    validate(strict(c.to_dict()))
    _, ids, notes = report(c)
    assert ids == ["marginals", "profiles", "taupath", "funnel", "caterpillar", "rank"]
    assert notes == []
    fig = plots.plot_caterpillar(c)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "$" in ticks and "$$" in ticks and "a_b^c" in ticks and "L" * 39 + "…" in ticks
    assert not any(t.get_parse_math() for t in fig.axes[0].get_yticklabels())
    plots.to_png(fig)


# ----------------------------------------------------------------------------------------------
# Formula route


@pytest.fixture(scope="module")
def singular():
    return workbench.compare(
        singular_slope_frame(),
        formula="y ~ x + (1 + x | g)",
        methods=["eb-ml", "eb-reml", "joint-map"],
        n_starts=2,
        n_jobs=1,
    )


def _zero_intercept_variance(fit):
    """The same fit with the intercept variance exactly 0 (what lme4 reports at a singular
    fit): the intercept-slope correlation is 0/0."""
    G = fit.G.copy()
    G[0, :] = G[:, 0] = 0.0
    return dataclasses.replace(fit, G=G)


def test_singular_slope_fit_correlation_null(singular):
    c = dataclasses.replace(singular)
    c.eb_ml = _zero_intercept_variance(c.eb_ml)
    assert math.isnan(c.eb_ml.components.correlations["(Intercept):x"])
    out = strict(c.to_dict())
    validate(out)
    assert out["eb_ml"]["variance_components"]["g"]["correlations"]["(Intercept):x"] is None
    assert any("correlations.(Intercept):x was NaN" in n for n in out["eb_ml"]["notes"])
    assert any(w.startswith("eb_ml: 1 non-finite") for w in out["warnings"])
    row = next(line for line in c.table().splitlines() if line.startswith("cor:"))
    assert row.split()[2] == "–"
    html, ids, notes = report(c)
    assert "Corr((Intercept):x) = –" in html and notes == [] and len(ids) == 3


@pytest.mark.parametrize(("chains", "stuck"), [(1, False), (2, True)])
def test_formula_mcmc_one_chain_or_stuck(singular, chains, stuck):
    c = dataclasses.replace(singular)
    c.eb_ml = _zero_intercept_variance(c.eb_ml)
    c.mcmc = lmm(c.data, chains=chains, stuck=stuck)
    c.settings = dataclasses.replace(
        c.settings, methods=(*c.settings.methods, "mcmc"), chains=chains
    )
    out = strict(c.to_dict())
    validate(out)
    _, ids, notes = report(c)
    assert ids[:3] == ["components", "scalepath", "caterpillar"]
    assert ("rank" in ids) == (chains > 1)
    assert all("could not be drawn" not in n for n in notes)
    c.table()
