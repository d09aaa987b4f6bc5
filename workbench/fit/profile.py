"""Profile-likelihood intervals for the variance parameters of a formula model, as lme4's
`confint(fit, method = "profile")`: every random-effect standard deviation, correlation and the
residual sd sigma, keyed by lme4's names (`sd_(Intercept)|Subject`,
`cor_Days.(Intercept)|Subject`, `sigma`; lme4's order: theta's order, then sigma).

The function profiled is the ML deviance over (theta, sigma) with beta profiled out,
    d(theta, sigma) = log|L|^2 + N log(2 pi sigma^2) + r^2(theta) / sigma^2
(= -2 `PLS.loglik(sigma^2)`), in the parameters psi = (sd's, correlations per correlated block,
sigma), G_block = D R D = sigma^2 T T'. For each psi_k the profile is
p_k(c) = min over the other parameters of d with psi_k = c, and the interval is where
p_k(c) - d_min <= qchisq(level, 1) (3.841459 at 95%): each end is a root of
sqrt(p_k(c) - d_min) - sqrt(cut) (nearly linear in c), bracketed by stepping out from the
estimate and then found by `scipy.optimize.brentq`. When the profile stays below the cut up to
the parameter's boundary (sd 0, correlation -1 or 1), that boundary is the end, as lme4 reports.

lme4 profiles the ML deviance even for a REML fit (`profile.merMod` -> `devfun2` ->
`refitML`), so its REML intervals are the ML ones; we follow lme4: a REML fit is refitted by ML
and profiled there (`Profile.refitted_ml`).

Inner minimisations: L-BFGS-B with the exact gradient (below), warm-started from the solution
at the nearest profiled value, on coordinates scaled by the curvature at the optimum. Each
correlated block of k terms is coordinatised by its sds and the canonical partial correlations
(CPCs) of its correlation matrix R: any CPCs in (-1, 1) give a positive definite R (for k = 2
the one CPC is the correlation). To profile a correlation of a block of 3+ terms, the block's
terms are ordered with that pair first, so that its CPC is the correlation itself; the other
CPCs stay free in (-1 + 1e-9, 1 - 1e-9) (at +-1 their derivative is infinite).

Gradient: with Lambda = T T' = G / sigma^2 and the internal blocks (Z_s = Z B,
Lambda_s = B^-1 Lambda B^-T; `deviance.solve`'s per-group factors Rz_j, K_j K_j' =
I + Rz_j Lambda_s Rz_j', e_j), d log|L|^2 / d Lambda_s = sum_j P_j'P_j with P_j = K_j^-1 Rz_j, and
d r^2 / d Lambda_s = -sum_j a_j a_j' with a_j = P_j' K_j^-1 e_j (beta at its minimum: the
envelope theorem); then the chain rule through Lambda = D R D / sigma^2.

Several grouping factors (crossed or nested; `_BlockedProfiler`): the names carry each block's
factor (`sd_(Intercept)|plate`, `sd_(Intercept)|cask:batch`), and d and its exact gradient come
from the blocked factor (`objectives.blocked`): log|L|^2 and r^2 from `blocked.solve`, d r^2 /
d theta by the envelope theorem from the penalised fit's residual, d log|L|^2 / d theta as the
ML gradient (`blocked.objective_and_gradient`) minus N (d r^2 / d theta) / r^2, then the chain
rule through T_b = diag(sd) L(CPCs) / sigma (lower triangular in the coordinate system's term
order; a reordered block gets its columns of Z in that order). The blocked d is good to ~1e-13
only (sums of order N), so its inner minimisations stop at a projected gradient of 1e-6 in the
curvature-scaled coordinates (the profile then within ~1e-12 of its minimum) and start on the
secant through the two nearest profiled solutions. Checked against lme4 on six crossed/nested
models (`tests/test_crossed_profile.py`): ends within 1e-4 relative where lme4's profile is
smooth.

Accuracy: each end is a root to 1e-10 standard errors, the deviance there is d_min + cut to
~1e-9 (`tests/test_lmm_profile.py` checks 1e-6 and that no other parameter values do better).
lme4 interpolates splines through its profile points, so it agrees to ~1e-5 relative where its
profile is smooth; where it warns of a non-monotonic profile (or a correlation sits on +-1
along the profile) its ends can be off by up to 2% and the deviance at them off the cut
(`LME4_OFF` in the tests). `psi_of`, `theta_of` and `ml_deviance` map and evaluate without the
optimiser's coordinates (for checks). A flat profile that never reaches the cut on an unbounded
side gives NaN (lme4: NA) with a note.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import scipy.stats

from workbench.fit import eb_blocked
from workbench.fit.optimiser import serial_blas
from workbench.model.design import LMMData, Scaling
from workbench.objectives import blocked
from workbench.objectives.deviance import Layout, lower_factor, solve

CPC_EDGE = 1e-9  # free CPCs of blocks of 3+ terms stay within +-(1 - CPC_EDGE)
FAR = 1e300  # the objective where it cannot be evaluated (see _Profiler.minimise)
BRENT_XTOL = 1e-10  # root tolerance, in units of the parameter's standard error
MAX_STEPS = 60  # steps out from the estimate looking for the cut
DECREASE_TOL = 1e-6  # a profile below d_min by more than this is reported (a better optimum)


@dataclass(frozen=True)
class ProfileInterval:
    """One parameter's interval; `lower_point` / `upper_point` are the full psi (lme4's order,
    sigma last) where the profile reaches the cut (or the boundary value, `*_at_bound`), and
    `lower_excess` / `upper_excess` the profile there minus d_min minus the cut (~0 at a root,
    < 0 at a boundary end)."""

    name: str
    estimate: float
    lower: float
    upper: float
    lower_at_bound: bool
    upper_at_bound: bool
    lower_point: tuple[float, ...]
    upper_point: tuple[float, ...]
    lower_excess: float
    upper_excess: float


@dataclass(frozen=True)
class Profile:
    """Profile-likelihood intervals of a fit's variance parameters."""

    names: tuple[str, ...]  # lme4's names, lme4's order
    estimate: tuple[float, ...]  # psi at the ML optimum
    deviance_min: float  # d_min (the ML deviance)
    level: float
    cut: float  # qchisq(level, 1)
    intervals: tuple[ProfileInterval, ...]
    n_evals: int  # deviance evaluations (each with its gradient)
    refitted_ml: bool  # the fit was REML: refitted by ML and profiled there (as lme4)
    notes: tuple[str, ...] = field(default=())

    def brief(self) -> str:
        """One line: every interval, lme4's names."""
        from workbench.fit.brief import num

        return ", ".join(f"{iv.name} [{num(iv.lower)}, {num(iv.upper)}]" for iv in self.intervals)

    def __repr__(self) -> str:
        return f"Profile({self.level:.0%} ML-deviance intervals: {self.brief()})"

    def to_dict(self) -> dict[str, list[float]]:
        return {iv.name: [iv.lower, iv.upper] for iv in self.intervals}


