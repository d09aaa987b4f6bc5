"""Joint MAP variants of formula models (workbench/fit/joint_map.py): the all-parameter numpy
log joint against PyMC's own density and finite differences, the centered h-likelihood of the
all-parameter kernel against the profiled kernel, the statuses (interior, collapse, escape) and
the Hessian intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import DATA

from workbench.fit import eb, joint_general, joint_map
from workbench.fit.joint_start import PARAMETRIZATIONS
from workbench.model import design
from workbench.model.priors import make_priors
from workbench.model.pymc import build_model
from workbench.objectives import log_joint as lj
from workbench.objectives.deviance import Layout, solve


def _frame(m=30, n=20, seed=3):
    """Strong-signal random intercepts and slopes (an interior centered joint mode exists)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    x = rng.standard_normal(m * n)
    b = rng.multivariate_normal([0, 0], [[9.0, 1.5], [1.5, 4.0]], m)
    y = 5 + 1.0 * x + b[g, 0] + b[g, 1] * x + rng.standard_normal(m * n)
    return pd.DataFrame(
        {"y": y, "x": x, "w": rng.standard_normal(m * n), "g": [f"s{j}" for j in g]}
    )


@pytest.fixture(scope="module")
def slopes():
    d = design.from_frame(_frame(), "y ~ x + (1 + x | g)")
    return d, eb.fit(d, "ml")


@pytest.fixture(scope="module")
def dyestuff():
    d = design.from_frame(pd.read_csv(DATA / "dyestuff.csv"), "Yield ~ 1 + (1 | Batch)")
    return d, eb.fit(d, "ml")


def _random_x(ctx, rng, beta0):
    x = rng.normal(size=ctx.size)
    x[: ctx.p] += beta0
    x[ctx.u_start :] *= 2.0
    return x


@pytest.mark.parametrize("par", PARAMETRIZATIONS)
@pytest.mark.parametrize(
    "formula", ["y ~ x + (1 + x | g)", "y ~ x + (1 | g) + (0 + w | g)", "y ~ w + (1 + x + w | g)"]
)
def test_log_joint_equals_pymc_logp(par, formula):
    d = design.from_frame(_frame(m=8, n=6), formula)
    ctx, pri = lj.Context(d), make_priors(d)
    logp = build_model(d, pri, par).compile_logp(jacobian=False)
    rng = np.random.default_rng(5)
    for _ in range(4):
        x = _random_x(ctx, rng, 5.0)
        ours = lj.log_joint(x, ctx, par, pri)
        assert ours == pytest.approx(float(logp(lj.pymc_point(x, ctx, par))), rel=1e-10, abs=1e-8)


@pytest.mark.parametrize("par", PARAMETRIZATIONS)
@pytest.mark.parametrize("with_priors", [False, True])
def test_gradient_and_hessian_match_finite_differences(par, with_priors):
    d = design.from_frame(_frame(m=6, n=5), "y ~ x + (1 + x + w | g)")
    ctx = lj.Context(d)
    pri = make_priors(d) if with_priors else None
    x = _random_x(ctx, np.random.default_rng(7), 5.0)
    _, g = lj.log_joint_and_grad(x, ctx, par, pri)
    eye = np.eye(x.size)
    fd = np.array(
        [
            (lj.log_joint(x + 1e-6 * e, ctx, par, pri) - lj.log_joint(x - 1e-6 * e, ctx, par, pri))
            / 2e-6
            for e in eye
        ]
    )
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-4)
    fd_h = np.array(
        [
            (
                lj.log_joint_and_grad(x + 1e-5 * e, ctx, par, pri)[1]
                - lj.log_joint_and_grad(x - 1e-5 * e, ctx, par, pri)[1]
            )
            / 2e-5
            for e in eye
        ]
    )
    np.testing.assert_allclose(
        lj.hessian(x, ctx, par, pri).dense(), 0.5 * (fd_h + fd_h.T), atol=1e-5
    )


def test_h_likelihood_equals_profiled_objective(slopes):
    """Centered, no priors: at (beta_hat, b_hat, sigma^2_joint) of any theta the log joint is
    minus half the profiled objective the existing estimator maximises."""
    d, _ = slopes
    ctx, layout = lj.Context(d), Layout.of(d.blocks, d.q)
    for theta in ([1.0, 0.2, 0.8], [2.5, -0.4, 0.3]):
        pls = solve(d.factors, layout, theta)
        s2 = pls.sigma2("joint")
        G = s2 * pls.T @ pls.T.T
        x = np.concatenate(
            [pls.beta, [0.5 * np.log(s2)], ctx.pack(np.linalg.cholesky(G)), pls.b.ravel()]
        )
        assert lj.log_joint(x, ctx, "centered", None) == pytest.approx(
            -0.5 * pls.objective("joint"), rel=1e-10
        )


