"""Simulation studies: identical results whatever the backend and number of workers (local
processes, a Dask cluster on loopback), resuming, a SIGKILL mid-run, refusal of a changed
definition, and the summaries against a direct computation."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from workbench.cli import main
from workbench.simulate import (
    Study,
    check_study,
    load_study,
    render_report,
    report_replicates,
    run_study,
    study_table,
    summarize,
)
from workbench.simulate.summary import performance

STUDY = Study(
    name="t",
    grid={"m": [8], "group_sizes": ["3", "2-5"], "mu": [0.0], "sigma": [1.0], "tau": [1.5]},
    replicates=3,
    methods=("eb-ml", "joint-map:centered"),
    seed=7,
    n_starts=4,
)


def _table(out):
    return (
        study_table(STUDY, out)
        .sort_values(["setting", "replicate", "method", "parameter", "group"])
        .reset_index(drop=True)
    )


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    assert run_study(STUDY, out, n_jobs=1, progress=False) == {"computed": 6, "skipped": 0}
    return out


def test_same_results_with_two_processes(serial, tmp_path):
    run_study(STUDY, tmp_path, n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(_table(serial), _table(tmp_path))


def test_same_results_on_a_dask_cluster_on_loopback(serial, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        run_study(STUDY, tmp_path, scheduler=cluster.scheduler_address, progress=False)
    pd.testing.assert_frame_equal(_table(serial), _table(tmp_path))


def test_resume_skips_finished_replicates(serial, tmp_path):
    run_study(STUDY, tmp_path, n_jobs=1, progress=False)
    victim = sorted((tmp_path / "replicates").glob("*.csv"))[2]
    victim.unlink()
    (tmp_path / "replicates" / ".s0000_r000009.csv.123.tmp").write_text("half a line")
    assert run_study(STUDY, tmp_path, n_jobs=1, progress=False) == {"computed": 1, "skipped": 5}
    assert not list((tmp_path / "replicates").glob(".*.tmp"))
    pd.testing.assert_frame_equal(_table(serial), _table(tmp_path))


def test_changed_definition_is_refused(tmp_path, capsys):
    case = tmp_path / "s.toml"
    text = (
        '[simulation]\nm = 8\ngroup_sizes = "3"\nmu = 0.0\nsigma = 1.0\ntau = 1.0\n'
        'replicates = 2\nmethods = ["eb-ml"]\nseed = {seed}\n'
    )
    case.write_text(text.format(seed=1))
    out = tmp_path / "store"
    assert main(["simulate", str(case), "--out", str(out), "--quiet"]) == 0
    assert (out / "summary.csv").is_file() and (out / "report.html").is_file()
    case.write_text(text.format(seed=2))
    capsys.readouterr()
    assert main(["simulate", str(case), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different study definition" in err and len(err.strip().splitlines()) == 1
    # another replicate count is refused before any computing: the 2-replicate report stays
    report = (out / "report.html").read_bytes()
    for n in (1, 3):
        case.write_text(text.format(seed=1).replace("replicates = 2", f"replicates = {n}"))
        assert main(["simulate", str(case), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert f"made from 2 replicates per setting and this run has {n}" in err
        assert "--force" in err and "--out" in err
        assert (out / "report.html").read_bytes() == report
        assert len(list((out / "replicates").glob("*.csv"))) == 2
    # --force extends the same store (resume) and replaces the report
    assert main(["simulate", str(case), "--out", str(out), "--quiet", "--force"]) == 0
    assert "1 replicates computed, 2 resumed" in capsys.readouterr().out
    assert report_replicates(out) == 3
    assert '<meta name="workbench:replicates" content="3">' in (out / "report.html").read_text()
    (out / "summary.csv").unlink()  # the report's tag says it too
    assert report_replicates(out) == 3
    (out / "report.html").write_text("<html>an older report</html>")
    assert report_replicates(out) == -1
    case.write_text(text.format(seed=1))
    assert main(["simulate", str(case), "--out", str(out), "--quiet"]) == 2
    assert "an unknown number of replicates" in capsys.readouterr().err


def test_sigkill_loses_only_replicates_in_flight(tmp_path):
    case = tmp_path / "k.toml"
    case.write_text(
        '[simulation]\nm = 30\ngroup_sizes = "2-8"\nmu = 0.0\nsigma = 1.0\n'
        'tau = 1.0\nreplicates = 400\nmethods = ["eb-ml", "eb-reml"]\nseed = 3\n'
    )
    out = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "workbench.cli",
        "simulate",
        str(case),
        "--out",
        str(out),
        "--n-jobs",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "replicates").glob("*.csv"))) < 5:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    files = list((out / "replicates").glob("*.csv"))
    assert 5 <= len(files) < 400
    for f in files:  # every stored replicate is whole
        df = pd.read_csv(f)
        assert len(df) == 2 * (3 + 30) and df["estimate"].notna().all()
    study = load_study(case)
    small = Study(**{**study.__dict__, "replicates": len(files) + 2})
    counts = run_study(small, out, n_jobs=1, progress=False)
    assert counts["skipped"] >= len(files) - 1 and counts["computed"] <= 3
    fresh = tmp_path / "fresh"
    run_study(small, fresh, n_jobs=1, progress=False)
    pd.testing.assert_frame_equal(
        study_table(small, out)
        .sort_values(["setting", "replicate", "method", "parameter", "group"])
        .reset_index(drop=True),
        study_table(small, fresh)
        .sort_values(["setting", "replicate", "method", "parameter", "group"])
        .reset_index(drop=True),
    )


def test_summaries_against_direct_computation(serial):
    table = study_table(STUDY, serial)
    summ = summarize(table, STUDY)
    for (si, meth, par), g in table.groupby(["setting", "method", "parameter"]):
        row = summ[(summ.setting == si) & (summ.method == meth) & (summ.parameter == par)].iloc[0]
        ok = g.dropna(subset=["estimate"])
        assert row["bias"] == pytest.approx((ok.estimate - ok.truth).mean())
        assert row["rmse"] == pytest.approx(np.sqrt(((ok.estimate - ok.truth) ** 2).mean()))
        if par != "group_mean":
            assert row["coverage"] == pytest.approx(g["covered"].dropna().mean())
            truth = g.truth.iloc[0]
            if truth != 0:
                assert row["relative_bias"] == pytest.approx(row["bias"] / truth)
            else:
                assert np.isnan(row["relative_bias"])
    theory = summ[(summ.method == "joint-map:centered") & (summ.parameter == "sigma2")]
    assert theory[theory.group_sizes == "3"]["theory_ratio"].iloc[0] == pytest.approx(2 / 3)
    assert theory[theory.group_sizes == "2-5"]["theory_ratio"].isna().all()


def test_shipped_study_reproduces_the_question_in_small():
    """The shipped case (fewer replicates): joint-MAP sigma^2 low by about (n - 1)/n, its
    group intervals under-cover; EB stays near nominal."""
    study = load_study(ROOT / "models" / "sim_small_groups.toml")
    assert study.replicates >= 200
    small = Study(
        **{**study.__dict__, "replicates": 40, "methods": ("eb-reml", "joint-map:centered")}
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_study(small, tmp, n_jobs=2, progress=False)
        s = summarize(study_table(small, tmp), small)
    jm = s[(s.method == "joint-map:centered") & (s.parameter == "sigma2")]
    for _, row in jm.iterrows():
        assert row["ratio_to_truth"] == pytest.approx(row["theory_ratio"], abs=0.1)
    theta = s[s.parameter == "group_mean"].set_index(["setting", "method"])["coverage"]
    for si in (0, 1):
        assert theta[(si, "joint-map:centered")] < 0.91
        assert theta[(si, "eb-reml")] > 0.91


def test_mcmc_method_in_a_study(tmp_path):
    study = Study(
        name="mc",
        grid={"m": [6], "group_sizes": ["4"], "mu": [1.0], "sigma": [1.0], "tau": [1.0]},
        replicates=1,
        methods=("mcmc",),
        seed=2,
        mcmc={"chains": 2, "draws": 150, "tune": 150},
    )
    run_study(study, tmp_path, n_jobs=1, progress=False)
    t = study_table(study, tmp_path)
    assert set(t.parameter) == {"mu", "sigma2", "tau2", "group_mean"}
    assert t["estimate"].notna().all() and (t["lo"] < t["hi"]).all()
    assert t["covered"].isin([0.0, 1.0]).all()


# ----------------------------------------------------------------------------------------------
# Formula models: a random-slope study through the same compare() pipeline

SLOPE_TOML = """
[simulation]
formula = "y ~ 1 + x + (1 + x | g)"
m = 8
group_sizes = "4-6"
beta = {{ "(Intercept)" = 5.0, x = 2.0 }}
sigma = 1.0
sd = {{ "(Intercept)" = 1.5, x = [0.5, 1.0] }}
cor = {{ "x:(Intercept)" = 0.3 }}
replicates = 2
methods = [{methods}]
seed = 11
n_starts = 4

