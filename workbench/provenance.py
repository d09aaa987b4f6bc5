"""Which locked dependency set this copy of workbench was installed from.

`.ci/setup` installs exactly the packages pinned in `requirements.lock` (made by `.ci/lock`); its
SHA-256 names that whole set in a report's provenance, beside the versions of the main packages."""

import hashlib
from pathlib import Path

LOCK_NAME = "requirements.lock"


def lock_path() -> Path | None:
    """The project's `requirements.lock`, when this package runs from a source checkout (an
    editable install); None for an installed wheel, which carries no lock."""
    root = Path(__file__).resolve().parent.parent
    lock = root / LOCK_NAME
    if lock.is_file() and (root / "pyproject.toml").is_file():
        return lock
    return None


def lock_sha256() -> str | None:
    """SHA-256 (hex) of the project's `requirements.lock`, or None where there is none."""
    lock = lock_path()
    if lock is None:
        return None
    return hashlib.sha256(lock.read_bytes()).hexdigest()
