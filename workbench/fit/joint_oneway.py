"""The one-way kernel of the joint MAP (`workbench.fit.joint_map.fit` chooses it for
`y ~ 1 + (1 | g)`): maximise the log joint over (mu, sigma, tau, group effects) in one go from
K starts, over the per-group sufficient statistics (O(m) per evaluation).

Objective: `objectives.oneway.log_joint` (h-likelihood without priors, or the PyMC density
with priors), in the centered or non-centered parametrization. Optimiser, per start: L-BFGS-B on
x = (mu, log sigma, log tau, u) (diagonally rescaled; log sigma and log tau boxed far from the
data's scale so that a run toward tau -> 0 or infinity stops at a box edge), then Newton steps
with the exact arrowhead Hessian where it is negative definite.

Every end point is classified by `joint_start.classify` (interior / collapse / boundary /
escape / not_converged) and returned as `joint_start.Start`.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize
from scipy import stats as sps

from workbench.fit.joint_start import DECREMENT_TOL, Start, classify
from workbench.model.data import Stats
from workbench.model.priors import Priors
from workbench.objectives import oneway as dens
from workbench.objectives.oneway import Arrowhead

BOX = 18.0  # log sigma, log tau boxed to log(sd(y)) +- BOX (a factor of 6.6e7 either way)
ESCAPE_AT = 8.0  # a run whose tau passes e^8 sd(y) (about 3000 sd(y)) is stopped as escaping
FIND_MAP_NOTE = (
    "pm.find_MAP maximises the same density with priors (constrained scale, no Jacobian) by one "
    "L-BFGS-B run from the model's initial point and reports success even where tau has "
    "collapsed towards 0; here every start is run to its end and classified, and a collapsed "
    "point is never reported as the MAP."
)
SCALE_NOTE = (
    "The joint mode is taken of the log joint density of (y, {effects}) given (mu, sigma, tau)"
    "{prior_part}; it is a mode on the sigma and tau scale (no Jacobian), so it is the same "
    "point on the sigma^2 and tau^2 scale, but not a mode of the log sigma scale or of the "
    "other parametrization."
)


# ----------------------------------------------------------------------------------------------
# One start (a pure function of plain arrays: it runs in worker processes)


def _newton_polish(x, st, par, priors, lo, hi, max_iter=50):
    """Damped Newton steps while the Hessian is negative definite; returns (x, decrement, its)."""
    value, g = dens.log_joint_and_grad(x, st, par, priors)
    dec = None
    for it in range(max_iter):
        H = dens.log_joint_hessian(x, st, par, priors)
        if not H.is_negative_definite():
            return x, None, it
        step = -H.solve(g)
        dec = float(g @ step)  # g' (-H)^-1 g >= 0
        if dec < 1e-20:
            return x, dec, it
        t = 1.0
        while t > 1e-10:
            x_new = x + t * step
            if np.all(x_new[1:3] > lo) and np.all(x_new[1:3] < hi):
                v_new, g_new = dens.log_joint_and_grad(x_new, st, par, priors)
                if np.isfinite(v_new) and v_new >= value - 1e-12 * abs(value):
                    break
            t *= 0.5
        else:
            return x, dec, it
        x, value, g = x_new, v_new, g_new
    H = dens.log_joint_hessian(x, st, par, priors)
    if not H.is_negative_definite():
        return x, None, max_iter
    return x, float(g @ -H.solve(g)), max_iter


def _unbounded_towards_zero(x, st, par, priors) -> bool:
    """Does the log joint keep rising as tau shrinks further from x (effects re-optimised)?"""
    mu, sigma, tau, _ = dens.unpack(x)

    def best_at(log_tau: float) -> float:
        t = np.exp(log_tau)
        a, _ = dens.conditional_effects(mu, sigma * sigma, t * t, st)
        u = a if par == "centered" else a / t
        return dens.log_joint(np.concatenate([[mu, np.log(sigma), log_tau], u]), st, par, priors)

    return best_at(x[2] - 5.0) > best_at(x[2]) + 1.0


def _rises_towards_infinity(x, st, par, priors) -> bool:
    """Does the log joint keep rising as tau grows with the group effects a_j held fixed?"""
    far = x.copy()
    far[2] += 5.0
    if par == "noncentered":
        far[3:] *= np.exp(-5.0)
    return dens.log_joint(far, st, par, priors) > dens.log_joint(x, st, par, priors)


def run_start(
    index: int, kind: str, x0: np.ndarray, st: Stats, par: str, priors: Priors | None, log_sd: float
) -> Start:
    """Maximise the log joint from x0 and classify the end point."""
    lo, hi = log_sd - BOX, log_sd + BOX
    x0 = x0.copy()
    x0[1:3] = np.clip(x0[1:3], lo + 1.0, hi - 1.0)
    H0 = dens.log_joint_hessian(x0, st, par, priors)
    if H0.is_negative_definite():  # locally concave start: Newton first (a few O(m) steps)
        x_n, dec, its = _newton_polish(x0, st, par, priors, lo, hi)
        if dec is not None and dec < DECREMENT_TOL and lo + 1.0 < x_n[2] < hi - 1.0:
            return _end(index, kind, "interior", x_n, its, dec, st, par, priors)
    diag = np.concatenate([H0.A.diagonal(), H0.d])
    scale = 1.0 / np.sqrt(np.maximum(-diag, 1e-8 * np.max(np.abs(diag))))
    scale[1:3] = 1.0  # keep log sigma / log tau unscaled so the box stays simple

    def negf(y):
        v, g = dens.log_joint_and_grad(y * scale, st, par, priors)
        if not np.isfinite(v):
            return np.inf, np.zeros_like(y)
        return -v, -g * scale

    bounds = [(None, None), (lo / scale[1], hi / scale[1]), (lo / scale[2], hi / scale[2])]
    bounds += [(None, None)] * st.m
    state = {"it": 0, "escaping": False}

    def stop_escaping(y):
        """Stop a run that is walking off to tau -> infinity: past e^ESCAPE_AT sd(y), or (checked
        every 100 iterations) tau has grown, the Hessian is not negative definite and the log
        joint still rises along the ray tau -> infinity."""
        state["it"] += 1
        if y[2] > log_sd + ESCAPE_AT:
            state["escaping"] = True
            raise StopIteration
        if state["it"] % 100 == 0 and y[2] > x0[2] + 1.0:
            x = y * scale
            if not dens.log_joint_hessian(
                x, st, par, priors
            ).is_negative_definite() and _rises_towards_infinity(x, st, par, priors):
                state["escaping"] = True
                raise StopIteration

    res = optimize.minimize(
        negf,
        x0 / scale,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        callback=stop_escaping,
        options={"maxiter": 5000, "maxfun": 10000, "ftol": 1e-12, "gtol": 1e-8, "maxcor": 20},
    )
    end = {"x": res.x * scale, "iters": int(res.nit), "dec": None}

    def polish() -> bool:
        x, dec, newton_its = _newton_polish(end["x"], st, par, priors, lo, hi)
        end.update(x=x, dec=dec, iters=end["iters"] + newton_its)
        return dec is not None and dec < DECREMENT_TOL

    x = end["x"]
    status = classify(
        to_zero=bool(x[2] < lo + 1.0),
        rising_to_zero=lambda: _unbounded_towards_zero(x, st, par, priors),
        escaping=state["escaping"],
        sigma_to_zero=bool(x[1] < lo + 1.0),
        polish=polish,
        rising_to_infinity=lambda: _rises_towards_infinity(end["x"], st, par, priors),
    )
    return _end(index, kind, status, end["x"], end["iters"], end["dec"], st, par, priors)


def _end(index, kind, status, x, iterations, decrement, st, par, priors) -> Start:
    """The end point x = (mu, log sigma, log tau, u) as the estimator's `Start` (user's scale:
    beta = (mu,), G = [[tau^2]], re_mode the group effects a_j, lme4's theta = tau / sigma)."""
    return Start(
        index=index,
        kind=kind,
        status=status,
        log_joint=dens.log_joint(x, st, par, priors),
        beta=np.array([float(x[0])]),
        sigma2=float(np.exp(2.0 * x[1])),
        G=np.array([[float(np.exp(2.0 * x[2]))]]),
        re_mode=dens.group_effects(x, par)[:, None],
        theta=np.array([float(np.exp(x[2] - x[1]))]),
        iterations=iterations,
        newton_decrement=decrement,
        x=x,
    )


