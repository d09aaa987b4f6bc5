"""Reproducibility bundles: `workbench run CASE --out DIR` (or `compare ... --out DIR`) writes
one folder that re-runs by itself, and `workbench rerun DIR` checks that it gives the same numbers.

A bundle holds the report (`report.html`), the numbers (`result.json`), the MCMC draws
(`posterior.nc`, when MCMC ran), the case file (for `compare`, one written from the options)
with its data path pointing into the bundle, the data file itself under `data/` when it is at
most `COPY_MAX_BYTES` (with the data folder's README.md, which holds its citation), a
`README.txt`, a `rerun.sh` and the manifest `bundle.json` (every file's SHA-256). Larger data
files are not copied: a bundle is meant to travel (to a journal, a colleague), and the shipped
data sets are under 1 MB, but duplicating a data file of gigabytes on every run would fill the
disk; the bundle's case file then names the data by a path relative to the bundle, and the
manifest records the file's SHA-256 and the path as typed, so `rerun` finds it and the JSON's
content hash (`data.sha256`) shows whether it is still the same data.

Everything is written together (`files.OutputSet` through the CLI): a failed run leaves no half
bundle. No file of the bundle holds an absolute path of the machine, unless the user typed one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from workbench.errors import InputError
from workbench.files import check_output_folder, sha256_file

MANIFEST = "bundle.json"
FORMAT = "workbench-bundle"
REPORT, JSON, POSTERIOR = "report.html", "result.json", "posterior.nc"
README, RERUN = "README.txt", "rerun.sh"
DATA_DIR = "data"
COPY_MAX_BYTES = 64 * 2**20
# keys of the JSON that name the run, not its numbers: `rerun` reports them, never fails on them;
# the data path as typed (a rerun reads the bundle's copy) is not even reported
PROVENANCE_KEYS = (("workbench_version",), ("lock_sha256",), ("provenance",), ("data", "source"))
UNREPORTED = ("data.source",)


def check_out(out: Path, option: str = "--out") -> None:
    """Before any computing: `out` must be a new or empty folder, or an earlier bundle (which
    is then replaced whole)."""
    check_output_folder(out, option)
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise InputError(
            f"{option} {out} is a folder with files that is not a workbench bundle (no "
            f"{MANIFEST}); give a new or empty folder."
        )


# ----------------------------------------------------------------------------------------------
# TOML out (tomllib only reads): the case files' plain values


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")  # JSON's escapes are TOML's


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_str(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def to_toml(table: dict, header: str = "") -> str:
    """A case file's table as TOML: top-level values, then one [section] per sub-table."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [
        f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)
    ]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += ["", f"[{_toml_key(k)}]"]
            lines += [f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def with_data_path(text: str, new: str) -> str:
    """The case file's text with `[data] path` set to `new`, comments and layout kept; where the
    key is not written as one `path = "..."` line of a `[data]` table, the file is written anew
    from its values (comments lost). Checked by reading the result back."""
    want = tomllib.loads(text)
    want.setdefault("data", {})["path"] = new
    section = re.search(r"^[ \t]*\[[ \t]*data[ \t]*\][^\n]*$", text, re.M)
    if section is not None:
        end = re.search(r"^[ \t]*\[", text[section.end() :], re.M)
        stop = section.end() + (end.start() if end else len(text) - section.end())
        body = text[section.end() : stop]
        line = re.compile(r"^([ \t]*path[ \t]*=[ \t]*)(\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*')", re.M)
        if len(line.findall(body)) == 1:
            body = line.sub(lambda m: m.group(1) + _toml_str(new), body)
            out = text[: section.end()] + body + text[stop:]
            if tomllib.loads(out) == want:
                return out
    return to_toml(want, "case file rewritten by workbench for a bundle (the data path changed)")


def compare_case(data: str, y: str | None, group: str | None, kwargs: dict, data_entry: str) -> str:
    """The case file that `workbench compare DATA ...` amounts to (its options as case keys)."""
    table: dict = {"data": {"path": data_entry}}
    if kwargs.get("formula") is not None:
        table["data"]["formula"] = kwargs["formula"]
        if kwargs.get("levels"):
            table["data"]["levels"] = dict(kwargs["levels"])
    else:
        table["data"] |= {"y": y, "group": group}
    table["compare"] = {
        k: kwargs[k]
        for k in ("methods", "seed", "parametrization", "n_starts")
        if kwargs.get(k) is not None
    }
    table["mcmc"] = {
        k: kwargs[k]
        for k in ("chains", "draws", "tune", "target_accept")
        if kwargs.get(k) is not None
    }
    if kwargs.get("priors"):
        table["priors"] = {
            s.partition("~")[0].strip(): s.partition("~")[2].strip() for s in kwargs["priors"]
        }
    return to_toml(table, f"the options of: workbench compare {data} ...")


# ----------------------------------------------------------------------------------------------
# Writing a bundle


@dataclass
class Bundle:
    """One bundle being written to `out`: `files(outputs, result)` adds the case, data, README,
    rerun script and manifest to the report/JSON/posterior the CLI writes; `tidy()` then removes
    what an earlier bundle in `out` had that this one has not."""

    out: Path
    command: str
    case_name: str  # the case file's name in the bundle, e.g. "dyestuff.toml"
    case_text: str  # before its data path is set
    data: Path  # the data file as typed (relative to the working folder)
    copy: bool = field(init=False)
    data_entry: str = field(init=False)  # [data] path in the bundle's case file
    _old: set[str] = field(init=False, default_factory=set)
    _new: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        if not self.data.is_file():
            raise InputError(f"{self.data}: no such data file; give the path of a CSV file.")
        self.copy = self.data.stat().st_size <= COPY_MAX_BYTES
        if self.copy:
            self.data_entry = f"{DATA_DIR}/{self.data.name}"
        else:
            self.data_entry = Path(os.path.relpath(self.data, self.out)).as_posix()
        try:
            self._old = set(json.loads((self.out / MANIFEST).read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            self._old = set()

    @classmethod
    def for_case(cls, case, out: Path, command: str) -> Bundle:
        return cls(out, command, case.path.name, case.text, Path(case.data_path))

    @classmethod
    def for_compare(cls, data, y, group, kwargs: dict, out: Path, command: str) -> Bundle:
        name = f"{Path(data).stem or 'data'}.toml"
        b = cls(out, command, name, "", Path(data))
        b.case_text = compare_case(str(data), y, group, kwargs, b.data_entry)
        return b

    def paths(self) -> dict[str, Path]:
        """--report, --json and --posterior inside the bundle."""
        return {
            "--report": self.out / REPORT,
            "--json": self.out / JSON,
            "--posterior": self.out / POSTERIOR,
        }

    def files(self, outputs: list, result) -> list:
        """(path, write[, mode]) of every file of the bundle, the manifest last: the CLI's
        `outputs` (report, JSON, posterior) wrapped to record their SHA-256 as they are
        staged, then the case, data, README, script and manifest."""
        from workbench.model.data import content_sha256, read_csv
        from workbench.model.formula import parse, variables
        from workbench.provenance import DATA_README, citation, git_state

        hashes: dict[str, str] = {}

        def hashed(name: str, write, mode: int = 0o666):
            def w(tmp):
                write(tmp)
                hashes[name] = sha256_file(tmp)

            return (self.out / name, w, mode)

        def text(s: str):
            return lambda tmp: Path(tmp).write_text(s, encoding="utf-8")

        d = result.data
        out = [hashed(Path(p).relative_to(self.out).as_posix(), w) for p, w in outputs]
        out.append(hashed(self.case_name, text(with_data_path(self.case_text, self.data_entry))))
        if self.copy:

            def copy_data(tmp):  # the bundled file must hold the data that were fitted
                shutil.copyfile(self.data, tmp)
                if content_sha256(read_csv(tmp), variables(parse(d.formula))) != d.sha256:
                    raise OSError(f"{self.data} changed while the models were fitted")

            out.append(hashed(self.data_entry, copy_data))
            readme = self.data.parent / DATA_README
            if readme.is_file():
                out.append(
                    hashed(
                        f"{DATA_DIR}/{DATA_README}",
                        lambda tmp: shutil.copyfile(readme, tmp),
                    )
                )
        has = {REPORT, JSON, POSTERIOR} & {name for name in (o[0].name for o in out)}
        git = git_state()
        meta = {
            "format": FORMAT,
            "format_version": 1,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": self.command,
            "workbench_version": version("workbench"),
            "git_commit": git["commit"] if git else None,
            "git_dirty": git["dirty"] if git else None,
            "case": self.case_name,
            "data": {
                "typed": str(self.data),
                "in_bundle": self.data_entry,
                "copied": self.copy,
                "file_sha256": sha256_file(self.data),
                "content_sha256": d.sha256,
                "citation": citation(self.data),
            },
        }
        out.append(hashed(README, text(self._readme(meta, has))))
        out.append(hashed(RERUN, text(RERUN_SCRIPT), 0o777))

        def manifest(tmp):
            meta["files"] = dict(sorted(hashes.items()))
            self._new = set(meta["files"]) | {MANIFEST}
            Path(tmp).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

        out.append((self.out / MANIFEST, manifest, 0o666))
        return out

    def _readme(self, meta: dict, has: set[str]) -> str:
        d = meta["data"]
        rows = [
            (REPORT, "the report (HTML, self-contained)"),
            (JSON, "the numbers (JSON; schema workbench/schema/comparison.schema.json)"),
            (POSTERIOR, "the MCMC draws (NetCDF, ArviZ's InferenceData layout)"),
        ]
        rows = [r for r in rows if r[0] in has]
        rows.append((self.case_name, f"the case file; its data path is {self.data_entry}"))
        if self.copy:
            rows.append((self.data_entry, "a copy of the data file"))
            rows.append((f"{DATA_DIR}/{'README.md'}", "the data's description and citation"))
        rows += [
            (RERUN, "re-runs the case and checks the numbers: sh rerun.sh"),
            (MANIFEST, "this bundle's manifest: how it was made, every file's SHA-256"),
        ]
        width = max(len(n) for n, _ in rows)
        git = (
            f"git {meta['git_commit'][:12]}{' (uncommitted changes)' if meta['git_dirty'] else ''}"
            if meta["git_commit"]
            else "not from a git checkout"
        )
        data_note = (
            ""
            if self.copy
            else (
                f"\nThe data file ({self.data.stat().st_size / 2**20:.0f} MiB, over the "
                f"{COPY_MAX_BYTES // 2**20} MiB copied into bundles) is not copied; the case file "
                f"names it relative to this folder, as {self.data_entry}.\n"
            )
        )
        cite = f"Data citation: {d['citation']}\n" if d["citation"] else ""
        return (
            "workbench reproducibility bundle\n"
            "================================\n\n"
            f"Made by:   {meta['command']}\n"
            f"Software:  workbench {meta['workbench_version']}, {git}; versions, lock hash "
            f"and BLAS in {JSON} (provenance)\n"
            f"Created:   {meta['created']}\n"
            f"Data:      {d['typed']} (SHA-256 of the used columns {d['content_sha256']})\n"
            f"{data_note}\nFiles:\n"
            + "".join(f"  {n:<{width}}  {t}\n" for n, t in rows)
            + "\nTo re-run and check that the numbers are identical (from this folder):\n"
            "  workbench rerun .          (or: sh rerun.sh)\n"
            "To make a fresh bundle from the same case:\n"
            f"  workbench run {self.case_name} --out NEW_FOLDER\n\n"
            f"{cite}"
            "Cite workbench: see CITATION.cff in its repository.\n"
        )

    def tidy(self) -> None:
        """Remove the files an earlier bundle in `out` had and this one has not (a posterior
        from a run with MCMC, another data file); called after the new bundle is in place."""
        root = self.out.resolve()
        for name in sorted(self._old - self._new):
            path = (self.out / name).resolve()
            if path.is_relative_to(root) and path.is_file() and not path.is_symlink():
                try:
                    path.unlink()
                except OSError:  # the new bundle is complete; a leftover file is harmless
                    pass


RERUN_SCRIPT = """#!/bin/sh
# Re-run this bundle's case and check that the numbers equal result.json (exit 0 if identical).
cd "$(dirname "$0")" && exec workbench rerun .
"""


# ----------------------------------------------------------------------------------------------
# Re-running a bundle


def load(folder: Path) -> dict:
    """The bundle's manifest, or a one-line error when `folder` is not a bundle."""
    folder = Path(folder)
    where = f"{folder} is not a workbench bundle"
    if not folder.is_dir():
        raise InputError(
            f"{where} (not a folder); give a folder written by 'workbench run CASE --out DIR'."
        )
    try:
        meta = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{where} (no {MANIFEST}); give a folder written by 'workbench run CASE --out DIR'."
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{where} ({MANIFEST} cannot be read: {exc}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "case" not in meta:
        raise InputError(f"{where} ({MANIFEST} is not a bundle manifest).")
    for name in (meta["case"], JSON):
        if not (folder / name).is_file():
            raise InputError(f"{where} any more: {name} is missing.")
    return meta


def differences(old, new, path: tuple = ()) -> list[tuple[str, object, object]]:
    """(key, old, new) of every value that differs between two JSON records, keys written as
    `a.b[3].c`; a key in only one of them is a difference with `<absent>` on the other side."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out += differences(old.get(k, ABSENT), new.get(k, ABSENT), (*path, k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in differences(a, b, (*path, i))
        ]
    if type(old) is type(new) and old == new:
        return []
    return [(_key(path), old, new)]


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()


def _key(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _split(record: dict) -> tuple[dict, dict]:
    """(numbers, provenance): the JSON without and with only the `PROVENANCE_KEYS`."""
    numbers = json.loads(json.dumps(record))
    prov: dict = {}
    for keys in PROVENANCE_KEYS:
        node = numbers
        for k in keys[:-1]:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and keys[-1] in node:
            prov[".".join(keys)] = node.pop(keys[-1])
    return numbers, prov


@dataclass
class RerunResult:
    compared: int  # number of values compared
    diffs: list  # (key, bundle's value, rerun's value): the numbers
    notes: list  # the same for provenance (versions, machine, the data path as typed)

    @property
    def identical(self) -> bool:
        return not self.diffs


def _count(x) -> int:
    if isinstance(x, dict):
        return sum(_count(v) for v in x.values())
    if isinstance(x, list):
        return sum(_count(v) for v in x)
    return 1


def rerun(folder: Path, progress=None) -> RerunResult:
    """Re-run the bundle's case (its own copy of the data) and compare the new JSON record with
    the bundle's `result.json`, value by value, exactly: every number and text must be equal.
    Provenance (versions, git commit, BLAS, the data path as typed) is compared too but only
    reported. Timings and timestamps are not in the JSON, so they never count."""
    from workbench.casefile import load_case
    from workbench.compare import compare
    from workbench.simulate import workers_die_with_this_process

    folder = Path(folder)
    meta = load(folder)
    case = load_case(folder / meta["case"])
    if not Path(case.data_path).is_file():
        raise InputError(
            f"{folder}: the bundle's data file {case.data_entry} (relative to the bundle) is "
            f"missing; put {meta.get('data', {}).get('typed', 'the data file')} there."
        )
    try:
        old = json.loads((folder / JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{folder}: the bundle's {JSON} cannot be read ({exc}); restore it from the "
            "bundle's source or make a fresh bundle with 'workbench run CASE --out DIR'."
        ) from None
    if not isinstance(old, dict):
        raise InputError(f"{folder}: the bundle's {JSON} is not a workbench JSON record.")
    with workers_die_with_this_process():
        result = compare(
            case.data_path, case.y, case.group, progress=progress, **case.compare_kwargs
        )
    new = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    old_numbers, old_prov = _split(old)
    new_numbers, new_prov = _split(new)
    return RerunResult(
        compared=_count(old_numbers),
        diffs=differences(old_numbers, new_numbers),
        notes=[n for n in differences(old_prov, new_prov) if n[0] not in UNREPORTED],
    )
