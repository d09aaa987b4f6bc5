"""Profile-likelihood intervals (`workbench.fit.profile`) of models with several grouping factors
(crossed, nested, a correlated slope on one factor) against lme4's `confint(fit, method =
"profile", oldNames = FALSE)` (`tests/reference/lme4_crossed_profile.R` ->
`lme4_crossed_profile.json`; data in `tests/reference/crossed_data/`).

* names and order: lme4's, each block with its factor (`sd_(Intercept)|cask:batch`,
  `cor_day.(Intercept)|Dog`, `sigma`).
* every end: |ours - lme4| <= 2e-4 |lme4| (absolute where lme4's end is 0 or +-1; lme4
  interpolates splines through its profile, measured agreement 1e-7 .. 1e-4), except the ends in
  LME4_OFF, where lme4 warns of its own profile; there the test shows that lme4's end is off the
  cut (the profile at it, minimised independently by BOBYQA, is off by more than 1e-3).
* our own ends: the ML deviance at the returned point (evaluated independently of the profiler,
  `ml_deviance`) is d_min + qchisq(0.95, 1) to 1e-6, and the point minimises it over the other
  parameters: a finite-difference quadratic model there predicts no gain above 1e-6.
* REML: lme4 profiles the ML deviance (refitML); so do we.
* The large case (egsingle, 7,230 rows, 1,721 children with a correlated slope) is in the
  reference and passes every check here (ends within 1.3e-5 of lme4's; 1,546 evaluations, 17 s
  of CPU on one thread); it runs only with WORKBENCH_LARGE_TESTS=1 to keep this file fast.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pybobyqa
import pytest

from workbench.fit import eb
from workbench.fit import profile as prof
from workbench.fit.optimiser import serial_blas
from workbench.model.design import from_frame

REF = Path(__file__).resolve().parent / "reference"
DATA = REF / "crossed_data"
ENTRIES = {e["id"]: e for e in json.loads((REF / "lme4_crossed_profile.json").read_text())}
LARGE = {"eg_slope_nested.ml"}
CUT = 3.841458820694124  # qchisq(0.95, 1)
REL_TOL = 2e-4
BOUND_TOL = 1e-3
END_TOL = 1e-6

LME4_OFF = {
    ("pixel_nested_slope.ml", "cor_day.(Intercept)|Dog", 0): "lme4: 'non-monotonic profile', "
    "'bad spline fit: falling back to linear interpolation'",
    ("pixel_nested_slope.ml", "cor_day.(Intercept)|Dog", 1): "lme4: 'non-monotonic profile', "
    "'bad spline fit: falling back to linear interpolation'",
    ("pixel_nested_slope.ml", "sd_(Intercept)|Dog", 0): "lme4: 'unexpected decrease in "
    "profile: using minstep' (its fit is 5e-7 above the ML optimum)",
}


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The checks evaluate many tiny factorisations: one BLAS thread, as the profiler uses."""
    with serial_blas():
        yield


def _frame(e: dict) -> pd.DataFrame:
    cols = tuple(e["factor_columns"]) + tuple(e["levels"])
    return pd.read_csv(DATA / e["data"], dtype={c: str for c in cols}, keep_default_na=False)


@functools.cache
def _case(case_id: str):
    e = ENTRIES[case_id]
    data = from_frame(_frame(e), e["formula"], levels=e["levels"] or None)
    fit = eb.fit(data, e["method"])
    return e, data, fit, prof.profile(fit)


def _ids() -> list[str]:
    big = os.environ.get("WORKBENCH_LARGE_TESTS") == "1"
    return [c for c in ENTRIES if big or c not in LARGE]


IDS = _ids()
ENDS = [(c, name, side) for c in IDS for name in ENTRIES[c]["intervals"] for side in (0, 1)]
END_IDS = [f"{c}:{n}:{'lu'[s]}" for c, n, s in ENDS]


def _deviance(psi, data) -> float:
    d = prof.ml_deviance(psi, data)
    return d if math.isfinite(d) else 1e10


