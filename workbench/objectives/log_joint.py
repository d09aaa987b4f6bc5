"""THE log joint of the general LMM (and its block-arrowhead Hessian): the density PyMC
samples for `model.pymc.build_model(data, priors, parametrization)` on its value variables,
without the transforms' Jacobians (`compile_logp(jacobian=False)`; without priors the
h-likelihood), in

    x = (beta, log sigma, per block k the packed lower Cholesky factor L_k of G_k (row by row,
         its diagonal on the log scale: PyMC's CholeskyCovPacked value), U)

with U the random effects b (centered) or z (non-centered, b_kj = L_k z_kj): for one grouping
factor (`Context`) U is (m, q), group by group, and the Hessian has a dense (beta, sigma, L)
block, a border, and m diagonal q x q blocks (`Arrow`, `NegFactor`); for several (`Crossed`) U
is lme4's vector b (block after block, level by level) and the random-effect block of the
Hessian, Z'Z / sigma^2 + G^-1, is sparse but not block diagonal (`SparseArrow`,
`SparseNegFactor`: a sparse LU factor by SuperLU with a symmetric ordering). The
density on L_k includes the LKJ/HalfNormal priors with the change of variables from (sd,
correlations) to L_k that PyMC's LKJCholeskyCov carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse
import scipy.sparse.linalg
from scipy.special import gammaln

from workbench.model.design import LMMData
from workbench.model.priors import Priors

LOG_2PI = float(np.log(2.0 * np.pi))

# ----------------------------------------------------------------------------------------------
# The density


class _Layout:
    """What both layouts of x share: beta, log sigma, the packed L_k of every block."""

    data: LMMData

    @property
    def p(self) -> int:
        return self.data.p

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

    @cached_property
    def log_diag(self) -> np.ndarray:
        """Indices of x on the log scale: log sigma and the diagonals of the L_k."""
        idx = [self.p]
        for sl, n in zip(self.theta_slices, self.sizes, strict=True):
            r, c = np.tril_indices(n)
            idx += [sl.start + i for i in np.flatnonzero(r == c)]
        return np.array(idx, int)

    @cached_property
    def diag_levels(self) -> np.ndarray:
        """For each diagonal of an L_k (log_diag[1:]), the number of levels of its block: the
        coefficient of that log-diagonal in log|det Lambda|."""
        return np.array([m for m, n in zip(self.levels, self.sizes, strict=True) for _ in range(n)])

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

    def G(self, x: np.ndarray) -> np.ndarray:
        G = np.zeros((self.q, self.q))
        for k, blk in enumerate(self.data.blocks):
            L = self.chol(x, k)
            G[np.ix_(blk.cols, blk.cols)] = L @ L.T
        return G

    def effects(self, x: np.ndarray, par: str) -> np.ndarray:
        """b from x, in the layout of U."""
        U = self.U(x)
        if par == "centered":
            return U.copy()
        B = np.empty_like(U)
        for k in range(len(self.sizes)):
            self.put(B, k, self.block(U, k) @ self.chol(x, k).T)
        return B

    def u_column(self) -> np.ndarray:
        """For every random effect (the layout of U), its column of Z (of G)."""
        out = np.empty(self.size - self.u_start, int).reshape(self.U(np.zeros(self.size)).shape)
        for k, blk in enumerate(self.data.blocks):
            self.put(out, k, np.broadcast_to(np.array(blk.cols), (self.levels[k], len(blk.cols))))
        return out

    def u_index(self, k: int, i: int) -> np.ndarray:
        """The positions in x of column i of block k's random effects, level by level."""
        pos = np.arange(self.size - self.u_start).reshape(self.U(np.zeros(self.size)).shape)
        return self.u_start + self.block(pos, k)[:, i]


