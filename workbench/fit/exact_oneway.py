"""The exact posterior of the one-way model, by quadrature: the yardstick every estimator is
measured against (MCMC's draws, the joint modes, EB's plug-in values).

    y_ij = mu + theta_j + e_ij,  theta_j ~ N(0, tau^2),  e_ij ~ N(0, sigma^2),
    mu ~ Normal(mu_loc, mu_scale),  sigma ~ HalfNormal(sigma_scale),  tau ~ HalfNormal(tau_scale)

The group effects and mu are integrated analytically (Gaussian in both), which leaves the
two-dimensional posterior of (sigma, tau) from the per-group sufficient statistics (n_j, ybar_j,
within sum of squares W):

    ybar_j | mu, sigma, tau ~ N(mu, v_j),  v_j = tau^2 + sigma^2 / n_j,
    log p(y, sigma, tau) = log prior(sigma) + log prior(tau) - (N - m)/2 log sigma^2
        - W / (2 sigma^2) - 1/2 sum_j log v_j - 1/2 log(1 + s0^2 sum_j w_j) - Q / 2 + const,

with w_j = 1/v_j and Q the weighted sum of squares of the m group means and the prior mean
(weight 1/s0^2) about their weighted mean (the stable form of sum w_j ybar_j^2 + m0^2/s0^2 -
h^2/P); the constant is kept, so `Kernel.log_density` is log p(y, sigma, tau) itself and its
integral the evidence p(y). Groups of one size share one v, so an evaluation costs O(number of
distinct group sizes); everything is centred at the mean of the group means first (data at
1e9 + noise keep their digits).

That density is integrated on a grid in (log sigma, log tau): found around the mode, expanded
until the log density (also weighted by sigma^4, tau^4 for the moments) on every edge is
`DROP` nats below its maximum, the spacing halved until the trapezoid rule (spectrally accurate
for a smooth integrand that vanishes at the ends) agrees with itself at half the nodes to
`RTOL`. As tau -> 0 the density of log tau falls only like tau (the density of tau itself
stays finite, that of tau^2 diverges): the grid reaches far enough left for that tail.

From the grid: the marginal densities of sigma and tau on the scales sigma, sigma^2, log sigma
(tau likewise; the modes differ by scale), their means (trapezoid), medians and shortest 94%
intervals (quantiles of a spline of the log marginal), modes refined by Brent's method on the
exact marginal density (1-D trapezoid over the other variance), a boundary mode at 0 where the
density there is the largest (always for tau^2), mu's marginal as the mixture of its normal
conditionals over the grid, and independent draws of (sigma, tau, mu, group means).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import interpolate, optimize, special

from workbench.fit.mcmc import HDI_PROB
from workbench.model.data import Stats
from workbench.model.priors import Priors

DROP = 34.0  # nats below the maximum at every edge of the grid (e^-34 ~ 2e-15)
RTOL = 1e-10  # trapezoid self-agreement at half the nodes
MIN_NODES, MAX_NODES = 81, 1601  # per axis
MAX_CELLS = 600_000  # grid nodes x distinct group sizes evaluated per chunk
REFINE = 8  # spline nodes per grid cell for the quantiles
MU_DROP = 1e-12  # mass of the mixture components left out of mu's marginal
MU_NODES = 241  # nodes of mu's tabulated marginal ...
MU_TAIL = 1e-8  # ... between these quantiles
MU_BIN = 1e-3  # relative resolution of the merged mixture components
HALF_LOG_2_OVER_PI = 0.5 * math.log(2.0 / math.pi)
GL_X, GL_W = np.polynomial.legendre.leggauss(4)
# quantity -> (axis, power): axis 0 is x = log sigma, 1 is x = log tau; the quantity is
# exp(power * x) (the SD, its square), or x itself for power 0
SCALES = {
    "sigma": (0, 1),
    "sigma2": (0, 2),
    "log_sigma": (0, 0),
    "tau": (1, 1),
    "tau2": (1, 2),
    "log_tau": (1, 0),
}
QUANTITIES = (*SCALES, "mu")


def on_scale(variance, power: int) -> float | None:
    """A variance on a `SCALES` scale: its SD (power 1), itself (2) or the log of its SD (0);
    None where not defined (the log of 0, a missing or negative value)."""
    if variance is None or not np.isfinite(variance) or variance < 0:
        return None
    if power == 2:
        return float(variance)
    if power == 1:
        return float(np.sqrt(variance))
    return float(0.5 * np.log(variance)) if variance > 0 else None


# ----------------------------------------------------------------------------------------------
# The log density of (sigma, tau), mu and the group effects integrated out


@dataclass(frozen=True)
class Kernel:
    """log p(y, sigma, tau) and the normal conditionals of mu and the group means, from the
    sufficient statistics centred at `ref` (the mean of the group means). Groups are pooled by
    size: `sizes` (K distinct), `counts`, `dbar` (mean of the centred means of that size), `q`
    (their sum of squares about dbar)."""

    n: np.ndarray = field(repr=False)  # (m,) group sizes
    d: np.ndarray = field(repr=False)  # (m,) ybar_j - ref
    sizes: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)
    dbar: np.ndarray = field(repr=False)
    q: np.ndarray = field(repr=False)
    N: float
    m: int
    W: float
    ref: float
    delta: float  # prior mean of mu - ref
    s0: float  # prior sd of mu
    sigma_scale: float
    tau_scale: float
    const: float

    @classmethod
    def of(cls, stats: Stats, priors: Priors) -> Kernel:
        if not priors.oneway:
            raise ValueError("the exact one-way posterior needs the one-way model's priors")
        n = np.asarray(stats.n, float)
        ybar = np.asarray(stats.ybar, float)
        ref = float(ybar.mean())
        d = ybar - ref
        sizes, inv, counts = np.unique(n, return_inverse=True, return_counts=True)
        counts = counts.astype(float)
        dbar = np.bincount(inv, weights=d) / counts
        q = np.bincount(inv, weights=(d - dbar[inv]) ** 2)
        N, m, W = float(n.sum()), int(n.size), float(np.sum(stats.wss))
        if N > m and not W > 0:
            raise ValueError("zero within-group variation: the posterior of sigma is improper")
        const = (
            -0.5 * N * math.log(2 * math.pi)
            - 0.5 * float(np.log(n).sum())
            + 2 * HALF_LOG_2_OVER_PI
            - math.log(priors.sigma_scale)
            - math.log(priors.tau_scale)
        )
        return cls(
            n=n,
            d=d,
            sizes=sizes,
            counts=counts,
            dbar=dbar,
            q=q,
            N=N,
            m=m,
            W=W,
            ref=ref,
            delta=float(priors.mu_loc) - ref,
            s0=float(priors.mu_scale),
            sigma_scale=float(priors.sigma_scale),
            tau_scale=float(priors.tau_scale),
            const=const,
        )

    def parts(self, s2, t2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log p(y, sigma, tau), E[mu - ref | sigma, tau, y], 1 / Var[mu | sigma, tau, y]) at
        variances s2 = sigma^2, t2 = tau^2 (broadcast arrays)."""
        s2, t2 = np.broadcast_arrays(np.asarray(s2, float), np.asarray(t2, float))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            v = t2[..., None] + s2[..., None] / self.sizes
            w = 1.0 / v
            wc = w * self.counts
            S = wc.sum(-1)
            prior_w = 1.0 / self.s0**2
            P = S + prior_w
            xbar = (wc @ self.dbar + self.delta * prior_w) / P
            Q = w @ self.q + (wc * (self.dbar - xbar[..., None]) ** 2).sum(-1)
            Q = Q + (self.delta - xbar) ** 2 * prior_w
            if self.N > self.m:
                within = -0.5 * (self.N - self.m) * np.log(s2) - 0.5 * self.W / s2
            else:
                within = np.zeros_like(s2)
            out = (
                self.const
                + within
                - 0.5 * (np.log(v) @ self.counts)
                - 0.5 * np.log1p(self.s0**2 * S)
                - 0.5 * Q
                - 0.5 * s2 / self.sigma_scale**2
                - 0.5 * t2 / self.tau_scale**2
            )
        out = np.where(np.isnan(out), -np.inf, out)
        return out, xbar, P

    def log_density(self, sigma, tau) -> np.ndarray:
        """log p(y, sigma, tau): the unnormalised posterior density of (sigma, tau), its
        integral over sigma, tau > 0 the evidence p(y)."""
        return self.parts(np.square(sigma), np.square(tau))[0]

    def log_density_log(self, a, b) -> np.ndarray:
        """The same density on (a, b) = (log sigma, log tau): + a + b (the Jacobian)."""
        a, b = np.asarray(a, float), np.asarray(b, float)
        return self.parts(np.exp(2 * a), np.exp(2 * b))[0] + a + b

    def grid(self, a: np.ndarray, b: np.ndarray, what: str = "log") -> np.ndarray:
        """`parts` on the grid a (rows) x b (columns), in chunks: the log density on (a, b)
        ("log"), or the conditional mean ("xbar") / precision ("P") of mu."""
        out = np.empty((a.size, b.size))
        rows = max(1, MAX_CELLS // max(1, b.size * self.sizes.size))
        t2 = np.exp(2 * b)[None, :]
        for i in range(0, a.size, rows):
            ai = a[i : i + rows, None]
            lp, xbar, P = self.parts(np.exp(2 * ai), t2)
            out[i : i + rows] = {"log": lp + ai + b[None, :], "xbar": xbar, "P": P}[what]
        return out


def log_posterior(stats: Stats, priors: Priors, sigma, tau) -> np.ndarray:
    """log p(y, sigma, tau) of the one-way model (mu and the group effects integrated out):
    the posterior density of (sigma, tau) times the evidence p(y)."""
    return Kernel.of(stats, priors).log_density(sigma, tau)


# ----------------------------------------------------------------------------------------------
# The grid


def _mode(k: Kernel) -> np.ndarray:
    """The mode of the log density on (log sigma, log tau), from moment starts."""
    var_means = float(np.var(k.d, ddof=1)) if k.m > 1 else 1.0
    s2 = k.W / (k.N - k.m) if k.N > k.m else 0.5 * var_means
    s2 = s2 if s2 > 0 else max(var_means, 1e-300)
    t2 = max(var_means - s2 * float(np.mean(1.0 / k.n)), 0.01 * s2)

    def f(x):
        v = float(k.log_density_log(x[0], x[1]))
        return -v if np.isfinite(v) else 1e300

    starts = [
        np.log([math.sqrt(s2), math.sqrt(t2)]),
        np.log([math.sqrt(s2), 0.1 * math.sqrt(s2)]),
        np.log([math.sqrt(s2), math.sqrt(s2 + var_means)]),
    ]
    best = None
    for x0 in starts:
        r = optimize.minimize(
            f, x0, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000}
        )
        if best is None or r.fun < best.fun:
            best = r
    return np.asarray(best.x, float)


