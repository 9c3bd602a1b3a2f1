"""Factories and small data for the executor tests (imported by tests and conftest).

``make_plan(**overrides)`` builds a Plan by hand (what the compiler would emit for
``SELECT county_code, COUNT(*), SUM(age) FROM persons GROUP BY county_code``);
``raw_root`` / ``synthetic_root`` hold tiny Parquet files, one with a secret-looking
name value that must never come out of any failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sandbox.plan import KeySpec, Measure, Output, Plan

SECRET = "SECRET-Wang-Xiaoming-140105199001011234"
COUNTIES = ("140105", "140106", "140107")
SYNTHETIC_META = {b"jinyu.synthetic": b"true"}


def make_plan(**overrides: Any) -> Plan:
    fields: dict[str, Any] = {
        "query_sha256": "0" * 64,
        "dataset": "population",
        "dataset_version": "2026.3",
        "privacy_unit": "person_id",
        "definition": "pure",
        "tables": {"persons": "population/persons.parquet"},
        "dataset_versions": {"population": "2026.3"},
        "sql": (
            "SELECT county_code, COUNT(*) AS n, SUM(LEAST(GREATEST(age, 0), 100)) AS age_sum "
            "FROM persons GROUP BY county_code ORDER BY county_code"
        ),
        "keys": (KeySpec("county_code", "persons.county_code", COUNTIES),),
        "measures": (
            Measure("n", "count"),
            Measure("age_sum", "sum", column="persons.age", lower=0, upper=100),
        ),
        "outputs": (
            Output("county_code", "key"),
            Output("n", "count", ("n",), "n"),
            Output("age_sum", "sum", ("age_sum",), "age_sum"),
        ),
        "post_sql": "SELECT county_code, n, age_sum FROM noisy",
        "unit_rows": 1,
        "unit_groups": 1,
        "max_groups": 10,
    }
    fields.update(overrides)
    return Plan(**fields)


def make_persons(n: int = 300) -> pa.Table:
    return pa.table(
        {
            "person_id": [f"p{i:05d}" for i in range(n)],
            "name": [SECRET if i == 7 else f"name-{i}" for i in range(n)],
            "county_code": [COUNTIES[i % 3] for i in range(n)],
            "age": pa.array([(i * 7) % 103 for i in range(n)], pa.int32()),
        }
    )


def make_contributions(n: int = 50) -> pa.Table:
    return pa.table({"person_id": [f"p{i:05d}" for i in range(n)], "amount": [100.0] * n})


def write_root(root: Path, *, synthetic: bool) -> Path:
    meta = SYNTHETIC_META if synthetic else {b"jinyu.fabricated": b"true"}
    for rel, table in {
        "population/persons.parquet": make_persons(),
        "social_insurance/contributions.parquet": make_contributions(),
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.replace_schema_metadata(meta), path)
        path.chmod(0o644)
        path.parent.chmod(0o755)
    root.chmod(0o755)
    return root


def expected_counts(root: Path) -> dict[str, tuple[int, int]]:
    """county -> (rows, clamped age sum), computed straight with DuckDB."""
    import duckdb

    path = root / "population" / "persons.parquet"
    rows = duckdb.sql(
        f"SELECT county_code, COUNT(*), SUM(LEAST(GREATEST(age, 0), 100)) "
        f"FROM read_parquet('{path}') GROUP BY 1"
    ).fetchall()
    return {county: (int(n), int(s)) for county, n, s in rows}
