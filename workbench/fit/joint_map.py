"""Joint MAP: ONE multi-start estimator for every model and all four variants
{centered, non-centered} x {h-likelihood, with priors}, with ONE start type, ONE classifier and
ONE result record.

`fit(data, eb, parametrization=, priors=, n_starts=, seed=, n_jobs=)` maximises the log joint
density of (y, random effects) given the parameters (without priors: the h-likelihood; with
priors: PyMC's density on its value variables without Jacobians) from K starts and classifies
every end point. Three kernels do the maximisation, chosen by the design:

* one-way data (`data.is_oneway`): `joint_oneway`, closed forms over the per-group sufficient
  statistics (`data.oneway`), in x = (mu, log sigma, log tau, u), O(m) per evaluation;
* other models, centered h-likelihood: `joint_profiled`, the log joint maximised in closed form
  over beta, b and sigma^2 at each theta (lme4's PLS), a small optimisation over theta;
* other models, the other variants: the all-parameter code of this module, in

    x = (beta, log sigma, per block k the packed lower Cholesky factor L_k of G_k (row by row,
         its diagonal on the log scale: PyMC's CholeskyCovPacked value), U)

  with U (m, q) the random effects b (centered) or z (non-centered, b_k = z_k L_k'). The density
  on L_k includes the LKJ/HalfNormal priors with the change of variables from (sd,
  correlations) to L_k that PyMC's LKJCholeskyCov carries. Per start: L-BFGS-B with the exact
  gradient (log sigma and the log-diagonal of every L_k boxed to log sd(y) +- BOX), then Newton
  steps with a finite-difference block-arrowhead Hessian of the exact gradient.

Every kernel returns its end points as `Start` records on the user's scale (beta, sigma^2, G,
random-effect modes b), and `classify` decides each status from what the kernel saw:
interior (Newton decrement < 1e-8 and Hessian negative definite), collapse (a variance runs to
0 with the log joint still rising: the funnel), boundary (the same, levelling off), escape (a
variance runs to infinity, e.g. the non-centered h-likelihood, whose supremum is the
no-pooling fit), not_converged. The headline is the best interior local maximum; with none, the
result says so and reports no point.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse
from scipy import stats as sps
from scipy.special import gammaln

from workbench.fit.eb import EBFit, variance_components
from workbench.fit.optimiser import serial_blas
from workbench.model.design import LMMData
from workbench.model.priors import Priors
from workbench.objectives.deviance import PLS, Layout, solve

PARAMETRIZATIONS = ("centered", "noncentered")
FIND_MAP_NOTE = (
    "pm.find_MAP maximises the same density with priors (constrained scale, no Jacobian) by one "
    "L-BFGS-B run from the model's initial point and reports success even where a variance has "
    "collapsed towards 0; here every start is run to its end and classified, and a collapsed "
    "point is never reported as the MAP."
)
SCALE_NOTE = (
    "a mode on the scale of sigma and of the Cholesky factors L_k of the random-effect "
    "covariances (PyMC's value variables, no Jacobian); not a mode on the log scale or of the "
    "other parametrization"
)
SE_NOTE = (
    "Wald SEs and intervals from the Hessian of the log joint in all parameters at the mode "
    "(ci_hessian)"
)
BOX = 18.0
ESCAPE_AT = 8.0
DECREMENT_TOL = 1e-8
PARALLEL_THRESHOLD = 20000  # n_starts x m below which the starts run in this process
LOG_2PI = float(np.log(2.0 * np.pi))


# ----------------------------------------------------------------------------------------------
# One start type, one classifier, one message (every kernel)


@dataclass(frozen=True)
class Start:
    """One start: where it began (`kind`: eb, pooled, no_pooling, random), where it ended on the
    user's scale and what that end point is. `x` is the end point in the kernel's own
    coordinates (what the Hessian intervals are taken in); it is not part of the output."""

    index: int
    kind: str
    status: str  # interior, collapse, boundary, escape, not_converged
    log_joint: float
    beta: np.ndarray  # (p,)
    sigma2: float
    G: np.ndarray  # (q, q)
    re_mode: np.ndarray = field(repr=False)  # (m, q) the random effects b at the end point
    theta: np.ndarray  # lme4's theta at the end point
    iterations: int
    newton_decrement: float | None
    x: np.ndarray = field(repr=False, compare=False)

    def to_dict(self, oneway: bool = False) -> dict:
        out = {
            "index": self.index,
            "start": self.kind,
            "status": self.status,
            "log_joint": self.log_joint,
            "theta": [float(t) for t in self.theta],
            "iterations": self.iterations,
            "newton_decrement": self.newton_decrement,
        }
        if oneway:
            out.update(mu=float(self.beta[0]), sigma2=self.sigma2, tau2=float(self.G[0, 0]))
        return out


def classify(
    *,
    to_zero: bool = False,
    rising_to_zero: Callable[[], bool] = lambda: False,
    escaping: bool = False,
    sigma_to_zero: bool = False,
    polish: Callable[[], bool] = lambda: False,
    rising_to_infinity: Callable[[], bool] = lambda: False,
) -> str:
    """The status of a run's end point, from what its kernel saw there (the callables are
    evaluated only when the decision needs them):

    * a random-effect variance at the floor of its box (`to_zero`): collapse if the log joint
      still rises along the ray to 0 (`rising_to_zero`), else boundary;
    * the run stopped walking off to a variance -> infinity (`escaping`): escape;
    * sigma at the floor of its box: collapse;
    * otherwise Newton polishing (`polish`: True when it reached a point with a negative
      definite Hessian and Newton decrement < DECREMENT_TOL): interior; if not, escape when the
      log joint still rises along the ray to infinity, else not_converged."""
    if to_zero:
        return "collapse" if rising_to_zero() else "boundary"
    if escaping:
        return "escape"
    if sigma_to_zero:
        return "collapse"
    if polish():
        return "interior"
    return "escape" if rising_to_infinity() else "not_converged"


def tally(starts: Sequence) -> dict[str, int]:
    """How many starts ended in each status."""
    return dict(Counter(s.status for s in starts))


def message(
    starts: Sequence,
    best,
    *,
    parametrization: str,
    with_priors: bool,
    oneway: bool,
) -> str:
    """The result in plain words: the interior mode found (a local one), or why there is none.
    `best` is the best interior start (anything with sigma2 and, one-way, G or tau2), or None."""
    par, k = parametrization, len(starts)
    counts = tally(starts)
    what = ("log joint with priors" if with_priors else "log joint (h-likelihood)") + f", {par}"
    shown = ", ".join(f"{v} {s}" for s, v in sorted(counts.items()))
    variance = "tau" if oneway else "a random-effect variance"
    if best is not None:
        if par == "centered":
            caveat = (
                f"It is a local maximum only: the centered log joint is unbounded as "
                f"{'tau' if oneway else 'a variance'} -> 0."
            )
        else:
            caveat = (
                "It is a mode of the non-centered density, a different point from the centered "
                "joint mode" + (" (the two differ by the term m log tau)." if oneway else ".")
            )
        tau2 = getattr(best, "tau2", None)
        if tau2 is None and oneway:
            tau2 = float(best.G[0, 0])
        est = f"sigma^2 = {best.sigma2:.6g}" + (f", tau^2 = {tau2:.6g}" if oneway else "")
        return (
            f"Interior local maximum of the {what} found ({shown} of {k} starts): {est}. {caveat}"
        )
    hints = []
    if counts.get("collapse"):
        hints.append(
            "the log joint rises without bound as tau -> 0 (all group effects pulled to mu), so "
            "no global joint mode exists"
            if oneway
            else "the log joint rises without bound as a random-effect variance -> 0"
        )
    if counts.get("escape"):
        hints.append(
            f"runs escaped to {variance} -> infinity"
            + (" (the supremum there is the no-pooling fit)" if oneway else "")
        )
    if counts.get("boundary"):
        hints.append(
            "runs stopped at tau -> 0 where the log joint levels off (the pooled fit)"
            if oneway
            else "runs stopped at a variance -> 0 where the log joint levels off"
        )
    if counts.get("not_converged"):
        hints.append("some runs did not converge")
    return (
        f"No interior joint mode of the {what}: none of {k} starts ended at an interior local "
        f"maximum ({shown}); " + "; ".join(hints) + ". No point is reported as the MAP."
    )


def run_all(fn: Callable, jobs: list[tuple], n_jobs: int, work: int) -> list:
    """`fn(*job)` for every job, in `n_jobs` joblib processes (-1: all cores) unless n_jobs is
    1 or `work` (n_starts x m) is below PARALLEL_THRESHOLD, where starting workers costs more
    than the fits. Results do not depend on n_jobs."""
    if n_jobs == 1 or work < PARALLEL_THRESHOLD:
        return [fn(*job) for job in jobs]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs)(delayed(fn)(*job) for job in jobs)


# ----------------------------------------------------------------------------------------------
# The density


@dataclass(frozen=True)
class Context:
    """The data and the layout of x, for one model."""

    data: LMMData

    @property
    def p(self) -> int:
        return self.data.p

    @property
    def m(self) -> int:
        return self.data.n_groups

    @property
    def q(self) -> int:
        return self.data.q

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(b.cols) for b in self.data.blocks)

    @cached_property
    def theta_slices(self) -> tuple[slice, ...]:
        out, at = [], self.p + 1
        for n in self.sizes:
            k = n * (n + 1) // 2
            out.append(slice(at, at + k))
            at += k
        return tuple(out)

    @property
    def u_start(self) -> int:
        return self.theta_slices[-1].stop

    @property
    def size(self) -> int:
        return self.u_start + self.m * self.q

    @cached_property
    def log_diag(self) -> np.ndarray:
        """Indices of x on the log scale: log sigma and the diagonals of the L_k."""
        idx = [self.p]
        for sl, n in zip(self.theta_slices, self.sizes, strict=True):
            r, c = np.tril_indices(n)
            idx += [sl.start + i for i in np.flatnonzero(r == c)]
        return np.array(idx, int)

    @cached_property
    def indicator(self) -> scipy.sparse.csr_matrix:
        d = self.data
        return scipy.sparse.csr_matrix(
            (np.ones(d.n_obs), (d.codes, np.arange(d.n_obs))), shape=(self.m, d.n_obs)
        )

    @cached_property
    def suff(self) -> dict[str, np.ndarray]:
        """Per-group cross products of [X Z y]: the y term in O(m (p + q)^2), not O(N)."""
        d, S = self.data, self.indicator
        Xy = np.column_stack([d.X, d.y])
        XtZ = np.stack([np.asarray(S @ (Xy * d.Z[:, [c]])) for c in range(self.q)], axis=2)
        ZtZ = np.stack([np.asarray(S @ (d.Z * d.Z[:, [c]])) for c in range(self.q)], axis=2)
        return {
            "XtX": d.X.T @ d.X,
            "Xty": d.X.T @ d.y,
            "yty": float(d.y @ d.y),
            "XtZ": XtZ[:, : self.p, :],  # (m, p, q)
            "Zty": XtZ[:, self.p, :],  # (m, q)
            "ZtZ": ZtZ,  # (m, q, q)
        }

    def chol(self, x: np.ndarray, k: int) -> np.ndarray:
        n = self.sizes[k]
        r, c = np.tril_indices(n)
        t = x[self.theta_slices[k]]
        L = np.zeros((n, n))
        L[r, c] = t
        L[np.diag_indices(n)] = np.exp(np.diag(L))
        return L

    def pack(self, L: np.ndarray) -> np.ndarray:
        r, c = np.tril_indices(L.shape[0])
        v = L[r, c].copy()
        v[r == c] = np.log(v[r == c])
        return v

    def U(self, x: np.ndarray) -> np.ndarray:
        return x[self.u_start :].reshape(self.m, self.q)

    def effects(self, x: np.ndarray, par: str) -> np.ndarray:
        """b (m, q) from x."""
        U = self.U(x)
        if par == "centered":
            return U.copy()
        B = np.empty_like(U)
        for k, blk in enumerate(self.data.blocks):
            cols = list(blk.cols)
            B[:, cols] = U[:, cols] @ self.chol(x, k).T
        return B

    def G(self, x: np.ndarray) -> np.ndarray:
        G = np.zeros((self.q, self.q))
        for k, blk in enumerate(self.data.blocks):
            L = self.chol(x, k)
            G[np.ix_(blk.cols, blk.cols)] = L @ L.T
        return G


def _lkj_norm(eta: float, n: int) -> float:
    k = np.arange(1, n)
    return float(
        (n - 1) * gammaln(eta + 0.5 * (n - 1))
        - (0.5 * k * np.log(np.pi) + gammaln(eta + 0.5 * (n - 1 - k))).sum()
    )


def _halfnormal(v, s):
    return 0.5 * np.log(2.0 / np.pi) - np.log(s) - 0.5 * (v / s) ** 2


def log_joint_and_grad(
    x: np.ndarray, ctx: Context, par: str, priors: Priors | None
) -> tuple[float, np.ndarray]:
    """The log joint (PyMC's density without Jacobian when `priors` is given, else the
    h-likelihood) and its exact gradient in x."""
    d, p, m = ctx.data, ctx.p, ctx.m
    beta, s = x[:p], float(x[p])
    sigma2 = float(np.exp(2.0 * s))
    U = ctx.U(x)
    Ls = [ctx.chol(x, k) for k in range(len(ctx.sizes))]
    B = ctx.effects(x, par)
    S = ctx.suff
    XtZb = np.einsum("jpq,jq->p", S["XtZ"], B)
    ZtZb = np.einsum("jab,jb->ja", S["ZtZ"], B)
    XtXb = S["XtX"] @ beta
    Xtr = S["Xty"] - XtXb - XtZb  # X'r
    Ztr = S["Zty"] - np.einsum("jpq,p->jq", S["XtZ"], beta) - ZtZb  # Z_j'r_j, (m, q)
    # r'r = y'y - 2 beta'X'y - 2 sum b_j'Z_j'y + (X beta + Z b)'(X beta + Z b)
    rss = max(
        S["yty"]
        - 2.0 * float(beta @ S["Xty"])
        - 2.0 * float((B * S["Zty"]).sum())
        + float(beta @ XtXb)
        + 2.0 * float(beta @ XtZb)
        + float((B * ZtZb).sum()),
        0.0,
    )
    N = d.n_obs
    val = -0.5 * N * LOG_2PI - N * s - 0.5 * rss / sigma2
    g = np.zeros_like(x)
    g[:p] = Xtr / sigma2
    g[p] = -N + rss / sigma2
    GB = Ztr / sigma2  # d/db of the y term
    gU = np.empty_like(U)
    for k, blk in enumerate(d.blocks):
        cols, L, n = list(blk.cols), Ls[k], ctx.sizes[k]
        Uk, GBk = U[:, cols], GB[:, cols]
        val -= 0.5 * m * n * LOG_2PI
        if par == "centered":
            Linv = np.linalg.inv(L)  # n x n (a handful): faster than triangular solves
            W = Linv @ Uk.T  # (n, m)
            V = Linv.T @ W  # G^-1 b'
            val -= m * float(np.log(np.diag(L)).sum()) + 0.5 * float((W * W).sum())
            gU[:, cols] = GBk - V.T
            gL = V @ W.T - m * np.diag(1.0 / np.diag(L))
        else:
            val -= 0.5 * float((Uk * Uk).sum())
            gU[:, cols] = GBk @ L - Uk
            gL = GBk.T @ Uk
        if priors is not None:
            eta = priors.lkj_eta
            scales = np.array([priors.sd_scale[c] for c in cols])
            sd2 = (L * L).sum(axis=1)
            sd = np.sqrt(sd2)
            i = np.arange(n)
            a = 2.0 * eta - 2.0 + n - i
            dg = np.diag(L)
            val += _lkj_norm(eta, n)
            val += float((a * (np.log(dg) - np.log(sd)) - i * np.log(sd)).sum())
            val += float(_halfnormal(sd, scales).sum())
            coef = (a + i) / sd2 + 1.0 / scales**2
            gL = gL - coef[:, None] * L + np.diag(a / dg)
        rr, cc = np.tril_indices(n)
        gt = gL[rr, cc]
        gt = np.where(rr == cc, gt * L[rr, cc], gt)
        g[ctx.theta_slices[k]] = gt
    if priors is not None:
        loc, sc = np.array(priors.beta_loc), np.array(priors.beta_scale)
        val += float((-0.5 * LOG_2PI - np.log(sc) - 0.5 * ((beta - loc) / sc) ** 2).sum())
        g[:p] -= (beta - loc) / sc**2
        val += float(_halfnormal(np.sqrt(sigma2), priors.sigma_scale))
        g[p] -= sigma2 / priors.sigma_scale**2
    g[ctx.u_start :] = gU.ravel()
    return float(val), g


def log_joint(x, ctx: Context, par: str, priors: Priors | None) -> float:
    return log_joint_and_grad(x, ctx, par, priors)[0]


def pymc_point(x: np.ndarray, ctx: Context, par: str) -> dict:
    """x as a point of `build_model(data, priors, par)`'s value variables."""
    out = {"beta": x[: ctx.p], "sigma_log__": np.asarray(x[ctx.p])}
    U = ctx.U(x)
    for k, blk in enumerate(ctx.data.blocks):
        t = x[ctx.theta_slices[k]]
        if ctx.sizes[k] == 1:
            out[f"sd_{k}_log__"] = np.asarray(t[0])
        else:
            out[f"chol_{k}_cholesky-cov-packed__"] = t
        out[f"{'b' if par == 'centered' else 'z'}_{k}"] = U[:, list(blk.cols)]
    return out


