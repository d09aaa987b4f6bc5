"""Where the log densities live: the log joint and the marginal (and restricted) log likelihood
of the one-way model, as numpy functions of the sufficient statistics, with analytic gradients
and Hessians.

Notation (DESIGN.md section 1): group sizes n_j, means ybar_j, within sums of squares W_j,
N = sum n_j, m groups; a_j = mu_j - mu (centered) or z_j = a_j / tau (non-centered).

Joint densities are written for the optimiser's coordinates x = (mu, log sigma, log tau, u_1..u_m)
with u = a (centered) or z (non-centered). The value is the log joint density of (y, u) given
(mu, sigma, tau) -- plus, with priors, the prior log densities of mu, sigma and tau on the
constrained scale, without a Jacobian: the same number as PyMC's
`model.compile_logp(jacobian=False)`. Using log sigma and log tau as coordinates moves where the
optimiser walks, not where the maximum of this function is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.model.data import Stats
from workbench.model.priors import Priors

LOG_2PI = float(np.log(2.0 * np.pi))
LOG_HALFNORMAL_CONST = float(np.log(2.0) - 0.5 * LOG_2PI)
PARAMETRIZATIONS = ("centered", "noncentered")


# ----------------------------------------------------------------------------------------------
# Priors (constrained scale, no Jacobian), and their derivatives in (mu, log sigma, log tau)


def log_prior(mu: float, sigma: float, tau: float, priors: Priors) -> float:
    """log N(mu | mu_loc, mu_scale) + log HalfNormal(sigma) + log HalfNormal(tau)."""
    z = (mu - priors.mu_loc) / priors.mu_scale
    return (
        -0.5 * LOG_2PI
        - np.log(priors.mu_scale)
        - 0.5 * z * z
        + LOG_HALFNORMAL_CONST
        - np.log(priors.sigma_scale)
        - 0.5 * (sigma / priors.sigma_scale) ** 2
        + LOG_HALFNORMAL_CONST
        - np.log(priors.tau_scale)
        - 0.5 * (tau / priors.tau_scale) ** 2
    )


def _prior_grad_hess(mu: float, sigma: float, tau: float, priors: Priors):
    """Gradient and (diagonal) Hessian of `log_prior` in (mu, log sigma, log tau)."""
    g = np.array(
        [
            -(mu - priors.mu_loc) / priors.mu_scale**2,
            -((sigma / priors.sigma_scale) ** 2),
            -((tau / priors.tau_scale) ** 2),
        ]
    )
    h = np.array([-1.0 / priors.mu_scale**2, 2.0 * g[1], 2.0 * g[2]])
    return g, h


# ----------------------------------------------------------------------------------------------
# Log joint


def unpack(x: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """x = (mu, log sigma, log tau, u) -> (mu, sigma, tau, u)."""
    return float(x[0]), float(np.exp(x[1])), float(np.exp(x[2])), x[3:]


def group_effects(x: np.ndarray, parametrization: str) -> np.ndarray:
    """The group effects a_j = mu_j - mu at x, whatever the parametrization."""
    mu, sigma, tau, u = unpack(x)
    return u if parametrization == "centered" else tau * u


def _residuals(x: np.ndarray, stats: Stats, parametrization: str):
    """(mu, sigma, tau, u, r, S): group-mean residuals r_j = ybar_j - mu - a_j and the residual
    sum of squares S = W + sum n_j r_j^2 at x."""
    mu, sigma, tau, u = unpack(x)
    a = u if parametrization == "centered" else tau * u
    r = stats.ybar - mu - a
    return mu, sigma, tau, u, r, stats.W + float((stats.n * r) @ r)


def log_joint(
    x: np.ndarray, stats: Stats, parametrization: str = "centered", priors: Priors | None = None
) -> float:
    """Log joint density at x; without priors this is the h-likelihood of the question."""
    return log_joint_and_grad(x, stats, parametrization, priors)[0]


def log_joint_and_grad(
    x: np.ndarray, stats: Stats, parametrization: str = "centered", priors: Priors | None = None
) -> tuple[float, np.ndarray]:
    """Value and gradient of the log joint in x = (mu, log sigma, log tau, u)."""
    mu, sigma, tau, u, r, S = _residuals(x, stats, parametrization)
    s2, t2 = sigma * sigma, tau * tau
    centered = parametrization == "centered"
    nr = stats.n * r
    N, m = stats.N, stats.m
    value = -0.5 * N * (LOG_2PI + 2.0 * x[1]) - 0.5 * S / s2
    grad = np.empty_like(x, dtype=float)
    grad[0] = nr.sum() / s2
    grad[1] = -N + S / s2
    if centered:
        A = float(u @ u)
        value += -0.5 * m * (LOG_2PI + 2.0 * x[2]) - 0.5 * A / t2
        grad[2] = -m + A / t2
        grad[3:] = nr / s2 - u / t2
    else:
        value += -0.5 * m * LOG_2PI - 0.5 * float(u @ u)
        grad[2] = tau * float(nr @ u) / s2
        grad[3:] = tau * nr / s2 - u
    if priors is not None:
        value += log_prior(mu, sigma, tau, priors)
        grad[:3] += _prior_grad_hess(mu, sigma, tau, priors)[0]
    return float(value), grad


@dataclass(frozen=True)
class Arrowhead:
    """A symmetric matrix [[A, B'], [B, diag(d)]] with a dense 3x3 block A (mu, log sigma,
    log tau), an m x 3 border B and a diagonal d (the group effects): the shape of every Hessian
    of the log joint. Solves and definiteness checks cost O(m)."""

    A: np.ndarray
    B: np.ndarray
    d: np.ndarray

    def dense(self) -> np.ndarray:
        m = self.d.size
        out = np.zeros((3 + m, 3 + m))
        out[:3, :3] = self.A
        out[3:, :3] = self.B
        out[:3, 3:] = self.B.T
        out[3:, 3:][np.diag_indices(m)] = self.d
        return out

    def schur(self) -> np.ndarray:
        """A - B' diag(d)^-1 B: the Hessian of the profile over the group effects."""
        return self.A - (self.B / self.d[:, None]).T @ self.B

    def is_negative_definite(self) -> bool:
        if not np.all(self.d < 0):
            return False
        return bool(np.all(np.linalg.eigvalsh(self.schur()) < 0))

    def solve(self, g: np.ndarray) -> np.ndarray:
        """H^-1 g by block elimination."""
        g0, g1 = g[:3], g[3:]
        top = np.linalg.solve(self.schur(), g0 - self.B.T @ (g1 / self.d))
        return np.concatenate([top, (g1 - self.B @ top) / self.d])

    def inverse_blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H^-1)[:3,:3], (H^-1)[3:,:3] and diag((H^-1)[3:,3:]) in O(m)."""
        s_inv = np.linalg.inv(self.schur())
        e = self.B / self.d[:, None]  # D^-1 B
        top = s_inv
        border = -e @ s_inv
        diag = 1.0 / self.d + np.einsum("ij,jk,ik->i", e, s_inv, e)
        return top, border, diag


def log_joint_hessian(
    x: np.ndarray, stats: Stats, parametrization: str = "centered", priors: Priors | None = None
) -> Arrowhead:
    """Analytic Hessian of the log joint in x = (mu, log sigma, log tau, u)."""
    mu, sigma, tau, u, r, S = _residuals(x, stats, parametrization)
    n = stats.n
    s2, t2 = sigma * sigma, tau * tau
    centered = parametrization == "centered"
    nr = n * r
    A = np.zeros((3, 3))
    A[0, 0] = -stats.N / s2
    A[0, 1] = A[1, 0] = -2.0 * nr.sum() / s2
    A[1, 1] = -2.0 * S / s2
    B = np.zeros((stats.m, 3))
    if centered:
        A[2, 2] = -2.0 * float(u @ u) / t2
        B[:, 0] = -n / s2
        B[:, 1] = -2.0 * nr / s2
        B[:, 2] = 2.0 * u / t2
        d = -n / s2 - 1.0 / t2
    else:
        A[0, 2] = A[2, 0] = -tau * float(n @ u) / s2
        A[1, 2] = A[2, 1] = -2.0 * tau * float(nr @ u) / s2
        A[2, 2] = tau * float((n * u) @ (r - tau * u)) / s2
        B[:, 0] = -n * tau / s2
        B[:, 1] = -2.0 * nr * tau / s2
        B[:, 2] = n * tau * (r - tau * u) / s2
        d = -n * t2 / s2 - 1.0
    if priors is not None:
        A[np.diag_indices(3)] += _prior_grad_hess(mu, sigma, tau, priors)[1]
    return Arrowhead(A, B, d)


# ----------------------------------------------------------------------------------------------
# Marginal log likelihood (group effects integrated out) in params = (mu, sigma^2, tau^2)


def marginal_loglik(params, stats: Stats) -> float:
    """l(mu, sigma^2, tau^2) from the per-group sufficient statistics, O(m)."""
    mu, s, t = (float(v) for v in params)
    n = stats.n
    V = s + n * t
    r = stats.ybar - mu
    return float(
        -0.5
        * (
            stats.N * LOG_2PI
            + ((n - 1.0) * np.log(s)).sum()
            + np.log(V).sum()
            + stats.W / s
            + (n * r * r / V).sum()
        )
    )


def marginal_grad(params, stats: Stats) -> np.ndarray:
    """Gradient of `marginal_loglik` in (mu, sigma^2, tau^2)."""
    mu, s, t = (float(v) for v in params)
    n = stats.n
    iv = 1.0 / (s + n * t)
    nr_iv = n * (stats.ybar - mu) * iv
    sq = nr_iv * nr_iv  # n_j^2 r_j^2 / V_j^2
    return np.array(
        [
            nr_iv.sum(),
            -0.5 * ((stats.N - stats.m) / s + iv.sum() - stats.W / s**2 - (sq / n).sum()),
            -0.5 * (float(n @ iv) - sq.sum()),
        ]
    )


def marginal_hessian(params, stats: Stats) -> np.ndarray:
    """Hessian of `marginal_loglik` in (mu, sigma^2, tau^2) (minus the observed information)."""
    mu, s, t = (float(v) for v in params)
    n = stats.n
    V = s + n * t
    r = stats.ybar - mu
    V2, V3 = V * V, V * V * V
    h = np.empty((3, 3))
    h[0, 0] = -(n / V).sum()
    h[0, 1] = h[1, 0] = -(n * r / V2).sum()
    h[0, 2] = h[2, 0] = -(n * n * r / V2).sum()
    h[1, 1] = -0.5 * (
        -((n - 1.0) / s**2).sum()
        - (1.0 / V2).sum()
        + 2.0 * stats.W / s**3
        + 2.0 * (n * r * r / V3).sum()
    )
    h[1, 2] = h[2, 1] = -0.5 * (-(n / V2).sum() + 2.0 * (n * n * r * r / V3).sum())
    h[2, 2] = -0.5 * (-(n * n / V2).sum() + 2.0 * (n**3 * r * r / V3).sum())
    return h


def gls_mean(s: float, t: float, stats: Stats) -> float:
    """mu maximising the marginal likelihood for given variances (the GLS mean)."""
    w = stats.n / (s + stats.n * t)
    return float(w @ stats.ybar / w.sum())


def restricted_loglik(s: float, t: float, stats: Stats) -> float:
    """REML log likelihood l_R(sigma^2, tau^2) = l(mu_gls) - 1/2 log(sum n_j/V_j) + 1/2 log 2 pi;
    lme4's REML criterion is -2 l_R."""
    u = float((stats.n / (s + stats.n * t)).sum())
    return marginal_loglik((gls_mean(s, t, stats), s, t), stats) - 0.5 * np.log(u) + 0.5 * LOG_2PI


