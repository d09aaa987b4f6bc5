"""Simulation-based calibration (Talts et al. 2018) of the default MCMC sampler, the collapsed
one (`fit.mcmc`, parametrization "collapsed": NUTS over sigma and the covariances, beta and b
drawn exactly given them).

Each replicate draws every parameter from the prior (numpy, independently of the PyMC model:
sigma and the SDs half-normal, the correlation matrix LKJ(eta) by the onion method, beta normal,
b multivariate normal), simulates y on a fixed design, samples the posterior and records the
rank of each true value among L thinned posterior draws. If the sampler draws from the exact
posterior, every rank is uniform on {0, ..., L}: `chi2_pvalue` (counts in B bins) and
`ecdf_pvalue` (the simultaneous ECDF test of Saeilynoja et al. 2022, its null distribution by
simulation) test that.

One design (a `Design`: one grouping factor, one correlated block) is compiled once
(`nuts.compile_model`); a replicate swaps its data in (`compiled.with_data`) and costs only the
sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from workbench.model.design import LMMData, from_arrays
from workbench.model.priors import INTERCEPT, Priors
from workbench.seeds import int_seed_for, rng_for


@dataclass(frozen=True)
class Design:
    """A fixed design (X, Z, group codes) with fixed priors: every replicate's y is simulated
    on it. `params` names the calibrated quantities (`Design.values` order)."""

    name: str
    X: np.ndarray = field(repr=False)
    Z: np.ndarray = field(repr=False)
    codes: np.ndarray = field(repr=False)
    priors: Priors

    @property
    def n_groups(self) -> int:
        return int(self.codes.max()) + 1

    @property
    def oneway(self) -> bool:
        return self.priors.oneway

    @property
    def params(self) -> tuple[str, ...]:
        """sigma, every SD, every correlation, every beta, and the first group's effects (the
        one-way model's names: sigma, tau, mu, b[0])."""
        pri = self.priors
        if self.oneway:
            return ("sigma", "tau", "mu", "b[0]")
        q = len(pri.re_names)
        return (
            "sigma",
            *(f"sd[{n}]" for n in pri.re_names),
            *(f"cor[{pri.re_names[i]}:{pri.re_names[j]}]" for j in range(q) for i in range(j)),
            *(f"beta[{n}]" for n in pri.names),
            *(f"b[0,{n}]" for n in pri.re_names),
        )

    def data(self, y: np.ndarray) -> LMMData:
        pri = self.priors
        return from_arrays(
            y, self.X, self.Z, self.codes, fixed_names=pri.names, re_names=pri.re_names
        )

    @staticmethod
    def values(sigma, sd, corr, beta, b) -> np.ndarray:
        """The calibrated quantities (`params` order) of one set of parameters, or of S draws
        (leading axis S): sigma (S,), sd (S, q), the correlation matrix (S, q, q), beta (S, p),
        b (S, m, q)."""
        sigma, sd, beta = np.atleast_1d(sigma), np.atleast_2d(sd), np.atleast_2d(beta)
        corr = corr.reshape(-1, *corr.shape[-2:])
        q = sd.shape[1]
        cors = [corr[:, i, j] for j in range(q) for i in range(j)]
        b0 = b.reshape(-1, *b.shape[-2:])[:, 0, :]
        return np.column_stack([sigma, sd, *cors, beta, b0])


def oneway_design(sizes=(2, 3, 4, 5, 6, 7, 8, 10), mu_scale=2.0, scale=1.0) -> Design:
    """y ~ 1 + (1 | g), groups of the given sizes; mu ~ N(0, mu_scale), sigma, tau ~
    HalfNormal(scale)."""
    codes = np.repeat(np.arange(len(sizes)), sizes)
    ones = np.ones((codes.size, 1))
    pri = Priors(
        names=(INTERCEPT,),
        re_names=(INTERCEPT,),
        beta_loc=(0.0,),
        beta_scale=(mu_scale,),
        sigma_scale=scale,
        sd_scale=(scale,),
    )
    return Design("oneway", ones, ones, codes, pri)


def slope_design(groups=10, rows=6, seed=0, beta_scale=2.0, scale=1.0, eta=2.0) -> Design:
    """y ~ x + (1 + x | g), `groups` x `rows`, x standard normal (drawn once by `seed`); beta ~
    N(0, beta_scale), sigma and both SDs HalfNormal(scale), the correlation LKJ(eta)."""
    codes = np.repeat(np.arange(groups), rows)
    x = rng_for(seed, "sbc-design").standard_normal(codes.size)
    M = np.column_stack([np.ones_like(x), x])
    pri = Priors(
        names=(INTERCEPT, "x"),
        re_names=(INTERCEPT, "x"),
        beta_loc=(0.0, 0.0),
        beta_scale=(beta_scale, beta_scale),
        sigma_scale=scale,
        sd_scale=(scale, scale),
        lkj_eta=eta,
    )
    return Design("slope", M, M.copy(), codes, pri)


DESIGNS = {"oneway": oneway_design, "slope": slope_design}