def _hessian(f, x: np.ndarray, h: float = 1e-3) -> np.ndarray:
    H = np.empty((2, 2))
    e = np.eye(2) * h
    f0 = f(x)
    for i in range(2):
        H[i, i] = (f(x + e[i]) - 2 * f0 + f(x - e[i])) / h**2
    H[0, 1] = H[1, 0] = (
        f(x + e[0] + e[1]) - f(x + e[0] - e[1]) - f(x - e[0] + e[1]) + f(x - e[0] - e[1])
    ) / (4 * h**2)
    return H


def _ranges(k: Kernel, mode: np.ndarray) -> tuple[list[list[float]], np.ndarray]:
    """Ranges in (log sigma, log tau) whose edges are all `DROP` nats below the maximum of the
    log density, and of it weighted by sigma^2, sigma^4 (tau likewise) on the right edges
    (the moments of sigma^2 and tau^2 and their sds); and the conditional sds at the mode."""
    f = lambda x: float(k.log_density_log(x[0], x[1]))  # noqa: E731
    H = -_hessian(f, mode)
    cond = 1.0 / np.sqrt(np.clip(np.diag(H), 1e-12, None))
    try:
        cov = np.linalg.inv(H)
        marg = np.sqrt(np.diag(cov)) if np.all(np.diag(cov) > 0) else cond
    except np.linalg.LinAlgError:
        marg = cond
    marg = np.maximum(marg, cond)
    rng = [[mode[i] - 6 * marg[i], mode[i] + 6 * marg[i]] for i in range(2)]
    for _ in range(200):
        a = np.linspace(*rng[0], 161)
        b = np.linspace(*rng[1], 161)
        L = k.grid(a, b)
        grown = False
        for axis, x in ((0, a), (1, b)):
            Lx = L if axis == 0 else L.T  # rows: this axis's nodes
            width = rng[axis][1] - rng[axis][0]
            # left: the density itself; right: also weighted by the variable^2 and ^4
            if np.max(Lx[0]) > np.max(Lx) - DROP:
                rng[axis][0] -= max(0.5 * width, 1.0)
                grown = True
            if any(
                np.max(Lx[-1]) + p * x[-1] > np.max(Lx + p * x[:, None]) - DROP
                for p in (0.0, 2.0, 4.0)
            ):
                rng[axis][1] += max(0.5 * width, 0.25 * marg[axis])
                grown = True
        if not grown:
            return rng, cond
        # the variables stay normal floating-point numbers
        for axis in (0, 1):
            rng[axis][0] = max(rng[axis][0], mode[axis] - 600.0)
            rng[axis][1] = min(rng[axis][1], mode[axis] + 300.0)
    return rng, cond


