"""Print the SHA-256 of pyproject.toml's dependency lists: what requirements.lock was made from.

`.ci/lock` writes it into the lock's header; `.ci/setup` recomputes it and refuses to install
when the two differ (pyproject.toml's dependencies changed but the lock was not refreshed).
Standard library only (tomllib: Python >= 3.11)."""

import hashlib
import json
import sys
import tomllib
from pathlib import Path


def deps_sha256(pyproject: Path) -> str:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project", {})
    key = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system": data.get("build-system", {}).get("requires", []),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


if __name__ == "__main__":
    print(deps_sha256(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")))
