"""lme4 reference battery: the EB fit (ML and REML) of ~100 linear mixed models with one grouping
factor against lme4 1.1-31 (`tests/reference/lme4_battery.R` -> `lme4_battery.json`, data in
`tests/reference/battery_data/`).

lme4 fitted each (model, method) with three controls: its default (nloptwrap), `tight` (bobyqa,
rhoend 1e-12) and `tight_nlopt` (nloptwrap, xtol_abs 1e-12); "lme4's best" is the fit with the
smallest objective of the three. One test id per (model, method). The rules:

* objective (ML deviance or REML criterion, deviance units): ours <= lme4's best + 1e-6; and
  our objective function evaluated at each lme4 fit's theta equals lme4's objective to 1e-6
  (this checks the objective apart from the optimiser, so a fit "better than lme4" is real).
* where |ours - lme4's best| <= 1e-6 (both at the optimum), the estimates are compared with
  lme4's best fit, with the tolerances
  - fixed effects: |d| <= 1e-5 max(1, |b|) (measured: at most 0.31 of it);
  - standard errors: relative 1e-3;
  - sigma2: relative 1e-4;
  - variances: |d| <= 1e-4 max(v, sigma2 / mean(z^2)), z the term's column of Z: relative 1e-4,
    and near 0 absolute 1e-4 of the residual variance in the term's own units (a slope's
    variance times mean(z^2) is its contribution to var(y));
  - correlations: |d| <= 1e-4, skipped where either variance (ours or lme4's) is ~0,
    v mean(z^2) / sigma2 < 1e-4, since the correlation is then undetermined.
* ours below lme4's best by more than 1e-6: lme4 did not reach the optimum; nothing else is
  compared (counted in the summary).

`python tests/test_lmm_battery.py [ID-PREFIX ...]` prints the table and the counts.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.fit import eb
from workbench.model import design
from workbench.model.formula import parse

REF = Path(__file__).resolve().parent / "reference"
DATA = REF / "battery_data"
ENTRIES = json.loads((REF / "lme4_battery.json").read_text())

OBJ_TOL = 1e-6
FE_REL = 1e-5
SE_REL = 1e-3
VAR_REL = 1e-4
COR_ABS = 1e-4
NEAR_ZERO = 1e-4  # v mean(z^2) / sigma2 below this: the variance is ~0

BY_KEY: dict[str, dict[str, dict]] = defaultdict(dict)
for _e in ENTRIES:
    BY_KEY[f"{_e['model']}.{_e['method']}"][_e["control"]] = _e
KEYS = list(BY_KEY)
CONTROLS = ("default", "tight", "tight_nlopt")


@dataclass
class Outcome:
    key: str
    method: str
    lme4: dict[str, float]  # objective by control
    best_control: str
    ours: float = math.nan
    converged: bool | None = None
    seconds: float = 0.0
    refused: str = ""
    compared: bool = False
    worst: dict[str, float] = field(default_factory=dict)  # max |d| / tolerance, by kind
    worst_raw: dict[str, float] = field(default_factory=dict)  # max |d|, by kind
    problems: list[str] = field(default_factory=list)

    @property
    def best(self) -> float:
        return self.lme4[self.best_control]

    @property
    def diff(self) -> float:
        return self.ours - self.best


@functools.cache
def _frame(name: str, text_cols: tuple[str, ...]) -> pd.DataFrame:
    # keep_default_na=False: a level such as "None" (nlme's Alfalfa) is a string, not NaN
    return pd.read_csv(DATA / name, dtype={c: str for c in text_cols}, keep_default_na=False)


@functools.cache
def _data(name: str, formula: str, levels_json: str) -> design.LMMData:
    levels = json.loads(levels_json)
    text_cols = tuple(sorted(set(levels) | {parse(formula).factor}))
    return design.from_frame(_frame(name, text_cols), formula, levels=levels)


def _z_mean_squares(data) -> dict[str, float]:
    Z = getattr(data, "Z", None)
    if Z is None:
        return {}
    Z = np.asarray(Z, float)
    return {
        n: float(np.mean(Z[:, c] ** 2))
        for b in data.blocks
        for n, c in zip(b.names, b.cols, strict=True)
    }


def _objective_at(data, theta, method: str) -> float:
    """Our ML deviance / REML criterion at a given theta (lme4's order)."""
    from workbench.objectives.deviance import Layout, solve

    layout = Layout.of(data.blocks, data.q)
    return float(solve(data.factors, layout, np.asarray(theta, float)).objective(method))


def _note(out: Outcome, kind: str, what: str, d: float, tol: float) -> None:
    r = abs(d) / tol if tol > 0 else (0.0 if d == 0 else math.inf)
    if not (r <= out.worst.get(kind, -1.0)):  # also takes nan
        out.worst[kind] = r
        out.worst_raw[kind] = abs(d)
    if not r <= 1.0:
        out.problems.append(f"{kind} {what}: ours vs lme4 differ by {d:.3e} (tolerance {tol:.1e})")


@functools.cache
def run(key: str) -> Outcome:
    fits = BY_KEY[key]
    lme4 = {c: fits[c]["objective"] for c in CONTROLS if c in fits}
    best_control = min(lme4, key=lme4.get)
    ref = fits[best_control]
    out = Outcome(key=key, method=ref["method"], lme4=lme4, best_control=best_control)
    t0 = time.perf_counter()
    try:
        data = _data(ref["data"], ref["formula"], json.dumps(ref["levels"], sort_keys=True))
    except Exception as exc:  # the parser / design refused the model
        out.refused = f"{type(exc).__name__}: {exc}"
        out.problems.append(f"refused: {out.refused}")
        return out
    try:
        fit = eb.fit(data, ref["method"])
    except Exception as exc:  # a crash is a failure of this id, not of the whole battery
        out.problems.append(f"eb.fit raised {type(exc).__name__}: {exc}")
        return out
    out.seconds = time.perf_counter() - t0
    out.ours, out.converged = float(fit.objective), bool(fit.converged)
    for c in lme4:  # the objective function itself, independently of the optimiser
        try:
            d = _objective_at(data, fits[c]["theta"], out.method) - lme4[c]
        except Exception as exc:
            out.problems.append(
                f"objective at lme4's theta ({c}) raised {type(exc).__name__}: {exc}"
            )
            break
        _note(out, "at_theta", c, d, OBJ_TOL)
    if not out.diff <= OBJ_TOL:
        out.problems.append(
            f"objective {out.ours:.10f} is above lme4's best {out.best:.10f} "
            f"({best_control}) by {out.diff:.3e}"
        )
    if abs(out.diff) > OBJ_TOL:
        return out  # one of the two is not at the optimum: estimates are not comparable
    out.compared = True

    names = list(data.fixed_names)
    if names != list(ref["fixed_effects"]):
        out.problems.append(f"fixed-effect names {names} != lme4's {list(ref['fixed_effects'])}")
    else:
        se = np.asarray(fit.se)
        for k, n in enumerate(names):
            b, s = ref["fixed_effects"][n], ref["se"][n]
            _note(out, "beta", n, float(fit.beta[k]) - b, FE_REL * max(1.0, abs(b)))
            _note(out, "se", n, float(se[k]) - s, SE_REL * s)
    s2 = ref["sigma2"]
    _note(out, "sigma2", "", fit.sigma2 - s2, VAR_REL * s2)

    comp = fit.components
    zz = _z_mean_squares(data)
    if set(comp.variances) != set(ref["variances"]):
        out.problems.append(
            f"variance terms {sorted(comp.variances)} != lme4's {sorted(ref['variances'])}"
        )
        return out
    near_zero = set()
    for n, v in ref["variances"].items():
        scale = s2 / zz.get(n, 1.0)
        ours = comp.variances[n]
        _note(out, "var", n, ours - v, VAR_REL * max(abs(v), scale))
        if min(v, ours) < NEAR_ZERO * scale:
            near_zero.add(n)
    for pair, r in ref["correlations"].items():
        a, b = pair.split(":", 1) if pair.count(":") == 1 else _split_pair(pair, ref)
        if a in near_zero or b in near_zero:
            continue
        ours = comp.correlations.get(pair)
        if ours is None:
            out.problems.append(f"correlation {pair} missing from our fit")
            continue
        _note(out, "cor", pair, ours - r, COR_ABS)
    return out


def _split_pair(pair: str, ref: dict) -> tuple[str, str]:
    """ "a:b:c" where a term name has a colon itself: split at the colon that gives two terms."""
    for i in [k for k, ch in enumerate(pair) if ch == ":"]:
        a, b = pair[:i], pair[i + 1 :]
        if a in ref["variances"] and b in ref["variances"]:
            return a, b
    raise ValueError(f"cannot split correlation name {pair!r}")


@pytest.mark.parametrize("key", KEYS)
def test_matches_lme4(key):
    out = run(key)
    assert not out.problems, f"{key}: " + "; ".join(out.problems)


def test_battery_size():
    models = {e["model"] for e in ENTRIES}
    assert len(models) >= 45 and len(ENTRIES) >= 180
    assert {e["control"] for e in ENTRIES} >= {"default", "tight"}


def summary(keys: list[str]) -> None:
    t0 = time.perf_counter()
    rows = [run(k) for k in keys]
    head = (
        f"{'id':28s} {'ours':>17s} {'lme4 default':>17s} {'lme4 tight':>17s} "
        f"{'lme4 nlopt':>17s} {'ours-best':>10s} {'beta/tol':>8s} {'var/tol':>8s} "
        f"{'cor/tol':>8s} {'s':>5s}  status"
    )
    print(head)
    print("-" * len(head))
    for o in rows:
        status = (
            "REFUSED"
            if o.refused
            else "ERROR"
            if math.isnan(o.ours)
            else "FAIL"
            if o.problems
            else "beats lme4"
            if o.diff < -OBJ_TOL
            else "ok"
        )
        w = [o.worst.get(k) for k in ("beta", "var", "cor")]
        print(
            f"{o.key:28s} {o.ours:17.9f} "
            + " ".join(f"{o.lme4.get(c, math.nan):17.9f}" for c in CONTROLS)
            + f" {o.diff:10.2e} "
            + " ".join("       -" if x is None else f"{x:8.2g}" for x in w)
            + f" {o.seconds:5.1f}  {status}"
        )
    fitted = [o for o in rows if not math.isnan(o.ours)]
    print()
    print(
        f"(model, method) pairs: {len(rows)}; lme4 fits: "
        f"{sum(len(BY_KEY[k]) for k in keys)}; refused by our parser: "
        f"{sum(bool(o.refused) for o in rows)}; fits that raised: "
        f"{sum(not o.refused and math.isnan(o.ours) for o in rows)}"
    )
    print(
        f"equal to or better than lme4's best (ours <= best + 1e-6): "
        f"{sum(o.diff <= OBJ_TOL for o in fitted)}"
    )
    print(f"better than lme4's best by more than 1e-6: {sum(o.diff < -OBJ_TOL for o in fitted)}")
    print(f"worse than lme4's best by more than 1e-6: {sum(o.diff > OBJ_TOL for o in fitted)}")
    print(
        f"lme4's default control more than 1e-6 above its best: "
        f"{sum(o.lme4['default'] - o.best > OBJ_TOL for o in rows)}"
    )
    print(
        f"failing tests: {sum(bool(o.problems) for o in rows)}; our fits not converged: "
        f"{sum(o.converged is False for o in fitted)}"
    )
    for kind in ("at_theta", "beta", "se", "sigma2", "var", "cor"):
        cand = [(o.worst[kind], o.worst_raw[kind], o.key) for o in fitted if kind in o.worst]
        if cand:
            r, raw, k = max(cand, key=lambda t: (not math.isnan(t[0]), t[0]))
            print(f"worst {kind:6s}: {r:.3g} x tolerance (|d| = {raw:.3g}) in {k}")
    worst = max(fitted, key=lambda o: o.diff, default=None)
    if worst is not None:
        print(f"largest ours - best: {worst.diff:.3e} ({worst.key})")
    for o in rows:
        if o.problems:
            print(f"FAIL {o.key}: " + "; ".join(o.problems))
    print(f"time: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    prefixes = tuple(sys.argv[1:])
    summary([k for k in KEYS if not prefixes or k.startswith(prefixes)])