def test_centered_h_likelihood_variant_equals_profiled_estimator(slopes):
    d, fit = slopes
    ours = joint_map.fit(d, fit, parametrization="centered", n_starts=4, seed=2, _kernel="general")
    ref = joint_map.fit(d, fit, parametrization="centered", n_starts=4, seed=2)  # profiled kernel
    assert ours.status == ref.status == "interior"
    assert ours.sigma2 == pytest.approx(ref.sigma2, rel=1e-7)
    np.testing.assert_allclose(ours.G, ref.G, rtol=1e-6)
    np.testing.assert_allclose(ours.beta, ref.beta, rtol=1e-7)
    assert ours.log_joint == pytest.approx(ref.log_joint, abs=1e-6)


def test_centered_posterior_mode_with_intervals(slopes):
    d, fit = slopes
    pri = make_priors(d)
    res = joint_map.fit(d, fit, parametrization="centered", priors=pri, n_starts=4, seed=1)
    assert res.status == "interior" and res.counts() == {"interior": 4}
    assert res.sigma2 < fit.sigma2  # the joint mode's underestimate survives the weak priors
    ci = res.ci_hessian
    assert ci["sigma2"][0] < res.sigma2 < ci["sigma2"][1]
    for name, b in zip(d.fixed_names, res.beta, strict=True):
        lo, hi = ci["fixed_effects"][name]["ci"]
        assert lo < b < hi
        # the Hessian SE of beta is close to the EB one (same data, similar variances)
        se_eb = np.sqrt(np.diag(fit.beta_cov))[d.fixed_names.index(name)]
        assert ci["fixed_effects"][name]["se"] == pytest.approx(se_eb, rel=0.2)
    vc = ci["variance_components"]["g"]
    for i, name in enumerate(d.re_names):
        assert vc["variances"][name][0] < res.G[i, i] < vc["variances"][name][1]
    lo, hi = vc["correlations"]["(Intercept):x"]
    assert -1 < lo < res.G[0, 1] / np.sqrt(res.G[0, 0] * res.G[1, 1]) < hi < 1
    # the mode is a stationary point of PyMC's density (value variables, no Jacobian)
    ctx = lj.Context(d)
    _, g = lj.log_joint_and_grad(res.best.x, ctx, "centered", pri)
    assert np.abs(g).max() < 1e-4
    out = res.to_dict()
    assert out["status"] == "interior" and out["sigma2"] == res.sigma2
    assert set(out["fixed_effects"]) == set(d.fixed_names)


def test_statuses_on_dyestuff(dyestuff):
    """The all-parameter kernel (forced: the data are one-way): no interior centered mode
    (every start collapses, with or without priors); the non-centered h-likelihood escapes to
    tau -> infinity; the priors give the non-centered density an interior mode (tau driven by
    the prior), as in the one-way kernel."""
    d, fit = dyestuff
    pri = make_priors(d)
    out = {
        (par, p is not None): joint_map.fit(
            d, fit, parametrization=par, priors=p, n_starts=4, seed=0, _kernel="general"
        )
        for par in PARAMETRIZATIONS
        for p in (None, pri)
    }
    assert out["centered", False].counts() == {"collapse": 4}
    assert out["centered", True].counts() == {"collapse": 4}
    assert out["noncentered", False].counts() == {"escape": 4}
    nc = out["noncentered", True]
    assert nc.status == "interior" and nc.G[0, 0] > fit.G[0, 0]
    for r in out.values():
        assert r.short_dict()["mu"] == r.mu  # one-way data: the one-way aliases
        if r.status != "interior":
            assert r.best is None and "fixed_effects" not in r.short_dict()
            assert "No interior joint mode" in r.message


def test_seeded_and_deterministic(slopes):
    d, fit = slopes
    a = joint_general.make_starts(lj.Context(d), "noncentered", fit, 5, 11)
    b = joint_general.make_starts(lj.Context(d), "noncentered", fit, 5, 11)
    c = joint_general.make_starts(lj.Context(d), "noncentered", fit, 5, 12)
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert not np.array_equal(a[1][1], c[1][1])
    assert a[0][0] == "eb" and all(k == "random" for k, _ in a[1:])


def test_comparison_json_has_every_variant():
    from workbench.compare import compare
    from workbench.jsonsafe import validate

    c = compare(_frame(), formula="y ~ x + (1 + x | g)", methods="eb-ml,joint-map", n_starts=3)
    assert set(c.joint_maps) == {(par, pri) for par in PARAMETRIZATIONS for pri in (False, True)}
    out = c.to_dict()
    validate(out)
    post = out["joint_map_posterior"]
    assert post["parametrization"] == "centered" and post["status"] == "interior"
    assert "find_MAP" in post["find_map"]
    assert post["sigma2"] == c.joint_maps["centered", True].sigma2
    assert post["ci_hessian"]["sigma2"][0] < post["sigma2"] < post["ci_hessian"]["sigma2"][1]
    every = out["joint_map_all"]
    assert every["centered"]["h_likelihood"]["status"] == out["joint_map"]["status"]
    assert every["centered"]["h_likelihood"]["log_joint"] == out["joint_map"]["log_joint"]
    assert every["noncentered"]["h_likelihood"]["status"] == "no_interior_mode"
    assert every["noncentered"]["h_likelihood"]["start_counts"] == {"escape": 3}
    for pair in every.values():
        for v in pair.values():
            assert {"status", "log_joint", "start_counts", "message"} <= set(v)
            assert ("fixed_effects" in v) == (v["status"] == "interior")


