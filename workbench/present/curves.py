"""The numbers behind the report's figures, computed apart from drawing: each function takes
the records of a comparison (or the one-way per-group statistics) and returns a frozen record
of plain arrays, which `plots.py` draws. Every model gets the same records; the one-way-only
ones (the profile over sigma^2, the tau path) take the one-way `Stats`.

Method names (`Estimate.method`) are the report's labels: "EB-ML", "EB-REML", the four joint
MAP variants (`JOINT_LABELS`), "MCMC mean", "MCMC mode", "truth"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.fit.eb import components_by_factor
from workbench.fit.eb_oneway import argmax_nonneg
from workbench.model.data import Stats
from workbench.objectives import blocked
from workbench.objectives import oneway as dens
from workbench.objectives.deviance import Layout, solve

Z95 = 1.959963984540054
HDI_PROB = 0.94
JOINT_LABELS = {
    ("centered", False): "joint MAP (h-likelihood, centered)",
    ("centered", True): "joint MAP (with priors, centered)",
    ("noncentered", False): "joint MAP (h-likelihood, noncentered)",
    ("noncentered", True): "joint MAP (with priors, noncentered)",
}


# ----------------------------------------------------------------------------------------------
# What a comparison holds, read the same way for every model


def idata(post):
    """The ArviZ tree of a posterior record."""
    # TODO(hrep): `idata` is the contract's name; `posterior` the pre-unification one
    tree = getattr(post, "idata", None)
    return tree if tree is not None else post.posterior


def interior(r) -> bool:
    """A joint MAP record with an interior mode (its estimates exist)."""
    return r is not None and r.status == "interior" and r.G is not None


def mode(draws: np.ndarray) -> float:
    """ArviZ's half-sample mode of finite draws (NaN without any)."""
    import arviz as az

    d = np.asarray(draws, float).reshape(-1)
    d = d[np.isfinite(d)]
    return float(az.mode(d, round_to="none")) if d.size else float("nan")


# ----------------------------------------------------------------------------------------------
# Marginals of every variance component, with every estimate


@dataclass(frozen=True)
class Estimate:
    method: str
    value: float


@dataclass(frozen=True)
class Marginal:
    """One panel: the MCMC draws of one quantity (None without MCMC) and every point estimate
    of it. `lower` bounds its support (0 for a variance, -1 for a correlation)."""

    key: str  # "sigma2", "var:<term>", "cor:<a>:<b>", "beta:<name>"
    title: str
    draws: np.ndarray | None
    estimates: tuple[Estimate, ...]
    lower: float


@dataclass(frozen=True)
class Component:
    """One variance component of one grouping factor: `key` indexes the value dicts of the
    table, the report and the figures ("var:<term>", "cor:<a>:<b>"; with several factors
    "|<factor>" appended, as a term name recurs across factors)."""

    key: str
    kind: str  # "var" or "cor"
    name: str  # the term, or "<a>:<b>" for a correlation
    factor: str
    col: int | None = None  # a variance's column of Z (and of the posterior's `sd`)
    pair: tuple[str, str] | None = None  # a correlation's two terms


def components(data) -> tuple[Component, ...]:
    """Every variance and correlation, factor by factor (lme4's order): variances, then
    correlations of each factor."""
    out = []
    for k, g in enumerate(data.groupings):
        tail = "" if data.n_factors == 1 else f"|{g.name}"
        blocks = [b for b in data.blocks if b.factor == k]
        out += [
            Component(f"var:{n}{tail}", "var", n, g.name, c)
            for b in blocks
            for n, c in zip(b.names, b.cols, strict=True)
        ]
        out += [
            Component(
                f"cor:{a}:{b.names[j]}{tail}",
                "cor",
                f"{a}:{b.names[j]}",
                g.name,
                None,
                (a, b.names[j]),
            )
            for b in blocks
            for i, a in enumerate(b.names)
            for j in range(i + 1, len(b.names))
        ]
    return tuple(out)


def component_values(G, data) -> dict[str, float]:
    """G's variances and correlations by `Component.key`."""
    by = components_by_factor(np.asarray(G, float), data)
    out = {}
    for comp in components(data):
        vc = by[comp.factor]
        out[comp.key] = float((vc.variances if comp.kind == "var" else vc.correlations)[comp.name])
    return out


