"""The comparison: one data set, one model, every estimator, one plain record.

Pipeline: data -> sufficient statistics -> estimators (ANOVA, EB-ML, EB-REML, joint MAP in both
parametrizations with and without priors, MCMC) -> `Comparison`, which the table, the JSON
(`to_dict`) and later the report all read.
"""

from __future__ import annotations

import difflib
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.errors import InputError
from workbench.fit import anova as anova_est
from workbench.fit import eb_oneway as eb_est
from workbench.fit import joint_oneway as jm_est
from workbench.fit import mcmc_oneway as mcmc_est
from workbench.jsonsafe import finalize
from workbench.model.data import GroupedData, from_frame, load_csv, read_csv
from workbench.model.priors import Priors, make_priors
from workbench.objectives.oneway import PARAMETRIZATIONS, Stats
from workbench.provenance import lock_sha256

METHODS = ("anova", "eb-ml", "eb-reml", "joint-map", "mcmc")
MODEL_TEXT = "y_ij ~ N(mu + a_j, sigma^2), a_j ~ N(0, tau^2)  [lme4: y ~ 1 + (1 | group)]"


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers besides the data (recorded in every output)."""

    methods: tuple[str, ...] = METHODS
    seed: int = 0
    parametrization: str = "noncentered"
    n_starts: int = 16
    n_jobs: int = -1
    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    target_accept: float = 0.9

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["methods"] = list(self.methods)
        out.pop("n_jobs")  # does not change any number
        return out


@dataclass
class Comparison:
    data: GroupedData
    priors: Priors
    settings: Settings
    anova: anova_est.AnovaFit | None = None
    eb_ml: eb_est.EBFit | None = None
    eb_reml: eb_est.EBFit | None = None
    joint_maps: dict[tuple[str, bool], jm_est.JointMapResult] = field(default_factory=dict)
    mcmc: mcmc_est.McmcResult | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (not in JSON)

    @property
    def joint_map(self) -> jm_est.JointMapResult | None:
        """The joint MAP of the h-likelihood (no priors) in the chosen parametrization."""
        return self.joint_maps.get((self.settings.parametrization, False))

    @property
    def joint_map_posterior(self) -> jm_est.JointMapResult | None:
        """The joint MAP of the density with priors in the chosen parametrization."""
        return self.joint_maps.get((self.settings.parametrization, True))

    def warnings(self) -> list[str]:
        out = []
        for fit in (self.eb_ml, self.eb_reml):
            if fit is not None:
                out += [f"EB-{fit.method.upper()}: {n}" for n in fit.notes]
        if self.mcmc is not None:
            out += [f"MCMC: {w}" for w in self.mcmc.warnings]
        return out

    def to_dict(self) -> dict:
        """The documented JSON contract (README, 'JSON output'; the schema is
        `workbench/schema/comparison.schema.json`): plain values only, every non-finite number
        reported as null with a note (`jsonsafe.finalize`)."""
        out: dict = {
            "workbench_version": version("workbench"),
            "lock_sha256": lock_sha256(),
            "model": {"text": MODEL_TEXT, "priors": self.priors.to_dict()},
            "data": self.data.summary(),
            "settings": self.settings.to_dict(),
        }
        if self.anova is not None:
            out["anova"] = self.anova.to_dict()
        if self.eb_ml is not None and "eb-ml" in self.settings.methods:
            out["eb_ml"] = self.eb_ml.to_dict()
        if self.eb_reml is not None:
            out["eb_reml"] = self.eb_reml.to_dict()
        if self.joint_maps:
            out["joint_map"] = self.joint_map.to_dict()
            out["joint_map_posterior"] = self.joint_map_posterior.to_dict()
            out["joint_map_all"] = {
                par: {
                    ("posterior" if pri else "h_likelihood"): _short(r)
                    for (p, pri), r in self.joint_maps.items()
                    if p == par
                }
                for par in PARAMETRIZATIONS
            }
        if self.mcmc is not None:
            out["mcmc"] = self.mcmc.to_dict()
        if self.eb_ml is not None:
            from workbench.explain import explain

            out["explanation"] = explain(self).to_dict()
        out["warnings"] = self.warnings()
        return finalize(out)

    def _repr_html_(self) -> str:
        """Jupyter: the report's numbers and explanation, without plots."""
        from workbench.present.report import render

        return render(self, command="(Jupyter)", fragment=True)

    def table(self) -> str:
        """A side-by-side text table of the point estimates."""
        from workbench.present.table import comparison_table

        return comparison_table(self)


