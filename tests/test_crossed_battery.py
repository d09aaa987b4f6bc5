"""The blocked penalised least squares (`workbench.objectives.blocked`) against lme4's reference
battery for several grouping factors: 26 crossed/nested models x ML/REML x 3 lme4 controls
(`tests/reference/lme4_crossed.R` -> `lme4_crossed.json`, data in `tests/reference/crossed_data/`).

The models are built here by a small test-side builder (`split_formula`, `build`), independent of
the product's formula and design layer (`tests/test_crossed_eb.py` fits the same battery through
the product route, formula -> LMMData -> eb.fit), so the blocked kernel is checked on its own:

* the formula is split by a regex into the fixed part and the `(expr | factor)` /
  `(expr || factor)` terms; `a/b` as a factor expands to `a` + `a:b` (lme4's rule); a factor
  `a:b` is the interaction of the two columns' labels (the combinations present);
* `expr` is a sum of `0`, `1` and numeric column names (the battery's slopes are all numeric):
  the intercept unless `0 +`, then the columns; `||` splits the term into one scalar term per
  column, intercept first (lme4's expandDoubleVerts);
* y, X and lme4's fixed-effect names come from `workbench.model.design.from_frame` on
  `lhs ~ FIXED + (1 | g)`, g a plain column of the first term's factor (the random part there is
  only a placeholder); the names are checked against lme4's `fixed_effects`, in order.

Every fit of the battery is then checked at lme4's own theta (each control has its own):

* the term order: ours sorted by number of levels (descending, ties in formula order:
  `Terms.lme4_theta`) is lme4's `terms` list (factor as a set of columns, columns, levels), and
  the distinct factors are lme4's `flist`;
* our objective (ML deviance or REML criterion) equals lme4's to 1e-8 relative;
* beta from `blocked.solve` equals lme4's fixed effects, |d| <= max(1e-6 |b|, 1e-5 max(1, s)),
  s the standard deviation of y (the absolute part only matters where |b| is tiny); sigma2 to
  1e-6 relative;
* the conditional modes, where lme4 recorded them (at most 1000 random effects), to 1e-5
  max(1, s) absolute.
Measured (lme4 1.1-31, all 156 fits): objectives to 3e-14 relative, beta to 5e-11 relative,
sigma2 to 3e-14 relative, conditional modes to 3e-11 max(1, s).

The fits of InstEval, chem97 and egsingle carry "large" in their test ids (deselect them with
`-k "not large"`); with them the file takes about 10 s on 2 cores, most of it InstEval's data.

Also a fit: for every (model, method) outside the large ones, Py-BOBYQA from lme4's start
(theta = 1 on the diagonal, 0 off it; lower bound 0 on the diagonal elements; rhobeg 0.2 as
minqa's bobyqa from that start, rhoend 1e-10) reaches lme4's best objective over its three
controls: ours <= best + 1e-6 (the battery rule; the product's own optimiser is held to it in
`tests/test_crossed_eb.py`).
Measured: |ours - best| <= 5e-11 on these 46 fits (<= 8e-10 on the large ones too, with
`--large` below), 26 to 305 evaluations; lme4's own controls differ by up to 1.1 (wafer ML).

`python tests/test_crossed_battery.py [--large]` prints the fit comparison (ours - lme4's best,
per model and method).
"""

from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.model import design
from workbench.objectives import blocked

REF = Path(__file__).resolve().parent / "reference"
DATA = REF / "crossed_data"
ENTRIES = json.loads((REF / "lme4_crossed.json").read_text())
LARGE = ("insteval.csv.gz", "chem97.csv.gz", "egsingle.csv")

OBJ_REL = 1e-8
BETA_REL = 1e-6
BETA_ABS = 1e-5  # x max(1, sd(y))
SIGMA2_REL = 1e-6
RANEF_ABS = 1e-5  # x max(1, sd(y))
FIT_TOL = 1e-6

_BAR = re.compile(r"\(\s*([^()|]+?)\s*(\|\|?)\s*([^()|]+?)\s*\)")


@dataclass(frozen=True)
class TermSpec:
    """One random-effect term: its factor (one column, or the interaction of several) and its
    columns of Z ('(Intercept)' or numeric columns of the data)."""

    factor: tuple[str, ...]
    columns: tuple[str, ...]


