"""The all-parameter kernel of the joint MAP (`joint_map.fit` chooses it for models other
than the one-way model, except the centered h-likelihood): per start L-BFGS-B on the log joint
of `objectives.log_joint` with its exact gradient (log sigma and the log-diagonal of every
L_k boxed to log sd(y) +- BOX), then Newton steps with the Hessian (block-arrowhead for one
grouping factor, `Context`; sparse random-effect block for several, `Crossed`). The code here
reaches the random effects only through the context's layout methods (`block`, `put`,
`u_index`, `re_mode`, `from_modes`), so it serves both.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse
from scipy import stats as sps

from workbench.fit import eb_blocked
from workbench.fit.eb import EBFit
from workbench.fit.joint_start import (
    BOX,
    DECREMENT_TOL,
    ESCAPE_AT,
    Start,
    classify,
)
from workbench.fit.optimiser import serial_blas
from workbench.objectives import blocked
from workbench.objectives.deviance import Layout, solve
from workbench.objectives.log_joint import (
    Context,
    Crossed,
    NegFactor,
    hessian,
    log_joint,
    log_joint_and_grad,
)

Ctx = Context | Crossed

# ----------------------------------------------------------------------------------------------
# The all-parameter kernel: one start


def lme4_theta(x: np.ndarray, ctx: Ctx) -> np.ndarray:
    """lme4's theta (T column by column, G = sigma^2 T T') at x."""
    sigma = float(np.exp(x[ctx.p]))
    T = np.zeros((ctx.q, ctx.q))
    for k, blk in enumerate(ctx.data.blocks):
        T[np.ix_(blk.cols, blk.cols)] = ctx.chol(x, k) / sigma
    return Layout.of(ctx.data.blocks, ctx.q).theta(T)


def _scale(x, ctx: Ctx, par: str) -> np.ndarray:
    """Rough inverse square roots of the curvatures, to condition L-BFGS-B."""
    d = ctx.data
    sigma2 = float(np.exp(2.0 * x[ctx.p]))
    out = np.ones_like(x)
    out[: ctx.p] = 1.0 / np.sqrt((d.X**2).sum(axis=0) / sigma2 + 1e-12)
    ztz = ctx.ztz_diag()  # the diagonal of Z'Z in the layout of U
    g = np.diag(ctx.G(x))[ctx.u_column()]
    if par == "centered":
        curv = ztz / sigma2 + 1.0 / np.maximum(g, 1e-300)
    else:
        curv = ztz * g / sigma2 + 1.0
    out[ctx.u_start :] = (1.0 / np.sqrt(curv)).ravel()
    out[ctx.p : ctx.u_start] = 1.0
    return out


def _shift(x, ctx: Ctx, par: str, idx: np.ndarray, by: float) -> np.ndarray:
    """x with the rows of L for the log-diagonal positions `idx` scaled by e^by (by < 0: the
    effects of those columns shrink with them, z held in the non-centered form)."""
    out = x.copy()
    for k in range(len(ctx.sizes)):
        sl, n = ctx.theta_slices[k], ctx.sizes[k]
        r, c = np.tril_indices(n)
        for i in range(n):
            pos = sl.start + int(np.flatnonzero((r == i) & (c == i))[0])
            if pos not in idx:
                continue
            row = sl.start + np.flatnonzero((r == i) & (c < i))
            out[pos] += by
            out[row] *= np.exp(by)
            if par == "centered":
                out[ctx.u_index(k, i)] *= np.exp(by)
    return out


def _grow(x, ctx: Ctx, par: str, by: float = 5.0) -> np.ndarray:
    """x with every L_k scaled by e^by and the random effects b held fixed (z scaled by
    e^-by in the non-centered form): the ray along which the variances run to infinity."""
    out = x.copy()
    out[ctx.log_diag[1:]] += by
    for sl in ctx.theta_slices:
        off = np.setdiff1d(np.arange(sl.start, sl.stop), ctx.log_diag)
        out[off] *= np.exp(by)
    if par == "noncentered":
        out[ctx.u_start :] *= np.exp(-by)
    return out


def _rises_to_infinity(x, ctx, par, priors) -> bool:
    return log_joint(_grow(x, ctx, par), ctx, par, priors) > log_joint(x, ctx, par, priors)


def _factor(H, damp: bool):
    """The factor of -H, and whether its global block had to be shifted: with `damp` (several
    grouping factors), where -H is not positive definite, -H plus mu |diag A| on the global
    block for the smallest mu in 1e-4 .. 1e2 that makes it so (a Levenberg-Marquardt step:
    the random-effect block is negative definite by construction, so only the Schur complement
    of the global parameters can fail, on the flat ridges where a variance and its effects
    trade off). Returns (None, False) when no factor is found."""
    F = NegFactor.of(H)
    if F is not None or not damp:
        return F, False
    shift = np.diag(np.abs(np.diag(H.A)))
    for mu in 10.0 ** np.arange(-4, 3):
        F = NegFactor.of(dataclasses.replace(H, A=H.A - mu * shift))
        if F is not None:
            return F, True
    return None, False


def _newton(x, ctx, par, priors, lo, hi, scale, max_iter=8, damp=False):
    """Newton steps with a backtracking line search; with `damp`, damped steps where the
    Hessian is not negative definite (`_factor`). Returns the end point, its Newton decrement
    (None where the Hessian there is not negative definite) and the steps."""
    value, g = log_joint_and_grad(x, ctx, par, priors)
    dec, it = None, 0
    for it in range(1, max_iter + 1):
        F, damped = _factor(hessian(x, ctx, par, priors, scale), damp)
        if F is None:
            return x, None, it
        step = F.solve(g)
        dec = None if damped else float(g @ step)
        if dec is not None and dec < DECREMENT_TOL:
            return x, dec, it
        t = 1.0
        while t > 1e-8:
            xn = x + t * step
            ld = xn[ctx.log_diag]
            if np.all(ld > lo) and np.all(ld < hi):
                vn, gn = log_joint_and_grad(xn, ctx, par, priors)
                if np.isfinite(vn) and vn >= value - 1e-12 * abs(value):
                    break
            t *= 0.5
        else:
            return x, dec, it
        x, value, g = xn, vn, gn
    F = NegFactor.of(hessian(x, ctx, par, priors, scale))
    if F is None:
        return x, None, it
    return x, float(g @ F.solve(g)), it


def _same(x, ctx: Ctx) -> np.ndarray:
    return x


def _centered_u(x, ctx: Ctx) -> np.ndarray:
    """x with the non-centered z replaced by b = z L' (block by block)."""
    out = x.copy()
    out[ctx.u_start :] = ctx.effects(x, "noncentered").ravel()
    return out


