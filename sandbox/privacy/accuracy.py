"""Accuracy: 95% half-widths, quantile statements, ``explain`` and per-cell half-widths.

All of it is a function of the Plan, the Cost and noisy values: no exact value is read.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sandbox.privacy.accounting import check_cost
from sandbox.privacy.mechanisms import load_opendp

if TYPE_CHECKING:
    import pyarrow as pa

    from sandbox.plan import Measure, Plan
    from sandbox.privacy.accounting import Cost, MeasureCost

__all__ = ["ALPHA", "cell_accuracy", "explain", "published_half_width"]

ALPHA = 0.05  # accuracy statements are 95% intervals


def _half_width(mc: MeasureCost, definition: str, alpha: float = ALPHA) -> float:
    """The (1 − alpha) half-width of a measure's noise: OpenDP's, computed once per
    distinct (definition, integer, scale, alpha) and reused (issue 17); explain, every
    released cell and propagation ask for the same few."""
    return _half_width_of(definition, bool(mc.integer), float(mc.scale), float(alpha))


@lru_cache(maxsize=4096)
def _half_width_of(definition: str, integer: bool, scale: float, alpha: float) -> float:
    dp = load_opendp()
    if definition == "pure":
        fn = dp.discrete_laplacian_scale_to_accuracy if integer else dp.laplacian_scale_to_accuracy
    elif integer and scale > _EXACT_DISCRETE_GAUSSIAN_MAX_SCALE:
        # OpenDP sums the discrete Gaussian's tail term by term: its time grows with the
        # scale (seconds per 10⁷), so a tiny ε would tie up a worker for hours. Past this
        # scale the continuous half-width rounded up, plus one, bounds it (and equals it
        # in practice).
        return math.ceil(float(dp.gaussian_scale_to_accuracy(scale=scale, alpha=alpha))) + 1.0
    else:
        fn = dp.discrete_gaussian_scale_to_accuracy if integer else dp.gaussian_scale_to_accuracy
    return float(fn(scale=scale, alpha=alpha))


_EXACT_DISCRETE_GAUSSIAN_MAX_SCALE = 1e4


def _quantile_statement(m: Measure, mc: MeasureCost) -> dict[str, Any]:
    cands = m.candidates or ()
    spacing = (cands[-1] - cands[0]) / (len(cands) - 1) if len(cands) > 1 else 0.0
    den = mc.score_den or 1
    # exponential mechanism: with prob ≥ 95% the chosen score is within scale·ln(k/0.05)
    # of the best; a score is about den × (rank distance), so this is in rows
    gap = mc.scale * math.log(len(cands) / ALPHA)
    return {
        "candidates": len(cands),
        "candidate_spacing": spacing,
        "rank_error_95": gap / den,
        "statement": (
            f"one of {len(cands)} candidates {spacing:g} apart; with 95% probability the "
            f"released value's rank is within about {gap / den:.1f} rows of the "
            f"{m.alpha:g}-quantile's rank"
        ),
    }


def _output_entry(plan: Plan, cost: Cost, out: Any) -> dict[str, Any]:
    by_name = {m.name: m for m in plan.measures}
    entry: dict[str, Any] = {"name": out.name, "kind": out.kind, "measures": list(out.measures)}
    if out.kind == "key":
        spec = next((k for k in plan.keys if k.name == out.name), None)
        if spec is not None and spec.public is None:
            sel = next(m for m in cost.measures if m.selection)
            entry["mechanism"] = f"{sel.mechanism} (threshold {sel.threshold}, scale {sel.scale:g})"
            entry["threshold"] = sel.threshold
        else:
            entry["mechanism"] = "public key set (every key released)"
        entry.update(scale=None, accuracy_95=None)
        return entry
    if _is_direct(out):
        m = by_name[out.measures[0]]
        mc = cost.measure(m.name)
        entry.update(mechanism=mc.mechanism, scale=mc.scale, epsilon_or_rho=mc.share)
        if m.kind == "histogram":
            entry.update(accuracy_95=None, method="rank")
            entry.update(_quantile_statement(m, mc))
        else:
            entry.update(accuracy_95=_half_width(mc, cost.definition), method="direct")
        return entry
    noised = [n for n in out.measures if cost.measure(n).kind != "histogram"]
    split = ALPHA / max(len(noised), 1)
    parts = []
    for name in out.measures:
        mc = cost.measure(name)
        hist = mc.kind == "histogram"
        parts.append(
            {
                "measure": name,
                "kind": mc.kind,
                "scale": mc.scale,
                "accuracy_95": None if hist else _half_width(mc, cost.definition),
                "accuracy_split": None if hist else _half_width(mc, cost.definition, split),
            }
        )
    entry.update(
        mechanism="derived (post-processing of noisy measures)",
        scale=None,
        accuracy_95=None,
        method="propagated",
        confidence_split=1 - split,
        components=parts,
        pm95_rule=_rule(out, by_name, parts, split),
        statement="± computed per cell by interval arithmetic over the noisy measures' "
        f"{100 * (1 - split):.4g}% intervals (docs/privacy.md, 'Accuracy statements')",
    )
    return entry


def _is_direct(out: Any) -> bool:
    return len(out.measures) == 1 and out.kind in ("count", "sum", "count_units", "quantile")


def _rule(out: Any, by_name: dict[str, Measure], parts: list[dict[str, Any]], split: float) -> str:
    """How a derived output's ± follows from its components, in one line (no data)."""
    level = f"{100 * (1 - split):.4g}%"
    if out.kind == "mean" and len(parts) == 2:
        s = next((p for p in parts if p["kind"] == "sum"), None)
        c = next((p for p in parts if p["kind"] in ("count", "count_units")), None)
        m = by_name.get(s["measure"]) if s else None
        if s is not None and c is not None and m is not None:
            hs, hc = _short(s["accuracy_split"]), _short(math.floor(c["accuracy_split"]))
            return (
                f"± ≤ ({hs} + |mean| × {hc}) / (count − {hc}) while count > {hc}, "
                f"within [{m.lower:g}, {m.upper:g}] (sum and count at {level} each)"
            )
    boxes = ", ".join(
        f"{p['measure']} ± {_short(p['accuracy_split'])}"
        if p["accuracy_split"] is not None
        else f"{p['measure']} over its candidates"
        for p in parts
    )
    return f"from the box {boxes} (each at {level}), per cell"


