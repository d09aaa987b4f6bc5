"""The LMM as a PyMC model, with its priors (one record, recorded in every output).

y ~ N(X beta + sum_k rowsum(Z_k * b_k[codes of k's factor]), sigma^2); per correlated block k
(`LMMData.blocks`), b_k ~ MvN(0, Sigma_k) independently over the levels of its grouping factor,
with Sigma_k = diag(sd_k) C_k diag(sd_k), C_k ~ LKJ(eta) (PyMC's LKJCholeskyCov), sd_k ~
HalfNormal. Non-centered by default (b_k = z_k chol_k', z ~ N(0, I)); centered b_k as value
variables otherwise. Value variables minus the priors are exactly the log joint (h-likelihood)
that `deviance.PLS.objective("joint")` profiles and `fit.joint_map` maximises; for the one-way
model `y ~ 1 + (1 | g)` it is `objectives.oneway.log_joint` (both tested against
`compile_logp(jacobian=False)`).

Variable names. Value variables, for every model: `beta` (dims fixed), `sigma`, and per block k
(the index into `data.blocks`, whatever its factor) `sd_k` (a one-column block) or `chol_k` (an
LKJCholeskyCov, with deterministics `chol_k_corr` and `chol_k_stds`), and `z_k` (non-centered)
or `b_k` (centered), shape (levels of the block's factor, columns of the block). Deterministics:
`sigma2`, `sd` (dims effect: every column of Z, in Z's order) and the random effects:
* one grouping factor: `b` (dims group x effect), coords `group` = its labels and `effect` =
  the term names (`data.re_names`); the observed `y` uses `pm.Data("group_index")`;
* several grouping factors: one `b[<factor>]` per factor (`effects_name`), dims
  (`level[<factor>]`, `effect[<factor>]`) with that factor's labels and its terms in
  `data.factor_cols(k)` order (EBFit.modes' columns); `effect` coords are lme4's
  `term|factor` names (`(Intercept)|plate`), since a term name recurs across factors.

The one-way model has the same variables (beta = (mu,), sd_0 = tau, b_0 = theta - mu or
z_0 = (theta - mu) / tau); only the mean is computed without the X beta and Z * b products.
"""

from __future__ import annotations

import numpy as np

from workbench.model.design import LMMData
from workbench.model.priors import Priors

PARAMETRIZATIONS = ("collapsed", "noncentered", "centered")


def effects_name(data: LMMData, k: int) -> str:
    """The deterministic holding the random effects of grouping factor k: `b` for a model with
    one factor, `b[<factor name>]` otherwise."""
    if data.n_factors == 1:
        return "b"
    # PyMC refuses "/" in a variable's name (a column `b/c`): U+2215, which looks the same
    return f"b[{data.groupings[k].name.replace('/', chr(0x2215))}]"


def effect_names(data: LMMData) -> tuple[str, ...]:
    """The `effect` coords (Z's columns): the term names with one factor, lme4's
    `term|factor` names with several."""
    if data.n_factors == 1:
        return data.re_names
    out = [""] * data.q
    for block in data.blocks:
        for name, c in zip(block.names, block.cols, strict=True):
            out[c] = f"{name}|{data.groupings[block.factor].name}"
    return tuple(out)


def _block_scale(k: int, block, priors: Priors):
    """Block k's covariance prior: its Cholesky factor (size x size tensor) and its SDs (one
    tensor per column); `sd_k` ~ HalfNormal for one column, `chol_k` ~ LKJCholeskyCov else."""
    import pymc as pm

    size = len(block.cols)
    scales = np.array([priors.sd_scale[c] for c in block.cols])
    if size == 1:
        sd = pm.HalfNormal(f"sd_{k}", sigma=scales[0])
        return sd.reshape((1, 1)), [sd]
    chol, _, stds = pm.LKJCholeskyCov(
        f"chol_{k}",
        n=size,
        eta=priors.lkj_eta,
        sd_dist=pm.HalfNormal.dist(sigma=scales, shape=size),
        compute_corr=True,
    )
    return chol, [stds[i] for i in range(size)]


def _block_effects(k: int, block, m: int, priors: Priors, centered: bool):
    """Block k's prior and effects (m x size tensor) and its SDs (one tensor per column)."""
    import pymc as pm

    size = len(block.cols)
    chol, stds = _block_scale(k, block, priors)
    if size == 1:
        sd = stds[0]
        if centered:
            return pm.Normal(f"b_{k}", 0.0, sd, shape=(m, 1)), [sd]
        return pm.Normal(f"z_{k}", 0.0, 1.0, shape=(m, 1)) * sd, [sd]
    if centered:
        bk = pm.MvNormal(f"b_{k}", mu=np.zeros(size), chol=chol, shape=(m, size))
    else:
        z = pm.Normal(f"z_{k}", 0.0, 1.0, shape=(m, size))
        bk = (z[:, None, :] * chol[None, :, :]).sum(axis=-1)  # z chol' (no Dot: see _times)
    return bk, stds


