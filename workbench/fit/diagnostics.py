"""MCMC diagnostics: numbers from ArviZ (R-hat, bulk and tail ESS, E-BFMI, the rank-uniformity
test of the rank plots) and the sampler's divergences over a Dataset of monitored quantities,
and plain warnings that say which check failed on which quantity. A numeric layer: it knows
nothing of the model's labels (`fit.mcmc` picks the quantities); quantities are named as ArviZ's
plots name them (`beta[meanses]`, `b[3, (Intercept)]`).

The rank test (`rank_test`) is ArviZ's own multi-chain test of the rank plots
(`arviz_stats` `mchain_uniformity_test`: pointwise hypergeometric tests of each chain's ECDF of
the fractional ranks of the pooled draws, combined by the Cauchy combination). It assumes
independent draws, which MCMC draws are not: on autocorrelated but well-mixed chains it says
"disagree" (a bulk ESS of 650 in 4000 draws gave p = 0.003). So each quantity is first thinned
to half its within-chain ESS (Säilynoja et al. 2022's remedy, with a margin: `_thin_factors`;
the ESS of each chain on its own, so that chains that disagree, which lower the pooled ESS, are
not thinned away), and the p-values of the quantities tested are Holm-adjusted: one warning
threshold for the whole rank plot.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

RHAT_LIMIT = 1.01
ESS_LIMIT = 400
BFMI_LIMIT = 0.3
RANK_ALPHA = 0.01
THIN = 2  # thin each quantity to half its within-chain ESS (see `_thin_factors`)
SAMPLE_DIMS = ("chain", "draw")
# the quantities of the rank plots and the rank test: the one-way model's names when present
RANK_VARS = ("beta", "sigma", "sd", "correlation")
ONEWAY_RANK_VARS = ("mu", "sigma", "tau")
RANK_NOTE = (
    "ArviZ's multi-chain rank-uniformity test (arviz_stats mchain_uniformity_test, the test of "
    "the rank plots) per quantity, each thinned to half its within-chain ESS; p Holm-adjusted "
    "over the {m} quantities of the rank plots; warns below {alpha}"
)
ONE_CHAIN = (
    "R-hat and the rank test compare chains, so with 1 chain they are not computed (null in "
    "the JSON) and the rank plots are skipped; run 2 or more chains to check convergence."
)


def rank_quantities(ds):
    """The Dataset of the rank plots and the rank test: fixed effects, sigma, the SDs and the
    correlations (one-way: mu, sigma, tau), not the random effects (hundreds of tests, some
    with p < 0.01 by chance)."""
    names = ONEWAY_RANK_VARS if "mu" in ds and "tau" in ds else RANK_VARS
    return ds[[v for v in names if v in ds]]


def _flat(ds) -> tuple[list[str], np.ndarray]:
    """(labels, draws (quantity, chain, draw)) of every scalar quantity of `ds`."""
    from arviz_base import xarray_sel_iter
    from arviz_base.labels import BaseLabeller

    lab = BaseLabeller()
    labels, rows = [], []
    for var, sel, isel in xarray_sel_iter(ds, skip_dims=set(SAMPLE_DIMS)):
        labels.append(lab.make_label_flat(var, sel, isel))
        rows.append(np.asarray(ds[var].isel(isel).transpose(*SAMPLE_DIMS), dtype=float))
    return labels, np.stack(rows) if rows else np.empty((0, 0, 0))


def _thin_factors(x: np.ndarray) -> np.ndarray:
    """The thinning factor of each quantity of x (quantity, chain, draw): twice the draws per
    chain over the mean within-chain ESS (the smaller of bulk and tail, each chain on its own),
    rounded up; 1 where no chain's ESS is finite (a chain that did not move). Twice: thinned
    to its ESS an AR(1) chain keeps a lag-1 correlation of about e^-2 (a thinned ESS of 3/4 of
    the draws kept, and 2-8% false alarms over 6 well-mixed quantities in simulation); thinned
    to half of it, about e^-4, and the Holm-adjusted alarms stay near 1%."""
    from arviz_stats.base import array_stats

    one = x[:, :, None, :]  # every chain as a run of its own
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        ess = np.minimum(
            array_stats.ess(one, method="bulk"),
            array_stats.ess(one, method="tail", prob=(0.05, 0.95)),
        )
    out = np.ones(len(x), dtype=int)
    for q, e in enumerate(ess):
        e = e[np.isfinite(e) & (e > 0)]
        if e.size:
            out[q] = max(1, math.ceil(THIN * x.shape[-1] / float(np.mean(e))))
    return out


def rank_test(ds) -> dict[str, float]:
    """{quantity label: raw p} of ArviZ's multi-chain rank-uniformity test on every scalar of
    `ds` (dims chain, draw, ...), each thinned to half its within-chain ESS (see the module's note).
    NaN for a quantity that does not vary; {} with one chain."""
    from arviz_stats.base import array_stats
    from scipy.stats import rankdata

    if int(ds.sizes.get("chain", 1)) < 2:
        return {}
    labels, x = _flat(ds)
    out = {}
    for lab, q, k in zip(labels, x, _thin_factors(x), strict=True):
        q = q[:, ::k]
        if not np.all(np.isfinite(q)) or np.ptp(q) == 0:
            out[lab] = math.nan
            continue
        ranks = rankdata(q, axis=None).reshape(q.shape) / q.size  # fractional, pooled
        out[lab] = float(array_stats.mchain_uniformity_test(ranks)[0])
    return out


def holm(p: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of the finite p-values (NaN stays NaN): control of the
    chance of any false alarm among them, uniformly more powerful than Bonferroni."""
    finite = sorted((v, k) for k, v in p.items() if np.isfinite(v))
    m, out, running = len(finite), {k: math.nan for k in p}, 0.0
    for i, (v, k) in enumerate(finite):
        running = max(running, min(1.0, (m - i) * v))
        out[k] = running
    return {k: out[k] for k in p}


def _worst(res, pick) -> tuple[float, str | None]:
    """(value, label) of the worst scalar of a Dataset of per-quantity results (`pick`:
    np.nanargmax or np.nanargmin); a NaN is worst of all (the check could not be made)."""
    from arviz_base.labels import BaseLabeller

    cands = []  # (value, variable, flat index) of each variable's worst
    for var in res.data_vars:
        a = np.asarray(res[var], dtype=float).reshape(-1)
        if a.size:
            nan = np.flatnonzero(~np.isfinite(a))
            i = int(nan[0]) if nan.size else int(pick(a))
            cands.append((float(a[i]), var, i))
    if not cands:
        return math.nan, None
    bad = [c for c in cands if not np.isfinite(c[0])]
    v, var, i = bad[0] if bad else cands[int(pick(np.array([c[0] for c in cands])))]
    da = res[var]
    isel = {d: int(j) for d, j in zip(da.dims, np.unravel_index(i, da.shape), strict=True)}
    sel = {d: _scalar(da[d].values[j]) for d, j in isel.items() if d in da.coords}
    return v, BaseLabeller().make_label_flat(str(var), sel, isel)


def _scalar(v):
    """A coordinate value as a plain Python scalar (numpy scalars and object-array strings)."""
    return v.item() if hasattr(v, "item") else v


def diagnose(idata, ds, parametrization: str = "noncentered") -> tuple[dict, list[str]]:
    """R-hat, bulk/tail ESS (over the variables of `ds`, dims chain, draw, ...), the rank test
    (over `rank_quantities(ds)`), divergences and E-BFMI (from `idata.sample_stats`), which
    quantity is worst for each, and plain warnings when any check fails. NaN where a chain
    cannot tell (one chain, a stuck chain)."""
    import arviz as az

    n_chains = int(ds.sizes["chain"])
    with warnings.catch_warnings():  # one chain or a stuck chain: R-hat is NaN (said below)
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat, worst_rhat = _worst(az.rhat(ds), np.nanargmax)
        ess_b, worst_b = _worst(az.ess(ds, method="bulk"), np.nanargmin)
        ess_t, worst_t = _worst(az.ess(ds, method="tail"), np.nanargmin)
    rank = holm(rank_test(rank_quantities(ds))) if n_chains > 1 else None
    finite = {k: v for k, v in (rank or {}).items() if np.isfinite(v)}
    worst_rank = min(finite, key=finite.get) if finite else None

    div = int(np.asarray(idata.sample_stats["diverging"]).sum())
    bfmi_vals = np.asarray(az.bfmi(idata)["energy"], dtype=float).reshape(-1)
    diag = {
        "r_hat_max": rhat,
        "ess_bulk_min": ess_b,
        "ess_tail_min": ess_t,
        "divergences": div,
        "e_bfmi_min": float(np.min(bfmi_vals)),
        "e_bfmi": [float(v) for v in bfmi_vals],
        "rank_p_min": finite[worst_rank] if worst_rank else None,
        "rank_p": rank,
        "rank_test": RANK_NOTE.format(m=len(finite), alpha=RANK_ALPHA) if rank else None,
        "worst": {
            "r_hat": worst_rhat if n_chains > 1 else None,
            "ess_bulk": worst_b,
            "ess_tail": worst_t,
            "rank": worst_rank,
            "e_bfmi": f"chain {int(np.argmin(bfmi_vals))}" if bfmi_vals.size else None,
        },
    }
    return diag, _warnings(diag, n_chains, parametrization)


def failed(diag: dict) -> dict[str, bool]:
    """{check: True where it fails} for a diagnostics dict (JSON nulls read as not computed):
    r_hat (also when not computed: convergence is not shown), ess_bulk, ess_tail, divergences,
    e_bfmi, rank. The report colours its diagnostics table with it."""

    def num(key):
        v = diag.get(key)
        return math.nan if v is None else float(v)

    r = num("r_hat_max")
    return {
        "r_hat": not math.isfinite(r) or r > RHAT_LIMIT,
        "ess_bulk": num("ess_bulk_min") < ESS_LIMIT,
        "ess_tail": num("ess_tail_min") < ESS_LIMIT,
        "divergences": bool(diag.get("divergences")),
        "e_bfmi": num("e_bfmi_min") < BFMI_LIMIT,
        "rank": num("rank_p_min") < RANK_ALPHA,
    }


def _warnings(diag: dict, n_chains: int, parametrization: str) -> list[str]:
    """One plain warning per failed check, naming the worst quantity."""
    worst, bad, out = diag["worst"], failed(diag), []
    if n_chains < 2:
        out.append(ONE_CHAIN)
    elif not math.isfinite(diag["r_hat_max"]):
        out.append(
            f"R-hat of {worst['r_hat']} could not be computed (a chain did not move, e.g. with "
            "no tuning steps): do not trust these summaries (tune longer)."
        )
    elif bad["r_hat"]:
        out.append(
            f"R-hat of {worst['r_hat']} is {diag['r_hat_max']:.4f} (> {RHAT_LIMIT}): the chains "
            "disagree; do not trust these summaries (run longer, or try the other "
            "parametrization)."
        )
    for key, what, part in (
        ("ess_bulk", "bulk", "the centre of the posterior (means, medians)"),
        ("ess_tail", "tail", "the ends of the intervals"),
    ):
        if bad[key]:
            out.append(
                f"{what} ESS of {worst[key]} is {diag[key + '_min']:.0f} (< {ESS_LIMIT}): too "
                f"few effective draws for {part}; run more draws."
            )
    if bad["rank"]:
        m = sum(np.isfinite(v) for v in diag["rank_p"].values())
        out.append(
            f"rank test of {worst['rank']}: p = {diag['rank_p_min']:.2g} (< {RANK_ALPHA}, "
            f"Holm-adjusted over {m} quantities): its chains sample different distributions "
            "(see the rank plots); run longer, or try the other parametrization."
        )
    if bad["divergences"]:
        fix = (
            "use the non-centered form or raise target_accept"
            if parametrization == "centered"
            else "raise target_accept (and tune longer)"
            if parametrization == "collapsed"
            else "raise target_accept"
        )
        where = " (the funnel)" if parametrization in ("centered", "noncentered") else ""
        out.append(
            f"{diag['divergences']} divergent transition(s): the sampler could not explore "
            f"part of the posterior{where}, so the summaries may be biased; {fix}."
        )
    if bad["e_bfmi"]:
        out.append(
            f"E-BFMI of {worst['e_bfmi']} is {diag['e_bfmi_min']:.2f} (< {BFMI_LIMIT}): the "
            "momentum resampling explores the energy poorly."
        )
    return out
