"""The runner SQL and the post-processing SQL, written by the compiler.

Runner SQL shape (stages are skipped when the catalogue makes them unnecessary)::

    WITH __unit_rows AS (   -- only with a per-unit pre-aggregation (preagg.py): its rows,
      SELECT <unit> AS __unit, <value> AS __w0, ... FROM ... WHERE ...),
    __unit_over AS (...),   --   at most R of them per unit (only if R > 1; as __over,
    __unit_bounded AS (...),--   __bounded below)
    __perunit AS (          --   one row per unit: its values
      SELECT __unit AS "<unit>", SUM(__w0) AS __p0, ... FROM ... GROUP BY __unit),
    __rows AS (             -- join, WHERE, public-key filter; clamped values
      SELECT <unit> AS __unit, <key> AS __k0, ..., <value> AS __v0, ...
      FROM ... JOIN ... WHERE ...),
    __groups AS (           -- at most G groups per unit (only if a unit can span more)
      ... DENSE_RANK() OVER (PARTITION BY __unit ORDER BY hash(...), keys) <= G),
    __over AS (             -- at most R rows per unit (only if R > 1): the units over R
      SELECT __unit FROM <prev> WHERE __unit IS NOT NULL GROUP BY __unit
      HAVING COUNT(*) > R),
    __bounded AS (          --   every row of the others, R random rows of those
      SELECT * FROM <prev> WHERE NOT __unit IS NULL AND NOT __unit IN (SELECT __unit FROM __over)
      UNION ALL
      SELECT * EXCLUDE (__r, __rn) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY __unit
        ORDER BY __r) AS __rn FROM (SELECT *, RANDOM() AS __r FROM <prev>
        WHERE __unit IS NULL OR __unit IN (SELECT __unit FROM __over))) WHERE __rn <= R)
    SELECT __k0 AS "key", ..., COUNT(*) AS "m0", ... FROM <last stage> GROUP BY __k0, ...

Every window, the count of a unit's rows and the per-unit GROUP BY depend only on the
unit's own rows, so bounding one unit's contribution never changes another's.

The row bound pays for the random window only on the rows of units over R (issue 17):
a unit with at most R rows keeps them all, as ROW_NUMBER() <= R would keep them, and a
unit over R keeps a uniformly random R of its rows, as before, so the bounded rows have
the same distribution as one window over every row, and are the same rows when no
unit is over R. (A NULL unit, which a join on the unit cannot produce, always goes
through the window: ``NOT IN`` is not two-valued for it.) On the 10M join (no unit over
R) this takes 0.9 s against 2.4–4.7 s for the window over every row
(docs/performance.md).
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlglot import exp

from sandbox import hostsql
from sandbox.compiler import nodes as n_
from sandbox.compiler import nofail
from sandbox.compiler.measures import Measures
from sandbox.compiler.post import Outputs, quote
from sandbox.compiler.preagg import PER_UNIT_TABLE, PerUnit
from sandbox.compiler.scope import Scope
from sandbox.compiler.verify import verify_plan
from sandbox.errors import QueryRefused, SystemFailure
from sandbox.plan import KeySpec, Plan

PRIVATE_MAX_GROUPS = 10_000
MAX_PUBLIC_GROUPS = 1_000_000


def build_plan(
    *,
    query_sha256: str,
    scope: Scope,
    relations: list[exp.Expr],
    where: exp.Expr | None,
    outputs: Outputs,
    measures: Measures,
) -> Plan:
    dataset = scope.private_dataset
    keys = outputs.keys
    notes: list[str] = []
    if any(k.public is None for k in keys):
        chosen = measures.selection()
        max_groups = PRIVATE_MAX_GROUPS
        notes.append(
            "private keys: groups are released only through partition selection "
            f"(needs δ > 0), thresholding the noisy count {chosen}"
            + (
                " (one measurement: the released count is the thresholded one)"
                if chosen != "__units"
                else ", which counts units per group"
            )
        )
    else:
        max_groups = math.prod(len(k.public or ()) for k in keys)
        if max_groups > MAX_PUBLIC_GROUPS:
            raise QueryRefused(
                "UNSUPPORTED_GROUP_KEY",
                f"The public keys give {max_groups} groups, more than {MAX_PUBLIC_GROUPS}.",
                hint="Group by fewer or coarser keys.",
            )
    for k in keys:
        notes.extend(k.notes)

    unit_rows = scope.unit_rows
    limit_g = dataset.privacy.max_groups_per_unit
    spans = bool(keys) and unit_rows > 1 and any(k.multi for k in keys)
    reach = min(unit_rows, max_groups) if spans else 1
    cap_groups = spans and limit_g < reach
    unit_groups = min(limit_g, reach) if spans else 1

    ctes: list[tuple[str, exp.Expr]] = []
    if isinstance(scope.per_unit, PerUnit):
        ctes += _per_unit_stages(scope.per_unit)
        notes.extend(scope.per_unit.notes)
    unit = exp.column(dataset.privacy_unit or "", table=scope.unit_source.alias, quoted=True)
    items: list[exp.Expr] = [n_.alias(unit, "__unit", quote=False)]
    items += [n_.alias(k.node, f"__k{j}", quote=False) for j, k in enumerate(keys)]
    # TRY: a row value that fails (overflow, bad cast) is NULL, never a failed job whose
    # outcome depends on one row's value (issue 20)
    # (a plain column or a clamp of one cannot fail: no TRY, which would block pushdown)
    types = nofail.column_types(scope)
    items += [
        n_.alias(nofail.try_(node, types), name, quote=False)
        for node, name in measures.values.values()
    ]
    conds = [where] if where is not None else []
    for k in keys:
        if k.public is not None:  # no public value at all: no row can be released
            listed = [n_.value(v) for v in k.public]
            conds.append(
                exp.In(this=exp.Paren(this=k.node.copy()), expressions=listed)
                if listed
                else exp.false()
            )
    rows = n_.select(
        items,
        relations[0],
        joins=relations[1:],
        where=n_.and_(*conds) if conds else None,
    )
    ctes.append(("__rows", rows))
    key_cols = [f"__k{j}" for j in range(len(keys))]
    if cap_groups:
        order: list[exp.Expr] = [
            n_.call("hash", n_.name("__unit"), *map(n_.name, key_cols)),
            *map(n_.name, key_cols),
        ]
        ctes.append(("__groups", _window(ctes[-1][0], exp.DenseRank(), order, "__gr", limit_g)))
        notes.append(
            f"groups per {dataset.privacy_unit} capped at {limit_g} "
            "(DENSE_RANK over the unit's keys in a pseudo-random order)"
        )
    if unit_rows > 1:
        ctes += _row_bound(ctes[-1][0], "__over", "__bounded", unit_rows)
        notes.append(
            f"rows per {dataset.privacy_unit} capped at {unit_rows} "
            f"(ROW_NUMBER in random order within each unit over {unit_rows} rows)"
        )
    elif scope.per_unit is None:
        notes.append(
            f"one row per {dataset.privacy_unit} in every table read; no per-unit window needed"
        )
    final = [n_.alias(n_.name(f"__k{j}"), k.name) for j, k in enumerate(keys)]
    final += [
        n_.alias(agg, m.name) for m, agg in zip(measures.measures, measures.aggs, strict=True)
    ]
    runner = n_.select(
        final, n_.table(ctes[-1][0], quote=False), group=[n_.name(c) for c in key_cols] or None
    )
    sql = n_.render(n_.with_ctes(ctes, runner), pretty=True)

    # TRY: post-processing never fails on odd noisy values (overflow, zero divisors)
    post_items = [
        n_.alias(
            outputs.exprs[o.name] if o.kind == "key" else n_.try_(outputs.exprs[o.name]), o.name
        )
        for o in outputs.outputs
    ]
    post_tree = n_.select(
        post_items,
        n_.table("noisy", quote=False),
        where=n_.as_bool(outputs.having) if outputs.having is not None else None,
    )
    if outputs.order:
        post_tree.set("order", exp.Order(expressions=outputs.order))
    if outputs.limit is not None:
        post_tree.set("limit", exp.Limit(expression=n_.num(outputs.limit)))
    if outputs.offset is not None:
        post_tree.set("offset", exp.Offset(expression=n_.num(outputs.offset)))
    post = n_.render(post_tree, pretty=True)

    for n in measures.notes:
        if n not in notes:
            notes.append(n)
    tables = {s.table.name: s.table.file for s in scope.read_sources}
    versions = {s.dataset.id: s.dataset.version for s in scope.read_sources}
    plan = Plan(
        query_sha256=query_sha256,
        dataset=dataset.id,
        dataset_version=dataset.version,
        privacy_unit=dataset.privacy_unit or "",
        definition=dataset.privacy.definition,
        tables=tables,
        dataset_versions=versions,
        sql=sql,
        keys=tuple(KeySpec(name=k.name, source=k.source, public=k.public) for k in keys),
        measures=tuple(measures.measures),
        outputs=tuple(outputs.outputs),
        post_sql=post,
        unit_rows=unit_rows,
        unit_groups=unit_groups,
        max_groups=max_groups,
        notes=tuple(notes),
    )
    check_plan(plan, scope)
    return plan


_STAGES = (
    "__unit_rows",
    "__unit_over",
    "__unit_bounded",
    PER_UNIT_TABLE,
    "__rows",
    "__groups",
    "__over",
    "__bounded",
)
# Every function the compiler can emit, by DuckDB's own name for it. A second, independent
# check on the generated SQL: the operator's SQL was already whitelisted node by node.
_FUNCTIONS = frozenset(
    {
        "+",
        "-",
        "*",
        "/",
        "//",
        "%",
        "||",
        "~~",
        "!~~",
        "~~*",
        "!~~*",
        "abs",
        "ceil",
        "ceiling",
        "floor",
        "round",
        "sqrt",
        "ln",
        "log",
        "log10",
        "exp",
        "power",
        "pow",
        "greatest",
        "least",
        "sign",
        "lower",
        "upper",
        "lcase",
        "ucase",
        "length",
        "substring",
        "substr",
        "trim",
        "ltrim",
        "rtrim",
        "left",
        "right",
        "concat",
        "starts_with",
        "prefix",
        "date_part",
        "date_trunc",
        "datetrunc",
        "year",
        "month",
        "day",
        "quarter",
        "dayofweek",
        "count",
        "count_star",
        "sum",
        "avg",
        "histogram",
        "hash",
        "random",
        "array_extract",
        "list_extract",
    }
)


def _check_parse(con: Any, sql: str, tables: set[str]) -> None:
    """Parse generated SQL with DuckDB itself: one SELECT, reading only ``tables``, with
    no table function and no function outside _FUNCTIONS. A failure is our bug."""
    raw = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()[0][0]
    tree = json.loads(raw)
    bad: list[str] = []
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        bad.append("statement")
    stack: list[Any] = [tree.get("statements", [])]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            bad.append("table function")
        elif kind == "BASE_TABLE" and (
            node.get("table_name") not in tables
            or node.get("schema_name")
            or node.get("catalog_name")
        ):
            bad.append(f"table {node.get('table_name')}")
        elif kind == "FUNCTION" and node.get("function_name") not in _FUNCTIONS:
            bad.append(f"function {node.get('function_name')}")
        stack.extend(node.values())
    if bad:
        raise SystemFailure(
            "The compiler produced SQL it does not allow itself; the query was not run.",
            code="INTERNAL",
            details={"problems": sorted(set(bad))},
        )


def _per_unit_stages(pu: PerUnit) -> list[tuple[str, exp.Expr]]:
    """__unit_rows (the inner query's rows: unit, clamped values), __unit_bounded (at
    most R rows per unit, if R > 1), __perunit (one row per unit: its values)."""
    dataset = pu.scope.private_dataset
    unit_name = dataset.privacy_unit or ""
    unit = exp.column(unit_name, table=pu.scope.unit_source.alias, quoted=True)
    items: list[exp.Expr] = [n_.alias(unit, "__unit", quote=False)]
    types = nofail.column_types(pu.scope)
    items += [
        n_.alias(nofail.try_(node, types), name, quote=False)
        for node, name in pu.values.values.values()
    ]
    rows = n_.select(items, pu.relations[0], joins=pu.relations[1:], where=pu.where)
    stages: list[tuple[str, exp.Expr]] = [("__unit_rows", rows)]
    if pu.rows > 1:
        stages += _row_bound("__unit_rows", "__unit_over", "__unit_bounded", pu.rows)
    out = [n_.alias(n_.name("__unit"), unit_name)]
    out += [n_.alias(agg, name, quote=False) for name, agg in pu.aggs]
    last = n_.table(stages[-1][0], quote=False)
    stages.append((PER_UNIT_TABLE, n_.select(out, last, group=[n_.name("__unit")])))
    return stages


def _window(
    prev: str | exp.Expr, func: exp.Expr, order: list[exp.Expr], col: str, limit: int
) -> exp.Select:
    """SELECT * FROM (SELECT *, func OVER (PARTITION BY __unit ORDER BY order) AS col
    FROM prev) WHERE col <= limit: at most ``limit`` rows or groups per unit."""
    window = exp.Window(
        this=func,
        partition_by=[n_.name("__unit")],
        order=exp.Order(expressions=[exp.Ordered(this=o) for o in order]),
    )
    source = n_.table(prev, quote=False) if isinstance(prev, str) else prev
    inner = n_.select([exp.Star(), n_.alias(window, col, quote=False)], source)
    return n_.select([exp.Star()], n_.subquery(inner), where=n_.lte(n_.name(col), n_.num(limit)))


def _row_bound(prev: str, over: str, bounded: str, limit: int) -> list[tuple[str, exp.Expr]]:
    """At most ``limit`` rows per unit of ``prev``: the units over it (``over``), then
    every row of the other units and ``limit`` random rows of each unit over it, or of
    the NULL unit (``bounded``; see the module docstring)."""
    unit = n_.name("__unit")
    is_null = exp.Is(this=unit.copy(), expression=exp.Null())
    count = exp.Count(this=exp.Star(), big_int=True)
    over_sel = n_.select(
        [unit.copy()],
        n_.table(prev, quote=False),
        where=exp.Not(this=is_null.copy()),
        group=[unit.copy()],
    )
    over_sel.set("having", exp.Having(this=exp.GT(this=count, expression=n_.num(limit))))

    def listed() -> exp.Expr:
        sub = n_.subquery(n_.select([unit.copy()], n_.table(over, quote=False)))
        return exp.In(this=unit.copy(), query=sub)

    keep = n_.select(
        [exp.Star()],
        n_.table(prev, quote=False),
        where=exp.And(this=exp.Not(this=is_null.copy()), expression=exp.Not(this=listed())),
    )
    marked = n_.select(
        [exp.Star(), n_.alias(exp.Rand(), "__r", quote=False)],  # DuckDB refuses volatile
        n_.table(prev, quote=False),  # window ORDER BY: the random order is a column
        where=exp.Or(this=is_null.copy(), expression=listed()),
    )
    window = _window(n_.subquery(marked), exp.RowNumber(), [n_.name("__r")], "__rn", limit)
    window.set("expressions", [exp.Star(except_=[n_.name("__r"), n_.name("__rn")])])
    return [(over, over_sel), (bounded, exp.union(keep, window, distinct=False))]


def check_plan(plan: Plan, scope: Scope) -> None:
    """Bind the runner SQL over empty tables with the catalogue's schemas, then run
    post_sql over one made-up noisy row, in a DuckDB with no file access. A query
    whose types do not fit is refused here, before any budget is reserved, rather
    than failing in the runner. No data is involved."""
    with hostsql.connect() as con:
        _check_plan(con, plan, scope)


def _check_plan(con: Any, plan: Plan, scope: Scope) -> None:
    import duckdb

    try:
        for s in scope.read_sources:
            cols = ", ".join(f'"{c.name}" {c.type}' for c in s.table.columns)
            con.execute(f'CREATE TABLE "{s.table.name}" ({cols})')
        rel = con.sql(f"SELECT * FROM ({plan.sql}) LIMIT 0")
        names, types = rel.columns, [str(t) for t in rel.types]
        if names != plan.result_columns:
            raise QueryRefused(
                "UNSUPPORTED_EXPRESSION",
                "The query could not be compiled into the declared columns.",
                hint="Simplify the query; see docs/queries.md.",
            )
        hist = {m.name for m in plan.measures if m.kind == "histogram"}
        cols = ", ".join(
            f"{quote(n)} {'DOUBLE' if n in hist else t}" for n, t in zip(names, types, strict=True)
        )
        con.execute(f"CREATE TABLE noisy ({cols})")
        row = [(k.public[0] if k.public else None) for k in plan.keys] + [1 for _ in plan.measures]
        con.execute(f"INSERT INTO noisy VALUES ({', '.join('?' * len(row))})", row)
        hostsql.run(con, plan.post_sql)
        _check_parse(con, plan.sql, set(plan.tables) | set(_STAGES))
        _check_parse(con, plan.post_sql, {"noisy"})
        verify_plan(plan, scope.catalog, scope.grant)
    except (duckdb.Error, hostsql.HostSQLTimeout) as exc:
        raise QueryRefused(
            "UNSUPPORTED_EXPRESSION",
            "The query does not type-check (for example text compared with a number, an "
            "unknown date part, or a condition that is not true/false).",
            hint="Compare columns with values of their own type; see docs/queries.md.",
        ) from exc
