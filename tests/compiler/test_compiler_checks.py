"""The compiler's trust boundary (issue 21): the allowlist grammar that re-creates
every operator expression, and the second check that reads the generated SQL back.

The attack these tests pin: a quoted identifier in EXTRACT("...") became a sqlglot
Var whose text was written into the runner SQL unescaped, redefining the aggregated
value as any expression over any column."""

from __future__ import annotations

import dataclasses
import re

import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from sandbox.catalog import Catalog
from sandbox.compiler import compile_query
from sandbox.compiler.verify import verify_plan
from sandbox.errors import QueryRefused, SystemFailure
from sandbox.grants import Grant, Grants
from sandbox.plan import Plan
from tests.compiler.compiler_db import make_db, run_plan

# closes EXTRACT(...), then redefines the aggregated value unclamped
PAYLOAD = '"year FROM registered_on)) AS __k0, monthly_income*1e9 AS __v0 --"'
PAYLOAD_KEY = '"year FROM age) + (SELECT COUNT(*) FROM range(100000000)) --"'
CREDIT = '"year FROM d)) AS __k0, ascii(credit_code) AS __v0 --"'


@pytest.fixture(scope="module")
def emp(grants: Grants) -> Grant:
    g = grants.grant("g-jinshu-employment")
    assert g is not None
    return g


def _refused(sql: str, catalog: Catalog, grant: Grant) -> QueryRefused:
    with pytest.raises(QueryRefused) as info:
        compile_query(sql, catalog=catalog, grant=grant)
    return info.value


@pytest.mark.parametrize(
    "sql",
    [
        # in a SELECT expression (a GROUP BY key named by position)
        f"SELECT EXTRACT({PAYLOAD} FROM registered_on) AS y, SUM(age) FROM persons GROUP BY 1",
        # in the WHERE clause
        f"SELECT COUNT(*) FROM persons WHERE EXTRACT({PAYLOAD} FROM registered_on) > 2000",
        # in an aggregate's FILTER
        f"SELECT SUM(age) FILTER (WHERE EXTRACT({PAYLOAD} FROM registered_on) > 1) FROM persons",
        # in a GROUP BY key
        f"SELECT COUNT(*) FROM persons GROUP BY EXTRACT({PAYLOAD} FROM registered_on)",
        f"SELECT COUNT(*) FROM persons GROUP BY date_trunc({PAYLOAD}, registered_on)",
        # in a key with public values (evaluated on the host over the public domain)
        f"SELECT COUNT(*) FROM persons GROUP BY CASE WHEN EXTRACT({PAYLOAD_KEY} FROM age) "
        "> 1 THEN 1 ELSE 0 END",
        # in ORDER BY and HAVING (post-processing on the host)
        f"SELECT sex, COUNT(*) FROM persons GROUP BY sex ORDER BY EXTRACT({PAYLOAD} FROM sex)",
        f"SELECT sex, COUNT(*) FROM persons GROUP BY sex HAVING EXTRACT({PAYLOAD} FROM sex) > 1",
        # reading a never-usable column through the same hole
        f"SELECT COUNT(*) FROM persons GROUP BY EXTRACT({CREDIT} FROM registered_on)",
    ],
)
def test_extract_payload_is_refused_everywhere(sql: str, catalog: Catalog, emp: Grant) -> None:
    exc = _refused(sql, catalog, emp)
    assert exc.code in ("UNSUPPORTED_EXPRESSION", "UNSUPPORTED_FUNCTION")
    assert exc.line is not None  # located in the operator's query


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) FROM persons WHERE EXTRACT(year FROM registered_on) > 2020",
        "SELECT COUNT(*) FROM persons WHERE EXTRACT('month' FROM registered_on) = 3",
        "SELECT COUNT(*) FROM persons WHERE EXTRACT(dow FROM registered_on) = 1",
        "SELECT date_trunc('month', registered_on) AS m, COUNT(*) FROM persons GROUP BY 1",
        'SELECT COUNT(*) FROM persons GROUP BY date_trunc("year", registered_on)',
    ],
)
def test_date_parts_from_the_fixed_list_compile(sql: str, catalog: Catalog, emp: Grant) -> None:
    plan = compile_query(sql, catalog=catalog, grant=emp)
    verify_plan(plan, catalog, emp)


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        # a bare word outside a date-part slot
        ("SELECT COUNT(*) FROM persons WHERE EXTRACT(epochs FROM registered_on) > 1", None),
        # functions sqlglot does not know (Anonymous) are refused by default
        ("SELECT COUNT(*) FROM persons WHERE prefix(sex, 'F')", "UNSUPPORTED_FUNCTION"),
        ("SELECT COUNT(*) FROM persons WHERE date_part('year', registered_on) > 1", None),
        # an argument the grammar does not list (LIKE ... ESCAPE, CAST ... FORMAT)
        ("SELECT COUNT(*) FROM persons WHERE sex LIKE 'F!%' ESCAPE '!'", None),
        # numbers must be plain decimals; escape strings are refused
        ("SELECT COUNT(*) FROM persons WHERE sex = e'F\\x27'", None),
        ("SELECT COUNT(*) FROM persons WHERE CAST(age AS DECIMAL(99, 2)) > 1", None),
    ],
)
def test_anything_outside_the_grammar_is_refused(
    sql: str, code: str | None, catalog: Catalog, emp: Grant
) -> None:
    exc = _refused(sql, catalog, emp)
    assert exc.code in ((code,) if code else ("UNSUPPORTED_EXPRESSION", "UNSUPPORTED_FUNCTION"))


