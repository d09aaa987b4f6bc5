"""Running a study: one replicate simulates a data set from the model and runs
`workbench.compare` on it, reading every estimate and interval from the comparison's JSON
(`Comparison.to_dict()`, the public contract); the store keeps one CSV per replicate; local
processes or a Dask cluster run the replicates, with identical numbers for any backend.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.errors import InputError
from workbench.files import atomic_text, check_output, check_output_folder
from workbench.seeds import seed_for
from workbench.simulate.study import JOINT_VARIANTS, Setting, Study, check_study, model_terms

OUTPUTS = ("replicates_table.csv", "summary.csv", "report.html")  # written together at the end
COLUMNS = ["method", "parameter", "group", "truth", "estimate", "se", "lo", "hi", "status"]
Z95 = 1.959963984540054


def check_run(
    study: Study, out: str | Path, *, n_jobs: int = -1, scheduler: str | None = None
) -> None:
    """Checks of where and how a study runs, before the store is made or anything computed: the
    worker count, the scheduler's address (and that it answers), the output folder (writable;
    new, empty or this study's store) and the output files in it (regular files only)."""
    from workbench.casefile import check_n_jobs

    check_n_jobs(n_jobs)
    if scheduler is not None:
        _check_scheduler(scheduler)
    out = Path(out)
    check_output_folder(out, "--out")
    Store.check(out, study)
    for name in OUTPUTS:
        check_output(out / name, "--out", make_folders=True)


def report_replicates(out: str | Path) -> int | None:
    """The replicates per setting that the outputs already in `out` were made from (summary.csv's
    `replicates` column, else the report's `workbench:replicates` tag); None when there are no
    outputs; -1 when they exist but say nothing readable."""
    import re

    out = Path(out)
    if not any((out / name).is_file() for name in OUTPUTS):
        return None
    try:
        n = pd.read_csv(out / "summary.csv", usecols=["replicates"])["replicates"].max()
        if pd.notna(n):
            return int(n)
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        pass
    try:
        head = (out / "report.html").read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return -1
    tag = re.search(r'<meta name="workbench:replicates" content="(\d+)">', head)
    return int(tag.group(1)) if tag else -1


def check_outputs(study: Study, out: str | Path, *, force: bool = False) -> None:
    """Refuse, before any computing, to replace a report made from a different number of
    replicates per setting (a 200-replicate report silently becoming a 50-replicate one, or
    the other way round, changes every Monte Carlo SE it quotes) unless `force`; the store is
    kept either way, so a forced run reuses every replicate already computed."""
    old = None if force else report_replicates(out)
    if old is None or old == study.replicates:
        return
    made = "an unknown number of" if old < 0 else f"{old}"
    raise InputError(
        f"{Path(out) / 'report.html'} was made from {made} replicates per setting and this run "
        f"has {study.replicates}: add --force to replace it (stored replicates are reused) or "
        f"choose another --out folder."
    )


def _check_scheduler(address: str) -> None:
    import re
    import socket

    hint = "give the address of a running Dask scheduler, like tcp://127.0.0.1:8786"
    match = re.fullmatch(r"(tcp|tls)://(\[[0-9a-fA-F:]+\]|[^:/\s\[\]]+):(\d+)/?", address.strip())
    if match is None:
        raise InputError(f"--scheduler '{address}' is not an address; {hint}.")
    host, port = match.group(2).strip("[]"), int(match.group(3))
    if not 0 < port < 65536:
        raise InputError(f"--scheduler '{address}': port {port} is out of range; {hint}.")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise InputError(
            f"--scheduler '{address}': no scheduler answers there "
            f"({exc.strerror or exc}); start one ('dask scheduler') or {hint}."
        ) from None


# ----------------------------------------------------------------------------------------------
# Simulating one data set


def replicate_seed(study_seed: int, setting: int, replicate: int) -> np.random.SeedSequence:
    """The replicate's seed by the one seed rule: `seed_for(study seed, setting, replicate)`,
    i.e. SeedSequence(seed, spawn_key=(setting, replicate)) as every earlier version."""
    return seed_for(study_seed, setting, replicate)


def simulate_data(s: Setting, rng: np.random.Generator):
    """One-way data: sizes, then mu_j = mu + tau z_j, then y (today's draws, in this order)."""
    lo, hi = s.size_range
    n = rng.integers(lo, hi + 1, s.m)
    g = np.repeat(np.arange(s.m), n)
    means = s.mu + s.tau * rng.standard_normal(s.m)
    y = means[g] + s.sigma * rng.standard_normal(g.size)
    return y, g, means


