"""What the query reads: tables (FROM/JOIN), the private dataset, column resolution.

The operator names tables by bare name; the runner creates one view per table with
that name. Every table must be in the catalogue and in the grant; exactly one
private dataset may be read (plus public lookup tables joined on a declared key).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Protocol

from sqlglot import exp

from sandbox.catalog import Catalog, Column, Dataset, Table, Use
from sandbox.compiler import nodes as n_
from sandbox.compiler.text import refuse, snippet
from sandbox.grants import Grant

_FILE_LIKE = re.compile(r"[./\\:]|\.(csv|parquet|json|tsv|txt|db|duckdb)$", re.IGNORECASE)
_ALLOWED_JOINS = {("", ""), ("", "INNER"), ("LEFT", ""), ("LEFT", "OUTER")}


@dataclass
class Source:
    """One table in FROM/JOIN. ``alias`` is the name used in the runner SQL."""

    alias: str
    names: set[str]  # what the operator may qualify its columns with
    dataset: Dataset
    table: Table
    multi: bool = False  # a unit may have several rows here (so several groups)
    # a per-unit pre-aggregation (table ``__perunit``): the operator's column names ->
    # its columns, and how each is shown
    renames: dict[str, str] | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def private(self) -> bool:
        return not self.dataset.is_public

    @property
    def per_unit(self) -> bool:
        return self.renames is not None

    def column(self, name: str) -> Column | None:
        """The column the operator's ``name`` means here (lower case), if any."""
        if self.renames is None:
            return self.table.column(name)
        real = self.renames.get(name)
        return self.table.column(real) if real is not None else None

    def label(self, column: str) -> str:
        return self.labels.get(column) or f"{self.table.name}.{column}"


@dataclass(frozen=True)
class ColumnRef:
    source: Source
    column: Column
    uses: frozenset[Use]

    @property
    def label(self) -> str:
        return self.source.label(self.column.name)

    def sql(self) -> exp.Column:
        return exp.column(self.column.name, table=self.source.alias, quoted=True)


@dataclass
class Scope:
    catalog: Catalog
    grant: Grant
    sources: list[Source] = field(default_factory=list)
    prefix: str = "t"  # runner aliases t0, t1 ... (a per-unit stage's: u0, u1 ...)
    per_unit: PerUnitLike | None = None  # the per-unit pre-aggregation the query reads

    @property
    def read_sources(self) -> list[Source]:
        """The catalogue tables the Plan reads, those inside a per-unit stage too."""
        inner = self.per_unit.scope.read_sources if self.per_unit is not None else []
        return [s for s in self.sources if not s.per_unit] + inner

    @property
    def private_dataset(self) -> Dataset:
        return next(s.dataset for s in self.sources if s.private)

    @property
    def unit_source(self) -> Source:
        return next(s for s in self.sources if s.private)

    @property
    def unit_rows(self) -> int:
        rows = [s.table.rows_per_unit or 1 for s in self.sources if s.private]
        return math.prod(rows)

    def resolve(self, col: exp.Column) -> ColumnRef:
        """The catalogue column a reference names, with the uses the grant allows."""
        if not isinstance(col.this, exp.Identifier):
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"'{snippet(col)}' is not a plain column reference.",
                "Name columns as table.column or column.",
                col,
            )
        if col.args.get("catalog") or col.args.get("db"):
            raise refuse(
                "UNKNOWN_COLUMN",
                f"The column reference '{snippet(col)}' has too many parts.",
                "Write table.column or column.",
                col,
            )
        name = col.name.lower()
        qualifier = col.table.lower() if col.table else None
        candidates = (
            self.sources if qualifier is None else [s for s in self.sources if qualifier in s.names]
        )
        if qualifier is not None and not candidates:
            raise refuse(
                "UNKNOWN_TABLE",
                f"'{col.table}' in '{snippet(col)}' is not a table or alias in FROM/JOIN.",
                "Qualify columns with a table name or alias that appears in FROM or JOIN.",
                col,
            )
        found = [(s, c) for s in candidates if (c := s.column(name)) is not None]
        if not found:
            where = ", ".join(s.table.name for s in candidates)
            raise refuse(
                "UNKNOWN_COLUMN",
                f"Column '{snippet(col)}' is not in the catalogue for {where}.",
                "Check the column names with `sandbox catalog` (schema only).",
                col,
            )
        if len(found) > 1:
            tables = " and ".join(s.table.name for s, _ in found)
            raise refuse(
                "UNKNOWN_COLUMN",
                f"Column '{col.name}' is ambiguous: it is in {tables}.",
                f"Qualify it, for example {found[0][0].table.name}.{col.name}.",
                col,
            )
        source, column = found[0]
        uses = (
            column.uses
            if source.per_unit  # derived from the grant's uses by preagg.py
            else self.grant.column_uses(
                column.uses, source.dataset.id, source.table.name, column.name
            )
        )
        return ColumnRef(source, column, uses)

    def require(self, col: exp.Column, use: Use, place: str) -> ColumnRef:
        """Resolve and check the column may be used as ``use`` (in ``place``)."""
        ref = self.resolve(col)
        if Use.IDENTIFIER in ref.uses:
            raise refuse(
                "IDENTIFIER_EXPOSED",
                f"'{snippet(col)}' is an identifier and may not appear in {place}.",
                f"Identifiers are only for JOIN ... ON and COUNT(DISTINCT {ref.column.name}).",
                col,
            )
        if use not in ref.uses:
            allowed = ", ".join(sorted(u.value for u in ref.uses)) or "none"
            raise refuse(
                "COLUMN_NOT_ALLOWED",
                f"'{ref.label}' may not be used in {place} (its uses under this grant: {allowed}).",
                _USE_HINT[use],
                col,
            )
        return ref


