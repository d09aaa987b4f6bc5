"""Shared fixtures: the shipped data sets and lme4's reference numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workbench.model.data import GroupedData, from_arrays, load_csv

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "models" / "data"
CASES = {
    "dyestuff": ("Yield", "Batch"),
    "dyestuff2": ("Yield", "Batch"),
    "hsb82": ("mAch", "school"),
}


@pytest.fixture(scope="session")
def lme4() -> dict:
    """lme4 1.1-31 fits (tests/reference/lme4_oneway.R)."""
    return json.loads((ROOT / "tests" / "reference" / "lme4_oneway.json").read_text())


@pytest.fixture(scope="session")
def datasets() -> dict[str, GroupedData]:
    return {name: load_csv(DATA / f"{name}.csv", *cols) for name, cols in CASES.items()}


def simulate(m: int, sizes, mu: float, sigma: float, tau: float, seed: int) -> GroupedData:
    """Data from the one-way model; `sizes` is an int (balanced) or an array of group sizes."""
    rng = np.random.default_rng(seed)
    n = np.full(m, sizes) if np.isscalar(sizes) else np.asarray(sizes)
    g = np.repeat(np.arange(m), n)
    theta = mu + tau * rng.standard_normal(m)
    y = theta[g] + sigma * rng.standard_normal(g.size)
    return from_arrays(y, [f"g{j}" for j in g])


# the sections every full report has (one template for every model) ...
REPORT_SECTIONS = (
    "question",
    "data",
    "model",
    "estimates",
    "explanation",
    "diagnostics",
    "plots",
    "provenance",
)
# ... and the ones a one-way design adds (y ~ 1 + (1 | g) with ANOVA run)
ONEWAY_REPORT_SECTIONS = ("anova",)

HSB82_LEVELS = {
    "sector": ["Public", "Catholic"],
    "sx": ["Male", "Female"],
    "minrty": ["No", "Yes"],
}  # mlmRev's factor levels, as lme4_lmm.R sets them


@pytest.fixture(scope="session")
def lme4_lmm() -> dict:
    """lme4 1.1-31 fits of general LMMs on Hsb82 (tests/reference/lme4_lmm.R)."""
    return json.loads((ROOT / "tests" / "reference" / "lme4_lmm.json").read_text())


@pytest.fixture(scope="session")
def hsb82_frame():
    import pandas as pd

    return pd.read_csv(DATA / "hsb82.csv")


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session (`browser.py`; launching takes a second)."""
    from browser import ARGS, executable
    from playwright.sync_api import sync_playwright

    exe = executable()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=ARGS)
        yield b
        b.close()
