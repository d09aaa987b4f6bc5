"""Stage one for the general model: data + formula -> `LMMData` (y, X, Z, groups) and the
per-group cross products every estimator works from.

With one grouping factor, `Z` is block diagonal: group j contributes an n_j x q block `Z_j` (the
rows of the random-effect columns). So every quantity lme4 gets from its sparse Cholesky
factorization of `Lambda' Z' Z Lambda + I` comes from m small q x q problems built from
Z_j'Z_j, Z_j'X_j and Z_j'y_j: the same numbers, in O(m q^3) per evaluation after one O(N) pass.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.linalg

from workbench.errors import InputError
from workbench.model.data import Stats, check_y_range, content_sha256
from workbench.model.formula import FormulaSpec, RandomTerm, model_matrix, parse, variables


@dataclass(frozen=True)
class Block:
    """A correlated block of random effects: lme4 term names, their columns in `Z` and the
    index of their grouping factor in `LMMData.groupings`."""

    names: tuple[str, ...]
    cols: tuple[int, ...]
    factor: int = 0


@dataclass(frozen=True)
class Grouping:
    """A grouping factor: lme4's name ("plate", "cask:batch"), level codes 0 .. n - 1 per row
    and the level labels (an interaction's as "a1:b1", as lme4's ranef names them)."""

    name: str
    codes: np.ndarray = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)

    @property
    def n_levels(self) -> int:
        return len(self.labels)

    def sizes(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=self.n_levels)


# |y| range of the formula route: it fits centred/scaled data, so only sigma^2 and sums of
# squares on the user's scale must stay normal float64 numbers (the one-way route: data.Y_MIN)
Y_MIN, Y_MAX = 1e-100, 1e100


def _rms(v: np.ndarray) -> float:
    """Root mean square without over- or underflow (v / max|v| first)."""
    top = float(np.abs(v).max()) if v.size else 0.0
    return top * float(np.sqrt(np.mean((v / top) ** 2))) if top > 0 else 0.0


@dataclass(frozen=True)
class Scaling:
    """The internal centring/scaling of X and y: X_s = X A and y_s = (y - y_shift) / y_scale.

    With an intercept, every other fixed-effect column is centred and all are scaled to unit
    spread, and y is centred and scaled: the column space of X is unchanged, so theta, the fits
    and the likelihood are the same, but no digits are lost to offsets (a day number around
    18,800) or to the scale of y (1e-11 or 1e60). Results are mapped back to the user's scale."""

    A: np.ndarray  # (p, p): X_s = X A
    y_shift: float
    y_scale: float
    intercept: int | None

    @property
    def log_det_A(self) -> float:
        return float(np.log(np.abs(np.diag(self.A))).sum())  # A is triangular up to a permutation

    @classmethod
    def of(cls, X: np.ndarray, y: np.ndarray, intercept: int | None) -> Scaling:
        p = X.shape[1]
        A = np.eye(p)
        if intercept is not None:
            mean = X.mean(axis=0)
            mean[intercept] = 0.0
            y_shift = float(y.mean())
        else:
            mean, y_shift = np.zeros(p), 0.0
        spread = np.array([_rms(X[:, k] - mean[k]) for k in range(p)])
        y_scale = _rms(y - y_shift)
        spread[spread == 0] = 1.0
        if intercept is not None:
            spread[intercept] = 1.0
        for k in range(p):
            if k != intercept:
                A[k, k] = 1.0 / spread[k]
                if intercept is not None:
                    A[intercept, k] = -mean[k] / spread[k]
        if not np.isfinite(y_scale) or y_scale == 0.0:
            y_scale = 1.0
        return cls(A=A, y_shift=y_shift, y_scale=y_scale, intercept=intercept)


@dataclass(frozen=True)
class GroupFactors:
    """Per-group triangular factors of [Z_j X_s y_s] (one grouping factor), from one O(N) pass
    of Householder QR: R_j = [[Rz_j, C_j], [0, W_j]] with Rz_j'Rz_j = Z_j'Z_j and
    Rz_j'C_j = Z_j'[X_s y_s]; the within-group parts W_j are stacked and reduced to one
    triangular `RW` ((p+1) x (p+1)) with RW'RW = sum_j W_j'W_j. Every objective then needs only
    these small matrices, with no "X'X minus a sum" cancellation anywhere."""

    Rz: np.ndarray  # (m, q, q) upper triangular (padded with zero rows where n_j < q)
    C: np.ndarray  # (m, q, p + 1): last column from y
    RW: np.ndarray  # (p + 1, p + 1) upper triangular
    ztz: np.ndarray  # (m, q, q) Z_j'Z_j on the user's scale
    n: np.ndarray  # (m,) group sizes
    scaling: Scaling
    B: np.ndarray  # (q, q) block diagonal: the factors are of Z_s = Z B (scaled/centred blocks)

    @property
    def p(self) -> int:
        return int(self.RW.shape[0] - 1)


