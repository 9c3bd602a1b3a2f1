"""DuckDB on the control-plane host, boxed in.

The host runs SQL in three places, never over raw data: the compiler binds the
runner SQL over empty tables and evaluates key expressions over public domains, and
the privacy layer runs ``post_sql`` over the noisy table. Each gets a fresh
in-memory database with no file, network or extension access, one thread, a memory
limit, no spilling to disk, a locked configuration (the SQL cannot change any of
this) and a deadline enforced by ``interrupt()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MEMORY_LIMIT = "256MB"
TIMEOUT_S = 10.0


class HostSQLTimeout(Exception):
    """The statement ran past its deadline and was interrupted."""


@contextmanager
def connect(memory_limit: str = MEMORY_LIMIT) -> Iterator[Any]:
    import duckdb

    con = duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "threads": 1,
            "memory_limit": memory_limit,
            "temp_directory": "",
            "lock_configuration": True,
        },
    )
    try:
        yield con
    finally:
        con.close()


def run(
    con: Any, sql: str, params: list[Any] | None = None, timeout_s: float = TIMEOUT_S
) -> list[tuple[Any, ...]]:
    """Execute one statement under a deadline; returns its rows."""
    import duckdb

    timer = threading.Timer(timeout_s, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        return list(con.execute(sql, params or []).fetchall())
    except duckdb.InterruptException as exc:
        raise HostSQLTimeout from exc
    finally:
        timer.cancel()


def arrow(con: Any, sql: str, timeout_s: float = TIMEOUT_S) -> Any:
    """A query's result as an Arrow table, under a deadline (fetching included)."""
    import duckdb

    timer = threading.Timer(timeout_s, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.InterruptException as exc:
        raise HostSQLTimeout from exc
    finally:
        timer.cancel()
