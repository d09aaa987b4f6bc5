"""The one joint-MAP estimator across its kernels: on one-way data its results are the old
one-way path's start by start (stored in tests/reference/joint_map_oneway.json), the
all-parameter kernel forced onto one-way data agrees with the one-way kernel in all four
variants, the profiled kernel agrees with the all-parameter one, and the record's JSON has the
general keys plus the one-way aliases."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from workbench.fit import eb, joint_map
from workbench.model import design
from workbench.model.priors import default_priors
from workbench.seeds import seed_for

VARIANTS = [(par, pri) for par in joint_map.PARAMETRIZATIONS for pri in (False, True)]


def shipped(name: str):
    """A shipped one-way case (models/NAME.toml) as y ~ 1 + (1 | g)."""
    case = tomllib.loads((ROOT / "models" / f"{name}.toml").read_text())["data"]
    frame = pd.read_csv(ROOT / "models" / case["path"])
    return design.from_frame(frame, f"{case['y']} ~ 1 + (1 | {case['group']})")


@pytest.fixture(scope="module")
def cases():
    out = {}
    for name in ("small_groups", "dyestuff", "dyestuff2", "hsb82"):
        d = shipped(name)
        out[name] = (d, eb.fit(d, "ml"), default_priors(d))
    return out


REFERENCE = json.loads((ROOT / "tests" / "reference" / "joint_map_oneway.json").read_text())


@pytest.mark.parametrize("name", ["small_groups", "dyestuff", "dyestuff2", "hsb82"])
def test_oneway_results_equal_the_old_kernel_path(cases, name):
    """Start by start the numbers of the pre-unification one-way path (stored from it in
    tests/reference/joint_map_oneway.json; identical to commit 74098a7)."""
    d, fit, pri = cases[name]
    assert d.is_oneway
    for par, with_priors in VARIANTS:
        key = f"{name}|{par}|{int(with_priors)}"
        if key not in REFERENCE["cases"]:
            continue  # hsb82's escaping non-centered runs take seconds each; dyestuff has escape
        old = REFERENCE["cases"][key]
        p = pri if with_priors else None
        seed = seed_for(7, "joint_map", par, "posterior" if with_priors else "h_likelihood")
        new = joint_map.fit(d, fit, parametrization=par, priors=p, n_starts=6, seed=seed)
        assert new.status == old["status"] and new.message == old["message"]
        for a, b in zip(new.starts, old["starts"], strict=True):
            assert (a.kind, a.status, a.iterations) == tuple(b[:3])
            assert a.log_joint == pytest.approx(b[3], rel=1e-12, abs=1e-8)
            assert (a.beta[0], a.sigma2, a.G[0, 0]) == pytest.approx(tuple(b[4:]), rel=1e-8)
        if "mu" not in old:
            assert new.best is None and new.to_dict()["mu"] is None
            continue
        assert (new.mu, new.sigma2, new.tau2) == pytest.approx(
            (old["mu"], old["sigma2"], old["tau2"]), rel=1e-8
        )
        np.testing.assert_allclose(new.re_mode[:, 0], old["group_effects"], rtol=1e-8, atol=1e-10)
        out = new.to_dict()
        assert out["ci_hessian"]["sigma2"] == pytest.approx(old["ci_sigma2"], rel=1e-8)
        re_new = out["ci_hessian"]["random_effects"][d.labels[0]]
        assert re_new["group_mean_ci"] == pytest.approx(old["group_mean_ci0"], rel=1e-8)
        assert re_new["sd"] == pytest.approx(old["sd0"], rel=1e-8)


def test_profiled_kernel_agrees_with_the_all_parameter_kernel(cases):
    """The centered h-likelihood of small_groups (interior): profiled = all-parameter =
    one-way kernel."""
    d, fit, _ = cases["small_groups"]
    runs = {
        k: joint_map.fit(d, fit, parametrization="centered", n_starts=4, seed=1, _kernel=k)
        for k in ("oneway", "profiled", "general")
    }
    one = runs["oneway"]
    assert one.status == "interior"
    for r in runs.values():
        assert r.status == "interior"
        assert (r.mu, r.sigma2, r.tau2) == pytest.approx((one.mu, one.sigma2, one.tau2), rel=1e-6)
        assert r.log_joint == pytest.approx(one.log_joint, abs=1e-6)
    prof, gen = runs["profiled"].to_dict(), runs["general"].to_dict()
    assert prof["ci_hessian"]["sigma2"] == pytest.approx(gen["ci_hessian"]["sigma2"], rel=1e-4)
    assert prof["loglik"] == pytest.approx(gen["loglik"], rel=1e-7)


def test_record_keys_oneway_and_general(cases):
    d, fit, pri = cases["small_groups"]
    r = joint_map.fit(d, fit, parametrization="centered", priors=pri, n_starts=3, seed=0)
    assert r.status == "interior" and r.objective == "posterior" and r.with_priors
    out = r.to_dict()
    general = {"objective", "parametrization", "status", "message", "start_counts", "starts"}
    general |= {"fixed_effects", "variance_components", "sigma2", "theta", "log_joint"}
    general |= {"loglik", "ci_hessian", "ci_level", "find_map", "scale"}
    assert general | {"mu", "tau2"} <= set(out)
    assert out["variance_components"] == {
        d.group_name: {"variances": {"(Intercept)": r.tau2}, "correlations": {}}
    }
    assert out["fixed_effects"]["(Intercept)"]["estimate"] == r.mu
    assert out["fixed_effects"]["(Intercept)"]["se"] == out["ci_hessian"]["se"]["mu"]
    assert out["theta"] == [pytest.approx(np.sqrt(r.tau2 / r.sigma2), rel=1e-12)]
    assert {"mu", "sigma2", "tau2", "se", "random_effects"} <= set(out["ci_hessian"])
    start = out["starts"][0]
    assert {"index", "start", "status", "log_joint", "theta", "iterations"} <= set(start)
    assert {"mu", "sigma2", "tau2", "newton_decrement"} <= set(start)
    short = r.short_dict()
    assert {"status", "log_joint", "start_counts", "message", "fixed_effects", "mu"} <= set(short)
    assert "starts" not in short
    # a general model: no one-way aliases
    rng = np.random.default_rng(2)
    grp, x = np.repeat(np.arange(30), 10), rng.standard_normal(300)
    y = 5 + x + 3 * rng.standard_normal(30)[grp] + rng.standard_normal(300)
    g = design.from_frame(pd.DataFrame({"y": y, "x": x, "g": grp.astype(str)}), "y ~ x + (1 | g)")
    h = joint_map.fit(g, eb.fit(g, "ml"), parametrization="centered", n_starts=2, seed=0)
    out = h.to_dict()
    assert h.status == "interior" and "mu" not in out and "tau2" not in out["starts"][0]
    assert set(out["fixed_effects"]) == {"(Intercept)", "x"}
    assert out["ci_hessian"]["sigma2"][0] < out["sigma2"] < out["ci_hessian"]["sigma2"][1]
    assert "se_note" in out and "mu" not in h.short_dict()


def test_seed_sequence_decides_the_starts(cases):
    d, fit, _ = cases["hsb82"]
    seed = seed_for(3, "joint_map", "centered", "h_likelihood")
    a = joint_map.fit(d, fit, parametrization="centered", n_starts=4, seed=seed)
    b = joint_map.fit(d, fit, parametrization="centered", n_starts=4, seed=seed)
    c = joint_map.fit(d, fit, parametrization="centered", n_starts=4, seed=seed_for(4, "x"))
    assert [s.log_joint for s in a.starts] == [s.log_joint for s in b.starts]
    assert a.starts[3].kind == "random"  # eb, pooled, no_pooling, then random draws
    assert not np.array_equal(a.starts[3].x, c.starts[3].x)
