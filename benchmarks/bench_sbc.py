"""Simulation-based calibration (Talts et al. 2018) of the default MCMC sampler, the collapsed
one (issue 12): `workbench.simulate.sbc` draws every parameter from fixed priors, simulates y,
samples the posterior and ranks each true value among L = 99 thinned draws; ranks are uniform
if the sampler is exact. Per parameter: Pearson's chi-square on B bins and the simultaneous ECDF
test (Saeilynoja et al. 2022), each at 1%; the figure shows the rank histograms (99% pointwise
band) and the ECDF differences (99% simultaneous band); the truths and thinned draws go to
an .npz beside it.

* oneway: y ~ 1 + (1 | g), 8 groups of 2 .. 10 rows; mu ~ N(0, 2), sigma, tau ~ HalfNormal(1);
  500 replicates of 2 chains x 500 draws (300 tuning).
* slope: y ~ x + (1 + x | g), 10 groups x 6 rows, x ~ N(0, 1); beta ~ N(0, 2), sigma, SDs ~
  HalfNormal(1), correlation LKJ(2); 200 replicates of 2 chains x 1000 draws (300 tuning).

Run: .venv/bin/python benchmarks/bench_sbc.py [--model oneway|slope|both] [--replicates R]
     [--seed S] [--out reports/sbc.png]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from workbench.simulate import sbc

ALPHA = 0.01
SAVED = ("truths", "draws", "min_ess", "divergences")
DEFAULTS = {  # replicates, draws per chain
    "oneway": (500, 500),
    "slope": (200, 1000),
}


def bins_for(replicates: int, L: int) -> int:
    """The most bins (dividing L + 1, at most 20) with at least 10 expected ranks each."""
    return max(b for b in (2, 4, 5, 10, 20) if (L + 1) % b == 0 and replicates / b >= 10)


def run_model(name: str, args) -> dict:
    replicates, draws = DEFAULTS[name]
    replicates = args.replicates or replicates
    settings = replace(sbc.SbcSettings(), draws=args.draws or draws, chains=args.chains)
    design = sbc.DESIGNS[name]()
    t0 = time.perf_counter()

    def progress(i):
        if (i + 1) % 50 == 0 or i + 1 == replicates:
            print(f"  {name}: {i + 1}/{replicates}  {time.perf_counter() - t0:6.0f} s", flush=True)

    result = sbc.run(design, replicates, seed=args.seed, settings=settings, progress=progress)
    wall = time.perf_counter() - t0
    bins = bins_for(replicates, settings.L)
    tests = sbc.uniformity(result, bins)
    return {"name": name, "result": result, "tests": tests, "bins": bins, "wall": wall}


def print_table(runs: list[dict]) -> None:
    print(f"\n{'model':8} {'parameter':22} {'chi2 p':>8} {'ECDF p':>8}  result (1%)")
    for run in runs:
        for t in run["tests"]:
            ok = min(t["chi2_p"], t["ecdf_p"]) >= ALPHA
            print(
                f"{run['name']:8} {t['param']:22} {t['chi2_p']:8.3f} {t['ecdf_p']:8.3f}  "
                f"{'pass' if ok else 'FAIL'}"
            )
    for run in runs:
        res, s = run["result"], run["result"].settings
        R = len(res.truths)
        print(
            f"{run['name']}: {R} replicates, {s.chains} chains x {s.draws} draws ({s.tune} "
            f"tuning), L = {s.L}, chi-square on {run['bins']} bins; wall {run['wall']:.0f} s "
            f"({run['wall'] / R:.2f} s per replicate); smallest bulk ESS median "
            f"{np.median(res.min_ess):.0f}, below L in {np.sum(res.min_ess < s.L)} replicates; "
            f"divergences in {np.sum(res.divergences > 0)} replicates"
        )


def plot(runs: list[dict], path: Path) -> None:
    """Per model two rows: rank histograms with the 99% pointwise binomial band of a bin's
    count, and ECDF - uniform CDF with the 99% simultaneous band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    ncol = max(len(r["result"].params) for r in runs)
    fig, axes = plt.subplots(
        2 * len(runs), ncol, figsize=(2.3 * ncol, 4.4 * len(runs)), squeeze=False
    )
    for m, run in enumerate(runs):
        res, bins, L = run["result"], run["bins"], run["result"].settings.L
        ranks, R = res.ranks(), len(res.truths)
        z, lo, hi = sbc.ecdf_band(R, L, ALPHA)
        lo_bin, hi_bin = stats.binom.ppf([ALPHA / 2, 1 - ALPHA / 2], R, 1 / bins)
        for k, name in enumerate(res.params):
            t = run["tests"][k]
            ax = axes[2 * m, k]
            ax.axhspan(lo_bin, hi_bin, color="0.88")
            ax.hist(ranks[:, k], bins=np.linspace(0, L + 1, bins + 1), color="C0")
            ax.set_title(f"{run['name']}: {name}", fontsize=8)
            ax.set_yticks([])
            ax.set_xlabel(f"rank (chi2 p={t['chi2_p']:.2f})", fontsize=7)
            ax = axes[2 * m + 1, k]
            ecdf = np.mean(ranks[:, k][:, None] < np.arange(1, L + 1), axis=0)
            ax.fill_between(z, lo - z, hi - z, color="0.88", step="mid")
            ax.plot(z, ecdf - z, color="C3", lw=1)
            ax.axhline(0, color="0.5", lw=0.5)
            ax.set_xlabel(f"rank / (L+1) (ECDF p={t['ecdf_p']:.2f})", fontsize=7)
            ax.tick_params(labelsize=6)
        for k in range(len(res.params), ncol):
            axes[2 * m, k].axis("off")
            axes[2 * m + 1, k].axis("off")
    fig.suptitle(
        "SBC of the collapsed sampler: rank histograms and ECDF differences (grey: 99% bands)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("oneway", "slope", "both"), default="both")
    ap.add_argument("--replicates", type=int, help="default 500 (oneway), 200 (slope)")
    ap.add_argument("--draws", type=int, help="per chain; default 500 (oneway), 1000 (slope)")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("reports/sbc.png"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    models = ("oneway", "slope") if args.model == "both" else (args.model,)
    runs = [run_model(name, args) for name in models]
    print_table(runs)
    plot(runs, args.out)
    arrays = args.out.with_suffix(".npz")
    np.savez_compressed(
        arrays,
        **{f"{r['name']}_{k}": getattr(r["result"], k) for r in runs for k in SAVED},
        **{f"{r['name']}_params": np.array(r["result"].params) for r in runs},
    )
    print(f"figure: {args.out}; truths, thinned draws, ESS, divergences: {arrays}")
    print(f"wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
