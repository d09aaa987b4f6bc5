"""Benchmarks of issue 11 (several grouping factors, `workbench.objectives.blocked`), printing
figures (not a test). Every time is given as wall-clock and as CPU time of the process (the
machine is shared: CPU time is the steadier of the two); ours and lme4's come from the same run.

1. A simulated crossed model, N = 1e6 rows, y ~ 1 + (1 | a) + (1 | b) with 1e5 x 1e3 levels,
   REML, run first so that the process's peak resident set size (resource.getrusage) is its
   own: the EB fit = data build (X by `design.from_frame`, level codes) + `blocked.Terms.of` +
   the L-BFGS-B fit below + `blocked.solve` + the conditional covariances (everything the EB
   record needs), median of --repeats-big runs. lme4's lmer() on the same data (a temporary
   CSV, one run), stopped at 10 minutes.
2. InstEval (73,421 rows), y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service), REML (and
   ML with --ml), from tests/reference/crossed_data/insteval.csv.gz (the read is not counted):
   ours = data build + `blocked.Terms.of` + L-BFGS-B with the exact gradient
   (`blocked.objective_and_gradient`) from theta = 1 (lme4's start), theta >= 0, ftol 1e-12,
   gtol 1e-6, then a check (the end point's projected gradient, from the optimiser's evaluation
   there), median of --repeats, BLAS on one thread (`serial_blas`, as the product's optimiser
   runs); next to it the same fit run first on log(theta) (`fit_log`: fewer evaluations on an
   interior optimum, more on one at theta = 0).
   lme4: `Rscript benchmarks/bench_instEval_lme4.R REPEATS CSV METHOD` (lmer() alone on data in
   memory, default control). Printed: both times, the ratio, both criteria, their difference
   relative to lme4's and whether ours is within 1e-6 of it and not worse. Then, for reference,
   the product route (`design.from_frame` + `eb.fit`: lme4's starts, L-BFGS-B descents and the
   convergence checks of `workbench.fit.optimiser`), one run; with --bobyqa also a Py-BOBYQA
   fit of the criterion (rhobeg 0.2, rhoend 2e-7: minqa's bobyqa defaults from theta = 1).

Run: .venv/bin/python benchmarks/bench_crossed.py [--skip-lme4] [--ml] [--bobyqa]
     [--repeats N] [--repeats-big N] [--skip-big]
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pybobyqa
import scipy.optimize as so

from workbench.fit import eb
from workbench.fit.optimiser import serial_blas
from workbench.model import design
from workbench.objectives import blocked

ROOT = Path(__file__).resolve().parents[1]
INSTEVAL = ROOT / "tests" / "reference" / "crossed_data" / "insteval.csv.gz"
R_INSTEVAL = ROOT / "benchmarks" / "bench_instEval_lme4.R"
INSTEVAL_FORMULA = "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)"
RHOBEG, RHOEND = 0.2, 2e-7  # minqa's bobyqa defaults from theta0 = 1 (lme4's "bobyqa")
LME4_LIMIT_S = 600
R_BIG = """suppressMessages(library(lme4))
d <- read.csv("{csv}", colClasses = c("numeric", "character", "character"))
d$a <- factor(d$a); d$b <- factor(d$b)
st <- system.time(f <- lmer(y ~ 1 + (1 | a) + (1 | b), d))
cat(st[["elapsed"]], st[["user.self"]] + st[["sys.self"]], format(REMLcrit(f), digits = 15),
    "\\n")"""


@dataclass(frozen=True)
class Run:
    """One timed pass of ours."""

    build_s: float  # data build + Terms.of, wall
    fit_s: float  # the fit and its check (and, for the EB fit, solve + covariances), wall
    cpu_s: float  # the whole pass, CPU time of the process
    theta: np.ndarray  # lme4's order
    criterion: float
    n_evals: int
    projected_gradient: float

    @property
    def total_s(self) -> float:
        return self.build_s + self.fit_s


def codes_of(df: pd.DataFrame, factor: tuple[str, ...]) -> np.ndarray:
    """Level codes 0 .. n - 1 of a grouping factor, the interaction of its columns (levels: the
    combinations present)."""
    parts = [pd.factorize(df[c], sort=False)[0] for c in factor]
    codes = parts[0].astype(np.int64)
    for p in parts[1:]:
        codes = codes * (int(p.max()) + 1) + p
    return pd.factorize(codes, sort=False)[0].astype(np.int64)


def build(df: pd.DataFrame, lhs: str, fixed: str, factors) -> blocked.Terms:
    """The data build and the theta-free products: X from `design.from_frame` on
    `lhs ~ fixed + (1 | first factor's column)` (sorted levels: service's reference is "0", as
    in lme4's fit), random intercepts for `factors`."""
    d = design.from_frame(df, f"{lhs} ~ {fixed} + (1 | {factors[0][0]})")
    return blocked.Terms.of(d.y, d.X, [(codes_of(df, f), None) for f in factors])


class Criterion:
    """`blocked.objective_and_gradient` at theta, counted, remembering the points seen (so that
    the check at the end point reuses the optimiser's evaluation there)."""

    def __init__(self, terms: blocked.Terms, method: str):
        self.terms, self.method, self.seen, self.n = terms, method, {}, 0

    def __call__(self, theta) -> tuple[float, np.ndarray]:
        key = np.asarray(theta, float).tobytes()
        if key not in self.seen:
            self.n += 1
            self.seen[key] = blocked.objective_and_gradient(self.terms, theta, self.method)
        return self.seen[key]

    def check(self, theta: np.ndarray) -> tuple[float, float]:
        """The criterion at the end point and its largest projected gradient element (|g_i|
        where theta_i > 0, max(-g_i, 0) on the bound theta_i = 0)."""
        value, grad = self(theta)
        return value, float(np.where(theta > 0, np.abs(grad), np.maximum(-grad, 0.0)).max())


def _lbfgsb(fg, x0: np.ndarray, lower: float) -> np.ndarray:
    res = so.minimize(
        fg,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(lower, None)] * x0.size,
        options={"ftol": 1e-12, "gtol": 1e-6, "maxiter": 1000},
    )
    return res.x


