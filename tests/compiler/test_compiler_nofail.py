"""Issue 17: TRY only where a row value can fail (sandbox/compiler/nofail.py).

The compiled runner SQL leaves TRY out around expressions that cannot fail (plain
columns, clamps of numeric columns, comparisons of columns with literals of their own
class). Each plan is compared with the same plan where every per-row value and
condition is wrapped as before (TRY(...), TRY(CAST((cond) AS BOOLEAN))): the exact
results must be equal on fabricated rows with edge cases (NULLs, extreme and
non-finite numbers, empty text, a whole group filtered out).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import sqlglot
from compiler_db import make_db
from sqlglot import exp

from sandbox.catalog import Catalog
from sandbox.compiler import compile_query
from sandbox.compiler.nofail import Types, cannot_fail, is_predicate
from sandbox.grants import Grant, Grants

QUERIES = {
    "g-jinshu-employment": [
        "SELECT county_code, COUNT(*) AS n, SUM(monthly_income) AS s FROM persons "
        "GROUP BY county_code",
        "SELECT county_code, AVG(age) AS a, MEDIAN(age) AS m FROM persons GROUP BY county_code",
        "SELECT occupation, COUNT(*) AS n FROM persons WHERE occupation IS NOT NULL "
        "GROUP BY occupation",
        "SELECT county_code, COUNT(*) AS n, SUM(monthly_income) AS s FROM persons "
        "WHERE age BETWEEN 25 AND 60 AND sex = 'F' AND employment IN ('employed', "
        "'self_employed') AND monthly_income > 3000 GROUP BY county_code",
        "SELECT sex, SUM(monthly_income) FILTER (WHERE age > 30 OR age IS NULL) AS s, "
        "COUNT(DISTINCT person_id) AS u FROM persons WHERE NOT (monthly_income < 10.5) "
        "GROUP BY sex",
        "SELECT sex, COUNT(*) AS n FROM persons WHERE age > 1000 GROUP BY sex",  # empty
        "SELECT sex, COUNT(*) AS n, SUM(age) AS s FROM persons "
        "WHERE CAST(occupation AS INTEGER) > 3 OR age * age > 100 GROUP BY sex",
    ],
    "g-jinshu-pension": [
        "SELECT insured.county_code, COUNT(*) AS n, SUM(payments.amount) AS s "
        "FROM insured JOIN payments ON insured.person_id = payments.person_id "
        "GROUP BY insured.county_code",
    ],
}
CASES = [(g, q) for g, qs in QUERIES.items() for q in qs]

_EDGE = {
    "INTEGER": [None, 2**31 - 1, -(2**31), 0],
    "BIGINT": [None, 2**63 - 1, -(2**63), 0],
    "DOUBLE": [None, float("inf"), float("-inf"), float("nan"), 1e308, -0.0],
    "VARCHAR": [None, "", "F", "x" * 300],
    "BOOLEAN": [None, True, False],
    "DATE": [None, "0001-01-01", "9999-12-31"],
}


def _grant(grants: Grants, gid: str) -> Grant:
    g = grants.grant(gid)
    assert g is not None
    return g


def _add_edges(con: Any, catalog: Catalog, tables: list[str]) -> None:
    """Rows whose every non-unit column takes each edge value of its type in turn."""
    for name in tables:
        found = catalog.find_table(name)
        assert found is not None
        dataset, table = found
        if dataset.is_public:
            continue
        for i in range(6):
            row = []
            for c in table.columns:
                edge = _EDGE[c.type]
                row.append(f"u{i % 3}" if c.name == dataset.privacy_unit else edge[i % len(edge)])
            marks = ", ".join("?" * len(row))
            con.execute(f'INSERT INTO "{name}" VALUES ({marks})', row)


def _all_try(sql: str) -> str:
    """The same runner SQL with every per-row value and condition wrapped as before."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    for cte in tree.find_all(exp.CTE):
        if cte.alias not in ("__rows", "__unit_rows"):
            continue
        sel = cte.this
        items = []
        for item in sel.expressions:
            name = item.alias
            if name.startswith(("__k", "__v", "__w")) and not isinstance(item.this, exp.Try):
                item = exp.Alias(this=exp.Try(this=item.this), alias=item.args["alias"])
            items.append(item)
        sel.set("expressions", items)
        where = sel.args.get("where")
        if where is not None and not isinstance(where.this, exp.Try):
            cast = exp.Cast(this=exp.Paren(this=where.this), to=exp.DataType.build("BOOLEAN"))
            where.set("this", exp.Try(this=cast))
    return tree.sql(dialect="duckdb")