@dataclass(frozen=True)
class LMMData:
    """THE model record: y, X, the random-effect columns Z (all terms, in lme4's order of
    terms) with their correlated `blocks`, and the grouping factors (`groupings`). G is
    block diagonal over the blocks; a block's effects are independent across its factor's
    levels. With one grouping factor (`codes`, `labels`, `group_name` are then its) the
    objectives work per group; with several, through the blocked factorisation."""

    y: np.ndarray
    X: np.ndarray
    Z: np.ndarray  # (N, q): the random-effect columns of every term
    groupings: tuple[Grouping, ...]
    fixed_names: tuple[str, ...]
    blocks: tuple[Block, ...]
    y_name: str = "y"
    formula: str = ""
    source: str = "<arrays>"
    sha256: str = field(default="", compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def n_factors(self) -> int:
        return len(self.groupings)

    @property
    def single(self) -> Grouping:
        """The grouping factor of a model with one (the per-group code paths need it)."""
        if len(self.groupings) != 1:
            raise ValueError(
                f"the model has {len(self.groupings)} grouping factors "
                f"({', '.join(g.name for g in self.groupings)}); this needs one"
            )
        return self.groupings[0]

    @property
    def codes(self) -> np.ndarray:
        return self.single.codes

    @property
    def labels(self) -> tuple[str, ...]:
        return self.single.labels

    @property
    def group_name(self) -> str:
        return self.single.name

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groupings)

    def factor_terms(self, k: int) -> tuple[str, ...]:
        """The term names of grouping factor k's columns, in `factor_cols` order."""
        return tuple(n for b in self.blocks if b.factor == k for n in b.names)

    def factor_cols(self, k: int) -> tuple[int, ...]:
        """The columns of Z of grouping factor k, in block order."""
        return tuple(c for b in self.blocks if b.factor == k for c in b.cols)

    @property
    def n_obs(self) -> int:
        return int(self.y.size)

    @property
    def n_groups(self) -> int:
        return self.single.n_levels

    @property
    def q(self) -> int:
        return int(self.Z.shape[1])

    @property
    def p(self) -> int:
        return int(self.X.shape[1])

    @property
    def re_names(self) -> tuple[str, ...]:
        out = [""] * self.q
        for b in self.blocks:
            for name, c in zip(b.names, b.cols, strict=True):
                out[c] = name
        return tuple(out)

    @cached_property
    def is_oneway(self) -> bool:
        """The one-way model y ~ 1 + (1 | g): the objectives then use its per-group kernels."""
        return (
            len(self.groupings) == 1
            and self.fixed_names == ("(Intercept)",)
            and self.re_names == ("(Intercept)",)
            and bool(np.all(self.X == 1.0))
            and bool(np.all(self.Z == 1.0))
        )

    @cached_property
    def oneway(self):
        """Per-group sufficient statistics (`model.data.Stats`) of a one-way model."""
        if not self.is_oneway:
            raise ValueError("the per-group one-way statistics need the model y ~ 1 + (1 | g)")
        return Stats.of_arrays(self.y, self.codes, self.n_groups)

    @cached_property
    def factors(self) -> GroupFactors:
        return group_factors(
            self.y,
            self.X,
            self.Z,
            self.codes,
            self.n_groups,
            intercept=self.fixed_names.index("(Intercept)")
            if "(Intercept)" in self.fixed_names
            else None,
            blocks=self.blocks,
        )

    def summary(self) -> dict:
        factors = []
        for k, g in enumerate(self.groupings):
            n = g.sizes()
            factors.append(
                {
                    "name": g.name,
                    "n_levels": g.n_levels,
                    "size_min": int(n.min()),
                    "size_max": int(n.max()),
                    "random_effects": list(self.factor_terms(k)),
                }
            )
        out = {
            "source": self.source,
            "sha256": self.sha256,
            "formula": self.formula,
            "y": self.y_name,
            "n_obs": self.n_obs,
            "grouping_factors": factors,
            "mean": float(self.y.mean()),
            "sd": float(self.y.std(ddof=1)),
            "fixed_effects": list(self.fixed_names),
            "random_effects": list(self.re_names),
            "notes": list(self.notes),
        }
        if len(self.groupings) == 1:
            n = self.groupings[0].sizes()
            out |= {
                "group": self.group_name,
                "n_groups": self.n_groups,
                "group_size_min": int(n.min()),
                "group_size_max": int(n.max()),
                "balanced": bool(np.all(n == n[0])),
            }
        return out