def summary_values(data, variance_components: dict, stat: str) -> dict:
    """One statistic of every component from a posterior summary keyed like the JSON
    (`{factor: {variances: {term: summary}, correlations: {...}}}`); missing ones left out."""
    out = {}
    for comp in components(data):
        part = (variance_components.get(comp.factor) or {}).get(
            "variances" if comp.kind == "var" else "correlations", {}
        )
        if comp.name in part:
            out[comp.key] = part[comp.name].get(stat)
    return out


def component_draws(post, data) -> dict[str, np.ndarray]:
    """Posterior draws of every component by key: variances from `sd` (Z's columns), the
    correlations of each correlated block from its `chol_<k>_corr` (model/pymc.py's names)."""
    sd = post.draws("sd")
    out = {p.key: sd[:, p.col] ** 2 for p in components(data) if p.kind == "var"}
    if data.n_factors == 1:
        out.update({f"cor:{n}": v for n, v in post.correlation_draws().items()})
        return out
    tree = post.idata.posterior
    for k, block in enumerate(data.blocks):
        if len(block.cols) < 2 or f"chol_{k}_corr" not in tree:
            continue
        arr = np.asarray(tree[f"chol_{k}_corr"])
        arr = arr.reshape(-1, *arr.shape[2:])
        factor = data.groupings[block.factor].name
        for i, a in enumerate(block.names):
            for j in range(i + 1, len(block.names)):
                out[f"cor:{a}:{block.names[j]}|{factor}"] = arr[:, i, j]
    return out


def _values(beta, sigma2, G, data) -> dict[str, float]:
    out = {"sigma2": float(sigma2)}
    out.update(component_values(G, data))
    out.update({f"beta:{n}": float(b) for n, b in zip(data.fixed_names, beta, strict=True)})
    return out


def _truth(truth: dict | None, data) -> dict[str, float]:
    """A case file's [truth] (one-way: mu, sigma2, tau2) in the panels' keys."""
    if not truth or not data.is_oneway:
        return {}
    keys = {"sigma2": "sigma2", "tau2": "var:(Intercept)", "mu": "beta:(Intercept)"}
    return {keys[k]: float(v) for k, v in truth.items() if k in keys and v is not None}


def marginals(c, truth: dict | None = None) -> tuple[Marginal, ...]:
    """sigma^2, every random-effect variance and correlation, and (one-way) the overall mean."""
    d = c.data
    panels = [("sigma2", f"sigma² (residual variance, {d.y_name}²)", 0.0)]
    for comp in components(d):
        if comp.kind == "var":
            title = f"variance of the {comp.name} effects ({comp.factor})"
        else:
            title = f"correlation {comp.name} ({comp.factor})"
        panels.append((comp.key, title, 0.0 if comp.kind == "var" else -1.0))
    if d.is_oneway:
        panels.append(("beta:(Intercept)", f"overall mean ({d.y_name})", -np.inf))
    fits = [(n, f) for n, f in (("EB-ML", c.eb_ml), ("EB-REML", c.eb_reml)) if f is not None]
    points = [(n, _values(f.beta, f.sigma2, f.G, d)) for n, f in fits]
    for key, r in c.joint_maps.items():
        if interior(r):
            points.append((JOINT_LABELS[key], _values(r.beta, r.sigma2, r.G, d)))
    draws: dict[str, np.ndarray] = {}
    if c.mcmc is not None:
        post = c.mcmc
        draws["sigma2"] = post.draws("sigma2").reshape(-1)
        draws.update(component_draws(post, d))
        beta = post.draws("beta")
        draws.update({f"beta:{n}": beta[:, k] for k, n in enumerate(d.fixed_names)})
    true = _truth(truth, d)
    out = []
    for key, title, lower in panels:
        est = [Estimate(n, v[key]) for n, v in points if key in v]
        if key in draws:
            est += [
                Estimate("MCMC mean", float(np.nanmean(draws[key]))),
                Estimate("MCMC mode", mode(draws[key])),
            ]
        if key in true:
            est.append(Estimate("truth", true[key]))
        out.append(Marginal(key, title, draws.get(key), tuple(est), lower))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# Random-effect intervals per term (caterpillar)


