"""The general EB fit on awkward scales: invariances are the exact reference.

Shifting a covariate (with an intercept in the model) changes only the intercept; scaling y by s
scales beta, sigma^2 and G by s, s^2, s^2, leaves theta alone and moves the log likelihood by
exactly -N log s (REML: -(N - p) log s); shifting y moves only the intercept. The fit works on
centred/scaled copies internally, so these hold to many digits even for a day number around
18,800, an offset of 1e9, y of order 1e-11 or 1e60."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.fit import eb
from workbench.model import design


def _data(seed=3, m=18, n=10):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    days = np.tile(np.arange(n, dtype=float), m)
    b0, b1 = rng.normal(0, 25, m), rng.normal(0, 6, m)
    y = 250 + 10 * days + b0[g] + b1[g] * days + rng.normal(0, 25, m * n)
    return y, days, g


def _fit(y, x, g, method, slope=True):
    X = np.column_stack([np.ones_like(x), x])
    Z = X if slope else X[:, :1]
    d = design.from_arrays(
        y,
        X,
        Z,
        g,
        fixed_names=["(Intercept)", "Days"],
        re_names=["(Intercept)", "Days"][: Z.shape[1]],
    )
    return eb.fit(d, method)


@pytest.fixture(scope="module")
def base():
    y, x, g = _data()
    return {(m, s): _fit(y, x, g, m, s) for m in ("ml", "reml") for s in (True, False)}


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("offset", [18800.0, 1e6, 1e9])
def test_fixed_effect_covariate_offset_changes_only_the_intercept(base, method, offset):
    """Random intercept, covariate only in the fixed part (a day number, or worse)."""
    y, x, g = _data()
    ref, fit = base[(method, False)], _fit(y, x + offset, g, method, slope=False)
    assert fit.converged
    assert abs(fit.loglik - ref.loglik) < 1e-6
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fit.beta[1], ref.beta[1], rtol=1e-6)
    np.testing.assert_allclose(fit.beta[0] + offset * fit.beta[1], ref.beta[0], rtol=1e-6)
    np.testing.assert_allclose(fit.se[1], ref.se[1], rtol=1e-5)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_day_number_in_a_random_slope(base, method):
    """Days + 18800 in (1 + Days | g): the same model reparametrised; lme4's theta is different
    (the intercept variance moves to day 0), but the likelihood at the optimum is the same."""
    y, x, g = _data()
    ref, fit = base[(method, True)], _fit(y, x + 18800.0, g, method)
    assert abs(fit.loglik - ref.loglik) < 1e-5
    np.testing.assert_allclose(fit.beta[1], ref.beta[1], rtol=1e-5)
    np.testing.assert_allclose(fit.G[1, 1], ref.G[1, 1], rtol=1e-3)


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("scale", [1e-11, 1e60])
def test_response_scale(base, method, scale):
    y, x, g = _data()
    ref, fit = base[(method, True)], _fit(y * scale, x, g, method)
    assert fit.converged
    dof = y.size - (2 if method == "reml" else 0)
    assert abs(fit.loglik - (ref.loglik - dof * np.log(scale))) < 1e-6
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fit.beta, ref.beta * scale, rtol=1e-6)
    np.testing.assert_allclose(fit.sigma2, ref.sigma2 * scale**2, rtol=1e-6)
    np.testing.assert_allclose(fit.G, ref.G * scale**2, rtol=1e-4)
    assert np.all(np.isfinite(fit.re_cov)) and np.all(np.isfinite(fit.re_mode))


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_response_offset(base, method):
    y, x, g = _data()
    ref, fit = base[(method, True)], _fit(y + 1e6, x, g, method)
    assert abs(fit.loglik - ref.loglik) < 1e-6
    np.testing.assert_allclose(fit.beta[0], ref.beta[0] + 1e6, rtol=1e-12)
    # the reported log likelihood is the exact one at the reported estimates
    assert abs(fit.pls.loglik(fit.sigma2) - ref.pls.loglik(ref.sigma2)) < 1e-6 or method == "reml"


def test_zero_derivative_at_the_bound_is_not_taken_for_an_optimum():
    """The issue's mechanism: theta = 0 is a stationary point of the profiled deviance (it
    depends on theta^2), here with the optimum interior. Started there, the fit must leave."""
    y, x, g = _data(seed=11)
    X = np.column_stack([np.ones_like(x), x])
    d = design.from_arrays(y, X, X[:, :1], g)
    from_one, from_zero = eb.fit(d, "ml"), eb.fit(d, "ml", x0=[0.0])
    assert from_one.theta[0] > 0.1
    assert from_zero.converged and abs(from_zero.objective - from_one.objective) < 1e-8


@pytest.mark.parametrize("scale", [1e60, 1e-90])
def test_profile_intervals_scale_with_the_response(scale):
    """Profile intervals of y * s: sd's and sigma times s, correlations as they are."""
    from workbench.fit.profile import profile_intervals

    y, x, g = _data(m=12, n=8)
    ref = profile_intervals(_fit(y, x, g, "ml"))
    got = profile_intervals(_fit(y * scale, x, g, "ml"))
    assert list(got) == list(ref)
    for name, (lo, hi) in ref.items():
        f = 1.0 if name.startswith("cor_") else scale
        np.testing.assert_allclose(np.array(got[name]) / f, [lo, hi], rtol=1e-5, atol=1e-6)


def test_response_out_of_floating_point_range_is_refused():
    """|y| ~ 1e101 (sigma^2 ~ 1e202 and sums of squares leave float64): one-line error."""
    import pandas as pd

    from workbench.errors import InputError

    y, x, g = _data()
    df = pd.DataFrame({"y": y * 1e101, "x": x, "g": g.astype(str)})
    with pytest.raises(InputError, match="rescale it"):
        design.from_frame(df, "y ~ x + (1 | g)")
    df["y"] = y * 1e90
    assert eb.fit(design.from_frame(df, "y ~ x + (1 | g)"), "ml").converged