def _reminimise(data, names, k, start, c) -> float:
    """min over the parameters other than k (psi_k = c) of the ML deviance, by BOBYQA in the
    sd/cor/sigma coordinates from `start` (independent of the module's optimiser)."""
    start = np.array(start, float)
    free = np.array([i for i in range(len(names)) if i != k])
    cor = np.array([n.startswith("cor_") for n in names])
    lo = np.where(cor, -1.0, 0.0)[free]
    hi = np.where(cor, 1.0, 10.0 * (np.abs(start) + 1.0))[free]
    lo[-1] = 1e-3 * start[-1]  # sigma > 0

    def f(x):
        psi = start.copy()
        psi[free] = x
        psi[k] = c
        return _deviance(psi, data)

    x0 = np.clip(start[free], lo, hi)
    res = pybobyqa.solve(
        f, x0, bounds=(lo, hi), rhobeg=0.02, rhoend=1e-7, maxfun=800, do_logging=False
    )
    return min(float(res.f), f(x0))


def _quadratic_gain(data, names, k, point) -> float:
    """The gain a Newton step over the other (interior) parameters would make, from central
    differences of the ML deviance at `point`: 0.5 g'H^-1 g (inf where H is not positive
    definite). An sd on 0 is checked one-sided instead (no decrease inward)."""
    point = np.asarray(point, float)
    d0 = _deviance(point, data)
    free = []
    for i, n in enumerate(names):
        if i == k:
            continue
        if n.startswith("sd_") and point[i] <= 1e-9:
            up = point.copy()
            up[i] = 1e-4 * max(point[-1], 1e-3)
            assert _deviance(up, data) >= d0 - 1e-9, f"{n} on 0 could decrease"
        elif not (n.startswith("cor_") and abs(point[i]) > 1 - 1e-6):
            free.append(i)
    h = np.array([1e-4 if names[i].startswith("cor_") else 1e-4 * point[i] for i in free])

    def f(di):
        x = point.copy()
        x[free] += di
        return _deviance(x, data)

    m = len(free)
    g = np.zeros(m)
    H = np.zeros((m, m))
    E = np.diag(h)
    for i in range(m):
        fp, fm = f(E[i]), f(-E[i])
        g[i] = (fp - fm) / (2 * h[i])
        H[i, i] = (fp - 2 * d0 + fm) / h[i] ** 2
        for j in range(i):
            H[i, j] = H[j, i] = (
                f(E[i] + E[j]) - f(E[i] - E[j]) - f(E[j] - E[i]) + f(-E[i] - E[j])
            ) / (4 * h[i] * h[j])
    if m == 0:
        return 0.0
    if np.linalg.eigvalsh(H).min() <= 0:
        return math.inf
    return 0.5 * float(g @ np.linalg.solve(H, g))


@pytest.mark.parametrize("case_id", IDS)
def test_names_in_lme4_order(case_id):
    e, data, fit, P = _case(case_id)
    assert data.n_factors > 1
    assert list(P.names) == list(e["intervals"])
    assert prof.parameter_names(data) == list(e["intervals"])
    assert list(P.to_dict()) == list(e["intervals"])


@pytest.mark.parametrize("case_id", IDS)
def test_minimum_is_the_ml_fit(case_id):
    e, data, fit, P = _case(case_id)
    ml = fit.objective if fit.method == "ml" else eb.fit(data, "ml").objective
    assert P.refitted_ml == (e["method"] == "reml")
    assert P.deviance_min <= ml + 1e-9
    assert P.deviance_min == pytest.approx(ml, abs=1e-6)
    assert P.deviance_min <= e["deviance_ml"] + 1e-6  # lme4's ML deviance
    assert prof.ml_deviance(P.estimate, data) == pytest.approx(P.deviance_min, abs=1e-8)
    assert P.cut == pytest.approx(CUT, abs=1e-12)
    assert not P.notes


@pytest.mark.parametrize("case_id,name,side", ENDS, ids=END_IDS)
def test_matches_lme4(case_id, name, side):
    e, data, fit, P = _case(case_id)
    iv = P.intervals[P.names.index(name)]
    ours = (iv.lower, iv.upper)[side]
    ref = e["intervals"][name][side]
    at_bound = ref == 0.0 or abs(ref) == 1.0
    tol = BOUND_TOL if at_bound else REL_TOL * abs(ref)
    if (case_id, name, side) not in LME4_OFF:
        assert abs(ours - ref) <= tol, f"ours {ours}, lme4 {ref}"
        return
    assert abs(ours - ref) > tol, "now within tolerance: drop it from LME4_OFF"
    k = P.names.index(name)
    point = (iv.lower_point, iv.upper_point)[side]
    at_ref = _reminimise(data, P.names, k, point, ref)
    assert abs(at_ref - P.deviance_min - CUT) > 1e-3, at_ref - P.deviance_min


