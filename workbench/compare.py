"""The comparison: one data set, one model, every estimator, one plain record.

Pipeline: data -> sufficient statistics -> estimators (ANOVA, EB-ML, EB-REML, joint MAP in both
parametrizations with and without priors, MCMC) -> `Comparison`, which the table, the JSON
(`to_dict`) and later the report all read.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.errors import InputError
from workbench.fit import anova as anova_est
from workbench.fit import eb as eb_est
from workbench.fit.anova import AnovaFit
from workbench.fit.profile import Profile, profile
from workbench.jsonsafe import finalize
from workbench.model import design
from workbench.model.data import GroupedData, from_frame, load_csv, read_csv
from workbench.model.design import LMMData
from workbench.model.formula import parse
from workbench.model.priors import Priors, make_priors
from workbench.model.pymc import PARAMETRIZATIONS as MCMC_PARAMETRIZATIONS
from workbench.objectives.oneway import PARAMETRIZATIONS
from workbench.provenance import citation, lock_sha256
from workbench.provenance import record as provenance_record
from workbench.seeds import seed_for

METHODS = ("anova", "eb-ml", "eb-reml", "joint-map", "mcmc")
# one joint-MAP variant instead of all four: `joint-map[+priors]:PARAMETRIZATION`
JOINT_VARIANTS = {
    f"joint-map{'+priors' if pri else ''}:{par}": (par, pri)
    for par in PARAMETRIZATIONS
    for pri in (False, True)
}
PROFILE_MAX_EFFECTS = 2000  # several factors: profile intervals up to this many random effects
MODEL_TEXT = "y_ij ~ N(mu + a_j, sigma^2), a_j ~ N(0, tau^2)  [lme4: y ~ 1 + (1 | group)]"


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers besides the data (recorded in every output)."""

    methods: tuple[str, ...] = METHODS
    seed: int = 0
    parametrization: str = "collapsed"
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


