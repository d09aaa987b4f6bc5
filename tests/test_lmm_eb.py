"""General-LMM empirical Bayes against lme4 1.1-31 (tests/reference/lme4_lmm.R), against a
dense brute-force marginal likelihood, and its one-way kernel against its general one."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HSB82_LEVELS

from workbench.fit import eb
from workbench.model import design
from workbench.objectives.deviance import Layout, solve

CASES = [
    "hsb82_slope",
    "hsb82_uncorrelated",
    "hsb82_categorical",
    "hsb82_three_terms",
    "hsb82_oneway",
]


@pytest.fixture(scope="module")
def fits(lme4_lmm, hsb82_frame):
    out = {}
    for case in CASES:
        d = design.from_frame(hsb82_frame, lme4_lmm[case]["formula"], levels=HSB82_LEVELS)
        for method in ("ml", "reml"):
            out[(case, method)] = eb.fit(d, method)
    return out


def _rel(a, b):
    return abs(a / b - 1.0)


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("case", CASES)
def test_matches_lme4(fits, lme4_lmm, case, method):
    fit, ref = fits[(case, method)], lme4_lmm[case][method]
    assert fit.converged and not fit.notes
    ours = fit.fixed_effects()
    assert list(ours) == list(ref["fixed_effects"])  # lme4's names, lme4's order
    for name, r in ref["fixed_effects"].items():
        assert _rel(ours[name]["estimate"], r["estimate"]) < 1e-6, name
        assert _rel(ours[name]["se"], r["se"]) < 1e-6, name
    comps = fit.components
    for key, value in ref["variances"].items():
        assert _rel(comps.variances[key.split("|")[1]], value) < 1e-4, key
    for key, value in ref["correlations"].items():
        assert abs(comps.correlations[key.split("|")[1]] - value) < 1e-5, key
    assert _rel(fit.sigma2, ref["sigma2"]) < 1e-6
    assert _rel(fit.loglik, ref["loglik"]) < 1e-10
    # ML: the deviance. REML: the REML criterion, -2 x lme4's logLik (lme4's deviance() of a
    # REML fit is the ML deviance at the REML estimates, a different number)
    expected = ref["deviance_or_reml"] if method == "ml" else -2.0 * ref["loglik"]
    assert _rel(fit.objective, expected) < 1e-10
    np.testing.assert_allclose(fit.theta, np.atleast_1d(ref["theta"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["hsb82_slope", "hsb82_uncorrelated", "hsb82_three_terms"])
def test_conditional_modes_and_variances_match_lme4(fits, lme4_lmm, case):
    fit, ref = fits[(case, "ml")], lme4_lmm[case]["ml"]
    assert list(fit.data.re_names) == ref["ranef_terms"]
    order = [fit.data.labels.index(lab) for lab in ref["ranef_levels"]]
    modes = np.asarray(ref["ranef_modes"], float).reshape(len(order), -1)
    sds = np.asarray(ref["ranef_sd"], float).reshape(len(order), -1)
    ours_sd = np.sqrt(np.diagonal(fit.re_cov, axis1=1, axis2=2))[order]
    assert np.all(np.abs(fit.re_mode[order] - modes) <= 1e-4 * (np.abs(modes) + sds))
    np.testing.assert_allclose(ours_sd, sds, rtol=1e-4)


def test_profiled_deviance_equals_dense_marginal_likelihood(hsb82_frame):
    """At arbitrary parameters, -2 log N(y; X beta_hat, Z G Z' + sigma^2 I) by dense algebra
    (40 schools) equals the profiled-deviance pieces; the modes equal G Z' V^-1 (y - X beta)."""
    small = hsb82_frame[hsb82_frame.school.isin(hsb82_frame.school.unique()[:40])]
    d = design.from_frame(small, "mAch ~ ses + sector + (1 + ses | school)")
    lay = Layout.of(d.blocks, d.q)
    theta = np.array([0.4, 0.05, 0.12])
    pls = solve(d.factors, lay, theta)
    s2 = pls.sigma2("ml")
    G = s2 * pls.T @ pls.T.T
    N, m = d.n_obs, d.n_groups
    Zfull = np.zeros((N, m * d.q))
    for k in range(d.q):
        Zfull[np.arange(N), d.codes * d.q + k] = d.Z[:, k]
    V = Zfull @ np.kron(np.eye(m), G) @ Zfull.T + s2 * np.eye(N)
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(d.X.T @ Vi @ d.X, d.X.T @ Vi @ d.y)
    r = d.y - d.X @ beta
    loglik = -0.5 * (N * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + r @ Vi @ r)
    np.testing.assert_allclose(pls.beta, beta, rtol=1e-10)
    assert _rel(-0.5 * pls.objective("ml"), loglik) < 1e-12
    b = (np.kron(np.eye(m), G) @ Zfull.T @ Vi @ r).reshape(m, d.q)
    np.testing.assert_allclose(pls.b, b, rtol=1e-8, atol=1e-10)
    # conditional covariance of b_j given the parameters: (Z_j'Z_j / s2 + G^-1)^-1
    j = 3
    Zj = d.Z[d.codes == j]
    np.testing.assert_allclose(
        pls.cond_cov(s2)[j], np.linalg.inv(Zj.T @ Zj / s2 + np.linalg.inv(G)), rtol=1e-10
    )


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_oneway_formula_takes_the_kernel_with_the_general_numbers(fits, method):
    """y ~ 1 + (1 | school) goes to the one-way kernel; the general kernel gives the same fit
    (tests/test_eb_oneway_kernel.py compares every field on more data sets)."""
    kernel = fits[("hsb82_oneway", method)]
    general = eb._fit_general(kernel.data, method)
    assert kernel.data.is_oneway
    assert _rel(general.beta[0], kernel.mu) < 1e-8
    assert _rel(general.sigma2, kernel.sigma2) < 1e-7
    assert _rel(general.G[0, 0], kernel.tau2) < 1e-6
    assert _rel(general.objective, kernel.objective) < 1e-12
    assert _rel(general.se[0], kernel.se[0]) < 1e-6


def test_zero_slope_variance_is_reported_as_a_boundary_fit():
    rng = np.random.default_rng(5)
    m, n = 40, 6
    g = np.repeat(np.arange(m), n)
    x = rng.standard_normal(m * n)
    y = 1.0 + 0.5 * x + rng.normal(0, 1.0, m)[g] + rng.standard_normal(m * n)
    import pandas as pd

    d = design.from_frame(pd.DataFrame({"y": y, "x": x, "g": g}), "y ~ x + (1 | g) + (0 + x | g)")
    fit = eb.fit(d, "ml")
    if fit.components.variances["x"] < 1e-8:
        assert fit.singular and any("singular" in n for n in fit.notes)
    else:
        assert not fit.singular
