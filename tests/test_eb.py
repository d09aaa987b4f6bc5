"""One-way EB (`workbench.fit.eb.fit` on `y ~ 1 + (1 | g)`, its one-way kernel) against lme4
1.1-31 (tests/reference), the DESIGN.md table, an independent brute-force profile, statsmodels'
ANOVA, and simulation truth."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import simulate
from scipy import optimize
from scipy import stats as sps

from workbench.fit import anova, eb
from workbench.fit.profile import profile
from workbench.model import design
from workbench.model.data import GroupedData, Stats
from workbench.objectives import oneway as dens

REL = 1e-6


def lmm(d: GroupedData) -> design.LMMData:
    """The one-way data as the formula model y ~ 1 + (1 | g)."""
    ones = np.ones(d.n_obs)
    return design.from_arrays(
        d.y,
        ones,
        ones,
        np.asarray(d.labels)[d.codes],
        fixed_names=["(Intercept)"],
        re_names=["(Intercept)"],
        y_name=d.y_name,
        group_name=d.group_name,
    )


@pytest.fixture(scope="module")
def fits(datasets):
    out = {(name, m): eb.fit(lmm(d), m) for name, d in datasets.items() for m in ("ml", "reml")}
    assert all(f.data.is_oneway for f in out.values())
    return out


@pytest.fixture(scope="module")
def profiles(fits):
    return {k: profile(f).to_dict() for k, f in fits.items() if k[1] == "ml"}


@pytest.mark.parametrize("name", ["dyestuff", "dyestuff2", "hsb82"])
@pytest.mark.parametrize("method", ["ml", "reml"])
def test_estimates_match_lme4(fits, lme4, name, method):
    ref, fit = lme4[name][method], fits[(name, method)]
    assert fit.mu == pytest.approx(ref["mu"], rel=REL)
    assert fit.sigma2 == pytest.approx(ref["sigma2"], rel=REL)
    assert fit.tau2 == pytest.approx(ref["tau2"], rel=REL, abs=1e-12)
    assert fit.se[0] == fit.variance_se["mu"] == pytest.approx(ref["se_mu"], rel=REL)
    # lme4's logLik: the log likelihood (ML) or -REML criterion / 2 (REML)
    assert fit.loglik == pytest.approx(ref["loglik"], rel=1e-9)
    sd = np.sqrt(fit.re_cov[:, 0, 0])
    for lab, a, s in zip(fit.data.labels, fit.re_mode[:, 0], sd, strict=True):
        assert a == pytest.approx(ref["random_effects"][lab]["mode"], rel=1e-5, abs=1e-6)
        assert s == pytest.approx(ref["random_effects"][lab]["sd"], rel=1e-5, abs=1e-6)


def test_design_table_numbers(fits):
    """DESIGN.md section 2, as published."""
    ml, reml = fits[("dyestuff", "ml")], fits[("dyestuff", "reml")]
    assert (ml.mu, ml.se[0]) == pytest.approx((1527.5, 17.6946), rel=1e-5)
    assert (ml.tau2, ml.sigma2, ml.loglik) == pytest.approx(
        (1388.3333, 2451.25, -163.66353), rel=1e-6
    )
    assert (reml.se[0], reml.tau2, reml.objective) == pytest.approx(
        (19.3834, 1764.05, 319.65428), rel=1e-6
    )
    d2 = fits[("dyestuff2", "ml")]
    assert d2.boundary and d2.tau2 == 0.0 and d2.variance_se["tau2"] is None
    assert d2.theta[0] == 0.0 and d2.optimum.on_bound == (0,) and d2.converged
    assert (d2.mu, d2.se[0], d2.sigma2, d2.loglik) == pytest.approx(
        (5.6656, 0.66699, 13.34610, -81.43652), rel=1e-5
    )
    h = fits[("hsb82", "ml")]
    assert (h.mu, h.se[0], h.tau2, h.sigma2, h.loglik) == pytest.approx(
        (12.63707, 0.243617, 8.553464, 39.14840, -23557.90511), rel=1e-6
    )


@pytest.mark.parametrize("name", ["dyestuff", "dyestuff2", "hsb82"])
def test_ml_profile_intervals_match_lme4(fits, profiles, lme4, name):
    ci, ref = profiles[(name, "ml")], lme4[name]["ml"]
    group = fits[(name, "ml")].data.group_name
    assert list(ci) == [f"sd_(Intercept)|{group}", "sigma"]
    np.testing.assert_allclose(ci["sigma"], ref["ci_sigma"], rtol=1e-3)
    np.testing.assert_allclose(ci[f"sd_(Intercept)|{group}"], ref["ci_tau"], rtol=1e-3, atol=1e-12)
    # lme4 profiles the ML likelihood for a REML fit too
    assert profile(fits[(name, "reml")]).to_dict() == ci


def test_profile_interval_end_points_by_brute_force(fits, profiles, datasets):
    """At each end point the profile deviance (re-maximised here by Nelder-Mead over mu and
    log tau^2 or log sigma^2) is exactly chi2_1(0.95) above the minimum."""
    st = Stats.of(datasets["dyestuff"])
    fit = fits[("dyestuff", "ml")]
    q = sps.chi2.ppf(0.95, 1)

    def prof(fixed: str, value: float) -> float:
        def negl(p):
            mu, lv = p
            th = (mu, value, np.exp(lv)) if fixed == "sigma" else (mu, np.exp(lv), value)
            return -dens.marginal_loglik(th, st)

        start = [fit.mu, np.log(fit.tau2 if fixed == "sigma" else fit.sigma2)]
        return -optimize.minimize(
            negl,
            start,
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000},
        ).fun

    ci = profiles[("dyestuff", "ml")]
    for end in ci["sigma"]:
        assert 2 * (fit.loglik - prof("sigma", end**2)) == pytest.approx(q, abs=1e-5)
    for end in ci["sd_(Intercept)|Batch"]:
        assert 2 * (fit.loglik - prof("tau", end**2)) == pytest.approx(q, abs=1e-5)


def test_observed_information_is_the_inverse_hessian(fits, datasets):
    fit = fits[("hsb82", "ml")]
    st = Stats.of(datasets["hsb82"])
    th = np.array([fit.mu, fit.sigma2, fit.tau2])
    step = 1e-4 * np.maximum(np.abs(th), 1.0)
    fd = np.array(
        [
            (dens.marginal_grad(th + e, st) - dens.marginal_grad(th - e, st)) / (2 * e.max())
            for e in np.diag(step)
        ]
    )
    np.testing.assert_allclose(fit.variance_cov, np.linalg.inv(-fd), rtol=1e-5)
    assert fit.variance_se_observed["tau2"] == pytest.approx(np.sqrt(fit.variance_cov[2, 2]))
    # balanced data: the lme4 SE of mu and the full observed-information SE coincide
    ml = fits[("dyestuff", "ml")]
    assert ml.se[0] == pytest.approx(ml.variance_se_observed["mu"], rel=1e-10)
    assert ml.se[0] == pytest.approx(np.sqrt(ml.sigma2 / 30 + ml.tau2 / 6), rel=1e-12)


def test_anova_matches_statsmodels(datasets):
    import pandas as pd
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    d = datasets["hsb82"]
    df = pd.DataFrame({"y": d.y, "g": np.asarray(d.labels)[d.codes]})
    tab = sm.stats.anova_lm(ols("y ~ C(g)", df).fit())
    a = anova.fit(Stats.of(d))
    assert a.msg == pytest.approx(tab["mean_sq"].iloc[0], rel=1e-10)
    assert a.mse == pytest.approx(tab["mean_sq"].iloc[1], rel=1e-10)
    assert a.f_statistic == pytest.approx(tab["F"].iloc[0], rel=1e-10)
    assert a.p_value == pytest.approx(tab["PR(>F)"].iloc[0], rel=1e-6)
    n = d.n
    assert a.n0 == pytest.approx((n.sum() - (n**2).sum() / n.sum()) / (d.n_groups - 1))
    # balanced: moments = REML (Dyestuff)
    b = anova.fit(Stats.of(datasets["dyestuff"]))
    assert (b.sigma2, b.tau2) == pytest.approx((2451.25, 1764.05), rel=1e-12)


def test_recovers_simulation_truth():
    """Averaged over 200 balanced data sets, REML (unbiased here) recovers sigma^2 and tau^2."""
    est = np.array(
        [
            [f.sigma2, f.tau2]
            for f in (
                eb.fit(lmm(simulate(20, 5, 10.0, 2.0, 1.5, seed)), "reml") for seed in range(200)
            )
        ]
    )
    mean, se = est.mean(0), est.std(0, ddof=1) / np.sqrt(len(est))
    assert abs(mean[0] - 4.0) < 4 * se[0]
    assert abs(mean[1] - 2.25) < 4 * se[1]


def test_ml_agrees_with_statsmodels_mixedlm(datasets):
    import statsmodels.api as sm

    d = datasets["dyestuff"]
    res = sm.MixedLM(d.y, np.ones((d.n_obs, 1)), groups=d.codes).fit(reml=False)
    fit = eb.fit(lmm(d), "ml")
    assert fit.sigma2 == pytest.approx(res.scale, rel=1e-4)
    assert fit.tau2 == pytest.approx(float(np.asarray(res.cov_re)[0, 0]), rel=1e-4)
