"""Two-stage empirical Bayes: ML or REML for (mu, sigma^2, tau^2) from the marginal likelihood,
then the conditional modes and SDs of the group effects.

Objective + optimiser, as lme4 does it: the variances are profiled down to the ratio
gamma = tau^2 / sigma^2 (mu and sigma^2 have closed forms given gamma), and the 1-D profiled
deviance is minimised over gamma >= 0 by bracketing the roots of its analytic derivative on a
log grid and polishing them with Brent's method; gamma = 0 (the boundary) is a candidate too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize
from scipy import stats as sps

from workbench.model.data import GroupedData
from workbench.objectives import oneway as dens
from workbench.objectives.oneway import Stats

CHI2_95 = float(sps.chi2.ppf(0.95, 1))


@dataclass(frozen=True)
class EBFit:
    """Result of an ML or REML fit.

    `cov` is the inverse observed information on the (mu, sigma^2, tau^2) scale (the seed
    lecture's Hessian; for REML the restricted likelihood's for the variances). `se` reports its
    square roots for sigma^2 and tau^2, and for mu lme4's standard error, the GLS one given the
    variances, sqrt(1 / sum n_j / (sigma^2 + n_j tau^2)); the two agree for balanced data and
    differ in the fourth digit or later otherwise (`se_observed` keeps the full-inverse values).
    `ci_profile` holds 95% profile-likelihood intervals for sigma and tau."""

    method: str  # "ml" or "reml"
    mu: float
    sigma2: float
    tau2: float
    loglik: float  # marginal log likelihood at the estimate
    reml_criterion: float | None  # -2 l_R, REML only
    se: dict[str, float | None]
    se_observed: dict[str, float | None]
    cov: np.ndarray
    ci_profile: dict[str, tuple[float, float]]
    boundary: bool
    labels: tuple[str, ...]
    re_mode: np.ndarray  # conditional modes of a_j = mu_j - mu
    re_sd: np.ndarray  # conditional SDs of a_j
    notes: tuple[str, ...] = field(default=())

    @property
    def group_means(self) -> np.ndarray:
        return self.mu + self.re_mode

    def to_dict(self) -> dict:
        out = {
            "mu": self.mu,
            "sigma2": self.sigma2,
            "tau2": self.tau2,
            "sigma": float(np.sqrt(self.sigma2)),
            "tau": float(np.sqrt(self.tau2)),
        }
        if self.method == "ml":
            out["loglik"] = self.loglik
        else:
            out["reml_criterion"] = self.reml_criterion
            out["loglik_at_reml"] = self.loglik
        out.update(
            {
                "se": dict(self.se),
                "se_observed_information": dict(self.se_observed),
                "ci_profile": {k: list(v) for k, v in self.ci_profile.items()},
                "ci_level": 0.95,
                "boundary": self.boundary,
                "random_effects": {
                    lab: {"mode": float(a), "sd": float(s), "group_mean": float(self.mu + a)}
                    for lab, a, s in zip(self.labels, self.re_mode, self.re_sd, strict=True)
                },
                "notes": list(self.notes),
            }
        )
        return out


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


def profiled_deviance(gamma: float, st: Stats, reml: bool) -> float:
    """-2 x (log likelihood or REML log likelihood) maximised over mu and sigma^2 given gamma."""
    w, _, _, S = _profile_parts(gamma, st)
    dof = st.N - 1.0 if reml else st.N
    dev = dof * (dens.LOG_2PI + np.log(S / dof) + 1.0) + np.log1p(st.n * gamma).sum()
    if reml:
        dev += np.log(w.sum())
    return float(dev)


def profiled_deviance_grad(gamma: float, st: Stats, reml: bool) -> float:
    """d/dgamma of `profiled_deviance` (analytic)."""
    w, _, r, S = _profile_parts(gamma, st)
    dq = -float((w * w) @ (r * r))
    dof = st.N - 1.0 if reml else st.N
    out = dof * dq / S + float(w.sum())
    if reml:
        out += -float(w @ w) / float(w.sum())
    return out


def _estimate(st: Stats, reml: bool) -> tuple[float, float, float]:
    gamma = argmax_nonneg(
        lambda g: -profiled_deviance(g, st, reml),
        lambda g: -profiled_deviance_grad(g, st, reml),
        1e-10,
        1e8,
        allow_zero=True,
    )
    _, mu, _, S = _profile_parts(gamma, st)
    s = S / (st.N - 1.0 if reml else st.N)
    return mu, s, gamma * s


# ----------------------------------------------------------------------------------------------
# Profile-likelihood intervals for sigma and tau


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


def profile_intervals(
    st: Stats, s_hat: float, t_hat: float, reml: bool, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Profile-likelihood intervals for sigma and tau: {v : 2 (l_max - l_p(v)) <= chi2_1(level)}."""
    val, grad = _criterion(st, reml)
    q = float(sps.chi2.ppf(level, 1))
    lmax = val(s_hat, t_hat)
    scale = st.W / st.N + float(np.var(st.ybar))

    last = {"t": t_hat, "s": s_hat}  # warm starts: the outer root search moves in small steps

    def prof_sigma(s: float) -> float:
        t = argmax_nonneg(
            lambda t: val(s, t),
            lambda t: grad(s, t)[1],
            1e-10 * scale,
            1e6 * scale,
            allow_zero=True,
            guess=last["t"],
        )
        last["t"] = t if t > 0 else last["t"]
        return val(s, t)

    def prof_tau(t: float) -> float:
        s = argmax_nonneg(
            lambda s: val(s, t),
            lambda s: grad(s, t)[0],
            1e-8 * scale,
            1e6 * scale,
            allow_zero=False,
            guess=last["s"],
        )
        last["s"] = s
        return val(s, t)

    def bounds(prof, v_hat: float, allow_zero: bool) -> tuple[float, float]:
        def excess(sd: float) -> float:
            return 2.0 * (lmax - prof(sd * sd)) - q

        sd_hat = np.sqrt(v_hat)
        if allow_zero and (sd_hat == 0.0 or excess(0.0) <= 0.0):
            lo = 0.0
        else:
            a = sd_hat * 0.5
            while excess(a) <= 0.0:
                a *= 0.5
            lo = optimize.brentq(excess, a, sd_hat, xtol=1e-10 * max(sd_hat, 1e-300))
        ref = sd_hat if sd_hat > 0 else np.sqrt(scale) * 1e-3
        b = ref * 2.0
        while excess(b) <= 0.0:
            b *= 2.0
        hi = optimize.brentq(excess, ref if sd_hat > 0 else 0.0, b, xtol=1e-10 * b)
        return float(lo), float(hi)

    return {"sigma": bounds(prof_sigma, s_hat, False), "tau": bounds(prof_tau, t_hat, True)}


