"""Two-stage empirical Bayes for every model: minimise lme4's profiled deviance (ML) or REML
criterion over theta, then read off beta, sigma^2, G and the conditional modes/variances.

Two kernels, one record (`EBFit`):
* the one-way model `y ~ 1 + (1 | g)` (`data.is_oneway`): `eb_oneway.fit_stats`, a checked 1-D
  search over gamma = theta^2 from the per-group sufficient statistics (O(m), no group
  factors), with every field in closed form: beta = [mu], G = [[tau^2]], theta = [tau / sigma],
  the conditional modes and variances sigma^2 tau^2 / (sigma^2 + n_j tau^2) (lme4's ranef with
  condVar, given beta), vcov 1 / sum n_j / (sigma^2 + n_j tau^2), and the observed-information
  standard errors of the variances (`variance_se`);
* every other model: `deviance.solve` gives the objective at any theta and `optimiser.minimise`
  (exact-gradient L-BFGS-B, BOBYQA restarts, lme4's bounds, the end point checked) finds its
  minimum over the theta of the centred/scaled random-effect blocks (same model, well scaled).
`_fit_general` runs the general kernel on any model (the tests compare the two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.stats

from workbench.fit import eb_blocked, eb_oneway
from workbench.fit.optimiser import Optimum, minimise, serial_blas
from workbench.model.design import Block, LMMData
from workbench.objectives.deviance import PLS, Layout, gradient, solve, to_internal, to_user

BOUNDARY_TOL = 1e-4  # lme4's isSingular() tolerance on the diagonal of T
METHODS = ("ml", "reml")


@dataclass(frozen=True)
class VarianceComponents:
    """G = sigma^2 T T' by correlated block, with lme4's term names."""

    group: str
    variances: dict[str, float]
    correlations: dict[str, float]

    def to_dict(self) -> dict:
        return {"variances": dict(self.variances), "correlations": dict(self.correlations)}


def components_by_factor(G: np.ndarray, data: LMMData) -> dict[str, VarianceComponents]:
    """G's variances and correlations for every grouping factor, keyed by lme4's name."""
    return {
        g.name: variance_components(G, tuple(b for b in data.blocks if b.factor == k), g.name)
        for k, g in enumerate(data.groupings)
    }


def ranef_by_factor(data: LMMData, modes, mode_covs) -> dict[str, dict]:
    """{factor: {label: {term: {mode, sd}}}} from per-factor modes (n_k, q_k) and their
    covariances (n_k, q_k, q_k): the JSON of every fit's random effects."""
    out = {}
    for k, g in enumerate(data.groupings):
        sd = np.sqrt(np.diagonal(mode_covs[k], axis1=1, axis2=2))
        names = data.factor_terms(k)
        out[g.name] = {
            lab: {
                n: {"mode": float(modes[k][j, i]), "sd": float(sd[j, i])}
                for i, n in enumerate(names)
            }
            for j, lab in enumerate(g.labels)
        }
    return out


def variance_components(G: np.ndarray, blocks: tuple[Block, ...], group: str) -> VarianceComponents:
    """G's variances and correlations over `blocks` (one grouping factor's)."""
    var, cor = {}, {}
    for b in blocks:
        for i, (ni, ci) in enumerate(zip(b.names, b.cols, strict=True)):
            var[ni] = float(G[ci, ci])
            for nj, cj in list(zip(b.names, b.cols, strict=True))[i + 1 :]:
                den = np.sqrt(G[ci, ci] * G[cj, cj])
                cor[f"{ni}:{nj}"] = float(G[ci, cj] / den) if den > 0 else float("nan")
    return VarianceComponents(group=group, variances=var, correlations=cor)