@dataclass(frozen=True)
class Arrow:
    """The Hessian's block-arrowhead structure: a dense global block A (beta, log sigma, the
    covariance factors), the border B (each random effect against the globals) and m diagonal
    q x q blocks D (the random effects of one group touch only their own group)."""

    A: np.ndarray  # (n_g, n_g)
    B: np.ndarray  # (m, q, n_g)
    D: np.ndarray  # (m, q, q)

    def dense(self) -> np.ndarray:
        m, q, n_g = self.B.shape
        H = np.zeros((n_g + m * q, n_g + m * q))
        H[:n_g, :n_g] = self.A
        H[n_g:, :n_g] = self.B.reshape(m * q, n_g)
        H[:n_g, n_g:] = H[n_g:, :n_g].T
        for j in range(m):
            H[n_g + j * q : n_g + (j + 1) * q, n_g + j * q : n_g + (j + 1) * q] = self.D[j]
        return H


@dataclass(frozen=True)
class NegFactor:
    """Cholesky factors of -H by block elimination: Cd_j Cd_j' = -D_j and Cs Cs' = S, the
    Schur complement S = -A - sum_j W_j'W_j with W_j = Cd_j^-1 B_j (O(m q^2 n_g + n_g^3), no
    dense (n_g + m q)^2 matrix)."""

    Cd: np.ndarray
    W: np.ndarray
    Cs: np.ndarray
    B: np.ndarray

    @classmethod
    def of(cls, H: Arrow) -> NegFactor | None:
        """The factor, or None when -H is not positive definite (H not negative definite)."""
        try:
            Cd = np.linalg.cholesky(-H.D)
            W = np.linalg.solve(Cd, H.B)
            S = -H.A - np.einsum("jqa,jqb->ab", W, W)
            Cs = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            return None
        return cls(Cd=Cd, W=W, Cs=Cs, B=H.B)

    def _dinv(self, v: np.ndarray) -> np.ndarray:
        """(-D_j)^-1 v_j for every group, v (m, q)."""
        w = np.linalg.solve(self.Cd, v[..., None])
        return np.linalg.solve(np.swapaxes(self.Cd, 1, 2), w)[..., 0]

    def solve(self, g: np.ndarray) -> np.ndarray:
        """x with -H x = g, by block elimination:
        S x_g = g_g + sum_j B_j'(-D_j)^-1 g_j, then x_j = (-D_j)^-1 (g_j + B_j x_g)."""
        m, q, n_g = self.B.shape
        gg, gu = g[:n_g], g[n_g:].reshape(m, q)
        rhs = gg + np.einsum("jqa,jq->a", self.B, self._dinv(gu))
        xg = scipy.linalg.cho_solve((self.Cs, True), rhs)
        xu = self._dinv(gu + self.B @ xg)
        return np.concatenate([xg, xu.ravel()])

    def global_cov(self) -> np.ndarray:
        """The global block of (-H)^-1: S^-1."""
        return scipy.linalg.cho_solve((self.Cs, True), np.eye(self.Cs.shape[0]))


