"""Summaries of a study's replicates: the performance measures of Morris, White & Crowther (2019,
"Using simulation studies to evaluate statistical methods", Stat Med 38:2074, Table 6), each with
its Monte Carlo SE, per setting x method x parameter, plus the share of interior joint modes and
the theory where it applies (a plain table, no plots).

Measures (n: the replicates that give the quantity; theta the truth, theta-bar the mean
estimate): bias, empirical SE, model SE sqrt(mean SE^2), relative error of the model SE in %,
coverage, bias-eliminated coverage (is theta-bar inside?) and RMSE (sqrt of the MSE; its MCSE by
the delta method from the MSE's). A method that gives no estimate, SE or interval in a replicate
(a joint mode that is not interior; EB variances of formula models, which have profile intervals
and no SE) is left out of that measure, and the counts say how many replicates were used.

The group means mu_j of the one-way model are a different truth in every group and replicate:
their measures pool the groups (bias and RMSE of the prediction errors, the empirical SE is the
SD of the errors, bias-eliminated coverage shifts every truth by the bias), and their Monte
Carlo SEs take the replicate as the unit (the groups of one replicate share the estimated mu
and tau): the SE of the mean of the per-replicate values, with the delta method for the SEs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.simulate.run import Store
from workbench.simulate.study import Study

# the measures, in the report's order: (column, label)
MEASURES = (
    ("bias", "bias"),
    ("empse", "empirical SE"),
    ("modse", "model SE"),
    ("relerr_modse", "relative error of model SE (%)"),
    ("coverage", "coverage"),
    ("be_coverage", "bias-eliminated coverage"),
    ("rmse", "RMSE"),
)


def theory_ratio(study: Study, s, method: str, parameter: str) -> float:
    """E[sigma^2 joint] / sigma^2 -> (n - 1)/n for the centered joint MAP of the one-way model
    with balanced groups of n; NaN elsewhere (no theory)."""
    lo, hi = s.size_range
    if study.oneway and method == "joint-map:centered" and parameter == "sigma2" and lo == hi:
        return (lo - 1) / lo
    return np.nan


def _finite(*cols: pd.Series) -> pd.Series:
    ok = cols[0].notna()
    for c in cols[1:]:
        ok &= c.notna()
    return ok


def performance(g: pd.DataFrame) -> dict:
    """Morris et al.'s measures and their Monte Carlo SEs for one setting x method x parameter.
    `g` has columns replicate, truth, estimate, se, lo, hi: one row per replicate for a scalar
    parameter (Table 6's formulas exactly), several per replicate for the group means (the
    replicate as the unit of the MCSEs; see the module's docstring)."""
    nan = float("nan")
    out = {k: nan for col, _ in MEASURES for k in (col, col + "_mcse")}
    est = g[_finite(g["estimate"])]
    sev = g[_finite(g["se"])]
    ivl = g[_finite(g["lo"], g["hi"])]
    n_est, n_se, n_ci = (int(x["replicate"].nunique()) for x in (est, sev, ivl))
    out |= {
        "replicates_with_estimate": n_est,
        "replicates_with_se": n_se,
        "replicates_with_interval": n_ci,
    }
    clustered = g.groupby("replicate").size().max() > 1 if len(g) else False

    def mean_se(values: pd.Series, by: pd.Series) -> float:
        """MCSE of a mean: over replicates (the per-replicate means), or iid rows."""
        per = values.groupby(by).mean() if clustered else values
        return float(per.std(ddof=1) / math.sqrt(len(per))) if len(per) > 1 else nan

    if n_est:
        e = est["estimate"] - est["truth"]
        theta_bar_shift = float(e.mean())  # = theta-bar - theta for a fixed truth
        out["bias"] = theta_bar_shift
        sq = e**2
        out["rmse"] = math.sqrt(float(sq.mean()))
        if len(est) > 1:
            d = e - e.mean()  # for a fixed truth, theta-hat minus theta-bar
            out["empse"] = math.sqrt(float((d**2).sum()) / (len(est) - 1))
        if n_est > 1:
            if clustered:
                out["bias_mcse"] = mean_se(e, est["replicate"])
                out["empse_mcse"] = mean_se(d**2, est["replicate"]) / (2 * out["empse"])
            else:
                n = n_est
                out["bias_mcse"] = math.sqrt(float((d**2).sum()) / (n * (n - 1)))
                out["empse_mcse"] = out["empse"] / math.sqrt(2 * (n - 1))
            mse = float(sq.mean())
            mse_mcse = (
                mean_se(sq, est["replicate"])
                if clustered
                else math.sqrt(float(((sq - mse) ** 2).sum()) / (n_est * (n_est - 1)))
            )
            out["rmse_mcse"] = mse_mcse / (2 * out["rmse"]) if out["rmse"] > 0 else nan
    if n_se:
        v = sev["se"] ** 2
        out["modse"] = math.sqrt(float(v.mean()))
        if n_se > 1 and out["modse"] > 0:
            if clustered:
                var_mcse = mean_se(v, sev["replicate"])  # MCSE of mean(SE^2)
            else:
                var_mcse = math.sqrt(float(v.var(ddof=1)) / n_se)
            out["modse_mcse"] = var_mcse / (2 * out["modse"])
        if np.isfinite(out["empse"]) and out["empse"] > 0:
            ratio = out["modse"] / out["empse"]
            out["relerr_modse"] = 100 * (ratio - 1)
            if np.isfinite(out["modse_mcse"]) and np.isfinite(out["empse_mcse"]):
                out["relerr_modse_mcse"] = (
                    100
                    * ratio
                    * math.hypot(out["modse_mcse"] / out["modse"], out["empse_mcse"] / out["empse"])
                )
    if n_ci:
        lo, hi, t = ivl["lo"], ivl["hi"], ivl["truth"]
        for col, target in (("coverage", t), ("be_coverage", t + out["bias"])):
            if col == "be_coverage" and not n_est:
                continue
            hit = ((lo <= target) & (target <= hi)).astype(float)
            c = float(hit.mean())
            out[col] = c
            out[col + "_mcse"] = (
                mean_se(hit, ivl["replicate"]) if clustered else math.sqrt(c * (1 - c) / n_ci)
            )
    return out


def summarize(table: pd.DataFrame, study: Study) -> pd.DataFrame:
    """The performance measures with Monte Carlo SEs (`performance`), the replicates used by
    each, relative bias, mean interval width, the share of interior joint modes, and the theory
    where known, per setting x method x parameter."""
    settings = {s.index: s for s in study.settings()}
    out = []
    for (si, meth, par), g in table.groupby(["setting", "method", "parameter"], sort=True):
        s = settings[int(si)]
        if "se" not in g:  # a table without model SEs (no method gave one)
            g = g.assign(se=np.nan)
        ok = g[g["estimate"].notna()]
        per_rep = g.groupby("replicate")
        row = {
            "setting": int(si),
            **s.columns(),
            "method": meth,
            "parameter": par,
            "replicates": int(g["replicate"].nunique()),
            "truth": float(g["truth"].mean()) if par != "group_mean" else np.nan,
            "mean_estimate": float(ok["estimate"].mean()) if len(ok) else np.nan,
            **performance(g),
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