def lkj_cholesky(d: int, eta: float, rng: np.random.Generator) -> np.ndarray:
    """The Cholesky factor of a d x d correlation matrix drawn from LKJ(eta): the onion method
    (Lewandowski, Kurowicka and Joe 2009, section 3.2), each new row of the factor w = sqrt(y) u
    with y ~ Beta(k / 2, beta), u uniform on the sphere."""
    L = np.zeros((d, d))
    L[0, 0] = 1.0
    if d == 1:
        return L
    beta = eta + (d - 2) / 2
    r = 2 * rng.beta(beta, beta) - 1
    L[1, :2] = r, np.sqrt(1 - r * r)
    for k in range(2, d):
        beta -= 0.5
        y = rng.beta(k / 2, beta)
        u = rng.standard_normal(k)
        L[k, :k] = np.sqrt(y) * u / np.linalg.norm(u)
        L[k, k] = np.sqrt(1 - y)
    return L


def draw_prior(design: Design, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(true values in `params` order, y): every parameter from the prior, then y."""
    pri = design.priors
    q, m = design.Z.shape[1], design.n_groups
    sigma = abs(rng.normal(0.0, pri.sigma_scale))
    sd = np.abs(rng.normal(0.0, np.asarray(pri.sd_scale)))
    Lc = lkj_cholesky(q, pri.lkj_eta, rng)
    beta = rng.normal(np.asarray(pri.beta_loc), np.asarray(pri.beta_scale))
    b = rng.standard_normal((m, q)) @ (sd[:, None] * Lc).T
    mean = design.X @ beta + (design.Z * b[design.codes]).sum(axis=1)
    y = mean + sigma * rng.standard_normal(mean.size)
    return Design.values(sigma, sd, Lc @ Lc.T, beta, b)[0], y


@dataclass(frozen=True)
class SbcSettings:
    """Per replicate: `chains` x `draws` NUTS draws after `tune`, thinned to `L` draws spread
    evenly over the chains (L + 1 possible ranks)."""

    chains: int = 2
    tune: int = 300
    draws: int = 500
    L: int = 99
    target_accept: float = 0.9


@dataclass(frozen=True)
class SbcResult:
    """`truths` (R, P) and thinned `draws` (R, L, P) of the `params` (P); per replicate the
    smallest bulk ESS over the params (of all draws, before thinning) and the divergences."""

    design: Design
    settings: SbcSettings
    truths: np.ndarray
    draws: np.ndarray
    min_ess: np.ndarray
    divergences: np.ndarray

    @property
    def params(self) -> tuple[str, ...]:
        return self.design.params

    def ranks(self) -> np.ndarray:
        """(R, P) ranks in 0 .. L: posterior draws below the true value."""
        return ranks(self.truths, self.draws)


def ranks(truths: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(R, P) number of the (R, L, P) draws below the (R, P) true values."""
    return (draws < truths[:, None, :]).sum(axis=1)


class Sampler:
    """The collapsed sampler of one design, compiled once; `posterior(y, seed)` gives thinned
    draws of the design's params for one data set, as `fit.mcmc.fit` samples it (nutpie NUTS on
    `build_collapsed`, then `mcmc._collapsed_effects` for beta and b)."""

    def __init__(self, design: Design, settings: SbcSettings = SbcSettings()):
        from workbench.fit import nuts
        from workbench.model.pymc import build_collapsed

        self.design, self.settings = design, settings
        template = design.data(np.zeros(design.codes.size))
        self.compiled = nuts.compile_model(build_collapsed(template, design.priors))

    def posterior(self, y: np.ndarray, seed: int) -> tuple[np.ndarray, float, int]:
        """(thinned draws (L, P), smallest bulk ESS over the params, divergences)."""
        import arviz as az

        from workbench.fit import nuts
        from workbench.fit.mcmc import McmcSettings, _collapsed_effects
        from workbench.objectives.collapsed import Stats

        s, pri = self.settings, self.design.priors
        data = self.design.data(y)
        stats = Stats.of(data, pri)
        compiled = self.compiled.with_data(**stats.arrays)
        idata = nuts.sample(
            compiled,
            draws=s.draws,
            tune=s.tune,
            chains=s.chains,
            seed=int_seed_for(seed, "sbc-nuts"),
            target_accept=s.target_accept,
        )
        idata = _collapsed_effects(idata, data, pri, McmcSettings(seed=seed), stats)
        post = idata.posterior.to_dataset()
        q = data.q
        n = s.chains * s.draws
        corr = np.asarray(post["chol_0_corr"]) if q > 1 else np.ones((n, 1, 1))
        vals = Design.values(
            np.asarray(post["sigma"]).ravel(),
            np.asarray(post["sd"]).reshape(-1, q),
            corr,
            np.asarray(post["beta"]).reshape(-1, data.p),
            np.asarray(post["b"]).reshape(-1, data.n_groups, q),
        )  # (chains * draws, P), chain-major
        ess = az.ess(vals.reshape(s.chains, s.draws, -1), method="bulk")
        keep = np.linspace(0, len(vals) - 1, s.L).round().astype(int)
        diverging = int(np.asarray(idata.sample_stats["diverging"]).sum())
        return vals[keep], float(np.min(ess)), diverging


def run(design: Design, replicates: int, seed: int = 0, settings=SbcSettings(), progress=None):
    """SBC of `replicates` data sets; replicate i's prior draw and sampler are seeded by
    (seed, i) alone. `progress(i)` is called after each replicate."""
    sampler = Sampler(design, settings)
    P, L = len(design.params), settings.L
    truths, draws = np.empty((replicates, P)), np.empty((replicates, L, P))
    min_ess, divergences = np.empty(replicates), np.empty(replicates, int)
    for i in range(replicates):
        truths[i], y = draw_prior(design, rng_for(seed, "sbc-prior", design.name, i))
        rep_seed = int_seed_for(seed, "sbc-replicate", design.name, i)
        draws[i], min_ess[i], divergences[i] = sampler.posterior(y, rep_seed)
        if progress:
            progress(i)
    return SbcResult(design, settings, truths, draws, min_ess, divergences)


# ---------------------------------------------------------------- tests of uniform ranks


def chi2_pvalue(ranks: np.ndarray, L: int, bins: int) -> float:
    """Pearson's chi-square test that ranks in 0 .. L are uniform, in `bins` equal bins
    (`bins` must divide L + 1)."""
    if (L + 1) % bins:
        raise ValueError(f"bins ({bins}) must divide L + 1 ({L + 1})")
    counts = np.bincount(np.asarray(ranks) * bins // (L + 1), minlength=bins)
    return float(sps.chisquare(counts).pvalue)


def _ecdf_gamma(counts_below: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    """Saeilynoja's statistic: twice the smallest tail probability of the counts of ranks below
    each evaluation point (Binomial(n, z) under uniformity), over the points (last axis)."""
    lower = sps.binom.cdf(counts_below, n, z)
    upper = sps.binom.sf(counts_below - 1, n, z)
    return 2 * np.minimum(lower, upper).min(axis=-1)


def _counts_below(ranks: np.ndarray, L: int) -> np.ndarray:
    """(..., L): the number of ranks below k, for k = 1 .. L (ranks along the last axis)."""
    r = np.asarray(ranks)
    flat = r.reshape(-1, r.shape[-1])
    idx = flat + (L + 1) * np.arange(len(flat))[:, None]
    hist = np.bincount(idx.ravel(), minlength=(L + 1) * len(flat)).reshape(len(flat), L + 1)
    return np.cumsum(hist, axis=1)[:, :-1].reshape(*r.shape[:-1], L)


def _null_gammas(n: int, L: int, simulations: int, seed: int) -> np.ndarray:
    """The statistic for `simulations` sets of n discrete-uniform ranks."""
    rng = np.random.default_rng(seed)
    z = np.arange(1, L + 1) / (L + 1)
    out = []
    for lo in range(0, simulations, 1000):
        r = rng.integers(0, L + 1, size=(min(1000, simulations - lo), n))
        out.append(_ecdf_gamma(_counts_below(r, L), n, z))
    return np.concatenate(out)


def ecdf_pvalue(ranks: np.ndarray, L: int, simulations: int = 5000, seed: int = 0) -> float:
    """The simultaneous ECDF test (Saeilynoja, Buerkner and Vehtari 2022) of uniform ranks in
    0 .. L: its p-value, the share of simulated uniform rank sets whose statistic is at most the
    observed one (the count of ranks below k is Binomial(n, k / (L + 1)) exactly)."""
    r = np.asarray(ranks)
    z = np.arange(1, L + 1) / (L + 1)
    obs = _ecdf_gamma(_counts_below(r, L), r.size, z)
    null = _null_gammas(r.size, L, simulations, seed)
    return float((1 + np.sum(null <= obs)) / (1 + simulations))


def ecdf_band(n: int, L: int, alpha: float = 0.01, simulations: int = 5000, seed: int = 0):
    """(z, lower, upper): the simultaneous 1 - alpha band of the ECDF of n uniform ranks in
    0 .. L at z = k / (L + 1), the pointwise binomial band at the level the test uses."""
    z = np.arange(1, L + 1) / (L + 1)
    g = np.quantile(_null_gammas(n, L, simulations, seed), alpha)
    lower = sps.binom.ppf(g / 2, n, z) / n
    upper = sps.binom.isf(g / 2, n, z) / n
    return z, lower, upper


def uniformity(result: SbcResult, bins: int, simulations: int = 5000) -> list[dict]:
    """Per param: {param, chi2_p, ecdf_p} of `result`'s ranks."""
    r, L = result.ranks(), result.settings.L
    return [
        {
            "param": name,
            "chi2_p": chi2_pvalue(r[:, k], L, bins),
            "ecdf_p": ecdf_pvalue(r[:, k], L, simulations),
        }
        for k, name in enumerate(result.params)
    ]
