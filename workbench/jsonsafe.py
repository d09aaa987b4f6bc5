"""JSON-safe copies of result records: plain Python values, every non-finite float (NaN, +-inf)
replaced by null and named in a note, so that `json.dumps(..., allow_nan=False)` never fails on a
result. Records themselves are left as they are (a NaN stays a NaN there; renderers show "–").

`clean(value)` -> (copy, notes) for any nested dict/list/tuple/numpy value;
`finalize(record)` -> the top-level JSON record: each block cleaned, its notes appended to the
block's `notes` list and one line per block added to the top-level `warnings`;
`schema()` / `validate(record)`: the published contract, `workbench/schema/comparison.schema.json`
(JSON Schema, Draft 2020-12), for both routes (one-way and formula models).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cache
from importlib import resources

import numpy as np

MAX_NOTES = 12  # per block; the rest are counted in one line
PLAIN = ("model", "data", "settings")  # blocks whose notes go to `warnings` only
WORDS = {"nan": "NaN (not a number)", "inf": "+infinity", "-inf": "-infinity"}


def _describe(v: float) -> str:
    return WORDS["nan"] if math.isnan(v) else WORDS["inf" if v > 0 else "-inf"]


def _join(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def clean(value, path: str = "") -> tuple[object, list[str]]:
    """A JSON-ready deep copy of `value` and a note for each non-finite number replaced by None.

    numpy scalars and arrays become Python numbers and lists; tuples become lists; keys become
    strings. A note reads "PATH was NaN (not a number): reported as null"."""
    notes: list[str] = []

    def walk(v, p: str):
        if v is None or isinstance(v, str | bool):
            return v
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, int | np.integer):
            return int(v)
        if isinstance(v, float | np.floating):
            f = float(v)
            if math.isfinite(f):
                return f
            notes.append(f"{p or 'value'} was {_describe(f)}: reported as null")
            return None
        if isinstance(v, np.ndarray):
            return walk(v.tolist(), p)
        if isinstance(v, Mapping):
            return {str(k): walk(x, _join(p, str(k))) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x, _join(p, i)) for i, x in enumerate(v)]
        return v  # anything else is left for json to judge

    return walk(value, path), notes


def _capped(notes: list[str]) -> list[str]:
    if len(notes) <= MAX_NOTES:
        return notes
    return notes[:MAX_NOTES] + [
        f"... and {len(notes) - MAX_NOTES} more non-finite value(s) reported as null"
    ]


def finalize(record: dict) -> dict:
    """The top-level record made JSON-safe. For a result block (a dict other than `model`,
    `data`, `settings`) in which something was replaced, the notes are appended to the block's
    `notes` list and one line pointing there to the top-level `warnings`; elsewhere the notes go
    to `warnings` themselves."""
    out: dict = {}
    warnings = [str(w) for w in record.get("warnings", [])]
    extra: list[str] = []
    for key, block in record.items():
        if key == "warnings":
            continue
        value, notes = clean(block, key)
        if notes:
            if isinstance(value, dict) and key not in PLAIN:
                value["notes"] = [*value.get("notes", []), *_capped(notes)]
                extra.append(
                    f"{key}: {len(notes)} non-finite value(s) reported as null (see {key}.notes)"
                )
            else:
                extra.append(f"{key}: " + "; ".join(_capped(notes)))
        out[key] = value
    out["warnings"] = warnings + extra
    return out


@cache
def schema() -> dict:
    """The JSON Schema of `Comparison.to_dict()` / `LMMComparison.to_dict()` (the CLI's JSON)."""
    path = resources.files("workbench") / "schema" / "comparison.schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


def validate(record: dict) -> None:
    """Raise `jsonschema.ValidationError` (naming the first offending path) unless `record`
    satisfies the published schema and is strict JSON (no NaN or infinity)."""
    import jsonschema

    json.dumps(record, allow_nan=False)
    jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker()).validate(
        record
    )
