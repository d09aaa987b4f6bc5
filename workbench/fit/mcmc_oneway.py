"""The full posterior by NUTS (PyMC, nutpie when installed), kept as an ArviZ DataTree, with
summaries (mean, median, sd, 94% HDI, marginal posterior mode) and diagnostics."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from workbench.model.data import GroupedData
from workbench.model.priors import Priors

SUMMARY_VARS = ("mu", "sigma", "sigma2", "tau", "tau2")
HDI_PROB = 0.94
RHAT_LIMIT = 1.01
BFMI_LIMIT = 0.3
MODE_NOTE = (
    "mode: half-sample mode (arviz.mode) of the marginal draws, on the scale of the "
    "quantity named (the mode of sigma2 is not the square of the mode of sigma)"
)


@dataclass(frozen=True)
class McmcSettings:
    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    target_accept: float = 0.9
    parametrization: str = "noncentered"
    seed: int = 0


@dataclass
class McmcResult:
    settings: McmcSettings
    posterior: object  # xarray.DataTree
    summary: dict[str, dict]
    group_summary: dict[str, dict]
    diagnostics: dict
    warnings: list[str] = field(default_factory=list)
    sampler: str = ""

    def draws(self, var: str) -> np.ndarray:
        """All draws of a scalar variable, chains stacked."""
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


def _describe(draws: np.ndarray, hdi: np.ndarray, mode: float) -> dict:
    return {
        "mean": float(draws.mean()),
        "median": float(np.median(draws)),
        "sd": float(draws.std(ddof=1)),
        "hdi": [float(hdi[0]), float(hdi[1])],
        "mode": float(mode),
    }


def summarize(idata, labels: tuple[str, ...]) -> tuple[dict, dict]:
    """Per-parameter summaries (ArviZ's hdi and mode) for the scalars and the group means."""
    import arviz as az

    post = idata.posterior
    hdi = az.hdi(idata, prob=HDI_PROB, var_names=[*SUMMARY_VARS, "theta"])
    mode = az.mode(idata, var_names=[*SUMMARY_VARS, "theta"], round_to="none")
    hdi_ds = hdi.posterior.to_dataset() if hasattr(hdi, "posterior") else hdi
    mode_ds = mode.posterior.to_dataset() if hasattr(mode, "posterior") else mode
    out = {}
    for v in SUMMARY_VARS:
        out[v] = _describe(
            np.asarray(post[v]).reshape(-1), np.asarray(hdi_ds[v]), float(mode_ds[v])
        )
    theta = np.asarray(post["theta"]).reshape(-1, len(labels))
    th_hdi = np.asarray(hdi_ds["theta"])
    th_mode = np.asarray(mode_ds["theta"])
    groups = {lab: _describe(theta[:, j], th_hdi[j], th_mode[j]) for j, lab in enumerate(labels)}
    return out, groups


def diagnose(
    idata, parametrization: str = "noncentered", names: list[str] | None = None
) -> tuple[dict, list[str]]:
    """R-hat, bulk/tail ESS, divergences and E-BFMI (over the variables `names`, by default
    the one-way model's), and plain warnings when they are off."""
    import arviz as az

    names = [v for v in (names or ("mu", "sigma", "tau", "z", "theta")) if v in idata.posterior]
    n_chains = int(idata.posterior.sizes["chain"])
    with warnings.catch_warnings():  # one chain or a stuck chain: R-hat is NaN (said below)
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = az.rhat(idata, var_names=names)
    ess_b = az.ess(idata, var_names=names, method="bulk")
    ess_t = az.ess(idata, var_names=names, method="tail")

    def extreme(ds, fn):  # NaN when any value is NaN (one chain, a stuck chain)
        ds = ds.posterior.to_dataset() if hasattr(ds, "posterior") else ds
        return float(fn([fn(np.asarray(ds[v])) for v in ds.data_vars]))

    div = int(np.asarray(idata.sample_stats["diverging"]).sum())
    bfmi_vals = np.asarray(az.bfmi(idata)["energy"], dtype=float).reshape(-1)
    diag = {
        "r_hat_max": extreme(rhat, np.max),
        "ess_bulk_min": extreme(ess_b, np.min),
        "ess_tail_min": extreme(ess_t, np.min),
        "divergences": div,
        "e_bfmi_min": float(np.min(bfmi_vals)),
        "e_bfmi": [float(v) for v in bfmi_vals],
    }
    warns = []
    if n_chains < 2:
        warns.append(
            "R-hat compares chains, so with 1 chain it is not computed (null in the "
            "JSON) and the rank plots are skipped; run 2 or more chains to check "
            "convergence."
        )
    elif not np.isfinite(diag["r_hat_max"]):
        warns.append(
            "R-hat could not be computed (a chain did not move, e.g. with no tuning "
            "steps): do not trust these summaries (tune longer)."
        )
    elif diag["r_hat_max"] > RHAT_LIMIT:
        warns.append(
            f"R-hat up to {diag['r_hat_max']:.3f} (> {RHAT_LIMIT}): the chains disagree; "
            "do not trust these summaries (run longer, or try the other parametrization)."
        )
    if div:
        fix = (
            "raise target_accept"
            if parametrization == "noncentered"
            else "use the non-centered form or raise target_accept"
        )
        warns.append(
            f"{div} divergent transition(s): the sampler could not explore part of the "
            f"posterior (the funnel), so the summaries may be biased; {fix}."
        )
    if diag["e_bfmi_min"] < BFMI_LIMIT:
        warns.append(
            f"E-BFMI as low as {diag['e_bfmi_min']:.2f} (< {BFMI_LIMIT}): the momentum "
            "resampling explores the energy poorly."
        )
    return diag, warns


def fit(
    data: GroupedData, priors: Priors, settings: McmcSettings, progressbar: bool = False
) -> McmcResult:
    """Sample the posterior with NUTS and summarise it."""
    import pymc as pm

    from workbench.model.pymc_oneway import build_model

    model = build_model(data, priors, settings.parametrization)
    try:
        import nutpie  # noqa: F401

        sampler = "nutpie"
    except ImportError:  # pragma: no cover - nutpie is a dependency
        sampler = "pymc"
    idata = pm.sample(
        draws=settings.draws,
        tune=settings.tune,
        chains=settings.chains,
        random_seed=settings.seed,
        target_accept=settings.target_accept,
        nuts_sampler=sampler,
        progressbar=progressbar,
        model=model,
    )
    summary, groups = summarize(idata, data.labels)
    diag, warns = diagnose(idata, settings.parametrization)
    return McmcResult(
        settings=settings,
        posterior=idata,
        summary=summary,
        group_summary=groups,
        diagnostics=diag,
        warnings=warns,
        sampler=sampler,
    )


def save_netcdf(result: McmcResult, path) -> None:
    """Write the posterior DataTree to NetCDF (netCDF4 engine)."""
    tree = result.posterior.copy()
    if "sample_stats" in tree:
        stats = tree["sample_stats"].to_dataset()
        drop = [v for v in stats.data_vars if stats[v].dtype == object]
        tree["sample_stats"] = stats.drop_vars(drop)
    tree.to_netcdf(path, engine="netcdf4")
