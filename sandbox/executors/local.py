"""The local executor: the runner's code in-process, for synthetic data only.

This is what an operator's own machine uses to try a query on synthetic data that
has the catalogue's schema but no real rows. It runs exactly the code the container
runs (``sandbox_runner.executor.execute``) with the same DuckDB lock-down, but it
has none of the container's isolation, so it refuses any Parquet file that is not
marked synthetic (schema metadata ``jinyu.synthetic = true``).

Its result and DuckDB's spill go to a temporary directory in RAM (``/dev/shm``, when
the mount table says it is tmpfs or ramfs), else in the system's temporary directory:
the data is synthetic, so a result of it left by a crash discloses nothing real.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from sandbox.errors import ExecutionFailed, Refused
from sandbox.executors import ExactResult, Executor, plan_datasets, ramfs, runner_spec
from sandbox.executors.budget import runner_budget
from sandbox.plan import Plan
from sandbox.settings import Settings
from sandbox.synthetic import is_synthetic

__all__ = ["LocalExecutor", "is_synthetic"]


class LocalExecutor:
    """Run Plans in-process over synthetic Parquet files."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, plan: Plan, *, data_root: Path, job_id: str) -> ExactResult:
        """Run the Plan; refuse non-synthetic data; raise ExecutionFailed on failure."""
        from sandbox_runner.executor import execute

        from sandbox.executors.output import read_result, read_status

        data_root = Path(data_root)
        plan_datasets(plan.tables, data_root)  # same path rules as the container
        for table, rel in sorted(plan.tables.items()):
            path = data_root.joinpath(*rel.split("/"))
            if not path.is_file():
                raise ExecutionFailed("data_missing")
            if not is_synthetic(path):
                raise Refused(
                    f"Table {table} is not synthetic data; the local executor reads only "
                    "synthetic data.",
                    code="LOCAL_DATA_NOT_SYNTHETIC",
                    hint="Generate synthetic data (`sandbox dev synthetic`) or submit the "
                    "query to the sandbox.",
                )
        s = self.settings
        spec = runner_spec(plan, s)
        budget = runner_budget(s)  # the container's split, so both fail alike
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="jinyu-local-", dir=ramfs.ram_tmp()) as tmp:
            out_dir, scratch = Path(tmp) / "out", Path(tmp) / "scratch"
            out_dir.mkdir()
            scratch.mkdir()
            execute(
                spec,
                data_root,
                out_dir,
                memory_limit=budget.memory_limit,
                threads=budget.threads,
                temp_dir=scratch,
                max_temp_size=budget.max_temp_size,
                output_max_bytes=s.output_max_bytes,
                timeout_s=s.job_timeout_s,
            )
            status = read_status(out_dir)
            if status.get("status") != "ok":
                raise ExecutionFailed(status.get("category", "engine_error"))
            table = read_result(
                out_dir,
                columns=list(spec["columns"]),
                max_rows=int(spec["max_rows"]),
                max_bytes=s.output_max_bytes,
            )
        wall = time.monotonic() - began
        stats = {
            "executor": "local",
            "exit": "ok",
            "wall_s": round(wall, 4),
            "peak_rss_kb": status.get("peak_rss_kb"),
            "truncated": bool(status.get("truncated")),  # diagnostics only, never shown
        }
        return ExactResult(table=table, wall_s=wall, stats=stats)


_: type[Executor] = LocalExecutor  # mypy checks that LocalExecutor is an Executor
