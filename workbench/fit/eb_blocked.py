"""The EB kernel for several grouping factors (crossed or nested random effects).

lme4's profiled ML deviance / REML criterion in theta comes from the blocked Cholesky factor of
`objectives.blocked` (MixedModels.jl's: terms by number of levels, the first block diagonal), one
blocked term per correlated block of `LMMData` (its factor's level codes and its columns of Z),
so theta is lme4's. `optimiser.minimise` finds the minimum from lme4's starts (exact-gradient
L-BFGS-B descents, then the checked end point: gradient, one-sided derivatives at bounds, a
BOBYQA restart). Every field of `eb.EBFit` follows at the optimum: beta and its covariance
sigma^2 (X'V^-1X)^-1, sigma^2, G = sigma^2 blockdiag(T T'), the conditional modes b = Lambda u
and lme4's conditional covariances sigma^2 Lambda A^-1 Lambda' by level (condVar).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize

from workbench.fit.optimiser import Optimum, minimise, serial_blas
from workbench.model.design import LMMData, Scaling, z_reparametrisation
from workbench.objectives import blocked
from workbench.objectives.deviance import Layout, lower_factor

BOUNDARY_TOL = 1e-4  # lme4's isSingular() tolerance on the diagonal of T


def terms(data: LMMData) -> blocked.Terms:
    """The theta-free products of `data` (one O(N) pass), cached on the record: one blocked
    term per correlated block, in the record's (lme4's) order."""
    cached = data.__dict__.get("_blocked_terms")
    if cached is None:
        cached = blocked.Terms.of(
            data.y,
            data.X,
            [(data.groupings[b.factor].codes, data.Z[:, list(b.cols)]) for b in data.blocks],
        )
        data.__dict__["_blocked_terms"] = cached  # frozen record: a cache, like cached_property
    return cached


@dataclass(frozen=True)
class Scaled:
    """The fit's own well-scaled problem (as the one-factor kernel's `design.Scaling` and
    `z_reparametrisation`): X_s = X A (covariates centred, unit spread), y_s = (y - shift) /
    scale, and per correlated block Z_s = Z B (columns of unit spread, centred against the
    block's intercept). Same model and column spaces: theta_s -> theta by T = lower(B T_s), the
    criteria differ by known constants (`to_user`); a day number or a 1e9 offset then costs no
    digits in W'W or the Schur complements."""

    terms: blocked.Terms
    scaling: Scaling
    B: np.ndarray


def scaled(data: LMMData) -> Scaled:
    cached = data.__dict__.get("_blocked_scaled")
    if cached is None:
        names = data.fixed_names
        sc = Scaling.of(
            data.X, data.y, names.index("(Intercept)") if "(Intercept)" in names else None
        )
        B = z_reparametrisation(data.Z, data.blocks)
        Zs = data.Z @ B
        tm = blocked.Terms.of(
            (data.y - sc.y_shift) / sc.y_scale,
            data.X @ sc.A,
            [(data.groupings[b.factor].codes, Zs[:, list(b.cols)]) for b in data.blocks],
        )
        cached = Scaled(terms=tm, scaling=sc, B=B)
        data.__dict__["_blocked_scaled"] = cached
    return cached


@dataclass(frozen=True)
class Kernel:
    """An ML or REML fit with several grouping factors (the fields of `eb.EBFit`)."""

    beta: np.ndarray
    beta_cov: np.ndarray
    sigma2: float
    G: np.ndarray
    theta: np.ndarray
    objective: float
    modes: tuple[np.ndarray, ...] = field(repr=False)
    mode_covs: tuple[np.ndarray, ...] = field(repr=False)
    optimum: Optimum = field(repr=False)
    notes: tuple[str, ...] = ()


def by_factor(data: LMMData, per_block: tuple[np.ndarray, ...], cov: bool) -> tuple:
    """Per-block arrays (n_k, q_b[, q_b]) joined per grouping factor (columns in block order;
    covariances block diagonal: lme4's condVar is per term)."""
    out = []
    for k in range(data.n_factors):
        idx = [i for i, b in enumerate(data.blocks) if b.factor == k]
        if not cov:
            out.append(np.concatenate([per_block[i] for i in idx], axis=1))
            continue
        n = per_block[idx[0]].shape[0]
        q = sum(per_block[i].shape[1] for i in idx)
        full = np.zeros((n, q, q))
        at = 0
        for i in idx:
            w = per_block[i].shape[1]
            full[:, at : at + w, at : at + w] = per_block[i]
            at += w
        out.append(full)
    return tuple(out)


SMALL = 2000  # random effects up to which lme4's starts are run too


def moment_start(data: LMMData, layout: Layout) -> np.ndarray:
    """lme4's start T = I, with each random intercept's element set from the method of moments
    on the OLS residuals r: for its factor, tau^2 = (weighted variance of the level means of r)
    - (within-level variance) m / N, sigma^2 = var(r) - sum tau^2, theta = tau / sigma (at least
    0.01). O(N); it halves the descent on InstEval (12 gradients instead of 25)."""
    beta, *_ = np.linalg.lstsq(data.X, data.y, rcond=None)
    r = data.y - data.X @ beta
    N = r.size
    total = float(r @ r) / max(N - data.p, 1)
    theta = layout.start()
    taus, at, where = [], 0, []
    for b in data.blocks:
        k = len(b.cols)
        z = data.Z[:, b.cols[0]]
        if k == 1 and np.ptp(z) == 0:
            g = data.groupings[b.factor]
            n = np.maximum(g.sizes(), 1).astype(float)
            means = np.bincount(g.codes, r, minlength=g.n_levels) / n
            w = r - means[g.codes]
            within = float(w @ w) / max(N - g.n_levels, 1)
            taus.append(max(float(n @ (means * means)) / N - within * g.n_levels / N, 0.0))
            where.append(at)
        at += k * (k + 1) // 2
    sigma2 = max(total - sum(taus), 0.05 * total)
    if sigma2 > 0:
        theta[where] = np.sqrt(np.maximum(np.array(taus) / sigma2, 1e-4))
    return theta


def log_descent(fg, x0: np.ndarray, diagonal: np.ndarray) -> tuple[np.ndarray, int]:
    """An exact-gradient L-BFGS-B descent with the diagonal elements of T on a log scale (down
    to 1e-4), to a loose tolerance: variance parameters move by factors, so an interior optimum
    takes fewer steps (InstEval: 13 gradients against 20 on theta); `minimise` then finishes on
    theta itself, where a bound at 0 is reachable, and checks the end point. Returns the end
    point and the number of evaluations."""
    floor = np.log(1e-4)

    def fz(z):
        t = z.copy()
        t[diagonal] = np.exp(z[diagonal])
        try:
            value, grad = fg(t)
        except np.linalg.LinAlgError:  # a factor lost in rounding far out: a wall
            return 1e300, np.zeros_like(z)
        grad = np.array(grad, float)
        grad[diagonal] *= t[diagonal]
        return value, grad

    z0 = np.array(x0, float)
    z0[diagonal] = np.log(np.maximum(z0[diagonal], 1e-4))
    res = scipy.optimize.minimize(
        fz,
        z0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(floor, None) if d else (None, None) for d in diagonal],
        options={"ftol": 1e-12, "gtol": 1e-6, "maxiter": 200},
    )
    out = np.array(res.x, float)
    out[diagonal] = np.exp(out[diagonal])
    return (out if np.isfinite(res.fun) else np.array(x0, float)), int(res.nfev)