@dataclass(frozen=True)
class Series:
    method: str  # whose intervals (a method name, for the style)
    label: str  # what they are
    lower: np.ndarray
    upper: np.ndarray
    centre: np.ndarray


@dataclass(frozen=True)
class Caterpillar:
    """Intervals for the effects b_j of one term, for the groups shown (`labels`)."""

    term: str
    labels: tuple[str, ...]
    n_groups: int  # of all groups (more than shown when thinned)
    series: tuple[Series, ...]


def conditional_cov(data, sigma2: float, G: np.ndarray) -> np.ndarray:
    """Conditional covariances (m, q, q) of b_j given y at (sigma^2, G), one grouping factor:
    lme4's condVar at the relative covariance factor of G (block Cholesky of G / sigma^2)."""
    lay = Layout.of(data.blocks, data.q)
    T = np.linalg.cholesky(G / sigma2)  # block lower-triangular, as G is block diagonal
    return solve(data.factors, lay, lay.theta(T)).cond_cov(sigma2)


def conditional_covs(data, sigma2: float, G: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per grouping factor, (n_k, q_k, q_k) conditional covariances of its effects given y at
    (sigma^2, G) (lme4's condVar; zero between blocks of a factor), columns in
    `data.factor_cols(k)` order (those of `EBFit.modes`)."""
    if data.n_factors == 1:
        return (conditional_cov(data, sigma2, G),)
    from workbench.fit import eb_blocked

    lay = Layout.of(data.blocks, data.q)
    theta = lay.theta(np.linalg.cholesky(G / sigma2))
    return eb_blocked.conditional_covariances(data, theta, sigma2)


def _hdi(draws: np.ndarray) -> np.ndarray:
    """(k, 2) HDI of each column of `draws` (S, k)."""
    import arviz as az

    return np.array([np.asarray(az.hdi(draws[:, i], prob=HDI_PROB)) for i in range(draws.shape[1])])


def _modes(fit, data, k: int):
    """(modes, covariances) of factor k of an EB fit or an interior joint MAP: the record's
    per-factor `modes` / `mode_covs` (one factor: `re_mode` / `re_cov`), the covariances
    computed at its (sigma^2, G) when the record has none."""
    if data.n_factors == 1:
        modes, covs = fit.re_mode, getattr(fit, "re_cov", None)
        return modes, covs if covs is not None else conditional_cov(data, fit.sigma2, fit.G)
    modes, covs = getattr(fit, "modes", None), getattr(fit, "mode_covs", None)
    if modes is None:
        raise ValueError(f"{type(fit).__name__} has no per-factor modes")
    if covs is None:
        covs = conditional_covs(data, fit.sigma2, fit.G)
    return modes[k], covs[k]


def effect_draws(post, data, k: int) -> np.ndarray:
    """(S, n_k, q_k) posterior draws of grouping factor k's effects (model/pymc.py's names)."""
    from workbench.model.pymc import effects_name

    return post.draws(effects_name(data, k))


def caterpillars(c, max_groups: int = 30, factor: int = 0) -> tuple[Caterpillar, ...]:
    """One record per random-effect term of grouping factor `factor`: EB-ML conditional 95%
    intervals, the headline joint MAP's conditional 95% intervals (variances fixed at its
    mode), the MCMC 94% HDI. Levels sorted by their EB-ML mode of the factor's first term,
    thinned evenly to `max_groups`."""
    d = c.data
    g = d.groupings[factor]
    eb_modes, eb_covs = _modes(c.eb_ml, d, factor)
    order = np.argsort(eb_modes[:, 0], kind="stable")
    if g.n_levels > max_groups:
        order = order[np.linspace(0, g.n_levels - 1, max_groups).round().astype(int)]
    jm = c.joint_maps.get(("centered", False))
    b = effect_draws(c.mcmc, d, factor) if c.mcmc is not None else None
    out = []
    fits = [("EB-ML", "EB-ML conditional 95%", eb_modes, eb_covs)]
    if interior(jm):
        label = "joint MAP conditional 95% (centered, variances fixed)"
        fits.append((JOINT_LABELS[("centered", False)], label, *_modes(jm, d, factor)))
    for k, term in enumerate(d.factor_terms(factor)):
        series = []
        for method, label, modes, cov in fits:
            centre = modes[order, k]
            half = Z95 * np.sqrt(np.maximum(cov[order, k, k], 0.0))
            series.append(Series(method, label, centre - half, centre + half, centre))
        if b is not None:
            draws = b[:, order, k]
            hdi = _hdi(draws)
            label = "MCMC 94% HDI (dash: mean)"
            series.append(Series("MCMC mean", label, hdi[:, 0], hdi[:, 1], draws.mean(axis=0)))
        labels = tuple(g.labels[j] for j in order)
        out.append(Caterpillar(term, labels, g.n_levels, tuple(series)))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# The funnel: the intercept SD against a few intercept effects


@dataclass(frozen=True)
class Funnel:
    term: str
    labels: tuple[str, ...]
    effects: np.ndarray  # (S, k) posterior draws of b_j for the groups shown
    log_sd: np.ndarray  # (S,) posterior draws of log sd of the term
    eb: tuple[np.ndarray, float] | None  # (b_j modes, log sd) at EB-ML; None at sd = 0
    joint: tuple[np.ndarray, float] | None  # the same at the headline joint MAP


def has_intercept(data, k: int) -> bool:
    return "(Intercept)" in data.factor_terms(k)


def funnel(c, factor: int = 0) -> Funnel:
    """Draws of log sd_(Intercept) of grouping factor `factor` against the intercept effects
    of three of its levels (the lowest, middle and highest EB-ML mode). Needs MCMC and a
    random intercept of that factor."""
    d = c.data
    k = d.factor_terms(factor).index("(Intercept)")
    col = d.factor_cols(factor)[k]  # its column of Z (and of `sd`)
    eb_modes = _modes(c.eb_ml, d, factor)[0]
    order = np.argsort(eb_modes[:, k], kind="stable")
    groups = sorted({int(order[0]), int(order[len(order) // 2]), int(order[-1])})
    sd = c.mcmc.draws("sd")[:, col]
    with np.errstate(divide="ignore"):
        log_sd = np.log(sd)
    effects = effect_draws(c.mcmc, d, factor)[:, groups, k]

    def at(modes, G):
        v = float(G[col, col])
        return (modes[groups, k], 0.5 * float(np.log(v))) if v > 0 else None

    jm = c.joint_maps.get(("centered", False))
    joint = None
    if interior(jm):
        jm_modes = jm.re_mode if d.n_factors == 1 else getattr(jm, "modes", None)
        if jm_modes is not None:
            joint = at(jm_modes if d.n_factors == 1 else jm_modes[factor], jm.G)
    return Funnel(
        term="(Intercept)",
        labels=tuple(d.groupings[factor].labels[j] for j in groups),
        effects=effects,
        log_sd=log_sd,
        eb=at(eb_modes, c.eb_ml.G),
        joint=joint,
    )


# ----------------------------------------------------------------------------------------------
# Objectives along paths


@dataclass(frozen=True)
class ScalePath:
    """Both objectives along theta = s x theta_ML (every random-effect variance scaled by s^2
    relative to sigma^2), beta, b and sigma^2 maximised at each s."""

    scale: np.ndarray
    log_marginal: np.ndarray
    log_joint: np.ndarray


def scale_path(fit, npts: int = 80, grid: np.ndarray | None = None) -> ScalePath:
    """The path for the EB fit `fit` (diagonal theta floored at 0.05 so that a singular fit
    still has a path); `npts` / 2 points with several grouping factors (one sparse
    factorisation each), most of them on [0.05, 4] where the curves bend; or on `grid`."""
    d = fit.data
    lay = Layout.of(d.blocks, d.q)
    theta = np.array(fit.theta, float)
    theta[lay.diagonal] = np.maximum(theta[lay.diagonal], 0.05)
    if grid is not None and d.n_factors > 1:
        return _blocked_scale_path(d, theta, np.asarray(grid, float))
    if d.n_factors > 1:
        left = npts // 6
        grid = np.concatenate(
            [
                np.geomspace(1e-4, 0.05, left, endpoint=False),
                np.geomspace(0.05, 4.0, npts // 2 - left),
            ]
        )
        return _blocked_scale_path(d, theta, grid)
    grid = np.geomspace(1e-4, 4.0, npts) if grid is None else np.asarray(grid, float)
    lm, lj = [], []
    for s in grid:
        pls = solve(d.factors, lay, s * theta)
        lm.append(-0.5 * pls.objective("ml"))
        lj.append(-0.5 * pls.objective("joint"))
    return ScalePath(grid, np.array(lm), np.array(lj))


def scale_paths(fit, drop: float = 12.0, npts: int = 41) -> tuple[ScalePath, ScalePath]:
    """The whole path and a zoom on a fine grid (through s = 1) over where l is within `drop`
    nats of its maximum: on large data (Hsb82) l's peak is a few grid points wide."""
    path = scale_path(fit)
    lm = path.log_marginal - np.nanmax(path.log_marginal)
    inside = np.flatnonzero(lm >= -drop)
    lo = path.scale[max(inside[0] - 1, 0)] if inside.size else 0.5
    hi = path.scale[min(inside[-1] + 1, path.scale.size - 1)] if inside.size else 2.0
    grid = np.unique(np.append(np.geomspace(min(lo, 0.95), max(hi, 1.05), npts), 1.0))
    return path, scale_path(fit, grid=grid)


