"""No silent nonsense (issue 9, item 5): data in which sigma^2 is not identified get a one-line
error in the formula route as in the one-way route, and the checks are relative to the data's
own scale: y * 1e-11 behaves like y, a covariate with offset/sd 1e9 is not 'rank deficient',
while true rank deficiency is still caught."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.compare import compare
from workbench.errors import InputError
from workbench.fit import eb
from workbench.model import design
from workbench.model.data import from_arrays


def _frame(m=20, n=5, seed=1):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    x = rng.normal(size=m * n)
    y = 3 + 0.5 * x + rng.normal(size=m)[g] + rng.normal(size=m * n)
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{j}" for j in g]})


@pytest.mark.parametrize("formula", ["y ~ x + (1 | g)", "y ~ 1 + (1 | g)", "y ~ 0 + x + (1 | g)"])
def test_constant_response_is_refused(formula):
    df = _frame().assign(y=2.5)
    with pytest.raises(InputError, match="does not vary") as err:
        compare(df, formula=formula, methods="eb-ml")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="column 'y' does not vary"):
        design.from_frame(df, formula)


def test_groups_of_one_observation_are_refused():
    df = _frame().assign(g=[f"u{i}" for i in range(100)])
    with pytest.raises(InputError, match="every group of 'g' has one observation"):
        compare(df, formula="y ~ x + (1 | g)", methods="eb-ml")
    with pytest.raises(InputError, match="every group of 'g' has one observation"):
        design.from_frame(df, "y ~ 1 + (1 | g)")
    with pytest.raises(InputError, match="no group in column 'g' has 2 or more"):  # one-way path
        compare(df, formula="y ~ 1 + (1 | g)", methods="eb-ml")


def test_more_random_effects_than_observations_is_refused():
    """lme4's check.nobs.vs.nRE: N <= m x (columns of the term) leaves sigma^2 confounded."""
    df = _frame(m=30, n=2)
    with pytest.raises(
        InputError,
        match=r"60 observations are not more than the 60 random "
        r"effects of \(1 \+ x \| g\)",
    ):
        design.from_frame(df, "y ~ x + (1 + x | g)")
    design.from_frame(df, "y ~ x + (1 | g)")  # 60 > 30: fine


def test_response_fitted_exactly_is_refused():
    """y constant within every group (sigma^2 -> 0, log likelihood -> infinity before)."""
    df = _frame()
    rng = np.random.default_rng(5)
    df["y"] = rng.normal(size=20)[df.g.str[1:].astype(int)]
    for formula in ("y ~ x + (1 | g)", "y ~ 1 + (1 | g)"):
        with pytest.raises(InputError, match="fitted exactly"):
            design.from_frame(df, formula)
    # exactly linear in x within groups, plus a group effect: also not identified
    df["y"] = df.y + 0.25 * df.x
    with pytest.raises(InputError, match="fitted exactly"):
        design.from_frame(df, "y ~ x + (1 | g)")
    # the same at a tiny scale and with a huge offset: still caught
    with pytest.raises(InputError, match="fitted exactly"):
        design.from_frame(df.assign(y=df.y * 1e-11 + 1e-3), "y ~ x + (1 | g)")


@pytest.mark.parametrize("scale", [1e-11, 1e-20, 1e11])
def test_tiny_or_huge_response_scale_behaves_like_y(scale):
    df = _frame()
    base = compare(df, y="y", group="g", methods="eb-ml").eb_ml
    scaled = compare(df.assign(y=df.y * scale), y="y", group="g", methods="eb-ml").eb_ml
    assert scaled.sigma2 / scale**2 == pytest.approx(base.sigma2, rel=1e-9)
    assert scaled.tau2 / scale**2 == pytest.approx(base.tau2, rel=1e-9)
    fit0 = eb.fit(design.from_frame(df, "y ~ x + (1 | g)"), "ml")
    fit = eb.fit(design.from_frame(df.assign(y=df.y * scale), "y ~ x + (1 | g)"), "ml")
    assert fit.sigma2 / scale**2 == pytest.approx(fit0.sigma2, rel=1e-6)
    assert fit.loglik + df.shape[0] * np.log(scale) == pytest.approx(fit0.loglik, rel=1e-9)


def test_one_way_zero_within_variance_is_scale_free():
    y = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
    g = ["a", "a", "b", "b", "c", "c"]
    for scale in (1.0, 1e-11, 1e-25, 1e25):
        with pytest.raises(InputError, match="does not vary within any group"):
            from_arrays(y * scale, g)
        noisy = y + np.array([0.0, 1e-3, 0.0, -1e-3, 0.0, 2e-3])
        assert from_arrays(noisy * scale, g).within_ss / scale**2 == pytest.approx(
            from_arrays(noisy, g).within_ss, rel=1e-9
        )
    with pytest.raises(InputError, match="rescale it"):
        from_arrays(y * 1e-200, g)


@pytest.mark.parametrize("offset", [1e6, 1e9])
def test_huge_offset_covariate_is_not_rank_deficient(offset):
    df = _frame()
    fit0 = eb.fit(design.from_frame(df, "y ~ x + (1 | g)"), "ml")
    fit = eb.fit(design.from_frame(df.assign(x=df.x + offset), "y ~ x + (1 | g)"), "ml")
    assert fit.fixed_effects()["x"]["estimate"] == pytest.approx(
        fit0.fixed_effects()["x"]["estimate"], rel=1e-6
    )
    assert fit.loglik == pytest.approx(fit0.loglik, rel=1e-8)
    # and a huge scale of the covariate
    design.from_frame(df.assign(x=df.x * 1e12), "y ~ x + (1 | g)")
    design.from_frame(df.assign(x=df.x * 1e-6 + 5), "y ~ x + (1 | g)")


@pytest.mark.parametrize(
    "formula, extra, culprit",
    [
        ("y ~ x + x2 + (1 | g)", {"x2": lambda d: 2 * d.x}, "rank deficient"),
        ("y ~ x + x2 + (1 | g)", {"x2": lambda d: 3 * d.x + 1e9}, "rank deficient"),
        ("y ~ x + c + (1 | g)", {"c": lambda d: np.full(len(d), 1e9)}, "'c' is constant"),
        (
            "y ~ x + f + h + (1 | g)",
            {
                "f": lambda d: np.where(d.x > 0, "a", "b"),
                "h": lambda d: np.where(d.x > 0, "u", "v"),
            },
            "rank deficient",
        ),
        (
            "y ~ 0 + f + one + (1 | g)",
            {"f": lambda d: np.where(d.x > 0, "a", "b"), "one": lambda d: np.ones(len(d))},
            "rank deficient",
        ),
        ("y ~ x + z + (1 | g)", {"z": lambda d: np.zeros(len(d))}, "all zero"),
        ("y ~ x + I(x + 1e9) + (1 | g)", {}, "rank deficient"),
    ],
)
def test_true_rank_deficiency_is_still_caught(formula, extra, culprit):
    df = _frame()
    for name, make in extra.items():
        df[name] = make(df)
    with pytest.raises(InputError, match=culprit) as err:
        design.from_frame(df, formula)
    assert "\n" not in str(err.value)