def build_collapsed(data: LMMData, priors: Priors, stats=None):
    """The collapsed model: the priors of sigma and of every block's covariance, and the
    likelihood p(y | sigma, Sigma) with beta and b integrated out analytically
    (`objectives.collapsed`) as a Potential; the data enter as `pm.Data` (a compiled log
    density serves every data set of the same shape). Variables: `sigma`, `sd_k` or `chol_k`
    (with `chol_k_corr`, `chol_k_stds`), deterministics `sd`, `sigma2` and `chol_k_L` (block
    k's Cholesky factor, for the exact draws of beta and b: `fit.mcmc`)."""
    import pymc as pm
    import pytensor.tensor as pt

    from workbench.objectives import collapsed

    stats = stats or collapsed.Stats.of(data, priors)
    with pm.Model(coords={"effect": list(effect_names(data))}) as model:
        sigma = pm.HalfNormal("sigma", sigma=priors.sigma_scale)
        sds, chols = [None] * data.q, []
        for k, block in enumerate(data.blocks):
            chol, stds = _block_scale(k, block, priors)
            chols.append(chol)
            pm.Deterministic(f"chol_{k}_L", chol)
            for i, c in enumerate(block.cols):
                sds[c] = stds[i]
        pm.Deterministic("sd", pt.stack(sds), dims="effect")
        pm.Deterministic("sigma2", sigma**2)
        arrays = {name: pm.Data(name, value) for name, value in stats.arrays.items()}
        pm.Potential("marginal", collapsed.log_marginal(stats, arrays, sigma, chols))
    return model


def _times(M: np.ndarray, v):
    """M @ v as a sum of column products (an intercept's column of ones adds v_j alone): p is
    small, and a Dot adds 3 to 12 s of CPU to nutpie's numba compile (cached or not)."""
    terms = [v[j] if np.all(M[:, j] == 1.0) else M[:, j] * v[j] for j in range(M.shape[1])]
    return sum(terms[1:], terms[0])


def build_model(data: LMMData, priors: Priors, parametrization: str = "noncentered"):
    """The PyMC model (variables: see the module docstring)."""
    import pymc as pm
    import pytensor.tensor as pt

    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}")
    if parametrization == "collapsed":
        return build_collapsed(data, priors)
    one = data.n_factors == 1
    coords = {
        "fixed": list(data.fixed_names),
        "effect": list(effect_names(data)),
        "obs": np.arange(data.n_obs),
    }
    if one:
        coords["group"] = list(data.labels)
    else:
        for k, g in enumerate(data.groupings):
            coords[f"level[{g.name}]"] = list(g.labels)
            coords[f"effect[{g.name}]"] = [data.re_names[c] for c in data.factor_cols(k)]
    centered = parametrization == "centered"
    with pm.Model(coords=coords) as model:
        beta = pm.Normal(
            "beta", mu=np.array(priors.beta_loc), sigma=np.array(priors.beta_scale), dims="fixed"
        )
        sigma = pm.HalfNormal("sigma", sigma=priors.sigma_scale)
        cols, sds = [None] * data.q, [None] * data.q
        effects = []
        for k, block in enumerate(data.blocks):
            m = data.groupings[block.factor].n_levels
            bk, stds = _block_effects(k, block, m, priors, centered)
            effects.append(bk)
            for i, c in enumerate(block.cols):
                cols[c], sds[c] = bk[:, i], stds[i]
        pm.Deterministic("sd", pt.stack(sds), dims="effect")
        pm.Deterministic("sigma2", sigma**2)
        if one:
            b = pm.Deterministic("b", pt.stack(cols, axis=1), dims=("group", "effect"))
            codes = pm.Data("group_index", data.codes, dims="obs")
            if data.is_oneway:  # X and Z are columns of ones: theta_j = mu + b_j
                mean = (beta[0] + b[:, 0])[codes]
            else:
                mean = _times(data.X, beta) + (data.Z * b[codes]).sum(axis=1)
        else:
            for k, g in enumerate(data.groupings):
                pm.Deterministic(
                    effects_name(data, k),
                    pt.stack([cols[c] for c in data.factor_cols(k)], axis=1),
                    dims=(f"level[{g.name}]", f"effect[{g.name}]"),
                )
            mean = _times(data.X, beta)
            for block, bk in zip(data.blocks, effects, strict=True):
                per_row = bk[data.groupings[block.factor].codes]
                Zk = data.Z[:, list(block.cols)]
                if len(block.cols) == 1 and np.all(Zk == 1.0):  # an intercept: no product
                    mean = mean + per_row[:, 0]
                else:
                    mean = mean + (Zk * per_row).sum(axis=1)
        pm.Normal("y", mu=mean, sigma=sigma, observed=data.y, dims="obs")
    return model


def oneway_point(x: np.ndarray, parametrization: str) -> dict[str, np.ndarray]:
    """The one-way optimiser coordinates x = (mu, log sigma, log tau, u) of
    `objectives.oneway` as a point of the one-way model's value variables: beta = (mu,),
    sd_0 = tau, and b_0 = u (centered: theta - mu) or z_0 = u (non-centered)."""
    x = np.asarray(x, float)
    return {
        "beta": x[:1],
        "sigma_log__": np.asarray(x[1]),
        "sd_0_log__": np.asarray(x[2]),
        f"{'b' if parametrization == 'centered' else 'z'}_0": x[3:, None],
    }


def oneway_x(point: dict, parametrization: str) -> np.ndarray:
    """Inverse of `oneway_point`; accepts log-scale or constrained sigma / sd_0 keys (a
    `pm.find_MAP` result)."""
    ls = point["sigma_log__"] if "sigma_log__" in point else np.log(point["sigma"])
    lt = point["sd_0_log__"] if "sd_0_log__" in point else np.log(point["sd_0"])
    u = point["b_0" if parametrization == "centered" else "z_0"]
    return np.concatenate([[float(np.ravel(point["beta"])[0]), float(ls), float(lt)], np.ravel(u)])
