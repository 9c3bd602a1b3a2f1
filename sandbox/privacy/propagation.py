"""The 95% half-width of a derived output, propagated from its noisy measures.

A derived output (a mean, a variance, a ratio, any ``post_sql`` expression over
several measures) gets its half-width by interval arithmetic (docs/privacy.md,
"Accuracy statements"):

1. each of its k noised measures gets its half-width at level 95%/k (Bonferroni), so
   with probability ≥ 95% every true measure lies in its box ``noisy ± h`` at once;
   a quantile component ranges over its candidates (probability 1, no share of α);
2. the output's own ``post_sql`` expression is evaluated over that box, in the boxed
   host DuckDB: on a grid of each measure's ends, its noisy value and 0 when the
   interval crosses 0 (every combination for up to 4 measures; the corners, the
   centre and each measure at 0 for up to 10). The half-width is the largest distance
   from the released value to any of those values; a point where the expression is
   undefined (NULL, a zero divisor) makes it unbounded. This is exact for expressions
   monotone in each measure over the box, as sums, differences, products of positive
   terms and ratios whose denominator stays on one side of 0 are;
3. a mean uses its sum and count directly: the corners of ``(S ± h_S) / (C ± h_C)``,
   cut to the column's bounds (a mean lies inside them), and the whole bounds when
   the count's interval reaches below 1.

Everything is a function of the Plan, the Cost and the noisy values: no exact value is
read, no random number drawn, so the same noisy table always gets the same ±.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

from sandbox.errors import SystemFailure

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from sandbox.plan import Measure, Output, Plan
    from sandbox.privacy.accounting import Cost

__all__ = ["MAX_MEASURES", "group_outputs", "propagate"]

FULL_GRID_MAX = 4  # measures: every combination of the 4 levels (≤ 256 points)
MAX_MEASURES = 10  # measures: beyond, the corners (2^k) would be too many points
_CHUNK_ROWS = 262_144  # grid rows evaluated per statement (memory stays small)
_LO, _MID, _HI, _ZERO = 0, 1, 2, 3


def noisy_table(
    plan: Plan, groups: list[tuple[Any, ...]], noisy_values: dict[str, list[Any]]
) -> pa.Table:
    """The noisy table ``post_sql`` reads (keys + noisy measures), one row per group."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for i, k in enumerate(plan.keys):
        columns[k.name] = pa.array([g[i] for g in groups])
    for m in plan.measures:
        columns[m.name] = _measure_array(m, noisy_values.get(m.name, [None] * len(groups)))
    columns["__g"] = pa.array(range(len(groups)), type=pa.int64())
    return pa.table(columns)


def _measure_array(m: Measure, values: list[Any]) -> pa.Array:
    import pyarrow as pa

    integer = m.integer if m.kind in ("sum", "histogram") else True
    return pa.array(values, type=pa.int64() if integer else pa.float64())


def _projections(plan: Plan) -> dict[str, Any]:
    """Each output's expression in ``post_sql`` (a sqlglot node), by output name."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(plan.post_sql, dialect="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise SystemFailure("The post-processing SQL does not parse.", code="INTERNAL") from exc
    if not isinstance(tree, exp.Select):
        raise SystemFailure("The post-processing SQL is not one SELECT.", code="INTERNAL")
    out: dict[str, Any] = {}
    for item in tree.expressions:
        node = item.this if isinstance(item, exp.Alias) else item
        out[item.alias_or_name] = node
    return out


def _select(nodes: dict[str, Any]) -> str:
    """``SELECT __g, <expr> AS "name", … FROM noisy``: the outputs' own expressions, no
    WHERE, ORDER BY or LIMIT (a sqlglot tree, rendered once)."""
    from sqlglot import exp

    items: list[exp.Expr] = [exp.column("__g", quoted=True)]
    items += [
        exp.alias_(node.copy(), exp.to_identifier(name, quoted=True))
        for name, node in nodes.items()
    ]
    return str(exp.select(*items).from_("noisy").sql(dialect="duckdb"))


def _run(table: pa.Table, sql: str) -> pa.Table:
    import duckdb

    from sandbox import hostsql

    try:
        with hostsql.connect() as con:
            con.register("noisy", table)
            result: pa.Table = hostsql.arrow(con, sql)
            return result
    except (duckdb.Error, hostsql.HostSQLTimeout) as exc:
        raise SystemFailure("Propagating the accuracy failed.", code="INTERNAL") from exc


def group_outputs(plan: Plan, noisy: pa.Table, names: list[str]) -> pa.Table:
    """Every group's value of the named outputs (``__g`` first), from the noisy table."""
    nodes = _projections(plan)
    return _run(noisy, _select({n: nodes[n] for n in names if n in nodes}))