def restricted_grad(s: float, t: float, stats: Stats) -> np.ndarray:
    """Gradient of `restricted_loglik` in (sigma^2, tau^2)."""
    n = stats.n
    V = s + n * t
    u = (n / V).sum()
    du = np.array([-(n / V**2).sum(), -(n * n / V**2).sum()])
    g = marginal_grad((gls_mean(s, t, stats), s, t), stats)[1:]
    return g - 0.5 * du / u


def restricted_hessian(s: float, t: float, stats: Stats) -> np.ndarray:
    """Hessian of `restricted_loglik` in (sigma^2, tau^2): the Schur complement of the marginal
    Hessian over mu, plus the Hessian of -1/2 log sum(n_j / V_j)."""
    n = stats.n
    V = s + n * t
    h = marginal_hessian((gls_mean(s, t, stats), s, t), stats)
    prof = h[1:, 1:] - np.outer(h[1:, 0], h[0, 1:]) / h[0, 0]
    u = (n / V).sum()
    du = np.array([-(n / V**2).sum(), -(n * n / V**2).sum()])
    d2u = 2.0 * np.array(
        [[(n / V**3).sum(), (n * n / V**3).sum()], [(n * n / V**3).sum(), (n**3 / V**3).sum()]]
    )
    return prof - 0.5 * (d2u / u - np.outer(du, du) / u**2)


def conditional_effects(
    mu: float, s: float, t: float, stats: Stats
) -> tuple[np.ndarray, np.ndarray]:
    """Conditional modes a_hat_j and variances v_j of the group effects given (mu, s, t)."""
    n = stats.n
    if t <= 0.0:
        return np.zeros_like(n), np.zeros_like(n)
    shrink = n * t / (s + n * t)
    return shrink * (stats.ybar - mu), s * t / (s + n * t)
