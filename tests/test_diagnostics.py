"""MCMC diagnostics on made-up draws (`arviz.from_dict`): each check fires on its own and names
its quantity, a well-mixed run warns of nothing (the Holm-adjusted rank test included), the
rank plots print the diagnostics' p, and the tables show the SDs' own posterior summaries."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from conftest import DATA
from scipy import stats as sps
from test_table import _grid

from workbench import compare
from workbench.fit.diagnostics import diagnose, failed, holm
from workbench.fit.mcmc import McmcSettings, from_idata
from workbench.present import plots
from workbench.present.report import _fmt, estimates
from workbench.present.table import comparison_table, fmt

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

N = 1000  # draws per chain
DIMS = {"beta": ["fixed"], "sd": ["effect"], "correlation": ["pair"], "b": ["group", "effect"]}
COORDS = {
    "fixed": ["(Intercept)", "meanses"],
    "effect": ["(Intercept)", "ses"],
    "pair": ["(Intercept):ses"],
    "group": ["1", "2", "3", "4"],
}


def _run(seed: int, change=None, chains: int = 4):
    """(diagnostics, warnings) of a well-mixed made-up run (iid draws of a two-term model:
    beta, sigma, sd, a correlation, random effects b), after `change(rng, post, stats)`."""
    import arviz as az

    rng = np.random.default_rng(seed)
    post = {
        "beta": rng.normal(size=(chains, N, 2)),
        "sigma": 3 + 0.2 * rng.normal(size=(chains, N)),
        "sd": np.exp(0.2 * rng.normal(size=(chains, N, 2))),
        "correlation": np.tanh(0.3 * rng.normal(size=(chains, N, 1))),
        "b": rng.normal(size=(chains, N, 4, 2)),
    }
    stats = {"diverging": np.zeros((chains, N), bool), "energy": rng.normal(size=(chains, N))}
    if change is not None:
        change(rng, post, stats)
    tree = az.from_dict({"posterior": post, "sample_stats": stats}, dims=DIMS, coords=COORDS)
    return diagnose(tree, tree.posterior.to_dataset())


def _fired(diag) -> set[str]:
    return {k for k, v in failed(diag).items() if v}


def _one_run(x: np.ndarray, chains: int) -> np.ndarray:
    """Every chain (and each half of it) the same run of draws: the chains agree exactly, so
    R-hat and the rank test cannot fire, and only the run's own autocorrelation shows."""
    return np.tile(x, (chains, 2))


@pytest.mark.parametrize("seed", range(5))
def test_well_mixed_run_warns_of_nothing(seed):
    diag, warns = _run(seed)
    assert warns == [] and _fired(diag) == set()
    assert diag["rank_p_min"] > 0.01 and set(diag["rank_p"]) == {
        "beta[(Intercept)]",
        "beta[meanses]",
        "sigma",
        "sd[(Intercept)]",
        "sd[ses]",
        "correlation[(Intercept):ses]",
    }  # the quantities of the rank plots, not the random effects
    assert "Holm-adjusted over the 6 quantities" in diag["rank_test"]
    assert {"r_hat_max", "ess_bulk_min", "ess_tail_min", "divergences", "e_bfmi_min"} <= set(diag)


def test_rhat_alone_names_its_quantity():
    def wider(rng, post, stats):  # one chain's draws of one random effect 1.4 times as wide
        post["b"][0, :, 2, 0] *= 1.4

    diag, warns = _run(0, wider)
    assert _fired(diag) == {"r_hat"} and diag["worst"]["r_hat"] == "b[3, (Intercept)]"
    assert len(warns) == 1 and warns[0].startswith("R-hat of b[3, (Intercept)] is 1.0")
    # four decimals: an R-hat of 1.0104 never reads "1.010 (> 1.01)"
    assert f"is {diag['r_hat_max']:.4f} (> 1.01)" in warns[0]


