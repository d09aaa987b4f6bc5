"""The numpy densities against PyMC's own log density, finite differences, the Gaussian
marginal computed densely by scipy, and the Laplace identity of DESIGN.md."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import CASES, DATA
from scipy import stats

from workbench.model import design
from workbench.model.data import Stats
from workbench.model.priors import default_priors
from workbench.model.pymc import build_model, oneway_point, oneway_x
from workbench.objectives import oneway as dens


def _random_x(rng, m, par, scale=1.0):
    u = rng.normal(size=m) * (scale if par == "centered" else 1.0)
    return np.concatenate(
        [[rng.normal() * scale, rng.normal(np.log(scale), 0.5), rng.normal(np.log(scale), 1.0)], u]
    )


@pytest.mark.parametrize("par", dens.PARAMETRIZATIONS)
@pytest.mark.parametrize("with_priors", [False, True])
@pytest.mark.parametrize("name", ["dyestuff", "hsb82"])
def test_log_joint_equals_pymc_logp(par, with_priors, name):
    """The general PyMC model on a one-way design (its one-way kernel for the mean) has the
    one-way log joint as its density: with the priors all terms, without them the terms of y
    and of the random effects only."""
    y, g = CASES[name]
    d = design.from_frame(pd.read_csv(DATA / f"{name}.csv"), f"{y} ~ 1 + (1 | {g})")
    assert d.is_oneway
    pri = default_priors(d)
    model = build_model(d, pri, par)
    terms = None if with_priors else [model["y"], model["b_0" if par == "centered" else "z_0"]]
    logp = model.compile_logp(vars=terms, jacobian=False)
    rng = np.random.default_rng(1)
    sd = float(d.y.std())
    for _ in range(5):
        x = _random_x(rng, d.n_groups, par, sd)
        x[0] += d.y.mean()
        ours = dens.log_joint(x, d.oneway, par, pri if with_priors else None)
        point = oneway_point(x, par)
        assert ours == pytest.approx(float(logp(point)), rel=1e-10, abs=1e-8)
        np.testing.assert_array_equal(oneway_x(point, par), x)
        constrained = {k: v for k, v in point.items() if not k.endswith("_log__")}
        constrained.update(sigma=np.exp(x[1]), sd_0=np.exp(x[2]))  # as pm.find_MAP returns
        np.testing.assert_allclose(oneway_x(constrained, par), x, rtol=1e-15)


@pytest.mark.parametrize("par", dens.PARAMETRIZATIONS)
@pytest.mark.parametrize("with_priors", [False, True])
def test_gradient_and_hessian_match_finite_differences(datasets, par, with_priors):
    d = datasets["dyestuff"]
    st = Stats.of(d)
    pri = default_priors(d) if with_priors else None
    rng = np.random.default_rng(2)
    x = _random_x(rng, d.n_groups, par, 40.0)
    x[0] += 1500.0
    _, g = dens.log_joint_and_grad(x, st, par, pri)
    h = dens.log_joint_hessian(x, st, par, pri).dense()
    eye = np.eye(x.size)
    fd_g = np.array(
        [
            (
                dens.log_joint(x + 1e-6 * e, st, par, pri)
                - dens.log_joint(x - 1e-6 * e, st, par, pri)
            )
            / 2e-6
            for e in eye
        ]
    )
    fd_h = np.array(
        [
            (
                dens.log_joint_and_grad(x + 1e-5 * e, st, par, pri)[1]
                - dens.log_joint_and_grad(x - 1e-5 * e, st, par, pri)[1]
            )
            / 2e-5
            for e in eye
        ]
    )
    np.testing.assert_allclose(g, fd_g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h, fd_h, rtol=1e-6, atol=1e-6)


def test_marginal_loglik_equals_dense_multivariate_normal(datasets):
    d = datasets["dyestuff"]
    st = Stats.of(d)
    mu, s, t = 1510.0, 2000.0, 1000.0
    same = d.codes[:, None] == d.codes[None, :]
    cov = s * np.eye(d.n_obs) + t * same
    ref = stats.multivariate_normal(np.full(d.n_obs, mu), cov).logpdf(d.y)
    assert dens.marginal_loglik((mu, s, t), st) == pytest.approx(ref, rel=1e-12)


def test_marginal_derivatives_match_finite_differences(datasets):
    st = Stats.of(datasets["hsb82"])
    th = np.array([12.5, 40.0, 9.0])
    g, h = dens.marginal_grad(th, st), dens.marginal_hessian(th, st)
    steps = np.array([1e-5, 1e-4, 1e-4])
    fd_g = [
        (dens.marginal_loglik(th + e, st) - dens.marginal_loglik(th - e, st)) / (2 * e.max())
        for e in np.diag(steps)
    ]
    fd_h = [
        (dens.marginal_grad(th + e, st) - dens.marginal_grad(th - e, st)) / (2 * e.max())
        for e in np.diag(steps)
    ]
    np.testing.assert_allclose(g, fd_g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h, np.array(fd_h), rtol=1e-5, atol=1e-6)
    gr, hr = dens.restricted_grad(40.0, 9.0, st), dens.restricted_hessian(40.0, 9.0, st)
    fd_gr = [
        (dens.restricted_loglik(40 + a, 9 + b, st) - dens.restricted_loglik(40 - a, 9 - b, st))
        / 2e-4
        for a, b in ((1e-4, 0), (0, 1e-4))
    ]
    fd_hr = [
        (dens.restricted_grad(40 + a, 9 + b, st) - dens.restricted_grad(40 - a, 9 - b, st)) / 2e-4
        for a, b in ((1e-4, 0), (0, 1e-4))
    ]
    np.testing.assert_allclose(gr, fd_gr, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hr, np.array(fd_hr), rtol=1e-5, atol=1e-8)


def test_laplace_identity_links_log_joint_and_marginal(datasets):
    """l(theta) = h(theta, a_hat) + 1/2 sum log v_j + (m/2) log 2 pi (exact here)."""
    st = Stats.of(datasets["hsb82"])
    for mu, s, t in [(12.6, 39.1, 8.55), (11.0, 30.0, 2.0), (13.0, 50.0, 20.0)]:
        a, v = dens.conditional_effects(mu, s, t, st)
        x = np.concatenate([[mu, 0.5 * np.log(s), 0.5 * np.log(t)], a])
        lhs = dens.marginal_loglik((mu, s, t), st)
        rhs = dens.log_joint(x, st) + 0.5 * np.log(v).sum() + 0.5 * st.m * dens.LOG_2PI
        assert lhs == pytest.approx(rhs, rel=1e-12)


def test_arrowhead_inverse_matches_dense(datasets):
    st = Stats.of(datasets["dyestuff"])
    x = np.array([1527.5, np.log(49.0), np.log(35.0), 10.0, -20.0, 5.0, 30.0, -40.0, 0.0])
    for par in dens.PARAMETRIZATIONS:
        h = dens.log_joint_hessian(x, st, par)
        top, border, diag = h.inverse_blocks()
        inv = np.linalg.inv(h.dense())
        np.testing.assert_allclose(top, inv[:3, :3], rtol=1e-9)
        np.testing.assert_allclose(border, inv[3:, :3], rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(diag, np.diag(inv)[3:], rtol=1e-9)
        g = np.arange(x.size, dtype=float)
        np.testing.assert_allclose(h.solve(g), inv @ g, rtol=1e-8, atol=1e-12)
        assert h.is_negative_definite() == bool(np.all(np.linalg.eigvalsh(h.dense()) < 0))
