"""Command line: `workbench compare DATA.csv --y COL --group COL ...` and
`workbench run models/NAME.toml`. Bad input: one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .errors import InputError
from .files import atomic_text, atomic_write


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, no usage dump
        self.exit(2, f"workbench: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("compare", help="fit one data set every way and compare")
    c.add_argument("data", help="CSV file")
    c.add_argument("--y", default=None, help="response column (one-way model)")
    c.add_argument("--group", default=None, help="grouping column (one-way model)")
    c.add_argument("--formula", default=None,
                   help='lme4 formula, e.g. "y ~ x + (1 + x | g)" (instead of --y/--group)')
    c.add_argument("--levels", action="append", default=None, metavar="COL=A,B,...",
                   help="level order of a categorical column (first = reference); repeatable")
    c.add_argument("--methods", default=None,
                   help="comma-separated subset of anova,eb-ml,eb-reml,joint-map,mcmc")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--chains", type=int, default=4)
    c.add_argument("--draws", type=int, default=1000)
    c.add_argument("--tune", type=int, default=1000)
    c.add_argument("--target-accept", type=float, default=0.9)
    c.add_argument("--parametrization", default="noncentered",
                   help="noncentered (default) or centered")
    c.add_argument("--n-starts", type=int, default=16, help="joint-MAP starts (default 16)")
    c.add_argument("--n-jobs", type=int, default=-1, help="processes (-1: all cores)")
    c.add_argument("--json", type=Path, default=None, help="write the JSON record here")
    c.add_argument("--posterior", type=Path, default=None,
                   help="write the posterior (NetCDF) here")
    c.add_argument("--report", type=Path, default=None,
                   help="write the HTML report here (JSON and posterior NetCDF beside it)")
    c.add_argument("--quiet", action="store_true", help="no progress messages")
    r = sub.add_parser("run", help="run a case file from models/")
    r.add_argument("case", help="models/NAME.toml")
    r.add_argument("--quiet", action="store_true")
    s = sub.add_parser("simulate", help="a simulation study of bias and coverage")
    s.add_argument("study", nargs="?", default=None,
                   help="models/NAME.toml with a [simulation] section (flags override it)")
    for flag, kind in (("--m", int), ("--mu", float), ("--sigma", float), ("--tau", float)):
        s.add_argument(flag, type=_list_of(kind), default=None,
                       help="a value or a comma-separated list (a grid)")
    s.add_argument("--group-sizes", type=_list_of(str), default=None,
                   help="'3' (balanced) or '2-8' (uniform sizes); comma-separated for a grid")
    s.add_argument("--replicates", type=int, default=None)
    s.add_argument("--methods", type=_list_of(str), default=None)
    s.add_argument("--level", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--n-starts", type=int, default=None)
    s.add_argument("--n-jobs", type=int, default=-1, help="local processes (-1: all cores)")
    s.add_argument("--scheduler", default=None,
                   help="address of an existing Dask scheduler, e.g. tcp://127.0.0.1:8786")
    s.add_argument("--out", type=Path, default=None,
                   help="store and outputs (default reports/NAME)")
    s.add_argument("--quiet", action="store_true")
    return p


def _list_of(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of {kind.__name__}: {text!r}") from None

    return parse


def _run_simulate(args, command: str) -> int:
    import dataclasses
    import time

    from . import simulate as sim

    if args.study is not None:
        study = sim.load_study(args.study)
    else:
        study = sim.Study(name="quick", grid={"m": [30], "group_sizes": ["2-8"], "mu": [0.0],
                                              "sigma": [1.0], "tau": [1.0]}, replicates=100)
    grid = dict(study.grid)
    for key in sim.GRID_KEYS:
        value = getattr(args, key)
        if value is not None:
            grid[key] = value
    changes = {k: getattr(args, k) for k in ("replicates", "level", "seed", "n_starts")
               if getattr(args, k) is not None}
    if args.methods is not None:
        bad = [m for m in args.methods if m not in sim.SIM_METHODS]
        if bad:
            raise InputError(f"unknown method '{bad[0]}' in --methods; choose from "
                             f"{','.join(sim.SIM_METHODS)}.")
        changes["methods"] = tuple(args.methods)
    study = dataclasses.replace(study, grid=grid, **changes)
    sim.check_study(study, "options")
    out = args.out or Path("reports") / study.name
    t0 = time.perf_counter()
    counts = sim.run_study(study, out, n_jobs=args.n_jobs, scheduler=args.scheduler,
                           progress=not args.quiet)
    table = sim.study_table(study, out)
    summary = sim.summarize(table, study)
    html = sim.render_report(study, summary, command=command, counts=counts,
                             seconds=time.perf_counter() - t0)
    atomic_write(out / "replicates_table.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    atomic_text(out / "report.html", html)
    cols = ["setting", "method", "parameter", "bias", "relative_bias", "coverage",
            "coverage_mcse", "interior_share"]
    with pd_options():
        print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\n{counts['computed']} replicates computed, {counts['skipped']} resumed; "
          f"written to {out}/ (summary.csv, replicates_table.csv, report.html)")
    return 0


def pd_options():
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_rows", 500)


def _levels(items: list[str] | None) -> dict[str, list[str]] | None:
    """--levels sector=Public,Catholic -> {"sector": ["Public", "Catholic"]}."""
    if not items:
        return None
    out = {}
    for item in items:
        col, sep, vals = item.partition("=")
        if not sep or not col.strip() or not vals.strip():
            raise InputError(f"--levels '{item}' must look like COLUMN=LEVEL1,LEVEL2,...")
        out[col.strip()] = [v.strip() for v in vals.split(",") if v.strip()]
    return out


def _check_writable(path: Path | None, option: str) -> None:
    if path is None:
        return
    parent = path.resolve().parent
    if not parent.is_dir():
        raise InputError(f"{option} {path}: folder {parent} does not exist; create it or choose "
                         f"another path.")
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name.")


def _progress(quiet: bool):
    if quiet:
        return None

    def say(step: str) -> None:
        print(f"[workbench] {step} ...", file=sys.stderr, flush=True)

    return say


def _run_compare(data, y, group, kwargs, json_path, posterior_path, quiet, *,
                 report_path: Path | None = None, command: str = "", case_text: str | None = None,
                 truth: dict | None = None) -> int:
    from .compare import compare
    from .estimators.mcmc import save_netcdf

    if report_path is not None:
        json_path = json_path or report_path.with_suffix(".json")
        posterior_path = posterior_path or report_path.with_suffix(".posterior.nc")
    _check_writable(json_path, "--json")
    _check_writable(posterior_path, "--posterior")
    _check_writable(report_path, "--report")
    result = compare(data, y, group, progress=_progress(quiet), **kwargs)
    html = None
    if report_path is not None:
        from .report import render

        if not quiet:
            print("[workbench] explanation, plots and report ...", file=sys.stderr, flush=True)
        html = render(result, command=command, case_text=case_text, truth=truth)
    print(result.table())
    if json_path is not None:
        text = json.dumps(result.to_dict(), indent=2, allow_nan=False)
        atomic_text(json_path, text + "\n")
        print(f"\nJSON written to {json_path}")
    if posterior_path is not None and result.mcmc is not None:
        atomic_write(posterior_path, lambda tmp: save_netcdf(result.mcmc, tmp))
        print(f"posterior written to {posterior_path}")
    if html is not None:
        atomic_text(report_path, html)
        print(f"report written to {report_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    command = "workbench " + shlex.join(argv)
    try:
        if args.command == "compare":
            kwargs = {k: getattr(args, k) for k in (
                "methods", "seed", "chains", "draws", "tune", "target_accept",
                "parametrization", "n_starts", "n_jobs")}
            if args.formula is None and (args.y is None or args.group is None):
                raise InputError("give --formula \"y ~ x + (1 + x | g)\", or --y and --group "
                                 "for the one-way model.")
            if args.formula is not None:
                kwargs["formula"] = args.formula
                kwargs["levels"] = _levels(args.levels)
            return _run_compare(args.data, args.y, args.group, kwargs, args.json,
                                args.posterior, args.quiet, report_path=args.report,
                                command=command)
        if args.command == "simulate":
            return _run_simulate(args, command)
        from .casefile import load_case

        case = load_case(args.case)
        if not args.quiet:
            print(f"[workbench] case {case.name}: {case.title}", file=sys.stderr)
        return _run_compare(case.data_path, case.y, case.group, case.compare_kwargs,
                            case.json_path, case.posterior_path, args.quiet,
                            report_path=case.report_path, command=command,
                            case_text=case.text, truth=case.truth)
    except InputError as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 2
    except TypeError as exc:  # a case-file value of the wrong type
        if "argument" in str(exc) or "unexpected" in str(exc):
            print(f"workbench: error: bad setting: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