def _noncentered_u(x, ctx: Ctx) -> np.ndarray:
    """x with b replaced by z = L^-1 b (block by block)."""
    out = x.copy()
    U = ctx.U(x).copy()
    for k in range(len(ctx.sizes)):
        ctx.put(U, k, ctx.block(U, k) @ np.linalg.inv(ctx.chol(x, k)).T)
    out[ctx.u_start :] = U.ravel()
    return out


def _negative_definite(H) -> bool:
    return NegFactor.of(H) is not None


def run_start(index, kind, x0, ctx: Ctx, par: str, priors, log_sd: float) -> Start:
    """Maximise the log joint from x0 and classify the end point (one BLAS thread)."""
    with serial_blas():
        return _run_start(index, kind, x0, ctx, par, priors, log_sd)


def _end(index, kind, status, x, ctx: Ctx, par, priors, iterations, dec) -> Start:
    return Start(
        index=index,
        kind=kind,
        status=status,
        log_joint=log_joint(x, ctx, par, priors),
        beta=x[: ctx.p].copy(),
        sigma2=float(np.exp(2.0 * x[ctx.p])),
        G=ctx.G(x),
        re_mode=ctx.re_mode(ctx.effects(x, par)),
        theta=lme4_theta(x, ctx),
        iterations=iterations,
        newton_decrement=dec,
        x=x,
    )