def _blocked_scale_path(d, theta: np.ndarray, grid: np.ndarray) -> ScalePath:
    """Several grouping factors: one blocked factorisation per point gives log|L|^2 and the
    penalised RSS r^2, hence lme4's profiled ML deviance log|L|^2 + N [1 + log(2 pi r^2 / N)]
    and the profiled joint (N + Q)[1 + log(2 pi r^2 / (N + Q))] + sum_k 2 n_k log|det s T_k|,
    whose last term is its value at s = 1 (from `blocked.objective`) plus 2 Q log s."""
    from workbench.fit import eb_blocked

    tm = eb_blocked.terms(d)
    n, dof = tm.n_obs, tm.n_obs + tm.n_re

    def rss_part(r2: float, k: int) -> float:
        return k * (1.0 + np.log(2.0 * np.pi * r2 / k))

    logdet_t = blocked.objective(tm, theta, "joint") - rss_part(
        blocked.factor(tm, theta).r ** 2, dof
    )
    lm, lj = [], []
    for s in grid:
        f = blocked.factor(tm, s * theta)
        lm.append(-0.5 * (f.logdet_L + rss_part(f.r**2, n)))
        lj.append(-0.5 * (rss_part(f.r**2, dof) + logdet_t + 2.0 * tm.n_re * np.log(s)))
    return ScalePath(grid, np.array(lm), np.array(lj))


