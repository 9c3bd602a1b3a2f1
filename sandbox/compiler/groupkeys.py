"""GROUP BY keys: which are allowed, and which have public key values.

A key is a ``group`` column or a simple derivation of group columns (CASE,
FLOOR(age / 10) * 10, date_trunc, ...). Its values are public when every column it
reads has a public domain (a catalogue key set, the integer range of its bounds, or
BOOLEAN): the compiler then evaluates the key expression over that domain in an
in-memory DuckDB (no data, no files) and the runner keeps only rows whose key is in
the list, so no value outside the public list ever leaves the container. Otherwise
the key is private and its groups go through partition selection.

A *bucket* is a CASE (or IF) whose THEN and ELSE values are all literals, over columns
whose uses include ``filter`` (``CASE WHEN monthly_income < 2000 THEN 'low' ... END``):
its public values are those literals, whatever the data, so it is a public key even
when its columns have no ``group`` use or no public domain. It releases no more than
one ``COUNT(*) FILTER (WHERE ...)`` column per branch would. A row that matches no
branch (no ELSE) has a NULL key and is dropped, as every NULL key is.
"""

from __future__ import annotations

import decimal
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from sandbox import hostsql
from sandbox.catalog import Catalog, Use
from sandbox.compiler import nodes as n_
from sandbox.compiler import nofail
from sandbox.compiler.checks import ROW, rebuild, row_expr
from sandbox.compiler.nodes import render
from sandbox.compiler.scope import ColumnRef, Scope
from sandbox.compiler.text import refuse, snippet
from sandbox.errors import QueryRefused

MAX_PUBLIC_KEYS = 10_000  # larger derived key sets are treated as private
MAX_RANGE = 10_000  # integer bounds wider than this are not a public domain
MAX_DOMAIN = 200_000  # product of column domains evaluated for one key
KEY_TIMEOUT_S = 5.0  # evaluating one key over its public domain


@dataclass
class Key:
    name: str
    expr: exp.Expr  # the operator's expression
    canon: str  # resolved form, to match SELECT / ORDER BY items
    node: exp.Expr  # runner expression over the t-aliases
    source: str  # readable form for explain
    refs: list[ColumnRef]
    public: tuple[Any, ...] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def multi(self) -> bool:
        return any(r.source.multi for r in self.refs)


def resolved(node: exp.Expr, scope: Scope) -> exp.Expr:
    """The compiler's copy of a row expression over the runner's aliases, for matching
    SELECT / ORDER BY items to keys (no use check; refuses what the grammar refuses)."""

    def leaf(n: exp.Expr) -> exp.Expr | None:
        return scope.resolve(n).sql() if isinstance(n, exp.Column) else None

    return rebuild(node, ROW, "GROUP BY", leaf)


def canonical(node: exp.Expr, scope: Scope) -> str:
    return render(resolved(node, scope))


def runner_labels(scope: Scope) -> dict[tuple[str, str], str]:
    """(runner alias, column) -> table.column, for columns the compiler wrote."""
    return {(s.alias, c.name): s.label(c.name) for s in scope.sources for c in s.table.columns}


def _columns_to(tree: exp.Expr, fix: Callable[[exp.Column], exp.Expr]) -> exp.Expr:
    return tree.transform(lambda n: fix(n) if isinstance(n, exp.Column) else n)


def make_key(expr: exp.Expr, scope: Scope, name: str, where: list[exp.Expr] | None = None) -> Key:
    """Check a GROUP BY expression and work out its public values, if any.

    ``where`` holds the (rebuilt) WHERE clause's top-level AND terms: those that read
    only the key's own columns narrow its public values (a key no domain value can
    reach through the filter is never released). This uses the public domain only.
    A bucket (a CASE with literal outputs) whose columns lack ``group`` use, or whose
    values would be private, is public with its literal outputs as values."""
    outputs = bucket_outputs(expr)
    try:
        tree, refs = row_expr(expr, scope, Use.GROUP, "GROUP BY")
    except QueryRefused as exc:
        if outputs is None or exc.code != "COLUMN_NOT_ALLOWED":
            raise
        return _bucket_key(expr, scope, name, outputs)
    key = _new_key(expr, scope, name, tree, refs)
    key.public = _public_values(tree, refs, scope, key, where or [])
    if key.public is None and outputs is not None:
        try:
            return _bucket_key(expr, scope, name, outputs)
        except QueryRefused:
            pass  # a condition column without 'filter' use: the key stays private
    return key


def _new_key(expr: exp.Expr, scope: Scope, name: str, tree: exp.Expr, refs: list[ColumnRef]) -> Key:
    if not refs:
        raise refuse(
            "UNSUPPORTED_GROUP_KEY",
            f"The GROUP BY key '{snippet(expr)}' reads no column.",
            "Group by a column or an expression of one, e.g. FLOOR(age / 10) * 10.",
            expr,
        )
    labels = runner_labels(scope)

    def shown(c: exp.Column) -> exp.Expr:
        table, _, column = labels[(c.table, c.name)].partition(".")
        return exp.column(column, table=table)

    readable = _columns_to(tree, shown)
    return Key(
        name=name,
        expr=expr,
        canon=render(tree),
        node=nofail.try_(tree, nofail.column_types(scope)),  # a row that fails gives NULL
        source=render(readable),
        refs=refs,
    )


