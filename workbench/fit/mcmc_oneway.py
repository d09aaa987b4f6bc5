"""Deprecated: the one-way MCMC is `workbench.fit.mcmc` (the general model, whose one-way kernel
and record keep the one-way names). This module keeps the old names until compare.py, simulate
and tests/boundary_cases.py are switched: `fit` takes a `GroupedData` too, and `McmcResult` /
`summarize` build the old record from made-up one-way draws (mu, sigma, tau, theta)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from workbench.fit.mcmc import (  # noqa: F401
    HDI_PROB,
    MODE_NOTE,
    ONEWAY_ALIASES,
    McmcSettings,
    Posterior,
    _summaries,
    diagnose,
    save_netcdf,
)
from workbench.fit.mcmc import fit as _fit
from workbench.model.data import GroupedData
from workbench.model.design import Block, LMMData
from workbench.model.priors import Priors

SUMMARY_VARS = ONEWAY_ALIASES
INTERCEPT = ("(Intercept)",)


def as_lmm(data: GroupedData | LMMData) -> LMMData:
    """The one-way design y ~ 1 + (1 | g) of a `GroupedData` (an `LMMData` is returned as is)."""
    if isinstance(data, LMMData):
        return data
    ones = np.ones((data.n_obs, 1))
    return LMMData(
        y=np.asarray(data.y, float),
        X=ones,
        Z=ones,
        codes=np.asarray(data.codes, np.int64),
        labels=tuple(data.labels),
        fixed_names=INTERCEPT,
        blocks=(Block(INTERCEPT, (0,)),),
        y_name=data.y_name,
        group_name=data.group_name,
        formula=f"{data.y_name} ~ 1 + (1 | {data.group_name})",
        source=data.source,
        sha256=data.sha256,
    )


def fit(
    data: GroupedData | LMMData, priors: Priors, settings: McmcSettings, progressbar: bool = False
) -> Posterior:
    """`workbench.fit.mcmc.fit` on the one-way design of `data`."""
    return _fit(as_lmm(data), priors, settings, progressbar)


@dataclass
class McmcResult:
    """Deprecated one-way record (made-up draws in tests only); see `mcmc.Posterior`."""

    settings: McmcSettings
    posterior: object  # xarray.DataTree
    summary: dict[str, dict]
    group_summary: dict[str, dict]
    diagnostics: dict
    warnings: list[str] = field(default_factory=list)
    sampler: str = ""

    def draws(self, var: str) -> np.ndarray:
        return np.asarray(self.posterior.posterior[var]).reshape(-1)

    def to_dict(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "sampler": self.sampler,
            **self.summary,
            "random_effects": self.group_summary,
            "hdi_prob": HDI_PROB,
            "mode_scale": MODE_NOTE,
            "diagnostics": self.diagnostics,
            "warnings": list(self.warnings),
        }


def summarize(idata, labels: tuple[str, ...]) -> tuple[dict, dict]:
    """Deprecated: summaries of one-way draws named mu, sigma, sigma2, tau, tau2, theta."""
    s = _summaries(idata.posterior.to_dataset()[[*SUMMARY_VARS, "theta"]])
    return {v: s[v].item() for v in SUMMARY_VARS}, dict(zip(labels, s["theta"], strict=True))