@dataclass(frozen=True)
class ProfileCurves:
    """One-way profiles over sigma^2 on a grid that holds the fitted values exactly.

    `log_marginal` is l maximised over (mu, tau^2 >= 0); its maximum is EB-ML's sigma^2
    (`ml_sigma2`, a grid point). `joint_profile` is the centered log joint h maximised over
    (mu, a) and over an interior local maximum in tau^2 (h rises without bound as tau^2 -> 0,
    so only a local maximum is a profile): NaN where h has none at that sigma^2; its maximum
    is the interior joint mode's sigma^2 (`joint_sigma2`, a grid point; None without one).
    `log_joint` and `volume` are h at the conditional modes and the volume term
    1/2 sum log v_j + (m/2) log 2 pi along l's profile, where l = h + volume (the Laplace
    identity); NaN where l's profile has tau^2 = 0 (there h = +inf, volume = -inf)."""

    sigma2: np.ndarray
    log_marginal: np.ndarray
    joint_profile: np.ndarray
    log_joint: np.ndarray
    volume: np.ndarray
    tau2_marginal: np.ndarray  # tau^2 of l's profile
    ml_sigma2: float
    joint_sigma2: float | None


def _profile_window(st: Stats, centres: list[float], ses: float = 4.0) -> tuple[float, float]:
    """The sigma^2 window: `ses` asymptotic standard errors of log sigma^2 (sqrt(2 / (N - m)),
    so that l falls by about ses^2 / 2 nats at the edges) beyond the fitted values, at most a
    factor 2.5: a zoom for large data (Hsb82: +-7%), the whole bend for small data."""
    half = min(ses * np.sqrt(2.0 / max(st.N - st.m, 1.0)), np.log(2.5))
    lo, hi = np.log(min(centres)), np.log(max(centres))
    return float(np.exp(lo - half)), float(np.exp(hi + half))


