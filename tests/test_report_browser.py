"""The report opened in headless Chromium (Debian's chromium, driven by Playwright): no console
errors, every image decoded, every section present, no request leaving the machine. Three
reports from the one template: a one-way case run through the CLI (real MCMC), a formula model
with a correlated random slope, and Penicillin's crossed factors (made-up MCMC draws in both).
Saves screenshots (tests/artifacts/*.png)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from boundary_cases import attach, lmm, singular_slope_frame
from conftest import ONEWAY_REPORT_SECTIONS, REPORT_SECTIONS, ROOT

import workbench
from workbench.cli import main
from workbench.present.report import render

SECTIONS = REPORT_SECTIONS
ARTIFACTS = ROOT / "tests" / "artifacts"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


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


@pytest.mark.parametrize(("which", "min_images"), REPORTS, ids=[r[0] for r in REPORTS])
def test_report_in_headless_chromium(which, min_images, request):
    report = request.getfixturevalue(which)
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed here (CI installs it)")
    from playwright.sync_api import sync_playwright

    errors, outside = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=exe,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        def route(r):
            if r.request.url.startswith(("file://", "data:")):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])"
        )
        present = {s: page.locator(f"section#{s}").count() for s in SECTIONS}
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{which}.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert outside == []
    assert len(images) >= min_images
    assert all(done and width > 0 for _, done, width in images), images
    assert all(n == 1 for n in present.values()), present
    assert shot.stat().st_size > 10_000