def test_string_literals_are_recreated_not_pasted(catalog: Catalog, emp: Grant) -> None:
    """A literal that tries to close itself stays one value: nothing matches it."""
    sql = "SELECT COUNT(*) FROM persons WHERE sex = 'F'' OR 1=1 OR sex = ''M'"
    plan = compile_query(sql, catalog=catalog, grant=emp)
    con = make_db(catalog, ["persons"], units=20)
    exact, _ = run_plan(con, plan)
    assert exact.column("m0").to_pylist() == [0]


@pytest.mark.parametrize("alias", ['"a"" AS x"', '"n; --"', '"a\'b"', '" "'])
def test_output_names_are_plain_names(alias: str, catalog: Catalog, emp: Grant) -> None:
    exc = _refused(f"SELECT COUNT(*) AS {alias} FROM persons", catalog, emp)
    assert exc.code == "UNSUPPORTED_EXPRESSION"


def test_unicode_output_names_still_work(catalog: Catalog, emp: Grant) -> None:
    plan = compile_query('SELECT COUNT(*) AS "人数 2024" FROM persons', catalog=catalog, grant=emp)
    assert [o.name for o in plan.outputs] == ["人数 2024"]


# -- the second check catches a Plan altered after compilation ----------------------------

_QUERIES = [
    "SELECT sex, AVG(monthly_income), MEDIAN(age), STDDEV(age) FROM persons "
    "WHERE age > 20 GROUP BY sex",
    "SELECT occupation, SUM(monthly_income) FILTER (WHERE age > 30) AS s FROM persons "
    "GROUP BY occupation",
]
_CLAMP = 'LEAST(GREATEST("t0"."monthly_income", 0.0), 50000.0)'
_GUARD = '"t0"."monthly_income" IS NULL'


