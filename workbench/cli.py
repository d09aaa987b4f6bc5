"""Command line: `workbench compare DATA.csv --y COL --group COL ...` and
`workbench run models/NAME.toml`. Bad input: one line on stderr, exit status 2, nothing written.

Each command first checks every option, case/study-file value and output path (`_check_*`),
before anything is computed or written; its outputs are then written together at the end
(`files.OutputSet`), so a failure leaves none of them (never a JSON without its report)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from workbench.errors import InputError
from workbench.files import OutputSet, check_output


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help that appends each option's default (when it has one and the text does not state
    it already); descriptions and epilogs (the examples) keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.option_strings
            and action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text

    def _fill_text(self, text, width, indent):  # one-line texts wrapped, others kept as typed
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, status 2, no usage dump
        self.exit(2, f"workbench: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser(
        "compare",
        help="fit one data set every way and compare",
        description="Fit one model to a CSV file by every method (ANOVA for the one-way model, "
        "EB-ML, EB-REML, the joint MAP variants, MCMC), print the table and write the JSON, "
        "posterior and report where asked.",
        epilog=COMPARE_EXAMPLES,
    )
    c.add_argument("data", help="CSV file")
    c.add_argument("--y", default=None, help="response column (one-way model)")
    c.add_argument("--group", default=None, help="grouping column (one-way model)")
    c.add_argument(
        "--formula",
        default=None,
        help='lme4 formula, e.g. "y ~ x + (1 + x | g)" (instead of --y/--group)',
    )
    c.add_argument(
        "--levels",
        action="append",
        default=None,
        metavar="COL=A,B,...",
        help="level order of a categorical column (first = reference); repeatable",
    )
    c.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of anova,eb-ml,eb-reml,joint-map,mcmc, or one joint-MAP "
        "variant such as joint-map+priors:noncentered (default: every method that applies; "
        "anova only for the one-way model)",
    )
    c.add_argument(
        "--prior",
        action="append",
        default=None,
        metavar='"PARAM ~ DIST(NUMBERS)"',
        help='set a prior, e.g. "sigma ~ HalfNormal(5)", "sd[x] ~ HalfNormal(1)", '
        '"beta[x] ~ Normal(0, 2)", "cor ~ LKJ(4)" (one-way: mu, tau); repeatable',
    )
    c.add_argument(
        "--seed", type=int, default=0, help="root seed of the joint-MAP starts and of MCMC"
    )
    c.add_argument("--chains", type=int, default=4, help="MCMC chains")
    c.add_argument("--draws", type=int, default=1000, help="MCMC draws per chain, after tuning")
    c.add_argument("--tune", type=int, default=1000, help="MCMC tuning steps per chain")
    c.add_argument(
        "--target-accept",
        type=float,
        default=0.9,
        help="NUTS target acceptance rate, in (0, 1); raise it when there are divergences",
    )
    c.add_argument(
        "--parametrization",
        default="collapsed",
        help="the MCMC model: collapsed (default: beta and b integrated out, then drawn "
        "exactly), noncentered or centered (the full model, funnel included)",
    )
    c.add_argument("--n-starts", type=int, default=16, help="joint-MAP starts (default 16)")
    c.add_argument("--n-jobs", type=int, default=-1, help="processes (-1: all cores)")
    c.add_argument("--json", type=Path, default=None, help="write the JSON record here")
    c.add_argument("--posterior", type=Path, default=None, help="write the posterior (NetCDF) here")
    c.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write the HTML report here (JSON and posterior NetCDF beside it)",
    )
    _quiet_and_out(c)
    r = sub.add_parser(
        "run",
        help="run a case file from models/",
        description="Run a case file: its data, model, priors, methods and sampler settings; "
        "the report, JSON and posterior go to its [output] paths (default reports/NAME.*).",
        epilog=RUN_EXAMPLES,
    )
    r.add_argument("case", help="models/NAME.toml")
    _quiet_and_out(r)
    rr = sub.add_parser(
        "rerun",
        help="re-run a bundle (written with --out) and check that the numbers are identical",
        description="Re-run a bundle's case file on the bundle's copy of the data and compare "
        "the new JSON with the bundle's result.json, value by value. Exit 0: identical; 1: "
        "the differing keys are printed with both values (differences in provenance, e.g. "
        "versions or the git commit, are printed as notes and do not count); 2: not a bundle.",
        epilog="example:\n  workbench run models/dyestuff.toml --out dy && workbench rerun dy",
    )
    rr.add_argument("bundle", type=Path, metavar="DIR", help="a bundle folder (written with --out)")
    rr.add_argument("--quiet", action="store_true", help="no progress messages")
    s = sub.add_parser(
        "simulate",
        help="a simulation study of bias and coverage",
        description="Simulate data sets from known parameters, fit each by every method and "
        "report bias, coverage and their Monte Carlo SEs. Without a study file: the quick "
        "one-way study m=30, group sizes 2-8, mu=0, sigma=1, tau=1, 100 replicates. "
        "Replicates are stored as they finish; a re-run resumes.",
        epilog=SIMULATE_EXAMPLES,
    )
    s.add_argument(
        "study",
        nargs="?",
        default=None,
        help="models/NAME.toml with a [simulation] section (flags override it)",
    )
    for flag, kind in (("--m", int), ("--mu", float), ("--sigma", float), ("--tau", float)):
        s.add_argument(
            flag,
            type=_list_of(kind),
            default=None,
            help="a value or a comma-separated list (a grid) (default: the study file's)",
        )
    s.add_argument(
        "--group-sizes",
        type=_list_of(str),
        default=None,
        help="'3' (balanced) or '2-8' (uniform sizes); comma-separated for a grid "
        "(default: the study file's)",
    )
    s.add_argument(
        "--replicates",
        type=int,
        default=None,
        help="data sets per grid point (default: the study file's, else 100)",
    )
    s.add_argument(
        "--methods",
        type=_list_of(str),
        default=None,
        help="comma-separated methods, as compare's --methods (default: the study file's, "
        "else eb-ml,eb-reml,joint-map:centered,joint-map+priors:noncentered)",
    )
    s.add_argument(
        "--level",
        type=float,
        default=None,
        help="interval level for coverage (default: the study file's, else 0.95)",
    )
    s.add_argument(
        "--seed", type=int, default=None, help="root seed (default: the study file's, else 0)"
    )
    s.add_argument(
        "--n-starts",
        type=int,
        default=None,
        help="joint-MAP starts per fit (default: the study file's, else 16)",
    )
    s.add_argument("--n-jobs", type=int, default=-1, help="local processes (-1: all cores)")
    s.add_argument(
        "--scheduler",
        default=None,
        help="address of an existing Dask scheduler, e.g. tcp://127.0.0.1:8786",
    )
    s.add_argument(
        "--out", type=Path, default=None, help="store and outputs (default reports/NAME)"
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="replace a report made from a different number of replicates (else refused)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


OUT_HELP = (
    "write a reproducibility bundle to this folder (new, empty or an earlier bundle): report, "
    "JSON, posterior, the case file and its data, and a rerun script ('workbench rerun DIR')"
)


def _version() -> str:
    from importlib.metadata import version

    return f"workbench {version('workbench')}"


def _run_rerun(args) -> int:
    """`workbench rerun DIR`: exit 0 when the numbers are identical, 1 when not."""
    from workbench import bundle

    bundle.load(args.bundle)  # not a bundle: one line, exit 2, before any computing
    res = bundle.rerun(args.bundle, progress=_progress(args.quiet))
    for key, old, new in res.notes:
        print(f"note: {key} differs (not a number): bundle {old!r}, now {new!r}")
    if res.identical:
        print(f"identical: all {res.compared} values of {args.bundle}/{bundle.JSON} reproduced")
        return 0
    print(f"NOT identical: {len(res.diffs)} of {res.compared} values differ:")
    if any(key == "data.sha256" for key, _, _ in res.diffs):
        print(
            "  (the data differ: the bundle's copy of the data file is not the data the bundle "
            "was made from; its hash is data.sha256)"
        )
    for key, old, new in res.diffs:
        print(f"  {key}: bundle {old!r}, now {new!r}")
    return 1


DESCRIPTION = """\
Fit a linear mixed model (lme4 formulas; the one-way model y ~ 1 + (1 | g) as a fast path)
every way: two-stage empirical Bayes (lme4's ML and REML), the joint MAP (the mode of the
density of the parameters and the random effects together) and the full posterior (MCMC),
side by side, with a report that shows where and why they differ."""

EPILOG = """\
examples:
  workbench run models/dyestuff.toml
      a shipped case file: table on the terminal, report, JSON and posterior in reports/
  workbench compare models/data/dyestuff.csv --y Yield --group Batch --report out/r.html
      the one-way model from columns of a CSV file
  workbench compare models/data/hsb82.csv --formula "mAch ~ ses + (1 + ses | school)" \\
      --methods eb-ml,eb-reml,joint-map
      any lme4 formula; here without MCMC (seconds instead of a minute)
  workbench run models/dyestuff.toml --out dyestuff-bundle && workbench rerun dyestuff-bundle
      a reproducibility bundle (report, JSON, posterior, case file, data), then its check
  workbench simulate models/sim_small_groups.toml --replicates 50
      a simulation study (bias and coverage of every method)

