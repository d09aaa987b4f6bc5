"""The general LMM as a PyMC model, with its priors (one record, recorded in every output).

y ~ N(X beta + rowsum(Z * b[group]), sigma^2); per correlated block k, b_jk ~ MvN(0, Sigma_k)
with Sigma_k = diag(sd_k) C_k diag(sd_k), C_k ~ LKJ(eta) (PyMC's LKJCholeskyCov), sd_k ~
HalfNormal. Non-centered by default (b_jk = chol_k z_jk, z ~ N(0, I)); centered b_jk as value
variables otherwise. Value variables minus the priors are exactly the log joint (h-likelihood)
that `deviance.PLS.objective("joint")` profiles (tested against `compile_logp`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import InputError
from ..priors import prior_number
from .design import LMMData

PRIOR_KEYS = ("sigma_scale", "beta_scale", "sd_scale", "lkj_eta")


@dataclass(frozen=True)
class LMMPriors:
    """beta_k ~ N(beta_loc_k, beta_scale_k), sigma ~ HalfNormal(sigma_scale), random-effect SDs
    ~ HalfNormal(sd_scale_k), correlations ~ LKJ(lkj_eta).

    Defaults are weakly informative on the data's scale (rstanarm's autoscaling): the intercept
    N(mean(y), 10 sd(y)), a slope N(0, 2.5 sd(y) / sd(x)), sigma and an SD HalfNormal(2.5 sd(y)),
    divided by sd(z) for a non-constant random-effect column; LKJ(2) mildly favours small
    correlations."""

    names: tuple[str, ...]
    re_names: tuple[str, ...]
    beta_loc: tuple[float, ...]
    beta_scale: tuple[float, ...]
    sigma_scale: float
    sd_scale: tuple[float, ...]
    lkj_eta: float = 2.0

    def describe(self) -> dict[str, str]:
        out = {
            f"beta[{n}]": f"Normal(mu={m:.6g}, sigma={s:.6g})"
            for n, m, s in zip(self.names, self.beta_loc, self.beta_scale, strict=True)
        }
        out["sigma"] = f"HalfNormal(sigma={self.sigma_scale:.6g})"
        out.update(
            {
                f"sd[{n}]": f"HalfNormal(sigma={s:.6g})"
                for n, s in zip(self.re_names, self.sd_scale, strict=True)
            }
        )
        out["correlations"] = f"LKJ(eta={self.lkj_eta:.6g})"
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "text": self.describe()}


def _col_scale(col: np.ndarray) -> float:
    sd = float(col.std())
    return sd if sd > 0 else 1.0


def make_priors(data: LMMData, overrides: dict | None = None) -> LMMPriors:
    """Default priors; `overrides` may set sigma_scale, lkj_eta, or multiply the default
    beta/sd scales by a factor (beta_scale, sd_scale)."""
    sd_y = float(data.y.std(ddof=1))
    loc, scale = [], []
    for k, name in enumerate(data.fixed_names):
        if name == "(Intercept)":
            loc.append(float(data.y.mean()))
            scale.append(10.0 * sd_y)
        else:
            loc.append(0.0)
            scale.append(2.5 * sd_y / _col_scale(data.X[:, k]))
    sd_scale = [2.5 * sd_y / _col_scale(data.Z[:, k]) for k in range(data.q)]
    pri = LMMPriors(
        names=data.fixed_names,
        re_names=data.re_names,
        beta_loc=tuple(loc),
        beta_scale=tuple(scale),
        sigma_scale=2.5 * sd_y,
        sd_scale=tuple(sd_scale),
    )
    for key, value in (overrides or {}).items():
        if key not in PRIOR_KEYS:
            raise InputError(
                f"unknown prior setting '{key}' for a formula model; use one of "
                f"{', '.join(PRIOR_KEYS)}."
            )
        value = prior_number(key, value)
        if key in ("beta_scale", "sd_scale"):
            pri = replace(pri, **{key: tuple(value * s for s in getattr(pri, key))})
        else:
            pri = replace(pri, **{key: value})
    return pri


def build_model(data: LMMData, priors: LMMPriors, parametrization: str = "noncentered"):
    """The PyMC model. Variables: beta, sigma, per block k `chol_k` (LKJCholeskyCov, with
    `chol_k_corr` and `chol_k_stds`) or `sd_k` (one-column block), z_k (non-centered) or b_k
    (centered); deterministics b (group x effect), sd (effect), sigma2."""
    import pymc as pm
    import pytensor.tensor as pt

    coords = {
        "fixed": list(data.fixed_names),
        "group": list(data.labels),
        "effect": list(data.re_names),
        "obs": np.arange(data.n_obs),
    }
    with pm.Model(coords=coords) as model:
        beta = pm.Normal(
            "beta", mu=np.array(priors.beta_loc), sigma=np.array(priors.beta_scale), dims="fixed"
        )
        sigma = pm.HalfNormal("sigma", sigma=priors.sigma_scale)
        cols, sds = [None] * data.q, [None] * data.q
        m = data.n_groups
        for k, block in enumerate(data.blocks):
            size = len(block.cols)
            scales = np.array([priors.sd_scale[c] for c in block.cols])
            if size == 1:
                sd = pm.HalfNormal(f"sd_{k}", sigma=scales[0])
                if parametrization == "centered":
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
                if parametrization == "centered":
                    bk = pm.MvNormal(f"b_{k}", mu=np.zeros(size), chol=chol, shape=(m, size))
                else:
                    bk = pm.Normal(f"z_{k}", 0.0, 1.0, shape=(m, size)) @ chol.T
            for i, c in enumerate(block.cols):
                cols[c], sds[c] = bk[:, i], stds[i]
        b = pm.Deterministic("b", pt.stack(cols, axis=1), dims=("group", "effect"))
        pm.Deterministic("sd", pt.stack(sds), dims="effect")
        pm.Deterministic("sigma2", sigma**2)
        codes = pm.Data("group_index", data.codes, dims="obs")
        mean = pt.dot(data.X, beta) + (data.Z * b[codes]).sum(axis=1)
        pm.Normal("y", mu=mean, sigma=sigma, observed=data.y, dims="obs")
    return model
