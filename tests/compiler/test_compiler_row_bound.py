"""Issue 17: the row bound pays for the random window only on units over the cap.

build.py bounds a unit's rows (``rows_per_unit`` R > 1) as ``__over`` (the units with
more than R rows) + ``__bounded`` (every row of the others, R random rows of each unit
over R). Before, one random ``ROW_NUMBER() OVER (PARTITION BY __unit ORDER BY
RANDOM())`` ran over every row. Each compiled Plan is compared with the same Plan in
that old form, on fabricated rows with edge cases (NULL, non-finite and out-of-bounds
values, a NULL unit, units with no rows, one row, R - 1 and exactly R rows, one unit
only, a filter that leaves no row):

- no unit over R: the exact results of both forms are equal;
- units over R: both keep min(rows, R) rows of each unit, a subset of its own rows;
- the kept rows of a unit over R are a uniformly random subset (one unit of R + 2 rows:
  the two dropped rows, over many seeds, are every pair about equally often).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import duckdb
import pytest
import sqlglot

from sandbox.catalog import Catalog
from sandbox.compiler import compile_query
from sandbox.grants import Grant, Grants
from sandbox.plan import Plan

R = 12  # payments.rows_per_unit in policies/catalog.yaml
QUERIES = [
    "SELECT insured.county_code, COUNT(*) AS n, SUM(payments.amount) AS s "
    "FROM insured JOIN payments ON insured.person_id = payments.person_id "
    "GROUP BY insured.county_code",
    "SELECT payer_type, COUNT(*) AS n, SUM(amount) AS s, MEDIAN(amount) AS med, "
    "COUNT(DISTINCT person_id) AS u FROM payments GROUP BY payer_type",
    # a unit spans more groups than max_groups_per_unit (7): __groups, then the row bound
    "SELECT month, COUNT(*) AS n, AVG(amount) AS a FROM payments GROUP BY month",
    "SELECT COUNT(*) AS n FROM payments WHERE amount > 1000000",  # no row passes
    # per-unit pre-aggregation: the bound is in __unit_over / __unit_bounded
    "SELECT i.sex, AVG(t.total) AS mean_total, COUNT(*) AS n FROM (SELECT person_id, "
    "SUM(amount) AS total FROM payments GROUP BY person_id) t JOIN insured i "
    "ON i.person_id = t.person_id GROUP BY i.sex",
]
_AMOUNTS = [None, float("inf"), float("-inf"), float("nan"), 1e308, -0.0, -3.0, 5001.0]


@pytest.fixture(scope="module")
def pen(grants: Grants) -> Grant:
    g = grants.grant("g-jinshu-pension")
    assert g is not None
    return g


def _old_form(plan: Plan) -> str:
    """The same runner SQL with each row bound as one random window over every row."""
    tree = sqlglot.parse_one(plan.sql, read="duckdb")
    ctes = list(tree.args["with_"].expressions)
    kept = []
    for i, cte in enumerate(ctes):
        if cte.alias in ("__over", "__unit_over"):
            continue
        if cte.alias in ("__bounded", "__unit_bounded"):
            prev = ctes[i - 2].alias
            limit = plan.unit_rows if cte.alias == "__bounded" else R
            old = sqlglot.parse_one(
                f"SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY __unit ORDER BY "
                f"__r) AS __rn FROM (SELECT *, RANDOM() AS __r FROM {prev})) "
                f"WHERE __rn <= {limit}",
                read="duckdb",
            )
            cte.set("this", old)
        kept.append(cte)
    tree.args["with_"].set("expressions", kept)
    return tree.sql(dialect="duckdb")


def _db(catalog: Catalog, counts: list[int], *, seed: int, null_unit: int = 0) -> Any:
    """insured: one row per unit; payments: counts[i] rows of unit i (and ``null_unit``
    rows of a NULL person_id), amounts multiples of 0.25 (DOUBLE sums are exact in any
    order) mixed with edge values."""
    rnd = random.Random(seed)
    con = duckdb.connect(":memory:")
    for name in ("insured", "payments"):
        found = catalog.find_table(name)
        assert found is not None
        cols = ", ".join(f'"{c.name}" {c.type}' for c in found[1].columns)
        con.execute(f'CREATE TABLE "{name}" ({cols})')
    counties = catalog.keys("counties")
    insured = [
        (f"u{i}", counties[i % 5], ("F", "M", None)[i % 3], 16 + i % 90, "urban")
        for i in range(len(counties))
        if i < len(counts)
    ]
    payments = []
    units = [f"u{i}" for i in range(len(counts))]
    for unit, n in [*zip(units, counts, strict=True), (None, null_unit)]:
        for j in range(n):
            amount = (
                _AMOUNTS[j % len(_AMOUNTS)] if rnd.random() < 0.3 else rnd.randint(0, 20000) / 4
            )
            payer = rnd.choice(["employer", "individual", None])
            payments.append((unit, 2020 + j % 5, 1 + (j * 5) % 12, amount, payer))
    if insured:
        con.executemany("INSERT INTO insured VALUES (?, ?, ?, ?, ?)", insured)
    if payments:
        con.executemany("INSERT INTO payments VALUES (?, ?, ?, ?, ?)", payments)
    con.execute("SET threads = 1")
    return con


def _rows(con: Any, sql: str, seed: float = 0.5) -> list[tuple[Any, ...]]:
    con.execute(f"SELECT setseed({seed})").fetchall()
    return sorted(con.sql(sql).fetchall(), key=repr)


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, float) and isinstance(v, float):
                if not (u == v or (math.isnan(u) and math.isnan(v))):
                    return False
            elif u != v:
                return False
    return True


def _bounded_rows(plan: Plan, sql: str, *, old: bool) -> str:
    """``sql`` with the final SELECT replaced by the rows of its last row bound (the old
    form's carry __r and __rn besides)."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    stage = "__bounded" if plan.unit_rows > 1 else "__unit_bounded"
    star = "* EXCLUDE (__r, __rn)" if old else "*"
    out = sqlglot.parse_one(f"SELECT {star} FROM {stage}", read="duckdb")
    out.set("with_", tree.args["with_"])
    return out.sql(dialect="duckdb")


NO_OVER = [
    [R] * 7 + [1, 0, R - 1, 5],  # exactly at the cap, one row, no row, below
    [R],  # one unit only
    [1, 1, 1],
    [],  # no unit at all
]


@pytest.mark.parametrize("sql", QUERIES)
@pytest.mark.parametrize("case", range(len(NO_OVER)))
@pytest.mark.parametrize("seed", [0, 1])
def test_no_unit_over_the_cap_gives_the_same_results(
    sql: str, case: int, seed: int, catalog: Catalog, pen: Grant
) -> None:
    plan = compile_query(sql, catalog=catalog, grant=pen)
    assert "_over AS (" in plan.sql and "ROW_NUMBER" in plan.sql
    con = _db(catalog, NO_OVER[case], seed=seed, null_unit=R * (case == 0))
    new, old = _rows(con, plan.sql), _rows(con, _old_form(plan))
    assert _same(new, old), (new, old)
    assert new or case == 3 or "1000000" in sql


def _norm(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """-0.0 as 0.0: a clamp's GREATEST(-0.0, 0.0) gives either, depending on the plan."""
    return tuple(v + 0.0 if isinstance(v, float) else v for v in row)


def _per_unit(rows: list[tuple[Any, ...]]) -> Counter[Any]:
    return Counter(r[0] for r in rows)


@pytest.mark.parametrize("sql", QUERIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_units_over_the_cap_keep_cap_rows_of_their_own(
    sql: str, seed: int, catalog: Catalog, pen: Grant
) -> None:
    plan = compile_query(sql, catalog=catalog, grant=pen)
    counts = [R + 1, 2 * R + 3, R, 1, 0, 40, R - 1]
    con = _db(catalog, counts, seed=seed, null_unit=R + 5)
    everything = _rows(con, _bounded_rows(plan, _without_bound(plan), old=True))
    for form, old in ((plan.sql, False), (_old_form(plan), True)):
        kept = _rows(con, _bounded_rows(plan, form, old=old), seed=0.1 * seed)
        per_unit = _per_unit(kept)
        full = _per_unit(everything)
        assert per_unit == Counter({u: min(n, R) for u, n in full.items()})
        assert not Counter(map(_norm, kept)) - Counter(map(_norm, everything))  # a subset
    if "1000000" not in sql:
        assert max(_per_unit(everything).values()) > R  # some unit was over the cap


def _without_bound(plan: Plan) -> str:
    """The runner SQL with the row bound keeping every row (limit above any count)."""
    big = 10**6
    sql = _old_form(plan)
    return sql.replace(f"__rn <= {plan.unit_rows}", f"__rn <= {big}").replace(
        f"__rn <= {R}", f"__rn <= {big}"
    )


def test_the_kept_rows_are_a_uniform_random_subset(catalog: Catalog, pen: Grant) -> None:
    """One unit of R + 2 rows with distinct amounts: over 1,200 seeds, each of the 91
    pairs of dropped rows comes up about equally often (chi-square, 90 degrees of
    freedom: mean 90, sd 13.4; the bound is 5 sd above), and each row is dropped
    about 2/14 of the time."""
    plan = compile_query(QUERIES[0], catalog=catalog, grant=pen)
    con = _db(catalog, [], seed=0)
    con.execute(
        "INSERT INTO insured VALUES ('u0', ?, 'F', 30, 'urban')", [catalog.keys("counties")[0]]
    )
    n = R + 2
    con.executemany(
        "INSERT INTO payments VALUES ('u0', 2024, 1, ?, 'employer')",
        [[100.0 + i] for i in range(n)],
    )
    rows_sql = _bounded_rows(plan, plan.sql, old=False)
    runs = 1200
    dropped: Counter[tuple[float, ...]] = Counter()
    for s in range(runs):
        kept = {r[2] for r in _rows(con, rows_sql, seed=s / runs - 0.5)}
        assert len(kept) == R
        dropped[tuple(sorted({100.0 + i for i in range(n)} - kept))] += 1
    pairs = math.comb(n, 2)
    assert len(dropped) > pairs * 0.9
    expected = runs / pairs
    chi2 = sum((dropped.get(p, 0) - expected) ** 2 / expected for p in _pairs(n))
    assert chi2 < 90 + 5 * 13.4, chi2
    per_row = Counter(v for p, c in dropped.items() for v in p for _ in range(c))
    sd = math.sqrt(runs * (2 / n) * (1 - 2 / n))
    assert all(abs(per_row[100.0 + i] - runs * 2 / n) < 5 * sd for i in range(n))


def _pairs(n: int) -> list[tuple[float, ...]]:
    return [(100.0 + i, 100.0 + j) for i in range(n) for j in range(i + 1, n)]


def test_the_verifier_holds_the_bound_to_its_text(catalog: Catalog, pen: Grant) -> None:
    """A bound altered after compiling (limit, the count test, the NULL branch) is a
    compiler bug, refused by verify_plan."""
    import dataclasses

    from sandbox.compiler.verify import verify_plan
    from sandbox.errors import SystemFailure

    plan = compile_query(QUERIES[0], catalog=catalog, grant=pen)
    verify_plan(plan, catalog, pen)
    for old, new in [
        (f"COUNT(*) > {R}", f"COUNT(*) > {R + 1}"),
        (f"__rn <= {R}", f"__rn <= {R + 1}"),
        ("NOT __unit IS NULL AND NOT __unit IN", "NOT __unit IN"),
        ("__unit IS NULL OR __unit IN", "__unit IN"),
        ("UNION ALL", "UNION"),
        ("FROM __over", "FROM __rows"),
    ]:
        assert old in plan.sql, old
        altered = dataclasses.replace(plan, sql=plan.sql.replace(old, new, 1))
        with pytest.raises(SystemFailure):
            verify_plan(altered, catalog, pen)
