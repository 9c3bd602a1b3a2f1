"""Release: noise every measure, select private groups, cap them, post-process.

The exact table (one row per group) becomes a noisy one through the measurements of
``sandbox.privacy.mechanisms``; at most ``plan.max_groups`` selected groups survive
(ranked by their noisy counts); only then does the Plan's ``post_sql`` run.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.errors import SystemFailure
from sandbox.privacy.accounting import check_cost
from sandbox.privacy.accuracy import cell_accuracy
from sandbox.privacy.mechanisms import (
    histogram_alpha,
    noisy_max,
    partition_threshold,
    quantile_score_array,
    vector_noise,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from sandbox.plan import Measure, Plan
    from sandbox.privacy.accounting import Cost, MeasureCost

__all__ = ["Noisy", "release"]


@dataclass
class Noisy:
    """A released result: operator outputs, per-cell accuracy, the mechanisms used."""

    table: pa.Table
    accuracy: dict[str, list[dict[str, Any]]]
    mechanisms: list[str]
    # notes for the operator, each a function of the Plan and noisy values only
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def to_json_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.table.to_pylist()
        return [{k: _jsonable(v) for k, v in r.items()} for r in rows]


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


def release(plan: Plan, exact: pa.Table, cost: Cost) -> Noisy:
    """Noise every measure with OpenDP, select private groups, run ``post_sql``.

    Public key sets: every combination is released (absent groups count 0); rows whose
    keys are outside the public sets are dropped. Private keys: only groups whose noisy
    distinct-unit count passes the threshold are released. Noisy counts are integers
    and are NOT floored at 0 (flooring would bias them); post_sql may post-process.
    """
    import pyarrow as pa

    check_cost(plan, cost)
    missing = [c for c in plan.result_columns if c not in exact.column_names]
    if missing:
        raise SystemFailure("The exact table does not have the plan's columns.", code="INTERNAL")
    key_names = [k.name for k in plan.keys]
    key_types = [exact.schema.field(n).type for n in key_names]
    rows = _exact_rows(plan, exact)
    if plan.private_keys:
        groups = _public_filter(plan, key_types, list(rows))
    else:
        groups = _public_product(plan, key_types)
    pure = cost.definition == "pure"

    # partition selection first: noise on the other measures of dropped groups is never used
    warnings: list[dict[str, Any]] = []
    if plan.private_keys:
        sel = next(m for m in plan.measures if m.selection)
        mc = cost.measure(sel.name)
        counts = {i: int(rows[g][sel.name] or 0) for i, g in enumerate(groups)}
        kept = partition_threshold(mc.scale, mc.threshold, pure)(counts)
        top = _top_groups(kept, groups, plan.max_groups)
        if len(top) < len(kept):
            warnings.append(
                {
                    "code": "groups_capped",
                    "message": f"{len(kept)} groups passed partition selection; the "
                    f"{plan.max_groups} with the largest noisy unit counts are released.",
                    "selected": len(kept),
                    "released": len(top),
                }
            )
        groups = [groups[i] for i in sorted(top)]

    columns: dict[str, Any] = {}
    for i, name in enumerate(key_names):
        columns[name] = pa.array([g[i] for g in groups], type=key_types[i])
    noisy_values: dict[str, list[Any]] = {}
    for m in plan.measures:
        if m.selection:
            continue
        mc = cost.measure(m.name)
        exact_col = [rows.get(g, {}).get(m.name) for g in groups]
        if m.kind == "histogram":
            values: list[Any] = _release_quantiles(m, mc, exact_col, pure)
            columns[m.name] = pa.array(values, type=pa.int64() if m.integer else pa.float64())
        elif mc.integer:
            values = _noise(mc, [int(v or 0) for v in exact_col], pure) if groups else []
            columns[m.name] = pa.array(values, type=pa.int64())
        else:
            values = _noise(mc, [float(v or 0.0) for v in exact_col], pure) if groups else []
            columns[m.name] = pa.array(values, type=pa.float64())
        noisy_values[m.name] = values
    noisy = pa.table(columns) if columns else pa.table({})
    table = _post_process(plan, noisy)
    accuracy = cell_accuracy(plan, cost, table, key_names, groups, noisy_values)
    mechanisms = sorted({cost.measure(m.name).mechanism for m in plan.measures})
    return Noisy(table=table, accuracy=accuracy, mechanisms=mechanisms, warnings=warnings)


def _top_groups(kept: dict[int, Any], groups: list[tuple[Any, ...]], cap: int) -> list[int]:
    """The (at most) ``cap`` selected groups with the largest noisy counts.

    ``kept`` is the threshold's output (group index → noisy count), so this is
    post-processing: which groups survive depends on noisy counts and on the keys
    (ties: a hash of the key's text), never on an exact value.
    """
    if len(kept) <= cap:
        return list(kept)

    def rank(i: int) -> tuple[int, str]:
        digest = hashlib.sha256(repr(groups[i]).encode("utf-8", "backslashreplace"))
        return (-int(kept[i]), digest.hexdigest())

    return sorted(kept, key=rank)[: max(0, cap)]


def _exact_rows(plan: Plan, exact: pa.Table) -> dict[tuple[Any, ...], dict[str, Any]]:
    key_names = [k.name for k in plan.keys]
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in exact.to_pylist():
        key = tuple(row[k] for k in key_names)
        if key in out:
            raise SystemFailure("The exact table has a duplicate group.", code="INTERNAL")
        out[key] = row
    return out


def _typed_public(plan: Plan, key_types: list[Any]) -> list[list[Any] | None]:
    import pyarrow as pa

    typed: list[list[Any] | None] = []
    for spec, typ in zip(plan.keys, key_types, strict=True):
        if spec.public is None:
            typed.append(None)
            continue
        try:
            arr = pa.array(list(spec.public)).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SystemFailure(
                f"The public key set of {spec.name} does not fit its column type.", code="INTERNAL"
            ) from exc
        typed.append(list(dict.fromkeys(arr.to_pylist())))
    return typed


def _public_product(plan: Plan, key_types: list[Any]) -> list[tuple[Any, ...]]:
    import itertools

    typed = _typed_public(plan, key_types)
    return [tuple(c) for c in itertools.product(*[t or [] for t in typed])]


def _public_filter(
    plan: Plan, key_types: list[Any], keys: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    typed = [None if t is None else set(t) for t in _typed_public(plan, key_types)]
    return [
        k
        for k in keys
        if all(allowed is None or v in allowed for v, allowed in zip(k, typed, strict=True))
    ]


def _noise(mc: MeasureCost, values: list[Any], pure: bool) -> list[Any]:
    import numpy as np  # a typed array crosses into OpenDP without per-element checks

    meas = vector_noise(mc.scale, pure, mc.integer)
    arr = np.asarray(values, dtype=np.int64 if mc.integer else np.float64)
    return [int(v) if mc.integer else float(v) for v in meas(arr)]


def _release_quantiles(m: Measure, mc: MeasureCost, exact_col: list[Any], pure: bool) -> list[Any]:
    assert m.candidates is not None
    meas = noisy_max(mc.scale, pure)
    alpha = histogram_alpha(m)
    out: list[Any] = []
    for hist in exact_col:
        scores = quantile_score_array(_as_hist(hist), len(m.candidates), alpha)
        value = m.candidates[int(meas(scores))]
        out.append(int(value) if m.integer else float(value))
    return out


def _as_hist(value: Any) -> dict[int, int]:
    if value is None:
        return {}
    items = value.items() if isinstance(value, dict) else value
    hist: dict[int, int] = {}
    for slot, count in items:
        if count:
            hist[int(slot)] = hist.get(int(slot), 0) + int(count)
    return hist


def _post_process(plan: Plan, noisy: pa.Table) -> pa.Table:
    """Run post_sql over the noisy table only, in a boxed DuckDB (sandbox/hostsql.py)."""
    import duckdb

    from sandbox import hostsql

    try:
        with hostsql.connect() as con:
            con.register("noisy", noisy)
            return hostsql.arrow(con, plan.post_sql)
    except (duckdb.Error, hostsql.HostSQLTimeout) as exc:
        raise SystemFailure("Post-processing of the noisy table failed.", code="INTERNAL") from exc