def _times(M: np.ndarray, A: np.ndarray) -> np.ndarray:
    """M @ A for a tall M and a small, mostly diagonal A, without a BLAS call (a tall-skinny
    dgemm costs seconds on an oversubscribed machine for a million rows)."""
    out = np.zeros((M.shape[0], A.shape[1]))
    for i, k in zip(*np.nonzero(A), strict=True):
        out[:, k] += M[:, i] * A[i, k]
    return out


def z_reparametrisation(Z: np.ndarray, blocks: tuple[Block, ...] | None) -> np.ndarray:
    """B with Z_s = Z B: every random-effect column scaled to unit spread and, in a correlated
    block with a constant column (the intercept), the block's other columns centred. The model
    is the same (b = B b_s, G = B G_s B'), but the relative covariance factor is well scaled: a
    random slope on a day number around 18,800 otherwise needs theta ~ 1e3 next to 1e-4."""
    q = Z.shape[1]
    B = np.eye(q)
    for blk in blocks or tuple(Block((str(k),), (k,)) for k in range(q)):
        cols = list(blk.cols)
        const = [c for c in cols if np.ptp(Z[:, c]) == 0 and Z[0, c] != 0]
        base = const[0] if len(cols) > 1 and const else None
        for c in cols:
            if c == base:
                B[c, c] = 1.0 / abs(Z[0, c])
                continue
            col = Z[:, c]
            shift = float(col.mean()) / Z[0, base] if base is not None else 0.0
            centred = col - shift * Z[:, base] if base is not None else col
            spread = float(np.sqrt((centred * centred).mean()))
            spread = spread if spread > 0 and np.isfinite(spread) else 1.0
            B[c, c] = 1.0 / spread
            if base is not None:
                B[base, c] = -shift / spread
    return B


def group_factors(
    y, X, Z, codes, m: int, intercept: int | None = None, blocks: tuple[Block, ...] | None = None
) -> GroupFactors:
    """The one O(N) pass: centre/scale X, y and the random-effect blocks, then a batched
    Householder QR of [Z_s X_s y_s] for the groups of each size, and one QR of the stacked
    within-group parts."""
    y, X, Z = np.asarray(y, float), np.asarray(X, float), np.asarray(Z, float)
    scaling = Scaling.of(X, y, intercept)
    B = z_reparametrisation(Z, blocks)
    q, p = Z.shape[1], X.shape[1]
    c = q + p + 1
    full = np.empty((y.size, c))
    full[:, :q] = _times(Z, B)
    full[:, q : q + p] = _times(X, scaling.A)
    full[:, -1] = (y - scaling.y_shift) / scaling.y_scale
    n = np.bincount(codes, minlength=m)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(n)])
    R = np.zeros((m, c, c))
    for size in np.unique(n[n > 0]):
        groups = np.flatnonzero(n == size)
        rows = order[starts[groups][:, None] + np.arange(size)[None, :]]
        r = np.linalg.qr(full[rows], mode="r")  # (k, min(size, c), c)
        R[groups, : r.shape[1], :] = r
    within = R[:, q:, q:].reshape(-1, c - q)
    RW = (
        np.linalg.qr(within, mode="r")
        if within.shape[0] >= c - q
        else np.triu(np.vstack([within, np.zeros((c - q - within.shape[0], c - q))]))
    )
    Binv = np.linalg.inv(B)
    Rz = R[:, :q, :q].copy()
    ztz = Binv.T @ np.einsum("jab,jac->jbc", Rz, Rz) @ Binv
    return GroupFactors(
        Rz=Rz, C=R[:, :q, q:].copy(), RW=RW, ztz=ztz, n=n.astype(float), scaling=scaling, B=B
    )


