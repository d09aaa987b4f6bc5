"""The LMM as a PyMC model, with its priors (one record, recorded in every output).

y ~ N(X beta + rowsum(Z * b[group]), sigma^2); per correlated block k, b_jk ~ MvN(0, Sigma_k)
with Sigma_k = diag(sd_k) C_k diag(sd_k), C_k ~ LKJ(eta) (PyMC's LKJCholeskyCov), sd_k ~
HalfNormal. Non-centered by default (b_jk = chol_k z_jk, z ~ N(0, I)); centered b_jk as value
variables otherwise. Value variables minus the priors are exactly the log joint (h-likelihood)
that `deviance.PLS.objective("joint")` profiles and `fit.joint_map` maximises; for the one-way
model `y ~ 1 + (1 | g)` it is `objectives.oneway.log_joint` (both tested against
`compile_logp(jacobian=False)`).

The one-way model has the same variables (beta = (mu,), sd_0 = tau, b_0 = theta - mu or
z_0 = (theta - mu) / tau); only the mean is computed without the X beta and Z * b products.
"""

from __future__ import annotations

import numpy as np

from workbench.model.design import LMMData
from workbench.model.priors import Priors

PARAMETRIZATIONS = ("centered", "noncentered")


def build_model(data: LMMData, priors: Priors, parametrization: str = "noncentered"):
    """The PyMC model. Variables: beta, sigma, per block k `chol_k` (LKJCholeskyCov, with
    `chol_k_corr` and `chol_k_stds`) or `sd_k` (one-column block), z_k (non-centered) or b_k
    (centered); deterministics b (group x effect), sd (effect), sigma2."""
    import pymc as pm
    import pytensor.tensor as pt

    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}")
    coords = {
        "fixed": list(data.fixed_names),
        "group": list(data.labels),
        "effect": list(data.re_names),
        "obs": np.arange(data.n_obs),
    }
    centered = parametrization == "centered"
    m = data.n_groups
    with pm.Model(coords=coords) as model:
        beta = pm.Normal(
            "beta", mu=np.array(priors.beta_loc), sigma=np.array(priors.beta_scale), dims="fixed"
        )
        sigma = pm.HalfNormal("sigma", sigma=priors.sigma_scale)
        cols, sds = [None] * data.q, [None] * data.q
        for k, block in enumerate(data.blocks):
            size = len(block.cols)
            scales = np.array([priors.sd_scale[c] for c in block.cols])
            if size == 1:
                sd = pm.HalfNormal(f"sd_{k}", sigma=scales[0])
                if centered:
                    bk = pm.Normal(f"b_{k}", 0.0, sd, shape=(m, 1))
                else:
                    bk = pm.Normal(f"z_{k}", 0.0, 1.0, shape=(m, 1)) * sd
                stds = pt.stack([sd])
            else:
                chol, _, stds = pm.LKJCholeskyCov(
                    f"chol_{k}",
                    n=size,
                    eta=priors.lkj_eta,
                    sd_dist=pm.HalfNormal.dist(sigma=scales, shape=size),
                    compute_corr=True,
                )
                if centered:
                    bk = pm.MvNormal(f"b_{k}", mu=np.zeros(size), chol=chol, shape=(m, size))
                else:
                    bk = pm.Normal(f"z_{k}", 0.0, 1.0, shape=(m, size)) @ chol.T
            for i, c in enumerate(block.cols):
                cols[c], sds[c] = bk[:, i], stds[i]
        b = pm.Deterministic("b", pt.stack(cols, axis=1), dims=("group", "effect"))
        pm.Deterministic("sd", pt.stack(sds), dims="effect")
        pm.Deterministic("sigma2", sigma**2)
        codes = pm.Data("group_index", data.codes, dims="obs")
        if data.is_oneway:  # X and Z are columns of ones: theta_j = mu + b_j
            mean = (beta[0] + b[:, 0])[codes]
        else:
            mean = pt.dot(data.X, beta) + (data.Z * b[codes]).sum(axis=1)
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
