"""The simulation report: Aims, Data-generating mechanisms, Estimands, Methods and Performance
measures (Morris, White & Crowther 2019; `ademp`), one table per parameter, coverage and bias
plots, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.simulate.study import Study
from workbench.simulate.summary import MEASURES

SUMMARY_COLUMNS = [  # summary.csv's performance columns: the measures, each with its MCSE
    "setting",
    "method",
    "parameter",
    "replicates",
    "replicates_with_estimate",
    "replicates_with_se",
    "replicates_with_interval",
    "truth",
    "mean_estimate",
    *(k for col, _ in MEASURES for k in (col, col + "_mcse")),
]
NAMES = {"sigma2": "sigma^2", "tau2": "tau^2", "group_mean": "group means mu_j"}


def plot_parameters(summary: pd.DataFrame, study: Study) -> tuple[list[str], list[str]]:
    """(parameters in the coverage panel, variances in the ratio panel)."""
    if study.oneway:
        return ["sigma2", "tau2", "group_mean"], ["sigma2", "tau2"]
    params = list(dict.fromkeys(summary["parameter"]))
    return params, [p for p in params if p == "sigma2" or p.startswith("var[")]


def plot_summary(summary: pd.DataFrame, study: Study):
    """Coverage (with 2 Monte Carlo SE) and estimate/truth ratios by method, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    from workbench.present.plots import style

    level = study.level
    described = {s.index: s.describe() for s in study.settings()}
    settings = sorted(summary["setting"].unique())
    params, ratios = plot_parameters(summary, study)
    wide = max(13, 1.1 * len(params) + 6)
    fig, axes = plt.subplots(len(settings), 2, figsize=(wide, 3.6 * len(settings)), squeeze=False)
    methods = sorted(summary["method"].unique())
    marks = {m: style(m) for m in methods}  # the report's palette (Okabe-Ito), hatch per method
    width = 0.8 / len(methods)

    def value(sub, meth, p, col):
        v = sub[(sub.method == meth) & (sub.parameter == p)][col]
        return v.iloc[0] if len(v) else np.nan

    for row, si in zip(axes, settings, strict=True):
        sub = summary[summary["setting"] == si]
        label = textwrap.fill(f"setting {si}: {described[int(si)]}", 80)
        for k, meth in enumerate(methods):
            shift = (k - (len(methods) - 1) / 2) * width
            se = [value(sub, meth, p, "coverage_mcse") for p in params]
            row[0].bar(
                np.arange(len(params)) + shift,
                [value(sub, meth, p, "coverage") for p in params],
                width,
                yerr=[2 * s if np.isfinite(s) else 0 for s in se],
                color=marks[meth].color,
                hatch=marks[meth].hatch,
                edgecolor="white",
                label=meth,
                capsize=2,
            )
            row[1].bar(
                np.arange(len(ratios)) + shift,
                [value(sub, meth, p, "ratio_to_truth") for p in ratios],
                width,
                color=marks[meth].color,
                hatch=marks[meth].hatch,
                edgecolor="white",
                label=meth,
            )
        row[0].axhline(level, color="k", ls="--", lw=1, label=f"nominal {level:.0%}")
        row[0].set_xticks(range(len(params)), [NAMES.get(p, p) for p in params], fontsize=9)
        row[0].set_ylabel("interval coverage")
        row[0].set_ylim(0, 1.05)
        row[0].set_title(f"Coverage (bars: +- 2 MC SE)\n{label}", fontsize=9)
        row[1].axhline(1.0, color="k", ls="--", lw=1, label="unbiased")
        theory = sub["theory_ratio"].dropna()
        if len(theory):
            row[1].axhline(
                theory.iloc[0],
                color=style("joint-map:centered").color,
                ls=":",
                lw=1.5,
                label=f"theory (n - 1)/n = {theory.iloc[0]:.3f}",
            )
        row[1].set_xticks(range(len(ratios)), [NAMES.get(p, p) for p in ratios], fontsize=9)
        row[1].set_ylabel("mean estimate / truth")
        row[1].set_yscale("log")
        row[1].set_title(f"Bias as a ratio\n{label}", fontsize=9)
        # the reference lines' legend beside the axes, outside the bars
        row[1].legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes[-1][0].legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    fig.tight_layout()
    return fig


def render_report(
    study: Study, summary: pd.DataFrame, *, command: str, counts: dict, seconds: float
) -> str:
    """The study's HTML report (one self-contained page)."""
    import base64

    import jinja2

    from workbench.present.plots import to_png
    from workbench.present.report import versions
    from workbench.simulate import ademp

    png = base64.b64encode(to_png(plot_summary(summary, study))).decode("ascii")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent.parent / "present" / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )

    return env.get_template("simulation.html.j2").render(
        study=study,
        title=study.title or f"Simulation study {study.name}",
        **ademp.context(study, summary),
        plot="data:image/png;base64," + png,
        command=command,
        counts=counts,
        seconds=seconds,
        versions=versions(),
        definition=json.dumps(study.definition(), indent=2),
    )
