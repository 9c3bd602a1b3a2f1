"""The compiler: Plan contents, contribution bounding, clamping, public keys,
histogram slots, hostile input, and property tests (hypothesis)."""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.catalog import Catalog
from sandbox.compiler import compile_query, quantile_candidates
from sandbox.errors import QueryRefused
from sandbox.grants import Grant, Grants
from sandbox.plan import Plan
from tests.compiler.compiler_db import SECRET_PREFIX, make_db, run_plan


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


def compile_(sql: str, catalog: Catalog, grant: Grant) -> Plan:
    return compile_query(sql, catalog=catalog, grant=grant)


def refused(sql: str, catalog: Catalog, grant: Grant) -> QueryRefused:
    with pytest.raises(QueryRefused) as info:
        compile_query(sql, catalog=catalog, grant=grant)
    return info.value


# -- the Plan's identity and metadata ------------------------------------------------------


def test_plan_metadata(catalog: Catalog, emp: Grant) -> None:
    sql = (
        "SELECT d.city_name, COUNT(*) AS n FROM persons p "
        "JOIN divisions d ON p.county_code = d.county_code GROUP BY d.city_name"
    )
    plan = compile_(sql, catalog, emp)
    assert plan.query_sha256 == hashlib.sha256(sql.encode()).hexdigest()
    assert plan.dataset == "population"
    assert plan.dataset_version == "2026.3"
    assert plan.dataset_versions == {"population": "2026.3", "divisions": "2026.1"}
    assert plan.definition == "pure"
    assert plan.privacy_unit == "person_id"
    assert plan.tables == {
        "persons": "population/persons.parquet",
        "divisions": "divisions/divisions.parquet",
    }
    assert plan.result_columns == ["city_name", "m0"]
    assert plan.keys[0].public == tuple(catalog.keys("city_names"))
    assert Plan.from_json(plan.to_json()).digest() == plan.digest()


def test_zcdp_dataset_definition(catalog: Catalog, pen: Grant) -> None:
    assert compile_("SELECT COUNT(*) FROM payments", catalog, pen).definition == "zcdp"


def test_runner_sql_reads_only_plan_tables(catalog: Catalog, pen: Grant) -> None:
    plan = compile_("SELECT year, SUM(amount) FROM payments GROUP BY year", catalog, pen)
    referenced = set(re.findall(r'(?:FROM|JOIN) "([a-z_]+)"', plan.sql))
    assert referenced == set(plan.tables) == {"payments"}
    for word in ("read_parquet", "read_csv", "glob", "COPY", "ATTACH", "'/"):
        assert word not in plan.sql


# -- contribution bounding -----------------------------------------------------------------


def test_window_skipped_for_one_row_per_unit(catalog: Catalog, emp: Grant) -> None:
    plan = compile_("SELECT sex, AVG(age) FROM persons GROUP BY sex", catalog, emp)
    assert "ROW_NUMBER" not in plan.sql and "DENSE_RANK" not in plan.sql
    assert (plan.unit_rows, plan.unit_groups) == (1, 1)


def test_rows_capped_for_many_rows_per_unit(catalog: Catalog, pen: Grant) -> None:
    plan = compile_("SELECT COUNT(*), SUM(amount) FROM payments", catalog, pen)
    assert "ROW_NUMBER() OVER (PARTITION BY __unit" in plan.sql
    assert (plan.unit_rows, plan.unit_groups) == (12, 1)
    con = duckdb.connect(":memory:")
    con.execute(
        'CREATE TABLE payments (person_id VARCHAR, "year" INTEGER, "month" INTEGER, '
        "amount DOUBLE, payer_type VARCHAR)"
    )
    # one unit with 30 rows of 100 yuan, another with 3 rows
    rows = [("u0", 2024, 1 + i % 12, 100.0, "employer") for i in range(30)]
    rows += [("u1", 2024, i + 1, 100.0, "employer") for i in range(3)]
    con.executemany("INSERT INTO payments VALUES (?, ?, ?, ?, ?)", rows)
    for _ in range(5):  # the selection is random; the cap is not
        ((count, total),) = con.sql(plan.sql).fetchall()
        assert count == 12 + 3
        assert total == pytest.approx(100.0 * 15)