[simulation.covariates]
x = "normal(0, 1)"
"""
SLOPE_PARAMS = {
    "beta[(Intercept)]",
    "beta[x]",
    "sigma2",
    "var[(Intercept)]",
    "var[x]",
    "cor[(Intercept):x]",
}


def _slope_study(tmp_path, methods='"eb-ml", "joint-map"'):
    case = tmp_path / "slopes.toml"
    case.write_text(SLOPE_TOML.format(methods=methods))
    return load_study(case)


def _sorted(t):
    return t.sort_values(["setting", "replicate", "method", "parameter"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def slopes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slopes")
    study = _slope_study(tmp)
    out = tmp / "serial"
    assert run_study(study, out, n_jobs=1, progress=False) == {"computed": 4, "skipped": 0}
    return study, out


def test_slope_study_definition(slopes):
    study, _ = slopes
    # the correlation is stored in the JSON's order whichever way round the file names it
    assert study.grid["cor[(Intercept):x]"] == [0.3]
    assert [dict(s.params)["sd[x]"] for s in study.settings()] == [0.5, 1.0]
    assert study.covariates == {"x": "normal(0, 1)"}


def test_slope_study_coverage_table_has_every_parameter(slopes):
    study, out = slopes
    table = study_table(study, out)
    summ = summarize(table, study)
    labels = {
        "eb-ml",
        *(f"joint-map{p}:{c}" for p in ("", "+priors") for c in ("centered", "noncentered")),
    }
    assert set(summ.method) == labels
    for meth in labels:
        assert set(summ[summ.method == meth].parameter) == SLOPE_PARAMS
    eb = summ[summ.method == "eb-ml"].set_index(["setting", "parameter"])
    assert eb["coverage"].notna().all() and (eb["replicates_with_estimate"] == 2).all()
    assert eb.loc[(1, "var[x]"), "truth"] == pytest.approx(1.0)
    assert eb.loc[(0, "var[x]"), "truth"] == pytest.approx(0.25)
    assert eb.loc[(0, "cor[(Intercept):x]"), "truth"] == pytest.approx(0.3)
    assert summ["theory_ratio"].isna().all()  # (n - 1)/n is the one-way theory only
    # interval ends bracket the estimate wherever both exist
    rows = table.dropna(subset=["estimate", "lo", "hi"])
    assert ((rows.lo <= rows.estimate) & (rows.estimate <= rows.hi)).all()


def test_slope_study_same_with_two_processes_and_resumes(slopes, tmp_path):
    study, serial = slopes
    run_study(study, tmp_path, n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(
        _sorted(study_table(study, serial)), _sorted(study_table(study, tmp_path))
    )
    sorted((tmp_path / "replicates").glob("*.csv"))[1].unlink()
    assert run_study(study, tmp_path, n_jobs=1, progress=False) == {"computed": 1, "skipped": 3}
    pd.testing.assert_frame_equal(
        _sorted(study_table(study, serial)), _sorted(study_table(study, tmp_path))
    )


def test_simulated_slopes_recover_the_truth():
    """The generator draws from the model: EB-ML on one large simulated data set is near the
    true fixed effects, variances and correlation (a wrong covariance factor or pair order
    would fail)."""
    import workbench
    from workbench.simulate import simulate_frame

    study = check_study(
        Study(
            name="big",
            grid={
                "m": [400],
                "group_sizes": ["10"],
                "sigma": [1.0],
                "beta[(Intercept)]": [5.0],
                "beta[x]": [2.0],
                "sd[(Intercept)]": [2.0],
                "sd[x]": [1.0],
                "cor[x:(Intercept)]": [-0.6],
            },
            replicates=1,
            formula="y ~ 1 + x + (1 + x | g)",
            covariates={"x": "uniform(-2, 2)"},
        )
    )
    s = study.settings()[0]
    frame = simulate_frame(study, s, np.random.default_rng(5))
    assert frame.groupby("g").size().eq(10).all() and frame.x.between(-2, 2).all()
    fit = workbench.compare(frame, formula=study.formula, methods=["eb-ml"], n_jobs=1).to_dict()
    eb = fit["eb_ml"]
    comp = next(iter(eb["variance_components"].values()))
    assert eb["fixed_effects"]["x"]["estimate"] == pytest.approx(2.0, abs=0.2)
    assert eb["sigma2"] == pytest.approx(1.0, rel=0.1)
    assert comp["variances"]["(Intercept)"] == pytest.approx(4.0, rel=0.25)
    assert comp["variances"]["x"] == pytest.approx(1.0, rel=0.25)
    assert comp["correlations"]["(Intercept):x"] == pytest.approx(-0.6, abs=0.12)


def test_group_level_and_categorical_covariates():
    from workbench.simulate import simulate_frame

    study = check_study(
        Study(
            name="cov",
            grid={
                "m": [6],
                "group_sizes": ["3-5"],
                "sigma": [1.0],
                "beta[(Intercept)]": [0.0],
                "beta[w]": [1.0],
                "beta[fb]": [0.5],
                "beta[fc]": [-0.5],
                "sd[(Intercept)]": [1.0],
            },
            replicates=1,
            formula="y ~ w + f + (1 | g)",
            covariates={"w": "group_normal(0, 1)", "f": "categorical(a, b, c)"},
        )
    )
    frame = simulate_frame(study, study.settings()[0], np.random.default_rng(1))
    assert frame.groupby("g")["w"].nunique().eq(1).all()
    assert set(frame.f) <= {"a", "b", "c"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"beta": '{ "(Intercept)" = 5.0, z = 2.0 }'}, "'z' is not a beta term"),
        ({"sd": '{ "(Intercept)" = 1.5 }'}, "missing 'x'"),
        ({"cor": '{ "x:y" = 0.3 }'}, "'x:y' is not a cor term"),
        ({"cor": '{ "x:(Intercept)" = 1.0 }'}, "cor.x:(Intercept)"),
        ({"mu": "1.0"}, "not used by this study"),
        ({"level": "0.9"}, "a study's level is 0.95"),
        ({"formula": '"y ~ 1 + z + (1 | g)"'}, "uses column 'z'"),
    ],
)
def test_formula_study_refusals(tmp_path, change, message):
    from workbench.errors import InputError

    text = SLOPE_TOML.format(methods='"eb-ml"')
    for key, value in change.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        lines.insert(lines.index("[simulation]") + 1, f"{key} = {value}")
        text = "\n".join(lines)
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(InputError, match=re.escape(message)):
        load_study(tmp_path / "s.toml")


def test_bad_covariate_text_is_refused(tmp_path):
    from workbench.errors import InputError

    (tmp_path / "s.toml").write_text(
        SLOPE_TOML.format(methods='"eb-ml"').replace('"normal(0, 1)"', '"__import__(0, 1)"')
    )
    with pytest.raises(InputError, match="is not a covariate"):
        load_study(tmp_path / "s.toml")


def test_oneway_formula_study_is_the_oneway_study():
    """`formula = "y ~ 1 + (1 | g)"` with beta/sd is today's one-way study (mu/tau): the
    same definition, fingerprint and settings."""
    base = check_study(STUDY)
    grid = {k: v for k, v in STUDY.grid.items() if k not in ("mu", "tau")}
    grid |= {"beta[(Intercept)]": [0.0], "sd[(Intercept)]": [1.5]}
    same = check_study(Study(**{**STUDY.__dict__, "grid": grid, "formula": "y ~ 1 + (1 | g)"}))
    assert same.fingerprint() == base.fingerprint() and same.settings() == base.settings()


def test_shipped_slope_study_loads():
    study = load_study(ROOT / "models" / "sim_slopes.toml")
    assert not study.oneway and len(study.settings()) == 2
    assert set(study.methods) == {"eb-ml", "eb-reml", "joint-map"}


# ----------------------------------------------------------------------------------------------
# The performance measures of Morris, White & Crowther (2019), Table 6, on hand-made tables

Z95 = 1.959963984540054


def _hand_table(est, se, lo, hi, truth=1.0, groups=1):
    n = len(est)
    return pd.DataFrame(
        {
            "replicate": np.repeat(np.arange(n // groups), groups),
            "truth": truth if np.ndim(truth) else [truth] * n,
            "estimate": est,
            "se": se,
            "lo": lo,
            "hi": hi,
        }
    )


def test_performance_measures_and_mcse_by_hand():
    """Six replicates of a scalar estimand (truth 1): one without an estimate (nor SE nor
    interval), one with an estimate but no SE, one with no interval. Every measure and MCSE
    against Table 6 written out by hand (sums over plain lists)."""
    nan = float("nan")
    est = [1.2, 0.8, 1.5, 0.9, nan, 1.1]
    se = [0.3, 0.25, 0.4, nan, nan, 0.35]
    lo = [0.7, 0.9, 1.05, 0.5, nan, nan]
    hi = [1.8, 1.3, 2.0, 1.2, nan, nan]
    r = performance(_hand_table(est, se, lo, hi))
    th = [1.2, 0.8, 1.5, 0.9, 1.1]  # the 5 estimates
    n = 5
    mean = sum(th) / n  # 1.1
    ss = sum((t - mean) ** 2 for t in th)  # 0.3
    assert (r["replicates_with_estimate"], r["replicates_with_se"]) == (5, 4)
    assert r["replicates_with_interval"] == 4
    assert r["bias"] == pytest.approx(0.1)
    assert r["bias_mcse"] == pytest.approx((ss / (n * (n - 1))) ** 0.5)  # sqrt(0.015)
    assert r["empse"] == pytest.approx((ss / (n - 1)) ** 0.5)  # sqrt(0.075)
    assert r["empse_mcse"] == pytest.approx(r["empse"] / (2 * (n - 1)) ** 0.5)
    mse = sum((t - 1) ** 2 for t in th) / n  # 0.07
    assert r["rmse"] == pytest.approx(mse**0.5)
    mse_mcse = (sum(((t - 1) ** 2 - mse) ** 2 for t in th) / (n * (n - 1))) ** 0.5
    assert r["rmse_mcse"] == pytest.approx(mse_mcse / (2 * mse**0.5))
    v = [0.09, 0.0625, 0.16, 0.1225]  # the 4 squared SEs
    k = 4
    modse = (sum(v) / k) ** 0.5
    var_v = sum((x - sum(v) / k) ** 2 for x in v) / (k - 1)
    assert r["modse"] == pytest.approx(modse)
    assert r["modse_mcse"] == pytest.approx((var_v / (4 * k * modse**2)) ** 0.5)
    ratio = modse / r["empse"]
    assert r["relerr_modse"] == pytest.approx(100 * (ratio - 1))
    assert r["relerr_modse_mcse"] == pytest.approx(
        100 * ratio * (var_v / (4 * k * modse**4) + 1 / (2 * (n - 1))) ** 0.5
    )
    # coverage of truth 1: [0.7,1.8] yes, [0.9,1.3] yes, [1.05,2.0] no, [0.5,1.2] yes -> 3/4
    assert r["coverage"] == pytest.approx(0.75)
    assert r["coverage_mcse"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    # of theta-bar = 1.1: yes, yes, yes, yes -> 4/4 (bias-eliminated)
    assert r["be_coverage"] == 1.0 and r["be_coverage_mcse"] == 0.0


def test_performance_without_se_interval_or_estimate():
    nan = float("nan")
    r = performance(_hand_table([2.0, 4.0], [nan, nan], [nan, nan], [nan, nan], truth=3.0))
    assert r["bias"] == 0.0 and r["replicates_with_se"] == 0
    assert r["replicates_with_interval"] == 0
    for k in ("modse", "relerr_modse", "coverage", "be_coverage", "coverage_mcse"):
        assert np.isnan(r[k])
    one = performance(_hand_table([2.0], [0.5], [1.0], [3.5], truth=3.0))
    assert one["bias"] == -1.0 and one["coverage"] == 1.0
    assert np.isnan(one["bias_mcse"]) and np.isnan(one["empse"])
    none = performance(_hand_table([nan], [nan], [nan], [nan]))
    assert none["replicates_with_estimate"] == 0 and np.isnan(none["bias"])


def test_group_mean_measures_take_the_replicate_as_the_unit():
    """Group means (a truth per group and replicate): pooled measures, MCSEs from the
    per-replicate means (3 replicates x 2 groups)."""
    truth = [0.0, 1.0, 2.0, -1.0, 0.5, 0.5]
    err = np.array([0.2, -0.1, 0.4, 0.0, -0.3, 0.1])
    est = list(np.array(truth) + err)
    se = [0.2, 0.2, 0.3, 0.3, 0.1, 0.3]
    lo = [e - Z95 * s for e, s in zip(est, se, strict=True)]
    hi = [e + Z95 * s for e, s in zip(est, se, strict=True)]
    r = performance(_hand_table(est, se, lo, hi, truth=truth, groups=2))
    assert r["replicates_with_estimate"] == 3
    assert r["bias"] == pytest.approx(err.mean())
    rep_means = [0.05, 0.2, -0.1]
    assert r["bias_mcse"] == pytest.approx(np.std(rep_means, ddof=1) / np.sqrt(3))
    assert r["empse"] == pytest.approx(np.std(err, ddof=1))
    assert r["rmse"] == pytest.approx(np.sqrt((err**2).mean()))
    assert r["modse"] == pytest.approx(np.sqrt(np.mean(np.square(se))))
    covered = np.abs(err) <= Z95 * np.array(se)  # |error| <= z se: 1, 1, 0, 1, 0, 1
    assert r["coverage"] == pytest.approx(covered.mean())
    per_rep = covered.reshape(3, 2).mean(axis=1)
    assert r["coverage_mcse"] == pytest.approx(np.std(per_rep, ddof=1) / np.sqrt(3))
    shifted = np.abs(err - err.mean()) <= Z95 * np.array(se)
    assert r["be_coverage"] == pytest.approx(shifted.mean())


def test_model_ses_in_the_replicates(serial):
    """The SEs stored per replicate: EB's for mu, sigma^2, tau^2 and the group means (the
    conditional SD: its interval is +- z SE); the joint MAP's sigma^2 SE is the delta method of
    its log-scale Wald interval: SE = sigma^2 log(hi/lo) / (2 z)."""
    t = study_table(STUDY, serial)
    eb = t[t.method == "eb-ml"]
    assert eb["se"].notna().all() and (eb["se"] > 0).all()
    g = eb[eb.parameter == "group_mean"]
    np.testing.assert_allclose(g["se"], (g["hi"] - g["lo"]) / (2 * Z95), rtol=1e-9)
    jm = t[(t.method == "joint-map:centered") & (t.parameter == "sigma2")].dropna(subset=["se"])
    assert len(jm)
    np.testing.assert_allclose(
        jm["se"], jm["estimate"] * np.log(jm["hi"] / jm["lo"]) / (2 * Z95), rtol=1e-6
    )
    gm = t[(t.method == "joint-map:centered") & (t.parameter == "group_mean")].dropna()
    np.testing.assert_allclose(gm["se"], (gm["hi"] - gm["lo"]) / (2 * Z95), rtol=1e-9)
    summ = summarize(t, STUDY)
    assert (summ["replicates_with_se"] == summ["replicates_with_estimate"]).all()


def _headings(html: str) -> list[str]:
    return re.findall(r"<h2>([^<]+)</h2>", html)


def test_report_in_ademp_order_with_every_measure(slopes):
    """The report's sections are Aims, Data-generating mechanisms, Estimands, Methods,
    Performance measures (then provenance); one table per parameter with the seven measures;
    'no SE' where EB gives none (variances of a formula model); the replicate count's MCSE."""
    study, out = slopes
    study = Study(**{**study.__dict__, "title": "Slopes T", "description": "Aim D."})
    summ = summarize(study_table(study, out), study)
    html = render_report(study, summ, command="c", counts={"computed": 4, "skipped": 0}, seconds=1)
    assert _headings(html)[:5] == [
        "Aims",
        "Data-generating mechanisms",
        "Estimands",
        "Methods",
        "Performance measures",
    ]
    assert "<title>Slopes T</title>" in html and "Aim D." in html
    for p in SLOPE_PARAMS:
        assert f'id="perf-{p}"' in html
    for head in ("bias", "EmpSE", "ModSE", "ModSE rel. err. %", "coverage %", "BE cov. %"):
        assert f"<th>{head}</th>" in html
    assert "no SE" in html  # EB-ML: the variances have profile intervals only
    text = " ".join(html.split())
    assert "√(0.95 × 0.05 / 2) = 15 percentage points" in text
    assert "full factorial of sd[x] (2) = 2 settings" in text
    # summary.csv carries every measure with its MCSE and the counts
    for col in ("empse", "modse", "relerr_modse", "be_coverage", "rmse"):
        assert col in summ and col + "_mcse" in summ
    eb = summ[(summ.method == "eb-ml") & (summ.parameter == "var[x]")]
    assert (eb["replicates_with_se"] == 0).all() and (eb["replicates_with_interval"] >= 1).all()


