"""The simulation report's text and tables in the structure of Morris, White & Crowther (2019):
Aims, Data-generating mechanisms, Estimands, Methods, Performance measures (ADEMP), all from
the study's definition and its summary (nothing about a particular study is written here), and
the replicate count justified by the Monte Carlo SEs it gives."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from workbench.simulate.study import Study
from workbench.simulate.summary import MEASURES

# How each method estimates, where its model SE and its interval come from.
METHOD_TEXT = {
    "eb-ml": (
        "Empirical Bayes, maximum likelihood (lme4's ML)",
        "observed information{se_scope}",
        "profile likelihood for σ², the variances and correlations (lme4's confint); "
        "Wald for fixed effects{group_ci}",
    ),
    "eb-reml": (
        "Empirical Bayes, restricted maximum likelihood (lme4's REML)",
        "observed information of the REML criterion{se_scope}",
        "profile likelihood of the ML deviance for σ², the variances and correlations "
        "(lme4 profiles ML for REML fits too); Wald for fixed effects{group_ci}",
    ),
    "joint-map:centered": (
        "Mode of the joint density of y and the group effects over all parameters (the "
        "h-likelihood), centered parametrization, no priors; only an interior local mode counts",
        "the Hessian of the log joint at the mode{joint_se}",
        "Wald from that Hessian (through log σ, log τ and atanh of correlations)",
    ),
    "joint-map:noncentered": (
        "Joint mode as above in the non-centered parametrization (b_j = τ z_j), no priors",
        "the Hessian of the log joint at the mode{joint_se}",
        "Wald from that Hessian",
    ),
    "joint-map+priors:centered": (
        "Joint mode with the default priors, centered parametrization",
        "the Hessian of the log posterior at the mode{joint_se}",
        "Wald from that Hessian",
    ),
    "joint-map+priors:noncentered": (
        "Joint mode with the default priors, non-centered parametrization",
        "the Hessian of the log posterior at the mode{joint_se}",
        "Wald from that Hessian",
    ),
    "mcmc": (
        "Posterior median (PyMC model sampled by nutpie; {chains} chains of {draws} draws after "
        "{tune} tuning steps)",
        "the posterior SD",
        "the {hdi:.0%} highest-density interval (its nominal level, not {level:.0%})",
    ),
}
MEASURE_TEXT = (  # (label, definition, Monte Carlo SE), Morris et al. (2019) Table 6
    ("bias", "mean(θ̂ᵢ) − θ", "√[Σ(θ̂ᵢ − θ̄)² / (n(n − 1))]"),
    ("empirical SE (EmpSE)", "√[Σ(θ̂ᵢ − θ̄)² / (n − 1)]", "EmpSE / √(2(n − 1))"),
    (
        "model SE (ModSE)",
        "√[mean(SEᵢ²)], the root mean squared model-based SE",
        "√[Var(SEᵢ²) / (4 n ModSE²)]",
    ),
    (
        "relative error of ModSE (%)",
        "100 (ModSE / EmpSE − 1)",
        "100 (ModSE / EmpSE) √[Var(SEᵢ²) / (4 n ModSE⁴) + 1 / (2(n − 1))]",
    ),
    ("coverage", "share of intervals that contain θ", "√[C(1 − C) / n]"),
    (
        "bias-eliminated coverage (BE cov.)",
        "share of intervals that contain θ̄ (the mean estimate)",
        "√[B(1 − B) / n]",
    ),
    (
        "RMSE",
        "√[mean((θ̂ᵢ − θ)²)]",
        "MCSE(MSE) / (2 RMSE), MCSE(MSE) = √[Σ((θ̂ᵢ − θ)² − MSE)² / (n(n − 1))]",
    ),
)
SHORT = {  # the tables' column headings
    "bias": "bias",
    "empse": "EmpSE",
    "modse": "ModSE",
    "relerr_modse": "ModSE rel. err. %",
    "coverage": "coverage %",
    "be_coverage": "BE cov. %",
    "rmse": "RMSE",
}
PERCENT = {"coverage", "be_coverage"}
GREEK = {"mu": "μ", "sigma2": "σ²", "tau2": "τ²", "group_mean": "group means μⱼ"}


def label(parameter: str) -> str:
    return GREEK.get(parameter, parameter)


def method_nominal(study: Study, method: str) -> float:
    """The nominal level of a method's intervals: the MCMC HDI's probability, else the study's."""
    if method == "mcmc":
        from workbench.fit.mcmc import HDI_PROB

        return HDI_PROB
    return study.level


