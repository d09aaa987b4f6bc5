"""Bound-constrained minimisation of a profiled objective, with "converged" checked, not assumed.

lme4's recipe: derivative-free BOBYQA (Powell; here Py-BOBYQA, the implementation lme4 and
MixedModels.jl use in another language) within the bounds, then `restart_edge`: a coordinate
that ends on its bound while the objective still falls inward is moved inward and the optimiser
restarted. The profiled deviance depends on a diagonal element of T through its square near 0,
so its derivative there is exactly 0 and a gradient test alone would call such a point
converged; the one-sided test below compares objective values instead.

`minimise` claims convergence only when, at the end point:
* the central-difference gradient on the free coordinates is ~0 and their Hessian has no
  clearly negative eigenvalue (a minimum, not a saddle);
* no coordinate on a bound gives a lower objective when moved inward by 1e-4 .. 1e-1, from the
  point or from its mirror image (see `minimise`);
* a restart of the optimiser from the end point finds nothing better.

With `check="gradient"` (an exact gradient given; the several-factor kernel, whose evaluations
cost tens of milliseconds), the same evidence is gathered with fewer evaluations: the gradient
is the exact one, the Hessian forward differences of it (k gradients instead of 2k^2 + 1
values), and the final restart damped Newton steps from a point displaced by 0.1% of every
coordinate (instead of a BOBYQA run from a new simplex); restarts at an edge or away from a
stationary point are exact-gradient L-BFGS-B runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pybobyqa
import scipy.optimize
from threadpoolctl import threadpool_limits

GRADIENT_TOL = 1e-3  # |d objective / d x| along flat directions (deviance units, theta ~ O(1))
DECREMENT_TOL = 1e-8  # Newton decrement g'H^-1 g on the curved directions of the free coordinates
CURVATURE_TOL = -1e-3  # smallest Hessian eigenvalue allowed on free coordinates
DECREASE_TOL = 1e-9  # an inward or restart decrease below this is numerical noise
INWARD_STEPS = (1e-4, 1e-3, 1e-2, 1e-1)
MAX_RESTARTS = 8


@dataclass(frozen=True)
class Optimum:
    """Where the minimisation ended and the evidence that it is a minimum."""

    x: np.ndarray
    fun: float
    n_evals: int
    restarts: int
    converged: bool
    gradient_max: float  # max |gradient| over the free coordinates
    newton_decrement: float  # g'H^-1 g over the curved free directions (~2 x what is left)
    min_curvature: float  # smallest Hessian eigenvalue over the free coordinates
    on_bound: tuple[int, ...]  # coordinates at their lower bound
    inward_change: float  # min over bound coordinates and steps of f(inward) - f(x) (>= 0 ok)
    message: str

    def to_dict(self) -> dict:
        return {
            "converged": self.converged,
            "n_evals": self.n_evals,
            "restarts": self.restarts,
            "gradient_max": self.gradient_max,
            "newton_decrement": self.newton_decrement,
            "min_curvature": self.min_curvature,
            "on_bound": list(self.on_bound),
            "inward_change": self.inward_change,
            "message": self.message,
        }


def serial_blas():
    """One BLAS thread: every matrix here is tiny (q x q, p x p), and OpenBLAS threads spinning
    on them cost 10x in wall time on a busy 2-core machine (measured with L-BFGS-B)."""
    return threadpool_limits(limits=1, user_api="blas")


class _Counted:
    """The objective, counting evaluations and remembering the last few values (the checks ask
    for f at the same end point several times)."""

    def __init__(self, fun: Callable[[np.ndarray], float]):
        self.fun, self.n, self.memo = fun, 0, {}

    def __call__(self, x) -> float:
        x = np.asarray(x, float)
        key = x.tobytes()
        if key in self.memo:
            return self.memo[key]
        self.n += 1
        v = float(self.fun(x))
        v = v if np.isfinite(v) else 1e300
        if len(self.memo) > 16:
            self.memo.clear()
        self.memo[key] = v
        return v


def _bobyqa(
    f: _Counted, x0: np.ndarray, lower: np.ndarray, rhobeg: float, check: bool = False
) -> np.ndarray:
    """BOBYQA from x0; `check`: a short run that only has to find a decrease if there is one."""
    lo = np.where(np.isfinite(lower), lower, -1e20)
    x0 = np.maximum(x0, lo)
    maxfun = 40 + 8 * x0.size if check else 2000 + 400 * x0.size
    res = pybobyqa.solve(
        f,
        x0,
        bounds=(lo, np.full_like(lo, 1e20)),
        rhobeg=rhobeg,
        rhoend=1e-7 if check else 1e-10,
        maxfun=maxfun,
        do_logging=False,
        print_progress=False,
    )
    x = np.maximum(np.asarray(res.x, float), lo)
    return x if f(x) <= f(x0) else x0


def derivatives(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    free: np.ndarray | None = None,
    step: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient and Hessian over the free coordinates (default: all), with
    steps `step` x max(1, |x_i|)."""
    x = np.asarray(x, float)
    idx = np.flatnonzero(np.ones(x.size, bool) if free is None else free)
    k = idx.size
    h = step * np.maximum(1.0, np.abs(x[idx]))
    f0 = f(x)

    def at(*steps):
        y = x.copy()
        for i, s in steps:
            y[idx[i]] += s * h[i]
        return f(y)

    fp = np.array([at((i, 1)) for i in range(k)])
    fm = np.array([at((i, -1)) for i in range(k)])
    H = np.empty((k, k))
    for i in range(k):
        H[i, i] = (fp[i] - 2 * f0 + fm[i]) / h[i] ** 2
        for j in range(i):
            H[i, j] = H[j, i] = (
                at((i, 1), (j, 1))
                - at((i, 1), (j, -1))
                - at((i, -1), (j, 1))
                + at((i, -1), (j, -1))
            ) / (4 * h[i] * h[j])
    return (fp - fm) / (2 * h), H


