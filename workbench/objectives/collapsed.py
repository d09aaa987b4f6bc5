"""The collapsed Gaussian model: log p(y | sigma, Sigma) with the fixed and random effects
integrated out analytically, and exact draws of (beta, b) given (sigma, Sigma).

Model (the PyMC model's, `model.pymc`): y = X beta + Z b + e, e ~ N(0, sigma^2 I), beta ~
N(m, S^2) with S = diag(beta_scale), and per correlated block k the effects of every level of
its grouping factor b_kj = C_k u_kj, u ~ N(0, I), C_k the Cholesky factor of Sigma_k. With
r = y - X m, the columns W = [Z L, X S] (L = blockdiag over blocks and levels of C_k) and
H = sigma^2 I + W'W (order K = Q + p):

    y | sigma, Sigma ~ N(X m, sigma^2 I + W W')
    log p(y | sigma, Sigma) = -1/2 [N log 2 pi + (N - K) log sigma^2 + log|H|
                                   + (r'r - c'H^-1 c) / sigma^2],   c = W'r
    (u, (beta - m) / S) | y, sigma, Sigma ~ N(H^-1 c, sigma^2 H^-1)

(the Woodbury identity and the matrix determinant lemma). Everything comes from theta-free
cross products of Z, X S and r, computed once (`Stats.of`), so one evaluation costs nothing of
order N. Two kernels, by the model's shape (as MixedModels.jl dispatches on its terms):

* `per_group`, one grouping factor: H is a block arrow, diagonal blocks H_j = sigma^2 I +
  L'Z_j'Z_j L (q x q per level), border L'Z_j'X S, corner sigma^2 I + S X'X S; the p x p Schur
  complement gives the rest, so a log density costs O(m q^3 + m q^2 p + p^3);
* `dense`, several grouping factors: H formed densely (K up to `MAX_DENSE`).

`log_marginal` writes log p(y | sigma, Sigma) in PyTensor (NUTS gets its gradient by autodiff)
and `conditional_draws` draws (beta, b) exactly in numpy for each posterior draw of (sigma,
Sigma). Both follow the same formulas; tests check them against a dense multivariate normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from workbench.model.design import LMMData
from workbench.model.priors import Priors

MAX_DENSE = 600  # random effects (several factors) up to which the dense kernel is used
CHUNK = 256  # posterior draws per batch in `conditional_draws`
# fixed effects up to which the one-factor kernel's p x p algebra is unrolled into scalar
# operations: PyTensor's linear-algebra Ops (Cholesky, triangular solves and their gradients)
# cost 30 to 90 s each to compile with numba on a machine whose cache is cold
UNROLL = 12


@dataclass(frozen=True)
class BlockLayout:
    """Where block k of `LMMData.blocks` sits: its Z columns, its factor's level count, and its
    first position in the kernel's ordering of the effects."""

    cols: tuple[int, ...]
    levels: int
    offset: int


@dataclass(frozen=True)
class Stats:
    """The theta-free cross products of one model and its beta prior (see the module
    docstring). `arrays` holds the data arrays by name (the PyMC model takes them as `pm.Data`,
    so a compiled log density serves every data set of the same shape):

    * both kernels: rr = r'r, Xr = S X'r (p), XX = S X'X S (p, p);
    * per_group: ZZ (m, q, q), ZX (m, q, p) = Z_j'X_j S, Zr (m, q), Z's columns in block
      order (the blocks' columns one after the other);
    * dense: ZZ (Q, Q), ZX (Q, p), Zr (Q), effects ordered block by block, level-major."""

    kind: str  # "per_group" or "dense"
    n_obs: int
    p: int
    blocks: tuple[BlockLayout, ...]
    beta_loc: np.ndarray = field(repr=False)
    beta_scale: np.ndarray = field(repr=False)
    arrays: dict = field(repr=False)

    @property
    def n_effects(self) -> int:
        """Q: the number of random effects."""
        return sum(len(b.cols) * b.levels for b in self.blocks)

    @classmethod
    def of(cls, data: LMMData, priors: Priors) -> Stats:
        m = np.asarray(priors.beta_loc, float)
        s = np.asarray(priors.beta_scale, float)
        XS = data.X * s
        r = data.y - data.X @ m
        common = {"rr": np.array(float(r @ r)), "Xr": XS.T @ r, "XX": XS.T @ XS}
        if data.n_factors == 1:
            perm = np.concatenate([np.asarray(b.cols, int) for b in data.blocks])
            Z, codes, mlev = data.Z[:, perm], data.codes, data.n_groups
            q = Z.shape[1]
            ZZ = np.zeros((mlev, q, q))
            ZX = np.zeros((mlev, q, XS.shape[1]))
            np.add.at(ZZ, codes, Z[:, :, None] * Z[:, None, :])
            np.add.at(ZX, codes, Z[:, :, None] * XS[:, None, :])
            Zr = np.zeros((mlev, q))
            np.add.at(Zr, codes, Z * r[:, None])
            offsets = np.cumsum([0] + [len(b.cols) for b in data.blocks])
            layout = tuple(
                BlockLayout(tuple(b.cols), mlev, int(o))
                for b, o in zip(data.blocks, offsets, strict=False)
            )
            arrays = {**common, "ZZ": ZZ, "ZX": ZX, "Zr": Zr}
            kind = "per_group"
        else:
            Zfull, layout = _full_z(data)
            ZZ = (Zfull.T @ Zfull).toarray()
            arrays = {**common, "ZZ": ZZ, "ZX": Zfull.T @ XS, "Zr": Zfull.T @ r}
            kind = "dense"
        return cls(kind, data.n_obs, data.p, layout, m, s, arrays)


