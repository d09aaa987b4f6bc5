"""The priors: one record for every model, shared by the PyMC model and the numpy log joint.

    beta_k ~ Normal(beta_loc_k, beta_scale_k)      sigma ~ HalfNormal(sigma_scale)
    sd_k   ~ HalfNormal(sd_scale_k)                correlations ~ LKJ(lkj_eta)

Defaults are weakly informative on the data's scale (rstanarm's autoscaling): the intercept
N(mean(y), 10 sd(y)), a slope N(0, 2.5 sd(y) / sd(x)), sigma and an SD HalfNormal(2.5 sd(y)),
divided by sd(z) for a non-constant random-effect column; LKJ(2) mildly favours small
correlations. For the one-way model `y ~ 1 + (1 | g)` these are mu ~ N(mean(y), 10 sd(y)),
sigma, tau ~ HalfNormal(2.5 sd(y)), and `mu_loc`, `mu_scale`, `tau_scale` name them.

Settings come as statements, parsed (never evaluated) by `parse_statement`:
`sigma ~ HalfNormal(5)`, `sd ~ HalfNormal(2)` (every SD), `sd[x] ~ HalfNormal(1)`,
`beta[x] ~ Normal(0, 1)`, `(Intercept) ~ Normal(50, 10)`, `cor ~ LKJ(4)` (with several
grouping factors a column is named with its factor: `sd[(Intercept)|plate]`), and for the one-way
model `mu ~ Normal(0, 100)`, `tau ~ HalfNormal(3)`. Numeric keys are accepted too (a case
file's `[priors]` table): `mu_loc`, `mu_scale`, `sigma_scale`, `tau_scale`, `lkj_eta`, and
`beta_scale` / `sd_scale` as factors on every default slope / SD scale.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

import numpy as np

from workbench.errors import InputError

INTERCEPT = "(Intercept)"
NUMERIC_KEYS = (
    "mu_loc",
    "mu_scale",
    "sigma_scale",
    "tau_scale",
    "lkj_eta",
    "beta_scale",
    "sd_scale",
)
DISTRIBUTIONS = {"Normal": 2, "HalfNormal": 1, "LKJ": 1}
_STATEMENT = re.compile(
    r"^\s*(?P<target>[^~]+?)\s*~\s*(?P<dist>[A-Za-z]+)\s*\((?P<args>[^()]*)\)\s*$"
)


@dataclass(frozen=True)
class Priors:
    """The priors of one model (see the module docstring), recorded in every output."""

    names: tuple[str, ...]  # fixed effects, lme4's names
    re_names: tuple[str, ...]  # random-effect columns
    beta_loc: tuple[float, ...]
    beta_scale: tuple[float, ...]
    sigma_scale: float
    sd_scale: tuple[float, ...]
    lkj_eta: float = 2.0

    @property
    def oneway(self) -> bool:
        return self.names == (INTERCEPT,) and self.re_names == (INTERCEPT,)

    # the one-way model's names (mu = the intercept, tau = its SD)
    @property
    def mu_loc(self) -> float:
        return self.beta_loc[self.names.index(INTERCEPT)]

    @property
    def mu_scale(self) -> float:
        return self.beta_scale[self.names.index(INTERCEPT)]

    @property
    def tau_scale(self) -> float:
        return self.sd_scale[0]

    def describe(self) -> dict[str, str]:
        if self.oneway:
            return {
                "mu": f"Normal(mu={self.mu_loc:.6g}, sigma={self.mu_scale:.6g})",
                "sigma": f"HalfNormal(sigma={self.sigma_scale:.6g})",
                "tau": f"HalfNormal(sigma={self.tau_scale:.6g})",
            }
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
        if len(self.re_names) > 1:
            out["correlations"] = f"LKJ(eta={self.lkj_eta:.6g})"
        return out

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.oneway:  # documented aliases of the one-way model
            out.update(mu_loc=self.mu_loc, mu_scale=self.mu_scale, tau_scale=self.tau_scale)
        return {**out, "text": self.describe()}


def _col_scale(col: np.ndarray) -> float:
    sd = float(np.std(col))
    return sd if sd > 0 else 1.0


def default_priors(data) -> Priors:
    """Weakly informative defaults on the scale of the data (a model `LMMData`, or anything with
    `y`, and `X`, `Z`, `fixed_names`, `re_names` for formula models; without them the one-way
    model's intercept-only design)."""
    y = np.asarray(data.y, dtype=float)
    sd_y = float(y.std(ddof=1))
    names = tuple(getattr(data, "fixed_names", (INTERCEPT,)))
    re_names = tuple(getattr(data, "re_names", (INTERCEPT,)))
    if getattr(data, "n_factors", 1) > 1:  # lme4's names qualified by factor: sd[(Intercept)|plate]
        factor = {c: data.groupings[b.factor].name for b in data.blocks for c in b.cols}
        re_names = tuple(f"{n}|{factor[k]}" for k, n in enumerate(re_names))
    X = getattr(data, "X", None)
    Z = getattr(data, "Z", None)
    loc, scale = [], []
    for k, name in enumerate(names):
        if name == INTERCEPT:
            loc.append(float(y.mean()))
            scale.append(10.0 * sd_y)
        else:
            loc.append(0.0)
            scale.append(2.5 * sd_y / _col_scale(X[:, k]))
    sd_scale = [
        2.5 * sd_y / (_col_scale(Z[:, k]) if Z is not None else 1.0) for k in range(len(re_names))
    ]
    return Priors(
        names=names,
        re_names=re_names,
        beta_loc=tuple(loc),
        beta_scale=tuple(scale),
        sigma_scale=2.5 * sd_y,
        sd_scale=tuple(sd_scale),
    )


def prior_number(key: str, value, positive: bool = True) -> float:
    """A prior setting as a finite float (positive for scales), or a one-line error."""
    if isinstance(value, bool):
        raise InputError(f"prior setting '{key}' must be a number, got {value!r}.")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"prior setting '{key}' must be a number, got {value!r}.") from None
    if not math.isfinite(value):
        raise InputError(f"prior setting '{key}' must be finite, got {value!r}.")
    if positive and not value > 0:
        raise InputError(f"prior setting '{key}' must be positive, got {value!r}.")
    return value


