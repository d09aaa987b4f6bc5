"""Awkward inputs for the tests of what renders a result (JSON, table, report): group labels
that look like markup, a singular slope fit, and MCMC records from posterior draws made up in
numpy (no sampler, no compilation) but summarised by the real summary and diagnostic code
(`workbench.fit.mcmc.from_idata`), including what a sampler can give (one chain, chains that
never move)."""

from __future__ import annotations

import numpy as np
import pandas as pd

LABELS = ["$", "$$", "a_b^c", "{x}", "%", "ünïcødé ✓ 漢字", "L" * 200, r"\alpha", "#&<b>", "x\ny"]


def slope_frame(m: int, n: int, seed: int = 4) -> pd.DataFrame:
    """A correlated random slope: m groups of n rows, y = 2 + x + b0 + b1 x + e with
    cov(b) = [[4, 0.5], [0.5, 1]] (the MCMC tests' model `y ~ x + (1 + x | g)`)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    x = rng.standard_normal(g.size)
    b = rng.multivariate_normal([0, 0], [[4.0, 0.5], [0.5, 1.0]], m)
    y = 2 + x + b[g, 0] + b[g, 1] * x + rng.standard_normal(g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{j}" for j in g]})


def singular_slope_frame(seed: int = 10) -> pd.DataFrame:
    """Slopes vary by group, intercepts do not (group means of y and x equal): the ML fit of
    y ~ x + (1 + x | g) has a zero intercept variance, so the correlation is 0/0."""
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(8):
        b1 = rng.normal()
        x = rng.normal(size=6)
        x -= x.mean()
        y = (0.5 + b1) * x + 0.3 * rng.normal(size=6)
        y += 1 - y.mean()
        rows += [(f"s{j}", a, b) for a, b in zip(x, y, strict=True)]
    return pd.DataFrame(rows, columns=["g", "x", "y"])


def _tree(post: dict, dims: dict, chains: int, draws: int, rng):
    import arviz as az

    stats = {
        "diverging": np.zeros((chains, draws), bool),
        "energy": rng.normal(size=(chains, draws)),
    }
    return az.from_dict({"posterior": post, "sample_stats": stats}, dims=dims)


def _stuck(x: np.ndarray, stuck: bool) -> np.ndarray:
    """Every draw of a chain equal to its first draw (a sampler that never moved)."""
    return np.repeat(x[:, :1], x.shape[1], axis=1) if stuck else x


def posterior(data, *, chains: int = 2, draws: int = 60, stuck: bool = False, seed: int = 0):
    """An MCMC record (`mcmc.Posterior`) of the model of `data` (an LMMData) from made-up draws
    of the PyMC model's variables, summarised by the real code (`mcmc.from_idata`)."""
    from workbench.fit import mcmc
    from workbench.model.pymc import effects_name

    rng = np.random.default_rng(seed)
    shape = (chains, draws)
    sd_y = float(np.std(data.y, ddof=1))
    beta = rng.normal(size=(*shape, data.p))
    if "(Intercept)" in data.fixed_names:
        beta[..., data.fixed_names.index("(Intercept)")] += float(np.mean(data.y))
    post = {
        "beta": _stuck(beta, stuck),
        "sigma": _stuck(sd_y * np.exp(0.1 * rng.normal(size=shape)), stuck),
        "sd": _stuck(0.3 * sd_y * np.exp(0.3 * rng.normal(size=(*shape, data.q))), stuck),
    }
    post["sigma2"] = post["sigma"] ** 2
    dims = {"beta": ["fixed"], "sd": ["effect"]}
    for k, g in enumerate(data.groupings):  # model/pymc.py's names: b, or b[<factor>] per factor
        name = effects_name(data, k)
        size = (*shape, g.n_levels, len(data.factor_cols(k)))
        post[name] = _stuck(rng.normal(size=size), stuck)
        several = [f"level[{g.name}]", f"effect[{g.name}]"]
        dims[name] = ["group", "effect"] if data.n_factors == 1 else several
    for k, block in enumerate(data.blocks):
        n = len(block.cols)
        if n >= 2:
            r = np.tanh(0.5 * rng.normal(size=shape))
            corr = np.broadcast_to(np.eye(n), (*shape, n, n)).copy()
            corr[..., 0, 1:] = corr[..., 1:, 0] = _stuck(r, stuck)[..., None]
            post[f"chol_{k}_corr"] = corr
            dims[f"chol_{k}_corr"] = [f"chol_{k}_corr_dim_0", f"chol_{k}_corr_dim_1"]
    idata = _tree(post, dims, chains, draws, rng)
    settings = mcmc.McmcSettings(chains=chains, draws=draws, tune=0)
    return mcmc.from_idata(data, idata, settings, "fake")


oneway = lmm = posterior  # the old names


def attach(comparison, mcmc):
    """`comparison` (frozen) with `mcmc` as its MCMC record, the settings saying so, and for a
    one-way model the exact posterior that `compare` adds whenever MCMC runs."""
    import dataclasses

    from workbench.fit.exact_oneway import exact_posterior

    s = mcmc.settings
    settings = dataclasses.replace(
        comparison.settings,
        methods=(*comparison.settings.methods, "mcmc"),
        chains=s.chains,
        draws=s.draws,
        tune=s.tune,
    )
    exact = comparison.exact_posterior
    if exact is None and comparison.data.is_oneway:
        exact = exact_posterior(comparison.data.oneway, comparison.priors)
    return dataclasses.replace(comparison, mcmc=mcmc, settings=settings, exact_posterior=exact)