def _short(r: jm_est.JointMapResult) -> dict:
    return {
        "status": r.status,
        "mu": r.mu,
        "sigma2": r.sigma2,
        "tau2": r.tau2,
        "log_joint": r.log_joint,
        "start_counts": r.counts(),
        "message": r.message,
    }


def parse_methods(methods, where: str = "--methods") -> tuple[str, ...]:
    """Accept a list or a comma-separated string; reject unknown names with a suggestion.
    `where` names the source in messages (a flag, or a case file's key)."""
    if methods is None:
        return METHODS
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    out = []
    for m in methods:
        if m not in METHODS:
            close = difflib.get_close_matches(m, METHODS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise InputError(
                f"{where}: unknown method '{m}'; {hint}choose from {','.join(METHODS)}."
            )
        if m not in out:
            out.append(m)
    if not out:
        raise InputError(f"{where} is empty; choose from {','.join(METHODS)}.")
    return tuple(out)


def check_settings(s: Settings) -> None:
    """One-line errors for option values that cannot work."""
    if s.parametrization not in PARAMETRIZATIONS:
        raise InputError(
            f"--parametrization must be 'noncentered' or 'centered', got '{s.parametrization}'."
        )
    for name in ("chains", "draws", "n_starts"):
        if getattr(s, name) < 1:
            raise InputError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(s, name)}."
            )
    if s.tune < 0:
        raise InputError(f"--tune must be 0 or more, got {s.tune}.")
    if not 0.0 < s.target_accept < 1.0:
        raise InputError(
            f"--target-accept must lie strictly between 0 and 1, got {s.target_accept}."
        )
    if s.n_jobs == 0 or s.n_jobs < -1:
        raise InputError(
            f"--n-jobs must be a positive number of processes or -1 (all cores), got {s.n_jobs}."
        )
    if s.seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {s.seed}.")


def resolve_data(data, y: str | None, group: str | None) -> GroupedData:
    if isinstance(data, GroupedData):
        return data
    if y is None or group is None:
        raise InputError("name the response and the grouping columns (y=..., group=...).")
    if isinstance(data, pd.DataFrame):
        return from_frame(data, y, group)
    if isinstance(data, str | Path):
        return load_csv(data, y, group)
    raise InputError(f"data must be a CSV path or a pandas DataFrame, got {type(data).__name__}.")


def _stopwatch(progress):
    """(clock, say): `say(step)` closes the running step's timer and announces the next."""
    report = progress or (lambda step: None)
    clock: dict[str, float] = {}
    state = {"step": None, "t": 0.0}

    def say(step: str) -> None:
        now = time.perf_counter()
        if state["step"] is not None:
            clock[state["step"]] = clock.get(state["step"], 0.0) + now - state["t"]
        state["step"], state["t"] = step, now
        if step:
            report(step)

    return clock, say


def _formula_data(data, formula: str, levels: dict | None):
    """Parse the formula; return (spec, LMMData or None for the one-way model)."""
    from workbench.model import design
    from workbench.model.formula import parse

    spec = parse(formula)
    if isinstance(data, str | Path):
        frame, digest = read_csv(data)
        source = str(data)
    elif isinstance(data, pd.DataFrame):
        frame, digest, source = data, "", "<DataFrame>"
    else:
        raise InputError(
            f"with formula=..., data must be a CSV path or a pandas DataFrame, got "
            f"{type(data).__name__}."
        )
    if spec.is_oneway and not levels:
        return spec, from_frame(frame, spec.response, spec.factor, source=source, sha256=digest)
    return spec, design.from_frame(frame, spec, source=source, sha256=digest, levels=levels)


