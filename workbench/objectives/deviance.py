"""The objectives of the general LMM, as functions of lme4's covariance parameter theta.

Model: y = X beta + Z b + e, b_j ~ N(0, sigma^2 T T') per group, e ~ N(0, sigma^2 I), with T the
lower-triangular relative covariance factor (block diagonal over the correlated blocks; theta
lists its free elements column by column, as lme4's `getME(fit, "theta")` does).

Everything flows from one penalised least-squares solve (`solve`): with u = T^-1 b,
r^2(theta) = min over beta, u of ||y - X beta - Z T u||^2 + ||u||^2. It works on the per-group
triangular factors of `design.group_factors` (Rz_j'Rz_j = Z_j'Z_j, Rz_j'C_j = Z_j'[X y], the
within-group remainder RW): with M_j = Rz_j T and K_j K_j' = I + M_j M_j',
[X y]' V^-1 [X y] = RW'RW + sum_j (K_j^-1 C_j)'(K_j^-1 C_j), a sum of positive terms that one QR
of the stacked rows factors into R_X, the fixed-effects right-hand side and r (no "X'X minus a
sum" cancellation), and log|L|^2 = sum_j log|K_j|^2 (= log|T'Z'ZT + I|). X and y are centred and
scaled inside (`design.Scaling`); every number here is mapped back to the user's scale. Then

* ML deviance (lme4):   log|L|^2 + N [1 + log(2 pi r^2 / N)]
* REML criterion:       log|L|^2 + log|R_X|^2 + (N - p) [1 + log(2 pi r^2 / (N - p))]
* minus twice the log joint (h-likelihood, centered b), maximised over beta, b and sigma:
                        (N + m q) [1 + log(2 pi r^2 / (N + m q))] + 2 m log|T|

The ML and joint lines differ only in the volume term: log|L|^2 (the marginal integrates b out)
against 2 m log|T| (the joint keeps b as parameters), which runs to -infinity as any diagonal
element of T goes to 0: the general form of the collapse tau -> 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from workbench.model.design import Block, GroupFactors

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

    def mirror(self, theta, i: int) -> np.ndarray:
        """theta with the column of diagonal element i negated below the diagonal: while that
        element is 0, the same T T' (and so the same model)."""
        out = np.array(theta, float)
        out[(self.cols == self.cols[i]) & (self.rows > self.rows[i])] *= -1.0
        return out

    def starts(self) -> list[np.ndarray]:
        """lme4's start T = I, a small one (0.2 I), and for each correlated block the
        correlation patterns +-0.5 (first member's sign fixed, at most 4 patterns a block):
        the starts a likelihood with a mode per correlation sign, or a better one on a bound,
        needs."""
        out = [self.start(), 0.2 * self.start()]
        label = self.block_of
        for blk in sorted(set(label[self.rows[self.rows != self.cols]])):
            idx = [int(k) for k in np.flatnonzero(label == blk)]
            rest = idx[1:][:2]
            for mask in range(2 ** len(rest)):
                sign = np.ones(self.q)
                sign[[k for b, k in enumerate(rest) if mask >> b & 1]] = -1.0
                C = np.eye(self.q)
                for i in idx:
                    for j in idx:
                        if i != j:
                            C[i, j] = 0.5 * sign[i] * sign[j]
                out.append(self.theta(np.linalg.cholesky(C)))
        return out

    @property
    def block_of(self) -> np.ndarray:
        """Block index of each column of T (columns joined by an off-diagonal element)."""
        label = np.arange(self.q)
        for r, c in zip(self.rows, self.cols, strict=True):
            if r != c:
                label[label == label[r]] = label[c]
        return label

    def bounds(self) -> list[tuple[float | None, float | None]]:
        return [(0.0, None) if d else (None, None) for d in self.diagonal]