def gradient_derivatives(
    grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    free: np.ndarray,
    step: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact gradient and the forward-difference Hessian of it over the free coordinates
    (k + 1 gradients; relative error ~`step`, ample for the curvature and decrement tests)."""
    x = np.asarray(x, float)
    idx = np.flatnonzero(free)
    g = np.asarray(grad(x)[1], float)[idx]
    H = np.empty((idx.size, idx.size))
    for a, i in enumerate(idx):
        h = step * max(1.0, abs(x[i]))
        up = x.copy()
        up[i] += h
        H[:, a] = (np.asarray(grad(up)[1])[idx] - g) / h
    return g, 0.5 * (H + H.T)


def _newton_restart(
    f: _Counted,
    grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    y: np.ndarray,
    H: np.ndarray,
    free: np.ndarray,
    lower: np.ndarray,
    max_iter: int = 8,
) -> np.ndarray:
    """A restart from y by damped Newton steps on the free coordinates with the Hessian H of the
    end point (halving a step until the objective falls; within the bounds)."""
    idx = np.flatnonzero(free)
    w, V = np.linalg.eigh(H)
    Hinv = (V / np.maximum(w, 1e-8 * max(abs(w).max(), 1e-300))) @ V.T
    lo = np.where(np.isfinite(lower), lower, -np.inf)
    fy, g = grad(y)
    f.n += 1
    for _ in range(max_iter):
        step = Hinv @ np.asarray(g)[idx]
        t = 1.0
        while t > 1e-6:
            z = y.copy()
            z[idx] = np.maximum(y[idx] - t * step, lo[idx])
            fz, gz = grad(z)
            f.n += 1
            if np.isfinite(fz) and fz < fy:
                break
            t *= 0.5
        else:
            break
        converged = fy - fz < 1e-12 * max(1.0, abs(fy))
        y, fy, g = z, fz, gz
        if converged:
            break
    return y


def _displaced(x: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """x moved by 0.1% of every coordinate (at least 1e-4), alternately up and down, within the
    bounds: the start of a restart."""
    sign = np.where(np.arange(x.size) % 2 == 0, 1.0, -1.0)
    y = x + sign * np.maximum(1e-3 * np.abs(x), 1e-4)
    return np.maximum(y, np.where(np.isfinite(lower), lower, -np.inf))


def stationarity(g: np.ndarray, H: np.ndarray) -> tuple[float, float]:
    """(Newton decrement on the curved directions, max |gradient| along flat ones) or inf."""
    if not g.size:
        return 0.0, 0.0
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
        return np.inf, np.inf
    w, V = np.linalg.eigh(H)
    gv = V.T @ g
    curved = w > 1e-6 * max(abs(w).max(), 1e-300)
    dec = float((gv[curved] ** 2 / w[curved]).sum())
    flat = float(np.abs(gv[~curved]).max()) if (~curved).any() else 0.0
    return dec, flat


def _inward(
    f: _Counted,
    x: np.ndarray,
    bound: np.ndarray,
    mirror: Callable[[np.ndarray, int], np.ndarray] | None,
) -> tuple[float, np.ndarray | None]:
    """Smallest f(x + s e_i) - f(x) over bound coordinates i, steps s and the mirror images of
    x at i (points equal to x while x_i is on its bound), and the point that gives it."""
    f0, best, where = f(x), np.inf, None
    for i in np.flatnonzero(bound):
        bases = [x] + ([mirror(x, int(i))] if mirror is not None else [])
        for base in bases:
            for s in INWARD_STEPS:
                y = base.copy()
                y[i] += s
                d = f(y) - f0
                if d < best:
                    best, where = d, y
    return float(best), where


def _counted_grad(f: _Counted, grad):
    def counted(x):
        f.n += 1
        return grad(x)

    return counted


def _screen(
    f: _Counted,
    x0: np.ndarray,
    lower: np.ndarray,
    grad: Callable[[np.ndarray], tuple[float, np.ndarray]] | None,
) -> np.ndarray:
    """A descent from one start: L-BFGS-B with the exact gradient where there is one (then to
    full accuracy), else with forward differences to a loose tolerance (BOBYQA and the checks
    give the accuracy afterwards)."""
    bounds = [(lo, None) if np.isfinite(lo) else (None, None) for lo in lower]
    x0 = np.maximum(x0, np.where(np.isfinite(lower), lower, -np.inf))
    if grad is None:
        res = scipy.optimize.minimize(
            f,
            x0,
            method="L-BFGS-B",
            jac="2-point",
            bounds=bounds,
            options={"maxiter": 100, "ftol": 1e-9, "gtol": 1e-4},
        )
        return np.asarray(res.x, float)

    def fg(x):
        f.n += 1
        v, g = grad(np.asarray(x, float))
        return (float(v), g) if np.isfinite(v) and np.all(np.isfinite(g)) else (1e300, 0 * g)

    res = scipy.optimize.minimize(
        fg,
        x0,
        method="L-BFGS-B",
        jac=True,
        bounds=bounds,
        options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-9},
    )
    return np.asarray(res.x, float)


def minimise(
    fun: Callable[[np.ndarray], float],
    starts,
    lower,
    mirror: Callable[[np.ndarray, int], np.ndarray] | None = None,
    grad: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None,
    check: str = "bobyqa",
) -> Optimum:
    """Minimise `fun` subject to x >= lower (-inf: unbounded) from `x0`; see the module text.

    `mirror(x, i)`, where given, returns the other representation of the same point when x_i
    is on its bound (a zero diagonal element of a Cholesky factor leaves the sign of the rest of
    its column free: both signs are the same covariance, but only one may fall inward).
    `starts` is one start or a list: with several, each gets a cheap L-BFGS-B descent first and
    the best end point goes on to BOBYQA and the checks (a mixed model's likelihood can have a
    local optimum per sign of a correlation, or one inside beside a better one on a bound).
    `grad(x) -> (fun(x), gradient)`, where given, makes each descent an exact-gradient L-BFGS-B
    run; BOBYQA (derivative free) is then used only for the restarts of the checks, or with
    `check="gradient"` not at all (see the module text)."""
    if check not in ("bobyqa", "gradient") or (check == "gradient" and grad is None):
        raise ValueError("check must be 'bobyqa', or 'gradient' with an exact gradient")
    f = _Counted(fun)
    lower = np.asarray(lower, float)
    starts = np.atleast_2d(np.asarray(starts, float))
    if grad is not None:
        x = min((_screen(f, s0, lower, grad) for s0 in starts), key=f)
    elif len(starts) == 1:
        x = _bobyqa(f, starts[0], lower, rhobeg=0.2)
    else:
        ends = [_screen(f, s0, lower, None) for s0 in starts]
        x = _bobyqa(f, min(ends, key=f), lower, rhobeg=0.05)
    restarts, message = 0, ""
    while True:
        bound = np.isfinite(lower) & (x <= lower + 1e-10)
        x[bound] = lower[bound]
        free = ~bound
        if not free.any():
            g, H = np.zeros(0), np.zeros((0, 0))
        elif check == "gradient":
            g, H = gradient_derivatives(_counted_grad(f, grad), x, free)
        else:
            g, H = derivatives(f, x, free)
        gmax = float(np.abs(g).max()) if g.size else 0.0
        curv = (
            float(np.linalg.eigvalsh(H).min())
            if g.size and np.all(np.isfinite(H))
            else (0.0 if not g.size else -np.inf)
        )
        dec, flat = stationarity(g, H)
        stationary = dec <= DECREMENT_TOL and flat <= GRADIENT_TOL and curv >= CURVATURE_TOL
        inward, y = _inward(f, x, bound, mirror) if bound.any() else (np.inf, None)
        edge = y is not None and inward < -DECREASE_TOL
        if (edge or not stationary) and restarts >= MAX_RESTARTS:
            message = f"stopped after {restarts} restarts"
            break
        if check == "gradient":
            # restarts by the exact-gradient descent: from the inward point, from x, or (the
            # final check) from x displaced by 1%
            if edge or not stationary:
                x_new = _screen(f, y if edge else _displaced(x, lower), lower, grad)
            else:  # the final check: Newton from a displaced point finds nothing lower
                x_new = (
                    _newton_restart(f, grad, _displaced(x, lower), H, free, lower)
                    if free.any()
                    else _screen(f, _displaced(x, lower), lower, grad)
                )
            if f(x_new) > f(x):
                x_new = x
            if stationary and not edge and f(x_new) >= f(x) - DECREASE_TOL:
                message = "converged: gradient ~0 and no descent inward from bounds or on restart"
                break
        elif edge:
            x_new = _bobyqa(f, y, lower, rhobeg=0.05)  # lme4's restart_edge
        elif not stationary:
            x_new = _bobyqa(f, x, lower, rhobeg=0.05)
        else:
            x_new = _bobyqa(f, x, lower, rhobeg=0.01, check=True)  # the final check: a restart
            if f(x_new) >= f(x) - DECREASE_TOL:
                message = "converged: gradient ~0 and no descent inward from bounds or on restart"
                break
        restarts += 1
        if f(x_new) >= f(x) - DECREASE_TOL and not stationary:
            x = x_new
            message = (
                f"no progress: gradient {gmax:.2g}, smallest curvature {curv:.2g} on the "
                f"free coordinates"
            )
            bound = np.isfinite(lower) & (x <= lower + 1e-10)
            break
        x = x_new
    converged = stationary and not inward < -DECREASE_TOL and message.startswith("converged")
    return Optimum(
        x=x,
        fun=f(x),
        n_evals=f.n,
        restarts=restarts,
        converged=converged,
        gradient_max=gmax,
        newton_decrement=dec,
        min_curvature=curv,
        on_bound=tuple(int(i) for i in np.flatnonzero(bound)),
        inward_change=float(inward) if np.isfinite(inward) else 0.0,
        message=message,
    )
