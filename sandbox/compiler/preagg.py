"""Per-unit pre-aggregation: aggregate each unit's rows first, then over units.

``SELECT AVG(total) FROM (SELECT person_id, SUM(amount) AS total FROM payments GROUP
BY person_id) t`` (also as a CTE) asks for the mean per-person total. The inner query
is compiled like any query over its own tables (runner aliases ``u0`` ...): rows pass
its WHERE, every aggregated value is clamped to its catalogue bounds, each unit keeps
at most R rows (its tables' ``rows_per_unit``), and one row per unit comes out of
``GROUP BY __unit`` with its per-unit values. Each value then has bounds derived from
the catalogue alone:

==================  ==========================================  =====================
per unit            bounds                                      uses in the outer query
==================  ==========================================  =====================
SUM(x), x in [a,b]  [min(a, R·a), max(b, R·b)]                  aggregate (+ filter)
AVG(x)              [a, b]                                      aggregate (+ filter)
COUNT(*)            [0, R]                                      aggregate, filter, group
COUNT(x)            [0, R]                                      aggregate (+ filter, group)
==================  ==========================================  =====================

(+ filter: when every column the value reads has ``filter`` use under the grant, so a
per-unit value never lets an operator filter on a column the grant does not let them
filter on.) The outer query reads those rows as a table ``__perunit`` with one row per
unit — it may join tables with one row per unit (``insured``) on the unit, and lookup
tables — so its own bounds are R = 1 and G = 1, and every value it aggregates is
clamped again, to the derived bounds, which the privacy layer's sensitivity uses. A
unit's per-unit values depend on its own rows only, so nothing one unit does changes
another unit's row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError
from sqlglot import exp

from sandbox.catalog import MAX_INTEGER_SQUARES, Catalog, Column, Table, Use
from sandbox.compiler import nodes as n_
from sandbox.compiler import nofail
from sandbox.compiler.checks import is_aggregate, row_expr
from sandbox.compiler.measures import Measures
from sandbox.compiler.scope import Scope, Source, build_scope
from sandbox.compiler.text import func_name, refuse, snippet
from sandbox.grants import Grant

__all__ = ["PER_UNIT_TABLE", "PerUnit", "PerUnitView", "compile_per_unit", "per_unit_view"]

PER_UNIT_TABLE = "__perunit"


@dataclass
class PerUnitView:
    """``SELECT unit, AGG(...) AS name, ... FROM ... GROUP BY unit`` with its views
    inlined and its columns qualified (views.py), before any check."""

    name: str
    body: exp.Select
    columns: list[str]  # output names, lower case, in order


def per_unit_view(body: exp.Select, name: str, renames: list[str]) -> PerUnitView:
    """The shape only: one GROUP BY expression and a name for every column."""
    group = body.args.get("group")
    if group is None or len(group.expressions) != 1:
        raise refuse(
            "SUBQUERY",
            f"'{name}' aggregates, but not per unit: a CTE or subquery may aggregate only "
            "with GROUP BY the privacy unit alone.",
            _NOT_PER_UNIT,
            body,
        )
    cols: list[str] = []
    for item in body.expressions:
        if isinstance(item, exp.Alias):
            cols.append(item.alias.lower())
        elif isinstance(item, exp.Column) and not isinstance(item.this, exp.Star):
            cols.append(item.name.lower())
        else:
            raise refuse(
                "SUBQUERY",
                f"The column '{snippet(item)}' of '{name}' has no name.",
                "Name each per-unit value: SUM(amount) AS total.",
                item,
            )
    if len(renames) > len(cols):
        raise refuse(
            "SUBQUERY",
            f"'{name}' names {len(renames)} columns but selects {len(cols)}.",
            "Name as many columns as the SELECT has.",
            body,
        )
    cols = [renames[i] if i < len(renames) else c for i, c in enumerate(cols)]
    if len(set(cols)) != len(cols):
        raise refuse("SUBQUERY", f"Two columns of '{name}' have one name.", "Name each once.", body)
    return PerUnitView(name=name, body=body, columns=cols)


_NOT_PER_UNIT = (
    "Aggregate in the outer query (SELECT sex, COUNT(*) ... GROUP BY sex) and compute "
    "further figures after download. For per-unit values, GROUP BY the privacy unit "
    "alone inside (SELECT person_id, SUM(amount) AS total ... GROUP BY person_id) and "
    "aggregate outside (AVG(total)); for per-unit figures by another column, join a "
    "one-row-per-unit table in the outer query."
)


@dataclass
class PerUnit:
    """A compiled per-unit stage: what build.py writes and the outer scope reads."""

    view: PerUnitView
    scope: Scope  # the inner query's tables (aliases u0 ...)
    relations: list[exp.Expr]
    where: exp.Expr | None
    values: Measures  # per-row values __w0 ... (clamped, filtered)
    aggs: list[tuple[str, exp.Expr]]  # __p0 ... and its aggregate over the values
    rows: int  # R: rows per unit kept by the inner stage
    source: Source  # the outer query's table __perunit
    notes: list[str] = field(default_factory=list)


def compile_per_unit(view: PerUnitView, catalog: Catalog, grant: Grant) -> PerUnit:
    """Check and compile the inner query; refuse what does not aggregate per unit."""
    body = view.body
    scope, relations = build_scope(body, catalog, grant, prefix="u")
    dataset = scope.private_dataset
    unit = dataset.privacy_unit or ""
    items = list(body.expressions)
    group = body.args["group"].expressions[0]
    if isinstance(group, exp.Column) and not group.table:  # GROUP BY an output alias
        group = next(
            (
                i.this
                for i in items
                if isinstance(i, exp.Alias) and i.alias.lower() == group.name.lower()
            ),
            group,
        )
    elif (
        isinstance(group, exp.Literal)
        and not group.is_string
        and group.this.isdigit()
        and 1 <= int(group.this) <= len(items)
    ):  # GROUP BY a position
        item = items[int(group.this) - 1]
        group = item.this if isinstance(item, exp.Alias) else item
    if not _is_unit(group, scope):
        raise refuse(
            "SUBQUERY",
            f"'{view.name}' is grouped by '{snippet(group)}', not by the privacy unit "
            f"({unit}): pre-aggregation is per unit only.",
            _NOT_PER_UNIT,
            group,
        )
    where = body.args.get("where")
    cond = None
    if where is not None:
        tree, _ = row_expr(where.this, scope, Use.FILTER, "WHERE")
        cond = nofail.as_bool(tree, nofail.column_types(scope))
    values = Measures(scope, prefix="__w")
    rows = scope.unit_rows
    unit_col = scope.unit_source.table.column(unit)
    columns = [
        Column(
            name=unit,
            type=unit_col.type if unit_col else "VARCHAR",
            uses=frozenset({Use.IDENTIFIER}),
        )
    ]
    renames: dict[str, str] = {}
    labels: dict[str, str] = {}
    aggs: list[tuple[str, exp.Expr]] = []
    notes: list[str] = []
    for item, name in zip(items, view.columns, strict=True):
        expr = item.this if isinstance(item, exp.Alias) else item
        if _is_unit(expr, scope):
            renames[name] = unit
            continue
        col_name = f"__p{len(aggs)}"
        agg, column, what = _per_unit_value(expr, values, rows, col_name, view.name)
        columns.append(column)
        aggs.append((col_name, agg))
        renames[name] = col_name
        labels[col_name] = f"{view.name}.{name}"
        lo, hi = column.bounds or (0.0, 0.0)
        notes.append(
            f"per-unit value {view.name}.{name} = {what} per {unit}, over at most {rows} "
            f"row(s) per {unit}: bounds [{lo:g}, {hi:g}]"
        )
    if not aggs:
        raise refuse(
            "SUBQUERY",
            f"'{view.name}' computes no per-unit value.",
            "Select at least one aggregate per unit: SUM(amount) AS total.",
            body,
        )
    try:
        table = Table(
            name=PER_UNIT_TABLE,
            file=f"{PER_UNIT_TABLE}/{PER_UNIT_TABLE}",
            rows_per_unit=1,
            columns=tuple(columns),
        )
    except ValidationError as exc:
        raise refuse(
            "UNBOUNDED_COLUMN",
            f"The per-unit values of '{view.name}' have bounds too large to add noise to.",
            "Aggregate fewer rows per unit (a narrower WHERE) or a column with smaller bounds.",
            body,
        ) from exc
    source = Source(
        alias="",
        names=set(),
        dataset=dataset,
        table=table,
        renames=renames,
        labels=labels,
    )
    notes.append(
        f"per-unit pre-aggregation '{view.name}': the outer query reads one row per {unit} "
        "(rows per unit 1, groups per unit 1), each value clamped again to its bounds"
    )
    notes.extend(n for n in values.notes if n not in notes)
    return PerUnit(view, scope, relations, cond, values, aggs, rows, source, notes)


def _is_unit(node: exp.Expr, scope: Scope) -> bool:
    while isinstance(node, exp.Paren):
        node = node.this
    if not isinstance(node, exp.Column):
        return False
    ref = scope.resolve(node)
    return ref.source.private and ref.column.name == scope.private_dataset.privacy_unit


def _per_unit_value(
    node: exp.Expr, values: Measures, rows: int, name: str, view: str
) -> tuple[exp.Expr, Column, str]:
    """The per-unit aggregate over the stage's values, its column for the outer query
    (type, derived bounds and uses) and how explain names it."""
    core = node
    while isinstance(core, exp.Paren):
        core = core.this
    if not is_aggregate(core):
        raise refuse(
            "SUBQUERY",
            f"'{snippet(node)}' in '{view}' is neither the privacy unit nor one aggregate: "
            "a per-unit subquery groups by the unit alone and selects one aggregate per "
            "column.",
            "Select each aggregate as its own column (SUM(a) AS x, COUNT(*) AS n) and "
            "combine them in the outer query or after download; for a unit's other "
            "columns join a one-row-per-unit table (insured) in the outer query.",
            node,
        )
    call, cond, _ = values.filtered(core)
    what = snippet(core)
    unit = values.scope.private_dataset.privacy_unit or "unit"
    if isinstance(call, exp.Count):
        arg = call.this
        if isinstance(arg, exp.Distinct):
            raise refuse(
                "UNSUPPORTED_AGGREGATE",
                f"'{snippet(call)}': COUNT(DISTINCT ...) per unit is not supported.",
                f"Count rows per unit with COUNT(*); count units outside with "
                f"COUNT(DISTINCT {unit}).",
                call,
            )
        if (
            arg is None
            or isinstance(arg, exp.Star)
            or (isinstance(arg, exp.Literal) and not arg.is_string)
        ):
            agg: exp.Expr = (
                exp.Count(this=exp.Star())
                if cond is None
                else exp.Count(this=values.value(n_.when(cond, n_.num(1))))
            )
            filterable = True
        elif isinstance(arg, exp.Column):
            ref = values.scope.resolve(arg)
            if Use.IDENTIFIER in ref.uses or not ref.uses:
                raise refuse(
                    "IDENTIFIER_EXPOSED" if Use.IDENTIFIER in ref.uses else "COLUMN_NOT_ALLOWED",
                    f"'{snippet(call)}' counts '{ref.label}', which may not be used so.",
                    "Count rows per unit with COUNT(*).",
                    call,
                )
            col = ref.sql()
            agg = exp.Count(this=values.value(col if cond is None else n_.when(cond, col)))
            filterable = Use.FILTER in ref.uses
        else:
            raise refuse(
                "UNSUPPORTED_AGGREGATE",
                f"'{snippet(call)}': COUNT takes * or a column.",
                "Count rows per unit with COUNT(*) and narrow them with FILTER (WHERE ...).",
                call,
            )
        uses = frozenset({Use.AGGREGATE} | ({Use.FILTER, Use.GROUP} if filterable else set()))
        column = Column(name=name, type="BIGINT", uses=uses, bounds=(0.0, float(rows)))
        return agg, column, what
    if isinstance(call, exp.Sum | exp.Avg):
        ref = values.bounded(call, call.this)
        sql, lo, hi, integer = values.clamped(ref, cond)
        v = values.value(sql)
        uses = frozenset({Use.AGGREGATE} | ({Use.FILTER} if Use.FILTER in ref.uses else set()))
        if isinstance(call, exp.Avg):
            agg = exp.Avg(this=v)
            column = Column(name=name, type="DOUBLE", uses=uses, bounds=(lo, hi))
            return agg, column, what
        lo, hi = min(lo, rows * lo), max(hi, rows * hi)
        reach = max(abs(lo), abs(hi))
        integer = integer and reach * reach <= MAX_INTEGER_SQUARES
        agg = n_.cast(exp.Sum(this=v), "BIGINT" if integer else "DOUBLE")
        column = Column(
            name=name, type="BIGINT" if integer else "DOUBLE", uses=uses, bounds=(lo, hi)
        )
        return agg, column, what
    raise refuse(
        "UNSUPPORTED_AGGREGATE",
        f"The aggregate {func_name(call).upper()} in '{snippet(call)}' is not supported per unit.",
        "Per unit: SUM, AVG and COUNT; take quantiles, spreads and means of the per-unit "
        "values in the outer query (MEDIAN(total)).",
        call,
    )
