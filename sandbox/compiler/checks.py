"""Which expressions may appear where, and the compiler's own copy of each one.

The grammar is an allowlist: for every node type the compiler accepts, the
arguments it may carry and what each holds (an expression, a list of them, a flag,
a date part, a cast type). Anything else is refused by default: a ``Var`` outside a
date-part slot, ``Anonymous`` functions, ``Command``, raw strings, unknown nodes,
and any argument a known node carries that the grammar does not list.

``rebuild`` does not pass the operator's tree on: it returns a fresh tree made of
nodes the compiler created itself. Columns become catalogue references made from
catalogue names, literals are re-created from their checked values (numbers must
look like numbers, strings are re-quoted by the generator), date parts come from a
fixed list and cast types from their enum. So no text the operator wrote can reach
the runner or post-processing SQL except as a re-created literal.

Three places take row-level expressions (WHERE, GROUP BY keys, an aggregate's
FILTER); one takes expressions over aggregates (SELECT/HAVING/ORDER BY, evaluated
after noise).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from sandbox.catalog import Use
from sandbox.compiler.scope import ColumnRef, Scope
from sandbox.compiler.text import func_name, refuse, snippet

# What an argument slot holds.
E = "expr"  # one expression
L = "list"  # a list of expressions
F = "flag"  # a Python bool set by the parser
PART = "part"  # an EXTRACT date part
UNIT = "unit"  # a date_trunc unit
TYPE = "type"  # a cast target type
POS = "pos"  # TRIM's LEADING / TRAILING / BOTH

Grammar = dict[type[exp.Expr], dict[str, str]]

_BINARY = {"this": E, "expression": E}
_UNARY = {"this": E}

_COMMON: Grammar = {
    exp.Paren: _UNARY,
    exp.Neg: _UNARY,
    exp.Not: _UNARY,
    exp.And: _BINARY,
    exp.Or: _BINARY,
    exp.EQ: _BINARY,
    exp.NEQ: _BINARY,
    exp.GT: _BINARY,
    exp.GTE: _BINARY,
    exp.LT: _BINARY,
    exp.LTE: _BINARY,
    exp.Is: {"this": E, "expression": E, "negate": F},
    exp.In: {"this": E, "expressions": L},
    exp.Between: {"this": E, "low": E, "high": E, "symmetric": F},
    exp.Like: {"this": E, "expression": E, "negate": F},
    exp.ILike: {"this": E, "expression": E, "negate": F},
    exp.Add: _BINARY,
    exp.Sub: _BINARY,
    exp.Mul: _BINARY,
    exp.Div: {"this": E, "expression": E, "typed": F, "safe": F},
    exp.IntDiv: _BINARY,
    exp.Mod: {"this": E, "expression": E, "safe": F},
    exp.Case: {"this": E, "ifs": L, "default": E},
    exp.If: {"this": E, "true": E, "false": E},
    exp.Cast: {"this": E, "to": TYPE, "safe": F},
    exp.TryCast: {"this": E, "to": TYPE, "safe": F, "requires_string": F},
    exp.Floor: {"this": E, "decimals": E},
    exp.Ceil: {"this": E, "decimals": E},
    exp.Round: {"this": E, "decimals": E},
    exp.Abs: _UNARY,
    exp.Coalesce: {"this": E, "expressions": L, "is_nvl": F, "is_null": F},
    exp.Least: {"this": E, "expressions": L, "ignore_nulls": F},
    exp.Greatest: {"this": E, "expressions": L, "ignore_nulls": F},
}
# Row-level expressions (WHERE, GROUP BY keys, FILTER): also text and dates.
ROW: Grammar = {
    **_COMMON,
    exp.Lower: _UNARY,
    exp.Upper: _UNARY,
    exp.Length: _UNARY,
    exp.Substring: {"this": E, "start": E, "length": E},
    exp.Trim: {"this": E, "expression": E, "position": POS},
    exp.Left: _BINARY,
    exp.Right: _BINARY,
    exp.Concat: {"expressions": L, "safe": F, "coalesce": F},
    exp.DPipe: {"this": E, "expression": E, "safe": F},
    exp.StartsWith: _BINARY,
    exp.DateTrunc: {"this": E, "unit": UNIT},
    exp.TimestampTrunc: {"this": E, "unit": UNIT},
    exp.Extract: {"this": PART, "expression": E},
    exp.Year: _UNARY,
    exp.Month: _UNARY,
    exp.Day: _UNARY,
    exp.Quarter: _UNARY,
    exp.DayOfWeek: _UNARY,
}
# Post-processing over noisy aggregates: arithmetic and a few numeric functions.
POST: Grammar = {
    **_COMMON,
    exp.Sqrt: _UNARY,
    exp.Ln: _UNARY,
    exp.Log: {"this": E, "expression": E},
    exp.Exp: _UNARY,
    exp.Pow: _BINARY,
}

EXTRACT_PARTS = frozenset(
    {
        "YEAR",
        "QUARTER",
        "MONTH",
        "WEEK",
        "DAY",
        "DOW",
        "DAYOFWEEK",
        "ISODOW",
        "DOY",
        "DAYOFYEAR",
        "ISOYEAR",
        "DECADE",
        "CENTURY",
    }
)
TRUNC_UNITS = frozenset({"YEAR", "QUARTER", "MONTH", "WEEK", "DAY", "DECADE", "CENTURY"})
_TRIM_POSITIONS = frozenset({"LEADING", "TRAILING", "BOTH"})
_CAST_TYPES = {
    exp.DataType.Type.INT,
    exp.DataType.Type.BIGINT,
    exp.DataType.Type.SMALLINT,
    exp.DataType.Type.DOUBLE,
    exp.DataType.Type.FLOAT,
    exp.DataType.Type.DECIMAL,
    exp.DataType.Type.VARCHAR,
    exp.DataType.Type.TEXT,
    exp.DataType.Type.DATE,
    exp.DataType.Type.BOOLEAN,
}
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
MAX_STRING = 1000
MAX_NUMBER_TEXT = 60

# A hook that makes the compiler's node for a leaf (a column, an aggregate) or
# returns None to let the grammar handle the node.
Leaf = Callable[[exp.Expr], exp.Expr | None]


def is_aggregate(node: exp.Expr) -> bool:
    return isinstance(node, exp.AggFunc | exp.WithinGroup | exp.Filter)


def contains_aggregate(node: exp.Expr) -> bool:
    return any(is_aggregate(n) for n in node.walk())


def forbid_everywhere(node: exp.Expr, *, include_self: bool = False) -> None:
    """Subqueries and window functions are refused wherever they appear (below ``node``,
    or from ``node`` itself with ``include_self``)."""
    for n in node.walk():
        if n is node and not include_self:
            continue
        if isinstance(n, exp.Window | exp.WindowSpec):
            raise refuse(
                "WINDOW_FUNCTION",
                f"Window functions such as '{snippet(n)}' are refused.",
                window_hint(n),
                n,
            )
        if isinstance(n, exp.Subquery | exp.Select | exp.Exists | exp.Union | exp.With):
            raise refuse(
                "SUBQUERY",
                f"Subqueries such as '{snippet(n)}' are refused here.",
                "Write the condition directly in WHERE or HAVING. A share of a total: "
                "100.0 * COUNT(*) FILTER (WHERE ...) / COUNT(*) in one SELECT. A condition "
                "on each unit's own total: pre-aggregate per unit in FROM, (SELECT "
                "person_id, SUM(amount) AS total ... GROUP BY person_id) t WHERE total > ...",
                n,
            )
        if isinstance(n, exp.Placeholder | exp.Parameter | exp.SessionParameter):
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"Parameters such as '{snippet(n)}' are refused.",
                "Write literal values into the query.",
                n,
            )


_GROWTH = (exp.Lag, exp.Lead, exp.FirstValue, exp.LastValue, exp.NthValue)
_RANKS = (exp.RowNumber, exp.Rank, exp.DenseRank, exp.PercentRank, exp.CumeDist, exp.Ntile)


def window_hint(n: exp.Expr) -> str:
    """What to write instead of a window function: the workaround for its usual aim."""
    func = n.this if isinstance(n, exp.Window) else None
    if isinstance(func, _GROWTH):
        return (
            "Growth and differences between periods: GROUP BY the period (year) and compute "
            "the change after download, or in one SELECT: SUM(amount) FILTER (WHERE year = "
            "2024) / SUM(amount) FILTER (WHERE year = 2023) - 1."
        )
    if isinstance(func, _RANKS):
        return (
            "Rank the released groups with ORDER BY n DESC LIMIT 10; the sandbox applies its "
            "own per-unit windows."
        )
    return (
        "Aggregate with GROUP BY. Per-unit totals: a per-unit subquery, (SELECT person_id, "
        "SUM(amount) AS total ... GROUP BY person_id) t, then AVG(total); running totals "
        "and shares of a total: compute them after download from the per-group results."
    )


def row_expr(
    node: exp.Expr,
    scope: Scope,
    use: Use,
    place: str,
    on_column: Callable[[exp.Column, ColumnRef], None] | None = None,
) -> tuple[exp.Expr, list[ColumnRef]]:
    """Check a row-level expression and rebuild it over the runner's table aliases.
    Returns the compiler's copy and the columns it reads (each allowed ``use``)."""
    refs: list[ColumnRef] = []

    def leaf(n: exp.Expr) -> exp.Expr | None:
        if is_aggregate(n):
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"The aggregate '{snippet(n)}' may not appear in {place}.",
                "Filter on aggregates with HAVING; aggregates cannot be nested.",
                n,
            )
        if isinstance(n, exp.Column):
            ref = scope.require(n, use, place)
            refs.append(ref)
            if on_column is not None:
                on_column(n, ref)
            return ref.sql()
        if isinstance(n, exp.In) and (n.args.get("query") or n.args.get("unnest")):
            raise refuse(
                "SUBQUERY",
                f"'{snippet(n)}': IN takes a list of values here.",
                "Write IN ('a', 'b', ...).",
                n,
            )
        return None

    return rebuild(node, ROW, place, leaf), refs