def hessian(x, ctx: Context, par: str, priors, scale: np.ndarray | None = None) -> Arrow:
    """Central differences of the exact gradient, in (n_global + q) pairs of evaluations: the
    gradient in u_j depends on u_j and the global parameters only, so column c of every u_j is
    perturbed at once (its block-diagonal part read off), and the global columns one by one
    (their cross terms with U read off the same differences)."""
    h = 1e-5 * (np.ones_like(x) if scale is None else scale)
    n_g, m, q = ctx.u_start, ctx.m, ctx.q
    A = np.zeros((n_g, n_g))
    B = np.zeros((m, q, n_g))
    D = np.zeros((m, q, q))

    def diff(e):
        return (
            log_joint_and_grad(x + e, ctx, par, priors)[1]
            - log_joint_and_grad(x - e, ctx, par, priors)[1]
        ) / 2.0

    for i in range(n_g):
        e = np.zeros_like(x)
        e[i] = h[i]
        col = diff(e) / h[i]
        A[:, i] = col[:n_g]
        B[:, :, i] = col[n_g:].reshape(m, q)
    hu = h[n_g:].reshape(m, q)
    rows = n_g + np.arange(m) * q
    for c in range(q):
        e = np.zeros_like(x)
        e[rows + c] = hu[:, c]
        D[:, :, c] = diff(e)[n_g:].reshape(m, q) / hu[:, c : c + 1]
    return Arrow(A=0.5 * (A + A.T), B=B, D=0.5 * (D + np.swapaxes(D, 1, 2)))