def cholesky_factor(s: Setting, block: tuple[str, ...]) -> np.ndarray:
    """L with L L' = the true covariance of one correlated block: diag(sd) chol(R), so a zero
    SD is allowed; refuses correlations that make no correlation matrix."""
    p = dict(s.params)
    R = np.eye(len(block))
    for i in range(len(block)):
        for j in range(i):
            R[i, j] = R[j, i] = p[f"cor[{block[j]}:{block[i]}]"]
    try:
        C = np.linalg.cholesky(R)
    except np.linalg.LinAlgError:
        raise InputError(
            f"setting {s.index}: the correlations of {', '.join(block)} do not make a "
            f"correlation matrix (not positive definite)."
        ) from None
    return np.diag([p[f"sd[{t}]"] for t in block]) @ C


def simulate_frame(study: Study, s: Setting, rng: np.random.Generator) -> pd.DataFrame:
    """Formula-model data: group sizes, the covariates (in name order), the random effects
    b_j ~ N(0, G) per block (z_j standard normal, b_j = L z_j), then y = X beta + Z b + e."""
    from workbench.model import design

    terms = model_terms(study.formula, study.generators)
    lo, hi = s.size_range
    n = rng.integers(lo, hi + 1, s.m)
    codes = np.repeat(np.arange(s.m), n)
    frame = pd.DataFrame({c.name: c.draw(rng, codes, s.m) for c in study.generators})
    frame[terms.factor] = [f"g{j:06d}" for j in codes]
    # the design's matrices do not depend on y: a placeholder (its own generator) passes the checks
    frame[terms.response] = np.random.default_rng(0).standard_normal(codes.size)
    d = design.from_frame(frame, study.formula, levels=terms.levels or None)
    p = dict(s.params)
    beta = np.array([p[f"beta[{n}]"] for n in d.fixed_names])
    b = np.zeros((s.m, d.q))
    for blk in d.blocks:
        L = cholesky_factor(s, tuple(blk.names))
        b[:, list(blk.cols)] = rng.standard_normal((s.m, len(blk.names))) @ L.T
    y = (
        d.X @ beta
        + np.einsum("iq,iq->i", d.Z, b[d.codes])
        + p["sigma"] * rng.standard_normal(codes.size)
    )
    frame[terms.response] = y
    return frame


# ----------------------------------------------------------------------------------------------
# One replicate (a pure function: runs in any worker)


def method_labels(methods: tuple[str, ...]) -> tuple[str, ...]:
    """The row labels of a study's methods: compare's "joint-map" is its four variants."""
    out: list[str] = []
    for m in methods:
        out += list(JOINT_VARIANTS) if m == "joint-map" else [m]
    return tuple(dict.fromkeys(out))


def truth_of(study: Study, s: Setting, means: np.ndarray | None = None) -> dict:
    """The true values by parameter name (one-way: mu, sigma2, tau2, group_mean per group)."""
    p = dict(s.params)
    if study.oneway:
        return {"mu": s.mu, "sigma2": s.sigma**2, "tau2": s.tau**2, "group_mean": means}
    out = {k: v for k, v in p.items() if k.startswith("beta[")}
    out["sigma2"] = p["sigma"] ** 2
    out |= {f"var[{k[3:-1]}]": v**2 for k, v in p.items() if k.startswith("sd[")}
    out |= {k: v for k, v in p.items() if k.startswith("cor[")}
    return out


def _component(block: dict) -> dict:
    """The one grouping factor's {variances, correlations} of a block's variance_components."""
    vc = block.get("variance_components") or {}
    return next(iter(vc.values())) if vc else {}


def _num(v):
    """A point value: a number, or the median of an MCMC summary."""
    if isinstance(v, dict):
        v = v.get("median", v.get("estimate"))
    return np.nan if v is None else float(v)


def _pair(v):
    return (np.nan, np.nan) if v is None else (float(v[0]), float(v[1]))