@dataclass(frozen=True)
class Context(_Layout):
    """The data and the layout of x for one grouping factor: U (m, q), group by group."""

    data: LMMData

    @property
    def m(self) -> int:
        return self.data.n_groups

    @property
    def levels(self) -> tuple[int, ...]:
        return (self.m,) * len(self.sizes)

    @property
    def n_levels(self) -> int:
        """Levels of all grouping factors."""
        return self.m

    @property
    def size(self) -> int:
        return self.u_start + self.m * self.q

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

    def ztz_diag(self) -> np.ndarray:
        """The diagonal of Z'Z in the layout of U."""
        return np.asarray(self.indicator @ (self.data.Z**2))

    def residual_part(self, beta: np.ndarray, B: np.ndarray):
        return _residual_part(self, beta, B)

    def U(self, x: np.ndarray) -> np.ndarray:
        return x[self.u_start :].reshape(self.m, self.q)

    def block(self, A: np.ndarray, k: int) -> np.ndarray:
        """Block k's part of an array in the layout of U, (levels, columns)."""
        return A[:, list(self.data.blocks[k].cols)]

    def put(self, out: np.ndarray, k: int, v: np.ndarray) -> None:
        out[:, list(self.data.blocks[k].cols)] = v

    def re_mode(self, B: np.ndarray) -> np.ndarray:
        """b as a `Start` holds it: (m, q)."""
        return B.copy()

    def from_modes(self, modes) -> np.ndarray:
        """The inverse of `re_mode`."""
        return np.array(modes, float)


@dataclass(frozen=True)
class Crossed(_Layout):
    """The data and the layout of x for several grouping factors: U is the vector of all
    random effects, block after block (data.blocks order), level by level within a block, the
    columns of a level together (lme4's order of b). The y term is evaluated from the sparse
    N x Q design of the random effects, O(N sum q_k) per evaluation."""

    data: LMMData

    @cached_property
    def levels(self) -> tuple[int, ...]:
        return tuple(self.data.groupings[b.factor].n_levels for b in self.data.blocks)

    @property
    def n_levels(self) -> int:
        return sum(g.n_levels for g in self.data.groupings)

    @cached_property
    def offsets(self) -> np.ndarray:
        dims = [m * n for m, n in zip(self.levels, self.sizes, strict=True)]
        return np.concatenate([[0], np.cumsum(dims)]).astype(int)

    @property
    def n_re(self) -> int:
        return int(self.offsets[-1])

    @property
    def size(self) -> int:
        return self.u_start + self.n_re

    @cached_property
    def Zs(self) -> scipy.sparse.csr_matrix:
        """The N x Q design of the random effects (in the layout of U)."""
        d, rows, cols, vals = self.data, [], [], []
        for k, blk in enumerate(d.blocks):
            codes, n = d.groupings[blk.factor].codes, self.sizes[k]
            for i, c in enumerate(blk.cols):
                rows.append(np.arange(d.n_obs))
                cols.append(self.offsets[k] + codes * n + i)
                vals.append(d.Z[:, c])
        return scipy.sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(d.n_obs, self.n_re),
        )

    @cached_property
    def ZtZ(self) -> scipy.sparse.csc_matrix:
        return (self.Zs.T @ self.Zs).tocsc()

    def ztz_diag(self) -> np.ndarray:
        return np.asarray(self.ZtZ.diagonal())

    def residual_part(self, beta: np.ndarray, B: np.ndarray):
        """rss, X'r and Z'r from the residual itself (no cancellation)."""
        d = self.data
        r = d.y - d.X @ beta - self.Zs @ B
        return float(r @ r), d.X.T @ r, self.Zs.T @ r

    def U(self, x: np.ndarray) -> np.ndarray:
        return x[self.u_start :]

    def block(self, A: np.ndarray, k: int) -> np.ndarray:
        return A[self.offsets[k] : self.offsets[k + 1]].reshape(self.levels[k], self.sizes[k])

    def put(self, out: np.ndarray, k: int, v: np.ndarray) -> None:
        out[self.offsets[k] : self.offsets[k + 1]] = np.asarray(v).ravel()

    def per_block(self, B: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.block(B, k).copy() for k in range(len(self.sizes)))

    def re_mode(self, B: np.ndarray) -> tuple[np.ndarray, ...]:
        """b as a `Start` holds it: per grouping factor (n_k, q_k), the columns
        `data.factor_cols(k)` (its blocks in order)."""
        d = self.data
        return tuple(
            np.concatenate(
                [self.block(B, i) for i, b in enumerate(d.blocks) if b.factor == f], axis=1
            )
            for f in range(d.n_factors)
        )

    def from_modes(self, modes) -> np.ndarray:
        """The inverse of `re_mode`."""
        d, out = self.data, np.empty(self.n_re)
        for f in range(d.n_factors):
            at = 0
            for i, b in enumerate(d.blocks):
                if b.factor == f:
                    self.put(out, i, np.asarray(modes[f])[:, at : at + len(b.cols)])
                    at += len(b.cols)
        return out

    def lambda_of(self, x: np.ndarray) -> scipy.sparse.csc_matrix:
        """blockdiag over blocks and levels of L_k (b = this @ z)."""
        mats = [
            scipy.sparse.kron(scipy.sparse.identity(m), self.chol(x, k))
            for k, m in enumerate(self.levels)
        ]
        return scipy.sparse.block_diag(mats, format="csc")

    def precision_of(self, x: np.ndarray) -> scipy.sparse.csc_matrix:
        """blockdiag over blocks and levels of G_k^-1 (the prior precision of b)."""
        mats = []
        for k, m in enumerate(self.levels):
            Li = np.linalg.inv(self.chol(x, k))
            mats.append(scipy.sparse.kron(scipy.sparse.identity(m), Li.T @ Li))
        return scipy.sparse.block_diag(mats, format="csc")


