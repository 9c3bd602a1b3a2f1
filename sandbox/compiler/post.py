"""The operator's outputs: SELECT items, HAVING, ORDER BY, LIMIT — all evaluated on
noisy aggregates (post-processing), never on rows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlglot import exp

from sandbox.compiler import nodes as n_
from sandbox.compiler.checks import POST, contains_aggregate, is_aggregate, rebuild
from sandbox.compiler.groupkeys import Key, canonical
from sandbox.compiler.measures import Measures
from sandbox.compiler.nodes import render
from sandbox.compiler.scope import Scope
from sandbox.compiler.text import func_name, refuse, snippet
from sandbox.errors import QueryRefused
from sandbox.plan import Output, OutputKind

_RESERVED = re.compile(r"^(m\d+|__.*|noisy)$", re.IGNORECASE)
# Output names reach the SQL as quoted identifiers: letters (any script), digits,
# underscores, spaces and hyphens only, so a name is never more than a name.
_NAME = re.compile(r"\w[\w \-]*")
MAX_LIMIT = 1_000_000


def quote(name: str) -> str:
    """A quoted identifier as text, for explain and docs (the SQL itself is a tree)."""
    return render(exp.to_identifier(name, quoted=True))


@dataclass
class Outputs:
    scope: Scope
    measures: Measures
    keys: list[Key] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    exprs: dict[str, exp.Expr] = field(default_factory=dict)  # output name -> its node
    having: exp.Expr | None = None
    order: list[exp.Ordered] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None

    # -- GROUP BY ------------------------------------------------------------------------

    def group_expression(self, g: exp.Expr, items: list[exp.Expr]) -> tuple[exp.Expr, str | None]:
        """Resolve GROUP BY ordinals and select aliases to the expression they name."""
        if isinstance(g, exp.Literal) and not g.is_string:
            try:
                n = int(g.this)
            except ValueError:
                n = 0
            if not 1 <= n <= len(items):
                raise refuse(
                    "UNSUPPORTED_GROUP_KEY",
                    f"GROUP BY {g.this} is not a SELECT position.",
                    f"Positions run from 1 to {len(items)}.",
                    g,
                )
            item = items[n - 1]
            expr = item.this if isinstance(item, exp.Alias) else item
            if contains_aggregate(expr):
                raise refuse(
                    "UNSUPPORTED_GROUP_KEY",
                    f"GROUP BY {n} points at an aggregate.",
                    "Group by columns, not aggregates.",
                    g,
                )
            return expr, item.alias or None
        if isinstance(g, exp.Column) and not g.table and not self._is_column(g.name):
            for item in items:
                if isinstance(item, exp.Alias) and item.alias.lower() == g.name.lower():
                    if contains_aggregate(item.this):
                        raise refuse(
                            "UNSUPPORTED_GROUP_KEY",
                            f"GROUP BY {g.name} names an aggregate.",
                            "Group by columns, not aggregates.",
                            g,
                        )
                    return item.this, item.alias
        return g, None

    def _is_column(self, name: str) -> bool:
        return any(s.column(name.lower()) is not None for s in self.scope.sources)

    def key_name(self, expr: exp.Expr, alias: str | None, j: int, items: list[exp.Expr]) -> str:
        if alias:
            return alias
        canon = canonical(expr, self.scope)
        for item in items:
            if (
                isinstance(item, exp.Alias)
                and not contains_aggregate(item.this)
                and canonical(item.this, self.scope) == canon
            ):
                return item.alias
        if isinstance(expr, exp.Column):
            return expr.name
        return f"key{j}"

    def add_key(self, key: Key) -> None:
        if any(k.canon == key.canon for k in self.keys):
            raise refuse(
                "UNSUPPORTED_GROUP_KEY",
                f"'{snippet(key.expr)}' is grouped twice.",
                "List each GROUP BY key once.",
                key.expr,
            )
        self._claim(key.name, key.expr)
        self.keys.append(key)

    def _claim(self, name: str, node: exp.Expr) -> None:
        if _RESERVED.match(name) or not _NAME.fullmatch(name) or len(name) > 128:
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"The output name '{name[:40]}' is reserved or not usable.",
                "Choose another alias: letters, digits, '_', ' ' and '-' (names like m0, "
                "__x and noisy are reserved).",
                node,
            )
        if name.lower() in self.names:
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"Two outputs are named '{name}'.",
                "Give each output its own alias.",
                node,
            )
        self.names.add(name.lower())

    def _key_for(self, node: exp.Expr) -> Key | None:
        try:
            canon = canonical(node, self.scope)
        except QueryRefused:
            return None
        return next((k for k in self.keys if k.canon == canon), None)

    # -- SELECT --------------------------------------------------------------------------

    def add_item(self, item: exp.Expr) -> None:
        alias = item.alias if isinstance(item, exp.Alias) and item.alias else None
        expr = item.this if isinstance(item, exp.Alias) else item
        if contains_aggregate(expr):
            node, used = self.transform(expr, "SELECT")
            core = expr
            while isinstance(core, exp.Paren):
                core = core.this
            kind: OutputKind = self._last_kind if is_aggregate(core) else "derived"
            name = alias or self._default_name(core)
            self._claim(name, item)
            self.exprs[name] = node
            self.outputs.append(
                Output(name=name, kind=kind, measures=tuple(used), expr=render(node))
            )
            return
        key = self._key_for(expr)
        if key is None:
            has_column = any(isinstance(n, exp.Column) for n in expr.walk())
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"'{snippet(expr)}' must appear in GROUP BY or inside an aggregate."
                if has_column
                else f"The constant output '{snippet(expr)}' is not supported.",
                "Add it to GROUP BY, or aggregate it (COUNT, SUM, AVG ...).",
                item,
            )
        name = alias or key.name
        if name != key.name:
            self._claim(name, item)
        self.exprs[name] = n_.quoted(key.name)
        self.outputs.append(Output(name=name, kind="key", expr=quote(key.name)))

    def _default_name(self, core: exp.Expr) -> str:
        if is_aggregate(core):
            inner = core.this if isinstance(core, exp.Filter | exp.WithinGroup) else core
            fname = func_name(inner).lower() if isinstance(inner, exp.Func) else "agg"
            cols = [c.name for c in core.find_all(exp.Column)]
            base = fname if not cols else f"{fname}_{'_'.join(cols[:2])}"
        else:
            base = f"expr{len(self.outputs)}"
        name, n = base, 2
        while name.lower() in self.names or _RESERVED.match(name):
            name, n = f"{base}_{n}", n + 1
        return name

    _last_kind: OutputKind = "derived"

    def transform(
        self, node: exp.Expr, place: str, *, aliases: bool = False
    ) -> tuple[exp.Expr, list[str]]:
        """Rebuild an expression over aggregates and keys as a tree over ``noisy``."""
        used: list[str] = []
        by_alias = {o.name.lower(): o for o in self.outputs} if aliases else {}

        def leaf(n: exp.Expr) -> exp.Expr | None:
            if is_aggregate(n):
                node, kind, ms = self.measures.aggregate(n)
                self._last_kind = kind
                used.extend(m for m in ms if m not in used)
                return n_.wrap(node)
            if isinstance(n, exp.Column):
                if (
                    by_alias
                    and not n.table
                    and n.name.lower() in by_alias
                    and not (self._is_column(n.name))
                ):
                    out = by_alias[n.name.lower()]
                    used.extend(m for m in out.measures if m not in used)
                    return n_.wrap(self.exprs[out.name].copy())
                key = self._key_for(n)
                if key is None:
                    raise refuse(
                        "UNSUPPORTED_EXPRESSION",
                        f"'{snippet(n)}' in {place} must be a GROUP BY key or inside an aggregate.",
                        "Refer to grouped columns, aggregates or output aliases.",
                        n,
                    )
                return exp.column(key.name, quoted=True)
            if not contains_aggregate(n) and any(isinstance(c, exp.Column) for c in n.walk()):
                key = self._key_for(n)
                if key is not None:
                    return exp.column(key.name, quoted=True)
            return None

        return rebuild(node, POST, place, leaf), used

    # -- HAVING, ORDER BY, LIMIT ---------------------------------------------------------

    def set_having(self, node: exp.Expr) -> None:
        tree, used = self.transform(node, "HAVING", aliases=True)
        self.having = tree
        self._extra = used

    def set_order(self, order: exp.Order) -> None:
        for o in order.expressions:
            e = o.this if isinstance(o, exp.Ordered) else o
            if isinstance(e, exp.Literal) and not e.is_string:
                try:
                    n = int(e.this)
                except ValueError:
                    n = 0
                if not 1 <= n <= len(self.outputs):
                    raise refuse(
                        "UNSUPPORTED_EXPRESSION",
                        f"ORDER BY {e.this} is not a SELECT position.",
                        f"Positions run from 1 to {len(self.outputs)}.",
                        e,
                    )
                sql: exp.Expr = n_.quoted(self.outputs[n - 1].name)
            elif (
                isinstance(e, exp.Column)
                and not e.table
                and any(o2.name.lower() == e.name.lower() for o2 in self.outputs)
            ):
                name = next(o2.name for o2 in self.outputs if o2.name.lower() == e.name.lower())
                sql = n_.quoted(name)
            else:
                sql, _ = self.transform(e, "ORDER BY", aliases=True)
                if not any(isinstance(n, exp.Column) or is_aggregate(n) for n in e.walk()):
                    raise refuse(
                        "UNSUPPORTED_EXPRESSION",
                        f"ORDER BY {snippet(e)} is a constant and orders nothing.",
                        "Order by an output name, a position (ORDER BY 2) or an aggregate.",
                        e,
                    )
                sql = n_.try_(sql)
            desc = isinstance(o, exp.Ordered) and bool(o.args.get("desc"))
            first = isinstance(o, exp.Ordered) and bool(o.args.get("nulls_first"))
            self.order.append(exp.Ordered(this=sql, desc=desc, nulls_first=first))

    def set_limit(self, limit: exp.Expr | None, offset: exp.Expr | None) -> None:
        if limit is not None:
            if not isinstance(limit, exp.Limit):
                raise refuse(
                    "UNSUPPORTED_CLAUSE",
                    f"'{snippet(limit)}' is not supported.",
                    "Write LIMIT n.",
                    limit,
                )
            self.limit = _count_literal(limit.expression, "LIMIT")
            if limit.args.get("offset") is not None:
                self.offset = _count_literal(limit.args["offset"], "OFFSET")
        if offset is not None:
            node = offset.expression if isinstance(offset, exp.Offset) else offset
            self.offset = _count_literal(node, "OFFSET")


def _count_literal(node: exp.Expr | None, clause: str) -> int:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            n = int(node.this)
        except ValueError:
            n = -1
        if 0 <= n <= MAX_LIMIT:
            return n
    raise refuse(
        "UNSUPPORTED_CLAUSE",
        f"{clause} takes a whole number from 0 to {MAX_LIMIT}.",
        f"Write {clause} 10.",
        node,
    )