# ----------------------------------------------------------------------------------------------
# The all-parameter kernel: one start


def lme4_theta(x: np.ndarray, ctx: Context) -> np.ndarray:
    """lme4's theta (T column by column, G = sigma^2 T T') at x."""
    sigma = float(np.exp(x[ctx.p]))
    T = np.zeros((ctx.q, ctx.q))
    for k, blk in enumerate(ctx.data.blocks):
        T[np.ix_(blk.cols, blk.cols)] = ctx.chol(x, k) / sigma
    return Layout.of(ctx.data.blocks, ctx.q).theta(T)


def _scale(x, ctx: Context, par: str) -> np.ndarray:
    """Rough inverse square roots of the curvatures, to condition L-BFGS-B."""
    d = ctx.data
    sigma2 = float(np.exp(2.0 * x[ctx.p]))
    out = np.ones_like(x)
    out[: ctx.p] = 1.0 / np.sqrt((d.X**2).sum(axis=0) / sigma2 + 1e-12)
    ztz = np.asarray(ctx.indicator @ (d.Z**2))  # (m, q) diagonal of Z_j'Z_j
    G = ctx.G(x)
    if par == "centered":
        curv = ztz / sigma2 + 1.0 / np.maximum(np.diag(G), 1e-300)[None, :]
    else:
        curv = ztz * np.diag(G)[None, :] / sigma2 + 1.0
    out[ctx.u_start :] = (1.0 / np.sqrt(curv)).ravel()
    out[ctx.p : ctx.u_start] = 1.0
    return out


