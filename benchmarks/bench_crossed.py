"""Benchmarks of issue 11 (several grouping factors, `workbench.objectives.blocked`), printing
figures (not a test):

1. InstEval (73,421 rows), y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service), REML and
   ML, from the data frame read from tests/reference/crossed_data/insteval.csv.gz (the read is
   timed apart): our time = data build (X by `design.from_frame`, level codes of s, d and the
   interaction dept:service) + `blocked.Terms.of` + a Py-BOBYQA fit of theta, median of 3, BLAS
   on one thread (`serial_blas`, as the product's optimiser runs). The fit starts where lme4's
   does (theta = 1, lower bounds 0) with minqa's bobyqa settings as lme4's `bobyqa` optimiser
   gets them: rhobeg 0.2 (= 0.2 max |theta0|), rhoend 2e-7 (= 1e-6 rhobeg). That stopping rule
   reaches lme4's criterion (default control, nloptwrap BOBYQA with xtol_abs = ftol_abs = 1e-8)
   to 1e-9 here; the bare fit, without the convergence checks of `workbench.fit.optimiser`.
   Next to it the same build + an L-BFGS-B fit with the exact gradient
   (`blocked.objective_and_gradient`, scalar terms), also from theta = 1 with theta >= 0
   (ftol 1e-12, gtol 1e-6), with its criterion minus Py-BOBYQA's.
   lme4's lmer() time in the same run: `Rscript benchmarks/bench_instEval_lme4.R 3 CSV` (lmer()
   alone on data in memory, default control, median of 3). Printed for each fit: both times,
   the ratio, both criteria and their difference.
2. A simulated crossed model, N = 1e6 rows, y ~ 1 + (1 | a) + (1 | b) with 1e5 x 1e3 levels,
   REML, from a data frame: our fit time (build + Terms.of + fit, median of 3) with its parts,
   and the peak memory: tracemalloc's peak over one further run (numpy's buffers included) and
   the process's maximum resident set size. lme4 on the same data (a temporary CSV, one
   lmer() run, 10-minute limit) only with --lme4-big.

Run: .venv/bin/python benchmarks/bench_crossed.py [--skip-lme4] [--lme4-big] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pybobyqa
import scipy.optimize as so

from workbench.fit.optimiser import serial_blas
from workbench.model import design
from workbench.objectives import blocked

ROOT = Path(__file__).resolve().parents[1]
INSTEVAL = ROOT / "tests" / "reference" / "crossed_data" / "insteval.csv.gz"
R_INSTEVAL = ROOT / "benchmarks" / "bench_instEval_lme4.R"
RHOBEG, RHOEND = 0.2, 2e-7  # minqa's bobyqa defaults from theta0 = 1 (lme4's "bobyqa")
R_BIG = """suppressMessages(library(lme4))
d <- read.csv("{csv}", colClasses = c("numeric", "character", "character"))
d$a <- factor(d$a); d$b <- factor(d$b)
t <- system.time(f <- lmer(y ~ 1 + (1 | a) + (1 | b), d))[["elapsed"]]
cat(t, format(REMLcrit(f), digits = 15), "\\n")"""


def codes_of(df: pd.DataFrame, factor: tuple[str, ...]) -> np.ndarray:
    """Level codes 0 .. n - 1 of a grouping factor, the interaction of its columns (levels: the
    combinations present)."""
    parts = [pd.factorize(df[c], sort=False)[0] for c in factor]
    codes = parts[0].astype(np.int64)
    for p in parts[1:]:
        codes = codes * (int(p.max()) + 1) + p
    return pd.factorize(codes, sort=False)[0].astype(np.int64)


def build(df: pd.DataFrame, lhs: str, fixed: str, factors, levels=None) -> blocked.Terms:
    """The data build and the theta-free products: X from `design.from_frame` on
    `lhs ~ fixed + (1 | first factor's column)`, random intercepts for `factors`."""
    d = design.from_frame(df, f"{lhs} ~ {fixed} + (1 | {factors[0][0]})", levels=levels)
    return blocked.Terms.of(d.y, d.X, [(codes_of(df, f), None) for f in factors])


def fit(terms: blocked.Terms, method: str):
    """Py-BOBYQA from theta = 1, theta >= 0 (random intercepts only): (theta, criterion, nf)."""
    k = terms.n_theta
    res = pybobyqa.solve(
        lambda th: blocked.objective(terms, th, method),
        np.ones(k),
        bounds=(np.zeros(k), np.full(k, 1e20)),
        rhobeg=RHOBEG,
        rhoend=RHOEND,
        maxfun=10_000,
        do_logging=False,
    )
    return res.x, float(res.f), int(res.nf)


def fit_lbfgsb(terms: blocked.Terms, method: str):
    """L-BFGS-B with the exact gradient (`blocked.objective_and_gradient`) from theta = 1,
    theta >= 0, ftol 1e-12 (relative reduction of the criterion), gtol 1e-6: (theta, criterion,
    evaluations, each one criterion and its gradient)."""
    k = terms.n_theta
    res = so.minimize(
        lambda th: blocked.objective_and_gradient(terms, th, method),
        np.ones(k),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * k,
        options={"ftol": 1e-12, "gtol": 1e-6, "maxiter": 1000},
    )
    return res.x, float(res.fun), int(res.nfev)


def run(df, lhs, fixed, factors, method, levels=None, fitter=fit):
    """One timed pass: (build + Terms.of seconds, fit seconds, theta in lme4's order, criterion,
    evaluations)."""
    with serial_blas():
        t0 = time.perf_counter()
        terms = build(df, lhs, fixed, factors, levels)
        t1 = time.perf_counter()
        theta, crit, nf = fitter(terms, method)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, terms.lme4_theta(theta), crit, nf


def lme4_insteval(reps: int) -> dict[str, dict]:
    if shutil.which("Rscript") is None:
        print("  lme4: no Rscript", file=sys.stderr)
        return {}
    out = subprocess.run(
        ["Rscript", str(R_INSTEVAL), str(reps), str(INSTEVAL)], capture_output=True, text=True
    )
    if out.returncode != 0:
        print("  lme4 failed:", out.stderr.strip().splitlines()[-1:], file=sys.stderr)
        return {}
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return {r["method"]: r for r in rows}


def insteval(args) -> None:
    t0 = time.perf_counter()
    df = pd.read_csv(INSTEVAL, dtype={c: str for c in ("service", "s", "d", "dept")})
    t_read = time.perf_counter() - t0
    factors = [("s",), ("d",), ("dept", "service")]
    formula = "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)"
    print(f"InstEval {formula}, N = {len(df)} (CSV read {t_read:.2f} s, not counted)")
    lme4 = {} if args.skip_lme4 else lme4_insteval(args.repeats)
    for method in ("reml", "ml"):
        bobyqa_crit = None
        for label, fitter in (("Py-BOBYQA", fit), ("L-BFGS-B + gradient", fit_lbfgsb)):
            runs = [
                run(df, "y", "1 + service", factors, method, {"service": ["0", "1"]}, fitter)
                for _ in range(args.repeats)
            ]
            totals = [b + f for b, f, *_ in runs]
            i = int(np.argsort(totals)[len(totals) // 2])
            t_build, t_fit, theta, crit, nf = runs[i]
            total = totals[i]
            vs = "" if bobyqa_crit is None else f"; minus Py-BOBYQA's {crit - bobyqa_crit:+.2e}"
            bobyqa_crit = crit if bobyqa_crit is None else bobyqa_crit
            print(
                f"  {method.upper():4} ours, {label}: median {total:.2f} s (build + Terms.of "
                f"{t_build:.2f} s, fit {t_fit:.2f} s, {nf} evaluations, "
                f"{t_fit / nf * 1e3:.1f} ms each); criterion {crit:.9f}{vs}, "
                f"theta {np.array2string(theta, precision=6)}"
            )
            r = lme4.get(method)
            if r:
                print(
                    f"       lme4 lmer(): median {r['seconds']:.2f} s ({r['feval']} evaluations) "
                    f"-> ours {r['seconds'] / total:.1f}x faster; criterion "
                    f"{r['objective']:.9f}, ours - lme4 {crit - r['objective']:+.2e}, "
                    f"theta {np.array2string(np.array(r['theta']), precision=6)}"
                )


def big(args) -> None:
    rng = np.random.default_rng(20261121)
    N, na, nb = 1_000_000, 100_000, 1_000
    a = rng.integers(0, na, N)
    b = rng.integers(0, nb, N)
    y = 1.0 + rng.standard_normal(na)[a] + 0.5 * rng.standard_normal(nb)[b]
    y += rng.standard_normal(N)
    df = pd.DataFrame({"y": y, "a": a, "b": b})
    factors = [("a",), ("b",)]
    formula = "y ~ 1 + (1 | a) + (1 | b)"
    runs = [run(df, "y", "1", factors, "reml") for _ in range(args.repeats)]
    totals = [bb + f for bb, f, *_ in runs]
    i = int(np.argsort(totals)[len(totals) // 2])
    t_build, t_fit, theta, crit, nf = runs[i]
    tracemalloc.start()
    run(df, "y", "1", factors, "reml")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"Simulated {formula}, N = {N:.0e}, {len(np.unique(a))} x {len(np.unique(b))} levels, "
        f"REML: median {totals[i]:.2f} s (build + Terms.of {t_build:.2f} s, fit {t_fit:.2f} s, "
        f"{nf} evaluations); criterion {crit:.6f}, theta {np.array2string(theta, precision=6)}"
    )
    print(
        f"  peak memory: tracemalloc {peak / 2**20:.0f} MiB over build + fit (data frame "
        f"{df.memory_usage().sum() / 2**20:.0f} MiB not counted); process max RSS {rss:.0f} MiB"
    )
    if not args.lme4_big or shutil.which("Rscript") is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        df.to_csv(path, index=False)
        try:
            out = subprocess.run(
                ["Rscript", "-e", R_BIG.format(csv=path)],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            print("  lme4 lmer(): no result in 10 minutes")
            return
    if out.returncode != 0:
        print("  lme4 failed:", out.stderr.strip().splitlines()[-1:], file=sys.stderr)
        return
    secs, lcrit = map(float, out.stdout.split())
    print(
        f"  lme4 lmer(): {secs:.1f} s -> ours {secs / totals[i]:.1f}x faster; criterion "
        f"{lcrit:.6f}, ours - lme4 {crit - lcrit:+.2e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-lme4", action="store_true", help="no lme4 run on InstEval")
    ap.add_argument("--lme4-big", action="store_true", help="lme4 on the 1e6-row model too")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    insteval(args)
    big(args)


if __name__ == "__main__":
    main()
