"""NULLs stay NULL through clamping (issue 15 point 3): on synthetic data with NULLs in
bounded columns, the exact (pre-noise) results of the compiled Plan equal DuckDB's own
COUNT(col), SUM(col) and AVG(col) on the raw table, and a quantile's histogram holds
only the non-null values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from sandbox.catalog import Catalog, load_catalog
from sandbox.compiler import compile_query
from sandbox.grants import Grants, load_grants
from sandbox.plan import Plan
from sandbox.synthetic import generate_synthetic
from tests.compiler.compiler_db import run_plan
from tests.policy_factory import dataset, make_policies

UNITS = 3_000
# (grant, table, column): monthly_income is [0, 50000] with 5% NULLs; insured.age is
# [16, 100] (a lower bound that is not 0) and made 20% NULL here
CASES = [
    ("g-jinshu-employment", "persons", "monthly_income"),
    ("g-jinshu-employment", "persons", "age"),
    ("g-jinshu-pension", "insured", "age"),
]


def _nullable_age(data: dict[str, Any]) -> None:
    table = dataset(data, "social_insurance")["tables"][0]
    next(c for c in table["columns"] if c["name"] == "age")["null_rate"] = 0.2
    persons = dataset(data, "population")["tables"][0]
    next(c for c in persons["columns"] if c["name"] == "age")["null_rate"] = 0.1


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, Grants, Path]:
    tmp = tmp_path_factory.mktemp("nulls")
    policies = make_policies(tmp, catalog=_nullable_age)
    catalog = load_catalog(policies)
    grants = load_grants(policies, catalog)
    data = tmp / "data"
    generate_synthetic(data, catalog, ["population", "social_insurance"], units=UNITS, seed=5)
    return catalog, grants, data


def _setup(
    world: tuple[Catalog, Grants, Path], grant_id: str, table: str, sql: str
) -> tuple[Any, Plan]:
    """A DuckDB with ``table`` as a view over its synthetic file, and ``sql`` compiled."""
    catalog, grants, data = world
    grant = grants.grant(grant_id)
    found = catalog.find_table(table)
    assert grant is not None and found is not None
    con = duckdb.connect(":memory:")
    path = str(data / found[1].file)
    con.execute(f"CREATE VIEW \"{table}\" AS SELECT * FROM read_parquet('{path}')")
    return con, compile_query(sql, catalog=catalog, grant=grant)


@pytest.mark.parametrize(("grant_id", "table", "column"), CASES)
def test_nulls_are_skipped_as_duckdb_skips_them(
    world: tuple[Catalog, Grants, Path], grant_id: str, table: str, column: str
) -> None:
    aggs = [f"{f}({column})" for f in ("COUNT", "SUM", "AVG", "STDDEV_POP", "MEDIAN")]
    con, plan = _setup(world, grant_id, table, f"SELECT {', '.join(aggs)} FROM {table}")
    *expected, nulls = con.execute(
        f"SELECT {', '.join(aggs[:4])}, COUNT(*) FILTER (WHERE {column} IS NULL) FROM {table}"
    ).fetchall()[0]
    assert nulls > 0  # the data has NULLs, else the test proves nothing
    exact, post = run_plan(con, plan)
    (count, total, mean, sd, _median) = post[0]
    assert count == expected[0]
    assert total == pytest.approx(expected[1], rel=1e-12)
    assert mean == pytest.approx(expected[2], rel=1e-12)
    assert sd == pytest.approx(expected[3], rel=1e-9)
    # the median's histogram holds the non-null values only (a NULL is in no slot)
    hist = next(m.name for m in plan.measures if m.kind == "histogram")
    (slots,) = exact.column(hist).to_pylist()
    assert sum(n for _, n in slots) == expected[0]