def fit_lbfgsb(terms: blocked.Terms, method: str):
    """L-BFGS-B with the exact gradient from theta = 1, theta >= 0, ftol 1e-12 (relative
    reduction of the criterion), gtol 1e-6, then the check: (theta, criterion, evaluations,
    projected gradient)."""
    crit = Criterion(terms, method)
    theta = _lbfgsb(crit, np.ones(terms.n_theta), 0.0)
    value, pg = crit.check(theta)
    return theta, value, crit.n, pg


LOG_FLOOR = 1e-4


def fit_log(terms: blocked.Terms, method: str):
    """As `fit_lbfgsb`, but first on z = log(theta) from z = 0 with z >= log(1e-4) (the
    criterion is closer to quadratic there), then on theta >= 0 only where some theta ended on
    that floor."""
    crit = Criterion(terms, method)

    def on_log(z):
        value, grad = crit(np.exp(z))
        return value, grad * np.exp(z)

    theta = np.exp(_lbfgsb(on_log, np.zeros(terms.n_theta), float(np.log(LOG_FLOOR))))
    if np.any(theta <= LOG_FLOOR * (1 + 1e-9)):
        theta = _lbfgsb(crit, theta, 0.0)
    value, pg = crit.check(theta)
    return theta, value, crit.n, pg


def fit_bobyqa(terms: blocked.Terms, method: str):
    """Py-BOBYQA from theta = 1, theta >= 0, then the check (one evaluation with the
    gradient)."""
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
    value, pg = Criterion(terms, method).check(res.x)
    return res.x, value, int(res.nf) + 1, pg


