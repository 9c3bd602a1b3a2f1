"""The per-unit stages of a Plan, read back: verify.py's second check, continued.

A Plan with a per-unit pre-aggregation (preagg.py) starts with

    __unit_rows     SELECT <unit> AS __unit, <values __wN>
                    FROM <tables> [JOIN ...] [WHERE ...]
    __unit_over,    at most R rows per unit, only if R > 1 (R: the product of the stage's
    __unit_bounded  private tables' rows_per_unit, from the catalogue; verify_bound.py)
    __perunit       SELECT __unit AS "<unit>", <agg> AS __p0, ... FROM <previous>
                    GROUP BY __unit

with each ``<agg>`` one of CAST(SUM(__wN) AS BIGINT | DOUBLE), AVG(__wN), COUNT(*) and
COUNT(__wN). ``__unit_rows`` is held to the rules of ``__rows`` (catalogue columns of
the Plan's tables, each used as the grant allows; summed and averaged values clamped).
From the SQL and the catalogue alone the checker then derives each per-unit value's
bounds and uses — as preagg.py states them — and gives ``__rows`` a table
``__perunit`` with those columns and one row per unit, to read exactly once; every
per-unit value it aggregates must be clamped to those bounds (verify.py).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import ValidationError
from sqlglot import exp

from sandbox.catalog import MAX_INTEGER_SQUARES, Column, Table, Use
from sandbox.compiler.preagg import PER_UNIT_TABLE
from sandbox.compiler.sqlread import from_of
from sandbox.compiler.verify_bound import row_bound_ok

if TYPE_CHECKING:
    from sandbox.compiler.verify import _Verifier

UNIT_STAGES = ("__unit_rows", "__unit_over", "__unit_bounded", PER_UNIT_TABLE)
_W = re.compile(r"__w\d+")
_P = re.compile(r"__p\d+")


def unit_stages(v: _Verifier, ctes: dict[str, exp.Expr], order: list[str]) -> int | None:
    """Check the per-unit stages; set ``v.per_unit``; the index of ``__rows`` in
    ``order``, or None (with the problem noted) when the stages are not that shape."""
    rows = ctes.get(UNIT_STAGES[0])
    if not isinstance(rows, exp.Select):
        return None
    outer_re = v.value_re
    v.inner, v.value_re = True, _W
    try:
        v._rows(rows)
        bound = v.row_bound()
        i = 1
        if bound > 1:
            over, bounded = ctes.get(UNIT_STAGES[1]), ctes.get(UNIT_STAGES[2])
            if (
                order[1:3] != list(UNIT_STAGES[1:3])
                or over is None
                or bounded is None
                or not row_bound_ok(over, bounded, UNIT_STAGES[0], UNIT_STAGES[1], bound)
            ):
                v.bad("rows per unit are not bounded in the per-unit stage")
                return None
            i = 3
        if len(order) <= i or order[i] != PER_UNIT_TABLE:
            return None
        table = _per_unit_table(v, ctes[PER_UNIT_TABLE], order[i - 1], bound)
    finally:
        v.inner, v.value_re = False, outer_re
        v.aliases, v.values = {}, {}
    dataset = v.catalog.dataset(v.plan.dataset)
    if table is None or dataset is None:
        return None
    v.per_unit = (dataset, table)
    return i + 1


def _per_unit_table(v: _Verifier, stage: exp.Expr, prev: str, bound: int) -> Table | None:
    """The table __perunit offers the outer query, derived from its SELECT."""
    if not isinstance(stage, exp.Select):
        return None
    extra = {k for k, val in stage.args.items() if val} - {"expressions", "from_", "from", "group"}
    source = from_of(stage)
    group = stage.args.get("group")
    keys = group.expressions if group is not None else []
    if (
        extra
        or not isinstance(source, exp.Table)
        or source.name != prev
        or source.alias
        or len(keys) != 1
        or not isinstance(keys[0], exp.Column)
        or keys[0].table
        or keys[0].name != "__unit"
    ):
        v.bad("per-unit stage shape")
        return None
    items = stage.expressions
    unit = v.plan.privacy_unit
    first = items[0] if items else None
    if not (
        isinstance(first, exp.Alias)
        and first.alias == unit
        and isinstance(first.this, exp.Column)
        and not first.this.table
        and first.this.name == "__unit"
    ):
        v.bad("per-unit stage unit column")
        return None
    columns = [Column(name=unit, type="VARCHAR", uses=frozenset({Use.IDENTIFIER}))]
    for j, item in enumerate(items[1:]):
        if (
            not isinstance(item, exp.Alias)
            or item.alias != f"__p{j}"
            or not _P.fullmatch(item.alias)
        ):
            v.bad("per-unit value name")
            return None
        column = _per_unit_column(v, item.alias, item.this, bound)
        if column is None:
            return None
        columns.append(column)
    if len(columns) < 2:
        v.bad("per-unit stage computes nothing")
        return None
    try:
        return Table(
            name=PER_UNIT_TABLE,
            file=f"{PER_UNIT_TABLE}/{PER_UNIT_TABLE}",
            rows_per_unit=1,
            columns=tuple(columns),
        )
    except ValidationError:
        v.bad("per-unit bounds")
        return None


def _per_unit_column(v: _Verifier, name: str, e: exp.Expr, bound: int) -> Column | None:
    """One per-unit value: its bounds (from the clamp of the value it aggregates and R)
    and its uses (filter only when every column it reads has filter use)."""
    cast = e.args.get("to") if isinstance(e, exp.Cast) else None
    call = e.this if isinstance(e, exp.Cast) else e
    arg = call.this if isinstance(call, exp.Count | exp.Sum | exp.Avg) else None
    if isinstance(call, exp.Count) and isinstance(arg, exp.Star) and cast is None:
        return Column(name=name, type="BIGINT", uses=_uses(True, True), bounds=(0.0, bound))
    if not (isinstance(arg, exp.Column) and not arg.table and arg.name in v.values):
        v.bad(f"per-unit value {name}")
        return None
    cols = [c for w in v._closure([arg.name]) for c in v.values[w].cols]
    if isinstance(call, exp.Count) and cast is None:
        for c in cols:
            if not c.uses or Use.IDENTIFIER in c.uses:
                v.bad(f"per-unit value {name} counts {c.label}")
        filterable = all(Use.FILTER in c.uses for c in cols)
        return Column(name=name, type="BIGINT", uses=_uses(filterable, True), bounds=(0.0, bound))
    clamp = v.values[arg.name].clamp
    for c in cols:
        v._need(c, Use.AGGREGATE, f"per-unit value {name}")
    if clamp is None or not cols:
        v.bad(f"per-unit value {name} is not clamped")
        return None
    lo, hi = clamp
    uses = _uses(all(Use.FILTER in c.uses for c in cols), False)
    if isinstance(call, exp.Avg) and cast is None:
        return Column(name=name, type="DOUBLE", uses=uses, bounds=(lo, hi))
    kind = cast.this if isinstance(cast, exp.DataType) else None
    if not isinstance(call, exp.Sum) or kind not in (
        exp.DataType.Type.BIGINT,
        exp.DataType.Type.DOUBLE,
    ):
        v.bad(f"per-unit value {name}")
        return None
    lo, hi = min(lo, bound * lo), max(hi, bound * hi)
    integer = kind == exp.DataType.Type.BIGINT
    if integer and max(abs(lo), abs(hi)) ** 2 > MAX_INTEGER_SQUARES:
        v.bad(f"per-unit value {name}: integer squares could overflow")
    return Column(name=name, type="BIGINT" if integer else "DOUBLE", uses=uses, bounds=(lo, hi))


def _uses(filterable: bool, count: bool) -> frozenset[Use]:
    """As preagg.py: a per-unit count may also be grouped by (its domain 0..R is public)."""
    if not filterable:
        return frozenset({Use.AGGREGATE})
    return frozenset({Use.AGGREGATE, Use.FILTER} | ({Use.GROUP} if count else set()))
