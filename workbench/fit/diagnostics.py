"""MCMC diagnostics: numbers from ArviZ (R-hat, bulk and tail ESS, E-BFMI) and the sampler's
divergences over a Dataset of monitored quantities, and plain warnings that say which check
failed. A numeric layer: it knows nothing of the model's labels (`fit.mcmc` picks the
quantities)."""

from __future__ import annotations

import warnings

import numpy as np

RHAT_LIMIT = 1.01
BFMI_LIMIT = 0.3


def diagnose(idata, ds, parametrization: str = "noncentered") -> tuple[dict, list[str]]:
    """R-hat, bulk/tail ESS (over the variables of `ds`, dims chain, draw, ...), divergences and
    E-BFMI (from `idata.sample_stats`), and plain warnings when they are off. NaN where a chain
    cannot tell (one chain, a stuck chain)."""
    import arviz as az

    n_chains = int(ds.sizes["chain"])
    with warnings.catch_warnings():  # one chain or a stuck chain: R-hat is NaN (said below)
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = az.rhat(ds)
        ess_b = az.ess(ds, method="bulk")
        ess_t = az.ess(ds, method="tail")

    def extreme(res, fn):  # NaN when any value is NaN
        return float(fn([fn(np.asarray(res[v])) for v in res.data_vars]))

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