def test_groups_capped_per_unit(catalog: Catalog, pen: Grant) -> None:
    plan = compile_(
        "SELECT year, month, COUNT(*) AS n FROM payments GROUP BY year, month", catalog, pen
    )
    assert (plan.unit_rows, plan.unit_groups) == (12, 7)
    assert "DENSE_RANK() OVER (PARTITION BY __unit" in plan.sql
    con = duckdb.connect(":memory:")
    con.execute(
        'CREATE TABLE payments (person_id VARCHAR, "year" INTEGER, "month" INTEGER, '
        "amount DOUBLE, payer_type VARCHAR)"
    )
    rows = [("u0", 2019 + i // 12, 1 + i % 12, 50.0, "individual") for i in range(30)]
    con.executemany("INSERT INTO payments VALUES (?, ?, ?, ?, ?)", rows)
    for _ in range(5):
        result = con.sql(plan.sql).fetchall()
        assert len(result) <= 7  # one unit falls in at most 7 groups
        assert sum(r[2] for r in result) <= 12


def test_join_multiplies_unit_rows(catalog: Catalog, pen: Grant) -> None:
    plan = compile_(
        "SELECT i.sex, COUNT(*) FROM insured i JOIN payments p ON i.person_id = p.person_id "
        "GROUP BY i.sex",
        catalog,
        pen,
    )
    assert (plan.unit_rows, plan.unit_groups) == (12, 1)  # sex comes from a 1-row table


def test_duplicated_lookup_keys_do_not_multiply_rows(catalog: Catalog, emp: Grant) -> None:
    plan = compile_(
        "SELECT d.city_name, COUNT(*) AS n FROM persons p JOIN divisions d "
        "ON p.county_code = d.county_code GROUP BY d.city_name",
        catalog,
        emp,
    )
    assert plan.unit_rows == 1 and "ROW_NUMBER() OVER (PARTITION BY __unit" not in plan.sql
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE persons (person_id VARCHAR, county_code VARCHAR)")
    con.execute(
        "CREATE TABLE divisions (county_code VARCHAR, county_name VARCHAR, "
        "city_code VARCHAR, city_name VARCHAR)"
    )
    con.executemany("INSERT INTO persons VALUES (?, ?)", [("a", "140105"), ("b", "140105")])
    row = ("140105", "小店区", "1401", "太原市")
    con.executemany("INSERT INTO divisions VALUES (?, ?, ?, ?)", [row, row, row])
    assert con.sql(plan.sql).fetchall() == [("太原市", 2)]


def test_values_are_clamped(catalog: Catalog, emp: Grant) -> None:
    plan = compile_("SELECT SUM(monthly_income), SUM(age) FROM persons", catalog, emp)
    assert plan.measures[0].lower == 0.0 and plan.measures[0].upper == 50000.0
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE persons (person_id VARCHAR, age INTEGER, monthly_income DOUBLE)")
    con.executemany(
        "INSERT INTO persons VALUES (?, ?, ?)",
        [("a", 250, 1e12), ("b", -40, -5.0), ("c", 30, 100.0)],
    )
    ((income, age),) = con.sql(plan.sql).fetchall()
    assert income == 50000.0 + 0.0 + 100.0
    assert age == 100 + 0 + 30


def test_variance_measures(catalog: Catalog, emp: Grant) -> None:
    plan = compile_("SELECT VARIANCE(age) AS v, STDDEV_POP(age) AS s FROM persons", catalog, emp)
    kinds = [(m.kind, m.column, m.lower, m.upper) for m in plan.measures]
    assert kinds == [
        ("sum", "persons.age", 0.0, 100.0),
        ("count", "persons.age", None, None),
        ("sum", "persons.age^2", 0.0, 10000.0),
    ]
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE persons (person_id VARCHAR, age INTEGER)")
    ages = [20, 30, 40, 55]
    con.executemany("INSERT INTO persons VALUES (?, ?)", [(str(i), a) for i, a in enumerate(ages)])
    _, post = run_plan(con, plan)
    mean = sum(ages) / 4
    var_samp = sum((a - mean) ** 2 for a in ages) / 3
    var_pop = sum((a - mean) ** 2 for a in ages) / 4
    assert post[0][0] == pytest.approx(var_samp)
    assert post[0][1] == pytest.approx(math.sqrt(var_pop))


def test_mean_guards_non_positive_counts(catalog: Catalog, emp: Grant) -> None:
    plan = compile_("SELECT AVG(age) AS a FROM persons", catalog, emp)
    con = duckdb.connect(":memory:")
    for s, c, expected in [(500, 10, 50.0), (500, 0, None), (500, -3, None), (5000, 1, 100.0)]:
        got = con.sql(
            plan.post_sql.replace("FROM noisy", f"FROM (SELECT {s} AS m0, {c} AS m1) AS noisy")
        ).fetchall()
        assert got == [(expected,)]


# -- keys ----------------------------------------------------------------------------------


def test_public_keys_drop_junk(catalog: Catalog, emp: Grant) -> None:
    plan = compile_("SELECT county_code, COUNT(*) FROM persons GROUP BY county_code", catalog, emp)
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE persons (person_id VARCHAR, county_code VARCHAR)")
    con.executemany(
        "INSERT INTO persons VALUES (?, ?)",
        [("a", "140105"), ("b", "999999"), ("c", None), ("d", "140105")],
    )
    assert sorted(con.sql(plan.sql).fetchall()) == [("140105", 2)]


def test_derived_public_keys(catalog: Catalog, emp: Grant) -> None:
    plan = compile_(
        "SELECT FLOOR(age / 10) * 10 AS d, COUNT(*) FROM persons GROUP BY d", catalog, emp
    )
    assert plan.keys[0].public == tuple(float(v) for v in range(0, 101, 10))
    assert plan.max_groups == 11
    plan = compile_(
        "SELECT CASE WHEN age < 18 THEN 'child' WHEN age < 65 THEN 'adult' ELSE 'senior' END "
        "AS g, COUNT(*) FROM persons GROUP BY g",
        catalog,
        emp,
    )
    assert plan.keys[0].public == ("child", "adult", "senior")


def test_private_keys_get_selection_measure(catalog: Catalog, emp: Grant) -> None:
    # a count the query releases is thresholded itself (one measurement, as OpenDP)
    plan = compile_("SELECT occupation, COUNT(*) FROM persons GROUP BY occupation", catalog, emp)
    assert plan.private_keys and plan.keys[0].public is None
    sel = [m for m in plan.measures if m.selection]
    assert [(m.name, m.kind) for m in sel] == [("m0", "count")]
    assert [m.name for m in plan.measures] == ["m0"]
    assert plan.max_groups == 10_000
    # a units count is preferred (each unit adds 1 to a group), a filtered count is not used
    units = compile_(
        "SELECT occupation, COUNT(*) AS n, COUNT(DISTINCT person_id) AS u FROM persons "
        "GROUP BY occupation",
        catalog,
        emp,
    )
    assert [(m.kind, m.selection) for m in units.measures] == [
        ("count", False),
        ("count_units", True),
    ]
    for sql in (
        "SELECT occupation, SUM(monthly_income) FROM persons GROUP BY occupation",
        "SELECT occupation, COUNT(*) FILTER (WHERE age > 30) FROM persons GROUP BY occupation",
    ):
        other = compile_(sql, catalog, emp)
        sel = [m for m in other.measures if m.selection]
        assert [(m.name, m.kind) for m in sel] == [("__units", "count_units")], sql


# -- quantiles -----------------------------------------------------------------------------


def _reference_slot(v: float, cands: tuple[float, ...]) -> int:
    below = sum(1 for c in cands if c < v)
    return 2 * below + (1 if v in cands else 0)


@pytest.mark.parametrize(
    "column,values",
    [
        ("age", [0, 1, 37, 37, 99, 100, 150, -3]),
        (
            "monthly_income",
            [0.0, 0.01, 50.05005005005005, 50.06, 1234.5, 49999.99, 50000.0, 7.0e9, -1.0],
        ),
    ],
)
def test_histogram_slots_match_definition(
    catalog: Catalog, emp: Grant, column: str, values: list[float]
) -> None:
    plan = compile_(f"SELECT MEDIAN({column}) FROM persons", catalog, emp)
    (m,) = plan.measures
    assert m.kind == "histogram" and m.alpha == 0.5 and m.candidates is not None
    assert m.candidates == quantile_candidates(m.lower, m.upper, m.integer)
    con = duckdb.connect(":memory:")
    ctype = "INTEGER" if column == "age" else "DOUBLE"
    con.execute(f"CREATE TABLE persons (person_id VARCHAR, {column} {ctype})")
    con.executemany(
        "INSERT INTO persons VALUES (?, ?)", [(str(i), v) for i, v in enumerate(values)]
    )
    ((hist,),) = con.sql(plan.sql).fetchall()
    expected: dict[int, int] = {}
    for v in values:
        clamped = min(max(v, m.lower), m.upper)
        slot = _reference_slot(clamped, m.candidates)
        expected[slot] = expected.get(slot, 0) + 1
    assert dict(hist) == expected


def test_quantile_forms(catalog: Catalog, emp: Grant) -> None:
    plan = compile_(
        "SELECT QUANTILE_CONT(age, 0.9) AS a, PERCENTILE_CONT(0.9) WITHIN GROUP "
        "(ORDER BY age DESC) AS b FROM persons",
        catalog,
        emp,
    )
    assert [m.alpha for m in plan.measures] == [0.9, pytest.approx(0.1)]


# -- hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql,code",
    [
        (
            "SELECT COUNT(*) FROM persons WHERE " + "(" * 10_000 + "age" + ")" * 10_000,
            "QUERY_TOO_DEEP",
        ),
        ("SELECT COUNT(*) FROM persons WHERE " + "NOT " * 20_000 + "age > 1", "QUERY_TOO_DEEP"),
        ("SELECT " + "- " * 20_000 + "COUNT(*) FROM persons", "QUERY_TOO_DEEP"),
        (
            "SELECT COUNT(*) FROM persons WHERE " + " + ".join(["age"] * 3000) + " > 1",
            "QUERY_TOO_DEEP",
        ),
        ("SELECT COUNT(*) FROM persons WHERE age = 1" + " " * 2_000_000, "QUERY_TOO_LARGE"),
        (
            "SELECT " + "CASE WHEN age > 1 THEN " * 200 + "1" + " END" * 200 + " FROM persons",
            "QUERY_TOO_DEEP",
        ),
        (
            "SELECT COUNT(*) FROM persons WHERE sex IN (" + ", ".join(["'F'"] * 30_000) + ")",
            "QUERY_TOO_LARGE",
        ),
    ],
    ids=["parens", "nots", "minus", "plus-chain", "2mb", "case", "many-tokens"],
)
def test_hostile_input_is_refused_fast(catalog: Catalog, emp: Grant, sql: str, code: str) -> None:
    start = time.perf_counter()
    err = refused(sql, catalog, emp)
    assert err.code == code
    assert time.perf_counter() - start < 5.0


def test_long_but_shallow_queries_are_fine(catalog: Catalog, emp: Grant) -> None:
    values = ", ".join(f"'{c}'" for c in catalog.keys("counties"))
    plan = compile_(f"SELECT COUNT(*) FROM persons WHERE county_code IN ({values})", catalog, emp)
    assert plan.measures[0].kind == "count"
    nested = "SELECT COUNT(*) FROM persons WHERE " + "(" * 40 + "age > 1" + ")" * 40
    assert compile_(nested, catalog, emp).unit_rows == 1
    chain = "SELECT COUNT(*) FROM persons WHERE " + " OR ".join(f"age = {i}" for i in range(1500))
    start = time.perf_counter()
    assert compile_(chain, catalog, emp).measures[0].kind == "count"
    assert time.perf_counter() - start < 5.0


def test_refusal_points_at_the_offending_part(catalog: Catalog, emp: Grant) -> None:
    err = refused("SELECT COUNT(*)\nFROM persons\nWHERE id_number = 'x'", catalog, emp)
    assert err.code == "COLUMN_NOT_ALLOWED"
    assert "persons.id_number" in err.message
    assert (err.line, err.col) == (3, 15)
    assert err.to_dict()["error"]["line"] == 3


def test_chinese_text_is_accepted(catalog: Catalog, emp: Grant) -> None:
    plan = compile_(
        "SELECT d.city_name AS 城市, COUNT(*) AS 人数 FROM persons p JOIN divisions d "
        "ON p.county_code = d.county_code WHERE d.city_name IN ('太原市', '大同市') "
        "GROUP BY d.city_name",
        catalog,
        emp,
    )
    assert [o.name for o in plan.outputs] == ["城市", "人数"]
    assert plan.keys[0].public == ("太原市", "大同市")


def test_operator_comments_never_reach_runner_sql(catalog: Catalog, emp: Grant) -> None:
    plan = compile_(
        "SELECT /* x'; DROP TABLE persons; -- */ COUNT(*) -- tail\n"
        "FROM persons WHERE sex = 'F' /* evil */",
        catalog,
        emp,
    )
    assert "DROP" not in plan.sql and "evil" not in plan.sql and "tail" not in plan.sql


def test_grant_narrowing_applies(catalog: Catalog, grants: Grants) -> None:
    sme = grants.grant("g-huaxin-sme")
    assert sme is not None
    assert compile_("SELECT SUM(registered_capital) FROM enterprises", catalog, sme)
    err = refused("SELECT COUNT(*) FROM enterprises WHERE registered_capital > 1", catalog, sme)
    assert err.code == "COLUMN_NOT_ALLOWED"
    assert "aggregate" in err.message


# -- property tests ------------------------------------------------------------------------

COLUMNS = [
    "age",
    "sex",
    "county_code",
    "monthly_income",
    "occupation",
    "person_id",
    "name",
    "registered_on",
    "p.age",
    "d.city_name",
    "nope",
    "employment",
    "household_type",
]
FUNCS = [
    "FLOOR",
    "ABS",
    "LOWER",
    "UPPER",
    "COALESCE",
    "getenv",
    "ROUND",
    "year",
    "month",
    "LENGTH",
    "random",
    "CEIL",
    "TRIM",
    "SQRT",
    "LN",
    "EXP",
    "quarter",
    "dayofweek",
    "read_text",
    "current_setting",
    "md5",
]
AGGS = ["COUNT", "SUM", "AVG", "MEDIAN", "VARIANCE", "STDDEV", "MAX", "COUNT(DISTINCT"]
OPS = ["+", "-", "*", "/", "//", "%", "=", "<", ">=", "<>", "AND", "OR", "||", "LIKE", "ILIKE"]
LITERALS = ["1", "0.5", "'F'", "'140105'", "NULL", "TRUE", "DATE '2024-01-01'", "-3", "'太原市'"]


def _expr(depth: int) -> st.SearchStrategy[str]:
    leaf = st.sampled_from(COLUMNS + LITERALS)
    if depth <= 0:
        return leaf
    sub = _expr(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(OPS), sub).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(st.sampled_from(FUNCS), sub).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(AGGS), sub).map(
            lambda t: f"{t[0]}({t[1]})" + (")" if "(" in t[0] else "")
        ),
        sub.map(lambda s: f"NOT {s}"),
        st.tuples(sub, sub, sub).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} ELSE {t[2]} END"),
        st.tuples(sub, st.lists(st.sampled_from(LITERALS), min_size=1, max_size=3)).map(
            lambda t: f"{t[0]} IN ({', '.join(t[1])})"
        ),
        sub.map(lambda s: f"{s} IS NULL"),
        st.tuples(sub, sub, sub).map(lambda t: f"{t[0]} BETWEEN {t[1]} AND {t[2]}"),
        st.tuples(st.sampled_from(["INTEGER", "DOUBLE", "VARCHAR", "DATE", "BLOB"]), sub).map(
            lambda t: f"CAST({t[1]} AS {t[0]})"
        ),
        st.tuples(sub, st.sampled_from(["LEFT", "SUBSTRING", "ROUND"])).map(
            lambda t: f"{t[1]}({t[0]}, 2)"
        ),
        sub.map(lambda s: f"date_trunc('month', {s})"),
        sub.map(lambda s: f"QUANTILE_CONT({s}, 0.3)"),
        sub.map(lambda s: f"COUNT(*) FILTER (WHERE {s})"),
    )


