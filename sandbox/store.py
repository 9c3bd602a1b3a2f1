"""Persistence: one SQLite database (WAL) under $SANDBOX_HOME.

Each module that keeps state owns its tables and declares them in a ``SCHEMA``
string; ``connect`` creates every registered schema, then runs each module's
``upgrade`` (columns a table gained since an older database was made, with
``add_columns``, and the indexes on them). Writers use ``transaction``
(BEGIN IMMEDIATE), so a state change and the audit event that records it commit
together or not at all, and concurrent writers are serialised.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_SCHEMAS: dict[str, str] = {}
_UPGRADES: dict[str, Callable[[sqlite3.Connection], None]] = {}


def register_schema(
    owner: str, ddl: str, *, upgrade: Callable[[sqlite3.Connection], None] | None = None
) -> None:
    """Called at import time by the module that owns the tables. ``upgrade(conn)`` runs
    after every schema is created, on every connection: it brings a database made by
    an older version up to ``ddl`` (and must be cheap when there is nothing to do)."""
    _SCHEMAS[owner] = ddl
    if upgrade is not None:
        _UPGRADES[owner] = upgrade


def add_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Add the ``columns`` (name → declaration) that ``table`` lacks: a database made
    before they were in its ``CREATE TABLE`` (which ``IF NOT EXISTS`` leaves as it was).
    Checked again under the write lock, so concurrent connections add each once."""

    def missing() -> list[str]:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        return [name for name in columns if name not in have]

    if not missing():
        return
    with transaction(conn):
        for name in missing():
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {columns[name]}")


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, FKs on."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _owner_only(Path(path))
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    _load_schemas()
    for ddl in _SCHEMAS.values():
        conn.executescript(ddl)
    for upgrade in _UPGRADES.values():
        upgrade(conn)
    return conn


def _owner_only(path: Path) -> None:
    """The database (jobs of every operator, the audit log) is readable by its owner
    only. SQLite gives the -wal and -shm files the database file's permissions."""
    import contextlib
    import os

    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):  # missing, or not ours to change
            if p.stat().st_mode & 0o077:
                p.chmod(0o600)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def _load_schemas() -> None:
    # Import the modules that own tables so their schemas are registered.
    import importlib

    for name in ("sandbox.audit", "sandbox.ledger", "sandbox.jobs", "sandbox.tokens"):
        importlib.import_module(name)