def _missing_column(df: pd.DataFrame, name: str, source: str) -> InputError:
    cols = [str(c) for c in df.columns]
    close = difflib.get_close_matches(name, cols, n=3, cutoff=0.5)
    hint = (
        f"did you mean {', '.join(repr(c) for c in close)}?"
        if close
        else (f"available columns: {', '.join(cols[:12])}")
    )
    return InputError(
        f"{source}: the formula uses column '{name}', which the data do not have; {hint}"
    )


def _design(part, df: pd.DataFrame, source: str) -> tuple[np.ndarray, list[str]]:
    """R's model matrix of one parsed right-hand side (`formula.Part`), computed with numpy from
    the parsed terms: no formula text is ever evaluated."""
    return model_matrix(part, df, source)


def _check_rank(X: np.ndarray, names: list[str], source: str) -> None:
    """Refuse a rank-deficient X, invariant to the scale and offset of every column.

    With an intercept, every other column is centred first (an offset is a multiple of the
    intercept, so this changes neither the column space nor the rank), then all columns are
    scaled to unit length, and the pivoted QR's diagonal is compared with a relative tolerance
    (lme4's 1e-7): a covariate of offset/sd 1e9 is fine, a duplicated or constant column (a
    dummy equal to the intercept, say) is caught."""
    norm = np.sqrt((X * X).sum(axis=0))
    if np.any(norm == 0):
        bad = names[int(np.flatnonzero(norm == 0)[0])]
        raise InputError(
            f"{source}: fixed-effect column '{bad}' is all zero; drop that term from the formula."
        )
    Xc = X / norm
    if "(Intercept)" in names:
        k = names.index("(Intercept)")
        Xc = Xc - Xc.mean(axis=0)
        Xc[:, k] = 1.0
        spread = np.sqrt((Xc * Xc).sum(axis=0))
        flat = [j for j in range(X.shape[1]) if j != k and spread[j] <= 1e-13]  # sd/rms
        if flat:
            raise InputError(
                f"{source}: fixed-effect column '{names[flat[0]]}' is constant, the "
                f"same as the intercept; drop that term from the formula."
            )
        Xc = Xc / spread
    r, piv = scipy.linalg.qr(Xc, mode="r", pivoting=True)
    d = np.abs(np.diag(r))
    rank = int((d > d[0] * 1e-7).sum())
    if rank < X.shape[1]:
        dropped = [names[i] for i in piv[rank:]]
        raise InputError(
            f"{source}: the fixed effects are rank deficient ({X.shape[1]} columns, "
            f"rank {rank}): {', '.join(repr(n) for n in dropped)} is a linear "
            f"combination of the other columns; drop it from the formula."
        )


def _check_identified(
    y: np.ndarray,
    X: np.ndarray,
    data: LMMData,
    terms: list[tuple[RandomTerm, int, int]],
    spec: FormulaSpec,
    source: str,
) -> None:
    """Refuse data in which sigma^2 is not identified, all relative to y's own scale.

    * y constant (to 1e-12 of max |y|);
    * lme4's check.nobs.vs.nlev / check.nobs.vs.nRE: for a term with c columns on a factor with
      m levels, N <= m c observations (a factor with one row per level, such as an observation
      index, say): sigma^2 and the variance of the term are confounded;
    * y fitted exactly by X and a free set of random effects per level of one factor (e.g. y
      constant within every group): the residual of y on [X, blockdiag(Z_j)], from a per-group
      projection (y - Z_j c_j computed directly, no cancellation) then least squares on X, is
      zero.
    Without these, the optimiser runs sigma^2 to 1e-302 and reports a log likelihood of 1e4."""
    n = y.size
    scale = check_y_range(y, spec.response, source, Y_MIN, Y_MAX)
    ys = y / scale if scale > 0 else y
    dev = ys - ys.mean()
    if scale == 0 or np.sqrt(dev @ dev / n) <= 1e-12:
        raise InputError(
            f"{source}: column '{spec.response}' does not vary (every value is "
            f"{y[0]:.6g}), so there is nothing to model: check the response "
            f"column."
        )
    for term, ncol, f in terms:
        g = data.groupings[f]
        m = g.n_levels
        if n <= m * ncol:
            if g.sizes().max() < 2:
                raise InputError(
                    f"{source}: every group of '{g.name}' has one observation (it indexes the "
                    f"rows), so sigma^2 and the variance of its effects are not separately "
                    f"identified (lme4 refuses this too): drop the term {term.text()} or use a "
                    f"grouping column with repeated observations."
                )
            raise InputError(
                f"{source}: {n} observations are not more than the {m * ncol} random effects of "
                f"{term.text()} ({m} levels x {ncol}), so sigma^2 and the random-effect "
                f"variances are not separately identified (lme4 refuses this too): use fewer "
                f"random-effect terms or groups with more observations."
            )
    for f, g in enumerate(data.groupings):
        _check_exact_fit(ys, X, data.Z[:, list(data.factor_cols(f))], g, spec, source)


