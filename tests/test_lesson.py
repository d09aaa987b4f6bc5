"""The interactive lesson: `present/lesson.py`'s closed forms against the fits, `curves.py` and
the explanation's balanced form; the page's JavaScript against lesson.py in headless Chromium
(one launch: numbers at several (n, m, F) below and above the threshold, a slider moved, no
console error, no request leaving the machine); `models/lesson.ipynb` run top to bottom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
from boundary_cases import singular_slope_frame
from browser import offline_page
from conftest import ROOT, simulate

import workbench
from workbench.explain import balanced_form
from workbench.fit import anova
from workbench.model.data import Stats
from workbench.model.design import from_frame
from workbench.objectives import oneway as dens
from workbench.present import curves, lesson

ARTIFACTS = ROOT / "tests" / "artifacts"
# (n, m, F): the small-groups data, pairs, just below and above Dyestuff's threshold, Hsb82's
# size, ML at the boundary (F < m / (m - 1)), two groups
CASES = [
    (3, 30, 7.483690141844457),
    (2, 5, 50.0),
    (5, 6, 4.59),
    (5, 6, 4.62),
    (45, 160, 10.4),
    (3, 30, 0.8),
    (10, 2, 300.0),
]


@pytest.fixture(scope="module")
def small():
    """The small-groups case: EB-ML and the centered joint MAP (no MCMC)."""
    return workbench.compare(
        pd.read_csv(ROOT / "models" / "data" / "small_groups.csv"),
        y="y",
        group="group",
        methods=["eb-ml", "joint-map:centered"],
        n_starts=2,
        n_jobs=1,
    )


def test_closed_forms_are_the_fits(small):
    st = small.data.oneway
    b = lesson.Balanced.of(st)
    s2, t2 = b.ml
    assert np.isclose(s2, small.eb_ml.sigma2, rtol=1e-8)
    assert np.isclose(t2, small.eb_ml.G[0, 0], rtol=1e-7)
    jm = small.joint_map
    assert jm.status == "interior"
    assert np.isclose(b.joint.sigma2, jm.sigma2, rtol=1e-7)
    assert np.isclose(b.joint.tau2, jm.G[0, 0], rtol=1e-7)
    assert np.isclose(b.joint.log_joint, jm.log_joint, rtol=1e-10)
    bal = balanced_form(st, small.eb_ml.sigma2)
    assert np.isclose(b.F, bal.f_statistic) and np.isclose(b.threshold, bal.f_threshold)
    assert np.isclose(b.joint.shrinkage, bal.shrinkage, rtol=1e-12)
    # the model in MSW units is the same model: ratios and F agree
    u = lesson.Balanced.unit(b.n, b.m, b.F)
    assert np.isclose(u.summary()["ratio"], b.summary()["ratio"], rtol=1e-12)
    assert np.isclose(u.ml[0] * b.msw, s2, rtol=1e-12)


def test_curves_are_curves_py(small):
    """The marginal profile is curves.profile_curves' log marginal; the tau path is
    curves.tau_path (coordinate ascent) in closed form; the densities are objectives'."""
    st, fit = small.data.oneway, small.eb_ml
    b = lesson.Balanced.of(st)
    pc = curves.profile_curves(st, fit.sigma2)
    t2, lm = b.marginal_profile(pc.sigma2)
    np.testing.assert_allclose(lm, pc.log_marginal, rtol=1e-12)
    tp = curves.tau_path(st, np.sqrt(fit.G[0, 0]))
    s2, h = b.tau_path(tp.tau**2)
    np.testing.assert_allclose(h, tp.log_joint, rtol=1e-11)
    np.testing.assert_allclose(s2, tp.sigma2, rtol=1e-9)
    mu = float(st.ybar.mean())
    for s, t in ((5.0, 20.0), (11.0, 3.0)):
        assert np.isclose(b.log_marginal(s, t), dens.marginal_loglik((mu, s, t), st), rtol=1e-13)
        a, _ = dens.conditional_effects(mu, s, t, st)
        x = np.concatenate([[mu, 0.5 * np.log(s), 0.5 * np.log(t)], a])
        assert np.isclose(b.log_joint(s, t), dens.log_joint(x, st), rtol=1e-13)