def _full_z(data: LMMData) -> tuple[sp.csr_matrix, tuple[BlockLayout, ...]]:
    """The sparse N x Q model matrix of every random effect, block by block, level-major."""
    parts, layout, offset = [], [], 0
    n = data.n_obs
    rows = np.arange(n)
    for block in data.blocks:
        g = data.groupings[block.factor]
        size = len(block.cols)
        cols = g.codes[:, None] * size + np.arange(size)[None, :]
        vals = data.Z[:, list(block.cols)]
        parts.append(
            sp.csr_matrix(
                (vals.ravel(), (np.repeat(rows, size), cols.ravel())),
                shape=(n, g.n_levels * size),
            )
        )
        layout.append(BlockLayout(tuple(block.cols), g.n_levels, offset))
        offset += g.n_levels * size
    return sp.hstack(parts, format="csr"), tuple(layout)


def kernel_for(data: LMMData) -> str | None:
    """'per_group' or 'dense', or None when the model is too big for the dense kernel."""
    if data.n_factors == 1:
        return "per_group"
    q = sum(len(b.cols) * data.groupings[b.factor].n_levels for b in data.blocks)
    return "dense" if q <= MAX_DENSE else None


# ---------------------------------------------------------------- PyTensor: log p(y | sigma, Sigma)


def log_marginal(stats: Stats, arrays: dict, sigma, chols: list):
    """log p(y | sigma, Sigma) as a PyTensor scalar: `arrays` are tensors (or arrays) of
    `stats.arrays`, `chols` one lower-triangular Cholesky factor tensor (size x size) per block."""
    import pytensor.tensor as pt

    s2 = sigma**2
    n, p = stats.n_obs, stats.p
    K = stats.n_effects + p
    rr, Xr, XX = arrays["rr"], arrays["Xr"], arrays["XX"]
    if stats.kind == "per_group":
        ZZ, ZX, Zr = arrays["ZZ"], arrays["ZX"], arrays["Zr"]
        logdet, quad, RB, Rc = _per_level(ZZ, ZX, Zr, s2, _block_entries(stats, chols))
        if p:  # the p x p Schur complement (no linear-algebra Ops below `UNROLL`)
            M = XX + s2 * pt.eye(p) - sum(pt.dot(R.T, R) for R in RB)
            v = Xr - sum(pt.dot(R.T, c) for R, c in zip(RB, Rc, strict=True))
            schur = [[M[a, b] for b in range(a + 1)] for a in range(p)]
            d = [v[a] for a in range(p)]
            ld, qd = _chol_logdet_quad(schur, d) if p <= UNROLL else _linalg_logdet_quad(schur, d)
            logdet, quad = logdet + ld, quad + qd
    else:
        L = pt.linalg.block_diag(
            *[pt.linalg.kron(pt.eye(b.levels), C) for b, C in zip(stats.blocks, chols, strict=True)]
        )
        ZZ, ZX, Zr = arrays["ZZ"], arrays["ZX"], arrays["Zr"]
        LZX = pt.dot(L.T, ZX)
        H = pt.concatenate(
            [
                pt.concatenate([pt.dot(pt.dot(L.T, ZZ), L), LZX], axis=1),
                pt.concatenate([LZX.T, XX], axis=1),
            ],
            axis=0,
        ) + s2 * pt.eye(K)
        c = pt.concatenate([pt.dot(L.T, Zr), Xr])
        R = pt.linalg.cholesky(H)
        w = pt.linalg.solve_triangular(R, c, lower=True)
        logdet = 2 * pt.log(pt.diagonal(R)).sum()
        quad = (w**2).sum()
    return -0.5 * (n * np.log(2 * np.pi) + (n - K) * pt.log(s2) + logdet + (rr - quad) / s2)