def _check_exact_fit(ys, X, Z, g: Grouping, spec: FormulaSpec, source: str) -> None:
    """Refuse y fitted exactly by X and free effects (Z's columns) for every level of `g`."""
    n, m, codes = ys.size, g.n_levels, g.codes
    q = Z.shape[1]

    def per_group(w):
        return np.bincount(codes, weights=w, minlength=m)

    A = np.empty((m, q, q))
    for a in range(q):
        for b in range(a + 1):
            A[:, a, b] = A[:, b, a] = per_group(Z[:, a] * Z[:, b])
    pinv = np.linalg.pinv(A, rcond=1e-10, hermitian=True)

    def within(w):  # w minus its least-squares fit by Z_j c_j in every group
        c = np.einsum("jab,jb->ja", pinv, np.stack([per_group(Z[:, a] * w) for a in range(q)], 1))
        return w - sum(Z[:, a] * np.take(c[:, a], codes) for a in range(q))

    r = within(ys)
    RX = np.column_stack([within(X[:, k]) for k in range(X.shape[1])])
    keep = np.sqrt((RX * RX).sum(axis=0)) > 1e-10 * np.sqrt((X * X).sum(axis=0))
    if keep.any():
        RX = RX[:, keep] / np.sqrt((RX[:, keep] ** 2).sum(axis=0))
        r = r - RX @ np.linalg.lstsq(RX, r, rcond=None)[0]
    if np.sqrt(r @ r / n) <= 1e-12:
        raise InputError(
            f"{source}: column '{spec.response}' is fitted exactly by the fixed effects plus "
            f"free effects for each group of '{g.name}' (for example it does not vary "
            f"within any group), so the residual variance sigma^2 is not identified: check the "
            f"columns."
        )


def from_frame(
    df: pd.DataFrame,
    formula: str | FormulaSpec,
    *,
    source: str = "<DataFrame>",
    sha256: str = "",
    levels: dict[str, list] | None = None,
) -> LMMData:
    """Validate the data against the formula and build the `LMMData` record.

    `levels` fixes the order of a categorical column's levels (the first is the reference
    level of its treatment contrasts, as R's factor levels are); by default levels are sorted.
    The formula is parsed as data (`formula.parse`) and every column is computed with numpy."""
    spec = parse(formula) if isinstance(formula, str) else formula
    used = variables(spec)
    for name in used:
        if name not in df.columns:
            raise _missing_column(df, name, source)
    df = df[used].copy()
    sha256 = sha256 or content_sha256(df, used)  # the values as given, before level orders
    for name in used:
        isna = df[name].isna().to_numpy()
        if isna.any():
            row = int(np.flatnonzero(isna)[0])
            raise InputError(
                f"{source}: column '{name}' has a missing value in data row "
                f"{row + 1} ({int(isna.sum())} rows in all); fill in or drop "
                f"those rows."
            )
    y = pd.to_numeric(df[spec.response], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(y)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{source}: column '{spec.response}' is not a finite number "
            f"({df[spec.response].iloc[row]!r}) in data row {row + 1}; the "
            f"response must be numeric: fix or drop those rows."
        )
    for name, order in (levels or {}).items():
        if name not in df.columns:
            continue
        unknown = sorted(set(pd.unique(df[name].astype(str))) - set(map(str, order)))
        if unknown:
            raise InputError(
                f"{source}: column '{name}' has level(s) {', '.join(unknown)} "
                f"that are not in its level order {list(order)}; list them all."
            )
        df[name] = pd.Categorical(
            df[name].astype(str), categories=[str(v) for v in order], ordered=True
        )
    X, fixed_names = _design(spec.fixed_part, df, source)  # R's order: interactions last
    _check_rank(X, fixed_names, source)
    groupings, Z, blocks, sizes = _random_terms(spec, df, source)
    out = LMMData(
        y=y,
        X=X,
        Z=Z,
        groupings=groupings,
        fixed_names=tuple(fixed_names),
        blocks=blocks,
        y_name=spec.response,
        formula=spec.text(),
        source=source,
        sha256=sha256,
        notes=_crossing_notes(spec, df, groupings),
    )
    if out.n_obs <= out.p + out.q:
        raise InputError(
            f"{source}: {out.n_obs} rows are too few for {out.p} fixed and "
            f"{out.q} random effects per group."
        )
    _check_identified(y, X, out, sizes, spec, source)
    return out


