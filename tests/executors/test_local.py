"""The local executor: the runner's code in-process, synthetic data only."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from executor_helpers import SECRET, expected_counts, make_plan

from sandbox.errors import ExecutionFailed, Refused
from sandbox.executors.local import LocalExecutor, is_synthetic
from sandbox.settings import Settings


def test_runs_a_plan_on_synthetic_data_with_exact_numbers(
    settings: Settings, synthetic_root: Path
) -> None:
    result = LocalExecutor(settings).run(make_plan(), data_root=synthetic_root, job_id="j1")
    assert result.table.column_names == ["county_code", "n", "age_sum"]
    got = {r["county_code"]: (r["n"], r["age_sum"]) for r in result.table.to_pylist()}
    assert got == expected_counts(synthetic_root)
    assert result.stats["exit"] == "ok"
    assert result.wall_s > 0


def test_refuses_data_not_marked_synthetic(settings: Settings, raw_root: Path) -> None:
    with pytest.raises(Refused) as info:
        LocalExecutor(settings).run(make_plan(), data_root=raw_root, job_id="j1")
    assert info.value.code == "LOCAL_DATA_NOT_SYNTHETIC"
    assert info.value.exit_code == 2


def test_refuses_when_any_table_of_the_plan_is_not_synthetic(
    settings: Settings, synthetic_root: Path, raw_root: Path
) -> None:
    # One synthetic table, one raw one (a lookup, say): still refused.
    raw = raw_root / "social_insurance" / "contributions.parquet"
    target = synthetic_root / "social_insurance" / "contributions.parquet"
    target.write_bytes(raw.read_bytes())
    plan = make_plan(
        tables={
            "persons": "population/persons.parquet",
            "contributions": "social_insurance/contributions.parquet",
        }
    )
    with pytest.raises(Refused) as info:
        LocalExecutor(settings).run(plan, data_root=synthetic_root, job_id="j1")
    assert info.value.code == "LOCAL_DATA_NOT_SYNTHETIC"


def test_synthetic_marker_is_read_from_the_footer(synthetic_root: Path, raw_root: Path) -> None:
    assert is_synthetic(synthetic_root / "population" / "persons.parquet")
    assert not is_synthetic(raw_root / "population" / "persons.parquet")
    table = pq.read_table(raw_root / "population" / "persons.parquet")
    other = raw_root / "false.parquet"
    pq.write_table(table.replace_schema_metadata({b"jinyu.synthetic": b"false"}), other)
    assert not is_synthetic(other)
    junk = raw_root / "junk.parquet"
    junk.write_bytes(b"not parquet")
    assert not is_synthetic(junk)


def test_engine_error_on_a_data_value_carries_no_value(
    settings: Settings, synthetic_root: Path
) -> None:
    sql = (
        "SELECT county_code, COUNT(*) AS n, SUM(CAST(name AS INTEGER)) AS age_sum "
        "FROM persons GROUP BY 1"
    )
    with pytest.raises(ExecutionFailed) as info:
        LocalExecutor(settings).run(make_plan(sql=sql), data_root=synthetic_root, job_id="j1")
    err = info.value
    assert err.category == "engine_error"
    shown = [str(err), repr(err), str(err.to_dict()), str(err.__cause__), str(err.__context__)]
    assert not any(SECRET in text for text in shown)


def test_missing_table_file_is_data_missing(settings: Settings, synthetic_root: Path) -> None:
    plan = make_plan(tables={"persons": "population/absent.parquet"})
    with pytest.raises(ExecutionFailed) as info:
        LocalExecutor(settings).run(plan, data_root=synthetic_root, job_id="j1")
    assert info.value.category == "data_missing"


def test_path_out_of_the_data_root_is_refused(settings: Settings, synthetic_root: Path) -> None:
    plan = make_plan(tables={"persons": "../synthetic/population/persons.parquet"})
    with pytest.raises(ExecutionFailed) as info:
        LocalExecutor(settings).run(plan, data_root=synthetic_root, job_id="j1")
    assert info.value.category == "plan_mismatch"


def test_timeout_from_settings(settings: Settings, synthetic_root: Path) -> None:
    sql = "SELECT 'x' AS county_code, 1 AS n, SUM(hash(i)) AS age_sum FROM range(1e13::BIGINT) t(i)"
    executor = LocalExecutor(settings.replace(job_timeout_s=0.5))
    with pytest.raises(ExecutionFailed) as info:
        executor.run(make_plan(sql=sql), data_root=synthetic_root, job_id="j1")
    assert info.value.category == "timeout"


def test_the_row_ceiling_comes_from_settings_not_from_the_plan(
    settings: Settings, synthetic_root: Path
) -> None:
    # issue 20: a Plan's max_groups below the exact group count does not fail the run
    # (the privacy layer caps the noisy groups); the runner's ceiling is a setting
    plan = make_plan(max_groups=1)
    result = LocalExecutor(settings).run(plan, data_root=synthetic_root, job_id="j1")
    assert result.table.num_rows == 3 and result.stats["truncated"] is False
    cut = LocalExecutor(settings.replace(runner_max_rows=2)).run(
        make_plan(max_groups=2), data_root=synthetic_root, job_id="j2"
    )
    assert cut.table.num_rows == 2 and cut.stats["truncated"] is True
