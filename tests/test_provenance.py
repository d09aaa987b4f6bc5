import hashlib
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