def _grouping(df: pd.DataFrame, columns: tuple[str, ...], name: str, source: str) -> Grouping:
    """A grouping factor's codes and labels: its column's values as strings, or for an
    interaction the observed combinations, labelled "a1:b1" (lme4's names); in order of first
    appearance."""
    if len(columns) == 1:
        codes, uniques = pd.factorize(df[columns[0]].astype(str), sort=False)
    else:  # the combinations present, by their columns' codes (labels joined only to name them)
        parts = [pd.factorize(df[c].astype(str), sort=False) for c in columns]
        codes, combos = pd.factorize(pd.MultiIndex.from_arrays([p[0] for p in parts]), sort=False)
        uniques = [":".join(str(parts[i][1][j]) for i, j in enumerate(combo)) for combo in combos]
        if len(set(uniques)) < len(uniques):
            dup = pd.Series(uniques)[pd.Series(uniques).duplicated()].iloc[0]
            raise InputError(
                f"{source}: the grouping factor '{name}' has two different combinations both "
                f"labelled '{dup}' (a label of {', '.join(repr(c) for c in columns)} contains "
                f"':'); recode those columns without ':' in their values."
            )
    if len(uniques) < 2:
        what = f"column '{name}'" if len(columns) == 1 else f"the grouping factor '{name}'"
        raise InputError(
            f"{source}: {what} has {len(uniques)} level(s) ({', '.join(map(str, uniques))}); a "
            f"random-effect term needs a grouping factor with at least 2 levels: drop the term "
            f"or use another column."
        )
    return Grouping(name=name, codes=codes.astype(np.int64), labels=tuple(uniques))


def _random_terms(spec: FormulaSpec, df: pd.DataFrame, source: str):
    """Z, its blocks and the grouping factors, with the terms in lme4's order: by number of
    levels of their factor, descending (`rev(order(nl))` when the counts are not already
    non-increasing; formula order otherwise, lme4's mkReTrms), so that theta is lme4's."""
    for name in spec.factors:
        meanings = {t.columns for t in spec.random if t.factor == name}
        if len(meanings) > 1:
            raise InputError(
                f"{source}: the grouping factor name '{name}' means both the column `{name}` and "
                f"the interaction of {' and '.join(repr(c) for c in max(meanings, key=len))}; "
                f"rename the column (no ':' in grouping column names)."
            )
    by_name = {
        name: _grouping(df, next(t.columns for t in spec.random if t.factor == name), name, source)
        for name in spec.factors
    }
    nl = [by_name[t.factor].n_levels for t in spec.random]
    order = list(range(len(nl)))
    if any(b > a for a, b in zip(nl, nl[1:], strict=False)):
        order = sorted(order, key=lambda k: nl[k])[::-1]  # R's order() is stable; rev()
    names = list(dict.fromkeys(spec.random[k].factor for k in order))
    groupings = tuple(by_name[n] for n in names)
    zcols, blocks, sizes, start = [], [], [], 0
    for k in order:
        term = spec.random[k]
        Zt, cols = _design(term.part, df, source)
        f = names.index(term.factor)
        parts = [[i] for i in range(len(cols))] if not term.correlated else [range(len(cols))]
        for g in parts:
            g = list(g)
            blocks.append(
                Block(tuple(cols[i] for i in g), tuple(start + j for j in range(len(g))), f)
            )
            zcols.append(Zt[:, g])
            start += len(g)
        sizes.append((term, Zt.shape[1], f))
    for f, name in enumerate(names):
        re = [n for b in blocks if b.factor == f for n in b.names]
        if len(set(re)) < len(re):
            dup = next(n for n in re if re.count(n) > 1)
            raise InputError(
                f"{source}: random effect '{dup}' appears twice for '{name}'; list each term once."
            )
    return groupings, np.hstack(zcols), tuple(blocks), sizes