def _g(v: float, digits: int = 3) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    if 100 <= abs(v) < 1e6:  # whole numbers, never 1.2e+02
        return f"{v:,.0f}".replace("-", "−")
    text = f"{v:.{digits}g}"
    return text.replace("-", "−")


def aims(study: Study, methods: list[str], params: list[str]) -> dict:
    settings = study.settings()
    what = "the one-way random-intercept model" if study.oneway else "the model"
    return {
        "title": study.title,
        "description": study.description,
        "sentence": (
            f"To estimate the bias, the empirical and model-based standard errors and the "
            f"coverage of the {study.level:.0%} intervals of {len(methods)} method"
            f"{'s' if len(methods) != 1 else ''} ({', '.join(methods)}) for "
            f"{', '.join(label(p) for p in params)} of {what} "
            f"{study.model_formula}, in {len(settings)} data-generating setting"
            f"{'s' if len(settings) != 1 else ''}, with {study.replicates} simulated data "
            f"sets each."
        ),
    }


def dgm(study: Study) -> dict:
    """The data-generating mechanisms: the model, the generator, the factors that vary."""
    settings = study.settings()
    cols = list(settings[0].columns())
    values = {c: list(dict.fromkeys(s.columns()[c] for s in settings)) for c in cols}
    varying = [c for c in cols if len(values[c]) > 1]
    fixed = {c: values[c][0] for c in cols if len(values[c]) == 1}
    if study.oneway:
        model = (
            "y_ij = μ + a_j + e_ij, group effects a_j ~ N(0, τ²) and errors e_ij ~ N(0, σ²), "
            "all independent"
        )
    else:
        model = (
            f"{study.model_formula}: y = Xβ + Z b + e, each group's random effects "
            f"b_j ~ N(0, G) with SDs sd[·] and correlations cor[·], errors e ~ N(0, σ²)"
        )
    sizes = []
    for gs in values["group_sizes"]:
        lo, _, hi = str(gs).partition("-")
        sizes.append(
            f"{lo} per group" if not hi else f"drawn per group uniformly from {lo} to {hi}"
        )
    design = (
        f"full factorial of {' × '.join(f'{c} ({len(values[c])})' for c in varying)} = "
        f"{len(settings)} settings"
        if varying
        else "one setting"
    )
    return {
        "model": model,
        "sizes": "; ".join(dict.fromkeys(sizes)),
        "covariates": study.covariates,
        "design": design,
        "fixed": ", ".join(
            f"{'n' if c == 'group_sizes' else c} = {_g(v, 6) if isinstance(v, float) else v}"
            for c, v in fixed.items()
        ),
        "varying": varying,
        "rows": [{"index": s.index, "values": [s.columns()[c] for c in varying]} for s in settings],
        "replicates": study.replicates,
        "seed": study.seed,
    }


def estimands(study: Study, summary: pd.DataFrame, params: list[str]) -> list[dict]:
    out = []
    for p in params:
        if p == "group_mean":
            meaning = (
                "each group's realised mean μ + a_j: a new truth in every group and replicate "
                "(prediction rather than estimation)"
            )
            truth = "drawn"
        else:
            meaning = {
                "mu": "overall mean μ",
                "sigma2": "within-group (residual) variance",
                "tau2": "between-group variance",
            }.get(p)
            if meaning is None:
                kind, _, rest = p.partition("[")
                rest = rest[:-1]
                meaning = {
                    "beta": f"fixed effect of {rest}",
                    "var": f"variance of the random effect {rest}",
                    "cor": f"correlation of the random effects {rest.replace(':', ' and ')}",
                }.get(kind, p)
            truths = list(dict.fromkeys(summary.loc[summary["parameter"] == p, "truth"]))
            truth = ", ".join(_g(t, 6) for t in truths)
            if len(truths) > 1:
                truth += " (by setting)"
        out.append({"name": label(p), "meaning": meaning, "truth": truth})
    return out