def _estimates(block: dict, oneway: bool) -> dict:
    """Point estimates by parameter from a JSON block (EB, joint-MAP variant or MCMC)."""
    fe = block.get("fixed_effects") or {}
    comp = _component(block)
    if oneway:
        return {
            "mu": _num(block["mu"] if "mu" in block else fe.get("(Intercept)")),
            "sigma2": _num(block.get("sigma2")),
            "tau2": _num(
                block["tau2"] if "tau2" in block else comp.get("variances", {}).get("(Intercept)")
            ),
        }
    out = {f"beta[{n}]": _num(v) for n, v in fe.items()}
    out["sigma2"] = _num(block.get("sigma2"))
    out |= {f"var[{t}]": _num(v) for t, v in comp.get("variances", {}).items()}
    out |= {f"cor[{k}]": _num(v) for k, v in comp.get("correlations", {}).items()}
    return out


def _profile_intervals(block: dict, oneway: bool, group: str, est: dict) -> dict:
    """EB intervals: Wald for fixed effects, lme4's profile intervals (`ci_profile`, squared
    for variances) for sigma^2, the variances and the correlations."""
    ci = block.get("ci_profile") or {}
    fe = block.get("fixed_effects") or {}
    out = {}

    def sd(term: str):
        v = ci.get(f"sd_{term}|{group}", ci.get("tau") if oneway else None)
        return None if v is None else [v[0] ** 2, v[1] ** 2]

    sig = ci.get("sigma")
    out["sigma2"] = _pair(None if sig is None else [sig[0] ** 2, sig[1] ** 2])
    if oneway:
        if "(Intercept)" in fe and fe["(Intercept)"].get("ci_wald") is not None:
            out["mu"] = _pair(fe["(Intercept)"]["ci_wald"])
        else:
            z = 1.959963984540054
            out["mu"] = (est["mu"] - z * block["se"]["mu"], est["mu"] + z * block["se"]["mu"])
        out["tau2"] = _pair(sd("(Intercept)"))
        return out
    for n, v in fe.items():
        out[f"beta[{n}]"] = _pair(v.get("ci_wald"))
    for t in _component(block).get("variances", {}):
        out[f"var[{t}]"] = _pair(sd(t))
    for k in _component(block).get("correlations", {}):
        a, _, b = k.partition(":")
        out[f"cor[{k}]"] = _pair(ci.get(f"cor_{b}.{a}|{group}", ci.get(f"cor_{a}.{b}|{group}")))
    return out


def _hessian_intervals(ci: dict, oneway: bool) -> dict:
    """Joint-MAP Wald intervals from the Hessian (`ci_hessian`), by parameter."""
    if not ci:
        return {}
    if oneway and "mu" in ci:
        return {k: _pair(ci.get(k)) for k in ("mu", "sigma2", "tau2")}
    fe = ci.get("fixed_effects") or {}
    comp = _component(ci)
    out = {f"beta[{n}]": _pair(v.get("ci")) for n, v in fe.items()}
    out["sigma2"] = _pair(ci.get("sigma2"))
    out |= {f"var[{t}]": _pair(v) for t, v in comp.get("variances", {}).items()}
    out |= {f"cor[{k}]": _pair(v) for k, v in comp.get("correlations", {}).items()}
    if oneway:
        out = {
            "mu": out.pop("beta[(Intercept)]"),
            "sigma2": out["sigma2"],
            "tau2": out.get("var[(Intercept)]", (np.nan, np.nan)),
        }
    return out


def _model_ses(block: dict, oneway: bool, kind: str, est: dict) -> dict:
    """Model-based SEs by parameter where the method gives one (Morris et al.'s "model SE"):
    EB its observed-information SEs (one-way: mu, sigma^2, tau^2; formula models: the fixed
    effects only, its variances and correlations have profile intervals and no SE); the joint
    MAP its Hessian SEs at an interior mode (sigma^2 = 2 sigma^2 SE(log sigma) by the delta
    method, likewise tau^2); MCMC the posterior SD. A parameter left out has no SE."""
    fe = block.get("fixed_effects") or {}
    if kind == "eb":
        if oneway:
            return {k: float(v) for k, v in (block.get("se") or {}).items() if v is not None}
        return {f"beta[{n}]": float(v["se"]) for n, v in fe.items() if v.get("se") is not None}
    if kind == "joint":
        ci = block.get("ci_hessian") or {}
        se = ci.get("se") or {}
        fe = ci.get("fixed_effects") or {}
        out = {f"beta[{n}]": v.get("se") for n, v in fe.items()}
        if se.get("log_sigma") is not None:
            out["sigma2"] = 2.0 * est.get("sigma2", np.nan) * se["log_sigma"]
        if oneway:
            out = {"mu": se.get("mu", out.get("beta[(Intercept)]")), "sigma2": out.get("sigma2")}
            if se.get("log_tau") is not None:
                out["tau2"] = 2.0 * est.get("tau2", np.nan) * se["log_tau"]
        return {k: float(v) for k, v in out.items() if v is not None}
    comp = _component(block)
    if oneway:
        out = {k: (block.get(k) or {}).get("sd") for k in ("mu", "sigma2", "tau2")}
    else:
        out = {f"beta[{n}]": v.get("sd") for n, v in fe.items()}
        out["sigma2"] = (block.get("sigma2") or {}).get("sd")
        out |= {f"var[{t}]": v.get("sd") for t, v in comp.get("variances", {}).items()}
        out |= {f"cor[{k}]": v.get("sd") for k, v in comp.get("correlations", {}).items()}
    return {k: float(v) for k, v in out.items() if v is not None}


