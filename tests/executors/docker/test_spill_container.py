"""Issue 17: a runner's memory is bounded, and a query bigger than it spills and succeeds.

The data: 4M rows with 4M distinct 19-character units. ``GROUP BY u`` needs a hash
table of all of them: about 480 MB resident in one process with no limit (measured,
DuckDB 2.0.1, 2 threads), close to the whole 512 MB runner. With the budget
(sandbox/executors/budget.py: DuckDB 162 MB, spill 191 MB of the scratch tmpfs) it
spills and returns the exact answer; the same DuckDB limit with no room to spill
fails (checked in-process). Four times the groups do not fit even spilling: DuckDB's
own clean error, category ``resource_limit``, not an OOM kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from docker_helpers import assert_no_secret, spec_with
from sandbox_runner.executor import execute

from sandbox.errors import ExecutionFailed
from sandbox.executors.budget import runner_budget
from sandbox.executors.output import read_status

ROWS = 4_000_000
SQL = (
    "SELECT COUNT(*) AS n, SUM(c) AS s FROM "
    "(SELECT u, COUNT(*) AS c, SUM(v) AS sv, MIN(v) AS mv FROM t GROUP BY u)"
)


@pytest.fixture(scope="module")
def wide_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spill") / "raw"
    (root / "ds").mkdir(parents=True)
    target = str(root / "ds" / "t.parquet").replace("'", "''")
    with duckdb.connect(":memory:") as con:
        con.execute(
            "COPY (SELECT 'unit-' || lpad(i::VARCHAR, 14, '0') AS u, (i % 997)::DOUBLE AS v "
            f"FROM range({ROWS}) t(i)) TO '{target}' (FORMAT parquet)"
        )
    return root


def _spec() -> dict[str, Any]:
    return spec_with(sql=SQL, tables={"t": "ds/t.parquet"}, columns=["n", "s"], key_columns=[])


@pytest.mark.container
def test_a_query_bigger_than_the_runner_spills_and_succeeds(
    make_executor: Any, wide_root: Path, tmp_path: Path
) -> None:
    executor = make_executor(memory_mb=512, scratch_mb=256, file_size_mb=256, cpus=2.0)
    budget = runner_budget(executor.settings)
    assert budget.memory_mb + budget.temp_mb < 512 - 100  # room for the interpreter
    result = executor._run_spec(_spec(), data_root=wide_root, job_id="spill")
    assert result.table.to_pylist() == [{"n": ROWS, "s": ROWS}]
    assert result.stats["oom_killed"] is False
    assert result.stats["peak_rss_kb"] < 512 * 1024
    # The same DuckDB limit without room to spill: the query does not fit.
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    execute(
        _spec(),
        wide_root,
        out,
        memory_limit=budget.memory_limit,
        threads=budget.threads,
        temp_dir=scratch,
        max_temp_size="1MB",
    )
    assert read_status(out).get("category") == "resource_limit"


@pytest.mark.container
def test_when_even_spilling_is_not_enough_it_fails_cleanly(
    make_executor: Any, wide_root: Path
) -> None:
    executor = make_executor(memory_mb=512, scratch_mb=256, file_size_mb=256, cpus=2.0)
    bigger = SQL.replace("FROM t GROUP BY u", "FROM t, range(4) r(j) GROUP BY u, j")
    spec = {**_spec(), "sql": bigger}
    with pytest.raises(ExecutionFailed) as info:
        executor._run_spec(spec, data_root=wide_root, job_id="spill-full")
    assert info.value.category == "resource_limit"  # DuckDB's own error: the spill cap
    stats = info.value.stats  # type: ignore[attr-defined]
    assert stats["oom_killed"] is False and stats["exit_code"] == 1
    assert_no_secret(info.value)