def parse_statement(text: str) -> tuple[str, str, tuple[float, ...]]:
    """'sd[x] ~ HalfNormal(2)' -> ('sd[x]', 'HalfNormal', (2.0,)); a one-line error otherwise.
    Numbers only: nothing in a prior statement is evaluated."""
    m = _STATEMENT.match(str(text))
    if m is None:
        raise InputError(
            f"prior '{text}' is not of the form 'PARAMETER ~ DISTRIBUTION(NUMBERS)', e.g. "
            f"'sigma ~ HalfNormal(5)'."
        )
    target, dist = m["target"].strip(), m["dist"]
    if dist not in DISTRIBUTIONS:
        raise InputError(
            f"prior '{text}': unknown distribution '{dist}'; use {', '.join(DISTRIBUTIONS)}."
        )
    raw = [a.strip() for a in m["args"].split(",") if a.strip()]
    raw = [a.split("=", 1)[1].strip() if "=" in a else a for a in raw]  # Normal(mu=0, sigma=1)
    if len(raw) != DISTRIBUTIONS[dist]:
        raise InputError(
            f"prior '{text}': {dist} takes {DISTRIBUTIONS[dist]} number(s), got {len(raw)}."
        )
    args = tuple(
        prior_number(target, a, positive=not (dist == "Normal" and i == 0))
        for i, a in enumerate(raw)
    )
    return target, dist, args


