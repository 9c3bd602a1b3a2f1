"""Accuracy: 95% half-widths, quantile statements, ``explain`` and per-cell intervals.

All of it is a function of the Plan, the Cost and noisy values: no exact value is read.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sandbox.privacy.accounting import check_cost
from sandbox.privacy.mechanisms import load_opendp

if TYPE_CHECKING:
    import pyarrow as pa

    from sandbox.plan import Measure, Plan
    from sandbox.privacy.accounting import Cost, MeasureCost

__all__ = ["ALPHA", "cell_accuracy", "explain"]

ALPHA = 0.05  # accuracy statements are 95% intervals


def _half_width(mc: MeasureCost, definition: str, alpha: float = ALPHA) -> float:
    dp = load_opendp()
    if definition == "pure":
        fn = (
            dp.discrete_laplacian_scale_to_accuracy
            if mc.integer
            else dp.laplacian_scale_to_accuracy
        )
    elif mc.integer and mc.scale > _EXACT_DISCRETE_GAUSSIAN_MAX_SCALE:
        # OpenDP sums the discrete Gaussian's tail term by term: its time grows with the
        # scale (seconds per 10⁷), so a tiny ε would tie up a worker for hours. Past this
        # scale the continuous half-width rounded up, plus one, bounds it (and equals it
        # in practice).
        return math.ceil(float(dp.gaussian_scale_to_accuracy(scale=mc.scale, alpha=alpha))) + 1.0
    else:
        fn = dp.discrete_gaussian_scale_to_accuracy if mc.integer else dp.gaussian_scale_to_accuracy
    return float(fn(scale=mc.scale, alpha=alpha))


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
    direct = len(out.measures) == 1 and out.kind in ("count", "sum", "count_units", "quantile")
    if direct:
        m = by_name[out.measures[0]]
        mc = cost.measure(m.name)
        entry.update(mechanism=mc.mechanism, scale=mc.scale, epsilon_or_rho=mc.share)
        if m.kind == "histogram":
            entry["accuracy_95"] = None
            entry.update(_quantile_statement(m, mc))
        else:
            entry["accuracy_95"] = _half_width(mc, cost.definition)
        return entry
    parts = []
    for name in out.measures:
        mc = cost.measure(name)
        hw = None if mc.kind == "histogram" else _half_width(mc, cost.definition)
        parts.append({"measure": name, "kind": mc.kind, "scale": mc.scale, "accuracy_95": hw})
    entry.update(
        mechanism="derived (post-processing of noisy measures)",
        scale=None,
        accuracy_95=None,
        components=parts,
        statement="computed from the noisy measures listed; see their accuracy",
    )
    return entry


def explain(plan: Plan, cost: Cost) -> list[dict[str, Any]]:
    """One entry per output: mechanism, noise scale, 95% half-width; no data read."""
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
    """Per released cell: scale, 95% half-width and interval, or a quantile statement."""
    by_name = {m.name: m for m in plan.measures}
    entries = {e["name"]: e for e in explain(plan, cost)}
    index = {g: i for i, g in enumerate(groups)}
    out_keys = [n for n in key_names if n in table.column_names]
    rows = table.to_pylist()
    result: dict[str, list[dict[str, Any]]] = {}
    for out in plan.outputs:
        if out.name not in table.column_names or out.kind == "key":
            continue
        e = entries[out.name]
        cells: list[dict[str, Any]] = []
        for row in rows:
            v = row[out.name]
            cell: dict[str, Any] = {"scale": e.get("scale"), "accuracy_95": e.get("accuracy_95")}
            hw = e.get("accuracy_95")
            if hw is not None and isinstance(v, int | float):
                cell["interval_95"] = [v - hw, v + hw]
            elif "rank_error_95" in e:  # a quantile: a statement, not an interval
                cell.update({k: e[k] for k in ("candidate_spacing", "rank_error_95", "statement")})
            elif out.kind == "mean" and len(out_keys) == len(key_names):
                gi = index.get(tuple(row[k] for k in key_names))
                cell.update(
                    derived=True,
                    interval_95=_mean_interval(plan, cost, out, gi, by_name, noisy_values),
                )
            else:
                cell["derived"] = e.get("accuracy_95") is None
            cells.append(cell)
        result[out.name] = cells
    return result


def _mean_interval(
    plan: Plan,
    cost: Cost,
    out: Any,
    gi: int | None,
    by_name: dict[str, Measure],
    noisy_values: dict[str, list[Any]],
) -> list[float] | None:
    """A conservative 95% interval for sum/count: each part at 97.5%, the corners of
    the box, intersected with the value bounds."""
    if gi is None:
        return None
    ms = [by_name[n] for n in out.measures]
    s = next((m for m in ms if m.kind == "sum"), None)
    c = next((m for m in ms if m.kind in ("count", "count_units")), None)
    if s is None or c is None or s.lower is None or s.upper is None:
        return None
    sv, cv = noisy_values[s.name][gi], noisy_values[c.name][gi]
    hs = _half_width(cost.measure(s.name), cost.definition, ALPHA / 2)
    hc = _half_width(cost.measure(c.name), cost.definition, ALPHA / 2)
    c_lo, c_hi = max(cv - hc, 1.0), max(cv + hc, 1.0)
    corners = [a / b for a in (sv - hs, sv + hs) for b in (c_lo, c_hi)]
    lo, hi = max(min(corners), s.lower), min(max(corners), s.upper)
    if cv - hc < 1:  # the count may be ~0: the mean can be anything within bounds
        lo, hi = s.lower, s.upper
    return [float(lo), float(hi)] if lo <= hi else [float(s.lower), float(s.upper)]