Progress goes to stderr (--quiet: none); the first MCMC run of a model shape compiles its log
density (up to minutes; cached on disk after). Run 'workbench COMMAND --help' for a command's
options. Bad input: one line on stderr and exit status 2."""

COMPARE_EXAMPLES = """\
examples:
  workbench compare models/data/dyestuff.csv --y Yield --group Batch
  workbench compare models/data/dyestuff.csv --y Yield --group Batch --methods eb-ml,mcmc \\
      --draws 500 --report out/dyestuff.html
  workbench compare models/data/hsb82.csv --formula "mAch ~ ses + sector + (1 + ses | school)" \\
      --levels sector=Public,Catholic --prior "sd[ses] ~ HalfNormal(1)" --json out/hsb.json"""

RUN_EXAMPLES = """\
examples:
  workbench run models/dyestuff.toml
  workbench run models/hsb82_slopes.toml --quiet"""

SIMULATE_EXAMPLES = """\
examples:
  workbench simulate                                   the quick one-way study
  workbench simulate --m 10,30 --tau 0.5,1 --replicates 200
  workbench simulate models/sim_small_groups.toml --n-jobs 2"""


def _list_of(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of {kind.__name__}: {text!r}") from None

    return parse


def _check_simulate(args):
    """The study (file values overridden by flags) and where it runs, all checked before the
    store is made: a refused command leaves nothing, so the corrected one is not refused as a
    'different study definition' afterwards. Returns (study, out)."""
    import dataclasses

    from workbench import simulate as sim

    if args.study is not None:
        study = sim.load_study(args.study)
    else:
        study = sim.Study(
            name="quick",
            grid={"m": [30], "group_sizes": ["2-8"], "mu": [0.0], "sigma": [1.0], "tau": [1.0]},
            replicates=100,
        )
    flags = set()
    grid = dict(study.grid)
    for key in sim.GRID_KEYS:
        value = getattr(args, key)
        if value is not None:
            grid[key] = value
            flags.add(key)
    changes = {
        k: getattr(args, k)
        for k in ("replicates", "level", "seed", "n_starts", "methods")
        if getattr(args, k) is not None
    }
    flags |= set(changes)

    def name(key: str) -> str:
        if key in flags or args.study is None:
            return "--" + key.replace("_", "-")
        return f"{args.study}: [simulation] {key}"

    study = sim.check_study(dataclasses.replace(study, grid=grid, **changes), name=name)
    out = args.out if args.out is not None else Path("reports") / study.name
    sim.check_run(study, out, n_jobs=args.n_jobs, scheduler=args.scheduler)
    sim.check_outputs(study, out, force=args.force)
    return study, out


def _run_simulate(args, command: str) -> int:
    import time

    from workbench import simulate as sim

    study, out = _check_simulate(args)
    t0 = time.perf_counter()
    counts = sim.run_study(
        study, out, n_jobs=args.n_jobs, scheduler=args.scheduler, progress=not args.quiet
    )
    table = sim.study_table(study, out)
    summary = sim.summarize(table, study)
    html = sim.render_report(
        study, summary, command=command, counts=counts, seconds=time.perf_counter() - t0
    )
    _write_together(
        [
            (out / "replicates_table.csv", lambda tmp: table.to_csv(tmp, index=False)),
            (out / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False)),
            (out / "report.html", _text(html)),
        ]
    )
    cols = [
        "setting",
        "method",
        "parameter",
        "bias",
        "relative_bias",
        "coverage",
        "coverage_mcse",
        "interior_share",
    ]
    with pd_options():
        print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(
        f"\n{counts['computed']} replicates computed, {counts['skipped']} resumed; "
        f"written to {out}/ (summary.csv, replicates_table.csv, report.html)"
    )
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


def _progress(quiet: bool):
    if quiet:
        return None

    def say(step: str) -> None:
        print(f"[workbench] {step} ...", file=sys.stderr, flush=True)

    return say


def _run_compare(
    data,
    y,
    group,
    kwargs,
    json_path,
    posterior_path,
    quiet,
    *,
    report_path: Path | None = None,
    command: str = "",
    case_text: str | None = None,
    truth: dict | None = None,
    make_folders: bool = False,
    bundle=None,
) -> int:
    """Check the output paths, compare, then write the outputs together. `make_folders` (case
    files): missing output folders are made (when writing) instead of refused. `bundle`
    (`bundle.Bundle`, --out): the outputs go into its folder, with the files that re-run it."""
    from workbench.compare import compare
    from workbench.fit.mcmc import save_netcdf

    if bundle is not None:
        report_path, json_path, posterior_path = bundle.paths().values()
        make_folders = True
    if report_path is not None:
        json_path = json_path or report_path.with_suffix(".json")
        posterior_path = posterior_path or report_path.with_suffix(".posterior.nc")
    paths = {"--report": report_path, "--json": json_path, "--posterior": posterior_path}
    for option, path in paths.items():
        check_output(path, option, make_folders=make_folders)
    chosen = [Path(os.path.realpath(p)) for p in paths.values() if p is not None]
    if isinstance(data, str | Path) and Path(os.path.realpath(data)) in chosen:
        raise InputError(
            f"an output path names the data file {data}; give the outputs other paths."
        )
    if len(set(chosen)) < len(chosen):
        raise InputError(
            f"{', '.join(f'{o} {p}' for o, p in paths.items() if p is not None)}: "
            f"two outputs name the same file; give each its own path."
        )
    from workbench.simulate import workers_die_with_this_process

    with workers_die_with_this_process():  # the joint-MAP starts' loky workers
        result = compare(data, y, group, progress=_progress(quiet), **kwargs)
    html = None
    if report_path is not None:
        from workbench.present.report import render

        if not quiet:
            print("[workbench] explanation, plots and report ...", file=sys.stderr, flush=True)
        html = render(result, command=command, case_text=case_text, truth=truth)
    print(result.table())
    files, written = [], []
    if json_path is not None:
        text = json.dumps(result.to_dict(), indent=2, allow_nan=False)
        files.append((json_path, _text(text + "\n")))
        written.append(f"JSON written to {json_path}")
    if posterior_path is not None and result.mcmc is not None:
        files.append((posterior_path, lambda tmp: save_netcdf(result.mcmc, tmp)))
        written.append(f"posterior written to {posterior_path}")
    if html is not None:
        files.append((report_path, _text(html)))
        written.append(f"report written to {report_path}")
    if bundle is not None:
        files = bundle.files(files, result)
        written = [f"bundle written to {bundle.out} (check it: workbench rerun {bundle.out})"]
    _write_together(files)  # all or none: never a JSON without the report it belongs to
    if bundle is not None:
        bundle.tidy()
    if written:
        print("\n" + "\n".join(written))
    return 0


def _quiet_and_out(p: argparse.ArgumentParser) -> None:
    """The options `compare` and `run` share: --quiet and --out (a reproducibility bundle)."""
    p.add_argument(
        "--quiet", action="store_true", help="no progress messages (the table is still printed)"
    )
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help=OUT_HELP)


def _bundle_for_compare(args, kwargs: dict, command: str):
    """--out with `compare`: the bundle, after checking the folder and the data file."""
    from workbench import bundle

    taken = [o for o in ("report", "json", "posterior") if getattr(args, o) is not None]
    if taken:
        raise InputError(
            f"--out writes the report, JSON and posterior into the bundle; leave out "
            f"--{taken[0]} (or --out)."
        )
    bundle.check_out(args.out)
    if not Path(args.data).is_file():
        raise InputError(f"{args.data}: no such file; give the path of a CSV file.")
    return bundle.Bundle.for_compare(args.data, args.y, args.group, kwargs, args.out, command)


class _WriteError(Exception):
    """Writing the outputs failed (disk full, folder removed meanwhile): none was written."""


def _text(text: str):
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")


def _write_together(files) -> None:
    """Write (path, write(tmp)) pairs as one commit (`files.OutputSet`)."""
    try:
        with OutputSet() as outputs:
            for path, write, *mode in files:
                outputs.add(path, write, *mode)
            outputs.commit()
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise _WriteError(
            f"writing{where} failed ({exc.strerror or exc}); no output was "
            f"written; fix the cause and run again."
        ) from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    command = "workbench " + shlex.join(argv)
    try:
        if args.command == "rerun":
            return _run_rerun(args)
        if args.command == "compare":
            from workbench.casefile import check_compare_options

            kwargs = check_compare_options(
                {
                    k: getattr(args, k)
                    for k in (
                        "methods",
                        "seed",
                        "chains",
                        "draws",
                        "tune",
                        "target_accept",
                        "parametrization",
                        "n_starts",
                        "n_jobs",
                    )
                }
            )
            if args.formula is None and (args.y is None or args.group is None):
                raise InputError(
                    'give --formula "y ~ x + (1 + x | g)", or --y and --group '
                    "for the one-way model."
                )
            if args.formula is not None:
                kwargs["formula"] = args.formula
                kwargs["levels"] = _levels(args.levels)
            if args.prior:
                from workbench.model.priors import parse_statement

                for text in args.prior:  # the syntax now; the names once the model is known
                    parse_statement(text)
                kwargs["priors"] = list(args.prior)
            out = None
            if args.out is not None:
                out = _bundle_for_compare(args, kwargs, command)
            return _run_compare(
                args.data,
                args.y,
                args.group,
                kwargs,
                args.json,
                args.posterior,
                args.quiet,
                report_path=args.report,
                command=command,
                bundle=out,
            )
        if args.command == "simulate":
            return _run_simulate(args, command)
        from workbench.casefile import load_case

        case = load_case(args.case)
        out = None
        if args.out is not None:
            from workbench import bundle

            bundle.check_out(args.out)
            out = bundle.Bundle.for_case(case, args.out, command)
        if not args.quiet:
            print(f"[workbench] case {case.name}: {case.title}", file=sys.stderr)
        return _run_compare(
            case.data_path,
            case.y,
            case.group,
            case.compare_kwargs,
            case.json_path,
            case.posterior_path,
            args.quiet,
            report_path=case.report_path,
            command=command,
            case_text=case.text,
            truth=case.truth,
            make_folders=True,
            bundle=out,
        )
    except InputError as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 2
    except _WriteError as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
