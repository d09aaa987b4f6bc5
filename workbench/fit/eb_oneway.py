"""The one-way kernel of empirical Bayes (`y ~ 1 + (1 | g)`): pure functions of the per-group
sufficient statistics (`model.data.Stats`), O(m), no group factors and no O(N) work.
`fit.eb.fit` calls `fit_stats` when `data.is_oneway`; `fit.profile.profile` calls `profile_ml`.

Objective + optimiser, as lme4 does it: the variances are profiled down to the ratio
gamma = tau^2 / sigma^2 = theta^2 (mu and sigma^2 have closed forms given gamma), and the 1-D
profiled deviance is minimised over gamma >= 0 by bracketing the roots of its analytic
derivative on a log grid and polishing them with Brent's method; gamma = 0 (the boundary) is a
candidate too. The end point is then checked as `optimiser.minimise` checks its own (derivative
and curvature in theta, or the one-sided change inward from theta = 0) and recorded in an
`Optimum`.

Scale: statistics whose spread lies outside 2^+-100 are fitted on y / 2^k (exact in binary
floating point) and the results scaled back, so sigma^2 tau^2 products and the observed
information neither overflow nor underflow for |y| in the formula route's 1e-100..1e100.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize
from scipy import stats as sps

from workbench.fit import optimiser as opt
from workbench.fit.optimiser import Optimum
from workbench.model.data import Stats
from workbench.objectives import oneway as dens

CHI2_95 = float(sps.chi2.ppf(0.95, 1))
GAMMA_RANGE = (1e-10, 1e8)  # the log grid of gamma = tau^2 / sigma^2
MAX_DOUBLINGS = 200  # steps out looking for a profile interval's upper end
BOUNDARY_NOTE = (
    "tau^2 is estimated at the boundary 0: the data show no group variation beyond the "
    "residual noise, the group effects are all shrunk to 0, and tau^2 has no standard error."
)


# ----------------------------------------------------------------------------------------------
# 1-D maximisation on [0, inf) or (0, inf) from an analytic derivative


def argmax_nonneg(
    fun, grad, lo: float, hi: float, allow_zero: bool, npts: int = 61, guess: float | None = None
) -> float:
    """Global maximiser of a smooth fun on a log grid [lo, hi] (plus 0 when allowed): every
    sign change + -> - of grad is polished by Brent's method, then the best candidate wins.

    With a `guess` (a neighbouring problem's answer), a sign change of grad within a factor 4
    of it is polished directly and only 0 is compared with it; the grid scan is the fallback."""
    if guess is not None and guess > 0:
        a, b = max(guess / 4.0, lo), min(guess * 4.0, hi)
        if a < b and grad(a) > 0 and grad(b) <= 0:
            root = optimize.brentq(grad, a, b, xtol=1e-300, rtol=1e-15, maxiter=200)
            if allow_zero and fun(0.0) > fun(root):
                return 0.0
            return float(root)
    grid = np.geomspace(lo, hi, npts)
    g = np.array([grad(v) for v in grid])
    cands = [grid[0], grid[-1]] + ([0.0] if allow_zero else [])
    for i in np.flatnonzero((g[:-1] > 0) & (g[1:] <= 0)):
        cands.append(
            optimize.brentq(grad, grid[i], grid[i + 1], xtol=1e-300, rtol=1e-15, maxiter=200)
        )
    if allow_zero and g[0] <= 0:  # the maximum may sit between 0 and the first grid point
        g0 = grad(0.0)
        if g0 > 0:
            cands.append(optimize.brentq(grad, 0.0, grid[0], xtol=1e-300, rtol=1e-15))
    vals = [fun(c) for c in cands]
    return float(cands[int(np.argmax(vals))])


# ----------------------------------------------------------------------------------------------
# The profiled objective in gamma = tau^2 / sigma^2


def _profile_parts(gamma: float, st: Stats):
    w = st.n / (1.0 + st.n * gamma)
    mu = float(w @ st.ybar / w.sum())
    r = st.ybar - mu
    S = st.W + float(w @ (r * r))
    return w, mu, r, S


def _dof(st: Stats, reml: bool) -> float:
    return st.N - 1.0 if reml else st.N


def profiled_deviance(gamma: float, st: Stats, reml: bool) -> float:
    """lme4's ML deviance or REML criterion at gamma: -2 x (log likelihood or REML log
    likelihood) maximised over mu and sigma^2 given gamma."""
    w, _, _, S = _profile_parts(gamma, st)
    dof = _dof(st, reml)
    dev = dof * (dens.LOG_2PI + np.log(S / dof) + 1.0) + np.log1p(st.n * gamma).sum()
    if reml:
        dev += np.log(w.sum())
    return float(dev)


def profiled_deviance_grad(gamma: float, st: Stats, reml: bool) -> float:
    """d/dgamma of `profiled_deviance` (analytic)."""
    w, _, r, S = _profile_parts(gamma, st)
    dq = -float((w * w) @ (r * r))
    out = _dof(st, reml) * dq / S + float(w.sum())
    if reml:
        out += -float(w @ w) / float(w.sum())
    return out


# ----------------------------------------------------------------------------------------------
# Scaling


def _power_of_two(st: Stats) -> float:
    """2^k near the spread of y when it lies outside 2^+-100, else 1 (no rescaling)."""
    with np.errstate(over="ignore", under="ignore"):
        top = max(float(np.abs(st.ybar).max()), math.sqrt(float(st.wss.max()) / 2.0), 1e-300)
    k = round(math.log2(top))
    return 2.0**k if abs(k) > 100 else 1.0


def _scaled(st: Stats, c: float) -> Stats:
    return st if c == 1.0 else Stats(st.n, st.ybar / c, st.wss / (c * c))


def marginal_loglik(st: Stats, mu: float, s: float, t: float) -> float:
    """The marginal log likelihood at (mu, sigma^2, tau^2), computed on the rescaled statistics."""
    c = _power_of_two(st)
    th = (mu / c, s / (c * c), t / (c * c))
    return dens.marginal_loglik(th, _scaled(st, c)) - st.N * math.log(c)


# ----------------------------------------------------------------------------------------------
# The fit


@dataclass(frozen=True)
class Kernel:
    """Everything the one-way kernel computes for `fit.eb.EBFit` (user's scale)."""

    reml: bool
    gamma: float  # tau^2 / sigma^2 = theta^2
    mu: float
    sigma2: float
    tau2: float
    objective: float  # ML deviance or REML criterion
    loglik_marginal: float  # marginal log likelihood at (mu, sigma2, tau2)
    beta_var: float  # lme4's vcov: 1 / sum n_j / (sigma^2 + n_j tau^2)
    re_mode: np.ndarray  # (m,) conditional modes of a_j given (mu, sigma2, tau2)
    re_var: np.ndarray  # (m,) conditional variances sigma^2 tau^2 / (sigma^2 + n_j tau^2)
    se: dict[str, float | None]  # lme4's se of mu, observed-information se of the variances
    se_observed: dict[str, float | None]  # all from the inverse observed information
    cov: np.ndarray  # (3, 3) inverse observed information on (mu, sigma^2, tau^2)
    optimum: Optimum
    notes: tuple[str, ...] = field(default=())

    @property
    def boundary(self) -> bool:
        return self.gamma == 0.0


class _Count:
    """Counts evaluations of the objective and its derivative (for `Optimum.n_evals`)."""

    def __init__(self, st: Stats, reml: bool):
        self.st, self.reml, self.n = st, reml, 0

    def f(self, gamma: float) -> float:
        self.n += 1
        return profiled_deviance(gamma, self.st, self.reml)

    def g(self, gamma: float) -> float:
        self.n += 1
        return profiled_deviance_grad(gamma, self.st, self.reml)


def _certify(c: _Count, gamma: float) -> Optimum:
    """The checks `optimiser.minimise` makes, in lme4's theta = sqrt(gamma): at an interior
    point the exact derivative and the curvature (central differences of it); at gamma = 0 the
    one-sided derivative in gamma and the change of the objective inward (`INWARD_STEPS`)."""
    theta = math.sqrt(gamma)
    f0 = c.f(gamma)
    if gamma == 0.0:
        g0 = c.g(0.0)
        inward = min(c.f(s * s) - f0 for s in opt.INWARD_STEPS)
        ok = inward >= -opt.DECREASE_TOL and g0 >= -opt.GRADIENT_TOL
        msg = (
            f"converged: boundary theta = 0 (one-sided derivative in tau^2/sigma^2 at 0: "
            f"{g0:.3g}; no descent inward)"
            if ok
            else f"not a minimum: the objective falls inward from theta = 0 by {-inward:.3g}"
        )
        return Optimum(
            x=np.zeros(1),
            fun=f0,
            n_evals=c.n,
            restarts=0,
            converged=ok,
            gradient_max=0.0,
            newton_decrement=0.0,
            min_curvature=0.0,
            on_bound=(0,),
            inward_change=float(inward),
            message=msg,
        )

    def dtheta(t: float) -> float:  # d objective / d theta = 2 theta d objective / d gamma
        return 2.0 * t * c.g(t * t)

    g = dtheta(theta)
    h = 1e-5 * max(1.0, theta)
    H = (dtheta(theta + h) - dtheta(max(theta - h, 0.0))) / (theta + h - max(theta - h, 0.0))
    dec, flat = opt.stationarity(np.array([g]), np.array([[H]]))
    ok = dec <= opt.DECREMENT_TOL and flat <= opt.GRADIENT_TOL and H >= opt.CURVATURE_TOL
    msg = (
        "converged: exact derivative ~0 and positive curvature at the 1-D optimum"
        if ok
        else f"not a minimum: derivative {g:.3g}, curvature {H:.3g} in theta"
    )
    return Optimum(
        x=np.array([theta]),
        fun=f0,
        n_evals=c.n,
        restarts=0,
        converged=ok,
        gradient_max=abs(g),
        newton_decrement=dec,
        min_curvature=H,
        on_bound=(),
        inward_change=0.0,
        message=msg,
    )


def estimate(st: Stats, reml: bool) -> tuple[float, Optimum]:
    """gamma minimising the profiled deviance over [0, inf), and its checked `Optimum`."""
    c = _Count(st, reml)
    gamma = argmax_nonneg(lambda g: -c.f(g), lambda g: -c.g(g), *GAMMA_RANGE, allow_zero=True)
    return gamma, _certify(c, gamma)


def _information(st: Stats, mu: float, s: float, t: float, reml: bool):
    """(se, se_observed, cov) from the observed information on (mu, sigma^2, tau^2); REML: the
    restricted likelihood's for the variances, lme4's GLS variance for mu."""
    boundary = t == 0.0
    mu_var = 1.0 / float((st.n / (s + st.n * t)).sum())
    cov = np.zeros((3, 3))
    if reml:
        hvar = dens.restricted_hessian(s, t, st)
        cov[0, 0] = mu_var
        idx = [1] if boundary else [1, 2]
        sub = [i - 1 for i in idx]
        cov[np.ix_(idx, idx)] = np.linalg.inv(-hvar[np.ix_(sub, sub)])
    else:
        h = dens.marginal_hessian((mu, s, t), st)
        idx = [0, 1] if boundary else [0, 1, 2]
        cov[np.ix_(idx, idx)] = np.linalg.inv(-h[np.ix_(idx, idx)])
    se_obs: dict[str, float | None] = {
        k: math.sqrt(float(cov[i, i])) for i, k in enumerate(("mu", "sigma2", "tau2"))
    }
    if boundary:
        se_obs["tau2"] = None
        cov[2, :] = cov[:, 2] = np.nan
    return {**se_obs, "mu": math.sqrt(mu_var)}, se_obs, cov


def fit_stats(st: Stats, method: str) -> Kernel:
    """ML or REML from the sufficient statistics; conditional modes and variances of the group
    effects given the estimates (lme4's ranef(condVar = TRUE))."""
    if method not in ("ml", "reml"):
        raise ValueError("method must be 'ml' or 'reml'")
    reml = method == "reml"
    c = _power_of_two(st)
    ss = _scaled(st, c)
    gamma, optimum = estimate(ss, reml)
    _, mu, _, S = _profile_parts(gamma, ss)
    s = S / _dof(ss, reml)
    t = gamma * s
    se, se_obs, cov = _information(ss, mu, s, t, reml)
    a, v = dens.conditional_effects(mu, s, t, ss)
    dev_shift = 2.0 * _dof(st, reml) * math.log(c)
    if c != 1.0:
        unit = (c, c * c, c * c)
        se = {k: None if x is None else x * u for (k, x), u in zip(se.items(), unit, strict=True)}
        se_obs = {
            k: None if x is None else x * u for (k, x), u in zip(se_obs.items(), unit, strict=True)
        }
        with np.errstate(over="ignore"):  # var(sigma^2) ~ y^4 is not a float64 beyond ~1e77
            cov = cov * np.outer(unit, unit)
        optimum = dataclasses.replace(optimum, fun=optimum.fun + dev_shift)
    return Kernel(
        reml=reml,
        gamma=gamma,
        mu=mu * c,
        sigma2=s * c * c,
        tau2=t * c * c,
        objective=profiled_deviance(gamma, ss, reml) + dev_shift,
        loglik_marginal=dens.marginal_loglik((mu, s, t), ss) - st.N * math.log(c),
        beta_var=c * c / float((ss.n / (s + ss.n * t)).sum()),
        re_mode=a * c,
        re_var=v * c * c,
        se=se,
        se_observed=se_obs,
        cov=cov,
        optimum=optimum,
        notes=(BOUNDARY_NOTE,) if gamma == 0.0 else (),
    )


# ----------------------------------------------------------------------------------------------
# Profile-likelihood intervals for sigma and tau


@dataclass(frozen=True)
class End:
    """One parameter's interval: its ends, whether each is the boundary 0, the other parameter
    (sd) profiled at each end, and the excess 2 (l_max - l_p) - cut there (~0 at a root)."""

    lower: float
    upper: float
    lower_at_bound: bool
    upper_at_bound: bool
    lower_other: float
    upper_other: float
    lower_excess: float
    upper_excess: float


def _criterion(st: Stats, reml: bool):
    """(value, gradient) in (sigma^2, tau^2) with mu profiled out: l or l_R."""
    if reml:
        return (
            lambda s, t: dens.restricted_loglik(s, t, st),
            lambda s, t: dens.restricted_grad(s, t, st),
        )

    def val(s, t):
        return dens.marginal_loglik((dens.gls_mean(s, t, st), s, t), st)

    def grad(s, t):
        return dens.marginal_grad((dens.gls_mean(s, t, st), s, t), st)[1:]

    return val, grad


def profile_ends(
    st: Stats, s_hat: float, t_hat: float, reml: bool, level: float = 0.95
) -> tuple[dict[str, End], int]:
    """Profile-likelihood intervals for sigma and tau: {v : 2 (l_max - l_p(v)) <= chi2_1(level)},
    with the evaluations of l used (l: marginal; with `reml`, the restricted likelihood)."""
    val0, grad = _criterion(st, reml)
    count = [0]

    def val(s, t):
        count[0] += 1
        return val0(s, t)

    q = float(sps.chi2.ppf(level, 1))
    lmax = val(s_hat, t_hat)
    scale = st.W / st.N + float(np.var(st.ybar))
    last = {"t": t_hat, "s": s_hat}  # warm starts: the outer root search moves in small steps

    def prof_sigma(s: float) -> tuple[float, float]:
        t = argmax_nonneg(
            lambda t: val(s, t),
            lambda t: grad(s, t)[1],
            1e-10 * scale,
            1e6 * scale,
            allow_zero=True,
            guess=last["t"],
        )
        last["t"] = t if t > 0 else last["t"]
        return val(s, t), t

    def prof_tau(t: float) -> tuple[float, float]:
        s = argmax_nonneg(
            lambda s: val(s, t),
            lambda s: grad(s, t)[0],
            1e-8 * scale,
            1e6 * scale,
            allow_zero=False,
            guess=last["s"],
        )
        last["s"] = s
        return val(s, t), s

    def bounds(prof, v_hat: float, allow_zero: bool) -> End:
        seen: dict[float, tuple[float, float]] = {}  # the root search's points, reused at the ends

        def at(sd: float) -> tuple[float, float]:
            if sd not in seen:
                seen[sd] = prof(sd * sd)
            return seen[sd]

        def excess(sd: float) -> float:
            return 2.0 * (lmax - at(sd)[0]) - q

        def other(sd: float) -> float:
            return float(np.sqrt(at(sd)[1]))

        sd_hat = float(np.sqrt(v_hat))
        lo_bound = allow_zero and (sd_hat == 0.0 or excess(0.0) <= 0.0)
        if lo_bound:
            lo = 0.0
        else:
            a = sd_hat * 0.5
            while excess(a) <= 0.0:
                a *= 0.5
            lo = optimize.brentq(excess, a, sd_hat, xtol=1e-10 * max(sd_hat, 1e-300))
        ref = sd_hat if sd_hat > 0 else np.sqrt(scale) * 1e-3
        b = ref * 2.0
        for _ in range(MAX_DOUBLINGS):
            if excess(b) > 0.0:
                hi = optimize.brentq(excess, ref if sd_hat > 0 else 0.0, b, xtol=1e-10 * b)
                break
            b *= 2.0
        else:
            hi = math.nan
        return End(
            lower=float(lo),
            upper=float(hi),
            lower_at_bound=lo_bound,
            upper_at_bound=False,
            lower_other=other(lo),
            upper_other=other(hi) if np.isfinite(hi) else math.nan,
            lower_excess=excess(lo),
            upper_excess=excess(hi) if np.isfinite(hi) else math.nan,
        )

    ends = {"sigma": bounds(prof_sigma, s_hat, False), "tau": bounds(prof_tau, t_hat, True)}
    return ends, count[0]


@dataclass(frozen=True)
class MLProfile:
    """The ML profile of the one-way model on the user's scale (for `fit.profile.profile`)."""

    sigma: float  # ML estimates
    tau: float
    deviance_min: float  # ML deviance at them
    ends: dict[str, End]
    n_evals: int


def profile_ml(st: Stats, level: float = 0.95) -> MLProfile:
    """Profile the ML likelihood (lme4 profiles it for a REML fit too) from the statistics."""
    c = _power_of_two(st)
    ss = _scaled(st, c)
    gamma, _ = estimate(ss, False)
    _, _, _, S = _profile_parts(gamma, ss)
    s = S / ss.N
    ends, n = profile_ends(ss, s, gamma * s, False, level)
    if c != 1.0:
        ends = {
            k: dataclasses.replace(
                e,
                lower=e.lower * c,
                upper=e.upper * c,
                lower_other=e.lower_other * c,
                upper_other=e.upper_other * c,
            )
            for k, e in ends.items()
        }
    return MLProfile(
        sigma=math.sqrt(s) * c,
        tau=math.sqrt(gamma * s) * c,
        deviance_min=profiled_deviance(gamma, ss, False) + 2.0 * st.N * math.log(c),
        ends=ends,
        n_evals=n,
    )


def profile_intervals(
    st: Stats, s_hat: float, t_hat: float, reml: bool, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """{"sigma": (lo, hi), "tau": (lo, hi)} of `profile_ends`."""
    ends, _ = profile_ends(st, s_hat, t_hat, reml, level)
    return {k: (e.lower, e.upper) for k, e in ends.items()}
