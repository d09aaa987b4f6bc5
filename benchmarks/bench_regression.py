"""Speed regression check: the same workloads timed on the tree under test and on a baseline git
revision in the same run, so both see the same machine load and libraries. Not a test.

Why: the refactor must keep the EB and joint-MAP figures (one-way N = 1e6, m = 1e4; simulated
y ~ x + (1 + x | g) of that size; the Hsb82 slope model) within 20% of the baseline's. Only the
public API is timed: whole `workbench.compare` calls on prebuilt data frames, "EB-ML call"
(methods eb-ml) and "EB-ML + joint-MAP call" (eb-ml, joint-map: all four variants). Step rows
sum `Comparison.timings` by name and only inform (names change). Every call runs in a fresh
subprocess per side with PYTHONPATH = that side's root (the baseline a temporary `git worktree`,
removed at the end); sides alternate, in reverse order in the next round, so steady drift in
machine load cancels out over two rounds. EB-ML sigma2 must agree. About 7 minutes on 2 cores
(--general-joint: about 5 more); on a loaded machine read the ratios of long calls with care.

Run: .venv/bin/python benchmarks/bench_regression.py [--baseline 74098a7] [--new-root PATH]
         [--rounds 2] [--repeats 2] [--general-joint] [--only one-way general hsb82]
         [--stat median|min] [--n-jobs -1] [--quick] [--strict]
Prints workload | step | baseline s | new s | new/old | flag and "max ratio X (limit 1.20)";
exits 0, or with --strict 1 when a whole-call ratio is over the limit or a side failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1.20
SEED = 20261121
CALLS = {"eb": ["eb-ml"], "eb+jm": ["eb-ml", "joint-map"]}
CALL_NAMES = {"eb": "EB-ML call", "eb+jm": "EB-ML + joint-MAP call"}
# step rows: the sum of the timings whose name (lower case, "-" as " ") contains the key
STEPS = {
    "eb": {"EB step": "empirical bayes", "profile CIs": "profile"},
    "eb+jm": {"joint-MAP steps": "joint map"},
}
WORKLOADS = ("one-way", "general", "hsb82")


def make_data(workload: str, quick: bool):
    """The data frame, compare() keywords and group column of a workload (deterministic)."""
    import numpy as np
    import pandas as pd

    if workload == "hsb82":
        df = pd.read_csv(ROOT / "models" / "data" / "hsb82.csv")
        formula = "mAch ~ ses + sector + (1 + ses | school)"
        return df, {"formula": formula, "levels": {"sector": ["Public", "Catholic"]}}, "school"
    N, m = (100_000, 1_000) if quick else (1_000_000, 10_000)
    rng = np.random.default_rng(SEED)
    g = rng.integers(0, m, N)
    if workload == "one-way":
        y = 5 + 2 * rng.standard_normal(m)[g] + 3 * rng.standard_normal(N)
        return pd.DataFrame({"y": y, "g": g}), {"y": "y", "group": "g"}, "g"
    x = rng.standard_normal(N)
    b = rng.multivariate_normal([0, 0], [[4.0, 0.6], [0.6, 0.5]], m)
    y = 10 + 2 * x + b[g, 0] + b[g, 1] * x + 3 * rng.standard_normal(N)
    return pd.DataFrame({"y": y, "x": x, "g": g}), {"formula": "y ~ x + (1 + x | g)"}, "g"


def worker(args) -> None:
    """Time one call of one workload with the workbench found on PYTHONPATH; print JSON."""
    import importlib.metadata
    import warnings

    from joblib import Parallel, delayed

    import workbench

    warnings.filterwarnings("ignore")
    where = Path(workbench.__file__).resolve()
    if not where.is_relative_to(Path(args.expect_root).resolve()):
        sys.exit(f"workbench imported from {where}, not under {args.expect_root}")
    df, kw, group = make_data(args.workload, args.quick)
    kw.update(methods=CALLS[args.call], seed=SEED, n_starts=16)
    # warm-up, not timed: 50 groups (imports, lazy code paths) and the joblib worker pool
    try:
        workbench.compare(df[df[group].isin(df[group].unique()[:50])], **kw, n_jobs=1)
    except Exception as e:  # only a warm-up
        print(f"warm-up raised {e!r}", file=sys.stderr)
    Parallel(n_jobs=args.n_jobs)(delayed(abs)(i) for i in range(4))
    walls, steps, c = [], [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        c = workbench.compare(df, **kw, n_jobs=args.n_jobs)
        walls.append(time.perf_counter() - t0)
        timings = {k.lower().replace("-", " "): v for k, v in getattr(c, "timings", {}).items()}
        steps.append(
            {
                label: sum(v for k, v in timings.items() if key in k)
                for label, key in STEPS[args.call].items()
                if any(key in k for k in timings)
            }
        )
    try:
        sigma2 = float(c.to_dict()["eb_ml"]["sigma2"])
    except (AttributeError, KeyError, TypeError, ValueError):
        sigma2 = None
    version = importlib.metadata.version("workbench")
    out = {"file": str(where), "version": version, "walls": walls, "steps": steps}
    print(json.dumps(out | {"sigma2": sigma2}))


def run_side(root: Path, workload: str, call: str, repeats: int, args) -> dict | None:
    """One worker subprocess with PYTHONPATH = root; its JSON, or None when it failed."""
    cmd = [sys.executable, __file__, "--worker", "--expect-root", str(root)]
    cmd += ["--workload", workload, "--call", call, "--repeats", str(repeats)]
    cmd += ["--n-jobs", str(args.n_jobs)] + (["--quick"] if args.quick else [])
    env = dict(os.environ, PYTHONPATH=str(root))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        print(f"  {workload}/{call} failed under {root}:", *tail, sep="\n    ", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def summary(xs: list, stat: str = "median") -> float | None:
    return (min(xs) if stat == "min" else statistics.median(xs)) if xs else None


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def git(*a: str) -> str:
    cmd = ["git", "-C", str(ROOT), *a]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def measure(args, roots: dict[str, Path]) -> dict:
    """{(workload, call): {side: {"walls", "steps", "sigma2", "failed"}}} over all rounds."""
    # (workload, call, repeats in one process): the long calls run once per process and round
    plan = [
        ("one-way", "eb", args.repeats),
        ("one-way", "eb+jm", 1),
        ("general", "eb", 1),
        *([("general", "eb+jm", 1)] if args.general_joint else []),
        ("hsb82", "eb", args.repeats),
        ("hsb82", "eb+jm", args.repeats),
    ]
    plan = [p for p in plan if not args.only or p[0] in args.only]
    results = {
        (w, c): {s: {"walls": [], "steps": [], "sigma2": None, "failed": 0} for s in roots}
        for w, c, _ in plan
    }
    shown = set()
    for r in range(args.rounds):
        for i, (workload, call, reps) in enumerate(plan):
            order = ("old", "new") if (i + r) % 2 == 0 else ("new", "old")
            walls = {}
            for side in order:
                acc = results[workload, call][side]
                out = run_side(roots[side], workload, call, reps, args)
                if out is None:
                    acc["failed"] += 1
                    continue
                if side not in shown:
                    shown.add(side)
                    print(f"{side}: workbench {out['version']} from {out['file']}")
                acc["walls"] += out["walls"]
                acc["steps"] += out["steps"]
                acc["sigma2"] = out["sigma2"]
                walls[side] = " ".join(f"{w:.2f}" for w in out["walls"])
            print(
                f"  round {r + 1} {workload} {CALL_NAMES[call]}: baseline {walls.get('old')}, "
                f"new {walls.get('new')} (load {load()})"
            )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="74098a7", help="git revision to compare against")
    ap.add_argument("--new-root", type=Path, default=ROOT, help="root of the tree under test")
    ap.add_argument("--rounds", type=int, default=2, help="old/new alternations of every call")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of the short calls a round")
    ap.add_argument("--general-joint", action="store_true", help="also y ~ x + ... joint MAP")
    ap.add_argument("--only", nargs="+", choices=WORKLOADS, help="run only these workloads")
    ap.add_argument("--stat", choices=("median", "min"), default="median", help="of the walls")
    ap.add_argument("--n-jobs", type=int, default=-1)
    ap.add_argument("--quick", action="store_true", help="N = 1e5, m = 1e3 (smoke test)")
    ap.add_argument("--strict", action="store_true", help="exit 1 on a ratio over the limit")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--expect-root", help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--call", choices=CALLS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up while it runs
    t_start = time.perf_counter()
    sha = git("rev-parse", "--verify", f"{args.baseline}^{{commit}}")
    print(f"cores {os.cpu_count()}, load average {load()}")
    print(f"python {sys.executable} ({sys.version.split()[0]})")
    print(f"baseline {args.baseline} = {sha[:12]}; new = {args.new_root.resolve()}")
    with tempfile.TemporaryDirectory(prefix="bench_regression_") as tmp:
        old_root = Path(tmp) / "baseline"
        git("worktree", "add", "--detach", str(old_root), sha)
        try:
            results = measure(args, {"old": old_root, "new": args.new_root.resolve()})
        finally:
            git("worktree", "remove", "--force", str(old_root))

    rows, gate = [], []
    for (workload, call), res in results.items():
        old, new = res["old"], res["new"]
        times = [summary(s["walls"], args.stat) if not s["failed"] else None for s in (old, new)]
        entries = [(CALL_NAMES[call], *times, True)]
        for label in STEPS[call]:
            steps = [
                summary([d[label] for d in s["steps"] if label in d], args.stat) for s in (old, new)
            ]
            if steps != [None, None]:  # a step this workload has
                entries.append((f"  {label} (timings)", *steps, False))
        for step, t_old, t_new, is_call in entries:
            ratio = t_new / t_old if t_old and t_new is not None else None
            slow = ratio is not None and ratio > LIMIT
            flag = ("SLOWER" if slow else "") if is_call else ("(info)" if slow else "")
            if is_call:
                flag = flag if ratio is not None else "FAILED"
                gate.append(ratio)
            rows.append((workload, step, fmt(t_old), fmt(t_new), fmt(ratio, ".2f"), flag))
    head = ("workload", "step", f"baseline s ({args.stat})", "new s", "new/old", "flag")
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
    print()
    for r in [head, *rows]:
        cells = [
            c.ljust(w) if j < 2 else c.rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print(" | ".join(cells).rstrip())

    print("\nEB-ML sigma2 (numeric check: relative difference at most 1e-6):")
    for workload in dict.fromkeys(w for w, _ in results):
        res = results.get((workload, "eb"), {})
        s_old, s_new = (res.get(side, {}).get("sigma2") for side in ("old", "new"))
        rel = abs(s_new - s_old) / abs(s_old) if s_old and s_new is not None else None
        bad = "  DIFF" if rel is not None and rel > 1e-6 else ""
        print(
            f"  {workload:8} baseline {fmt(s_old, '.10g')}  new {fmt(s_new, '.10g')}  "
            f"rel diff {fmt(rel, '.1e')}{bad}"
        )

    print(f"\nload average {load()}; whole run {time.perf_counter() - t_start:.0f} s")
    failed = gate.count(None)
    worst = max((r for r in gate if r is not None), default=None)
    note = f"; {failed} call(s) FAILED on a side" if failed else ""
    print(f"max ratio {fmt(worst, '.2f')} (limit {LIMIT:.2f}){note}")
    if args.strict and (failed or worst is None or worst > LIMIT):
        sys.exit(1)


if __name__ == "__main__":
    main()
