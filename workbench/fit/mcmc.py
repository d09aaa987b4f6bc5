"""The full posterior by NUTS for every model: PyMC's model from `workbench.model.pymc`, sampled
by nutpie when installed (PyMC's NUTS otherwise), kept as an ArviZ DataTree, with diagnostics
and summaries in the JSON contract's terms (fixed effects, variance components, sigma^2, random
effects; for the one-way model also today's mu, sigma, sigma2, tau, tau2 and group means).
With several grouping factors the variance components and random effects are keyed by factor
(lme4's names, "plate", "cask:batch"), as `EBFit.to_dict` keys them."""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from workbench.fit import nuts
from workbench.fit.diagnostics import SAMPLE_DIMS, diagnose
from workbench.model.design import LMMData
from workbench.model.priors import Priors
from workbench.model.pymc import effect_names, effects_name
from workbench.seeds import int_seed_for

HDI_PROB = 0.94
MODE_NOTE = (
    "mode: half-sample mode (arviz.mode) of the marginal draws, on the scale of the "
    "quantity named (the mode of sigma2 is not the square of the mode of sigma)"
)
ESTIMATE_NOTE = "estimate = posterior mean, se = posterior sd"
ONEWAY_ALIASES = ("mu", "sigma", "sigma2", "tau", "tau2")


@dataclass(frozen=True)
class McmcSettings:
    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    target_accept: float = 0.9
    parametrization: str = "collapsed"
    seed: int = 0  # the root seed: the sampler gets int_seed_for(seed, "mcmc")
    sampler: str = "nutpie"  # NUTS: "nutpie" (`fit.nuts`: cached compile) or "pymc"


def _summaries(ds) -> dict:
    """{variable: array of {mean, median, sd, hdi, mode}} for every variable of an xarray Dataset
    of draws (dims chain, draw, ...): ArviZ's 94% HDI and half-sample mode, vectorised."""
    import arviz as az

    mean, median = ds.mean(SAMPLE_DIMS), ds.median(SAMPLE_DIMS)
    sd = ds.std(SAMPLE_DIMS, ddof=1)
    hdi = az.hdi(ds, prob=HDI_PROB)
    mode = az.mode(ds, round_to="none")
    out = {}
    for v in ds.data_vars:
        shape = mean[v].shape
        lo, hi = (np.asarray(hdi[v].sel(ci_bound=b)).reshape(shape) for b in ("lower", "upper"))
        cells = np.empty(shape, dtype=object)
        for i in np.ndindex(shape):
            cells[i] = {
                "mean": float(np.asarray(mean[v])[i]),
                "median": float(np.asarray(median[v])[i]),
                "sd": float(np.asarray(sd[v])[i]),
                "hdi": [float(lo[i]), float(hi[i])],
                "mode": float(np.asarray(mode[v])[i]),
            }
        out[v] = cells
    return out


def _correlation_pairs(data: LMMData) -> list[tuple[int, int, int, str]]:
    """(block k, i, j, "term_i:term_j") for every correlation of a correlated block (the name
    is unique within the block's grouping factor)."""
    return [
        (k, i, j, f"{block.names[i]}:{block.names[j]}")
        for k, block in enumerate(data.blocks)
        for i in range(len(block.cols))
        for j in range(i + 1, len(block.cols))
    ]


def _qualified(data: LMMData, k: int, name: str) -> str:
    """A parameter name of block k unique across the model: `name` with one grouping factor,
    lme4's `name|factor` with several."""
    if data.n_factors == 1:
        return name
    return f"{name}|{data.groupings[data.blocks[k].factor].name}"


def _correlations(post, data: LMMData):
    """The correlations as one DataArray (chain, draw, pair) from `chol_k_corr`, or None; pair
    labels by `_qualified`."""
    import xarray as xr

    pairs = _correlation_pairs(data)
    if not pairs:
        return None
    vals = [np.asarray(post[f"chol_{k}_corr"])[..., i, j] for k, i, j, _ in pairs]
    return xr.DataArray(
        np.stack(vals, axis=-1),
        dims=(*SAMPLE_DIMS, "pair"),
        coords={"pair": [_qualified(data, k, n) for k, _, _, n in pairs]},
    )


def _components(data: LMMData, variances, correlations) -> dict[str, dict]:
    """{factor: {"variances": {term: v}, "correlations": {"a:b": v}}} from per-column variances
    (Z's order) and per-pair correlations (`_correlation_pairs` order)."""
    re_names, pairs = data.re_names, _correlation_pairs(data)
    return {
        g.name: {
            "variances": {re_names[c]: variances[c] for c in data.factor_cols(f)},
            "correlations": {
                n: r
                for (k, *_, n), r in zip(pairs, correlations, strict=True)
                if data.blocks[k].factor == f
            },
        }
        for f, g in enumerate(data.groupings)
    }


