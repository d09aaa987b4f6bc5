"""The one-way model as a PyMC model, centered or non-centered, with the priors of `Priors`.

Value variables: mu, sigma, tau and either theta (the group means, centered) or z (standardised
group effects, non-centered, theta = mu + tau z). `densities.log_joint` is the same density
(tested against `compile_logp(jacobian=False)`).
"""

from __future__ import annotations

import numpy as np

from workbench.model.data import GroupedData
from workbench.model.priors import Priors
from workbench.objectives.oneway import PARAMETRIZATIONS


def build_model(data: GroupedData, priors: Priors, parametrization: str = "noncentered"):
    """Return the PyMC model of y_ij ~ N(theta_j, sigma^2), theta_j ~ N(mu, tau^2)."""
    import pymc as pm

    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}")
    coords = {"group": list(data.labels), "obs": np.arange(data.n_obs)}
    with pm.Model(coords=coords) as model:
        codes = pm.Data("group_index", data.codes, dims="obs")
        mu = pm.Normal("mu", mu=priors.mu_loc, sigma=priors.mu_scale)
        sigma = pm.HalfNormal("sigma", sigma=priors.sigma_scale)
        tau = pm.HalfNormal("tau", sigma=priors.tau_scale)
        if parametrization == "centered":
            theta = pm.Normal("theta", mu=mu, sigma=tau, dims="group")
        else:
            z = pm.Normal("z", mu=0.0, sigma=1.0, dims="group")
            theta = pm.Deterministic("theta", mu + tau * z, dims="group")
        pm.Deterministic("sigma2", sigma**2)
        pm.Deterministic("tau2", tau**2)
        pm.Normal("y", mu=theta[codes], sigma=sigma, observed=data.y, dims="obs")
    return model


def point_from_x(x: np.ndarray, parametrization: str) -> dict[str, np.ndarray]:
    """Optimiser coordinates (mu, log sigma, log tau, u) -> a PyMC point on the value variables."""
    point = {"mu": np.asarray(x[0]), "sigma_log__": np.asarray(x[1]), "tau_log__": np.asarray(x[2])}
    if parametrization == "centered":
        point["theta"] = x[0] + x[3:]
    else:
        point["z"] = np.asarray(x[3:])
    return point


def x_from_point(point: dict, parametrization: str) -> np.ndarray:
    """Inverse of `point_from_x`; accepts log-scale or constrained sigma/tau keys."""
    ls = point["sigma_log__"] if "sigma_log__" in point else np.log(point["sigma"])
    lt = point["tau_log__"] if "tau_log__" in point else np.log(point["tau"])
    mu = float(point["mu"])
    u = np.asarray(point["theta"]) - mu if parametrization == "centered" else np.asarray(point["z"])
    return np.concatenate([[mu, float(ls), float(lt)], u])
