"""The trusted SQL compiler: operator SQL text → a validated ``Plan``.

``compile_query(sql, catalog=..., grant=...)`` parses the SQL with sqlglot (DuckDB
dialect), accepts a small aggregate surface (see docs/queries.md) and refuses the
rest with a ``QueryRefused`` carrying a stable code, a message naming the offending
part of the query and a hint. It never reads data. The Plan holds the runner SQL
(written by us, not the operator's text: it reads only the Plan's tables, clamps
every aggregated value and bounds each privacy unit's rows and groups), one measure
per exact aggregate, and ``post_sql`` that turns noisy measures into the operator's
outputs.

Modules: ``text`` (size, characters, nesting, parsing), ``views`` (CTEs and FROM
subqueries inlined), ``preagg`` (per-unit pre-aggregation), ``scope`` (tables, joins,
columns), ``checks`` (what expression may go where), ``groupkeys`` (GROUP BY and public key
values, CASE buckets), ``measures`` (aggregates), ``build`` (the runner and
post-processing SQL), ``verify`` / ``verify_units`` (the second check).
"""

from __future__ import annotations

import hashlib

from sqlglot import exp

from sandbox.catalog import Catalog, Use
from sandbox.compiler import nofail
from sandbox.compiler.build import build_plan
from sandbox.compiler.checks import contains_aggregate, forbid_everywhere, row_expr
from sandbox.compiler.groupkeys import make_key
from sandbox.compiler.measures import Measures, quantile_candidates
from sandbox.compiler.nodes import PerUnitRef
from sandbox.compiler.post import Outputs
from sandbox.compiler.preagg import compile_per_unit
from sandbox.compiler.scope import build_scope
from sandbox.compiler.text import (
    check_text,
    check_tree_depth,
    parse_statement,
    refuse,
    snippet,
    too_deep,
)
from sandbox.compiler.views import expand, forbid_nested
from sandbox.grants import Grant
from sandbox.plan import Plan

__all__ = ["compile_query", "quantile_candidates"]

_SELECT_ARGS = {
    "expressions",
    "from",
    "from_",
    "joins",
    "where",
    "group",
    "having",
    "order",
    "limit",
    "offset",
    "kind",
    "with",
    "with_",
}
_CLAUSE_NAMES = {
    "distinct": ("SELECT DISTINCT", "Use GROUP BY on the columns instead."),
    "qualify": ("QUALIFY", "Filter aggregates with HAVING."),
    "windows": ("WINDOW", "Window functions are refused."),
    "laterals": ("LATERAL", "Join catalogue tables with JOIN ... ON."),
    "into": ("SELECT INTO", "Queries may not create tables."),
    "sample": ("TABLESAMPLE / USING SAMPLE", "Sampling is done by the privacy layer."),
    "connect": ("CONNECT BY", "Aggregate with GROUP BY."),
    "settings": ("SETTINGS", "Settings are the bureau's."),
    "locks": ("FOR UPDATE", "Queries are read-only."),
    "prewhere": ("PREWHERE", "Use WHERE."),
    "cluster": ("CLUSTER BY", "Use ORDER BY."),
    "distribute": ("DISTRIBUTE BY", "Use GROUP BY."),
    "sort": ("SORT BY", "Use ORDER BY."),
    "options": ("OPTION", "Remove it."),
}


def compile_query(
    sql: str, *, catalog: Catalog, grant: Grant, unit_rows_checked: bool = True
) -> Plan:
    """Compile operator SQL into a Plan, or raise QueryRefused (code, message, hint).

    ``unit_rows_checked``: the tables read have passed sandbox/datacheck.py (one row per
    unit where declared), so a units count may be COUNT(__unit); the check's own query
    passes False and gets COUNT(DISTINCT __unit)."""
    try:
        return _compile(sql, catalog, grant, unit_rows_checked)
    except RecursionError as exc:
        raise too_deep() from exc