def _block_entries(stats: Stats, chols: list) -> list[list]:
    """L = blockdiag(chols) (block order) as a q x q nested list of scalar tensors (0 off the
    blocks)."""
    q = sum(len(b.cols) for b in stats.blocks)
    L = [[0.0] * q for _ in range(q)]
    for blk, C in zip(stats.blocks, chols, strict=True):
        for a in range(len(blk.cols)):
            for b in range(a + 1):
                L[blk.offset + a][blk.offset + b] = C[a, b]
    return L


def _per_level(ZZ, ZX, Zr, s2, L: list[list]):
    """The per-level part of the block arrow, every level at once: with H_j = s2 I + L'Z_j'Z_j L
    = R_j R_j' (Cholesky), returns sum_j log|H_j|, sum_j |R_j^-1 c_j|^2 (c_j = L'Z_j'r) and, per
    row i of R_j^-1, the (m, p) rows of R_j^-1 L'Z_j'X S and the (m,) entries of R_j^-1 c_j. The
    q x q algebra is unrolled into elementwise operations on length-m vectors (q is small: the
    columns of one grouping factor), which is far cheaper in a compiled graph than a batched
    Cholesky and its gradient."""
    import pytensor.tensor as pt

    q = len(L)
    nz = [[b for b in range(q) if not _is_zero(L[b][a])] for a in range(q)]  # rows b of L[:, a]
    M = [[None] * q for _ in range(q)]
    for a in range(q):
        for d in range(a + 1):
            M[a][d] = sum(L[b][a] * L[c][d] * ZZ[:, b, c] for b in nz[a] for c in nz[d])
    c = [sum(L[b][a] * Zr[:, b] for b in nz[a]) for a in range(q)]
    B = [sum(L[b][a] * ZX[:, b, :] for b in nz[a]) for a in range(q)]
    R = [[None] * q for _ in range(q)]
    Rc, RB, logdet, quad = [], [], 0.0, 0.0
    for i in range(q):
        for j in range(i):
            R[i][j] = (M[i][j] - sum(R[i][k] * R[j][k] for k in range(j))) / R[j][j]
        R[i][i] = (M[i][i] + s2 - sum(R[i][k] ** 2 for k in range(i))) ** 0.5
        Rc.append((c[i] - sum(R[i][k] * Rc[k] for k in range(i))) / R[i][i])
        RB.append((B[i] - sum(R[i][k][:, None] * RB[k] for k in range(i))) / R[i][i][:, None])
        logdet = logdet + 2 * pt.log(R[i][i]).sum()
        quad = quad + (Rc[i] ** 2).sum()
    return logdet, quad, RB, Rc


def _chol_logdet_quad(S: list[list], d: list):
    """(log|S|, d'S^-1 d) of a small symmetric positive definite matrix given by its lower
    triangle as nested lists of scalar tensors, by an unrolled Cholesky factor."""
    import pytensor.tensor as pt

    n = len(d)
    R = [[None] * n for _ in range(n)]
    w, logdet, quad = [], 0.0, 0.0
    for i in range(n):
        for j in range(i):
            R[i][j] = (S[i][j] - sum(R[i][k] * R[j][k] for k in range(j))) / R[j][j]
        R[i][i] = pt.sqrt(S[i][i] - sum(R[i][k] ** 2 for k in range(i)))
        w.append((d[i] - sum(R[i][k] * w[k] for k in range(i))) / R[i][i])
        logdet = logdet + 2 * pt.log(R[i][i])
        quad = quad + w[i] ** 2
    return logdet, quad


def _linalg_logdet_quad(S: list[list], d: list):
    """`_chol_logdet_quad` by PyTensor's Cholesky Op (for many fixed effects)."""
    import pytensor.tensor as pt

    n = len(d)
    M = pt.stack([pt.stack([S[max(a, b)][min(a, b)] for b in range(n)]) for a in range(n)])
    R = pt.linalg.cholesky(M)
    w = pt.linalg.solve_triangular(R, pt.stack(d), lower=True)
    return 2 * pt.log(pt.diagonal(R)).sum(), (w**2).sum()


def _is_zero(v) -> bool:
    return isinstance(v, float) and v == 0.0


# ---------------------------------------------------------------- numpy: exact draws of beta, b