@pytest.mark.parametrize(
    ("sql", "old", "new", "problem"),
    [
        (_QUERIES[0], _CLAMP, '"t0"."monthly_income" * 1e9', "not clamped"),
        (_QUERIES[1], _CLAMP, '"t0"."monthly_income" * 1e9', "not clamped"),
        (_QUERIES[0], _CLAMP, 'LEAST(GREATEST("t0"."monthly_income", 0.0), 5e9)', "not clamped"),
        # the NULL guard tests another value, or is no NULL test, or gives a number
        (_QUERIES[0], _GUARD, '"t0"."age" IS NULL', "not clamped"),
        (_QUERIES[1], _GUARD, '"t0"."monthly_income" IS NOT NULL', "not clamped"),
        (_QUERIES[0], _GUARD, '"t0"."monthly_income" > 0', "not clamped"),
        (
            _QUERIES[1],
            f"{_GUARD}\n        THEN NULL",
            f"{_GUARD}\n        THEN 1",
            "not clamped",
        ),
        (_QUERIES[0], '"t0"."age" > ', 'length("t0"."id_number") > ', "without 'filter'"),
        (_QUERIES[1], '"t0"."age" > ', 'length("t0"."id_number") > ', "without 'filter'"),
        (_QUERIES[0], '"t0"."sex"', '"t0"."name"', "without 'group'"),
        (_QUERIES[1], '"t0"."occupation"', '"t0"."name"', "without 'group'"),
        (_QUERIES[0], '"t0"."person_id" AS __unit', '"t0"."sex" AS __unit', "privacy unit"),
        (_QUERIES[1], '"persons" AS t0', '"enterprises" AS t0', "table enterprises"),
        (_QUERIES[0], "FROM __rows\nGROUP BY", 'FROM __rows, "persons"\nGROUP BY', "final"),
        (
            _QUERIES[1],
            "FROM __rows\nGROUP BY",
            "FROM __rows\nWHERE __k0 > 0\nGROUP BY",
            "final clauses",
        ),
    ],
)
def test_a_plan_altered_after_compilation_is_caught(
    sql: str, old: str, new: str, problem: str, catalog: Catalog, emp: Grant
) -> None:
    plan = compile_query(sql, catalog=catalog, grant=emp)
    verify_plan(plan, catalog, emp)  # the compiled plan passes
    assert old in plan.sql
    altered = dataclasses.replace(plan, sql=plan.sql.replace(old, new))
    with pytest.raises(SystemFailure) as info:
        verify_plan(altered, catalog, emp)
    assert info.value.code == "INTERNAL"
    assert any(problem in p for p in info.value.details["problems"]), info.value.details


@pytest.mark.parametrize("sql", _QUERIES)
def test_an_unguarded_clamp_is_caught(sql: str, catalog: Catalog, emp: Grant) -> None:
    """LEAST(GREATEST(x, lo), hi) alone turns a NULL into lo (issue 15): it is not a clamp."""
    plan = compile_query(sql, catalog=catalog, grant=emp)

    def bare(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Case) and isinstance(node.args.get("default"), exp.Least):
            return node.args["default"]
        return node

    tree = sqlglot.parse_one(plan.sql, read="duckdb").transform(bare)
    altered = dataclasses.replace(plan, sql=tree.sql(dialect="duckdb", pretty=True))
    assert altered.sql != plan.sql and _CLAMP in altered.sql
    with pytest.raises(SystemFailure) as info:
        verify_plan(altered, catalog, emp)
    assert any("not clamped" in p for p in info.value.details["problems"]), info.value.details


def test_altered_measure_bounds_are_caught(catalog: Catalog, emp: Grant) -> None:
    """The privacy layer's sensitivity comes from Measure.upper; it must match the SQL."""
    plan = compile_query("SELECT SUM(monthly_income) FROM persons", catalog=catalog, grant=emp)
    m = dataclasses.replace(plan.measures[0], upper=1.0)
    with pytest.raises(SystemFailure):
        verify_plan(dataclasses.replace(plan, measures=(m,)), catalog, emp)


def test_altered_post_sql_is_caught(catalog: Catalog, emp: Grant) -> None:
    plan = compile_query("SELECT COUNT(*) AS n FROM persons", catalog=catalog, grant=emp)
    altered = dataclasses.replace(plan, post_sql=plan.post_sql.replace("noisy", "persons"))
    with pytest.raises(SystemFailure):
        verify_plan(altered, catalog, emp)


def test_altered_row_bound_is_caught(catalog: Catalog, grants: Grants) -> None:
    grant = grants.grant("g-jinshu-pension")
    assert grant is not None
    plan = compile_query("SELECT SUM(amount) FROM payments", catalog=catalog, grant=grant)
    assert plan.unit_rows > 1
    limit = f"__rn <= {plan.unit_rows}"
    assert limit in plan.sql
    altered = dataclasses.replace(plan, sql=plan.sql.replace(limit, "__rn <= 100000"))
    with pytest.raises(SystemFailure):
        verify_plan(altered, catalog, grant)


# -- fuzzing: hostile text in every slot ---------------------------------------------------

