"""Two-stage empirical Bayes for the general LMM: minimise lme4's profiled deviance (ML) or
REML criterion over theta, then read off beta, sigma^2, G and the conditional modes/variances.

Objective + optimiser, as lme4 does it: `deviance.solve` gives the objective at any theta,
`optimiser.minimise` (BOBYQA within lme4's bounds, diagonal of T >= 0, with its end point
checked and restarted from the edge; the objective costs O(m q^2 p)) finds its minimum over the
theta of the centred/scaled random-effect blocks (same model, well scaled), and a fitted
record is built at the corresponding lme4 theta.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.stats

from workbench.fit.optimiser import Optimum, minimise, serial_blas
from workbench.model.design import Block, LMMData
from workbench.objectives.deviance import PLS, Layout, gradient, solve, to_internal, to_user

BOUNDARY_TOL = 1e-4  # lme4's isSingular() tolerance on the diagonal of T


@dataclass(frozen=True)
class VarianceComponents:
    """G = sigma^2 T T' by correlated block, with lme4's term names."""

    group: str
    variances: dict[str, float]
    correlations: dict[str, float]

    def to_dict(self) -> dict:
        return {"variances": dict(self.variances), "correlations": dict(self.correlations)}


def variance_components(G: np.ndarray, blocks: tuple[Block, ...], group: str) -> VarianceComponents:
    var, cor = {}, {}
    for b in blocks:
        for i, (ni, ci) in enumerate(zip(b.names, b.cols, strict=True)):
            var[ni] = float(G[ci, ci])
            for nj, cj in list(zip(b.names, b.cols, strict=True))[i + 1 :]:
                den = np.sqrt(G[ci, ci] * G[cj, cj])
                cor[f"{ni}:{nj}"] = float(G[ci, cj] / den) if den > 0 else float("nan")
    return VarianceComponents(group=group, variances=var, correlations=cor)


@dataclass
class LMMFit:
    method: str  # "ml" or "reml"
    data: LMMData = field(repr=False)
    pls: PLS = field(repr=False)
    sigma2: float
    G: np.ndarray
    beta: np.ndarray
    beta_cov: np.ndarray
    objective: float  # deviance (ML) or REML criterion
    optimum: Optimum = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.optimum.converged

    @property
    def n_evals(self) -> int:
        return self.optimum.n_evals

    @property
    def theta(self) -> np.ndarray:
        return self.pls.theta

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.beta_cov))

    @property
    def loglik(self) -> float:
        """log likelihood (ML) or the restricted log likelihood (REML), as lme4's logLik."""
        return -0.5 * self.objective

    @property
    def components(self) -> VarianceComponents:
        return variance_components(self.G, self.data.blocks, self.data.group_name)

    @property
    def re_mode(self) -> np.ndarray:
        return self.pls.b

    @property
    def re_cov(self) -> np.ndarray:
        return self.pls.cond_cov(self.sigma2)

    @property
    def singular(self) -> bool:
        return bool(
            np.any(
                np.abs(self.theta[Layout.of(self.data.blocks, self.data.q).diagonal]) < BOUNDARY_TOL
            )
        )

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
        sd = np.sqrt(np.diagonal(self.re_cov, axis1=1, axis2=2))
        names = self.data.re_names
        return {
            lab: {
                n: {"mode": float(self.re_mode[j, k]), "sd": float(sd[j, k])}
                for k, n in enumerate(names)
            }
            for j, lab in enumerate(self.data.labels)
        }

    def to_dict(self) -> dict:
        out = {
            "method": self.method,
            "fixed_effects": self.fixed_effects(),
            "variance_components": {self.data.group_name: self.components.to_dict()},
            "sigma2": self.sigma2,
            "theta": [float(t) for t in self.theta],
            "loglik" if self.method == "ml" else "reml_criterion": self.loglik
            if self.method == "ml"
            else self.objective,
            "deviance" if self.method == "ml" else "restricted_loglik": self.objective
            if self.method == "ml"
            else self.loglik,
            "singular": self.singular,
            "converged": self.converged,
            "convergence": self.optimum.to_dict(),
            "random_effects": self.random_effects(),
            "notes": list(self.notes),
        }
        return out


def fit(data: LMMData, method: str = "ml", x0=None) -> LMMFit:
    """Fit by ML or REML from the group factors (no O(N) work after the first pass)."""
    with serial_blas():
        return _fit(data, method, x0)


def _fit(data: LMMData, method: str, x0) -> LMMFit:
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
    G = s2 * pls.T @ pls.T.T
    out = LMMFit(
        method=method,
        data=data,
        pls=pls,
        sigma2=s2,
        G=G,
        beta=pls.beta,
        beta_cov=pls.beta_cov(s2),
        objective=pls.objective(method),
        optimum=opt,
    )
    if not opt.converged:
        out.notes.append(
            f"the optimiser did not confirm a minimum ({opt.message}); the estimates may be off"
        )
    if out.singular:
        out.notes.append(
            "boundary (singular) fit: a random-effect variance is 0 or a "
            "correlation is +-1 (lme4's isSingular)"
        )
    return out