@dataclass(frozen=True)
class _Grid:
    a: np.ndarray  # log sigma nodes
    b: np.ndarray  # log tau nodes
    L: np.ndarray  # log density on (a, b), minus `lmax`
    lmax: float
    log_z: float  # log of the integral of exp(L) da db (the evidence: lmax + log_z)

    @property
    def ha(self) -> float:
        return float(self.a[1] - self.a[0])

    @property
    def hb(self) -> float:
        return float(self.b[1] - self.b[0])


def _trapezoid_log(L: np.ndarray, ha: float, hb: float) -> float:
    """log of the trapezoid rule of exp(L) (the ends carry weight 1/2)."""
    wa = np.ones(L.shape[0])
    wb = np.ones(L.shape[1])
    wa[[0, -1]] = wb[[0, -1]] = 0.5
    return float(special.logsumexp(L, b=wa[:, None] * wb[None, :])) + math.log(ha * hb)


def _grid(k: Kernel) -> _Grid:
    mode = _mode(k)
    rng, cond = _ranges(k, mode)
    n = [
        int(np.clip(math.ceil((rng[i][1] - rng[i][0]) / (cond[i] / 4)), MIN_NODES, MAX_NODES))
        for i in range(2)
    ]
    while True:
        n = [v + (v + 1) % 2 for v in n]  # odd: every other node is the half grid
        a, b = np.linspace(*rng[0], n[0]), np.linspace(*rng[1], n[1])
        L = k.grid(a, b)
        lmax = float(np.max(L))
        L = L - lmax
        ha, hb = a[1] - a[0], b[1] - b[0]
        full = _trapezoid_log(L, ha, hb)
        worse = [
            abs(math.expm1(_trapezoid_log(L[::2, :], 2 * ha, hb) - full)) > RTOL,
            abs(math.expm1(_trapezoid_log(L[:, ::2], ha, 2 * hb) - full)) > RTOL,
        ]
        if not any(w and v < MAX_NODES for w, v in zip(worse, n, strict=True)):
            return _Grid(a=a, b=b, L=L, lmax=lmax, log_z=full)
        n = [min(2 * v - 1, MAX_NODES) if w else v for w, v in zip(worse, n, strict=True)]