# ----------------------------------------------------------------------------------------------
# Starts


def make_starts(
    st: Stats, par: str, eb_point: tuple[float, float, float], k: int, seed: int, sd_y: float
) -> list[tuple[str, np.ndarray]]:
    """K starting points: the EB point with its conditional modes, the pooled fit, the no-pooling
    fit, and random points around the EB point drawn from `seed`."""
    mu_eb, s_eb, t_eb = eb_point
    t_floor = (0.05 * sd_y) ** 2
    pooled_mean = float(st.n @ st.ybar / st.N)

    def point(mu, s, t, a):
        u = a if par == "centered" else a / np.sqrt(t)
        return np.concatenate([[mu, 0.5 * np.log(s), 0.5 * np.log(t)], u])

    t_eb_pos = max(t_eb, t_floor)
    a_eb, _ = dens.conditional_effects(mu_eb, s_eb, t_eb_pos, st)
    starts = [
        ("eb", point(mu_eb, s_eb, t_eb_pos, a_eb)),
        ("pooled", point(pooled_mean, sd_y**2, t_floor, np.zeros(st.m))),
        (
            "no_pooling",
            point(
                pooled_mean,
                st.W / max(st.N - st.m, 1.0),
                max(float(np.var(st.ybar)), t_floor),
                st.ybar - pooled_mean,
            ),
        ),
    ]
    rng = np.random.default_rng(seed)
    se_mu = np.sqrt(s_eb / st.N + t_eb_pos / st.m)
    while len(starts) < k:
        mu = mu_eb + 2.0 * se_mu * rng.standard_normal()
        s = s_eb * np.exp(rng.normal(0.0, 0.7))
        t = t_eb_pos * np.exp(rng.normal(0.0, 1.5))
        a, v = dens.conditional_effects(mu, s, t, st)
        a = a + np.sqrt(v) * rng.standard_normal(st.m)
        starts.append(("random", point(mu, s, t, a)))
    return starts[:k]