def context(data: LMMData) -> Context | Crossed:
    """The layout of x for `data`: per group with one grouping factor, else `Crossed`."""
    return Context(data) if data.n_factors == 1 else Crossed(data)


def _lkj_norm(eta: float, n: int) -> float:
    k = np.arange(1, n)
    return float(
        (n - 1) * gammaln(eta + 0.5 * (n - 1))
        - (0.5 * k * np.log(np.pi) + gammaln(eta + 0.5 * (n - 1 - k))).sum()
    )


def _halfnormal(v, s):
    return 0.5 * np.log(2.0 / np.pi) - np.log(s) - 0.5 * (v / s) ** 2


def _residual_part(ctx: Context, beta: np.ndarray, B: np.ndarray):
    """rss, X'r and Z'r (in the layout of U) for one grouping factor, from the per-group
    cross products."""
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
    return rss, Xtr, Ztr


def log_joint_and_grad(
    x: np.ndarray, ctx, par: str, priors: Priors | None
) -> tuple[float, np.ndarray]:
    """The log joint (PyMC's density without Jacobian when `priors` is given, else the
    h-likelihood) and its exact gradient in x (`ctx`: a `Context` or a `Crossed`)."""
    d, p = ctx.data, ctx.p
    beta, s = x[:p], float(x[p])
    sigma2 = float(np.exp(2.0 * s))
    U = ctx.U(x)
    Ls = [ctx.chol(x, k) for k in range(len(ctx.sizes))]
    B = ctx.effects(x, par)
    rss, Xtr, Ztr = ctx.residual_part(beta, B)
    N = d.n_obs
    val = -0.5 * N * LOG_2PI - N * s - 0.5 * rss / sigma2
    g = np.zeros_like(x)
    g[:p] = Xtr / sigma2
    g[p] = -N + rss / sigma2
    GB = Ztr / sigma2  # d/db of the y term
    gU = np.empty_like(U)
    for k, blk in enumerate(d.blocks):
        cols, L, n = list(blk.cols), Ls[k], ctx.sizes[k]
        m = ctx.levels[k]
        Uk, GBk = ctx.block(U, k), ctx.block(GB, k)
        val -= 0.5 * m * n * LOG_2PI
        if par == "centered":
            Linv = np.linalg.inv(L)  # n x n (a handful): faster than triangular solves
            W = Linv @ Uk.T  # (n, m)
            V = Linv.T @ W  # G^-1 b'
            val -= m * float(np.log(np.diag(L)).sum()) + 0.5 * float((W * W).sum())
            ctx.put(gU, k, GBk - V.T)
            gL = V @ W.T - m * np.diag(1.0 / np.diag(L))
        else:
            val -= 0.5 * float((Uk * Uk).sum())
            ctx.put(gU, k, GBk @ L - Uk)
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
    for k in range(len(ctx.sizes)):
        t = x[ctx.theta_slices[k]]
        if ctx.sizes[k] == 1:
            out[f"sd_{k}_log__"] = np.asarray(t[0])
        else:
            out[f"chol_{k}_cholesky-cov-packed__"] = t
        out[f"{'b' if par == 'centered' else 'z'}_{k}"] = ctx.block(U, k)
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
    def of(cls, H):
        """The factor, or None when -H is not positive definite (H not negative definite);
        a `SparseArrow` gives a `SparseNegFactor`."""
        if isinstance(H, SparseArrow):
            return SparseNegFactor.of(H)
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


def hessian(x, ctx, par: str, priors, scale: np.ndarray | None = None):
    """The Hessian of the log joint at x: an `Arrow` for one grouping factor, a
    `SparseArrow` for several (`crossed_hessian`).

    One factor: central differences of the exact gradient, in (n_global + q) pairs of
    evaluations: the gradient in u_j depends on u_j and the global parameters only, so column c
    of every u_j is perturbed at once (its block-diagonal part read off), and the global columns
    one by one (their cross terms with U read off the same differences)."""
    if isinstance(ctx, Crossed):
        return crossed_hessian(x, ctx, par, priors, scale)
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
# Several grouping factors: the random-effect block is sparse, no longer block diagonal