def _rows(con: Any, sql: str) -> list[tuple[Any, ...]]:
    return sorted(con.sql(sql).fetchall(), key=repr)


@pytest.mark.parametrize(("gid", "sql"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_without_try_the_results_are_the_same(
    gid: str, sql: str, seed: int, catalog: Catalog, grants: Grants
) -> None:
    plan = compile_query(sql, catalog=catalog, grant=_grant(grants, gid))
    con = make_db(catalog, list(plan.tables), units=300, seed=seed)
    _add_edges(con, catalog, list(plan.tables))
    con.execute("SET threads = 1")
    con.execute("SELECT setseed(0.5)").fetchall()
    ours = _rows(con, plan.sql)
    con.execute("SELECT setseed(0.5)").fetchall()
    before = _rows(con, _all_try(plan.sql))
    assert len(ours) == len(before)
    for a, b in zip(ours, before, strict=True):  # exact, but for a DOUBLE sum's last bits:
        assert len(a) == len(b)  # the order DuckDB adds rows in is not fixed
        for x, y in zip(a, b, strict=True):
            assert x == y if not isinstance(x, float) else math.isclose(x, y, rel_tol=1e-12)
    assert ours or "1000" in sql


def test_plain_shapes_go_without_try(catalog: Catalog, grants: Grants) -> None:
    plan = compile_query(QUERIES["g-jinshu-employment"][3], catalog=catalog, grant=_grant(
        grants, "g-jinshu-employment"))  # fmt: skip
    assert "TRY" not in plan.sql.upper()


def test_failing_shapes_keep_try(catalog: Catalog, grants: Grants) -> None:
    plan = compile_query(QUERIES["g-jinshu-employment"][6], catalog=catalog, grant=_grant(
        grants, "g-jinshu-employment"))  # fmt: skip
    assert "TRY(\n      CAST((" in plan.sql


TYPES: Types = {
    ("t", "i"): "INTEGER",
    ("t", "b"): "BIGINT",
    ("t", "d"): "DOUBLE",
    ("t", "s"): "VARCHAR",
    ("t", "f"): "BOOLEAN",
    ("t", "dt"): "DATE",
}


@pytest.mark.parametrize(
    ("sql", "safe"),
    [
        ("t.i", True),
        ("CASE WHEN t.d IS NULL THEN NULL ELSE LEAST(GREATEST(t.d, 0.0), 5.0) END", True),
        ("CASE WHEN t.b IS NULL THEN NULL ELSE LEAST(GREATEST(t.b, 0), 9) END", True),
        ("t.i BETWEEN 1 AND 2 AND t.s IN ('a', 'b') AND NOT t.f", True),
        ("t.i = t.b OR t.d > -1.5", True),
        ("CASE WHEN t.i > 1 THEN 'x' ELSE 'y' END", True),
        ("t.i + 1", False),  # overflow
        ("t.i * t.i > 3", False),
        ("CAST(t.s AS INTEGER)", False),
        ("t.s = 1", False),  # text against a number: a cast of each row
        ("t.dt > '2020-01-01'", False),  # a text literal cast to DATE
        ("t.i > 1.00000000000000000001", False),  # a literal too long for the rule
        ("LEAST(GREATEST(t.s, 'a'), 'b')", False),
        ("EXTRACT(year FROM t.dt)", False),
        ("length(t.s) > 3", False),
        ("TRY(CAST(t.s AS INTEGER))", True),
        ("t.x > 1", False),  # unknown column: not typed, so not trusted
    ],
)
def test_cannot_fail_rule(sql: str, safe: bool) -> None:
    e = sqlglot.parse_one(sql, read="duckdb")
    assert cannot_fail(e, TYPES) is safe


def test_predicates_need_no_cast() -> None:
    assert is_predicate(sqlglot.parse_one("t.f AND t.i > 0", read="duckdb"), TYPES)
    assert not is_predicate(sqlglot.parse_one("t.i", read="duckdb"), TYPES)  # INTEGER, cast
    assert not is_predicate(sqlglot.parse_one("t.i AND t.f", read="duckdb"), TYPES)