# ----------------------------------------------------------------------------------------------


def intervals(
    x: np.ndarray,
    st: Stats,
    par: str,
    priors: Priors | None,
    labels: tuple[str, ...],
    level: float,
) -> dict:
    """Wald intervals from the Hessian at the mode: mu directly, sigma^2 and tau^2 through
    log sigma and log tau, group means mu_j = mu + a_j by the delta method."""
    H = dens.log_joint_hessian(x, st, par, priors)
    neg = Arrowhead(-H.A, -H.B, -H.d)
    top, border, diag_u = neg.inverse_blocks()
    zq = float(sps.norm.ppf(0.5 + level / 2.0))
    mu, ls, lt = x[:3]
    tau = float(np.exp(lt))
    u = x[3:]
    if par == "centered":
        var_a = diag_u
        var_mean = top[0, 0] + diag_u + 2.0 * border[:, 0]
    else:  # a = tau z: gradient of a_j in (log tau, z_j) is (tau z_j, tau)
        var_a = (tau * u) ** 2 * top[2, 2] + tau**2 * diag_u + 2.0 * tau**2 * u * border[:, 2]
        var_mean = (
            top[0, 0]
            + (tau * u) ** 2 * top[2, 2]
            + tau**2 * diag_u
            + 2.0 * tau * u * top[0, 2]
            + 2.0 * tau * border[:, 0]
            + 2.0 * tau**2 * u * border[:, 2]
        )
    a = dens.group_effects(x, par)
    se_mu, se_ls, se_lt = np.sqrt(np.diag(top))
    with np.errstate(over="ignore"):  # a flat direction: an infinite end, null in the JSON
        ci_s2 = [float(np.exp(2 * (ls - zq * se_ls))), float(np.exp(2 * (ls + zq * se_ls)))]
        ci_t2 = [float(np.exp(2 * (lt - zq * se_lt))), float(np.exp(2 * (lt + zq * se_lt)))]
    out = {
        "mu": [float(mu - zq * se_mu), float(mu + zq * se_mu)],
        "sigma2": ci_s2,
        "tau2": ci_t2,
        "se": {"mu": float(se_mu), "log_sigma": float(se_ls), "log_tau": float(se_lt)},
        "random_effects": {
            lab: {
                "mode": float(a[j]),
                "sd": float(np.sqrt(var_a[j])),
                "group_mean": float(mu + a[j]),
                "group_mean_ci": [
                    float(mu + a[j] - zq * np.sqrt(var_mean[j])),
                    float(mu + a[j] + zq * np.sqrt(var_mean[j])),
                ],
            }
            for j, lab in enumerate(labels)
        },
    }
    return out