def _mcmc_intervals(block: dict, oneway: bool) -> dict:
    """MCMC: the JSON's HDIs (at its `hdi_prob`)."""
    fe = block.get("fixed_effects") or {}
    comp = _component(block)
    if oneway:
        return {k: _pair((block.get(k) or {}).get("hdi")) for k in ("mu", "sigma2", "tau2")}
    out = {f"beta[{n}]": _pair(v.get("hdi")) for n, v in fe.items()}
    out["sigma2"] = _pair((block.get("sigma2") or {}).get("hdi"))
    out |= {f"var[{t}]": _pair(v.get("hdi")) for t, v in comp.get("variances", {}).items()}
    out |= {f"cor[{k}]": _pair(v.get("hdi")) for k, v in comp.get("correlations", {}).items()}
    return out


def _group_means(entries: dict | None, mu: float, kind: str) -> dict[int, tuple]:
    """One-way group means mu_j (estimate, se, lo, hi) by group index from `random_effects`:
    EB conditional mode +- z sd (se: that sd), joint MAP its Wald `group_mean_ci` (se: its
    half-width / z, which includes the covariance of mu and b_j), MCMC its HDI (se: the
    posterior SD)."""
    z = Z95
    out = {}
    for label, e in (entries or {}).items():
        if "group_mean" not in e and "median" not in e:
            # the general layout {label: {term: {mode, sd}}}: EB's conditional modes only
            inner = e.get("(Intercept)") or {}
            if kind != "eb" or "mode" not in inner:
                continue
            e = {"group_mean": mu + inner["mode"], "sd": inner["sd"]}
        if kind == "mcmc":
            est, (lo, hi) = _num(e), _pair(e.get("hdi"))
            se = float(e.get("sd", np.nan))
        elif kind == "joint":
            est, (lo, hi) = float(e["group_mean"]), _pair(e.get("group_mean_ci"))
            se = (hi - lo) / (2 * z)
        else:
            est, se = float(e["group_mean"]), float(e["sd"])
            lo, hi = est - z * se, est + z * se
        out[int(label)] = (est, se, lo, hi)
    return out


def _rows(
    method: str, truth: dict, est: dict, se: dict, ci: dict, means: dict, status: str
) -> list:
    """Tidy rows: one per parameter (group -1), and per group mu_j for the one-way model."""
    out = []
    for p, t in truth.items():
        if p == "group_mean":
            for j, tj in enumerate(t):
                e, s, lo, hi = means.get(j, (np.nan,) * 4)
                out.append((method, "group_mean", j, float(tj), e, s, lo, hi, status))
        else:
            lo, hi = ci.get(p, (np.nan, np.nan))
            row = (method, p, -1, float(t), est.get(p, np.nan), se.get(p, np.nan), lo, hi, status)
            out.append(row)
    return out