def _plain_literal(e: exp.Expr) -> bool:
    while isinstance(e, exp.Paren):
        e = e.this
    if isinstance(e, exp.Neg):
        return isinstance(e.this, exp.Literal) and not e.this.is_string
    return isinstance(e, exp.Literal | exp.Boolean | exp.Null)


def bucket_outputs(expr: exp.Expr) -> list[exp.Expr] | None:
    """The THEN / ELSE values of a CASE or IF whose outputs are all literals, else None."""
    while isinstance(expr, exp.Paren):
        expr = expr.this
    if isinstance(expr, exp.Case):
        outs = [b.args.get("true") for b in expr.args.get("ifs") or []]
        outs.append(expr.args.get("default"))
    elif isinstance(expr, exp.If):
        outs = [expr.args.get("true"), expr.args.get("false")]
    else:
        return None
    found = [o for o in outs if o is not None]
    if not found or not all(isinstance(o, exp.Expr) and _plain_literal(o) for o in found):
        return None
    return found


def _bucket_key(expr: exp.Expr, scope: Scope, name: str, outputs: list[exp.Expr]) -> Key:
    """A CASE with literal outputs over filter columns: public, its literals as values.
    The literals are evaluated by DuckDB in a CASE of the same outputs (not of the
    conditions), so each value has the type the runner's key column will have."""
    tree, refs = row_expr(expr, scope, Use.FILTER, "a GROUP BY CASE")
    key = _new_key(expr, scope, name, tree, refs)
    lits = [rebuild(o, ROW, "a GROUP BY CASE", lambda n: None) for o in outputs]
    i = n_.name("i")
    case = n_.cases([(n_.eq(i, n_.num(j)), lit) for j, lit in enumerate(lits)])
    numbers = n_.select(
        [n_.alias(n_.name("range"), "i", quote=False)],
        exp.Table(this=n_.call("range", n_.num(0), n_.num(len(lits)))),
    )
    inner = n_.select(
        [n_.alias(n_.try_(case), "k", quote=False), n_.alias(i.copy(), "o", quote=False)],
        n_.subquery(numbers, "d"),
    )
    outer = n_.select([n_.name("k")], n_.subquery(inner), group=[n_.name("k")])
    outer.set("order", exp.Order(expressions=[exp.Ordered(this=exp.Min(this=n_.name("o")))]))
    try:
        values = _evaluate(render(outer))
    except QueryRefused as exc:
        raise refuse(exc.code, exc.message, exc.hint, expr) from exc
    if values is None:
        raise refuse(
            "UNSUPPORTED_GROUP_KEY",
            f"The CASE key '{snippet(expr)}' has outputs that are not numbers or text.",
            "Give each branch a text or number literal: THEN 'low'.",
            expr,
        )
    key.public = values
    cols = ", ".join(sorted({r.label for r in refs}))
    key.notes.append(
        f"key {key.name}: public, {len(values)} values, the literal outputs of its CASE "
        f"over {cols} (filter use); rows that match no branch are dropped"
    )
    return key


def _domain(ref: ColumnRef, catalog: Catalog) -> tuple[exp.Expr, str] | None:
    """A column's public domain as a relation with columns v, i; and a description."""
    col = ref.column
    v, i = n_.name("v"), n_.name("i")
    if col.keys is not None:
        values = catalog.keys(col.keys)
        rows = [exp.Tuple(expressions=[n_.value(x), n_.num(j)]) for j, x in enumerate(values)]
        rel = exp.Values(
            expressions=rows,
            alias=exp.TableAlias(this=n_.ident("d", quoted=False), columns=[v.this, i.this]),
        )
        return rel, f"key set '{col.keys}' ({len(values)} values)"
    if col.type in ("INTEGER", "BIGINT") and col.bounds is not None:
        lo, hi = int(col.bounds[0]), int(col.bounds[1])
        if hi - lo + 1 <= MAX_RANGE:
            r = n_.name("range")
            sel = n_.select(
                [n_.alias(r, "v", quote=False), n_.alias(n_.sub(r, n_.num(lo)), "i", quote=False)],
                exp.Table(this=n_.call("range", n_.num(lo), n_.num(hi + 1))),
            )
            return n_.subquery(sel, "d"), f"the integer range of its bounds [{lo}, {hi}]"
    if col.type == "BOOLEAN":
        rows = [
            exp.Tuple(expressions=[n_.value(b), n_.num(j)]) for j, b in enumerate((False, True))
        ]
        rel = exp.Values(
            expressions=rows,
            alias=exp.TableAlias(this=n_.ident("d", quoted=False), columns=[v.this, i.this]),
        )
        return rel, "BOOLEAN"
    return None


