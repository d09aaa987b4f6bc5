"""Why the joint mode differs from EB, in numbers (DESIGN.md section 1), for every model.

At a parameter point (beta, sigma^2, G) with random effects b_j (by default their conditional
modes) and conditional covariances V_bj = (Z_j'Z_j / sigma^2 + G^-1)^-1:

* RSS = ||y - X beta - Z b||^2, the residual sum of squares;
* missing = tr(Z V_b Z') = sum_j tr(V_bj Z_j'Z_j) (one-way: sum_j n_j v_j), the posterior
  variance of the effects that the joint mode leaves out;
* p_D = missing / sigma^2, the hidden degrees of freedom;
* volume = 1/2 sum_j log det V_bj, the Laplace volume term: l = h(theta, b_hat) + volume
  + (m q / 2) log 2 pi, exact for the LMM;
* the EM identities: at the ML point sigma^2 = (RSS + missing) / N and
  G = (sum_j b_j b_j' + sum_j V_bj) / m; the joint mode solves them without the V terms.

Computed at the EB-ML point and at the centered joint mode (h-likelihood). The one-way model
y ~ 1 + (1 | g) uses the per-group closed forms over its sufficient statistics (and, for
balanced data, DESIGN.md's closed form of the joint mode); every other model the general
per-group matrices; a model with several grouping factors (crossed or nested) a sparse kernel
(`sparse_terms`) that also splits the missing trace and the volume term by factor.
`sentences` turns the numbers into plain words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from workbench.jsonsafe import clean
from workbench.model.data import Stats
from workbench.model.design import LMMData
from workbench.objectives import oneway as dens

LOG_2PI = float(np.log(2.0 * np.pi))
NEGLIGIBLE_PD = 1e-3  # hidden degrees of freedom below which the effects are called certain


@dataclass(frozen=True)
class FactorTerms:
    """One grouping factor's share of the decomposition (several factors): its block G_k of G
    (columns `data.factor_cols(k)`), its parts of the missing trace tr(Z V_b Z') and of the
    volume term, and its EM updates (sum_j b_kj b_kj' (+ sum_j V_kj)) / n_k, entries between
    different blocks of G set to 0 (the M-step of a block-diagonal G).

    Two splits of the missing trace: `missing` = sum_j tr(V_kj Z_kj'Z_kj), the diagonal blocks
    (they add up with `PointTerms.missing_cross`, the covariances between factors, often
    negative: crossed or nested effects compete for the same observations); and `p_d` =
    n_k q_k - tr (A^-1)_kk, the factor's hidden degrees of freedom, its diagonal part plus half
    of its covariances with the other factors over sigma^2, between 0 and n_k q_k, adding up to
    p_D with no remainder (`share` = sigma^2 p_d)."""

    name: str
    n_levels: int
    G: np.ndarray  # (q_k, q_k)
    variances: dict[str, float]  # G_k's diagonal by random-effect term
    missing: float  # sum_j tr(V_kj Z_kj'Z_kj)
    p_d: float  # n_k q_k - tr (A^-1)_kk
    share: float  # sigma^2 p_d
    volume: float  # n_k / 2 log det G_k (-inf for a singular G_k)
    G_em_with: np.ndarray
    G_em_without: np.ndarray

    def to_dict(self) -> dict:
        return {
            "n_levels": self.n_levels,
            "G": self.G.tolist(),
            "variances": dict(self.variances),
            "missing": self.missing,
            "p_d": self.p_d,
            "share": self.share,
            "volume": self.volume,
            "G_em_with": self.G_em_with.tolist(),
            "G_em_without": self.G_em_without.tolist(),
        }


@dataclass(frozen=True)
class PointTerms:
    """The decomposition at one parameter point. `mu`, `tau2`, `tau2_em_with` and
    `tau2_em_without` are the one-way names of beta[0], G[0, 0] and the EM updates of G[0, 0]
    (None for other models). With several grouping factors (`sparse_terms`): `by_factor`
    (FactorTerms by lme4's factor name), `missing_cross` = missing - sum of the factors' parts
    (the conditional covariances between effects of different factors) and `volume_shared` =
    -1/2 log det A, so that volume = sum_k by_factor[k].volume + volume_shared; `variances`
    are then keyed "term|factor" (lme4's names)."""

    label: str
    sigma2: float
    G: np.ndarray  # (q, q)
    variances: dict[str, float]  # G's diagonal by random-effect term
    rss: float
    missing: float  # tr(Z V_b Z')
    p_d: float
    volume: float  # 1/2 sum_j log det V_bj (-inf for a singular G)
    log_joint: float  # h at the point (+inf for a singular G)
    log_marginal: float
    sigma2_em_with: float  # (RSS + missing) / N
    sigma2_em_without: float  # RSS / N
    G_em_with: np.ndarray  # (sum b b' + sum V) / m
    G_em_without: np.ndarray  # sum b b' / m
    mu: float | None = None
    tau2: float | None = None
    tau2_em_with: float | None = None
    tau2_em_without: float | None = None
    by_factor: dict[str, FactorTerms] | None = None
    missing_cross: float | None = None
    volume_shared: float | None = None

    @property
    def is_oneway(self) -> bool:
        return self.tau2 is not None

    def to_dict(self) -> dict:
        out = {
            "label": self.label,
            "sigma2": self.sigma2,
            "G": self.G.tolist(),
            "variances": dict(self.variances),
            "rss": self.rss,
            "missing": self.missing,
            "p_d": self.p_d,
            "volume": self.volume,
            "log_joint": self.log_joint,
            "log_marginal": self.log_marginal,
            "sigma2_em_with": self.sigma2_em_with,
            "sigma2_em_without": self.sigma2_em_without,
            "G_em_with": self.G_em_with.tolist(),
            "G_em_without": self.G_em_without.tolist(),
        }
        if self.is_oneway:
            out.update(
                mu=self.mu,
                tau2=self.tau2,
                tau2_em_with=self.tau2_em_with,
                tau2_em_without=self.tau2_em_without,
            )
        if self.by_factor is not None:
            out.update(
                by_factor={k: f.to_dict() for k, f in self.by_factor.items()},
                missing_cross=self.missing_cross,
                volume_shared=self.volume_shared,
            )
        return out


def oneway_terms(
    label: str, mu: float, s: float, t: float, st: Stats, effects: np.ndarray | None = None
) -> PointTerms:
    """The one-way kernel: the decomposition at (mu, sigma^2 = s, tau^2 = t) in closed form over
    the per-group statistics. `effects` are the group effects of the point (the joint mode's own
    a_j); by default the conditional modes given (mu, s, t)."""
    a_hat, v = dens.conditional_effects(mu, s, t, st)
    a = a_hat if effects is None else np.asarray(effects, float)
    r = st.ybar - mu - a
    rss = st.W + float(st.n @ (r * r))
    missing = float(st.n @ v)
    x = np.concatenate([[mu, 0.5 * np.log(s), 0.5 * np.log(max(t, 1e-300))], a])
    t_with = (float(a @ a) + float(v.sum())) / st.m
    t_without = float(a @ a) / st.m
    return PointTerms(
        label=label,
        sigma2=s,
        G=np.array([[t]]),
        variances={"(Intercept)": t},
        rss=rss,
        missing=missing,
        p_d=missing / s,
        volume=0.5 * float(np.log(v).sum()) if t > 0 else -np.inf,
        log_joint=dens.log_joint(x, st) if t > 0 else np.inf,
        log_marginal=dens.marginal_loglik((mu, s, t), st),
        sigma2_em_with=(rss + missing) / st.N,
        sigma2_em_without=rss / st.N,
        G_em_with=np.array([[t_with]]),
        G_em_without=np.array([[t_without]]),
        mu=mu,
        tau2=t,
        tau2_em_with=t_with,
        tau2_em_without=t_without,
    )


def general_terms(
    label: str,
    data: LMMData,
    beta: np.ndarray,
    sigma2: float,
    G: np.ndarray,
    effects: np.ndarray | None = None,
) -> PointTerms:
    """The general kernel: the decomposition at (beta, sigma^2, G) from per-group q x q
    matrices. With G = sigma^2 T T' (T from G's eigendecomposition, so a singular G is fine)
    and A_j = I + T'Z_j'Z_j T: V_bj = sigma^2 T A_j^-1 T', b_hat_j = T A_j^-1 T'Z_j'r_j and
    y_j ~ N(X_j beta, sigma^2 (I + Z_j T T'Z_j')) (determinant lemma, Woodbury). With several
    grouping factors: `sparse_terms`."""
    if data.n_factors > 1:
        return sparse_terms(label, data, beta, sigma2, G, effects)
    G = np.asarray(G, float)
    beta = np.asarray(beta, float)
    N, m, q = data.n_obs, data.n_groups, data.q
    ztz = data.factors.ztz
    r0 = data.y - data.X @ beta
    ztr = np.stack([np.bincount(data.codes, data.Z[:, k] * r0, minlength=m) for k in range(q)], 1)
    w, U = np.linalg.eigh(G / sigma2)
    T = U * np.sqrt(np.clip(w, 0.0, None))
    A = np.eye(q) + T.T @ ztz @ T  # (m, q, q): T'Z_j'Z_j T + I
    Ainv = np.linalg.inv(A)
    V = sigma2 * T @ Ainv @ T.T
    b_hat = np.einsum("jab,jb->ja", T @ Ainv @ T.T, ztr)
    b = b_hat if effects is None else np.asarray(effects, float)
    resid = r0 - np.einsum("ik,ik->i", data.Z, b[data.codes])
    rss = float(resid @ resid)
    missing = float(np.einsum("jab,jba->", V, ztz))
    sign_g, logdet_g = np.linalg.slogdet(G)
    singular = sign_g <= 0 or np.min(w) <= 0
    logdet_a = float(np.linalg.slogdet(A)[1].sum())
    if singular:
        volume, log_joint = -np.inf, np.inf
    else:
        # log det V_j = log det G - log det A_j (V = G^1/2 (...)^-1 G^1/2 with A similar)
        volume = 0.5 * (m * float(logdet_g) - logdet_a)
        quad = float(np.einsum("ja,ja->", b, np.linalg.solve(G, b.T).T))
        log_joint = -0.5 * (
            N * (LOG_2PI + np.log(sigma2)) + rss / sigma2 + m * (q * LOG_2PI + logdet_g) + quad
        )
    fitted = float(np.einsum("ja,ja->", ztr, b_hat))  # sum_j r_j'Z_j T A_j^-1 T'Z_j'r_j
    log_marginal = -0.5 * (N * (LOG_2PI + np.log(sigma2)) + logdet_a + (r0 @ r0 - fitted) / sigma2)
    bb = b.T @ b / m
    return PointTerms(
        label=label,
        sigma2=float(sigma2),
        G=G,
        variances={n: float(G[i, i]) for i, n in enumerate(data.re_names)},
        rss=rss,
        missing=missing,
        p_d=missing / sigma2,
        volume=float(volume),
        log_joint=float(log_joint),
        log_marginal=float(log_marginal),
        sigma2_em_with=(rss + missing) / N,
        sigma2_em_without=rss / N,
        G_em_with=bb + V.sum(axis=0) / m,
        G_em_without=bb,
    )


CHUNK_DOUBLES = 1 << 22  # dense work arrays of the selected inversion: at most ~32 MB each
DENSE_SOLVE_MAX = 4096  # up to this size, S^-1's columns by BLAS triangular solves with the
# SuperLU factors as dense arrays (SuperLU's own solve goes one right-hand side at a time)


@dataclass(frozen=True)
class _Factor:
    """Grouping factor k at a point: its columns of Z, G_k and a square root T_k
    (G_k / sigma^2 = T_k T_k', from the eigendecomposition, so a singular G_k is fine) and the
    per-level cross products Z_kj'Z_kj."""

    name: str
    names: tuple[str, ...]  # term names, columns `cols`
    cols: tuple[int, ...]
    codes: np.ndarray  # (N,)
    n: int  # levels
    Zk: np.ndarray  # (N, q_k)
    G: np.ndarray  # (q_k, q_k)
    T: np.ndarray  # (q_k, q_k)
    singular: bool
    ztz: np.ndarray  # (n, q_k, q_k)
    same_block: np.ndarray  # (q_k, q_k) bool: both columns in one block of G

    @property
    def q(self) -> int:
        return len(self.cols)

    @classmethod
    def of(cls, data: LMMData, k: int, G: np.ndarray, sigma2: float) -> _Factor:
        g = data.groupings[k]
        cols = data.factor_cols(k)
        Zk = data.Z[:, cols]
        Gk = G[np.ix_(cols, cols)]
        w, U = np.linalg.eigh(Gk / sigma2)
        sign = np.linalg.slogdet(Gk)[0]
        q = len(cols)
        ztz = np.empty((g.n_levels, q, q))
        for a in range(q):
            for b in range(a, q):
                ztz[:, a, b] = ztz[:, b, a] = np.bincount(
                    g.codes, Zk[:, a] * Zk[:, b], minlength=g.n_levels
                )
        block = {c: i for i, b in enumerate(data.blocks) for c in b.cols}
        names = data.re_names
        return cls(
            name=g.name,
            names=tuple(names[c] for c in cols),
            cols=cols,
            codes=g.codes,
            n=g.n_levels,
            Zk=Zk,
            G=Gk,
            T=U * np.sqrt(np.clip(w, 0.0, None)),
            singular=bool(sign <= 0 or np.min(w) <= 0),
            ztz=ztz,
            same_block=np.array([[block[a] == block[b] for b in cols] for a in cols]),
        )

    def z_lambda(self) -> sp.csr_matrix:
        """Z_k Lambda_k, sparse N x n q_k (level-major columns: level j's effects j q_k ..)."""
        N, q = self.Zk.shape[0], self.q
        rows = np.repeat(np.arange(N), q)
        cols = (self.codes[:, None] * q + np.arange(q)).ravel()
        return sp.csr_matrix(((self.Zk @ self.T).ravel(), (rows, cols)), shape=(N, self.n * q))


def _blocks_inv_diag(
    A11: np.ndarray, W: sp.csr_matrix, lu, pairs: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The level blocks on the diagonal of A^-1 for A = [[A11, A12], [A21, A22]] with A11
    block diagonal ((n, q, q)), W = A11^-1 A12 and `lu` the factorisation of the Schur
    complement S = A22 - A21 W: (A^-1)_11 = A11^-1 + W S^-1 W' (its level blocks) and
    (A^-1)_22 = S^-1 (its entries at `pairs` (rows, cols)), from S^-1 one chunk of columns at a
    time, never the whole inverse. With Pr S Pc = L U (SuperLU), S^-1 = Pc U^-1 L^-1 Pr."""
    n, q = A11.shape[0], A11.shape[1]
    out11 = np.linalg.inv(A11)
    rows, cols = pairs
    out22 = np.zeros(rows.size)
    Q2 = W.shape[1]
    if Q2 == 0:
        return out11, out22
    Wc = W.tocsc()
    step = max(1, min(Q2, CHUNK_DOUBLES // max(W.shape[0], Q2)))
    dense = Q2 <= DENSE_SOLVE_MAX
    if dense:
        L, U = lu.L.toarray(), lu.U.toarray()
    for c0 in range(0, Q2, step):
        c1 = min(Q2, c0 + step)
        E = np.zeros((Q2, c1 - c0))
        if dense:  # S^-1 E = Pc U^-1 L^-1 Pr E: (Pr E)[perm_r[i]] = E[i], (Pc x)[i] = x[perm_c[i]]
            E[lu.perm_r[c0:c1], np.arange(c1 - c0)] = 1.0
            half = scipy.linalg.solve_triangular(L, E, lower=True, unit_diagonal=True)
            X = scipy.linalg.solve_triangular(U, half, overwrite_b=True)[lu.perm_c]
        else:
            E[np.arange(c0, c1), np.arange(c1 - c0)] = 1.0
            X = lu.solve(E)  # S^-1[:, c0:c1]
        sel = (cols >= c0) & (cols < c1)
        out22[sel] = X[rows[sel], cols[sel] - c0]
        Y = W @ X  # (W S^-1)[:, c0:c1]
        Wk = Wc[:, c0:c1].tocsr()
        s = np.repeat(np.arange(Wk.shape[0]), np.diff(Wk.indptr))  # the row of each entry
        for b in range(q):  # (W S^-1 W')[j q + a, j q + b] += sum_d Y[j q + a, d] W[j q + b, d]
            keep = s % q == b
            level, d, w = s[keep] // q, Wk.indices[keep], Wk.data[keep]
            for a in range(q):
                out11[:, a, b] += np.bincount(level, Y[level * q + a, d] * w, minlength=n)
    return out11, out22


def sparse_terms(
    label: str,
    data: LMMData,
    beta: np.ndarray,
    sigma2: float,
    G: np.ndarray,
    effects=None,
) -> PointTerms:
    """The decomposition for any number of grouping factors, by sparse matrices.

    With u the random effects of all factors stacked (factor after factor, level-major),
    Lambda = blockdiag(I_nk (x) T_k) and the sparse Z (N x Q, Q = sum_k n_k q_k):
    A = Lambda'Z'Z Lambda + I, V_b = sigma^2 Lambda A^-1 Lambda', b_hat = Lambda A^-1
    Lambda'Z'r and y ~ N(X beta, sigma^2 (I + Z Lambda Lambda'Z')). A is factorised by block
    elimination: the factor with the most effects first (its block of A is block diagonal over
    its levels, inverted exactly per level), then SuperLU (`scipy.sparse.linalg.splu`, symmetric
    mode, no pivoting: S is positive definite) of the Schur complement S on the other factors;
    log det A = sum_j log det A_11,j + log det S. The diagonal level blocks of A^-1 (for
    tr(Z V_b Z') by factor and the EM updates) come from S^-1 a chunk of columns at a time (by
    BLAS triangular solves with SuperLU's factors up to `DENSE_SOLVE_MAX` columns of S). No
    Q x Q matrix is ever dense (measured on a shared 2-core machine: InstEval, Q = 4,128, in
    1-2 s; 10^6 rows crossed 100,000 x 1,000, Q = 101,000, in 8 s and 0.6 GB).

    tr(Z V_b Z') = sigma^2 (Q - tr A^-1); factor k's diagonal blocks give
    sum_j tr(V_kj Z_kj'Z_kj), the rest (`missing_cross`) the conditional covariances between
    factors; its hidden degrees of freedom are n_k q_k - tr (A^-1)_kk (`FactorTerms`).
    `effects`: per factor (n_k, q_k) arrays (a single array for one factor); by default the
    conditional modes."""
    G, beta, sigma2 = np.asarray(G, float), np.asarray(beta, float), float(sigma2)
    N = data.n_obs
    facs = [_Factor.of(data, k, G, sigma2) for k in range(data.n_factors)]
    first = int(np.argmax([f.n * f.q for f in facs]))
    order = [first] + [k for k in range(len(facs)) if k != first]
    sizes = [facs[k].n * facs[k].q for k in order]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    Q, Q1 = int(offsets[-1]), sizes[0]
    ZL = sp.hstack([facs[k].z_lambda() for k in order], format="csr")
    r0 = data.y - data.X @ beta
    A = (ZL.T @ ZL + sp.identity(Q)).tocsr()
    f1 = facs[first]
    A11 = np.einsum("ba,jbc,cd->jad", f1.T, f1.ztz, f1.T) + np.eye(f1.q)
    A11inv = np.linalg.inv(A11)
    A12 = A[:Q1, Q1:]
    W = (
        sp.bsr_matrix((A11inv, np.arange(f1.n), np.arange(f1.n + 1)), shape=(Q1, Q1)) @ A12
    ).tocsr()
    S = (A[Q1:, Q1:] - A12.T @ W).tocsc()
    c = ZL.T @ r0
    c1, c2 = c[:Q1], c[Q1:]
    logdet_a = float(np.linalg.slogdet(A11)[1].sum())
    lu = None
    u2 = np.zeros(Q - Q1)
    if Q > Q1:
        lu = splu(
            S,
            permc_spec="MMD_AT_PLUS_A",
            diag_pivot_thresh=0.0,
            options={"SymmetricMode": True},
        )
        logdet_a += float(np.log(np.abs(lu.U.diagonal())).sum())
        u2 = lu.solve(c2 - W.T @ c1)
    u1 = np.einsum("jab,jb->ja", A11inv, c1.reshape(f1.n, f1.q)).ravel() - W @ u2
    u = np.concatenate([u1, u2])
    # selected inversion: the level blocks on the diagonal of A^-1, factor by factor
    pair_rows, pair_cols = [np.zeros(0, int)], [np.zeros(0, int)]
    for i, k in enumerate(order[1:], start=1):
        f = facs[k]
        start = offsets[i] - Q1 + f.q * np.arange(f.n)[:, None, None]
        shape = (f.n, f.q, f.q)
        pair_rows.append(np.broadcast_to(start + np.arange(f.q)[:, None], shape).ravel())
        pair_cols.append(np.broadcast_to(start + np.arange(f.q), shape).ravel())
    pairs = (np.concatenate(pair_rows), np.concatenate(pair_cols))
    inv11, inv22 = _blocks_inv_diag(A11, W, lu, pairs)
    ainv, at = {first: inv11}, 0
    for k in order[1:]:
        f = facs[k]
        ainv[k] = inv22[at : at + f.n * f.q * f.q].reshape(f.n, f.q, f.q)
        at += f.n * f.q * f.q
    trace_ainv = sum(float(np.trace(ainv[k], axis1=1, axis2=2).sum()) for k in order)
    missing = sigma2 * (Q - trace_ainv)
    # effects, residuals, per-factor terms
    if effects is None:  # b_kj = T_k u_kj
        b = {
            k: u[offsets[i] : offsets[i + 1]].reshape(facs[k].n, facs[k].q) @ facs[k].T.T
            for i, k in enumerate(order)
        }
    else:
        given = (effects,) if isinstance(effects, np.ndarray) else tuple(effects)
        if len(given) != len(facs):
            raise ValueError("effects: one (n_k, q_k) array per grouping factor")
        b = {k: np.asarray(given[k], float).reshape(facs[k].n, facs[k].q) for k in order}
    resid = r0.copy()
    for k, f in enumerate(facs):
        resid -= np.einsum("ik,ik->i", f.Zk, b[k][f.codes])
    rss = float(resid @ resid)
    by_factor, penalty, logdet_g = {}, 0.0, 0.0  # penalty: sum_kj b'G_k^-1 b + log 2 pi terms
    G_em_with, G_em_without = np.zeros_like(G), np.zeros_like(G)
    singular = any(f.singular for f in facs)
    for k, f in enumerate(facs):
        V = sigma2 * np.einsum("ab,jbc,dc->jad", f.T, ainv[k], f.T)  # V_kj
        bb = np.where(f.same_block, b[k].T @ b[k] / f.n, 0.0)
        with_v = bb + np.where(f.same_block, V.sum(axis=0) / f.n, 0.0)
        ix = np.ix_(f.cols, f.cols)
        G_em_with[ix], G_em_without[ix] = with_v, bb
        ld = float(np.linalg.slogdet(f.G)[1]) if not f.singular else -np.inf
        logdet_g += f.n * ld if not f.singular else 0.0
        if not f.singular:
            penalty += float(np.einsum("ja,ja->", b[k], np.linalg.solve(f.G, b[k].T).T))
            penalty += f.n * f.q * LOG_2PI
        m_k = float(np.einsum("jab,jba->", V, f.ztz))
        p_k = f.n * f.q - float(np.trace(ainv[k], axis1=1, axis2=2).sum())
        by_factor[f.name] = FactorTerms(
            name=f.name,
            n_levels=f.n,
            G=f.G,
            variances={n: float(f.G[i, i]) for i, n in enumerate(f.names)},
            missing=m_k,
            p_d=p_k,
            share=sigma2 * p_k,
            volume=0.5 * f.n * ld,
            G_em_with=with_v,
            G_em_without=bb,
        )
    if singular:
        volume, log_joint = -np.inf, np.inf
    else:
        volume = 0.5 * (logdet_g - logdet_a)
        log_joint = -0.5 * (N * (LOG_2PI + np.log(sigma2)) + rss / sigma2 + logdet_g + penalty)
    log_marginal = -0.5 * (N * (LOG_2PI + np.log(sigma2)) + logdet_a + (r0 @ r0 - c @ u) / sigma2)
    return PointTerms(
        label=label,
        sigma2=sigma2,
        G=G,
        variances={f"{n}|{f.name}": float(f.G[i, i]) for f in facs for i, n in enumerate(f.names)},
        rss=rss,
        missing=missing,
        p_d=missing / sigma2,
        volume=float(volume),
        log_joint=float(log_joint),
        log_marginal=float(log_marginal),
        sigma2_em_with=(rss + missing) / N,
        sigma2_em_without=rss / N,
        G_em_with=G_em_with,
        G_em_without=G_em_without,
        by_factor=by_factor,
        missing_cross=missing - sum(f.missing for f in by_factor.values()),
        volume_shared=-0.5 * logdet_a,
    )


def point_terms(
    label: str,
    data: LMMData,
    beta,
    sigma2: float,
    G,
    effects=None,
    kernel: str = "auto",
) -> PointTerms:
    """The decomposition at (beta, sigma^2, G) with random effects `effects` ((m, q), or per
    grouping factor a tuple of (n_k, q_k) as `EBFit.modes`; by default the conditional modes).
    kernel "auto" takes the one-way closed forms when `data.is_oneway`, the per-group matrices
    for any other model with one grouping factor and the sparse kernel with several; "general"
    forces the per-group matrices (one factor), "sparse" the sparse kernel."""
    if kernel not in ("auto", "general", "sparse"):
        raise ValueError("kernel must be 'auto', 'general' or 'sparse'")
    if kernel == "sparse" or data.n_factors > 1:
        return sparse_terms(label, data, beta, sigma2, G, effects)
    if kernel == "auto" and data.is_oneway:
        a = None if effects is None else np.asarray(effects, float).reshape(-1)
        G = np.asarray(G, float)
        return oneway_terms(label, float(beta[0]), float(sigma2), float(G[0, 0]), data.oneway, a)
    return general_terms(label, data, beta, sigma2, G, effects)


@dataclass(frozen=True)
class BalancedForm:
    """DESIGN.md's closed form for m groups of n (centered h-likelihood)."""

    n: int
    m: int
    f_statistic: float
    f_threshold: float
    interior_exists: bool
    shrinkage: float | None
    sigma2_joint: float | None
    tau2_joint: float | None
    sigma2_ml: float
    limit_ratio: float  # (n - 1) / n

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def balanced_form(st: Stats, sigma2_ml: float) -> BalancedForm | None:
    """The closed form when every group has the same size, else None."""
    if not np.all(st.n == st.n[0]):
        return None
    n, m = int(st.n[0]), st.m
    B = float(((st.ybar - st.ybar.mean()) ** 2).sum())
    f = (n * B / (m - 1)) / (st.W / (m * (n - 1)))
    thr = 4.0 * (n * n - 1) * m / ((m - 1) * n * n)
    disc = (n + 2) ** 2 - 4.0 * (n + 1) * (1.0 + st.W / (n * B)) if B > 0 else -1.0
    s = float((n + 2) + np.sqrt(disc)) / (2.0 * (n + 1)) if disc >= 0 else None
    s2 = (st.W + n * B * (1 - s) ** 2) / (m * n) if s is not None else None
    t2 = s * s2 / (n * (1 - s)) if s is not None else None
    return BalancedForm(
        n=n,
        m=m,
        f_statistic=f,
        f_threshold=thr,
        interior_exists=f >= thr,
        shrinkage=s,
        sigma2_joint=s2,
        tau2_joint=t2,
        sigma2_ml=sigma2_ml,
        limit_ratio=(n - 1) / n,
    )


def balanced_note(data: LMMData) -> str | None:
    """Why the balanced closed form does not apply (None when it does)."""
    if not data.is_oneway:
        return (
            "The balanced closed form of the joint mode is for the one-way model y ~ 1 + (1 | g) "
            f"only; this model is {data.formula or 'a general mixed model'}."
        )
    n = np.bincount(data.codes, minlength=data.n_groups)
    if not np.all(n == n[0]):
        return (
            f"The balanced closed form of the joint mode needs groups of equal size; here they "
            f"range from {n.min()} to {n.max()}."
        )
    return None


@dataclass(frozen=True)
class Explanation:
    """The decomposition at the EB-ML point (`eb`) and at the centered joint mode (`joint`,
    None without an interior mode), the balanced closed form (one-way balanced data only,
    else None with `balanced_note` saying why) and the story in words."""

    eb: PointTerms
    joint: PointTerms | None
    joint_status: str  # interior, no_interior_mode, or not_run
    balanced: BalancedForm | None
    balanced_note: str | None
    n_obs: int
    n_groups: int | None  # one grouping factor's levels (None with several: `n_levels`)
    sentences: tuple[str, ...]
    n_levels: dict[str, int] | None = None  # levels of each grouping factor

    def to_dict(self) -> dict:
        """JSON-ready: non-finite terms (a zero variance: volume -inf, log joint +inf) become
        null, each named in `notes`."""
        out, notes = clean(
            {
                "eb_ml": self.eb.to_dict(),
                "joint_map": self.joint.to_dict() if self.joint else None,
                "joint_status": self.joint_status,
                "balanced": self.balanced.to_dict() if self.balanced else None,
                "balanced_note": self.balanced_note,
                "sentences": list(self.sentences),
            }
        )
        if notes and not np.isfinite(self.eb.volume):
            notes.append(
                f"{_var_words(self.eb)} at the EB-ML point: there the volume term is -infinity "
                f"and the log joint +infinity"
            )
        out["notes"] = notes
        return out


# ----------------------------------------------------------------------------------------------
# Words


def _pct(x: float) -> str:
    return f"{abs(100 * x):.0f}%"


def _singular_words(names: list[str], G: np.ndarray, by: str = "") -> str | None:
    """How one (block-diagonal) G is singular, in words (None when it is not): its zero
    variances, else its correlations of +-1, else its rank. `by`: " by <factor>" to name it."""
    zero = [f"{n}{by}" for i, n in enumerate(names) if G[i, i] <= 0.0]
    if zero:
        return "the variance of " + _join(zero) + " is 0"
    pairs = [
        f"{names[i]} and {names[j]}{by} correlated {G[i, j] / np.sqrt(G[i, i] * G[j, j]):+.0f}"
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if abs(G[i, j]) >= (1 - 1e-6) * np.sqrt(G[i, i] * G[j, j])
    ]
    if pairs:
        return ("G is singular: " if not by else "") + _join(pairs)
    w = np.linalg.eigvalsh(G)
    if np.min(w) > 0:
        return None
    rank = np.linalg.matrix_rank(G)
    return f"G{by} is singular: rank {rank} of {len(names)}"


def _var_words(p: PointTerms) -> str:
    """How the singular G of a boundary point is singular, in words."""
    if p.is_oneway:
        return "tau^2 = 0"
    if p.by_factor is not None:
        parts = [
            _singular_words(list(f.variances), f.G, f" by {name}")
            for name, f in p.by_factor.items()
        ]
        return "; ".join(w for w in parts if w) or "G is singular"
    return _singular_words(list(p.variances), p.G) or "G is singular"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _cmp(a: float, b: float, more: str, less: str) -> str:
    return more if a > b else less


def _g(v: float, spec: str = ".5g") -> str:
    return format(v, spec) if np.isfinite(v) else ("+infinity" if v > 0 else "-infinity")


def _terms_by_factor(p: PointTerms) -> dict[str, float]:
    """The variances named "term by factor" (several factors) or by term (one)."""
    if p.by_factor is None:
        return dict(p.variances)
    return {f"{t} by {k}": v for k, f in p.by_factor.items() for t, v in f.variances.items()}


def _factor_split(eb: PointTerms) -> str:
    """The missing trace by grouping factor, in words (several factors)."""
    parts = [
        f"{k}'s {f.n_levels * len(f.variances)} effects hide p_D = {f.p_d:.3g} "
        f"({f.share:.4g} of the trace)"
        for k, f in eb.by_factor.items()
    ]
    diag = ", ".join(f"{k} {f.missing:.4g}" for k, f in eb.by_factor.items())
    cross = eb.missing_cross
    cov = (
        f"take back {-cross:.4g} (the factors' effects compete for the same observations)"
        if cross < 0
        else f"add {cross:.4g}"
    )
    return (
        f"By grouping factor, {_join(parts)}: each share is the factor's diagonal blocks "
        f"sum_j tr(V_kj Z_kj'Z_kj) ({diag}) plus half its conditional covariances with the other "
        f"factors' effects, which in all {cov}."
    )


def sentences(
    eb: PointTerms,
    joint: PointTerms | None,
    status: str,
    bal: BalancedForm | None,
    data: LMMData,
) -> tuple[str, ...]:
    """Plain words generated from the numbers, true for every model: the one-way model in its
    own names (group effects, tau^2, sum n_j v_j), any other with the terms named, and with
    several grouping factors each factor's variance components and share of the missing
    trace named."""
    N, q = data.n_obs, data.q
    ow, several = eb.is_oneway, eb.by_factor is not None
    if several:
        effects = f"random effects (of {_join(list(data.factor_names))})"
        n_eff = f"Q = {sum(f.n_levels * len(f.variances) for f in eb.by_factor.values())} "
        n_eff += "random effects"
        volume = "1/2 log det V_b"
    else:
        m = data.n_groups
        effects = "group effects" if ow else f"random effects (by {data.group_name})"
        n_eff = f"m = {m} groups" if ow else f"m q = {m * q} random effects"
        volume = "1/2 sum log det V_bj"
    miss = "sum n_j v_j" if ow else "tr(Z V_b Z')"
    out = []
    if ow:
        est = f"EB-ML estimates sigma^2 = {eb.sigma2:.5g} and tau^2 = {eb.tau2:.5g}."
    elif several:
        vs = ", ".join(f"{n} {v:.5g}" for n, v in _terms_by_factor(eb).items())
        est = f"EB-ML estimates sigma^2 = {eb.sigma2:.5g} and the variances {vs}."
    else:
        vs = ", ".join(f"{n} {v:.5g}" for n, v in eb.variances.items())
        est = (
            f"EB-ML estimates sigma^2 = {eb.sigma2:.5g} and, for the {q} random-effect "
            f"term{'s' if q > 1 else ''} of {data.group_name}, the variance{'s' if q > 1 else ''} "
            f"{vs}."
        )
    ok_em = abs(eb.sigma2_em_with - eb.sigma2) <= 1e-4 * eb.sigma2
    em = (
        "the ML estimate itself"
        if ok_em
        else f"against the ML estimate {eb.sigma2:.5g} (the fit is not at a stationary point)"
    )
    if eb.p_d >= NEGLIGIBLE_PD and np.isfinite(eb.volume):
        out.append(
            f"{est} At that point the {effects} are uncertain: their conditional variances add "
            f"up to {miss} = {eb.missing:.4g}, worth p_D = {eb.p_d:.3g} hidden degrees of "
            f"freedom out of {n_eff}. ML counts that uncertainty: sigma^2 = (RSS + "
            f"{eb.missing:.4g}) / N = {eb.sigma2_em_with:.5g}, {em}."
        )
    elif np.isfinite(eb.volume):  # G positive definite, yet next to no uncertainty left
        out.append(
            f"{est} The fit is next to the boundary: the {effects} are shrunk nearly to 0, "
            f"their conditional variances adding up to only {miss} = {eb.missing:.3g} "
            f"(p_D = {eb.p_d:.2g} hidden degrees of freedom out of {n_eff}), so sigma^2 = "
            f"(RSS + {eb.missing:.3g}) / N = {eb.sigma2_em_with:.5g}, {em}."
        )
    else:
        out.append(
            f"{est} The fit is on the boundary ({_var_words(eb)}): "
            + (
                f"the {effects} are shrunk to 0 with no uncertainty left, "
                if eb.missing == 0
                else f"the {effects} along G's zero directions are shrunk to 0 while the rest "
                f"stay uncertain ({miss} = {eb.missing:.4g}), "
            )
            + f"so sigma^2 = (RSS + {eb.missing:.4g}) / N = {eb.sigma2_em_with:.5g}, {em}; "
            f"there the volume term is -infinity and the log joint +infinity."
        )
    if several and eb.missing > 0:
        out.append(_factor_split(eb))
    if joint is not None:
        low_s = 1.0 - joint.sigma2 / eb.sigma2
        solved = abs(joint.sigma2_em_without - joint.sigma2) <= 1e-4 * joint.sigma2
        if ow:
            var_parts = [_change("tau^2", joint.tau2, eb.tau2)]
        else:
            at_joint = _terms_by_factor(joint)
            var_parts = [
                _change(f"the variance of {n}", at_joint[n], v)
                for n, v in _terms_by_factor(eb).items()
            ]
        out.append(
            "The joint mode maximises the log joint, which leaves that term out: "
            + (
                f"it solves sigma^2 = RSS / N, so it divides the residual sum of squares by "
                f"N = {N} where ML in effect divides by about N - p_D = {N - eb.p_d:.1f}"
                if solved
                else f"its sigma^2 = {joint.sigma2:.5g} against RSS / N = "
                f"{joint.sigma2_em_without:.5g} (not at a stationary point)"
            )
            + f", and sigma^2 comes out {_pct(low_s)} {'low' if low_s > 0 else 'high'} "
            f"({joint.sigma2:.5g} against {eb.sigma2:.5g}); {'; '.join(var_parts)}."
        )
        parts = ""
        if several and np.isfinite(eb.volume):
            logdet = ", ".join(f"{k} {_g(f.volume)}" for k, f in eb.by_factor.items())
            parts = (
                f"; at the EB point its parts n_k/2 log det G_k are {logdet} and the shared "
                f"-1/2 log det A is {_g(eb.volume_shared)}"
            )
        out.append(
            f"Its log joint is {_cmp(joint.log_joint, eb.log_joint, 'higher', 'lower')} "
            f"({_g(joint.log_joint, '.6g')} against {_g(eb.log_joint, '.6g')} at the EB point "
            f"with its conditional modes), "
            f"{'yet' if joint.log_joint > eb.log_joint else 'and'} its marginal likelihood is "
            f"{_cmp(joint.log_marginal, eb.log_marginal, 'higher', 'lower')} "
            f"({joint.log_marginal:.6g} against {eb.log_marginal:.6g}): the difference is the "
            f"volume term {volume} ({_g(joint.volume)} against {_g(eb.volume)}{parts}), "
            f"which grows with sigma^2 and the random-effect variances and which the joint mode "
            f"ignores."
        )
    elif status == "no_interior_mode":
        if ow:
            out.append(
                "The log joint has no interior maximum here (none of the starts found one): "
                "with every group effect at mu it rises without bound as tau -> 0 (the funnel), "
                "so any optimiser of the joint density runs to tau = 0 with sigma^2 heading for "
                "the complete-pooling variance sum (y - ybar)^2 / N. The EB and posterior "
                "answers exist because they integrate the group effects out and keep the "
                "volume term, which falls to -infinity as tau -> 0."
            )
        else:
            terms = (
                _join(list(_terms_by_factor(eb)))
                if several
                else f"{_join(list(data.re_names))} by {data.group_name}"
            )
            out.append(
                f"The log joint has no interior maximum here (none of the starts found one): "
                f"with the random effects at 0 it rises without bound as G -> 0 (the variance "
                f"of {terms} going to 0, a funnel), so an optimiser of "
                f"the joint density collapses onto the boundary. The EB and posterior answers "
                f"exist because they integrate the random effects out and keep the volume term "
                f"{volume}, which falls to -infinity as G -> 0."
            )
    else:
        out.append("The joint mode was not computed (method joint-map not run).")
    if bal is not None:
        if bal.interior_exists and bal.sigma2_joint is not None:
            out.append(
                f"Balanced data ({bal.m} groups of {bal.n}): F = {bal.f_statistic:.3g} is above "
                f"the threshold {bal.f_threshold:.3g}, so an interior joint mode exists; the "
                f"closed form gives sigma^2 = {bal.sigma2_joint:.5g}, i.e. "
                f"{bal.sigma2_joint / bal.sigma2_ml:.3f} x ML, and the ratio tends to (n - 1)/n "
                f"= {bal.limit_ratio:.3f} as F grows: the joint mode divides the within-group "
                f"sum of squares by N instead of N - m."
            )
        else:
            out.append(
                f"Balanced data ({bal.m} groups of {bal.n}): F = {bal.f_statistic:.3g} is below "
                f"the threshold {bal.f_threshold:.3g} = 4 (n^2 - 1) m / ((m - 1) n^2), so no "
                f"interior stationary point of the log joint exists."
            )
    return tuple(out)


def _change(name: str, joint: float, eb: float) -> str:
    if eb > 0:
        low = 1.0 - joint / eb
        return (
            f"{name} comes out {_pct(low)} {'low' if low > 0 else 'high'} "
            f"({joint:.5g} against {eb:.5g})"
        )
    return f"{name} comes out {joint:.5g} against ML's boundary value 0"


def explain(comparison) -> Explanation:
    """Decomposition at the EB-ML point and at the centered joint mode (h-likelihood), for any
    model: `comparison` needs data (LMMData), eb_ml and joint_map (None when not run)."""
    c = comparison
    d: LMMData = c.data
    ml = c.eb_ml
    several = d.n_factors > 1
    eb = point_terms("EB-ML", d, ml.beta, ml.sigma2, ml.G)
    jm = c.joint_map
    status = jm.status if jm is not None else "not_run"
    joint = None
    if jm is not None and jm.status == "interior" and jm.sigma2 is not None:
        effects = jm.modes if several else jm.re_mode
        joint = point_terms("joint MAP", d, jm.beta, jm.sigma2, jm.G, effects=effects)
    bal = balanced_form(d.oneway, ml.sigma2) if d.is_oneway else None
    return Explanation(
        eb=eb,
        joint=joint,
        joint_status=status,
        balanced=bal,
        balanced_note=balanced_note(d),
        n_obs=d.n_obs,
        n_groups=None if several else d.n_groups,
        sentences=sentences(eb, joint, status, bal, d),
        n_levels={g.name: g.n_levels for g in d.groupings},
    )


# ----------------------------------------------------------------------------------------------
# The report's top: the headline, the question's second framing, the other joint modes

AGREE = 0.10  # two estimates "agree" in the headline when they are within this relative distance
FRAMING_HDI = 0.94  # the posterior intervals beside the modes (exact and MCMC alike)


def num(v: float) -> str:
    """How the top of the report quotes a number: 4 significant digits (tests read them back)."""
    return f"{v:.4g}"


def _apart(value: float, ref: float) -> str:
    """'31% below' / '2.9% above' / 'equal to' / '18 times': `value` against `ref` (> 0)."""
    r = value / ref - 1.0
    if abs(r) < 5e-4:
        return "equal to"
    if r > 1.0:
        return f"{value / ref:.2g} times"
    return f"{100 * abs(r):.2g}% " + ("below" if r < 0 else "above")


def _close(value: float, ref: float) -> bool:
    """Within `AGREE` of each other (two zeros agree; a zero and a positive value do not)."""
    if ref == 0 or value == 0:
        return value == ref
    return abs(value / ref - 1.0) <= AGREE


def reference_eb(c):
    """(label, fit) of the EB fit the top of the report compares with: EB-ML when it was asked
    for (it is then in the JSON), else EB-REML, else (None, None)."""
    if c.eb_ml is not None and "eb-ml" in c.settings.methods:
        return "EB-ML", c.eb_ml
    if c.eb_reml is not None:
        return "EB-REML", c.eb_reml
    return None, None


@dataclass(frozen=True)
class FramingRow:
    """One quantity on one scale: where the centered joint mode (no priors), the reference EB
    fit and the marginal posterior put it. `mode` is the marginal posterior's mode on this
    scale (0 with `boundary`: the density is largest, or unbounded, at 0), `local_mode` its
    highest interior local maximum when the mode is on the boundary (None without one or
    unknown), `hdi` the 94% shortest interval. `joint`/`eb` None where not run, where there is
    no interior joint mode, or (log scale) for a variance of 0."""

    quantity: str  # "sigma", "tau", or a random-effect term (lme4's "term|factor" with several)
    scale: str  # "sd", "variance" or "log"
    label: str  # e.g. "σ²", "τ", "log SD of x (g)"
    mode: float | None
    boundary: bool
    local_mode: float | None
    hdi: tuple[float, float] | None
    joint: float | None
    eb: float | None
    joint_ci: tuple[float, float] | None = None  # the joint mode's Wald interval on this scale

    def to_dict(self) -> dict:
        return {
            "joint_mode_ci": list(self.joint_ci) if self.joint_ci is not None else None,
            "quantity": self.quantity,
            "scale": self.scale,
            "label": self.label,
            "posterior_mode": self.mode,
            "boundary": self.boundary,
            "local_mode": self.local_mode,
            "hdi": list(self.hdi) if self.hdi is not None else None,
            "joint_mode": self.joint,
            "eb": self.eb,
        }


@dataclass(frozen=True)
class Framing:
    """The question's second framing: the joint mode beside the marginal posterior modes on
    each scale. `source` names the posterior ("exact posterior": the one-way quadrature;
    "MCMC posterior": half-sample modes of the draws); `eb_label` the EB fit shown."""

    source: str
    eb_label: str | None
    rows: tuple[FramingRow, ...]
    sentences: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "eb": self.eb_label,
            "hdi_prob": FRAMING_HDI,
            "rows": [r.to_dict() for r in self.rows],
            "sentences": list(self.sentences),
        }


POWER = {"sd": 1, "variance": 2, "log": 0}


def _on(variance, scale: str) -> float | None:
    """A variance on a framing scale (None: the log of 0, or no value)."""
    from workbench.fit.exact_oneway import on_scale

    return None if variance is None else on_scale(float(variance), POWER[scale])


def _scales_of(c) -> list[tuple[str, str, str, int | None]]:
    """(quantity, scale, label, index of the variance in G or None for sigma) of every row."""
    d = c.data
    if d.is_oneway:
        return [
            ("sigma", "sd", "σ", None),
            ("sigma", "variance", "σ²", None),
            ("tau", "sd", "τ", 0),
            ("tau", "variance", "τ²", 0),
            ("tau", "log", "log τ", 0),
        ]
    from workbench.model.pymc import effect_names

    out = [("sigma", "sd", "σ", None), ("sigma", "variance", "σ²", None)]
    for i, name in enumerate(effect_names(d)):
        term = name.replace("|", " (") + ")" if "|" in name else f"{name} ({d.group_name})"
        out += [
            (name, "sd", f"SD of {term}", i),
            (name, "variance", f"variance of {term}", i),
            (name, "log", f"log SD of {term}", i),
        ]
    return out


def _joint_ci(c, joint, i: int | None, scale: str) -> tuple[float, float] | None:
    """The joint mode's Wald interval (`ci_hessian`: on log sigma and the log variances,
    mapped) of sigma^2 or variance i, on a framing scale."""
    ci = joint.ci_hessian if joint is not None else None
    if not ci:
        return None
    d = c.data
    if i is None:
        ends = ci.get("sigma2")
    elif d.is_oneway:
        ends = ci.get("tau2")
    else:
        block = next(b for b in d.blocks if i in b.cols)
        factor = d.groupings[block.factor].name
        name = block.names[list(block.cols).index(i)]
        ends = ci.get("variance_components", {}).get(factor, {}).get("variances", {}).get(name)
    if not ends or any(v is None for v in ends):
        return None
    lo, hi = (_on(v, scale) for v in ends)
    return None if lo is None or hi is None else (lo, hi)


def _mcmc_stats(draws: np.ndarray, scale: str) -> tuple[float, tuple[float, float]]:
    """The half-sample mode (ArviZ) and 94% HDI of SD draws on a framing scale."""
    import arviz as az

    x = np.asarray(draws, float).reshape(-1)
    x = x[np.isfinite(x) & (x > 0)]
    x = x ** POWER[scale] if POWER[scale] else np.log(x)
    return float(az.mode(x, round_to="none")), tuple(
        float(v) for v in np.asarray(az.hdi(x, prob=FRAMING_HDI))
    )


def framing(c) -> Framing | None:
    """The joint mode against the marginal posterior modes on each scale: the exact posterior
    for the one-way model (`c.exact_posterior`), else MCMC's draws; None without either. The
    mode of a variance is 0 for every model here: with a HalfNormal prior on its SD (the only
    prior the workbench offers), the marginal density of the variance is p(tau) / (2 tau),
    unbounded at 0 (the exact posterior's local mode is given beside it; MCMC cannot see it)."""
    e, post = c.exact_posterior, c.mcmc
    if e is None and post is None:
        return None
    jm = c.joint_map
    joint = jm if jm is not None and jm.status == "interior" and jm.G is not None else None
    eb_label, eb = reference_eb(c)
    sd_draws = None if e is not None else np.asarray(post.draws("sd"), float)
    rows = []
    for quantity, scale, label, i in _scales_of(c):

        def var(fit, i=i):
            return None if fit is None else (fit.sigma2 if i is None else float(fit.G[i, i]))

        if e is not None:
            key = {"sd": "", "variance": "2", "log": ""}[scale]
            key = ("log_" if scale == "log" else "") + quantity + key
            s = e.summaries[key]
            mode, boundary, local, hdi = s.mode, bool(s.boundary), s.local_mode, tuple(s.hdi)
        else:
            draws = post.draws("sigma") if i is None else sd_draws[:, i]
            mode, hdi = _mcmc_stats(draws, scale)
            boundary, local = False, None
            if i is not None and scale == "variance":
                mode, boundary = 0.0, True  # unbounded at 0 (see the docstring)
        rows.append(
            FramingRow(
                quantity=quantity,
                scale=scale,
                label=label,
                mode=float(mode),
                boundary=boundary,
                local_mode=None if local is None else float(local),
                hdi=(float(hdi[0]), float(hdi[1])),
                joint=_on(var(joint), scale),
                eb=_on(var(eb), scale),
                joint_ci=_joint_ci(c, joint, i, scale),
            )
        )
    source = "exact posterior" if e is not None else "MCMC posterior"
    return Framing(
        source=source,
        eb_label=eb_label,
        rows=tuple(rows),
        sentences=_framing_sentences(rows, source, joint is not None, jm is not None),
    )


def _signed(diff: float) -> str:
    """'0.077 below' / '0.02 above' / 'equal to' for a difference on the log scale."""
    if abs(diff) < 5e-4:
        return "equal to"
    return f"{abs(diff):.2g} " + ("below" if diff < 0 else "above")


def _mode_words(r: FramingRow) -> str:
    """The posterior's mode of one row in words."""
    if r.boundary:
        local = (
            f"; its interior local mode is {num(r.local_mode)}" if r.local_mode is not None else ""
        )
        why = (
            "the density of a variance is unbounded at 0"
            if r.scale == "variance"
            else f"the density of {r.label} is largest at 0"
        )
        return f"0 (a boundary mode: {why}{local})"
    return num(r.mode)


def _framing_sentences(rows, source: str, interior: bool, ran: bool) -> tuple[str, ...]:
    """The second framing in words: is the joint mode a marginal posterior mode on any scale?"""
    where = (
        "the exact posterior (the one MCMC samples, by quadrature, with the priors below)"
        if source == "exact posterior"
        else "the MCMC posterior (half-sample modes of the draws)"
    )
    exact = source == "exact posterior"
    modes = "; ".join(f"{r.label}: {_mode_words(r)}" for r in rows)
    out = [
        f"A marginal posterior mode depends on the scale: on {where} the modes are {modes}. "
        "A joint mode is one point, whichever scale it is read on."
    ]
    if not interior:
        out.append(
            "There is no interior joint mode (centered, no priors) on these data to set beside "
            "them: the log joint runs to +∞ as the random-effect variances go to 0."
            if ran
            else "The joint mode was not computed (joint-map not among the methods)."
        )
        return tuple(out)
    parts, gaps = [], []
    for r in rows:
        if r.joint is None:
            continue
        if r.boundary:
            ref, which = r.local_mode, "interior local mode"
        else:
            ref, which = r.mode, "mode"
        if ref is None or ref == 0:
            known = "with no interior local mode" if exact else "(draws cannot locate a local mode)"
            parts.append(f"{r.label} {num(r.joint)} against the boundary mode 0 {known}")
            continue
        if r.scale == "log":  # a difference of logs is a ratio of SDs
            ratio = float(np.exp(r.joint - ref))
            parts.append(
                f"{r.label} {num(r.joint)}, {_signed(r.joint - ref)} the {which} {num(ref)} "
                f"(an SD {_apart(ratio, 1.0)} the mode's)"
            )
            gaps.append((abs(ratio - 1.0), r.label, _apart(ratio, 1.0)))
            continue
        parts.append(f"{r.label} {num(r.joint)}, {_apart(r.joint, ref)} the {which} {num(ref)}")
        gaps.append((abs(r.joint / ref - 1.0), r.label, _apart(r.joint, ref)))
    text = "The joint mode (centered, no priors) reads " + "; ".join(parts) + "."
    if gaps:
        lo, hi = min(gaps), max(gaps)
        text += (
            f" It is closest to a marginal mode on {lo[1]} ({lo[2]} it) and farthest on "
            f"{hi[1]} ({hi[2]} it)"
            + (
                ": it is not the marginal posterior mode on any of these scales."
                if lo[0] > AGREE
                else "."
            )
        )
    out.append(text)
    return tuple(out)


def _variance_parts(c, joint, eb_label: str | None, eb) -> list[str]:
    """How the joint mode's random-effect variances compare with the EB fit's, in words (at
    most 3 named, the rest counted)."""
    d = c.data
    if d.is_oneway:
        names = ["τ²"]
    else:
        from workbench.model.pymc import effect_names

        names = [
            f"the variance of {n.replace('|', ' (') + ')' if '|' in n else n}"
            for n in effect_names(d)
        ]
    out = []
    for i, name in enumerate(names[:3]):
        jv = float(joint.G[i, i])
        if eb is None:
            out.append(f"{name} at {num(jv)}")
        elif float(eb.G[i, i]) > 0:
            out.append(f"{name} at {num(jv)}, {_apart(jv, float(eb.G[i, i]))} {eb_label}'s")
        else:
            out.append(f"{name} at {num(jv)} where {eb_label}'s is 0 (the boundary)")
    if len(names) > 3:
        out.append(f"{len(names) - 3} more variances in the table below")
    return out


def _distinct(a: float, b: float) -> tuple[str, str]:
    """a and b with the fewest significant digits (at least 3) that tell them apart."""
    for digits in range(3, 10):
        x, y = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if x != y:
            return x, y
    return x, y


def _no_mode_sentence(c) -> str:
    """Why there is no joint mode, true for the data at hand: proved by the balanced closed form
    (one-way, equal group sizes), else what the starts found."""
    d, jm = c.data, c.joint_map
    tail = (
        "the log joint (h-likelihood) runs to +∞ as τ → 0 with every group effect at μ"
        if d.is_oneway
        else "the log joint (h-likelihood) runs to +∞ as the random-effect variances go to 0 "
        "with every random effect at 0"
    )
    bal = balanced_form(d.oneway, float(c.eb_ml.sigma2)) if d.is_oneway and c.eb_ml else None
    if bal is not None and not bal.interior_exists:
        f, thr = _distinct(bal.f_statistic, bal.f_threshold)
        return (
            f"There is no joint mode: with {bal.m} groups of {bal.n}, F = {f} is below the "
            f"threshold {thr} for an interior mode, so the log joint (h-likelihood) has no local "
            f"maximum; it runs to +∞ as τ → 0 with every group effect at μ."
        )
    counts = jm.counts()
    found = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
    return (
        f"No joint mode was found: none of the {sum(counts.values())} starts of the centered "
        f"joint MAP (no priors) ended at an interior local maximum ({found}), and {tail}."
    )


def headline(c) -> tuple[str, str]:
    """The answer in two sentences from the numbers: where the centered joint mode (no priors)
    puts sigma^2 and the variances against the EB fit and the posterior mode (or why there is
    none), and whether EB and the posterior agree. True in every case: no joint mode, EB at the
    boundary, several factors, without MCMC or without EB-ML."""
    eb_label, eb = reference_eb(c)
    fr = framing(c)
    post_s2 = (
        None
        if fr is None
        else next((r for r in fr.rows if r.quantity == "sigma" and r.scale == "variance"), None)
    )
    jm = c.joint_map
    if jm is None:
        first = (
            "The centered joint mode (no priors) was not computed (add joint-map to the methods)."
        )
    elif jm.status != "interior" or jm.G is None:
        first = _no_mode_sentence(c)
    else:
        s2 = float(jm.sigma2)
        refs = []
        if eb is not None:
            refs.append(f"{_apart(s2, float(eb.sigma2))} {eb_label}'s {num(float(eb.sigma2))}")
        if post_s2 is not None:
            refs.append(
                f"{_apart(s2, post_s2.mode)} the {fr.source}'s mode of σ² ({num(post_s2.mode)})"
            )
        first = (
            f"The joint mode (centered, no priors) puts σ² at {num(s2)}"
            + (f", {' and '.join(refs)}" if refs else "")
            + "; "
            + "; ".join(_variance_parts(c, jm, eb_label, eb))
            + "."
        )
    if fr is None:
        second = (
            "The posterior was not computed (add mcmc to the methods), so nothing says whether "
            f"{eb_label or 'EB'} agrees with it."
        )
    elif eb is None:
        sd = [r for r in fr.rows if r.scale == "sd" and r.quantity != "sigma"]
        second = (
            f"No EB fit was run to compare with the {fr.source}, whose mode of σ² is "
            f"{num(post_s2.mode)} and of "
            + ", ".join(f"{r.label} {_mode_words(r)}" for r in sd[:3])
            + "."
        )
    else:
        second = _agreement(c, fr, eb_label, eb)
    return first, second


def _agreement(c, fr: Framing, eb_label: str, eb) -> str:
    """Whether the EB fit and the posterior agree, on sigma^2 and on each SD (the SD scale:
    the mode of a variance is always 0)."""
    agree, differ = [], []
    for r in fr.rows:
        if not (r.scale == "sd" and r.quantity != "sigma") and not (
            r.scale == "variance" and r.quantity == "sigma"
        ):
            continue
        ebv = r.eb if r.eb is not None else 0.0
        if ebv == 0 and r.mode == 0:
            text = f"{r.label} (both 0, the boundary)"
        elif ebv == 0:
            text = (
                f"{r.label} ({eb_label} 0, the boundary, against the posterior mode {num(r.mode)})"
            )
        elif r.mode == 0:
            text = f"{r.label} ({num(ebv)} against the posterior mode 0, the boundary)"
        else:
            apart = _apart(ebv, r.mode)
            text = f"{r.label} ({num(ebv)} against the posterior mode {num(r.mode)}, {apart})"
        (agree if _close(ebv, r.mode) else differ).append(text)
    n_more = 0
    if len(agree) + len(differ) > 4:  # many SDs: the agreeing ones counted, not named
        n_more, agree = len(agree), []
    text = f"{eb_label} and the {fr.source} "
    if agree:
        text += f"agree within {100 * AGREE:.0f}% on " + _join(agree)
    if n_more:
        text += (
            f"agree within {100 * AGREE:.0f}% on {n_more} of the {n_more + len(differ)} quantities"
        )
    if differ:
        text += (" but differ on " if agree or n_more else "differ on ") + _join(differ[:3])
        if len(differ) > 3:
            text += f" and {len(differ) - 3} more"
    return text + "."


def _sd_words(c, r, limit: int = 3) -> str:
    """A joint MAP's SDs against the EB fit's and the prior scales, e.g. 'τ = 20.48 (EB-ML
    4.833; prior HalfNormal(14.79))'."""
    d, pri = c.data, c.priors
    eb_label, eb = reference_eb(c)
    if d.is_oneway:
        names = ["τ"]
    else:
        from workbench.model.pymc import effect_names

        names = [f"the SD of {n}" for n in effect_names(d)]
    out = []
    for i, name in enumerate(names[:limit]):
        sd = float(np.sqrt(r.G[i, i]))
        ref = f"{eb_label} {num(float(np.sqrt(eb.G[i, i])))}; " if eb is not None else ""
        out.append(f"{name} = {num(sd)} ({ref}prior HalfNormal({num(pri.sd_scale[i])}))")
    if len(names) > limit:
        out.append(f"{len(names) - limit} more")
    return _join(out)


def variant_roles(c) -> dict[tuple[str, bool], str]:
    """One sentence per joint MAP variant that ran, from its numbers: what it is and why it is
    (or is not) the joint mode of the question. The centered h-likelihood is the headline; the
    others are modes of other densities."""
    out = {}
    jms = c.joint_maps
    var = "τ → 0" if c.data.is_oneway else "the variances → 0"
    head = jms.get(("centered", False))
    for (par, pri), r in jms.items():
        inner = r.status == "interior" and r.G is not None
        counts = r.counts()
        if (par, pri) == ("centered", False):
            out[(par, pri)] = (
                "The joint mode of the question and the headline joint MAP: the maximum of the "
                "h-likelihood, the log joint of the data and the random effects with no priors"
                + (
                    f"; its Wald intervals ({100 * r.ci_level:.0f}%) come from the Hessian at the "
                    "mode."
                    if inner
                    else f"; it has no interior mode here (its runs end at {var})."
                )
            )
        elif (par, pri) == ("centered", True):
            if inner and head is not None and head.status == "interior" and head.G is not None:
                gap = _apart(float(r.sigma2), float(head.sigma2))
                out[(par, pri)] = (
                    "The mode of the density PyMC samples (the centered log joint times the "
                    "priors, no Jacobian): the priors barely move it — its σ² "
                    f"({num(float(r.sigma2))}) is {gap} the joint mode's."
                    if _close(float(r.sigma2), float(head.sigma2))
                    else "The mode of the density PyMC samples (the centered log joint times the "
                    f"priors, no Jacobian): the priors move it, its σ² ({num(float(r.sigma2))}) "
                    f"is {gap} the joint mode's."
                )
            elif inner:
                out[(par, pri)] = (
                    "The mode of the density PyMC samples (the centered log joint times the "
                    f"priors, no Jacobian), σ² = {num(float(r.sigma2))}: a local maximum of a "
                    "density that is still unbounded as the variances go to 0."
                )
            else:
                out[(par, pri)] = (
                    "The mode of the density PyMC samples (the centered log joint times the "
                    "priors, no Jacobian): none here, because the priors' densities stay finite "
                    f"as {var} and cannot stop the centered log joint from running to +∞."
                )
        elif not pri:
            escaped = counts.get("escape", 0)
            out[(par, pri)] = (
                "The h-likelihood in the non-centered effects z = b / SD, a different density "
                "(no −log SD term per effect): "
                + (
                    f"{escaped} of its {sum(counts.values())} runs escaped to ever larger SDs, "
                    "towards the no-pooling fit, its supremum, so it has no mode to report."
                    if not inner and escaped
                    else "no interior mode here."
                    if not inner
                    else f"an interior mode here (σ² = {num(float(r.sigma2))}), a point of "
                    "another density, not the joint mode of the question."
                )
            )
        else:
            nc = jms.get(("noncentered", False))
            escapes = (
                nc is not None
                and nc.status != "interior"
                and nc.counts().get("escape", 0) == sum(nc.counts().values())
            )
            if not inner:
                out[(par, pri)] = (
                    "The mode of the non-centered density with the priors: none here "
                    f"({', '.join(f'{v} {k}' for k, v in counts.items())})."
                )
            elif escapes:
                out[(par, pri)] = (
                    "Prior-driven: without the priors the non-centered log joint has no mode "
                    "(every run escaped to ever larger SDs), so this mode sits where the "
                    f"HalfNormal prior on the SD stops it — {_sd_words(c, r)}."
                )
            else:
                out[(par, pri)] = (
                    "The mode of the non-centered density with the priors, a point of another "
                    f"density than the joint mode of the question: {_sd_words(c, r)}."
                )
    return out


CI_SCALE = (
    "Wald intervals from the inverse negative Hessian of the log joint in all parameters at the "
    "mode, symmetric on the scale of the fixed effects, log sigma and the log variances (one-way: "
    "log sigma and log tau), then mapped to sigma^2 and the variances (ends exp of the log ends)"
)


def story(c) -> dict:
    """The top of the report as JSON: the headline's two sentences, the second framing (None
    without a posterior) and one sentence per joint MAP variant that ran, keyed like
    `joint_map_all` ("centered/h_likelihood", ...)."""
    fr = framing(c)
    return {
        "headline": list(headline(c)),
        "framing": fr.to_dict() if fr is not None else None,
        "joint_map_roles": {
            f"{par}/{'posterior' if pri else 'h_likelihood'}": text
            for (par, pri), text in variant_roles(c).items()
        },
    }
