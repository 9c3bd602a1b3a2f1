"""DockerExecutor end to end: a Plan in, the exact table or a category out."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import COLUMNS, MEMORY_MB, assert_no_secret
from executor_helpers import SECRET, expected_counts, make_plan

from sandbox.errors import ExecutionFailed, Refused


@pytest.mark.container
def test_runs_a_plan_and_returns_exact_numbers(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    result = executor.run(make_plan(), data_root=raw_root, job_id="ok-1")
    assert result.table.column_names == COLUMNS
    got = {r["county_code"]: (r["n"], r["age_sum"]) for r in result.table.to_pylist()}
    assert got == expected_counts(raw_root)
    assert result.stats["exit"] == "ok"
    assert result.stats["exit_code"] == 0
    assert result.stats["limits"]["memory_mb"] == MEMORY_MB
    assert result.stats["peak_rss_kb"] > 0


@pytest.mark.container
def test_refuses_data_marked_synthetic(make_executor: Any, synthetic_root: Path) -> None:
    with pytest.raises(Refused) as info:
        make_executor().run(make_plan(), data_root=synthetic_root, job_id="syn")
    assert info.value.code == "SYNTHETIC_DATA_REFUSED"


@pytest.mark.container
def test_conversion_error_reports_only_its_category(
    make_executor: Any, raw_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    executor = make_executor()
    sql = (
        "SELECT county_code, COUNT(*) AS n, SUM(CAST(name AS INTEGER)) AS age_sum "
        "FROM persons GROUP BY 1"
    )
    plan = make_plan(sql=sql)
    with pytest.raises(ExecutionFailed) as info:
        executor.run(plan, data_root=raw_root, job_id="cast")
    assert info.value.category == "engine_error"
    assert info.value.to_dict() == {
        "error": {
            "code": "EXECUTION_FAILED",
            "message": "The query failed: the SQL engine failed "
            "(the engine's message is withheld).",
            "hint": "",
            "category": "engine_error",
        }
    }
    assert_no_secret(info.value)
    assert SECRET not in caplog.text


@pytest.mark.container
def test_jobs_run_concurrently_up_to_the_setting(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor(concurrency=2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def job(i: int) -> None:
        try:
            results.append(executor.run(make_plan(), data_root=raw_root, job_id=f"c{i}"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(results) == 3
    assert all(r.table.num_rows == 3 for r in results)
    assert max(r.stats["queued_s"] for r in results) > 0  # the third one waited


ATTACK_CAP = 50


def _attack_root(root: Path, income: float) -> Path:
    """ATTACK_CAP occupations of 20 people each, and one target person (their own
    occupation) with the given income: 'raw' data, only the container reads it."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(f"p{i:05d}", f"occ-{i % ATTACK_CAP:02d}", 1000.0 + i) for i in range(20 * ATTACK_CAP)]
    rows.append(("p-target", "target-occupation", income))
    n = len(rows)
    table = pa.table(
        {
            "person_id": [r[0] for r in rows],
            "name": [f"name-{i}" for i in range(n)],
            "id_number": [f"id-{i}" for i in range(n)],
            "county_code": ["140105"] * n,
            "sex": ["F"] * n,
            "age": pa.array([40] * n, pa.int32()),
            "household_type": ["single"] * n,
            "employment": ["employed"] * n,
            "occupation": [r[1] for r in rows],
            "monthly_income": [r[2] for r in rows],
            "registered_on": pa.array([dt.date(2020, 1, 1)] * n, pa.date32()),
        }
    )
    path = root / "population" / "persons.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({b"jinyu.fabricated": b"true"}), path)
    path.chmod(0o644)
    return root


@pytest.mark.container
def test_the_group_cap_attack_reads_nothing(
    make_executor: Any, tmp_path: Path, catalog: Any, grants: Any
) -> None:
    """Issue 20's attack: calibrate a filter so the exact group count of a private-key
    GROUP BY sits at the cap, then add one person with an OR filter on their income.
    Before the fix the job failed (plan_mismatch) iff the income was in the range."""
    import dataclasses

    from sandbox.compiler import compile_query
    from sandbox.privacy import plan_cost, release

    grant = next(g for g in grants.grants if g.id == "g-jinshu-employment")
    dataset = next(d for d in catalog.datasets if d.id == "population")
    sql = (
        "SELECT occupation, sex, COUNT(*) AS n FROM persons WHERE occupation LIKE 'occ-%' "
        "OR (occupation = 'target-occupation' AND monthly_income BETWEEN 4000 AND 6000) "
        "GROUP BY occupation, sex"
    )
    plan = dataclasses.replace(
        compile_query(sql, catalog=catalog, grant=grant), max_groups=ATTACK_CAP
    )
    assert plan.private_keys
    cost = plan_cost(plan, epsilon=1.0, delta=1e-6, dataset=dataset, grant=grant)
    executor = make_executor()
    seen: dict[float, set[tuple[Any, ...]]] = {}
    for income in (5000.0, 9000.0):  # in the range: 51 exact groups; outside: 50
        root = _attack_root(tmp_path / f"income-{int(income)}", income)
        outcomes = set()
        for run in range(3):
            try:
                exact = executor.run(plan, data_root=root, job_id=f"attack-{int(income)}-{run}")
                noisy = release(plan, exact.table, cost)
            except ExecutionFailed as exc:  # what the attack read before the fix
                outcomes.add(("failed", exc.category, exc.code, None))
                continue
            rows = noisy.table.num_rows
            outcomes.add(("noised", None, None, rows <= ATTACK_CAP))
        seen[income] = outcomes
    assert seen[5000.0] == seen[9000.0] == {("noised", None, None, True)}