def profile(fit, level: float = 0.95) -> Profile:
    """Profile the ML deviance of an EB fit (`eb.fit`; a REML fit is refitted by ML). The
    one-way model goes through its 1-D kernel (`eb_oneway.profile_ml`, same intervals)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if fit.data.is_oneway:
        return _profile_oneway(fit, level)
    return _profile_general(fit, level)


def _profile_oneway(fit, level: float) -> Profile:
    """The one-way kernel: the ML likelihood profiled over sigma^2 and tau^2 from the per-group
    statistics (O(m) per evaluation); lme4's names and this module's record."""
    from workbench.fit import eb_oneway

    p = eb_oneway.profile_ml(fit.data.oneway, level)
    cut = float(scipy.stats.chi2.ppf(level, 1))
    names = tuple(parameter_names(fit.data))  # (sd_(Intercept)|g, sigma)

    def interval(name: str, end, estimate: float, sd_first: bool) -> ProfileInterval:
        def point(value: float, other: float) -> tuple[float, float]:
            return (value, other) if sd_first else (other, value)

        return ProfileInterval(
            name=name,
            estimate=estimate,
            lower=end.lower,
            upper=end.upper,
            lower_at_bound=end.lower_at_bound,
            upper_at_bound=end.upper_at_bound,
            lower_point=point(end.lower, end.lower_other),
            upper_point=point(end.upper, end.upper_other),
            lower_excess=end.lower_excess,
            upper_excess=end.upper_excess,
        )

    intervals = (
        interval(names[0], p.ends["tau"], p.tau, True),
        interval(names[1], p.ends["sigma"], p.sigma, False),
    )
    notes = tuple(
        f"{iv.name}: the profile does not reach the cut above the estimate; that end is "
        f"undetermined (NaN)"
        for iv in intervals
        if math.isnan(iv.upper)
    )
    return Profile(
        names=names,
        estimate=(p.tau, p.sigma),
        deviance_min=p.deviance_min,
        level=level,
        cut=cut,
        intervals=intervals,
        n_evals=p.n_evals,
        refitted_ml=fit.method != "ml",
        notes=notes,
    )


def _profile_general(fit, level: float) -> Profile:
    """The general profiler (any model; the tests run it on one-way data too)."""
    scale = 10.0 ** round(math.log10(_y_scale(fit.data)))
    with serial_blas():
        if scale == 1.0:
            return _profiler(fit).run(level)
        # profile on y / 10^k (exact in floating point) and scale back: the profiler's steps,
        # tolerances and sums of squares are then those of data of unit size (y ~ 1e-90, 1e60)
        from workbench.fit import eb

        data = dataclasses.replace(fit.data, y=fit.data.y / scale)
        if data.n_factors > 1:  # theta is scale-free: the optimum of y / scale is the fit's
            scaled = _Start(fit.method, data, fit.theta, fit.sigma2 / scale**2)
        else:
            scaled = eb.fit(data, fit.method, x0=fit.theta)
        return _rescale(_profiler(scaled).run(level), scale, fit.data.n_obs)


@dataclass(frozen=True)
class _Start:
    """What the profiler reads of a fit: the fit of y / scale, known without refitting (theta
    does not depend on the scale of y, sigma^2 scales with its square)."""

    method: str
    data: LMMData
    theta: np.ndarray
    sigma2: float


def _y_scale(data) -> float:
    """The spread of y (the group factors' scaling with one grouping factor; the same rule,
    `Scaling.of`, from y and X directly with several)."""
    if data.n_factors == 1:
        return data.factors.scaling.y_scale
    names = data.fixed_names
    intercept = names.index("(Intercept)") if "(Intercept)" in names else None
    return Scaling.of(data.X, data.y, intercept).y_scale


def _rescale(p: Profile, scale: float, n_obs: int) -> Profile:
    """A profile of y / scale on the scale of y: sd's and sigma times `scale`, correlations as
    they are, the ML deviance + 2 N log(scale)."""
    factor = np.array([scale if n == "sigma" or n.startswith("sd_") else 1.0 for n in p.names])

    def vec(v):
        return tuple(float(x) for x in np.asarray(v, float) * factor)

    intervals = tuple(
        dataclasses.replace(
            iv,
            estimate=iv.estimate * f,
            lower=iv.lower * f,
            upper=iv.upper * f,
            lower_point=vec(iv.lower_point),
            upper_point=vec(iv.upper_point),
        )
        for iv, f in zip(p.intervals, factor, strict=True)
    )
    return dataclasses.replace(
        p,
        estimate=vec(p.estimate),
        deviance_min=p.deviance_min + 2.0 * n_obs * math.log(scale),
        intervals=intervals,
    )


def profile_intervals(fit, level: float = 0.95) -> dict[str, list[float]]:
    """lme4's `confint(fit, method = "profile", oldNames = FALSE)` for the sd's, correlations
    and sigma: {name: [lower, upper]} in lme4's order."""
    return profile(fit, level).to_dict()


