"""Simulation-based calibration of the collapsed sampler, small (the full run:
benchmarks/bench_sbc.py): ranks of the true sigma, tau and mu among the posterior draws of the
one-way model are uniform, and the same tests flag a deliberately wrong posterior."""

import numpy as np
import pytest

from workbench.simulate import sbc

REPLICATES, BINS, ALPHA = 40, 5, 0.01
SETTINGS = sbc.SbcSettings(chains=2, tune=200, draws=150, L=19)


@pytest.fixture(scope="module")
def result():
    return sbc.run(sbc.oneway_design(), REPLICATES, seed=3, settings=SETTINGS)


@pytest.mark.parametrize("param", ["sigma", "tau", "mu"])
def test_ranks_uniform(result, param):
    k = result.params.index(param)
    ranks = result.ranks()[:, k]
    assert sbc.chi2_pvalue(ranks, SETTINGS.L, BINS) >= ALPHA
    assert sbc.ecdf_pvalue(ranks, SETTINGS.L, simulations=2000) >= ALPHA


def test_wrong_posterior_flagged(result):
    """Negative control: sigma's draws scaled by 1.3 (a posterior too wide and too high)."""
    k = result.params.index("sigma")
    draws = result.draws.copy()
    draws[:, :, k] *= 1.3
    ranks = sbc.ranks(result.truths, draws)[:, k]
    assert sbc.chi2_pvalue(ranks, SETTINGS.L, BINS) < ALPHA
    assert sbc.ecdf_pvalue(ranks, SETTINGS.L, simulations=2000) < ALPHA


def test_lkj_draws():
    """The onion method's correlations: (r + 1) / 2 ~ Beta(eta - 1 + d / 2, same) marginally."""
    rng = np.random.default_rng(0)
    for d, eta in ((2, 2.0), (3, 1.5)):
        L = np.array([sbc.lkj_cholesky(d, eta, rng) for _ in range(4000)])
        C = L @ np.swapaxes(L, 1, 2)
        np.testing.assert_allclose(np.diagonal(C, axis1=1, axis2=2), 1.0)
        a = eta - 1 + d / 2
        assert abs(C[:, d - 1, 0].var() - 1 / (2 * a + 1)) < 0.02
        assert abs(C[:, d - 1, 0].mean()) < 0.03
