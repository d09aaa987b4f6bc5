"""The PyMC posterior with several grouping factors (workbench/model/pymc.py, fit/mcmc.py).

* `build_model`'s log density (`compile_logp(jacobian=False)`) at random points equals the log
  joint plus the priors written out with scipy.stats from the CSV columns (not from LMMData's
  codes): Penicillin's crossed intercepts and a correlated slope block on one factor crossed
  with an intercept on another, in both parametrizations;
* the record from made-up draws of the slope model (its prior, two chains, odd labels) and a
  small nutpie run of the (default) collapsed model on Pastes' nested factors carry the JSON
  keys per factor, consistent with the draws; one chain and NetCDF output do not fail.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from workbench.fit import mcmc
from workbench.model import design
from workbench.model.priors import make_priors
from workbench.model.pymc import build_model

CROSSED = Path(__file__).resolve().parent / "reference" / "crossed_data"
SUMMARY_KEYS = {"mean", "median", "sd", "hdi", "mode"}


def _finite_summary(s: dict) -> bool:
    return set(s) >= SUMMARY_KEYS and all(
        math.isfinite(v) for v in (s["mean"], s["median"], s["sd"], s["mode"], *s["hdi"])
    )


@pytest.fixture(scope="module")
def penicillin():
    df = pd.read_csv(CROSSED / "penicillin.csv")
    return df, design.from_frame(df, "diameter ~ 1 + (1 | plate) + (1 | sample)")


@pytest.fixture(scope="module")
def slopes():
    """y ~ x + (1 + x | a) + (1 | b) with a (8 levels) crossed with b (5), odd labels."""
    rng = np.random.default_rng(7)
    a = np.repeat(np.arange(8), 10)
    b = np.tile(np.arange(5), 16)
    x = rng.standard_normal(a.size)
    u = rng.multivariate_normal([0, 0], [[2.0, 0.4], [0.4, 0.5]], 8)
    v = rng.standard_normal(5)
    y = 1 + 0.5 * x + u[a, 0] + u[a, 1] * x + v[b] + 0.7 * rng.standard_normal(a.size)
    df = pd.DataFrame({"y": y, "x": x, "a": [f"s {j}:ü" for j in a], "b": [f"B/{j}" for j in b]})
    return df, design.from_frame(df, "y ~ x + (1 + x | a) + (1 | b)")


def _levels(d, df, factor: str) -> np.ndarray:
    """Row -> level index of the model's coords, from the CSV column itself."""
    k = d.factor_names.index(factor)
    return np.array([d.groupings[k].labels.index(str(v)) for v in df[factor]])


def _halfnormal(x, scale) -> float:
    return float(stats.halfnorm.logpdf(x, scale=scale))


def _lkj_chol_2(L: np.ndarray, scales, eta: float) -> float:
    """Log density of a 2 x 2 Cholesky factor L of a covariance with HalfNormal SDs and an
    LKJ(eta) correlation r ((r + 1) / 2 ~ Beta(eta, eta)): the density of (sd_1, sd_2, r) over
    the Jacobian sd_2 / sqrt(1 - r^2) of (sd_1, sd_2, r) -> (L_11, L_21, L_22)."""
    sd1, sd2 = L[0, 0], math.hypot(L[1, 0], L[1, 1])
    r = L[1, 0] / sd2
    dens = (
        _halfnormal(sd1, scales[0])
        + _halfnormal(sd2, scales[1])
        + stats.beta.logpdf((r + 1) / 2, eta, eta)
        - math.log(2)
    )
    return float(dens + 0.5 * math.log1p(-(r**2)) - math.log(sd2))