# ----------------------------------------------------------------------------------------------
# One marginal: log sigma or log tau


class _Tabulated:
    """A 1-D density from its log at uniform nodes `x`: a quintic spline of the log density,
    a CDF table on `REFINE` times finer nodes (cell masses by Gauss-Legendre), quantiles (the
    table, then one Newton step on the spline's CDF) and draws (the exact inverse CDF of the
    log-linear interpolant between the fine nodes)."""

    def __init__(self, x: np.ndarray, lp: np.ndarray, cdf: np.ndarray | None = None):
        """`lp` the log density at the nodes x; `cdf` the exact CDF there if known (the fine
        table is then scaled to it cell by cell), else the spline's integral from x[0]."""
        self.x = x
        self.spline = interpolate.make_interp_spline(x, lp, k=5)
        self.xf = np.linspace(x[0], x[-1], (x.size - 1) * REFINE + 1)
        self.lf = self.spline(self.xf)
        hf = self.xf[1] - self.xf[0]
        mid = 0.5 * (self.xf[:-1] + self.xf[1:])
        nodes = mid[:, None] + 0.5 * hf * GL_X[None, :]
        mass = 0.5 * hf * (np.exp(self.spline(nodes)) @ GL_W)
        if cdf is None:
            self.cdf = np.concatenate([[0.0], np.cumsum(mass)])
            self.total = float(self.cdf[-1])  # the spline's integral (~1 for a normalised lp)
            self.cdf /= self.total
        else:
            cells = mass.reshape(-1, REFINE)
            cells = cells * (np.diff(cdf) / cells.sum(axis=1))[:, None]
            self.cdf = cdf[0] + np.concatenate([[0.0], np.cumsum(cells.ravel())])
            self.total = 1.0

    def _cell(self, p: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(self.cdf, p, side="right") - 1, 0, self.xf.size - 2)

    def quantile(self, p) -> np.ndarray:
        """x with P(X <= x) = p."""
        p = np.clip(np.atleast_1d(np.asarray(p, float)), 0.0, 1.0)
        j = self._cell(p)
        x = self._within(j, (p - self.cdf[j]) / np.maximum(self.cdf[j + 1] - self.cdf[j], 1e-300))
        x0 = self.xf[j]
        nodes = 0.5 * (x0 + x)[:, None] + 0.5 * (x - x0)[:, None] * GL_X[None, :]
        F = self.cdf[j] + 0.5 * (x - x0) * (np.exp(self.spline(nodes)) @ GL_W) / self.total
        dens = np.exp(self.spline(x)) / self.total
        step = np.where(dens > 0, (F - p) / np.maximum(dens, 1e-300), 0.0)
        return np.clip(x - step, self.xf[j], self.xf[j + 1])

    def _within(self, j: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Inverse CDF of the log-linear interpolant of the density in fine cell j at u."""
        hf = self.xf[1] - self.xf[0]
        s = (self.lf[j + 1] - self.lf[j]) / hf
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t = np.where(np.abs(s * hf) < 1e-8, u * hf, np.log1p(u * np.expm1(s * hf)) / s)
        t = np.where(np.isfinite(t), t, u * hf)
        return self.xf[j] + np.clip(t, 0.0, hf)

    def sample(self, u: np.ndarray) -> np.ndarray:
        """x for uniforms u (inverse CDF of the log-linear interpolant on the fine table)."""
        j = self._cell(u)
        w = np.maximum(self.cdf[j + 1] - self.cdf[j], 1e-300)
        return self._within(j, np.clip((u - self.cdf[j]) / w, 0.0, 1.0))


class _Axis(_Tabulated):
    """The exact marginal density of x = log sigma (axis 0) or log tau (axis 1): `logpdf` by
    the trapezoid rule over the other axis's nodes, tabulated at the grid's nodes and midpoints
    (`x`, `lp`, normalised)."""

    def __init__(self, k: Kernel, g: _Grid, axis: int):
        self.k, self.g, self.axis = k, g, axis
        nodes = g.a if axis == 0 else g.b
        x = np.linspace(nodes[0], nodes[-1], 2 * nodes.size - 1)
        self.lp = np.empty(x.size)
        other_h = g.hb if axis == 0 else g.ha
        self.lp[::2] = special.logsumexp(g.L, axis=1 - axis) + math.log(other_h) - g.log_z
        self.lp[1::2] = self.logpdf(x[1::2])
        super().__init__(x, self.lp)

    def logpdf(self, x) -> np.ndarray:
        """Normalised log density of x (exact: trapezoid over the other axis's grid)."""
        x = np.atleast_1d(np.asarray(x, float))
        g, k = self.g, self.k
        if self.axis == 0:
            L = k.grid(x, g.b) - g.lmax
            return special.logsumexp(L, axis=1) + math.log(g.hb) - g.log_z
        L = k.grid(g.a, x) - g.lmax
        return special.logsumexp(L, axis=0) + math.log(g.ha) - g.log_z

    def log_density_at_zero(self) -> float:
        """log of the density of the variable itself (sigma or tau, not its log) at 0: finite
        for tau (and for sigma when every group has one observation), -inf otherwise."""
        k, g = self.k, self.g
        if self.axis == 0 and k.N > k.m:
            return -math.inf
        if self.axis == 0:
            lp = k.parts(0.0, np.exp(2 * g.b))[0] + g.b
            h = g.hb
        else:
            lp = k.parts(np.exp(2 * g.a), 0.0)[0] + g.a
            h = g.ha
        return float(special.logsumexp(lp) + math.log(h) - g.lmax - g.log_z)


# ----------------------------------------------------------------------------------------------
# Summaries


@dataclass(frozen=True)
class Summary:
    """The exact marginal of one quantity on one scale. `mode` is the global maximum of the
    density (0 for a boundary mode: the density at 0 is the largest, or unbounded as for
    tau^2); `local_mode` the highest interior local maximum when the mode is on the boundary
    (None without one); `hdi` the shortest interval of probability `HDI_PROB`."""

    mode: float
    mean: float
    median: float
    sd: float
    hdi: tuple[float, float]
    boundary: bool = False
    local_mode: float | None = None

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "mean": self.mean,
            "median": self.median,
            "sd": self.sd,
            "hdi": list(self.hdi),
            "local_mode": self.local_mode,
        }


@dataclass(frozen=True)
class Curve:
    """A marginal density on the quantity's own scale, for the plots."""

    x: np.ndarray
    density: np.ndarray


def _shortest(tab: _Tabulated, power: int, prob: float) -> tuple[float, float]:
    """The shortest interval of probability `prob` of exp(power * x) (x itself for power 0),
    x with the density `tab`: a scan over [Q(p), Q(p + prob)], then the root in p of the
    equal-density condition beside the shortest scanned one (a root, not a minimum: the width
    is flat there). p = 0 starts it at the bottom of the support (0 for power > 0)."""
    transform = (lambda x: np.exp(power * x)) if power else (lambda x: x)

    def ends(p):
        return tab.quantile(np.array([p, p + prob]))

    def gap(p):  # log density on the scale at the lower end minus at the upper end
        lo, hi = ends(p)
        return float(tab.spline(lo) - power * lo - tab.spline(hi) + power * hi)

    ps = np.linspace(0.0, 1.0 - prob, 121)
    ws = transform(tab.quantile(ps + prob)) - transform(tab.quantile(ps))
    i = int(np.argmin(ws))
    p = float(ps[i])
    if i == 0 and gap(ps[1]) >= 0:
        p = 0.0  # the density falls from the bottom of the support: [0, Q(prob)]
    else:
        a, b = ps[max(i - 1, 1 if power == 0 else 0)], ps[min(i + 1, ps.size - 1)]
        ga, gb = gap(a), gap(b)
        if ga <= 0 <= gb:
            p = optimize.brentq(gap, a, b, xtol=1e-15, rtol=1e-13)
        elif i == 0:
            p = 0.0
    lo, hi = (float(v) for v in transform(ends(p)))
    if p == 0.0 and power > 0:
        lo = 0.0
    return lo, hi


def _refine_max(f, x: np.ndarray, vals: np.ndarray, i: int) -> tuple[float, float]:
    """Brent's maximum of f between the grid neighbours of node i."""
    lo, hi = x[max(i - 1, 0)], x[min(i + 1, x.size - 1)]
    r = optimize.minimize_scalar(
        lambda t: -float(f(np.array([t]))[0]),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-11 * max(1.0, abs(x[i]))},
    )
    t, v = (float(r.x), float(-r.fun)) if -r.fun >= vals[i] else (float(x[i]), float(vals[i]))
    # Newton on the derivative by central differences (Richardson-extrapolated): Brent stops
    # where f is flat to rounding
    h = 0.01 * float(x[1] - x[0])
    for _ in range(3):
        f2, f1, f0, fm1, fm2 = f(t + h * np.array([2.0, 1.0, 0.0, -1.0, -2.0]))
        d1 = (4 * (f1 - fm1) / (2 * h) - (f2 - fm2) / (4 * h)) / 3
        d2 = (f1 - 2 * f0 + fm1) / h**2
        if not d2 < 0:
            break
        step = -d1 / d2
        if abs(step) > h:
            break
        t1 = t + step
        v1 = float(f(np.array([t1]))[0])
        if v1 < v - 1e-13 * max(1.0, abs(v)):
            break
        t, v = t1, v1
    return t, v


