"""Issue 17: COUNT(__unit) for COUNT(DISTINCT __unit) where they are equal.

When the runner reads one private table declared ``rows_per_unit: 1`` and nothing else
(sandbox/datacheck.py refuses such a table with a repeated or NULL unit before any
query reads it), a unit has at most one row per group, so the compiler counts units
with COUNT(__unit). Each plan is compared with its COUNT(DISTINCT __unit) form on
fabricated one-row-per-unit data with NULLs, edge values and empty groups; verify.py
accepts the cheap form only in that case.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from compiler_db import make_db

from sandbox.catalog import Catalog
from sandbox.compiler import compile_query
from sandbox.compiler.verify import verify_plan
from sandbox.errors import SystemFailure
from sandbox.grants import Grant, Grants

EMP = "g-jinshu-employment"
QUERIES = [
    "SELECT occupation, COUNT(DISTINCT person_id) AS u, SUM(age) AS s FROM persons "
    "GROUP BY occupation",
    "SELECT county_code, COUNT(DISTINCT person_id) FILTER (WHERE age > 30) AS u, "
    "COUNT(*) AS n FROM persons GROUP BY county_code",
    "SELECT occupation, SUM(monthly_income) AS s FROM persons WHERE age > 40 "
    "GROUP BY occupation",  # the selection measure __units
    "SELECT sex, COUNT(DISTINCT person_id) AS u FROM persons WHERE age > 1000 GROUP BY sex",
]


def _grant(grants: Grants, gid: str) -> Grant:
    g = grants.grant(gid)
    assert g is not None
    return g


def _distinct(sql: str) -> str:
    return sql.replace("COUNT(__unit)", "COUNT(DISTINCT __unit)").replace(
        "COUNT(CASE", "COUNT(DISTINCT CASE"
    )


def _edges(con: Any, catalog: Catalog) -> None:
    """New units (one row each) whose other columns are NULL or extreme."""
    found = catalog.find_table("persons")
    assert found is not None
    dataset, table = found
    edge = {"INTEGER": [None, 2**31 - 1], "BIGINT": [None, -(2**63)], "DOUBLE": [None, 1e308]}
    for i in range(4):
        row = [
            f"edge{i}"
            if c.name == dataset.privacy_unit
            else (edge.get(c.type, [None, None])[i % 2] if i % 2 == 0 or c.type in edge else None)
            for c in table.columns
        ]
        con.execute(f"INSERT INTO persons VALUES ({', '.join('?' * len(row))})", row)


@pytest.mark.parametrize("sql", QUERIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_of_units_is_the_distinct_count(
    sql: str, seed: int, catalog: Catalog, grants: Grants
) -> None:
    plan = compile_query(sql, catalog=catalog, grant=_grant(grants, EMP))
    assert "COUNT(DISTINCT" not in plan.sql
    assert "COUNT(__unit)" in plan.sql or "COUNT(CASE" in plan.sql
    con = make_db(catalog, ["persons"], units=500, seed=seed)
    _edges(con, catalog)
    (dups,) = con.sql("SELECT COUNT(*) - COUNT(DISTINCT person_id) FROM persons").fetchall()[0]
    assert dups == 0  # what datacheck guarantees for a rows_per_unit: 1 table
    ours = sorted(con.sql(plan.sql).fetchall(), key=repr)
    before = sorted(con.sql(_distinct(plan.sql)).fetchall(), key=repr)
    assert ours == before
    assert ours or "1000" in sql


def test_a_join_keeps_the_distinct_count(catalog: Catalog, grants: Grants) -> None:
    sql = (
        "SELECT insured.county_code, COUNT(DISTINCT insured.person_id) AS n FROM insured "
        "JOIN payments ON insured.person_id = payments.person_id GROUP BY insured.county_code"
    )
    grant = _grant(grants, "g-jinshu-pension")
    plan = compile_query(sql, catalog=catalog, grant=grant)
    assert "COUNT(DISTINCT __unit)" in plan.sql
    altered = dataclasses.replace(
        plan, sql=plan.sql.replace("COUNT(DISTINCT __unit)", "COUNT(__unit)")
    )
    with pytest.raises(SystemFailure) as info:
        verify_plan(altered, catalog, grant)
    assert any("counts rows, not units" in p for p in info.value.details["problems"])


def test_the_cheap_form_passes_verification(catalog: Catalog, grants: Grants) -> None:
    grant = _grant(grants, EMP)
    plan = compile_query(QUERIES[0], catalog=catalog, grant=grant)
    verify_plan(plan, catalog, grant)
    assert dataclasses.replace(plan, sql=_distinct(plan.sql)) != plan
    verify_plan(dataclasses.replace(plan, sql=_distinct(plan.sql)), catalog, grant)


def test_the_data_check_itself_counts_distinct_units(catalog: Catalog, grants: Grants) -> None:
    # datacheck.py's query is what makes the cheap form valid: it must not use it
    sql = "SELECT COUNT(*) AS n, COUNT(DISTINCT person_id) AS units FROM persons"
    grant = _grant(grants, EMP)
    plan = compile_query(sql, catalog=catalog, grant=grant, unit_rows_checked=False)
    assert "COUNT(DISTINCT __unit)" in plan.sql
    assert "COUNT(__unit)" in compile_query(sql, catalog=catalog, grant=grant).sql