@pytest.mark.parametrize("par", ["centered", "noncentered"])
def test_penicillin_logp_is_the_log_joint_plus_priors(penicillin, par):
    df, d = penicillin
    pri = make_priors(d, {})
    logp = build_model(d, pri, par).compile_logp(jacobian=False)
    assert d.factor_names == ("plate", "sample")  # 24 plates before 6 samples (lme4's order)
    rows = {f: _levels(d, df, f) for f in d.factor_names}
    rng = np.random.default_rng(3)
    for _ in range(3):
        beta = np.array([23.0 + rng.normal()])
        sigma, sds = np.exp(rng.normal(-0.5, 0.3)), np.exp(rng.normal(0.0, 0.5, size=2))
        u = [rng.standard_normal((g.n_levels, 1)) for g in d.groupings]
        b = u if par == "centered" else [u[k] * sds[k] for k in range(2)]
        point = {"beta": beta, "sigma_log__": np.log(sigma)}
        for k in range(2):
            point[f"sd_{k}_log__"] = np.log(sds[k])
            point[f"{'b' if par == 'centered' else 'z'}_{k}"] = u[k]
        mean = beta[0] + b[0][rows["plate"], 0] + b[1][rows["sample"], 0]
        want = stats.norm.logpdf(df["diameter"], mean, sigma).sum()
        for k in range(2):
            want += stats.norm.logpdf(u[k], 0, sds[k] if par == "centered" else 1.0).sum()
            want += _halfnormal(sds[k], pri.sd_scale[k])
        want += stats.norm.logpdf(beta, pri.beta_loc, pri.beta_scale).sum()
        want += _halfnormal(sigma, pri.sigma_scale)
        assert float(logp(point)) == pytest.approx(want, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("par", ["centered", "noncentered"])
def test_slope_model_logp_is_the_log_joint_plus_priors(slopes, par):
    df, d = slopes
    assert [(blk.names, blk.factor) for blk in d.blocks] == [
        (("(Intercept)", "x"), 0),
        (("(Intercept)",), 1),
    ]
    pri = make_priors(d, {"cor": "LKJ(3)"})
    logp = build_model(d, pri, par).compile_logp(jacobian=False)
    ra, rb = _levels(d, df, "a"), _levels(d, df, "b")
    x, y = df["x"].to_numpy(), df["y"].to_numpy()
    rng = np.random.default_rng(5)
    for _ in range(3):
        beta = rng.normal(size=2)
        sigma, sd_b = np.exp(rng.normal(-0.3, 0.2)), np.exp(rng.normal())
        L = np.array([[np.exp(rng.normal()), 0.0], [rng.normal(), np.exp(rng.normal())]])
        u0, u1 = rng.standard_normal((8, 2)), rng.standard_normal((5, 1))
        point = {
            "beta": beta,
            "sigma_log__": np.log(sigma),
            "chol_0_cholesky-cov-packed__": np.array([np.log(L[0, 0]), L[1, 0], np.log(L[1, 1])]),
            "sd_1_log__": np.log(sd_b),
        }
        key = "b" if par == "centered" else "z"
        point |= {f"{key}_0": u0, f"{key}_1": u1}
        if par == "centered":
            b0, b1 = u0, u1
            re = stats.multivariate_normal(np.zeros(2), L @ L.T).logpdf(u0).sum()
            re += stats.norm.logpdf(u1, 0, sd_b).sum()
        else:
            b0, b1 = u0 @ L.T, u1 * sd_b
            re = stats.norm.logpdf(u0).sum() + stats.norm.logpdf(u1).sum()
        mean = beta[0] + beta[1] * x + b0[ra, 0] + b0[ra, 1] * x + b1[rb, 0]
        want = stats.norm.logpdf(y, mean, sigma).sum() + re
        want += stats.norm.logpdf(beta, pri.beta_loc, pri.beta_scale).sum()
        want += _halfnormal(sigma, pri.sigma_scale) + _halfnormal(sd_b, pri.sd_scale[2])
        want += _lkj_chol_2(L, pri.sd_scale[:2], 3.0)
        assert float(logp(point)) == pytest.approx(want, rel=1e-12, abs=1e-9)


def _made_up_posterior(d, model, chains: int = 2, draws: int = 60):
    """Draws of `model`'s variables that `from_idata` reads (names and dims as the model has
    them), made up with numpy (no compilation): sd, beta, sigma, sigma2, chol_0_corr and the
    per-factor effects b[a], b[b]; diverging/energy as sample stats."""
    import arviz as az

    rng = np.random.default_rng(0)
    shape = (chains, draws)
    r = np.tanh(rng.normal(size=shape))
    corr = np.broadcast_to(np.eye(2), (*shape, 2, 2)).copy()
    corr[..., 0, 1] = corr[..., 1, 0] = r
    sigma = np.exp(rng.normal(size=shape))
    post = {
        "beta": rng.normal(size=(*shape, 2)),
        "sigma": sigma,
        "sigma2": sigma**2,
        "sd": np.exp(rng.normal(size=(*shape, 3))),
        "chol_0_corr": corr,
        "b[a]": rng.normal(size=(*shape, 8, 2)),
        "b[b]": rng.normal(size=(*shape, 5, 1)),
    }
    dims = {v: list(model.named_vars_to_dims.get(v, ())) for v in post}
    dims["chol_0_corr"] = ["chol_0_corr_dim_0", "chol_0_corr_dim_1"]
    coords = {k: list(v) for k, v in model.coords.items() if k != "obs"}
    sample_stats = {"diverging": np.zeros(shape, bool), "energy": rng.normal(size=shape)}
    return az.from_dict({"posterior": post, "sample_stats": sample_stats}, dims=dims, coords=coords)


def test_slope_record_from_draws_is_keyed_by_factor(slopes, tmp_path):
    df, d = slopes
    model = build_model(d, make_priors(d, {}), "noncentered")
    assert {"b[a]", "b[b]", "sd", "sigma2", "chol_0_corr", "z_0", "sd_1"} <= set(model.named_vars)
    assert model.named_vars_to_dims["b[a]"] == ("level[a]", "effect[a]")
    assert list(model.coords["effect[a]"]) == ["(Intercept)", "x"]
    assert list(model.coords["effect"]) == ["(Intercept)|a", "x|a", "(Intercept)|b"]
    idata = _made_up_posterior(d, model)
    post = mcmc.from_idata(d, idata, mcmc.McmcSettings(chains=2, draws=60, tune=0), "fake")
    out = post.to_dict()
    comps = out["variance_components"]
    assert list(comps) == ["a", "b"]
    assert set(comps["a"]["variances"]) == {"(Intercept)", "x"}
    assert set(comps["a"]["correlations"]) == {"(Intercept):x"}
    assert set(comps["b"]["variances"]) == {"(Intercept)"} and comps["b"]["correlations"] == {}
    flat = [*comps["a"]["variances"].values(), *comps["b"]["variances"].values()]
    assert all(_finite_summary(s) for s in [*flat, comps["a"]["correlations"]["(Intercept):x"]])
    sd = post.draws("sd")
    assert comps["b"]["variances"]["(Intercept)"]["mean"] == pytest.approx((sd[:, 2] ** 2).mean())
    r = post.correlation_draws()["(Intercept):x|a"]
    assert comps["a"]["correlations"]["(Intercept):x"]["mean"] == pytest.approx(r.mean())
    assert set(post.variance_draws()) == {"(Intercept)|a", "x|a", "(Intercept)|b"}
    ba, bb = post.effect_draws("a"), post.effect_draws(1)
    assert ba.shape == (120, 8, 2) and bb.shape == (120, 5, 1)
    re = out["random_effects_b"]
    assert out["random_effects"] == re and list(re) == ["a", "b"]
    assert list(re["a"]) == list(d.groupings[0].labels) and "s 0:ü" in re["a"]
    assert list(re["b"]) == [f"B/{j}" for j in range(5)]
    assert re["a"]["s 3:ü"]["x"]["mean"] == pytest.approx(ba[:, 3, 1].mean())
    assert re["b"]["B/4"]["(Intercept)"]["sd"] == pytest.approx(bb[:, 4, 0].std(ddof=1))
    assert "mu" not in out and "variances" not in post.summaries
    diag = out["diagnostics"]
    assert all(math.isfinite(diag[k]) for k in ("r_hat_max", "ess_bulk_min", "ess_tail_min"))
    one = mcmc.from_idata(d, idata.isel(chain=[0]), post.settings, "fake")
    assert math.isnan(one.diagnostics["r_hat_max"]) and any("1 chain" in w for w in one.warnings)
    assert one.to_dict()["variance_components"].keys() == comps.keys()
    mcmc.save_netcdf(post, tmp_path / "p.nc")
    assert (tmp_path / "p.nc").stat().st_size > 0


def test_pastes_nested_factors_sample_with_nutpie():
    d = design.from_frame(pd.read_csv(CROSSED / "pastes.csv"), "strength ~ 1 + (1 | batch/cask)")
    settings = mcmc.McmcSettings(chains=2, draws=100, tune=150, seed=3)
    post = mcmc.fit(d, make_priors(d, {}), settings)
    out = post.to_dict()
    assert out["sampler"] == "nutpie"
    assert list(out["variance_components"]) == ["cask:batch", "batch"]
    for f, g in enumerate(d.groupings):
        comp = out["variance_components"][g.name]
        assert comp["correlations"] == {}
        assert _finite_summary(comp["variances"]["(Intercept)"])
        effects = out["random_effects_b"][g.name]
        assert list(effects) == list(g.labels) and len(effects) == (30, 10)[f]
        draws = post.effect_draws(g.name)[:, :, 0]
        assert draws.shape == (200, g.n_levels)
        assert [e["(Intercept)"]["mean"] for e in effects.values()] == pytest.approx(
            draws.mean(axis=0)
        )
    assert "a:A" in out["random_effects_b"]["cask:batch"]
    # collapsed (the default): sd_k sampled (blocks in lme4's order), its Cholesky factor
    # chol_k_L = sd_k kept for the exact draws of beta and the effects
    assert out["settings"]["parametrization"] == "collapsed" and "z_0" not in post.idata.posterior
    for k in range(len(d.factor_names)):
        sd = post.draws(f"sd_{k}")
        np.testing.assert_array_equal(post.draws(f"chol_{k}_L")[:, 0, 0], sd)
        np.testing.assert_array_equal(post.draws("sd")[:, k], sd)
    assert _finite_summary(out["sigma2"]) and _finite_summary(out["fixed_effects"]["(Intercept)"])
    diag = out["diagnostics"]
    assert math.isfinite(diag["r_hat_max"]) and diag["ess_bulk_min"] > 0
    assert len(diag["e_bfmi"]) == 2