def _short(v: float | None) -> str:
    return "?" if v is None else f"{v:.3g}"


def explain(plan: Plan, cost: Cost) -> list[dict[str, Any]]:
    """One entry per output: mechanism, noise scale, 95% half-width (or, for a derived
    output, its components and the rule that propagates them); no data read."""
    check_cost(plan, cost)
    return [_output_entry(plan, cost, out) for out in plan.outputs]


def cell_accuracy(
    plan: Plan,
    cost: Cost,
    table: pa.Table,
    key_names: list[str],
    groups: list[tuple[Any, ...]],
    noisy_values: dict[str, list[Any]],
) -> dict[str, list[dict[str, Any]]]:
    """Per released cell: its noise scale and 95% half-width (``accuracy_95``), a
    quantile's rank statement, or a derived output's half-width propagated from the
    noisy measures of its group (``sandbox.privacy.propagation``). Half-widths only:
    an interval centred on the unrounded noisy value would undo output review's
    rounding (review.released_accuracy publishes the rounded ±)."""
    entries = {e["name"]: e for e in explain(plan, cost)}
    outs = [o for o in plan.outputs if o.name in table.column_names and o.kind != "key"]
    derived = [o for o in outs if entries[o.name]["method"] == "propagated"]
    propagated = _propagated(plan, cost, derived, table, groups, noisy_values) if derived else {}
    result: dict[str, list[dict[str, Any]]] = {}
    for out in outs:
        e = entries[out.name]
        if out.name in propagated:
            result[out.name] = [_derived_cell(hw) for hw in propagated[out.name]]
            continue
        cell: dict[str, Any] = {"scale": e["scale"], "accuracy_95": e["accuracy_95"]}
        cell["method"] = e["method"]
        if e["method"] == "rank":
            cell.update({k: e[k] for k in ("candidate_spacing", "rank_error_95", "statement")})
        else:
            cell["integer"] = cost.measure(out.measures[0]).integer
        result[out.name] = [dict(cell) for _ in range(table.num_rows)]
    return result