@pytest.mark.parametrize(("n", "m", "F"), CASES)
def test_joint_branch_and_stationary_points(n, m, F):
    """The branch is the local maximum over tau^2, it ends at nB / (4m), its peak is the joint
    mode; the mode and the saddle are stationary points of h, on the tau path."""
    b = lesson.Balanced.unit(n, m, F)
    end = b.nB / (4 * b.m)
    s2 = end * np.array([0.05, 0.3, 0.7, 0.999])
    t2, h = b.joint_branch(s2)
    for s, t, v in zip(s2, t2, h, strict=True):
        eps = 1e-4 * t
        left, right = b.log_joint(s, t - eps), b.log_joint(s, t + eps)
        assert v >= max(left, right) - 1e-9 * abs(v)
    assert np.isnan(b.joint_branch(1.01 * end)[1])
    st = b.stationary
    assert (st is not None) == (F >= lesson.threshold(n, m))
    if st is None:
        return
    mode, saddle = st
    assert saddle.tau2 < mode.tau2 and saddle.log_joint < mode.log_joint
    # a local maximum of the branch (near the threshold the branch climbs again past the saddle
    # to where it ends, higher than the mode: the end is no mode of h, only a fold)
    near = b.joint_branch(mode.sigma2 * np.array([1 - 1e-3, 1.0, 1 + 1e-3]))[1]
    assert near[1] >= max(near[0], near[2])
    assert np.isclose(b.joint_branch(mode.sigma2)[0], mode.tau2, rtol=1e-9)
    for p in (mode, saddle):
        s_path, h_path = b.tau_path(p.tau2)
        assert np.isclose(s_path[0], p.sigma2, rtol=1e-9) or h_path[0] > p.log_joint
        d = 1e-5
        g_s = b.log_joint(p.sigma2 * (1 + d), p.tau2) - b.log_joint(p.sigma2 * (1 - d), p.tau2)
        g_t = b.log_joint(p.sigma2, p.tau2 * (1 + d)) - b.log_joint(p.sigma2, p.tau2 * (1 - d))
        assert abs(g_s) < 1e-6 * b.N and abs(g_t) < 1e-6 * b.N


def test_threshold_and_the_limit():
    for n, m in ((2, 30), (3, 5), (10, 200)):
        thr = lesson.threshold(n, m)
        assert lesson.Balanced.unit(n, m, thr * (1 - 1e-9)).joint is None
        assert lesson.Balanced.unit(n, m, thr * (1 + 1e-9)).joint is not None
        ratios = [lesson.Balanced.unit(n, m, F).summary()["ratio"] for F in (2 * thr, 20 * thr)]
        far = lesson.Balanced.unit(n, m, 1e7).summary()["ratio"]
        assert ratios[0] > ratios[1] > far > (n - 1) / n
        assert far - (n - 1) / n < 1e-5