def parameter_names(data) -> list[str]:
    """lme4's profile names (`oldNames = FALSE`) of a formula model's variance parameters: per
    block (lme4's order of terms) its sd's and correlations with the block's grouping factor
    (`sd_(Intercept)|plate`, `cor_x.(Intercept)|g`), then `sigma`."""
    out = []
    for b in data.blocks:
        g = data.groupings[b.factor].name
        k = len(b.names)
        for c in range(k):
            for r in range(c, k):
                out.append(
                    f"sd_{b.names[r]}|{g}" if r == c else f"cor_{b.names[r]}.{b.names[c]}|{g}"
                )
    return out + ["sigma"]


def psi_of(theta, sigma: float, data) -> np.ndarray:
    """(theta, sigma) -> psi (sd's and correlations in theta's order, then sigma)."""
    layout = Layout.of(data.blocks, data.q)
    G = sigma**2 * layout.T(theta) @ layout.T(theta).T
    sd = np.sqrt(np.diag(G))
    out = []
    for b in data.blocks:
        k = len(b.cols)
        for c in range(k):
            for r in range(c, k):
                i, j = b.cols[r], b.cols[c]
                if r == c:
                    out.append(sd[i])
                else:
                    den = sd[i] * sd[j]
                    out.append(G[i, j] / den if den > 0 else 0.0)
    return np.array(out + [sigma], float)


def theta_of(psi, data) -> tuple[np.ndarray, float]:
    """psi -> (lme4's theta, sigma): T = lower factor of D R D / sigma^2 per block."""
    psi = np.asarray(psi, float)
    layout = Layout.of(data.blocks, data.q)
    sigma = float(psi[-1])
    F = np.zeros((data.q, data.q))
    pos = 0
    for b in data.blocks:
        k = len(b.cols)
        sd, R = np.zeros(k), np.eye(k)
        for c in range(k):
            for r in range(c, k):
                if r == c:
                    sd[r] = psi[pos]
                else:
                    R[r, c] = R[c, r] = psi[pos]
                pos += 1
        w, V = np.linalg.eigh(R)
        S = (V * np.sqrt(np.clip(w, 0.0, None))) * sd[:, None]
        F[np.ix_(b.cols, b.cols)] = S
    return layout.theta(lower_factor(F) / sigma), sigma


def ml_deviance(psi, data) -> float:
    """d(theta, sigma) at psi: -2 x the marginal log likelihood, beta at its optimum."""
    theta, sigma = theta_of(psi, data)
    if data.n_factors > 1:
        f = blocked.factor(eb_blocked.terms(data), theta)
        return float(
            f.logdet_L + data.n_obs * math.log(2.0 * math.pi * sigma**2) + f.r**2 / sigma**2
        )
    return -2.0 * solve(data.factors, Layout.of(data.blocks, data.q), theta).loglik(sigma**2)


# --------------------------------------------------------------------------------------------


