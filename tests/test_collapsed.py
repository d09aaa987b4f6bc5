"""The collapsed sampler (objectives/collapsed.py, model.pymc.build_collapsed, fit.mcmc):

* `log_marginal` (the Potential of `build_collapsed`) equals the dense multivariate normal
  log density of y, N(X m, sigma^2 I + Z G Z' + X S^2 X'), at random data and parameters, for
  one factor with 1, 2, 3 correlated columns, two uncorrelated blocks on one factor, crossed
  and nested factors, with y near 0 and near 1e6;
* `conditional_draws` has the mean and covariance of the dense Gaussian conditional of
  (beta, b) given y, sigma and the covariances (both kernels);
* the collapsed and the full non-centered model sample the same posterior (rank tests on
  roughly independent draws of every parameter shown);
* the same seed gives bit-identical draws in another process (with a cold PyTensor cache:
  benchmarks/bench_cache.py);
* the shipped one-way cases sample without divergences;
* several factors with more than `MAX_DENSE` effects fall back to the non-centered model.
"""

from __future__ import annotations

import functools
import itertools
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.linalg as sla
from boundary_cases import slope_frame
from conftest import DATA, ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from workbench.casefile import load_case
from workbench.fit import mcmc
from workbench.model import design
from workbench.model.priors import default_priors, make_priors
from workbench.model.pymc import build_collapsed
from workbench.objectives import collapsed

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

# formula -> (observations, {factor column: levels}); nested factor b has 3 levels within a
STRUCTURES = {
    "y ~ 1 + (1 | g)": (30, {"g": 6}),
    "y ~ x + (1 + x | g)": (36, {"g": 6}),
    "y ~ x + (1 + x + z | g)": (40, {"g": 5}),
    "y ~ x + (1 | g) + (0 + x | g)": (36, {"g": 6}),
    "y ~ x + (1 + x | g) + (1 | h)": (40, {"g": 6, "h": 4}),
    "y ~ z + (1 | a/b)": (36, {"a": 3, "b": 3}),
}


def _frame(formula: str, seed: int, shift: float) -> pd.DataFrame:
    """Random data of the structure's shape (every level present, unbalanced)."""
    rng = np.random.default_rng(seed)
    n, factors = STRUCTURES[formula]
    cols = {}
    for name, m in factors.items():
        codes = np.r_[np.repeat(np.arange(m), 4), rng.integers(0, m, n - 4 * m)]
        cols[name] = [f"{name}{j}" for j in rng.permutation(codes)]
    df = pd.DataFrame(cols)
    df["x"], df["z"] = rng.normal(size=n), rng.normal(size=n)
    effect = sum(rng.normal(size=m)[pd.factorize(df[f])[0]] for f, m in factors.items())
    df["y"] = shift + 2 * df["x"] + effect + rng.gamma(2.0) * rng.normal(size=n)
    return df


def _data(formula: str, seed: int, shift: float = 0.0):
    d = design.from_frame(_frame(formula, seed, shift), formula)
    return d, default_priors(d)


def _z_full(d) -> np.ndarray:
    """Z of every random effect, block by block, level-major (written out from Z and the
    grouping codes, without `collapsed`)."""
    parts = []
    for block in d.blocks:
        g = d.groupings[block.factor]
        onehot = np.eye(g.n_levels)[g.codes]  # (N, levels)
        Zk = d.Z[:, list(block.cols)]
        parts.append((onehot[:, :, None] * Zk[:, None, :]).reshape(d.n_obs, -1))
    return np.hstack(parts)


def _g_full(d, chols) -> np.ndarray:
    return sla.block_diag(
        *[
            np.kron(np.eye(d.groupings[b.factor].n_levels), C @ C.T)
            for b, C in zip(d.blocks, chols, strict=True)
        ]
    )


@functools.cache
def _compiled(formula: str):
    """The collapsed model of one structure, its Potential, sigma and the Cholesky factors
    compiled as a function of the value variables; the data are `pm.Data` (shared), so
    another data set of the same shape is set in place (`set_value`) without a compile."""
    d, priors = _data(formula, 0)
    model = build_collapsed(d, priors)
    outs = [
        model.potentials[0],
        model["sigma"],
        *(model[f"chol_{k}_L"] for k in range(len(d.blocks))),
    ]
    fn = model.compile_fn(model.replace_rvs_by_values(outs), inputs=model.value_vars, point_fn=True)
    return model, fn


