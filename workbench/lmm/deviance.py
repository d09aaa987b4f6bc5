"""The objectives of the general LMM, as functions of lme4's covariance parameter theta.

Model: y = X beta + Z b + e, b_j ~ N(0, sigma^2 T T') per group, e ~ N(0, sigma^2 I), with T the
lower-triangular relative covariance factor (block diagonal over the correlated blocks; theta
lists its free elements column by column, as lme4's `getME(fit, "theta")` does).

Everything flows from one penalised least-squares solve (`solve`): with u = T^-1 b,
r^2(theta) = min over beta, u of ||y - X beta - Z T u||^2 + ||u||^2, through the per-group
Cholesky factors L_j L_j' = T' Z_j'Z_j T + I and R_X R_X' = X'X - sum_j R_ZXj' R_ZXj. Then

* ML deviance (lme4):   log|L|^2 + N [1 + log(2 pi r^2 / N)]
* REML criterion:       log|L|^2 + log|R_X|^2 + (N - p) [1 + log(2 pi r^2 / (N - p))]
* minus twice the log joint (h-likelihood, centered b), maximised over beta, b and sigma:
                        (N + m q) [1 + log(2 pi r^2 / (N + m q))] + 2 m log|T|

The ML and joint lines differ only in the volume term: log|L|^2 (the marginal integrates b out)
against 2 m log|T| (the joint keeps b as parameters), which runs to -infinity as any diagonal
element of T goes to 0: the general form of the collapse tau -> 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .design import Block, CrossProducts

KINDS = ("ml", "reml", "joint")


@dataclass(frozen=True)
class Layout:
    """Where each theta element sits in T (q x q)."""

    q: int
    rows: np.ndarray
    cols: np.ndarray

    @property
    def diagonal(self) -> np.ndarray:
        return self.rows == self.cols

    @classmethod
    def of(cls, blocks: tuple[Block, ...], q: int) -> Layout:
        rows, cols = [], []
        for b in blocks:
            for c in range(len(b.cols)):
                for r in range(c, len(b.cols)):
                    rows.append(b.cols[r])
                    cols.append(b.cols[c])
        return cls(q=q, rows=np.array(rows, int), cols=np.array(cols, int))

    def T(self, theta) -> np.ndarray:
        out = np.zeros((self.q, self.q))
        out[self.rows, self.cols] = theta
        return out

    def theta(self, T: np.ndarray) -> np.ndarray:
        return np.asarray(T)[self.rows, self.cols]

    def start(self) -> np.ndarray:
        """lme4's default start: T = I."""
        return self.diagonal.astype(float)

    def bounds(self) -> list[tuple[float | None, float | None]]:
        return [(0.0, None) if d else (None, None) for d in self.diagonal]


@dataclass(frozen=True)
class PLS:
    """The penalised least-squares solution at one theta."""

    theta: np.ndarray
    T: np.ndarray
    L: np.ndarray  # (m, q, q) lower Cholesky factors of T'Z_j'Z_j T + I
    RX: np.ndarray  # (p, p) lower
    beta: np.ndarray
    u: np.ndarray  # (m, q) spherical random effects
    r2: float  # penalised residual sum of squares
    logdet_L: float  # log |L|^2
    logdet_RX: float  # log |R_X|^2
    n_obs: int

    @property
    def b(self) -> np.ndarray:
        """Conditional modes of the random effects, (m, q)."""
        return self.u @ self.T.T

    @property
    def m(self) -> int:
        return int(self.u.shape[0])

    def sigma2(self, kind: str) -> float:
        """sigma^2 maximising the objective `kind` at this theta."""
        return self.r2 / _dof(kind, self.n_obs, self.RX.shape[0], self.u.size)

    def objective(self, kind: str) -> float:
        """lme4's deviance ('ml'), REML criterion ('reml'), or -2 x profiled log joint."""
        dof = _dof(kind, self.n_obs, self.RX.shape[0], self.u.size)
        fit = dof * (1.0 + np.log(2.0 * np.pi * self.r2 / dof))
        if kind == "ml":
            return self.logdet_L + fit
        if kind == "reml":
            return self.logdet_L + self.logdet_RX + fit
        with np.errstate(divide="ignore"):
            return fit + 2.0 * self.m * float(np.log(np.abs(np.diag(self.T))).sum())

    def loglik(self, sigma2: float) -> float:
        """Marginal log likelihood at (beta_hat(theta), sigma2, theta)."""
        return -0.5 * (self.logdet_L + self.n_obs * np.log(2.0 * np.pi * sigma2)
                       + self.r2 / sigma2)

    def cond_cov(self, sigma2: float) -> np.ndarray:
        """Conditional covariance of b_j given y and the parameters (lme4's condVar):
        sigma^2 T (T'Z_j'Z_j T + I)^-1 T', (m, q, q)."""
        Linv = np.linalg.inv(self.L)
        TLi = self.T @ np.swapaxes(Linv, 1, 2)  # T L^-T
        return sigma2 * TLi @ np.swapaxes(TLi, 1, 2)

    def beta_cov(self, sigma2: float) -> np.ndarray:
        """sigma^2 (R_X R_X')^-1, lme4's vcov()."""
        Ri = scipy.linalg.solve_triangular(self.RX, np.eye(self.RX.shape[0]), lower=True)
        return sigma2 * Ri.T @ Ri


def _dof(kind: str, n: int, p: int, mq: int) -> float:
    return {"ml": n, "reml": n - p, "joint": n + mq}[kind]


def _lower_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Batched solve of L_j X_j = B_j (small q; general solver on the triangular factors)."""
    if L.shape[-1] == 1:
        return B / L[..., :1, :1] if B.ndim == 3 else B / L[..., 0]
    if B.ndim == 2:
        return np.linalg.solve(L, B[..., None])[..., 0]
    return np.linalg.solve(L, B)


def solve(cp: CrossProducts, layout: Layout, theta) -> PLS:
    """Penalised least squares at `theta`, from the cross products only (O(m q^3 + m q^2 p))."""
    theta = np.asarray(theta, float)
    T = layout.T(theta)
    A = np.einsum("ab,jac,cd->jbd", T, cp.ztz, T, optimize=True)
    A[:, np.arange(layout.q), np.arange(layout.q)] += 1.0
    L = np.linalg.cholesky(A)
    cu = _lower_solve(L, cp.zty @ T)  # T' Z_j'y_j, as rows
    RZX = _lower_solve(L, np.einsum("ab,jap->jbp", T, cp.ztx))
    RX = np.linalg.cholesky(cp.xtx - np.einsum("jqa,jqb->ab", RZX, RZX))
    cb = scipy.linalg.solve_triangular(RX, cp.xty - np.einsum("jqa,jq->a", RZX, cu), lower=True)
    beta = scipy.linalg.solve_triangular(RX.T, cb, lower=False)
    rhs = cu - RZX @ beta
    u = (np.linalg.solve(np.swapaxes(L, 1, 2), rhs[..., None])[..., 0] if layout.q > 1
         else rhs / L[:, 0, :])
    r2 = max(cp.yty - float((cu * cu).sum()) - float(cb @ cb), 1e-300)
    diagL = np.diagonal(L, axis1=1, axis2=2)
    return PLS(theta=theta, T=T, L=L, RX=RX, beta=beta + cp.shift, u=u, r2=r2,
               logdet_L=2.0 * float(np.log(diagL).sum()),
               logdet_RX=2.0 * float(np.log(np.diag(RX)).sum()), n_obs=int(cp.n.sum()))


def objective(cp: CrossProducts, layout: Layout, theta, kind: str) -> float:
    return solve(cp, layout, theta).objective(kind)