@pytest.mark.parametrize("case_id,name,side", ENDS, ids=END_IDS)
def test_end_on_the_cut(case_id, name, side):
    e, data, fit, P = _case(case_id)
    k = P.names.index(name)
    iv = P.intervals[k]
    end = (iv.lower, iv.upper)[side]
    point = np.array((iv.lower_point, iv.upper_point)[side])
    assert point[k] == end
    d = prof.ml_deviance(point, data)
    if (iv.lower_at_bound, iv.upper_at_bound)[side]:
        assert end in ((0.0, -1.0) if side == 0 else (1.0,))
        assert d - P.deviance_min < CUT
    else:
        assert d == pytest.approx(P.deviance_min + CUT, abs=END_TOL)
    assert _quadratic_gain(data, P.names, k, point) <= END_TOL


def test_gradient_matches_differences():
    """The profiler's exact gradient for several factors (a 3-term correlated block on Dog
    and an intercept on Dog:Side) in its coordinates, natural and reordered (a correlation's
    profile puts its pair first), against central differences of its own deviance."""
    e = ENTRIES["pixel_nested_slope.ml"]
    formula = "pixel ~ day + day2 + Side + (1 + day + day2 | Dog) + (1 | Dog:Side)"
    data = from_frame(_frame(e), formula, levels=e["levels"])
    fit = eb.fit(data, "ml")
    pr = prof._profiler(fit)
    assert isinstance(pr, prof._BlockedProfiler)
    names = prof.parameter_names(data)
    assert names[1:7] == [
        "sd_(Intercept)|Dog",
        "cor_day.(Intercept)|Dog",
        "cor_day2.(Intercept)|Dog",
        "sd_day|Dog",
        "cor_day2.day|Dog",
        "sd_day2|Dog",
    ]
    psi = pr.psi_hat * np.where(pr.kind == 1, 0.8, 1.2)  # off the optimum: g != 0
    for target in (None, 2, 5):
        sys = pr.system(target)
        v = pr.to_v(psi, sys)
        assert pr.to_psi(v, sys) == pytest.approx(psi, abs=1e-12)
        d, g = pr.evaluate(v, sys)
        assert d == pytest.approx(prof.ml_deviance(psi, data), abs=1e-9)
        for i in range(v.size):
            h = 1e-4 * max(abs(v[i]), 1e-2)  # d ~ 800 is good to ~1e-12
            up, dn = v.copy(), v.copy()
            up[i] += h
            dn[i] -= h
            fd = (pr.evaluate(up, sys, False)[0] - pr.evaluate(dn, sys, False)[0]) / (2 * h)
            assert g[i] == pytest.approx(fd, rel=1e-7, abs=1e-6)


def test_y_scale():
    """y times 1e8 (profiled on y / 1e8 and scaled back, the branch for data far from unit
    size): sd's and sigma scale by 1e8, the deviance moves by 2 N log(1e8)."""
    e, data, fit, P = _case("penicillin_crossed.ml")
    big = from_frame(_frame(e).assign(diameter=lambda d: d.diameter * 1e8), e["formula"])
    Pb = prof.profile(eb.fit(big, "ml"))
    assert Pb.deviance_min == pytest.approx(
        P.deviance_min + 2 * data.n_obs * math.log(1e8), abs=1e-6
    )
    for a, b in zip(Pb.intervals, P.intervals, strict=True):
        assert [a.lower, a.upper] == pytest.approx([1e8 * b.lower, 1e8 * b.upper], rel=1e-6)


@pytest.mark.parametrize("case_id", [c for c in IDS if c not in LARGE])
def test_effort(case_id):
    """A deterministic stand-in for the time (each evaluation with its gradient is two blocked
    factorisations, ~1-3 ms on these models)."""
    _, _, _, P = _case(case_id)
    assert P.n_evals < 1200


