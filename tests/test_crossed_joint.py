"""The joint MAP with several grouping factors (crossed / nested random effects): the profiled
centered h-likelihood of the blocked factor and the all-parameter log joint (`log_joint.Crossed`)
against an independent dense evaluation (Z built densely, the penalised least squares solved by
numpy, the density by scipy.stats) and against PyMC's density; the sparse Hessian and its block
elimination; the classification (an interior mode on Penicillin, a collapse on Pastes); the
JSON keyed by every grouping factor."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from scipy import stats

from workbench.fit import eb, eb_blocked, joint_general, joint_map, joint_profiled
from workbench.model import design
from workbench.model.priors import default_priors
from workbench.model.pymc import build_model
from workbench.objectives import blocked
from workbench.objectives import log_joint as lj
from workbench.objectives.deviance import Layout

CROSSED = ROOT / "tests" / "reference" / "crossed_data"
PARS = ("centered", "noncentered")


def _synthetic(seed: int = 4) -> pd.DataFrame:
    """A small crossed design (a: 7 levels, b: 5 levels, 2 rows per cell) with a slope on a."""
    rng = np.random.default_rng(seed)
    a, b = np.meshgrid(np.arange(7), np.arange(5), indexing="ij")
    a, b = np.repeat(a.ravel(), 2), np.repeat(b.ravel(), 2)
    x = rng.standard_normal(a.size)
    ua = rng.multivariate_normal([0, 0], [[4.0, 0.8], [0.8, 1.0]], 7)
    y = 3 + 0.5 * x + ua[a, 0] + ua[a, 1] * x + rng.normal(0, 1.5, 5)[b]
    y = y + rng.standard_normal(a.size)
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b]})


@pytest.fixture(scope="module")
def models():
    pen = design.from_frame(
        pd.read_csv(CROSSED / "penicillin.csv"), "diameter ~ 1 + (1 | plate) + (1 | sample)"
    )
    pas = design.from_frame(pd.read_csv(CROSSED / "pastes.csv"), "strength ~ 1 + (1 | batch/cask)")
    syn = design.from_frame(_synthetic(), "y ~ x + (1 + x | a) + (1 | b)")
    return {"penicillin": pen, "pastes": pas, "synthetic": syn}


# ----------------------------------------------------------------------------------------------
# The dense reference


def dense_Z(d) -> tuple[np.ndarray, list[slice]]:
    """Z (N x Q) densely: factor after factor, level after level, the factor's columns
    (data.factor_cols) of a level together; and each factor's slice of b."""
    cols, slices, at = [], [], 0
    for k, g in enumerate(d.groupings):
        fc = list(d.factor_cols(k))
        Zk = np.zeros((d.n_obs, g.n_levels, len(fc)))
        Zk[np.arange(d.n_obs), g.codes, :] = d.Z[:, fc]
        cols.append(Zk.reshape(d.n_obs, -1))
        slices.append(slice(at, at + g.n_levels * len(fc)))
        at += g.n_levels * len(fc)
    return np.hstack(cols), slices


def dense_log_joint(d, beta, sigma2, G, modes) -> float:
    """log N(y; X beta + Z b, sigma^2 I) + sum_k sum_j log N(b_kj; 0, G_k) by scipy.stats."""
    Z, slices = dense_Z(d)
    b = np.concatenate([np.asarray(m).ravel() for m in modes])
    out = stats.norm.logpdf(d.y, d.X @ beta + Z @ b, np.sqrt(sigma2)).sum()
    for k, m in enumerate(modes):
        fc = list(d.factor_cols(k))
        out += stats.multivariate_normal(np.zeros(len(fc)), G[np.ix_(fc, fc)]).logpdf(m).sum()
    return float(out)


