"""Benchmarks of issue 5 (general LMM), printing figures (not a test):

1. EB-ML of the Hsb82 slope model mAch ~ ses + sector + (1 + ses | school) from the data frame
   (design + cross products + fit + SEs + conditional modes), median of 5; statsmodels MixedLM
   and lme4 (Rscript, timing lmer() only) on the same data in the same run.
2. EB-ML of a simulated random intercept + slope model, N = 1e6 rows, m = 1e4 groups, from a
   data frame (target <= 5 s), median of 3; lme4 on the same data (written to a temporary CSV).

Run: .venv/bin/python benchmarks/bench_lmm.py [--skip-lme4] [--skip-statsmodels]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import timed

from workbench.fit import eb
from workbench.model import design

ROOT = Path(__file__).resolve().parents[1]
R_TIMER = """suppressMessages(library(lme4)); d <- read.csv("{csv}"); d${g} <- factor(d${g});
{prep}
ts <- c(); for (i in 1:{reps}) {{ t0 <- proc.time()[["elapsed"]];
f <- lmer({formula}, d, REML = FALSE); ts <- c(ts, proc.time()[["elapsed"]] - t0) }}
cat(median(ts), format(as.numeric(logLik(f)), digits = 15), "\\n")"""


def fit_once(df, formula, levels=None):
    d = design.from_frame(df, formula, levels=levels)
    fit = eb.fit(d, "ml")
    fit.random_effects()  # conditional modes and variances, as a user gets them
    return fit


def lme4_seconds(csv: Path, formula: str, group: str, reps: int, prep: str = ""):
    if shutil.which("Rscript") is None:
        return None
    code = R_TIMER.format(csv=csv, g=group, prep=prep, reps=reps, formula=formula)
    out = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True)
    if out.returncode != 0:
        print("  lme4 failed:", out.stderr.strip().splitlines()[-1:], file=sys.stderr)
        return None
    secs, loglik = out.stdout.split()
    return float(secs), float(loglik)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-lme4", action="store_true")
    ap.add_argument("--skip-statsmodels", action="store_true")
    args = ap.parse_args()

    formula = "mAch ~ ses + sector + (1 + ses | school)"
    csv = ROOT / "models" / "data" / "hsb82.csv"
    df = pd.read_csv(csv)
    levels = {"sector": ["Public", "Catholic"]}
    t, fit = timed(lambda: fit_once(df, formula, levels), 5)
    print(
        f"Hsb82 {formula}, EB-ML (design + fit + modes): median {t * 1e3:.1f} ms, "
        f"logLik {fit.loglik:.6f}, {fit.n_evals} objective evaluations"
    )
    if not args.skip_statsmodels:
        import statsmodels.formula.api as smf

        t0 = time.perf_counter()
        sm = smf.mixedlm(
            "mAch ~ ses + C(sector, Treatment('Public'))", df, groups="school", re_formula="~ses"
        ).fit(reml=False)
        t_sm = time.perf_counter() - t0
        print(f"  statsmodels MixedLM: {t_sm:.2f} s (logLik {sm.llf:.6f}) -> {t_sm / t:.0f}x")
    if not args.skip_lme4:
        r = lme4_seconds(
            csv,
            formula,
            "school",
            5,
            'd$sector <- factor(d$sector, levels = c("Public", "Catholic"))',
        )
        if r:
            print(f"  lme4 lmer(): median {r[0]:.3f} s (logLik {r[1]:.6f}) -> {r[0] / t:.1f}x")

    rng = np.random.default_rng(20261121)
    N, m = 1_000_000, 10_000
    g = rng.integers(0, m, N)
    x = rng.standard_normal(N)
    b = rng.multivariate_normal([0, 0], [[4.0, 0.6], [0.6, 0.5]], m)
    y = 10 + 2 * x + b[g, 0] + b[g, 1] * x + 3 * rng.standard_normal(N)
    big = pd.DataFrame({"y": y, "x": x, "g": g})
    formula = "y ~ x + (1 + x | g)"
    t, fit = timed(lambda: fit_once(big, formula), 3)
    d = design.from_frame(big, formula)
    _ = d.factors
    t_fit, _ = timed(lambda: eb.fit(d, "ml"), 3)
    print(
        f"Simulated {formula}, N = {N:.0e}, m = {m:.0e}: EB-ML from the data frame median "
        f"{t:.2f} s (target 5 s; fit from the cross products alone {t_fit:.2f} s), "
        f"logLik {fit.loglik:.4f}"
    )
    if not args.skip_lme4:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "big.csv"
            big.to_csv(path, index=False)
            r = lme4_seconds(path, formula, "g", 1)
        if r:
            print(
                f"  lme4 lmer() on the same data: {r[0]:.2f} s (logLik {r[1]:.4f}) -> "
                f"{r[0] / t:.1f}x"
            )


if __name__ == "__main__":
    main()
