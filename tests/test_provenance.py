import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from workbench import provenance

ROOT = Path(__file__).resolve().parent.parent


def test_lock_sha256_is_the_hash_of_the_checkouts_lock():
    lock = ROOT / "requirements.lock"
    assert provenance.lock_path() == lock
    assert provenance.lock_sha256() == hashlib.sha256(lock.read_bytes()).hexdigest()


def test_lock_sha256_is_none_without_a_lock(tmp_path, monkeypatch):
    fake = tmp_path / "site-packages" / "workbench" / "provenance.py"
    monkeypatch.setattr(provenance, "__file__", str(fake))
    assert provenance.lock_path() is None
    assert provenance.lock_sha256() is None


def test_git_commit_and_dirty_flag_of_the_checkout():
    state = provenance.git_state()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:  # a copy without git: nothing to record
        assert state is None
        return
    assert state is not None and re.fullmatch(r"[0-9a-f]{40,64}", state["commit"])
    assert isinstance(state["dirty"], bool)


def test_no_git_state_outside_a_checkout(tmp_path, monkeypatch):
    fake = tmp_path / "site-packages" / "workbench" / "provenance.py"
    monkeypatch.setattr(provenance, "__file__", str(fake))
    assert provenance.git_state() is None


def test_record_names_blas_and_threads_but_no_path_of_the_machine():
    rec = provenance.record()
    text = json.dumps(rec)
    for path in (str(ROOT), sys.prefix, sys.base_prefix, str(Path.home())):
        assert len(path) < 2 or path not in text
    assert rec["blas"], "numpy's BLAS is loaded"
    for lib in rec["blas"]:
        assert lib["internal_api"] and lib["num_threads"] >= 1 and "filepath" not in lib
    rows = provenance.rows(rec)
    assert rows["requirements.lock SHA-256"] == rec["lock_sha256"]
    assert f"{rec['blas'][0]['num_threads']} thread" in rows["BLAS / OpenMP (threadpoolctl)"]
    assert rows["git commit"].startswith(rec["git_commit"] or "none")