def _solve_lower_t(R: np.ndarray, z: np.ndarray) -> np.ndarray:
    """R'^-1 z for batched lower-triangular R (..., k, k) and z (..., k)."""
    return np.linalg.solve(np.swapaxes(R, -1, -2), z[..., None])[..., 0]


def conditional_draws(
    stats: Stats, sigma: np.ndarray, chols: list[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Exact draws of beta (S, p) and of every block's effects (S, levels, size), one for each
    of the S posterior draws of sigma (S,) and the blocks' Cholesky factors (S, size, size),
    in batches of `CHUNK` draws (the draws are independent given (sigma, Sigma))."""
    n_draws = len(sigma)
    beta = np.empty((n_draws, stats.p))
    effects = [np.empty((n_draws, b.levels, len(b.cols))) for b in stats.blocks]
    for lo in range(0, n_draws, CHUNK):
        sl = slice(lo, min(lo + CHUNK, n_draws))
        draw = _per_group if stats.kind == "per_group" else _dense
        bt, us = draw(stats, sigma[sl], [C[sl] for C in chols], rng)
        beta[sl] = stats.beta_loc + stats.beta_scale * bt
        for k, u in enumerate(us):
            effects[k][sl] = u
    return beta, effects


def _per_group(stats: Stats, sigma, chols, rng):
    a = stats.arrays
    S, p = len(sigma), stats.p
    s2 = sigma**2
    L = _block_diag_batched(chols)  # (S, q, q)
    q = L.shape[-1]
    H = np.einsum("sba,jbc,scd->sjad", L, a["ZZ"], L) + s2[:, None, None, None] * np.eye(q)
    B = np.einsum("sba,jbp->sjap", L, a["ZX"])  # (S, m, q, p)
    c = np.einsum("jb,sba->sja", a["Zr"], L)  # (S, m, q)
    HB = np.linalg.solve(H, B)
    Hc = np.linalg.solve(H, c[..., None])[..., 0]
    bt = np.zeros((S, p))
    if p:
        schur = a["XX"] + s2[:, None, None] * np.eye(p) - np.einsum("sjap,sjaq->spq", B, HB)
        d = a["Xr"] - np.einsum("sjap,sja->sp", B, Hc)
        Rs = np.linalg.cholesky(schur)
        mean = np.linalg.solve(schur, d[..., None])[..., 0]
        bt = mean + sigma[:, None] * _solve_lower_t(Rs, rng.standard_normal((S, p)))
    R = np.linalg.cholesky(H)
    mean_u = Hc - np.einsum("sjap,sp->sja", HB, bt)
    u = mean_u + sigma[:, None, None] * _solve_lower_t(R, rng.standard_normal(mean_u.shape))
    b = np.einsum("sab,sjb->sja", L, u)  # (S, m, q): block order
    return bt, [b[:, :, blk.offset : blk.offset + len(blk.cols)] for blk in stats.blocks]


def _block_diag_batched(chols: list[np.ndarray]) -> np.ndarray:
    S = chols[0].shape[0]
    q = sum(C.shape[-1] for C in chols)
    L = np.zeros((S, q, q))
    o = 0
    for C in chols:
        k = C.shape[-1]
        L[:, o : o + k, o : o + k] = C
        o += k
    return L


def _dense(stats: Stats, sigma, chols, rng):
    a = stats.arrays
    S, p, Q = len(sigma), stats.p, stats.n_effects
    bt = np.empty((S, p))
    us = [np.empty((S, b.levels, len(b.cols))) for b in stats.blocks]
    for s in range(S):
        L = np.zeros((Q, Q))
        for blk, C in zip(stats.blocks, chols, strict=True):
            k = len(blk.cols)
            end = blk.offset + blk.levels * k
            L[blk.offset : end, blk.offset : end] = np.kron(np.eye(blk.levels), C[s])
        LZX = L.T @ a["ZX"]
        H = np.block([[L.T @ a["ZZ"] @ L, LZX], [LZX.T, a["XX"]]]) + sigma[s] ** 2 * np.eye(Q + p)
        c = np.concatenate([L.T @ a["Zr"], a["Xr"]])
        R = np.linalg.cholesky(H)
        x = np.linalg.solve(H, c) + sigma[s] * _solve_lower_t(R, rng.standard_normal(Q + p))
        b = L @ x[:Q]
        bt[s] = x[Q:]
        for k, blk in enumerate(stats.blocks):
            size = len(blk.cols)
            us[k][s] = b[blk.offset : blk.offset + blk.levels * size].reshape(blk.levels, size)
    return bt, us