def _run_start(index, kind, x0, ctx: Ctx, par: str, priors, log_sd: float) -> Start:
    lo, hi = log_sd - BOX, log_sd + BOX
    ld = ctx.log_diag
    x0 = x0.copy()
    x0[ld] = np.clip(x0[ld], lo + 1.0, hi - 1.0)
    scale = _scale(x0, ctx, par)
    x_n, dec, its = _newton(x0, ctx, par, priors, lo, hi, scale, max_iter=20)
    if dec is not None and dec < DECREMENT_TOL and np.all(x_n[ld] > lo + 1.0):
        # a locally concave start: Newton alone reached an interior maximum
        return _end(index, kind, "interior", x_n, ctx, par, priors, its, dec)

    # L-BFGS-B runs in the centered coordinates (b, not z) for both forms: the non-centered
    # log joint is the centered one plus m log|L| (b = L z has Jacobian |L|^m), and in b the
    # problem is far better conditioned when the data inform the random effects.
    to_b, to_x = (_centered_u, _noncentered_u) if par == "noncentered" else (_same, _same)
    scale = _scale(to_b(x0, ctx), ctx, "centered")

    def negf(y):
        xb = y * scale
        v, g = log_joint_and_grad(xb, ctx, "centered", priors)
        if par == "noncentered":
            v += float(ctx.diag_levels @ xb[ld[1:]])
            g[ld[1:]] += ctx.diag_levels
        if not np.isfinite(v):
            return np.inf, np.zeros_like(y)
        return -v, -g * scale

    bounds = [(None, None)] * x0.size
    for i in ld:
        bounds[i] = (lo, hi)
    state = {"escaping": False, "collapsing": False, "it": 0}

    def stop_escaping(y):
        """Stop a run walking off to a variance -> infinity: past e^ESCAPE_AT sd(y), or (checked
        every 100 iterations) the variances have grown, the log joint still rises along the
        ray G -> infinity with b fixed, and the Hessian is not negative definite."""
        state["it"] += 1
        x = to_x(y * scale, ctx)
        low = ld[1:][x[ld[1:]] < x0[ld[1:]] - 4.0]
        if (
            state["it"] % 50 == 0
            and low.size
            and log_joint(_shift(x, ctx, par, low, -5.0), ctx, par, priors)
            > log_joint(x, ctx, par, priors) + 1.0
        ):
            state["collapsing"] = True  # a variance has shrunk by e^4 with the log joint rising
            raise StopIteration
        if np.any(x[ld[1:]] > log_sd + ESCAPE_AT):
            state["escaping"] = True
            raise StopIteration
        if (
            state["it"] % 100 == 0
            and np.any(x[ld[1:]] > x0[ld[1:]] + 1.0)
            and _rises_to_infinity(x, ctx, par, priors)
            and not _negative_definite(hessian(x, ctx, par, priors, _scale(x, ctx, par)))
        ):
            state["escaping"] = True
            raise StopIteration

    res = scipy.optimize.minimize(
        negf,
        to_b(x0, ctx) / scale,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        callback=stop_escaping,
        options={"maxiter": 5000, "maxfun": 10000, "ftol": 1e-11, "gtol": 1e-6, "maxcor": 20},
    )
    end = {"x": to_x(res.x * scale, ctx), "iters": int(res.nit), "dec": None}
    low = ld[1:][end["x"][ld[1:]] < lo + 1.0]

    def polish() -> bool:
        # several grouping factors: damped steps (they need more) across flat ridges
        crossed = isinstance(ctx, Crossed)
        x, dec, its = _newton(
            end["x"],
            ctx,
            par,
            priors,
            lo,
            hi,
            _scale(end["x"], ctx, par),
            max_iter=30 if crossed else 8,
            damp=crossed,
        )
        end.update(x=x, dec=dec, iters=end["iters"] + its)
        return dec is not None and dec < DECREMENT_TOL

    status = classify(
        to_zero=state["collapsing"] or bool(low.size),
        rising_to_zero=lambda: (
            state["collapsing"]
            or log_joint(_shift(end["x"], ctx, par, low, -5.0), ctx, par, priors)
            > log_joint(end["x"], ctx, par, priors) + 1.0
        ),
        escaping=state["escaping"] or bool(np.any(end["x"][ld[1:]] > hi - 1.0)),
        sigma_to_zero=bool(end["x"][ctx.p] < lo + 1.0),
        polish=polish,
        rising_to_infinity=lambda: _rises_to_infinity(end["x"], ctx, par, priors),
    )
    return _end(index, kind, status, end["x"], ctx, par, priors, end["iters"], end["dec"])


