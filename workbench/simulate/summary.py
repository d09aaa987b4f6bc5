"""Summaries of a study's replicates: bias, RMSE, coverage with Monte Carlo SE, mean width,
the share of interior joint modes, and the theory where it applies, per setting x method x
parameter (a plain table, no plots)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from workbench.simulate.run import Store
from workbench.simulate.study import Study


def theory_ratio(study: Study, s, method: str, parameter: str) -> float:
    """E[sigma^2 joint] / sigma^2 -> (n - 1)/n for the centered joint MAP of the one-way model
    with balanced groups of n; NaN elsewhere (no theory)."""
    lo, hi = s.size_range
    if study.oneway and method == "joint-map:centered" and parameter == "sigma2" and lo == hi:
        return (lo - 1) / lo
    return np.nan


def summarize(table: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Bias, relative bias, RMSE, coverage (with Monte Carlo SE), mean width, share of interior
    joint modes, and the theory where known, per setting x method x parameter."""
    settings = {s.index: s for s in study.settings()}
    out = []
    for (si, meth, par), g in table.groupby(["setting", "method", "parameter"], sort=True):
        s = settings[int(si)]
        ok = g[g["estimate"].notna()]
        err = ok["estimate"] - ok["truth"]
        # replicate-level means (for theta the groups of one replicate are not independent)
        per_rep = g.groupby("replicate")
        cov_rep = per_rep["covered"].mean().dropna()
        n_rep = int(g["replicate"].nunique())
        row = {
            "setting": int(si),
            **s.columns(),
            "method": meth,
            "parameter": par,
            "replicates": n_rep,
            "replicates_with_estimate": int(ok["replicate"].nunique()),
            "truth": float(g["truth"].mean()) if par != "group_mean" else np.nan,
            "mean_estimate": float(ok["estimate"].mean()) if len(ok) else np.nan,
            "bias": float(err.mean()) if len(ok) else np.nan,
            "bias_mcse": float(err.std(ddof=1) / np.sqrt(len(err))) if len(ok) > 1 else np.nan,
            "rmse": float(np.sqrt((err**2).mean())) if len(ok) else np.nan,
            "coverage": float(cov_rep.mean()) if len(cov_rep) else np.nan,
            "coverage_mcse": (
                float(cov_rep.std(ddof=1) / np.sqrt(len(cov_rep))) if len(cov_rep) > 1 else np.nan
            ),
            "mean_width": float((ok["hi"] - ok["lo"]).mean()) if len(ok) else np.nan,
            "interior_share": (
                float((per_rep["status"].first() == "interior").mean())
                if meth.startswith("joint-map")
                else np.nan
            ),
        }
        truth = row["truth"]
        scalar = par != "group_mean" and truth
        row["relative_bias"] = row["bias"] / truth if scalar else np.nan
        row["ratio_to_truth"] = row["mean_estimate"] / truth if scalar else np.nan
        row["theory_ratio"] = theory_ratio(study, s, meth, par)
        out.append(row)
    return pd.DataFrame(out)


def study_table(study: Study, out: str | Path) -> pd.DataFrame:
    """The tidy per-replicate table of the study's replicates, with the settings joined."""
    store = Store(out, study)
    keep = {(s.index, r) for s in study.settings() for r in range(study.replicates)}
    table = store.load(keep)
    settings = pd.DataFrame(
        [{"setting": s.index, **s.columns(), "balanced": s.balanced} for s in study.settings()]
    )
    return table.merge(settings, on="setting", how="left")
