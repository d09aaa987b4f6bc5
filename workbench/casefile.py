"""Declarative case files (`models/NAME.toml`): data, columns, priors, sampler settings, seed."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

SECTIONS = {
    "data": {"path", "y", "group", "formula", "levels"},
    "compare": {"methods", "seed", "parametrization", "n_starts", "n_jobs"},
    "mcmc": {"chains", "draws", "tune", "target_accept"},
    "priors": {"mu_loc", "mu_scale", "sigma_scale", "tau_scale"},
    "output": {"json", "posterior", "report"},
    "truth": {"mu", "sigma2", "tau2"},
}


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


def read_toml(path: str | Path, what: str = "case file") -> tuple[dict, str]:
    """A TOML file's table and text, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what}; see models/ for examples.")
    text = path.read_text()
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc}).") from None


def load_case(path: str | Path, reports_dir: Path = Path("reports")) -> Case:
    """Read and check a case file; data paths are relative to the case file."""
    path = Path(path)
    raw, text = read_toml(path)
    if "simulation" in raw:
        raise InputError(f"{path} is a simulation study: run 'workbench simulate {path}'.")
    for key, value in raw.items():
        if key in ("title", "description"):
            continue
        if key not in SECTIONS:
            raise InputError(f"{path}: unknown section [{key}]; use "
                             f"{', '.join(f'[{s}]' for s in SECTIONS)}.")
        bad = set(value) - SECTIONS[key]
        if bad:
            raise InputError(f"{path}: unknown key '{sorted(bad)[0]}' in [{key}]; allowed: "
                             f"{', '.join(sorted(SECTIONS[key]))}.")
    data = raw.get("data", {})
    needed = ("path", "formula") if "formula" in data else ("path", "y", "group")
    for k in needed:
        if k not in data:
            raise InputError(f"{path}: [data] needs '{k}' (or 'formula' instead of y/group).")
    kwargs = dict(raw.get("compare", {}))
    if "formula" in data:
        kwargs["formula"] = data["formula"]
        if "levels" in data:
            kwargs["levels"] = {k: list(v) for k, v in dict(data["levels"]).items()}
    kwargs.update(raw.get("mcmc", {}))
    if raw.get("priors"):
        kwargs["priors"] = dict(raw["priors"])
    out = raw.get("output", {})
    name = path.stem
    report = Path(out.get("report", reports_dir / f"{name}.html"))
    return Case(name=name, path=path, title=raw.get("title", name),
                data_path=(path.parent / data["path"]).resolve(), y=data.get("y"),
                group=data.get("group"), compare_kwargs=kwargs,
                json_path=Path(out.get("json", report.with_suffix(".json"))),
                posterior_path=Path(out.get("posterior", report.with_suffix(".posterior.nc"))),
                report_path=report,
                truth={k: float(v) for k, v in raw.get("truth", {}).items()}, text=text)