def run_replicate(study: Study, s: Setting, rep: int) -> pd.DataFrame:
    """Simulate one data set, run `compare` on it and read every method's estimates and
    intervals from its JSON; one tidy row per (method, parameter)."""
    from workbench.compare import JOINT_VARIANTS as VARIANT_KEYS  # label -> (par, priors)
    from workbench.compare import compare

    seq = replicate_seed(study.seed, s.index, rep)
    rng = np.random.default_rng(seq)
    if study.oneway:
        y, g, means = simulate_data(s, rng)
        frame = pd.DataFrame({"y": y, "g": [f"{j:06d}" for j in g]})
        truth, group, levels = truth_of(study, s, means), "g", None
    else:
        frame = simulate_frame(study, s, rng)
        terms = model_terms(study.formula, study.generators)
        truth, group, levels = truth_of(study, s), terms.factor, terms.levels or None
    c = compare(
        frame,
        formula=study.model_formula,
        levels=levels,
        methods=study.methods,  # compare's vocabulary, variant labels included
        seed=int(seq.generate_state(1)[0]),
        n_starts=study.n_starts,
        n_jobs=1,
        chains=int(study.mcmc["chains"]),
        draws=int(study.mcmc["draws"]),
        tune=int(study.mcmc["tune"]),
    )
    record = c.to_dict()
    oneway = study.oneway
    variants = {key: r.to_dict() for key, r in c.joint_maps.items()}
    rows = []
    for meth in method_labels(study.methods):
        if meth.startswith("eb-"):
            block = record["eb_ml" if meth == "eb-ml" else "eb_reml"]
            if "ci_profile" not in block and meth == "eb-reml":  # the profile is of ML: shared
                block = {**block, "ci_profile": (record.get("eb_ml") or {}).get("ci_profile")}
            est = _estimates(block, oneway)
            se = _model_ses(block, oneway, "eb", est)
            ci = _profile_intervals(block, oneway, group, est)
            means = _group_means(block.get("random_effects"), est.get("mu"), "eb") if oneway else {}
            status = (
                "boundary"
                if block.get("boundary")
                else ("singular" if block.get("singular") else "")
            )
        elif meth.startswith("joint-map"):
            block = variants.get(VARIANT_KEYS[meth], {})
            interior = block.get("status") == "interior"
            est = _estimates(block, oneway) if interior else {}
            se = _model_ses(block, oneway, "joint", est) if interior else {}
            ci_h = block.get("ci_hessian") if interior else None
            ci = _hessian_intervals(ci_h or {}, oneway)
            means = (
                _group_means((ci_h or {}).get("random_effects"), est.get("mu"), "joint")
                if oneway
                else {}
            )
            status = block.get("status", "")
        else:
            block = record["mcmc"]
            est = _estimates(block, oneway)
            se = _model_ses(block, oneway, "mcmc", est)
            ci = _mcmc_intervals(block, oneway)
            means = (
                _group_means(block.get("random_effects"), est.get("mu"), "mcmc") if oneway else {}
            )
            status = "warning" if block.get("warnings") else ""
        rows += _rows(meth, truth, est, se, ci, means, status)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.insert(0, "replicate", rep)
    df.insert(0, "setting", s.index)
    inside = (df["lo"] <= df["truth"]) & (df["truth"] <= df["hi"])
    df["covered"] = np.where(df["lo"].notna(), inside, np.nan)
    return df


# ----------------------------------------------------------------------------------------------
# The store: one CSV per replicate, written atomically; tied to the study's fingerprint