@pytest.mark.parametrize("shift", [0.0, 1e6])
@pytest.mark.parametrize("formula", STRUCTURES)
@settings(max_examples=4, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31))
def test_log_marginal_is_the_dense_normal_density(formula, shift, seed):
    d, priors = _data(formula, seed, shift)
    model, fn = _compiled(formula)
    s = collapsed.Stats.of(d, priors)
    assert s.kind == ("per_group" if d.n_factors == 1 else "dense")
    for name, value in s.arrays.items():
        model[name].set_value(value)
    rng = np.random.default_rng(seed)
    point = {k: rng.normal(scale=0.5, size=np.shape(v)) for k, v in model.initial_point().items()}
    value, sigma, *chols = fn(point)
    S2 = np.diag(np.asarray(priors.beta_scale) ** 2)
    Zf = _z_full(d)
    V = sigma**2 * np.eye(d.n_obs) + Zf @ _g_full(d, chols) @ Zf.T + d.X @ S2 @ d.X.T
    ref = stats.multivariate_normal(d.X @ np.asarray(priors.beta_loc), V).logpdf(d.y)
    assert float(value) == pytest.approx(ref, rel=1e-9, abs=1e-8)


CHOLS = {1: np.array([[0.7]]), 2: np.array([[1.2, 0.0], [0.3, 0.5]])}


@pytest.mark.parametrize(
    "formula, n_draws",
    [
        ("y ~ x + (1 | g) + (0 + x | g)", 20000),
        ("y ~ x + (1 + x | g)", 20000),
        ("y ~ x + (1 + x | g) + (1 | h)", 6000),
    ],
)
def test_conditional_draws_are_the_gaussian_conditional(formula, n_draws):
    """Mean (to 4.5 Monte Carlo SEs) and covariance of the draws, whitened by the exact
    conditional's Cholesky factor: mean 0, covariance I."""
    d, priors = _data(formula, 3, 100.0)
    s = collapsed.Stats.of(d, priors)
    sigma = 0.8
    chols = [CHOLS[len(b.cols)] for b in d.blocks]
    # the conditional of (beta, b) | y written out densely
    X, Z, y = d.X, _z_full(d), d.y
    m, S = np.asarray(priors.beta_loc), np.asarray(priors.beta_scale)
    W = np.hstack([X, Z])
    prior_prec = sla.block_diag(np.diag(S**-2.0), np.linalg.inv(_g_full(d, chols)))
    P = W.T @ W / sigma**2 + prior_prec
    cov = np.linalg.inv(P)
    mean = cov @ (W.T @ y / sigma**2 + np.r_[m / S**2, np.zeros(Z.shape[1])])
    # the draws, in the same order: beta, then every block's effects level-major
    rng = np.random.default_rng(11)
    beta, effects = collapsed.conditional_draws(
        s,
        np.full(n_draws, sigma),
        [np.broadcast_to(C, (n_draws, *C.shape)) for C in chols],
        rng,
    )
    x = np.hstack([beta, *(e.reshape(n_draws, -1) for e in effects)])
    w = sla.solve_triangular(np.linalg.cholesky(cov), (x - mean).T, lower=True).T
    assert np.abs(w.mean(axis=0)).max() < 4.5 / np.sqrt(n_draws)
    dev = np.cov(w, rowvar=False) - np.eye(len(mean))
    assert np.abs(dev).max() < 5 * np.sqrt(2 / n_draws)


# ---------------------------------------------------------------- against the full model

SEEDS = (1, 2)
COMPARED = mcmc.McmcSettings(chains=2, draws=500, tune=400, target_accept=0.95)
ALPHA = 0.01  # family-wise, over every test below (Bonferroni)


def _slopes_data():
    return design.from_frame(slope_frame(8, 6), "y ~ x + (1 + x | g)")


def _shown(post) -> dict[str, np.ndarray]:
    """Every parameter the outputs show, as (chain, draw) arrays: beta, sigma, each SD and
    correlation, and the first and last groups' effects."""
    p = post.idata.posterior
    out = {"sigma": np.asarray(p["sigma"])}
    for i, name in enumerate(post.data.fixed_names):
        out[f"beta[{name}]"] = np.asarray(p["beta"])[..., i]
    for c, name in enumerate(post.data.re_names):
        out[f"sd[{name}]"] = np.asarray(p["sd"])[..., c]
        b = np.asarray(p["b"])
        out[f"b[0,{name}]"], out[f"b[-1,{name}]"] = b[..., 0, c], b[..., -1, c]
    if "chol_0_corr" in p:
        out["corr"] = np.asarray(p["chol_0_corr"])[..., 0, 1]
    return out


def _thinned(draws: np.ndarray) -> np.ndarray:
    """Draws (chain, draw) thinned to about one per effective draw."""
    import arviz as az

    ess = float(az.ess(draws[None] if draws.ndim == 1 else draws))
    step = max(1, int(np.ceil(draws.size / ess)))
    return draws[:, ::step].ravel()