def _crossing_notes(spec: FormulaSpec, df: pd.DataFrame, groupings) -> tuple[str, ...]:
    """How two factors relate, said once: two factors with the same partition of the rows (only
    the sum of their variances is identified); a factor whose labels recur under
    several levels of another is fitted as crossed with it (lme4 does the same); if its labels
    restart within each parent (nested codes, like Pastes' cask a, b, c in every batch), the
    model wanted is (1 | parent/child)."""
    out = []
    for i, a in enumerate(groupings):
        for b in groupings[i + 1 :]:
            if a.n_levels == b.n_levels and (
                len(set(zip(a.codes.tolist(), b.codes.tolist(), strict=True))) == a.n_levels
            ):
                out.append(
                    f"'{a.name}' and '{b.name}' group the rows identically (the same "
                    f"{a.n_levels} groups): their variances are not separately identified, only "
                    f"their sum (lme4 warns 'nearly unidentifiable'); drop one of the terms."
                )
    single = [g for g in groupings if ":" not in g.name and g.name in df.columns]
    for a in single:
        for b in single:
            if a is b or b.n_levels >= a.n_levels:
                continue
            pairs = len(set(zip(a.codes.tolist(), b.codes.tolist(), strict=True)))
            per_child = pairs / b.n_levels  # parents per level of b
            nested_ab = pairs == a.n_levels  # a nested in b: each a level under one b level
            if nested_ab or per_child <= 1:
                continue
            out.append(
                f"'{b.name}' ({b.n_levels} levels) is crossed with '{a.name}' ({a.n_levels} "
                f"levels): each '{b.name}' label occurs under {per_child:.3g} '{a.name}' levels "
                f"on average, and is fitted as one level across them (lme4 does the same). If "
                f"'{b.name}' is nested in '{a.name}' with labels that restart in each, write "
                f"(1 | {a.name}/{b.name}) for the nested factor {b.name}:{a.name}."
            )
    return tuple(out)


def from_grouped(gd, formula: str | None = None) -> LMMData:
    """The one-way model `y ~ 1 + (1 | group)` on validated one-way data (`data.GroupedData`):
    the same record as the formula gives, its per-group statistics already known."""
    N = gd.y.size
    ones = np.ones((N, 1))
    out = LMMData(
        y=gd.y,
        X=ones,
        Z=ones,
        groupings=(Grouping(gd.group_name, gd.codes, tuple(gd.labels)),),
        fixed_names=("(Intercept)",),
        blocks=(Block(names=("(Intercept)",), cols=(0,)),),
        y_name=gd.y_name,
        formula=formula or f"{gd.y_name} ~ 1 + (1 | {gd.group_name})",
        source=gd.source,
        sha256=gd.sha256,
    )
    # cached: known by construction (no scan of the N x 1 columns) and computed by the checks
    out.__dict__["is_oneway"] = True
    out.__dict__["oneway"] = Stats.of(gd)
    return out


def from_arrays(
    y,
    X,
    Z,
    group,
    *,
    fixed_names=None,
    re_names=None,
    correlated: bool = True,
    y_name: str = "y",
    group_name: str = "group",
) -> LMMData:
    """Plain arrays (no formula): one block of random effects, correlated unless told not."""
    X, Z = np.asarray(X, float), np.asarray(Z, float)
    X = X[:, None] if X.ndim == 1 else X
    Z = Z[:, None] if Z.ndim == 1 else Z
    codes, uniques = pd.factorize(np.asarray(group), sort=False)
    fixed_names = tuple(fixed_names or [f"x{k}" for k in range(X.shape[1])])
    re_names = tuple(re_names or [f"z{k}" for k in range(Z.shape[1])])
    q = Z.shape[1]
    blocks = (
        (Block(re_names, tuple(range(q))),)
        if correlated
        else tuple(Block((n,), (k,)) for k, n in enumerate(re_names))
    )
    return LMMData(
        y=np.asarray(y, float),
        X=X,
        Z=Z,
        groupings=(Grouping(group_name, codes.astype(np.int64), tuple(str(u) for u in uniques)),),
        fixed_names=fixed_names,
        blocks=blocks,
        y_name=y_name,
    )
