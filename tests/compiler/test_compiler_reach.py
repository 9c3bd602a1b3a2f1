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


# -- views -------------------------------------------------------------------------------


def test_a_view_compiles_to_the_inline_query(catalog: Catalog, emp: Grant) -> None:
    """The inlined view and the query written inline give the same runner SQL."""
    view = (
        "WITH adults AS (SELECT sex, monthly_income AS income FROM persons WHERE age >= 18) "
        "SELECT sex, AVG(income) AS m FROM adults GROUP BY sex"
    )
    inline = "SELECT sex, AVG(monthly_income) AS m FROM persons WHERE age >= 18 GROUP BY sex"
    a = compile_query(view, catalog=catalog, grant=emp)
    b = compile_query(inline, catalog=catalog, grant=emp)
    assert a.sql == b.sql and a.measures == b.measures and a.keys == b.keys


def test_a_view_cannot_reach_a_hidden_table(catalog: Catalog, emp: Grant) -> None:
    sql = "WITH w AS (SELECT age FROM persons) SELECT COUNT(*) FROM w WHERE sex = 'F'"
    assert refused(sql, catalog, emp).code == "UNKNOWN_COLUMN"


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("WITH persons AS (SELECT * FROM persons) SELECT COUNT(*) FROM persons", "SUBQUERY"),
        (
            "WITH w AS (SELECT person_id AS p FROM persons) SELECT p, COUNT(*) FROM w GROUP BY p",
            "IDENTIFIER_EXPOSED",
        ),  # fmt: skip
        (
            "WITH w AS (SELECT name AS n FROM persons) SELECT n, COUNT(*) FROM w GROUP BY n",
            "COLUMN_NOT_ALLOWED",
        ),  # fmt: skip
    ],
)
def test_hostile_views_are_refused(sql: str, code: str, catalog: Catalog, emp: Grant) -> None:
    err = refused(sql, catalog, emp)
    assert err.code == code and err.hint


# -- per-unit pre-aggregation ----------------------------------------------------------------

PER_UNIT = (
    "SELECT i.sex, AVG(t.total) AS mean_total FROM (SELECT person_id, SUM(amount) AS total "
    "FROM payments GROUP BY person_id) t JOIN insured i ON i.person_id = t.person_id "
    "GROUP BY i.sex"
)


def test_per_unit_bounds_come_from_the_catalogue(catalog: Catalog, pen: Grant) -> None:
    plan = compile_query(PER_UNIT, catalog=catalog, grant=pen)
    assert plan.unit_rows == 1 and plan.unit_groups == 1
    s = next(m for m in plan.measures if m.kind == "sum")
    assert (s.lower, s.upper) == (0.0, 12 * 5000.0)  # rows_per_unit x amount's bounds
    assert s.column == "t.total"
    assert set(plan.tables) == {"payments", "insured"}
    assert "GROUP BY\n    __unit" in plan.sql and "__rn <= 12" in plan.sql
    assert any("bounds [0, 60000]" in n for n in plan.notes)


def test_per_unit_sensitivity_in_explain(catalog: Catalog, pen: Grant) -> None:
    from sandbox.cli.policy import plan_summary

    plan = compile_query(PER_UNIT, catalog=catalog, grant=pen)
    summary = plan_summary(plan)
    sums = [m for m in summary["measures"] if m["kind"] == "sum"]
    assert sums and sums[0]["bounds"] == [0.0, 60000.0]
    assert "1 × 60000" in sums[0]["sensitivity"]
    assert summary["bounding"]["unit_rows"] == 1