# ----------------------------------------------------------------------------------------------


def fit(
    data: GroupedData | Stats,
    method: str = "ml",
    labels: tuple[str, ...] | None = None,
    intervals: bool = True,
) -> EBFit:
    """Fit the one-way model by ML or REML; conditional modes/SDs of the group effects."""
    if method not in ("ml", "reml"):
        raise ValueError("method must be 'ml' or 'reml'")
    st = data if isinstance(data, Stats) else Stats.of(data)
    if labels is None:
        labels = data.labels if isinstance(data, GroupedData) else tuple(map(str, range(st.m)))
    reml = method == "reml"
    mu, s, t = _estimate(st, reml)
    boundary = t == 0.0
    notes: list[str] = []
    if boundary:
        notes.append(
            "tau^2 is estimated at the boundary 0: the data show no group variation "
            "beyond the residual noise, the group effects are all shrunk to 0, and "
            "tau^2 has no standard error."
        )
    if reml:
        hvar = dens.restricted_hessian(s, t, st)
        mu_var = 1.0 / float((st.n / (s + st.n * t)).sum())
        cov = np.zeros((3, 3))
        cov[0, 0] = mu_var
        idx = [1] if boundary else [1, 2]
        cov[np.ix_(idx, idx)] = np.linalg.inv(
            -hvar[np.ix_([i - 1 for i in idx], [i - 1 for i in idx])]
        )
        crit = -2.0 * dens.restricted_loglik(s, t, st)
    else:
        h = dens.marginal_hessian((mu, s, t), st)
        idx = [0, 1] if boundary else [0, 1, 2]
        cov = np.zeros((3, 3))
        cov[np.ix_(idx, idx)] = np.linalg.inv(-h[np.ix_(idx, idx)])
        crit = None
    se_obs: dict[str, float | None] = {
        k: float(np.sqrt(cov[i, i])) for i, k in enumerate(("mu", "sigma2", "tau2"))
    }
    if boundary:
        se_obs["tau2"] = None
        cov[2, :] = cov[:, 2] = np.nan
    se = {**se_obs, "mu": float(np.sqrt(1.0 / (st.n / (s + st.n * t)).sum()))}
    a, v = dens.conditional_effects(mu, s, t, st)
    ci = profile_intervals(st, s, t, reml) if intervals else {}
    return EBFit(
        method=method,
        mu=mu,
        sigma2=s,
        tau2=t,
        loglik=dens.marginal_loglik((mu, s, t), st),
        reml_criterion=crit,
        se=se,
        se_observed=se_obs,
        cov=cov,
        ci_profile=ci,
        boundary=boundary,
        labels=tuple(labels),
        re_mode=a,
        re_sd=np.sqrt(v),
        notes=tuple(notes),
    )
