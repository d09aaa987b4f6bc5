"""Simulation study definitions: the study file, its checks and the grid of settings.

A study is a model (a formula; by default the one-way `y ~ 1 + (1 | g)`), a design generator
(m groups, group sizes "3" or "2-8", covariates drawn from a small parsed table, never evaluated)
and a grid of true parameters. Settings are the product of every grid value; replicates of a
setting differ only by their seed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.errors import InputError, need_int, need_real, need_str_list

ONEWAY_FORMULA = "y ~ 1 + (1 | g)"
JOINT_VARIANTS = (
    "joint-map:centered",
    "joint-map:noncentered",
    "joint-map+priors:centered",
    "joint-map+priors:noncentered",
)
# compare()'s methods; "joint-map" stands for its four variants, each reported under its label
SIM_METHODS = ("eb-ml", "eb-reml", "joint-map", *JOINT_VARIANTS, "mcmc")
DEFAULT_METHODS = ("eb-ml", "eb-reml", "joint-map:centered", "joint-map+priors:noncentered")
GRID_KEYS = ("m", "group_sizes", "mu", "sigma", "tau")  # one-way grid (and the CLI's flags)
FORMULA_GRID = ("m", "group_sizes", "sigma", "beta", "sd", "cor")  # formula-model grid
MCMC_KEYS = ("chains", "draws", "tune")
# 2: each replicate runs workbench.compare (its JSON's intervals); 3: and records the model SEs
PIPELINE_VERSION = 3
# Bounds on sizes (beyond them a study would run for weeks or exhaust memory): refused up front.
MAX_M = 100_000
MAX_OBS = 10_000_000  # observations per simulated data set (m x largest group size)
MAX_REPLICATES = 1_000_000
MAX_LEVELS = 50

# Covariate generators: per observation, or "group_" + name for one value per group.
_COVARIATE = re.compile(r"^\s*(group_)?(normal|uniform|categorical)\s*\((.*)\)\s*$")
COVARIATE_HELP = (
    "'normal(mean, sd)', 'uniform(lo, hi)', 'categorical(a, b, c)' (one value per observation) "
    "or the same with 'group_' in front (one value per group)"
)


@dataclass(frozen=True)
class Covariate:
    """One column of the design generator, parsed from text like "group_normal(0, 1)"."""

    name: str
    kind: str  # normal | uniform | categorical
    per_group: bool
    args: tuple  # (mean, sd), (lo, hi) or the level names

    @classmethod
    def parse(cls, name: str, text, where: str) -> Covariate:
        m = _COVARIATE.match(text) if isinstance(text, str) else None
        if m is None:
            raise InputError(f"{where}: '{text}' is not a covariate; use {COVARIATE_HELP}.")
        per_group, kind = m.group(1) is not None, m.group(2)
        parts = [a.strip() for a in m.group(3).split(",") if a.strip()]
        if kind == "categorical":
            if not 2 <= len(parts) <= MAX_LEVELS or len(set(parts)) < len(parts):
                raise InputError(f"{where}: '{text}' needs 2 to {MAX_LEVELS} distinct level names.")
            return cls(name, kind, per_group, tuple(parts))
        if len(parts) != 2:
            raise InputError(f"{where}: '{text}' needs two numbers, like {kind}(0, 1).")
        try:
            a, b = (float(p) for p in parts)
        except ValueError:
            raise InputError(f"{where}: '{text}' needs two numbers, like {kind}(0, 1).") from None
        if not (np.isfinite(a) and np.isfinite(b)) or b <= (0.0 if kind == "normal" else a):
            raise InputError(
                f"{where}: '{text}': "
                + ("sd must be > 0." if kind == "normal" else "needs lo < hi.")
            )
        return cls(name, kind, per_group, (a, b))

    def text(self) -> str:
        args = ", ".join(str(a) if isinstance(a, str) else f"{a:g}" for a in self.args)
        return f"{'group_' if self.per_group else ''}{self.kind}({args})"

    def draw(self, rng: np.random.Generator, codes: np.ndarray, m: int):
        size = m if self.per_group else codes.size
        if self.kind == "normal":
            v = self.args[0] + self.args[1] * rng.standard_normal(size)
        elif self.kind == "uniform":
            v = rng.uniform(self.args[0], self.args[1], size)
        else:
            v = np.asarray(self.args, dtype=object)[rng.integers(0, len(self.args), size)]
        return v[codes] if self.per_group else v


@dataclass(frozen=True)
class Setting:
    """One point of the grid. `params` holds the truth by name: one-way mu, sigma, tau; formula
    models sigma, beta[name], sd[term], cor[term1:term2] (the JSON's order of the pair)."""

    index: int
    m: int
    group_sizes: str  # "3" (balanced) or "2-8" (each size uniform on 2..8, drawn per replicate)
    params: tuple[tuple[str, float], ...]

    def __getattr__(self, name: str):  # one-way aliases s.mu, s.sigma, s.tau
        for k, v in self.__dict__.get("params", ()):
            if k == name:
                return v
        raise AttributeError(name)

    @property
    def size_range(self) -> tuple[int, int]:
        lo, _, hi = self.group_sizes.partition("-")
        return int(lo), int(hi or lo)

    @property
    def balanced(self) -> bool:
        lo, hi = self.size_range
        return lo == hi

    def columns(self) -> dict:
        """The setting as table columns (m, group_sizes, then the true parameters)."""
        return {"m": self.m, "group_sizes": self.group_sizes, **dict(self.params)}

    def describe(self) -> str:
        return ", ".join(
            f"{k} = {v:g}" if k != "group_sizes" else f"n = {v}" for k, v in self.columns().items()
        )


@dataclass(frozen=True)
class Study:
    """A checked study (see `check_study`). `formula` None is the one-way model with grid keys
    m, group_sizes, mu, sigma, tau; otherwise the grid has m, group_sizes, sigma and flat keys
    `beta[name]`, `sd[term]`, `cor[a:b]`, and `covariates` {column: generator text}."""

    name: str
    grid: dict
    replicates: int
    methods: tuple[str, ...] = DEFAULT_METHODS
    level: float = 0.95
    seed: int = 0
    n_starts: int = 16
    mcmc: dict = field(default_factory=lambda: {"chains": 2, "draws": 300, "tune": 300})
    formula: str | None = None
    covariates: dict = field(default_factory=dict)
    title: str = ""  # the study file's title and description (the report's aims; not in
    description: str = ""  # the definition, so rewording them keeps the store)

    @property
    def oneway(self) -> bool:
        return self.formula is None

    @property
    def model_formula(self) -> str:
        return ONEWAY_FORMULA if self.formula is None else self.formula

    def param_keys(self) -> tuple[str, ...]:
        if self.oneway:
            return ("mu", "sigma", "tau")
        return ("sigma", *(k for k in self.grid if k[:3] in ("bet", "sd[", "cor")))

    def settings(self) -> list[Setting]:
        keys = ("m", "group_sizes", *self.param_keys())
        out = []
        for i, combo in enumerate(itertools.product(*(self.grid[k] for k in keys))):
            vals = dict(zip(keys, combo, strict=True))
            params = tuple((k, float(vals[k])) for k in keys[2:])
            out.append(Setting(i, int(vals["m"]), str(vals["group_sizes"]), params))
        return out

    @property
    def generators(self) -> tuple[Covariate, ...]:
        """The covariates in name order (the order of the draws)."""
        return tuple(
            Covariate.parse(k, v, f"covariates.{k}") for k, v in sorted(self.covariates.items())
        )

    def definition(self) -> dict:
        """What decides the numbers (the store is tied to its fingerprint), including the
        version of the replicate's pipeline: stores of version 1 (before compare() ran each
        replicate; EB-REML intervals then profiled the REML likelihood) are not mixed in."""
        d = {
            "pipeline": PIPELINE_VERSION,
            "grid": self.grid,
            "methods": list(self.methods),
            "level": self.level,
            "seed": self.seed,
            "n_starts": self.n_starts,
            "mcmc": self.mcmc,
        }
        if not self.oneway:
            d["formula"] = self.formula
            d["covariates"] = dict(sorted(self.covariates.items()))
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()


def load_study(path: str | Path) -> Study:
    """Read a study file's [simulation] section (and [simulation.covariates]); checked."""
    from workbench.casefile import read_toml

    path = Path(path)
    raw, _ = read_toml(path, "study file")
    sim = raw.get("simulation")
    if not isinstance(sim, dict):
        raise InputError(f"{path}: a study needs a [simulation] section.")
    allowed = {
        *GRID_KEYS,
        *FORMULA_GRID,
        "formula",
        "covariates",
        "replicates",
        "methods",
        "level",
        "seed",
        "n_starts",
        "mcmc",
    }
    bad = sorted(set(sim) - allowed)
    if bad:
        raise InputError(
            f"{path}: unknown key '{bad[0]}' in [simulation]; allowed: "
            f"{', '.join(sorted(allowed))}."
        )
    for key in ("mcmc", "covariates"):
        if not isinstance(sim.get(key, {}), dict):
            raise InputError(
                f"{path}: [simulation] {key} must be a table, like "
                + (
                    "{ chains = 2, draws = 300, tune = 300 }."
                    if key == "mcmc"
                    else '[simulation.covariates] x = "normal(0, 1)".'
                )
            )
    formula = sim.get("formula")
    grid = {}
    for k, v in sim.items():
        if k in ("beta", "sd", "cor"):
            if not isinstance(v, dict) or not v:
                raise InputError(
                    f"{path}: [simulation] {k} must be a table by term, like "
                    f'{k} = {{ "(Intercept)" = 1 }}.'
                )
            for term, val in v.items():
                grid[f"{k}[{term}]"] = list(val) if isinstance(val, list) else [val]
        elif k in (*GRID_KEYS, *FORMULA_GRID):
            grid[k] = list(v) if isinstance(v, list) else [v]
    study = Study(
        name=path.stem,
        grid=grid,
        replicates=sim.get("replicates", 100),
        methods=sim.get("methods", DEFAULT_METHODS),
        level=sim.get("level", 0.95),
        seed=sim.get("seed", 0),
        n_starts=sim.get("n_starts", 16),
        mcmc={"chains": 2, "draws": 300, "tune": 300, **sim.get("mcmc", {})},
        formula=formula,
        covariates=dict(sim.get("covariates", {})),
        title=_text(raw.get("title", ""), f"{path}: title"),
        description=_text(raw.get("description", ""), f"{path}: description"),
    )
    return check_study(study, name=lambda key: f"{path}: [simulation] {key}")


def _size_range(text: str, name: str) -> tuple[int, int]:
    lo, _, hi = text.strip().partition("-")
    try:
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise InputError(
            f"{name} '{text}' must look like '3' (balanced) or '2-8' (sizes drawn from 2 to 8)."
        ) from None
    if lo < 1 or hi < lo or hi < 2:
        raise InputError(f"{name} '{text}' needs 1 <= min <= max and max >= 2, like '3' or '2-8'.")
    return lo, hi


def _oneway_aliases(grid: dict) -> dict:
    """`beta[(Intercept)]`/`sd[(Intercept)]` of a one-way formula study as mu/tau."""
    out = dict(grid)
    for new, old in (("beta[(Intercept)]", "mu"), ("sd[(Intercept)]", "tau")):
        if new in out:
            if old in out:
                raise InputError(f"give '{old}' or '{new}', not both.")
            out[old] = out.pop(new)
    return out


@dataclass(frozen=True)
class ModelTerms:
    """What a formula's design has: lme4's fixed-effect names, random-effect terms (one
    grouping factor) by correlated block, and the categorical covariates' levels."""

    response: str
    factor: str
    fixed: tuple[str, ...]
    blocks: tuple[tuple[str, ...], ...]
    levels: dict

    @property
    def re_names(self) -> tuple[str, ...]:
        return tuple(n for b in self.blocks for n in b)

    def pairs(self) -> list[str]:
        """Correlation names "a:b" in the JSON's order (within a block, term order)."""
        return [f"{a}:{b}" for blk in self.blocks for a, b in itertools.combinations(blk, 2)]


@lru_cache(maxsize=32)
def model_terms(formula: str, generators: tuple[Covariate, ...]) -> ModelTerms:
    """Parse the formula and build a small probe design from the covariates (fixed seed) to
    learn its term names; refuses columns the covariates do not define."""
    from workbench.model import design
    from workbench.model.formula import parse, variables

    spec = parse(formula)
    if len(spec.factors) != 1 or len(spec.random[0].columns) != 1:
        raise InputError(
            f"formula '{formula}': a simulation study has one grouping factor, one column "
            f"(crossed or nested models are fitted by `workbench compare`)."
        )
    known = {c.name for c in generators}
    for v in variables(spec)[1:-1]:
        if v not in known:
            raise InputError(
                f"formula '{formula}' uses column '{v}': define it in [simulation.covariates] "
                f"({COVARIATE_HELP})."
            )
    rng = np.random.default_rng(0)
    m, n = 24, 6
    codes = np.repeat(np.arange(m), n)
    frame = pd.DataFrame({c.name: c.draw(rng, codes, m) for c in generators})
    frame[spec.response] = rng.standard_normal(codes.size)
    frame[spec.factor] = [f"{j:06d}" for j in codes]
    levels = {c.name: list(c.args) for c in generators if c.kind == "categorical"}
    d = design.from_frame(frame, spec, levels=levels or None)
    return ModelTerms(
        spec.response, spec.factor, d.fixed_names, tuple(tuple(b.names) for b in d.blocks), levels
    )


def _term_grid(grid: dict, terms: ModelTerms, name) -> dict:
    """Check the beta/sd/cor grid against the formula's terms; correlations named either way
    round ("x:(Intercept)" or "(Intercept):x") are stored in the JSON's order."""
    out = {}
    want = {
        "beta": list(terms.fixed),
        "sd": list(terms.re_names),
        "cor": terms.pairs(),
    }
    for kind, names in want.items():
        given = {k[len(kind) + 1 : -1]: v for k, v in grid.items() if k.startswith(kind + "[")}
        for term, values in given.items():
            canon = term
            if kind == "cor" and term not in names:
                a, _, b = term.partition(":")
                canon = f"{b}:{a}"
            if canon not in names:
                raise InputError(
                    f"{name(kind)}: '{term}' is not a {kind} term of the model; its terms: "
                    f"{', '.join(names) or '(none)'}."
                )
            lo = {"beta": None, "sd": 0.0, "cor": -1.0}[kind]
            hi = 1.0 if kind == "cor" else None
            out[f"{kind}[{canon}]"] = [
                need_real(
                    v, f"{name(kind)}.{term}", lo, hi, open_lo=kind == "cor", open_hi=kind == "cor"
                )
                for v in values
            ]
        missing = [n for n in names if f"{kind}[{n}]" not in out]
        if missing and kind != "cor":
            raise InputError(
                f"{name(kind)} needs a value for every term: missing "
                f"{', '.join(repr(n) for n in missing)}."
            )
        for n in missing:  # correlations default to 0
            out[f"{kind}[{n}]"] = [0.0]
    return out


def check_study(study: Study, where: str = "study", name=None) -> Study:
    """Type and range checks of every value of a study, before any computing; `name(key)` says
    where a value came from (a flag or a study file's key). Returns the study with its values
    normalised (ints, floats, a tuple of distinct methods), so equal definitions fingerprint
    equally whatever their spelling (`tau = 1` or `--tau 1.0`)."""
    from workbench.casefile import MAX_CHAINS, MAX_DRAWS, MAX_STARTS
    from workbench.model.formula import parse

    if name is None:

        def name(key: str) -> str:
            return f"{where}: {key}"

    formula = study.formula
    if formula is not None:
        if not isinstance(formula, str):
            raise InputError(f"{name('formula')} must be a text like 'y ~ x + (1 + x | g)'.")
        if parse(formula).is_oneway and not study.covariates:
            formula = None
    covariates = study.covariates or {}
    if formula is None and covariates:
        raise InputError(f"{name('covariates')}: the one-way model uses no covariates.")
    generators = tuple(
        Covariate.parse(k, v, f"{name('covariates')}.{k}") for k, v in sorted(covariates.items())
    )
    src = _oneway_aliases(study.grid) if formula is None else dict(study.grid)
    keys = GRID_KEYS if formula is None else ("m", "group_sizes", "sigma")
    extra = sorted(k for k in src if k not in keys and (formula is None or "[" not in k))
    if extra:
        hint = (
            "the one-way model's grid has m, group_sizes, mu, sigma, tau"
            if formula is None
            else "a formula study's grid has m, group_sizes, sigma, beta, sd, cor"
        )
        raise InputError(f"{name(extra[0].split('[')[0])}: not used by this study; {hint}.")
    grid = {}
    for k in keys:
        values = src.get(k)
        if not isinstance(values, list | tuple) or not values:
            raise InputError(
                f"{name(k)} needs at least one value (a value or a comma-separated list)."
            )
        if k == "m":
            grid[k] = [need_int(v, name(k), 2, MAX_M) for v in values]
        elif k == "group_sizes":
            for v in values:
                if isinstance(v, bool) or not isinstance(v, str | int):
                    raise InputError(f"{name(k)} must be like '3' or '2-8', got {v!r}.")
                _size_range(str(v), name(k))
            grid[k] = [str(v).strip() for v in values]
        else:
            lo = {"mu": None, "sigma": 0.0, "tau": 0.0}[k]
            grid[k] = [need_real(v, name(k), lo, open_lo=k == "sigma") for v in values]
    if formula is not None:
        grid.update(_term_grid(src, model_terms(formula, generators), name))
    for m in grid["m"]:
        for gs in grid["group_sizes"]:
            hi = _size_range(gs, name("group_sizes"))[1]
            if m * hi > MAX_OBS:
                raise InputError(
                    f"{name('m')} = {m} with group sizes up to {hi} makes up to "
                    f"{m * hi:,} observations per data set; keep m x (largest "
                    f"group size) <= {MAX_OBS:,}."
                )
    methods = need_str_list(
        list(study.methods) if isinstance(study.methods, tuple) else study.methods, name("methods")
    )
    if not methods:
        raise InputError(f"{name('methods')} is empty; choose from {','.join(SIM_METHODS)}.")
    for meth in methods:
        if meth not in SIM_METHODS:
            raise InputError(
                f"{name('methods')}: unknown method '{meth}'; choose from {','.join(SIM_METHODS)}."
            )
    level = need_real(study.level, name("level"), 0.0, 1.0, open_lo=True, open_hi=True)
    if level != 0.95:
        raise InputError(
            f"{name('level')} = {level:g}: the intervals are compare()'s 95% intervals (profile, "
            f"Wald, Hessian), so a study's level is 0.95."
        )
    mcmc = {"chains": 2, "draws": 300, "tune": 300, **study.mcmc}
    bad = sorted(set(mcmc) - set(MCMC_KEYS))
    if bad:
        raise InputError(
            f"{name('mcmc')}: unknown key '{bad[0]}'; allowed: {', '.join(MCMC_KEYS)}."
        )
    mcmc = {
        "chains": need_int(mcmc["chains"], f"{name('mcmc')}.chains", 1, MAX_CHAINS),
        "draws": need_int(mcmc["draws"], f"{name('mcmc')}.draws", 1, MAX_DRAWS),
        "tune": need_int(mcmc["tune"], f"{name('mcmc')}.tune", 0, MAX_DRAWS),
    }
    return Study(
        name=study.name,
        grid=grid,
        replicates=need_int(study.replicates, name("replicates"), 1, MAX_REPLICATES),
        methods=tuple(dict.fromkeys(methods)),
        level=level,
        seed=need_int(study.seed, name("seed"), 0),
        n_starts=need_int(study.n_starts, name("n_starts"), 1, MAX_STARTS),
        mcmc=mcmc,
        formula=formula,
        covariates={c.name: c.text() for c in generators},
        title=_text(study.title, name("title")),
        description=_text(study.description, name("description")),
    )


def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{name} must be a text in quotes, got {value!r}.")
    return " ".join(value.split())
