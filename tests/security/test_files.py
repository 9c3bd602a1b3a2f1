"""What the server keeps on disk is readable by its owner only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sec_helpers import Client

from sandbox import store


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_database_files_are_owner_only(sec: Client, sec_settings) -> None:  # type: ignore[no-untyped-def]
    old = os.umask(0o022)
    try:
        r = sec.post(
            "/v1/jobs",
            "op-jinshu",
            json={
                "sql": "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex",
                "scenario": "employment-income",
                "epsilon": 1.0,
            },
        )
        assert r.status_code == 201
        sec.wait(r.json()["id"], "op-jinshu")
        db = sec_settings.db_path
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert p.exists(), p
            assert _mode(p) & 0o077 == 0, (p.name, oct(_mode(p)))
        for folder in sec_settings.products_dir.iterdir():
            assert _mode(folder) & 0o077 == 0, folder
    finally:
        os.umask(old)


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "sandbox.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    conn = store.connect(db)
    conn.close()
    assert _mode(db) == 0o600