def dense_profile(d, theta):
    """The maximisers of the log joint over beta, b, sigma^2 at theta by dense linear algebra:
    min ||y - X beta - Z b||^2 + b'(Lambda Lambda')^-1 b, sigma^2 = r^2 / (N + Q)."""
    Z, slices = dense_Z(d)
    T = Layout.of(d.blocks, d.q).T(theta)
    P = np.zeros((Z.shape[1], Z.shape[1]))
    for k, g in enumerate(d.groupings):
        fc = list(d.factor_cols(k))
        Tk = T[np.ix_(fc, fc)]
        P[slices[k], slices[k]] = np.kron(np.eye(g.n_levels), np.linalg.inv(Tk @ Tk.T))
    W = np.hstack([d.X, Z])
    M = W.T @ W
    M[d.p :, d.p :] += P
    sol = np.linalg.solve(M, W.T @ d.y)
    beta, b = sol[: d.p], sol[d.p :]
    r2 = float(np.sum((d.y - W @ sol) ** 2) + b @ P @ b)
    s2 = r2 / (d.n_obs + Z.shape[1])
    modes = [b[slices[k]].reshape(g.n_levels, -1) for k, g in enumerate(d.groupings)]
    return beta, s2, s2 * T @ T.T, modes


# ----------------------------------------------------------------------------------------------
# The headline: the profiled objective


@pytest.mark.parametrize("name", ["penicillin", "pastes", "synthetic"])
def test_profiled_objective_is_the_maximised_dense_log_joint(models, name):
    d = models[name]
    tm = eb_blocked.terms(d)
    diag = Layout.of(d.blocks, d.q).diagonal
    rng = np.random.default_rng(1)
    prof = joint_profiled.Profile.of(d)
    for _ in range(3):
        theta = np.where(diag, np.exp(rng.normal(0, 0.7, diag.size)), rng.normal(0, 0.3, diag.size))
        beta, s2, G, modes = dense_profile(d, theta)
        ref = -2.0 * dense_log_joint(d, beta, s2, G, modes)
        assert blocked.objective(tm, theta, "joint") == pytest.approx(ref, rel=1e-10)
        pt = prof.point(theta)
        np.testing.assert_allclose(pt.beta, beta, rtol=1e-8)
        assert pt.sigma2 == pytest.approx(s2, rel=1e-9)
        for got, want in zip(pt.re_mode, modes, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-8 * np.abs(want).max())
        # a maximum over beta, b and sigma^2: moving any of them lowers the log joint
        top = dense_log_joint(d, beta, s2, G, modes)
        assert dense_log_joint(d, beta + 1e-3, s2, G, modes) < top
        assert dense_log_joint(d, beta, s2 * 1.01, G, modes) < top
        assert dense_log_joint(d, beta, s2, G, [m + 1e-3 for m in modes]) < top
        # the exact gradient in phi (log diagonal) against central differences
        phi = np.where(diag, np.log(np.where(diag, theta, 1.0)), theta)
        _, g = prof.grad(phi)
        for i in range(phi.size):
            e = np.zeros_like(phi)
            e[i] = 1e-6
            fd = (prof.f(phi + e) - prof.f(phi - e)) / 2e-6
            assert g[i] == pytest.approx(fd, rel=1e-5, abs=1e-5)


# ----------------------------------------------------------------------------------------------
# The all-parameter log joint, its gradient, Hessian and factor


def _random_x(ctx, rng, beta0):
    x = rng.normal(size=ctx.size)
    x[: ctx.p] += beta0
    return x


@pytest.mark.parametrize("par", PARS)
def test_crossed_log_joint_against_dense(models, par):
    d = models["synthetic"]
    ctx = lj.Crossed(d)
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = _random_x(ctx, rng, 3.0)
        modes = ctx.re_mode(ctx.effects(x, par))
        G, s2 = ctx.G(x), float(np.exp(2 * x[ctx.p]))
        dense = dense_log_joint(d, x[: ctx.p], s2, G, modes)
        if par == "noncentered":  # b = L z: the density of z differs by sum_k n_k log|L_k|
            dense += float(ctx.diag_levels @ x[ctx.log_diag[1:]])
        assert lj.log_joint(x, ctx, par, None) == pytest.approx(dense, rel=1e-10)
        np.testing.assert_allclose(ctx.from_modes(modes), ctx.effects(x, par))


def test_crossed_log_joint_with_priors_is_pymc_logp(models):
    """With priors: PyMC's density of its value variables, without Jacobians (one compile,
    non-centered: the centered form shares the prior terms and is checked densely above)."""
    d = models["synthetic"]
    ctx, pri = lj.Crossed(d), default_priors(d)
    logp = build_model(d, pri, "noncentered").compile_logp(jacobian=False)
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = _random_x(ctx, rng, 3.0)
        ours = lj.log_joint(x, ctx, "noncentered", pri)
        assert ours == pytest.approx(float(logp(lj.pymc_point(x, ctx, "noncentered"))), rel=1e-10)


