"""Persistence: one database, SQLite (the embedded default) or PostgreSQL, one interface.

``connect(target)`` takes a path (SQLite, WAL, under $SANDBOX_HOME) or a
``postgresql://`` URL (``SANDBOX_DATABASE_URL``; psycopg 3, ``store.postgres``). Both
give the same connection: ``conn.execute(sql, params)`` with ``?`` placeholders,
rows read as ``r["col"]`` and ``r[0]``, ``conn.in_transaction``, and the same
exceptions (``store.IntegrityError``, ``store.OperationalError``, …) whichever back
end raised them.

Each module that keeps state owns its tables: it declares them in a ``SCHEMA`` string
(portable DDL: ``INTEGER``, ``REAL``, ``BLOB`` and ``INTEGER PRIMARY KEY
AUTOINCREMENT`` become ``BIGINT``, ``DOUBLE PRECISION``, ``BYTEA`` and an identity
column on PostgreSQL) and registers it with its numbered ``migrations``: steps that
bring a database made by an older version up to the ``SCHEMA`` (``add_columns``, an
index). ``schema_migrations`` records (owner, version) of every step applied, so each
runs once per database, under the write lock.

Writers use ``transaction``: a state change and the audit event that records it
commit together or not at all, and writers are serialised, one at a time, across
threads and processes: SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL ``BEGIN`` and a
transaction-level advisory lock (``pg_advisory_xact_lock``) every writer takes first,
the same one-writer-at-a-time semantics (READ COMMITTED: every statement after the
lock sees every earlier writer's commit).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeGuard

__all__ = [
    "Connection",
    "Cursor",
    "DatabaseError",
    "IntegrityError",
    "OperationalError",
    "ProgrammingError",
    "Row",
    "add_columns",
    "connect",
    "ddl",
    "dialect",
    "is_connection",
    "is_url",
    "register_schema",
    "transaction",
]

# The exceptions callers catch, whichever back end raised them (store.postgres maps
# psycopg's errors onto these).
DatabaseError = sqlite3.DatabaseError
IntegrityError = sqlite3.IntegrityError
OperationalError = sqlite3.OperationalError
ProgrammingError = sqlite3.ProgrammingError


class Row(Protocol):
    """A result row: ``r["col"]``, ``r[0]``, ``r.keys()``, ``dict(r)``."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int = ..., /) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...
    @property
    def rowcount(self) -> int: ...


class Connection(Protocol):
    """What the code uses of a connection: sqlite3's, or store.postgres's adapter."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...
    def executescript(self, script: str, /) -> Any: ...
    def cursor(self) -> Any: ...
    def close(self) -> None: ...
    @property
    def in_transaction(self) -> bool: ...


Migration = Callable[[Connection], None]

_SCHEMAS: dict[str, str] = {}
_MIGRATIONS: dict[str, tuple[Migration, ...]] = {}

MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    owner       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    applied_at  TEXT NOT NULL,
    PRIMARY KEY (owner, version)
);
"""


def register_schema(owner: str, ddl: str, *, migrations: Sequence[Migration] = ()) -> None:
    """Called at import time by the module that owns the tables. ``migrations[i]`` is
    version i + 1 of the owner's schema: a step that brings a database made before it
    up to ``ddl`` (a new database, made from ``ddl``, must take it as a no-op: the steps
    are written to check first, as ``add_columns`` does). Each step runs once per
    database, inside a write transaction, and is recorded in ``schema_migrations``."""
    _SCHEMAS[owner] = ddl
    _MIGRATIONS[owner] = tuple(migrations)


def is_url(target: Path | str) -> bool:
    """A PostgreSQL URL (``postgresql://`` or ``postgres://``), not a file path."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def dialect(conn: Connection) -> str:
    """``sqlite`` or ``postgresql``: for the few statements that must differ."""
    return str(getattr(conn, "dialect", "sqlite"))


def is_connection(obj: object) -> TypeGuard[Connection]:
    """A database connection (of either back end), as opposed to a path."""
    return isinstance(obj, sqlite3.Connection) or getattr(obj, "dialect", None) == "postgresql"


def connect(target: Path | str) -> Connection:
    """A connection in autocommit mode (transactions are explicit) with every registered
    schema created and migrated. ``target``: a SQLite file (WAL, FKs on) or a
    ``postgresql://`` URL."""
    _load_schemas()
    if is_url(target):
        from sandbox.store import postgres

        return postgres.connect(str(target), _SCHEMAS, migrate)
    if isinstance(target, str) and "://" in target:
        raise ValueError("SANDBOX_DATABASE_URL must be a postgresql:// URL (or empty for SQLite).")
    if str(target) != ":memory:":
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        _owner_only(Path(target))
    conn = sqlite3.connect(str(target), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(MIGRATIONS_DDL)
    for ddl in _SCHEMAS.values():
        conn.executescript(ddl)
    migrate(conn)
    return conn


def _applied(conn: Connection) -> set[tuple[str, int]]:
    return {
        (str(r[0]), int(r[1])) for r in conn.execute("SELECT owner, version FROM schema_migrations")
    }


def pending(conn: Connection) -> list[tuple[str, int]]:
    """The (owner, version) steps not yet applied to this database."""
    done = _applied(conn)
    return [
        (owner, i + 1)
        for owner, steps in _MIGRATIONS.items()
        for i in range(len(steps))
        if (owner, i + 1) not in done
    ]


def migrate(conn: Connection) -> list[tuple[str, int]]:
    """Apply the steps this database lacks, in order, each recorded with it; checked
    again under the write lock, so concurrent connections apply each once. Returns what
    was applied."""
    if not pending(conn):
        return []
    with transaction(conn):
        todo = pending(conn)
        for owner, version in todo:
            _MIGRATIONS[owner][version - 1](conn)
            conn.execute(
                "INSERT INTO schema_migrations (owner, version, applied_at) VALUES (?, ?, ?)",
                (owner, version, datetime.now(UTC).isoformat()),
            )
    return todo


def add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """Add the ``columns`` (name → portable declaration) that ``table`` lacks: a
    database made before they were in its ``CREATE TABLE`` (which ``IF NOT EXISTS``
    leaves as it was). Joins the caller's transaction (a migration step's) or opens one;
    checked under the write lock, so concurrent connections add each once."""

    def missing() -> list[str]:
        if dialect(conn) == "postgresql":
            have = {
                str(r[0])
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = ?",
                    (table,),
                )
            }
        else:
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        return [name for name in columns if name not in have]

    if not missing():
        return
    with _join(conn):
        for name in missing():
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl(conn, columns[name])}")


def ddl(conn: Connection, text: str) -> str:
    """Portable DDL (or a column declaration) in this back end's words."""
    if dialect(conn) != "postgresql":
        return text
    from sandbox.store.postgres import translate_ddl

    return translate_ddl(text)


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
def transaction(conn: Connection) -> Iterator[Connection]:
    """One writer at a time: SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``BEGIN`` and the
    store's advisory lock. ``COMMIT``, or ``ROLLBACK`` on any exception."""
    begin = getattr(conn, "begin", None)
    if begin is not None:
        begin()
    else:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


@contextmanager
def _join(conn: Connection) -> Iterator[Connection]:
    if conn.in_transaction:
        yield conn
    else:
        with transaction(conn):
            yield conn


def _load_schemas() -> None:
    # Import the modules that own tables so their schemas are registered.
    import importlib

    for name in ("sandbox.audit", "sandbox.ledger", "sandbox.jobs", "sandbox.tokens"):
        importlib.import_module(name)
