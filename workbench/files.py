"""File output: every file the workbench writes appears whole or not at all, files that belong
together (a report and its JSON) appear together, only regular files are ever replaced, and
output paths are checked before any computing (`check_output`, `check_output_folder`)."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from workbench.errors import InputError


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _target(path: Path) -> Path:
    """Where writing `path` lands: a symbolic link is followed (the link stays a link)."""
    return Path(os.path.realpath(path))


def _refuse_special(path: Path, shown: Path | str, option: str = "") -> None:
    """Only a regular file may be replaced: never a device (`/dev/full`), pipe, socket, folder."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    what = f"{option} {shown}" if option else f"{shown}"
    if stat.S_ISDIR(mode):
        raise InputError(f"{what} is a folder; give a file name.")
    if not stat.S_ISREG(mode):
        raise InputError(
            f"{what} is not a regular file (a device, pipe or socket); give the "
            f"path of a file to write."
        )


def _probe_writable(folder: Path, what: str) -> None:
    """Can this process create a file in `folder`? Tried for real (as root, permission bits and
    os.access say yes even on a read-only or immutable folder); the probe file is removed."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".workbench-probe.", suffix=".tmp")
    except OSError as exc:
        raise InputError(
            f"{what}: cannot write in folder {folder} "
            f"({exc.strerror or exc}); choose a writable folder."
        ) from None
    os.close(fd)
    os.unlink(probe)


def _existing_ancestor(folder: Path, what: str) -> Path:
    probe = folder
    while not os.path.lexists(probe):
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{what}: {probe} is a file, not a folder; choose another path.")
    return probe


def check_output(path: Path | None, option: str, *, make_folders: bool = False) -> None:
    """Check an output file path before any computing; nothing is written. The path must not be
    a folder or a special file, and its folder must exist (or, with `make_folders`, be creatable
    under an existing folder) and be writable."""
    if path is None:
        return
    path = Path(path)
    if str(path) == "":
        raise InputError(f"{option} is empty; give a file name.")
    target = _target(path)
    _refuse_special(target, path, option)
    what = f"{option} {path}"
    folder = target.parent
    existing = _existing_ancestor(folder, what)
    if existing != folder and not make_folders:
        raise InputError(
            f"{what}: folder {folder} does not exist; create it or choose another path."
        )
    _probe_writable(existing, what)


def check_output_folder(path: Path, option: str) -> None:
    """Check an output folder (made if missing) before any computing; nothing is written."""
    path = Path(path)
    what = f"{option} {path}"
    target = _target(path)
    if os.path.lexists(target) and not target.is_dir():
        raise InputError(
            f"{what} is a file, not a folder; give a folder (new or empty) for the outputs."
        )
    _probe_writable(_existing_ancestor(target, what), what)


def _stage(
    path: Path, write: Callable[[str], object], suffix: str = ".tmp", mode: int = 0o666
) -> tuple[str, Path]:
    """`write(tmp)` into `.NAME.*.tmp` beside `path`'s target, with permissions `mode` less
    the umask (0o777 for a script); returns (tmp, target)."""
    target = _target(path)
    _refuse_special(target, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, mode & ~umask)  # mkstemp makes 0600; give the usual permissions
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp, target


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """`write(tmp)` into a temporary file in the same folder (named `.NAME.*.tmp`), then rename
    it over `path`; on failure the temporary file is removed and `path` is untouched. Only a
    regular file is replaced (a special file is an `InputError`); a symbolic link is followed."""
    tmp, target = _stage(path, write)
    try:
        _refuse_special(target, path)  # appeared meanwhile?
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OutputSet:
    """Files that belong together (a report, its JSON and posterior; a study's table, summary and
    report): `add` writes each to a temporary file beside its target, `commit` renames them all at
    the end. If writing or renaming any of them fails, none is left: temporaries are removed and
    targets already renamed are put back as they were (or removed if they are new). Used as a
    context manager, an exception before `commit` discards everything.

        with OutputSet() as out:
            out.add_text(json_path, text)
            out.add(nc_path, lambda tmp: save(tmp))
            out.commit()
    """

    def __init__(self) -> None:
        self._staged: list[tuple[str, Path]] = []
        self._made: list[Path] = []  # folders made for the outputs, deepest first

    def add(self, path: Path, write: Callable[[str], object], mode: int = 0o666) -> None:
        folder = _target(Path(path)).parent
        while not os.path.lexists(folder):
            self._made.append(folder)
            folder = folder.parent
        self._staged.append(_stage(Path(path), write, mode=mode))

    def add_text(self, path: Path, text: str) -> None:
        self.add(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def discard(self) -> None:
        """Remove the temporaries, and the folders made for them if they are left empty."""
        for tmp, _ in self._staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._staged = []
        for folder in sorted(set(self._made), key=lambda p: len(p.parts), reverse=True):
            try:
                os.rmdir(folder)  # only an empty folder: a committed output keeps its folder
            except OSError:
                pass
        self._made = []

    def commit(self) -> list[Path]:
        backups: dict[Path, str | None] = {}
        done: list[Path] = []
        try:
            for _, target in self._staged:  # keep the old versions until all are in place
                _refuse_special(target, target)
                backups[target] = None
                if os.path.isfile(target):
                    fd, bak = tempfile.mkstemp(
                        dir=target.parent, prefix=f".{target.name}.", suffix=".bak.tmp"
                    )
                    os.close(fd)
                    os.unlink(bak)
                    try:
                        os.link(target, bak)
                        backups[target] = bak
                    except OSError:  # no hard links here: a failure then removes the target
                        pass
            for tmp, target in self._staged:
                os.replace(tmp, target)
                done.append(target)
        except BaseException:
            for target in done:
                bak = backups.get(target)
                if bak is not None:
                    os.replace(bak, target)
                elif os.path.exists(target):
                    os.unlink(target)
            raise
        finally:
            for bak in backups.values():
                if bak is not None and os.path.exists(bak):
                    os.unlink(bak)
            self.discard()
        return done

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
