"""Same seed, same draws with a cold and a warm PyTensor cache, and what a cold cache costs.

A tiny collapsed fit of Dyestuff (`y ~ 1 + (1 | Batch)`, 2 chains x 30 draws, seed 5) runs in
a fresh process three times: with an empty compile directory (`PYTENSOR_FLAGS=
base_compiledir=<tmp>`: numba compiles the model's log density and its draws' expansion from
scratch), again with that directory (now warm), and with the usual cache. The draws (sigma, sd,
beta, b) must be bit-identical (the numba mode's fast-math once made cold and cached code round
differently); the wall time of each process is printed. Exits 1 when the draws differ.

This is `tests/test_collapsed.py`'s cross-process check with a cold cache; it is a benchmark
because a cold compile takes 40 to 60 s of CPU on the 2-core machine.

Run: .venv/bin/python benchmarks/bench_cache.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "models" / "data" / "dyestuff.csv"
SCRIPT = """
import sys, numpy as np, pandas as pd
from workbench.fit import mcmc
from workbench.model import design
from workbench.model.priors import make_priors
d = design.from_frame(pd.read_csv(sys.argv[1]), "Yield ~ 1 + (1 | Batch)")
post = mcmc.fit(d, make_priors(d, {}), mcmc.McmcSettings(chains=2, draws=30, tune=30, seed=5))
p = post.idata.posterior
draws = [np.asarray(p[v]).reshape(2, 30, -1) for v in ("sigma", "sd", "beta", "b")]
np.save(sys.argv[2], np.concatenate(draws, axis=-1))
"""


def run(out: Path, compiledir: Path | None) -> tuple[float, np.ndarray]:
    """Wall seconds of one process and its draws."""
    env = dict(os.environ)
    if compiledir is not None:
        env["PYTENSOR_FLAGS"] = f"base_compiledir={compiledir}"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(DATA), str(out)],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    return time.perf_counter() - t0, np.load(out)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "pytensor"
        runs = {
            "cold (empty compile dir)": run(tmp / "cold.npy", cache),
            "warm (same dir again)": run(tmp / "warm.npy", cache),
            "usual cache": run(tmp / "usual.npy", None),
        }
    ref = runs["cold (empty compile dir)"][1]
    ok = True
    for name, (wall, draws) in runs.items():
        same = draws.shape == ref.shape and np.array_equal(draws, ref)
        ok &= same
        print(f"{name:26s} {wall:6.1f} s  draws {'identical' if same else 'DIFFER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
