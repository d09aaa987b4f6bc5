"""Priors of the one-way model: one record shared by the PyMC model and the numpy log joint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .data import GroupedData
from .errors import InputError


@dataclass(frozen=True)
class Priors:
    """mu ~ Normal(mu_loc, mu_scale), sigma ~ HalfNormal(sigma_scale), tau ~ HalfNormal(tau_scale).

    The defaults (`default_priors`) are weakly informative on the scale of the data: centred at
    the grand mean, with scales a multiple of the response's standard deviation."""

    mu_loc: float
    mu_scale: float
    sigma_scale: float
    tau_scale: float

    def describe(self) -> dict[str, str]:
        return {
            "mu": f"Normal(mu={self.mu_loc:.6g}, sigma={self.mu_scale:.6g})",
            "sigma": f"HalfNormal(sigma={self.sigma_scale:.6g})",
            "tau": f"HalfNormal(sigma={self.tau_scale:.6g})",
        }

    def to_dict(self) -> dict:
        return {**asdict(self), "text": self.describe()}


def default_priors(data: GroupedData) -> Priors:
    """Weakly informative defaults: mu ~ N(ybar, 10 sd(y)), sigma, tau ~ HalfNormal(2.5 sd(y))."""
    sd = float(data.y.std(ddof=1))
    return Priors(
        mu_loc=data.grand_mean, mu_scale=10.0 * sd, sigma_scale=2.5 * sd, tau_scale=2.5 * sd
    )


def make_priors(data: GroupedData, overrides: dict | None = None) -> Priors:
    """Default priors with user overrides (keys: mu_loc, mu_scale, sigma_scale, tau_scale)."""
    priors = default_priors(data)
    if not overrides:
        return priors
    allowed = set(asdict(priors))
    for key, value in overrides.items():
        if key not in allowed:
            raise InputError(
                f"unknown prior setting '{key}'; use one of {', '.join(sorted(allowed))}."
            )
        prior_number(key, value, positive=key != "mu_loc")
    return replace(priors, **{k: float(v) for k, v in overrides.items()})


def prior_number(key: str, value, positive: bool = True) -> float:
    """A prior setting as a finite float (positive for scales), or a one-line error."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"prior setting '{key}' must be a number, got {value!r}.") from None
    if not math.isfinite(value):
        raise InputError(f"prior setting '{key}' must be finite, got {value!r}.")
    if positive and not value > 0:
        raise InputError(f"prior setting '{key}' must be positive, got {value!r}.")
    return value