def _marginal_at(
    st: Stats, s: float, scale: float, guess: float | None = None
) -> tuple[float, float, float]:
    """(l, mu, tau^2) of l's profile at sigma^2 = s: tau^2 >= 0 maximising the GLS-profiled l
    (`guess`: the neighbouring grid point's tau^2)."""

    def val(t):
        return dens.marginal_loglik((dens.gls_mean(s, t, st), s, t), st)

    def grad(t):
        return dens.marginal_grad((dens.gls_mean(s, t, st), s, t), st)[2]

    t = argmax_nonneg(val, grad, 1e-10 * scale, 1e6 * scale, allow_zero=True, guess=guess)
    return val(t), dens.gls_mean(s, t, st), t


def _h_at(st: Stats, s: float, t: float) -> float:
    """The centered log joint at (sigma^2, tau^2), maximised over mu and a (closed forms: the
    GLS mean and the conditional modes), tau^2 > 0."""
    mu = dens.gls_mean(s, t, st)
    a, _ = dens.conditional_effects(mu, s, t, st)
    return dens.log_joint(np.concatenate([[mu, 0.5 * np.log(s), 0.5 * np.log(t)], a]), st)


def _h_grid(st: Stats, s: float, t: np.ndarray) -> np.ndarray:
    """`_h_at` at many tau^2 at once, by the Laplace identity h = l(GLS mean) - volume."""
    n = st.n
    V = s + np.outer(t, n)  # (k, m)
    w = n / V
    mu = (w @ st.ybar) / w.sum(axis=1)
    r = st.ybar - mu[:, None]
    l_val = -0.5 * (
        st.N * dens.LOG_2PI
        + (st.N - st.m) * np.log(s)
        + np.log(V).sum(axis=1)
        + st.W / s
        + (n * r * r / V).sum(axis=1)
    )
    vol = 0.5 * np.log(s * t[:, None] / V).sum(axis=1) + 0.5 * st.m * dens.LOG_2PI
    return l_val - vol


def joint_profile_at(st: Stats, s: float, scale: float, npts: int = 90) -> float:
    """h maximised over (mu, a) and over the highest interior local maximum in tau^2 at
    sigma^2 = s (a log grid of tau^2, each interior grid maximum polished by a bounded Brent
    search in log tau^2 on the log joint itself); NaN when h has no interior local maximum in
    tau^2 there."""
    from scipy import optimize

    logt = np.linspace(np.log(1e-8 * scale), np.log(1e4 * scale), npts)
    h = _h_grid(st, s, np.exp(logt))
    best = np.nan
    for i in np.flatnonzero((h[1:-1] > h[:-2]) & (h[1:-1] >= h[2:])) + 1:
        r = optimize.minimize_scalar(
            lambda v: -_h_at(st, s, np.exp(v)),
            bounds=(logt[i - 1], logt[i + 1]),
            method="bounded",
            options={"xatol": 1e-10},
        )
        best = np.nanmax([best, -float(r.fun)])
    return float(best)


