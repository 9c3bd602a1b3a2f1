"""The second check: read the generated SQL back and hold it to the Plan.

The compiler builds the runner SQL from nodes it made itself (see checks.py). This
module does not trust that: ``verify_plan`` re-parses ``plan.sql`` and
``plan.post_sql`` as text and checks, against the catalogue and the grant alone,

- the shape: ``__rows`` (join, filter, per-row values), then an optional ``__groups``
  window whose limit is the Plan's ``unit_groups``, an optional row bound ``__over`` +
  ``__bounded`` at the Plan's ``unit_rows`` (exactly the text in verify_bound.py), then
  one GROUP BY over the keys; a per-unit pre-aggregation comes first, as
  ``__unit_rows``, ``__unit_over`` + ``__unit_bounded`` (R from the catalogue) and
  ``__perunit`` (GROUP BY __unit), read once by ``__rows`` (see verify_units.py);
- every column reference: a catalogue column of a Plan table, used only where the
  grant allows it (``__unit`` is the privacy unit; keys and the public-key filter
  need ``group``; WHERE and FILTER conditions need ``filter``; summed and histogram
  values need ``aggregate``; JOINs link privacy units or declared lookup keys);
- every sum and histogram argument is clamped, with exactly the bounds the privacy
  layer will use for its sensitivity (``Measure.lower`` / ``upper``);
- every identifier is a catalogue name, a name the compiler owns (``__k0``, ``t0``
  ...) or a validated output name; every bare word is a date part from the fixed
  list. Operator text can therefore only appear as a literal value.

A failure is a compiler bug: the query is not run and the problem is logged
(``SystemFailure``), never shown to the operator as a refusal to work around.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from sandbox.catalog import Catalog, Column, Dataset, Table, Use
from sandbox.compiler.checks import EXTRACT_PARTS, TRUNC_UNITS
from sandbox.compiler.preagg import PER_UNIT_TABLE
from sandbox.compiler.sqlread import (
    and_terms,
    case_literals,
    clamp_bounds,
    from_of,
    literal_value,
    same_bounds,
    unwrap,
)
from sandbox.compiler.verify_bound import row_bound_ok
from sandbox.compiler.verify_units import UNIT_STAGES, unit_stages
from sandbox.errors import SystemFailure
from sandbox.grants import Grant
from sandbox.plan import Plan

_VALUE = re.compile(r"__v\d+")
_KEY = re.compile(r"__k\d+")
_ALIAS = re.compile(r"t\d+")
_OUTER = {"__rows", "__groups", "__over", "__bounded"}
_INTERNAL = {"__unit", "__r", "__gr", "__rn", *_OUTER, *UNIT_STAGES}
# the per-unit stage's own names: values __w0 ..., per-unit values __p0 ..., aliases u0 ...
_UNIT_NAMES = (re.compile(r"__w\d+"), re.compile(r"__p\d+"), re.compile(r"u\d+"))


@dataclass(frozen=True)
class _Col:
    dataset: Dataset
    table: Table
    column: Column
    uses: frozenset[Use]

    @property
    def label(self) -> str:
        return f"{self.table.name}.{self.column.name}"


@dataclass
class _Value:
    """One ``__vN`` per-row value: the columns it reads as values, the other values
    it reads, and its clamp bounds when it is CASE WHEN x IS NULL THEN NULL ELSE
    LEAST(GREATEST(x, lo), hi) END."""

    cols: list[_Col] = field(default_factory=list)
    refs: set[str] = field(default_factory=set)
    clamp: tuple[float, float] | None = None


def verify_plan(plan: Plan, catalog: Catalog, grant: Grant) -> None:
    """Raise SystemFailure (INTERNAL) when the Plan's SQL is not what it declares."""
    problems = _Verifier(plan, catalog, grant).run()
    if problems:
        raise SystemFailure(
            "The compiler produced SQL that does not match its Plan; the query was not run.",
            code="INTERNAL",
            details={"problems": sorted(set(problems))[:20]},
        )


