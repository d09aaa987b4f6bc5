"""The one-way kernel of `workbench.fit.eb.fit` (closed forms over per-group statistics, O(m))
against the general kernel (`eb._fit_general`: penalised least squares from the group factors)
on the same `y ~ 1 + (1 | g)` data: balanced, unbalanced, on the boundary tau^2 = 0, and at
response scales 1e-90 .. 1e90.

* at the kernel's own theta, every field equals `deviance.solve`'s (the closed forms) to 1e-9
  (relative, norm-wise for arrays, as below);
* against the independently optimised general fit: objective to 1e-11 relative (never better
  than the kernel's by more than rounding); theta within 2e-7 (the general optimiser stops
  within its gradient tolerance of the exact root the kernel finds: 5e-7 relative on Penicillin,
  2e-6 where theta = 0.065) and every field to 1e-7 + 4 |d theta| / theta relative;
* profile intervals (one-way 1-D kernel vs the general profiler): ends and the profiled other
  parameter at them to 1e-6;
* the kernel never builds the O(N) group factors, and its `Optimum` states what it checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.fit import eb
from workbench.fit import profile as prof
from workbench.model import design
from workbench.objectives.deviance import Layout, solve

DATA = Path(__file__).resolve().parents[1] / "models" / "data"
FIELDS = ("beta", "sigma2", "G", "theta", "objective", "re_mode", "re_cov", "beta_cov")


def _oneway(y, g) -> design.LMMData:
    ones = np.ones(len(y))
    return design.from_arrays(
        y, ones, ones, g, fixed_names=["(Intercept)"], re_names=["(Intercept)"], group_name="g"
    )


def _unbalanced(scale: float = 1.0, tau: float = 0.7, seed: int = 1) -> design.LMMData:
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 15, 30)
    n[0] = 2
    g = np.repeat(np.arange(30), n)
    y = 3.0 + rng.normal(0, tau, 30)[g] + rng.normal(0, 1.0, g.size)
    return _oneway(y * scale, g)


def _csv(name: str, formula: str) -> design.LMMData:
    return design.from_frame(pd.read_csv(DATA / f"{name}.csv"), formula)


CASES = {
    "dyestuff": lambda: _csv("dyestuff", "Yield ~ 1 + (1 | Batch)"),
    "dyestuff2": lambda: _csv("dyestuff2", "Yield ~ 1 + (1 | Batch)"),  # tau^2 = 0
    "hsb82": lambda: _csv("hsb82", "mAch ~ 1 + (1 | school)"),  # unbalanced, 160 schools
    "penicillin": lambda: _csv("penicillin", "diameter ~ 1 + (1 | plate)"),
    "unbalanced": _unbalanced,
    "no_group_variance": lambda: _unbalanced(tau=0.0, seed=3),
    "tiny": lambda: _unbalanced(1e-90),
    "huge": lambda: _unbalanced(1e90),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    data = CASES[request.param]()
    assert data.is_oneway
    fits = {m: eb.fit(data, m) for m in ("ml", "reml")}
    built = "factors" in data.__dict__
    return request.param, data, fits, built


def _close(a, b, rtol: float, what: str):
    a, b = np.asarray(a, float), np.asarray(b, float)
    err = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))  # norm-wise
    assert err <= rtol, f"{what}: relative difference {err:.3g} > {rtol:g}"


def test_kernel_uses_no_group_factors(case):
    name, data, fits, built = case
    assert not built, "the one-way kernel built the O(N) group factors"


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_closed_forms_equal_the_general_algebra_at_the_same_theta(case, method):
    _, data, fits, _ = case
    k = fits[method]
    pls = solve(data.factors, Layout.of(data.blocks, data.q), k.theta)
    s2 = pls.sigma2(method)
    general = {
        "beta": pls.beta,
        "sigma2": s2,
        "G": s2 * pls.T @ pls.T.T,
        "theta": pls.theta,
        "objective": pls.objective(method),
        "re_mode": pls.b,
        "re_cov": pls.cond_cov(s2),
        "beta_cov": pls.beta_cov(s2),
    }
    for f in FIELDS:
        _close(getattr(k, f), general[f], 1e-9, f)
    assert k.re_mode.shape == (data.n_groups, 1) and k.re_cov.shape == (data.n_groups, 1, 1)
    # the cached PLS of a one-way fit is that solve
    assert k.pls.objective(method) == pytest.approx(k.objective, rel=1e-12)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_kernel_equals_the_general_fit(case, method):
    name, data, fits, _ = case
    k, g = fits[method], eb._fit_general(data, method)
    assert k.converged and g.converged, (k.optimum.message, g.optimum.message)
    assert k.objective <= g.objective + 1e-12 * abs(g.objective)
    _close(k.objective, g.objective, 1e-11, "objective")
    # the general optimiser stops within its gradient tolerance of the root the kernel finds
    # exactly: |d theta| <= 2e-7; every field then moves at most like theta^2
    dtheta = abs(k.theta[0] - g.theta[0])
    assert dtheta <= 2e-7
    rtol = 1e-7 + (4.0 * dtheta / k.theta[0] if k.theta[0] > 0 else 0.0)
    for f in FIELDS:
        if k.theta[0] == 0.0 and f in ("G", "re_cov", "theta"):
            continue  # zero in the kernel, <= 1e-7 in theta in the general fit (above)
        _close(getattr(k, f), getattr(g, f), rtol, f)
    assert k.boundary == (g.theta[0] == 0.0 or k.theta[0] == 0.0)
    assert k.singular == g.singular
    assert (k.notes != ()) == k.boundary
    assert list(k.to_dict()["random_effects"]) == list(g.to_dict()["random_effects"])


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_optimum_record_states_the_checks(case, method):
    _, _, fits, _ = case
    o = fits[method].optimum
    assert o.converged and o.n_evals > 0 and o.restarts == 0
    assert o.fun == pytest.approx(fits[method].objective, rel=1e-12)
    if fits[method].boundary:
        assert o.on_bound == (0,) and o.inward_change >= 0.0 and "boundary" in o.message
    else:
        assert o.on_bound == () and o.min_curvature > 0.0 and o.newton_decrement < 1e-12
        assert o.x[0] == fits[method].theta[0]


def test_profile_equals_the_general_profiler(case):
    name, data, fits, _ = case
    for method in ("ml", "reml"):
        k = prof.profile(fits[method])
        g = prof._profile_general(eb._fit_general(data, method), 0.95)
        assert k.names == g.names == (f"sd_(Intercept)|{data.group_name}", "sigma")
        assert k.refitted_ml == g.refitted_ml == (method == "reml")
        _close(k.deviance_min, g.deviance_min, 1e-11, "deviance_min")
        for a, b in zip(k.intervals, g.intervals, strict=True):
            assert (a.lower_at_bound, a.upper_at_bound) == (b.lower_at_bound, b.upper_at_bound)
            for end in ("lower", "upper"):
                x, y = getattr(a, end), getattr(b, end)
                assert abs(x - y) <= 1e-6 * abs(y) + 1e-12 * b.estimate, (a.name, end, x, y)
                _close(getattr(a, f"{end}_point"), getattr(b, f"{end}_point"), 1e-6, a.name)
                assert abs(getattr(a, f"{end}_excess")) < 1e-6 or getattr(a, f"{end}_at_bound")
        assert not k.notes


def test_one_way_record_keys_and_aliases(case):
    _, data, fits, _ = case
    for method, f in fits.items():
        d = f.to_dict()
        general = {"method", "fixed_effects", "variance_components", "sigma2", "theta"}
        assert general | {"singular", "converged", "convergence", "random_effects"} <= set(d)
        assert {"mu", "tau2", "sigma", "tau", "se", "se_observed_information"} <= set(d)
        assert {"boundary", "group_means"} <= set(d)
        assert ("loglik_at_reml" in d) == (method == "reml")
        assert d["mu"] == f.beta[0] and d["tau2"] == f.G[0, 0] and f.tau == np.sqrt(f.tau2)
        assert d["se"]["mu"] == pytest.approx(f.se[0], rel=1e-12)
        assert d["variance_components"][data.group_name]["variances"] == {"(Intercept)": f.tau2}
        means = np.array(list(d["group_means"].values()))
        np.testing.assert_allclose(means, f.mu + f.re_mode[:, 0], rtol=1e-15)
        if method == "reml":
            assert d["loglik_at_reml"] == pytest.approx(f.pls.loglik(f.sigma2), rel=1e-12)


def test_general_models_have_no_one_way_aliases():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(20), 5)
    x = rng.standard_normal(100)
    df = pd.DataFrame({"y": x + rng.normal(0, 1, 20)[g] + rng.standard_normal(100), "x": x, "g": g})
    f = eb.fit(design.from_frame(df, "y ~ x + (1 | g)"), "ml")
    assert f.variance_se is None and "mu" not in f.to_dict()
    with pytest.raises(AttributeError):
        _ = f.tau2
