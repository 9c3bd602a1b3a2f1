"""Declarations the data must keep: a ``rows_per_unit: 1`` table has one row per unit.

The compiler bounds a unit's rows with a window only where the catalogue allows
several (``rows_per_unit > 1``); a table declared one-row-per-unit is read as it is,
so a duplicated unit would move a count by 2 while the noise assumes 1 (issue 15).
The declaration is not trusted: before a Plan reads such a table, the table itself is
checked, inside the runner like any query (``COUNT(*)`` against ``COUNT(DISTINCT
unit)``; no host process reads raw data), once per version of the file, identified by
``os.stat`` (device, inode, size, modification and change times).

A table that breaks its declaration is refused: every job reading it fails with the
category ``data_invalid`` until the file is replaced, and an error line
``data.invalid`` names the dataset and table for the bureau (never a count). The
counts are compared in memory and dropped. Whether a job fails therefore depends on
whether the whole table keeps its declared shape, never on one unit's values; a table
that keeps it adds a check only after the file changes (a public event).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.errors import ExecutionFailed

if TYPE_CHECKING:
    from sandbox.catalog import Catalog, Dataset, Table
    from sandbox.executors import Executor
    from sandbox.grants import Grant
    from sandbox.plan import Plan

__all__ = ["DataChecks"]

log = logging.getLogger("sandbox.datacheck")

Fingerprint = tuple[str, int, int, int, int, int]


class DataChecks:
    """The one-row-per-unit tables found to keep their declaration, by file version."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._kept: set[Fingerprint] = set()
        self._broken: set[Fingerprint] = set()
        self._lock = threading.Lock()  # one check of a file version at a time

    def ensure(self, plan: Plan, *, executor: Executor, data_root: Path, job_id: str) -> None:
        """Check every one-row-per-unit table the Plan reads; ExecutionFailed
        ``data_invalid`` if one has a unit with several rows (or no unit id)."""
        for name, rel in sorted(plan.tables.items()):
            found = self.catalog.find_table(name)
            if found is None or found[1].rows_per_unit != 1 or found[0].privacy_unit is None:
                continue
            dataset, table = found
            path = Path(data_root).joinpath(*rel.split("/"))
            try:
                st = path.stat()
            except OSError:
                raise ExecutionFailed("data_missing") from None
            key: Fingerprint = (
                rel,
                st.st_dev,
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
            )
            with self._lock:
                if key not in self._kept and key not in self._broken:
                    kept = self._check(dataset, table, executor, data_root, f"{job_id}-check")
                    (self._kept if kept else self._broken).add(key)
                    if not kept:
                        fields = {
                            "event": "data.invalid",
                            "dataset": dataset.id,
                            "table": table.name,
                            "file": rel,
                            "declared": "rows_per_unit: 1",
                            "time": datetime.now(UTC).isoformat(),
                        }
                        log.error("data.invalid", extra={"fields": fields})
            if key in self._broken:
                raise ExecutionFailed("data_invalid")

    def _check(
        self, dataset: Dataset, table: Table, executor: Executor, data_root: Path, run_id: str
    ) -> bool:
        from sandbox.compiler import compile_query

        unit = dataset.privacy_unit
        sql = f'SELECT COUNT(*) AS n, COUNT(DISTINCT "{unit}") AS units FROM "{table.name}"'
        plan = compile_query(sql, catalog=self.catalog, grant=_system_grant(dataset))
        exact = executor.run(plan, data_root=data_root, job_id=run_id)
        try:
            kinds = {m.kind: exact.table.column(m.name)[0].as_py() for m in plan.measures}
            return bool(kinds["count"] == kinds["count_units"])
        finally:
            del exact  # the two exact counts are never kept


def _system_grant(dataset: Dataset) -> Grant:
    from sandbox.grants import Grant

    return Grant.model_validate(
        {
            "id": "system-datacheck",
            "operator": "system",
            "scenario": {"id": "datacheck", "purpose": "check declared table shapes"},
            "datasets": [dataset.id],
            "budget": {"epsilon": 1.0, "delta": 0.0, "max_epsilon_per_query": 1.0},
            "valid_from": datetime(1970, 1, 1, tzinfo=UTC),
            "valid_until": datetime(9999, 1, 1, tzinfo=UTC),
        }
    )
