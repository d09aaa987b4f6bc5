"""Jupyter: `repr(Comparison)` is a header and one short line per method run, every fit
record's repr one line without arrays; `Comparison._repr_html_` shows the headline, the
estimates and one figure, and states MCMC's settings (and the priors) only when they were used.
No sampler runs here: the MCMC record is made of numpy draws (`boundary_cases.posterior`)."""

from __future__ import annotations

import html as htmllib
import re

import pytest
from boundary_cases import attach, posterior, singular_slope_frame

import workbench
from workbench.explain import headline
from workbench.present.report import estimates, render

FAST = {"n_starts": 1, "n_jobs": 1}


@pytest.fixture(scope="module")
def dyestuff(datasets):
    """No interior centered joint mode, an interior +priors non-centered one."""
    methods = ["anova", "eb-ml", "eb-reml", "joint-map:centered", "joint-map+priors:noncentered"]
    return workbench.compare(datasets["dyestuff"], methods=methods, **FAST)


@pytest.fixture(scope="module")
def slopes():
    """A random-slope model (a correlation) without priors anywhere: no +priors joint MAP."""
    return workbench.compare(
        singular_slope_frame(),
        formula="y ~ x + (1 + x | g)",
        methods=["eb-ml", "eb-reml", "joint-map:centered"],
        **FAST,
    )


@pytest.fixture(scope="module")
def with_mcmc(dyestuff):
    return attach(dyestuff, posterior(dyestuff.data))


def _no_arrays(text: str) -> None:
    assert "array(" not in text and "\n" not in text and len(text) < 300, text


def test_repr_is_one_short_line_per_method(dyestuff, with_mcmc):
    lines = repr(dyestuff).splitlines()
    assert lines[0] == "Comparison(Yield ~ 1 + (1 | Batch), N=30, levels: Batch 6)"
    labels = [ln.split(":")[0].strip() for ln in lines[1:]]
    assert labels == [
        "ANOVA",
        "EB-ML",
        "EB-REML",
        "joint MAP centered",
        "joint MAP noncentered +priors",
        "exact posterior",  # a +priors joint MAP ran: compare adds the exact posterior
    ]
    assert lines[2] == "  EB-ML: sigma2=2451.2 tau2=1388.3 loglik=-163.66"  # lme4's Dyestuff
    assert lines[4] == "  joint MAP centered: no interior mode (1 starts: 1 collapse)"
    assert re.fullmatch(
        r"  joint MAP noncentered \+priors: sigma2=\S+ tau2=\S+ log joint=\S+", lines[5]
    )
    assert all(len(ln) < 120 for ln in lines) and "array(" not in repr(dyestuff)
    mcmc = repr(with_mcmc).splitlines()
    assert mcmc[-1].startswith("  MCMC (collapsed, 2 x 60): means sigma2=") or any(
        ln.startswith("  MCMC (collapsed, 2 x 60): means sigma2=") for ln in mcmc
    )
    assert len(repr(with_mcmc)) < 1200


def test_repr_of_a_random_slope_model(slopes):
    lines = repr(slopes).splitlines()
    assert lines[0] == "Comparison(y ~ x + (1 + x | g), N=48, levels: g 8)"
    ml = slopes.eb_ml
    cor = ml.components.correlations["(Intercept):x"]
    assert lines[1].startswith(f"  EB-ML: sigma2={ml.sigma2:.4g} var[(Intercept)]=")
    assert "cor[(Intercept):x]=" in lines[1] or cor != cor  # nan: the boundary fit
    assert len(lines) == 4 + (len(slopes.warnings()) > 0)


def test_every_record_repr_is_one_line_without_arrays(dyestuff, with_mcmc):
    records = [dyestuff.anova, dyestuff.eb_ml, dyestuff.eb_reml, dyestuff.profile]
    records += list(dyestuff.joint_maps.values())
    records += [dyestuff.joint_map.starts[0], dyestuff.exact_posterior, with_mcmc.mcmc]
    for r in records:
        _no_arrays(repr(r))
    assert repr(dyestuff.eb_ml) == "EBFit(ML: sigma2=2451.2 tau2=1388.3 loglik=-163.66)"
    assert repr(with_mcmc.mcmc).startswith("Posterior(fake, collapsed, 2 chains x 60 draws: ")


def _text(html: str) -> str:
    """The visible text, whitespace runs as one space."""
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_repr_html_has_the_headline_the_estimates_and_one_figure(dyestuff):
    html = dyestuff._repr_html_()
    assert "<html" not in html and "<body" not in html  # a fragment for the notebook
    for sentence in headline(dyestuff):
        assert htmllib.escape(sentence, quote=False) in html
    for table in estimates(dyestuff):
        assert f'id="{table["id"]}"' in html
    assert "1388.33" in html and "2451.25" in html  # EB-ML's tau^2 and sigma^2
    assert html.count("<img") == 1 and 'id="fig-profiles"' in html  # no MCMC: the profiles
    text = _text(html)
    assert "MCMC" not in text and "target_accept" not in text and "chains" not in text
    assert "Priors (the joint MAP “+ priors” and the exact posterior)" in text
    assert len(html) < 400_000  # one inline PNG, not the report's dozen


def test_html_states_only_the_settings_used(slopes):
    """Without MCMC and without a +priors joint MAP, neither the sampler's settings nor the
    priors are stated: in the notebook display, nor in the report's model section."""
    report = render(slopes, command="test", fragment=True)
    for html in (slopes._repr_html_(), report):
        text = _text(html)
        assert "target_accept" not in text and "chains ×" not in text
        assert "Priors" not in text and "HalfNormal" not in text
    assert "The joint MAP without priors maximises the h-likelihood" in _text(report)


def test_repr_html_with_mcmc_states_its_settings(with_mcmc):
    html = with_mcmc._repr_html_()
    text = _text(html)
    assert "MCMC: 2 chains × 60 draws after 0 tuning steps, collapsed form" in text
    assert "target_accept 0.9 (fake)" in text  # the sampler that made the draws
    assert "R-hat max" in text and html.count("<img") == 1 and 'id="fig-marginals"' in html
    report = _text(render(with_mcmc, command="test", fragment=True))
    assert "MCMC: 2 chains × 60 draws" in report and "Priors used by MCMC" in report