_ALTER = [
    ("__rn <= 12", "__rn <= 100", "not bounded in the per-unit stage"),
    (
        'LEAST(GREATEST("u0"."amount", 0.0), 5000.0)',
        '"u0"."amount" * 1e9',
        "not clamped",
    ),
    ("60000.0", "1e12", "not clamped"),
    ("GROUP BY\n    __unit\n)", "GROUP BY\n    __unit,\n    __w0\n)", "per-unit stage shape"),
    ('__unit AS "person_id"', '__w0 AS "person_id"', "per-unit stage unit column"),
    ("CAST(SUM(__w0) AS DOUBLE)", "MAX(__w0)", "per-unit value"),
    (
        "FROM __perunit AS t0",
        'FROM __perunit AS t0\n  JOIN __perunit AS t2 ON "t2"."person_id" = "t0"."person_id"',
        "read twice",
    ),
    ('JOIN "insured" AS t1', 'JOIN "payments" AS t1', "rows per unit above"),
]


@pytest.mark.parametrize(("old", "new", "problem"), _ALTER)
def test_verify_holds_the_per_unit_stages(
    old: str, new: str, problem: str, catalog: Catalog, pen: Grant
) -> None:
    plan = compile_query(PER_UNIT, catalog=catalog, grant=pen)
    verify_plan(plan, catalog, pen)
    assert old in plan.sql, plan.sql
    altered = dataclasses.replace(plan, sql=plan.sql.replace(old, new))
    found = problems(altered, catalog, pen)
    assert any(problem in p for p in found), found


def test_verify_holds_per_unit_uses_to_the_grant(catalog: Catalog, grants: Grants) -> None:
    """The sme grant lets registered_capital be aggregated, not filtered: its per-unit
    sum may not be filtered either, in the Plan's SQL as in the query."""
    sme = grants.grant("g-huaxin-sme")
    assert sme is not None
    sql = (
        "SELECT AVG(c) FROM (SELECT enterprise_id, SUM(registered_capital) AS c "
        "FROM enterprises GROUP BY enterprise_id) t"
    )
    plan = compile_query(sql, catalog=catalog, grant=sme)
    verify_plan(plan, catalog, sme)
    assert "FROM __perunit AS t0\n)" in plan.sql
    altered = dataclasses.replace(
        plan,
        sql=plan.sql.replace(
            "FROM __perunit AS t0\n)", 'FROM __perunit AS t0\n  WHERE "t0"."__p0" > 100\n)'
        ),
    )
    assert any("without 'filter'" in p for p in problems(altered, catalog, sme))
    err = refused(sql + " WHERE c > 100", catalog, sme)
    assert err.code == "COLUMN_NOT_ALLOWED"


def test_a_plan_without_per_unit_stage_may_not_read_one(catalog: Catalog, pen: Grant) -> None:
    plan = compile_query("SELECT SUM(amount) FROM payments", catalog=catalog, grant=pen)
    altered = dataclasses.replace(
        plan, sql=plan.sql.replace('FROM "payments" AS t0', "FROM __perunit AS t0")
    )
    assert any("per-unit relation" in p for p in problems(altered, catalog, pen))


# -- hints for what stays refused name the workaround -------------------------------------------


