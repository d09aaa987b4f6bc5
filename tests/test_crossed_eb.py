"""EB fits of crossed and nested models through the product route (formula -> `LMMData` ->
`eb.fit`) against lme4's reference battery (`tests/reference/lme4_crossed.json`: 26 models x
ML/REML x lme4's default, tight and nloptwrap controls; data in `tests/reference/crossed_data/`).

The battery rule: for every (model, method), our objective (ML deviance or REML criterion) is at
least as good as the better of lme4's controls, ours <= best + 1e-6, with the optimiser's
convergence claim checked (gradient, one-sided derivatives at the bounds, a restart). Where
lme4's best fit is interior (not singular), the estimates agree with that fit to the accuracy of
its optimiser: theta, sigma^2, beta and their standard errors, the variance components by
factor, and the conditional modes and sds (ranef(condVar = TRUE)) by factor and level.
The large data sets (InstEval 73,421 rows, chem97, egsingle) carry "large" in their ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.fit import eb
from workbench.model.design import from_frame

REF = Path(__file__).resolve().parent / "reference"
DATA = REF / "crossed_data"
ENTRIES = json.loads((REF / "lme4_crossed.json").read_text())
LARGE = ("insteval.csv.gz", "chem97.csv.gz", "egsingle.csv")
FIT_TOL = 1e-6


def _groups() -> dict[tuple[str, str], list[dict]]:
    out: dict = {}
    for e in ENTRIES:
        out.setdefault((e["model"], e["method"]), []).append(e)
    return out


GROUPS = _groups()


def _id(key) -> str:
    e = GROUPS[key][0]
    return f"{key[0]}.{key[1]}" + (".large" if e["data"] in LARGE else "")


def _frame(e: dict) -> pd.DataFrame:
    # keep_default_na=False: a level such as "None" (nlme's Alfalfa) is a string, not NaN
    cols = tuple(e["factor_columns"]) + tuple(e["levels"])
    return pd.read_csv(DATA / e["data"], dtype={c: str for c in cols}, keep_default_na=False)


_DATA: dict = {}


def _data(e: dict):
    key = (e["data"], e["formula"])
    if key not in _DATA:
        _DATA[key] = from_frame(_frame(e), e["formula"], levels=e["levels"] or None)
    return _DATA[key]


@pytest.mark.parametrize("key", sorted(GROUPS), ids=_id)
def test_product_fit_is_at_least_as_good_as_lme4(key):
    entries = GROUPS[key]
    best = min(entries, key=lambda e: e["objective"])
    d = _data(best)
    fit = eb.fit(d, key[1])
    # the factors and their levels are lme4's
    assert {g.name: g.n_levels for g in d.groupings} == best["flist"]
    assert fit.converged, fit.optimum.message
    assert fit.objective <= best["objective"] + FIT_TOL, (fit.objective, best["objective"])
    if best["singular"] or fit.singular:
        return
    s_y = max(1.0, float(np.std(d.y)))
    np.testing.assert_allclose(fit.theta, best["theta"], atol=2e-3, rtol=2e-3)
    assert fit.sigma2 == pytest.approx(best["sigma2"], rel=1e-4)
    for name, b in best["fixed_effects"].items():
        k = d.fixed_names.index(name)
        assert fit.beta[k] == pytest.approx(b, rel=1e-4, abs=1e-4 * s_y)
        assert fit.se[k] == pytest.approx(best["se"][name], rel=1e-3)
    comps = fit.components_by_factor
    for factor, variances in best["variances"].items():
        for term, v in variances.items():
            assert comps[factor].variances[term] == pytest.approx(v, rel=2e-3, abs=1e-8 * s_y**2)
    effects = fit.to_dict()["random_effects"]
    if d.n_factors == 1:
        effects = {d.group_name: effects}
    for factor, by_col in (best.get("ranef") or {}).items():
        for col, levels in by_col.items():
            sds = best["ranef_sd"][factor][col]
            for label, mode in levels.items():
                ours = effects[factor][label][col]
                assert ours["mode"] == pytest.approx(mode, abs=2e-3 * s_y)
                assert ours["sd"] == pytest.approx(sds[label], rel=2e-3)


def test_theta_order_is_lme4s_with_ties_reversed():
    """lme4's mkReTrms orders terms by rev(order(nl)) when the level counts are not already
    non-increasing: ties come out in reverse formula order (checked in R: (1|a) + (1|b) + (1|c)
    with 5, 5, 8 levels gives theta c, b, a)."""
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "a": np.repeat(list("ABCDE"), 24),
            "b": np.tile(list("VWXYZ"), 24),
            "c": np.tile(list("12345678"), 15),
            "x": rng.standard_normal(120),
            "y": rng.standard_normal(120),
        }
    )
    d = from_frame(df, "y ~ (1 | a) + (1 | b) + (1 | c)")
    assert d.factor_names == ("c", "b", "a")
    d = from_frame(df, "y ~ (1 | a) + (1 | c) + (0 + x | a)")
    assert [(d.groupings[b.factor].name, b.names) for b in d.blocks] == [
        ("c", ("(Intercept)",)),
        ("a", ("x",)),
        ("a", ("(Intercept)",)),
    ]
    d = from_frame(df, "y ~ (1 | a) + (1 | b) + (0 + x | a)")  # 5, 5, 5: formula order
    assert [b.names for b in d.blocks] == [("(Intercept)",), ("(Intercept)",), ("x",)]


def main() -> None:
    """`python tests/test_crossed_eb.py`: per (model, method), our objective minus lme4's best
    and default controls' (negative: ours is better), the optimiser's evaluations and CPU time."""
    import time

    from workbench.fit import eb as eb_fit

    worst, rows = -np.inf, 0
    for key in sorted(GROUPS):
        entries = GROUPS[key]
        best = min(entries, key=lambda e: e["objective"])
        default = next(e for e in entries if e["control"] == "default")
        d = _data(best)
        t0 = time.process_time()
        fit = eb_fit.fit(d, key[1])
        cpu = time.process_time() - t0
        diff = fit.objective - best["objective"]
        worst, rows = max(worst, diff), rows + 1
        print(
            f"{key[0]:24s} {key[1]:4s} ours - best {diff:+.2e}  ours - default "
            f"{fit.objective - default['objective']:+.2e}  converged {fit.converged}  "
            f"{fit.optimum.n_evals} evaluations  {cpu:.2f} s CPU"
        )
    print(f"{rows} fits; worst ours - lme4's best: {worst:+.2e}")


if __name__ == "__main__":
    main()
