"""The runner's projection step (sandbox_runner.project), in process: a table's usable
columns and no others, categories only on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sandbox_runner.contract import PROJECT_DIR, PROJECT_KIND, SPEC_VERSION, STATUS_FILE
from sandbox_runner.project import BATCH_ROWS, execute_projection


def _data(tmp_path: Path, rows: int = 10) -> Path:
    data = tmp_path / "data"
    (data / "population").mkdir(parents=True)
    table = pa.table(
        {
            "person_id": [f"p{i}" for i in range(rows)],
            "name": [f"SECRET-NAME-{i}" for i in range(rows)],
            "age": pa.array([i % 90 if i % 7 else None for i in range(rows)], pa.int32()),
        }
    )
    pq.write_table(table, data / "population" / "persons.parquet")
    return data


def _run(tmp_path: Path, tables: object, **extra: object) -> tuple[dict[str, object], Path]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    spec = {"version": SPEC_VERSION, "kind": PROJECT_KIND, "tables": tables, **extra}
    execute_projection(spec, data_dir=tmp_path / "data", out_dir=out)
    return json.loads((out / STATUS_FILE).read_text()), out


def test_only_the_named_columns_are_written_values_and_types_unchanged(tmp_path: Path):
    rows = BATCH_ROWS + 5  # more than one batch
    _data(tmp_path, rows)
    status, out = _run(tmp_path, {"population/persons.parquet": ["person_id", "age"]})
    assert status == {"status": "ok"}
    got = pq.read_table(out / PROJECT_DIR / "0.parquet")
    raw = pq.read_table(tmp_path / "data" / "population" / "persons.parquet")
    assert got.schema.names == ["person_id", "age"]
    assert got.equals(raw.select(["person_id", "age"]))
    assert b"SECRET-NAME" not in (out / PROJECT_DIR / "0.parquet").read_bytes()


@pytest.mark.parametrize(
    ("tables", "extra", "category"),
    [
        ({"population/persons.parquet": ["age", "missing"]}, {}, "plan_mismatch"),
        ({"population/persons.parquet": []}, {}, "plan_mismatch"),
        ({"population/persons.parquet": ["age", "age"]}, {}, "plan_mismatch"),
        ({"population/persons.parquet": ["a-b"]}, {}, "plan_mismatch"),
        ({"../persons.parquet": ["age"]}, {}, "plan_mismatch"),
        ({"population/../x": ["age"]}, {}, "plan_mismatch"),
        ({"population/other.parquet": ["age"]}, {}, "data_missing"),
        ({}, {}, "plan_mismatch"),
        ({"population/persons.parquet": ["age"]}, {"sql": "SELECT 1"}, "plan_mismatch"),
    ],
)
def test_a_bad_spec_fails_with_a_category_and_writes_nothing(
    tmp_path: Path, tables: object, extra: dict[str, object], category: str
):
    _data(tmp_path)
    status, out = _run(tmp_path, tables, **extra)
    assert status == {"status": "failed", "category": category}
    assert not list(out.glob("**/*.parquet"))
