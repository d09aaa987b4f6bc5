"""Two-stage empirical Bayes for the general LMM: minimise lme4's profiled deviance (ML) or
REML criterion over theta, then read off beta, sigma^2, G and the conditional modes/variances.

Objective + optimiser, as lme4 does it: `deviance.solve` gives the objective at any theta,
scipy's bound-constrained L-BFGS-B (diagonal of T >= 0, finite-difference gradients; the
objective costs O(m q^3)) finds its minimum, and a fitted record is built at that theta.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import scipy.stats

from .design import Block, LMMData
from .deviance import PLS, Layout, solve

BOUNDARY_TOL = 1e-4  # lme4's isSingular() tolerance on the diagonal of T


@dataclass(frozen=True)
class VarianceComponents:
    """G = sigma^2 T T' by correlated block, with lme4's term names."""

    group: str
    variances: dict[str, float]
    correlations: dict[str, float]

    def to_dict(self) -> dict:
        return {"variances": dict(self.variances), "correlations": dict(self.correlations)}


def variance_components(G: np.ndarray, blocks: tuple[Block, ...], group: str
                        ) -> VarianceComponents:
    var, cor = {}, {}
    for b in blocks:
        for i, (ni, ci) in enumerate(zip(b.names, b.cols, strict=True)):
            var[ni] = float(G[ci, ci])
            for nj, cj in list(zip(b.names, b.cols, strict=True))[i + 1:]:
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
    n_evals: int
    converged: bool
    notes: list[str] = field(default_factory=list)

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
        return bool(np.any(np.abs(self.theta[Layout.of(self.data.blocks, self.data.q).diagonal])
                           < BOUNDARY_TOL))

    def fixed_effects(self, level: float = 0.95) -> dict[str, dict]:
        z = scipy.stats.norm.ppf(0.5 + level / 2)
        return {n: {"estimate": float(b), "se": float(s), "ci_wald": [float(b - z * s),
                                                                      float(b + z * s)]}
                for n, b, s in zip(self.data.fixed_names, self.beta, self.se, strict=True)}

    def random_effects(self) -> dict[str, dict]:
        sd = np.sqrt(np.diagonal(self.re_cov, axis1=1, axis2=2))
        names = self.data.re_names
        return {lab: {n: {"mode": float(self.re_mode[j, k]), "sd": float(sd[j, k])}
                      for k, n in enumerate(names)} for j, lab in enumerate(self.data.labels)}

    def to_dict(self) -> dict:
        out = {
            "method": self.method,
            "fixed_effects": self.fixed_effects(),
            "variance_components": {self.data.group_name: self.components.to_dict()},
            "sigma2": self.sigma2,
            "theta": [float(t) for t in self.theta],
            "loglik" if self.method == "ml" else "reml_criterion":
                self.loglik if self.method == "ml" else self.objective,
            "deviance" if self.method == "ml" else "restricted_loglik":
                self.objective if self.method == "ml" else self.loglik,
            "singular": self.singular,
            "converged": self.converged,
            "random_effects": self.random_effects(),
            "notes": list(self.notes),
        }
        return out


def _central(fun, x: np.ndarray, h: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient and Hessian (theta has a handful of elements)."""
    k = x.size
    E = np.eye(k) * h
    f0 = fun(x)
    fp = np.array([fun(x + e) for e in E])
    fm = np.array([fun(x - e) for e in E])
    H = np.empty((k, k))
    for i in range(k):
        H[i, i] = (fp[i] - 2 * f0 + fm[i]) / h**2
        for j in range(i):
            H[i, j] = H[j, i] = (fun(x + E[i] + E[j]) - fp[i] - fp[j] + f0
                                 - (f0 - fm[i] - fm[j] + fun(x - E[i] - E[j]))) / (2 * h**2)
    return (fp - fm) / (2 * h), H


def minimise(fun, layout: Layout, x0=None) -> tuple[np.ndarray, int, bool, str]:
    """L-BFGS-B over theta within lme4's bounds, then Newton steps on the coordinates off the
    bounds (the finite-difference gradient limits L-BFGS-B near the optimum). Converged means
    the Newton decrement g'H^-1 g on the free coordinates is below 1e-8 with H positive
    definite there. Returns (theta, evaluations, converged, message)."""
    x = layout.start() if x0 is None else np.asarray(x0, float)
    res = scipy.optimize.minimize(fun, x, method="L-BFGS-B", jac="3-point",
                                  bounds=layout.bounds(),
                                  options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 2000})
    x, nfev, message = res.x, int(res.nfev), str(res.message)
    lower = np.where(layout.diagonal, 0.0, -np.inf)
    decrement = np.inf
    for _ in range(4):
        free = x > lower + 1e-7
        if not free.any():
            decrement = 0.0
            break
        g, H = _central(fun, x)
        nfev += 1 + 2 * x.size + x.size * (x.size - 1)
        gf, Hf = g[free], H[np.ix_(free, free)]
        try:
            step = np.linalg.solve(Hf, gf)
            positive = bool(np.all(np.linalg.eigvalsh(Hf) > 0))
        except np.linalg.LinAlgError:
            break
        decrement = float(gf @ step) if positive else np.inf
        if not positive or decrement < 1e-8:
            break
        trial = x.copy()
        trial[free] = np.maximum(x[free] - step, lower[free])
        if fun(trial) >= fun(x):
            break
        x = trial
    return x, nfev, bool(res.success or decrement < 1e-8), message


def fit(data: LMMData, method: str = "ml", x0=None) -> LMMFit:
    """Fit by ML or REML from the cross products (no O(N) work after the first pass)."""
    cp = data.cross
    layout = Layout.of(data.blocks, data.q)
    theta, nfev, converged, message = minimise(
        lambda t: solve(cp, layout, t).objective(method), layout, x0)
    pls = solve(cp, layout, theta)
    s2 = pls.sigma2(method)
    G = s2 * pls.T @ pls.T.T
    out = LMMFit(method=method, data=data, pls=pls, sigma2=s2, G=G, beta=pls.beta,
                 beta_cov=pls.beta_cov(s2), objective=pls.objective(method),
                 n_evals=nfev, converged=converged)
    if not converged:
        out.notes.append(f"the optimiser stopped without converging ({message})")
    if out.singular:
        out.notes.append("boundary (singular) fit: a random-effect variance is 0 or a "
                         "correlation is +-1 (lme4's isSingular)")
    return out