def methods_text(study: Study, methods: list[str], summary: pd.DataFrame) -> list[dict]:
    from workbench.fit.mcmc import HDI_PROB

    one = study.oneway
    fill = {
        "se_scope": " (of μ, σ², τ²)"
        if one
        else " (of the fixed effects only: none for σ² "
        "and the variance components, whose intervals are profile intervals)",
        "group_ci": "; group means: conditional mode ± 1.96 conditional SD" if one else "",
        "joint_se": " (σ² and τ² by the delta method from log σ, log τ)"
        if one
        else " (fixed effects; σ² by the delta method from log σ; none for the variance "
        "components and correlations)",
        "hdi": HDI_PROB,
        "level": study.level,
        **study.mcmc,
    }
    out = []
    for m in methods:
        est, se, ci = (t.format(**fill) for t in METHOD_TEXT[m])
        rows = summary[summary["method"] == m]
        note = ""
        if m.startswith("joint-map") and len(rows):
            per = rows.groupby("setting")["interior_share"].first()
            note = (
                "interior mode in "
                + ", ".join(
                    f"{share:.0%}" + (f" (setting {si})" if len(per) > 1 else "")
                    for si, share in per.items()
                )
                + " of the replicates; measures use those only"
            )
        out.append(
            {"name": m, "color": _color(m), "estimate": est, "se": se, "interval": ci, "note": note}
        )
    return out


def _cell(row, col: str, nominal: float) -> dict:
    """One table cell: the value, its MCSE, and a flag."""
    v, mc = row[col], row[col + "_mcse"]
    scale = 100 if col in PERCENT else 1
    text = _g(v * scale, 3 if col not in PERCENT else 3)
    mctext = _g(mc * scale, 2)
    cls = ""
    if col == "bias" and np.isfinite(v) and np.isfinite(mc) and abs(v) > 2 * mc:
        cls = "sig"
    if col == "coverage" and np.isfinite(v) and row["replicates_with_interval"]:
        band = 2 * math.sqrt(nominal * (1 - nominal) / row["replicates_with_interval"])
        if v < nominal - band:
            cls = "bad"
    return {"value": text, "mcse": mctext if np.isfinite(mc) else "", "cls": cls}


def tables(
    study: Study, summary: pd.DataFrame, params: list[str], methods: list[str]
) -> list[dict]:
    """One table per parameter: methods as rows (grouped by setting), the seven measures as
    columns, each cell the value over its Monte Carlo SE; counts where fewer replicates gave an
    SE or an interval than gave an estimate."""
    described = {s.index: s.describe() for s in study.settings()}
    out = []
    for p in params:
        sub = summary[summary["parameter"] == p]
        groups = []
        for si, g in sub.groupby("setting", sort=True):
            rows = []
            g = g.assign(order=g["method"].map({m: i for i, m in enumerate(methods)}))
            for _, r in g.sort_values("order").iterrows():
                meth = r["method"]
                n_est, n_se, n_ci = (
                    int(r["replicates_with_estimate"]),
                    int(r["replicates_with_se"]),
                    int(r["replicates_with_interval"]),
                )
                cells = {c: _cell(r, c, method_nominal(study, meth)) for c, _ in MEASURES}
                if n_se == 0 and n_est:
                    for c in ("modse", "relerr_modse"):
                        cells[c] = {"value": "no SE", "mcse": "", "cls": "none"}
                if n_ci == 0 and n_est:
                    for c in ("coverage", "be_coverage"):
                        cells[c] = {"value": "no interval", "mcse": "", "cls": "none"}
                counts = []
                if 0 < n_se < n_est:
                    counts.append(f"SE {n_se}")
                if 0 < n_ci < n_est:
                    counts.append(f"CI {n_ci}")
                rows.append(
                    {
                        "method": meth,
                        "color": _color(meth),
                        "n": n_est,
                        "of": int(r["replicates"]),
                        "counts": ", ".join(counts),
                        "cells": cells,
                        "none": n_est == 0,
                        "why": " (no interior joint mode)" if meth.startswith("joint-map") else "",
                    }
                )
            groups.append({"setting": int(si), "describe": described[int(si)], "rows": rows})
        truths = list(dict.fromkeys(sub["truth"].dropna()))
        out.append(
            {
                "parameter": p,
                "name": label(p),
                "truth": ", ".join(_g(t, 6) for t in truths) if truths else "drawn per group",
                "groups": groups,
                "settings": len(groups),
            }
        )
    return out


def _color(method: str) -> str:
    try:
        from workbench.present.plots import style

        return style(method).color
    except ImportError:  # the palette is optional for the tables
        return "#999"