class _Verifier:
    def __init__(self, plan: Plan, catalog: Catalog, grant: Grant) -> None:
        self.plan, self.catalog, self.grant = plan, catalog, grant
        self.problems: list[str] = []
        self.aliases: dict[str, tuple[Dataset, Table]] = {}
        self.values: dict[str, _Value] = {}
        self.keys: dict[str, exp.Expr] = {}
        self.value_re = _VALUE  # the per-row value names of the stage being read
        self.inner = False  # reading the per-unit stage's rows (no keys there)
        self.per_unit: tuple[Dataset, Table] | None = None  # __perunit, once read
        # __rows reads one private table with one row per unit and no join: a unit has at
        # most one row per group, so COUNT(__unit) may stand for COUNT(DISTINCT __unit)
        self.unit_once = False

    def bad(self, what: str) -> None:
        self.problems.append(what)

    def run(self) -> list[str]:
        try:
            tree = sqlglot.parse_one(self.plan.sql, read="duckdb")
            post = sqlglot.parse_one(self.plan.post_sql, read="duckdb")
        except sqlglot.errors.SqlglotError:
            return ["the generated SQL does not parse"]
        if not isinstance(tree, exp.Select) or not isinstance(post, exp.Select):
            return ["the generated SQL is not one SELECT"]
        self._names(tree, runner=True)
        self._names(post, runner=False)
        ctes = {c.alias: c.this for c in tree.ctes}
        order = [c.alias for c in tree.ctes]
        if len(set(order)) != len(order):
            return [*self.problems, "stages"]
        if order and order[0] == UNIT_STAGES[0]:
            first = unit_stages(self, ctes, order)
            if first is None:
                return [*self.problems, "per-unit stages"]
            order = order[first:]
        if not order or order[0] != "__rows" or any(n not in _OUTER for n in order):
            return [*self.problems, "stages"]
        rows = ctes["__rows"]
        if not isinstance(rows, exp.Select):
            return [*self.problems, "__rows is not a SELECT"]
        self._rows(rows)
        self._stages(order, ctes)
        self._final(tree, order[-1])
        self._post(post)
        return self.problems

    # -- names -----------------------------------------------------------------------

    def _names(self, tree: exp.Expr, *, runner: bool) -> None:
        """Every identifier is ours, the catalogue's or a validated output name."""
        allowed = {k.name for k in self.plan.keys} | {m.name for m in self.plan.measures}
        if runner:
            allowed |= _INTERNAL | set(self.plan.tables)
            for name in self.plan.tables:
                found = self.catalog.find_table(name)
                if found is not None:
                    allowed |= {c.name for c in found[1].columns}
        else:
            allowed |= {"noisy"} | {o.name for o in self.plan.outputs}
        for ident in tree.find_all(exp.Identifier):
            name = ident.this
            if not isinstance(name, str):
                self.bad("identifier")
            elif not (
                name in allowed
                or (runner and any(r.fullmatch(name) for r in (_VALUE, _KEY, _ALIAS, *_UNIT_NAMES)))
            ):
                self.bad(f"identifier {name[:40]!r}")
        for var in tree.find_all(exp.Var):
            if str(var.this).upper() not in EXTRACT_PARTS | TRUNC_UNITS:
                self.bad(f"bare word {str(var.this)[:40]!r}")
        for node in tree.find_all(exp.Command, exp.RawString, exp.Placeholder):
            self.bad(f"node {type(node).__name__}")

    # -- __rows ----------------------------------------------------------------------

    def _col(self, c: exp.Column) -> _Col | None:
        if c.args.get("db") or c.args.get("catalog") or c.table not in self.aliases:
            self.bad(f"column {c.sql()[:40]}")
            return None
        dataset, table = self.aliases[c.table]
        column = table.column(c.name)
        if column is None:
            self.bad(f"column {c.sql()[:40]}")
            return None
        uses = self.grant.column_uses(column.uses, dataset.id, table.name, column.name)
        return _Col(dataset, table, column, uses)

    def _need(self, c: _Col | None, use: Use, where: str) -> None:
        if c is not None and (use not in c.uses or Use.IDENTIFIER in c.uses):
            self.bad(f"{c.label} in {where} without '{use.value}'")

    def _relation(self, node: exp.Expr) -> None:
        alias = node.alias
        inner = node
        if isinstance(node, exp.Table) and node.name == PER_UNIT_TABLE and not self.inner:
            if self.per_unit is None or not _ALIAS.fullmatch(alias or "") or node.args.get("db"):
                self.bad("per-unit relation")
            elif any(t is self.per_unit[1] for _, t in self.aliases.values()):
                self.bad("per-unit relation read twice")
            else:
                self.aliases[alias] = self.per_unit
            return
        if isinstance(node, exp.Subquery):
            sel = node.this
            tables = list(sel.find_all(exp.Table)) if isinstance(sel, exp.Select) else []
            if len(tables) != 1 or not isinstance(sel.expressions[0], exp.Star):
                self.bad("relation")
                return
            inner = tables[0]
            found = self.catalog.find_table(inner.name)
            part = list(sel.find_all(exp.Column))
            key = found[1].lookup_key if found else None
            if not found or not found[0].is_public or [c.name for c in part] != [key]:
                self.bad("lookup relation")
        pattern = _UNIT_NAMES[2] if self.inner else _ALIAS
        if not isinstance(inner, exp.Table) or not pattern.fullmatch(alias or ""):
            self.bad("relation")
            return
        found = self.catalog.find_table(inner.name)
        if found is None or inner.name not in self.plan.tables or alias in self.aliases:
            self.bad(f"table {inner.name[:40]}")
            return
        if not found[0].is_public and found[0].id != self.plan.dataset:
            self.bad(f"table {inner.name[:40]} is not of the Plan's dataset")
        self.aliases[alias] = found

    def _rows(self, rows: exp.Select) -> None:
        extra = [k for k, v in rows.args.items() if v and k not in ("expressions", "from_", "from")]
        if any(k not in ("joins", "where") for k in extra):
            self.bad("__rows clauses")
        from_ = rows.args.get("from_") or rows.args.get("from")
        joins = rows.args.get("joins") or []
        if from_ is None:
            self.bad("__rows has no FROM")
            return
        self._relation(from_.this)
        for j in joins:
            self._relation(j.this)
        if not self.inner and self.row_bound() > self.plan.unit_rows:
            self.bad("rows per unit above the Plan's")
        if not self.inner:
            self.unit_once = (
                not joins
                and self.per_unit is None
                and self.plan.unit_rows == 1
                and len(self.aliases) == 1
                and all(not d.is_public and t.rows_per_unit == 1 for d, t in self.aliases.values())
            )
        for j in joins:
            self._join(j.args.get("on"))
        for item in rows.expressions:
            self._projection(item)
        where = rows.args.get("where")
        if where is not None:
            for term in and_terms(where.this):
                self._where_term(term)

    def _join(self, on: exp.Expr | None) -> None:
        if not isinstance(on, exp.EQ) or not all(
            isinstance(s, exp.Column) for s in (on.this, on.expression)
        ):
            self.bad("join condition")
            return
        a, b = self._col(on.this), self._col(on.expression)
        if a is None or b is None:
            return
        if not a.dataset.is_public and not b.dataset.is_public:
            unit = a.dataset.privacy_unit
            if a.dataset.id != b.dataset.id or a.column.name != unit or b.column.name != unit:
                self.bad("private join not on the privacy unit")
            return
        lookup, other = (a, b) if a.dataset.is_public else (b, a)
        if (
            lookup.column.name != lookup.table.lookup_key
            or other.column.keys is None
            or other.column.keys != lookup.column.keys
            or Use.IDENTIFIER in other.uses
            or not other.uses
        ):
            self.bad("join not on a lookup key")

    def _projection(self, item: exp.Expr) -> None:
        if not isinstance(item, exp.Alias):
            self.bad("__rows projection")
            return
        name, e = item.alias, item.this
        if name == "__unit":
            c = self._col(e) if isinstance(e, exp.Column) else None
            if c is None or c.dataset.is_public or c.column.name != c.dataset.privacy_unit:
                self.bad("__unit is not the privacy unit")
        elif _KEY.fullmatch(name) and not self.inner:
            self.keys[name] = e
            self._key_columns(name, e, "a GROUP BY key")
        elif self.value_re.fullmatch(name):
            self.values[name] = self._value(e)
        else:
            self.bad(f"__rows output {name[:40]}")

    def _value(self, e: exp.Expr) -> _Value:
        v = _Value(clamp=clamp_bounds(unwrap(e)))
        stack: list[tuple[exp.Expr, bool]] = [(e, False)]
        while stack:
            n, cond = stack.pop()
            if isinstance(n, exp.Column):
                if not n.table and self.value_re.fullmatch(n.name):
                    v.refs.add(n.name)
                elif cond:
                    self._need(self._col(n), Use.FILTER, "a FILTER condition")
                else:
                    c = self._col(n)
                    if c is not None:
                        v.cols.append(c)
                continue
            if clamp_bounds(n) is not None:  # its NULL test reads the clamped x, not a filter
                stack.append((n.args["default"], cond))
                continue
            for key, child in n.args.items():
                for ch in child if isinstance(child, list) else [child]:
                    if isinstance(ch, exp.Expr):
                        stack.append((ch, cond or (isinstance(n, exp.If) and key == "this")))
        return v

    def _key_columns(self, name: str, e: exp.Expr, where: str) -> None:
        """A key's columns need ``group`` use; in a bucket (a CASE whose outputs are all
        literals) ``filter`` use suffices, and then the key must be public with values
        among the CASE's literals."""
        outs = case_literals(e)
        bucket = False
        for c in e.find_all(exp.Column):
            col = self._col(c)
            if col is None:
                continue
            if outs is not None and Use.GROUP not in col.uses:
                self._need(col, Use.FILTER, where)
                bucket = True
            else:
                self._need(col, Use.GROUP, where)
        if bucket:
            j = int(name[3:])
            spec = self.plan.keys[j] if j < len(self.plan.keys) else None
            allowed = {literal_value(o) for o in outs or []}
            if spec is None or spec.public is None or not set(spec.public) <= allowed:
                self.bad(f"bucket key {name} is not public over its CASE's literals")

    def row_bound(self) -> int:
        """Rows one unit can have in the stage being read: the product of its private
        tables' rows_per_unit (the per-unit table has one)."""
        bound = 1
        for dataset, table in self.aliases.values():
            if not dataset.is_public:
                bound *= table.rows_per_unit or 1
        return bound

    def _where_term(self, term: exp.Expr) -> None:
        inner = term.this if isinstance(term, exp.Paren) else term
        if isinstance(inner, exp.In):
            target = inner.this.this if isinstance(inner.this, exp.Paren) else inner.this
            for name, key in self.keys.items():
                if target == key:
                    spec = (
                        self.plan.keys[int(name[3:])]
                        if int(name[3:]) < len(self.plan.keys)
                        else None
                    )
                    allowed = set(spec.public or ()) if spec else set()
                    for lit in inner.expressions:
                        if literal_value(lit) not in allowed:
                            self.bad("public key filter lists a value not in the Plan")
                    self._key_columns(name, inner.this, "the public key filter")
                    return
        for c in term.find_all(exp.Column):
            self._need(self._col(c), Use.FILTER, "WHERE")

    # -- windows and the final GROUP BY ----------------------------------------------

    def _stages(self, order: list[str], ctes: dict[str, exp.Expr]) -> None:
        """__groups: SELECT * FROM (SELECT *, <window> AS __gr FROM prev) WHERE __gr <=
        limit, the window partitioned by __unit; __over + __bounded: the row bound
        (verify_bound.py). The limits are the Plan's."""
        for i, (prev, name) in enumerate(zip(order, order[1:], strict=False)):
            stage = ctes[name]
            if name == "__groups":
                ok = self._stage(stage, prev, "__gr", self.plan.unit_groups)
            elif name == "__over":
                following = order[i + 2] if i + 2 < len(order) else None
                ok = following == "__bounded" and row_bound_ok(
                    stage, ctes["__bounded"], prev, name, self.plan.unit_rows
                )
            else:  # __bounded: checked with the __over before it
                ok = prev == "__over"
            if not ok:
                self.bad(f"stage {name}")
        if self.plan.unit_rows > 1 and "__bounded" not in order:
            self.bad("rows per unit are not bounded")

    def _stage(self, stage: exp.Expr, prev: str, col: str, limit: int) -> bool:
        if not isinstance(stage, exp.Select) or stage.args.get("joins"):
            return False
        where = stage.args.get("where")
        cond = where.this if where is not None else None
        if not (
            isinstance(cond, exp.LTE)
            and isinstance(cond.this, exp.Column)
            and cond.this.name == col
            and literal_value(cond.expression) == limit
        ):
            return False
        sub = from_of(stage)
        src = sub.this if isinstance(sub, exp.Subquery) else None
        if not isinstance(src, exp.Select) or src.args.get("joins"):
            return False
        inner = from_of(src)
        if not isinstance(inner, exp.Table) or inner.name != prev:
            return False
        windows = list(src.find_all(exp.Window))
        part = windows[0].args.get("partition_by") if len(windows) == 1 else None
        return isinstance(part, list) and [p.name for p in part] == ["__unit"]

    def _final(self, tree: exp.Select, last: str) -> None:
        extra = {k for k, v in tree.args.items() if v} - {"expressions", "from_", "from", "group"}
        if extra - {"with_", "with"}:
            self.bad("final clauses")
        from_ = tree.args.get("from_") or tree.args.get("from")
        if from_ is None or not isinstance(from_.this, exp.Table) or from_.this.name != last:
            self.bad("final FROM")
        group = tree.args.get("group")
        groups = [g.name for g in group.expressions] if group is not None else []
        if groups != [f"__k{j}" for j in range(len(self.plan.keys))]:
            self.bad("final GROUP BY")
        items = tree.expressions
        if len(items) != len(self.plan.keys) + len(self.plan.measures):
            self.bad("final columns")
            return
        for j, (item, spec) in enumerate(zip(items, self.plan.keys, strict=False)):
            if not (
                isinstance(item, exp.Alias)
                and item.alias == spec.name
                and isinstance(item.this, exp.Column)
                and item.this.name == f"__k{j}"
            ):
                self.bad(f"key column {j}")
        for item, m in zip(items[len(self.plan.keys) :], self.plan.measures, strict=True):
            if not isinstance(item, exp.Alias) or item.alias != m.name:
                self.bad(f"measure {m.name}")
                continue
            self._measure(item.this, m.kind, m.lower, m.upper, m.name)

    def _measure(
        self, e: exp.Expr, kind: str, lower: float | None, upper: float | None, name: str
    ) -> None:
        refs = {c.name for c in e.find_all(exp.Column) if not c.table}
        if any(not (_VALUE.fullmatch(r) or r == "__unit") for r in refs):
            self.bad(f"measure {name} reads {sorted(refs)}")
            return
        values = [r for r in refs if _VALUE.fullmatch(r)]
        if any(r not in self.values for r in values):
            self.bad(f"measure {name} reads an unknown value")
            return
        closure = self._closure(values)
        if kind == "count_units":
            if not isinstance(e, exp.Count) or "__unit" not in refs:
                self.bad(f"measure {name} is not a count of units")
            elif not isinstance(e.this, exp.Distinct) and not self.unit_once:
                self.bad(f"measure {name} counts rows, not units (a unit can repeat)")
            return
        if kind == "count":
            if not isinstance(e, exp.Count) or "__unit" in refs:
                self.bad(f"measure {name} is not a count")
            for v in closure:
                for c in self.values[v].cols:
                    if not c.uses or Use.IDENTIFIER in c.uses:
                        self.bad(f"measure {name} counts {c.label}")
            return
        if kind == "sum":
            agg = e.find(exp.Sum)
            arg = agg.this if agg is not None else None
            if not (isinstance(arg, exp.Column) and arg.name in self.values):
                self.bad(f"measure {name} is not a sum of one value")
                return
            clamped = [arg.name]
        elif kind == "histogram":
            clamped = [v for v in closure if self.values[v].cols or not self.values[v].refs]
        else:
            self.bad(f"measure {name} kind")
            return
        for v in clamped:
            clamp = self.values[v].clamp
            if not same_bounds(clamp, lower, upper):
                self.bad(f"measure {name}: {v} is not clamped to the Plan's bounds")
            for c in self.values[v].cols:  # the column's own bounds (a per-unit value's too)
                if c.column.bounds is not None and not same_bounds(clamp, *c.column.bounds):
                    self.bad(f"measure {name}: {v} is not clamped to {c.label}'s bounds")
        for v in closure:
            for c in self.values[v].cols:
                self._need(c, Use.AGGREGATE, f"measure {name}")
                if kind == "sum" and self.values[v].clamp is None:
                    self.bad(f"measure {name}: {c.label} is summed unclamped")

    def _closure(self, names: list[str]) -> set[str]:
        seen: set[str] = set()
        stack = list(names)
        while stack:
            n = stack.pop()
            if n in seen or n not in self.values:
                continue
            seen.add(n)
            stack.extend(self.values[n].refs)
        return seen

    # -- post-processing ---------------------------------------------------------------

    def _post(self, post: exp.Select) -> None:
        from_ = post.args.get("from_") or post.args.get("from")
        if from_ is None or not isinstance(from_.this, exp.Table) or from_.this.name != "noisy":
            self.bad("post-processing FROM")
        if list(post.find_all(exp.Join, exp.Subquery, exp.Table))[1:]:
            self.bad("post-processing reads more than noisy")
        names = {k.name for k in self.plan.keys} | {m.name for m in self.plan.measures}
        outputs = {o.name for o in self.plan.outputs}
        for c in post.find_all(exp.Column):
            if c.table or (c.name not in names and c.name not in outputs):
                self.bad(f"post-processing column {c.sql()[:40]}")
