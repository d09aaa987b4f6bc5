"""The report's figures are correct (issue 13, item 3), on fits without MCMC (the MCMC record of
the caterpillar and the marginals is `boundary_cases.lmm`'s made-up one): the profile plot's
maxima sit at the fitted values and are labelled with the tables' digits; no joint maximum is
drawn where the joint mode is not interior; no artefact cliff at the boundary (Dyestuff2, EB
tau^2 = 0); the joint-MAP and MCMC colours stay apart for protanopes, deuteranopes and
tritanopes (Machado, Oliveira & Fernandes 2009, severity 1); legends lie outside every axes'
data area, text is at least 9 pt and figures fit a page 800 px wide."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest
from boundary_cases import lmm
from conftest import DATA
from matplotlib.colors import to_rgb

import workbench
from workbench.present import curves, plots, report
from workbench.present.table import fmt

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

JC = curves.JOINT_LABELS[("centered", False)]


def _fit(name: str, y: str = "Yield", group: str = "Batch"):
    return workbench.compare(
        DATA / f"{name}.csv",
        y,
        group,
        methods=["eb-ml", "joint-map:centered"],
        n_starts=2,
        n_jobs=1,
    )


@pytest.fixture(scope="module")
def hsb82():
    """Hsb82 one-way: an interior centered joint mode (sigma^2 about 0.98 x ML), 160 groups."""
    return _fit("hsb82", "mAch", "school")


@pytest.fixture(scope="module")
def dyestuff():
    """No interior joint mode."""
    return _fit("dyestuff")


@pytest.fixture(scope="module")
def dyestuff2():
    """EB tau^2 = 0 (the boundary) and no interior joint mode."""
    return _fit("dyestuff2")


def _profiles(c):
    jm = c.joint_maps[("centered", False)]
    s_joint = float(jm.sigma2) if curves.interior(jm) else None
    return curves.profile_curves(c.data.oneway, c.eb_ml.sigma2, s_joint)


def _points(fig) -> dict[str, tuple[float, float]]:
    """Single-point marks (label -> (x, y)) of every axes."""
    out = {}
    for ax in fig.axes:
        for ln in ax.lines:
            x = np.asarray(ln.get_xdata(), float)
            if x.size == 1 and ln.get_marker() not in ("None", "", " ", None):
                out[ln.get_label()] = (float(x[0]), float(np.asarray(ln.get_ydata())[0]))
    return out


def _legend_texts(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
    legends += [lg for sf in fig.subfigs for lg in sf.legends]
    return [t.get_text() for lg in legends if lg is not None for t in lg.get_texts()]


def test_profile_maxima_are_the_fitted_values(hsb82):
    """The curves pass through EB-ML's sigma^2 and the joint mode's; each curve's largest
    value is there; l there is EB-ML's log likelihood and h the joint mode's log joint; the
    markers sit exactly there, labelled with the tables' digits (not a grid's 4)."""
    c, jm = hsb82, hsb82.joint_maps[("centered", False)]
    assert curves.interior(jm)
    pc = _profiles(c)
    s_ml, s_j = c.eb_ml.sigma2, float(jm.sigma2)
    assert s_ml in pc.sigma2 and s_j in pc.sigma2
    assert pc.sigma2[np.nanargmax(pc.log_marginal)] == s_ml
    assert pc.sigma2[np.nanargmax(pc.joint_profile)] == s_j
    i, j = np.flatnonzero(pc.sigma2 == s_ml)[0], np.flatnonzero(pc.sigma2 == s_j)[0]
    assert pc.log_marginal[i] == pytest.approx(c.eb_ml.loglik, rel=1e-10)
    assert pc.joint_profile[j] == pytest.approx(float(jm.log_joint), rel=1e-9)
    fig = plots.plot_profiles(pc, "mAch")
    marks = _points(fig)
    eb = next(k for k in marks if k.startswith("EB-ML"))
    joint = next(k for k in marks if k.startswith("joint MAP"))
    assert marks[eb] == (s_ml, 0.0) and marks[joint] == (s_j, 0.0)
    assert f"σ² = {fmt(s_ml)}" in eb and f"σ² = {fmt(s_j)}" in joint
    assert fmt(s_ml) in report._fmt(s_ml)  # the HTML table's digits are the same
    # large data: a zoom around the modes (Hsb82: a few % either side), not 0.4-2.5 x ML
    assert pc.sigma2[-1] / pc.sigma2[0] < 1.3
    plt.close(fig)


def test_no_joint_maximum_without_an_interior_mode(dyestuff):
    c = dyestuff
    assert not curves.interior(c.joint_maps[("centered", False)])
    fig = plots.plot_profiles(_profiles(c), "Yield")
    marks = _points(fig)
    assert [k for k in marks if k.startswith("EB-ML")]
    assert not [k for k in marks if "joint" in k or "max of h" in k]
    assert any("no interior joint mode" in t for t in _legend_texts(fig))
    plt.close(fig)
    figs = {i: (title, build) for i, title, build in report.figures(c, None)}
    assert "no interior joint mode" in figs["profiles"][0]
    assert "MCMC not run" in figs["marginals"][0]  # no posterior claimed without MCMC
    fig = figs["taupath"][1]()
    assert not [k for k in _points(fig) if "joint" in k or "maximum" in k]
    assert any("no joint mode" in t for t in _legend_texts(fig))
    plt.close(fig)


def test_no_artefact_cliff_at_the_boundary(dyestuff2):
    """Dyestuff2 (EB tau^2 = 0): where l's profile has tau^2 = 0, h and the volume term are
    not evaluated at a floored tau^2 (h = +inf there, the old cliff of ~+80 nats) but left out;
    what is drawn is finite and obeys l = h + volume; l is smooth across the boundary."""
    pc = _profiles(dyestuff2)
    zero = pc.tau2_marginal == 0
    assert zero.any() and (~zero).any()
    assert np.isnan(pc.volume[zero]).all() and np.isnan(pc.log_joint[zero]).all()
    ok = ~zero
    assert np.isfinite(pc.volume[ok]).all() and np.isfinite(pc.log_joint[ok]).all()
    np.testing.assert_allclose(pc.log_marginal[ok] - pc.log_joint[ok], pc.volume[ok], atol=1e-8)
    assert np.isfinite(pc.log_marginal).all()
    step = np.diff(np.log(pc.sigma2))
    slope = np.diff(pc.log_marginal) / step
    assert np.abs(np.diff(slope)).max() < 2.0  # no kink or jump in l
    # h has no interior local maximum in tau^2 here: nothing drawn rather than a floored value
    assert not np.isfinite(pc.joint_profile).any() or np.nanmax(np.abs(pc.joint_profile)) < 1e3
    fig = plots.plot_profiles(pc, "Yield")
    for ax in fig.axes:
        for ln in ax.lines:
            y = np.asarray(ln.get_ydata(), float)
            assert np.all(np.isnan(y) | (np.abs(y) < 200)), ln.get_label()
    assert any("tau² = 0 on l's profile" in t for t in _legend_texts(fig))
    plt.close(fig)


# Machado, Oliveira & Fernandes (2009), severity 1.0, on linear RGB
CVD = {
    "protanopia": [
        [0.152286, 1.052583, -0.204868],
        [0.114503, 0.786281, 0.099216],
        [-0.003882, -0.048116, 1.051998],
    ],
    "deuteranopia": [
        [0.367322, 0.860646, -0.227968],
        [0.280085, 0.672501, 0.047413],
        [-0.011820, 0.042940, 0.968881],
    ],
    "tritanopia": [
        [1.255528, -0.076749, -0.178779],
        [-0.078411, 0.930809, 0.147602],
        [0.004733, 0.691367, 0.303900],
    ],
}


def _lab(color, cvd: str) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour as seen with the colour-vision deficiency `cvd`."""
    c = np.asarray(to_rgb(color))
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    seen = np.clip(np.asarray(CVD[cvd]) @ linear, 0.0, 1.0)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    x = xyz @ seen / np.array([0.95047, 1.0, 1.08883])
    f = np.where(x > (6 / 29) ** 3, np.cbrt(x), x / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


@pytest.mark.parametrize("cvd", sorted(CVD))
def test_joint_map_and_mcmc_colours_apart_for_colour_blind_readers(cvd):
    """Delta E (CIE76) of at least 30 between joint MAP and MCMC as seen by each deficiency
    (the old red #d62728 and green #2ca02c: 7 for deuteranopes), in the report's figures and
    the simulation report's bars (compare's method names)."""

    def delta(a, b):
        return float(np.linalg.norm(_lab(a, cvd) - _lab(b, cvd)))

    assert delta("#d62728", "#2ca02c") < 10 or cvd != "deuteranopia"  # the check can fail
    for joint, mcmc in [(JC, "MCMC mean"), (JC, "MCMC mode"), ("joint-map:centered", "mcmc")]:
        assert delta(plots.style(joint).color, plots.style(mcmc).color) > 30
    # every method also has its own line style or marker: colour is never the only cue
    marks = {(m.ls if isinstance(m.ls, str) else str(m.ls), m.marker) for m in plots.STYLE.values()}
    assert len(marks) == len(plots.STYLE)
    assert plots.style("eb-ml") == plots.STYLE["EB-ML"]


def _check_layout(fig) -> None:
    """Every legend outside every visible axes' data area; text at least 9 pt; the figure no
    wider than `plots.FIG_WIDTH` (a page 800 px wide scales it by at most 0.87)."""
    assert fig.get_size_inches()[0] <= plots.FIG_WIDTH + 1e-9
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legends = [*fig.legends, *(lg for sf in fig.subfigs for lg in sf.legends)]
    legends += [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    areas = [ax.get_window_extent(r) for ax in fig.axes if ax.get_visible() and ax.axison]
    for lg in legends:
        box = lg.get_window_extent(r)
        for area in areas:
            assert not box.overlaps(area), (lg.get_texts()[0].get_text(), box, area)
    for text in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")):
        if text.get_visible() and text.get_text().strip():
            assert text.get_fontsize() >= plots.MIN_FONT, text.get_text()
    plt.close(fig)


def test_legends_outside_the_data_and_fonts_readable(hsb82, dyestuff2):
    for i, _, build in report.figures(hsb82, None):
        if i in ("profiles", "taupath"):
            _check_layout(build())
    c = dataclasses.replace(dyestuff2, mcmc=lmm(dyestuff2.data, chains=2))
    for i, _, build in report.figures(c, None):
        if i in ("marginals", "caterpillar", "funnel"):
            _check_layout(build())
    pen = workbench.compare(
        DATA / "penicillin.csv",
        formula="diameter ~ 1 + (1|plate) + (1|sample)",
        methods=["eb-ml"],
        n_jobs=1,
    )
    _check_layout(plots.plot_scale_path(*curves.scale_paths(pen.eb_ml)))
