"""Which per-row expressions cannot fail, so need no TRY (issue 17, issue 20).

The compiler wraps a per-row value in TRY so that a value that fails (an overflow, a
cast of odd text, a date part of an impossible date) becomes NULL instead of failing
the job on one row's value (issue 20). TRY also stops DuckDB from pushing a filter
into the Parquet scan and costs a per-row error check, so it is left out where the
expression cannot fail whatever the row holds:

- a column, a number/text/boolean literal, NULL, a TRY(...) itself;
- ``x IS [NOT] NULL``, NOT / AND / OR of predicates, CASE WHEN <safe predicate> THEN
  <safe> ... END;
- =, <>, <, <=, >, >=, BETWEEN, IN (literals) where every side is a column or a literal
  of one class: numbers (INTEGER, BIGINT, DOUBLE columns and short number literals,
  whose common type is wide enough for both), text (VARCHAR columns, text literals) or
  booleans;
- GREATEST / LEAST of numbers as above (the clamp CASE over a numeric column).

Anything else (arithmetic, casts, string and date functions, DATE columns compared
with text, columns of a per-unit stage) keeps its TRY. The rule is structural and
reads only the catalogue's column types, never data.
"""

from __future__ import annotations

from sqlglot import exp

from sandbox.compiler import nodes as n_
from sandbox.compiler.scope import Scope

Types = dict[tuple[str, str], str]  # (runner alias, column) -> catalogue type

_NUMERIC = {"INTEGER", "BIGINT", "DOUBLE"}
_COMPARE = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_MAX_NUMBER_TEXT = 15  # a DECIMAL literal of at most 15 digits widens any of _NUMERIC


def column_types(scope: Scope) -> Types:
    """The catalogue type of every column the runner reads directly (not those of a
    per-unit stage, whose columns are computed)."""
    return {
        (s.alias, c.name): str(c.type)
        for s in scope.sources
        if not s.per_unit
        for c in s.table.columns
    }


def _class(e: exp.Expr, types: Types) -> str | None:
    """'num', 'text', 'bool' or 'null' for a column or literal operand, else None."""
    while isinstance(e, exp.Paren):
        e = e.this
    if isinstance(e, exp.Column):
        t = types.get((e.table, e.name))
        if t in _NUMERIC:
            return "num"
        return {"VARCHAR": "text", "BOOLEAN": "bool"}.get(t or "")
    if isinstance(e, exp.Neg):
        e = e.this
        if not (isinstance(e, exp.Literal) and not e.is_string):
            return None
    if isinstance(e, exp.Null):
        return "null"
    if isinstance(e, exp.Boolean):
        return "bool"
    if isinstance(e, exp.Literal):
        if e.is_string:
            return "text"
        return "num" if len(e.this) <= _MAX_NUMBER_TEXT else None
    return None


def _same_class(operands: list[exp.Expr], types: Types) -> bool:
    classes = {_class(o, types) for o in operands}
    classes.discard("null")
    return None not in classes and len(classes) <= 1


def is_predicate(e: exp.Expr, types: Types) -> bool:
    """A boolean-valued expression that cannot fail (so needs neither TRY nor a cast
    to BOOLEAN)."""
    while isinstance(e, exp.Paren):
        e = e.this
    if isinstance(e, exp.And | exp.Or):
        return is_predicate(e.this, types) and is_predicate(e.expression, types)
    if isinstance(e, exp.Not):
        return is_predicate(e.this, types)
    if isinstance(e, exp.Boolean):
        return True
    if isinstance(e, exp.Column):
        return _class(e, types) == "bool"
    if isinstance(e, exp.Is):
        return isinstance(e.expression, exp.Null) and cannot_fail(e.this, types)
    if isinstance(e, _COMPARE):
        return _same_class([e.this, e.expression], types)
    if isinstance(e, exp.Between):
        return _same_class([e.this, e.args["low"], e.args["high"]], types)
    if isinstance(e, exp.In):
        if e.args.get("query") or e.args.get("unnest") or e.args.get("field"):
            return False
        return _same_class([e.this, *e.expressions], types)
    return False


def cannot_fail(e: exp.Expr, types: Types) -> bool:
    """True when evaluating ``e`` on any row cannot raise an error."""
    while isinstance(e, exp.Paren):
        e = e.this
    if isinstance(e, exp.Try):
        return True
    if _class(e, types) is not None:
        return True
    if is_predicate(e, types):
        return True
    if isinstance(e, exp.Case):
        if e.this is not None:
            return False
        for branch in e.args.get("ifs") or []:
            if not (is_predicate(branch.this, types) and cannot_fail(branch.args["true"], types)):
                return False
        default = e.args.get("default")
        return default is None or cannot_fail(default, types)
    if isinstance(e, exp.Greatest | exp.Least):
        operands = [e.this, *e.expressions]
        if not all(cannot_fail(o, types) for o in operands):
            return False
        return all(_numeric(o, types) for o in operands)
    return False


def _numeric(e: exp.Expr, types: Types) -> bool:
    """A safe expression whose value is a number of _NUMERIC (or NULL)."""
    while isinstance(e, exp.Paren):
        e = e.this
    if _class(e, types) in ("num", "null"):
        return True
    if isinstance(e, exp.Greatest | exp.Least):
        return all(_numeric(o, types) for o in [e.this, *e.expressions])
    if isinstance(e, exp.Case):
        outs = [b.args["true"] for b in e.args.get("ifs") or []]
        outs.append(e.args.get("default") or exp.Null())
        return all(_numeric(o, types) for o in outs)
    return False


def try_(e: exp.Expr, types: Types) -> exp.Expr:
    """TRY(e), or ``e`` itself when it cannot fail."""
    return e if cannot_fail(e, types) else n_.try_(e)


def as_bool(e: exp.Expr, types: Types) -> exp.Expr:
    """TRY(CAST((e) AS BOOLEAN)), or ``(e)`` when ``e`` is a predicate that cannot fail."""
    return exp.Paren(this=e) if is_predicate(e, types) else n_.as_bool(e)
