"""Reading generated SQL back: small readers that take sqlglot nodes apart.

Used by ``verify.py`` (the second check of a Plan). Each reader accepts only the exact
node shapes the compiler writes and answers None (or a sentinel) for anything else.
"""

from __future__ import annotations

import math
from typing import Any

from sqlglot import exp

__all__ = [
    "CLAUSE_AREAS",
    "clause_areas",
    "column_names",
    "relations",
    "size",
    "and_terms",
    "case_literals",
    "clamp_bounds",
    "from_of",
    "literal_value",
    "number",
    "same_bounds",
    "unwrap",
]


def from_of(select: exp.Select) -> exp.Expr | None:
    from_ = select.args.get("from_") or select.args.get("from")
    return from_.this if from_ is not None else None


def and_terms(node: exp.Expr) -> list[exp.Expr]:
    terms, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, exp.And):
            stack.extend([n.expression, n.this])
        else:
            terms.append(n)
    return terms


def unwrap(e: exp.Expr) -> exp.Expr:
    """TRY(CASE WHEN cond THEN x END) -> x (TRY and a FILTER keep the value or make
    it NULL)."""
    while True:
        if isinstance(e, exp.Paren | exp.Try):
            e = e.this
        elif (
            isinstance(e, exp.Case)
            and len(e.args.get("ifs") or []) == 1
            and not e.args.get("default")
            and e.this is None
        ):
            e = e.args["ifs"][0].args["true"]
        else:
            return e


def clamp_bounds(e: exp.Expr) -> tuple[float, float] | None:
    """(lo, hi) when ``e`` is CASE WHEN x IS NULL THEN NULL ELSE LEAST(GREATEST(x, lo),
    hi) END with number literals and the same x twice. The bare LEAST(GREATEST(x, lo),
    hi) is not a clamp here: it turns a NULL into lo (issue 15)."""
    ifs = e.args.get("ifs") if isinstance(e, exp.Case) else None
    if not (isinstance(e, exp.Case) and e.this is None and ifs and len(ifs) == 1):
        return None
    test, then, least = ifs[0].this, ifs[0].args.get("true"), e.args.get("default")
    if not (
        isinstance(test, exp.Is)
        and isinstance(test.expression, exp.Null)
        and isinstance(then, exp.Null)
        and isinstance(least, exp.Least)
        and len(least.expressions) == 1
    ):
        return None
    inner, hi = least.this, number(least.expressions[0])
    if not (isinstance(inner, exp.Greatest) and len(inner.expressions) == 1):
        return None
    guard = test.this.this if isinstance(test.this, exp.Paren) else test.this
    if guard != inner.this:
        return None
    lo = number(inner.expressions[0])
    if lo is None or hi is None:
        return None
    return lo, hi


def number(e: exp.Expr) -> float | None:
    neg = False
    if isinstance(e, exp.Neg):
        neg, e = True, e.this
    if isinstance(e, exp.Literal) and not e.is_string:
        try:
            v = float(e.this)
        except ValueError:
            return None
        return -v if neg else v
    return None


def literal_value(e: exp.Expr) -> object:
    if isinstance(e, exp.Boolean):
        return bool(e.this)
    if isinstance(e, exp.Literal):
        if e.is_string:
            return e.this
        v = number(e)
        return int(v) if v is not None and v.is_integer() and "." not in e.this else v
    if isinstance(e, exp.Neg):
        v = number(e)
        return int(v) if v is not None and v.is_integer() and "." not in e.this.this else v
    return object()


def same_bounds(
    clamp: tuple[float, float] | None, lower: float | None, upper: float | None
) -> bool:
    if clamp is None or lower is None or upper is None:
        return False
    return math.isclose(clamp[0], lower, abs_tol=1e-9) and math.isclose(
        clamp[1], upper, rel_tol=1e-12, abs_tol=1e-9
    )


def _is_literal(e: exp.Expr) -> bool:
    if isinstance(e, exp.Neg):
        return isinstance(e.this, exp.Literal) and not e.this.is_string
    return isinstance(e, exp.Literal | exp.Boolean | exp.Null)


def case_literals(e: exp.Expr) -> list[exp.Expr] | None:
    """The THEN / ELSE values of TRY(CASE ... END) (or IF) when all are literals: a
    bucket key, whose values are those literals whatever the data. Else None."""
    while isinstance(e, exp.Paren | exp.Try):
        e = e.this
    if isinstance(e, exp.Case):
        outs = [b.args.get("true") for b in e.args.get("ifs") or []]
        outs.append(e.args.get("default"))
    elif isinstance(e, exp.If):
        outs = [e.args.get("true"), e.args.get("false")]
    else:
        return None
    found = [o for o in outs if o is not None]
    if not found or not all(isinstance(o, exp.Expr) and _is_literal(o) for o in found):
        return None
    return found


# the clauses of a SELECT whose expressions may name columns
CLAUSE_AREAS = ("expressions", "where", "group", "having", "order", "qualify")


def column_names(alias: Any) -> list[str]:
    cols = alias.args.get("columns") if isinstance(alias, exp.TableAlias) else None
    return [c.name.lower() for c in cols or []]


def clause_areas(select: exp.Select) -> list[exp.Expr]:
    out: list[exp.Expr] = []
    for key in CLAUSE_AREAS:
        value = select.args.get(key)
        out.extend(v for v in (value if isinstance(value, list) else [value]) if v is not None)
    for join in select.args.get("joins") or []:
        on = join.args.get("on")
        if isinstance(on, exp.Expr):
            out.append(on)
    return out


def size(node: exp.Expr) -> int:
    return sum(1 for _ in node.walk())


def relations(select: exp.Select) -> list[exp.Expr | None]:
    from_ = select.args.get("from_") or select.args.get("from")
    return [from_.this if from_ is not None else None] + [
        j.this for j in select.args.get("joins") or []
    ]