def _effect_summaries(b: np.ndarray, labels, terms) -> dict:
    """{label: {term: {mean, sd}}} of draws b (chain, draw, level, term)."""
    b = b.reshape(-1, *b.shape[2:])
    mean, sd = b.mean(axis=0), b.std(axis=0, ddof=1)
    return {
        lab: {n: {"mean": float(mean[j, t]), "sd": float(sd[j, t])} for t, n in enumerate(terms)}
        for j, lab in enumerate(labels)
    }


def _first(da):
    """The first entry along the last dimension, that dimension dropped."""
    return da.isel({da.dims[-1]: 0}, drop=True)


def _with_oneway_aliases(idata):
    """The DataTree with the one-way model's names added to its posterior: mu (the intercept),
    tau (its SD), tau2, and group_mean (mu + b_j), as the one-way outputs name them."""
    post = idata.posterior.to_dataset()
    mu, tau = _first(post["beta"]), _first(post["sd"])
    out = idata.copy()
    out["posterior"] = post.assign(mu=mu, tau=tau, tau2=tau**2, group_mean=mu + _first(post["b"]))
    return out


def _monitored(idata, data: LMMData):
    """The quantities the diagnostics watch: every posterior variable but the Cholesky
    matrices and the per-block value variables (z_k, b_k, sd_k: `sd` and `b` hold them by
    name), plus the correlations by name."""
    post = idata.posterior.to_dataset()
    raw = ("chol_", "z_", "b_", "sd_")
    names = [v for v in post.data_vars if not str(v).startswith(raw)]
    ds = post[names]
    cor = _correlations(post, data)
    return ds if cor is None else ds.assign(correlation=cor)


def _summarise(idata, data: LMMData) -> dict:
    """Every summary of the record, computed once (see `Posterior.summaries`): fixed_effects,
    components ({factor: {variances, correlations, sds}}: sds the summaries of the SD draws
    themselves, not the roots of the variances'), sigma, sigma2, random_effects_b (keyed by
    factor with several; with one, {label: ...} plus its variances, correlations and sds)."""
    post = idata.posterior.to_dataset()
    ds = post[["beta", "sigma", "sigma2", "sd"]].assign(variance=post["sd"] ** 2)
    cor = _correlations(post, data)
    if cor is not None:
        ds = ds.assign(correlation=cor)
    if data.is_oneway:
        ds = ds.assign({v: post[v] for v in ("mu", "tau", "tau2", "group_mean")})
    s = _summaries(ds)
    out = {
        "fixed_effects": dict(zip(data.fixed_names, s["beta"], strict=True)),
        "components": _components(data, s["variance"], s.get("correlation", ())),
        "sigma": s["sigma"].item(),
        "sigma2": s["sigma2"].item(),
    }
    for f, g in enumerate(data.groupings):
        sds = {data.re_names[c]: s["sd"][c] for c in data.factor_cols(f)}
        out["components"][g.name]["sds"] = sds
    effects = {
        g.name: _effect_summaries(
            np.asarray(post[effects_name(data, f)]),
            g.labels,
            [data.re_names[c] for c in data.factor_cols(f)],
        )
        for f, g in enumerate(data.groupings)
    }
    if data.n_factors == 1:  # the one-factor record's keys, unchanged
        out.update(out["components"][data.group_name])
        out["random_effects_b"] = effects[data.group_name]
    else:
        out["random_effects_b"] = effects
    if data.is_oneway:
        out.update({v: s[v].item() for v in ("mu", "tau", "tau2")})
        out["group_mean"] = dict(zip(data.labels, s["group_mean"], strict=True))
    return out


