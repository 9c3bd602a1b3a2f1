"""Aggregates → measures (what the runner computes) and outputs (what noise feeds).

Each aggregate the operator wrote becomes one or more exact per-group measures over
clamped values, plus a post-processing expression over their noisy values:
COUNT → count; SUM → sum; AVG → sum / count; VARIANCE/STDDEV → sum of squares, sum,
count; COUNT(DISTINCT unit) → count_units; MEDIAN/QUANTILE → histogram over fixed
candidates. Measures are shared: AVG(age) and SUM(age) use the same sum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sqlglot import exp

from sandbox.catalog import NUMERIC_TYPES, Use
from sandbox.compiler import nodes as n_
from sandbox.compiler import nofail
from sandbox.compiler.checks import row_expr
from sandbox.compiler.nodes import render
from sandbox.compiler.scope import ColumnRef, Scope
from sandbox.compiler.text import func_name, refuse, snippet
from sandbox.plan import Measure, OutputKind
from sandbox.plan import quantile_candidates as quantile_candidates  # the one definition

_QUANTILES = (exp.Median, exp.PercentileCont, exp.PercentileDisc, exp.Quantile)
_VARIANCES = (exp.Variance, exp.VariancePop, exp.Stddev, exp.StddevSamp, exp.StddevPop)
_POP = (exp.VariancePop, exp.StddevPop)
_STD = (exp.Stddev, exp.StddevSamp, exp.StddevPop)


def _candidates(lower: float, upper: float, integer: bool) -> tuple[float, ...]:
    return tuple(float(c) for c in quantile_candidates(lower, upper, integer))


@dataclass
class Measures:
    scope: Scope
    prefix: str = "__v"  # per-row value columns: __v0 ... (a per-unit stage's: __w0 ...)
    measures: list[Measure] = field(default_factory=list)
    aggs: list[exp.Expr] = field(default_factory=list)  # runner aggregate per measure
    values: dict[str, tuple[exp.Expr, str]] = field(default_factory=dict)  # SQL -> node, __vN
    index: dict[tuple[object, ...], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unit_rows_checked: bool = True  # see compile_query

    def value(self, node: exp.Expr) -> exp.Column:
        """The per-row column (__vN) holding ``node``; equal expressions share one."""
        key = render(node)
        if key not in self.values:
            self.values[key] = (node, f"{self.prefix}{len(self.values)}")
        return n_.name(self.values[key][1])

    def add(self, dedupe: tuple[object, ...], agg: exp.Expr, **fields: object) -> str:
        if dedupe in self.index:
            return self.index[dedupe]
        name = str(fields.pop("name", f"m{sum(1 for m in self.measures if not m.selection)}"))
        self.measures.append(Measure(name=name, **fields))  # type: ignore[arg-type]
        self.aggs.append(agg)
        self.index[dedupe] = name
        return name

    def selection(self) -> str:
        """The measure partition selection thresholds, named. Like OpenDP, an unfiltered
        count the query already releases is thresholded itself (one measurement, the
        whole share for it): COUNT(DISTINCT unit) first (each unit adds 1 to a group),
        else COUNT(*); otherwise a units count ``__units`` is added, not released."""
        for dedupe in (("count_units", _key(None)), ("count", None)):
            name = self.index.get(dedupe)
            if name is not None:
                i = next(j for j, m in enumerate(self.measures) if m.name == name)
                self.measures[i] = replace(self.measures[i], selection=True)
                return name
        return self.add(
            ("selection",),
            self._count_units(n_.name("__unit")),
            name="__units",
            kind="count_units",
            selection=True,
        )

    def _count_units(self, e: exp.Expr) -> exp.Expr:
        """COUNT(DISTINCT e), or COUNT(e) where they are equal: the runner reads one
        private table of one row per unit (sandbox/datacheck.py checks it before any
        query; no NULL unit) and nothing else, so a unit has at most one row per group.
        COUNT(DISTINCT) hashes every row; COUNT does not (issue 17)."""
        s = self.scope
        once = (
            self.unit_rows_checked
            and self.prefix == "__v"
            and len(s.sources) == 1
            and s.per_unit is None
            and not s.sources[0].per_unit
            and s.sources[0].private
            and s.sources[0].table.rows_per_unit == 1
        )
        return exp.Count(this=e) if once else _count_distinct(e)

    # -- one aggregate call ------------------------------------------------------------

    def aggregate(self, node: exp.Expr) -> tuple[exp.Expr, OutputKind, list[str]]:
        """Post-processing expression for one aggregate, its output kind, the measures."""
        node, cond, alpha_flip = self.filtered(node)
        if isinstance(node, exp.Count):
            return self._count(node, cond)
        if isinstance(node, _QUANTILES):
            return self._quantile(node, cond, alpha_flip)
        if isinstance(node, (exp.Sum, exp.Avg, *_VARIANCES)):
            return self._moment(node, cond)
        name = func_name(node)
        hint = "Supported: COUNT, SUM, AVG, VARIANCE, STDDEV, MEDIAN, QUANTILE_CONT."
        if isinstance(node, exp.Min | exp.Max):
            hint = (
                "MIN and MAX reveal single records; use QUANTILE_CONT(col, 0.05) or "
                "QUANTILE_CONT(col, 0.95)."
            )
        raise refuse(
            "UNSUPPORTED_AGGREGATE",
            f"The aggregate {name.upper()} in '{snippet(node)}' is not supported.",
            hint,
            node,
        )

    def filtered(self, node: exp.Expr) -> tuple[exp.Expr, exp.Expr | None, bool]:
        """The aggregate call, its FILTER condition (FILTER (WHERE ...) or a one-branch
        CASE inside it) as the compiler's node, and whether WITHIN GROUP ... DESC flips a
        quantile."""
        cond: exp.Expr | None = None
        if isinstance(node, exp.Filter):
            where = node.expression
            inner = where.this if isinstance(where, exp.Where) else where
            tree, _ = row_expr(inner, self.scope, Use.FILTER, "an aggregate's FILTER")
            cond = nofail.as_bool(tree, nofail.column_types(self.scope))
            node = node.this
        flip = False
        if isinstance(node, exp.WithinGroup):
            node, flip = _within_group(node)
        node, cond = self.case_as_filter(node, cond)
        return node, cond, flip

    def case_as_filter(
        self, node: exp.Expr, cond: exp.Expr | None
    ) -> tuple[exp.Expr, exp.Expr | None]:
        """SUM(CASE WHEN c THEN x END) is SUM(x) FILTER (WHERE c), the same for COUNT,
        AVG, quantiles …; SUM(CASE WHEN c THEN 1 ELSE 0 END) is COUNT(*) FILTER (WHERE c).
        Any other CASE inside an aggregate stays refused (its bounds are unknown)."""
        arg = node.this if isinstance(node, exp.AggFunc) else None
        while isinstance(arg, exp.Paren):
            arg = arg.this
        if isinstance(arg, exp.If):
            when, then, default = arg.this, arg.args.get("true"), arg.args.get("false")
        elif isinstance(arg, exp.Case) and arg.this is None and len(arg.args["ifs"]) == 1:
            branch = arg.args["ifs"][0]
            when, then, default = branch.this, branch.args.get("true"), arg.args.get("default")
        else:
            return node, cond
        while isinstance(then, exp.Paren):
            then = then.this
        is_sum = isinstance(node, exp.Sum)
        neutral = (
            default is None
            or isinstance(default, exp.Null)
            or (
                is_sum
                and isinstance(default, exp.Literal)
                and not default.is_string
                and default.this in ("0", "0.0")
            )
        )
        one = isinstance(then, exp.Literal) and not then.is_string and then.this == "1"
        if not neutral or not (isinstance(then, exp.Column) or (one and isinstance(
                node, exp.Sum | exp.Count))):  # fmt: skip
            return node, cond
        tree, _ = row_expr(when, self.scope, Use.FILTER, "a CASE inside an aggregate")
        sql = nofail.as_bool(tree, nofail.column_types(self.scope))
        new: exp.Expr = exp.Count(this=exp.Star()) if one else node.copy()
        if not one and then is not None:
            new.set("this", then.copy())
        self.notes.append(f"{snippet(arg)} inside {func_name(node)} read as FILTER (WHERE …)")
        return new, sql if cond is None else n_.and_(cond, sql)

    def _count(
        self, node: exp.Count, cond: exp.Expr | None
    ) -> tuple[exp.Expr, OutputKind, list[str]]:
        arg = node.this
        if isinstance(arg, exp.Distinct):
            cols = arg.expressions
            ref = (
                self.scope.resolve(cols[0])
                if len(cols) == 1 and isinstance(cols[0], exp.Column)
                else None
            )
            unit = self.scope.private_dataset.privacy_unit
            if ref is None or not ref.source.private or ref.column.name != unit:
                raise refuse(
                    "UNSUPPORTED_AGGREGATE",
                    f"'{snippet(node)}': COUNT(DISTINCT ...) is only supported on the "
                    f"privacy unit ({unit}).",
                    f"Count units with COUNT(DISTINCT {unit}); for the number of distinct "
                    "values of a column, GROUP BY it and count the groups.",
                    node,
                )
            if cond is None:
                agg = self._count_units(n_.name("__unit"))
            else:
                flag = self.value(n_.when(cond, n_.num(1)))
                agg = self._count_units(n_.when(n_.eq(flag, n_.num(1)), n_.name("__unit")))
            name = self.add(
                ("count_units", _key(cond)),
                agg,
                kind="count_units",
                column=ref.label,
                lower=0.0,
                upper=1.0,
            )
            return n_.name(name), "count_units", [name]
        if (
            arg is None
            or isinstance(arg, exp.Star)
            or (isinstance(arg, exp.Literal) and not arg.is_string)
        ):
            if cond is None:
                name = self.add(("count", None), exp.Count(this=exp.Star()), kind="count")
            else:
                v = self.value(n_.when(cond, n_.num(1)))
                name = self.add(("count", _key(cond)), exp.Count(this=v), kind="count")
            return n_.name(name), "count", [name]
        if not isinstance(arg, exp.Column):
            raise refuse(
                "UNSUPPORTED_AGGREGATE",
                f"'{snippet(node)}': COUNT takes *, a column or DISTINCT {self._unit()}.",
                "Count rows with COUNT(*) and narrow them with WHERE or FILTER (WHERE ...).",
                node,
            )
        ref = self.scope.resolve(arg)
        if Use.IDENTIFIER in ref.uses:
            raise refuse(
                "IDENTIFIER_EXPOSED",
                f"'{snippet(node)}' counts an identifier.",
                f"Use COUNT(*) for rows or COUNT(DISTINCT {self._unit()}) for units.",
                node,
            )
        if not ref.uses:
            raise refuse(
                "COLUMN_NOT_ALLOWED",
                f"'{ref.label}' may not be used at all.",
                "Use columns whose catalogue uses allow it.",
                arg,
            )
        col = ref.sql()
        v = self.value(col if cond is None else n_.when(cond, col))
        name = self.add(("count", v.name), exp.Count(this=v), kind="count", column=ref.label)
        return n_.name(name), "count", [name]

    def _unit(self) -> str:
        return self.scope.private_dataset.privacy_unit or "unit"

    def bounded(self, node: exp.Expr, arg: exp.Expr | None) -> ColumnRef:
        while isinstance(arg, exp.Paren):
            arg = arg.this
        if isinstance(arg, exp.Distinct):
            raise refuse(
                "UNSUPPORTED_AGGREGATE",
                f"'{snippet(node)}': DISTINCT inside this aggregate is not supported.",
                "Remove DISTINCT.",
                node,
            )
        if not isinstance(arg, exp.Column):
            raise refuse(
                "UNSUPPORTED_EXPRESSION",
                f"'{snippet(node)}': aggregate a column, not an expression.",
                "Write the aggregate over one bounded column, e.g. SUM(amount); combine "
                "aggregates afterwards, e.g. SUM(a) / COUNT(*).",
                node,
            )
        ref = self.scope.require(arg, Use.AGGREGATE, "an aggregate")
        if ref.column.type not in NUMERIC_TYPES or ref.column.bounds is None:
            raise refuse(
                "UNBOUNDED_COLUMN",
                f"'{ref.label}' has no declared bounds, so '{snippet(node)}' cannot be "
                "computed privately.",
                "Aggregate only numeric columns with bounds in the catalogue; count rows instead.",
                node,
            )
        return ref

    def clamped(self, ref: ColumnRef, cond: exp.Expr | None) -> tuple[exp.Expr, float, float, bool]:
        lo, hi = ref.column.bounds  # type: ignore[misc]
        integer = ref.column.type in ("INTEGER", "BIGINT")
        lit = _lit(integer)
        node = n_.clamp(ref.sql(), lit(lo), lit(hi))
        if cond is not None:
            node = n_.when(cond, node)
        self.notes.append(f"{ref.label} clamped to [{render(lit(lo))}, {render(lit(hi))}]")
        return node, float(lo), float(hi), integer

    def _moment(
        self, node: exp.Expr, cond: exp.Expr | None
    ) -> tuple[exp.Expr, OutputKind, list[str]]:
        ref = self.bounded(node, node.this)
        sql, lo, hi, integer = self.clamped(ref, cond)
        v = self.value(sql)
        s = self.add(
            ("sum", v.name),
            _sum(v, integer),
            kind="sum",
            column=ref.label,
            lower=lo,
            upper=hi,
            integer=integer,
        )
        if isinstance(node, exp.Sum):
            return n_.name(s), "sum", [s]
        c = self.add(("count", v.name), exp.Count(this=v), kind="count", column=ref.label)
        sn, cn = n_.name(s), n_.name(c)
        if isinstance(node, exp.Avg):
            mean = n_.clamp(n_.div(sn, cn), n_.num(lo), n_.num(hi))
            return n_.when(n_.gt(cn, n_.num(0)), mean), "mean", [s, c]
        sq_lo = 0.0 if lo <= 0 <= hi else min(lo * lo, hi * hi)
        sq_hi = max(lo * lo, hi * hi)
        lit = _lit(integer)
        # HUGEINT: an INTEGER square overflows INT32 past 46,340 (issue 20)
        square = n_.mul(n_.cast(v, "HUGEINT"), v) if integer else n_.mul(v, v)
        sq = self.value(n_.clamp(square, lit(sq_lo), lit(sq_hi)))
        ss = self.add(
            ("sumsq", v.name),
            _sum(sq, integer),
            kind="sum",
            column=f"{ref.label}^2",
            lower=sq_lo,
            upper=sq_hi,
            integer=integer,
        )
        pop = isinstance(node, _POP)
        denom = cn if pop else n_.sub(cn, n_.num(1))
        spread = n_.div(n_.sub(n_.name(ss), n_.div(n_.mul(sn, sn), cn)), denom)
        var = n_.when(
            n_.gt(cn, n_.num(0 if pop else 1)),
            n_.greatest(spread, n_.num(0)),
        )
        if isinstance(node, _STD):
            return exp.Sqrt(this=var), "stddev", [ss, s, c]
        return var, "variance", [ss, s, c]

    def _quantile(
        self, node: exp.Expr, cond: exp.Expr | None, flip: bool
    ) -> tuple[exp.Expr, OutputKind, list[str]]:
        if isinstance(node, exp.Median):
            alpha = 0.5
        else:
            q = node.args.get("quantile") or node.args.get("expression")
            if not (isinstance(q, exp.Literal) and not q.is_string):
                raise refuse(
                    "UNSUPPORTED_AGGREGATE",
                    f"'{snippet(node)}': the quantile must be one number between 0 and 1.",
                    "Write QUANTILE_CONT(col, 0.9); one quantile per call.",
                    node,
                )
            alpha = float(q.this)
            if not 0.0 <= alpha <= 1.0:
                raise refuse(
                    "UNSUPPORTED_AGGREGATE",
                    f"'{snippet(node)}': the quantile {q.this} is not between 0 and 1.",
                    "Write a fraction, e.g. 0.25 for the lower quartile.",
                    node,
                )
        if flip:
            alpha = 1.0 - alpha
        ref = self.bounded(node, node.this)
        sql, lo, hi, integer = self.clamped(ref, cond)
        cands = _candidates(lo, hi, integer)
        v = self.value(sql)
        slot = _slot_sql(v, cands, self.value, integer=integer)
        name = self.add(
            ("histogram", v.name, alpha),
            n_.call("histogram", slot),
            kind="histogram",
            column=ref.label,
            lower=lo,
            upper=hi,
            integer=integer,
            candidates=cands,
            alpha=alpha,
        )
        return n_.name(name), "quantile", [name]


def _key(cond: exp.Expr | None) -> str | None:
    return None if cond is None else render(cond)


def _lit(integer: bool) -> Callable[[float], exp.Expr]:
    return (lambda x: n_.num(int(x))) if integer else (lambda x: n_.num(float(x)))


_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


def _sum(v: exp.Expr, integer: bool) -> exp.Expr:
    """SUM as BIGINT or DOUBLE that cannot fail: DuckDB sums integers as HUGEINT, and
    the BIGINT cast of a sum past 2^63 would fail the job on the data's values (issue
    20); clamping a sum is 1-Lipschitz, so the sensitivity is unchanged."""
    total: exp.Expr = exp.Coalesce(this=exp.Sum(this=v), expressions=[n_.num(0)])
    if integer:
        # COALESCE is never NULL: the bare LEAST(GREATEST(...)) needs no NULL guard
        total = n_.least(n_.greatest(total, n_.num(_BIGINT_MIN)), n_.num(_BIGINT_MAX))
    return n_.cast(total, "BIGINT" if integer else "DOUBLE")


def _count_distinct(e: exp.Expr) -> exp.Expr:
    return exp.Count(this=exp.Distinct(expressions=[e]))


def _within_group(node: exp.WithinGroup) -> tuple[exp.Expr, bool]:
    """PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY col) → PercentileCont(col, q)."""
    func, order = node.this, node.expression
    items = order.expressions if isinstance(order, exp.Order) else []
    if not isinstance(func, exp.PercentileCont | exp.PercentileDisc) or len(items) != 1:
        raise refuse(
            "UNSUPPORTED_AGGREGATE",
            f"'{snippet(node)}' is not supported.",
            "Write PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY col) or QUANTILE_CONT(col, q).",
            node,
        )
    ordered = items[0]
    rebuilt = type(func)(this=ordered.this, expression=func.this)
    return rebuilt, bool(ordered.args.get("desc"))


def _slot_sql(
    v: exp.Column,
    cands: tuple[float, ...],
    value: Callable[[exp.Expr], exp.Column],
    *,
    integer: bool = False,
) -> exp.Column:
    """The row column holding the histogram slot of value v: 2k+1 when v equals
    candidate k, else 2k where k is the number of candidates below v (see Measure).
    Intermediate steps become their own columns (DuckDB reads earlier aliases).

    An integer v (an INTEGER or BIGINT column, clamped) over consecutive integer
    candidates equals candidate v - lo: its slot is 2(v - lo) + 1, the same number
    as 2·CEIL(v - lo) + (v = CEIL(v)) for any integer v, without the two CEILs and
    the DOUBLE casts they need, which were most of a median's cost (issue 17)."""
    num, one, zero = n_.num, n_.num(1), n_.num(0)
    count = len(cands)
    lo, hi = cands[0], cands[-1]
    if count == 1:
        null = exp.Is(this=v.copy(), expression=exp.Null())
        slots = [(null, exp.Null()), (n_.eq(v, num(lo)), one), (n_.gt(v, num(lo)), num(2))]
        return value(n_.cases(slots, zero))
    consecutive = all(c == lo + i for i, c in enumerate(cands))
    if consecutive and integer and lo == int(lo):
        return value(n_.cast(n_.add(n_.mul(num(2), n_.sub(v, num(int(lo)))), one), "BIGINT"))
    if consecutive:  # consecutive integers
        up = exp.Ceil(this=n_.sub(v, num(lo)))
        exact = n_.when(n_.eq(v, exp.Ceil(this=v)), one, zero)
        return value(n_.cast(n_.add(n_.mul(num(2), up), exact), "BIGINT"))
    step = (hi - lo) / (count - 1)
    if list(cands) == [lo + i * step for i in range(count - 1)] + [hi]:
        # evenly spaced: candidate i is computed in SQL exactly as in Python
        def cand(i: exp.Expr) -> exp.Expr:
            return n_.when(
                n_.gte(i, num(count - 1)), num(hi), n_.add(num(lo), n_.mul(i, num(step)))
            )
    else:
        listed = exp.Array(expressions=[num(c) for c in cands])

        def cand(i: exp.Expr) -> exp.Expr:
            return n_.call("list_extract", listed.copy(), n_.add(i, one))

    ratio = n_.div(n_.sub(v, num(lo)), num(step))
    # NULL v: NULL slot (histogram skips it), never slot 0
    k0 = value(n_.clamp(n_.cast(exp.Ceil(this=ratio), "BIGINT"), zero, num(count - 1), null_if=v))
    # k0 is within one of the true count of candidates below v; correct it
    fix = n_.cases(
        [
            (n_.and_(n_.lt(k0, num(count - 1)), n_.lt(cand(k0), v)), one),
            (n_.and_(n_.gt(k0, zero), n_.gte(cand(n_.sub(k0, one)), v)), num(-1)),
        ],
        zero,
    )
    k = value(n_.add(k0, fix))
    exact = n_.when(n_.and_(n_.lt(k, num(count)), n_.eq(cand(k), v)), one, zero)
    return value(n_.cast(n_.add(n_.mul(num(2), k), exact), "BIGINT"))
