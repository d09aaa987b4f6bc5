"""Simulation studies: bias and coverage of every method over many simulated data sets.

A study (`models/NAME.toml`, kind = "simulation") is a grid of settings x replicates. Each
replicate's seed is spawned from the master seed by its (setting, replicate) index, so results do
not depend on the backend or the number of workers. Replicates are stored one file each as they
finish (temporary file, then rename), so a killed run loses only those in flight and a rerun
resumes; a store made by a different study definition is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from workbench.errors import InputError, need_int, need_real, need_str_list
from workbench.files import atomic_text, check_output, check_output_folder
from workbench.model.data import from_arrays
from workbench.model.priors import default_priors
from workbench.objectives.oneway import Stats

SIM_METHODS = (
    "eb-ml",
    "eb-reml",
    "joint-map:centered",
    "joint-map:noncentered",
    "joint-map+priors:centered",
    "joint-map+priors:noncentered",
    "mcmc",
)
DEFAULT_METHODS = ("eb-ml", "eb-reml", "joint-map:centered", "joint-map+priors:noncentered")
GRID_KEYS = ("m", "group_sizes", "mu", "sigma", "tau")
MCMC_KEYS = ("chains", "draws", "tune")
OUTPUTS = ("replicates_table.csv", "summary.csv", "report.html")  # written together at the end
# Bounds on sizes (beyond them a study would run for weeks or exhaust memory): refused up front.
MAX_M = 100_000
MAX_OBS = 10_000_000  # observations per simulated data set (m x largest group size)
MAX_REPLICATES = 1_000_000


@dataclass(frozen=True)
class Setting:
    index: int
    m: int
    group_sizes: str  # "3" (balanced) or "2-8" (each size uniform on 2..8, drawn per replicate)
    mu: float
    sigma: float
    tau: float

    @property
    def size_range(self) -> tuple[int, int]:
        lo, _, hi = self.group_sizes.partition("-")
        return int(lo), int(hi or lo)

    @property
    def balanced(self) -> bool:
        lo, hi = self.size_range
        return lo == hi


@dataclass(frozen=True)
class Study:
    name: str
    grid: dict
    replicates: int
    methods: tuple[str, ...] = DEFAULT_METHODS
    level: float = 0.95
    seed: int = 0
    n_starts: int = 16
    mcmc: dict = field(default_factory=lambda: {"chains": 2, "draws": 300, "tune": 300})

    def settings(self) -> list[Setting]:
        combos = itertools.product(*(self.grid[k] for k in GRID_KEYS))
        return [
            Setting(i, int(m), str(gs), float(mu), float(s), float(t))
            for i, (m, gs, mu, s, t) in enumerate(combos)
        ]

    def definition(self) -> dict:
        """What decides the numbers (the store is tied to its fingerprint)."""
        d = asdict(self)
        d.pop("name")
        d.pop("replicates")  # more replicates may be added to a store later
        d["methods"] = list(self.methods)
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()


def load_study(path: str | Path) -> Study:
    """Read and check a simulation case file."""
    from workbench.casefile import read_toml

    path = Path(path)
    raw, _ = read_toml(path, "study file")
    sim = raw.get("simulation")
    if not isinstance(sim, dict):
        raise InputError(f"{path}: a study needs a [simulation] section.")
    allowed = {*GRID_KEYS, "replicates", "methods", "level", "seed", "n_starts", "mcmc"}
    bad = sorted(set(sim) - allowed)
    if bad:
        raise InputError(
            f"{path}: unknown key '{bad[0]}' in [simulation]; allowed: "
            f"{', '.join(sorted(allowed))}."
        )
    grid = {}
    for k in GRID_KEYS:
        if k not in sim:
            raise InputError(f"{path}: [simulation] needs '{k}' (a value or a list).")
        v = sim[k]
        grid[k] = list(v) if isinstance(v, list) else [v]
    mcmc = sim.get("mcmc", {})
    if not isinstance(mcmc, dict):
        raise InputError(
            f"{path}: [simulation] mcmc must be a table like "
            f"{{ chains = 2, draws = 300, tune = 300 }}, got {mcmc!r}."
        )
    study = Study(
        name=path.stem,
        grid=grid,
        replicates=sim.get("replicates", 100),
        methods=sim.get("methods", DEFAULT_METHODS),
        level=sim.get("level", 0.95),
        seed=sim.get("seed", 0),
        n_starts=sim.get("n_starts", 16),
        mcmc={"chains": 2, "draws": 300, "tune": 300, **mcmc},
    )
    return check_study(study, name=lambda key: f"{path}: [simulation] {key}")


def _size_range(text: str, name: str) -> tuple[int, int]:
    lo, _, hi = text.strip().partition("-")
    try:
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise InputError(
            f"{name} '{text}' must look like '3' (balanced) or '2-8' (sizes drawn from 2 to 8)."
        ) from None
    if lo < 1 or hi < lo or hi < 2:
        raise InputError(f"{name} '{text}' needs 1 <= min <= max and max >= 2, like '3' or '2-8'.")
    return lo, hi


def check_study(study: Study, where: str = "study", name=None) -> Study:
    """Type and range checks of every value of a study, before any computing; `name(key)` says
    where a value came from (a flag or a study file's key). Returns the study with its values
    normalised (ints, floats, a tuple of distinct methods), so equal definitions fingerprint
    equally whatever their spelling (`tau = 1` or `--tau 1.0`)."""
    from workbench.casefile import MAX_CHAINS, MAX_DRAWS, MAX_STARTS

    if name is None:

        def name(key: str) -> str:
            return f"{where}: {key}"

    grid = {}
    for k in GRID_KEYS:
        values = study.grid.get(k)
        if not isinstance(values, list | tuple) or not values:
            raise InputError(
                f"{name(k)} needs at least one value (a value or a comma-separated list)."
            )
        if k == "m":
            grid[k] = [need_int(v, name(k), 2, MAX_M) for v in values]
        elif k == "group_sizes":
            for v in values:
                if isinstance(v, bool) or not isinstance(v, str | int):
                    raise InputError(f"{name(k)} must be like '3' or '2-8', got {v!r}.")
                _size_range(str(v), name(k))
            grid[k] = [str(v).strip() for v in values]
        else:
            lo = {"mu": None, "sigma": 0.0, "tau": 0.0}[k]
            grid[k] = [need_real(v, name(k), lo, open_lo=k == "sigma") for v in values]
    for m in grid["m"]:
        for gs in grid["group_sizes"]:
            hi = _size_range(gs, name("group_sizes"))[1]
            if m * hi > MAX_OBS:
                raise InputError(
                    f"{name('m')} = {m} with group sizes up to {hi} makes up to "
                    f"{m * hi:,} observations per data set; keep m x (largest "
                    f"group size) <= {MAX_OBS:,}."
                )
    methods = need_str_list(
        list(study.methods) if isinstance(study.methods, tuple) else study.methods, name("methods")
    )
    if not methods:
        raise InputError(f"{name('methods')} is empty; choose from {','.join(SIM_METHODS)}.")
    for meth in methods:
        if meth not in SIM_METHODS:
            raise InputError(
                f"{name('methods')}: unknown method '{meth}'; choose from {','.join(SIM_METHODS)}."
            )
    mcmc = {"chains": 2, "draws": 300, "tune": 300, **study.mcmc}
    bad = sorted(set(mcmc) - set(MCMC_KEYS))
    if bad:
        raise InputError(
            f"{name('mcmc')}: unknown key '{bad[0]}'; allowed: {', '.join(MCMC_KEYS)}."
        )
    mcmc = {
        "chains": need_int(mcmc["chains"], f"{name('mcmc')}.chains", 1, MAX_CHAINS),
        "draws": need_int(mcmc["draws"], f"{name('mcmc')}.draws", 1, MAX_DRAWS),
        "tune": need_int(mcmc["tune"], f"{name('mcmc')}.tune", 0, MAX_DRAWS),
    }
    return Study(
        name=study.name,
        grid=grid,
        replicates=need_int(study.replicates, name("replicates"), 1, MAX_REPLICATES),
        methods=tuple(dict.fromkeys(methods)),
        level=need_real(study.level, name("level"), 0.0, 1.0, open_lo=True, open_hi=True),
        seed=need_int(study.seed, name("seed"), 0),
        n_starts=need_int(study.n_starts, name("n_starts"), 1, MAX_STARTS),
        mcmc=mcmc,
    )


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
# One replicate (a pure function: runs in any worker)


def replicate_seed(study_seed: int, setting: int, replicate: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(study_seed, spawn_key=(setting, replicate))


def simulate_data(s: Setting, rng: np.random.Generator):
    lo, hi = s.size_range
    n = rng.integers(lo, hi + 1, s.m)
    g = np.repeat(np.arange(s.m), n)
    theta = s.mu + s.tau * rng.standard_normal(s.m)
    y = theta[g] + s.sigma * rng.standard_normal(g.size)
    return y, g, theta


def _rows(method, truth, est, lo, hi, status=""):
    """Tidy rows for mu, sigma2, tau2 and every group mean theta_j."""
    out = []
    for p in ("mu", "sigma2", "tau2"):
        out.append(
            (
                method,
                p,
                -1,
                truth[p],
                est.get(p, np.nan),
                lo.get(p, np.nan),
                hi.get(p, np.nan),
                status,
            )
        )
    th_e, th_lo, th_hi = (
        np.asarray(v.get("theta", np.full(truth["theta"].size, np.nan))) for v in (est, lo, hi)
    )
    for j, t in enumerate(truth["theta"]):
        out.append(
            (method, "theta", j, float(t), float(th_e[j]), float(th_lo[j]), float(th_hi[j]), status)
        )
    return out


def run_replicate(study: Study, s: Setting, rep: int) -> pd.DataFrame:
    """Simulate one data set and fit every method; one tidy row per (method, parameter)."""
    from workbench.fit import eb_oneway as eb
    from workbench.fit import joint_oneway as joint_map

    seq = replicate_seed(study.seed, s.index, rep)
    rng = np.random.default_rng(seq)
    y, g, theta = simulate_data(s, rng)
    truth = {"mu": s.mu, "sigma2": s.sigma**2, "tau2": s.tau**2, "theta": theta}
    d = from_arrays(y, g)
    st = Stats.of(d)
    z = float(sps.norm.ppf(0.5 + study.level / 2))
    rows = []
    ml = eb.fit(d, "ml", intervals=True)
    for meth in study.methods:
        if meth.startswith("eb-"):
            f = ml if meth == "eb-ml" else eb.fit(d, "reml", intervals=True)
            ci = (
                f.ci_profile
                if study.level == 0.95
                else eb.profile_intervals(st, f.sigma2, f.tau2, f.method == "reml", study.level)
            )
            est = {"mu": f.mu, "sigma2": f.sigma2, "tau2": f.tau2, "theta": f.group_means}
            lo = {
                "mu": f.mu - z * f.se["mu"],
                "sigma2": ci["sigma"][0] ** 2,
                "tau2": ci["tau"][0] ** 2,
                "theta": f.group_means - z * f.re_sd,
            }
            hi = {
                "mu": f.mu + z * f.se["mu"],
                "sigma2": ci["sigma"][1] ** 2,
                "tau2": ci["tau"][1] ** 2,
                "theta": f.group_means + z * f.re_sd,
            }
            rows += _rows(meth, truth, est, lo, hi, "boundary" if f.boundary else "")
        elif meth.startswith("joint-map"):
            par = meth.split(":")[1]
            pri = default_priors(d) if "+priors" in meth else None
            r = joint_map.fit(
                st,
                parametrization=par,
                priors=pri,
                eb_point=(ml.mu, ml.sigma2, ml.tau2),
                sd_y=float(np.std(y, ddof=1)),
                labels=d.labels,
                n_starts=study.n_starts,
                n_jobs=1,
                seed=int(seq.generate_state(1)[0]),
                level=study.level,
            )
            est, lo, hi = {}, {}, {}
            if r.best is not None:
                ci = r.intervals
                re = [ci["random_effects"][lab] for lab in d.labels]
                est = {
                    "mu": r.mu,
                    "sigma2": r.sigma2,
                    "tau2": r.tau2,
                    "theta": [x["group_mean"] for x in re],
                }
                lo = {
                    "mu": ci["mu"][0],
                    "sigma2": ci["sigma2"][0],
                    "tau2": ci["tau2"][0],
                    "theta": [x["group_mean_ci"][0] for x in re],
                }
                hi = {
                    "mu": ci["mu"][1],
                    "sigma2": ci["sigma2"][1],
                    "tau2": ci["tau2"][1],
                    "theta": [x["group_mean_ci"][1] for x in re],
                }
            rows += _rows(meth, truth, est, lo, hi, r.status)
        elif meth == "mcmc":
            rows += _mcmc_rows(study, d, truth, seq)
    df = pd.DataFrame(
        rows, columns=["method", "parameter", "group", "truth", "estimate", "lo", "hi", "status"]
    )
    df.insert(0, "replicate", rep)
    df.insert(0, "setting", s.index)
    inside = (df["lo"] <= df["truth"]) & (df["truth"] <= df["hi"])
    df["covered"] = np.where(df["lo"].notna(), inside, np.nan)
    return df


def _mcmc_rows(study, d, truth, seq):
    import arviz as az

    from workbench.fit import mcmc_oneway as mcmc

    res = mcmc.fit(
        d,
        default_priors(d),
        mcmc.McmcSettings(
            chains=int(study.mcmc["chains"]),
            draws=int(study.mcmc["draws"]),
            tune=int(study.mcmc["tune"]),
            seed=int(seq.generate_state(2)[1]),
        ),
    )
    est, lo, hi = {}, {}, {}
    for p in ("mu", "sigma2", "tau2"):
        draws = res.draws(p)
        est[p] = float(np.median(draws))
        lo[p], hi[p] = (float(v) for v in az.hdi(draws, prob=study.level))
    theta = np.asarray(res.posterior.posterior["theta"]).reshape(-1, d.n_groups)
    est["theta"] = np.median(theta, axis=0)
    ints = np.array([az.hdi(theta[:, j], prob=study.level) for j in range(d.n_groups)])
    lo["theta"], hi["theta"] = ints[:, 0], ints[:, 1]
    status = "warning" if res.warnings else ""
    return _rows("mcmc", truth, est, lo, hi, status)


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
                        na_values={"estimate": [""], "lo": [""], "hi": [""], "covered": [""]},
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


# ----------------------------------------------------------------------------------------------
# Summaries


def summarize(table: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Bias, relative bias, RMSE, coverage (with Monte Carlo SE), mean width, share of interior
    joint modes, and the theory where known, per setting x method x parameter."""
    settings = {s.index: s for s in study.settings()}
    out = []
    for (si, meth, par), g in table.groupby(["setting", "method", "parameter"], sort=True):
        s = settings[int(si)]
        ok = g[g["estimate"].notna()]
        err = ok["estimate"] - ok["truth"]
        # replicate-level means (for theta the groups of one replicate are not independent)
        per_rep = g.groupby("replicate")
        cov_rep = per_rep["covered"].mean().dropna()
        n_rep = int(g["replicate"].nunique())
        row = {
            "setting": int(si),
            "m": s.m,
            "group_sizes": s.group_sizes,
            "mu": s.mu,
            "sigma": s.sigma,
            "tau": s.tau,
            "method": meth,
            "parameter": par,
            "replicates": n_rep,
            "replicates_with_estimate": int(ok["replicate"].nunique()),
            "truth": float(g["truth"].mean()) if par != "theta" else np.nan,
            "mean_estimate": float(ok["estimate"].mean()) if len(ok) else np.nan,
            "bias": float(err.mean()) if len(ok) else np.nan,
            "bias_mcse": float(err.std(ddof=1) / np.sqrt(len(err))) if len(ok) > 1 else np.nan,
            "rmse": float(np.sqrt((err**2).mean())) if len(ok) else np.nan,
            "coverage": float(cov_rep.mean()) if len(cov_rep) else np.nan,
            "coverage_mcse": (
                float(cov_rep.std(ddof=1) / np.sqrt(len(cov_rep))) if len(cov_rep) > 1 else np.nan
            ),
            "mean_width": float((ok["hi"] - ok["lo"]).mean()) if len(ok) else np.nan,
            "interior_share": (
                float((per_rep["status"].first() == "interior").mean())
                if meth.startswith("joint-map")
                else np.nan
            ),
        }
        truth = row["truth"]
        row["relative_bias"] = row["bias"] / truth if par != "theta" and truth else np.nan
        row["ratio_to_truth"] = row["mean_estimate"] / truth if par != "theta" and truth else np.nan
        lo, hi = s.size_range
        row["theory_ratio"] = (
            (lo - 1) / lo
            if meth == "joint-map:centered" and par == "sigma2" and lo == hi
            else np.nan
        )
        out.append(row)
    return pd.DataFrame(out)


def study_table(study: Study, out: str | Path) -> pd.DataFrame:
    """The tidy per-replicate table of the study's replicates, with the settings joined."""
    store = Store(out, study)
    keep = {(s.index, r) for s in study.settings() for r in range(study.replicates)}
    table = store.load(keep)
    settings = pd.DataFrame([{**asdict(s), "balanced": s.balanced} for s in study.settings()])
    settings = settings.rename(columns={"index": "setting"})
    return table.merge(settings, on="setting", how="left")


# ----------------------------------------------------------------------------------------------
# Report section


def plot_summary(summary: pd.DataFrame, level: float):
    """Coverage (with 2 Monte Carlo SE) and estimate/truth ratios by method, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted(summary["setting"].unique())
    params = ["sigma2", "tau2", "theta"]
    fig, axes = plt.subplots(len(settings), 2, figsize=(13, 3.6 * len(settings)), squeeze=False)
    methods = sorted(summary["method"].unique())
    colors = dict(zip(methods, plt.cm.tab10.colors, strict=False))
    width = 0.8 / len(methods)
    for row, si in zip(axes, settings, strict=True):
        sub = summary[summary["setting"] == si]
        label = (
            f"setting {si}: m = {sub['m'].iloc[0]}, n = {sub['group_sizes'].iloc[0]}, "
            f"sigma = {sub['sigma'].iloc[0]:g}, tau = {sub['tau'].iloc[0]:g}"
        )
        for k, meth in enumerate(methods):
            cov = [sub[(sub.method == meth) & (sub.parameter == p)]["coverage"] for p in params]
            se = [sub[(sub.method == meth) & (sub.parameter == p)]["coverage_mcse"] for p in params]
            x = np.arange(len(params)) + (k - (len(methods) - 1) / 2) * width
            row[0].bar(
                x,
                [c.iloc[0] if len(c) else np.nan for c in cov],
                width,
                yerr=[2 * s.iloc[0] if len(s) else 0 for s in se],
                color=colors[meth],
                label=meth,
                capsize=2,
            )
            rat = [
                sub[(sub.method == meth) & (sub.parameter == p)]["ratio_to_truth"]
                for p in params[:2]
            ]
            row[1].bar(
                np.arange(2) + (k - (len(methods) - 1) / 2) * width,
                [r.iloc[0] if len(r) else np.nan for r in rat],
                width,
                color=colors[meth],
                label=meth,
            )
        row[0].axhline(level, color="k", ls="--", lw=1, label=f"nominal {level:.0%}")
        row[0].set_xticks(range(len(params)), ["sigma^2", "tau^2", "group means theta_j"])
        row[0].set_ylabel("interval coverage")
        row[0].set_ylim(0, 1.05)
        row[0].set_title(f"Coverage (bars: +- 2 MC SE) — {label}", fontsize=9)
        row[1].axhline(1.0, color="k", ls="--", lw=1, label="unbiased")
        theory = sub["theory_ratio"].dropna()
        if len(theory):
            row[1].axhline(
                theory.iloc[0],
                color="#d62728",
                ls=":",
                lw=1.5,
                label=f"theory (n - 1)/n = {theory.iloc[0]:.3f}",
            )
        row[1].set_xticks(range(2), ["sigma^2", "tau^2"])
        row[1].set_ylabel("mean estimate / truth")
        row[1].set_yscale("log")
        row[1].set_title(f"Bias as a ratio — {label}", fontsize=9)
        row[1].legend(fontsize=7)
    axes[-1][0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    fig.tight_layout()
    return fig


SUMMARY_COLUMNS = [
    "setting",
    "method",
    "parameter",
    "replicates_with_estimate",
    "truth",
    "mean_estimate",
    "bias",
    "bias_mcse",
    "relative_bias",
    "rmse",
    "coverage",
    "coverage_mcse",
    "mean_width",
    "interior_share",
    "ratio_to_truth",
    "theory_ratio",
]


def render_report(
    study: Study, summary: pd.DataFrame, *, command: str, counts: dict, seconds: float
) -> str:
    import base64

    import jinja2

    from workbench.present.plots import to_png
    from workbench.present.report import versions

    png = base64.b64encode(to_png(plot_summary(summary, study.level))).decode("ascii")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent.parent / "present" / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )

    def fmt(v):
        if isinstance(v, float):
            return "–" if not np.isfinite(v) else f"{v:.4g}"
        return str(v)

    rows = summary[SUMMARY_COLUMNS].to_dict("records")
    return env.get_template("simulation.html.j2").render(
        study=study,
        settings=study.settings(),
        columns=SUMMARY_COLUMNS,
        rows=rows,
        fmt=fmt,
        plot="data:image/png;base64," + png,
        command=command,
        counts=counts,
        seconds=seconds,
        versions=versions(),
        definition=json.dumps(study.definition(), indent=2),
    )
