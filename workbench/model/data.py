"""Data in, per-group sufficient statistics out (computed once, used by every estimator).

Stage one of the pipeline: a CSV path, a DataFrame or plain arrays become a `GroupedData`
record. Everything after this stage works from that record only.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.errors import InputError

# |y| range the one-way fits are exact in (squares and variances stay normal float64 numbers)
Y_MIN, Y_MAX = 1e-30, 1e30


def check_y_range(y: np.ndarray, name: str, source: str, lo: float, hi: float) -> float:
    """max |y|, or the one-line error when it is outside [lo, hi] (a route's exact range)."""
    scale = float(np.abs(y).max())
    if scale > 0 and not lo <= scale <= hi:
        raise InputError(
            f"{source}: column '{name}' has values of size {scale:.1e}, where squares and "
            f"variances leave floating-point range: rescale it (multiply by a power of 10)."
        )
    return scale


@dataclass(frozen=True)
class GroupedData:
    """One-way layout: response `y`, integer group `codes` and their `labels`, plus the
    sufficient statistics n_j (sizes), ybar_j (means) and W_j (within-group sums of squares)."""

    y: np.ndarray
    codes: np.ndarray
    labels: tuple[str, ...]
    n: np.ndarray
    ybar: np.ndarray
    wss: np.ndarray
    y_name: str = "y"
    group_name: str = "group"
    source: str = "<arrays>"
    sha256: str = field(default="", compare=False)

    @property
    def n_obs(self) -> int:
        return int(self.y.size)

    @property
    def n_groups(self) -> int:
        return int(self.n.size)

    @property
    def within_ss(self) -> float:
        """W = sum_j W_j, the within-group sum of squares."""
        return float(self.wss.sum())

    @property
    def grand_mean(self) -> float:
        return float(self.y.mean())

    @property
    def balanced(self) -> bool:
        return bool(np.all(self.n == self.n[0]))

    def summary(self) -> dict:
        """Plain description of the data for outputs and reports."""
        return {
            "source": self.source,
            "sha256": self.sha256,
            "y": self.y_name,
            "group": self.group_name,
            "n_obs": self.n_obs,
            "n_groups": self.n_groups,
            "group_size_min": int(self.n.min()),
            "group_size_max": int(self.n.max()),
            "balanced": self.balanced,
            "mean": self.grand_mean,
            "sd": float(self.y.std(ddof=1)),
        }


def sufficient_statistics(y: np.ndarray, codes: np.ndarray, m: int) -> tuple[np.ndarray, ...]:
    """Group sizes, means and within-group sums of squares in O(N), two-pass for accuracy."""
    n = np.bincount(codes, minlength=m).astype(float)
    ybar = np.bincount(codes, weights=y, minlength=m) / n
    resid = y - ybar[codes]
    wss = np.bincount(codes, weights=resid * resid, minlength=m)
    return n, ybar, wss


def from_arrays(
    y,
    group,
    *,
    y_name: str = "y",
    group_name: str = "group",
    source: str = "<arrays>",
    sha256: str = "",
) -> GroupedData:
    """Validate a response and a grouping vector and build the `GroupedData` record.

    Groups keep the order of first appearance (as `pandas.factorize` gives them)."""
    group = group if isinstance(group, pd.Series) else pd.Series(np.asarray(group))
    missing = group.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise InputError(
            f"{source}: column '{group_name}' has a missing group label in data row {row + 1} "
            f"({int(missing.sum())} rows in all); fill in or drop those rows."
        )
    y_series = pd.Series(y)
    y_num = pd.to_numeric(y_series, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(y_num)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raw = y_series.iloc[row]
        what = "missing" if pd.isna(raw) else f"not a finite number ({raw!r})"
        raise InputError(
            f"{source}: column '{y_name}' is {what} in data row {row + 1} "
            f"({int(bad.sum())} such rows); the response must be numeric and finite: "
            f"fix or drop those rows."
        )
    codes, uniques = pd.factorize(group, sort=False)
    labels = tuple(str(u) for u in uniques)
    m = len(labels)
    if m < 2:
        raise InputError(
            f"{source}: column '{group_name}' has {m} group(s); a hierarchical model needs at "
            f"least 2 groups: check the --group column."
        )
    codes = codes.astype(np.int64)
    n, ybar, wss = sufficient_statistics(y_num, codes, m)
    if n.max() < 2:
        raise InputError(
            f"{source}: no group in column '{group_name}' has 2 or more observations, so the "
            f"within-group variance cannot be estimated: check the --group column."
        )
    # relative to y's own scale (y * 1e-11 behaves exactly like y): the within-group spread is
    # zero if its root mean square is below 1e-12 of max |y|, computed on y / max |y| so that
    # neither a tiny nor a huge scale under- or overflows
    scale = check_y_range(y_num, y_name, source, Y_MIN, Y_MAX)
    unit = y_num / scale if scale > 0 else y_num
    wss_unit = sufficient_statistics(unit, codes, m)[2].sum()
    if scale == 0 or wss_unit <= 1e-24 * y_num.size:
        raise InputError(
            f"{source}: column '{y_name}' does not vary within any group of '{group_name}' "
            f"(zero within-group variance), so sigma^2 is not identified: check the columns."
        )
    return GroupedData(
        y=y_num,
        codes=codes,
        labels=labels,
        n=n,
        ybar=ybar,
        wss=wss,
        y_name=y_name,
        group_name=group_name,
        source=source,
        sha256=sha256,
    )


def _check_column(df: pd.DataFrame, name: str, option: str, source: str) -> None:
    if name in df.columns:
        return
    cols = [str(c) for c in df.columns]
    close = [c for c in cols if c.lower() == name.lower()]
    close += [c for c in difflib.get_close_matches(name, cols, n=3, cutoff=0.5) if c not in close]
    hint = (
        f"did you mean {', '.join(repr(c) for c in close)}?"
        if close
        else (f"available columns: {', '.join(map(str, df.columns[:12]))}")
    )
    raise InputError(f"{source}: no column '{name}' for {option}; {hint}")


def content_sha256(df: pd.DataFrame, columns) -> str:
    """SHA-256 of the data a model uses: the named `columns` of `df`, taken in sorted order of
    their names, each as its name, its kind and its values in row order; a numeric (or boolean)
    column as float64 numbers, any other column as the text of each value.

    It covers the content, not a file: a CSV file and the same data as a DataFrame (for example
    `pd.read_csv` of that file) get the same hash, whatever the file's formatting (quoting,
    "1.50" or "1.5", line endings), the other columns, the column order, the index or the
    dtype width (int64 1545 and float64 1545.0 are the same number). What does count: the row
    order, every value of the used columns, and whether a column is numbers or text (group
    labels 1224 read as numbers differ from the text "1224")."""
    h = hashlib.sha256()
    for name in sorted(columns, key=str):
        col = df[name]
        numeric = pd.api.types.is_numeric_dtype(col.dtype) and not isinstance(
            col.dtype, pd.CategoricalDtype
        )
        h.update(f"{name}\0{'number' if numeric else 'text'}\0{len(col)}\0".encode())
        if numeric:
            h.update(np.ascontiguousarray(col.to_numpy(dtype=float), dtype="<f8").tobytes())
        else:
            text = ["\0NA" if pd.isna(v) else str(v) for v in col.tolist()]  # missing: a mark
            h.update("\x1f".join(text).encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()


def from_frame(
    df: pd.DataFrame, y: str, group: str, *, source: str = "<DataFrame>", sha256: str = ""
) -> GroupedData:
    """Build `GroupedData` from two columns of a DataFrame; `sha256` defaults to the content
    hash of those two columns (`content_sha256`)."""
    _check_column(df, y, "--y", source)
    _check_column(df, group, "--group", source)
    if not sha256:
        sha256 = content_sha256(df, [y, group])
    return from_arrays(df[y], df[group], y_name=y, group_name=group, source=source, sha256=sha256)


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV file (the data's hash in the outputs is `content_sha256` of the used columns,
    the same for the file and a DataFrame).

    Missing values as R's `read.csv` has them: "NA" and empty cells only (pandas by default also
    takes "None", "null", "NaN", "n/a", ... as missing, which turns real factor levels such as
    nlme's Alfalfa date "None" into gaps)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give the path of a CSV file.")
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=["NA", ""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot be read as CSV ({first}); check the file.") from None
    return df


def load_csv(path: str | Path, y: str, group: str) -> GroupedData:
    """CSV path -> validated `GroupedData` (the hash of the used columns kept for provenance)."""
    return from_frame(read_csv(path), y, group, source=str(path))


@dataclass(frozen=True)
class Stats:
    """The sufficient statistics, as plain arrays (cheap to send to worker processes)."""

    n: np.ndarray
    ybar: np.ndarray
    wss: np.ndarray

    @classmethod
    def of(cls, data: GroupedData) -> Stats:
        return cls(
            np.asarray(data.n, float), np.asarray(data.ybar, float), np.asarray(data.wss, float)
        )

    @classmethod
    def of_arrays(cls, y: np.ndarray, codes: np.ndarray, m: int) -> Stats:
        return cls(*sufficient_statistics(np.asarray(y, float), np.asarray(codes), m))

    # cached: these sit in every objective's inner loop
    @cached_property
    def N(self) -> float:
        return float(self.n.sum())

    @cached_property
    def m(self) -> int:
        return int(self.n.size)

    @cached_property
    def W(self) -> float:
        return float(self.wss.sum())