# ----------------------------------------------------------------------------------------------
# Starts and intervals of the all-parameter kernel


def point(
    ctx: Ctx, par: str, beta, sigma2: float, G: np.ndarray, b: np.ndarray, floor: float
) -> np.ndarray:
    """x at (beta, sigma^2, G, b) (b in the layout of U), as a start: the diagonal of each L_k
    floored at `floor`, correlations clipped to +-0.95."""
    x = np.zeros(ctx.size)
    x[: ctx.p] = beta
    x[ctx.p] = 0.5 * np.log(sigma2)
    U = np.array(b, float)
    for k, blk in enumerate(ctx.data.blocks):
        Gk = G[np.ix_(blk.cols, blk.cols)]
        n = len(blk.cols)
        sd = np.sqrt(np.maximum(np.diag(Gk), floor**2))
        root = np.sqrt(np.maximum(np.diag(Gk), 1e-300))  # roots first: their product > 0
        C = Gk / np.outer(root, root)
        C = np.where(np.eye(n) > 0, 1.0, np.clip(C, -0.95, 0.95))
        try:
            L = np.linalg.cholesky(sd[:, None] * C * sd[None, :])
        except np.linalg.LinAlgError:  # a singular EB G: correlations pulled in
            C = np.where(np.eye(n) > 0, 1.0, 0.5 * C)
            L = np.linalg.cholesky(sd[:, None] * C * sd[None, :])
        x[ctx.theta_slices[k]] = ctx.pack(L)
        if par == "noncentered":
            ctx.put(U, k, ctx.block(U, k) @ np.linalg.inv(L).T)
    x[ctx.u_start :] = U.ravel()
    return x


def exact_point(ctx: Ctx, par: str, s: Start) -> np.ndarray:
    """x of an end point given on the user's scale (G positive definite), without the
    flooring and clipping of `point`: the profiled kernel's mode in this kernel's coordinates."""
    x = np.zeros(ctx.size)
    x[: ctx.p] = s.beta
    x[ctx.p] = 0.5 * np.log(s.sigma2)
    U = ctx.from_modes(s.re_mode)
    for k, blk in enumerate(ctx.data.blocks):
        L = np.linalg.cholesky(s.G[np.ix_(blk.cols, blk.cols)])
        x[ctx.theta_slices[k]] = ctx.pack(L)
        if par == "noncentered":
            ctx.put(U, k, ctx.block(U, k) @ np.linalg.inv(L).T)
    x[ctx.u_start :] = U.ravel()
    return x


