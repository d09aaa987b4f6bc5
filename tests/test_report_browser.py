"""The report opened in headless Chromium (Debian's chromium, driven by Playwright; one browser
for the module): no console errors, every image decoded, every section present, no request
leaving the machine, and it fits any medium: at 800 px (a projector) and 1280 px no element is
wider than the page and no table hides columns in a scroll box, and printed (print media, A4
portrait) the same holds at A4's content width, and the browser's PDF has A4 pages. Three
reports from the one template: a one-way case run through the CLI (real MCMC), a formula model
with a correlated random slope, and Penicillin's crossed factors (made-up MCMC draws in both).
Saves screenshots at 800 and 1280 px and the PDF (tests/artifacts/REPORT_{800,1280}.png, .pdf)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from boundary_cases import attach, lmm, singular_slope_frame
from browser import offline_page
from conftest import ONEWAY_REPORT_SECTIONS, REPORT_SECTIONS, ROOT

import workbench
from workbench.cli import main
from workbench.present.report import render

SECTIONS = REPORT_SECTIONS
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def oneway_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "small.html"
    case = ROOT / "models" / "small_groups.toml"
    text = (
        case.read_text().replace("draws = 1000", "draws = 300").replace("tune = 1000", "tune = 300")
    )
    tmp_case = out.parent / "case.toml"
    tmp_case.write_text(
        text.replace('path = "data/', f'path = "{ROOT}/models/data/')
        + f'\n[output]\nreport = "{out}"\n'
    )
    assert main(["run", str(tmp_case), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def formula_report(tmp_path_factory) -> Path:
    c = workbench.compare(
        singular_slope_frame(),
        formula="y ~ x + (1 + x | g)",
        methods=["eb-ml", "eb-reml", "joint-map"],
        n_starts=2,
        n_jobs=1,
    )
    c = dataclasses.replace(
        c,
        mcmc=lmm(c.data, chains=2),
        settings=dataclasses.replace(
            c.settings, methods=(*c.settings.methods, "mcmc"), chains=2, draws=60, tune=0
        ),
    )
    out = tmp_path_factory.mktemp("report") / "slopes.html"
    out.write_text(render(c, command="test"))
    return out


@pytest.fixture(scope="module")
def crossed_report(tmp_path_factory) -> Path:
    """Penicillin's crossed factors (1 | plate) + (1 | sample) with made-up MCMC draws: every
    factor's figures (funnel and caterpillar per factor)."""
    import pandas as pd
    from boundary_cases import posterior

    c = workbench.compare(
        pd.read_csv(ROOT / "tests" / "reference" / "crossed_data" / "penicillin.csv"),
        formula="diameter ~ 1 + (1 | plate) + (1 | sample)",
        methods=["eb-ml", "eb-reml", "joint-map"],
        n_starts=2,
        n_jobs=1,
    )
    c = attach(c, posterior(c.data, draws=40))
    out = tmp_path_factory.mktemp("report") / "crossed.html"
    out.write_text(render(c, command="test"))
    return out


def test_report_files_written_side_by_side(oneway_report):
    report = oneway_report
    assert report.is_file() and report.with_suffix(".json").is_file()
    assert report.with_suffix(".posterior.nc").is_file()
    assert not list(report.parent.glob(".*.tmp"))
    html = report.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    for s in (*SECTIONS, *ONEWAY_REPORT_SECTIONS):
        assert f'id="{s}"' in html


# (report fixture, images at least: figures + formula images)
REPORTS = [("oneway_report", 12), ("formula_report", 8), ("crossed_report", 10)]
WIDTHS = (1280, 800)  # a laptop, a projector
# A4 portrait less report.css's @page margins (12 mm each side): 186 mm at 96 CSS px per inch
A4_CONTENT_PX = round(186 / 25.4 * 96)
# every element that can overflow: the page, the tables and what might hide columns
OVERFLOW_JS = """() => {
  const root = document.documentElement;
  const over = [...document.querySelectorAll(
      'section, table, pre, figure, img, svg, canvas, .scroll, p, ul')]
    .filter(e => e.scrollWidth > e.clientWidth + 1
              || e.getBoundingClientRect().right > root.clientWidth + 1)
    .map(e => `${e.tagName.toLowerCase()}#${e.id}.${e.className} in section `
              + `${(e.closest('section') || {}).id}: ${e.scrollWidth} > ${e.clientWidth}`);
  return {page: [root.scrollWidth, root.clientWidth], over: over};
}"""


def _fits(page, where: str) -> None:
    """Nothing wider than the page, no element (table, scroll box, figure) wider than itself."""
    got = page.evaluate(OVERFLOW_JS)
    width, client = got["page"]
    assert width <= client, (where, got)
    assert got["over"] == [], (where, got["over"])


@pytest.mark.parametrize(("which", "min_images"), REPORTS, ids=[r[0] for r in REPORTS])
def test_report_in_headless_chromium(which, min_images, request, browser):
    report = request.getfixturevalue(which)
    page, errors, outside = offline_page(browser, WIDTHS[0])
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    images = page.eval_on_selector_all(
        "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])"
    )
    present = {s: page.locator(f"section#{s}").count() for s in SECTIONS}
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {}
    for w in WIDTHS:  # the same page re-laid out at each width
        page.set_viewport_size({"width": w, "height": 900})
        _fits(page, f"{w} px")
        shots[w] = ARTIFACTS / f"{which}_{w}.png"
        page.screenshot(path=str(shots[w]), full_page=True)
    # on paper: print media at A4's content width, then the browser's own PDF
    page.emulate_media(media="print")
    page.set_viewport_size({"width": A4_CONTENT_PX, "height": 1123})
    _fits(page, "print, A4 portrait")
    pdf = ARTIFACTS / f"{which}.pdf"
    data = page.pdf(path=str(pdf), format="A4")
    page.close()
    assert errors == []
    assert outside == []
    assert len(images) >= min_images
    assert all(done and width > 0 for _, done, width in images), images
    assert all(n == 1 for n in present.values()), present
    assert all(shot.stat().st_size > 10_000 for shot in shots.values())
    assert data.startswith(b"%PDF")
    pages = re.findall(rb"/Type\s*/Page\b(?!s)", data)
    assert len(pages) >= 3, len(pages)  # a report runs over several pages
    boxes = {
        tuple(round(float(v)) for v in b.split())
        for b in re.findall(rb"/MediaBox\s*\[([^\]]+)\]", data)
    }
    assert boxes == {(0, 0, 595, 842)} or boxes == {(0, 0, 596, 843)}, boxes  # A4 in points
