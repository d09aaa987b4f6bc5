"""Where every estimator puts sigma and tau, on every scale, beside the exact marginal modes of
the one-way posterior (issue 12): runs a case file's comparison as `workbench run` does (same
settings, MCMC included; nothing written), then prints one row per scale (sigma, sigma^2,
log sigma, tau, tau^2, log tau) with the exact marginal mode (and tau^2's interior local
mode), mean and median, EB-ML, EB-REML, every interior joint MAP variant, and the MCMC draws'
half-sample mode (ArviZ) and KDE mode (scipy's Gaussian KDE on that scale, maximised on a
fine grid). Not a test.

Run: .venv/bin/python benchmarks/exact_modes.py models/small_groups.toml
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

import workbench
from workbench.casefile import load_case
from workbench.fit.exact_oneway import SCALES, on_scale
from workbench.present.curves import JOINT_LABELS, interior, mode


def _fmt(v: float | None) -> str:
    """A value on a scale; the log of a zero SD is -inf."""
    return "-inf" if v is None else f"{v:.6g}"


def kde_mode(draws: np.ndarray) -> float:
    """The maximum of scipy's Gaussian KDE of the draws on a grid of 4001 points over their
    0.1%-99.9% range (KDE's own bias included: that is what a KDE mode reports)."""
    lo, hi = np.quantile(draws, [0.001, 0.999])
    grid = np.linspace(lo, hi, 4001)
    return float(grid[np.argmax(stats.gaussian_kde(draws)(grid))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", help="a one-way case file, e.g. models/small_groups.toml")
    args = ap.parse_args()
    case = load_case(args.case)
    t0 = time.perf_counter()
    c = workbench.compare(case.data_path, case.y, case.group, **case.compare_kwargs)
    print(f"{args.case}: compare {time.perf_counter() - t0:.1f} s; timings {c.timings}")
    e = c.exact_posterior
    if e is None:
        raise SystemExit("no exact posterior: a one-way model run with priors is needed")
    print(f"exact posterior: {e.method}")
    cols = ["exact mode", "exact mean", "exact median", "EB-ML", "EB-REML"]
    joints = [k for k in JOINT_LABELS if interior(c.joint_maps.get(k))]
    cols += [JOINT_LABELS[k] for k in joints]
    cols += ["MCMC half-sample mode", "MCMC KDE mode"] if c.mcmc is not None else []
    print("\t".join(["scale", *cols]))
    for name, (axis, power) in SCALES.items():
        var = ("sigma", "tau")[axis]
        s = e.summaries[name]
        mode_txt = f"{s.mode:.6g}" + (
            f" (boundary; local {s.local_mode:.6g})" if s.boundary and s.local_mode else ""
        )
        row = [mode_txt, f"{s.mean:.6g}", f"{s.median:.6g}"]
        for fit in (c.eb_ml, c.eb_reml):
            v = fit.G[0, 0] if var == "tau" else fit.sigma2
            row.append(_fmt(on_scale(float(v), power)))
        for k in joints:
            r = c.joint_maps[k]
            v = r.G[0, 0] if var == "tau" else r.sigma2
            row.append(_fmt(on_scale(float(v), power)))
        if c.mcmc is not None:
            d = np.asarray(c.mcmc.draws(var), float).reshape(-1)
            d = d[d > 0]
            x = d**power if power else np.log(d)
            row += [f"{mode(x):.6g}", f"{kde_mode(x):.6g}"]
        print("\t".join([name, *row]))


if __name__ == "__main__":
    main()
