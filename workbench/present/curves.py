"""The numbers behind the report's figures, computed apart from drawing: each function takes
the records of a comparison (or the one-way per-group statistics) and returns a frozen record
of plain arrays, which `plots.py` draws. Every model gets the same records; the one-way-only
ones (the profile over sigma^2, the tau path) take the one-way `Stats`.

Method names (`Estimate.method`) are the report's labels: "EB-ML", "EB-REML", the four joint
MAP variants (`JOINT_LABELS`), "MCMC mean", "MCMC mode", "truth"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.fit.eb import variance_components
from workbench.fit.eb_oneway import argmax_nonneg
from workbench.model.data import Stats
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


def _values(beta, sigma2, G, data) -> dict[str, float]:
    comps = variance_components(G, data.blocks, data.group_name)
    out = {"sigma2": float(sigma2)}
    out.update({f"var:{n}": float(v) for n, v in comps.variances.items()})
    out.update({f"cor:{n}": float(v) for n, v in comps.correlations.items()})
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
    names = list(variance_components(c.eb_ml.G, d.blocks, d.group_name).correlations)
    panels = [("sigma2", f"sigma² (residual variance, {d.y_name}²)", 0.0)]
    panels += [
        (f"var:{n}", f"variance of the {n} effects ({d.group_name})", 0.0) for n in d.re_names
    ]
    panels += [(f"cor:{n}", f"correlation {n} ({d.group_name})", -1.0) for n in names]
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
        sd = post.draws("sd")
        draws.update({f"var:{n}": sd[:, k] ** 2 for k, n in enumerate(d.re_names)})
        draws.update({f"cor:{n}": v for n, v in post.correlation_draws().items()})
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
    """Conditional covariances (m, q, q) of b_j given y at (sigma^2, G): lme4's condVar at
    the relative covariance factor of G (block Cholesky of G / sigma^2)."""
    lay = Layout.of(data.blocks, data.q)
    T = np.linalg.cholesky(G / sigma2)  # block lower-triangular, as G is block diagonal
    return solve(data.factors, lay, lay.theta(T)).cond_cov(sigma2)


def _hdi(draws: np.ndarray) -> np.ndarray:
    """(k, 2) HDI of each column of `draws` (S, k)."""
    import arviz as az

    return np.array([np.asarray(az.hdi(draws[:, i], prob=HDI_PROB)) for i in range(draws.shape[1])])


def caterpillars(c, max_groups: int = 30) -> tuple[Caterpillar, ...]:
    """One record per random-effect term: EB-ML conditional 95% intervals, the headline joint
    MAP's conditional 95% intervals (variances fixed at its mode), the MCMC 94% HDI. Groups
    sorted by their EB-ML mode of the first term, thinned evenly to `max_groups`."""
    d = c.data
    eb = c.eb_ml
    order = np.argsort(eb.re_mode[:, 0], kind="stable")
    if d.n_groups > max_groups:
        order = order[np.linspace(0, d.n_groups - 1, max_groups).round().astype(int)]
    jm = c.joint_maps.get(("centered", False))
    b = c.mcmc.draws("b") if c.mcmc is not None else None
    out = []
    fits = [("EB-ML", "EB-ML conditional 95%", eb.re_mode, eb.re_cov)]
    if interior(jm):
        cov = conditional_cov(d, jm.sigma2, jm.G)
        label = "joint MAP conditional 95% (centered, variances fixed)"
        fits.append((JOINT_LABELS[("centered", False)], label, jm.re_mode, cov))
    for k, term in enumerate(d.re_names):
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
        labels = tuple(d.labels[j] for j in order)
        out.append(Caterpillar(term, labels, d.n_groups, tuple(series)))
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


def funnel(c) -> Funnel:
    """Draws of log sd_(Intercept) against the intercept effects of three groups (the lowest,
    middle and highest EB-ML mode). Needs MCMC and a random intercept."""
    d = c.data
    k = d.re_names.index("(Intercept)")
    order = np.argsort(c.eb_ml.re_mode[:, k], kind="stable")
    groups = sorted({int(order[0]), int(order[len(order) // 2]), int(order[-1])})
    sd = c.mcmc.draws("sd")[:, k]
    with np.errstate(divide="ignore"):
        log_sd = np.log(sd)
    effects = c.mcmc.draws("b")[:, groups, k]

    def at(modes, G):
        v = float(G[k, k])
        return (modes[groups, k], 0.5 * float(np.log(v))) if v > 0 else None

    jm = c.joint_maps.get(("centered", False))
    return Funnel(
        term="(Intercept)",
        labels=tuple(d.labels[j] for j in groups),
        effects=effects,
        log_sd=log_sd,
        eb=at(c.eb_ml.re_mode, c.eb_ml.G),
        joint=at(jm.re_mode, jm.G) if interior(jm) else None,
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


def scale_path(fit, npts: int = 80) -> ScalePath:
    """The path for the EB fit `fit` (diagonal theta floored at 0.05 so that a singular fit
    still has a path)."""
    d = fit.data
    lay = Layout.of(d.blocks, d.q)
    theta = np.array(fit.theta, float)
    theta[lay.diagonal] = np.maximum(theta[lay.diagonal], 0.05)
    grid = np.geomspace(1e-4, 4.0, npts)
    lm, lj = [], []
    for s in grid:
        pls = solve(d.factors, lay, s * theta)
        lm.append(-0.5 * pls.objective("ml"))
        lj.append(-0.5 * pls.objective("joint"))
    return ScalePath(grid, np.array(lm), np.array(lj))


@dataclass(frozen=True)
class ProfileCurves:
    """One-way, along the marginal profile in sigma^2: (mu, tau^2) maximising l."""

    sigma2: np.ndarray
    log_marginal: np.ndarray
    log_joint: np.ndarray  # h(theta(sigma^2), a_hat(theta))
    volume: np.ndarray  # 1/2 sum log v_j + (m/2) log 2 pi  (= log_marginal - log_joint)


def profile_curves(st: Stats, s_ml: float, npts: int = 60) -> ProfileCurves:
    grid = s_ml * np.geomspace(0.4, 2.5, npts)
    scale = st.W / st.N + float(np.var(st.ybar))
    lm, lj, vol = [], [], []
    for s in grid:

        def val(t, s=s):
            return dens.marginal_loglik((dens.gls_mean(s, t, st), s, t), st)

        def grad(t, s=s):
            return dens.marginal_grad((dens.gls_mean(s, t, st), s, t), st)[2]

        t = max(
            argmax_nonneg(val, grad, 1e-10 * scale, 1e6 * scale, allow_zero=True), 1e-12 * scale
        )
        mu = dens.gls_mean(s, t, st)
        a, v = dens.conditional_effects(mu, s, t, st)
        x = np.concatenate([[mu, 0.5 * np.log(s), 0.5 * np.log(t)], a])
        lm.append(dens.marginal_loglik((mu, s, t), st))
        lj.append(dens.log_joint(x, st))
        vol.append(0.5 * np.log(v).sum() + 0.5 * st.m * dens.LOG_2PI)
    return ProfileCurves(grid, np.array(lm), np.array(lj), np.array(vol))


@dataclass(frozen=True)
class TauPath:
    """One-way: the centered log joint maximised over (mu, sigma, a) for each fixed tau."""

    tau: np.ndarray
    log_joint: np.ndarray
    sigma2: np.ndarray


def tau_path(st: Stats, tau_ref: float, npts: int = 70, iters: int = 400) -> TauPath:
    """Coordinate ascent at each tau (a, mu and sigma^2 each have closed forms given the rest);
    warm-started from the previous tau, walking down from large tau."""
    taus = tau_ref * np.geomspace(4.0, 1e-4, npts)
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


def tau_reference(st: Stats, tau2_ml: float) -> float:
    """Where the tau path is centred: the EB-ML tau, or a fraction of the pooled SD at 0."""
    return float(np.sqrt(tau2_ml)) if tau2_ml > 0 else float(np.sqrt(st.W / st.N) * 0.3)