def _cpc_chol(z: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of the correlation matrix with CPCs z (strictly lower part used):
    L_ij = z_ij sqrt(1 - sum_{l<j} L_il^2), L_ii = sqrt(1 - sum_{l<i} L_il^2). Works on complex z
    (complex-step derivatives)."""
    k = z.shape[0]
    L = np.zeros((k, k), dtype=z.dtype)
    cplx = np.iscomplexobj(z)
    for i in range(k):
        acc = 0.0
        for j in range(i):
            L[i, j] = z[i, j] * np.sqrt(1.0 - acc if cplx else max(1.0 - acc, 0.0))
            acc = acc + L[i, j] ** 2
        L[i, i] = np.sqrt(1.0 - acc if cplx else max(1.0 - acc, 0.0))
    return L


def _chol_cpc(R: np.ndarray) -> np.ndarray:
    """CPCs (strictly lower) of a correlation matrix."""
    k = R.shape[0]
    try:
        L = np.linalg.cholesky(R)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(R)
        L = lower_factor(V * np.sqrt(np.clip(w, 0.0, None)))
    z = np.zeros((k, k))
    for i in range(k):
        acc = 0.0
        for j in range(i):
            den = math.sqrt(max(1.0 - acc, 0.0))
            z[i, j] = float(np.clip(L[i, j] / den, -1.0, 1.0)) if den > 0 else 0.0
            acc += L[i, j] ** 2
    return z


@dataclass
class _Block:
    cols: tuple[int, ...]  # columns of T
    sd_pos: list[int]  # psi positions of the sd's (term order)
    cor_pos: list[int]  # psi positions of the correlations, theta's order
    cor_pairs: list[tuple[int, int]]  # their (r, c) in the block, r > c


@dataclass(frozen=True)
class _System:
    """Coordinates v (same length and slots as psi): per block, an order of its terms and the
    CPCs of the reordered R placed in the block's correlation slots."""

    orders: tuple[tuple[int, ...], ...]
    slots: tuple[tuple[int, ...], ...]  # per block: psi positions of its CPCs, in CPC order


class _Profiler:
    lbfgs_options = {"ftol": 1e-14, "gtol": 1e-9, "maxiter": 1000}  # inner minimisations

    def __init__(self, fit):
        from workbench.fit import eb  # a REML fit is refitted by ML (lme4's refitML

        self.refitted = fit.method != "ml"
        if self.refitted:
            fit = eb.fit(fit.data, "ml", x0=fit.theta)
        self.fit = fit
        self.data = data = fit.data
        self.layout = Layout.of(data.blocks, data.q)
        self.names = parameter_names(data)
        self.n = len(self.names)
        self.blocks: list[_Block] = []
        pos = 0
        for b in data.blocks:
            k = len(b.cols)
            blk = _Block(cols=tuple(b.cols), sd_pos=[0] * k, cor_pos=[], cor_pairs=[])
            for c in range(k):
                for r in range(c, k):
                    if r == c:
                        blk.sd_pos[r] = pos
                    else:
                        blk.cor_pos.append(pos)
                        blk.cor_pairs.append((r, c))
                    pos += 1
            self.blocks.append(blk)
        self.sigma_pos = pos
        self.kind = np.zeros(self.n, int)  # 0 sd, 1 correlation, 2 sigma
        for blk in self.blocks:
            self.kind[blk.cor_pos] = 1
        self.kind[self.sigma_pos] = 2
        self.n_obs = data.n_obs
        self.setup()
        self.n_evals = 0
        self.notes: list[str] = []
        self.psi_hat = psi_of(fit.theta, math.sqrt(fit.sigma2), data)
        self.natural = self.system(None)

    def setup(self) -> None:
        """The evaluation's fixed parts: the per-group factors of one grouping factor."""
        self.gf = self.data.factors
        self.Binv = np.linalg.inv(self.gf.B)

    # ---- coordinate systems -----------------------------------------------------------------

    def system(self, target: int | None) -> _System:
        orders, slots = [], []
        for blk in self.blocks:
            k = len(blk.cols)
            order = tuple(range(k))
            slot = list(blk.cor_pos)
            if target in blk.cor_pos and k >= 3:
                r, c = blk.cor_pairs[blk.cor_pos.index(target)]
                order = (r, c) + tuple(a for a in range(k) if a not in (r, c))
                slot = [target] + [p for p in blk.cor_pos if p != target]
            orders.append(order)
            slots.append(tuple(slot))
        return _System(tuple(orders), tuple(slots))

    def to_v(self, psi: np.ndarray, sys: _System) -> np.ndarray:
        v = np.array(psi, float)
        for blk, order, slot in zip(self.blocks, sys.orders, sys.slots, strict=True):
            k = len(blk.cols)
            if k < 2:
                continue
            R = np.eye(k)
            for p, (r, c) in zip(blk.cor_pos, blk.cor_pairs, strict=True):
                R[r, c] = R[c, r] = psi[p]
            z = _chol_cpc(R[np.ix_(order, order)])
            pairs = [(r, c) for c in range(k) for r in range(c + 1, k)]
            for p, (r, c) in zip(slot, pairs, strict=True):
                v[p] = z[r, c]
        return v

    def _block_R(self, v, blk: _Block, order, slot, derivs: bool):
        """R (term order), a square root of it, and dR/dv for the block's CPC slots."""
        k = len(blk.cols)
        if k == 1:
            return np.eye(1), np.eye(1), []
        pairs = [(r, c) for c in range(k) for r in range(c + 1, k)]
        z = np.zeros((k, k))
        for p, (r, c) in zip(slot, pairs, strict=True):
            z[r, c] = v[p]
        inv = np.argsort(order)
        L = _cpc_chol(z)
        S = L[inv]  # rows back in term order: S S' = R
        R = S @ S.T
        np.fill_diagonal(R, 1.0)
        dR = []
        if derivs:
            if k == 2:
                E = np.array([[0.0, 1.0], [1.0, 0.0]])
                dR = [E]
            else:
                h = 1e-20
                for r, c in pairs:
                    zc = z.astype(complex)
                    zc[r, c] += 1j * h
                    Lc = _cpc_chol(zc)[inv]
                    dR.append(np.imag(Lc @ Lc.T) / h)
        return R, S, dR

    def evaluate(self, v: np.ndarray, sys: _System, derivs: bool = True):
        """d at coordinates v and (with `derivs`) its gradient in v."""
        self.n_evals += 1
        q = self.layout.q
        sigma = float(v[self.sigma_pos])
        F = np.zeros((q, q))
        parts = []
        for blk, order, slot in zip(self.blocks, sys.orders, sys.slots, strict=True):
            sd = v[blk.sd_pos]
            R, S, dR = self._block_R(v, blk, order, slot, derivs)
            F[np.ix_(blk.cols, blk.cols)] = S * sd[:, None]
            parts.append((sd, R, dR))
        T = lower_factor(F) / sigma
        pls = solve(self.gf, self.layout, self.layout.theta(T))
        r2 = pls.r2
        d = pls.logdet_L + self.n_obs * math.log(2.0 * math.pi * sigma**2) + r2 / sigma**2
        if not derivs:
            return d, None
        gf = self.gf
        P = np.linalg.solve(pls.K, gf.Rz)  # K_j^-1 Rz_j
        ke = np.linalg.solve(pls.K, pls.e[..., None])[..., 0]  # K_j^-1 e_j
        a = np.einsum("jab,ja->jb", P, ke)
        Ss = np.einsum("jab,jac->bc", P, P) - (pls.y_scale**2 / sigma**2) * (a.T @ a)
        Sm = self.Binv.T @ Ss @ self.Binv  # d d / d Lambda (user's scale)
        g = np.zeros(self.n)
        s2 = sigma**2
        lam_term = 0.0
        for blk, slot, (sd, R, dR) in zip(self.blocks, sys.slots, parts, strict=True):
            cols = list(blk.cols)
            Sb = Sm[np.ix_(cols, cols)]
            Lam = np.outer(sd, sd) * R / s2
            lam_term += float((Sb * Lam).sum())
            g[blk.sd_pos] = 2.0 * (Sb * R) @ sd / s2
            for p, dRk in zip(slot, dR, strict=True):
                g[p] = float((Sb * dRk * np.outer(sd, sd)).sum()) / s2
        g[self.sigma_pos] = 2.0 * self.n_obs / sigma - 2.0 * r2 / sigma**3 - 2.0 * lam_term / sigma
        return d, g

    def bounds(self, sys: _System) -> tuple[np.ndarray, np.ndarray]:
        lo = np.zeros(self.n)
        hi = np.full(self.n, np.inf)
        for blk in self.blocks:
            edge = 1.0 if len(blk.cols) == 2 else 1.0 - CPC_EDGE
            lo[blk.cor_pos], hi[blk.cor_pos] = -edge, edge
        lo[self.sigma_pos] = 1e-8 * self.psi_hat[self.sigma_pos]
        return lo, hi

    # ---- minimisation -----------------------------------------------------------------------

    def hessian(self, v: np.ndarray, sys: _System) -> np.ndarray:
        lo, hi = self.bounds(sys)
        H = np.zeros((self.n, self.n))
        for k in range(self.n):
            h = 1e-5 * max(abs(v[k]), 1.0) if self.kind[k] != 1 else 1e-5
            up, dn = v.copy(), v.copy()
            up[k] = min(v[k] + h, hi[k])
            dn[k] = max(v[k] - h, lo[k])
            if self.kind[k] == 1 and abs(v[k]) > 1 - 1e-4:
                up[k], dn[k] = (v[k], v[k] - h) if v[k] > 0 else (v[k] + h, v[k])
            H[:, k] = (self.evaluate(up, sys)[1] - self.evaluate(dn, sys)[1]) / (up[k] - dn[k])
        return 0.5 * (H + H.T)

    def minimise(
        self, v0: np.ndarray, sys: _System, free: np.ndarray, scale: np.ndarray, d0: float
    ) -> tuple[float, np.ndarray]:
        lo, hi = self.bounds(sys)
        base = np.array(v0, float)
        base[free] = np.clip(base[free], lo[free], hi[free])
        s = scale[free]

        def fg(x):
            v = base.copy()
            v[free] = base[free] + x * s
            with np.errstate(invalid="ignore", divide="ignore"):
                d, g = self.evaluate(v, sys)
            if not (np.isfinite(d) and np.all(np.isfinite(g))):
                # far out along a profile (an SD of 1e10 sigma) I + M M' loses its I in
                # rounding and its Cholesky factor fails: a wall the line search backs off from
                return FAR, np.zeros(int(free.sum()))
            return d - d0, g[free] * s

        bnds = list(zip((lo[free] - base[free]) / s, (hi[free] - base[free]) / s, strict=True))
        bnds = [(a if np.isfinite(a) else None, b if np.isfinite(b) else None) for a, b in bnds]
        res = scipy.optimize.minimize(
            fg,
            np.zeros(int(free.sum())),
            jac=True,
            method="L-BFGS-B",
            bounds=bnds,
            options=self.lbfgs_options,
        )
        v = base.copy()
        v[free] = base[free] + res.x * s
        f0 = fg(np.zeros(int(free.sum())))[0]
        if f0 < res.fun:  # L-BFGS-B never returns worse than its start; guard anyway
            v = base.copy()
            return f0 + d0, v
        return float(res.fun) + d0, v

    # ---- profiling --------------------------------------------------------------------------

    def scales(self, v_hat: np.ndarray, sys: _System) -> tuple[np.ndarray, np.ndarray]:
        """(scale of each coordinate for the optimiser, the profile's standard error of each)."""
        H = self.hessian(v_hat, sys)
        diag = np.diag(H)
        fallback = np.where(self.kind == 1, 0.3, 0.1 * np.maximum(np.abs(v_hat), 1e-8))
        scale = np.where(diag > 0, np.sqrt(2.0 / np.where(diag > 0, diag, 1.0)), fallback)
        # Profile standard errors: 2 (H^-1)_kk on the curved subspace
        Hs = H / np.outer(scale, scale)
        w, V = np.linalg.eigh(Hs)
        keep = w > 1e-8 * max(float(w.max()), 1e-300)
        Hinv = (V[:, keep] / w[keep]) @ V[:, keep].T
        se = np.sqrt(np.maximum(2.0 * np.diag(Hinv), 0.0)) * scale
        se = np.where((se > 0) & np.isfinite(se), se, scale)
        return scale, se

    def run(self, level: float) -> Profile:
        cut = float(scipy.stats.chi2.ppf(level, 1))
        sys0 = self.natural
        v_hat = self.to_v(self.psi_hat, sys0)
        d_fit, _ = self.evaluate(v_hat, sys0, derivs=False)
        scale0, _ = self.scales(v_hat, sys0)
        d_min, v_hat = self.minimise(v_hat, sys0, np.ones(self.n, bool), scale0, d_fit)
        if d_min < d_fit - 1e-9:
            self.notes.append(
                f"the profile's full minimisation lowered the ML deviance by "
                f"{d_fit - d_min:.3g} below the fit's"
            )
        else:
            d_min, v_hat = d_fit, self.to_v(self.psi_hat, sys0)
        self.psi_hat = self.to_psi(v_hat, sys0)
        self.d_min = d_min
        cache: dict[_System, tuple[np.ndarray, np.ndarray]] = {sys0: self.scales(v_hat, sys0)}
        intervals = []
        for k in range(self.n):
            sys = self.system(k)
            if sys not in cache:
                cache[sys] = self.scales(self.to_v(self.psi_hat, sys), sys)
            scale, se = cache[sys]
            ends = [self.end(k, sys, side, cut, scale, se[k]) for side in (-1, 1)]
            (lo, lo_b, lo_v, lo_x), (hi, hi_b, hi_v, hi_x) = ends
            intervals.append(
                ProfileInterval(
                    name=self.names[k],
                    estimate=float(self.psi_hat[k]),
                    lower=lo,
                    upper=hi,
                    lower_at_bound=lo_b,
                    upper_at_bound=hi_b,
                    lower_point=tuple(float(x) for x in self.to_psi(lo_v, sys)),
                    upper_point=tuple(float(x) for x in self.to_psi(hi_v, sys)),
                    lower_excess=lo_x,
                    upper_excess=hi_x,
                )
            )
        return Profile(
            names=tuple(self.names),
            estimate=tuple(float(x) for x in self.psi_hat),
            deviance_min=float(d_min),
            level=level,
            cut=cut,
            intervals=tuple(intervals),
            n_evals=self.n_evals,
            refitted_ml=self.refitted,
            notes=tuple(self.notes),
        )

    def to_psi(self, v: np.ndarray, sys: _System) -> np.ndarray:
        psi = np.array(v, float)
        for blk, order, slot in zip(self.blocks, sys.orders, sys.slots, strict=True):
            if len(blk.cols) < 2:
                continue
            R, _, _ = self._block_R(v, blk, order, slot, derivs=False)
            for p, (r, c) in zip(blk.cor_pos, blk.cor_pairs, strict=True):
                psi[p] = R[r, c]
        return psi

    def warm_start(self, trace: dict, c: float) -> np.ndarray:
        """The start of the minimisation at psi_k = c: the solution at the nearest profiled
        value."""
        return trace[min(trace, key=lambda x: abs(x - c))][1].copy()

    def end(self, k: int, sys: _System, side: int, cut: float, scale: np.ndarray, se: float):
        """One end of psi_k's interval: (value, at boundary, coordinates there, excess)."""
        lo, hi = self.bounds(sys)
        if self.kind[k] == 1:
            lo[k], hi[k] = -1.0, 1.0
        v_hat = self.to_v(self.psi_hat, sys)
        c_hat = float(v_hat[k])
        bound = lo[k] if side < 0 else hi[k]
        free = np.ones(self.n, bool)
        free[k] = False
        root_cut = math.sqrt(cut)
        trace: dict[float, tuple[float, np.ndarray]] = {c_hat: (self.d_min, v_hat)}

        def prof(c: float) -> tuple[float, np.ndarray]:
            if c in trace:
                return trace[c]
            v0 = self.warm_start(trace, c)
            v0[k] = c
            out = self.minimise(v0, sys, free, scale, self.d_min)
            if out[0] < self.d_min - DECREASE_TOL:
                self.notes.append(
                    f"{self.names[k]}: the profile at {c:.6g} is "
                    f"{self.d_min - out[0]:.3g} below the minimum (a better "
                    f"optimum than the fit's)"
                )
            trace[c] = out
            return out

        def g(c: float) -> float:
            return math.sqrt(max(prof(c)[0] - self.d_min, 0.0)) - root_cut

        step = root_cut * se
        c_in, g_in = c_hat, -root_cut
        c = c_hat + side * step
        for _ in range(MAX_STEPS):
            if (side < 0 and c <= bound) or (side > 0 and c >= bound):
                c = bound
            gc = g(c)
            if gc >= 0:
                break
            if c == bound:
                d_b = prof(c)[0]
                return float(c), True, prof(c)[1], float(d_b - self.d_min - cut)
            # extrapolate the (nearly linear) signed root deviance to the cut, overshooting
            slope = (gc - g_in) / (c - c_in)
            jump = -gc / slope if slope * side > 0 else 2.0 * abs(c - c_in)
            jump = min(max(abs(jump) * 1.2, 0.1 * abs(c - c_hat)), 4.0 * abs(c - c_hat))
            c_in, g_in = c, gc
            c = c + side * jump
        else:
            self.notes.append(
                f"{self.names[k]}: the profile does not reach the cut "
                f"{'below' if side < 0 else 'above'} the estimate (reached "
                f"{c_in:.6g}); that end is undetermined (NaN)"
            )
            return math.nan, False, prof(c_in)[1], math.nan
        a, b = sorted((c_in, c))
        tol = BRENT_XTOL * max(se, 1e-300)
        root = scipy.optimize.brentq(g, a, b, xtol=tol, rtol=4 * np.finfo(float).eps)
        d_r, v_r = prof(root)
        return float(root), False, v_r, float(d_r - self.d_min - cut)


def _profiler(fit) -> _Profiler:
    """The profiler of a fit: per-group factors with one grouping factor, the blocked factor
    with several."""
    return _BlockedProfiler(fit) if fit.data.n_factors > 1 else _Profiler(fit)


class _BlockedProfiler(_Profiler):
    """Several grouping factors: d and its gradient from the blocked factor (`blocked.solve`,
    `blocked.objective_and_gradient`).

    In a coordinate system whose block orders are the identity, T_b = diag(sd) L(z) / sigma is
    lower triangular (L the Cholesky factor of R from the CPCs z), so theta is explicit in v;
    a reordered system (profiling a correlation of a block of 3+ terms) gets blocked terms
    with that block's columns of Z in its order, where the same holds. The chain rule needs
    d d / d theta = d log|L|^2 / d theta + (d r^2 / d theta) / sigma^2: r^2 is min over beta, u
    of ||y - X beta - Z Lambda u||^2 + ||u||^2, so (envelope theorem) d r^2 / d T_b[r, c] =
    -2 sum_i res_i Z_b[i, r] u_b[level_i, c] (res the penalised fit's residual), and d log|L|^2
    / d theta is the ML gradient minus N (d r^2 / d theta) / r^2. Free CPCs stay within
    +-(1 - CPC_EDGE) for blocks of 2 terms too (d L / d z is infinite at +-1)."""

    # The blocked d (sums of terms of order N) is good to ~1e-13 only: at gtol 1e-9 L-BFGS-B
    # ends in failed line searches (tens of evaluations each). In the curvature-scaled
    # coordinates (d changes by ~1 per unit) a projected gradient of 1e-6 leaves the profile
    # ~g^2 / 2 = 5e-13 above its minimum: stop there.
    lbfgs_options = {"ftol": 1e-14, "gtol": 1e-6, "maxiter": 1000}

    def setup(self) -> None:
        self._terms: dict[tuple[tuple[int, ...], ...], tuple] = {}
        self._w = self.data.y - self.data.X @ eb_blocked.terms(self.data).beta_ols

    def block_terms(self, sys: _System) -> tuple:
        """(blocked terms with each block's columns of Z in the system's order, their Z's)."""
        if sys.orders not in self._terms:
            data = self.data
            parts = [
                (data.groupings[b.factor].codes, data.Z[:, [b.cols[i] for i in order]])
                for b, order in zip(data.blocks, sys.orders, strict=True)
            ]
            natural = all(o == tuple(range(len(o))) for o in sys.orders)
            tm = eb_blocked.terms(data) if natural else blocked.Terms.of(data.y, data.X, parts)
            self._terms[sys.orders] = (tm, parts)
        return self._terms[sys.orders]

    def warm_start(self, trace: dict, c: float) -> np.ndarray:
        """The start at psi_k = c: the line through the solutions at the two nearest profiled
        values (the profile trace is smooth, so the inner minimisation starts close; each
        evaluation here costs two factorisations)."""
        if len(trace) < 2:
            return super().warm_start(trace, c)
        a, b = sorted(trace, key=lambda x: abs(x - c))[:2]
        va, vb = trace[a][1], trace[b][1]
        return va + (c - a) / (b - a) * (vb - va)

    def bounds(self, sys: _System) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = super().bounds(sys)
        for blk in self.blocks:
            lo[blk.cor_pos], hi[blk.cor_pos] = -(1.0 - CPC_EDGE), 1.0 - CPC_EDGE
        return lo, hi

    def evaluate(self, v: np.ndarray, sys: _System, derivs: bool = True):
        """d at coordinates v and (with `derivs`) its gradient in v."""
        self.n_evals += 1
        tm, parts = self.block_terms(sys)
        sigma = float(v[self.sigma_pos])
        N = self.n_obs
        thetas, Ls = [], []
        for blk, order, slot in zip(self.blocks, sys.orders, sys.slots, strict=True):
            k = len(blk.cols)
            z = np.zeros((k, k))
            for p, (r, c) in zip(slot, _pairs(k), strict=True):
                z[r, c] = v[p]
            L = _cpc_chol(z)
            sd = v[[blk.sd_pos[i] for i in order]]
            rows, cols = _theta_index(k)
            thetas.append((sd[:, None] * L / sigma)[rows, cols])  # lme4's order
            Ls.append((z, L, sd))
        theta = np.concatenate(thetas)
        try:
            if not derivs:
                f = blocked.factor(tm, theta)
                d = f.logdet_L + N * math.log(2.0 * math.pi * sigma**2) + f.r**2 / sigma**2
                return d, None
            sol = blocked.solve(tm, theta)
            _, g_ml = blocked.objective_and_gradient(tm, theta, "ml")
        except np.linalg.LinAlgError:
            # far out along a profile a Schur complement loses its I in rounding: as the
            # one-factor path's non-finite values, a wall the line search backs off from
            return math.inf, (np.full(self.n, np.nan) if derivs else None)
        r2 = sol.r2
        d = sol.logdet_L + N * math.log(2.0 * math.pi * sigma**2) + r2 / sigma**2
        dr2 = np.empty_like(theta)
        res = self._w - self.data.X @ (sol.beta - tm.beta_ols)
        for (codes, Z), b in zip(parts, sol.b, strict=True):
            res -= np.einsum("ia,ia->i", Z, b[codes])
        for (codes, Z), u, sl in zip(parts, sol.u, tm.theta_slices, strict=True):
            rows, cols = _theta_index(Z.shape[1])
            full = -2.0 * (Z * res[:, None]).T @ u[codes]  # [r, c]: sum_i res_i Z_ir u_ic
            dr2[sl] = full[rows, cols]
        g_theta = g_ml + dr2 * (1.0 / sigma**2 - N / r2)
        g = np.zeros(self.n)
        for blk, order, slot, sl, (z, L, sd) in zip(
            self.blocks, sys.orders, sys.slots, tm.theta_slices, Ls, strict=True
        ):
            k = len(blk.cols)
            rows, cols = _theta_index(k)
            GT = np.zeros((k, k))
            GT[rows, cols] = g_theta[sl]
            for i in range(k):
                g[blk.sd_pos[order[i]]] = float(GT[i] @ L[i]) / sigma
            for p, (r, c) in zip(slot, _pairs(k), strict=True):
                if abs(z[r, c]) >= 1.0:  # a correlation held on its bound (never free there)
                    continue
                zc = z.astype(complex)
                zc[r, c] += 1e-20j
                dL = np.imag(_cpc_chol(zc)) / 1e-20
                g[p] = float((GT * sd[:, None] * dL).sum()) / sigma
        g[self.sigma_pos] = 2.0 * N / sigma - 2.0 * r2 / sigma**3 - float(g_theta @ theta) / sigma
        return d, g


def _pairs(k: int) -> list[tuple[int, int]]:
    """The strictly lower (r, c) of a k x k matrix, column by column (the CPC slots' order)."""
    return [(r, c) for c in range(k) for r in range(c + 1, k)]


def _theta_index(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of theta's elements of a q x q lower-triangular T, column by column."""
    rows = [r for c in range(q) for r in range(c, q)]
    cols = [c for c in range(q) for _ in range(c, q)]
    return np.array(rows, int), np.array(cols, int)