def test_start_values():
    d = simulate(12, np.array([2, 3, 5, 4, 4, 6, 3, 2, 7, 4, 3, 5]), 10.0, 1.0, 2.0, seed=3)
    st = Stats.of(d)
    start = lesson.start_values(st)
    assert start["n"] == round(st.N / st.m) and start["m"] == 12
    assert np.isclose(start["F"], anova.fit(st).f_statistic, rtol=1e-12)
    assert "unbalanced" in start["note"] and "mean group size" in start["note"]
    ctx = lesson.stats_context(st)
    assert ctx["shown"] and json.loads(ctx["data_json"])["n"] == start["n"]
    flat = Stats(np.array([2.0, 2.0]), np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    assert not lesson.stats_context(flat)["shown"]
    # the JSON sits in a <script> element: a column name cannot end it (was an injection)
    odd = "</script><script>alert(1)</script> & <b>"
    text = lesson.stats_context(st, odd)["data_json"]
    assert "<" not in text and ">" not in text and json.loads(text)["y"] == odd


def test_no_lesson_for_other_models():
    data = from_frame(singular_slope_frame(), "y ~ x + (1 + x | g)")
    ctx = lesson.context(types.SimpleNamespace(data=data))
    assert not ctx["shown"] and "one-way" in ctx["note"]


def test_page_in_chromium(small, tmp_path, browser):
    ctx = lesson.stats_context(small.data.oneway, "y")
    page_file = tmp_path / "lesson.html"
    page_file.write_text(lesson.standalone(ctx))
    script = (ROOT / "workbench" / "present" / "templates" / "lesson.js").read_text()
    assert script.strip() in page_file.read_text()  # inlined verbatim (no Jinja syntax in it)
    probes = {
        "s2": [0.3, 0.9, 1.7],
        "t2": [1e-3, 0.2, 2.0, 30.0],
    }
    page, errors, outside = offline_page(browser, 1280)
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    js = page.evaluate(
        """([cases, probes]) => cases.map(([n, m, F]) => ({
            summary: wbLesson.summary(n, m, F),
            profile: probes.s2.map(s => wbLesson.marginalProfile(n, m, F, s)),
            branch: probes.s2.map(s => wbLesson.jointBranch(n, m, F, s)),
            path: probes.t2.map(t => wbLesson.tauPath(n, m, F, t)),
        }))""",
        [CASES, probes],
    )
    start_line = page.inner_text("#lesson-line")
    paths = page.eval_on_selector_all("#lesson svg path", "es => es.map(e => e.getAttribute('d'))")
    n_markers = page.locator("#lesson .lesson-marker").count()
    for width in (1280, 800):
        page.set_viewport_size({"width": width, "height": 900})
        fits = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert fits[0] <= fits[1], (width, fits)
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#lesson").screenshot(path=str(ARTIFACTS / f"lesson_{width}.png"))
    # move the F slider to its left end: below the threshold
    page.locator("#lesson-f").fill("0")
    low_line = page.inner_text("#lesson-line")
    low_paths = page.eval_on_selector_all(
        "#lesson svg path", "es => es.map(e => e.getAttribute('d'))"
    )
    low_state = page.evaluate("wbLesson.state()")
    page.locator("#lesson-n").fill("2")
    pair_line = page.inner_text("#lesson-line")
    page.locator("#lesson-reset").click()
    reset_line = page.inner_text("#lesson-line")
    page.close()
    assert errors == [] and outside == []

    for (n, m, F), got in zip(CASES, js, strict=True):
        b = lesson.Balanced.unit(n, m, F)
        want = b.summary()
        for key, v in want.items():
            if v is None or isinstance(v, bool):
                assert got["summary"][key] == v, (n, m, F, key)
            else:
                assert np.isclose(got["summary"][key], v, rtol=1e-12), (n, m, F, key)
        s2 = np.array(probes["s2"])
        np.testing.assert_allclose([v for v in got["profile"]], np.array(b.marginal_profile(s2)).T)
        branch = np.array([[np.nan if v is None else v for v in r] for r in got["branch"]])
        np.testing.assert_allclose(branch, np.array(b.joint_branch(s2)).T, rtol=1e-12)
        np.testing.assert_allclose(
            got["path"], np.array(b.tau_path(np.array(probes["t2"]))).T, rtol=1e-10
        )

    assert start_line == ctx["line"]  # the page's line at the data is Python's
    assert len(paths) >= 6 and n_markers >= 4
    assert low_state["F"] == pytest.approx(lesson.F_RANGE[0])
    assert "no interior joint mode" in low_line and "no interior" not in start_line
    assert low_paths != paths
    assert pair_line.startswith("n = 2, m = 30") and reset_line == start_line


def test_notebook_runs_top_to_bottom(tmp_path):
    """The notebook's code cells in order, as one script in a fresh process (as a teacher's
    kernel would run them; nbclient is not a dependency), from a folder that looks like the
    repository (models/ linked), so that its output file lands in tmp_path."""
    nb = json.loads((ROOT / "models" / "lesson.ipynb").read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
    cells = nb["cells"]
    assert {c["cell_type"] for c in cells} == {"markdown", "code"}
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert len({c["id"] for c in cells}) == len(cells)
    script = tmp_path / "lesson_notebook.py"
    script.write_text("\n\n".join("".join(c["source"]) for c in code))
    (tmp_path / "models").symlink_to(ROOT / "models")
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "the closed forms reproduce both fits" in out
    assert "joint MAP: no_interior_mode" in out and "no interior joint mode" in out
    for n in (2, 3, 5):
        assert f"n = {n}, tau =   16" in out
    assert "refit (n = 5, tau = 16)" in out
    assert (tmp_path / "reports" / "lesson.html").stat().st_size > 10_000