@pytest.fixture(scope="module")
def posteriors():
    """{(case, seed): (collapsed, non-centered)} records of Dyestuff and a random slope."""
    dyestuff = pd.read_csv(DATA / "dyestuff.csv")
    cases = {
        "dyestuff": design.from_frame(dyestuff, "Yield ~ 1 + (1 | Batch)"),
        "slopes": _slopes_data(),
    }
    out = {}
    for (name, d), seed in itertools.product(cases.items(), SEEDS):
        priors = make_priors(d, {})
        out[(name, seed)] = [
            mcmc.fit(d, priors, replace(COMPARED, parametrization=par, seed=seed))
            for par in ("collapsed", "noncentered")
        ]
    return out


def test_collapsed_and_full_model_sample_the_same_posterior(posteriors):
    pvalues = {}
    for key, (col, full) in posteriors.items():
        assert col.settings.parametrization == "collapsed"
        assert full.settings.parametrization == "noncentered"
        a, b = _shown(col), _shown(full)
        assert a.keys() == b.keys()
        for name in a:
            x, y = _thinned(a[name]), _thinned(b[name])
            assert min(x.size, y.size) > 50, (key, name)
            pvalues[(*key, name, "mann-whitney")] = stats.mannwhitneyu(x, y).pvalue
            pvalues[(*key, name, "ks")] = stats.ks_2samp(x, y).pvalue
    worst = min(pvalues, key=pvalues.get)
    assert pvalues[worst] > ALPHA / len(pvalues), (worst, pvalues[worst])


# ---------------------------------------------------------------- determinism across processes

TINY = mcmc.McmcSettings(chains=2, draws=30, tune=30, seed=5)
DRAWS_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from test_collapsed import tiny_draws
np.save(sys.argv[2], tiny_draws())
"""


def tiny_draws() -> np.ndarray:
    """sigma, sd, beta and b of a tiny collapsed fit of Dyestuff, (chain, draw, 9)."""
    d = design.from_frame(pd.read_csv(DATA / "dyestuff.csv"), "Yield ~ 1 + (1 | Batch)")
    p = mcmc.fit(d, make_priors(d, {}), TINY).idata.posterior
    draws = [np.asarray(p[v]).reshape(2, 30, -1) for v in ("sigma", "sd", "beta", "b")]
    return np.concatenate(draws, axis=-1)


def test_same_seed_same_draws_in_another_process(tmp_path):
    """Bit-identical draws here and in a fresh process (chains in threads, the compiled code
    loaded from the cache there). With a cold cache too: benchmarks/bench_cache.py (a cold
    compile costs 40 to 60 s)."""
    here = tiny_draws()
    out = tmp_path / "draws.npy"
    cmd = [sys.executable, "-c", DRAWS_SCRIPT, str(ROOT / "tests"), str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    assert here.shape == (2, 30, 9) and np.isfinite(here).all()
    np.testing.assert_array_equal(np.load(out), here)


# ---------------------------------------------------------------- the shipped cases


@pytest.mark.parametrize("case", ["dyestuff", "small_groups"])
def test_shipped_oneway_cases_sample_without_divergences(case):
    c = load_case(ROOT / "models" / f"{case}.toml")
    kw = c.compare_kwargs
    assert kw.get("parametrization", "collapsed") == "collapsed"
    d = design.from_frame(pd.read_csv(c.data_path), f"{c.y} ~ 1 + (1 | {c.group})")
    settings_ = mcmc.McmcSettings(
        chains=kw["chains"],
        draws=300,
        tune=kw["tune"],
        target_accept=kw["target_accept"],
        seed=kw["seed"],
    )
    post = mcmc.fit(d, make_priors(d, {}), settings_)
    assert post.diagnostics["divergences"] == 0


# ---------------------------------------------------------------- the fallback


def test_too_many_effects_fall_back_to_the_noncentered_model(monkeypatch):
    d, priors = _data("y ~ x + (1 + x | g) + (1 | h)", 5)
    assert collapsed.kernel_for(d) == "dense"
    monkeypatch.setattr(collapsed, "MAX_DENSE", 10)  # this model has 6 * 2 + 4 = 16 effects
    assert collapsed.kernel_for(d) is None
    post = mcmc.fit(d, priors, mcmc.McmcSettings(chains=1, draws=20, tune=20))
    assert post.settings.parametrization == "noncentered"
    assert "z_0" in post.idata.posterior and "chol_0_L" not in post.idata.posterior
    assert "MAX_DENSE" in post.warnings[0] and "non-centered" in post.warnings[0]
