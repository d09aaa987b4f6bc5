"""Stage one for the general model: data + formula -> `LMMData` (y, X, Z, groups) and the
per-group cross products every estimator works from.

With one grouping factor, `Z` is block diagonal: group j contributes an n_j x q block `Z_j` (the
rows of the random-effect columns). So every quantity lme4 gets from its sparse Cholesky
factorization of `Lambda' Z' Z Lambda + I` comes from m small q x q problems built from
Z_j'Z_j, Z_j'X_j and Z_j'y_j: the same numbers, in O(m q^3) per evaluation after one O(N) pass.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import formulae
import numpy as np
import pandas as pd
import scipy.linalg

from ..errors import InputError
from .formula import FormulaSpec, lme4_name, parse, variables


@dataclass(frozen=True)
class Block:
    """A correlated block of random effects: lme4 term names and their columns in `Z`."""

    names: tuple[str, ...]
    cols: tuple[int, ...]


@dataclass(frozen=True)
class CrossProducts:
    """Sufficient statistics of the LMM with one grouping factor (y shifted by `shift`)."""

    ztz: np.ndarray  # (m, q, q)
    ztx: np.ndarray  # (m, q, p)
    zty: np.ndarray  # (m, q)
    xtx: np.ndarray  # (p, p)
    xty: np.ndarray  # (p,)
    yty: float
    n: np.ndarray  # (m,) group sizes
    shift: np.ndarray  # (p,) beta offset undone after solving (y - shift * intercept)


@dataclass(frozen=True)
class LMMData:
    y: np.ndarray
    X: np.ndarray
    Z: np.ndarray  # (N, q): the random-effect columns, row i belongs to group codes[i]
    codes: np.ndarray
    labels: tuple[str, ...]
    fixed_names: tuple[str, ...]
    blocks: tuple[Block, ...]
    y_name: str = "y"
    group_name: str = "group"
    formula: str = ""
    source: str = "<arrays>"
    sha256: str = field(default="", compare=False)

    @property
    def n_obs(self) -> int:
        return int(self.y.size)

    @property
    def n_groups(self) -> int:
        return len(self.labels)

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
    def cross(self) -> CrossProducts:
        return cross_products(self.y, self.X, self.Z, self.codes, self.n_groups,
                              intercept=self.fixed_names.index("(Intercept)")
                              if "(Intercept)" in self.fixed_names else None)

    def summary(self) -> dict:
        n = self.cross.n
        return {
            "source": self.source, "sha256": self.sha256, "formula": self.formula,
            "y": self.y_name, "group": self.group_name, "n_obs": self.n_obs,
            "n_groups": self.n_groups, "group_size_min": int(n.min()),
            "group_size_max": int(n.max()), "balanced": bool(np.all(n == n[0])),
            "mean": float(self.y.mean()), "sd": float(self.y.std(ddof=1)),
            "fixed_effects": list(self.fixed_names), "random_effects": list(self.re_names),
        }


def cross_products(y, X, Z, codes, m: int, intercept: int | None = None) -> CrossProducts:
    """One O(N) pass: per-group Z_j'Z_j, Z_j'X_j, Z_j'y_j and the global X'X, X'y, y'y.

    With an intercept column, y is centred first (beta's intercept shifts back afterwards):
    y'y minus the penalised fit then loses no digits to cancellation when mean(y) >> sd(y)."""
    p, q = X.shape[1], Z.shape[1]
    shift = np.zeros(p)
    if intercept is not None:
        shift[intercept] = float(y.mean())
        y = y - shift[intercept]

    def per_group(w):
        return np.bincount(codes, weights=w, minlength=m)

    ztz = np.empty((m, q, q))
    for a in range(q):
        for b in range(a + 1):
            ztz[:, a, b] = ztz[:, b, a] = per_group(Z[:, a] * Z[:, b])
    ztx = np.stack([np.stack([per_group(Z[:, a] * X[:, k]) for k in range(p)], axis=-1)
                    for a in range(q)], axis=1)
    zty = np.stack([per_group(Z[:, a] * y) for a in range(q)], axis=-1)
    return CrossProducts(ztz=ztz, ztx=ztx, zty=zty, xtx=X.T @ X, xty=X.T @ y, yty=float(y @ y),
                         n=np.bincount(codes, minlength=m).astype(float), shift=shift)


def _missing_column(df: pd.DataFrame, name: str, source: str) -> InputError:
    cols = [str(c) for c in df.columns]
    close = difflib.get_close_matches(name, cols, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else (
        f"available columns: {', '.join(cols[:12])}")
    return InputError(f"{source}: the formula uses column '{name}', which the data do not have; "
                      f"{hint}")


def _design(text: str, df: pd.DataFrame, source: str) -> tuple[np.ndarray, list[str]]:
    try:
        dm = formulae.design_matrices(text, df, na_action="error")
    except Exception as exc:
        raise InputError(f"{source}: cannot build the design for '{text}' ({exc}); check the "
                         f"formula.") from None
    cm = dm.common
    return np.asarray(cm).astype(float), [lme4_name(c) for c in cm.as_dataframe().columns]


def _check_rank(X: np.ndarray, names: list[str], source: str) -> None:
    scale = np.sqrt((X * X).sum(axis=0))
    if np.any(scale == 0):
        bad = names[int(np.flatnonzero(scale == 0)[0])]
        raise InputError(f"{source}: fixed-effect column '{bad}' is all zero; drop that term "
                         f"from the formula.")
    r, piv = scipy.linalg.qr(X / scale, mode="r", pivoting=True)
    d = np.abs(np.diag(r))
    rank = int((d > d[0] * 1e-10 * max(X.shape)).sum())
    if rank < X.shape[1]:
        dropped = [names[i] for i in piv[rank:]]
        raise InputError(f"{source}: the fixed effects are rank deficient ({X.shape[1]} columns, "
                         f"rank {rank}): {', '.join(repr(n) for n in dropped)} is a linear "
                         f"combination of the other columns; drop it from the formula.")


def from_frame(df: pd.DataFrame, formula: str | FormulaSpec, *, source: str = "<DataFrame>",
               sha256: str = "", levels: dict[str, list] | None = None) -> LMMData:
    """Validate the data against the formula and build the `LMMData` record.

    `levels` fixes the order of a categorical column's levels (the first is the reference
    level of its treatment contrasts, as R's factor levels are); by default levels are sorted."""
    spec = parse(formula) if isinstance(formula, str) else formula
    used = variables(spec)
    for name in used:
        if name not in df.columns:
            raise _missing_column(df, name, source)
    df = df[used].copy()
    for name in used:
        isna = df[name].isna().to_numpy()
        if isna.any():
            row = int(np.flatnonzero(isna)[0])
            raise InputError(f"{source}: column '{name}' has a missing value in data row "
                             f"{row + 1} ({int(isna.sum())} rows in all); fill in or drop "
                             f"those rows.")
    y = pd.to_numeric(df[spec.response], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(y)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{source}: column '{spec.response}' is not a finite number "
                         f"({df[spec.response].iloc[row]!r}) in data row {row + 1}; the "
                         f"response must be numeric: fix or drop those rows.")
    for name, order in (levels or {}).items():
        if name not in df.columns:
            continue
        unknown = sorted(set(df[name].astype(str)) - set(map(str, order)))
        if unknown:
            raise InputError(f"{source}: column '{name}' has level(s) {', '.join(unknown)} "
                             f"that are not in its level order {list(order)}; list them all.")
        df[name] = pd.Categorical(df[name].astype(str), categories=[str(v) for v in order],
                                  ordered=True)
    X, fixed_names = _design(f"{spec.response} ~ {spec.fixed}", df, source)
    order = sorted(range(len(fixed_names)), key=lambda k: fixed_names[k].count(":"))
    X, fixed_names = X[:, order], [fixed_names[k] for k in order]  # R: interactions last
    _check_rank(X, fixed_names, source)
    zcols, blocks = [], []
    for term in spec.random:
        Zt, names = _design(term.expr, df, source)
        groups = [[i] for i in range(len(names))] if not term.correlated else [range(len(names))]
        for g in groups:
            start = sum(z.shape[1] for z in zcols)
            blocks.append(Block(names=tuple(names[i] for i in g),
                                cols=tuple(start + k for k in range(len(list(g))))))
            zcols.append(Zt[:, list(g)])
    Z = np.hstack(zcols)
    re_names = [n for b in blocks for n in b.names]
    if len(set(re_names)) < len(re_names):
        dup = next(n for n in re_names if re_names.count(n) > 1)
        raise InputError(f"{source}: random effect '{dup}' appears twice for '{spec.factor}'; "
                         f"list each term once.")
    codes, uniques = pd.factorize(df[spec.factor].astype(str), sort=False)
    if len(uniques) < 2:
        raise InputError(f"{source}: column '{spec.factor}' has {len(uniques)} group(s); a "
                         f"mixed model needs at least 2 groups.")
    if not sha256:
        sha256 = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy()
                                .tobytes()).hexdigest()
    out = LMMData(y=y, X=X, Z=Z, codes=codes.astype(np.int64), labels=tuple(uniques),
                  fixed_names=tuple(fixed_names), blocks=tuple(blocks), y_name=spec.response,
                  group_name=spec.factor, formula=spec.text(), source=source, sha256=sha256)
    if out.n_obs <= out.p + out.q:
        raise InputError(f"{source}: {out.n_obs} rows are too few for {out.p} fixed and "
                         f"{out.q} random effects per group.")
    return out


def from_arrays(y, X, Z, group, *, fixed_names=None, re_names=None, correlated: bool = True,
                y_name: str = "y", group_name: str = "group") -> LMMData:
    """Plain arrays (no formula): one block of random effects, correlated unless told not."""
    X, Z = np.asarray(X, float), np.asarray(Z, float)
    X = X[:, None] if X.ndim == 1 else X
    Z = Z[:, None] if Z.ndim == 1 else Z
    codes, uniques = pd.factorize(np.asarray(group), sort=False)
    fixed_names = tuple(fixed_names or [f"x{k}" for k in range(X.shape[1])])
    re_names = tuple(re_names or [f"z{k}" for k in range(Z.shape[1])])
    q = Z.shape[1]
    blocks = ((Block(re_names, tuple(range(q))),) if correlated
              else tuple(Block((n,), (k,)) for k, n in enumerate(re_names)))
    return LMMData(y=np.asarray(y, float), X=X, Z=Z, codes=codes.astype(np.int64),
                   labels=tuple(str(u) for u in uniques), fixed_names=fixed_names,
                   blocks=blocks, y_name=y_name, group_name=group_name)