def test_study_title_and_description_are_read(tmp_path):
    case = tmp_path / "s.toml"
    case.write_text('title = "T  one"\ndescription = "D"\n' + SLOPE_TOML.format(methods='"eb-ml"'))
    study = load_study(case)
    assert (study.title, study.description) == ("T one", "D")
    plain = _slope_study(tmp_path, '"eb-ml"')  # no title: the same store
    assert plain.title == "" and plain.fingerprint() == study.fingerprint()


def test_replicate_count_gives_the_group_means_mcse_with_the_replicate_as_the_unit(serial):
    """The 'number of replicates' table's MCSE of the bias is the results table's: EmpSE / sqrt(n)
    for a fixed truth, but for the group means (EmpSE pools the groups of every replicate) the
    replicates' mean errors (was EmpSE / sqrt(n replicates), several times too large)."""
    from workbench.simulate.ademp import replicate_count

    summ = summarize(study_table(STUDY, serial), STUDY)
    rows = {b["name"]: b for b in replicate_count(STUDY, summ, ["sigma2", "group_mean"])["bias"]}
    for p, row in zip(("sigma2", "group_mean"), rows.values(), strict=True):
        sub = summ[summ.parameter == p]
        r = sub.loc[sub["empse"].idxmax()]
        assert float(row["mcse"]) == pytest.approx(r["bias_mcse"], rel=0.05)
        if p == "sigma2":
            assert r["bias_mcse"] == pytest.approx(r["empse"] / np.sqrt(r["replicates"]))
