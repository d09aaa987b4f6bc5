"""Declarative case files (`models/NAME.toml`): data, columns, priors, sampler settings, seed."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import InputError, need_int, need_real, need_str, need_str_list

SECTIONS = {
    "data": {"path", "y", "group", "formula", "levels"},
    "compare": {"methods", "seed", "parametrization", "n_starts", "n_jobs"},
    "mcmc": {"chains", "draws", "tune", "target_accept"},
    "priors": None,  # numeric keys or parameter = "Dist(numbers)" (workbench.model.priors)
    "output": {"json", "posterior", "report"},
    "truth": {"mu", "sigma2", "tau2"},
}

# Upper bounds on sizes: beyond them a run would take days or exhaust memory, so they are refused
# up front (one joint-MAP start on a small data set takes about 0.1 s, 4 x per comparison).
MAX_STARTS = 1000
MAX_CHAINS = 64
MAX_DRAWS = 1_000_000
MAX_JOBS = 1024
PARAMETRIZATIONS = ("collapsed", "noncentered", "centered")  # the MCMC model (model.pymc)


def _priors(table: dict, path: Path) -> dict:
    """A case file's [priors]: `sigma = "HalfNormal(5)"`, `"sd[x]" = "HalfNormal(1)"`, or the
    numeric keys (mu_loc, sigma_scale, ...). Syntax and numbers are checked here, the names
    against the model once the data are read (before any fit)."""
    from workbench.model.priors import NUMERIC_KEYS, parse_statement

    out = {}
    for k, v in table.items():
        where = f"{path}: [priors] {k}"
        if k in NUMERIC_KEYS:
            out[k] = need_real(v, where, *((None,) if k == "mu_loc" else (0.0,)), open_lo=True)
        elif isinstance(v, str):
            try:
                parse_statement(f"{k} ~ {v}")
            except InputError as exc:
                raise InputError(f"{where}: {exc}") from None
            out[k] = v
        else:
            raise InputError(
                f'{where}: give a distribution such as "HalfNormal(5)", or use one of the '
                f"numeric keys {', '.join(NUMERIC_KEYS)}."
            )
    return out


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def check_compare_options(opts: dict, name=_flag) -> dict:
    """Type and range checks of the comparison options (CLI flags or a case file's [compare] and
    [mcmc] values), before any computing; `name(key)` says where a value came from. Returns the
    options with methods as a list."""
    from workbench.compare import parse_methods

    out = dict(opts)
    if out.get("methods") is not None:
        out["methods"] = list(
            parse_methods(need_str_list(out["methods"], name("methods")), name("methods"))
        )
    checks = {
        "seed": lambda v, n: need_int(v, n, 0),
        "n_starts": lambda v, n: need_int(v, n, 1, MAX_STARTS),
        "chains": lambda v, n: need_int(v, n, 1, MAX_CHAINS),
        "draws": lambda v, n: need_int(v, n, 1, MAX_DRAWS),
        "tune": lambda v, n: need_int(v, n, 0, MAX_DRAWS),
        "target_accept": lambda v, n: need_real(v, n, 0.0, 1.0, open_lo=True, open_hi=True),
        "n_jobs": check_n_jobs,
    }
    for key, check in checks.items():
        if out.get(key) is not None:
            out[key] = check(out[key], name(key))
    if out.get("parametrization") is not None:
        par = need_str(out["parametrization"], name("parametrization"))
        if par not in PARAMETRIZATIONS:
            raise InputError(
                f"{name('parametrization')} (the MCMC model) must be 'collapsed', "
                f"'noncentered' or 'centered', got '{par}'."
            )
    return out


def check_n_jobs(value, name: str = "--n-jobs") -> int:
    need_int(value, name)
    if value == 0 or value < -1 or value > MAX_JOBS:
        raise InputError(
            f"{name} must be a number of processes from 1 to {MAX_JOBS}, or -1 "
            f"(all cores), got {value}."
        )
    return value


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    title: str
    data_path: Path
    y: str | None
    group: str | None
    compare_kwargs: dict
    json_path: Path
    posterior_path: Path | None
    report_path: Path | None
    truth: dict
    text: str
    data_entry: str = ""  # [data] path as written in the case file (relative to it)


def read_toml(path: str | Path, what: str = "case file") -> tuple[dict, str]:
    """A TOML file's table and text, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what}; see models/ for examples.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
            f"save the {what} as UTF-8."
        ) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc}).") from None


