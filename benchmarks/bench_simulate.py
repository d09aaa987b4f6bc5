"""Simulation-study speed (issue 4): 1000 replicates x (EB-ML, EB-REML, 16-start centered joint
MAP) for m = 30 groups of 2 to 8 observations; target <= 60 s with 2 workers. Prints replicates
per second for 1 worker (on 100 replicates) and 2 workers (on the full 1000).

Run: .venv/bin/python benchmarks/bench_simulate.py
"""

from __future__ import annotations

import os
import tempfile
import time

from workbench.simulate import Study, run_study


def study(replicates: int) -> Study:
    return Study(
        name="bench",
        grid={"m": [30], "group_sizes": ["2-8"], "mu": [0.0], "sigma": [1.0], "tau": [1.0]},
        replicates=replicates,
        methods=("eb-ml", "eb-reml", "joint-map:centered"),
        seed=1,
        n_starts=16,
    )


def timed(replicates: int, n_jobs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_study(study(replicates), tmp, n_jobs=n_jobs, progress=False)
        return time.perf_counter() - t0


def main() -> None:
    print(f"machine: {os.cpu_count()} cores")
    t1 = timed(100, 1)
    print(f"1 worker : 100 replicates in {t1:.1f} s -> {100 / t1:.1f} replicates/s")
    t2 = timed(1000, 2)
    print(
        f"2 workers: 1000 replicates in {t2:.1f} s -> {1000 / t2:.1f} replicates/s "
        f"(target <= 60 s: {'yes' if t2 <= 60 else 'NO'})"
    )


if __name__ == "__main__":
    main()