def _shift(x, ctx: Context, par: str, idx: np.ndarray, by: float) -> np.ndarray:
    """x with the rows of L for the log-diagonal positions `idx` scaled by e^by (by < 0: the
    effects of those columns shrink with them, z held in the non-centered form)."""
    out = x.copy()
    for k, blk in enumerate(ctx.data.blocks):
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
                out[ctx.u_start + blk.cols[i] :: ctx.q] *= np.exp(by)
    return out


def _grow(x, ctx: Context, par: str, by: float = 5.0) -> np.ndarray:
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


def _newton(x, ctx, par, priors, lo, hi, scale, max_iter=8):
    value, g = log_joint_and_grad(x, ctx, par, priors)
    dec, it = None, 0
    for it in range(1, max_iter + 1):
        F = NegFactor.of(hessian(x, ctx, par, priors, scale))
        if F is None:
            return x, None, it
        step = F.solve(g)
        dec = float(g @ step)
        if dec < DECREMENT_TOL:
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


def _same(x, ctx: Context) -> np.ndarray:
    return x


def _centered_u(x, ctx: Context) -> np.ndarray:
    """x with the non-centered z replaced by b = z L' (block by block)."""
    out = x.copy()
    out[ctx.u_start :] = ctx.effects(x, "noncentered").ravel()
    return out


def _noncentered_u(x, ctx: Context) -> np.ndarray:
    """x with b replaced by z = L^-1 b (block by block)."""
    out = x.copy()
    U = ctx.U(x).copy()
    for k, blk in enumerate(ctx.data.blocks):
        cols = list(blk.cols)
        U[:, cols] = U[:, cols] @ np.linalg.inv(ctx.chol(x, k)).T
    out[ctx.u_start :] = U.ravel()
    return out