def pls_at(ctx: Ctx, theta: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """lme4's penalised least squares at theta: beta, the ML sigma^2, T and b (the layout of
    U): per group for one grouping factor, by the blocked factor for several."""
    d = ctx.data
    layout = Layout.of(d.blocks, d.q)
    if isinstance(ctx, Context):
        pls = solve(d.factors, layout, theta)
        return pls.beta, pls.sigma2("ml"), pls.T, pls.b
    sol = blocked.solve(eb_blocked.terms(d), theta)
    U = np.empty(ctx.n_re)
    for k, bk in enumerate(sol.b):  # blocked terms are data.blocks in order
        ctx.put(U, k, bk)
    return sol.beta, sol.sigma2("ml"), layout.T(theta), U


def make_starts(
    ctx: Ctx, par: str, eb: EBFit, k: int, seed: np.random.SeedSequence | int
) -> list[tuple[str, np.ndarray]]:
    """The EB-ML point with its conditional modes, then random relative covariance factors
    around it (beta, b re-solved by penalised least squares there, sigma^2 perturbed), drawn
    from `np.random.default_rng(seed)`."""
    d = ctx.data
    sd_y = float(d.y.std(ddof=1))
    floor = 0.05 * sd_y
    b_eb = ctx.from_modes(eb.modes if isinstance(ctx, Crossed) else eb.re_mode)
    starts = [("eb", point(ctx, par, eb.beta, eb.sigma2, eb.G, b_eb, floor))]
    rng = np.random.default_rng(seed)
    diag = Layout.of(d.blocks, d.q).diagonal
    base = np.array(eb.theta, float)
    base[diag] = np.maximum(base[diag], 0.05)
    while len(starts) < k:
        th = base.copy()
        th[diag] *= np.exp(rng.normal(0.0, 1.0, diag.sum()))
        th[~diag] += rng.normal(0.0, 0.3, (~diag).sum()) * base[diag].mean()
        beta, s2_ml, T, b = pls_at(ctx, th)
        s2 = s2_ml * float(np.exp(rng.normal(0.0, 0.3)))
        G = s2 * T @ T.T
        starts.append(("random", point(ctx, par, beta, s2, G, b, floor)))
    return starts


def intervals(x: np.ndarray, ctx: Ctx, par: str, priors, level: float) -> dict:
    """Wald intervals from the inverse negative Hessian at the mode x: fixed effects directly,
    sigma^2 and the variances through their logs, correlations through atanh."""
    F = NegFactor.of(hessian(x, ctx, par, priors, _scale(x, ctx, par)))
    if F is None:  # not negative definite to working precision (y of 1e30, say): no intervals
        return {}
    cov = F.global_cov()  # only the global block is read below
    z = float(sps.norm.ppf(0.5 + level / 2.0))
    d, p = ctx.data, ctx.p
    se_b = np.sqrt(np.diag(cov)[:p])
    out = {
        "fixed_effects": {
            n: {"estimate": float(b), "se": float(s), "ci": [float(b - z * s), float(b + z * s)]}
            for n, b, s in zip(d.fixed_names, x[:p], se_b, strict=True)
        }
    }
    ls, se_ls = float(x[p]), float(np.sqrt(cov[p, p]))
    with np.errstate(over="ignore"):
        out["sigma2"] = [float(np.exp(2 * (ls - z * se_ls))), float(np.exp(2 * (ls + z * se_ls)))]
    comps = {g.name: {"variances": {}, "correlations": {}} for g in d.groupings}
    for k, blk in enumerate(d.blocks):
        sl = ctx.theta_slices[k]
        var = comps[d.groupings[blk.factor].name]["variances"]
        cor = comps[d.groupings[blk.factor].name]["correlations"]

        def trans(t, k=k, sl=sl):
            y = x.copy()
            y[sl] = t
            L = ctx.chol(y, k)
            Gk = L @ L.T
            sd = np.sqrt(np.diag(Gk))
            iu = np.triu_indices(len(sd), 1)
            return np.concatenate([np.log(np.diag(Gk)), np.arctanh((Gk / np.outer(sd, sd))[iu])])

        t0 = x[sl]
        f0 = trans(t0)
        J = np.empty((f0.size, t0.size))
        for i in range(t0.size):
            e = np.zeros_like(t0)
            e[i] = 1e-6
            J[:, i] = (trans(t0 + e) - trans(t0 - e)) / 2e-6
        se = np.sqrt(np.maximum(np.diag(J @ cov[sl, sl] @ J.T), 0.0))
        n = len(blk.cols)
        with np.errstate(over="ignore"):
            for i, name in enumerate(blk.names):
                var[name] = [float(np.exp(f0[i] - z * se[i])), float(np.exp(f0[i] + z * se[i]))]
        for a, (i, j) in enumerate(zip(*np.triu_indices(n, 1), strict=True)):
            f, s = f0[n + a], se[n + a]
            cor[f"{blk.names[i]}:{blk.names[j]}"] = [
                float(np.tanh(f - z * s)),
                float(np.tanh(f + z * s)),
            ]
    out["variance_components"] = comps
    out["se"] = {"log_sigma": se_ls}
    return out
