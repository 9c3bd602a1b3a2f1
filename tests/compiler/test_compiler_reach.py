"""Issue 16, analyst reach: GROUP BY CASE buckets over filter columns, CTEs and
subqueries in FROM inlined as views, per-unit pre-aggregation — what they compile to,
what the second check (verify.py) holds them to, and the hostile variants."""

from __future__ import annotations

import dataclasses

import pytest

from sandbox.catalog import Catalog
from sandbox.compiler import compile_query
from sandbox.compiler.verify import verify_plan
from sandbox.errors import QueryRefused, SystemFailure
from sandbox.grants import Grant, Grants
from sandbox.plan import KeySpec


@pytest.fixture(scope="module")
def emp(grants: Grants) -> Grant:
    g = grants.grant("g-jinshu-employment")
    assert g is not None
    return g


@pytest.fixture(scope="module")
def pen(grants: Grants) -> Grant:
    g = grants.grant("g-jinshu-pension")
    assert g is not None
    return g


def refused(sql: str, catalog: Catalog, grant: Grant) -> QueryRefused:
    with pytest.raises(QueryRefused) as info:
        compile_query(sql, catalog=catalog, grant=grant)
    return info.value


def problems(plan: object, catalog: Catalog, grant: Grant) -> list[str]:
    with pytest.raises(SystemFailure) as info:
        verify_plan(plan, catalog, grant)  # type: ignore[arg-type]
    assert info.value.code == "INTERNAL"
    return list(info.value.details["problems"])


# -- GROUP BY CASE buckets -----------------------------------------------------------------

BANDS = (
    "SELECT CASE WHEN monthly_income < 2000 THEN 'low' WHEN monthly_income < 8000 "
    "THEN 'mid' ELSE 'high' END AS band, COUNT(*) AS n FROM persons GROUP BY band"
)


def test_a_bucket_over_a_filter_column_is_a_public_key(catalog: Catalog, emp: Grant) -> None:
    plan = compile_query(BANDS, catalog=catalog, grant=emp)
    assert plan.keys[0].public == ("low", "mid", "high")
    assert plan.max_groups == 3 and not plan.private_keys
    assert not any(m.selection for m in plan.measures)
    assert any("literal outputs of its CASE" in n for n in plan.notes)


def test_a_bucket_without_else_drops_the_unmatched_rows(catalog: Catalog, emp: Grant) -> None:
    sql = (
        "SELECT CASE WHEN monthly_income < 2000 THEN 'low' END AS band, COUNT(*) "
        "FROM persons GROUP BY band"
    )
    plan = compile_query(sql, catalog=catalog, grant=emp)
    assert plan.keys[0].public == ("low",)  # no NULL key: those rows are dropped


def test_a_bucket_over_group_columns_keeps_the_narrowed_domain(
    catalog: Catalog, emp: Grant
) -> None:
    """Over group columns with a public domain the key is evaluated over the domain as
    before, so WHERE still narrows it."""
    sql = (
        "SELECT CASE WHEN age < 18 THEN 'minor' WHEN age < 65 THEN 'adult' ELSE 'senior' "
        "END AS g, COUNT(*) FROM persons WHERE age < 30 GROUP BY g"
    )
    plan = compile_query(sql, catalog=catalog, grant=emp)
    assert plan.keys[0].public == ("minor", "adult")


def test_a_bucket_needs_filter_use_under_the_grant(catalog: Catalog, grants: Grants) -> None:
    sme = grants.grant("g-huaxin-sme")
    assert sme is not None
    err = refused(
        "SELECT CASE WHEN registered_capital < 10 THEN 'a' ELSE 'b' END AS k, COUNT(*) "
        "FROM enterprises GROUP BY k",
        catalog,
        sme,
    )
    assert err.code == "COLUMN_NOT_ALLOWED"


def test_group_by_a_filter_column_hints_at_buckets(catalog: Catalog, emp: Grant) -> None:
    err = refused(
        "SELECT monthly_income, COUNT(*) FROM persons GROUP BY monthly_income", catalog, emp
    )
    assert err.code == "COLUMN_NOT_ALLOWED"
    assert "GROUP BY CASE WHEN" in err.hint and "FILTER (WHERE" in err.hint


def test_verify_holds_a_bucket_to_its_literals(catalog: Catalog, emp: Grant) -> None:
    plan = compile_query(BANDS, catalog=catalog, grant=emp)
    verify_plan(plan, catalog, emp)
    # a THEN that reads a column is no bucket: its columns need 'group'
    altered = dataclasses.replace(plan, sql=plan.sql.replace("THEN 'low'", 'THEN "t0"."sex"'))
    assert any("without 'group'" in p for p in problems(altered, catalog, emp))
    # a public value that is not one of the CASE's literals, or a private bucket
    for public in (("low", "mid", "high", "secret"), None):
        key = KeySpec(plan.keys[0].name, plan.keys[0].source, public)
        altered = dataclasses.replace(plan, keys=(key,))
        assert any("bucket key" in p for p in problems(altered, catalog, emp))