def test_bulk_ess_alone_names_its_quantity():
    def sticky(rng, post, stats):  # an AR(1) run, rho 0.9: the mean's ESS about N/19
        x = np.empty(N // 2)
        x[0] = rng.normal()
        for t in range(1, x.size):
            x[t] = 0.9 * x[t - 1] + math.sqrt(1 - 0.9**2) * rng.normal()
        post["b"][..., 1, 1] = _one_run(x, 4)

    diag, warns = _run(2, sticky)
    assert _fired(diag) == {"ess_bulk"} and diag["worst"]["ess_bulk"] == "b[2, ses]"
    assert warns == [f"bulk ESS of b[2, ses] is {diag['ess_bulk_min']:.0f} (< 400): too few "
                     "effective draws for the centre of the posterior (means, medians); run more "
                     "draws."]  # fmt: skip


def test_tail_ess_alone_names_its_quantity():
    def tails_together(rng, post, stats):
        # the 5% tails of each side come together, alternating low / high: the tail draws are
        # few in effect, the mean (and the bulk's rank-normal scores) mixes as fast as ever
        x = rng.normal(size=N // 2)
        lo_q, hi_q = np.quantile(x, [0.05, 0.95])
        lo, hi, mid = x[x < lo_q], x[x > hi_q], x[(x >= lo_q) & (x <= hi_q)]
        k = min(lo.size, hi.size)
        block = np.column_stack([lo[:k], hi[:k]]).reshape(-1)
        run = np.concatenate([mid[:200], block, lo[k:], hi[k:], mid[200:]])
        post["b"][..., 0, 1] = _one_run(run, 2)

    diag, warns = _run(0, tails_together, chains=2)
    assert _fired(diag) == {"ess_tail"} and diag["worst"]["ess_tail"] == "b[1, ses]"
    assert len(warns) == 1 and warns[0].startswith("tail ESS of b[1, ses] is ")


def test_rank_test_alone_names_its_quantity():
    """Eight chains, one of them 0.3 SD off in sigma: R-hat (which pools the chains' means)
    stays under 1.01, the rank test (which looks at each chain) fires."""

    def off(rng, post, stats):
        post["sigma"][0] += 0.3 * 0.2

    diag, warns = _run(0, off, chains=8)
    assert _fired(diag) == {"rank"} and diag["r_hat_max"] < 1.01
    assert diag["worst"]["rank"] == "sigma" and diag["rank_p_min"] < 0.01
    assert len(warns) == 1 and warns[0].startswith("rank test of sigma: p = ")
    assert "Holm-adjusted over 6 quantities" in warns[0]


def test_divergences_alone():
    def diverge(rng, post, stats):
        stats["diverging"][1, :3] = True

    diag, warns = _run(0, diverge)
    assert _fired(diag) == {"divergences"} and diag["divergences"] == 3
    assert len(warns) == 1 and warns[0].startswith("3 divergent transition(s)")


def test_e_bfmi_alone_names_its_chain():
    def slow_energy(rng, post, stats):  # the energy a random walk: E-BFMI near 0
        stats["energy"][2] = np.cumsum(rng.normal(size=N))

    diag, warns = _run(0, slow_energy)
    assert _fired(diag) == {"e_bfmi"} and diag["worst"]["e_bfmi"] == "chain 2"
    assert len(warns) == 1 and warns[0].startswith("E-BFMI of chain 2 is 0.0")


def test_disagreeing_chains_fire_the_rank_test():
    def elsewhere(rng, post, stats):  # the second chain of beta[meanses] sits 1 SD higher
        post["beta"][1, :, 1] += 1.0

    diag, warns = _run(1, elsewhere)
    assert {"r_hat", "rank"} <= _fired(diag)
    assert diag["worst"]["rank"] == diag["worst"]["r_hat"] == "beta[meanses]"
    assert diag["rank_p"]["beta[meanses]"] < 1e-6
    assert any(w.startswith("rank test of beta[meanses]: p = ") for w in warns)


def test_autocorrelated_well_mixed_chains_do_not_fire_the_rank_test():
    """ArviZ's rank test on the raw draws says "disagree" for chains that merely crawl (AR(1),
    rho 0.7, as NUTS chains of a funnel do); thinned to half the within-chain ESS it does not."""
    from arviz_stats.base import array_stats

    def crawl(rng, post, stats):
        e = rng.normal(size=(4, N))
        x = np.empty((4, N))
        x[:, 0] = e[:, 0]
        for t in range(1, N):
            x[:, t] = 0.7 * x[:, t - 1] + math.sqrt(1 - 0.49) * e[:, t]
        post["sigma"] = 3 + 0.2 * x

    raw_alarms, alarms = 0, 0
    for seed in range(5):
        diag, _ = _run(seed, crawl)
        alarms += diag["rank_p_min"] < 0.01
        rng = np.random.default_rng(seed)
        post = {}
        crawl(rng, post, {})
        ranks = sps.rankdata(post["sigma"], axis=None).reshape(4, N) / (4 * N)
        raw_alarms += array_stats.mchain_uniformity_test(ranks)[0] < 0.01
    assert alarms == 0 and raw_alarms >= 2


def test_one_chain_skips_rhat_and_the_rank_test_once():
    diag, warns = _run(0, chains=1)
    assert math.isnan(diag["r_hat_max"]) and diag["rank_p_min"] is None
    assert diag["rank_p"] is None and diag["worst"]["rank"] is None
    assert sum("rank test" in w for w in warns) == 1 and "1 chain" in warns[0]
    assert not failed(diag)["rank"]


def test_holm_adjustment():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert adj["a"] == pytest.approx(0.03) and adj["c"] == pytest.approx(0.06)
    assert adj["b"] == pytest.approx(0.06) and math.isnan(adj["d"])  # monotone, NaN kept


# ----------------------------------------------------------------------------------------------
# The record, the tables and the rank plots of a one-way model with made-up draws


@pytest.fixture(scope="module")
def oneway():
    return compare(str(DATA / "small_groups.csv"), "y", "group", methods=["eb-ml"], n_jobs=1)


def _posterior(c, chains: int = 4):
    """A Posterior of made-up draws for `c`'s one-way model: sigma log-normal and wide, so the
    mode of sigma is far from the root of the mode of sigma^2."""
    import arviz as az

    rng = np.random.default_rng(3)
    m = c.data.n_groups
    sigma = np.exp(1.0 + 0.5 * rng.normal(size=(chains, N)))
    sd = np.exp(1.5 + 0.4 * rng.normal(size=(chains, N, 1)))
    post = {
        "beta": 50 + rng.normal(size=(chains, N, 1)),
        "sigma": sigma,
        "sigma2": sigma**2,
        "sd": sd,
        "b": sd[..., None] * rng.normal(size=(chains, N, m, 1)),
    }
    stats = {"diverging": np.zeros((chains, N), bool), "energy": rng.normal(size=(chains, N))}
    tree = az.from_dict(
        {"posterior": post, "sample_stats": stats},
        dims={"beta": ["fixed"], "sd": ["effect"], "b": ["group", "effect"]},
        coords={"fixed": ["(Intercept)"], "effect": ["(Intercept)"], "group": list(c.data.labels)},
    )
    return from_idata(c.data, tree, McmcSettings(chains=chains, draws=N), "made-up")


def test_tables_show_the_sds_own_summaries(oneway):
    c = dataclasses.replace(oneway, mcmc=_posterior(oneway))
    mc = c.to_dict()["mcmc"]
    sigma_mode, tau_mode = mc["sigma"]["mode"], mc["tau"]["mode"]
    assert fmt(sigma_mode) != fmt(math.sqrt(mc["sigma2"]["mode"]))  # the draws make sure
    assert mc["variance_components"]["group"]["sds"]["(Intercept)"]["mode"] == tau_mode
    grid = _grid(comparison_table(c, width=200))
    assert grid["MCMC mode"]["sigma"] == fmt(sigma_mode)
    assert grid["MCMC mode"]["tau"] == fmt(tau_mode)
    assert grid["MCMC mean"]["sigma"] == fmt(mc["sigma"]["mean"])
    assert grid["EB-ML"]["sigma"] == fmt(math.sqrt(oneway.eb_ml.sigma2))  # a point: its root
    cell: dict = {}  # {method: {column: (value, the SD beneath)}} of the HTML estimates tables
    for t in estimates(c):
        for m, _, cells in t["rows"]:
            cell.setdefault(m, {}).update(zip([h for h, _ in t["head"]], cells, strict=True))
    assert cell["MCMC mode"]["σ² (residual)"][1] == f"σ {_fmt(sigma_mode)}"
    assert cell["MCMC mode"]["τ² (group)"][1] == f"τ {_fmt(tau_mode)}"
    assert cell["EB-ML"]["σ² (residual)"][1] == f"σ {_fmt(math.sqrt(oneway.eb_ml.sigma2))}"


def test_rank_plot_titles_print_the_diagnostics_p(oneway):
    post = _posterior(oneway)
    p = post.diagnostics["rank_p"]
    assert set(p) == {"mu", "sigma", "tau"}
    fig = plots.plot_rank(post)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    for name, v in p.items():
        assert f"{name}\np = {v:.2g}" in titles
    with pytest.raises(plots.SkippedFigureError, match="1 chain"):
        plots.plot_rank(_posterior(oneway, chains=1))