@dataclass(frozen=True)
class SparseArrow:
    """The Hessian with several grouping factors: the dense global block A, the border B (Q,
    n_g) and the random-effect block D (Q x Q, sparse): -(Z'Z / sigma^2 + blockdiag G_k^-1)
    centered, -(Lambda'Z'Z Lambda / sigma^2 + I) non-centered (Lambda = blockdiag L_k)."""

    A: np.ndarray
    B: np.ndarray
    D: scipy.sparse.csc_matrix

    def dense(self) -> np.ndarray:
        return np.block([[self.A, self.B.T], [self.B, self.D.toarray()]])


def crossed_hessian(x, ctx: Crossed, par: str, priors, scale: np.ndarray | None = None):
    """A and B by central differences of the exact gradient in the global parameters (2 n_g
    evaluations); D exactly (the gradient is linear in the random effects)."""
    h = 1e-5 * (np.ones_like(x) if scale is None else scale)
    n_g = ctx.u_start
    A = np.zeros((n_g, n_g))
    B = np.zeros((ctx.n_re, n_g))
    for i in range(n_g):
        e = np.zeros_like(x)
        e[i] = h[i]
        col = (
            log_joint_and_grad(x + e, ctx, par, priors)[1]
            - log_joint_and_grad(x - e, ctx, par, priors)[1]
        ) / (2.0 * h[i])
        A[:, i] = col[:n_g]
        B[:, i] = col[n_g:]
    sigma2 = float(np.exp(2.0 * x[ctx.p]))
    if par == "centered":
        D = -(ctx.ZtZ / sigma2 + ctx.precision_of(x))
    else:
        Lam = ctx.lambda_of(x)
        D = -((Lam.T @ ctx.ZtZ @ Lam) / sigma2 + scipy.sparse.identity(ctx.n_re))
    return SparseArrow(A=0.5 * (A + A.T), B=B, D=scipy.sparse.csc_matrix(D))


@dataclass(frozen=True)
class SparseNegFactor:
    """-H by block elimination with a sparse random-effect block: -D factored by SuperLU with a
    symmetric fill-reducing ordering (minimum degree on A + A') and pivots on the diagonal only,
    so that its U diagonal holds the pivots of a symmetric factorisation, all positive when -D
    is positive definite; W = (-D)^-1 B and the Cholesky factor Cs of S = -A - B'W. -D is
    positive definite by construction (Z'Z / sigma^2 plus a positive definite prior precision),
    so H is negative definite iff S is. (On the reference models the factor of -D costs
    milliseconds: its fill is the blocked Cholesky's, a dense LAPACK factor of the same order
    seconds.)"""

    lu: object = field(repr=False)  # scipy.sparse.linalg.SuperLU of -D
    Cs: np.ndarray
    B: np.ndarray

    @classmethod
    def of(cls, H: SparseArrow) -> SparseNegFactor | None:
        try:
            lu = scipy.sparse.linalg.splu(
                (-H.D).tocsc(),
                permc_spec="MMD_AT_PLUS_A",
                diag_pivot_thresh=0.0,
                options={"SymmetricMode": True},
            )
            if not np.all(lu.U.diagonal() > 0):
                return None
            W = lu.solve(H.B)
            Cs = np.linalg.cholesky(-H.A - H.B.T @ W)
        except (np.linalg.LinAlgError, RuntimeError):
            return None
        return cls(lu=lu, Cs=Cs, B=H.B)

    def dsolve(self, v: np.ndarray) -> np.ndarray:
        """(-D)^-1 v."""
        return self.lu.solve(v)

    def solve(self, g: np.ndarray) -> np.ndarray:
        """x with -H x = g."""
        n_g = self.B.shape[1]
        gg, gu = g[:n_g], g[n_g:]
        rhs = gg + self.B.T @ self.dsolve(gu)
        xg = scipy.linalg.cho_solve((self.Cs, True), rhs)
        xu = self.dsolve(gu + self.B @ xg)
        return np.concatenate([xg, xu])

    def global_cov(self) -> np.ndarray:
        return scipy.linalg.cho_solve((self.Cs, True), np.eye(self.Cs.shape[0]))