@dataclass(frozen=True)
class EBFit:
    """An ML or REML fit of any model (`fit`), on the user's scale.

    `modes[k]` (n_k, q_k) and `mode_covs[k]` (n_k, q_k, q_k) are lme4's conditional modes and
    covariances (ranef(condVar = TRUE)) of grouping factor k, columns `data.factor_cols(k)`
    (`re_mode` / `re_cov`: the single factor's); `objective` is lme4's deviance (ML) or REML
    criterion.
    One-way only: `variance_se` / `variance_se_observed` ({mu, sigma2, tau2}: lme4's SE of mu
    and the observed-information SEs of the variances / all from the inverse observed
    information, whose matrix on (mu, sigma^2, tau^2) is `variance_cov`)."""

    method: str  # "ml" or "reml"
    data: LMMData = field(repr=False)
    beta: np.ndarray
    beta_cov: np.ndarray
    sigma2: float
    G: np.ndarray
    theta: np.ndarray  # lme4's theta
    objective: float  # deviance (ML) or REML criterion
    modes: tuple[np.ndarray, ...] = field(repr=False)
    mode_covs: tuple[np.ndarray, ...] = field(repr=False)
    optimum: Optimum = field(repr=False)
    notes: tuple[str, ...] = ()
    variance_se: dict[str, float | None] | None = None
    variance_se_observed: dict[str, float | None] | None = None
    variance_cov: np.ndarray | None = field(default=None, repr=False)

    def brief(self) -> str:
        """One line: the variances and the (restricted) log likelihood; never arrays."""
        from workbench.fit import brief

        what = "loglik" if self.method == "ml" else "REML loglik"
        flag = " (singular)" if self.singular else ""
        return f"{brief.fit_variances(self)} {what}={brief.loglik(self.loglik)}{flag}"

    def __repr__(self) -> str:
        return f"EBFit({self.method.upper()}: {self.brief()})"

    @property
    def re_mode(self) -> np.ndarray:
        """(m, q) conditional modes of the single grouping factor."""
        self.data.single  # noqa: B018 (raises with several factors)
        return self.modes[0]

    @property
    def re_cov(self) -> np.ndarray:
        self.data.single  # noqa: B018
        return self.mode_covs[0]

    @cached_property
    def pls(self) -> PLS:
        """The penalised least-squares solution at theta (general code that needs it; for a
        one-way fit this costs the O(N) group factors once)."""
        d = self.data
        return solve(d.factors, Layout.of(d.blocks, d.q), self.theta)

    @property
    def converged(self) -> bool:
        return self.optimum.converged

    @property
    def n_evals(self) -> int:
        return self.optimum.n_evals

    @property
    def se(self) -> np.ndarray:
        """Standard errors of beta (lme4's)."""
        return np.sqrt(np.diag(self.beta_cov))

    @property
    def loglik(self) -> float:
        """log likelihood (ML) or the restricted log likelihood (REML), as lme4's logLik."""
        return -0.5 * self.objective

    @property
    def marginal_loglik(self) -> float:
        """The marginal (ML) log likelihood at these estimates (for REML: at the REML ones)."""
        if self.method == "ml":
            return self.loglik
        if self.data.is_oneway:
            return eb_oneway.marginal_loglik(self.data.oneway, self.mu, self.sigma2, self.tau2)
        if self.data.n_factors > 1:
            return eb_blocked.marginal_loglik(self.data, self.theta, self.sigma2)
        return self.pls.loglik(self.sigma2)

    @property
    def components(self) -> VarianceComponents:
        """The single grouping factor's variance components."""
        return variance_components(self.G, self.data.blocks, self.data.group_name)

    @property
    def components_by_factor(self) -> dict[str, VarianceComponents]:
        return components_by_factor(self.G, self.data)

    @property
    def _diagonal(self) -> np.ndarray:
        return np.asarray(self.theta)[Layout.of(self.data.blocks, self.data.q).diagonal]

    @property
    def singular(self) -> bool:
        """lme4's isSingular: a diagonal element of T below 1e-4."""
        return bool(np.any(np.abs(self._diagonal) < BOUNDARY_TOL))

    @property
    def boundary(self) -> bool:
        """A diagonal element of T exactly 0 (one-way: tau^2 = 0)."""
        return bool(np.any(self._diagonal == 0.0))

    # one-way aliases ------------------------------------------------------------------------

    def _oneway(self, name: str) -> None:
        if not self.data.is_oneway:
            raise AttributeError(f"{name} is defined for the one-way model y ~ 1 + (1 | g) only")

    @property
    def mu(self) -> float:
        self._oneway("mu")
        return float(self.beta[0])

    @property
    def tau2(self) -> float:
        self._oneway("tau2")
        return float(self.G[0, 0])

    @property
    def sigma(self) -> float:
        return math.sqrt(self.sigma2)

    @property
    def tau(self) -> float:
        return math.sqrt(self.tau2)

    @property
    def group_means(self) -> np.ndarray:
        """mu + a_j (one-way)."""
        return self.mu + self.re_mode[:, 0]

    # ----------------------------------------------------------------------------------------

    def fixed_effects(self, level: float = 0.95) -> dict[str, dict]:
        z = scipy.stats.norm.ppf(0.5 + level / 2)
        return {
            n: {
                "estimate": float(b),
                "se": float(s),
                "ci_wald": [float(b - z * s), float(b + z * s)],
            }
            for n, b, s in zip(self.data.fixed_names, self.beta, self.se, strict=True)
        }

    def random_effects(self) -> dict[str, dict]:
        """{label: {term: {mode, sd}}} for one grouping factor; {factor: {label: ...}} for
        several (lme4's ranef, one table per factor)."""
        out = ranef_by_factor(self.data, self.modes, self.mode_covs)
        return out if self.data.n_factors > 1 else out[self.data.group_name]

    def to_dict(self) -> dict:
        ml = self.method == "ml"
        out = {
            "method": self.method,
            "fixed_effects": self.fixed_effects(),
            "variance_components": {k: v.to_dict() for k, v in self.components_by_factor.items()},
            "sigma2": self.sigma2,
            "theta": [float(t) for t in self.theta],
            "loglik" if ml else "reml_criterion": self.loglik if ml else self.objective,
            "deviance" if ml else "restricted_loglik": self.objective if ml else self.loglik,
            "singular": self.singular,
            "converged": self.converged,
            "convergence": self.optimum.to_dict(),
            "random_effects": self.random_effects(),
            "notes": list(self.notes),
        }
        if self.data.is_oneway:
            out.update(
                {
                    "mu": self.mu,
                    "tau2": self.tau2,
                    "sigma": self.sigma,
                    "tau": self.tau,
                    "se": dict(self.variance_se or {}),
                    "se_observed_information": dict(self.variance_se_observed or {}),
                    "boundary": self.boundary,
                    "group_means": {
                        lab: float(v)
                        for lab, v in zip(self.data.labels, self.group_means, strict=True)
                    },
                }
            )
            if not ml:
                out["loglik_at_reml"] = self.marginal_loglik
        return out


