"""The profiled kernel of the joint MAP (`workbench.fit.joint_map.fit` chooses it for the centered
h-likelihood of a model other than the one-way one): the log joint of (y, b) without priors,
maximised in closed form over beta, b and sigma^2 at each theta, so one start is a small
optimisation over phi = (log of T's diagonal, T's off-diagonal elements). Minus twice that
profile is (N + Q) [1 + log(2 pi r^2 / (N + Q))] + sum_k 2 n_k log|det T_k| (Q random effects,
r^2 lme4's penalised residual sum of squares at theta): `deviance.PLS.objective("joint")` for
one grouping factor, `blocked.objective(..., "joint")` with its exact gradient for several. A
local maximum of this profile is a local maximum of the log joint in all parameters (the inner
maximisers are unique). End points are classified by `joint_start.classify`: collapse / boundary
when a diagonal element of T runs to its floor (a variance -> 0) with the profile still rising /
levelling off, interior after Newton steps with a positive definite Hessian of the objective and
decrement < 1e-8, not_converged otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from workbench.fit import eb_blocked
from workbench.fit.eb import EBFit
from workbench.fit.joint_start import DECREMENT_TOL, Start, classify
from workbench.fit.optimiser import derivatives, serial_blas
from workbench.model.design import LMMData
from workbench.objectives import blocked
from workbench.objectives.deviance import Layout, solve

LOG_FLOOR = np.log(1e-9)  # a diagonal element of T below 1e-9 x sigma has collapsed
LOG_CEIL = np.log(1e4)


def _theta(phi: np.ndarray, diag: np.ndarray) -> np.ndarray:
    out = phi.copy()
    out[diag] = np.exp(phi[diag])
    return out


@dataclass(frozen=True)
class Point:
    """The inner maximisers at one theta: beta, sigma^2, G and the random effects b (one
    factor: (m, q); several: a tuple of per-factor (n_k, q_k) arrays)."""

    beta: np.ndarray
    sigma2: float
    G: np.ndarray
    re_mode: np.ndarray | tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Profile:
    """Minus twice the profiled centered log joint in phi (`f`), its gradient in phi where the
    kernel has an exact one (`grad`, else None: central differences), and the inner
    maximisers (`point`)."""

    f: Callable[[np.ndarray], float]
    grad: Callable[[np.ndarray], tuple[float, np.ndarray]] | None
    point: Callable[[np.ndarray], Point]
    diag: np.ndarray

    @classmethod
    def of(cls, data: LMMData) -> Profile:
        layout = Layout.of(data.blocks, data.q)
        diag = layout.diagonal
        if data.n_factors == 1:
            cp = data.factors

            def point1(theta):
                pls = solve(cp, layout, theta)
                s2 = pls.sigma2("joint")
                return Point(pls.beta.copy(), s2, s2 * pls.T @ pls.T.T, pls.b)

            return cls(
                f=lambda phi: solve(cp, layout, _theta(phi, diag)).objective("joint"),
                grad=None,
                point=point1,
                diag=diag,
            )
        tm = eb_blocked.terms(data)  # blocked theta == data (lme4) theta

        def grad(phi):
            theta = _theta(phi, diag)
            v, g = blocked.objective_and_gradient(tm, theta, "joint")
            return v, np.where(diag, g * theta, g)

        def point(theta):
            sol = blocked.solve(tm, theta)
            s2 = sol.sigma2("joint")
            T = layout.T(theta)
            modes = eb_blocked.by_factor(data, sol.b, cov=False)
            return Point(sol.beta.copy(), s2, s2 * T @ T.T, modes)

        return cls(
            f=lambda phi: blocked.objective(tm, _theta(phi, diag), "joint"),
            grad=grad,
            point=point,
            diag=diag,
        )


def run_start(index: int, kind: str, phi0: np.ndarray, data: LMMData) -> Start:
    """One start: L-BFGS-B on phi inside a wide box, Newton polish, then classification."""
    with serial_blas():
        return _run_start(index, kind, phi0, data)


def _run_start(index: int, kind: str, phi0: np.ndarray, data: LMMData) -> Start:
    prof = Profile.of(data)
    diag, f = prof.diag, prof.f
    bounds = [(LOG_FLOOR, LOG_CEIL) if d else (None, None) for d in diag]
    res = scipy.optimize.minimize(
        f if prof.grad is None else prof.grad,
        phi0,
        method="L-BFGS-B",
        jac="3-point" if prof.grad is None else True,
        bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 2000},
    )
    end = {"phi": res.x, "dec": None}
    low = diag & (res.x < LOG_FLOOR + 4.0)

    def curvature(phi):
        """The gradient and Hessian of f: central differences of f, or with an exact gradient
        that gradient and the symmetrised central differences of it."""
        if prof.grad is None:
            return derivatives(f, phi, step=1e-5)
        g = prof.grad(phi)[1]
        h = 1e-6 * np.maximum(1.0, np.abs(phi))
        cols = []
        for i in range(phi.size):
            e = np.zeros_like(phi)
            e[i] = h[i]
            cols.append((prof.grad(phi + e)[1] - prof.grad(phi - e)[1]) / (2.0 * h[i]))
        H = np.array(cols)
        return g, 0.5 * (H + H.T)

    def rising_to_zero() -> bool:
        phi = end["phi"]
        return f(phi) - f(np.maximum(phi + np.where(low, -2.0, 0.0), LOG_FLOOR - 4.0)) > 1e-6

    def polish() -> bool:
        """Newton steps on f (minus twice the log joint); a T diagonal at its ceiling is not
        polished (not_converged)."""
        phi = end["phi"]
        if np.any(diag & (phi > LOG_CEIL - 1.0)):
            return False
        for _ in range(5):
            g, H = curvature(phi)
            try:
                positive = bool(np.all(np.linalg.eigvalsh(H) > 0))
                step = np.linalg.solve(H, g)
            except np.linalg.LinAlgError:
                break
            if not positive:
                break
            dec = float(g @ step)
            end["dec"] = 0.5 * dec  # the decrement of the log joint (= -f / 2)
            if dec < DECREMENT_TOL:
                end["phi"] = phi
                return True
            if f(phi - step) >= f(phi):
                end["phi"] = phi
                return dec < 1e-6
            phi = phi - step
        end["phi"] = phi
        return False

    status = classify(to_zero=bool(low.any()), rising_to_zero=rising_to_zero, polish=polish)
    theta = _theta(end["phi"], diag)
    pt = prof.point(theta)
    return Start(
        index=index,
        kind=kind,
        status=status,
        log_joint=-0.5 * f(end["phi"]),
        beta=pt.beta,
        sigma2=pt.sigma2,
        G=pt.G,
        re_mode=pt.re_mode,
        theta=theta,
        iterations=int(res.nit),
        newton_decrement=end["dec"] if status == "interior" else None,
        x=end["phi"],
    )


def make_starts(
    data: LMMData, eb: EBFit, k: int, seed: np.random.SeedSequence | int
) -> list[tuple[str, np.ndarray]]:
    """The EB-ML theta (diagonal floored at 0.05) and random points around it, drawn from
    `np.random.default_rng(seed)`."""
    diag = Layout.of(data.blocks, data.q).diagonal
    base = np.array(eb.theta, float)
    base[diag] = np.log(np.maximum(base[diag], 0.05))
    starts = [("eb", base)]
    rng = np.random.default_rng(seed)
    while len(starts) < k:
        phi = base.copy()
        phi[diag] += rng.normal(0.0, 1.5, diag.sum())
        phi[~diag] = base[~diag] + rng.normal(0.0, 0.5, (~diag).sum()) * np.exp(base[diag]).mean()
        starts.append(("random", phi))
    return starts