def split_formula(formula: str) -> tuple[str, str, list[TermSpec]]:
    """lme4 formula -> (response, fixed part, random terms in formula order)."""
    lhs, rhs = formula.split("~")
    terms = []
    for expr, bar, fac in _BAR.findall(rhs):
        pieces = [p.strip() for p in expr.split("+")]
        columns = (["(Intercept)"] if "0" not in pieces else []) + [
            p for p in pieces if p not in ("0", "1")
        ]
        if "/" in fac:
            a, b = (s.strip() for s in fac.split("/"))
            factors = [(a,), (a, b)]
        else:
            factors = [tuple(s.strip() for s in fac.split(":"))]
        for f in factors:
            if bar == "||":
                terms += [TermSpec(f, (c,)) for c in columns]
            else:
                terms.append(TermSpec(f, tuple(columns)))
    fixed = " + ".join(p.strip() for p in _BAR.sub("", rhs).split("+") if p.strip()) or "1"
    return lhs.strip(), fixed, terms


def factor_codes(df: pd.DataFrame, factor: tuple[str, ...]):
    """Integer codes of a factor (the interaction of its columns: the combinations present, in
    sorted order) and each level's labels, one tuple of column labels per level."""
    parts = [pd.factorize(df[c].astype(str), sort=True) for c in factor]
    stacked = np.column_stack([codes for codes, _ in parts])
    rows, codes = np.unique(stacked, axis=0, return_inverse=True)
    labels = [tuple(str(parts[i][1][r]) for i, r in enumerate(row)) for row in rows]
    return codes.ravel().astype(np.int64), labels


@dataclass(frozen=True)
class Built:
    y: np.ndarray
    X: np.ndarray
    fixed_names: tuple[str, ...]
    specs: tuple[TermSpec, ...]
    labels: tuple[list, ...]  # per term: the labels of its levels (code order)
    terms: blocked.Terms
    scale: float  # max(1, sd(y))


@functools.cache
def _frame(name: str, text_cols: tuple[str, ...]) -> pd.DataFrame:
    # keep_default_na=False: a level such as "None" (nlme's Alfalfa) is a string, not NaN
    return pd.read_csv(DATA / name, dtype={c: str for c in text_cols}, keep_default_na=False)


@functools.cache
def build(model: str) -> Built:
    """y, X and the blocked terms of one battery model (shared by its 6 fits)."""
    e = next(x for x in ENTRIES if x["model"] == model)
    df = _frame(e["data"], tuple(e["factor_columns"]))
    assert len(df) == e["nrow"]
    lhs, fixed, specs = split_formula(e["formula"])
    placeholder = specs[0].factor[0]
    d = design.from_frame(df, f"{lhs} ~ {fixed} + (1 | {placeholder})", levels=e["levels"])
    built, labels = [], []
    for s in specs:
        codes, lab = factor_codes(df, s.factor)
        Z = np.column_stack(
            [np.ones(len(df)) if c == "(Intercept)" else df[c].to_numpy(float) for c in s.columns]
        )
        built.append((codes, Z))
        labels.append(lab)
    return Built(
        y=d.y,
        X=d.X,
        fixed_names=d.fixed_names,
        specs=tuple(specs),
        labels=tuple(labels),
        terms=blocked.Terms.of(d.y, d.X, built),
        scale=max(1.0, float(np.std(d.y, ddof=1))),
    )


def _lme4_order(b: Built) -> list[int]:
    """Our term indices in lme4's order (what `Terms.lme4_theta` uses)."""
    return sorted(range(len(b.specs)), key=lambda k: -b.terms.terms[k].n)


def _is_large(e: dict) -> bool:
    return e["data"] in LARGE


def _param(e: dict, name: str):
    return pytest.param(e, id=name + ("-large" if _is_large(e) else ""))


