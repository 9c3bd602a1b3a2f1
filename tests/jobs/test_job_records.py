"""The jobs table: one job per (operator, idempotency key), and databases made before the
key and claim columns existed gain them (store.add_columns, the jobs' numbered
migrations), on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from sandbox import jobs, store

SQL = "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex"


def new_job(conn: store.Connection, operator: str, key: str | None) -> jobs.Job:
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


def counts(conn: store.Connection) -> dict[str, int]:
    tables = ("jobs", "job_transitions", "audit_events")
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def test_a_second_job_with_the_key_is_refused_by_the_index_and_writes_nothing(
    database: Path | str,
) -> None:
    conn = store.connect(database)
    first = new_job(conn, "op-jinshu", "k")
    before = counts(conn)
    with pytest.raises(store.IntegrityError):
        new_job(conn, "op-jinshu", "k")
    assert counts(conn) == before  # no job row, no transition, no audit event
    assert jobs.find_by_idempotency_key(conn, "op-jinshu", "k") == first
    assert jobs.find_by_idempotency_key(conn, "op-huaxin", "k") is None
    other = new_job(conn, "op-huaxin", "k")  # another operator's key
    assert other.id != first.id
    new_job(conn, "op-jinshu", None)  # jobs without a key are never each other's
    new_job(conn, "op-jinshu", None)
    assert counts(conn)["jobs"] == 4


OLD_COLUMNS = (
    ",\n    idempotency_key    TEXT,\n    request_sha256     TEXT,"
    "\n    claimed_by         TEXT  -- the server (leases.servers.id) that drives the job"
)


def old_database(target: Path | str) -> None:
    """A jobs table as it was before the key and claim columns (and before migrations
    were recorded), with one job in it; made without the store."""
    old = jobs.SCHEMA.replace(OLD_COLUMNS, "")
    assert "idempotency_key" not in old and "claimed_by" not in old
    insert = (
        "INSERT INTO jobs (id, operator, scenario, sql, sql_sha256, sql_shape, epsilon, delta,"
        " state, created_at, updated_at) VALUES ('j-old', 'op-jinshu', 'employment-income',"
        " {p}, 'x', 'x', 0.5, 0, 'released', '2026-01-01', '2026-01-01')"
    )
    if isinstance(target, str):  # PostgreSQL
        import psycopg

        from sandbox.store.postgres import translate_ddl

        with psycopg.connect(target, autocommit=True) as pg:
            pg.execute(translate_ddl(old).encode())
            pg.execute(insert.format(p="%s"), (SQL,))
        return
    conn = sqlite3.connect(target)
    conn.executescript(old)
    conn.execute(insert.format(p="?"), (SQL,))
    conn.commit()
    conn.close()


def columns(conn: Any, table: str) -> list[str]:
    if store.dialect(conn) == "postgresql":
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,)
        )
        return [r[0] for r in rows]
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def unique_indexes(conn: Any, table: str) -> set[str]:
    if store.dialect(conn) == "postgresql":
        rows = conn.execute(
            "SELECT indexname FROM pg_indexes"
            " WHERE tablename = ? AND indexdef LIKE 'CREATE UNIQUE%'",
            (table,),
        )
        return {r[0] for r in rows}
    return {r[1] for r in conn.execute(f"PRAGMA index_list({table})") if r[2] == 1}


def test_an_older_database_gains_the_key_columns_and_index(database: Path | str) -> None:
    old_database(database)
    conn = store.connect(database)
    assert {"idempotency_key", "request_sha256", "claimed_by"} <= set(columns(conn, "jobs"))
    assert "jobs_idempotency" in unique_indexes(conn, "jobs")
    applied = conn.execute("SELECT owner, version FROM schema_migrations ORDER BY version")
    assert [tuple(r) for r in applied] == [("sandbox.jobs", 1), ("sandbox.jobs", 2)]
    old = jobs.get_job(conn, "j-old")
    assert old.state.value == "released" and old.public()["idempotency_key"] is None
    assert old["claimed_by"] is None
    new_job(conn, "op-jinshu", "k")
    with pytest.raises(store.IntegrityError):
        new_job(conn, "op-jinshu", "k")
    store.connect(database).close()  # a second upgrade has nothing to do


def test_connections_opened_at_once_upgrade_an_older_database_once(
    database: Path | str,
) -> None:
    path = database
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
    names = columns(opened[0], "jobs")
    assert names.count("idempotency_key") == 1 and names.count("claimed_by") == 1