def _pts(level: float, n: int) -> str:
    """MCSE of coverage at `level` from n replicates, in percentage points."""
    return f"{100 * math.sqrt(level * (1 - level) / n):.2g}"


def _ceil(x: float) -> int:
    """The whole number of replicates at least x (475.00000000000006 is 475)."""
    return math.ceil(round(x, 9))


def replicate_count(study: Study, summary: pd.DataFrame, params: list[str]) -> dict:
    """The replicate count justified by the Monte Carlo SEs it gives (computed from the run):
    coverage at the nominal level and at worst, the fewest replicates any row used, and per
    parameter the MCSE of the bias with the replicates a 1%-of-the-truth MCSE would need."""
    n, level = study.replicates, study.level
    nominal = math.sqrt(level * (1 - level) / n)
    worst = math.sqrt(0.25 / n)
    cov = summary.dropna(subset=["coverage_mcse"])
    biggest = cov.loc[cov["coverage_mcse"].idxmax()] if len(cov) else None
    used = summary[summary["replicates_with_interval"] > 0]
    fewest = used.loc[used["replicates_with_interval"].idxmin()] if len(used) else None
    need = {pts: _ceil(level * (1 - level) / (pts / 100) ** 2) for pts in (1.0, 0.5)}
    bias_rows = []
    for p in params:
        sub = summary[(summary["parameter"] == p) & summary["empse"].notna()]
        if not len(sub):
            continue
        r = sub.loc[sub["empse"].idxmax()]
        # the summary's MCSE of the bias: EmpSE / sqrt(n) for a fixed truth; for the group
        # means the replicate is the unit (EmpSE pools the groups, so EmpSE / sqrt(n) is not it)
        mc = r["bias_mcse"]
        if not np.isfinite(mc):
            mc = r["empse"] / math.sqrt(max(int(r["replicates_with_estimate"]), 1))
        t = r["truth"]
        rel = np.isfinite(t) and t != 0
        bias_rows.append(
            {
                "name": label(p),
                "method": r["method"],
                "setting": int(r["setting"]),
                "empse": _g(r["empse"]),
                "n": int(r["replicates_with_estimate"]),
                "mcse": _g(mc, 2),
                "percent": f"{_g(100 * mc / abs(t), 2)}%" if rel else "–",
                "need": (
                    f"{_ceil((r['empse'] / (0.01 * abs(t))) ** 2):,}"
                    if rel
                    else "– (no fixed nonzero truth)"
                ),
            }
        )
    return {
        "n": n,
        "level": f"{level:.0%}",
        "formula": f"√({level:g} × {1 - level:.2g} / {n})",
        "nominal": f"{100 * nominal:.2g}",
        "worst": f"{100 * worst:.2g}",
        "flag": f"{100 * (level - 2 * nominal):.1f}",
        "biggest": None
        if biggest is None
        else {
            "mcse": f"{100 * biggest['coverage_mcse']:.2g}",
            "coverage": f"{100 * biggest['coverage']:.1f}",
            "method": biggest["method"],
            "parameter": label(biggest["parameter"]),
            "setting": int(biggest["setting"]),
        },
        "fewest": None
        if fewest is None or int(fewest["replicates_with_interval"]) == n
        else {
            "n": int(fewest["replicates_with_interval"]),
            "mcse": _pts(level, int(fewest["replicates_with_interval"])),
            "method": fewest["method"],
            "parameter": label(fewest["parameter"]),
            "setting": int(fewest["setting"]),
        },
        "need": {k: f"{v:,}" for k, v in need.items()},
        "bias": bias_rows,
    }


def context(study: Study, summary: pd.DataFrame) -> dict:
    """Everything the ADEMP sections of the template need."""
    from workbench.simulate.run import method_labels

    present = set(summary["method"])
    methods = [m for m in method_labels(study.methods) if m in present]
    params = list(dict.fromkeys(summary["parameter"]))
    if study.oneway:  # the model's order, not the alphabet's
        params = [p for p in ("mu", "sigma2", "tau2", "group_mean") if p in params]
    return {
        "aims": aims(study, methods, params),
        "dgm": dgm(study),
        "estimands": estimands(study, summary, params),
        "methods": methods_text(study, methods, summary),
        "measures": MEASURE_TEXT,
        "columns": [(c, SHORT[c]) for c, _ in MEASURES],
        "tables": tables(study, summary, params, methods),
        "nsim": replicate_count(study, summary, params),
    }