class Store:
    def __init__(self, root: str | Path, study: Study) -> None:
        self.root = Path(root)
        self.dir = self.root / "replicates"
        meta = self.root / "study.json"
        self.check(self.root, study)
        self.dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.dir.glob(".*.tmp"):  # left by a killed run
            tmp.unlink()
        for name in (*OUTPUTS, "study.json"):  # left by a run killed while writing its outputs
            for tmp in self.root.glob(f".{name}.*.tmp"):
                tmp.unlink()
        if not meta.is_file():
            atomic_text(
                meta,
                json.dumps(
                    {"fingerprint": study.fingerprint(), "definition": study.definition()}, indent=2
                ),
            )

    @staticmethod
    def check(root: Path, study: Study) -> None:
        """Refuse a folder that is not this study's store (nothing is written)."""
        meta = root / "study.json"
        if meta.is_file():
            try:
                old = json.loads(meta.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise InputError(
                    f"{meta}: not a study record (damaged?); use another --out "
                    f"folder, or delete this one to start over."
                ) from None
            if not isinstance(old, dict) or old.get("fingerprint") != study.fingerprint():
                raise InputError(
                    f"{root}: this store was made by a different study definition; "
                    f"results would be mixed. Use another --out folder, or delete this one to "
                    f"start over."
                )
        elif root.is_dir() and any(root.iterdir()):
            raise InputError(
                f"{root}: folder exists and is not a study store; choose an "
                f"empty or new --out folder."
            )

    @staticmethod
    def _name(setting: int, rep: int) -> str:
        return f"s{setting:04d}_r{rep:06d}.csv"

    def done(self) -> set[tuple[int, int]]:
        out = set()
        for p in self.dir.glob("s*_r*.csv"):
            s, r = p.stem.split("_")
            out.add((int(s[1:]), int(r[1:])))
        return out

    def write(self, df: pd.DataFrame) -> None:
        s, r = int(df["setting"].iloc[0]), int(df["replicate"].iloc[0])
        atomic_text(self.dir / self._name(s, r), df.to_csv(index=False))

    def load(self, keep: set[tuple[int, int]] | None = None) -> pd.DataFrame:
        files = sorted(self.dir.glob("s*_r*.csv"))
        frames = []
        for p in files:
            s, r = p.stem.split("_")
            if keep is None or (int(s[1:]), int(r[1:])) in keep:
                frames.append(
                    pd.read_csv(
                        p,
                        keep_default_na=False,
                        na_values={k: [""] for k in ("estimate", "se", "lo", "hi", "covered")},
                    )
                )
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------------------------
# Running


def run_study(
    study: Study,
    out: str | Path,
    *,
    n_jobs: int = -1,
    scheduler: str | None = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) a study; returns counts. Results land in `out` as they finish. Every
    value and the output folder are checked first (`check_study`, `check_run`); the store is
    made only then, so a refused command leaves nothing behind."""
    from contextlib import ExitStack

    from tqdm import tqdm

    study = check_study(study)
    check_run(study, out, n_jobs=-1 if n_jobs is None else n_jobs, scheduler=scheduler)
    with ExitStack() as stack:
        client = None
        if scheduler:
            from distributed import Client

            try:
                client = stack.enter_context(Client(scheduler, timeout="20s"))
            except OSError as exc:
                raise InputError(
                    f"--scheduler '{scheduler}': cannot connect ({exc}); check the "
                    f"address or start a scheduler."
                ) from None
        store = Store(out, study)
        done = store.done()
        tasks = [
            (s, r)
            for s in study.settings()
            for r in range(study.replicates)
            if (s.index, r) not in done
        ]
        bar = stack.enter_context(
            tqdm(
                total=len(tasks),
                desc=f"study {study.name}",
                unit="rep",
                disable=not progress,
                dynamic_ncols=True,
                mininterval=1.0,
            )
        )
        if not tasks:
            pass
        elif client is not None:
            from distributed import as_completed

            futs = [client.submit(run_replicate, study, s, r, pure=False) for s, r in tasks]
            for fut in as_completed(futs):
                store.write(fut.result())
                bar.update()
        elif n_jobs == 1 or len(tasks) == 1:
            for s, r in tasks:
                store.write(run_replicate(study, s, r))
                bar.update()
        else:
            _run_processes(
                study, tasks, store, bar, os.cpu_count() if n_jobs in (-1, None) else n_jobs
            )
    return {"computed": len(tasks), "skipped": len(done)}


def _run_processes(study: Study, tasks: list, store: Store, bar, workers: int) -> None:
    """Replicates in local worker processes, which die with this process (`die_with_parent`); on
    an error or Ctrl-C the queued replicates are cancelled and the workers stopped at once."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # workers: one BLAS thread each, no spinning
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=mp.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        futs = [pool.submit(run_replicate, study, s, r) for s, r in tasks]
        for fut in as_completed(futs):
            store.write(fut.result())
            bar.update()
    except BaseException:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


WATCH_THREAD = "wb-parent-watch"  # the name of the thread that watches for the parent's death


@contextlib.contextmanager
def workers_die_with_this_process():
    """joblib's loky workers started inside (the joint-MAP starts of `compare`) die with this
    process (`die_with_parent`)."""
    import joblib

    with joblib.parallel_config(
        backend="loky", initializer=die_with_parent, initargs=(os.getpid(),)
    ):
        yield


def die_with_parent(parent: int) -> None:
    """A worker-process initializer: die with the parent process (pid `parent`). Linux delivers
    SIGKILL when the parent dies (PR_SET_PDEATHSIG); elsewhere, and as a backstop, a thread
    polls the parent's pid."""
    import signal
    import sys
    import threading
    import time

    libc = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            libc = None
    if os.getppid() != parent:  # the parent died before the above took effect
        os._exit(1)

    def watch() -> None:
        if libc is not None:  # name the thread (PR_SET_NAME = 15): seen in ps -L and /proc
            libc.prctl(15, WATCH_THREAD.encode(), 0, 0, 0)
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="workbench-parent-watch", daemon=True).start()
