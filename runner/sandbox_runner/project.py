"""The projection step of an analysis job: a table's usable columns, and no others.

A script is Python: it can read every byte of a file it can see. A table holding a
column that no declared use allows (a name, an ID number) is therefore never mounted
for a script. This step runs first, in its own runner container (the same lock-down
as every runner), with the raw table files mounted read-only; it writes, for each
table, a Parquet file holding only the columns the host names (those with a declared
use), to ``/out/tables/<n>.parquet``. The host then mounts those files, read-only, in
the analysis container in place of the raw ones. The host never reads them: it only
checks they are regular files, and removes them with the run directory (RAM only).

The spec (``kind: "project"``): ``{"version", "kind", "tables": {rel: [column, ...]}}``
where ``rel`` is ``dataset/file`` under /data. Rows are copied in batches (memory
bounded), in file order; types and values unchanged. Failures are categories only:
``plan_mismatch`` (a bad spec, a column the file lacks), ``data_missing``,
``resource_limit`` (the output filesystem or a file-size limit), ``engine_error``.
Standard library and pyarrow only.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

from sandbox_runner.contract import (
    PART_SUFFIX,
    PROJECT_DIR,
    PROJECT_KIND,
    SPEC_VERSION,
    STATUS_FAILED,
    STATUS_FILE,
    STATUS_OK,
)

_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_TABLES = 64
BATCH_ROWS = 64 * 1024


class ProjectionFailure(Exception):
    def __init__(self, category: str) -> None:
        super().__init__(category)
        self.category = category


def check_spec(spec: Any, data_dir: Path) -> list[tuple[Path, list[str]]]:
    """(raw file, columns) per table, in the spec's order; else plan_mismatch."""
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise ProjectionFailure("plan_mismatch")
    if spec.get("kind") != PROJECT_KIND or set(spec) != {"version", "kind", "tables"}:
        raise ProjectionFailure("plan_mismatch")
    tables = spec["tables"]
    if not isinstance(tables, dict) or not 0 < len(tables) <= MAX_TABLES:
        raise ProjectionFailure("plan_mismatch")
    out: list[tuple[Path, list[str]]] = []
    for rel, columns in tables.items():
        parts = rel.split("/") if isinstance(rel, str) else []
        if len(parts) != 2 or not all(_PATH_PART.match(p) for p in parts):
            raise ProjectionFailure("plan_mismatch")
        if not isinstance(columns, list) or not columns:
            raise ProjectionFailure("plan_mismatch")
        if not all(isinstance(c, str) and _COLUMN.match(c) for c in columns):
            raise ProjectionFailure("plan_mismatch")
        if len(set(columns)) != len(columns):
            raise ProjectionFailure("plan_mismatch")
        path = data_dir.joinpath(*parts)
        if not path.is_file():
            raise ProjectionFailure("data_missing")
        out.append((path, list(columns)))
    return out


def project(path: Path, columns: list[str], target: Path) -> None:
    """Copy ``columns`` of the Parquet file ``path`` to ``target``, batch by batch."""
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise ProjectionFailure("engine_error") from exc
    names = set(source.schema_arrow.names)
    if not set(columns) <= names:
        raise ProjectionFailure("plan_mismatch")
    schema = source.schema_arrow
    fields = [schema.field(c) for c in columns]
    import pyarrow as pa

    part = target.with_name(target.name + PART_SUFFIX)
    try:
        with pq.ParquetWriter(part, pa.schema(fields)) as writer:
            for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                writer.write_batch(batch)
        os.replace(part, target)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise ProjectionFailure("resource_limit") from exc
        raise ProjectionFailure("engine_error") from exc
    except (ValueError, pa.ArrowException) as exc:
        raise ProjectionFailure("engine_error") from exc


def execute_projection(spec: dict[str, Any], *, data_dir: Path, out_dir: Path) -> None:
    """Write the projected tables and status.json (``ok``, or ``failed`` + category)."""
    try:
        tables = check_spec(spec, data_dir)
        folder = out_dir / PROJECT_DIR
        folder.mkdir(mode=0o755)
        for n, (path, columns) in enumerate(tables):
            project(path, columns, folder / f"{n}.parquet")
        _status({"status": STATUS_OK}, out_dir)
    except ProjectionFailure as exc:
        _status({"status": STATUS_FAILED, "category": exc.category}, out_dir)
    except OSError as exc:  # the out directory itself: full, or not writable
        category = "resource_limit" if exc.errno in (errno.ENOSPC, errno.EFBIG) else "engine_error"
        _status({"status": STATUS_FAILED, "category": category}, out_dir)


def _status(value: dict[str, Any], out_dir: Path) -> None:
    part = out_dir / (STATUS_FILE + PART_SUFFIX)
    part.write_text(json.dumps(value))
    os.replace(part, out_dir / STATUS_FILE)