def compare(
    data,
    y: str | None = None,
    group: str | None = None,
    *,
    formula: str | None = None,
    levels: dict | None = None,
    methods=None,
    seed: int = 0,
    parametrization: str = "noncentered",
    n_starts: int = 16,
    n_jobs: int = -1,
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    target_accept: float = 0.9,
    priors: dict | None = None,
    progress=None,
):
    """Fit the model every requested way and return the comparison record.

    `data` is a CSV path, a DataFrame (with `y` and `group` naming columns) or a `GroupedData`.
    With `formula` (lme4 syntax, e.g. "y ~ x + (1 + x | g)") the general LMM is fitted and an
    `LMMComparison` returned; `y ~ 1 + (1 | g)` takes the one-way path (same answers, faster).
    `levels` sets a categorical column's level order (first = reference level).
    `priors` overrides the default priors. `progress(step: str)` is called before each step."""

    def settings_for(chosen: tuple[str, ...]) -> Settings:
        """The checked settings record, the same for both routes."""
        s = Settings(
            methods=chosen,
            seed=int(seed),
            parametrization=parametrization,
            n_starts=int(n_starts),
            n_jobs=int(n_jobs),
            chains=int(chains),
            draws=int(draws),
            tune=int(tune),
            target_accept=float(target_accept),
        )
        check_settings(s)
        return s

    gd = None
    if formula is not None:
        if y is not None or group is not None:
            raise InputError("give either a formula or y/group, not both.")
        spec, gd = _formula_data(data, formula, levels)
        if not isinstance(gd, GroupedData):
            from workbench.compare_lmm import METHODS as LMM_METHODS
            from workbench.compare_lmm import compare_lmm

            chosen = parse_methods(methods) if methods is not None else LMM_METHODS
            if "anova" in chosen:
                raise InputError(
                    "method 'anova' is only for the one-way model y ~ 1 + (1 | g); "
                    f"choose from {','.join(LMM_METHODS)}."
                )
            clock, say = _stopwatch(progress)
            out = compare_lmm(gd, settings_for(chosen), priors, say)
            say("")
            out.timings = clock
            return out
    settings = settings_for(parse_methods(methods))
    gd = gd if gd is not None else resolve_data(data, y, group)
    pri = make_priors(gd, priors)
    st = Stats.of(gd)
    clock, say = _stopwatch(progress)
    out = Comparison(data=gd, priors=pri, settings=settings)
    ms = settings.methods
    if "anova" in ms:
        say("ANOVA (method of moments)")
        out.anova = anova_est.fit(st)
    if "eb-ml" in ms or "joint-map" in ms:
        say("empirical Bayes (ML)")
        out.eb_ml = eb_est.fit(gd, "ml")
    if "eb-reml" in ms:
        say("empirical Bayes (REML)")
        out.eb_reml = eb_est.fit(gd, "reml")
    if "joint-map" in ms:
        sd_y = float(np.std(gd.y, ddof=1))
        for i, (par, with_priors) in enumerate(
            [(p, w) for p in PARAMETRIZATIONS for w in (False, True)]
        ):
            say(
                f"joint MAP, {par}, {'with priors' if with_priors else 'no priors'} "
                f"({settings.n_starts} starts)"
            )
            out.joint_maps[(par, with_priors)] = jm_est.fit(
                st,
                parametrization=par,
                priors=pri if with_priors else None,
                eb_point=(out.eb_ml.mu, out.eb_ml.sigma2, out.eb_ml.tau2),
                sd_y=sd_y,
                labels=gd.labels,
                n_starts=settings.n_starts,
                seed=settings.seed + i,
                n_jobs=settings.n_jobs,
            )
    if "mcmc" in ms:
        say(
            f"MCMC: NUTS, {settings.chains} chains x {settings.draws} draws "
            f"({settings.parametrization})"
        )
        out.mcmc = mcmc_est.fit(
            gd,
            pri,
            mcmc_est.McmcSettings(
                chains=settings.chains,
                draws=settings.draws,
                tune=settings.tune,
                target_accept=settings.target_accept,
                parametrization=settings.parametrization,
                seed=settings.seed,
            ),
            progressbar=progress is not None and sys.stderr.isatty(),
        )
    say("")
    out.timings = clock
    return out