def rebuild(node: exp.Expr, grammar: Grammar, place: str, leaf: Leaf) -> exp.Expr:
    """A fresh copy of ``node`` made only of grammar nodes; ``leaf`` supplies the
    compiler's node for columns and aggregates. Refuses anything not in the grammar."""
    made = leaf(node)
    if made is not None:
        return made
    kind = type(node)
    if kind is exp.Literal:
        return _literal(node, place)
    if kind is exp.Boolean:
        return exp.Boolean(this=node.this is True)
    if kind is exp.Null:
        return exp.Null()
    slots = grammar.get(kind)
    if slots is None:
        raise _not_allowed(node, place)
    args: dict[str, Any] = {}
    for name, value in node.args.items():
        if value is None or value is False or (isinstance(value, list) and not value):
            continue
        slot = slots.get(name)
        if slot is None:
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"'{snippet(node)}' uses a form that is not supported in {place}.",
                "See docs/queries.md for the accepted SQL.",
                node,
            )
        args[name] = _slot(slot, value, node, grammar, place, leaf)
    return kind(**args)


def _slot(slot: str, value: Any, node: exp.Expr, grammar: Grammar, place: str, leaf: Leaf) -> Any:
    if slot == F:
        if not isinstance(value, bool):
            raise _not_allowed(node, place)
        return value
    if slot == L:
        if not isinstance(value, list):
            raise _not_allowed(node, place)
        return [rebuild(v, grammar, place, leaf) for v in value]
    if slot == POS:
        if not isinstance(value, str) or value.upper() not in _TRIM_POSITIONS:
            raise _not_allowed(node, place)
        return value.upper()
    if not isinstance(value, exp.Expr):
        raise _not_allowed(node, place)
    if slot == E:
        return rebuild(value, grammar, place, leaf)
    if slot == TYPE:
        return _cast_type(value)
    return _date_part(value, EXTRACT_PARTS if slot == PART else TRUNC_UNITS, node)


