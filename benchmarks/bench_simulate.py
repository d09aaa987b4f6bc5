"""Simulation-study speed (issue 4, issue 10): every replicate runs `workbench.compare`.

* one-way: 1000 replicates x (EB-ML, EB-REML, 16-start centered joint MAP) for m = 30 groups of
  2 to 8 observations; target <= 60 s with 2 workers. Prints replicates per second for 1 worker
  (on 100 replicates) and 2 workers (on the full 1000).
* random slopes (`models/sim_slopes.toml`'s model, its first setting): seconds per replicate for
  1 worker on 10 replicates.

Run: .venv/bin/python benchmarks/bench_simulate.py
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

from workbench.simulate import Study, load_study, run_study

ROOT = Path(__file__).resolve().parent.parent


def oneway(replicates: int) -> Study:
    return Study(
        name="bench",
        grid={"m": [30], "group_sizes": ["2-8"], "mu": [0.0], "sigma": [1.0], "tau": [1.0]},
        replicates=replicates,
        methods=("eb-ml", "eb-reml", "joint-map:centered"),
        seed=1,
        n_starts=16,
    )


def slopes(replicates: int) -> Study:
    study = load_study(ROOT / "models" / "sim_slopes.toml")
    grid = {k: v[:1] for k, v in study.grid.items()}  # the first setting
    return dataclasses.replace(study, grid=grid, replicates=replicates)


def timed(study: Study, n_jobs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_study(study, tmp, n_jobs=n_jobs, progress=False)
        return time.perf_counter() - t0


def main() -> None:
    print(f"machine: {os.cpu_count()} cores")
    t1 = timed(oneway(100), 1)
    print(f"one-way, 1 worker : 100 replicates in {t1:.1f} s -> {100 / t1:.1f} replicates/s")
    t2 = timed(oneway(1000), 2)
    print(
        f"one-way, 2 workers: 1000 replicates in {t2:.1f} s -> {1000 / t2:.1f} replicates/s "
        f"(target <= 60 s: {'yes' if t2 <= 60 else 'NO'})"
    )
    t3 = timed(slopes(10), 1)
    print(f"slopes,  1 worker : 10 replicates in {t3:.1f} s -> {t3 / 10:.2f} s per replicate")


if __name__ == "__main__":
    main()
