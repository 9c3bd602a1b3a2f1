"""Views: CTEs (``WITH w AS (...)``) and subqueries in FROM, inlined before any check.

A *view* is a SELECT of row-level expressions — a projection and a WHERE over
catalogue tables (or earlier views), no aggregate. The compiler substitutes it into
the query that reads it: the view's tables join the query's FROM, its WHERE is ANDed
into the query's WHERE, and every reference to one of its columns is replaced by the
expression that defines it. What remains is one SELECT over catalogue tables, checked
exactly as if the operator had written it inline, so every column is checked against
the grant where it is *used* (a view may select ``person_id``; grouping by it is
still refused). Columns of the outer query are resolved as SQL resolves them: a name
qualified by a view must be one of its columns, an unqualified one must belong to
exactly one relation (or be an output alias), never to a table hidden inside a view.

One shape with aggregates is a view too: the per-unit pre-aggregation
``(SELECT person_id, SUM(amount) AS total FROM payments GROUP BY person_id)`` becomes a
``nodes.PerUnitRef`` placeholder, compiled by ``preagg.py``; a query reads at most
one. Refused, with a hint: WITH RECURSIVE, a CTE named like a catalogue table, a CTE
defined twice, set operations, ORDER BY / LIMIT / DISTINCT / HAVING inside a view,
any other aggregate view, a pre-aggregation over a pre-aggregation, and a view with a
JOIN or WHERE on the right of a LEFT JOIN (moving its WHERE out would drop the LEFT
JOIN's unmatched rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from sandbox.catalog import Catalog
from sandbox.compiler import nodes as n_
from sandbox.compiler import sqlread
from sandbox.compiler.checks import ROW, contains_aggregate, forbid_everywhere, rebuild
from sandbox.compiler.nodes import PerUnitRef
from sandbox.compiler.preagg import PerUnitView, per_unit_view
from sandbox.compiler.text import check_tree_depth, refuse, snippet

__all__ = ["expand", "forbid_nested"]

MAX_INLINED_NODES = 20_000  # per SELECT, after its views are substituted
# the SELECT parts that hold expressions (FROM/JOIN relations are handled apart)
_VIEW_CLAUSES = {
    "distinct": ("DISTINCT", "Remove DISTINCT; the outer query aggregates."),
    "order": ("ORDER BY", "Order the outer query's results instead."),
    "limit": ("LIMIT", "A view keeps all its rows; limit the outer query's results."),
    "offset": ("OFFSET", "A view keeps all its rows; limit the outer query's results."),
    "having": (
        "HAVING",
        "Filter per-unit values in the outer query's WHERE (WHERE total > 1000).",
    ),
}


@dataclass
class _View:
    name: str
    first: exp.Expr  # the first relation: a catalogue table or a PerUnitRef
    joins: list[exp.Join]
    where: exp.Expr | None
    columns: dict[str, exp.Expr] = field(default_factory=dict)  # name -> its expression
    ambiguous: set[str] = field(default_factory=set)
    sizes: dict[str, int] = field(default_factory=dict)  # nodes in each column's expression
    size: int = 0  # nodes in its relations and WHERE, copied into each query that reads it


def forbid_nested(select: exp.Select) -> None:
    """Subqueries, window functions and parameters anywhere but in FROM/JOIN."""
    for area in sqlread.clause_areas(select):
        forbid_everywhere(area, include_self=True)


def expand(select: exp.Select, catalog: Catalog) -> tuple[exp.Select, list[PerUnitView]]:
    """The query with its CTEs and FROM subqueries inlined, and the per-unit
    pre-aggregations its PerUnitRef nodes point at. A query without either is
    returned as it is."""
    ex = _Expander(catalog)
    views: dict[str, _View | PerUnitView] = {}
    with_ = select.args.get("with_") or select.args.get("with")
    if with_ is not None:
        if with_.args.get("recursive"):
            raise refuse(
                "SUBQUERY",
                "WITH RECURSIVE is refused.",
                "Write the CTE without recursion: a projection and WHERE over catalogue tables.",
                with_,
            )
        for cte in with_.expressions:
            name = (cte.alias or "").lower()
            extra = [k for k, v in cte.args.items() if v and k not in ("this", "alias")]
            if not name or any(k != "materialized" for k in extra):
                raise refuse("SUBQUERY", "This CTE form is not supported.", _CTE_HINT, cte)
            if name in views:
                raise refuse(
                    "SUBQUERY", f"The CTE '{name}' is defined twice.", "Give each its name.", cte
                )
            if catalog.find_table(name) is not None:
                raise refuse(
                    "SUBQUERY",
                    f"The CTE name '{name}' is the name of a catalogue table; a CTE may not "
                    "shadow it.",
                    f"Rename the CTE, e.g. WITH {name}_view AS (...).",
                    cte,
                )
            views[name] = ex.view(
                cte.this, views, name, sqlread.column_names(cte.args.get("alias"))
            )
        select = select.copy()
        select.set("with_", None)
        select.set("with", None)
    return ex.inline(select, views, qualify=False), ex.per_unit


_CTE_HINT = (
    "Write WITH name AS (SELECT columns FROM catalogue tables WHERE ...); see "
    "docs/queries.md, 'Views: WITH and subqueries in FROM'."
)


class _Expander:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.per_unit: list[PerUnitView] = []
        self.nodes = 0  # nodes copied by the substitution under way

    # -- one view body -----------------------------------------------------------------

    def view(
        self,
        body: exp.Expr,
        views: dict[str, _View | PerUnitView],
        name: str,
        renames: list[str],
    ) -> _View | PerUnitView:
        if isinstance(body, exp.Union | exp.Intersect | exp.Except):
            raise refuse(
                "UNSUPPORTED_CLAUSE",
                f"UNION, INTERSECT and EXCEPT are not supported (in '{name}').",
                "Use COUNT(*) FILTER (WHERE ...) columns, or a GROUP BY CASE key, in one SELECT.",
                body,
            )
        if not isinstance(body, exp.Select):
            raise refuse("SUBQUERY", f"'{name}' is not a SELECT.", _CTE_HINT, body)
        if body.args.get("with_") or body.args.get("with"):
            raise refuse(
                "SUBQUERY", "WITH inside a CTE or subquery is refused.", "Define CTEs once.", body
            )
        forbid_nested(body)
        allowed = {"expressions", "from_", "from", "joins", "where", "group"}
        for key, value in body.args.items():
            if not value or key in allowed:
                continue
            clause, hint = _VIEW_CLAUSES.get(key, (key.upper(), _CTE_HINT))
            raise refuse(
                "SUBQUERY", f"{clause} inside a CTE or subquery ('{name}') is refused.", hint, body
            )
        aggregated = body.args.get("group") is not None or any(
            contains_aggregate(i) for i in body.expressions
        )
        inlined = self.inline(body, views, qualify=True)
        check_tree_depth(inlined)  # a view of views nests their expressions
        if aggregated:
            if any(isinstance(r, PerUnitRef) for r in sqlread.relations(inlined)):
                raise refuse(
                    "SUBQUERY",
                    f"'{name}' aggregates a pre-aggregation: nested pre-aggregation is refused.",
                    "Pre-aggregate once per unit (GROUP BY the privacy unit), then aggregate "
                    "those per-unit values in the outer query.",
                    body,
                )
            self.per_unit.append(per_unit_view(inlined, name, renames))
            return self.per_unit[-1]
        from_ = inlined.args.get("from_") or inlined.args.get("from")
        if from_ is None:
            raise refuse("SUBQUERY", f"'{name}' reads no table.", _CTE_HINT, body)
        where = inlined.args.get("where")
        view = _View(
            name=name,
            first=from_.this,
            joins=list(inlined.args.get("joins") or []),
            where=where.this if where is not None else None,
        )
        relations = [view.first, *(j.this for j in view.joins)]
        items = self._named_items(inlined, relations, name, renames)
        for _, expr in items:  # unused columns too: the whole view is in the grammar
            rebuild(expr, ROW, f"the view '{name}'", _any_column)
        for col, expr in items:
            if col in view.columns or col in view.ambiguous:
                view.columns.pop(col, None)
                view.ambiguous.add(col)
            else:
                view.columns[col] = expr
                view.sizes[col] = sqlread.size(expr)
        view.size = sum(sqlread.size(r) for r in [view.first, *view.joins]) + (
            sqlread.size(view.where) if view.where is not None else 0
        )
        return view

    def _named_items(
        self, select: exp.Select, relations: list[exp.Expr], name: str, renames: list[str]
    ) -> list[tuple[str, exp.Expr]]:
        items: list[tuple[str, exp.Expr]] = []
        for item in select.expressions:
            if isinstance(item, exp.Star) or (
                isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
            ):
                qual = item.table.lower() if isinstance(item, exp.Column) and item.table else None
                for rel in relations:
                    if qual is None or qual in self._qualifiers(rel):
                        items.extend(
                            (c, exp.column(c, table=self._qualifier(rel)))
                            for c in self._columns(rel)
                        )
            elif isinstance(item, exp.Alias):
                items.append((item.alias.lower(), item.this))
            elif isinstance(item, exp.Column):
                items.append((item.name.lower(), item))
            else:
                raise refuse(
                    "SUBQUERY",
                    f"The column '{snippet(item)}' of '{name}' has no name.",
                    "Name it: SELECT expression AS name.",
                    item,
                )
        if len(renames) > len(items):
            raise refuse(
                "SUBQUERY",
                f"'{name}' names {len(renames)} columns but selects {len(items)}.",
                "Name as many columns as the SELECT has.",
                select,
            )
        return [(renames[i] if i < len(renames) else c, e) for i, (c, e) in enumerate(items)]

    # -- relations and their columns -----------------------------------------------------

    def _qualifier(self, rel: exp.Expr) -> str | None:
        if rel.alias:
            return rel.alias.lower()
        return rel.name.lower() if isinstance(rel, exp.Table) else None

    def _qualifiers(self, rel: exp.Expr) -> set[str]:
        names = {rel.alias.lower()} if rel.alias else set()
        if isinstance(rel, exp.Table):
            names.add(rel.name.lower())
        return names

    def _columns(self, rel: exp.Expr) -> list[str]:
        if isinstance(rel, PerUnitRef):
            return list(self.per_unit[int(rel.this.this)].columns)
        if isinstance(rel, exp.Table) and isinstance(rel.this, exp.Identifier):
            found = self.catalog.find_table(rel.name.lower())
            if found is not None and not rel.args.get("db") and not rel.args.get("catalog"):
                return [c.name for c in found[1].columns]
        return []

    # -- substituting views into a SELECT ------------------------------------------------

    def inline(
        self, select: exp.Select, views: dict[str, _View | PerUnitView], *, qualify: bool
    ) -> exp.Select:
        """``select`` with the views it reads substituted; with ``qualify`` (a view body)
        every column is qualified by its relation, so it stays itself when moved."""
        select = select.copy()
        from_ = select.args.get("from_") or select.args.get("from")
        joins: list[exp.Join] = list(select.args.get("joins") or [])
        if from_ is None:
            return select
        slots: list[tuple[exp.Expr, exp.Join | None]] = [(from_.this, None)]
        slots += [(j.this, j) for j in joins]
        rels: list[tuple[exp.Expr, _View | None]] = []  # relation, view
        for node, join in slots:
            view = self._view_of(node, views)
            if isinstance(view, PerUnitView):
                node = self._per_unit_ref(view, node)
                view = None
                if join is None:
                    from_.set("this", node)
                else:
                    join.set("this", node)
            rels.append((node, view))
        if not qualify and all(v is None and not isinstance(r, PerUnitRef) for r, v in rels):
            return select
        for rel, view in rels:
            if view is None and not isinstance(rel, PerUnitRef):
                self._check_table(rel)
        self._resolve_columns(select, rels)
        return self._splice(select, slots, rels)

    def _check_table(self, rel: exp.Expr) -> None:
        """A relation beside a view is a catalogue table (refused here as scope would,
        since its columns must be known to resolve the query's)."""
        if not isinstance(rel, exp.Table) or not isinstance(rel.this, exp.Identifier):
            raise refuse(
                "TABLE_FUNCTION" if isinstance(rel, exp.Table) else "UNSUPPORTED_CLAUSE",
                f"'{snippet(rel)}' is not a catalogue table.",
                "Read catalogue tables by their bare name; the sandbox reads files for you.",
                rel,
            )
        if (
            rel.args.get("db")
            or rel.args.get("catalog")
            or self.catalog.find_table(rel.name.lower()) is None
        ):
            raise refuse(
                "UNKNOWN_TABLE",
                f"Table '{snippet(rel)}' is not in the catalogue.",
                "List the tables you may read with `sandbox catalog`.",
                rel,
            )

    def _view_of(
        self, node: exp.Expr, views: dict[str, _View | PerUnitView]
    ) -> _View | PerUnitView | None:
        if isinstance(node, exp.Subquery):
            name = (node.alias or "subquery").lower()
            return self.view(node.this, views, name, sqlread.column_names(node.args.get("alias")))
        if (
            isinstance(node, exp.Table)
            and isinstance(node.this, exp.Identifier)
            and not node.args.get("db")
            and not node.args.get("catalog")
            and node.name.lower() in views
        ):
            if sqlread.column_names(node.args.get("alias")):
                raise refuse(
                    "SUBQUERY",
                    f"Column aliases on '{node.name}' are not supported.",
                    "Name the columns inside the CTE.",
                    node,
                )
            return views[node.name.lower()]
        return None

    def _per_unit_ref(self, view: PerUnitView, node: exp.Expr) -> PerUnitRef:
        qual = node.alias or (node.name if isinstance(node, exp.Table) else view.name)
        index = self.per_unit.index(view)
        alias = exp.TableAlias(this=exp.to_identifier(qual.lower()))
        return PerUnitRef(this=exp.Literal.number(index), alias=alias)

    def _resolve_columns(
        self, select: exp.Select, rels: list[tuple[exp.Expr, _View | None]]
    ) -> None:
        self.nodes = 0
        aliases = {i.alias.lower() for i in select.expressions if isinstance(i, exp.Alias)}
        quals: dict[str, tuple[exp.Expr, _View | None]] = {}
        for rel, view in rels:
            for q in self._qualifiers(rel) if view is None else {self._qualifier(rel) or ""}:
                if q in quals:
                    raise refuse(
                        "UNSUPPORTED_JOIN",
                        f"The name '{q}' is used twice in FROM/JOIN.",
                        "Give each table and view its own alias.",
                        rel,
                    )
                if q:
                    quals[q] = (rel, view)
        found: list[tuple[exp.Column, exp.Expr | None]] = []
        order = select.args.get("order")
        for area in sqlread.clause_areas(select):
            for col in list(area.find_all(exp.Column)):
                if isinstance(col.this, exp.Star) or col.args.get("db") or col.args.get("catalog"):
                    continue
                if area is order and not col.table and col.name.lower() in aliases:
                    continue  # ORDER BY names an output first, as SQL does
                found.append((col, self._resolve(col, rels, quals, aliases)))
        for col, made in found:
            if made is None:
                continue
            if col.parent is select and col.arg_key == "expressions":
                made = exp.Alias(this=made, alias=exp.to_identifier(col.name))
            col.replace(made)

    def _resolve(
        self,
        col: exp.Column,
        rels: list[tuple[exp.Expr, _View | None]],
        quals: dict[str, tuple[exp.Expr, _View | None]],
        aliases: set[str],
    ) -> exp.Expr | None:
        """The view expression a column names, a qualified copy, or None (unchanged)."""
        name = col.name.lower()
        if col.table:
            if col.table.lower() not in quals:
                raise refuse(
                    "UNKNOWN_TABLE",
                    f"'{col.table}' in '{snippet(col)}' is not a table or alias in FROM/JOIN.",
                    "Qualify columns with a table name or alias that appears in FROM or JOIN.",
                    col,
                )
            rel, view = quals[col.table.lower()]
            return None if view is None else self._view_column(view, col, name)
        hits = [(r, v) for r, v in rels if name in self._names_of(r, v)]
        if not hits:
            if name in aliases:
                return None  # an output alias (GROUP BY / HAVING / ORDER BY)
            raise refuse(
                "UNKNOWN_COLUMN",
                f"Column '{snippet(col)}' is not a column of the tables and views in FROM/JOIN.",
                "Check the column names; a view offers only the columns it selects.",
                col,
            )
        if len(hits) > 1:
            raise refuse(
                "UNKNOWN_COLUMN",
                f"Column '{col.name}' is ambiguous: more than one table or view in FROM/JOIN "
                "has it.",
                "Qualify it with the table or view name.",
                col,
            )
        rel, view = hits[0]
        if view is not None:
            return self._view_column(view, col, name)
        qual = self._qualifier(rel)
        return exp.column(col.name, table=qual) if qual else None

    def _names_of(self, rel: exp.Expr, view: _View | None) -> set[str]:
        if view is not None:
            return set(view.columns) | view.ambiguous
        return set(self._columns(rel))

    def _view_column(self, view: _View, col: exp.Column, name: str) -> exp.Expr:
        if name in view.ambiguous:
            raise refuse(
                "UNKNOWN_COLUMN",
                f"Column '{col.name}' of '{view.name}' is ambiguous (selected twice).",
                "Give each column of the view its own name.",
                col,
            )
        if name not in view.columns:
            raise refuse(
                "UNKNOWN_COLUMN",
                f"'{snippet(col)}': '{view.name}' has no column '{col.name}'.",
                "A view offers only the columns it selects; add it to the view's SELECT.",
                col,
            )
        self._grow(view.sizes[name], col)
        return n_.wrap(view.columns[name].copy())

    def _grow(self, nodes: int, where: exp.Expr) -> None:
        """Count the nodes inlining copies; refuse before a query of a few kilobytes
        (views of views, each using a column twice) becomes millions of nodes."""
        self.nodes += nodes
        if self.nodes > MAX_INLINED_NODES:
            raise refuse(
                "QUERY_TOO_LARGE",
                f"Inlining the views makes the query larger than {MAX_INLINED_NODES} nodes.",
                "Use each view column fewer times, or write the expression once.",
                where,
            )

    def _splice(
        self,
        select: exp.Select,
        slots: list[tuple[exp.Expr, exp.Join | None]],
        rels: list[tuple[exp.Expr, _View | None]],
    ) -> exp.Select:
        first: exp.Expr | None = None
        joins: list[exp.Join] = []
        wheres: list[exp.Expr] = []
        for (_, join), (rel, view) in zip(slots, rels, strict=True):
            if view is None:
                if join is None:
                    first = rel
                else:
                    joins.append(join)
                continue
            self._grow(view.size, rel)
            if join is None:
                first = view.first.copy()
            else:
                if (join.side or "").upper() == "LEFT" and (view.joins or view.where is not None):
                    raise refuse(
                        "SUBQUERY",
                        f"'{view.name}' has a JOIN or WHERE and is on the right of a LEFT "
                        "JOIN; moving its WHERE out would drop the unmatched rows.",
                        "Use an inner JOIN, or LEFT JOIN the table itself.",
                        join,
                    )
                join.set("this", view.first.copy())
                joins.append(join)
            joins.extend(j.copy() for j in view.joins)
            if view.where is not None:
                wheres.append(view.where.copy())
        assert first is not None
        select.set("from_", exp.From(this=first))
        select.set("from", None)
        select.set("joins", joins or None)
        if wheres:
            where = select.args.get("where")
            terms = ([where.this] if where is not None else []) + wheres
            cond = terms[0] if len(terms) == 1 else n_.and_(*terms)  # and_ adds parentheses
            select.set("where", exp.Where(this=cond))
        return select


def _any_column(n: exp.Expr) -> exp.Expr | None:
    """Grammar check only: a column is checked against the grant where it is used."""
    return n.copy() if isinstance(n, exp.Column) else None
