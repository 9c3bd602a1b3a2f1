"""Which expressions may appear where. Whitelists, checked without recursion.

Three places take row-level expressions (WHERE, GROUP BY keys, an aggregate's
FILTER); one takes expressions over aggregates (SELECT/HAVING/ORDER BY, evaluated
after noise). Anything not listed is refused, so the runner SQL can only contain
functions we chose (no file access, no settings, no randomness from the operator).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from sandbox.catalog import Use
from sandbox.compiler.scope import ColumnRef, Scope
from sandbox.compiler.text import func_name, refuse, snippet

# Row-level building blocks (WHERE, keys, FILTER).
_ROW_NODES: tuple[type[exp.Expr], ...] = (
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Boolean,
    exp.Null,
    exp.Paren,
    exp.Neg,
    exp.Not,
    exp.And,
    exp.Or,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.Is,
    exp.In,
    exp.Between,
    exp.Like,
    exp.ILike,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.IntDiv,
    exp.Mod,
    exp.Case,
    exp.If,
    exp.Cast,
    exp.TryCast,
    exp.DataType,
    exp.DataTypeParam,
    exp.Var,
    exp.Floor,
    exp.Ceil,
    exp.Round,
    exp.Abs,
    exp.Coalesce,
    exp.Least,
    exp.Greatest,
    exp.Lower,
    exp.Upper,
    exp.Length,
    exp.Substring,
    exp.Trim,
    exp.Left,
    exp.Right,
    exp.Concat,
    exp.DPipe,
    exp.StartsWith,
    exp.DateTrunc,
    exp.TimestampTrunc,
    exp.Extract,
    exp.Year,
    exp.Month,
    exp.Day,
    exp.Quarter,
    exp.DayOfWeek,
)
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
# Post-processing over noisy aggregates: arithmetic and a few numeric functions.
_POST_NODES: tuple[type[exp.Expr], ...] = (
    exp.Literal,
    exp.Null,
    exp.Boolean,
    exp.Paren,
    exp.Neg,
    exp.Not,
    exp.And,
    exp.Or,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.Is,
    exp.In,
    exp.Between,
    exp.Like,
    exp.ILike,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.IntDiv,
    exp.Mod,
    exp.Round,
    exp.Abs,
    exp.Floor,
    exp.Ceil,
    exp.Sqrt,
    exp.Ln,
    exp.Log,
    exp.Exp,
    exp.Pow,
    exp.Coalesce,
    exp.Least,
    exp.Greatest,
    exp.Cast,
    exp.TryCast,
    exp.DataType,
    exp.Case,
    exp.If,
)


def is_aggregate(node: exp.Expr) -> bool:
    return isinstance(node, exp.AggFunc | exp.WithinGroup | exp.Filter)


def contains_aggregate(node: exp.Expr) -> bool:
    return any(is_aggregate(n) for n in node.walk())


def forbid_everywhere(node: exp.Expr) -> None:
    """Subqueries and window functions are refused wherever they appear."""
    for n in node.walk():
        if n is node:
            continue
        if isinstance(n, exp.Window | exp.WindowSpec):
            raise refuse(
                "WINDOW_FUNCTION",
                f"Window functions such as '{snippet(n)}' are refused.",
                "Aggregate with GROUP BY; per-unit windows are applied by the sandbox.",
                n,
            )
        if isinstance(n, exp.Subquery | exp.Select | exp.Exists | exp.Union | exp.With):
            raise refuse(
                "SUBQUERY",
                f"Subqueries and CTEs such as '{snippet(n)}' are refused.",
                "Write one SELECT over the catalogue tables; filter with WHERE or HAVING.",
                n,
            )
        if isinstance(n, exp.Placeholder | exp.Parameter | exp.SessionParameter):
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"Parameters such as '{snippet(n)}' are refused.",
                "Write literal values into the query.",
                n,
            )


def check_row_expr(
    node: exp.Expr,
    scope: Scope,
    use: Use,
    place: str,
    on_column: Callable[[exp.Column, ColumnRef], None] | None = None,
) -> list[ColumnRef]:
    """Check a row-level expression; return the columns it reads (each allowed ``use``)."""
    refs: list[ColumnRef] = []
    for n in node.walk():
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
            continue
        if isinstance(n, exp.Identifier):
            continue
        check_node(n, _ROW_NODES, place)
        if isinstance(n, exp.In) and (n.args.get("query") or n.args.get("unnest")):
            raise refuse(
                "SUBQUERY",
                f"'{snippet(n)}': IN takes a list of values here.",
                "Write IN ('a', 'b', ...).",
                n,
            )
    return refs


def check_node(n: exp.Expr, allowed: tuple[type[exp.Expr], ...], place: str) -> None:
    if isinstance(n, exp.Literal) and n.is_string and len(n.this) > 1000:
        raise refuse(
            "UNSUPPORTED_EXPRESSION",
            "A string literal is longer than 1000 characters.",
            "Use shorter literals.",
            n,
        )
    if isinstance(n, exp.DataType):
        if n.this not in _CAST_TYPES or n.expressions and n.this != exp.DataType.Type.DECIMAL:
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"CAST to '{snippet(n)}' is not supported.",
                "Cast to INTEGER, BIGINT, DOUBLE, DECIMAL, VARCHAR, DATE or BOOLEAN.",
                n,
            )
        return
    if isinstance(n, exp.Var):
        return  # date parts: date_trunc('month', d), EXTRACT(year FROM d)
    if isinstance(n, allowed):
        return
    if isinstance(n, exp.Func):
        name = func_name(n)
        raise refuse(
            "UNSUPPORTED_FUNCTION",
            f"The function {name.upper()} in '{snippet(n)}' is not supported in {place}.",
            "Supported: comparisons, IN, BETWEEN, LIKE, IS NULL, CASE, arithmetic, FLOOR, "
            "CEIL, ROUND, ABS, COALESCE, LOWER, UPPER, SUBSTRING, date_trunc, EXTRACT, "
            "year(), month(). See docs/queries.md.",
            n,
        )
    raise refuse(
        "UNSUPPORTED_EXPRESSION",
        f"'{snippet(n)}' is not supported in {place}.",
        "See docs/queries.md for the accepted SQL.",
        n,
    )


def check_post_node(n: exp.Expr, place: str) -> None:
    check_node(n, _POST_NODES, place)