@pytest.mark.parametrize(
    ("sql", "code", "workaround"),
    [
        ("SELECT year, LAG(SUM(amount)) OVER (ORDER BY year) FROM payments GROUP BY year",
         "WINDOW_FUNCTION", "after download"),
        ("SELECT year, SUM(amount) - LEAD(SUM(amount)) OVER (ORDER BY year) FROM payments "
         "GROUP BY year", "WINDOW_FUNCTION", "FILTER (WHERE year = 2024)"),
        ("SELECT person_id, SUM(amount) OVER (PARTITION BY person_id) FROM payments",
         "WINDOW_FUNCTION", "GROUP BY person_id"),
        ("SELECT year, RANK() OVER (ORDER BY COUNT(*)) FROM payments GROUP BY year",
         "WINDOW_FUNCTION", "ORDER BY n DESC LIMIT"),
        ("SELECT SUM(a.amount) FROM payments a JOIN payments b ON a.person_id = b.person_id",
         "UNSUPPORTED_JOIN", "growth after download"),
        ("SELECT COUNT(*) FROM payments PIVOT (SUM(amount) FOR year IN (2023, 2024))",
         "UNSUPPORTED_CLAUSE", "FILTER (WHERE"),
        ("SELECT COUNT(*) FROM payments WHERE year = 2023 UNION ALL "
         "SELECT COUNT(*) FROM payments WHERE year = 2024", "UNSUPPORTED_CLAUSE",
         "COUNT(*) FILTER (WHERE"),
        ("SELECT COUNT(*) FROM insured WHERE person_id IN (SELECT person_id FROM payments)",
         "SUBQUERY", "pre-aggregate per unit"),
        ("SELECT COUNT(DISTINCT year) FROM payments", "UNSUPPORTED_AGGREGATE",
         "count the groups"),
        ("SELECT AVG(total) FROM (SELECT year, SUM(amount) AS total FROM payments "
         "GROUP BY year) t", "SUBQUERY", "after download"),
    ],
)  # fmt: skip
def test_refusals_name_the_workaround(
    sql: str, code: str, workaround: str, catalog: Catalog, pen: Grant
) -> None:
    err = refused(sql, catalog, pen)
    assert err.code == code, err.message
    assert workaround in err.hint, err.hint


def test_growth_as_filter_columns_compiles(catalog: Catalog, pen: Grant) -> None:
    """The workaround the hints name is itself accepted."""
    plan = compile_query(
        "SELECT SUM(amount) FILTER (WHERE year = 2024) / SUM(amount) FILTER (WHERE year = "
        "2023) - 1 AS growth FROM payments",
        catalog=catalog,
        grant=pen,
    )
    assert [o.kind for o in plan.outputs] == ["derived"]


# -- hostile views: size, depth, names ---------------------------------------------------------


def _chain(n: int, expr: str) -> str:
    ctes = ["a0 AS (SELECT age AS x FROM persons)"]
    ctes += [f"a{i} AS (SELECT {expr} AS x FROM a{i - 1})" for i in range(1, n)]
    return "WITH " + ", ".join(ctes) + f" SELECT COUNT(*) FROM a{n - 1} WHERE x > 3"


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        (_chain(60, "x + x"), "QUERY_TOO_LARGE"),  # doubles at each level: 2^60 nodes
        (_chain(300, "x + 1"), "QUERY_TOO_DEEP"),
        ("WITH w AS (SELECT CASE " + " ".join(f"WHEN age < {i} THEN {i}" for i in range(60))
         + " END AS x FROM persons) SELECT COUNT(*) FROM w WHERE "
         + " OR ".join(f"x = {i}" for i in range(200)), "QUERY_TOO_LARGE"),
    ],
    ids=["doubling", "deep", "wide"],
)  # fmt: skip
def test_views_cannot_blow_up_the_compiler(
    sql: str, code: str, catalog: Catalog, emp: Grant
) -> None:
    import time

    start = time.perf_counter()
    err = refused(sql, catalog, emp)
    assert err.code == code, err.message
    assert time.perf_counter() - start < 5.0


def test_a_name_used_twice_beside_a_view_is_refused(catalog: Catalog, emp: Grant) -> None:
    sql = (
        "WITH w AS (SELECT county_code FROM persons) SELECT COUNT(*) FROM w "
        "JOIN divisions w ON w.county_code = w.county_code"
    )
    assert refused(sql, catalog, emp).code == "UNSUPPORTED_JOIN"


def test_order_by_an_output_alias_beside_a_view(catalog: Catalog, emp: Grant) -> None:
    """ORDER BY names an output before a view's column of the same name, as in SQL."""
    sql = (
        "WITH w AS (SELECT age, sex FROM persons) "
        "SELECT sex, COUNT(*) AS age FROM w GROUP BY sex ORDER BY age DESC"
    )
    plan = compile_query(sql, catalog=catalog, grant=emp)
    assert 'ORDER BY\n  "age" DESC' in plan.post_sql