def _literal(node: exp.Expr, place: str) -> exp.Expr:
    text = node.this
    if not isinstance(text, str):
        raise _not_allowed(node, place)
    if node.args.get("is_string"):
        if len(text) > MAX_STRING:
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"A string literal is longer than {MAX_STRING} characters.",
                "Use shorter literals.",
                node,
            )
        return exp.Literal.string(text)
    if len(text) > MAX_NUMBER_TEXT or not _NUMBER.fullmatch(text):
        raise refuse(
            "UNSUPPORTED_EXPRESSION",
            f"'{snippet(node)}' is not a plain decimal number.",
            "Write numbers as digits, e.g. 42, 0.5 or 1e6.",
            node,
        )
    return exp.Literal.number(text)


def _date_part(value: exp.Expr, allowed: frozenset[str], node: exp.Expr) -> exp.Var:
    name = None
    if type(value) is exp.Var or (type(value) is exp.Literal and value.args.get("is_string")):
        name = str(value.this).upper()
    if name not in allowed:
        raise refuse(
            "UNSUPPORTED_EXPRESSION",
            f"'{snippet(node)}' does not name a date part this function accepts.",
            f"Use one of {', '.join(sorted(allowed))}.",
            node,
        )
    return exp.Var(this=name)


def _cast_type(value: exp.Expr) -> exp.DataType:
    bad = refuse(
        "UNSUPPORTED_EXPRESSION",
        f"CAST to '{snippet(value)}' is not supported.",
        "Cast to INTEGER, BIGINT, DOUBLE, DECIMAL, VARCHAR, DATE or BOOLEAN.",
        value,
    )
    if type(value) is not exp.DataType or value.this not in _CAST_TYPES:
        raise bad
    if any(v for k, v in value.args.items() if k not in ("this", "expressions", "nested")):
        raise bad
    params = value.expressions
    if not params:
        return exp.DataType(this=value.this, nested=False)
    if value.this != exp.DataType.Type.DECIMAL or len(params) > 2:
        raise bad
    made = []
    for p in params:
        lit = p.this if type(p) is exp.DataTypeParam and not p.args.get("expression") else None
        if not (type(lit) is exp.Literal and not lit.is_string and str(lit.this).isdigit()):
            raise bad
        if not 0 <= int(lit.this) <= 38:
            raise bad
        made.append(exp.DataTypeParam(this=exp.Literal.number(int(lit.this))))
    return exp.DataType(this=value.this, expressions=made, nested=False)


def _not_allowed(n: exp.Expr, place: str) -> Exception:
    if isinstance(n, exp.Func) and not isinstance(n, exp.Var):
        name = func_name(n)
        return refuse(
            "UNSUPPORTED_FUNCTION",
            f"The function {name.upper()} in '{snippet(n)}' is not supported in {place}.",
            "Supported: comparisons, IN, BETWEEN, LIKE, IS NULL, CASE, arithmetic, FLOOR, "
            "CEIL, ROUND, ABS, COALESCE, LOWER, UPPER, SUBSTRING, date_trunc, EXTRACT, "
            "year(), month(). See docs/queries.md.",
            n,
        )
    return refuse(
        "UNSUPPORTED_EXPRESSION",
        f"'{snippet(n)}' is not supported in {place}.",
        "See docs/queries.md for the accepted SQL.",
        n,
    )