@pytest.mark.parametrize("name", ["hsb82", "dyestuff"])
def test_random_intercept_variants_equal_the_oneway_kernel(datasets, name):
    """y ~ 1 + (1 | g): the all-parameter kernel's four variants are the one-way kernel's four
    (same densities: the default priors coincide with the one-way ones), so statuses, modes and
    log joints agree."""
    from workbench.model.priors import default_priors

    y, g = {"hsb82": ("mAch", "school"), "dyestuff": ("Yield", "Batch")}[name]
    d = design.from_frame(pd.read_csv(DATA / f"{name}.csv"), f"{y} ~ 1 + (1 | {g})")
    fit = eb.fit(d, "ml")
    pri, one_pri = make_priors(d), default_priors(datasets[name])
    assert (pri.beta_loc[0], pri.beta_scale[0], pri.sigma_scale, pri.sd_scale[0]) == pytest.approx(
        (one_pri.mu_loc, one_pri.mu_scale, one_pri.sigma_scale, one_pri.tau_scale)
    )
    for par in PARAMETRIZATIONS:
        for with_priors in (False, True):
            if name == "hsb82" and (par, with_priors) == ("noncentered", False):
                continue  # the one-way escape runs take 7 s there (dyestuff covers escape)
            p = pri if with_priors else None
            ours = joint_map.fit(
                d, fit, parametrization=par, priors=p, n_starts=4, _kernel="general"
            )
            one = joint_map.fit(d, fit, parametrization=par, priors=p, n_starts=4)
            assert ours.status == one.status, (par, with_priors)
            if one.status == "interior":
                assert ours.sigma2 == pytest.approx(one.sigma2, rel=1e-6)
                assert ours.G[0, 0] == pytest.approx(one.tau2, rel=1e-5)
                assert ours.beta[0] == pytest.approx(one.mu, abs=1e-4)
                assert ours.log_joint == pytest.approx(one.log_joint, abs=1e-6)
            else:
                assert set(ours.counts()) == set(one.counts()), (par, with_priors)


def test_block_arrowhead_factor_equals_dense_algebra():
    """-H solved by block elimination (NegFactor) equals the dense solve and inverse, and it
    says 'not negative definite' exactly when the dense Cholesky fails."""
    rng = np.random.default_rng(3)
    m, q, n_g = 7, 2, 4
    Q = rng.normal(size=(n_g + m * q, n_g + m * q))
    dense = -(Q @ Q.T + 0.5 * np.eye(n_g + m * q))
    for j in range(m):  # the arrowhead pattern: zero between different groups
        for k in range(m):
            if j != k:
                dense[n_g + j * q : n_g + (j + 1) * q, n_g + k * q : n_g + (k + 1) * q] = 0.0
    dense = dense - 50.0 * np.eye(dense.shape[0])  # keep it negative definite after zeroing
    H = lj.Arrow(
        A=dense[:n_g, :n_g],
        B=dense[n_g:, :n_g].reshape(m, q, n_g),
        D=np.stack(
            [
                dense[n_g + j * q : n_g + (j + 1) * q, n_g + j * q : n_g + (j + 1) * q]
                for j in range(m)
            ]
        ),
    )
    np.testing.assert_allclose(H.dense(), dense)
    F = lj.NegFactor.of(H)
    g = rng.normal(size=dense.shape[0])
    np.testing.assert_allclose(F.solve(g), np.linalg.solve(-dense, g), rtol=1e-10)
    np.testing.assert_allclose(F.global_cov(), np.linalg.inv(-dense)[:n_g, :n_g], rtol=1e-10)
    bad = lj.Arrow(A=-H.A, B=H.B, D=H.D)  # indefinite
    assert lj.NegFactor.of(bad) is None
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(-bad.dense())


def test_report_states_every_joint_map_variant():
    """The formula report lists the headline joint MAP and the three other variants."""
    from pathlib import Path

    import workbench
    from workbench.present.report import render

    df = pd.read_csv(Path(__file__).parent / "reference" / "battery_data" / "sleepstudy.csv")
    c = workbench.compare(
        df, formula="Reaction ~ Days + (Days | Subject)", methods=["eb-ml", "joint-map"], n_starts=2
    )
    html = render(c, command="test", fragment=True)
    for name in (
        "h-likelihood, centered",
        "with priors, centered",
        "h-likelihood, noncentered",
        "with priors, noncentered",
    ):
        assert f"joint MAP ({name}):" in html