def fit(data: LMMData, method: str, x0=None) -> Kernel:
    """Minimise the criterion over theta and read off every field at the optimum: from the
    moment start (`moment_start`), and for models of up to `SMALL` random effects from lme4's
    starts too (`Layout.starts`); the checks use the exact gradient (`check="gradient"`)."""
    sd = scaled(data)
    tm, sc, B = sd.terms, sd.scaling, sd.B
    layout = Layout.of(data.blocks, data.q)
    if x0 is not None:
        starts = [layout.theta(lower_factor(np.linalg.solve(B, layout.T(x0))))]
    else:
        starts = [moment_start(data, layout)]
        if sum(t.dim for t in tm.terms) <= SMALL:
            starts += layout.starts()
    s, N, p = sc.y_scale, data.n_obs, data.p
    # criteria on the user's scale: y / s adds 2 N log s (ML) or 2 (N - p) log s (REML); X = X_s
    # A^-1 changes log|R_X|^2 by -2 log|det A| (the optimiser sees the user's values)
    shift = 2 * N * np.log(s) if method == "ml" else 2 * (N - p) * np.log(s) - 2 * sc.log_det_A

    def fg(t):
        try:
            value, grad = blocked.objective_and_gradient(tm, t, method)
        except np.linalg.LinAlgError:  # far out, I + M M' loses its I in rounding: a wall
            return np.inf, np.zeros(len(t))
        return value + shift, grad

    def f(t):
        try:
            return blocked.objective(tm, t, method) + shift
        except np.linalg.LinAlgError:
            return np.inf

    with serial_blas():
        n_log = 0
        if x0 is None:  # the moment start first descends on log theta
            starts[0], n_log = log_descent(fg, starts[0], layout.diagonal)
        opt = minimise(
            f,
            starts,
            np.where(layout.diagonal, 0.0, -np.inf),
            mirror=layout.mirror,
            grad=fg,
            check="gradient",
        )
        opt = dataclasses.replace(opt, n_evals=opt.n_evals + n_log)
        sol = blocked.solve(tm, opt.x)
        covs = sol.conditional_covariances()
    s2 = s * s * sol.sigma2(method)
    T = lower_factor(B @ layout.T(opt.x))
    beta = s * (sc.A @ sol.beta)
    if sc.intercept is not None:
        beta[sc.intercept] += sc.y_shift
    blocks_b = tuple(
        s * (b @ B[np.ix_(blk.cols, blk.cols)].T) for b, blk in zip(sol.b, data.blocks, strict=True)
    )
    blocks_c = tuple(
        s2 * (B[np.ix_(blk.cols, blk.cols)] @ c @ B[np.ix_(blk.cols, blk.cols)].T)
        for c, blk in zip(covs, data.blocks, strict=True)
    )
    notes = []
    if not opt.converged:
        notes.append(
            f"the optimiser did not confirm a minimum ({opt.message}); the estimates may be off"
        )
    if np.any(np.abs(layout.theta(T)[layout.diagonal]) < BOUNDARY_TOL):
        notes.append(
            "boundary (singular) fit: a random-effect variance is 0 or a "
            "correlation is +-1 (lme4's isSingular)"
        )
    return Kernel(
        beta=beta,
        beta_cov=s2 * sc.A @ sol.beta_cov_unscaled @ sc.A.T,
        sigma2=s2,
        G=s2 * T @ T.T,
        theta=layout.theta(T),
        objective=sol.objective(method) + shift,
        modes=by_factor(data, blocks_b, cov=False),
        mode_covs=by_factor(data, blocks_c, cov=True),
        optimum=opt,
        notes=tuple(notes),
    )


def conditional_covariances(data: LMMData, theta, sigma2: float) -> tuple[np.ndarray, ...]:
    """Per grouping factor, lme4's condVar at (theta, sigma^2): sigma^2 Lambda A^-1 Lambda' by
    level (zero between blocks of a factor), columns in `data.factor_cols(k)` order."""
    per_block = blocked.solve(terms(data), theta).conditional_covariances()
    return by_factor(data, tuple(sigma2 * c for c in per_block), cov=True)


def marginal_loglik(data: LMMData, theta, sigma2: float) -> float:
    """The marginal log likelihood at theta, sigma^2 and the GLS beta at theta (a REML fit's
    estimates): -1/2 [log|L_theta|^2 + N log(2 pi sigma^2) + r^2(theta) / sigma^2]."""
    sol = blocked.solve(terms(data), theta)
    n = data.n_obs
    return -0.5 * (sol.logdet_L + n * np.log(2 * np.pi * sigma2) + sol.r2 / sigma2)