def profile_curves(
    st: Stats, s_ml: float, s_joint: float | None = None, npts: int = 80
) -> ProfileCurves:
    """The profiles on a log grid over `_profile_window` plus EB-ML's sigma^2 `s_ml` and the
    interior joint mode's `s_joint` (None without one), so that the curves pass through the
    fitted values exactly."""
    centres = [s_ml] + ([s_joint] if s_joint is not None else [])
    lo, hi = _profile_window(st, centres)
    grid = np.unique(np.concatenate([np.geomspace(lo, hi, npts), centres]))
    scale = st.W / st.N + float(np.var(st.ybar))
    lm, hp, lj, vol, tau2 = [], [], [], [], []
    for s in grid:
        l_s, mu, t = _marginal_at(st, s, scale, tau2[-1] if tau2 else None)
        lm.append(l_s)
        tau2.append(t)
        hp.append(joint_profile_at(st, s, scale))
        if t > 0:
            _, v = dens.conditional_effects(mu, s, t, st)
            lj.append(_h_at(st, s, t))
            vol.append(0.5 * np.log(v).sum() + 0.5 * st.m * dens.LOG_2PI)
        else:  # tau^2 = 0: h = +inf, volume = -inf; not drawn
            lj.append(np.nan)
            vol.append(np.nan)
    return ProfileCurves(
        grid,
        np.array(lm),
        np.array(hp),
        np.array(lj),
        np.array(vol),
        np.array(tau2),
        float(s_ml),
        None if s_joint is None else float(s_joint),
    )


@dataclass(frozen=True)
class TauPath:
    """One-way: the centered log joint maximised over (mu, sigma, a) for each fixed tau."""

    tau: np.ndarray
    log_joint: np.ndarray
    sigma2: np.ndarray


def tau_path(
    st: Stats,
    tau_ref: float,
    npts: int = 70,
    iters: int = 400,
    span: tuple[float, float] = (1e-4, 4.0),
    at: tuple[float, ...] = (),
) -> TauPath:
    """Coordinate ascent at each tau of tau_ref x [span] (log grid) and at the taus `at` (the
    fitted values, so the curve passes through them): a, mu and sigma^2 each have closed forms
    given the rest; warm-started from the previous tau, walking down from large tau."""
    taus = np.unique(np.concatenate([tau_ref * np.geomspace(*span, npts), at]))[::-1]
    mu, s = float(st.n @ st.ybar / st.N), st.W / st.N + float(np.var(st.ybar))
    hs, ss = [], []
    for tau in taus:
        t = tau * tau
        for _ in range(iters):
            a = st.n * t / (s + st.n * t) * (st.ybar - mu)
            mu_new = float(st.n @ (st.ybar - a) / st.N)
            r = st.ybar - mu_new - a
            s_new = (st.W + float(st.n @ (r * r))) / st.N
            done = abs(s_new - s) <= 1e-12 * s and abs(mu_new - mu) <= 1e-12 * (1 + abs(mu))
            mu, s = mu_new, s_new
            if done:
                break
        a = st.n * t / (s + st.n * t) * (st.ybar - mu)
        hs.append(dens.log_joint(np.concatenate([[mu, 0.5 * np.log(s), np.log(tau)], a]), st))
        ss.append(s)
    order = np.argsort(taus)
    return TauPath(taus[order], np.array(hs)[order], np.array(ss)[order])


def tau_zoom(st: Stats, tau_ref: float, at: tuple[float, ...] = ()) -> TauPath:
    """The tau path on a fine grid around `tau_ref` (and through the taus `at`): 6 / sqrt(2 m)
    each side in log tau (sqrt(1 / (2 m)) is about the standard error of log tau with many
    large groups), at most a factor 2.5, so that on many groups (Hsb82: 160) the interior
    bump is not lost beside the rise toward tau = 0."""
    half = min(6.0 / np.sqrt(2.0 * st.m), np.log(2.5))
    lo, hi = np.exp(-half), np.exp(half)
    span = (
        min([lo, *(t / tau_ref / 1.1 for t in at)]),
        max([hi, *(t / tau_ref * 1.1 for t in at)]),
    )
    return tau_path(st, tau_ref, npts=60, span=span, at=at)


def tau_reference(st: Stats, tau2_ml: float) -> float:
    """Where the tau path is centred: the EB-ML tau, or a fraction of the pooled SD at 0."""
    return float(np.sqrt(tau2_ml)) if tau2_ml > 0 else float(np.sqrt(st.W / st.N) * 0.3)