@dataclass(frozen=True)
class Posterior:
    """The posterior of one model: the draws (`idata`, an ArviZ DataTree), the settings, the
    diagnostics and warnings, and `summaries` (built once by `from_idata`)."""

    data: LMMData = field(repr=False)
    idata: object = field(repr=False)  # xarray.DataTree
    settings: McmcSettings
    diagnostics: dict
    warnings: tuple[str, ...]
    sampler: str
    summaries: dict = field(repr=False)

    def brief(self) -> str:
        """One line: posterior means of the variances, R-hat and divergences; never draws."""
        from workbench.fit import brief

        s, d = self.summaries, self.diagnostics
        comps = {
            f: {k: c[k] for k in ("variances", "correlations")} for f, c in s["components"].items()
        }
        return (
            f"means {brief.variances(self.data, s['sigma2'], comps)}; "
            f"R-hat max {brief.num(d.get('r_hat_max'))}, {d.get('divergences')} divergences"
        )

    def __repr__(self) -> str:
        st = self.settings
        return (
            f"Posterior({self.sampler}, {st.parametrization}, {st.chains} chains x {st.draws} "
            f"draws: {self.brief()})"
        )

    @property
    def posterior(self):
        """The DataTree (the old one-way record's name for it)."""
        return self.idata

    @property
    def summary(self) -> dict:
        """{mu, sigma, sigma2, tau, tau2} (sigma, sigma2 only for other models)."""
        return {q: self.summaries[q] for q in ONEWAY_ALIASES if q in self.summaries}

    @property
    def group_summary(self) -> dict:
        """{label: summary of the group mean mu + b_j} (one-way model)."""
        return self.summaries["group_mean"]

    def draws(self, name: str) -> np.ndarray:
        """Draws of a posterior variable, chain and draw stacked into the first axis: flat for
        scalars (sigma, sigma2; one-way mu, tau, tau2), (n, ...) otherwise (beta, sd, b,
        group_mean; `b[<factor>]` with several factors)."""
        arr = np.asarray(self.idata.posterior[name])
        return arr.reshape(-1, *arr.shape[2:])

    def effect_draws(self, factor: int | str = 0) -> np.ndarray:
        """Draws (n, levels, terms) of the random effects of one grouping factor (index or
        name), its terms in `data.factor_cols(k)` order (as `EBFit.modes`)."""
        k = self.data.factor_names.index(factor) if isinstance(factor, str) else factor
        return self.draws(effects_name(self.data, k))

    def variance_draws(self) -> dict[str, np.ndarray]:
        """{term: draws} of every variance; with several factors keyed `term|factor`."""
        sd = self.draws("sd")
        return {n: sd[:, c] ** 2 for c, n in enumerate(effect_names(self.data))}

    def correlation_draws(self) -> dict[str, np.ndarray]:
        """{"a:b": draws} of every correlation; with several factors keyed `a:b|factor`."""
        cor = _correlations(self.idata.posterior, self.data)
        if cor is None:
            return {}
        flat = np.asarray(cor).reshape(-1, cor.sizes["pair"])
        return {n: flat[:, i] for i, n in enumerate(cor["pair"].values.tolist())}

    def to_dict(self) -> dict:
        s = copy.deepcopy(self.summaries)
        out = {
            "settings": asdict(self.settings),
            "sampler": self.sampler,
            "fixed_effects": {
                n: {**v, "estimate": v["mean"], "se": v["sd"]}
                for n, v in s["fixed_effects"].items()
            },
            "variance_components": s["components"],
            "sigma": s["sigma"],
            "sigma2": s["sigma2"],
            "random_effects": s["random_effects_b"],
            "random_effects_b": copy.deepcopy(s["random_effects_b"]),
            "estimate_note": ESTIMATE_NOTE,
            "hdi_prob": HDI_PROB,
            "mode_scale": MODE_NOTE,
            "diagnostics": copy.deepcopy(self.diagnostics),
            "warnings": list(self.warnings),
        }
        if self.data.is_oneway:  # today's one-way keys: group means under random_effects
            out.update({q: s[q] for q in ("mu", "tau", "tau2")}, random_effects=s["group_mean"])
        return out


def from_idata(data: LMMData, idata, settings: McmcSettings, sampler: str, notes=()) -> Posterior:
    """The record of draws of `build_model(data, ...)`'s variables (beta, sigma, sd, sigma2,
    chol_k_corr, and b or b[<factor>]; any sampler, or made up for tests): diagnostics and
    summaries; `notes` (what the sampler run changed) lead the warnings."""
    if data.is_oneway:
        idata = _with_oneway_aliases(idata)
    diag, warns = diagnose(idata, _monitored(idata, data), settings.parametrization)
    return Posterior(
        data=data,
        idata=idata,
        settings=settings,
        diagnostics=diag,
        warnings=(*notes, *warns),
        sampler=sampler,
        summaries=_summarise(idata, data),
    )


