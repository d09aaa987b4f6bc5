"""The exact posterior of the one-way model (`workbench.fit.exact_oneway`): its log density
against a brute-force multivariate normal, its grid against scipy's adaptive quadrature, its
modes (a zero derivative inside, the boundary at 0, one against a mode found by scipy's quad),
MCMC's draws against its exact draws, the JSON block and the report's figure."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from boundary_cases import attach, posterior
from conftest import DATA
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

import workbench
from workbench.fit.exact_oneway import QUANTITIES, exact_posterior, log_posterior
from workbench.jsonsafe import validate
from workbench.model import design
from workbench.model.data import Stats, load_csv
from workbench.model.priors import Priors, default_priors
from workbench.present import report

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

CASES = {
    "dyestuff": ("Yield", "Batch"),
    "dyestuff2": ("Yield", "Batch"),
    "small_groups": ("y", "group"),
}


def oneway_priors(mu_loc, mu_scale, sigma_scale, tau_scale) -> Priors:
    return Priors(
        names=("(Intercept)",),
        re_names=("(Intercept)",),
        beta_loc=(mu_loc,),
        beta_scale=(mu_scale,),
        sigma_scale=sigma_scale,
        sd_scale=(tau_scale,),
    )


@pytest.fixture(scope="module")
def exact() -> dict:
    """(data, priors, exact posterior) of the shipped one-way cases, default priors."""
    out = {}
    for name, cols in CASES.items():
        d = design.from_grouped(load_csv(DATA / f"{name}.csv", *cols))
        pri = default_priors(d)
        out[name] = (d, pri, exact_posterior(d.oneway, pri))
    return out


# ----------------------------------------------------------------------------------------------
# (a) the log density: mu and the group effects integrated analytically = the N-vector's normal


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=2, max_size=5),
    seed=st.integers(0, 2**31),
    mu_loc=st.floats(-3, 3),
    scales=st.tuples(st.floats(0.5, 20), st.floats(0.3, 10), st.floats(0.3, 10)),
    sd=st.tuples(st.floats(0.05, 5), st.floats(0.01, 5)),
)
def test_log_density_is_the_marginal_normal_of_y(sizes, seed, mu_loc, scales, sd):
    """log p(y, sigma, tau) = log N(y; mu_loc 1, sigma^2 I + tau^2 ZZ' + s0^2 11') + the two
    half-normal log priors, exactly (constants included), groups of size 1 allowed."""
    rng = np.random.default_rng(seed)
    n = np.array(sizes)
    codes = np.repeat(np.arange(n.size), n)
    y = rng.normal(2.0, 1.5, size=codes.size)
    sigma, tau = sd
    pri = oneway_priors(mu_loc, *scales)
    Z = (codes[:, None] == np.arange(n.size)[None, :]).astype(float)
    cov = sigma**2 * np.eye(y.size) + tau**2 * Z @ Z.T + scales[0] ** 2
    ref = (
        stats.multivariate_normal(np.full(y.size, mu_loc), cov).logpdf(y)
        + stats.halfnorm(scale=scales[1]).logpdf(sigma)
        + stats.halfnorm(scale=scales[2]).logpdf(tau)
    )
    got = log_posterior(Stats.of_arrays(y, codes, n.size), pri, sigma, tau)
    assert got == pytest.approx(ref, rel=1e-10, abs=1e-9)


def test_log_density_keeps_its_digits_at_1e9():
    """Data at 1e9 + noise of sd 1: the same density as the data shifted to 0 (the prior
    shifted with them), to the digits the data themselves carry."""
    rng = np.random.default_rng(4)
    codes = np.repeat(np.arange(5), [1, 3, 2, 4, 3])
    y = rng.normal(size=codes.size) + rng.normal(size=5)[codes]
    pri0 = oneway_priors(0.5, 10.0, 2.0, 2.0)
    pri9 = oneway_priors(1e9 + 0.5, 10.0, 2.0, 2.0)
    sig = np.array([0.3, 1.0, 2.5])
    tau = np.array([0.01, 0.8, 3.0])
    at0 = log_posterior(Stats.of_arrays(y, codes, 5), pri0, sig[:, None], tau[None, :])
    at9 = log_posterior(Stats.of_arrays(y + 1e9, codes, 5), pri9, sig[:, None], tau[None, :])
    np.testing.assert_allclose(at9, at0, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# (b) the grid against scipy's adaptive quadrature


def scalar_posterior(stats: Stats, pri: Priors):
    """(sigma, tau) -> (log p(y, sigma, tau), E[mu | sigma, tau, y], sd[mu | sigma, tau, y]) in
    plain Python, the closed form written out again with the groups pooled by size (fast
    enough for dblquad's point-by-point calls)."""
    n, ybar = np.asarray(stats.n, float), np.asarray(stats.ybar, float)
    ref = float(ybar.mean())
    sizes = sorted(set(n.tolist()))
    pools = [
        (
            k,
            float(np.sum(n == k)),
            float(np.sum(ybar[n == k] - ref)),
            float(np.sum((ybar[n == k] - ref) ** 2)),
        )
        for k in sizes
    ]
    N, m, W = float(n.sum()), n.size, float(np.sum(stats.wss))
    m0, s0, ss, ts = pri.mu_loc - ref, pri.mu_scale, pri.sigma_scale, pri.tau_scale
    const = -0.5 * N * math.log(2 * math.pi) - 0.5 * float(np.log(n).sum())
    const += math.log(2 / math.pi) - math.log(ss) - math.log(ts)

    def f(sigma, tau):
        if sigma <= 0:
            return -math.inf, 0.0, 1.0
        s2, t2 = sigma * sigma, tau * tau
        P, h, sq, logv = 1 / s0**2, m0 / s0**2, m0 * m0 / s0**2, 0.0
        for k, cnt, s1, s2k in pools:
            w = 1 / (t2 + s2 / k)
            P += cnt * w
            h += w * s1
            sq += w * s2k
            logv -= cnt * math.log(w)
        lp = const - 0.5 * (N - m) * math.log(s2) - 0.5 * W / s2 - 0.5 * logv
        lp += -0.5 * math.log(s0**2 * P) - 0.5 * (sq - h * h / P)
        lp -= 0.5 * s2 / ss**2 + 0.5 * t2 / ts**2
        return lp, ref + h / P, 1 / math.sqrt(P)

    return f


def test_grid_against_dblquad(exact):
    """Dyestuff: the evidence, the means of sigma, tau, tau^2 and mu, P(tau <= median) and
    P(mu <= median) by scipy.integrate.dblquad over (sigma, tau)."""
    d, pri, e = exact["dyestuff"]
    f = scalar_posterior(d.oneway, pri)
    c = e.log_evidence
    top = (12 * pri.sigma_scale, 12 * pri.tau_scale)  # HalfNormal tails beyond: < e^-70

    def integral(g, tau_hi=top[1]):
        def h(sigma, tau):
            lp, xbar, sd = f(sigma, tau)
            return g(sigma, tau, xbar, sd) * math.exp(lp - c) if lp > -math.inf else 0.0

        return integrate.dblquad(h, 0.0, tau_hi, 0.0, top[0], epsabs=1e-12, epsrel=1e-10)[0]

    assert integral(lambda *a: 1.0) == pytest.approx(1.0, abs=1e-9)
    s = e.summaries
    assert integral(lambda s, t, *a: s) == pytest.approx(s["sigma"].mean, rel=1e-8)
    assert integral(lambda s, t, *a: t) == pytest.approx(s["tau"].mean, rel=1e-8)
    assert integral(lambda s, t, *a: t * t) == pytest.approx(s["tau2"].mean, rel=1e-8)
    assert integral(lambda *a: 1.0, s["tau"].median) == pytest.approx(0.5, abs=1e-8)
    assert integral(lambda s, t, xbar, sd: xbar) == pytest.approx(s["mu"].mean, rel=1e-10)
    med = s["mu"].median
    p = integral(lambda s, t, xbar, sd: 0.5 * math.erfc((xbar - med) / (sd * math.sqrt(2))))
    assert p == pytest.approx(0.5, abs=1e-8)


# ----------------------------------------------------------------------------------------------
# (c) modes and intervals


INTERIOR = {
    "dyestuff": ("sigma", "sigma2", "log_sigma", "tau", "log_tau", "mu"),
    "dyestuff2": ("sigma", "sigma2", "log_sigma", "log_tau", "mu"),
    "small_groups": ("sigma", "sigma2", "log_sigma", "tau", "log_tau", "mu"),
}


def _logpdf(e, name, x):
    if name == "mu":
        return np.log(e.mu_marginal.pdf(np.asarray(x) - e.kernel.ref))
    return e.logpdf(name, x)


@pytest.mark.parametrize("case", CASES)
def test_interior_modes_are_stationary(exact, case):
    """At every interior mode the exact marginal log density has derivative 0 (the mode is
    within 1e-5 posterior sds of the stationary point) and curves down; likewise at tau2's
    interior local mode where there is one."""
    _, _, e = exact[case]
    names = [(n, e.summaries[n].mode) for n in INTERIOR[case]]
    if e.summaries["tau2"].local_mode is not None:
        names.append(("tau2", e.summaries["tau2"].local_mode))
    for name, m in names:
        assert not e.summaries[name].boundary or name == "tau2"
        h = 1e-3 * e.summaries[name].sd
        f = _logpdf(e, name, m + h * np.array([-2.0, -1.0, 0.0, 1.0, 2.0]))
        d1 = (8 * (f[3] - f[1]) - (f[4] - f[0])) / (12 * h)
        d2 = (f[3] - 2 * f[2] + f[1]) / h**2
        assert d2 < 0, name
        assert abs(d1) / math.sqrt(-d2) < 1e-5, (name, d1, d2)


def test_boundary_modes(exact):
    """tau^2's density is unbounded at 0: its mode is 0 in every case. Dyestuff2's tau has its
    largest density at 0 (and no interior local mode of tau^2); the others have interior tau
    modes and tau^2 local modes. HDIs starting at 0 exactly where the density falls from 0."""
    for _, _, e in exact.values():
        s = e.summaries
        assert s["tau2"].mode == 0.0 and s["tau2"].boundary and "tau2" in e.boundary_modes
        assert not s["sigma"].boundary and not s["sigma2"].boundary and not s["log_tau"].boundary
        assert e.logpdf("tau2", 0.0)[0] == np.inf
        assert e.logpdf("sigma", 0.0)[0] == -np.inf  # N > m: sigma cannot reach 0
    s = exact["dyestuff2"][2].summaries
    e2 = exact["dyestuff2"][2]
    assert s["tau"].mode == 0.0 and e2.boundary_modes == ["tau", "tau2"]
    assert s["tau2"].local_mode is None and s["tau"].hdi[0] == 0.0 and s["tau2"].hdi[0] == 0.0
    at0 = e2.logpdf("tau", 0.0)[0]
    assert np.isfinite(at0)
    assert np.all(e2.logpdf("tau", np.linspace(1e-6, 5, 200)) < at0)
    for case in ("dyestuff", "small_groups"):
        s = exact[case][2].summaries
        assert s["tau"].mode > 0 and s["tau2"].local_mode > 0
    assert exact["small_groups"][2].summaries["tau2"].hdi[0] > 0


@pytest.mark.parametrize("name", ["tau", "sigma2"])
def test_mode_against_scipy_quad(exact, name):
    """small_groups: the mode of tau and of sigma^2 from marginal densities computed by
    scipy.integrate.quad over the other SD, maximised by Brent's method (relative 1e-6)."""
    _, _, e = exact["small_groups"]
    k = e.kernel
    m0 = e.summaries[name].mode

    def neg_log_marginal(v):
        if name == "tau":
            f = lambda s: math.exp(float(k.log_density(s, v)) - e.log_evidence)  # noqa: E731
            return -math.log(integrate.quad(f, 0, np.inf, epsrel=1e-13, limit=200)[0])
        sigma = math.sqrt(v)
        f = lambda t: math.exp(float(k.log_density(sigma, t)) - e.log_evidence)  # noqa: E731
        dens = integrate.quad(f, 0, np.inf, epsrel=1e-13, limit=200)[0] / (2 * sigma)
        return -math.log(dens)

    r = optimize.minimize_scalar(neg_log_marginal, bracket=(0.9 * m0, m0, 1.1 * m0), tol=1e-12)
    assert r.x == pytest.approx(m0, rel=1e-6)


def test_hdi_is_the_equal_density_interval(exact):
    """Every HDI holds hdi_prob (by scipy's quad over the exact marginal of the log SD); an
    interior one has equal density at both ends, one from 0 a density falling from 0."""
    for _, _, e in exact.values():
        for name in ("sigma", "sigma2", "log_sigma", "tau", "tau2", "log_tau"):
            lo, hi = e.summaries[name].hdi
            log_name = "log_sigma" if "sigma" in name else "log_tau"
            power = 2 if name.endswith("2") else (0 if name.startswith("log") else 1)
            if lo == 0.0:  # from the grid's end (the mass below it < 1e-14)
                x = [e.axes[0 if "sigma" in name else 1].x[0], math.log(hi) / power]
                assert e.logpdf(name, 0.0)[0] >= e.logpdf(name, hi)[0]
            else:
                x = [math.log(v) / power if power else v for v in (lo, hi)]
                f_lo, f_hi = e.logpdf(name, [lo, hi])
                assert f_lo == pytest.approx(f_hi, abs=1e-6), name
            mass = integrate.quad(
                lambda t, e=e, q=log_name: math.exp(e.logpdf(q, t)[0]),
                *x,
                epsabs=1e-12,
                epsrel=1e-10,
                limit=200,
            )[0]
            assert mass == pytest.approx(e.hdi_prob, abs=1e-8), name


def test_shift_to_1e9_and_groups_of_one():
    """Data at 1e9 + small noise with groups of size 1: every summary is the shifted data's
    (mu's shifted by 1e9), to 1e-6 of a posterior sd."""
    rng = np.random.default_rng(7)
    codes = np.repeat(np.arange(6), [1, 2, 3, 5, 1, 4])
    y = 2.0 * rng.normal(size=6)[codes] + rng.normal(size=codes.size)
    pri0 = oneway_priors(0.0, 20.0, 5.0, 5.0)
    pri9 = oneway_priors(1e9, 20.0, 5.0, 5.0)
    e0 = exact_posterior(Stats.of_arrays(y, codes, 6), pri0)
    e9 = exact_posterior(Stats.of_arrays(y + 1e9, codes, 6), pri9)
    for q in QUANTITIES:
        a, b = e0.summaries[q], e9.summaries[q]
        shift = 1e9 if q == "mu" else 0.0
        tol = 1e-6 * a.sd
        for key in ("mode", "mean", "median"):
            assert getattr(b, key) - shift == pytest.approx(getattr(a, key), abs=tol), (q, key)
        assert np.allclose(np.array(b.hdi) - shift, a.hdi, atol=tol, rtol=0), q
    draws = e9.draws(500, np.random.default_rng(0))
    assert draws["theta"].shape == (500, 6) and np.all(np.abs(draws["theta"] - 1e9) < 50)


# ----------------------------------------------------------------------------------------------
# (d) MCMC against the exact posterior


def test_mcmc_draws_match_exact_draws(exact):
    """Dyestuff, 2 chains x 500 draws (fixed seed: not flaky): sigma, tau, mu and two group
    means against 4000 exact draws by two-sample KS tests, the MCMC draws thinned to about
    their effective sample size (KS assumes independent draws)."""
    from workbench.fit import mcmc

    d, pri, e = exact["dyestuff"]
    post = mcmc.fit(d, pri, mcmc.McmcSettings(chains=2, draws=500, tune=500, seed=20261122))
    ref = e.draws(4000, np.random.default_rng(1))
    thin = max(1, math.ceil(1000 / post.diagnostics["ess_bulk_min"]))
    pairs = [(q, post.draws(q), ref[q]) for q in ("sigma", "tau", "mu")]
    pairs += [(f"theta[{j}]", post.draws("group_mean")[:, j], ref["theta"][:, j]) for j in (0, 5)]
    for name, x, y in pairs:
        p = stats.ks_2samp(x[::thin], y).pvalue
        assert p > 1e-3, (name, p)
    # the exact draws themselves reproduce the exact summaries
    big = e.draws(20000, np.random.default_rng(2))
    for q in ("sigma", "tau2", "mu"):
        s = e.summaries[q]
        assert big[q].mean() == pytest.approx(s.mean, abs=5 * s.sd / math.sqrt(20000))


# ----------------------------------------------------------------------------------------------
# (e) the JSON block


def test_json_block_for_oneway_and_not_for_formula_models():
    c = workbench.compare(
        DATA / "dyestuff2.csv",
        "Yield",
        "Batch",
        methods=["eb-ml", "joint-map+priors:centered"],
        n_starts=2,
        n_jobs=1,
    )
    out = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    validate(out)
    block = out["exact_posterior"]
    assert set(QUANTITIES) <= set(block) and block["boundary_modes"] == ["tau", "tau2"]
    assert block["priors"] == c.priors.describe() and block["hdi_prob"] == 0.94
    assert block["tau"]["mode"] == 0.0 and block["tau"]["hdi"][0] == 0.0
    bad = {k: v for k, v in out.items() if k != "exact_posterior"}
    with pytest.raises(Exception, match="exact_posterior"):
        validate(bad)
    # without priors in the run: none
    c0 = workbench.compare(DATA / "dyestuff2.csv", "Yield", "Batch", methods=["eb-ml"])
    assert c0.exact_posterior is None and "exact_posterior" not in c0.to_dict()
    # a formula model run with priors: none, and the schema refuses one
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(8), 5)
    frame = pd.DataFrame({"g": g, "x": rng.normal(size=40)})
    frame["y"] = frame["x"] + rng.normal(size=8)[g] + rng.normal(size=40)
    cf = workbench.compare(
        frame,
        formula="y ~ x + (1 | g)",
        methods=["eb-ml", "joint-map+priors:centered"],
        n_starts=1,
        n_jobs=1,
    )
    assert cf.exact_posterior is None
    rec = json.loads(json.dumps(cf.to_dict(), allow_nan=False))
    assert "exact_posterior" not in rec
    validate(rec)
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's ValidationError
        validate({**rec, "exact_posterior": block})