def _negative_definite(H: Arrow) -> bool:
    return NegFactor.of(H) is not None


def run_start(index, kind, x0, ctx: Context, par: str, priors, log_sd: float) -> Start:
    """Maximise the log joint from x0 and classify the end point (one BLAS thread)."""
    with serial_blas():
        return _run_start(index, kind, x0, ctx, par, priors, log_sd)


def _end(index, kind, status, x, ctx: Context, par, priors, iterations, dec) -> Start:
    return Start(
        index=index,
        kind=kind,
        status=status,
        log_joint=log_joint(x, ctx, par, priors),
        beta=x[: ctx.p].copy(),
        sigma2=float(np.exp(2.0 * x[ctx.p])),
        G=ctx.G(x),
        re_mode=ctx.effects(x, par),
        theta=lme4_theta(x, ctx),
        iterations=iterations,
        newton_decrement=dec,
        x=x,
    )


def _run_start(index, kind, x0, ctx: Context, par: str, priors, log_sd: float) -> Start:
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
            v += ctx.m * float(xb[ld[1:]].sum())
            g[ld[1:]] += ctx.m
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
        x, dec, its = _newton(end["x"], ctx, par, priors, lo, hi, _scale(end["x"], ctx, par))
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
    ctx: Context, par: str, beta, sigma2: float, G: np.ndarray, b: np.ndarray, floor: float
) -> np.ndarray:
    """x at (beta, sigma^2, G, b), as a start: the diagonal of each L_k floored at `floor`,
    correlations clipped to +-0.95."""
    x = np.zeros(ctx.size)
    x[: ctx.p] = beta
    x[ctx.p] = 0.5 * np.log(sigma2)
    U = np.array(b, float)
    for k, blk in enumerate(ctx.data.blocks):
        Gk = G[np.ix_(blk.cols, blk.cols)]
        n = len(blk.cols)
        sd = np.sqrt(np.maximum(np.diag(Gk), floor**2))
        C = Gk / np.sqrt(np.outer(np.maximum(np.diag(Gk), 1e-300), np.maximum(np.diag(Gk), 1e-300)))
        C = np.where(np.eye(n) > 0, 1.0, np.clip(C, -0.95, 0.95))
        try:
            L = np.linalg.cholesky(sd[:, None] * C * sd[None, :])
        except np.linalg.LinAlgError:  # a singular EB G: correlations pulled in
            C = np.where(np.eye(n) > 0, 1.0, 0.5 * C)
            L = np.linalg.cholesky(sd[:, None] * C * sd[None, :])
        x[ctx.theta_slices[k]] = ctx.pack(L)
        if par == "noncentered":
            U[:, list(blk.cols)] = U[:, list(blk.cols)] @ np.linalg.inv(L).T
    x[ctx.u_start :] = U.ravel()
    return x


def exact_point(ctx: Context, par: str, s: Start) -> np.ndarray:
    """x of an end point given on the user's scale (G positive definite), without the
    flooring and clipping of `point`: the profiled kernel's mode in this kernel's coordinates."""
    x = np.zeros(ctx.size)
    x[: ctx.p] = s.beta
    x[ctx.p] = 0.5 * np.log(s.sigma2)
    U = np.array(s.re_mode, float)
    for k, blk in enumerate(ctx.data.blocks):
        L = np.linalg.cholesky(s.G[np.ix_(blk.cols, blk.cols)])
        x[ctx.theta_slices[k]] = ctx.pack(L)
        if par == "noncentered":
            U[:, list(blk.cols)] = U[:, list(blk.cols)] @ np.linalg.inv(L).T
    x[ctx.u_start :] = U.ravel()
    return x


def make_starts(
    ctx: Context, par: str, eb: EBFit, k: int, seed: np.random.SeedSequence | int
) -> list[tuple[str, np.ndarray]]:
    """The EB-ML point with its conditional modes, then random relative covariance factors
    around it (beta, b re-solved by penalised least squares there, sigma^2 perturbed), drawn
    from `np.random.default_rng(seed)`."""
    d = ctx.data
    sd_y = float(d.y.std(ddof=1))
    floor = 0.05 * sd_y
    starts = [("eb", point(ctx, par, eb.beta, eb.sigma2, eb.G, eb.re_mode, floor))]
    rng = np.random.default_rng(seed)
    layout = Layout.of(d.blocks, d.q)
    diag = layout.diagonal
    base = np.array(eb.theta, float)
    base[diag] = np.maximum(base[diag], 0.05)
    while len(starts) < k:
        th = base.copy()
        th[diag] *= np.exp(rng.normal(0.0, 1.0, diag.sum()))
        th[~diag] += rng.normal(0.0, 0.3, (~diag).sum()) * base[diag].mean()
        pls = solve(d.factors, layout, th)
        s2 = pls.sigma2("ml") * float(np.exp(rng.normal(0.0, 0.3)))
        G = s2 * pls.T @ pls.T.T
        starts.append(("random", point(ctx, par, pls.beta, s2, G, pls.b, floor)))
    return starts


