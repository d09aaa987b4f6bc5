"""Joint MAP: ONE multi-start estimator for every model and all four variants
{centered, non-centered} x {h-likelihood, with priors}, with ONE start type, ONE classifier and
ONE result record.

`fit(data, eb, parametrization=, priors=, n_starts=, seed=, n_jobs=)` maximises the log joint
density of (y, random effects) given the parameters (without priors: the h-likelihood; with
priors: PyMC's density on its value variables without Jacobians) from K starts and classifies
every end point. Three kernels do the maximisation, chosen by the design:

* one-way data (`data.is_oneway`): `joint_oneway`, closed forms over the per-group sufficient
  statistics (`data.oneway`), in x = (mu, log sigma, log tau, u), O(m) per evaluation;
* other models, centered h-likelihood: `joint_profiled`, the log joint maximised in closed form
  over beta, b and sigma^2 at each theta (lme4's PLS: per group for one grouping factor, the
  blocked factor of `objectives.blocked` with its exact gradient for several), a small
  optimisation over theta;
* other models, the other variants: `joint_general`, the log joint of `objectives.log_joint`
  in all parameters,

    x = (beta, log sigma, per block k the packed lower Cholesky factor L_k of G_k (row by row,
         its diagonal on the log scale: PyMC's CholeskyCovPacked value), U)

  with U the random effects b (centered) or z (non-centered, b_kj = L_k z_kj): (m, q) group by
  group for one grouping factor, lme4's vector b for several. The density on L_k includes the
  LKJ/HalfNormal priors with the change of variables from (sd, correlations) to L_k that PyMC's
  LKJCholeskyCov carries. Per start: L-BFGS-B with the exact gradient (log sigma and the
  log-diagonal of every L_k boxed to log sd(y) +- BOX), then Newton steps with the Hessian:
  block-arrowhead for one factor; for several, its random-effect block Z'Z / sigma^2 + G^-1
  (exact, sparse, not block diagonal) eliminated by a sparse factor (SuperLU, symmetric
  ordering), the global block by differences of the exact gradient.

Every kernel returns its end points as `Start` records on the user's scale (beta, sigma^2, G,
random-effect modes b; per grouping factor with several: `JointMap.modes`), and `classify`
decides each status from what the kernel saw: interior (Newton decrement < 1e-8 and Hessian
negative definite), collapse (a variance runs to 0 with the log joint still rising: the funnel),
boundary (the same, levelling off), escape (a variance runs to infinity, e.g. the non-centered
h-likelihood, whose supremum is the no-pooling fit), not_converged. The headline is the best
interior local maximum; with none, the result says so and reports no point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from workbench.fit import eb_blocked
from workbench.fit.eb import (
    EBFit,
    VarianceComponents,
    components_by_factor,
    ranef_by_factor,
    variance_components,
)
from workbench.fit.joint_general import (
    exact_point,
    intervals,
    make_starts,
    run_start,
)
from workbench.fit.joint_start import (
    FIND_MAP_NOTE,
    PARAMETRIZATIONS,
    SCALE_NOTE,
    SE_NOTE,
    Start,
    message,
    run_all,
    tally,
)
from workbench.model.design import LMMData
from workbench.model.priors import Priors
from workbench.objectives import blocked
from workbench.objectives.deviance import PLS, Layout, solve
from workbench.objectives.log_joint import context

# ----------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class JointMap:
    """The multi-start joint MAP of one variant, for any model. `ci_hessian` holds the Wald
    intervals at the interior mode (one-way: mu, sigma2, tau2, se, random_effects with group
    means; otherwise fixed_effects, sigma2, variance_components, se); `loglik` the marginal log
    likelihood at the mode."""

    data: LMMData = field(repr=False)
    objective: str  # "h_likelihood" or "posterior"
    parametrization: str
    starts: tuple[Start, ...]
    best: Start | None
    status: str  # interior or no_interior_mode
    message: str
    ci_hessian: dict | None = None
    ci_level: float = 0.95
    loglik: float | None = None

    def brief(self) -> str:
        """One line: the variances and the log joint at the mode, or how the starts ended."""
        from workbench.fit import brief

        if self.best is None:
            ends = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
            return f"no interior mode ({len(self.starts)} starts: {ends})"
        return f"{brief.fit_variances(self)} log joint={brief.loglik(self.log_joint)}"

    def __repr__(self) -> str:
        kind = "with priors" if self.with_priors else "h-likelihood"
        return f"JointMap({self.parametrization}, {kind}: {self.brief()})"

    @property
    def with_priors(self) -> bool:
        return self.objective == "posterior"

    @property
    def oneway(self) -> bool:
        return self.data.is_oneway

    @property
    def beta(self) -> np.ndarray | None:
        return self.best.beta.copy() if self.best else None

    @property
    def sigma2(self) -> float | None:
        return self.best.sigma2 if self.best else None

    @property
    def G(self) -> np.ndarray | None:
        return self.best.G.copy() if self.best else None

    @property
    def re_mode(self) -> np.ndarray | None:
        """(m, q) random effects b at the mode, for ONE grouping factor (`modes` in general)."""
        self.data.single  # noqa: B018 (raises with several factors)
        return self.best.re_mode if self.best else None

    @property
    def modes(self) -> tuple[np.ndarray, ...] | None:
        """Per grouping factor k, the random effects b at the mode, (n_k, q_k), columns
        `data.factor_cols(k)` (None without an interior mode)."""
        if self.best is None:
            return None
        b = self.best.re_mode
        return tuple(b) if self.data.n_factors > 1 else (b,)

    @cached_property
    def mode_covs(self) -> tuple[np.ndarray, ...] | None:
        """Per grouping factor, (n_k, q_k, q_k): the diagonal blocks by level of the inverse
        negative Hessian of the log joint in b at the mode with the parameters fixed,
        (Z'Z / sigma^2 + G^-1)^-1 = sigma^2 Lambda (Lambda'Z'Z Lambda + I)^-1 Lambda' (as
        lme4's condVar: zero between different blocks of a factor); None without a mode."""
        if self.best is None:
            return None
        if self.data.n_factors == 1:
            return (self.re_cov,)
        return eb_blocked.conditional_covariances(self.data, self.best.theta, self.sigma2)

    @property
    def theta(self) -> np.ndarray | None:
        return self.best.theta.copy() if self.best else None

    @property
    def log_joint(self) -> float | None:
        return self.best.log_joint if self.best else None

    @property
    def components(self) -> VarianceComponents | None:
        """The single grouping factor's variance components (`components_by_factor`)."""
        d = self.data
        return variance_components(self.G, d.blocks, d.group_name) if self.best else None

    @property
    def components_by_factor(self) -> dict[str, VarianceComponents] | None:
        return components_by_factor(self.G, self.data) if self.best else None

    def random_effects(self) -> dict[str, dict] | None:
        """{factor: {label: {term: {mode, sd}}}} (sd from `mode_covs`), like EBFit's for
        several factors; None without an interior mode."""
        if self.best is None:
            return None
        return ranef_by_factor(self.data, self.modes, self.mode_covs)

    @cached_property
    def pls(self) -> PLS | None:
        """lme4's penalised least squares at the mode's theta (for the general explanation;
        one grouping factor)."""
        if self.best is None:
            return None
        d = self.data
        d.single  # noqa: B018
        return solve(d.factors, Layout.of(d.blocks, d.q), self.best.theta)

    @property
    def re_cov(self) -> np.ndarray | None:
        """Inverse negative Hessian of the log joint in b_j at the mode (parameters fixed)."""
        return self.pls.cond_cov(self.sigma2) if self.best else None

    # the one-way model's names
    @property
    def mu(self) -> float | None:
        return float(self.best.beta[0]) if self.best else None

    @property
    def tau2(self) -> float | None:
        return float(self.best.G[0, 0]) if self.best else None

    @property
    def group_effects(self) -> np.ndarray | None:
        return self.best.re_mode[:, 0].copy() if self.best else None

    @property
    def intervals(self) -> dict:
        """Alias of `ci_hessian` ({} without an interior mode)."""
        return self.ci_hessian or {}

    @property
    def level(self) -> float:
        return self.ci_level

    def counts(self) -> dict[str, int]:
        return tally(self.starts)

    def _estimates(self) -> dict:
        d, ci = self.data, self.ci_hessian or {}
        if self.oneway:
            se = [ci.get("se", {}).get("mu")]
        else:
            se = [ci.get("fixed_effects", {}).get(n, {}).get("se") for n in d.fixed_names]
        return {
            "fixed_effects": {
                n: {"estimate": float(b), "se": s}
                for n, b, s in zip(d.fixed_names, self.best.beta, se, strict=True)
            },
            "variance_components": {k: v.to_dict() for k, v in self.components_by_factor.items()},
            "sigma2": self.sigma2,
        }

    def short_dict(self) -> dict:
        """The `joint_map_all` entry: status, log_joint, start_counts, message, the estimates at
        an interior mode, and for one-way data mu, sigma2, tau2 (null without one)."""
        out = {
            "status": self.status,
            "log_joint": self.log_joint,
            "start_counts": self.counts(),
            "message": self.message,
        }
        if self.best is not None:
            out.update(self._estimates())
        if self.oneway:
            out.update(mu=self.mu, sigma2=self.sigma2, tau2=self.tau2)
        return out

    def to_dict(self) -> dict:
        if self.oneway:
            from workbench.fit.joint_oneway import SCALE_NOTE as ONEWAY_SCALE

            scale = ONEWAY_SCALE.format(
                effects="a_j" if self.parametrization == "centered" else "z_j",
                prior_part=" times the priors of mu, sigma and tau" if self.with_priors else "",
            )
        else:
            scale = SCALE_NOTE
        out = {
            "objective": "log joint with priors (PyMC's density without Jacobian)"
            if self.with_priors
            else "log joint without priors (h-likelihood)",
            "parametrization": self.parametrization,
            "scale": scale,
            **self.short_dict(),
            "starts": [s.to_dict(self.oneway) for s in self.starts],
        }
        if self.with_priors:
            out["find_map"] = FIND_MAP_NOTE
        if self.best is not None:
            out["theta"] = [float(t) for t in self.best.theta]
            out["loglik"] = self.loglik
            out["se_note"] = SE_NOTE
            if self.data.n_factors > 1:
                out["random_effects"] = self.random_effects()
        if self.ci_hessian:
            out["ci_level"] = self.ci_level
            out["ci_hessian"] = self.ci_hessian
        return out


# ----------------------------------------------------------------------------------------------
# The estimator


def fit(
    data: LMMData,
    eb: EBFit,
    *,
    parametrization: str = "centered",
    priors: Priors | None = None,
    n_starts: int = 16,
    seed: np.random.SeedSequence | int = 0,
    n_jobs: int = 1,
    level: float = 0.95,
    _kernel: str | None = None,
) -> JointMap:
    """Multi-start joint MAP of one variant: the log joint with `priors` (objective
    "posterior") or without (the h-likelihood), in the centered or non-centered
    parametrization. The random starts draw from `np.random.default_rng(seed)` (the caller
    passes `seeds.seed_for(root, "joint_map", parametrization, "posterior"|"h_likelihood")`);
    starts run in `n_jobs` processes when the work is large, with the same results.
    `_kernel` ("oneway", "profiled", "general") forces a kernel (tests)."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}")
    kernel = _kernel or (
        "oneway"
        if data.is_oneway
        else "profiled"
        if parametrization == "centered" and priors is None
        else "general"
    )
    runner = {"oneway": _fit_oneway, "profiled": _fit_profiled, "general": _fit_general}[kernel]
    starts, ci, loglik = runner(data, eb, parametrization, priors, n_starts, seed, n_jobs, level)
    interior = [s for s in starts if s.status == "interior"]
    best = max(interior, key=lambda s: s.log_joint) if interior else None
    return JointMap(
        data=data,
        objective="posterior" if priors is not None else "h_likelihood",
        parametrization=parametrization,
        starts=tuple(starts),
        best=best,
        status="interior" if best else "no_interior_mode",
        message=message(
            starts,
            best,
            parametrization=parametrization,
            with_priors=priors is not None,
            oneway=data.is_oneway,
        ),
        ci_hessian=ci(best) if best else None,
        ci_level=level,
        loglik=loglik(best) if best else None,
    )


def _fit_oneway(data, eb, par, priors, n_starts, seed, n_jobs, level):
    """The one-way kernel over the per-group statistics (O(m) per evaluation)."""
    from workbench.fit import joint_oneway as kernel
    from workbench.objectives import oneway as dens

    st, sd_y = data.oneway, float(data.y.std(ddof=1))
    eb_point = (float(eb.beta[0]), float(eb.sigma2), float(eb.G[0, 0]))
    log_sd = float(np.log(sd_y))
    jobs = [
        (i, kind, x0, st, par, priors, log_sd)
        for i, (kind, x0) in enumerate(kernel.make_starts(st, par, eb_point, n_starts, seed, sd_y))
    ]
    starts = run_all(kernel.run_start, jobs, n_jobs, n_starts * st.m)

    def ci(best):
        return kernel.intervals(best.x, st, par, priors, data.labels, level)

    def loglik(best):
        return dens.marginal_loglik((best.beta[0], best.sigma2, best.G[0, 0]), st)

    return starts, ci, loglik


def _general_loglik(data: LMMData):
    """The marginal log likelihood at (beta, sigma^2, theta) of a mode: lme4's at beta_hat(theta)
    minus the quadratic form of beta - beta_hat in X'V^-1 X / sigma^2."""

    def loglik(best: Start) -> float:
        if data.n_factors > 1:
            sol = blocked.solve(eb_blocked.terms(data), best.theta)
            d = best.beta - sol.beta
            quad = float(d @ np.linalg.solve(sol.beta_cov_unscaled, d)) / best.sigma2
            at = eb_blocked.marginal_loglik(data, best.theta, best.sigma2)
            return float(at - 0.5 * quad)
        pls = solve(data.factors, Layout.of(data.blocks, data.q), best.theta)
        d = best.beta - pls.beta
        quad = float(d @ np.linalg.solve(pls.beta_cov(best.sigma2), d))
        return float(pls.loglik(best.sigma2) - 0.5 * quad)

    return loglik


def _fit_profiled(data, eb, par, priors, n_starts, seed, n_jobs, level):
    """The centered h-likelihood profiled over beta, b and sigma^2 (a search over theta); the
    intervals from the all-parameter Hessian at the mode."""
    from workbench.fit import joint_profiled as kernel

    jobs = [
        (i, kind, phi, data)
        for i, (kind, phi) in enumerate(kernel.make_starts(data, eb, n_starts, seed))
    ]
    ctx = context(data)
    starts = run_all(kernel.run_start, jobs, n_jobs, n_starts * ctx.n_levels)

    def ci(best):
        return intervals(exact_point(ctx, "centered", best), ctx, "centered", None, level)

    return starts, ci, _general_loglik(data)


def _fit_general(data, eb, par, priors, n_starts, seed, n_jobs, level):
    """The all-parameter kernel of this module."""
    ctx = context(data)
    log_sd = float(np.log(data.y.std(ddof=1)))
    jobs = [
        (i, kind, x0, ctx, par, priors, log_sd)
        for i, (kind, x0) in enumerate(make_starts(ctx, par, eb, n_starts, seed))
    ]
    starts = run_all(run_start, jobs, n_jobs, n_starts * ctx.n_levels)

    def ci(best):
        return intervals(best.x, ctx, par, priors, level)

    return starts, ci, _general_loglik(data)
