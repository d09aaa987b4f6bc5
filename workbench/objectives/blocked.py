"""lme4's penalised least squares for several random-effect terms, by a blocked Cholesky factor.

Model: y = X beta + sum_k Z_k b_k + e, e ~ N(0, sigma^2 I); term k has a grouping factor with
n_k levels and q_k columns per level (q_k = 1: a random intercept or a single slope), b_kj ~
N(0, sigma^2 T_k T_k') independently over levels and terms. theta lists, term by term in the
order the terms were given, the free elements of each lower-triangular T_k column by column (as
lme4's `getME(fit, "theta")` does within a term). With Lambda = blockdiag_k(I_{n_k} (x) T_k),
u = Lambda^-1 b and W = [X y], everything comes from the Cholesky factor L of

    [ Lambda'Z'Z Lambda + I   Lambda'Z'W ]
    [ W'Z Lambda              W'W        ]

split into blocks by term, as MixedModels.jl does (Bates et al.): the terms sorted by dimension
n_k q_k (descending), so the largest block comes first, where Z_1'Z_1 is block diagonal (q_1 x
q_1 per level) and stays so in L; the blocks below it (Z_i'Z_1, i > 1) are sparse and keep the
sparsity pattern of Z_i'Z_1 in L; the later diagonal blocks fill in (a dense Cholesky of the
Schur complement, of order n_k q_k for k >= 2); the last block (order p + 1) gives R_X (X'V^-1 X
= R_X'R_X) and the penalised residual r (r^2 = min over beta, u of ||y - X beta - Z Lambda u||^2
+ ||u||^2). Then (lme4's formulas, log|L_theta|^2 = log|Lambda'Z'Z Lambda + I|):

* ML deviance:    log|L_theta|^2 + N [1 + log(2 pi r^2 / N)]
* REML criterion: log|L_theta|^2 + log|R_X|^2 + (N - p) [1 + log(2 pi r^2 / (N - p))]
* joint:          (N + Q) [1 + log(2 pi r^2 / (N + Q))] + sum_k 2 n_k log|det T_k|
                  (minus twice the log joint density of y and b, maximised over beta, b and
                  sigma^2; Q = sum_k n_k q_k; `deviance`'s one-factor formula term by term)

`objective_and_gradient` adds the exact gradient in theta; `Solution` the conditional
covariances of b (lme4's condVar / sigma^2) by level and (X'V^-1X)^-1, from the same factor.

`Terms.of` does every theta-free product (Z_i'Z_j, Z'W, W'W) once, in O(N); an evaluation then
costs a scaling of those products, one sparse matrix-vector product per pair of later blocks
(their update by the first block, whose sparsity pattern is worked out once), and the dense
Cholesky factors of the later blocks: nothing of order N. y enters only through its residual
from the ordinary least-squares fit (the objectives, b and beta - beta_OLS do not change), which
keeps W'W from dwarfing r^2 (the Schur complement subtracts, as MixedModels.jl does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

METHODS = ("ml", "reml", "joint")


def _tril(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the free elements of a q x q lower-triangular T, column by column."""
    rows = [r for c in range(q) for r in range(c, q)]
    cols = [c for c in range(q) for _ in range(c, q)]
    return np.array(rows, int), np.array(cols, int)


@dataclass(frozen=True)
class Term:
    """One random-effect term: level codes (0 .. n - 1) and the q columns of Z per row."""

    codes: np.ndarray = field(repr=False)
    Z: np.ndarray = field(repr=False)  # (N, q)
    n: int
    q: int

    @property
    def dim(self) -> int:
        return self.n * self.q

    @property
    def n_theta(self) -> int:
        return self.q * (self.q + 1) // 2

    def T(self, theta) -> np.ndarray:
        rows, cols = _tril(self.q)
        out = np.zeros((self.q, self.q))
        out[rows, cols] = theta
        return out