_HOSTILE = st.sampled_from(
    [
        '"x"" FROM t)) AS __v0, name AS __k0 --"',
        '"year FROM registered_on) --"',
        "'it''s'",
        "'--'",
        "'/* */'",
        "'秘密'",
        '"ｙｅａｒ"',
        '"年"',
        "e'\\x27'",
        "$$x$$",
        "'a' /* c */",
        "0x1f",
        "1e999",
        '"__v0"',
        "year",
        "month",
        "'month'",
        '"month"',
        "age",
        "sex",
        "monthly_income",
        "credit_code",
        "name",
        "1",
        "-2.5",
        "NULL",
        "TRUE",
    ]
)
_FUNCS = st.sampled_from(
    [
        "EXTRACT({a} FROM registered_on)",
        "date_trunc({a}, registered_on)",
        "CAST({a} AS INTEGER)",
        "COALESCE(age, {a})",
        "CASE WHEN sex = {a} THEN 1 ELSE 0 END",
        "SUBSTRING(sex, {a}, 1)",
        "FLOOR(age / {a}) * 10",
        "{a}",
        "age + {a}",
        "LOWER({a})",
    ]
)


@st.composite
def hostile_queries(draw: st.DrawFn) -> str:
    def slot() -> str:
        return draw(_FUNCS).format(a=draw(_HOSTILE))

    alias = draw(st.sampled_from(["", " AS k", ' AS "k"" --"', " AS 人"]))
    agg = draw(
        st.sampled_from(
            [
                "COUNT(*)",
                "SUM(age)",
                "AVG(monthly_income)",
                "MEDIAN(age)",
                "SUM(age) FILTER (WHERE {s})",
                "COUNT(*) FILTER (WHERE {s})",
            ]
        )
    ).format(s=slot())
    key = slot()
    sql = f"SELECT {key}{alias}, {agg} FROM persons"
    if draw(st.booleans()):
        sql += f" WHERE {slot()}"
    sql += f" GROUP BY {key}"
    if draw(st.booleans()):
        sql += f" HAVING {agg} > {draw(_HOSTILE)}"
    if draw(st.booleans()):
        sql += f" ORDER BY {draw(st.sampled_from(['2', agg, key]))}"
    return sql


def _idents(sql: str) -> set[str]:
    tree = sqlglot.parse_one(sql, read="duckdb")
    return {i.this for i in tree.find_all(exp.Identifier)} | {
        str(v.this) for v in tree.find_all(exp.Var)
    }


_OURS = re.compile(r"__(unit|r|gr|rn|rows|groups|bounded|[kv]\d+)|t\d+|noisy")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sql=hostile_queries())
def test_hostile_slots_never_reach_the_sql(sql: str, catalog: Catalog, grants: Grants) -> None:
    """Every accepted query passes the second check, and every name in its SQL is a
    catalogue name, one of ours or a plain output name."""
    grant = grants.grant("g-jinshu-employment")
    assert grant is not None
    try:
        plan: Plan = compile_query(sql, catalog=catalog, grant=grant)
    except QueryRefused as exc:
        assert exc.code and exc.message
        return
    verify_plan(plan, catalog, grant)
    found = catalog.find_table("persons")
    assert found is not None
    names = {c.name for c in found[1].columns} | {"persons"}
    outputs = {k.name for k in plan.keys} | {m.name for m in plan.measures}
    outputs |= {o.name for o in plan.outputs}
    for name in _idents(plan.sql) | _idents(plan.post_sql):
        assert (
            name in names
            or name in outputs
            or _OURS.fullmatch(name)
            or name.upper() in {"YEAR", "MONTH"}
        ), (name, sql)
    for name in outputs:
        assert re.fullmatch(r"\w[\w \-]*", name), name


def test_a_filter_no_public_value_passes_releases_nothing(catalog: Catalog, emp: Grant) -> None:
    """Found by the fuzz test: an empty public list became `IN ()`, which DuckDB reads
    as a function call; it is now FALSE."""
    sql = (
        "SELECT CASE WHEN sex = 'F' THEN 1 ELSE 0 END AS k, COUNT(*) FROM persons "
        "WHERE CASE WHEN sex = 'month' THEN 1 ELSE 0 END GROUP BY 1"
    )
    plan = compile_query(sql, catalog=catalog, grant=emp)
    assert plan.keys[0].public == ()
    exact, _ = run_plan(make_db(catalog, ["persons"], units=20), plan)
    assert exact.num_rows == 0