def intervals(x: np.ndarray, ctx: Context, par: str, priors, level: float) -> dict:
    """Wald intervals from the inverse negative Hessian at the mode x: fixed effects directly,
    sigma^2 and the variances through their logs, correlations through atanh."""
    F = NegFactor.of(hessian(x, ctx, par, priors, _scale(x, ctx, par)))
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
    var, cor = {}, {}
    for k, blk in enumerate(d.blocks):
        sl = ctx.theta_slices[k]

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
    out["variance_components"] = {d.group_name: {"variances": var, "correlations": cor}}
    out["se"] = {"log_sigma": se_ls}
    return out


# ----------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class JointMap:
    """The multi-start joint MAP of one variant, for any model. `ci_hessian` holds the Wald
    intervals at the interior mode (one-way: mu, sigma2, tau2, se, random_effects with group
    means; otherwise fixed_effects, sigma2, variance_components, se); `loglik` the marginal log
    likelihood at the mode."""

    data: LMMData = field(repr=False)
    objective: str  # "h_likelihood" or "posterior"
    parametrization: str
    starts: tuple[Start, ...]
    best: Start | None
    status: str  # interior or no_interior_mode
    message: str
    ci_hessian: dict | None = None
    ci_level: float = 0.95
    loglik: float | None = None

    @property
    def with_priors(self) -> bool:
        return self.objective == "posterior"

    @property
    def oneway(self) -> bool:
        return self.data.is_oneway

    @property
    def beta(self) -> np.ndarray | None:
        return self.best.beta.copy() if self.best else None

    @property
    def sigma2(self) -> float | None:
        return self.best.sigma2 if self.best else None

    @property
    def G(self) -> np.ndarray | None:
        return self.best.G.copy() if self.best else None

    @property
    def re_mode(self) -> np.ndarray | None:
        return self.best.re_mode if self.best else None

    @property
    def theta(self) -> np.ndarray | None:
        return self.best.theta.copy() if self.best else None

    @property
    def log_joint(self) -> float | None:
        return self.best.log_joint if self.best else None

    @property
    def components(self):
        d = self.data
        return variance_components(self.G, d.blocks, d.group_name) if self.best else None

    @cached_property
    def pls(self) -> PLS | None:
        """lme4's penalised least squares at the mode's theta (for the general explanation)."""
        if self.best is None:
            return None
        d = self.data
        return solve(d.factors, Layout.of(d.blocks, d.q), self.best.theta)

    @property
    def re_cov(self) -> np.ndarray | None:
        """Inverse negative Hessian of the log joint in b_j at the mode (parameters fixed)."""
        return self.pls.cond_cov(self.sigma2) if self.best else None

    # the one-way model's names
    @property
    def mu(self) -> float | None:
        return float(self.best.beta[0]) if self.best else None

    @property
    def tau2(self) -> float | None:
        return float(self.best.G[0, 0]) if self.best else None

    @property
    def group_effects(self) -> np.ndarray | None:
        return self.best.re_mode[:, 0].copy() if self.best else None

    @property
    def intervals(self) -> dict:
        """Alias of `ci_hessian` ({} without an interior mode)."""
        return self.ci_hessian or {}

    @property
    def level(self) -> float:
        return self.ci_level

    def counts(self) -> dict[str, int]:
        return tally(self.starts)

    def _estimates(self) -> dict:
        d, ci = self.data, self.ci_hessian or {}
        if self.oneway:
            se = [ci.get("se", {}).get("mu")]
        else:
            se = [ci.get("fixed_effects", {}).get(n, {}).get("se") for n in d.fixed_names]
        return {
            "fixed_effects": {
                n: {"estimate": float(b), "se": s}
                for n, b, s in zip(d.fixed_names, self.best.beta, se, strict=True)
            },
            "variance_components": {d.group_name: self.components.to_dict()},
            "sigma2": self.sigma2,
        }

    def short_dict(self) -> dict:
        """The `joint_map_all` entry: status, log_joint, start_counts, message, the estimates at
        an interior mode, and for one-way data mu, sigma2, tau2 (null without one)."""
        out = {
            "status": self.status,
            "log_joint": self.log_joint,
            "start_counts": self.counts(),
            "message": self.message,
        }
        if self.best is not None:
            out.update(self._estimates())
        if self.oneway:
            out.update(mu=self.mu, sigma2=self.sigma2, tau2=self.tau2)
        return out

    def to_dict(self) -> dict:
        if self.oneway:
            from workbench.fit.joint_oneway import SCALE_NOTE as ONEWAY_SCALE

            scale = ONEWAY_SCALE.format(
                effects="a_j" if self.parametrization == "centered" else "z_j",
                prior_part=" times the priors of mu, sigma and tau" if self.with_priors else "",
            )
        else:
            scale = SCALE_NOTE
        out = {
            "objective": "log joint with priors (PyMC's density without Jacobian)"
            if self.with_priors
            else "log joint without priors (h-likelihood)",
            "parametrization": self.parametrization,
            "scale": scale,
            **self.short_dict(),
            "starts": [s.to_dict(self.oneway) for s in self.starts],
        }
        if self.with_priors:
            out["find_map"] = FIND_MAP_NOTE
        if self.best is not None:
            out["theta"] = [float(t) for t in self.best.theta]
            out["loglik"] = self.loglik
            out["se_note"] = SE_NOTE
        if self.ci_hessian:
            out["ci_level"] = self.ci_level
            out["ci_hessian"] = self.ci_hessian
        return out