@pytest.mark.parametrize("par", PARS)
def test_crossed_gradient_hessian_and_factor(models, par):
    d = models["synthetic"]
    ctx, pri = lj.Crossed(d), default_priors(d)
    x = _random_x(ctx, np.random.default_rng(3), 3.0)
    _, g = lj.log_joint_and_grad(x, ctx, par, pri)
    eye = np.eye(x.size)
    fd = np.array(
        [
            (lj.log_joint(x + 1e-6 * e, ctx, par, pri) - lj.log_joint(x - 1e-6 * e, ctx, par, pri))
            / 2e-6
            for e in eye
        ]
    )
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)
    H = lj.hessian(x, ctx, par, pri)
    assert isinstance(H, lj.SparseArrow)
    Hfd = np.array(
        [
            (
                lj.log_joint_and_grad(x + 1e-6 * e, ctx, par, pri)[1]
                - lj.log_joint_and_grad(x - 1e-6 * e, ctx, par, pri)[1]
            )
            / 2e-6
            for e in eye
        ]
    )
    np.testing.assert_allclose(H.dense(), 0.5 * (Hfd + Hfd.T), rtol=1e-5, atol=1e-4)
    # at the EB point the Hessian is negative definite; both factorisations solve -H v = g
    e = eb.fit(d, "ml")
    b = ctx.from_modes(e.modes)
    y = joint_general.point(ctx, par, e.beta, e.sigma2, e.G, b, 1e-3)
    if par == "noncentered":
        b = ctx.from_modes(e.modes)
        for k in range(len(ctx.sizes)):
            ctx.put(b, k, ctx.block(b, k) @ np.linalg.inv(ctx.chol(y, k)).T)
        y[ctx.u_start :] = b
    H = lj.hessian(y, ctx, par, pri)
    dense = np.linalg.solve(-H.dense(), g)
    F = lj.NegFactor.of(H)
    assert isinstance(F, lj.SparseNegFactor)
    np.testing.assert_allclose(F.solve(g), dense, rtol=1e-8, atol=1e-10)
    # not negative definite: no factor (a Hessian with a positive direction in sigma)
    bad = lj.SparseArrow(
        A=H.A + np.diag(np.where(np.arange(H.A.shape[0]) == ctx.p, 1e6, 0.0)), B=H.B, D=H.D
    )
    assert lj.NegFactor.of(bad) is None
    cov = np.linalg.inv(-H.dense())[: ctx.u_start, : ctx.u_start]
    np.testing.assert_allclose(F.global_cov(), cov, rtol=1e-8)


# ----------------------------------------------------------------------------------------------
# The estimator: classification, agreement of kernels, JSON


@pytest.fixture(scope="module")
def penicillin_fits(models):
    d = models["penicillin"]
    e = eb.fit(d, "ml")
    return d, e, joint_map.fit(d, e, n_starts=4, seed=1)


def test_interior_mode_with_several_factors(penicillin_fits):
    d, e, jm = penicillin_fits
    assert jm.status == "interior" and jm.best.newton_decrement < 1e-8
    assert jm.log_joint == pytest.approx(
        dense_log_joint(d, jm.beta, jm.sigma2, jm.G, jm.modes), rel=1e-12
    )
    # the profiled mode is a stationary point of the all-parameter log joint
    ctx = lj.Crossed(d)
    x = joint_general.exact_point(ctx, "centered", jm.best)
    v, g = lj.log_joint_and_grad(x, ctx, "centered", None)
    assert v == pytest.approx(jm.log_joint, rel=1e-12)
    assert np.abs(g).max() < 1e-4
    # the all-parameter kernel reaches the same mode
    gen = joint_map.fit(d, e, n_starts=2, seed=1, _kernel="general")
    assert gen.status == "interior"
    np.testing.assert_allclose(gen.theta, jm.theta, rtol=1e-5)
    assert gen.log_joint == pytest.approx(jm.log_joint, rel=1e-9)
    # the joint mode's sigma^2 is below ML's (the h-likelihood divides by N + Q)
    assert jm.sigma2 < e.sigma2
    # mode_covs: (Z'Z / sigma^2 + G^-1)^-1, diagonal blocks by level
    Z, slices = dense_Z(d)
    prec = np.diag(
        np.concatenate([np.full(g.n_levels, 1 / jm.G[k, k]) for k, g in enumerate(d.groupings)])
    )
    full = np.linalg.inv(Z.T @ Z / jm.sigma2 + prec)
    for k, sl in enumerate(slices):
        np.testing.assert_allclose(jm.mode_covs[k][:, 0, 0], np.diag(full[sl, sl]), rtol=1e-9)