@dataclass(frozen=True)
class Comparison:
    """One data set, one model, every estimator: the one record for every model, built once
    at the end of `compare`. The table, the JSON (`to_dict`), the explanation and the report
    read it; it imports none of them at module level."""

    data: LMMData
    priors: Priors
    settings: Settings
    anova: AnovaFit | None = None  # one-way designs only
    eb_ml: eb_est.EBFit | None = None
    eb_reml: eb_est.EBFit | None = None
    profile: Profile | None = None  # profile intervals (ML deviance, as lme4's confint)
    profile_failure: str | None = None  # why there are no profile intervals
    # every joint MAP variant, by (parametrization, with priors)
    joint_maps: dict[tuple[str, bool], object] = field(default_factory=dict)
    mcmc: object | None = None
    # one-way models run with priors: the exact posterior (fit.exact_oneway.ExactPosterior)
    exact_posterior: object | None = None
    timings: dict[str, float] = field(default_factory=dict, compare=False)  # not in the JSON

    @property
    def joint_map(self):
        """The headline joint MAP: the centered h-likelihood (the joint mode of the question)."""
        return self.joint_maps.get(("centered", False))

    @property
    def joint_map_posterior(self):
        """The joint MAP of the density PyMC samples (centered, with the priors)."""
        return self.joint_maps.get(("centered", True))

    def warnings(self) -> list[str]:
        out = []
        for fit in (self.eb_ml, self.eb_reml):
            if fit is not None:
                out += [f"EB-{fit.method.upper()}: {n}" for n in fit.notes]
        if self.profile_failure is not None:
            out.append(f"EB: {self.profile_failure}")
        if self.mcmc is not None:
            out += [f"MCMC: {w}" for w in self.mcmc.warnings]
        return out

    def to_dict(self) -> dict:
        """The documented JSON contract (README, 'JSON output'; the schema is
        `workbench/schema/comparison.schema.json`): the same blocks and keys for every model,
        plain values only, every non-finite number reported as null with a note
        (`jsonsafe.finalize`). One-way models add the documented aliases mu, sigma2, tau2."""
        d = self.data
        out: dict = {
            "workbench_version": version("workbench"),
            "lock_sha256": lock_sha256(),
            "model": {
                "formula": d.formula,
                "text": MODEL_TEXT if d.is_oneway else f"lme4: {d.formula}",
                "oneway": d.is_oneway,
                "priors": self.priors.to_dict(),
            },
            "data": {**d.summary(), "citation": citation(d.source)},
            "settings": self.settings.to_dict(),
            "provenance": provenance_record(),
        }
        if self.anova is not None:
            out["anova"] = self.anova.to_dict()
        for key, fit in (("eb_ml", self.eb_ml), ("eb_reml", self.eb_reml)):
            if fit is None or (key == "eb_ml" and "eb-ml" not in self.settings.methods):
                continue
            out[key] = fit.to_dict()
            if self.profile is not None:
                ci = self.profile.to_dict()
                if d.is_oneway:  # the one-way names of the same intervals
                    ci = {**ci, "tau": ci.get(f"sd_(Intercept)|{d.group_name}")}
                out[key]["ci_profile"] = ci
                out[key]["ci_level"] = self.profile.level
                out[key]["ci_profile_note"] = (
                    f"{self.profile.level:.0%} profile-likelihood intervals of the ML deviance "
                    f"(lme4's confint(method = 'profile'), which profiles ML for REML fits too)"
                )
                out[key]["notes"] = list(out[key].get("notes", [])) + list(self.profile.notes)
        if self.joint_maps:
            if self.joint_map is not None:
                out["joint_map"] = self.joint_map.to_dict()
            if self.joint_map_posterior is not None:
                out["joint_map_posterior"] = self.joint_map_posterior.to_dict()
            out["joint_map_all"] = {
                par: {
                    ("posterior" if pri else "h_likelihood"): self.joint_maps[
                        (par, pri)
                    ].short_dict()
                    for pri in (False, True)
                    if (par, pri) in self.joint_maps
                }
                for par in PARAMETRIZATIONS
            }
        if self.mcmc is not None:
            out["mcmc"] = self.mcmc.to_dict()
        if self.exact_posterior is not None:
            out["exact_posterior"] = self.exact_posterior.to_dict()
        if self.eb_ml is not None:
            from workbench.explain import explain

            out["explanation"] = explain(self).to_dict()
        if self.eb_ml is not None or self.eb_reml is not None or self.mcmc is not None:
            from workbench.explain import CI_SCALE, story

            out["story"] = story(self)  # the headline, the second framing, the variants' roles
            if out.get("joint_map", {}).get("ci_hessian"):
                out["joint_map"]["ci_scale"] = CI_SCALE
        out["warnings"] = self.warnings()
        return finalize(out)

    def __repr__(self) -> str:
        """A header line (formula, N, grouping factors) and one short line per method run:
        the variances and log likelihood or log joint, never arrays."""
        d = self.data
        groups = ", ".join(f"{g.name} {g.n_levels}" for g in d.groupings)
        lines = [f"Comparison({d.formula}, N={d.n_obs}, levels: {groups})"]
        if self.anova is not None:
            lines.append(f"  ANOVA: {self.anova.brief()}")
        if self.eb_ml is not None and "eb-ml" in self.settings.methods:
            lines.append(f"  EB-ML: {self.eb_ml.brief()}")
        if self.eb_reml is not None:
            lines.append(f"  EB-REML: {self.eb_reml.brief()}")
        for (par, pri), fit in self.joint_maps.items():
            lines.append(f"  joint MAP {par}{' +priors' if pri else ''}: {fit.brief()}")
        if self.mcmc is not None:
            s = self.mcmc.settings
            lines.append(
                f"  MCMC ({s.parametrization}, {s.chains} x {s.draws}): {self.mcmc.brief()}"
            )
        if self.exact_posterior is not None:
            lines.append(f"  exact posterior: {self.exact_posterior.brief()}")
        if n := len(self.warnings()):
            lines.append(f"  {n} warning{'s' if n > 1 else ''}: see .warnings()")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Jupyter: the headline, the estimates, the key figure and what ran
        (`report.notebook`), not the whole report (`report.render`)."""
        from workbench.present.report import notebook

        return notebook(self)

    def table(self) -> str:
        """A side-by-side text table of the point estimates."""
        from workbench.present.table import comparison_table

        return comparison_table(self)


def parse_methods(methods, where: str = "--methods") -> tuple[str, ...]:
    """Accept a list or a comma-separated string; reject unknown names with a suggestion.
    `where` names the source in messages (a flag, or a case file's key)."""
    if methods is None:
        return METHODS
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    out = []
    for m in methods:
        if m not in METHODS and m not in JOINT_VARIANTS:
            close = difflib.get_close_matches(m, METHODS + tuple(JOINT_VARIANTS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise InputError(
                f"{where}: unknown method '{m}'; {hint}choose from {','.join(METHODS)} "
                f"(or one joint-MAP variant: joint-map[+priors]:centered|noncentered)."
            )
        if m not in out:
            out.append(m)
    if not out:
        raise InputError(f"{where} is empty; choose from {','.join(METHODS)}.")
    return tuple(out)


def joint_variants(methods: tuple[str, ...]) -> list[tuple[str, bool]]:
    """The joint-MAP variants the methods ask for: all four for `joint-map`, else those named."""
    if "joint-map" in methods:
        return list(JOINT_VARIANTS.values())
    return [JOINT_VARIANTS[m] for m in methods if m in JOINT_VARIANTS]


def check_settings(s: Settings) -> None:
    """One-line errors for option values that cannot work."""
    if s.parametrization not in MCMC_PARAMETRIZATIONS:
        raise InputError(
            "--parametrization (the MCMC model) must be 'collapsed', 'noncentered' or "
            f"'centered', got '{s.parametrization}'."
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
        raise InputError(
            "name the response and the grouping columns (y=..., group=...), or give a formula."
        )
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


def _model(data, y, group, formula, levels) -> LMMData:
    """The one model record: `y`/`group` are sugar for the formula `y ~ 1 + (1 | group)`.
    One-way data are validated by the one-way checks (their messages name --y/--group)."""
    if formula is None:
        return design.from_grouped(resolve_data(data, y, group))
    if y is not None or group is not None:
        raise InputError("give either a formula or y/group, not both.")
    spec = parse(formula)
    if isinstance(data, str | Path):
        frame = read_csv(data)  # the data hash is of the used columns (content_sha256)
        source = str(data)
    elif isinstance(data, pd.DataFrame):
        frame, source = data, "<DataFrame>"
    else:
        raise InputError(
            f"with formula=..., data must be a CSV path or a pandas DataFrame, got "
            f"{type(data).__name__}."
        )
    if spec.is_oneway:
        gd = from_frame(frame, spec.response, spec.factor, source=source)
        return design.from_grouped(gd, formula=spec.text())
    return design.from_frame(frame, spec, source=source, levels=levels)


def compare(
    data,
    y: str | None = None,
    group: str | None = None,
    *,
    formula: str | None = None,
    levels: dict | None = None,
    methods=None,
    seed: int = 0,
    parametrization: str = "collapsed",
    n_starts: int = 16,
    n_jobs: int = -1,
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    target_accept: float = 0.9,
    priors=None,
    progress=None,
) -> Comparison:
    """Fit the model every requested way and return the one comparison record.

    `data` is a CSV path or a DataFrame; the model is an lme4 `formula` ("y ~ x + (1 + x | g)")
    or, as sugar for "y ~ 1 + (1 | group)", the columns `y` and `group`. `levels` sets a
    categorical column's level order (first = reference level). `priors`: a dict (a case
    file's `[priors]`) or statements like ["sigma ~ HalfNormal(5)"]. `progress(step: str)` is
    called before each step. The stages are the same for every model; the one-way model's
    objectives use its per-group kernels (`LMMData.is_oneway`)."""
    from workbench.fit import joint_map as jm_est

    chosen = parse_methods(methods)
    settings = Settings(
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
    check_settings(settings)
    d = _model(data, y, group, formula, levels)
    if methods is None and not d.is_oneway:  # the default: every method that applies
        chosen = tuple(m for m in chosen if m != "anova")
        settings = replace(settings, methods=chosen)
    if "anova" in chosen and not d.is_oneway:
        raise InputError(
            "method 'anova' (the method of moments) is only for the one-way model "
            f"y ~ 1 + (1 | g); choose from {','.join(m for m in METHODS if m != 'anova')}."
        )
    pri = make_priors(d, priors)
    clock, say = _stopwatch(progress)
    parts: dict = {}
    if "anova" in chosen:
        say("ANOVA (method of moments)")
        parts["anova"] = anova_est.fit(d.oneway)
    variants = joint_variants(chosen)
    if "eb-ml" in chosen or variants:
        say("empirical Bayes (ML)")
        parts["eb_ml"] = eb_est.fit(d, "ml")
    if "eb-reml" in chosen:
        say("empirical Bayes (REML)")
        parts["eb_reml"] = eb_est.fit(d, "reml")
    base = parts.get("eb_ml") or parts.get("eb_reml")
    n_effects = sum(g.n_levels * len(d.factor_cols(k)) for k, g in enumerate(d.groupings))
    if base is not None and d.n_factors > 1 and n_effects > PROFILE_MAX_EFFECTS:
        parts["profile_failure"] = (
            f"profile-likelihood intervals skipped: {n_effects} random effects in "
            f"{d.n_factors} grouping factors (over {PROFILE_MAX_EFFECTS}), where each of the "
            f"thousands of profile evaluations factors the whole model; the fixed-effect Wald "
            f"intervals and the conditional sds are reported"
        )
    elif base is not None:
        say("profile-likelihood intervals (ML deviance)")
        try:
            parts["profile"] = profile(base)
        except (np.linalg.LinAlgError, ArithmeticError, ValueError) as exc:
            # e.g. a random slope on an uncentred covariate: lme4's (sd, cor) parametrisation
            # is then nearly singular along the profile; the fits stand, the intervals do not
            parts["profile_failure"] = (
                f"profile-likelihood intervals could not be computed ({type(exc).__name__}: "
                f"{exc}); centring the covariates of random slopes usually helps"
            )
    if variants:
        joint = {}
        for par, with_priors in variants:
            objective = "posterior" if with_priors else "h_likelihood"
            say(
                f"joint MAP, {par}, {'with priors' if with_priors else 'h-likelihood'} "
                f"({settings.n_starts} starts)"
            )
            joint[(par, with_priors)] = jm_est.fit(
                d,
                parts["eb_ml"],
                parametrization=par,
                priors=pri if with_priors else None,
                n_starts=settings.n_starts,
                seed=seed_for(settings.seed, "joint_map", par, objective),
                n_jobs=settings.n_jobs,
            )
        parts["joint_maps"] = joint
    if "mcmc" in chosen:
        from workbench.fit import mcmc as mcmc_est

        say(
            f"MCMC: NUTS, {settings.chains} chains x {settings.draws} draws "
            f"({settings.parametrization})"
        )
        parts["mcmc"] = mcmc_est.fit(
            d,
            pri,
            mcmc_est.McmcSettings(
                chains=settings.chains,
                draws=settings.draws,
                tune=settings.tune,
                target_accept=settings.target_accept,
                parametrization=settings.parametrization,
                seed=settings.seed,
            ),
            progressbar=progress is not None,  # nuts.Progress: a live line only on a terminal
        )
    if d.is_oneway and ("mcmc" in chosen or any(with_priors for _, with_priors in variants)):
        from workbench.fit.exact_oneway import exact_posterior

        say("exact posterior (quadrature over sigma, tau; mu and the group effects analytic)")
        parts["exact_posterior"] = exact_posterior(d.oneway, pri)
    say("")
    return Comparison(data=d, priors=pri, settings=settings, timings=clock, **parts)