def _local_maxima(vals: np.ndarray) -> np.ndarray:
    """Indices of the strict interior local maxima of a sequence."""
    i = np.arange(1, vals.size - 1)
    return i[(vals[i] > vals[i - 1]) & (vals[i] >= vals[i + 1])]


def _summary(ax: _Axis, power: int, prob: float) -> tuple[Summary, Curve]:
    """The marginal of exp(power * x) (power 1: sigma; 2: sigma^2; 0: x = log sigma itself)."""
    # log density on the scale: f(x) = lp(x) - power * x - log(power)
    shift = math.log(power) if power else 0.0
    f = lambda x: ax.logpdf(x) - power * x - shift  # noqa: E731
    vals = ax.lp - power * ax.x - shift
    # the density of the variable at 0 (power 1), +inf for its square, none for its log
    at0 = {0: -math.inf, 1: ax.log_density_at_zero(), 2: math.inf}[power]
    if power == 2 and not np.isfinite(ax.log_density_at_zero()):
        at0 = -math.inf  # sigma^2 when sigma's density vanishes at 0
    i = int(np.argmax(vals))
    boundary, local = False, None
    interior = _local_maxima(vals)
    if at0 == math.inf or (np.isfinite(at0) and vals[i] <= at0 + 1e-9):
        boundary = True
        if interior.size:  # the highest interior local maximum above the limit at 0
            j = int(interior[np.argmax(vals[interior])])
            xj, vj = _refine_max(f, ax.x, vals, j)
            if vj > at0 + 1e-9 or at0 == math.inf:
                local = math.exp(power * xj) if power else xj
        mode = 0.0
    else:
        xm, vm = _refine_max(f, ax.x, vals, i)
        if np.isfinite(at0) and at0 >= vm:
            boundary, mode = True, 0.0
        else:
            mode = math.exp(power * xm) if power else xm
    # moments by the trapezoid rule on the tabulated nodes (the ends are negligible)
    dens = np.exp(ax.lp)
    z = float(np.sum(dens))
    vals_x = np.exp(power * ax.x) if power else ax.x
    mean = float(np.sum(vals_x * dens) / z)
    sd = math.sqrt(max(float(np.sum((vals_x - mean) ** 2 * dens) / z), 0.0))
    transform = (lambda x: np.exp(power * x)) if power else (lambda x: x)
    median = float(transform(ax.quantile(0.5)[0]))
    hdi = _shortest(ax, power, prob)
    # the curve: the density on the scale at the tabulated nodes (and at 0 where finite)
    y = np.exp(ax.lp - power * ax.x - shift)
    xv = transform(ax.x)
    if power == 1 and np.isfinite(at0):
        xv, y = np.concatenate([[0.0], xv]), np.concatenate([[math.exp(at0)], y])
    return Summary(mode, mean, median, sd, hdi, boundary, local), Curve(xv, y)