def _apply(pri: Priors, target: str, dist: str, args: tuple[float, ...], text: str) -> Priors:
    def need(kind: str) -> None:
        if dist != kind:
            raise InputError(f"prior '{text}': '{target}' takes a {kind} prior, not {dist}.")

    def effect(name: str, names: tuple[str, ...], what: str) -> int:
        if name not in names:
            raise InputError(
                f"prior '{text}': no {what} named '{name}'; the model has {', '.join(names)}."
            )
        return names.index(name)

    bracket = re.fullmatch(r"(beta|sd)\[(.+)\]", target)
    if target == "sigma":
        need("HalfNormal")
        return replace(pri, sigma_scale=args[0])
    if target in ("tau", "sd"):
        need("HalfNormal")
        if target == "tau" and not pri.oneway:
            raise InputError(
                f"prior '{text}': 'tau' is the one-way model's SD; use 'sd' (every SD) or "
                f"'sd[NAME]' with NAME one of {', '.join(pri.re_names)}."
            )
        return replace(pri, sd_scale=(args[0],) * len(pri.re_names))
    if target in ("cor", "correlations", "lkj"):
        need("LKJ")
        return replace(pri, lkj_eta=args[0])
    if target == "mu" or target == INTERCEPT or (bracket and bracket[1] == "beta"):
        need("Normal")
        name = INTERCEPT if target in ("mu", INTERCEPT) else bracket[2]
        k = effect(name, pri.names, "fixed effect")
        loc, scale = list(pri.beta_loc), list(pri.beta_scale)
        loc[k], scale[k] = args
        return replace(pri, beta_loc=tuple(loc), beta_scale=tuple(scale))
    if bracket and bracket[1] == "sd":
        need("HalfNormal")
        k = effect(bracket[2], pri.re_names, "random-effect column")
        sd = list(pri.sd_scale)
        sd[k] = args[0]
        return replace(pri, sd_scale=tuple(sd))
    raise InputError(
        f"prior '{text}': unknown parameter '{target}'; use sigma, sd, sd[NAME], beta[NAME], "
        f"(Intercept), cor (or mu, tau for the one-way model)."
    )


def make_priors(data, overrides=None) -> Priors:
    """Default priors with the user's settings applied in order: `overrides` is a dict (numeric
    keys, or parameter -> 'Dist(numbers)' as a case file's `[priors]` table has them), or a list
    of statements 'PARAMETER ~ DIST(NUMBERS)' (the CLI's `--prior`)."""
    pri = default_priors(data)
    if not overrides:
        return pri
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = [(None, s) for s in overrides]
    for key, value in items:
        if key is None or isinstance(value, str) and "(" in value:
            text = value if key is None else f"{key} ~ {value}"
            pri = _apply(pri, *parse_statement(text), text)
            continue
        if key not in NUMERIC_KEYS:
            raise InputError(
                f"unknown prior setting '{key}'; use one of {', '.join(NUMERIC_KEYS)}, or a "
                f'statement such as sigma = "HalfNormal(5)".'
            )
        v = prior_number(key, value, positive=key != "mu_loc")
        if key in ("mu_loc", "mu_scale"):
            k = effect_index(pri, INTERCEPT, key)
            arr = list(pri.beta_loc if key == "mu_loc" else pri.beta_scale)
            arr[k] = v
            pri = replace(pri, **{"beta_loc" if key == "mu_loc" else "beta_scale": tuple(arr)})
        elif key == "tau_scale":
            pri = replace(pri, sd_scale=(v,) * len(pri.re_names))
        elif key in ("beta_scale", "sd_scale"):
            pri = replace(pri, **{key: tuple(v * s for s in getattr(pri, key))})
        else:
            pri = replace(pri, **{key: v})
    return pri


def effect_index(pri: Priors, name: str, key: str) -> int:
    if name not in pri.names:
        raise InputError(f"prior setting '{key}' needs an intercept in the model.")
    return pri.names.index(name)