def _domain_size(ref: ColumnRef, catalog: Catalog) -> int:
    col = ref.column
    if col.keys is not None:
        return len(catalog.keys(col.keys))
    if col.bounds is not None:
        return int(col.bounds[1]) - int(col.bounds[0]) + 1
    return 2


def _public_values(
    expr: exp.Expr,
    refs: list[ColumnRef],
    scope: Scope,
    key: Key,
    where: list[exp.Expr],
) -> tuple[Any, ...] | None:
    catalog = scope.catalog
    cols: dict[str, ColumnRef] = {}
    for r in refs:
        cols.setdefault(r.label, r)
    domains = {label: _domain(r, catalog) for label, r in cols.items()}
    missing = [label for label, d in domains.items() if d is None]
    if missing:
        key.notes.append(
            f"key {key.name}: private ({', '.join(missing)} has no public key set); "
            "groups are released by partition selection"
        )
        return None
    sizes = [_domain_size(r, catalog) for r in cols.values()]
    total = 1
    for s in sizes:
        total *= s
    if total > MAX_DOMAIN:
        key.notes.append(f"key {key.name}: private (its public domain is too large)")
        return None
    names = {label: f"c{j}" for j, label in enumerate(cols)}
    labels = runner_labels(scope)

    def to_placeholder(n: exp.Column) -> exp.Expr:
        return exp.column(names[labels[(n.table, n.name)]])

    body = _columns_to(expr, to_placeholder)
    parts: list[exp.Expr] = []
    order: exp.Expr | None = None
    stride = 1
    for j, (label, r) in enumerate(reversed(list(cols.items()))):
        rel, _ = domains[label]  # type: ignore[misc]
        c = names[label]
        items = [
            n_.alias(n_.cast(n_.name("v"), r.column.type), c, quote=False),
            n_.alias(n_.name("i"), f"i{c}", quote=False),
        ]
        parts.append(n_.subquery(n_.select(items, rel), f"x{j}"))
        term = n_.mul(n_.name(f"i{c}"), n_.num(stride))
        order = term if order is None else n_.add(order, term)
        stride *= _domain_size(r, catalog)
    filters = []
    for term in where:
        read = {labels.get((c.table, c.name)) for c in term.find_all(exp.Column)}
        if read and read <= set(cols):
            filters.append(_columns_to(term, to_placeholder))

    assert order is not None  # a key reads at least one column

    def query(narrow: list[exp.Expr]) -> str:
        assert order is not None
        inner = n_.select(
            [n_.alias(n_.wrap(body.copy()), "k", quote=False), n_.alias(order, "o", quote=False)],
            parts[0].copy(),
            joins=[exp.Join(this=p.copy(), kind="CROSS") for p in parts[1:]],
            where=n_.and_(*[f.copy() for f in narrow]) if narrow else None,
        )
        outer = n_.select([n_.name("k")], n_.subquery(inner), group=[n_.name("k")])
        outer.set("order", exp.Order(expressions=[exp.Ordered(this=exp.Min(this=n_.name("o")))]))
        return render(outer)

    try:
        values = _evaluate(query([]))
    except QueryRefused as exc:
        raise refuse(exc.code, exc.message, exc.hint, key.expr) from exc
    if filters and values is not None:
        try:
            values = _evaluate(query(filters))
            key.notes.append(f"key {key.name}: public values narrowed by the WHERE clause")
        except QueryRefused:
            pass  # the filter does not evaluate on the bare domain; keep the full list
    if values is None:
        key.notes.append(f"key {key.name}: private (its values are not plain numbers or text)")
        return None
    if len(values) > MAX_PUBLIC_KEYS:
        key.notes.append(f"key {key.name}: private (more than {MAX_PUBLIC_KEYS} public values)")
        return None
    described = "; ".join(d[1] for d in domains.values() if d is not None)
    key.notes.append(
        f"key {key.name}: public, {len(values)} values from {described}; "
        "rows outside them are dropped in the runner"
    )
    return values


@functools.lru_cache(maxsize=512)
def _evaluate(query: str) -> tuple[Any, ...] | None:
    """Run a key expression over public values only, in a DuckDB with no file access."""
    import duckdb

    try:
        with hostsql.connect() as con:
            rows = hostsql.run(con, query, timeout_s=KEY_TIMEOUT_S)
    except (duckdb.Error, hostsql.HostSQLTimeout) as exc:
        raise QueryRefused(
            "UNSUPPORTED_GROUP_KEY",
            "The GROUP BY key fails or takes too long on the column's public values (for "
            "example a CAST that does not fit).",
            hint="Simplify the key expression; see docs/queries.md.",
        ) from exc
    out: list[Any] = []
    for (v,) in rows:
        if v is None:
            continue  # NULL keys are dropped with the other rows outside the list
        if isinstance(v, decimal.Decimal):
            v = float(v)
        if isinstance(v, float) and not math.isfinite(v):
            continue
        if not isinstance(v, bool | int | float | str):
            return None
        out.append(v)
    return tuple(out)