@st.composite
def queries(draw: Any) -> str:
    select = draw(st.lists(_expr(3), min_size=1, max_size=3))
    sql = "SELECT " + ", ".join(select)
    sql += draw(
        st.sampled_from(
            [
                " FROM persons",
                " FROM persons p",
                " FROM persons p JOIN divisions d ON p.county_code = d.county_code",
            ]
        )
    )
    if draw(st.booleans()):
        sql += " WHERE " + draw(_expr(3))
    if draw(st.booleans()):
        sql += " GROUP BY " + ", ".join(draw(st.lists(_expr(2), min_size=1, max_size=2)))
    if draw(st.booleans()):
        sql += " HAVING " + draw(_expr(2))
    if draw(st.booleans()):
        sql += " ORDER BY " + draw(_expr(2))
    return sql


def _check_outcome(sql: str, catalog: Catalog, grant: Grant) -> Plan | QueryRefused:
    start = time.perf_counter()
    try:
        plan = compile_query(sql, catalog=catalog, grant=grant)
    except QueryRefused as exc:
        assert exc.message and exc.hint
        assert exc.code in exc.to_dict()["error"]["code"]
        outcome: Plan | QueryRefused = exc
    else:
        assert plan.result_columns == [k.name for k in plan.keys] + [m.name for m in plan.measures]
        outcome = plan
    assert time.perf_counter() - start < 5.0
    return outcome


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sql=queries())
def test_random_expression_trees_never_crash(sql: str, catalog: Catalog, grants: Grants) -> None:
    grant = grants.grant("g-jinshu-employment")
    assert grant is not None
    outcome = _check_outcome(sql, catalog, grant)
    if isinstance(outcome, Plan):  # whatever is accepted must run
        con = make_db(catalog, list(outcome.tables))
        exact, _ = run_plan(con, outcome)
        assert exact.column_names == outcome.result_columns


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sql=st.text(max_size=300))
def test_random_text_never_crashes(sql: str, catalog: Catalog, grants: Grants) -> None:
    grant = grants.grant("g-jinshu-employment")
    assert grant is not None
    _check_outcome(sql, catalog, grant)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(
        [
            "SELECT COUNT(*) FROM persons WHERE ",
            "SELECT ",
            "SELECT sex, COUNT(*) FROM persons GROUP BY ",
        ]
    ),
    tail=st.text(alphabet=st.sampled_from(list("()'\";,-/*+ \nabcNOTAND01%.é秘")), max_size=200),
)
def test_random_tails_never_crash(prefix: str, tail: str, catalog: Catalog, grants: Grants) -> None:
    grant = grants.grant("g-jinshu-employment")
    assert grant is not None
    _check_outcome(prefix + tail, catalog, grant)