def test_kernels_agree_on_a_slope_model():
    """Random slopes on one factor and a nested factor (lme4's Pixel): the profiled and the
    all-parameter kernels find the same centered h-likelihood mode."""
    d = design.from_frame(
        pd.read_csv(CROSSED / "pixel.csv"),
        "pixel ~ day + day2 + Side + (1 + day | Dog) + (1 | Dog:Side)",
    )
    e = eb.fit(d, "ml")
    prof = joint_map.fit(d, e, n_starts=2, seed=3)
    gen = joint_map.fit(d, e, n_starts=1, seed=3, _kernel="general")
    assert prof.status == gen.status == "interior"
    assert gen.log_joint == pytest.approx(prof.log_joint, rel=1e-10)
    np.testing.assert_allclose(gen.theta, prof.theta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gen.beta, prof.beta, rtol=1e-6)
    for a, b in zip(gen.modes, prof.modes, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())
    assert prof.log_joint == pytest.approx(
        dense_log_joint(d, prof.beta, prof.sigma2, prof.G, prof.modes), rel=1e-12
    )
    assert d.factor_names == ("Dog:Side", "Dog")  # lme4's order: by number of levels
    assert [m.shape for m in prof.modes] == [(20, 1), (10, 2)]
    assert set(prof.to_dict()["variance_components"]["Dog"]["correlations"]) == {"(Intercept):day"}


def test_collapse_with_several_factors(models):
    d = models["pastes"]
    e = eb.fit(d, "ml")
    jm = joint_map.fit(d, e, n_starts=3, seed=1)
    assert jm.status == "no_interior_mode"
    assert set(jm.counts()) <= {"collapse", "boundary"} and jm.counts().get("collapse")
    assert jm.best is None and jm.modes is None and jm.mode_covs is None
    assert "rises without bound as a random-effect variance -> 0" in jm.message
    out = jm.to_dict()
    assert "fixed_effects" not in out and "random_effects" not in out and "theta" not in out
    json.dumps(out, allow_nan=False)


def test_json_keyed_by_every_factor(penicillin_fits):
    d, e, jm = penicillin_fits
    out = json.loads(json.dumps(jm.to_dict(), allow_nan=False))
    assert list(out["variance_components"]) == ["plate", "sample"]
    assert list(out["ci_hessian"]["variance_components"]) == ["plate", "sample"]
    for k, g in enumerate(d.groupings):
        re = out["random_effects"][g.name]
        assert list(re) == list(g.labels)
        first = re[g.labels[0]]["(Intercept)"]
        assert first["mode"] == pytest.approx(float(jm.modes[k][0, 0]))
        assert first["sd"] == pytest.approx(float(np.sqrt(jm.mode_covs[k][0, 0, 0])))
        v = out["variance_components"][g.name]["variances"]["(Intercept)"]
        assert v == pytest.approx(float(jm.G[k, k]))
        lo, hi = out["ci_hessian"]["variance_components"][g.name]["variances"]["(Intercept)"]
        assert lo < v < hi
    assert set(jm.components_by_factor) == {"plate", "sample"}
    with pytest.raises(ValueError):
        jm.re_mode  # noqa: B018 (one grouping factor only)


def test_one_factor_record_keeps_its_shape():
    """One grouping factor: `modes` / `mode_covs` are the one-tuples of re_mode / re_cov and
    the JSON has no per-factor random effects (unchanged)."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(20), 10)
    y = rng.normal(0, 3, 20)[g] + rng.normal(size=200)
    d = design.from_frame(pd.DataFrame({"y": y, "g": [f"g{i}" for i in g]}), "y ~ 1 + (1 | g)")
    jm = joint_map.fit(d, eb.fit(d, "ml"), n_starts=2)
    assert jm.status == "interior"
    np.testing.assert_array_equal(jm.modes[0], jm.re_mode)
    np.testing.assert_array_equal(jm.mode_covs[0], jm.re_cov)
    out = jm.to_dict()
    assert "random_effects" not in out and list(out["variance_components"]) == ["g"]
