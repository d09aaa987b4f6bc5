"""The profiled kernel of the joint MAP (`workbench.fit.joint_map.fit` chooses it for the
centered h-likelihood of a model other than the one-way one): the log joint of (y, b) without
priors, maximised in closed form over beta, b and sigma^2 at each theta
(`deviance.PLS.objective("joint")` is minus twice that profile), so one start is a small
optimisation over phi = (log of T's diagonal, T's off-diagonal elements). A local maximum of
this profile is a local maximum of the log joint in all parameters (the inner maximisers are
unique). End points are classified by `joint_start.classify`: collapse / boundary when a diagonal
element of T runs to its floor (a variance -> 0) with the profile still rising / levelling off,
interior after Newton steps with a positive definite Hessian of the objective and decrement
< 1e-8, not_converged otherwise.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from workbench.fit.eb import EBFit
from workbench.fit.joint_start import DECREMENT_TOL, Start, classify
from workbench.fit.optimiser import derivatives, serial_blas
from workbench.model.design import LMMData
from workbench.objectives.deviance import Layout, solve

LOG_FLOOR = np.log(1e-9)  # a diagonal element of T below 1e-9 x sigma has collapsed
LOG_CEIL = np.log(1e4)


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
    end = {"phi": res.x, "dec": None}
    low = diag & (res.x < LOG_FLOOR + 4.0)

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
            g, H = derivatives(f, phi, step=1e-5)
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
    pls = solve(cp, layout, theta)
    s2 = pls.sigma2("joint")
    return Start(
        index=index,
        kind=kind,
        status=status,
        log_joint=-0.5 * f(end["phi"]),
        beta=pls.beta.copy(),
        sigma2=s2,
        G=s2 * pls.T @ pls.T.T,
        re_mode=pls.b,
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
