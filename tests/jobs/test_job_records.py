"""The jobs table: one job per (operator, idempotency key), and databases made before the
key columns existed gain them (sandbox/store.py add_columns, records._upgrade)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from sandbox import jobs, store

SQL = "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex"


def new_job(conn: sqlite3.Connection, operator: str, key: str | None) -> jobs.Job:
    return jobs.create_job(
        conn,
        operator=operator,
        scenario="employment-income",
        sql=SQL,
        epsilon=0.5,
        delta=0.0,
        weights=None,
        actor=operator,
        role="operator",
        idempotency_key=key,
        request_sha256="d" * 64 if key else None,
    )


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    tables = ("jobs", "job_transitions", "audit_events")
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def test_a_second_job_with_the_key_is_refused_by_the_index_and_writes_nothing(
    tmp_path: Path,
) -> None:
    conn = store.connect(tmp_path / "sandbox.db")
    first = new_job(conn, "op-jinshu", "k")
    before = counts(conn)
    with pytest.raises(sqlite3.IntegrityError):
        new_job(conn, "op-jinshu", "k")
    assert counts(conn) == before  # no job row, no transition, no audit event
    assert jobs.find_by_idempotency_key(conn, "op-jinshu", "k") == first
    assert jobs.find_by_idempotency_key(conn, "op-huaxin", "k") is None
    other = new_job(conn, "op-huaxin", "k")  # another operator's key
    assert other.id != first.id
    new_job(conn, "op-jinshu", None)  # jobs without a key are never each other's
    new_job(conn, "op-jinshu", None)
    assert counts(conn)["jobs"] == 4


def old_database(path: Path) -> None:
    """A jobs table as it was before the key columns, with one job in it."""
    old = jobs.SCHEMA.replace(",\n    idempotency_key    TEXT,\n    request_sha256     TEXT", "")
    assert "idempotency_key" not in old
    conn = sqlite3.connect(path)
    conn.executescript(old)
    conn.execute(
        "INSERT INTO jobs (id, operator, scenario, sql, sql_sha256, sql_shape, epsilon, delta,"
        " state, created_at, updated_at) VALUES ('j-old', 'op-jinshu', 'employment-income',"
        " ?, 'x', 'x', 0.5, 0, 'released', '2026-01-01', '2026-01-01')",
        (SQL,),
    )
    conn.commit()
    conn.close()


def test_an_older_database_gains_the_key_columns_and_index(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.db"
    old_database(path)
    conn = store.connect(path)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    assert {"idempotency_key", "request_sha256"} <= columns
    indexes = {r[1]: r[2] for r in conn.execute("PRAGMA index_list(jobs)")}
    assert indexes.get("jobs_idempotency") == 1  # unique
    old = jobs.get_job(conn, "j-old")
    assert old.state.value == "released" and old.public()["idempotency_key"] is None
    new_job(conn, "op-jinshu", "k")
    with pytest.raises(sqlite3.IntegrityError):
        new_job(conn, "op-jinshu", "k")
    store.connect(path).close()  # a second upgrade has nothing to do


def test_connections_opened_at_once_upgrade_an_older_database_once(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.db"
    old_database(path)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []
    opened: list[Any] = []

    def open_it() -> None:
        barrier.wait()
        try:
            opened.append(store.connect(path))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(opened) == 6
    names = [r[1] for r in opened[0].execute("PRAGMA table_info(jobs)")]
    assert names.count("idempotency_key") == 1