_USE_HINT = {
    Use.FILTER: "Filter only on columns whose uses include 'filter'.",
    Use.GROUP: "Group only by columns whose uses include 'group'. A 'filter' column can be "
    "bucketed: GROUP BY CASE WHEN col < 2000 THEN 'low' ... ELSE 'high' END (literal THEN "
    "values), or counted in COUNT(*) FILTER (WHERE ...) columns.",
    Use.AGGREGATE: "Aggregate only columns whose uses include 'aggregate'.",
    Use.IDENTIFIER: "",
}


class PerUnitLike(Protocol):
    """What scope needs of a compiled per-unit stage (preagg.PerUnit)."""

    scope: Scope
    source: Source


def build_scope(
    select: exp.Select,
    catalog: Catalog,
    grant: Grant,
    *,
    prefix: str = "t",
    per_unit: PerUnitLike | None = None,
) -> tuple[Scope, list[exp.Expr]]:
    """Resolve FROM and JOINs; return the scope and the runner's relations: the first
    one, then one JOIN node per join. ``per_unit`` is the compiled pre-aggregation a
    PerUnitRef in FROM/JOIN stands for."""
    scope = Scope(catalog, grant, prefix=prefix, per_unit=per_unit)
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is None:
        raise refuse(
            "NO_AGGREGATE",
            "The query has no FROM clause.",
            "Aggregate a catalogue table, e.g. SELECT COUNT(*) FROM persons.",
            select,
        )
    first = _add_source(scope, from_.this)
    lines: list[exp.Expr] = [_relation(first)]
    for join in select.args.get("joins") or []:
        source, line = _add_join(scope, join)
        lines.append(line)
        del source
    if not any(s.private for s in scope.sources):
        raise refuse(
            "LOOKUP_ONLY",
            "The query reads only public lookup tables.",
            "Lookup tables are public: read them from the catalogue; aggregate a "
            "private table (for example persons) joined to them.",
            from_,
        )
    if per_unit is not None:
        many = [s for s in scope.sources if s.private and (s.table.rows_per_unit or 1) > 1]
        if many:
            raise refuse(
                "UNSUPPORTED_JOIN",
                f"A query over a per-unit pre-aggregation reads one row per unit; "
                f"'{many[0].table.name}' has several rows per unit.",
                "Join only tables with one row per unit (insured) in the outer query; "
                "aggregate the others inside the per-unit subquery.",
                from_,
            )
    datasets = {s.dataset.id for s in scope.sources if s.private}
    if len(datasets) > 1:
        raise refuse(
            "MULTIPLE_DATASETS",
            f"The query reads more than one private dataset ({', '.join(sorted(datasets))}).",
            "Each query may read one private dataset plus public lookup tables; "
            "run one query per dataset.",
            from_,
        )
    return scope, lines