def load_case(path: str | Path, reports_dir: Path = Path("reports")) -> Case:
    """Read and check a case file; data paths are relative to the case file. `data_path` is
    the case file's path as typed joined with the data path as written (not made absolute), so
    that outputs name the data as the user gave them, not by the machine's absolute path."""
    path = Path(path)
    raw, text = read_toml(path)
    if "simulation" in raw:
        raise InputError(f"{path} is a simulation study: run 'workbench simulate {path}'.")
    for key, value in raw.items():
        if key in ("title", "description"):
            need_str(value, f"{path}: {key}")
            continue
        if key not in SECTIONS:
            raise InputError(
                f"{path}: unknown section [{key}]; use {', '.join(f'[{s}]' for s in SECTIONS)}."
            )
        allowed = SECTIONS[key] if SECTIONS[key] is not None else {'PARAMETER = "DIST(...)"'}
        if not isinstance(value, dict):
            raise InputError(
                f"{path}: '{key}' must be a section [{key}] with keys "
                f"{', '.join(sorted(allowed))}, got {value!r}."
            )
        bad = set(value) - SECTIONS[key] if SECTIONS[key] is not None else set()
        if bad:
            raise InputError(
                f"{path}: unknown key '{sorted(bad)[0]}' in [{key}]; allowed: "
                f"{', '.join(sorted(SECTIONS[key]))}."
            )
    data = raw.get("data", {})
    needed = ("path", "formula") if "formula" in data else ("path", "y", "group")
    for k in needed:
        if k not in data:
            raise InputError(f"{path}: [data] needs '{k}' (or 'formula' instead of y/group).")
    for k in ("path", "y", "group", "formula"):
        if k in data:
            need_str(data[k], f"{path}: [data] {k}")

    def name(key: str) -> str:
        return f"{path}: [{'mcmc' if key in SECTIONS['mcmc'] else 'compare'}] {key}"

    kwargs = check_compare_options({**raw.get("compare", {}), **raw.get("mcmc", {})}, name)
    if "formula" in data:
        kwargs["formula"] = data["formula"]
        if "levels" in data:
            levels = data["levels"]
            if not isinstance(levels, dict):
                raise InputError(
                    f"{path}: [data] levels must be a table like "
                    f'{{ sector = ["Public", "Catholic"] }}, got {levels!r}.'
                )
            kwargs["levels"] = {
                k: need_str_list(v, f"{path}: [data] levels.{k}") for k, v in levels.items()
            }
    if raw.get("priors"):
        kwargs["priors"] = _priors(raw["priors"], path)
    out = raw.get("output", {})
    for k, v in out.items():
        need_str(v, f"{path}: [output] {k}")
    truth = {
        k: need_real(v, f"{path}: [truth] {k}", *((None,) if k == "mu" else (0.0,)))
        for k, v in raw.get("truth", {}).items()
    }
    name = path.stem
    report = Path(out.get("report", reports_dir / f"{name}.html"))
    return Case(
        name=name,
        path=path,
        title=raw.get("title", name),
        data_path=path.parent / data["path"],
        y=data.get("y"),
        group=data.get("group"),
        compare_kwargs=kwargs,
        json_path=Path(out.get("json", report.with_suffix(".json"))),
        posterior_path=Path(out.get("posterior", report.with_suffix(".posterior.nc"))),
        report_path=report,
        truth=truth,
        text=text,
        data_entry=data["path"],
    )
