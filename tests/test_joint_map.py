"""Joint MAP of the one-way model (`joint_map.fit` on y ~ 1 + (1 | g), its one-way kernel): the
facts of DESIGN.md (no interior mode for Dyestuff, Hsb82's interior mode, the balanced closed
form and its existence condition), pm.find_MAP on the same model, and independence from the
number of worker processes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import simulate

from workbench.fit import eb, joint_map, joint_oneway, joint_start
from workbench.model import design
from workbench.model.data import Stats
from workbench.model.priors import default_priors
from workbench.objectives import oneway as dens


def lmm(gd):
    """The one-way data as the model record y ~ 1 + (1 | g)."""
    frame = pd.DataFrame({"y": gd.y, "g": np.asarray(gd.labels)[gd.codes]})
    return design.from_frame(frame, "y ~ 1 + (1 | g)")


def run(gd, par="centered", priors=None, **kw):
    d = lmm(gd)
    ml = eb.fit(d, "ml")
    return joint_map.fit(d, ml, parametrization=par, priors=priors, **kw), ml


def test_dyestuff_has_no_interior_joint_mode(datasets):
    r, _ = run(datasets["dyestuff"])
    assert r.status == "no_interior_mode" and r.best is None and r.log_joint is None
    assert r.counts() == {"collapse": 16}
    assert "No interior joint mode" in r.message and "without bound" in r.message
    d = r.to_dict()
    assert d["mu"] is None and len(d["starts"]) == 16
    # each collapsed end point has tau far below the data scale and a log joint above EB's
    assert all(s.G[0, 0] < 1e-6 for s in r.starts)
    assert d["starts"][0]["tau2"] == r.starts[0].G[0, 0] and "theta" in d["starts"][0]


def test_hsb82_interior_joint_mode_underestimates_variances(datasets):
    r, ml = run(datasets["hsb82"])
    assert r.status == "interior"
    assert r.sigma2 / ml.sigma2 == pytest.approx(0.98, abs=0.005)
    assert r.tau2 / ml.tau2 == pytest.approx(0.88, abs=0.01)
    # the log joint is higher at the joint mode than at the EB point with its conditional modes
    a, _ = dens.conditional_effects(ml.mu, ml.sigma2, ml.tau2, Stats.of(datasets["hsb82"]))
    x_eb = np.concatenate([[ml.mu, 0.5 * np.log(ml.sigma2), 0.5 * np.log(ml.tau2)], a])
    assert r.log_joint > dens.log_joint(x_eb, Stats.of(datasets["hsb82"]))
    ci = r.intervals
    assert ci["sigma2"][0] < r.sigma2 < ci["sigma2"][1]
    assert len(ci["random_effects"]) == 160


def _closed_form(d):
    """DESIGN.md: balanced data, the interior maximum of the centered h-likelihood."""
    m, n = d.n_groups, int(d.n[0])
    W = d.within_ss
    B = float(((d.ybar - d.ybar.mean()) ** 2).sum())
    F = (n * B / (m - 1)) / (W / (m * (n - 1)))
    exists = F >= 4 * (n * n - 1) * m / ((m - 1) * n * n)
    disc = (n + 2) ** 2 - 4 * (n + 1) * (1 + W / (n * B))
    if disc < 0:
        return F, exists, None
    s = ((n + 2) + np.sqrt(disc)) / (2 * (n + 1))
    sigma2 = (W + n * B * (1 - s) ** 2) / (m * n)
    tau2 = s * sigma2 / (n * (1 - s))
    return F, exists, (float(d.ybar.mean()), sigma2, tau2)


@pytest.mark.parametrize("seed", range(4))
def test_balanced_data_follow_the_closed_form(seed):
    d = simulate(30, 3, 5.0, 1.0, 2.0, seed)  # strong group effect: interior mode exists
    F, exists, cf = _closed_form(d)
    assert exists and cf is not None
    r, ml = run(d)
    assert r.status == "interior"
    assert (r.mu, r.sigma2, r.tau2) == pytest.approx(cf, rel=1e-6)
    # sigma^2 comes out low by about (n - 1)/n
    assert r.sigma2 / ml.sigma2 < 0.8


def test_existence_condition_decides_interior_or_not():
    """Of 40 simulated data sets, the optimiser runs on those whose F is within a factor 0.75 to
    1.5 of the threshold (7 of them, both sides): far from it the verdict is never in doubt."""
    m, n = 20, 4
    threshold = 4 * (n * n - 1) * m / ((m - 1) * n * n)
    seen = set()
    for seed in range(40):
        d = simulate(m, n, 0.0, 1.0, 0.6, 100 + seed)
        F, exists, _ = _closed_form(d)
        if not 0.75 < F / threshold < 1.5:
            continue
        r, _ = run(d, n_starts=8)
        assert (r.status == "interior") == exists, (seed, F)
        seen.add(exists)
    assert seen == {True, False}


def test_noncentered_without_priors_escapes(datasets):
    r, _ = run(datasets["dyestuff"], par="noncentered")
    assert r.status == "no_interior_mode" and r.counts() == {"escape": 16}
    # its log joint approaches the no-pooling fit's (plus log N(z = 0 | 0, 1) per group) from below
    st = Stats.of(datasets["dyestuff"])
    no_pool = -0.5 * st.N * (np.log(2 * np.pi * st.W / st.N) + 1) - 0.5 * st.m * dens.LOG_2PI
    assert max(s.log_joint for s in r.starts) <= no_pool
    assert max(s.log_joint for s in r.starts) > no_pool - 1e-3


def test_results_do_not_depend_on_the_number_of_processes(datasets, monkeypatch):
    d = datasets["hsb82"]
    one, _ = run(d, n_jobs=1, n_starts=6)
    monkeypatch.setattr(joint_start, "PARALLEL_THRESHOLD", 0)  # force the worker processes
    two, _ = run(d, n_jobs=2, n_starts=6)
    for a, b in zip(one.starts, two.starts, strict=True):
        assert a.status == b.status and np.array_equal(a.x, b.x) and a.log_joint == b.log_joint


def test_find_map_same_objective_different_verdict(datasets):
    """pm.find_MAP maximises the same density; on the centered model it returns a collapsed
    point and calls it a success, which the workbench classifies as a collapse."""
    import pymc as pm

    from workbench.model.pymc import build_model, oneway_x

    d = datasets["dyestuff"]
    pri = default_priors(d)
    st = Stats.of(d)
    model = build_model(design.from_grouped(d), pri, "centered")
    point = pm.find_MAP(model=model, progressbar=False, jitter=False)
    x = oneway_x(point, "centered")
    logp = model.compile_logp(jacobian=False)
    values = {v.name: point[v.name] for v in model.value_vars}
    assert dens.log_joint(x, st, "centered", pri) == pytest.approx(float(logp(values)), rel=1e-10)
    res = joint_oneway.run_start(0, "find_map", x, st, "centered", pri, float(np.log(d.y.std())))
    assert res.status == "collapse"
    ours, _ = run(d, priors=pri)
    assert ours.status == "no_interior_mode"
    # non-centered with priors: find_MAP and the workbench land on the same interior point
    model = build_model(design.from_grouped(d), pri, "noncentered")
    point = pm.find_MAP(model=model, progressbar=False, jitter=False)
    nc, _ = run(d, par="noncentered", priors=pri)
    assert nc.status == "interior"
    assert nc.sigma2 == pytest.approx(float(point["sigma"]) ** 2, rel=1e-4)
    assert nc.tau2 == pytest.approx(float(point["sd_0"]) ** 2, rel=1e-4)