def _relation(source: Source) -> exp.Expr:
    """How the runner reads a table. A lookup table is read with one row per lookup
    key, so a duplicated key in public data can never multiply a unit's rows."""
    if source.per_unit:
        return n_.table(source.table.name, source.alias, quote=False)
    key = source.table.lookup_key
    if not source.dataset.is_public or key is None:
        return n_.table(source.table.name, source.alias)
    first = exp.EQ(
        this=exp.Window(this=exp.RowNumber(), partition_by=[n_.quoted(key)]),
        expression=n_.num(1),
    )
    sel = n_.select([exp.Star()], n_.table(source.table.name))
    sel.set("qualify", exp.Qualify(this=first))
    return n_.subquery(sel, source.alias)


def _add_source(scope: Scope, node: exp.Expr) -> Source:
    if isinstance(node, n_.PerUnitRef):
        if scope.per_unit is None or any(s.per_unit for s in scope.sources):
            raise refuse(
                "SUBQUERY",
                "A query may read one per-unit pre-aggregation, once.",
                "Compute several per-unit values in one subquery: SELECT person_id, "
                "SUM(a) AS x, COUNT(*) AS y ... GROUP BY person_id.",
                node,
            )
        names = {(node.alias or "").lower()} - {""}
        if any(names & s.names for s in scope.sources):
            raise refuse(
                "UNSUPPORTED_JOIN",
                f"The name '{node.alias}' is used twice in FROM/JOIN.",
                "Give each table its own alias.",
                node,
            )
        made = f"{scope.prefix}{len(scope.sources)}"
        source = dataclasses.replace(scope.per_unit.source, alias=made, names=names)
        scope.sources.append(source)
        return source
    if isinstance(node, exp.Subquery | exp.Select):
        raise refuse(
            "SUBQUERY",
            "Subqueries in FROM are refused.",
            "Query the catalogue tables directly; use WHERE, GROUP BY and HAVING.",
            node,
        )
    if not isinstance(node, exp.Table):
        raise refuse(
            "UNSUPPORTED_CLAUSE",
            f"'{snippet(node)}' is not a table name.",
            "Read catalogue tables by their bare name.",
            node,
        )
    if not isinstance(node.this, exp.Identifier):
        raise refuse(
            "TABLE_FUNCTION",
            f"Table functions such as '{snippet(node)}' are refused.",
            "Read catalogue tables by their bare name; the sandbox reads files for you.",
            node,
        )
    if node.args.get("db") or node.args.get("catalog"):
        raise refuse(
            "UNKNOWN_TABLE",
            f"'{snippet(node)}' names a schema or database; only bare table names are accepted.",
            f"Write FROM {node.name}.",
            node,
        )
    if node.args.get("pivots"):
        raise refuse(
            "UNSUPPORTED_CLAUSE",
            f"'{snippet(node)}': PIVOT and UNPIVOT are not supported.",
            "Pivot with one column per value in one SELECT: SUM(amount) FILTER (WHERE "
            "year = 2023) AS y2023, SUM(amount) FILTER (WHERE year = 2024) AS y2024.",
            node,
        )
    for key in ("joins", "laterals", "pivots", "sample", "version", "when", "changes"):
        if node.args.get(key):
            raise refuse(
                "UNSUPPORTED_CLAUSE",
                f"'{snippet(node)}' uses an unsupported table clause.",
                "Read catalogue tables by their bare name.",
                node,
            )
    name = node.name
    if node.this.quoted and _FILE_LIKE.search(name):
        raise refuse(
            "TABLE_FUNCTION",
            "Reading files by path is refused.",
            "Read catalogue tables by their bare name; the sandbox reads files for you.",
            node,
        )
    found = scope.catalog.find_table(name.lower())
    if found is None:
        raise refuse(
            "UNKNOWN_TABLE",
            f"Table '{name}' is not in the catalogue.",
            "List the tables you may read with `sandbox catalog`.",
            node,
        )
    dataset, table = found
    if dataset.id not in scope.grant.datasets or not dataset.grantable:
        raise refuse(
            "TABLE_NOT_GRANTED",
            f"Table '{table.name}' belongs to dataset '{dataset.id}', which is not in your "
            f"grant for scenario '{scope.grant.scenario.id}'.",
            "Use the datasets granted for this scenario, or ask the bureau for a grant.",
            node,
        )
    if any(s.table.name == table.name for s in scope.sources):
        raise refuse(
            "UNSUPPORTED_JOIN",
            f"Table '{table.name}' is read twice.",
            "Read each table once; self-joins are refused. To compare periods, use one "
            "SELECT with SUM(amount) FILTER (WHERE year = 2024) and SUM(amount) FILTER "
            "(WHERE year = 2023) columns, or compute growth after download.",
            node,
        )
    alias = node.alias.lower() if node.alias else None
    names = {table.name} | ({alias} if alias else set())
    for s in scope.sources:
        if names & s.names:
            raise refuse(
                "UNSUPPORTED_JOIN",
                f"The name '{alias or table.name}' is used twice in FROM/JOIN.",
                "Give each table its own alias.",
                node,
            )
    source = Source(
        alias=f"{scope.prefix}{len(scope.sources)}",
        names=names,
        dataset=dataset,
        table=table,
        multi=(table.rows_per_unit or 1) > 1,
    )
    scope.sources.append(source)
    return source