def _derived_cell(hw: float | None) -> dict[str, Any]:
    cell: dict[str, Any] = {"scale": None, "derived": True, "method": "propagated"}
    if hw is not None and not math.isfinite(hw):
        cell.update(accuracy_95=None, unbounded=True)
    else:
        cell["accuracy_95"] = hw
    return cell


def _propagated(
    plan: Plan,
    cost: Cost,
    derived: list[Any],
    table: pa.Table,
    groups: list[tuple[Any, ...]],
    noisy_values: dict[str, list[Any]],
) -> dict[str, list[float | None]]:
    """Each derived output's half-width in each released row (inf: unbounded)."""
    from sandbox.privacy import propagation

    noisy = propagation.noisy_table(plan, groups, noisy_values)
    names = [o.name for o in plan.outputs if o.name in table.column_names]
    per_group = propagation.group_outputs(plan, noisy, names)
    # the released rows are post_sql's (after HAVING, ORDER BY, LIMIT): each is found
    # by its whole tuple of outputs; identical tuples take the largest ± among them
    order = per_group.column("__g").to_pylist()
    index: dict[tuple[Any, ...], list[int]] = {}
    columns = [per_group.column(n).to_pylist() for n in names]
    for pos, row in enumerate(zip(*columns, strict=True)):
        index.setdefault(_row_key(row), []).append(order[pos])
    released = [
        index.get(_row_key(r), [])
        for r in zip(*(table.column(n).to_pylist() for n in names), strict=True)
    ]
    out: dict[str, list[float | None]] = {}
    for o in derived:
        values = per_group.column(o.name).to_pylist()
        hw = propagation.propagate(
            plan, cost, o, noisy, _in_group_order(order, values), _half_width
        )
        cells: list[float | None] = []
        for found in released:
            known = [h for h in (hw[g] for g in found) if h is not None]
            cells.append(max(known) if found and len(known) == len(found) else None)
        out[o.name] = cells
    return out


def _in_group_order(order: list[int], values: list[Any]) -> list[Any]:
    """Values listed by ``__g`` position, put back in group order."""
    result: list[Any] = [None] * len(values)
    for g, v in zip(order, values, strict=True):
        result[g] = v
    return result


def _row_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple("NaN" if isinstance(v, float) and v != v else v for v in row)


def published_half_width(
    hw: float | None, *, base: int | None = None, integer: bool = False
) -> int | float | None:
    """The ± a released cell carries: the 95% half-width rounded OUTWARD, so the stated
    interval still holds. A count rounded to ``base`` gets ``hw + base/2`` (the
    rounding moves it by at most half a base) up to a multiple of the base; anything
    else is rounded up to two significant figures (an integer measure's noise is an
    integer, so its half-width is first taken down to one). None: no finite ±."""
    if hw is None or not math.isfinite(hw):
        return None
    if integer:
        hw = float(math.floor(hw + 1e-9))
    if base:
        return int(math.ceil((hw + base / 2) / base - 1e-12) * base)
    if hw <= 0:
        return 0
    d = Decimal(repr(float(hw)))
    step = Decimal(1).scaleb(d.adjusted() - 1)
    up = (d / step).to_integral_value(rounding=ROUND_CEILING) * step
    if integer or up == up.to_integral_value():
        return int(up)
    return float(up)