def test_singular_fit():
    """Wafer (a slope on Wafer whose correlation sits on -1 at the ML optimum; lme4's profile
    stops with 'profiling detected new, lower deviance'): the correlation's interval is its
    whole range, the Wafer sd's reaches 0, and every other end is on the cut and a minimum."""
    e = next(
        x
        for x in json.loads((REF / "lme4_crossed.json").read_text())
        if x["model"] == "wafer_nested_slope" and x["method"] == "ml"
    )
    data = from_frame(_frame(e), e["formula"], levels=e["levels"] or None)
    P = prof.profile(eb.fit(data, "ml"))
    assert P.deviance_min <= e["objective"] + 1e-9
    cor = P.names.index("cor_voltage.(Intercept)|Wafer")
    assert P.estimate[cor] == pytest.approx(-1.0, abs=1e-6)
    assert P.to_dict()["cor_voltage.(Intercept)|Wafer"] == [-1.0, 1.0]
    assert P.to_dict()["sd_(Intercept)|Wafer"][0] == 0.0
    for k, iv in enumerate(P.intervals):
        for side in (0, 1):
            point = (iv.lower_point, iv.upper_point)[side]
            d = prof.ml_deviance(point, data) - P.deviance_min
            if (iv.lower_at_bound, iv.upper_at_bound)[side]:
                assert d < CUT
            else:
                assert d == pytest.approx(CUT, abs=END_TOL)
                assert _quadratic_gain(data, P.names, k, point) <= END_TOL


def test_names_of_two_terms_on_one_factor():
    """`(1 | primary) + (0 + verbal | primary)`: both blocks carry the factor's own name (lme4
    1.1's `tnames(fit, old = FALSE)` on this model: sd_(Intercept)|primary, sd_verbal|primary,
    sd_(Intercept)|second)."""
    df = pd.read_csv(DATA / "scotssec.csv", dtype={"primary": str, "second": str, "sex": str})
    data = from_frame(df, "attain ~ verbal + (1 | primary) + (0 + verbal | primary) + (1 | second)")
    assert prof.parameter_names(data) == [
        "sd_(Intercept)|primary",
        "sd_verbal|primary",
        "sd_(Intercept)|second",
        "sigma",
    ]


def test_far_out_is_a_wall():
    """Far out along a profile (sd's 1e9 times the fit's) the blocked factor's Schur
    complement is no longer positive definite in rounding: the profiler's evaluation is then
    +inf (a wall for the line search), not an exception."""
    _, data, fit, P = _case("penicillin_crossed.ml")
    pr = prof._profiler(fit)
    for big in (1e6, 1e9, 1e12):
        v = pr.to_v(pr.psi_hat, pr.natural)
        v[:2] *= big
        d, g = pr.evaluate(v, pr.natural)
        assert d > P.deviance_min + CUT
        assert np.all(np.isfinite(g)) == math.isfinite(d)


def _one_factor_fit(formula: str):
    df = pd.read_csv(REF / "battery_data" / "sleepstudy.csv", dtype={"Subject": str})
    return eb.fit(from_frame(df, formula), "ml")


def test_agrees_with_the_one_factor_profiler():
    """The blocked profiler also runs on one grouping factor, where the per-group profiler
    (checked against lme4 in tests/test_lmm_profile.py) is independent of it: sleepstudy's
    (Days | Subject) intervals agree to 1e-9 relative; for (Days + Days2 | Subject) the
    deviance and its gradient agree at the same coordinates in every coordinate system
    (natural, and each correlation's reordering)."""
    fit = _one_factor_fit("Reaction ~ Days + (Days | Subject)")
    A = prof._Profiler(fit).run(0.95)
    B = prof._BlockedProfiler(fit).run(0.95)
    assert B.deviance_min == pytest.approx(A.deviance_min, abs=1e-9)
    for a, b in zip(A.intervals, B.intervals, strict=True):
        assert [b.lower, b.upper] == pytest.approx([a.lower, a.upper], rel=1e-9)
    fit = _one_factor_fit("Reaction ~ Days + (Days + Days2 | Subject)")
    one, blk = prof._Profiler(fit), prof._BlockedProfiler(fit)
    psi = one.psi_hat * np.where(one.kind == 1, 0.8, 1.2)
    for target in (None, 1, 2, 4):
        sys = one.system(target)
        v = one.to_v(psi, sys)
        (da, ga), (db, gb) = one.evaluate(v, sys), blk.evaluate(v, sys)
        assert db == pytest.approx(da, abs=1e-9)
        assert gb == pytest.approx(ga, rel=1e-7, abs=1e-8)
