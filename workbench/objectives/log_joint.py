"""THE log joint of the general LMM (and its block-arrowhead Hessian): the density PyMC
samples for `model.pymc.build_model(data, priors, parametrization)` on its value variables,
without the transforms' Jacobians (`compile_logp(jacobian=False)`; without priors the
h-likelihood), in

    x = (beta, log sigma, per block k the packed lower Cholesky factor L_k of G_k (row by row,
         its diagonal on the log scale: PyMC's CholeskyCovPacked value), U)

with U (m, q) the random effects b (centered) or z (non-centered, b_k = z_k L_k'). The density
on L_k includes the LKJ/HalfNormal priors with the change of variables from (sd,
correlations) to L_k that PyMC's LKJCholeskyCov carries. The Hessian has a dense
(beta, sigma, L) block, a border, and m diagonal q x q blocks (`Arrow`, `NegFactor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse
from scipy.special import gammaln

from workbench.model.design import LMMData
from workbench.model.priors import Priors

LOG_2PI = float(np.log(2.0 * np.pi))

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