def _compile(sql: str, catalog: Catalog, grant: Grant, unit_rows_checked: bool) -> Plan:
    text = check_text(sql)
    stmt = parse_statement(text)
    select = _as_select(stmt)
    forbid_nested(select)
    select, views = expand(select, catalog)
    check_tree_depth(select)  # views inlined into views nest their expressions
    forbid_everywhere(select)
    refs = list(select.find_all(PerUnitRef))
    if len(refs) > 1:
        raise refuse(
            "SUBQUERY",
            "A query may read one per-unit pre-aggregation, once.",
            "Compute several per-unit values in one subquery: SELECT person_id, SUM(a) AS x, "
            "COUNT(*) AS y ... GROUP BY person_id.",
            select,
        )
    per_unit = compile_per_unit(views[int(refs[0].this.this)], catalog, grant) if refs else None
    scope, relations = build_scope(select, catalog, grant, per_unit=per_unit)
    measures = Measures(scope, unit_rows_checked=unit_rows_checked)
    outputs = Outputs(scope, measures)

    items = list(select.expressions)
    for item in items:
        if isinstance(item, exp.Star) or (
            isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
        ):
            raise refuse(
                "NO_AGGREGATE",
                f"'{snippet(item)}' would output rows; only aggregates are released.",
                "Select aggregates such as COUNT(*) or AVG(age), grouped by group columns.",
                item,
            )
    if not any(contains_aggregate(i) for i in items):
        raise refuse(
            "NO_AGGREGATE",
            "The query outputs rows, not aggregates.",
            "Select aggregates (COUNT(*), SUM(col), AVG(col), MEDIAN(col) ...) and GROUP BY "
            "the columns you want per-group results for.",
            items[0] if items else select,
        )

    where = select.args.get("where")
    where_node = None
    terms: list[exp.Expr] = []
    if where is not None:
        cond, _ = row_expr(where.this, scope, Use.FILTER, "WHERE")
        # TRY: a row whose expression fails (overflow, bad cast) is dropped, never an
        # engine error that would end the run after the data was read; a predicate that
        # cannot fail (plain columns against literals) goes without, for pushdown
        where_node = nofail.as_bool(cond, nofail.column_types(scope))
        terms = _and_terms(cond)

    group = select.args.get("group")
    if group is not None:
        for key in ("grouping_sets", "cube", "rollup", "totals"):
            if group.args.get(key) or any(
                isinstance(g, exp.Rollup | exp.Cube | exp.GroupingSets) for g in group.expressions
            ):
                raise refuse(
                    "UNSUPPORTED_CLAUSE",
                    "GROUPING SETS, CUBE and ROLLUP are not supported.",
                    "Run one query per grouping.",
                    group,
                )
        if group.args.get("all"):
            raise refuse(
                "UNSUPPORTED_CLAUSE",
                "GROUP BY ALL is not supported.",
                "List the GROUP BY columns.",
                group,
            )
        for j, g in enumerate(group.expressions):
            expr, alias = outputs.group_expression(g, items)
            name = outputs.key_name(expr, alias, j, items)
            outputs.add_key(make_key(expr, scope, name, terms))

    for item in items:
        outputs.add_item(item)

    having = select.args.get("having")
    if having is not None:
        outputs.set_having(having.this)
    order = select.args.get("order")
    if order is not None:
        outputs.set_order(order)
    outputs.set_limit(select.args.get("limit"), select.args.get("offset"))

    return build_plan(
        query_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        scope=scope,
        relations=relations,
        where=where_node,
        outputs=outputs,
        measures=measures,
    )


def _and_terms(node: exp.Expr) -> list[exp.Expr]:
    """The top-level AND terms of a condition (iteratively; chains can be long)."""
    terms, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, exp.Paren):
            stack.append(n.this)
        elif isinstance(n, exp.And):
            stack.extend([n.expression, n.this])
        else:
            terms.append(n)
    return terms


def _as_select(stmt: exp.Expr) -> exp.Select:
    if isinstance(stmt, exp.Select):
        for key, value in stmt.args.items():
            if not value or key in _SELECT_ARGS:
                continue
            name, hint = _CLAUSE_NAMES.get(key, (key.upper(), "See docs/queries.md."))
            raise refuse("UNSUPPORTED_CLAUSE", f"{name} is not supported.", hint, stmt)
        if stmt.args.get("kind"):
            raise refuse(
                "UNSUPPORTED_CLAUSE",
                "SELECT AS STRUCT/VALUE is not supported.",
                "Write a plain SELECT.",
                stmt,
            )
        return stmt
    if isinstance(stmt, exp.Union | exp.Intersect | exp.Except):
        raise refuse(
            "UNSUPPORTED_CLAUSE",
            "UNION, INTERSECT and EXCEPT are not supported.",
            "Put the parts in one SELECT as COUNT(*) FILTER (WHERE ...) columns, or GROUP BY "
            "a CASE key (CASE WHEN ... THEN 'a' ELSE 'b' END); or run one query per part.",
            stmt,
        )
    if isinstance(stmt, exp.With):
        raise refuse(
            "SUBQUERY",
            "WITH (common table expressions) is refused.",
            "Write one SELECT over the catalogue tables.",
            stmt,
        )
    kind = (
        str(stmt.this).split()[0].upper() if isinstance(stmt, exp.Command) else (stmt.key.upper())
    )
    raise refuse(
        "NOT_SELECT",
        f"Only SELECT queries are accepted; this statement is {kind}.",
        "Send one aggregate SELECT. The sandbox never changes, copies, attaches or "
        "configures anything on your behalf.",
        stmt,
    )
