"""Benchmark of issue 12: the collapsed sampler against the full (non-centered) model, ESS per
second of every random-effect SD (tau) and wall times, both in the same run, on shipped cases.

For each case file (its data, formula, priors and MCMC settings) and each MCMC model, one
process-local run of `workbench.fit.mcmc.fit`'s stages, timed separately:

* start: PyMC model built -> sampler ready (`nuts.compile_model`: graph rewrites and the compiled
  code loaded from PyTensor's on-disk cache; a cold cache compiles here and in the first draws);
* sampling: nutpie's NUTS, every chain (`nuts.sample` of the compiled model);
* draws: the collapsed sampler's exact draws of beta and b;
* record: diagnostics and summaries (`mcmc.from_idata`).

ESS is ArviZ's bulk ESS of each SD (`sd`) and of sigma; ESS/s = ESS / sampling seconds, and
ESS / MCMC-wall (start + sampling + draws + record) as the user sees it. The runs are warmed
once first (`--no-warm` to time a first run as it comes), so the figures are a warm machine's.
With --pymc-peer also the full model through `pm.sample(nuts_sampler="nutpie")` (numba, compiled
again in every process: the product's sampler before issue 12) for its start time.

Run: .venv/bin/python benchmarks/bench_mcmc.py [--cases dyestuff small_groups hsb82_slopes]
     [--draws N] [--tune N] [--no-warm] [--pymc-peer]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _case(name: str):
    """(LMMData, Priors, McmcSettings) of a shipped case file."""
    from workbench.casefile import load_case
    from workbench.compare import _model
    from workbench.fit import mcmc
    from workbench.model.priors import make_priors

    case = load_case(ROOT / "models" / f"{name}.toml")
    kw = case.compare_kwargs
    data = _model(case.data_path, case.y, case.group, kw.get("formula"), kw.get("levels"))
    priors = make_priors(data, kw.get("priors") or {})
    settings = mcmc.McmcSettings(
        chains=kw.get("chains", 4),
        draws=kw.get("draws", 1000),
        tune=kw.get("tune", 1000),
        target_accept=kw.get("target_accept", 0.9),
        seed=kw.get("seed", 0),
    )
    return data, priors, settings


def run_one(data, priors, settings) -> dict:
    """Time one MCMC run stage by stage (see the module docstring)."""
    import arviz as az

    from workbench.fit import mcmc, nuts
    from workbench.model.pymc import build_model
    from workbench.seeds import int_seed_for

    model = build_model(data, priors, settings.parametrization)
    t0 = time.perf_counter()
    compiled = nuts.compile_model(model)
    t1 = time.perf_counter()
    idata = nuts.sample(
        compiled,
        draws=settings.draws,
        tune=settings.tune,
        chains=settings.chains,
        seed=int_seed_for(settings.seed, "mcmc"),
        target_accept=settings.target_accept,
    )
    t2 = time.perf_counter()
    if settings.parametrization == "collapsed":
        idata = mcmc._collapsed_effects(idata, data, priors, settings)
    t3 = time.perf_counter()
    post = mcmc.from_idata(data, idata, settings, "nutpie")
    t4 = time.perf_counter()
    ds = idata.posterior.to_dataset()
    ess_sd = np.atleast_1d(np.asarray(az.ess(ds[["sd"]], method="bulk")["sd"]))
    ess_sigma = float(np.asarray(az.ess(ds[["sigma"]], method="bulk")["sigma"]))
    return {
        "start": t1 - t0,
        "sampling": t2 - t1,
        "draws": t3 - t2,
        "record": t4 - t3,
        "wall": t4 - t0,
        "ess_sd": ess_sd,
        "ess_sigma": ess_sigma,
        "divergences": post.diagnostics["divergences"],
        "steps": float(np.asarray(idata.sample_stats["n_steps"]).mean()),
    }


def peer_start(data, priors, settings) -> float:
    """Seconds from the PyMC model to the first draw ready through pm.sample(nuts_sampler=
    "nutpie") (nutpie's own numba compile, redone in every process): a 1-draw run."""
    import pymc as pm

    from workbench.model.pymc import build_model

    model = build_model(data, priors, "noncentered")
    t0 = time.perf_counter()
    pm.sample(
        draws=1,
        tune=1,
        chains=1,
        nuts_sampler="nutpie",
        progressbar=False,
        model=model,
        compute_convergence_checks=False,
    )
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["dyestuff", "small_groups", "hsb82_slopes"])
    ap.add_argument("--draws", type=int, default=None, help="override the case's draws")
    ap.add_argument("--tune", type=int, default=None, help="override the case's tune")
    ap.add_argument("--no-warm", action="store_true", help="time the first run as it comes")
    ap.add_argument("--pymc-peer", action="store_true", help="time pm.sample(nutpie)'s start")
    args = ap.parse_args(argv)
    print(
        f"{'case':14s} {'model':11s} {'start':>6s} {'sampl':>6s} {'draws':>6s} {'record':>6s} "
        f"{'wall':>6s} {'steps':>5s} {'div':>4s} {'ESS sd':>14s} {'ESS/s sd':>14s} "
        f"{'ESS/wall sd':>14s} {'ESS sigma':>9s}"
    )
    for name in args.cases:
        data, priors, base = _case(name)
        if args.draws:
            base = replace(base, draws=args.draws)
        if args.tune is not None:
            base = replace(base, tune=args.tune)
        rows = {}
        for par in ("noncentered", "collapsed"):
            settings = replace(base, parametrization=par)
            if not args.no_warm:
                run_one(data, priors, replace(settings, draws=20, tune=20, chains=1))
            r = run_one(data, priors, settings)
            rows[par] = r
            fmt = lambda v: "/".join(f"{x:.0f}" for x in np.atleast_1d(v))  # noqa: E731
            print(
                f"{name:14s} {par:11s} {r['start']:6.2f} {r['sampling']:6.2f} {r['draws']:6.2f} "
                f"{r['record']:6.2f} {r['wall']:6.2f} {r['steps']:5.1f} {r['divergences']:4d} "
                f"{fmt(r['ess_sd']):>14s} {fmt(r['ess_sd'] / r['sampling']):>14s} "
                f"{fmt(r['ess_sd'] / r['wall']):>14s} {r['ess_sigma']:9.0f}",
                flush=True,
            )
        full, col = rows["noncentered"], rows["collapsed"]
        per_s = (col["ess_sd"] / col["sampling"]) / (full["ess_sd"] / full["sampling"])
        per_wall = (col["ess_sd"] / col["wall"]) / (full["ess_sd"] / full["wall"])
        print(
            f"{name:14s} collapsed / full: ESS/s of each SD x{'/'.join(f'{v:.1f}' for v in per_s)}"
            f" (sampling), x{'/'.join(f'{v:.1f}' for v in per_wall)} (MCMC wall)"
        )
        if args.pymc_peer:
            start = peer_start(data, priors, base)
            print(f"{name:14s} pm.sample(nutpie) start (1 draw): {start:.2f} s")


if __name__ == "__main__":
    main()
