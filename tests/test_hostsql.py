"""The boxed DuckDB the host uses for compiler checks and post-processing."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pytest

from sandbox import hostsql


def test_no_files_no_settings(tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n", "utf-8")
    with hostsql.connect() as con:
        with pytest.raises(duckdb.Error):
            hostsql.run(con, f"SELECT * FROM read_csv('{secret}')")
        with pytest.raises(duckdb.Error):
            hostsql.run(con, "SET threads = 8")
        with pytest.raises(duckdb.Error):
            hostsql.run(con, "SET enable_external_access = true")


def test_a_runaway_statement_is_interrupted() -> None:
    start = time.monotonic()
    with hostsql.connect() as con, pytest.raises(hostsql.HostSQLTimeout):
        hostsql.run(
            con,
            "SELECT sum(a.range * b.range) FROM range(100000) a, range(100000) b",
            timeout_s=0.5,
        )
    assert time.monotonic() - start < 5


def test_memory_is_limited() -> None:
    with hostsql.connect(memory_limit="64MB") as con, pytest.raises(duckdb.OutOfMemoryException):
        hostsql.run(con, "SELECT list(range) FROM range(50000000)")
