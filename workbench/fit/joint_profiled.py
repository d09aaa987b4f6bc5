"""Joint MAP of the general LMM (h-likelihood: no priors, centered random effects b), from K
starts, each end point classified as in the one-way estimator.

Objective: `deviance.PLS.objective("joint")`, minus twice the log joint of (y, b) maximised in
closed form over beta, b and sigma^2 at each theta, so one start is a small optimisation over
phi = (log of T's diagonal, T's off-diagonal elements). A local maximum of this profile is a
local maximum of the log joint in all parameters (the inner maximisers are unique).
Statuses: interior (Newton decrement < 1e-8, Hessian positive definite), collapse (a diagonal
element of T runs to 0 with the log joint still rising: a variance -> 0, the funnel),
boundary (the same with the log joint levelling off), not_converged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.optimize

from workbench.fit.eb import LMMFit, variance_components
from workbench.fit.joint_oneway import _tally
from workbench.fit.optimiser import derivatives, serial_blas
from workbench.model.design import LMMData
from workbench.objectives.deviance import PLS, Layout, solve

LOG_FLOOR = np.log(1e-9)  # a diagonal element of T below 1e-9 x sigma has collapsed
LOG_CEIL = np.log(1e4)
DECREMENT_TOL = 1e-8


@dataclass(frozen=True)
class Start:
    index: int
    kind: str  # eb or random
    status: str
    log_joint: float
    theta: np.ndarray
    iterations: int

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "start": self.kind,
            "status": self.status,
            "log_joint": self.log_joint,
            "theta": [float(t) for t in self.theta],
            "iterations": self.iterations,
        }


@dataclass
class LMMJointMap:
    data: LMMData = field(repr=False)
    status: str  # interior or no_interior_mode
    best: Start | None
    starts: tuple[Start, ...]
    message: str
    pls: PLS | None = field(default=None, repr=False)

    @property
    def sigma2(self) -> float | None:
        return self.pls.sigma2("joint") if self.pls else None

    @property
    def G(self) -> np.ndarray | None:
        return self.sigma2 * self.pls.T @ self.pls.T.T if self.pls else None

    @property
    def beta(self) -> np.ndarray | None:
        return self.pls.beta if self.pls else None

    @property
    def log_joint(self) -> float | None:
        return self.best.log_joint if self.best else None

    @property
    def re_mode(self) -> np.ndarray | None:
        return self.pls.b if self.pls else None

    @property
    def re_cov(self) -> np.ndarray | None:
        """Inverse negative Hessian of the log joint in b_j, at the mode (variances fixed)."""
        return self.pls.cond_cov(self.sigma2) if self.pls else None

    def counts(self) -> dict[str, int]:
        return _tally(self.starts)

    def to_dict(self) -> dict:
        out = {
            "objective": "log joint without priors (h-likelihood), centered random effects",
            "status": self.status,
            "message": self.message,
            "start_counts": self.counts(),
            "starts": [s.to_dict() for s in self.starts],
        }
        if self.pls is not None:
            se = np.sqrt(np.diag(self.pls.beta_cov(self.sigma2)))
            out.update(
                {
                    "fixed_effects": {
                        n: {"estimate": float(b), "se": float(s)}
                        for n, b, s in zip(self.data.fixed_names, self.beta, se, strict=True)
                    },
                    "variance_components": {
                        self.data.group_name: variance_components(
                            self.G, self.data.blocks, self.data.group_name
                        ).to_dict()
                    },
                    "sigma2": self.sigma2,
                    "theta": [float(t) for t in self.pls.theta],
                    "log_joint": self.log_joint,
                    "loglik": self.pls.loglik(self.sigma2),
                    "se_note": "Wald SEs from the Hessian in (beta, b) at the mode, variance "
                    "components held at their joint-mode values",
                }
            )
        return out


def _theta(phi: np.ndarray, diag: np.ndarray) -> np.ndarray:
    out = phi.copy()
    out[diag] = np.exp(phi[diag])
    return out


def run_start(index: int, kind: str, phi0: np.ndarray, data: LMMData) -> Start:
    """One start: L-BFGS-B on phi inside a wide box, Newton polish, then classification."""
    with serial_blas():
        return _run_start(index, kind, phi0, data)


def _run_start(index: int, kind: str, phi0: np.ndarray, data: LMMData) -> Start:
    layout = Layout.of(data.blocks, data.q)
    diag = layout.diagonal
    cp = data.factors

    def f(phi):
        return solve(cp, layout, _theta(phi, diag)).objective("joint")

    bounds = [(LOG_FLOOR, LOG_CEIL) if d else (None, None) for d in diag]
    res = scipy.optimize.minimize(
        f,
        phi0,
        method="L-BFGS-B",
        jac="3-point",
        bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 2000},
    )
    phi, iters = res.x, int(res.nit)
    low = diag & (phi < LOG_FLOOR + 4.0)
    if low.any():
        step = np.where(low, -2.0, 0.0)
        drop = f(phi) - f(np.maximum(phi + step, LOG_FLOOR - 4.0))
        status = "collapse" if drop > 1e-6 else "boundary"
    elif np.any(diag & (phi > LOG_CEIL - 1.0)):
        status = "not_converged"
    else:
        status = "not_converged"
        for _ in range(5):
            g, H = derivatives(f, phi, step=1e-5)
            try:
                positive = bool(np.all(np.linalg.eigvalsh(H) > 0))
                step = np.linalg.solve(H, g)
            except np.linalg.LinAlgError:
                break
            if not positive:
                break
            if g @ step < DECREMENT_TOL:
                status = "interior"
                break
            if f(phi - step) >= f(phi):
                status = "interior" if g @ step < 1e-6 else "not_converged"
                break
            phi = phi - step
    return Start(
        index=index,
        kind=kind,
        status=status,
        log_joint=-0.5 * f(phi),
        theta=_theta(phi, diag),
        iterations=iters,
    )


def make_starts(data: LMMData, eb: LMMFit, k: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """The EB-ML theta (diagonal floored at 0.05) and random points around it from `seed`."""
    diag = Layout.of(data.blocks, data.q).diagonal
    base = eb.theta.copy()
    base[diag] = np.log(np.maximum(base[diag], 0.05))
    starts = [("eb", base)]
    rng = np.random.default_rng(seed)
    while len(starts) < k:
        phi = base.copy()
        phi[diag] += rng.normal(0.0, 1.5, diag.sum())
        phi[~diag] = base[~diag] + rng.normal(0.0, 0.5, (~diag).sum()) * np.exp(base[diag]).mean()
        starts.append(("random", phi))
    return starts


def fit(
    data: LMMData,
    eb: LMMFit,
    *,
    n_starts: int = 16,
    seed: int = 0,
    n_jobs: int = -1,
    parallel_threshold: int = 20000,
) -> LMMJointMap:
    """Multi-start joint MAP; starts run in joblib processes when n_starts x m is large.
    Results do not depend on n_jobs."""
    jobs = [
        (i, kind, phi, data) for i, (kind, phi) in enumerate(make_starts(data, eb, n_starts, seed))
    ]
    if n_jobs == 1 or n_starts * data.n_groups < parallel_threshold:
        results = [run_start(*job) for job in jobs]
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs)(delayed(run_start)(*job) for job in jobs)
    interior = [r for r in results if r.status == "interior"]
    best = max(interior, key=lambda r: r.log_joint) if interior else None
    counts = _tally(results)
    tally = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    if best is None:
        message = (
            f"No interior joint mode: none of {n_starts} starts found a local maximum "
            f"of the log joint ({tally}). The log joint is unbounded as a random-effect "
            f"variance goes to 0, so there is no joint MAP to report."
        )
        return LMMJointMap(
            data=data, status="no_interior_mode", best=None, starts=tuple(results), message=message
        )
    pls = solve(data.factors, Layout.of(data.blocks, data.q), best.theta)
    message = (
        f"Interior local maximum of the log joint found ({tally} of {n_starts} starts); "
        f"it is a local mode only, since the log joint is unbounded as a variance -> 0."
    )
    return LMMJointMap(
        data=data, status="interior", best=best, starts=tuple(results), message=message, pls=pls
    )