# -- messages never carry data -------------------------------------------------------------


def _data_strings(catalog: Catalog) -> set[str]:
    """Every free-text value in the tiny fabricated tables (see tests/compiler/compiler_db.py)."""
    con = make_db(catalog, ["persons", "insured", "payments", "enterprises"], units=20)
    found: set[str] = set()
    for table in ("persons", "enterprises"):
        for (row,) in (
            con.sql(f"SELECT CAST(COLUMNS(*) AS VARCHAR) FROM {table}").fetchall() if False else []
        ):
            found.add(row)
        rel = con.sql(f"SELECT * FROM {table}")
        for row in rel.fetchall():
            for v in row:
                if isinstance(v, str) and v.startswith(SECRET_PREFIX):
                    found.add(v)
    return found


_WORD = re.compile(r"[A-Za-z_]+|[0-9]+|[\u4e00-\u9fff]+")


@functools.lru_cache(maxsize=1)
def _our_words() -> frozenset[str]:
    """Every word of the compiler's own source and of the policy files."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = " ".join(p.read_text("utf-8") for p in (root / "sandbox" / "compiler").glob("*.py"))
    text += (root / "sandbox" / "errors.py").read_text("utf-8")
    text += (root / "policies" / "catalog.yaml").read_text("utf-8")
    text += (root / "policies" / "grants.yaml").read_text("utf-8")
    return frozenset(w.lower() for w in _WORD.findall(text))


def _sql_words(sql: str) -> set[str]:
    import sqlglot

    words = {w.lower() for w in _WORD.findall(sql)}
    try:
        for stmt in sqlglot.parse(sql, read="duckdb"):
            if stmt is not None:
                words |= {w.lower() for w in _WORD.findall(stmt.sql(dialect="duckdb"))}
    except Exception:
        pass
    return words


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sql=queries())
def test_refusals_never_carry_data_values(sql: str, catalog: Catalog, grants: Grants) -> None:
    """The compiler reads no data, so a refusal can only quote the SQL and the policy.

    The tiny tables hold free-text values marked with SECRET_PREFIX; none is in the
    SQL, and none may appear in a refusal. Stronger: every word of a message and hint
    is a word of the SQL (as written or as sqlglot renders it), of the compiler's own
    source, or of the policy files; other numbers are short (line, column, limits)."""
    grant = grants.grant("g-jinshu-employment")
    assert grant is not None
    try:
        compile_query(sql, catalog=catalog, grant=grant)
    except QueryRefused as exc:
        text = exc.message + " " + exc.hint
        assert SECRET_PREFIX not in text and "秘密" not in text
        allowed = _our_words() | _sql_words(sql)
        text = re.sub(r"[A-Za-z_0-9\u4e00-\u9fff]+…", "…", text)  # snippets cut mid-word
        for word in _WORD.findall(text):
            w = word.lower()
            if w.isdigit() and len(w) <= 4:
                continue
            assert w in allowed, (word, text, sql)


def test_data_values_are_nowhere_in_refusals(catalog: Catalog, grants: Grants) -> None:
    """Refuse many queries while the tiny tables exist; no data value shows up."""
    from pathlib import Path

    import yaml

    corpus = yaml.safe_load((Path(__file__).parent / "compiler_corpus.yaml").read_text("utf-8"))
    data = _data_strings(catalog)
    assert data  # the tables really hold marked values
    grant = grants.grant("g-jinshu-employment")
    assert grant is not None
    for entry in corpus["refused"]:
        try:
            compile_query(entry["sql"], catalog=catalog, grant=grant)
        except QueryRefused as exc:
            text = exc.message + exc.hint
            assert not any(v in text for v in data)


def test_generated_sql_guard() -> None:
    """The second check on generated SQL refuses what the compiler must never emit."""
    import duckdb

    from sandbox.compiler.build import _check_parse
    from sandbox.errors import SystemFailure

    con = duckdb.connect(":memory:")
    _check_parse(con, "SELECT COUNT(*) FROM persons WHERE lower(sex) = 'f'", {"persons"})
    for sql in [
        "SELECT COUNT(*) FROM read_csv('/etc/passwd')",
        "SELECT COUNT(*) FROM insured",
        "SELECT getenv('HOME') FROM persons",
        "SELECT COUNT(*) FROM main.persons",
        "SELECT 1 FROM persons; SELECT 2 FROM persons",
        "COPY persons TO 'x.csv'",
    ]:
        with pytest.raises(SystemFailure):
            _check_parse(con, sql, {"persons"})


# -- codes that need other policies; the docs' examples ------------------------------------


def test_multiple_private_datasets(catalog: Catalog, emp: Grant) -> None:
    both = emp.model_copy(update={"datasets": ("population", "social_insurance", "divisions")})
    err = refused(
        "SELECT COUNT(*) FROM persons p JOIN insured i ON p.person_id = i.person_id",
        catalog,
        both,
    )
    assert err.code == "UNSUPPORTED_JOIN"  # the join itself crosses datasets
    err = refused("SELECT COUNT(*) FROM persons, insured", catalog, both)
    assert err.code == "UNSUPPORTED_JOIN"


def test_multiple_datasets_code(tmp_path: Any, grants: Grants) -> None:
    from sandbox.catalog import load_catalog
    from tests.policy_factory import make_policies

    cat = load_catalog(make_policies(tmp_path))
    emp = grants.grant("g-jinshu-employment")
    assert emp is not None
    both = emp.model_copy(update={"datasets": ("population", "social_insurance", "divisions")})
    err = refused(
        "SELECT COUNT(*) FROM persons p JOIN divisions d ON p.county_code = d.county_code "
        "JOIN insured i ON i.county_code = d.county_code",
        cat,
        both,
    )
    assert err.code == "MULTIPLE_DATASETS"


def test_unbounded_column(tmp_path: Any, grants: Grants) -> None:
    from sandbox.catalog import load_catalog
    from tests.policy_factory import dataset, make_policies

    def unbounded(d: dict[str, Any]) -> None:
        col = next(
            c
            for c in dataset(d, "population")["tables"][0]["columns"]
            if c["name"] == "monthly_income"
        )
        col.pop("bounds")

    cat = load_catalog(make_policies(tmp_path, catalog=unbounded))
    emp = grants.grant("g-jinshu-employment")
    assert emp is not None
    err = refused("SELECT AVG(monthly_income) FROM persons", cat, emp)
    assert err.code == "UNBOUNDED_COLUMN"
    assert "persons.monthly_income" in err.message
    assert compile_("SELECT COUNT(monthly_income) FROM persons", cat, emp)


def test_docs_error_examples_are_true(catalog: Catalog, emp: Grant) -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "queries.md").read_text("utf-8")
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`]+)` \|", doc, re.MULTILINE)
    assert len(rows) >= 18
    for code, sql in rows:
        if "…" not in sql:  # placeholders such as ((((…51 levels…))))
            assert refused(sql, catalog, emp).code == code, sql
