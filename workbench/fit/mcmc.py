"""NUTS for the general LMM (PyMC, nutpie), summarised in the JSON contract's terms: fixed
effects, variance components (variances and correlations by term), sigma^2, random effects."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from workbench.fit.mcmc_oneway import HDI_PROB, MODE_NOTE, McmcSettings, diagnose
from workbench.model.design import LMMData
from workbench.model.lmm_priors import LMMPriors, build_model


def _describe(draws: np.ndarray) -> dict:
    """mean, median, sd, 94% HDI (ArviZ) and marginal mode (ArviZ's half-sample mode)."""
    import arviz as az

    draws = np.asarray(draws, float).reshape(-1)
    hdi = np.asarray(az.hdi(draws, prob=HDI_PROB))
    return {
        "mean": float(draws.mean()),
        "median": float(np.median(draws)),
        "sd": float(draws.std(ddof=1)),
        "hdi": [float(hdi[0]), float(hdi[1])],
        "mode": float(az.mode(draws, round_to="none")),
    }


@dataclass
class LMMMcmc:
    settings: McmcSettings
    posterior: object  # xarray.DataTree
    data: LMMData = field(repr=False)
    diagnostics: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sampler: str = "nutpie"

    def draws(self, var: str) -> np.ndarray:
        """Draws with chain and draw stacked into the first axis."""
        arr = np.asarray(self.posterior.posterior[var])
        return arr.reshape(-1, *arr.shape[2:])

    def variance_draws(self) -> dict[str, np.ndarray]:
        sd = self.draws("sd")
        return {n: sd[:, k] ** 2 for k, n in enumerate(self.data.re_names)}

    def correlation_draws(self) -> dict[str, np.ndarray]:
        out = {}
        for k, block in enumerate(self.data.blocks):
            if len(block.cols) < 2:
                continue
            corr = self.draws(f"chol_{k}_corr")
            for i, ni in enumerate(block.names):
                for j in range(i + 1, len(block.names)):
                    out[f"{ni}:{block.names[j]}"] = corr[:, i, j]
        return out

    def to_dict(self) -> dict:
        beta = self.draws("beta")
        b = self.draws("b")
        comps = {
            "variances": {n: _describe(v) for n, v in self.variance_draws().items()},
            "correlations": {n: _describe(v) for n, v in self.correlation_draws().items()},
        }
        return {
            "settings": asdict(self.settings),
            "sampler": self.sampler,
            "fixed_effects": {
                n: {
                    **_describe(beta[:, k]),
                    "estimate": float(beta[:, k].mean()),
                    "se": float(beta[:, k].std(ddof=1)),
                }
                for k, n in enumerate(self.data.fixed_names)
            },
            "variance_components": {self.data.group_name: comps},
            "sigma2": _describe(self.draws("sigma2")),
            "random_effects": {
                lab: {
                    n: {"mean": float(b[:, j, k].mean()), "sd": float(b[:, j, k].std(ddof=1))}
                    for k, n in enumerate(self.data.re_names)
                }
                for j, lab in enumerate(self.data.labels)
            },
            "estimate_note": "estimate = posterior mean, se = posterior sd",
            "hdi_prob": HDI_PROB,
            "mode_scale": MODE_NOTE,
            "diagnostics": self.diagnostics,
            "warnings": list(self.warnings),
        }


def fit(
    data: LMMData, priors: LMMPriors, settings: McmcSettings, progressbar: bool = False
) -> LMMMcmc:
    import pymc as pm

    model = build_model(data, priors, settings.parametrization)
    idata = pm.sample(
        draws=settings.draws,
        tune=settings.tune,
        chains=settings.chains,
        random_seed=settings.seed,
        target_accept=settings.target_accept,
        nuts_sampler="nutpie",
        progressbar=progressbar,
        model=model,
    )
    names = ["beta", "sigma", "sd"] + [
        v
        for v in idata.posterior.data_vars
        if v.startswith(("chol_", "z_", "b_", "sd_")) and not v.endswith(("_stds", "_corr"))
    ]
    diag, warns = diagnose(idata, settings.parametrization, names=names)
    return LMMMcmc(settings=settings, posterior=idata, data=data, diagnostics=diag, warnings=warns)
