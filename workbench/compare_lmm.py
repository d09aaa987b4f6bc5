"""The comparison for a general (formula) model: EB-ML, EB-REML, joint MAP and MCMC on one
`LMMData`, in one record that the table, the JSON and the report read."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np

from workbench.explain_lmm import explain
from workbench.fit import eb as eb_est
from workbench.fit import joint_map as jv_est
from workbench.fit import joint_profiled as jm_est
from workbench.fit import mcmc as mcmc_est
from workbench.fit.mcmc_oneway import McmcSettings
from workbench.fit.profile import Profile, profile
from workbench.jsonsafe import finalize
from workbench.model.design import LMMData
from workbench.model.lmm_priors import LMMPriors, make_priors
from workbench.present.table import fmt
from workbench.provenance import lock_sha256

METHODS = ("eb-ml", "eb-reml", "joint-map", "mcmc")
# joint MAP variants besides the profiled centered h-likelihood (`joint_map`)
JOINT_VARIANTS = (("centered", True), ("noncentered", False), ("noncentered", True))


@dataclass
class LMMComparison:
    data: LMMData
    priors: LMMPriors
    settings: object  # compare.Settings
    eb_ml: eb_est.LMMFit | None = None
    eb_reml: eb_est.LMMFit | None = None
    joint_map: jm_est.LMMJointMap | None = None  # centered h-likelihood, profiled (headline)
    # the other joint MAP variants, by (parametrization, with priors), over all parameters
    joint_variants: dict[tuple[str, bool], jv_est.JointVariant] = field(default_factory=dict)
    mcmc: mcmc_est.LMMMcmc | None = None
    profile: Profile | None = None  # profile intervals (ML deviance, as lme4's confint)
    profile_failure: str | None = None  # why there are no profile intervals
    timings: dict[str, float] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        out = []
        for fit in (self.eb_ml, self.eb_reml):
            if fit is not None:
                out += [f"EB-{fit.method.upper()}: {n}" for n in fit.notes]
        if self.joint_map is not None and self.joint_map.status != "interior":
            out.append(f"joint MAP: {self.joint_map.message}")
        if self.profile_failure is not None:
            out.append(f"EB: {self.profile_failure}")
        if self.mcmc is not None:
            out += [f"MCMC: {w}" for w in self.mcmc.warnings]
        return out

    def explanation(self):
        return explain(self.eb_ml, self.joint_map) if self.eb_ml is not None else None

    def to_dict(self) -> dict:
        """The documented JSON contract (README, 'JSON output', formula models; the schema is
        `workbench/schema/comparison.schema.json`): plain values only, every non-finite number
        (e.g. the 0/0 correlation of a singular fit) reported as null with a note."""
        out: dict = {
            "workbench_version": version("workbench"),
            "lock_sha256": lock_sha256(),
            "model": {"formula": self.data.formula, "priors": self.priors.to_dict()},
            "data": self.data.summary(),
            "settings": self.settings.to_dict(),
        }
        for key, fit in (("eb_ml", self.eb_ml), ("eb_reml", self.eb_reml)):
            if fit is None or (key == "eb_ml" and "eb-ml" not in self.settings.methods):
                continue
            out[key] = fit.to_dict()
            if self.profile is not None:
                out[key]["ci_profile"] = self.profile.to_dict()
                out[key]["ci_profile_note"] = (
                    f"{self.profile.level:.0%} profile-likelihood intervals of the ML deviance "
                    f"(lme4's confint(method = 'profile'), which profiles ML for REML fits too)"
                )
                out[key]["notes"] += list(self.profile.notes)
        if self.joint_map is not None:
            out["joint_map"] = self.joint_map.to_dict()
        if self.joint_variants:
            posterior = self.joint_variants.get(("centered", True))
            if posterior is not None:
                out["joint_map_posterior"] = posterior.to_dict()
            out["joint_map_all"] = self._joint_map_all()
        if self.mcmc is not None:
            out["mcmc"] = self.mcmc.to_dict()
        if self.eb_ml is not None:
            out["explanation"] = self.explanation().to_dict()
        out["warnings"] = self.warnings()
        return finalize(out)

    def _joint_map_all(self) -> dict:
        """{centered, noncentered} x {h_likelihood, posterior}, the one-way keys (status,
        log_joint, start_counts, message; the estimates at an interior mode)."""
        out: dict = {par: {} for par in jv_est.PARAMETRIZATIONS}
        if self.joint_map is not None:
            j = self.joint_map.to_dict()
            keys = ("status", "log_joint", "start_counts", "message")
            keys += ("fixed_effects", "variance_components", "sigma2")
            out["centered"]["h_likelihood"] = {k: j.get(k) for k in keys if k in j}
            out["centered"]["h_likelihood"].setdefault("log_joint", None)
        for (par, pri), r in self.joint_variants.items():
            out[par]["posterior" if pri else "h_likelihood"] = r.short_dict()
        return out

    def rows(self) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
        """Point estimates by method (columns) and quantity (rows), for table and report."""
        cols, values = [], []
        d = self.data

        def add(name, beta, G, s2, objective):
            comps = eb_est.variance_components(G, d.blocks, d.group_name) if G is not None else None
            cols.append(name)
            values.append(
                [
                    *(beta if beta is not None else [None] * d.p),
                    *(comps.variances.values() if comps else [None] * d.q),
                    *(comps.correlations.values() if comps else [None] * len(_corr_names(d))),
                    s2,
                    objective,
                ]
            )

        for f in (self.eb_ml, self.eb_reml):
            if f is not None:
                add(f"EB-{f.method.upper()}", f.beta, f.G, f.sigma2, f.loglik)
        if self.joint_map is not None:
            j = self.joint_map
            add("joint MAP", j.beta, j.G, j.sigma2, j.log_joint)
        if self.mcmc is not None:
            o = self.mcmc.to_dict()
            vc = o["variance_components"][d.group_name]
            cols.append("MCMC mean")
            values.append(
                [
                    *(v["mean"] for v in o["fixed_effects"].values()),
                    *(v["mean"] for v in vc["variances"].values()),
                    *(v["mean"] for v in vc["correlations"].values()),
                    o["sigma2"]["mean"],
                    None,
                ]
            )
        labels = (
            [f"beta: {n}" for n in d.fixed_names]
            + [f"var: {n}" for n in d.re_names]
            + [f"cor: {n}" for n in _corr_names(d)]
            + ["sigma²", "log lik / REML / log joint"]
        )
        return cols, [(lab, [v[i] for v in values]) for i, lab in enumerate(labels)]

    def table(self) -> str:
        cols, rows = self.rows()
        width = max(len(r[0]) for r in rows) + 2
        lines = [" " * width + "".join(f"{c:>16}" for c in cols)]
        for lab, vals in rows:
            lines.append(f"{lab:<{width}}" + "".join(f"{fmt(v):>16}" for v in vals))
        if self.joint_map is not None:
            lines.append(f"joint MAP: {self.joint_map.message}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from workbench.present.report import render

        return render(self, command="(Jupyter)", fragment=True)


def _corr_names(d: LMMData) -> list[str]:
    return [
        f"{a}:{b.names[j]}"
        for b in d.blocks
        for i, a in enumerate(b.names)
        for j in range(i + 1, len(b.names))
    ]


def compare_lmm(data: LMMData, settings, priors: dict | None, say) -> LMMComparison:
    """Run every requested estimator on a formula model (`say(step)` marks the steps)."""
    out = LMMComparison(data=data, priors=make_priors(data, priors), settings=settings)
    ms = settings.methods
    if "eb-ml" in ms or "joint-map" in ms:
        say("empirical Bayes (ML, profiled deviance)")
        out.eb_ml = eb_est.fit(data, "ml")
    if "eb-reml" in ms:
        say("empirical Bayes (REML)")
        out.eb_reml = eb_est.fit(data, "reml")
    if out.eb_ml is not None or out.eb_reml is not None:
        say("profile-likelihood intervals (ML deviance)")
        try:
            out.profile = profile(out.eb_ml if out.eb_ml is not None else out.eb_reml)
        except (np.linalg.LinAlgError, ArithmeticError, ValueError) as exc:
            # e.g. a random slope on an uncentred covariate: lme4's (sd, cor) parametrisation
            # is then nearly singular along the profile; the fits stand, the intervals do not
            out.profile_failure = (
                f"profile-likelihood intervals could not be computed ({type(exc).__name__}: "
                f"{exc}); centring the covariates of random slopes usually helps"
            )
    if "joint-map" in ms:
        say(f"joint MAP, centered h-likelihood ({settings.n_starts} starts)")
        out.joint_map = jm_est.fit(
            data, out.eb_ml, n_starts=settings.n_starts, seed=settings.seed, n_jobs=settings.n_jobs
        )
        for par, with_priors in JOINT_VARIANTS:
            say(
                f"joint MAP, {par}, {'with priors' if with_priors else 'h-likelihood'} "
                f"({settings.n_starts} starts, all parameters)"
            )
            out.joint_variants[(par, with_priors)] = jv_est.fit(
                data,
                out.eb_ml,
                parametrization=par,
                priors=out.priors if with_priors else None,
                n_starts=settings.n_starts,
                seed=settings.seed,
            )
    if "mcmc" in ms:
        say(
            f"MCMC: NUTS, {settings.chains} chains x {settings.draws} draws "
            f"({settings.parametrization})"
        )
        out.mcmc = mcmc_est.fit(
            data,
            out.priors,
            McmcSettings(
                chains=settings.chains,
                draws=settings.draws,
                tune=settings.tune,
                target_accept=settings.target_accept,
                parametrization=settings.parametrization,
                seed=settings.seed,
            ),
            progressbar=sys.stderr.isatty(),
        )
    return out