@dataclass(frozen=True)
class PLS:
    """The penalised least-squares solution at one theta, on the user's scale."""

    theta: np.ndarray
    T: np.ndarray
    M: np.ndarray = field(repr=False)  # (m, q, q) Rz_j T (internal scale-free factor)
    K: np.ndarray = field(repr=False)  # (m, q, q) lower Cholesky factors of I + M_j M_j'
    e: np.ndarray = field(repr=False)  # (m, q) c_yj - C_Xj beta (internal scale)
    D: np.ndarray = field(repr=False)  # (m, q, p + 1) K_j^-1 C_j (internal scale)
    Rinv: np.ndarray = field(repr=False)  # (p, p) R_X^-1 of the internal X_s
    y_scale: float
    beta: np.ndarray
    beta_cov_unit: np.ndarray  # (X'V^-1 X)^-1, V = I + Z T T'Z' (times sigma^2: lme4's vcov)
    log_r2: float  # log of the penalised residual sum of squares
    logdet_L: float  # log |L|^2 = log |T'Z'ZT + I|
    logdet_RX: float  # log |R_X|^2 = log |X'V^-1 X|
    n_obs: int

    @cached_property
    def u(self) -> np.ndarray:
        """Spherical random effects, (m, q): u_j = M_j' (I + M_j M_j')^-1 e_j."""
        w = _lower_solve(self.K, self.e[..., None])
        w = _lower_solve(self.K, w, transpose=True)[..., 0]
        return self.y_scale * np.einsum("jab,ja->jb", self.M, w)

    @property
    def r2(self) -> float:
        return float(np.exp(self.log_r2))

    @property
    def p(self) -> int:
        return int(self.beta.size)

    @property
    def b(self) -> np.ndarray:
        """Conditional modes of the random effects, (m, q)."""
        return self.u @ self.T.T

    @property
    def m(self) -> int:
        return int(self.u.shape[0])

    def sigma2(self, kind: str) -> float:
        """sigma^2 maximising the objective `kind` at this theta."""
        return float(np.exp(self.log_r2 - np.log(_dof(kind, self.n_obs, self.p, self.u.size))))

    def objective(self, kind: str) -> float:
        """lme4's deviance ('ml'), REML criterion ('reml'), or -2 x profiled log joint."""
        dof = _dof(kind, self.n_obs, self.p, self.u.size)
        fit = dof * (1.0 + np.log(2.0 * np.pi) + self.log_r2 - np.log(dof))
        if kind == "ml":
            return self.logdet_L + fit
        if kind == "reml":
            return self.logdet_L + self.logdet_RX + fit
        sign, logdet = np.linalg.slogdet(self.T)
        return fit + 2.0 * self.m * (float(logdet) if sign != 0 else -np.inf)

    def loglik(self, sigma2: float) -> float:
        """Marginal log likelihood at (beta_hat(theta), sigma2, theta)."""
        return -0.5 * (
            self.logdet_L
            + self.n_obs * np.log(2.0 * np.pi * sigma2)
            + float(np.exp(self.log_r2 - np.log(sigma2)))
        )

    def cond_cov(self, sigma2: float) -> np.ndarray:
        """Conditional covariance of b_j given y and the parameters (lme4's condVar):
        sigma^2 T (T'Z_j'Z_j T + I)^-1 T', (m, q, q)."""
        q = self.T.shape[0]
        Ainv = np.linalg.inv(np.swapaxes(self.M, 1, 2) @ self.M + np.eye(q))
        return sigma2 * self.T @ Ainv @ self.T.T

    def beta_cov(self, sigma2: float) -> np.ndarray:
        """sigma^2 (X'V^-1 X)^-1, lme4's vcov()."""
        return sigma2 * self.beta_cov_unit


def _dof(kind: str, n: int, p: int, mq: int) -> float:
    return {"ml": n, "reml": n - p, "joint": n + mq}[kind]


def _cholesky(A: np.ndarray) -> np.ndarray:
    """Batched lower Cholesky factors of (m, q, q) matrices, by columns (q is a handful: q
    vector operations over the m groups beat m LAPACK calls)."""
    q = A.shape[-1]
    if q > 4:
        return np.linalg.cholesky(A)
    L = np.zeros_like(A)
    for j in range(q):
        d = A[:, j, j] - (L[:, j, :j] ** 2).sum(axis=1)
        L[:, j, j] = np.sqrt(d)
        for i in range(j + 1, q):
            L[:, i, j] = (A[:, i, j] - (L[:, i, :j] * L[:, j, :j]).sum(axis=1)) / L[:, j, j]
    return L


def _lower_solve(L: np.ndarray, B: np.ndarray, transpose: bool = False) -> np.ndarray:
    """Batched solve of L_j X_j = B_j (or L_j' X_j = B_j), L (m, q, q) lower, B (m, q, r)."""
    q = L.shape[-1]
    if q > 4:
        return np.linalg.solve(np.swapaxes(L, 1, 2) if transpose else L, B)
    X = np.empty_like(B)
    rows = range(q - 1, -1, -1) if transpose else range(q)
    done: list[int] = []
    for i in rows:
        acc = B[:, i, :].copy()
        for k in done:
            coef = L[:, k, i] if transpose else L[:, i, k]
            acc -= coef[:, None] * X[:, k, :]
        X[:, i, :] = acc / L[:, i, i, None]
        done.append(i)
    return X


def lower_factor(F: np.ndarray) -> np.ndarray:
    """The lower-triangular L with non-negative diagonal and L L' = F F' (QR of F')."""
    R = np.linalg.qr(F.T, mode="r")
    L = R.T
    sign = np.where(np.diag(L) < 0, -1.0, 1.0)
    return L * sign[None, :]


def to_internal(gf: GroupFactors, layout: Layout, theta) -> np.ndarray:
    """lme4's theta -> the theta of the reparametrised blocks (Z_s = Z B)."""
    return layout.theta(lower_factor(np.linalg.solve(gf.B, layout.T(theta))))


def to_user(gf: GroupFactors, layout: Layout, theta_s) -> np.ndarray:
    """The theta of the reparametrised blocks -> lme4's theta (same G)."""
    return layout.theta(lower_factor(gf.B @ layout.T(theta_s)))


