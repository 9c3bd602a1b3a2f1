"""Release: noise every measure, select private groups, cap them, post-process.

The exact table (one row per group) becomes a noisy one through the measurements of
``sandbox.privacy.mechanisms``; at most ``plan.max_groups`` selected groups survive
(ranked by their noisy counts); only then does the Plan's ``post_sql`` run.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.errors import ExecutionFailed, SystemFailure
from sandbox.privacy.accounting import check_cost
from sandbox.privacy.accuracy import cell_accuracy
from sandbox.privacy.mechanisms import (
    histogram_alpha,
    noisy_max,
    quantile_score_array,
    threshold_noise,
    vector_noise,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from sandbox.plan import Measure, Plan
    from sandbox.privacy.accounting import Cost, MeasureCost

__all__ = ["Deadline", "Noisy", "release"]

# how many groups are noised, or have their quantiles chosen, between two looks at the
# clock: a few milliseconds of work, so a deadline is overrun by little
_CHUNK = 65_536
_QUANTILE_CHUNK = 256


class Deadline:
    """The host's time limit on one release (issue 22): the work is bounded by the
    runner's row cap, and this is the backstop when the host is slower than measured.
    Checked between chunks of work; past it, the job fails with ``release_timeout``."""

    def __init__(self, seconds: float | None) -> None:
        self.at = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise ExecutionFailed("release_timeout")


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


def release(plan: Plan, exact: pa.Table, cost: Cost, *, timeout_s: float | None = None) -> Noisy:
    """Noise every measure with OpenDP, select private groups, run ``post_sql``.

    Public key sets: every combination is released (absent groups count 0); rows whose
    keys are outside the public sets are dropped. Private keys: only groups whose noisy
    selection count passes the threshold are released; when the query releases that
    count, its released value is the thresholded noisy count (one measurement). Noisy
    counts are integers and are NOT floored at 0 (flooring would bias them); post_sql
    may post-process.
    Past ``timeout_s`` seconds of host time, it raises ExecutionFailed(release_timeout).
    """
    import numpy as np
    import pyarrow as pa

    check_cost(plan, cost)
    deadline = Deadline(timeout_s)
    missing = [c for c in plan.result_columns if c not in exact.column_names]
    if missing:
        raise SystemFailure("The exact table does not have the plan's columns.", code="INTERNAL")
    key_names = [k.name for k in plan.keys]
    key_types = [exact.schema.field(n).type for n in key_names]
    pure = cost.definition == "pure"
    warnings: list[dict[str, Any]] = []
    selected: list[int] = []
    if plan.private_keys:
        # partition selection first, over Arrow/NumPy columns (a runner may return up to
        # runner_max_rows groups); only the selected groups become Python rows, and
        # noise on the other measures of dropped groups is never drawn
        table = _public_filter(plan, key_types, exact)
        sel = next(m for m in plan.measures if m.selection)
        mc = cost.measure(sel.name)
        if mc.threshold is None:
            raise SystemFailure("A selection measure has no threshold.", code="INTERNAL")
        counts = table.column(sel.name).fill_null(0).to_numpy(zero_copy_only=False)
        draw = threshold_noise(mc.scale, mc.threshold, pure)
        parts = []
        for start in range(0, len(counts), _CHUNK):
            deadline.check()
            parts.append(draw(counts[start : start + _CHUNK]))
        noisy_counts = np.concatenate([p[0] for p in parts] or [np.zeros(0, np.int64)])
        keep = np.concatenate([p[1] for p in parts] or [np.zeros(0, bool)])
        kept = np.flatnonzero(keep)
        top = _top_groups(kept, noisy_counts, table, key_names, plan.max_groups)
        if len(top) < len(kept):
            warnings.append(
                {
                    "code": "groups_capped",
                    "message": f"{len(kept)} groups passed partition selection; the "
                    f"{plan.max_groups} with the largest noisy unit counts are released.",
                    "selected": int(len(kept)),
                    "released": int(len(top)),
                }
            )
        chosen = np.sort(top)
        rows = _exact_rows(plan, table.take(pa.array(chosen, type=pa.int64())))
        groups = list(rows)
        # the selection measure's released values are the thresholded noisy counts
        # themselves (one measurement, as OpenDP does), in the groups' order
        selected = [int(v) for v in noisy_counts[chosen]]
    else:
        # rows outside the public sets are dropped in Arrow first, so only the product's
        # rows (at most max_groups) become Python rows, however many the runner returned
        rows = _exact_rows(plan, _public_filter(plan, key_types, exact))
        groups = _public_product(plan, key_types)

    columns: dict[str, Any] = {}
    for i, name in enumerate(key_names):
        columns[name] = pa.array([g[i] for g in groups], type=key_types[i])
    noisy_values: dict[str, list[Any]] = {}
    for m in plan.measures:
        if m.selection:  # outputs, HAVING and ORDER BY may read it
            columns[m.name] = pa.array(selected, type=pa.int64())
            noisy_values[m.name] = selected
            continue
        deadline.check()
        mc = cost.measure(m.name)
        exact_col = [rows.get(g, {}).get(m.name) for g in groups]
        if m.kind == "histogram":
            values: list[Any] = _release_quantiles(m, mc, exact_col, pure, deadline)
            columns[m.name] = pa.array(values, type=pa.int64() if m.integer else pa.float64())
        elif mc.integer:
            values = _noise(mc, [int(v or 0) for v in exact_col], pure) if groups else []
            columns[m.name] = pa.array(values, type=pa.int64())
        else:
            values = _noise(mc, [float(v or 0.0) for v in exact_col], pure) if groups else []
            columns[m.name] = pa.array(values, type=pa.float64())
        noisy_values[m.name] = values
    deadline.check()
    noisy = pa.table(columns) if columns else pa.table({})
    table = _post_process(plan, noisy)
    deadline.check()
    accuracy = cell_accuracy(plan, cost, table, key_names, groups, noisy_values)
    mechanisms = sorted({cost.measure(m.name).mechanism for m in plan.measures})
    return Noisy(table=table, accuracy=accuracy, mechanisms=mechanisms, warnings=warnings)


def _top_groups(kept: Any, noisy: Any, table: pa.Table, keys: list[str], cap: int) -> Any:
    """The (at most) ``cap`` selected rows with the largest noisy counts.

    ``kept`` (row positions) and ``noisy`` are the threshold's output, so this is
    post-processing: which groups survive depends on noisy counts and on the keys
    (ties at the cut: a hash of the key's text), never on an exact value.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(kept) <= cap:
        return kept
    if cap <= 0:
        return kept[:0]
    values = noisy[kept]
    cut = np.partition(values, len(values) - cap)[len(values) - cap]  # the cap-th largest
    above = kept[values > cut]
    tied = kept[values == cut]

    # the keys' text as Arrow casts it (any DuckDB date or number has one; Python's
    # date type does not reach year 10,000)
    rows = table.take(pa.array(tied, type=pa.int64()))
    text = [pc.cast(rows.column(k), pa.string()).to_pylist() for k in keys]

    def digest(j: int) -> str:
        key = repr(tuple(t[j] for t in text))
        return hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()

    chosen = [int(tied[j]) for j in sorted(range(len(tied)), key=digest)[: cap - len(above)]]
    return np.concatenate([above, np.asarray(chosen, dtype=above.dtype)])


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


def _public_filter(plan: Plan, key_types: list[Any], exact: pa.Table) -> pa.Table:
    """The rows whose keys with a public set are in it (keys without one: any value)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = None
    for spec, allowed in zip(plan.keys, _typed_public(plan, key_types), strict=True):
        if allowed is None:
            continue
        typ = exact.schema.field(spec.name).type
        hit = pc.fill_null(pc.is_in(exact.column(spec.name), pa.array(allowed, type=typ)), False)
        mask = hit if mask is None else pc.and_(mask, hit)
    return exact if mask is None else exact.filter(mask)


def _noise(mc: MeasureCost, values: list[Any], pure: bool) -> list[Any]:
    import numpy as np  # a typed array crosses into OpenDP without per-element checks

    meas = vector_noise(mc.scale, pure, mc.integer)
    arr = np.asarray(values, dtype=np.int64 if mc.integer else np.float64)
    return [int(v) if mc.integer else float(v) for v in meas(arr)]


def _release_quantiles(
    m: Measure, mc: MeasureCost, exact_col: list[Any], pure: bool, deadline: Deadline
) -> list[Any]:
    assert m.candidates is not None
    meas = noisy_max(mc.scale, pure)
    alpha = histogram_alpha(m)
    out: list[Any] = []
    for i, hist in enumerate(exact_col):
        if i % _QUANTILE_CHUNK == 0:
            deadline.check()
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
