"""Run one Plan's SQL over Parquet files with DuckDB, locked down.

This module runs INSIDE the runner container (and in-process for the local,
synthetic-only executor). It imports only the standard library, duckdb and pyarrow:
never ``sandbox``, so the image carries nothing but this package.

What comes out, in ``out_dir``:

- success: ``result.arrow`` (Arrow IPC file, exactly the spec's columns, at most
  ``max_rows`` rows and ``output_max_bytes`` bytes) and ``status.json``
  ``{"status": "ok", "peak_rss_kb": N, "truncated": B}``;
- failure: ``status.json`` ``{"status": "failed", "category": C}`` and nothing else.
  ``C`` is one of ``CATEGORIES``. DuckDB's message is never written anywhere: it can
  quote cell values ("Could not convert string 'XYZ' to INT32").

The size of the result never decides success. A result with more than ``max_rows``
rows, or more than ``output_max_bytes`` bytes, is cut down to fit, keeping the groups
first in a fixed pseudo-random order of their keys (``hash`` of the spec's
``key_columns``, then the keys themselves), never failing: otherwise "does the exact
result have more than N groups?" is an answer an operator can read off the job's
state (issue 20). The cut only happens at sizes far above any Plan's released group
count, set by the host from its settings, not from the data; docs/privacy.md states
the residual risk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.ipc

from sandbox_runner.contract import (
    CATEGORIES,
    PART_SUFFIX,
    RESULT_FILE,
    SPEC_VERSION,
    STATUS_FAILED,
    STATUS_FILE,
    STATUS_OK,
)

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_RESOURCE_ERRNOS = {
    errno.ENOSPC,
    errno.EFBIG,
    errno.EDQUOT,
    errno.EMFILE,
    errno.ENFILE,
    errno.EAGAIN,
    errno.ENOMEM,
}


class RunnerFailure(Exception):
    """A failure with a category only (never a message)."""

    def __init__(self, category: str) -> None:
        super().__init__(category)
        self.category = category if category in CATEGORIES else "engine_error"


def execute(
    spec: dict[str, Any],
    data_dir: Path,
    out_dir: Path,
    *,
    memory_limit: str = "1GB",
    threads: int = 2,
    temp_dir: Path | None = None,
    max_temp_size: str | None = None,
    output_max_bytes: int | None = None,
    timeout_s: float | None = None,
) -> None:
    """Run ``spec`` over the Parquet files under ``data_dir``; write into ``out_dir``.

    Never raises for a failure of the query: it writes ``status.json`` with a
    category instead. ``timeout_s`` interrupts the query in-process (the container
    is also killed from outside at the wall-clock limit).
    """
    out_dir = Path(out_dir)
    try:
        table, cut = _run(
            spec,
            Path(data_dir),
            memory_limit=memory_limit,
            threads=threads,
            temp_dir=temp_dir,
            max_temp_size=max_temp_size,
            timeout_s=timeout_s,
        )
        truncated = _write_result(table, out_dir, output_max_bytes) or cut
    except BaseException as exc:  # noqa: BLE001 - everything becomes a category
        _discard(out_dir / RESULT_FILE)
        write_status(out_dir, {"status": STATUS_FAILED, "category": categorize(exc)})
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return
    write_status(
        out_dir, {"status": STATUS_OK, "peak_rss_kb": peak_rss_kb(), "truncated": truncated}
    )


def categorize(exc: BaseException) -> str:
    """The failure category of an exception. Reads the message, never returns it."""
    if isinstance(exc, RunnerFailure):
        return exc.category
    if isinstance(exc, duckdb.InterruptException):
        return "timeout"
    if isinstance(exc, duckdb.OutOfMemoryException):
        # Spilling stops at max_temp_directory_size: that is the scratch cap.
        if "max_temp_directory_size" in str(exc):
            return "resource_limit"
        return "memory"
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, duckdb.IOException):
        text = str(exc).lower()
        if "no space left" in text or "file too large" in text or "too many open" in text:
            return "resource_limit"
        return "engine_error"
    if isinstance(exc, OSError) and (exc.errno in _RESOURCE_ERRNOS or _no_space(exc)):
        return "resource_limit"
    if isinstance(exc, RuntimeError) and "thread" in str(exc).lower():
        return "resource_limit"  # could not start a thread: the PID limit
    if isinstance(exc, duckdb.Error):
        text = str(exc).lower()
        if "resource temporarily unavailable" in text or "no space left" in text:
            return "resource_limit"
        return "engine_error"
    return "engine_error"


def _run(
    spec: dict[str, Any],
    data_dir: Path,
    *,
    memory_limit: str,
    threads: int,
    temp_dir: Path | None,
    max_temp_size: str | None,
    timeout_s: float | None,
) -> tuple[pa.Table, bool]:
    sql, tables, columns, max_rows, keys = _check_spec(spec)
    data_dir = data_dir.resolve()
    files = {name: _table_file(data_dir, rel) for name, rel in tables.items()}

    con = duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
        },
    )
    try:
        con.execute("SET enable_progress_bar = false")
        for name, path in files.items():
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_quote(str(path))})")
        con.execute(f"SET memory_limit = {_quote(memory_limit)}")
        con.execute(f"SET threads = {int(threads)}")
        # Streaming: no operator has to keep rows in their input order (the result's
        # order is fixed by _query's ORDER BY on the keys), so scans, joins and
        # aggregates run without order-preserving buffers; and no cache of Parquet
        # blocks in DuckDB's pool (one job per process: nothing would reuse it).
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET enable_external_file_cache = false")
        if temp_dir is not None:
            con.execute(f"SET temp_directory = {_quote(str(temp_dir))}")
            if max_temp_size is not None:
                con.execute(f"SET max_temp_directory_size = {_quote(max_temp_size)}")
        # Only the Plan's own files are readable (the temp directory is added by
        # DuckDB itself). Order matters: the allow-list before switching access off.
        con.execute("SET allowed_paths = ?", [[str(p) for p in files.values()]])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return _query(con, sql, columns, keys, max_rows, timeout_s)
    finally:
        con.close()


def _query(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    columns: list[str],
    keys: list[str],
    max_rows: int,
    timeout_s: float | None,
) -> tuple[pa.Table, bool]:
    """The result, at most ``max_rows`` rows of it (and whether rows were cut)."""
    timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        relation = con.sql(sql)
        if relation is None:  # not a query (COPY, SET, …): nothing to return
            raise RunnerFailure("plan_mismatch")
        if relation.columns != columns:
            raise RunnerFailure("plan_mismatch")
        if keys:
            # a fixed order that depends on each group's keys only: which groups a cut
            # keeps does not depend on any other group's values
            cols = ", ".join(_ident(k) for k in keys)
            relation = relation.order(f"hash({cols}), {cols}")
        # One row past the cap tells whether anything was cut.
        table = relation.limit(max_rows + 1).to_arrow_table()
    finally:
        if timer is not None:
            timer.cancel()
    if table.column_names != columns:
        raise RunnerFailure("plan_mismatch")
    if table.num_rows > max_rows:
        return table.slice(0, max_rows), True
    return table, False


def _check_spec(spec: Any) -> tuple[str, dict[str, str], list[str], int, list[str]]:
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise RunnerFailure("plan_mismatch")
    sql, tables = spec.get("sql"), spec.get("tables")
    columns, max_rows = spec.get("columns"), spec.get("max_rows")
    keys = spec.get("key_columns", [])
    if not isinstance(sql, str) or not sql.strip():
        raise RunnerFailure("plan_mismatch")
    if not isinstance(tables, dict) or not tables:
        raise RunnerFailure("plan_mismatch")
    for name, rel in tables.items():
        if not isinstance(name, str) or not _TABLE_NAME.match(name) or not isinstance(rel, str):
            raise RunnerFailure("plan_mismatch")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise RunnerFailure("plan_mismatch")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
        raise RunnerFailure("plan_mismatch")
    if not isinstance(keys, list) or keys != columns[: len(keys)]:
        raise RunnerFailure("plan_mismatch")  # the keys are the leading result columns
    return sql, dict(tables), list(columns), max_rows, list(keys)


def _table_file(data_dir: Path, rel: str) -> Path:
    """The Parquet file of one table; refuses anything that leaves ``data_dir``."""
    parts = rel.split("/")
    if not parts or not all(_PATH_PART.match(p) and p not in {".", ".."} for p in parts):
        raise RunnerFailure("plan_mismatch")
    path = data_dir.joinpath(*parts)
    real = path.resolve()
    if not real.is_relative_to(data_dir):
        raise RunnerFailure("plan_mismatch")
    if not real.is_file():
        raise RunnerFailure("data_missing")
    return real


def _write_result(table: pa.Table, out_dir: Path, output_max_bytes: int | None) -> bool:
    """Write result.arrow within ``output_max_bytes``: a result that does not fit is cut
    to its leading rows (the order _query fixed) until it does. True if rows were cut."""
    final = out_dir / RESULT_FILE
    tmp = out_dir / (RESULT_FILE + PART_SUFFIX)
    n = table.num_rows
    if output_max_bytes is not None:
        while n > 0 and table.slice(0, n).nbytes > output_max_bytes:
            n = min(n - 1, n * output_max_bytes // max(1, table.slice(0, n).nbytes))
    while True:
        size = _write_ipc(table.slice(0, n), tmp)
        if output_max_bytes is None or size <= output_max_bytes:
            break
        if n == 0:  # even no rows do not fit: the cap is below the schema's own size
            _discard(tmp)
            raise RunnerFailure("output_too_large")
        n = min(n - 1, n * output_max_bytes // size)
    os.replace(tmp, final)
    return bool(n < table.num_rows)


def _write_ipc(table: pa.Table, path: Path) -> int:
    try:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    except OSError as exc:
        # /out is size-capped (and files by ulimit) at twice the output cap, so a file
        # within the cap always fits; anything else is the host's sizing.
        if exc.errno in {errno.ENOSPC, errno.EFBIG, errno.EDQUOT} or _no_space(exc):
            raise RunnerFailure("output_too_large") from exc
        raise
    return os.stat(path).st_size


def _no_space(exc: BaseException) -> bool:
    # Arrow's IO errors carry the OS reason in their text, not always in errno.
    text = str(exc).lower()
    return "no space left" in text or "file too large" in text


def write_status(out_dir: Path, status: dict[str, Any]) -> None:
    """Write status.json atomically. Only our own fixed fields go in."""
    with contextlib.suppress(OSError):
        tmp = out_dir / (STATUS_FILE + PART_SUFFIX)
        tmp.write_text(json.dumps(status, sort_keys=True))
        os.replace(tmp, out_dir / STATUS_FILE)


def peak_rss_kb() -> int:
    """Peak resident memory of this process, in KiB (cheap: one syscall)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        Path(str(path) + PART_SUFFIX).unlink()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
