"""Faults (issue 9, item 8): a kill during a study's final write leaves no stale temporary file
after the next run; worker processes die with their parent; the outputs of one command are
committed together, so a failed write never leaves a JSON without the report it belongs to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import workbench.files
import workbench.present.report
from workbench.cli import main
from workbench.simulate import WATCH_THREAD

QUICK = ["--replicates", "2", "--m", "5", "--methods", "eb-ml", "--quiet"]
OUTPUTS = ("replicates_table.csv", "summary.csv", "report.html")
linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _children(pid: int) -> dict[int, str]:
    """Live (not zombie) child processes of `pid`: {pid: command line}."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(d.name)] = cmd
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ready(pid: int) -> bool:
    """The worker has started up and run its initializer (`die_with_parent` names a thread):
    a worker killed while still importing would die only once it got there."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        return any((t / "comm").read_text().strip() == WATCH_THREAD for t in tasks)
    except OSError:
        return False


def _kill_parent_and_check_workers(cmd: list[str], marker: str, cwd: Path) -> None:
    proc = subprocess.Popen(
        cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 40
        workers: dict[int, str] = {}
        while time.time() < deadline and not (len(workers) >= 2 and all(map(_ready, workers))):
            assert proc.poll() is None, "the run ended before its workers started"
            workers = {p: c for p, c in _children(proc.pid).items() if marker in c}
            time.sleep(0.1)
        assert len(workers) >= 2 and all(map(_ready, workers)), _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, not its process group
        proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "workers outlived their parent"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@linux_only
def test_simulate_workers_die_with_their_parent(tmp_path):
    _kill_parent_and_check_workers(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "simulate",
            "--replicates",
            "400",
            "--m",
            "30",
            "--methods",
            "eb-ml,eb-reml",
            "--n-jobs",
            "2",
            "--out",
            str(tmp_path / "store"),
            "--quiet",
        ],
        "multiprocessing.spawn",
        tmp_path,
    )


@linux_only
def test_compare_joint_map_workers_die_with_their_parent(tmp_path):
    """The joint-MAP starts of a large problem run in joblib/loky workers."""
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(2000), 3)
    pd.DataFrame({"g": g, "y": rng.standard_normal(2000)[g] + rng.standard_normal(g.size)}).to_csv(
        tmp_path / "big.csv", index=False
    )
    _kill_parent_and_check_workers(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "compare",
            "big.csv",
            "--y",
            "y",
            "--group",
            "g",
            "--methods",
            "joint-map",
            "--n-starts",
            "40",
            "--n-jobs",
            "2",
            "--quiet",
        ],
        "LokyProcess",
        tmp_path,
    )


def test_stale_temporaries_of_the_final_write_are_cleaned(tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["simulate", *QUICK, "--out", str(out)]) == 0
    # what a SIGKILL during the final write (or the store's own writes) leaves behind
    stale = [out / f".{name}.k1ll3d.tmp" for name in OUTPUTS]
    stale += [out / ".report.html.x.bak.tmp", out / "replicates" / ".s0000_r000001.csv.x.tmp"]
    for p in stale:
        p.write_text("half a file")
    assert main(["simulate", *QUICK, "--out", str(out)]) == 0
    assert "0 replicates computed, 2 resumed" in capsys.readouterr().out
    assert not [p for p in stale if p.exists()]
    assert not list(out.rglob("*.tmp"))
    assert len(pd.read_csv(out / "replicates_table.csv")) == 2 * (3 + 5)


def _fail_replace_of(suffix: str, monkeypatch) -> None:
    """Renaming onto a file ending in `suffix` fails as on a full disk."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith(suffix):
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(workbench.files.os, "replace", replace)


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("d.csv").write_text("g,y\na,1\na,2\nb,3\nb,5\nc,4\nc,4.5\n")
    monkeypatch.setattr(workbench.present.report, "render", lambda *a, **k: "<html>new</html>")
    return tmp_path


COMPARE = [
    "compare",
    "d.csv",
    "--y",
    "y",
    "--group",
    "g",
    "--methods",
    "anova",
    "--quiet",
    "--report",
    "r.html",
]


def test_compare_report_write_fails_no_orphan_json(data, capsys, monkeypatch):
    _fail_replace_of(".html", monkeypatch)
    assert main(COMPARE) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err
    assert "no output was written" in err
    assert sorted(p.name for p in data.iterdir()) == ["d.csv"]  # no r.json, no temporaries


def test_compare_failed_rerun_keeps_the_old_pair(data, capsys, monkeypatch):
    assert main(COMPARE) == 0
    old = {p: (data / p).read_text() for p in ("r.html", "r.json")}
    (data / "d.csv").write_text("g,y\na,1\na,2\nb,3\nb,6\nc,4\nc,4.5\n")
    _fail_replace_of(".html", monkeypatch)
    assert main(COMPARE) == 1
    assert {p: (data / p).read_text() for p in old} == old  # the JSON renamed first is put back
    assert sorted(p.name for p in data.iterdir()) == ["d.csv", "r.html", "r.json"]


def test_compare_report_rendering_fails_no_json(data, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("template bug")

    monkeypatch.setattr(workbench.present.report, "render", broken)
    with pytest.raises(RuntimeError):
        main(COMPARE)
    assert sorted(p.name for p in data.iterdir()) == ["d.csv"]


def test_simulate_outputs_are_committed_together(tmp_path, capsys, monkeypatch):
    out = tmp_path / "store"
    _fail_replace_of("report.html", monkeypatch)
    assert main(["simulate", *QUICK, "--out", str(out)]) == 1
    assert "report.html" in capsys.readouterr().err
    assert not [n for n in OUTPUTS if (out / n).exists()]
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["simulate", *QUICK, "--out", str(out)]) == 0  # resumes; writes all three
    assert all((out / n).is_file() for n in OUTPUTS)
