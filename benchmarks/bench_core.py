"""Benchmarks of issue 2, printing figures (not a test):

1. EB-ML from arrays, N = 1e6 rows, m = 1e4 groups: median wall time (sufficient statistics,
   ML fit, standard errors, conditional modes; and separately with the profile intervals),
   against statsmodels MixedLM on the same data in the same run.
2. The 16-start joint MAP (centered h-likelihood) on the same data, all cores.
3. `workbench compare` on Dyestuff with MCMC (4 chains x 1000 draws), wall time of the whole
   command, once to warm the compile cache and then timed.

Run: .venv/bin/python benchmarks/bench_core.py [--skip-statsmodels]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from common import command_wall, timed

from workbench.fit import eb, joint_map
from workbench.fit.profile import profile
from workbench.model.data import from_arrays
from workbench.model.design import from_grouped

ROOT = Path(__file__).resolve().parents[1]


def simulate(n_rows=1_000_000, m=10_000, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, m, n_rows)
    y = 10.0 + 2.0 * rng.standard_normal(m)[g] + 3.0 * rng.standard_normal(n_rows)
    return y, g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-statsmodels", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    y, g = simulate()

    def fit_ml(intervals=False):
        d = from_grouped(from_arrays(y, g))  # the one model record (one-way: its kernels)
        fit = eb.fit(d, "ml")
        if intervals:
            profile(fit)
        return fit

    fit_ml()
    t_ml, res = timed(fit_ml, 9)
    t_ml_ci, _ = timed(lambda: fit_ml(True), 5)
    print(
        f"[1] EB-ML N=1e6 m=1e4 from arrays: median {t_ml * 1e3:.1f} ms "
        f"(with profile intervals {t_ml_ci * 1e3:.1f} ms); sigma2={res.sigma2:.5f} "
        f"tau2={res.tau2:.5f} (truth 9, 4)"
    )
    if not args.skip_statsmodels:
        import statsmodels.api as sm

        t0 = time.perf_counter()
        sm_res = sm.MixedLM(y, np.ones((y.size, 1)), groups=g).fit(reml=False)
        t_sm = time.perf_counter() - t0
        print(
            f"    statsmodels MixedLM (ML) same data: {t_sm:.2f} s; sigma2={sm_res.scale:.5f} "
            f"tau2={float(np.asarray(sm_res.cov_re)[0, 0]):.5f}"
        )
        print(
            f"    speed-up: {t_sm / t_ml:.0f}x (target >= 100x), median <= 50 ms: "
            f"{'yes' if t_ml <= 0.05 else 'NO'}"
        )

    d = res.data

    def jm():
        return joint_map.fit(
            d, res, parametrization="centered", priors=None, n_starts=16, seed=0, n_jobs=-1
        )

    jm()  # start the worker pool
    t_jm, r = timed(jm, 3)
    print(
        f"[2] joint MAP, 16 starts, centered h-likelihood, all cores: median {t_jm:.2f} s "
        f"(target <= 2 s); status {r.status}, starts {r.counts()}"
        + (f", sigma2 ratio to ML {r.sigma2 / res.sigma2:.4f}" if r.best else "")
    )

    cmd = [
        str(Path(sys.executable).parent / "workbench"),
        "compare",
        str(ROOT / "models" / "data" / "dyestuff.csv"),
        "--y",
        "Yield",
        "--group",
        "Batch",
        "--chains",
        "4",
        "--draws",
        "1000",
        "--tune",
        "1000",
        "--quiet",
    ]
    wall = command_wall(cmd, 3)  # the first, untimed run warms the compile cache
    print(
        f"[3] workbench compare dyestuff with MCMC 4x1000, warm cache: median "
        f"{wall:.2f} s wall over 3 runs (target <= 20 s)"
    )


if __name__ == "__main__":
    main()