# ----------------------------------------------------------------------------------------------
# (f) the report


@pytest.fixture(scope="module")
def comparisons() -> dict:
    """EB, three joint MAP variants and made-up MCMC draws (no sampler) of the three cases."""
    out = {}
    for name, (y, g) in CASES.items():
        c = workbench.compare(
            DATA / f"{name}.csv",
            y,
            g,
            methods=[
                "eb-ml",
                "eb-reml",
                "joint-map:centered",
                "joint-map+priors:centered",
                "joint-map+priors:noncentered",
            ],
            n_starts=2,
            n_jobs=1,
            seed=5,
        )
        out[name] = attach(c, posterior(c.data))
    return out


@pytest.mark.parametrize("case", CASES)
def test_report_draws_the_exact_figure(comparisons, case):
    """The report lists the figure and it draws (the robust cases: no interior centered joint
    mode, tau's mode at 0 with EB's tau^2 = 0, small groups); its marks and sentences."""
    import matplotlib.pyplot as plt

    c = comparisons[case]
    assert "exact" in [i for i, _, _ in report.figures(c, None)]
    ((_, _, build),) = report.exact_figures(c)
    fig = build()
    fig.canvas.draw()  # rendered (the report's PNG adds only the encoding)
    plt.close(fig)
    text = " ".join(report.exact_sentences(c))
    panels = {p.title.split(":")[0]: p for p in report.exact_panels(c)}
    marks = dict(panels["τ² (variance)"].marks)
    assert marks["exact mode"] == 0.0 and "MCMC mode (half-sample)" in marks
    if case == "dyestuff":  # no centered joint mode: said, and none drawn
        assert not any(curves_interior(c, par="centered"))
        assert "centered joint MAP has no interior mode" in text
        assert "joint MAP (h-likelihood, centered)" not in marks
    if case == "dyestuff2":  # tau's mode at 0, EB's tau^2 = 0: log tau at -inf, said
        assert "τ 0 (a boundary mode" in text
        assert dict(panels["log τ (log of the SD)"].marks)["EB-ML"] is None
        assert "EB-ML: log τ at −∞" in panels["log τ (log of the SD)"].note
    if case == "small_groups":  # interior centered joint mode below the marginal modes
        m = re.search(r"its σ² \(([\d.]+)\) is ([\d.]+)% below", text)
        assert m is not None and float(m.group(2)) > 10


def curves_interior(c, par: str):
    from workbench.present.curves import interior

    return [interior(r) for (p, _), r in c.joint_maps.items() if p == par]


def test_report_has_the_section(comparisons):
    """The section (sentences and table) is rendered; figures are drawn in the test above."""
    html = report.render(comparisons["small_groups"], command="test", fragment=True)
    assert '<section id="exact-posterior">' in html and "interior local mode" in html
    assert html.count("<tr><th>τ²</th>") == 1 and "(boundary)" in html