@pytest.mark.parametrize("e", [_param(e, e["id"]) for e in ENTRIES])
def test_matches_lme4_at_its_theta(e):
    b = build(e["model"])
    assert list(b.fixed_names) == list(e["fixed_effects"])
    # Our terms in lme4's order are lme4's terms; the distinct factors are its flist.
    order = _lme4_order(b)
    assert len(order) == len(e["terms"])
    for k, ref in zip(order, e["terms"], strict=True):
        s = b.specs[k]
        assert set(s.factor) == set(ref["factor"].split(":")), (s, ref)
        assert list(s.columns) == ref["columns"], (s, ref)
        assert b.terms.terms[k].n == ref["nlevels"], (s, ref)
    flist = {frozenset(n.split(":")): v for n, v in e["flist"].items()}
    ours = {frozenset(s.factor): b.terms.terms[k].n for k, s in enumerate(b.specs)}
    assert ours == flist

    terms, method = b.terms, e["method"]
    theta = terms.from_lme4_theta(e["theta"])
    np.testing.assert_array_equal(terms.lme4_theta(theta), e["theta"])
    value = blocked.objective(terms, theta, method)
    assert value == pytest.approx(e["objective"], rel=OBJ_REL, abs=0)

    sol = blocked.solve(terms, theta)
    ref_beta = np.array(list(e["fixed_effects"].values()), float)
    tol = np.maximum(BETA_REL * np.abs(ref_beta), BETA_ABS * b.scale)
    d = np.abs(sol.beta - ref_beta)
    assert np.all(d <= tol), dict(zip(b.fixed_names, d / tol, strict=True))
    assert sol.sigma2(method) == pytest.approx(e["sigma2"], rel=SIGMA2_REL, abs=0)

    if e["ranef"] is None:
        return
    for k, ref in zip(order, e["terms"], strict=True):
        s = b.specs[k]
        # lme4's level labels join the columns in its own order of the factor's name
        # ("cask:batch" for batch/cask).
        pos = [s.factor.index(c) for c in ref["factor"].split(":")]
        keys = [":".join(lab[i] for i in pos) for lab in b.labels[k]]
        for c, col in enumerate(s.columns):
            modes = e["ranef"][ref["factor"]][col]
            assert len(modes) == len(keys)
            want = np.array([modes[key] for key in keys], float)
            np.testing.assert_allclose(sol.b[k][:, c], want, rtol=0, atol=RANEF_ABS * b.scale)


# ---------------------------------------------------------------------------------------------
# A fit by Py-BOBYQA from lme4's start, against lme4's best of its three controls.

BY_FIT: dict[str, dict[str, dict]] = {}
for _e in ENTRIES:
    BY_FIT.setdefault(f"{_e['model']}.{_e['method']}", {})[_e["control"]] = _e


def fit_bobyqa(terms: blocked.Terms, method: str, rhoend: float = 1e-10):
    """Minimise the criterion over theta (the user's order) from theta = 1 on the diagonals,
    0 off them, diagonal elements >= 0. Returns (theta, objective, evaluations)."""
    import pybobyqa

    lower = np.full(terms.n_theta, -1e20)
    x0 = np.zeros(terms.n_theta)
    for t, sl in zip(terms.terms, terms.theta_slices, strict=True):
        rows, cols = blocked._tril(t.q)
        diag = np.flatnonzero(rows == cols) + sl.start
        lower[diag], x0[diag] = 0.0, 1.0

    def f(theta):
        try:
            return blocked.objective(terms, theta, method)
        except np.linalg.LinAlgError:
            return 1e300

    res = pybobyqa.solve(
        f,
        x0,
        bounds=(lower, np.full(terms.n_theta, 1e20)),
        rhobeg=0.2,
        rhoend=rhoend,
        maxfun=100_000,
        do_logging=False,
    )
    return res.x, float(res.f), int(res.nf)


@pytest.mark.parametrize(
    "key",
    [k for k, v in BY_FIT.items() if not _is_large(v["default"])],
)
def test_bobyqa_fit_reaches_lme4_best(key):
    fits = BY_FIT[key]
    e = fits["default"]
    best = min(v["objective"] for v in fits.values())
    _, ours, _ = fit_bobyqa(build(e["model"]).terms, e["method"])
    assert ours <= best + FIT_TOL, (ours, best, ours - best)


def main() -> None:
    width = max(map(len, BY_FIT))
    for key, fits in BY_FIT.items():
        if _is_large(fits["default"]) and "--large" not in sys.argv:
            continue
        e = fits["default"]
        best = min(v["objective"] for v in fits.values())
        _, ours, nf = fit_bobyqa(build(e["model"]).terms, e["method"])
        spread = max(v["objective"] for v in fits.values()) - best
        print(
            f"{key:{width}}  ours - best {ours - best:+.2e}  (lme4 spread {spread:.1e}, {nf} evals)"
        )


if __name__ == "__main__":
    main()