def propagate(
    plan: Plan,
    cost: Cost,
    out: Output,
    noisy: pa.Table,
    values: list[Any],
    half_width: Any,
) -> list[float | None]:
    """Per group: the output's 95% half-width around ``values`` (its released value in
    that group); ``math.inf`` when unbounded, ``None`` where the value is NULL or the
    output reads too many measures to propagate."""
    import numpy as np

    by_name = {m.name: m for m in plan.measures}
    ms = [by_name[n] for n in out.measures if n in by_name]
    ref = _floats(values)
    if not ms or len(ms) > MAX_MEASURES:
        return [None] * len(values)
    noised = [m for m in ms if m.kind != "histogram"]
    split = 0.05 / max(len(noised), 1)
    if out.kind == "mean":
        mean = _mean(ms, cost, noisy, ref, half_width, split)
        if mean is not None:
            return mean
    levels = {m.name: _levels(m, cost, noisy, half_width, split) for m in ms}
    points = _points(len(ms))
    node = _projections(plan).get(out.name)
    if node is None:
        return [None] * len(values)
    sql = _select({"__v": node})
    n = noisy.num_rows
    hw = np.zeros(n)
    per_chunk = max(1, _CHUNK_ROWS // len(points))
    for start in range(0, n, per_chunk):
        stop = min(n, start + per_chunk)
        grid = _grid(noisy, ms, levels, points, start, stop)
        got = _run(grid, sql)
        v = _floats(got.column("__v").to_pylist()).reshape(stop - start, len(points))
        r = ref[start:stop, None]
        with np.errstate(invalid="ignore"):
            dist = np.abs(v - r)
        dist[~np.isfinite(v)] = math.inf
        hw[start:stop] = dist.max(axis=1)
    return [None if not math.isfinite(r) else float(h) for r, h in zip(ref, hw, strict=True)]


def _floats(values: list[Any]) -> np.ndarray:
    import numpy as np

    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _levels(m: Measure, cost: Cost, noisy: pa.Table, half_width: Any, split: float) -> np.ndarray:
    """(groups × 4): the interval's low end, the noisy value, the high end, and 0 when
    the interval crosses 0 (else the noisy value again)."""
    import numpy as np

    v = noisy.column(m.name).to_numpy(zero_copy_only=False).astype(np.float64)
    if m.kind == "histogram":
        cands = m.candidates or (m.lower or 0.0, m.upper or 0.0)
        lo, hi = np.full_like(v, float(cands[0])), np.full_like(v, float(cands[-1]))
    else:
        mc = cost.measure(m.name)
        h = float(half_width(mc, cost.definition, split))
        if mc.integer:  # an integer measure: integer noise, integer truth
            h = math.floor(h)
        lo, hi = v - h, v + h
    zero = np.where((lo < 0) & (hi > 0), 0.0, v)
    return np.stack([lo, v, hi, zero], axis=1)


def _points(k: int) -> list[tuple[int, ...]]:
    """The grid's level combinations, the centre (the noisy values) first."""
    centre = (_MID,) * k
    if k <= FULL_GRID_MAX:
        pts = list(itertools.product((_LO, _MID, _HI, _ZERO), repeat=k))
    else:
        pts = list(itertools.product((_LO, _HI), repeat=k))
        pts += [tuple(_ZERO if j == i else _MID for j in range(k)) for i in range(k)]
    return [centre, *[p for p in pts if p != centre]]


def _grid(
    noisy: pa.Table,
    ms: list[Measure],
    levels: dict[str, np.ndarray],
    points: list[tuple[int, ...]],
    start: int,
    stop: int,
) -> pa.Table:
    """The groups ``start..stop`` repeated once per grid point, the output's measures
    set to that point's levels (the other columns as they are)."""
    import numpy as np
    import pyarrow as pa

    p = len(points)
    rows = np.repeat(np.arange(start, stop), p)
    grid = noisy.take(pa.array(rows, type=pa.int64()))
    combo = np.array(points, dtype=np.int64)  # (p × k)
    for j, m in enumerate(ms):
        vals = levels[m.name][start:stop][:, combo[:, j]].reshape(-1)
        typ = grid.schema.field(m.name).type
        arr = pa.array(vals.round() if pa.types.is_integer(typ) else vals)
        grid = grid.set_column(
            grid.schema.get_field_index(m.name), m.name, arr.cast(typ, safe=False)
        )
    return grid


def _mean(
    ms: list[Measure],
    cost: Cost,
    noisy: pa.Table,
    ref: np.ndarray,
    half_width: Any,
    split: float,
) -> list[float | None] | None:
    """A mean from its sum S and count C: the corners of (S ± h_S) / (C ± h_C) cut to
    the column's bounds, or the whole bounds when the count may be below 1."""
    import numpy as np

    s = next((m for m in ms if m.kind == "sum"), None)
    c = next((m for m in ms if m.kind in ("count", "count_units")), None)
    if s is None or c is None or len(ms) != 2 or s.lower is None or s.upper is None:
        return None
    sv = noisy.column(s.name).to_numpy(zero_copy_only=False).astype(np.float64)
    cv = noisy.column(c.name).to_numpy(zero_copy_only=False).astype(np.float64)
    hs = float(half_width(cost.measure(s.name), cost.definition, split))
    hc = float(math.floor(half_width(cost.measure(c.name), cost.definition, split)))
    c_lo = cv - hc
    whole = c_lo < 1  # the true count may be 0: the mean can be anywhere in the bounds
    c_lo = np.where(whole, 1.0, c_lo)
    c_hi = np.maximum(cv + hc, c_lo)
    corners = np.stack([(sv - hs) / c_lo, (sv + hs) / c_lo, (sv - hs) / c_hi, (sv + hs) / c_hi])
    lo = np.maximum(corners.min(axis=0), s.lower)
    hi = np.minimum(corners.max(axis=0), s.upper)
    whole |= lo > hi
    lo = np.where(whole, s.lower, lo)
    hi = np.where(whole, s.upper, hi)
    hw = np.maximum(np.abs(ref - lo), np.abs(hi - ref))
    return [None if not math.isfinite(r) else float(h) for r, h in zip(ref, hw, strict=True)]