def run(df, lhs, fixed, factors, method, fitter=fit_lbfgsb, eb_record=False) -> Run:
    """One timed pass; with `eb_record` also `solve` and the conditional covariances."""
    with serial_blas():
        c0, t0 = time.process_time(), time.perf_counter()
        terms = build(df, lhs, fixed, factors)
        t1 = time.perf_counter()
        theta, crit, nf, pg = fitter(terms, method)
        if eb_record:
            sol = blocked.solve(terms, theta)
            covs = sol.conditional_covariances()
            assert all(np.all(np.isfinite(c)) for c in covs) and np.isfinite(sol.beta).all()
        t2, c2 = time.perf_counter(), time.process_time()
    return Run(t1 - t0, t2 - t1, c2 - c0, terms.lme4_theta(theta), crit, nf, pg)


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.total_s)[len(runs) // 2]


def describe(r: Run) -> str:
    return (
        f"{r.total_s:.2f} s wall, {r.cpu_s:.2f} s CPU (build + Terms.of {r.build_s:.2f} s, fit "
        f"{r.fit_s:.2f} s: {r.n_evals} evaluations, {r.fit_s / r.n_evals * 1e3:.0f} ms each); "
        f"criterion {r.criterion:.9f}, projected gradient {r.projected_gradient:.1e}, "
        f"theta {np.array2string(r.theta, precision=6)}"
    )


def lme4_insteval(reps: int, method: str) -> dict | None:
    if shutil.which("Rscript") is None:
        print("  lme4: no Rscript", file=sys.stderr)
        return None
    out = subprocess.run(
        ["Rscript", str(R_INSTEVAL), str(reps), str(INSTEVAL), method],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        print("  lme4 failed:", out.stderr.strip().splitlines()[-1:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def insteval(args) -> None:
    t0 = time.perf_counter()
    df = pd.read_csv(INSTEVAL, dtype={c: str for c in ("service", "s", "d", "dept")})
    t_read = time.perf_counter() - t0
    factors = [("s",), ("d",), ("dept", "service")]
    print(f"InstEval {INSTEVAL_FORMULA}, N = {len(df)} (CSV read {t_read:.2f} s, not counted)")
    for method in ("reml", "ml") if args.ml else ("reml",):
        name = method.upper()
        fitters = (("L-BFGS-B + gradient", fit_lbfgsb), ("the same on log theta", fit_log))
        ours = {}
        for label, fitter in fitters:
            runs = [
                run(df, "y", "1 + service", factors, method, fitter) for _ in range(args.repeats)
            ]
            ours[label] = median_run(runs)
            print(f"  {name} ours, {label}, median of {len(runs)}: {describe(ours[label])}")
        r = None if args.skip_lme4 else lme4_insteval(args.repeats, method)
        if r:
            print(
                f"  {name} lme4 lmer(), median of {len(r['runs'])}: {r['seconds']:.2f} s wall, "
                f"{r['cpu']:.2f} s CPU ({r['feval']} evaluations); criterion "
                f"{r['objective']:.9f}, theta {np.array2string(np.array(r['theta']), precision=6)}"
            )
            for label, o in ours.items():
                diff = o.criterion - r["objective"]
                rel = diff / abs(r["objective"])
                verdict = "ok" if abs(rel) <= 1e-6 and diff <= 0.0 else "NOT ok"
                print(
                    f"  {name} ours ({label}) {r['seconds'] / o.total_s:.1f}x faster (wall), "
                    f"{r['cpu'] / o.cpu_s:.1f}x (CPU); ours - lme4 = {diff:+.2e} "
                    f"({rel:+.1e} relative): {verdict} (within 1e-6 relative, not worse)"
                )
        if args.bobyqa:
            b = median_run(
                [
                    run(df, "y", "1 + service", factors, method, fit_bobyqa)
                    for _ in range(args.repeats)
                ]
            )
            print(f"  {name} ours, Py-BOBYQA (no gradient): {describe(b)}")
        with serial_blas():
            c0, t0 = time.process_time(), time.perf_counter()
            fit = eb.fit(design.from_frame(df, INSTEVAL_FORMULA), method)
            t1, c1 = time.perf_counter(), time.process_time()
        print(
            f"  {name} product route (from_frame + eb.fit, lme4's starts and the checks), one "
            f"run: {t1 - t0:.2f} s wall, {c1 - c0:.2f} s CPU ({fit.optimum.n_evals} "
            f"evaluations, converged {fit.optimum.converged}); criterion {fit.objective:.9f}"
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
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    runs = [run(df, "y", "1", factors, "reml", eb_record=True) for _ in range(args.repeats_big)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = median_run(runs)
    verdict = "within" if r.total_s <= 30.0 else "OVER"
    print(
        f"Simulated {formula}, N = {N:.0e}, {len(np.unique(a))} x {len(np.unique(b))} levels, "
        f"REML EB fit (+ solve + conditional covariances), median of {len(runs)}: "
        f"{describe(r)}; {verdict} the 30 s target"
    )
    print(
        f"  peak memory (getrusage max RSS of this process): {rss:.0f} MiB; before the fits "
        f"{rss0:.0f} MiB (Python, libraries and the {df.memory_usage().sum() / 2**20:.0f} MiB "
        f"data frame)"
    )
    if args.skip_lme4 or shutil.which("Rscript") is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        df.to_csv(path, index=False)
        try:
            out = subprocess.run(
                ["Rscript", "-e", R_BIG.format(csv=path)],
                capture_output=True,
                text=True,
                timeout=LME4_LIMIT_S,
            )
        except subprocess.TimeoutExpired:
            print(f"  lme4 lmer(): stopped at {LME4_LIMIT_S // 60} minutes, no result")
            return
    if out.returncode != 0:
        print("  lme4 failed:", out.stderr.strip().splitlines()[-1:], file=sys.stderr)
        return
    secs, cpu, lcrit = map(float, out.stdout.split())
    diff = r.criterion - lcrit
    print(
        f"  lme4 lmer(): {secs:.1f} s wall, {cpu:.1f} s CPU -> ours {secs / r.total_s:.1f}x "
        f"faster (wall), {cpu / r.cpu_s:.1f}x (CPU); criterion {lcrit:.6f}, ours - lme4 "
        f"{diff:+.2e} ({diff / abs(lcrit):+.1e} relative)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-lme4", action="store_true", help="no lme4 runs")
    ap.add_argument("--skip-big", action="store_true", help="no 1e6-row model")
    ap.add_argument("--ml", action="store_true", help="InstEval by ML too")
    ap.add_argument("--bobyqa", action="store_true", help="InstEval by Py-BOBYQA too")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-big", type=int, default=1)
    args = ap.parse_args()
    if not args.skip_big:
        big(args)
    insteval(args)


if __name__ == "__main__":
    main()