def solve(gf: GroupFactors, layout: Layout, theta, internal: bool = False) -> PLS:
    """Penalised least squares at lme4's `theta` (or, with `internal`, at the theta of the
    reparametrised blocks Z_s = Z B, which the optimiser uses), from the group factors only
    (O(m q^2 p)). The record's T is a square root of G / sigma^2 on the user's scale: lme4's
    lower-triangular T unless `internal` (then B T_s, which gives the same G, b and objectives)."""
    theta = np.asarray(theta, float)
    q, p, sc = layout.q, gf.p, gf.scaling
    if internal:
        Ts = layout.T(theta)
        T = gf.B @ Ts
    else:
        T = layout.T(theta)
        Ts = np.linalg.solve(gf.B, T)
    M = gf.Rz @ Ts
    K = _cholesky(M @ np.swapaxes(M, 1, 2) + np.eye(q))
    D = _lower_solve(K, gf.C)
    R = np.linalg.qr(np.vstack([gf.RW, D.reshape(-1, p + 1)]), mode="r")
    RX, cb, r = R[:p, :p], R[:p, p], abs(R[p, p])
    Rinv = np.linalg.inv(RX)  # p x p upper triangular (tiny: a general inverse is fastest)
    beta_s = Rinv @ cb
    e = gf.C[:, :, p] - gf.C[:, :, :p] @ beta_s
    s = sc.y_scale
    beta = s * (sc.A @ beta_s)
    if sc.intercept is not None:
        beta[sc.intercept] += sc.y_shift
    cov = sc.A @ (Rinv @ Rinv.T) @ sc.A.T
    diagK = np.diagonal(K, axis1=1, axis2=2)
    with np.errstate(divide="ignore"):
        log_r2 = 2.0 * (float(np.log(r)) + float(np.log(s)))
    return PLS(
        theta=theta,
        T=T,
        M=M,
        K=K,
        e=e,
        D=D,
        Rinv=Rinv,
        y_scale=s,
        beta=beta,
        beta_cov_unit=cov,
        log_r2=log_r2,
        logdet_L=2.0 * float(np.log(diagK).sum()),
        logdet_RX=2.0 * float(np.log(np.abs(np.diag(RX))).sum()) - 2.0 * sc.log_det_A,
        n_obs=int(gf.n.sum()),
    )


def gradient(gf: GroupFactors, layout: Layout, theta_s, kind: str) -> tuple[float, np.ndarray]:
    """The ML deviance or REML criterion and its exact gradient in the internal theta (of the
    reparametrised blocks, as the optimiser sees them), from the same per-group factors.

    With T the internal factor, E_k = dT/dtheta_k (one entry at (r_k, c_k)), A_j = I + M_j'M_j:
    d log|L|^2 = 2 sum_j (Rz_j'Rz_j T A_j^-1)[r_k, c_k];
    d r^2 = -2 sum_j w_j[r_k] u_j[c_k], w_j = Z_j'(residual_j) = Rz_j'(e_j - M_j u_j) (envelope
    theorem: beta and u are at their minimum);
    d log|X'V^-1X| = -2 sum_j (Q_j T)[r_k, c_k], Q_j = P_j'(X'V^-1X)^-1 P_j, P_j = X_j'V_j^-1 Z_j
    = D_Xj' K_j^-1 Rz_j."""
    pls = solve(gf, layout, theta_s, internal=True)
    Ts = layout.T(theta_s)
    q, p = layout.q, gf.p
    W = _lower_solve(pls.K, pls.M)  # K^-1 M
    Ainv = np.eye(q) - np.swapaxes(W, 1, 2) @ W  # (I + M'M)^-1
    RtR = np.swapaxes(gf.Rz, 1, 2) @ gf.Rz
    dlogdet = 2.0 * np.einsum("jab,bc,jcd->ad", RtR, Ts, Ainv)
    u = pls.u / pls.y_scale
    w = np.einsum("jba,jb->ja", gf.Rz, pls.e - np.einsum("jab,jb->ja", pls.M, u))
    r2 = float(np.exp(pls.log_r2 - 2.0 * np.log(pls.y_scale)))
    dr2 = -2.0 * w.T @ u
    n = pls.n_obs
    if kind == "ml":
        G = dlogdet + n * dr2 / r2
    elif kind == "reml":
        P = np.swapaxes(pls.D[:, :, :p], 1, 2) @ _lower_solve(pls.K, gf.Rz)  # (m, p, q)
        Sinv = pls.Rinv @ pls.Rinv.T
        Q = np.swapaxes(P, 1, 2) @ Sinv @ P
        G = dlogdet - 2.0 * np.einsum("jab,bc->ac", Q, Ts) + (n - p) * dr2 / r2
    else:
        raise ValueError(f"no analytic gradient for kind {kind!r}")
    return pls.objective(kind), G[layout.rows, layout.cols]
