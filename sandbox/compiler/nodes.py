"""Builders for the SQL the compiler writes: every statement is a sqlglot tree.

The compiler never formats SQL text. Names are identifiers made from catalogue
names or the compiler's own (``__v0``, ``t0``); numbers and strings are literals
made from Python values. sqlglot's generator does not add parentheses for
precedence, so the operators here wrap any compound operand themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlglot import exp

_ATOMS = (
    exp.Column,
    exp.Literal,
    exp.Boolean,
    exp.Null,
    exp.Paren,
    exp.Func,
    exp.Case,
    exp.Cast,
    exp.Bracket,
)


class PerUnitRef(exp.Expression):
    """A per-unit pre-aggregation read in FROM/JOIN (``views.expand`` puts it where the
    operator wrote the subquery or CTE name; ``this`` is its index in the list expand
    returns). The parser never makes this node, so operator text cannot name one."""

    arg_types = {"this": True, "alias": False}


def render(node: exp.Expr, *, pretty: bool = False) -> str:
    return node.sql(dialect="duckdb", comments=False, pretty=pretty)


def ident(name: str, *, quoted: bool = True) -> exp.Identifier:
    return exp.to_identifier(name, quoted=quoted)


def name(n: str) -> exp.Column:
    """A column the compiler named itself (``__v0``, ``__unit``, ``m0``)."""
    return exp.Column(this=ident(n, quoted=False))


def quoted(n: str) -> exp.Column:
    """A column by a catalogue or output name, always quoted."""
    return exp.Column(this=ident(n))


def table(n: str, alias: str | None = None, *, quote: bool = True) -> exp.Table:
    """A table by catalogue name (quoted), or one the compiler named (``quote=False``)."""
    t = exp.Table(this=ident(n, quoted=quote))
    if alias is not None:
        t.set("alias", exp.TableAlias(this=ident(alias, quoted=False)))
    return t


def num(x: int | float) -> exp.Expr:
    """A number literal from a Python value (ints as ints, floats by repr)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError("num() takes an int or a float")
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError("num() takes a finite number")
    text = str(abs(x)) if isinstance(x, int) else repr(abs(x))
    lit = exp.Literal.number(text)
    return exp.Neg(this=lit) if x < 0 else lit


def value(v: Any) -> exp.Expr:
    """A literal for a public value (bool, number or text)."""
    if isinstance(v, bool):
        return exp.Boolean(this=v)
    if isinstance(v, int | float):
        return num(v)
    return exp.Literal.string(str(v))


def wrap(e: exp.Expr) -> exp.Expr:
    return e if isinstance(e, _ATOMS) else exp.Paren(this=e)


def _bin(kind: type[exp.Expr], a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return kind(this=wrap(a), expression=wrap(b))


def add(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return _bin(exp.Add, a, b)


def sub(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return _bin(exp.Sub, a, b)


def mul(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return _bin(exp.Mul, a, b)


def div(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return _bin(exp.Div, a, b)


def eq(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return _bin(exp.EQ, a, b)


def gt(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return _bin(exp.GT, a, b)


def gte(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return _bin(exp.GTE, a, b)


def lt(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return _bin(exp.LT, a, b)


def lte(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return _bin(exp.LTE, a, b)


def and_(*terms: exp.Expr) -> exp.Expr:
    out = wrap(terms[0])
    for t in terms[1:]:
        out = exp.And(this=out, expression=wrap(t))
    return out


def cast(e: exp.Expr, to: str) -> exp.Cast:
    return exp.Cast(this=e, to=exp.DataType.build(to))


def try_(e: exp.Expr) -> exp.Expr:
    """TRY(e): a row whose expression fails gives NULL instead of ending the run."""
    return exp.Try(this=e)


def as_bool(e: exp.Expr) -> exp.Expr:
    return try_(cast(exp.Paren(this=e), "BOOLEAN"))


def when(cond: exp.Expr, then: exp.Expr, default: exp.Expr | None = None) -> exp.Case:
    return cases([(cond, then)], default)


def cases(branches: list[tuple[exp.Expr, exp.Expr]], default: exp.Expr | None = None) -> exp.Case:
    case = exp.Case(ifs=[exp.If(this=c, true=t) for c, t in branches])
    if default is not None:
        case.set("default", default)
    return case


def greatest(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    """DuckDB's GREATEST, which skips NULLs (ignore_nulls: rendered as written)."""
    return exp.Greatest(this=a, expressions=[b], ignore_nulls=True)


def least(a: exp.Expr, b: exp.Expr) -> exp.Expr:
    return exp.Least(this=a, expressions=[b], ignore_nulls=True)


def clamp(e: exp.Expr, lo: exp.Expr, hi: exp.Expr, *, null_if: exp.Expr | None = None) -> exp.Case:
    """CASE WHEN e IS NULL THEN NULL ELSE LEAST(GREATEST(e, lo), hi) END: the shape
    verify.py reads the bounds from. DuckDB's GREATEST skips NULLs, so the bare
    LEAST(GREATEST(...)) would turn a NULL into lo and COUNT, SUM and AVG would count
    it (issue 15); the guard keeps NULL NULL. ``null_if`` tests a cheaper expression
    that is NULL exactly when ``e`` is (a column ``e`` is computed from)."""
    guard = (e if null_if is None else null_if).copy()
    is_null = exp.Is(this=wrap(guard), expression=exp.Null())
    return when(is_null, exp.Null(), least(greatest(e, lo), hi))


def call(fname: str, *args: exp.Expr) -> exp.Anonymous:
    """A DuckDB function the compiler chose by name (hash, histogram, list_extract)."""
    return exp.Anonymous(this=fname, expressions=list(args))


def alias(e: exp.Expr, n: str, *, quote: bool = True) -> exp.Alias:
    return exp.Alias(this=e, alias=ident(n, quoted=quote))


def select(
    items: Sequence[exp.Expr],
    source: exp.Expr,
    *,
    joins: Sequence[exp.Expr] | None = None,
    where: exp.Expr | None = None,
    group: Sequence[exp.Expr] | None = None,
) -> exp.Select:
    sel = exp.Select(expressions=list(items), from_=exp.From(this=source))
    if joins:
        sel.set("joins", list(joins))
    if where is not None:
        sel.set("where", exp.Where(this=where))
    if group:
        sel.set("group", exp.Group(expressions=list(group)))
    return sel


def subquery(sel: exp.Select, alias_name: str | None = None) -> exp.Subquery:
    sub = exp.Subquery(this=sel)
    if alias_name is not None:
        sub.set("alias", exp.TableAlias(this=ident(alias_name, quoted=False)))
    return sub


def with_ctes(ctes: Sequence[tuple[str, exp.Expr]], final: exp.Select) -> exp.Select:
    final.set(
        "with_",
        exp.With(
            expressions=[
                exp.CTE(this=body, alias=exp.TableAlias(this=ident(n, quoted=False)))
                for n, body in ctes
            ]
        ),
    )
    return final
