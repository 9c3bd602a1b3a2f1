"""The runner SQL and the post-processing SQL, written by the compiler.

Runner SQL shape (stages are skipped when the catalogue makes them unnecessary)::

    WITH __rows AS (        -- join, WHERE, public-key filter; clamped values
      SELECT <unit> AS __unit, <key> AS __k0, ..., <value> AS __v0, ...
      FROM ... JOIN ... WHERE ...),
    __groups AS (           -- at most G groups per unit (only if a unit can span more)
      ... DENSE_RANK() OVER (PARTITION BY __unit ORDER BY hash(...), keys) <= G),
    __bounded AS (          -- at most R rows per unit (only if R > 1)
      ... ROW_NUMBER() OVER (PARTITION BY __unit ORDER BY __r) <= R)
    SELECT __k0 AS "key", ..., COUNT(*) AS "m0", ... FROM <last stage> GROUP BY __k0, ...

Both windows depend only on the unit's own rows, so bounding one unit's contribution
never changes another's.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sandbox import hostsql
from sandbox.compiler.keys import literal
from sandbox.compiler.measures import Measures
from sandbox.compiler.post import Outputs, quote
from sandbox.compiler.scope import Scope
from sandbox.compiler.text import QueryRefused
from sandbox.compiler.verify import verify_plan
from sandbox.errors import SystemFailure
from sandbox.plan import KeySpec, Plan

PRIVATE_MAX_GROUPS = 10_000
MAX_PUBLIC_GROUPS = 1_000_000


def build_plan(
    *,
    query_sha256: str,
    scope: Scope,
    from_lines: list[str],
    where_sql: str | None,
    outputs: Outputs,
    measures: Measures,
) -> Plan:
    dataset = scope.private_dataset
    keys = outputs.keys
    notes: list[str] = []
    if any(k.public is None for k in keys):
        measures.selection()
        max_groups = PRIVATE_MAX_GROUPS
        notes.append(
            "private keys: groups are released only through partition selection "
            "(needs δ > 0); measure __units counts units per group for it"
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

    unit_col = f'{scope.unit_source.alias}."{dataset.privacy_unit}"'
    cols = [f"{unit_col} AS __unit"]
    cols += [f"{k.sql} AS __k{j}" for j, k in enumerate(keys)]
    cols += [f"{sql} AS {name}" for sql, name in measures.values.items()]
    if unit_rows > 1:
        cols.append("random() AS __r")  # DuckDB refuses volatile window ORDER BY
    conds = [f"({where_sql})"] if where_sql else []
    for k in keys:
        if k.public is not None:  # no public value at all: no row can be released
            values = ", ".join(literal(v) for v in k.public)
            conds.append(f"({k.sql}) IN ({values})" if values else "FALSE")
    rows_sql = "SELECT " + ", ".join(cols) + "\n  " + "\n  ".join(from_lines)
    if conds:
        rows_sql += "\n  WHERE " + "\n    AND ".join(conds)
    ctes = [f"__rows AS (\n  {rows_sql}\n)"]
    last = "__rows"
    key_cols = [f"__k{j}" for j in range(len(keys))]
    if cap_groups:
        order = ", ".join([f"hash(__unit, {', '.join(key_cols)})", *key_cols])
        ctes.append(
            f"__groups AS (\n  SELECT * FROM (SELECT *, DENSE_RANK() OVER "
            f"(PARTITION BY __unit ORDER BY {order}) AS __gr FROM {last}) WHERE __gr <= "
            f"{limit_g}\n)"
        )
        last = "__groups"
        notes.append(
            f"groups per {dataset.privacy_unit} capped at {limit_g} "
            "(DENSE_RANK over the unit's keys in a pseudo-random order)"
        )
    if unit_rows > 1:
        ctes.append(
            f"__bounded AS (\n  SELECT * FROM (SELECT *, ROW_NUMBER() OVER "
            f"(PARTITION BY __unit ORDER BY __r) AS __rn FROM {last}) WHERE __rn <= "
            f"{unit_rows}\n)"
        )
        last = "__bounded"
        notes.append(
            f"rows per {dataset.privacy_unit} capped at {unit_rows} "
            "(ROW_NUMBER in random order within each unit)"
        )
    else:
        notes.append(
            f"one row per {dataset.privacy_unit} in every table read; no per-unit window needed"
        )
    select = [f"__k{j} AS {quote(k.name)}" for j, k in enumerate(keys)]
    select += [
        f"{agg} AS {quote(m.name)}" for m, agg in zip(measures.measures, measures.aggs, strict=True)
    ]
    sql = "WITH " + ",\n".join(ctes) + "\nSELECT " + ", ".join(select) + f"\nFROM {last}"
    if keys:
        sql += "\nGROUP BY " + ", ".join(key_cols)

    # TRY: post-processing never fails on odd noisy values (overflow, zero divisors)
    post = "SELECT " + ", ".join(
        f"{o.expr if o.kind == 'key' else f'TRY({o.expr})'} AS {quote(o.name)}"
        for o in outputs.outputs
    )
    post += "\nFROM noisy"
    if outputs.having:
        post += f"\nWHERE TRY(CAST(({outputs.having}) AS BOOLEAN))"
    if outputs.order:
        post += "\nORDER BY " + ", ".join(outputs.order)
    if outputs.limit is not None:
        post += f"\nLIMIT {outputs.limit}"
    if outputs.offset is not None:
        post += f"\nOFFSET {outputs.offset}"

    for n in measures.notes:
        if n not in notes:
            notes.append(n)
    tables = {s.table.name: s.table.file for s in scope.sources}
    versions = {s.dataset.id: s.dataset.version for s in scope.sources}
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


_STAGES = ("__rows", "__groups", "__bounded")
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
        for s in scope.sources:
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