# ----------------------------------------------------------------------------------------------
# The estimator


def fit(
    data: LMMData,
    eb: EBFit,
    *,
    parametrization: str = "centered",
    priors: Priors | None = None,
    n_starts: int = 16,
    seed: np.random.SeedSequence | int = 0,
    n_jobs: int = 1,
    level: float = 0.95,
    _kernel: str | None = None,
) -> JointMap:
    """Multi-start joint MAP of one variant: the log joint with `priors` (objective
    "posterior") or without (the h-likelihood), in the centered or non-centered
    parametrization. The random starts draw from `np.random.default_rng(seed)` (the caller
    passes `seeds.seed_for(root, "joint_map", parametrization, "posterior"|"h_likelihood")`);
    starts run in `n_jobs` processes when the work is large, with the same results.
    `_kernel` ("oneway", "profiled", "general") forces a kernel (tests)."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}")
    kernel = _kernel or (
        "oneway"
        if data.is_oneway
        else "profiled"
        if parametrization == "centered" and priors is None
        else "general"
    )
    runner = {"oneway": _fit_oneway, "profiled": _fit_profiled, "general": _fit_general}[kernel]
    starts, ci, loglik = runner(data, eb, parametrization, priors, n_starts, seed, n_jobs, level)
    interior = [s for s in starts if s.status == "interior"]
    best = max(interior, key=lambda s: s.log_joint) if interior else None
    return JointMap(
        data=data,
        objective="posterior" if priors is not None else "h_likelihood",
        parametrization=parametrization,
        starts=tuple(starts),
        best=best,
        status="interior" if best else "no_interior_mode",
        message=message(
            starts,
            best,
            parametrization=parametrization,
            with_priors=priors is not None,
            oneway=data.is_oneway,
        ),
        ci_hessian=ci(best) if best else None,
        ci_level=level,
        loglik=loglik(best) if best else None,
    )


def _fit_oneway(data, eb, par, priors, n_starts, seed, n_jobs, level):
    """The one-way kernel over the per-group statistics (O(m) per evaluation)."""
    from workbench.fit import joint_oneway as kernel
    from workbench.objectives import oneway as dens

    st, sd_y = data.oneway, float(data.y.std(ddof=1))
    eb_point = (float(eb.beta[0]), float(eb.sigma2), float(eb.G[0, 0]))
    log_sd = float(np.log(sd_y))
    jobs = [
        (i, kind, x0, st, par, priors, log_sd)
        for i, (kind, x0) in enumerate(kernel.make_starts(st, par, eb_point, n_starts, seed, sd_y))
    ]
    ends = run_all(kernel.run_start, jobs, n_jobs, n_starts * st.m)
    starts = [kernel.as_start(r) for r in ends]

    def ci(best):
        return kernel.intervals(best.x, st, par, priors, data.labels, level)

    def loglik(best):
        return dens.marginal_loglik((best.beta[0], best.sigma2, best.G[0, 0]), st)

    return starts, ci, loglik


def _general_loglik(data: LMMData):
    """The marginal log likelihood at (beta, sigma^2, theta) of a mode: lme4's at beta_hat(theta)
    minus the quadratic form of beta - beta_hat in X'V^-1 X / sigma^2."""

    def loglik(best: Start) -> float:
        pls = solve(data.factors, Layout.of(data.blocks, data.q), best.theta)
        d = best.beta - pls.beta
        quad = float(d @ np.linalg.solve(pls.beta_cov(best.sigma2), d))
        return float(pls.loglik(best.sigma2) - 0.5 * quad)

    return loglik


def _fit_profiled(data, eb, par, priors, n_starts, seed, n_jobs, level):
    """The centered h-likelihood profiled over beta, b and sigma^2 (a search over theta); the
    intervals from the all-parameter Hessian at the mode."""
    from workbench.fit import joint_profiled as kernel

    jobs = [
        (i, kind, phi, data)
        for i, (kind, phi) in enumerate(kernel.make_starts(data, eb, n_starts, seed))
    ]
    starts = run_all(kernel.run_start, jobs, n_jobs, n_starts * data.n_groups)
    ctx = Context(data)

    def ci(best):
        return intervals(exact_point(ctx, "centered", best), ctx, "centered", None, level)

    return starts, ci, _general_loglik(data)


def _fit_general(data, eb, par, priors, n_starts, seed, n_jobs, level):
    """The all-parameter kernel of this module."""
    ctx = Context(data)
    log_sd = float(np.log(data.y.std(ddof=1)))
    jobs = [
        (i, kind, x0, ctx, par, priors, log_sd)
        for i, (kind, x0) in enumerate(make_starts(ctx, par, eb, n_starts, seed))
    ]
    starts = run_all(run_start, jobs, n_jobs, n_starts * ctx.m)

    def ci(best):
        return intervals(best.x, ctx, par, priors, level)

    return starts, ci, _general_loglik(data)