def _collapsed_effects(idata, data: LMMData, priors: Priors, settings: McmcSettings, stats=None):
    """The collapsed sampler's DataTree completed with exact draws of beta and of the random
    effects (`objectives.collapsed.conditional_draws`, one per posterior draw of sigma and the
    covariances, seeded by the root seed's "mcmc-effects" step, drawn in (chain, draw) order
    so the number of processes does not matter), under the full model's names and dims: `beta`
    (fixed) and `b` (group, effect) or `b[<factor>]` (level[<factor>], effect[<factor>]).
    `stats`: the model's `collapsed.Stats` when the caller has them (else computed)."""
    from workbench.objectives import collapsed

    post = idata.posterior.to_dataset()
    sigma = np.asarray(post["sigma"], float)
    n_chains, n_draws = sigma.shape
    chols = [
        np.asarray(post[f"chol_{k}_L"], float).reshape(n_chains * n_draws, len(b.cols), -1)
        for k, b in enumerate(data.blocks)
    ]
    rng = np.random.default_rng(int_seed_for(settings.seed, "mcmc-effects"))
    stats = stats or collapsed.Stats.of(data, priors)
    beta, effects = collapsed.conditional_draws(stats, sigma.reshape(-1), chols, rng)
    shape = (n_chains, n_draws)
    new = {"beta": ((*SAMPLE_DIMS, "fixed"), beta.reshape(*shape, -1))}
    coords = {"fixed": list(data.fixed_names)}
    for f, g in enumerate(data.groupings):
        cols = data.factor_cols(f)
        b = np.empty((n_chains * n_draws, g.n_levels, len(cols)))
        for block, eff in zip(data.blocks, effects, strict=True):
            if block.factor == f:
                for i, c in enumerate(block.cols):
                    b[:, :, cols.index(c)] = eff[:, :, i]
        terms = [data.re_names[c] for c in cols]
        if data.n_factors == 1:
            dims = ("group", "effect")
            coords.update(group=list(g.labels), effect=terms)
        else:
            dims = (f"level[{g.name}]", f"effect[{g.name}]")
            coords.update({dims[0]: list(g.labels), dims[1]: terms})
        new[effects_name(data, f)] = ((*SAMPLE_DIMS, *dims), b.reshape(*shape, *b.shape[1:]))
    out = idata.copy()
    out["posterior"] = post.assign_coords(coords).assign(new)
    return out


def fit(
    data: LMMData, priors: Priors, settings: McmcSettings, progressbar: bool = False
) -> Posterior:
    """Sample the posterior with NUTS (seeded by the root seed's "mcmc" step) and summarise it.

    `settings.parametrization`: "collapsed" (default) samples (sigma, covariances) with beta
    and b integrated out, then draws them exactly; "noncentered" / "centered" sample the full
    model. `settings.sampler`: "nutpie" (`fit.nuts`: nutpie's NUTS on PyTensor's cached
    compile) or "pymc" (PyMC's own NUTS, same cache, slower to start)."""
    import pymc as pm

    from workbench.model.pymc import build_collapsed, build_model
    from workbench.objectives.collapsed import Stats, kernel_for

    notes = []
    if settings.parametrization == "collapsed" and kernel_for(data) is None:
        notes.append(
            "the collapsed sampler handles several grouping factors up to "
            "objectives.collapsed.MAX_DENSE random effects; this model has more, so the full "
            "non-centered model was sampled."
        )
        settings = replace(settings, parametrization="noncentered")
    collapsed = settings.parametrization == "collapsed"
    stats = Stats.of(data, priors) if collapsed else None  # built once: model and exact draws
    model = (
        build_collapsed(data, priors, stats)
        if collapsed
        else build_model(data, priors, settings.parametrization)
    )
    seed = int_seed_for(settings.seed, "mcmc")
    if settings.sampler == "nutpie":
        idata = nuts.sample(
            model,
            draws=settings.draws,
            tune=settings.tune,
            chains=settings.chains,
            seed=seed,
            target_accept=settings.target_accept,
            progressbar=progressbar,
        )
    else:
        idata = pm.sample(
            draws=settings.draws,
            tune=settings.tune,
            chains=settings.chains,
            cores=min(settings.chains, os.cpu_count() or 1),
            random_seed=seed,
            target_accept=settings.target_accept,
            nuts_sampler="pymc",
            progressbar=progressbar,
            compute_convergence_checks=False,  # ours: `diagnose`
            model=model,
        )
    if collapsed:
        idata = _collapsed_effects(idata, data, priors, settings, stats)
    return from_idata(data, idata, settings, settings.sampler, notes)


def save_netcdf(posterior: Posterior, path) -> None:
    """Write the posterior DataTree to NetCDF (netCDF4 engine; object-typed stats dropped)."""
    tree = posterior.idata.copy()
    if "sample_stats" in tree:
        stats = tree["sample_stats"].to_dataset()
        drop = [v for v in stats.data_vars if stats[v].dtype == object]
        tree["sample_stats"] = stats.drop_vars(drop)
    tree.to_netcdf(path, engine="netcdf4")
