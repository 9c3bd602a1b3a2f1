"""Declarations the data must keep: a table's shape and its dataset's size.

Two declarations in the catalogue are promises about the data that the privacy layer
builds on, so neither is trusted; each is checked:

- ``rows_per_unit: 1``. The compiler bounds a unit's rows with a window only where the
  catalogue allows several (``rows_per_unit > 1``); a table declared one-row-per-unit
  is read as it is, so a duplicated unit would move a count by 2 while the noise
  assumes 1 (issue 15). Checked as ``COUNT(*)`` against ``COUNT(DISTINCT unit)``.
- ``max_units`` (the dataset's privacy policy): at most this many units in any table
  of the dataset. The rounding term of a float sum is sized for sums of at most
  ``rows_per_unit × max_units`` rows (``privacy.float_sum_rows``); a larger table
  would make it too small (issue 15 point 8). Checked as ``COUNT(DISTINCT unit)`` ≤
  ``max_units`` on every private table a Plan reads, whatever its rows per unit. The
  bound checked is the smaller of the catalogue's and the one the job's cost assumed
  (``Cost.max_units``), so a bound raised after a job was costed never covers it.

Before a Plan reads a private table, the table itself is checked, inside the runner
like any query (no host process reads raw data), once per version of the file,
identified by ``os.stat`` (device, inode, size, modification and change times) and the
declaration checked. One check query covers both declarations of a table.

A table that breaks a declaration is refused: every job reading it fails with the
category ``data_invalid`` until the file is replaced (or the bureau declares what the
data is), and an error line ``data.invalid`` names the dataset, table and declaration
for the bureau (never a count). The counts are compared in memory and dropped.
Whether a job fails therefore depends on whether the whole table keeps its declared,
public shape and size, never on one unit's values; the answer is the same for every
query on that file version, so it can be read once, not probed query by query. A table
that keeps its declarations adds a check only after the file changes (a public
event). The guarantee is stated for data that keeps them: a register declared with
``max_units`` exactly its size could tell, by being refused, that one unit was added,
so the bureau declares the bound with headroom (docs/privacy.md).
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

# (file, device, inode, size, mtime, ctime, rows_per_unit, max_units)
Fingerprint = tuple[str, int, int, int, int, int, int, int]


class DataChecks:
    """The private tables found to keep their declarations, by file version."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._kept: set[Fingerprint] = set()
        self._broken: set[Fingerprint] = set()
        self._lock = threading.Lock()  # one check of a file version at a time

    def ensure(
        self,
        plan: Plan,
        *,
        executor: Executor,
        data_root: Path,
        job_id: str,
        max_units: int | None = None,
    ) -> None:
        """Check every private table the Plan reads; ExecutionFailed ``data_invalid``
        if one breaks ``rows_per_unit: 1`` or has more units than ``max_units``
        allows (the catalogue's, or ``max_units`` — the job's cost's — if smaller)."""
        for name, rel in sorted(plan.tables.items()):
            found = self.catalog.find_table(name)
            if found is None or found[0].privacy_unit is None:
                continue
            dataset, table = found
            per_unit = table.rows_per_unit
            if per_unit is None:  # a private dataset's tables all declare it
                continue
            limit = dataset.privacy.max_units
            if max_units is not None:
                limit = min(limit, max_units)
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
                per_unit,
                limit,
            )
            with self._lock:
                if key not in self._kept and key not in self._broken:
                    broken = self._check(
                        dataset, table, limit, executor, data_root, f"{job_id}-check"
                    )
                    (self._broken if broken else self._kept).add(key)
                    if broken:
                        fields = {
                            "event": "data.invalid",
                            "dataset": dataset.id,
                            "table": table.name,
                            "file": rel,
                            "declared": broken,
                            "time": datetime.now(UTC).isoformat(),
                        }
                        log.error("data.invalid", extra={"fields": fields})
            if key in self._broken:
                raise ExecutionFailed("data_invalid")

    def _check(
        self,
        dataset: Dataset,
        table: Table,
        limit: int,
        executor: Executor,
        data_root: Path,
        run_id: str,
    ) -> str:
        """The declaration the table breaks ("" if none), from one run in the runner."""
        from sandbox.compiler import compile_query

        unit = dataset.privacy_unit
        sql = f'SELECT COUNT(*) AS n, COUNT(DISTINCT "{unit}") AS units FROM "{table.name}"'
        # the real COUNT(DISTINCT): what is checked here is that it equals COUNT(*)
        plan = compile_query(
            sql, catalog=self.catalog, grant=_system_grant(dataset), unit_rows_checked=False
        )
        exact = executor.run(plan, data_root=data_root, job_id=run_id)
        try:
            kinds = {m.kind: exact.table.column(m.name)[0].as_py() for m in plan.measures}
            if table.rows_per_unit == 1 and kinds["count"] != kinds["count_units"]:
                return "rows_per_unit: 1"
            if kinds["count_units"] > limit:
                return f"max_units: {limit}"
            return ""
        finally:
            del exact  # the exact counts are never kept


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