@dataclass(frozen=True)
class Terms:
    """The theta-free products of a model with several random-effect terms, computed once.

    Blocks are held in the sorted order (`order[s]` is the user's index of sorted block s; block
    0 is the first, blocks 1 .. K - 1 the later random blocks, block K is W = [X, y - X
    beta_ols]): `diag[s]` the (n, q, q) blocks of Z_s'Z_s; `below_first[i - 1]` Z_i'Z_0 (CSR,
    i >= 1); `dense[(i, j)]` Z_i'Z_j for 1 <= j < i (dense); `fixed[s]` W'Z_s as (p + 1, n_s,
    q_s); `WtW` W'W; `pairs[(i, j)]` (1 <= j <= i < K) the sparse map from the first block's
    per-level q_0 x q_0 matrices H to the entries of Z_i'Z_0 blockdiag(H) Z_0'Z_j (for i == j the
    block-lower triangle only), so that this Schur-complement update is one sparse
    matrix-vector product per evaluation."""

    terms: tuple[Term, ...]  # the user's order
    order: tuple[int, ...]  # sorted block s -> the user's term index
    n_obs: int
    p: int
    beta_ols: np.ndarray
    diag: tuple[np.ndarray, ...] = field(repr=False)
    below_first: tuple[sp.csr_matrix, ...] = field(repr=False)
    dense: dict = field(repr=False)
    fixed: tuple[np.ndarray, ...] = field(repr=False)
    WtW: np.ndarray = field(repr=False)
    pairs: dict = field(repr=False)

    @classmethod
    def of(cls, y, X, terms) -> Terms:
        """`terms`: a sequence of (codes, Z) with codes integer level codes 0 .. n_k - 1 (n_k is
        codes.max() + 1) and Z None (a random intercept), a length-N vector (one column) or an
        (N, q_k) array. O(N sum_k q_k (p + sum_j q_j)) work, done once."""
        y = np.asarray(y, float)
        X = np.asarray(X, float)
        N = y.size
        if X.ndim == 1:
            X = X[:, None]
        if X.shape[0] != N:
            raise ValueError("X and y have different numbers of rows")
        built = []
        for codes, Z in terms:
            codes = np.asarray(codes)
            if codes.shape != (N,) or not np.issubdtype(codes.dtype, np.integer):
                raise ValueError("level codes must be N integers")
            if codes.min() < 0:
                raise ValueError("level codes must be non-negative")
            Z = np.ones((N, 1)) if Z is None else np.asarray(Z, float).reshape(N, -1)
            built.append(
                Term(codes=codes.astype(np.intp), Z=Z, n=int(codes.max()) + 1, q=Z.shape[1])
            )
        if not built:
            raise ValueError("at least one random-effect term is needed")
        p = X.shape[1]
        beta_ols, *_ = np.linalg.lstsq(X, y, rcond=None)
        W = np.column_stack([X, y - X @ beta_ols])
        order = tuple(sorted(range(len(built)), key=lambda k: -built[k].dim))
        srt = [built[k] for k in order]
        diag = tuple(_diag_blocks(t) for t in srt)
        below_first = tuple(_cross_sparse(t, srt[0]) for t in srt[1:])
        dense = {
            (i, j): _cross_sparse(srt[i], srt[j]).toarray()
            for i in range(1, len(srt))
            for j in range(1, i)
        }
        fixed = tuple(_fixed_cross(W, t) for t in srt)
        pairs = {
            (i, j): _pair_products(below_first[i - 1], below_first[j - 1], srt, i, j)
            for i in range(1, len(srt))
            for j in range(1, i + 1)
        }
        return cls(
            terms=tuple(built),
            order=order,
            n_obs=N,
            p=p,
            beta_ols=beta_ols,
            diag=diag,
            below_first=below_first,
            dense=dense,
            fixed=fixed,
            WtW=W.T @ W,
            pairs=pairs,
        )

    @cached_property
    def theta_slices(self) -> tuple[slice, ...]:
        """Where each term's elements sit in theta (the user's order of terms)."""
        out, start = [], 0
        for t in self.terms:
            out.append(slice(start, start + t.n_theta))
            start += t.n_theta
        return tuple(out)

    @property
    def n_theta(self) -> int:
        return sum(t.n_theta for t in self.terms)

    @property
    def n_re(self) -> int:
        """Q = sum_k n_k q_k, the number of random effects."""
        return sum(t.dim for t in self.terms)

    @cached_property
    def later_starts(self) -> np.ndarray:
        """Where the later random blocks (sorted 1 .. K - 1) start in their Schur complement,
        and its order last."""
        dims = [self.terms[k].dim for k in self.order[1:]]
        return np.concatenate([[0], np.cumsum(dims)]).astype(np.int64)

    @cached_property
    def pair_positions(self) -> dict:
        """For each pair map (i, j): the positions of its entries in the transposed, flattened
        Schur complement of the later blocks (row i, column j in block coordinates) and their
        weights in <S^-1, B> for a symmetric B of which the map gives the lower part (1 in a
        diagonal q x q block of a level, where the map holds all of it; 2 elsewhere)."""
        m, starts, out = int(self.later_starts[-1]), self.later_starts, {}
        for (i, j), (flat, _) in self.pairs.items():
            mj = self.terms[self.order[j]].dim
            rows, cols = flat // mj, flat % mj
            qj = self.terms[self.order[j]].q
            w = np.where((i == j) & (rows // qj == cols // qj), 1.0, 2.0)
            out[(i, j)] = ((cols + starts[j - 1]) * m + rows + starts[i - 1], w)
        return out

    def lme4_theta(self, theta) -> np.ndarray:
        """theta in the user's order of terms -> lme4's order (terms by number of levels,
        descending; ties in the given order: what lme4 does with the terms in formula order)."""
        theta = np.asarray(theta, float)
        idx = sorted(range(len(self.terms)), key=lambda k: -self.terms[k].n)
        return np.concatenate([theta[self.theta_slices[k]] for k in idx])

    def from_lme4_theta(self, theta_lme4) -> np.ndarray:
        """The inverse of `lme4_theta`."""
        theta_lme4 = np.asarray(theta_lme4, float)
        idx = sorted(range(len(self.terms)), key=lambda k: -self.terms[k].n)
        out = np.empty(self.n_theta)
        start = 0
        for k in idx:
            n = self.terms[k].n_theta
            out[self.theta_slices[k]] = theta_lme4[start : start + n]
            start += n
        return out


def _diag_blocks(t: Term) -> np.ndarray:
    """Z_t'Z_t as its (n, q, q) per-level blocks (it is block diagonal)."""
    out = np.empty((t.n, t.q, t.q))
    for r in range(t.q):
        for c in range(t.q):
            out[:, r, c] = np.bincount(t.codes, weights=t.Z[:, r] * t.Z[:, c], minlength=t.n)
    return out


def _cross_sparse(a: Term, b: Term) -> sp.csr_matrix:
    """Z_a'Z_b (n_a q_a x n_b q_b) as CSR, duplicates summed, every q_a x q_b block of a
    touched pair of levels stored (a fixed pattern for the scalings)."""
    rows = (a.codes[:, None, None] * a.q + np.arange(a.q)[None, :, None]).repeat(b.q, axis=2)
    cols = (b.codes[:, None, None] * b.q + np.arange(b.q)[None, None, :]).repeat(a.q, axis=1)
    vals = a.Z[:, :, None] * b.Z[:, None, :]
    out = sp.coo_matrix((vals.ravel(), (rows.ravel(), cols.ravel())), shape=(a.dim, b.dim)).tocsr()
    out.sum_duplicates()
    out.sort_indices()
    return out


def _fixed_cross(W: np.ndarray, t: Term) -> np.ndarray:
    """W'Z_t as (p + 1, n, q)."""
    out = np.empty((W.shape[1], t.n, t.q))
    for c in range(W.shape[1]):
        for a in range(t.q):
            out[c, :, a] = np.bincount(t.codes, weights=W[:, c] * t.Z[:, a], minlength=t.n)
    return out


def _pair_products(Ai: sp.csr_matrix, Aj: sp.csr_matrix, srt, i: int, j: int):
    """The sparse map h -> the entries of Ai blockdiag(H) Aj' (h = H.ravel(), H the (n_0, q_0,
    q_0) per-level matrices of the first block): every pair of a stored entry of Ai and one of
    Aj in the same level of the first factor contributes Ai[r, e] Aj[c, e'] H[l, e, e'].
    Returns (flat indices into the dense m_i x m_j block, CSR matrix of the map); for i == j
    only the blocks on or below the block diagonal (what the Cholesky factor reads)."""
    q0, n0 = srt[0].q, srt[0].n
    qi, qj, mj = srt[i].q, srt[j].q, srt[j].dim
    ci, cj = Ai.tocsc(), Aj.tocsc()  # entries by column of the first block, so by level
    ei = np.repeat(np.arange(ci.shape[1]), np.diff(ci.indptr))
    ej = np.repeat(np.arange(cj.shape[1]), np.diff(cj.indptr))
    ri, vi, li = ci.indices, ci.data, ei // q0
    rj, vj, lj = cj.indices, cj.data, ej // q0
    count_j = np.bincount(lj, minlength=n0)
    start_j = np.cumsum(count_j) - count_j
    lower = i == j and q0 == 1 and qi == 1
    # Each entry x of Ai pairs with the entries of Aj in its level (for a scalar i == j, only
    # those up to itself: the columns are sorted by row, so this is the lower triangle).
    rep = np.arange(li.size) - start_j[li] + 1 if lower else count_j[li]
    # Entry indices as int32 where they fit (the pair arrays are the memory peak of Terms.of).
    small = max(li.size, lj.size) < 2**31
    x = np.repeat(np.arange(li.size, dtype=np.int32 if small else np.int64), rep)
    y = np.repeat(start_j[li] - np.cumsum(rep) + rep, rep)
    y += np.arange(x.size)
    if small:
        y = y.astype(np.int32)
    del rep
    if i == j and not lower:
        keep = ri[x] // qi >= rj[y] // qj
        x, y = x[keep], y[keep]
        del keep
    out = ri[x].astype(np.int64) * mj
    out += rj[y]
    seen = np.zeros(srt[i].dim * mj, bool)
    seen[out] = True
    flat = np.flatnonzero(seen)
    rank = np.cumsum(seen, dtype=np.int32 if flat.size < 2**31 else np.int64)
    row = rank[out] - 1
    del out, seen, rank
    shape = (flat.size, n0 * q0 * q0)
    data = vi[x] * vj[y]
    if q0 == 1:  # the pairs come level by level (x is sorted): CSC as is, then CSR (P @ h
        # with CSR runs twice as fast: gathers from h instead of scattered writes)
        indptr = np.searchsorted(x, ci.indptr)
        return flat, sp.csc_matrix((data, row, indptr), shape=shape).tocsr()
    col = li[x] * (q0 * q0) + (ei[x] % q0) * q0 + ej[y] % q0
    return flat, sp.csr_matrix((data, (row, col)), shape=shape)


@dataclass(frozen=True)
class Factor:
    """The blocked lower Cholesky factor at one theta (sorted block order; K random blocks,
    block K is W). The first block column is kept implicit: its diagonal blocks `L00` (n_0, q_0,
    q_0) and G_j = T_0 L00_j^-T, so that L[i, 0] = blockdiag(T_i') Z_i'Z_0 blockdiag(G) and
    L[K, 0] = W'Z_0 blockdiag(G); `L[(i, j)]` the dense blocks for j >= 1."""

    T: tuple[np.ndarray, ...]  # T_s in sorted order
    L00: np.ndarray
    G: np.ndarray
    L: dict
    logdet_L: float
    logdet_RX: float
    r: float


def _split_theta(terms: Terms, theta) -> tuple[np.ndarray, ...]:
    theta = np.asarray(theta, float)
    if theta.shape != (terms.n_theta,):
        raise ValueError(f"theta has {theta.size} elements, the terms need {terms.n_theta}")
    return tuple(terms.terms[k].T(theta[terms.theta_slices[k]]) for k in terms.order)


def _left_T(T: np.ndarray, A: np.ndarray, q: int) -> np.ndarray:
    """blockdiag(T') A for a dense A with rows in levels of q."""
    if q == 1:
        return T[0, 0] * A
    n = A.shape[0] // q
    return np.einsum("ba,jbc->jac", T, A.reshape(n, q, -1)).reshape(A.shape)


def _right_T(A: np.ndarray, T: np.ndarray, q: int) -> np.ndarray:
    """A blockdiag(T) for a dense A with columns in levels of q."""
    if q == 1:
        return A * T[0, 0]
    n = A.shape[1] // q
    return (A.reshape(A.shape[0], n, q) @ T).reshape(A.shape)


def _diag_dense(D: np.ndarray, T: np.ndarray) -> np.ndarray:
    """blockdiag(T' D_j T) + I as a dense matrix, D (n, q, q)."""
    n, q, _ = D.shape
    if q == 1:
        return np.diag(T[0, 0] ** 2 * D[:, 0, 0] + 1.0)
    out = np.zeros((n, q, n, q))
    idx = np.arange(n)
    out[idx, :, idx, :] = T.T @ D @ T + np.eye(q)
    return out.reshape(n * q, n * q)


def _subtract_pairs(S: np.ndarray, pair, h: np.ndarray, Ti, Tj, qi: int, qj: int) -> None:
    """S -= blockdiag(T_i') [Z_i'Z_0 blockdiag(H) Z_0'Z_j] blockdiag(T_j), in place, from the
    precomputed map (only the entries it covers)."""
    flat, P = pair
    v = P @ h
    if qi == 1 and qj == 1:
        S.reshape(-1)[flat] -= (Ti[0, 0] * Tj[0, 0]) * v
        return
    M = np.zeros(S.size)
    M[flat] = v
    S -= _right_T(_left_T(Ti, M.reshape(S.shape), qi), Tj, qj)


def _cholesky(S: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of S from its lower triangle (LAPACK potrf, no copies)."""
    c, info = sla.lapack.dpotrf(S.T, lower=0, clean=1, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Schur complement not positive definite (potrf {info})")
    return c.T


def factor(terms: Terms, theta) -> Factor:
    """The blocked Cholesky factor at `theta` (the user's order of terms)."""
    Ts = _split_theta(terms, theta)
    srt = [terms.terms[k] for k in terms.order]
    K = len(srt)
    t0, T0 = srt[0], Ts[0]
    # First block: blockdiag(T0' D_j T0 + I), factored level by level; H_j = G_j G_j'.
    if t0.q == 1:
        l0 = np.sqrt(T0[0, 0] ** 2 * terms.diag[0][:, 0, 0] + 1.0)
        L00 = l0[:, None, None]
        G = (T0[0, 0] / l0)[:, None, None]
        logdet = 2.0 * float(np.log(l0).sum())
    else:
        L00 = np.linalg.cholesky(T0.T @ terms.diag[0] @ T0 + np.eye(t0.q))
        G = np.swapaxes(np.linalg.solve(L00, np.broadcast_to(T0.T, L00.shape)), 1, 2)
        logdet = 2.0 * float(np.log(np.diagonal(L00, axis1=1, axis2=2)).sum())
    H = G @ np.swapaxes(G, 1, 2)
    h = H.ravel()
    F0 = terms.fixed[0]
    F0H = np.einsum("cja,jab->cjb", F0, H).reshape(F0.shape[0], -1)  # L[K, 0] G'
    L: dict = {}
    for j in range(1, K):
        tj, Tj = srt[j], Ts[j]
        S = _diag_dense(terms.diag[j], Tj)
        _subtract_pairs(S, terms.pairs[(j, j)], h, Tj, Tj, tj.q, tj.q)
        for k in range(1, j):
            S -= L[(j, k)] @ L[(j, k)].T
        Ljj = _cholesky(S)
        L[(j, j)] = Ljj
        logdet += 2.0 * float(np.log(np.diag(Ljj)).sum())
        # The blocks below (i > j, then W), stacked: one triangular solve against L[j, j].
        stack = []
        for i in range(j + 1, K):
            A = _right_T(_left_T(Ts[i], terms.dense[(i, j)], srt[i].q), Tj, tj.q)
            _subtract_pairs(A, terms.pairs[(i, j)], h, Ts[i], Tj, srt[i].q, tj.q)
            stack.append(A)
        Fj = terms.fixed[j]
        stack.append(
            _right_T(Fj.reshape(Fj.shape[0], -1) - (terms.below_first[j - 1] @ F0H.T).T, Tj, tj.q)
        )
        A = np.vstack(stack)
        for k in range(1, j):
            A -= np.vstack([L[(i, k)] for i in range(j + 1, K + 1)]) @ L[(j, k)].T
        A = sla.solve_triangular(Ljj, A.T, lower=True, check_finite=False).T
        ends = np.cumsum([srt[i].dim for i in range(j + 1, K)] + [terms.p + 1])
        for i, end in zip(range(j + 1, K + 1), ends, strict=True):
            L[(i, j)] = A[end - (srt[i].dim if i < K else terms.p + 1) : end]
    S = terms.WtW - F0H @ F0.reshape(F0.shape[0], -1).T
    for k in range(1, K):
        S -= L[(K, k)] @ L[(K, k)].T
    LW = _cholesky(S)
    L[(K, K)] = LW
    p = terms.p
    return Factor(
        T=Ts,
        L00=L00,
        G=G,
        L=L,
        logdet_L=logdet,
        logdet_RX=2.0 * float(np.log(np.abs(np.diag(LW)[:p])).sum()),
        r=abs(float(LW[p, p])),
    )


def _logdet_T(terms: Terms, Ts) -> float:
    """sum_k 2 n_k log|det T_k|, the joint's volume term (-inf at a zero diagonal element)."""
    out = 0.0
    with np.errstate(divide="ignore"):
        for s, k in enumerate(terms.order):
            out += 2.0 * terms.terms[k].n * float(np.log(np.abs(np.diag(Ts[s]))).sum())
    return out


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")


def _criterion(method: str, f: Factor, terms: Terms) -> float:
    """The criterion `method` from the factor (see `objective`)."""
    n, p, r2 = terms.n_obs, terms.p, f.r**2
    with np.errstate(divide="ignore"):
        if method == "ml":
            return float(f.logdet_L + n * (1.0 + np.log(2.0 * np.pi * r2 / n)))
        if method == "reml":
            dof = n - p
            return float(f.logdet_L + f.logdet_RX + dof * (1.0 + np.log(2.0 * np.pi * r2 / dof)))
        if method == "joint":
            dof = n + terms.n_re
            return float(dof * (1.0 + np.log(2.0 * np.pi * r2 / dof)) + _logdet_T(terms, f.T))
    raise ValueError(f"method must be one of {METHODS}, not {method!r}")


def objective(terms: Terms, theta, method: str = "reml") -> float:
    """At theta (beta, sigma^2 and, for the joint, b profiled out), from the factor only:
    lme4's ML deviance ('ml'), its REML criterion ('reml'), or minus twice the profiled log
    joint density of y and the random effects ('joint', the h-likelihood with centred b:
    (N + Q) [1 + log(2 pi r^2 / (N + Q))] + sum_k 2 n_k log|det T_k|, Q = sum_k n_k q_k; -inf
    where a diagonal element of a T_k is 0)."""
    _check_method(method)
    return _criterion(method, factor(terms, theta), terms)


def _blockdiag(D: np.ndarray) -> np.ndarray:
    """blockdiag(D_j) as a dense matrix, D (n, q, q)."""
    n, q, _ = D.shape
    out = np.zeros((n, q, n, q))
    idx = np.arange(n)
    out[idx, :, idx, :] = D
    return out.reshape(n * q, n * q)


def _schur_inverse(terms: Terms, f: Factor) -> np.ndarray:
    """S^-1, S the Schur complement of the first block in A = Lambda'Z'Z Lambda + I (the later
    random blocks): its lower triangle in Fortran order, from L_S (LAPACK potri)."""
    Sinv, info = sla.lapack.dpotri(_lower_dense(f, terms), lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"potri failed ({info})")
    return Sinv


def _scaled_inverse(terms: Terms, f: Factor) -> tuple[np.ndarray, np.ndarray]:
    """R = Lambda_L S^-1 and Shat = Lambda_L S^-1 Lambda_L' (full, C order), Lambda_L the later
    blocks' part of Lambda: Shat is the later blocks' part of Lambda A^-1 Lambda'."""
    Sinv = _schur_inverse(terms, f)
    Sinv = np.tril(Sinv) + np.tril(Sinv, -1).T
    starts = terms.later_starts
    R, Shat = np.empty_like(Sinv), np.empty_like(Sinv)
    blocks = [
        (slice(starts[s - 1], starts[s]), f.T[s], terms.terms[terms.order[s]].q)
        for s in range(1, starts.size)
    ]
    for sl, T, q in blocks:
        R[sl] = _left_T(T.T, Sinv[sl], q)
    for sl, T, q in blocks:
        Shat[:, sl] = _right_T(R[:, sl], T.T, q)
    return R, Shat


def _first_gamma(terms: Terms, Shat: np.ndarray) -> np.ndarray:
    """Gamma_j = (Z_0'Z_L Shat Z_L'Z_0)_jj, the q_0 x q_0 diagonal blocks by level of the first
    block, (n_0, q_0, q_0): the gradient in H of <Shat, Z_L'Z_0 blockdiag(H) Z_0'Z_L>, so one
    transposed pair map per pair of later blocks (nothing of order n_0^2)."""
    t0 = terms.terms[terms.order[0]]
    flat = np.ascontiguousarray(Shat).reshape(-1)  # symmetric: (col, row) reads (row, col)
    g = np.zeros(t0.n * t0.q * t0.q)
    for key, (idx, w) in terms.pair_positions.items():
        g += terms.pairs[key][1].T @ (flat[idx] * w)
    g = g.reshape(t0.n, t0.q, t0.q)
    return 0.5 * (g + np.swapaxes(g, 1, 2))  # the weights fold (i, j) and (j, i) together


def _schur_unscaled(terms: Terms, f: Factor) -> np.ndarray:
    """C = Z_L'Z_L - Z_L'Z_0 blockdiag(H) Z_0'Z_L (full), so that S = Lambda_L'C Lambda_L + I."""
    h = (f.G @ np.swapaxes(f.G, 1, 2)).ravel()
    starts = terms.later_starts
    m = int(starts[-1])
    C = np.empty((m, m))
    for i in range(1, starts.size):
        si = slice(starts[i - 1], starts[i])
        for j in range(1, i + 1):
            sj = slice(starts[j - 1], starts[j])
            B = _blockdiag(terms.diag[i]) if i == j else terms.dense[(i, j)].copy()
            flat, P = terms.pairs[(i, j)]
            B.reshape(-1)[flat] -= P @ h
            if i == j:
                C[si, si] = np.tril(B) + np.tril(B, -1).T  # the map holds the lower part
            else:
                C[si, sj] = B
                C[sj, si] = B.T
    return C


@dataclass(frozen=True)
class Solution:
    """The penalised least-squares solution at one theta."""

    theta: np.ndarray
    beta: np.ndarray
    u: tuple[np.ndarray, ...]  # spherical effects per term (the user's order), (n_k, q_k)
    b: tuple[np.ndarray, ...]  # conditional modes per term, (n_k, q_k): b_kj = T_k u_kj
    r2: float  # penalised residual sum of squares
    logdet_L: float  # log |Lambda'Z'Z Lambda + I|
    logdet_RX: float  # log |X'V^-1 X|, V = I + Z Lambda Lambda'Z'
    n_obs: int
    factor: Factor = field(repr=False)
    terms: Terms = field(repr=False)

    @property
    def p(self) -> int:
        return int(self.beta.size)

    def objective(self, method: str = "reml") -> float:
        return _criterion(method, self.factor, self.terms)

    def sigma2(self, method: str = "reml") -> float:
        """sigma^2 maximising the criterion at this theta: r^2 / N (ML), r^2 / (N - p) (REML),
        r^2 / (N + Q) (joint)."""
        _check_method(method)
        dof = {"ml": 0, "reml": -self.p, "joint": self.terms.n_re}[method]
        return self.r2 / (self.n_obs + dof)

    @cached_property
    def beta_cov_unscaled(self) -> np.ndarray:
        """(X'V^-1 X)^-1 = (R_X'R_X)^-1, p x p, V = I + Z Lambda Lambda'Z' (sigma^2-free:
        lme4's vcov() is sigma^2 times this)."""
        p = self.p
        LX = self.factor.L[(len(self.terms.terms), len(self.terms.terms))][:p, :p]
        Li = sla.solve_triangular(LX, np.eye(p), lower=True, check_finite=False)
        return Li.T @ Li

    def conditional_covariances(self) -> tuple[np.ndarray, ...]:
        """Per term (the user's order), the (n_k, q_k, q_k) diagonal blocks by level of Lambda
        A^-1 Lambda' restricted to term k, A = Lambda'Z'Z Lambda + I: the covariance of b_kj
        given y in units of sigma^2 (lme4's condVar is sigma^2 times this). First block:
        T_0 A^-1_jj T_0' = H_j + H_j Gamma_j H_j (H_j = T_0 A00_j^-1 T_0', Gamma from the
        transposed pair maps); later blocks: the diagonal blocks of Lambda_L S^-1 Lambda_L'."""
        terms, f = self.terms, self.factor
        H = f.G @ np.swapaxes(f.G, 1, 2)
        out = [H]
        if len(terms.terms) > 1:
            _, Shat = _scaled_inverse(terms, f)
            out = [H + H @ _first_gamma(terms, Shat) @ H]
            starts = terms.later_starts
            for s in range(1, starts.size):
                t = terms.terms[terms.order[s]]
                blk = Shat[starts[s - 1] : starts[s], starts[s - 1] : starts[s]]
                idx = np.arange(t.n)
                out.append(blk.reshape(t.n, t.q, t.n, t.q)[idx, :, idx, :])
        user: list[np.ndarray] = [np.empty(0)] * len(out)
        for s, k in enumerate(terms.order):
            user[k] = out[s]
        return tuple(user)


def solve(terms: Terms, theta) -> Solution:
    """Factor at theta, then back-substitute for beta and u (b = Lambda u)."""
    f = factor(terms, theta)
    srt = [terms.terms[k] for k in terms.order]
    K, p = len(srt), terms.p
    LW = f.L[(K, K)]
    delta = sla.solve_triangular(LW[:p, :p], LW[p, :p], lower=True, trans="T")
    us: list[np.ndarray] = [np.empty(0)] * K
    F0 = terms.fixed[0]
    LK0 = np.einsum("cja,jab->cjb", F0, f.G).reshape(F0.shape[0], -1)  # L[K, 0]
    for k in range(K - 1, 0, -1):
        rhs = f.L[(K, k)][p] - f.L[(K, k)][:p].T @ delta
        for i in range(k + 1, K):
            rhs -= f.L[(i, k)].T @ us[i]
        us[k] = sla.solve_triangular(f.L[(k, k)], rhs, lower=True, trans="T")
    # First block: L00' u_0 = c_0 - L[K, 0]'delta - sum_i G' Z_0'Z_i blockdiag(T_i) u_i.
    n0, q0 = srt[0].n, srt[0].q
    v = np.zeros(n0 * q0)
    for i in range(1, K):
        b_i = (us[i].reshape(srt[i].n, srt[i].q) @ f.T[i].T).ravel()  # blockdiag(T_i) u_i
        v += terms.below_first[i - 1].T @ b_i
    rhs = LK0[p] - LK0[:p].T @ delta - (np.swapaxes(f.G, 1, 2) @ v.reshape(n0, q0, 1)).ravel()
    R = np.swapaxes(f.L00, 1, 2)
    us[0] = np.linalg.solve(R, rhs.reshape(n0, q0, 1))[..., 0].ravel()
    u_user: list[np.ndarray] = [np.empty(0)] * K
    b_user: list[np.ndarray] = [np.empty(0)] * K
    for s, k in enumerate(terms.order):
        t = srt[s]
        uk = us[s].reshape(t.n, t.q)
        u_user[k] = uk
        b_user[k] = uk @ f.T[s].T
    return Solution(
        theta=np.asarray(theta, float),
        beta=terms.beta_ols + delta,
        u=tuple(u_user),
        b=tuple(b_user),
        r2=f.r**2,
        logdet_L=f.logdet_L,
        logdet_RX=f.logdet_RX,
        n_obs=terms.n_obs,
        factor=f,
        terms=terms,
    )


def _lower_dense(f: Factor, terms: Terms) -> np.ndarray:
    """The later random blocks of the factor (1 .. K - 1) as one dense lower-triangular
    matrix in Fortran order (the factor of the Schur complement of the first block in
    Lambda'Z'Z Lambda + I)."""
    starts = terms.later_starts
    out = np.zeros((starts[-1], starts[-1]), order="F")
    for i in range(1, starts.size):
        for j in range(1, i + 1):
            out[starts[i - 1] : starts[i], starts[j - 1] : starts[j]] = f.L[(i, j)]
    return out


def _y_blocks(terms: Terms, f: Factor):
    """Y = -A^-1 Lambda'Z'W L_WW^-T = -L_ZZ^-T L_WZ' L_WW^-T by sorted block ((n_s q_s, p + 1)
    each; a back-substitution with p + 1 columns, as in `solve`), L_WW^-T, and for the first
    block Z_0'(W L_WW^-T + sum_{i >= 1} Z_i Lambda_i Y_i) (n_0, q_0, p + 1)."""
    srt = [terms.terms[k] for k in terms.order]
    K, p = len(srt), terms.p
    Winv = sla.solve_triangular(
        f.L[(K, K)], np.eye(p + 1), lower=True, trans="T", check_finite=False
    )
    Ys: list[np.ndarray] = [np.empty(0)] * K
    for k in range(K - 1, 0, -1):
        rhs = -f.L[(K, k)].T @ Winv
        for i in range(k + 1, K):
            rhs -= f.L[(i, k)].T @ Ys[i]
        Ys[k] = sla.solve_triangular(f.L[(k, k)], rhs, lower=True, trans="T", check_finite=False)
    n0, q0 = srt[0].n, srt[0].q
    first = np.einsum("cja,cd->jad", terms.fixed[0], Winv)  # Z_0'W L_WW^-T
    if K > 1:
        acc = np.zeros((n0 * q0, p + 1))
        for i in range(1, K):
            acc += terms.below_first[i - 1].T @ _left_T(f.T[i].T, Ys[i], srt[i].q)
        first += acc.reshape(n0, q0, p + 1)
    # L00_j' Y_0j = -G_j' first_j
    if q0 == 1:
        Y0 = first * -(f.G[:, 0, 0] / f.L00[:, 0, 0])[:, None, None]
    else:
        Y0 = -np.linalg.solve(np.swapaxes(f.L00, 1, 2), np.swapaxes(f.G, 1, 2) @ first)
    Ys[0] = Y0.reshape(n0 * q0, p + 1)
    return Ys, Winv, first


def _scalar_parts(terms: Terms, f: Factor):
    """(d log|A|, d log|R_X|^2, d log r^2) / d theta_s by sorted block, all terms scalar.

    For a scalar term k, d Lambda / d theta_k = P_k / theta_k Lambda (P_k the projector on its
    block), so for M in A, M_X, M (the matrix of the module docstring with W = X, W = [X y]),
    d log|M| / d theta_k = 2 (n_k - tr_k(M^-1)) / theta_k, tr_k the trace of block k of the
    inverse. The differences of those traces are rank-p and rank-one downdates from Y of
    `_y_blocks`: tr_k(M_X^-1) - tr_k(A^-1) = ||Y_k[:, :p]||^2, tr_k(M^-1) - tr_k(M_X^-1) =
    ||Y_k[:, p]||^2 (Y[:, p] = -/+ u / r). tr_k(A^-1): A_00^-1 is diagonal; with S the Schur
    complement of the first block and B = A_10 A_00^-2 A_01 (the pair maps with A_00^-2 for
    A_00^-1), tr_0(A^-1) = tr(A_00^-1) + <S^-1, B> and tr_k(A^-1) = tr_k(S^-1) for k >= 1.
    Each is even in each theta_k: its derivative at theta_k = 0 is 0."""
    srt = [terms.terms[k] for k in terms.order]
    K, p = len(srt), terms.p
    th = np.array([T[0, 0] for T in f.T])
    l0 = f.L00[:, 0, 0]
    resid = np.empty(K)  # n_k - tr_k(A^-1)
    resid[0] = float(np.sum(th[0] ** 2 * terms.diag[0][:, 0, 0] / l0**2))
    if K > 1:
        Sinv = _schur_inverse(terms, f)
        starts = terms.later_starts
        h2 = (f.G[:, 0, 0] / l0) ** 2  # theta_0^2 / l0^4: Lambda_0 A_00^-2 Lambda_0
        flat_sinv = Sinv.T.reshape(-1)  # a view: potri gives Fortran order
        inner = 0.0
        for i in range(1, K):
            si = slice(starts[i - 1], starts[i])
            resid[i] = srt[i].dim - float(np.diagonal(Sinv[si, si]).sum())
            for j in range(1, i + 1):
                idx, w = terms.pair_positions[(i, j)]
                v = (terms.pairs[(i, j)][1] @ h2) * (th[i] * th[j])
                inner += float((flat_sinv[idx] * w) @ v)
        resid[0] -= inner
    Ys, _, _ = _y_blocks(terms, f)
    a = np.array([float(np.sum(Y[:, :p] ** 2)) for Y in Ys])
    c = np.array([float(Y[:, p] @ Y[:, p]) for Y in Ys])
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(th != 0.0, 1.0 / th, 0.0)
    return [
        (
            np.array([2.0 * resid[s] * inv[s]]),
            np.array([-2.0 * a[s] * inv[s]]),
            np.array([-2.0 * c[s] * inv[s]]),
        )
        for s in range(K)
    ]


def _general_parts(terms: Terms, f: Factor):
    """(d log|A|, d log|R_X|^2, d log r^2) / d theta_s by sorted block, any q_k, with no
    inverse of T (exact where a diagonal element of T is 0).

    With Omega = Lambda~'C Lambda~ + E (C = [Z W]'[Z W], Lambda~ = blockdiag(Lambda, I), E the
    identity on the random part), d log|Omega| / d T_k[r, c] = 2 sum_j (Omega^-1 Lambda~'C)
    _jj[c, r] over the levels j of term k. For Omega = A: first block, with B_j = A00_j^-1 T_0'
    and Gamma of `_first_gamma`, sum_j B_j [D_j + Gamma_j (H_j D_j - I)] (D_j = Z_0j'Z_0j);
    later block k: sum_j (S^-1 Lambda_L' C_Lk)_jj, C the unscaled Schur complement
    (`_schur_unscaled`). log|R_X|^2 and log r^2 are log-determinants of W'V^-1W (its first p
    columns, and the rest): by the envelope theorem d (W'V^-1W) = -2 sym(U'dLambda'Z'(W - Z
    Lambda U)), U = A^-1 Lambda'Z'W, so with Y of `_y_blocks` and V_k = Z_k'(W L_WW^-T + Z
    Lambda Y), d log|W'V^-1W| / d T_k[r, c] = 2 sum_j (V_kj Y_kj')[r, c], split by columns."""
    srt = [terms.terms[k] for k in terms.order]
    K, p = len(srt), terms.p
    n0, q0 = srt[0].n, srt[0].q
    H = f.G @ np.swapaxes(f.G, 1, 2)
    Gam = np.zeros((n0, q0, q0))
    starts = terms.later_starts
    m = int(starts[-1])
    if K > 1:
        R, Shat = _scaled_inverse(terms, f)
        Gam = _first_gamma(terms, Shat)
        C = _schur_unscaled(terms, f)
    B = np.linalg.solve(np.swapaxes(f.L00, 1, 2), np.swapaxes(f.G, 1, 2))  # A00^-1 T_0'
    D0 = terms.diag[0]
    F = [np.einsum("jab,jbc->ac", B, D0 + Gam @ (H @ D0 - np.eye(q0)))]
    for s in range(1, K):
        n, q, sl = srt[s].n, srt[s].q, slice(starts[s - 1], starts[s])
        F.append(np.einsum("rje,rjf->ef", R[:, sl].reshape(m, n, q), C[:, sl].reshape(m, n, q)))
    Ys, Winv, first = _y_blocks(terms, f)
    LY = [_left_T(f.T[s].T, Ys[s], srt[s].q) for s in range(K)]  # Lambda_s Y_s
    V = [first + D0 @ LY[0].reshape(n0, q0, p + 1)]
    for k in range(1, K):
        n, q = srt[k].n, srt[k].q
        v = terms.fixed[k].reshape(p + 1, -1).T @ Winv
        v += (terms.diag[k] @ LY[k].reshape(n, q, p + 1)).reshape(n * q, p + 1)
        v += terms.below_first[k - 1] @ LY[0]
        for i in range(1, K):
            if i != k:
                v += (terms.dense[(k, i)] if k > i else terms.dense[(i, k)].T) @ LY[i]
        V.append(v.reshape(n, q, p + 1))
    out = []
    for s in range(K):
        n, q = srt[s].n, srt[s].q
        rows, cols = _tril(q)
        Y = Ys[s].reshape(n, q, p + 1)
        gX = 2.0 * np.einsum("jrd,jcd->rc", V[s][..., :p], Y[..., :p])
        gR = 2.0 * np.einsum("jr,jc->rc", V[s][..., p], Y[..., p])
        gA = 2.0 * F[s].T
        out.append((gA[rows, cols], gX[rows, cols], gR[rows, cols]))
    return out


def objective_and_gradient(terms: Terms, theta, method: str = "reml") -> tuple[float, np.ndarray]:
    """The criterion of `objective` and its exact gradient in theta (the user's order).

    From d log|A|, d log|R_X|^2 and d log r^2 (A = Lambda'Z'Z Lambda + I): all terms scalar,
    by trace identities (`_scalar_parts`: one inverse of the order of the later blocks, a
    back-substitution with p + 1 columns); otherwise with no inverse of T (`_general_parts`:
    also the unscaled Schur complement and a product with it). The joint's gradient is
    (N + Q) d log r^2 plus 2 n_k / T_k[c, c] on the diagonal elements; where one of those is 0
    the joint is -inf and that element's entry holds the finite part only."""
    _check_method(method)
    f = factor(terms, theta)
    scalar = all(t.q == 1 for t in terms.terms)
    parts = _scalar_parts(terms, f) if scalar else _general_parts(terms, f)
    N, p = terms.n_obs, terms.p
    grad = np.empty(terms.n_theta)
    for s, k in enumerate(terms.order):
        gA, gX, gR = parts[s]
        if method == "ml":
            g = gA + N * gR
        elif method == "reml":
            g = gA + gX + (N - p) * gR
        else:
            g = (N + terms.n_re) * gR
            rows, cols = _tril(terms.terms[k].q)
            d = np.diag(f.T[s])[cols]
            on = (rows == cols) & (d != 0.0)
            g[on] += 2.0 * terms.terms[k].n / d[on]
        grad[terms.theta_slices[k]] = g
    return _criterion(method, f, terms), grad
