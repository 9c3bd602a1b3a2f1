"""The in-container executor (sandbox_runner.executor), run in-process.

The same code runs inside the runner image; here we check its DuckDB lock-down,
its spec checks and that a failure leaves only a category behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pytest
from executor_helpers import SECRET, expected_counts, make_plan
from sandbox_runner.executor import execute

COLUMNS = ["county_code", "n", "age_sum"]
CAST_SQL = (
    "SELECT county_code, COUNT(*) AS n, SUM(CAST(name AS INTEGER)) AS age_sum "
    "FROM persons GROUP BY 1"
)


def run_spec(
    root: Path, tmp_path: Path, spec: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "out"
    scratch = tmp_path / "scratch"
    out.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    spec = spec if spec is not None else make_plan().runner_spec()
    kwargs.setdefault("temp_dir", scratch)
    execute(spec, root, out, **kwargs)
    return json.loads((out / "status.json").read_text()), out


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = make_plan().runner_spec()
    spec.update(changes)
    return spec


def assert_failed(status: dict[str, Any], out: Path, category: str) -> None:
    assert status == {"status": "failed", "category": category}
    assert sorted(p.name for p in out.iterdir()) == ["status.json"]


def test_runs_the_plan_and_matches_duckdb(raw_root: Path, tmp_path: Path) -> None:
    status, out = run_spec(raw_root, tmp_path)
    assert status["status"] == "ok"
    assert status["peak_rss_kb"] > 0
    with pa.OSFile(str(out / "result.arrow")) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.column_names == COLUMNS
    got = {row["county_code"]: (row["n"], row["age_sum"]) for row in table.to_pylist()}
    assert got == expected_counts(raw_root)
    assert sum(n for n, _ in got.values()) == 300


@pytest.mark.parametrize(
    ("changes", "category"),
    [
        ({"columns": ["county_code", "n"]}, "plan_mismatch"),
        ({"columns": ["n", "county_code", "age_sum"]}, "plan_mismatch"),
        ({"key_columns": ["n"]}, "plan_mismatch"),
        ({"key_columns": "county_code"}, "plan_mismatch"),
        ({"version": 99}, "plan_mismatch"),
        ({"sql": ""}, "plan_mismatch"),
        ({"tables": {"persons": "../raw/population/persons.parquet"}}, "plan_mismatch"),
        ({"tables": {"persons": "/etc/passwd"}}, "plan_mismatch"),
        ({"tables": {"persons; DROP": "population/persons.parquet"}}, "plan_mismatch"),
        ({"tables": {"persons": "population/missing.parquet"}}, "data_missing"),
    ],
)
def test_bad_specs_fail_with_a_category(
    raw_root: Path, tmp_path: Path, changes: dict[str, Any], category: str
) -> None:
    status, out = run_spec(raw_root, tmp_path, spec_with(**changes))
    assert_failed(status, out, category)


def test_a_symlink_out_of_the_data_dir_is_refused(raw_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.parquet"
    outside.write_bytes((raw_root / "population" / "persons.parquet").read_bytes())
    (raw_root / "population" / "link.parquet").symlink_to(outside)
    spec = spec_with(tables={"persons": "population/link.parquet"})
    status, out = run_spec(raw_root, tmp_path, spec)
    assert_failed(status, out, "plan_mismatch")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'x' AS county_code, COUNT(*) AS n, 0 AS age_sum FROM read_csv('/etc/passwd')",
        "SELECT 'x' AS county_code, COUNT(*) AS n, 0 AS age_sum "
        "FROM read_parquet('{root}/social_insurance/contributions.parquet')",
        "SELECT 'x' AS county_code, COUNT(*) AS n, 0 AS age_sum "
        "FROM read_parquet('{root}/population/*.parquet')",
        "SELECT 'x' AS county_code, COUNT(*) AS n, 0 AS age_sum FROM glob('/*')",
        "SELECT 'x' AS county_code, COUNT(*) AS n, 0 AS age_sum "
        "FROM read_csv('http://127.0.0.1:9/x.csv')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "ATTACH '{root}/evil.duckdb'",
        "SET enable_external_access = true",
        "SET memory_limit = '100GB'",
    ],
)
def test_engine_lockdown_refuses_file_network_and_config_access(
    raw_root: Path, tmp_path: Path, sql: str
) -> None:
    status, out = run_spec(raw_root, tmp_path, spec_with(sql=sql.format(root=raw_root)))
    assert_failed(status, out, "engine_error")
    assert not (raw_root / "evil.duckdb").exists()


def test_copy_into_the_data_dir_is_refused(raw_root: Path, tmp_path: Path) -> None:
    target = raw_root / "population" / "leak.csv"
    sql = f"COPY (SELECT * FROM persons) TO '{target}'"
    status, out = run_spec(raw_root, tmp_path, spec_with(sql=sql))
    assert_failed(status, out, "engine_error")
    assert not target.exists()


def test_conversion_error_reports_only_its_category(raw_root: Path, tmp_path: Path) -> None:
    sql = CAST_SQL
    status, out = run_spec(raw_root, tmp_path, spec_with(sql=sql))
    assert_failed(status, out, "engine_error")
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_relative_to(raw_root):
            assert SECRET.encode() not in path.read_bytes()


def test_memory_limit_reports_memory(raw_root: Path, tmp_path: Path) -> None:
    sql = "SELECT 'x' AS county_code, 1 AS n, list(i) AS age_sum FROM range(100000000) r(i)"
    status, out = run_spec(raw_root, tmp_path, spec_with(sql=sql), memory_limit="64MB")
    assert_failed(status, out, "memory")


def test_spilling_past_the_scratch_cap_reports_resource_limit(
    raw_root: Path, tmp_path: Path
) -> None:
    sql = (
        "SELECT (i % 20000000)::VARCHAR AS county_code, COUNT(*) AS n, 0 AS age_sum "
        "FROM range(40000000) r(i) GROUP BY 1 ORDER BY 1 LIMIT 1"
    )
    status, out = run_spec(
        raw_root, tmp_path, spec_with(sql=sql), memory_limit="100MB", max_temp_size="20MB"
    )
    assert_failed(status, out, "resource_limit")


def test_timeout_interrupts_the_query(raw_root: Path, tmp_path: Path) -> None:
    sql = (
        "SELECT 'x' AS county_code, 1 AS n, SUM(hash(i)) AS age_sum FROM range(10000000000000) r(i)"
    )
    status, out = run_spec(raw_root, tmp_path, spec_with(sql=sql), timeout_s=0.5)
    assert_failed(status, out, "timeout")


def read_table(out: Path) -> pa.Table:
    with pa.OSFile(str(out / "result.arrow")) as source:
        return pa.ipc.open_file(source).read_all()


def test_more_rows_than_the_ceiling_are_cut_never_failed(raw_root: Path, tmp_path: Path) -> None:
    # issue 20: failing when the EXACT result has too many groups is a one-bit oracle
    status, out = run_spec(raw_root, tmp_path, spec_with(max_rows=2))
    assert status["status"] == "ok" and status["truncated"] is True
    table = read_table(out)
    assert table.num_rows == 2
    (tmp_path / "full").mkdir()
    full, full_out = run_spec(raw_root, tmp_path / "full", spec_with())
    assert full["truncated"] is False
    # the cut keeps the groups first in a fixed order of their keys alone
    kept = read_table(full_out).slice(0, 2).column("county_code").to_pylist()
    assert table.column("county_code").to_pylist() == kept


def test_which_groups_a_cut_keeps_depends_on_each_group_s_keys_only(
    raw_root: Path, tmp_path: Path
) -> None:
    base = "SELECT i::VARCHAR AS county_code, COUNT(*) AS n, SUM(i) AS age_sum FROM range({n}) r(i)"
    kept = []
    for n in (400, 401, 1000):
        sql = base.format(n=n) + " GROUP BY 1"
        (tmp_path / str(n)).mkdir()
        status, out = run_spec(raw_root, tmp_path / str(n), spec_with(sql=sql, max_rows=50))
        assert status["status"] == "ok"
        kept.append(set(read_table(out).column("county_code").to_pylist()))
    # one more group displaces at most one kept group
    assert len(kept[0] ^ kept[1]) <= 2
    assert all(len(k) == 50 for k in kept)


def test_output_over_the_cap_is_cut_to_fit(raw_root: Path, tmp_path: Path) -> None:
    sql = "SELECT i::VARCHAR AS county_code, i AS n, i AS age_sum FROM range(100000) r(i)"
    spec = spec_with(sql=sql, max_rows=1_000_000)
    status, out = run_spec(raw_root, tmp_path, spec, output_max_bytes=64 * 1024)
    assert status["status"] == "ok" and status["truncated"] is True
    assert (out / "result.arrow").stat().st_size <= 64 * 1024
    table = read_table(out)
    assert 0 < table.num_rows < 100000


def test_a_cap_below_an_empty_result_fails_whatever_the_data(
    raw_root: Path, tmp_path: Path
) -> None:
    status, out = run_spec(raw_root, tmp_path, spec_with(), output_max_bytes=16)
    assert_failed(status, out, "output_too_large")


def runner_process(root: Path, tmp_path: Path, spec: dict[str, Any]) -> subprocess.CompletedProcess:
    plan_dir, out, scratch = tmp_path / "plan", tmp_path / "out", tmp_path / "scratch"
    for d in (plan_dir, out, scratch):
        d.mkdir(exist_ok=True)
    (plan_dir / "spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "RUNNER_PLAN_DIR": str(plan_dir),
        "RUNNER_OUT_DIR": str(out),
        "RUNNER_DATA_DIR": str(root),
        "RUNNER_SCRATCH_DIR": str(scratch),
        "RUNNER_MEMORY_LIMIT": "256MB",
    }
    return subprocess.run(
        [sys.executable, "-m", "sandbox_runner"], env=env, capture_output=True, timeout=60
    )


def test_main_exits_zero_and_prints_nothing(raw_root: Path, tmp_path: Path) -> None:
    proc = runner_process(raw_root, tmp_path, make_plan().runner_spec())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert (tmp_path / "out" / "result.arrow").is_file()


def test_main_failure_exits_nonzero_and_prints_nothing(raw_root: Path, tmp_path: Path) -> None:
    sql = CAST_SQL
    proc = runner_process(raw_root, tmp_path, spec_with(sql=sql))
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, b"", b"")
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status == {"status": "failed", "category": "engine_error"}


def test_main_without_a_spec_exits_two_and_prints_nothing(tmp_path: Path) -> None:
    (tmp_path / "plan").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox_runner"],
        env={**os.environ, "RUNNER_PLAN_DIR": str(tmp_path / "plan")},
        capture_output=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, b"", b"")


def test_runner_does_not_import_sandbox() -> None:
    code = (
        "import sys, sandbox_runner.executor, sandbox_runner.__main__; "
        "print(sorted(m for m in sys.modules if m == 'sandbox' or m.startswith('sandbox.')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]"
