"""The decomposition for several grouping factors (crossed and nested) against an independent
dense computation: Z built explicitly (N x Q), V_b = G - G Z' Sigma^-1 Z G and b = G Z' Sigma^-1 r
with Sigma = sigma^2 I + Z G Z' by numpy (no inverse of G, so a singular G is fine), the marginal
by scipy's multivariate normal; the EM fixed point at the EB-ML estimates (sigma^2 and every
factor's G), the EM equations without the V terms at the joint mode, the sparse kernel against
the per-group kernel for one factor, and the sentences."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from scipy.stats import multivariate_normal

from workbench import explain as explain_module
from workbench.explain import explain, point_terms
from workbench.fit import eb, joint_map
from workbench.jsonsafe import schema
from workbench.model.design import from_frame

CROSSED = Path(__file__).parent / "reference" / "crossed_data"
MODELS = {
    "penicillin": ("penicillin.csv", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    "pastes": ("pastes.csv", "strength ~ 1 + (1 | batch/cask)"),
    "pixel": ("pixel.csv", "pixel ~ day + day2 + Side + (1 + day | Dog) + (1 | Dog:Side)"),
    # two uncorrelated blocks of one factor: the M-step keeps G block diagonal
    "pixel_uncorr": (
        "pixel.csv",
        "pixel ~ day + day2 + Side + (1 | Dog) + (0 + day | Dog) + (1 | Dog:Side)",
    ),
    # the factor with the most effects (Dog: 10 x 3) is not the first: it is eliminated first
    "pixel_pivot": (
        "pixel.csv",
        "pixel ~ day + day2 + Side + (1 | Dog:Side) + (1 + day + Side | Dog)",
    ),
    "machines": ("machines.csv", "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)"),
    # three factors, ML on the boundary (the variance by Block is 0)
    "assay": (
        "assay.csv",
        "logDens ~ sample + dilut + (1 | Block) + (1 | Block:sample) + (1 | Block:dilut)",
    ),
}


def _data(name: str):
    file, formula = MODELS[name]
    return from_frame(pd.read_csv(CROSSED / file), formula)


@pytest.fixture(scope="module")
def fits() -> dict:
    out = {}
    for name in MODELS:
        d = _data(name)
        out[name] = (d, eb.fit(d, "ml"))
    return out


def _dense(d, beta, s, G, effects=None) -> dict:
    """Every term from dense matrices, effects factor after factor, level-major."""
    Zs, Gs = [], []
    for k, g in enumerate(d.groupings):
        cols = d.factor_cols(k)
        Zk = np.zeros((d.n_obs, g.n_levels * len(cols)))
        for a, c in enumerate(cols):
            Zk[np.arange(d.n_obs), g.codes * len(cols) + a] = d.Z[:, c]
        Zs.append(Zk)
        Gs.append(np.kron(np.eye(g.n_levels), G[np.ix_(cols, cols)]))
    Z, Gb = np.hstack(Zs), scipy.linalg.block_diag(*Gs)
    cov = s * np.eye(d.n_obs) + Z @ Gb @ Z.T
    r0 = d.y - d.X @ beta
    ZG = Z @ Gb
    V = Gb - ZG.T @ np.linalg.solve(cov, ZG)
    b = (
        ZG.T @ np.linalg.solve(cov, r0)
        if effects is None
        else np.concatenate([np.ravel(e) for e in effects])
    )
    resid = r0 - Z @ b
    edges = np.cumsum([0] + [Zk.shape[1] for Zk in Zs])
    ZtZV = Z.T @ Z @ V
    out = {
        "missing": np.trace(Z @ V @ Z.T),
        "rss": resid @ resid,
        "log_marginal": multivariate_normal(d.X @ beta, cov).logpdf(d.y),
        "factors": {},
    }
    sign, logdet_g = np.linalg.slogdet(Gb)
    if sign > 0:
        out["volume"] = 0.5 * np.linalg.slogdet(V)[1]
        out["log_joint"] = multivariate_normal(np.zeros(d.n_obs), s * np.eye(d.n_obs)).logpdf(
            resid
        ) + multivariate_normal(np.zeros(Gb.shape[0]), Gb).logpdf(b)
    for k, g in enumerate(d.groupings):
        lo, hi, q = edges[k], edges[k + 1], len(d.factor_cols(k))
        bk = b[lo:hi].reshape(g.n_levels, q)
        Vsum = sum(
            V[lo + j * q : lo + (j + 1) * q, lo + j * q : lo + (j + 1) * q]
            for j in range(g.n_levels)
        )
        out["factors"][g.name] = {
            "missing": np.trace(V[lo:hi, lo:hi] @ Zs[k].T @ Zs[k]),
            "share": np.trace(ZtZV[lo:hi, lo:hi]),  # its rows of tr(Z'Z V)
            "G_em_without": bk.T @ bk / g.n_levels,
            "G_em_with": (bk.T @ bk + Vsum) / g.n_levels,
        }
    return out


def _check(pt, ref, d, s):
    assert pt.missing == pytest.approx(ref["missing"], rel=1e-9)
    assert pt.rss == pytest.approx(ref["rss"], rel=1e-9)
    assert pt.log_marginal == pytest.approx(ref["log_marginal"], rel=1e-10)
    assert pt.p_d == pytest.approx(ref["missing"] / s, rel=1e-9)
    if "volume" in ref:
        assert pt.volume == pytest.approx(ref["volume"], rel=1e-9, abs=1e-9)
        assert pt.log_joint == pytest.approx(ref["log_joint"], rel=1e-10)
        parts = sum(f.volume for f in pt.by_factor.values()) + pt.volume_shared
        assert parts == pytest.approx(pt.volume, rel=1e-10, abs=1e-10)
    else:
        assert pt.volume == -np.inf and pt.log_joint == np.inf
    assert list(pt.by_factor) == list(d.factor_names)
    for k, name in enumerate(d.factor_names):
        f, r = pt.by_factor[name], ref["factors"][name]
        cols = d.factor_cols(k)
        assert f.missing == pytest.approx(r["missing"], rel=1e-9, abs=1e-12)
        assert f.share == pytest.approx(r["share"], rel=1e-9, abs=1e-12)
        assert 0 <= f.p_d <= f.n_levels * len(cols)
        # the M-step of a block-diagonal G: entries between blocks are 0
        same = np.array(
            [[any(a in b.cols and c in b.cols for b in d.blocks) for c in cols] for a in cols]
        )
        for key in ("G_em_with", "G_em_without"):
            np.testing.assert_allclose(
                getattr(f, key), np.where(same, r[key], 0.0), rtol=1e-8, atol=1e-14, err_msg=key
            )
            np.testing.assert_array_equal(getattr(pt, key)[np.ix_(cols, cols)], getattr(f, key))
    # the two splits of the missing trace add up
    assert pt.missing_cross + sum(f.missing for f in pt.by_factor.values()) == pytest.approx(
        pt.missing, rel=1e-10
    )
    shares = sum(f.share for f in pt.by_factor.values())
    assert shares == pytest.approx(pt.missing, rel=1e-9)


@pytest.mark.parametrize("name", list(MODELS))
def test_terms_match_dense_computation_at_ml(fits, name):
    d, ml = fits[name]
    pt = point_terms("EB", d, ml.beta, ml.sigma2, ml.G)
    _check(pt, _dense(d, ml.beta, ml.sigma2, ml.G), d, ml.sigma2)
    # the EM fixed point: ML stationarity in sigma^2 and in every factor's G
    assert pt.sigma2_em_with == pytest.approx(ml.sigma2, rel=1e-6)
    for k, f in enumerate(pt.by_factor.values()):
        np.testing.assert_allclose(f.G_em_with, f.G, rtol=1e-5, atol=1e-8 * ml.sigma2)
        np.testing.assert_array_equal(f.G, ml.G[np.ix_(d.factor_cols(k), d.factor_cols(k))])
    assert pt.log_marginal == pytest.approx(ml.loglik, rel=1e-10)
    if np.isfinite(pt.volume):  # Laplace, exact for the LMM: l = h(b_hat) + volume + Q/2 log 2pi
        Q = sum(f.n_levels * len(f.variances) for f in pt.by_factor.values())
        assert pt.log_marginal - pt.log_joint == pytest.approx(
            pt.volume + 0.5 * Q * np.log(2 * np.pi), rel=1e-10
        )


@pytest.mark.parametrize("dense_max", [0, 4096])
@pytest.mark.parametrize("name", ["penicillin", "pixel_pivot"])
def test_terms_match_dense_computation_off_the_optimum(fits, name, dense_max, monkeypatch):
    """At another point, with given effects: the EM updates differ from the point. The selected
    inversion one column of S^-1 at a time, by SuperLU's solve or by dense triangular solves
    with its factors, gives the same numbers."""
    monkeypatch.setattr(explain_module, "CHUNK_DOUBLES", 1)
    monkeypatch.setattr(explain_module, "DENSE_SOLVE_MAX", dense_max)
    d, ml = fits[name]
    rng = np.random.default_rng(7)
    beta = ml.beta + 0.1 * rng.standard_normal(d.p)
    s, G = 1.3 * ml.sigma2, 0.7 * ml.G
    effects = tuple(m + 0.05 * rng.standard_normal(m.shape) for m in ml.modes)
    pt = point_terms("x", d, beta, s, G, effects=effects)
    _check(pt, _dense(d, beta, s, G, effects), d, s)
    assert pt.sigma2_em_with != pytest.approx(s, rel=1e-3)


def test_sparse_kernel_equals_per_group_kernel_for_one_factor():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(12), 8)
    x = rng.uniform(-1, 1, g.size)
    y = 1 + x + rng.normal(0, 1, 12)[g] + rng.normal(0, 0.5, 12)[g] * x + rng.normal(0, 0.3, g.size)
    d = from_frame(pd.DataFrame({"y": y, "x": x, "g": g.astype(str)}), "y ~ x + (1 + x | g)")
    ml = eb.fit(d, "ml")
    for effects in (None, ml.modes[0] + 0.1):
        a = point_terms("x", d, ml.beta, ml.sigma2, ml.G, effects=effects, kernel="general")
        b = point_terms("x", d, ml.beta, ml.sigma2, ml.G, effects=effects, kernel="sparse")
        assert a.by_factor is None and list(b.by_factor) == ["g"]
        for key, value in a.to_dict().items():
            if key == "variances":
                assert b.by_factor["g"].variances == pytest.approx(value, rel=1e-12)
            elif key != "label":
                np.testing.assert_allclose(b.to_dict()[key], value, rtol=1e-9, err_msg=key)
        assert b.missing_cross == pytest.approx(0.0, abs=1e-9 * b.missing)


def test_explain_names_every_factor_and_the_joint_mode_drops_the_v_terms(fits):
    d, ml = fits["penicillin"]
    jm = joint_map.fit(d, ml, n_starts=2)
    assert jm.status == "interior"
    ex = explain(SimpleNamespace(data=d, eb_ml=ml, joint_map=jm))
    e, j = ex.eb, ex.joint
    assert ex.n_groups is None and ex.n_levels == {"plate": 24, "sample": 6}
    # the joint mode solves the EM equations without the missing terms, factor by factor
    assert j.sigma2_em_without == pytest.approx(jm.sigma2, rel=1e-6)
    for k, f in enumerate(j.by_factor.values()):
        cols = d.factor_cols(k)
        np.testing.assert_allclose(f.G_em_without, jm.G[np.ix_(cols, cols)], rtol=1e-5)
        assert f.share > 0
    assert j.sigma2 < e.sigma2 and j.log_joint > e.log_joint and j.log_marginal < e.log_marginal
    text = " ".join(ex.sentences)
    low = 1 - j.sigma2 / e.sigma2
    assert f"sigma^2 comes out {100 * low:.0f}% low" in text
    for name, f in e.by_factor.items():
        assert f"the variance of (Intercept) by {name} comes out" in text
        assert f"{name}'s {f.n_levels} effects hide p_D = {f.p_d:.3g}" in text
    assert f"take back {-e.missing_cross:.4g}" in text and e.missing_cross < 0
    assert f"the shared -1/2 log det A is {e.volume_shared:.5g}" in text
    out = ex.to_dict()
    json.dumps(out, allow_nan=False)
    _valid_explanation(out)
    assert set(out["eb_ml"]["by_factor"]) == {"plate", "sample"}
    variances = {"(Intercept)|plate": ml.G[0, 0], "(Intercept)|sample": ml.G[1, 1]}
    assert out["eb_ml"]["variances"] == variances
    assert out["balanced"] is None and "one-way model" in out["balanced_note"]


def _valid_explanation(out: dict) -> None:
    """The published JSON Schema's explanation block (workbench/schema)."""
    import jsonschema

    defs = schema()["$defs"]
    jsonschema.Draft202012Validator({"$defs": defs, "$ref": "#/$defs/explanation"}).validate(out)


def test_boundary_fit_with_three_factors_names_the_zero_variance(fits):
    d, ml = fits["assay"]
    ex = explain(SimpleNamespace(data=d, eb_ml=ml, joint_map=None))
    e = ex.eb
    assert e.volume == -np.inf and e.by_factor["Block"].volume == -np.inf
    assert np.isfinite(e.volume_shared) and e.by_factor["Block"].share == 0
    text = " ".join(ex.sentences)
    assert "on the boundary (the variance of (Intercept) by Block is 0)" in text
    assert "not computed" in ex.sentences[-1]
    out = ex.to_dict()
    assert out["eb_ml"]["volume"] is None and out["eb_ml"]["by_factor"]["Block"]["volume"] is None
    assert any("(Intercept) by Block is 0" in n for n in out["notes"])
    _valid_explanation(out)
