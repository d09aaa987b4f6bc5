"""Where a result came from: the software (versions, the locked dependency set, the git commit),
the machine's numerical libraries (BLAS vendor and threads) and the data's citation.

`.ci/setup` installs exactly the packages pinned in `requirements.lock` (made by `.ci/lock`); its
SHA-256 names that whole set, beside the versions of the main packages. `record()` is the JSON's
`provenance` block, `rows()` the report's provenance table; neither holds a path of the machine
(the BLAS libraries are named by prefix, not by file)."""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from workbench.files import sha256_file

LOCK_NAME = "requirements.lock"
PACKAGES = (
    "workbench",
    "numpy",
    "scipy",
    "pandas",
    "pymc",
    "pytensor",
    "arviz",
    "arviz-stats",
    "arviz-plots",
    "nutpie",
    "matplotlib",
    "jinja2",
)
DATA_README = "README.md"  # the data folder's description, with a citation per data file


def _root() -> Path | None:
    """The source checkout this package runs from (an editable install), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def lock_path() -> Path | None:
    """The project's `requirements.lock`, when this package runs from a source checkout (an
    editable install); None for an installed wheel, which carries no lock."""
    root = _root()
    if root is not None and (root / LOCK_NAME).is_file():
        return root / LOCK_NAME
    return None


def lock_sha256() -> str | None:
    """SHA-256 (hex) of the project's `requirements.lock`, or None where there is none."""
    lock = lock_path()
    if lock is None:
        return None
    return sha256_file(lock)


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.cache
def _git_state(root: Path) -> tuple[str, bool] | None:
    head = _git(root, "rev-parse", "HEAD")
    if head is None:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return head.strip(), bool(status and status.strip())


def git_state() -> dict | None:
    """{"commit", "dirty"} of the checkout this package runs from; None for an installed
    package, or where git is missing. `dirty`: a tracked file differs from the commit (files
    git does not track, such as reports, do not count). Asked once per process."""
    root = _root()
    if root is None or not (root / ".git").exists():
        return None
    state = _git_state(root)
    return None if state is None else {"commit": state[0], "dirty": state[1]}


def blas() -> list[dict]:
    """The BLAS/OpenMP libraries loaded in this process (threadpoolctl): vendor, version, the
    number of threads each would use, threading layer and CPU kernel; the file is named by its
    prefix only (its path is the machine's)."""
    import numpy  # noqa: F401  (loads numpy's BLAS, so it is listed)
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer")
    libs = [
        {k: info[k] for k in (*keys, "architecture") if k in info} for info in threadpool_info()
    ]
    return sorted(libs, key=lambda b: tuple(str(b.get(k)) for k in keys))


def packages() -> dict[str, str | None]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def record() -> dict:
    """The provenance block of the JSON: versions, lock hash, git commit and dirty flag (null
    outside a checkout), BLAS libraries and threads, CPU count. It names the run's software and
    machine, not its numbers: `workbench rerun` reports differences here without failing."""
    git = git_state()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages(),
        "lock_sha256": lock_sha256(),
        "git_commit": git["commit"] if git else None,
        "git_dirty": git["dirty"] if git else None,
        "blas": blas(),
        "cpu_count": os.cpu_count(),
    }


def rows(rec: dict | None = None) -> dict[str, str]:
    """The report's provenance rows (label -> text) of `record()`."""
    rec = record() if rec is None else rec
    out = {"python": rec["python"], "platform": rec["platform"]}
    out |= {p: v or "not installed" for p, v in rec["packages"].items()}
    out["requirements.lock SHA-256"] = rec["lock_sha256"] or "none (installed without the lock)"
    if rec["git_commit"]:
        dirty = " with uncommitted changes (dirty)" if rec["git_dirty"] else " (clean)"
        out["git commit"] = rec["git_commit"] + dirty
    else:
        out["git commit"] = "none (not run from a git checkout)"
    libs = [
        f"{b.get('internal_api')} {b.get('version')} ({b.get('prefix')}), "
        f"{b.get('num_threads')} thread{'s' if b.get('num_threads') != 1 else ''}"
        + (f", {b['threading_layer']}" if b.get("threading_layer") else "")
        + (f", {b['architecture']}" if b.get("architecture") else "")
        for b in rec["blas"]
    ]
    out["BLAS / OpenMP (threadpoolctl)"] = "; ".join(libs) or "none found"
    out["CPU cores"] = str(rec["cpu_count"])
    return out


# ----------------------------------------------------------------------------------------------
# Data citations: the data folder's README.md, read as plain text


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, lines) of each `## ...` section."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            out.append((line[3:].strip(), []))
        elif out:
            out[-1][1].append(line.strip())
    return out


def citation(data_path: str | Path) -> str | None:
    """The citation of a data file from the `README.md` beside it, or None (no README, no
    section for the file, a DataFrame). The README is read as text: a `## FILE.csv` section
    (several files: `## a.csv / b.csv`) holds either a line `Citation: ...` or, for several
    files, lines `- NAME: ...` where NAME is the file's stem (case-insensitive). Markdown
    emphasis marks are dropped; nothing in the README is executed."""
    path = Path(data_path)
    readme = path.parent / DATA_README
    if not path.suffix or not readme.is_file():
        return None
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for heading, lines in _sections(text):
        names = [n.strip().strip("`") for n in heading.split("/")]
        if path.name not in names:
            continue
        for line in lines:
            m = re.match(r"^(?:-\s*)?([^:*]+?)\s*:\s*(.+)$", line)
            if m is None:
                continue
            label = m.group(1).strip().lower()
            if label == "citation" or (len(names) > 1 and label == path.stem.lower()):
                return _plain(m.group(2))
    return None


def _plain(text: str) -> str:
    """Markdown emphasis and code marks removed: `*Title*` -> `Title`."""
    return re.sub(r"(\*{1,2}|_{1,2}|`)(\S.*?\S|\S)\1", r"\2", text).strip()