LMMFit = EBFit  # old name, until every caller says EBFit


def fit(data: LMMData, method: str = "ml", x0=None) -> EBFit:
    """Fit by ML or REML: the one-way kernel when `data.is_oneway` (`x0` is then not needed:
    its 1-D search is global), the blocked kernel (`eb_blocked`) with several grouping factors,
    else the general one from the group factors (`x0`: a start in lme4's theta)."""
    if method not in METHODS:
        raise ValueError("method must be 'ml' or 'reml'")
    if data.is_oneway:
        return _fit_oneway(data, method)
    if data.n_factors > 1:
        return _fit_blocked(data, method, x0)
    return _fit_general(data, method, x0)


def _fit_blocked(data: LMMData, method: str, x0=None) -> EBFit:
    k = eb_blocked.fit(data, method, x0)
    return EBFit(
        method=method,
        data=data,
        beta=k.beta,
        beta_cov=k.beta_cov,
        sigma2=k.sigma2,
        G=k.G,
        theta=k.theta,
        objective=k.objective,
        modes=k.modes,
        mode_covs=k.mode_covs,
        optimum=k.optimum,
        notes=k.notes,
    )


def _fit_oneway(data: LMMData, method: str) -> EBFit:
    k = eb_oneway.fit_stats(data.oneway, method)
    return EBFit(
        method=method,
        data=data,
        beta=np.array([k.mu]),
        beta_cov=np.array([[k.beta_var]]),
        sigma2=k.sigma2,
        G=np.array([[k.tau2]]),
        theta=np.array([math.sqrt(k.gamma)]),
        objective=k.objective,
        modes=(k.re_mode[:, None],),
        mode_covs=(k.re_var[:, None, None],),
        optimum=k.optimum,
        notes=k.notes,
        variance_se=k.se,
        variance_se_observed=k.se_observed,
        variance_cov=k.cov,
    )


def _fit_general(data: LMMData, method: str, x0=None) -> EBFit:
    """The general kernel on any model (also the one-way one: the tests compare them)."""
    with serial_blas():
        gf = data.factors
        layout = Layout.of(data.blocks, data.q)
        opt = minimise(
            lambda t: solve(gf, layout, t, internal=True).objective(method),
            layout.starts() if x0 is None else to_internal(gf, layout, x0),
            np.where(layout.diagonal, 0.0, -np.inf),
            mirror=layout.mirror,
            grad=lambda t: gradient(gf, layout, t, method),
        )
        pls = solve(gf, layout, to_user(gf, layout, opt.x))
        s2 = pls.sigma2(method)
        notes = []
        if not opt.converged:
            notes.append(
                f"the optimiser did not confirm a minimum ({opt.message}); the estimates may be off"
            )
        if np.any(np.abs(pls.theta[layout.diagonal]) < BOUNDARY_TOL):
            notes.append(
                "boundary (singular) fit: a random-effect variance is 0 or a "
                "correlation is +-1 (lme4's isSingular)"
            )
        out = EBFit(
            method=method,
            data=data,
            beta=pls.beta,
            beta_cov=pls.beta_cov(s2),
            sigma2=s2,
            G=s2 * pls.T @ pls.T.T,
            theta=pls.theta,
            objective=pls.objective(method),
            modes=(pls.b,),
            mode_covs=(pls.cond_cov(s2),),
            optimum=opt,
            notes=tuple(notes),
        )
    out.__dict__["pls"] = pls  # the cached property, already computed
    return out