class _MuMixture:
    """mu's marginal: the normal conditionals N(xbar, 1/P) of mu - ref over the grid, weighted
    by the grid's probabilities (the components holding all but `MU_DROP` of the mass), and
    tabulated (`_Tabulated`, its exact CDF at the nodes) on `MU_NODES` nodes between the
    quantiles `MU_TAIL` and 1 - `MU_TAIL`."""

    def __init__(self, k: Kernel, g: _Grid):
        p = np.exp(g.L).ravel()
        order = np.argsort(p)[::-1]
        c = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(c, c[-1] * (1 - MU_DROP))) + 1]
        ia, ib = np.unravel_index(keep, g.L.shape)
        _, m, P = k.parts(np.exp(2 * g.a[ia]), np.exp(2 * g.b[ib]))
        w = p[keep] / p[keep].sum()
        s = 1.0 / np.sqrt(P)
        self.mean = float(w @ m)
        self.sd = math.sqrt(float(w @ (s**2 + (m - self.mean) ** 2)))
        # components whose sds agree to a factor e^MU_BIN and means to MU_BIN sds merged into
        # one with their mean and variance (the density's error is third order in MU_BIN)
        ks = np.round(np.log(s) / MU_BIN)
        km = np.round((m - self.mean) / (MU_BIN * np.exp(ks * MU_BIN)))
        _, inv = np.unique(np.stack([ks, km]), axis=1, return_inverse=True)
        inv = inv.ravel()
        self.w = np.bincount(inv, weights=w)
        self.m = np.bincount(inv, weights=w * m) / self.w
        v = np.bincount(inv, weights=w * (s**2 + (m - self.m[inv]) ** 2)) / self.w
        self.s = np.sqrt(v)
        bracket = float(np.min(self.m - 40 * self.s)), float(np.max(self.m + 40 * self.s))
        lo, hi = (
            optimize.brentq(lambda u, q=q: self.cdf(u)[0] - q, *bracket, xtol=1e-12 * self.sd)
            for q in (MU_TAIL, 1 - MU_TAIL)
        )
        self.u = np.linspace(lo, hi, MU_NODES)
        self.table = _Tabulated(self.u, np.log(self.pdf(self.u)), self.cdf(self.u))

    def _chunks(self, u: np.ndarray):
        step = max(1, 2_000_000 // self.w.size)
        for i in range(0, u.size, step):
            yield i, (u[i : i + step, None] - self.m) / self.s

    def pdf(self, u) -> np.ndarray:
        u = np.atleast_1d(np.asarray(u, float))
        out = np.empty(u.size)
        for i, z in self._chunks(u):
            out[i : i + z.shape[0]] = (np.exp(-0.5 * z * z) / self.s) @ self.w
        return out / math.sqrt(2 * math.pi)

    def cdf(self, u) -> np.ndarray:
        u = np.atleast_1d(np.asarray(u, float))
        out = np.empty(u.size)
        for i, z in self._chunks(u):
            out[i : i + z.shape[0]] = special.ndtr(z) @ self.w
        return out

    def summary(self, ref: float, prob: float) -> tuple[Summary, Curve]:
        t = self.table
        dens = np.exp(t.spline(t.x))
        i = int(np.argmax(dens))
        r = optimize.minimize_scalar(
            lambda u: -float(self.pdf(u)[0]),
            bounds=(t.x[max(i - 1, 0)], t.x[min(i + 1, t.x.size - 1)]),
            method="bounded",
            options={"xatol": 1e-10 * self.sd},
        )
        mode = float(r.x) if -r.fun >= self.pdf(t.x[i])[0] else float(t.x[i])
        median = float(t.quantile(0.5)[0])
        hdi = _shortest(t, 0, prob)
        return (
            Summary(
                mode=ref + mode,
                mean=ref + self.mean,
                median=ref + median,
                sd=self.sd,
                hdi=(ref + hdi[0], ref + hdi[1]),
            ),
            Curve(ref + t.x, dens),
        )


# ----------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class ExactPosterior:
    """The exact posterior of the one-way model: summaries of sigma, sigma2, log_sigma, tau,
    tau2, log_tau and mu (`summaries`), their density curves (`curves`, not in the JSON),
    exact marginal log densities (`logpdf`) and independent draws (`draws`)."""

    summaries: dict[str, Summary]
    priors: Priors
    hdi_prob: float
    method: str
    log_evidence: float  # log p(y) under the priors
    curves: dict[str, Curve] = field(repr=False, compare=False)
    kernel: Kernel = field(repr=False, compare=False)
    axes: tuple[_Axis, _Axis] = field(repr=False, compare=False)
    mu_marginal: _MuMixture = field(repr=False, compare=False)

    def brief(self) -> str:
        """One line: the posterior means of sigma^2 and tau^2 and the modes of sigma and tau."""
        from workbench.fit.brief import num

        s = self.summaries

        def mode(q: str) -> str:
            if not s[q].boundary:
                return num(s[q].mode)
            local = f", local mode {num(s[q].local_mode)}" if s[q].local_mode is not None else ""
            return f"{num(s[q].mode)} (boundary{local})"

        return (
            f"sigma2 mean={num(s['sigma2'].mean)} tau2 mean={num(s['tau2'].mean)}; "
            f"mode sigma={mode('sigma')} tau={mode('tau')}"
        )

    def __repr__(self) -> str:
        return f"ExactPosterior({self.brief()})"

    @property
    def boundary_modes(self) -> list[str]:
        return [q for q in QUANTITIES if self.summaries[q].boundary]

    def logpdf(self, name: str, value) -> np.ndarray:
        """The exact normalised log marginal density of `name` (sigma, sigma2, log_sigma, tau,
        tau2, log_tau) at `value` on its own scale (1-D trapezoid over the other variance)."""
        axis, power = SCALES[name]
        ax = self.axes[axis]
        v = np.atleast_1d(np.asarray(value, float))
        if power == 0:
            return ax.logpdf(v)
        out = np.full(v.shape, -np.inf)
        pos = v > 0
        x = np.log(v[pos]) / power
        out[pos] = ax.logpdf(x) - power * x - math.log(power)
        zero = v == 0
        if zero.any():
            at0 = ax.log_density_at_zero()
            out[zero] = at0 if power == 1 else (math.inf if np.isfinite(at0) else -math.inf)
        return out

    def quantile(self, name: str, p) -> np.ndarray:
        """Quantiles of `name` (any of `QUANTITIES`) on its own scale."""
        if name == "mu":
            mix = self.mu_marginal
            return self.kernel.ref + mix.table.quantile(p)
        axis, power = SCALES[name]
        x = self.axes[axis].quantile(p)
        return np.exp(power * x) if power else x

    def draws(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """n independent draws of sigma, tau (the marginal of log sigma by inverse CDF, then log
        tau given it from the exact conditional on a fine grid), mu | sigma, tau and the group
        means theta_j | mu, sigma, tau (normal); also sigma2, tau2."""
        k = self.kernel
        ax_a, ax_b = self.axes
        a = ax_a.sample(rng.random(n))
        bf = np.linspace(ax_b.x[0], ax_b.x[-1], 2 * ax_b.x.size - 1)
        hf = bf[1] - bf[0]
        b = np.empty(n)
        u = rng.random(n)
        chunk = max(1, MAX_CELLS // (bf.size * k.sizes.size))
        for i in range(0, n, chunk):
            L = k.grid(a[i : i + chunk], bf)
            L -= L.max(axis=1, keepdims=True)
            # cell masses of the log-linear interpolant
            s = np.diff(L, axis=1) / hf
            sh = s * hf
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                mass = np.where(
                    np.abs(sh) < 1e-8, hf * np.exp(L[:, :-1]), np.exp(L[:, :-1]) * np.expm1(sh) / s
                )
            mass = np.where(np.isfinite(mass), mass, 0.0)
            c = np.cumsum(mass, axis=1)
            target = u[i : i + chunk] * c[:, -1]
            j = np.minimum((c < target[:, None]).sum(axis=1), bf.size - 2)
            rows = np.arange(j.size)
            before = np.where(j > 0, c[rows, np.maximum(j - 1, 0)], 0.0)
            frac = np.clip((target - before) / np.maximum(mass[rows, j], 1e-300), 0.0, 1.0)
            sj = s[rows, j]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                t = np.where(
                    np.abs(sj * hf) < 1e-8, frac * hf, np.log1p(frac * np.expm1(sj * hf)) / sj
                )
            t = np.where(np.isfinite(t), t, frac * hf)
            b[i : i + chunk] = bf[j] + np.clip(t, 0.0, hf)
        sigma, tau = np.exp(a), np.exp(b)
        s2, t2 = sigma**2, tau**2
        _, xbar, P = k.parts(s2, t2)
        u_mu = xbar + rng.standard_normal(n) / np.sqrt(P)
        w = 1.0 / (t2[:, None] + s2[:, None] / k.n[None, :])
        shrink = t2[:, None] * w
        theta = u_mu[:, None] + shrink * (k.d[None, :] - u_mu[:, None])
        sd = np.sqrt(t2[:, None] * (s2[:, None] / k.n[None, :]) * w)
        theta = theta + sd * rng.standard_normal(theta.shape)
        return {
            "sigma": sigma,
            "sigma2": s2,
            "tau": tau,
            "tau2": t2,
            "mu": k.ref + u_mu,
            "theta": k.ref + theta,
        }

    def to_dict(self) -> dict:
        """The JSON block `exact_posterior`."""
        out: dict = {q: self.summaries[q].to_dict() for q in QUANTITIES}
        out.update(
            priors=self.priors.describe(),
            hdi_prob=self.hdi_prob,
            method=self.method,
            boundary_modes=self.boundary_modes,
            log_evidence=self.log_evidence,
        )
        return out


def exact_posterior(stats: Stats, priors: Priors, prob: float = HDI_PROB) -> ExactPosterior:
    """The exact posterior of the one-way model with these priors from its sufficient
    statistics (`LMMData.oneway`, `model.data.Stats`)."""
    k = Kernel.of(stats, priors)
    g = _grid(k)
    axes = (_Axis(k, g, 0), _Axis(k, g, 1))
    summaries, curves = {}, {}
    for name, (axis, power) in SCALES.items():
        summaries[name], curves[name] = _summary(axes[axis], power, prob)
    mix = _MuMixture(k, g)
    summaries["mu"], curves["mu"] = mix.summary(k.ref, prob)
    method = (
        f"quadrature: {g.a.size} x {g.b.size} trapezoid grid on (log sigma, log tau) over "
        f"sigma in [{math.exp(g.a[0]):.3g}, {math.exp(g.a[-1]):.3g}], tau in "
        f"[{math.exp(g.b[0]):.3g}, {math.exp(g.b[-1]):.3g}] (edges {DROP:g} nats below the "
        f"maximum, relative error < {RTOL:g}); mu and the group effects integrated "
        f"analytically (normal), mu's marginal the mixture of its normal conditionals; modes "
        f"by Brent's method on the exact marginal density of each scale"
    )
    return ExactPosterior(
        summaries=summaries,
        priors=priors,
        hdi_prob=prob,
        method=method,
        log_evidence=g.lmax + g.log_z,
        curves=curves,
        kernel=k,
        axes=axes,
        mu_marginal=mix,
    )