def _add_join(scope: Scope, join: exp.Join) -> tuple[Source, exp.Expr]:
    side = (join.side or "").upper()
    kind = (join.kind or "").upper()
    if (side, kind) not in _ALLOWED_JOINS or join.args.get("method"):
        raise refuse(
            "UNSUPPORTED_JOIN",
            f"'{snippet(join)}': only JOIN / INNER JOIN / LEFT JOIN are accepted.",
            "Join on the privacy unit (a.person_id = b.person_id) or on a lookup table's key.",
            join,
        )
    if join.args.get("using"):
        raise refuse(
            "UNSUPPORTED_JOIN",
            f"'{snippet(join)}': JOIN ... USING is not accepted.",
            "Write the condition out: JOIN b ON a.person_id = b.person_id.",
            join,
        )
    on = join.args.get("on")
    if on is None:
        raise refuse(
            "UNSUPPORTED_JOIN",
            f"'{snippet(join)}' has no ON condition (a cross join).",
            "Join on the privacy unit or a lookup table's key: JOIN b ON a.x = b.x.",
            join,
        )
    before = list(scope.sources)
    source = _add_source(scope, join.this)
    if side == "LEFT" and not any(s.private for s in before):
        raise refuse(
            "UNSUPPORTED_JOIN",
            "A LEFT JOIN must keep the rows of a private table, not of a lookup table.",
            "Put the private table first: FROM persons p LEFT JOIN divisions d ON ...",
            join,
        )
    while isinstance(on, exp.Paren):
        on = on.this
    if not (
        isinstance(on, exp.EQ)
        and isinstance(on.this, exp.Column)
        and isinstance(on.expression, exp.Column)
    ):
        raise refuse(
            "UNSUPPORTED_JOIN",
            f"The join condition '{snippet(on)}' must be one equality between two columns.",
            "Join on the privacy unit (a.person_id = b.person_id) or on a lookup "
            "table's key (p.county_code = d.county_code).",
            on,
        )
    a, b = scope.resolve(on.this), scope.resolve(on.expression)
    if b.source is source:
        a, b = b, a
    if a.source is not source or b.source is source:
        raise refuse(
            "UNSUPPORTED_JOIN",
            f"The join condition '{snippet(on)}' must link '{source.table.name}' to a table "
            "before it.",
            "Write JOIN b ON a.key = b.key with a already in FROM.",
            on,
        )
    new, old = a, b
    unit = new.source.dataset.privacy_unit
    if new.source.private and old.source.private:
        if (
            new.source.dataset.id != old.source.dataset.id
            or new.column.name != unit
            or old.column.name != unit
        ):
            raise refuse(
                "UNSUPPORTED_JOIN",
                f"'{snippet(on)}': private tables join only on their privacy unit.",
                f"Join on {unit or 'the privacy unit'}: a.{unit} = b.{unit}.",
                on,
            )
    else:
        lookup, other = (new, old) if new.source.dataset.is_public else (old, new)
        key = lookup.source.table.lookup_key
        if (
            not lookup.source.dataset.is_public
            or key is None
            or lookup.column.name != key
            or other.column.keys is None
            or other.column.keys != lookup.column.keys
            or Use.IDENTIFIER in other.uses
            or not other.uses
        ):
            raise refuse(
                "UNSUPPORTED_JOIN",
                f"'{snippet(on)}' is not a join on a declared lookup key.",
                "Join a lookup table on its lookup_key from a column with the same public "
                "key set (e.g. p.county_code = d.county_code).",
                on,
            )
        # a lookup row is repeated on each row of the table it is joined from
        lookup.source.multi = lookup.source.multi or other.source.multi
    line = exp.Join(this=_relation(source), on=exp.EQ(this=a.sql(), expression=b.sql()))
    if side == "LEFT":
        line.set("side", "LEFT")
    return source, line
