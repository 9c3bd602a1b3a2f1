"""The Plan: what the compiler decided, in a plain serialisable form.

A Plan is the contract between three parties that do not trust each other's code
paths:

- the **runner** (inside the container) executes ``sql`` over ``tables`` and must
  return exactly the columns ``[k.name for k in keys] + [m.name for m in measures]``
  (``runner_spec()`` is all it is given). Its row ceiling is the executor's
  ``runner_max_rows`` setting, far above ``max_groups``: it cuts, never fails;
- ``max_groups`` is applied by the privacy layer AFTER partition selection, on
  noisy counts (issue 20: a cap on exact groups is an oracle);
- the **privacy layer** turns each measure into a noisy value with OpenDP, using
  ``kind``, ``lower``/``upper`` and the contribution bounds ``unit_rows`` /
  ``unit_groups``, and selects private groups with the ``selection`` measure;
- the **post-processing** step evaluates ``post_sql`` over a table named ``noisy``
  (keys + noisy measures) to give the operator's outputs, HAVING, ORDER BY, LIMIT.

Its ``digest()`` identifies the query in the audit log and in product manifests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

PLAN_VERSION = 1
MAX_CANDIDATES = 1000  # quantile candidates per measure, at most

MeasureKind = Literal["count", "sum", "count_units", "histogram"]
OutputKind = Literal[
    "key", "count", "count_units", "sum", "mean", "variance", "stddev", "quantile", "derived"
]


@dataclass(frozen=True)
class KeySpec:
    """One GROUP BY key. ``public`` holds the public key values (every one is released,
    empty groups included); ``None`` means the keys are private and go through
    partition selection."""

    name: str
    source: str  # e.g. "persons.county_code" or "FLOOR(persons.age / 10) * 10"
    public: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Measure:
    """One exact aggregate per group, computed by the runner.

    - ``count``: rows (or non-null values) per group; each unit adds 0..unit_rows.
    - ``sum``: sum of a value clamped to [lower, upper] per row.
    - ``count_units``: distinct privacy units per group (each unit adds 0 or 1).
    - ``histogram``: a MAP slot -> row count over ``candidates`` (for quantiles):
      slot 2i+1 holds values equal to candidates[i], slot 2i values strictly between
      candidates[i-1] and candidates[i].
    """

    name: str
    kind: MeasureKind
    column: str | None = None  # "table.column" for explain; None for COUNT(*)
    lower: float | None = None
    upper: float | None = None
    integer: bool = True  # the per-row values are integers
    candidates: tuple[float, ...] | None = None
    alpha: float | None = None  # histogram: which quantile
    selection: bool = False  # thresholded by partition selection (released if an output uses it)


@dataclass(frozen=True)
class Output:
    """One column the operator asked for, computed from noisy measures by ``post_sql``."""

    name: str
    kind: OutputKind
    measures: tuple[str, ...] = ()  # the measures it is computed from
    expr: str = ""  # its SQL in post_sql, for explain


@dataclass(frozen=True)
class Plan:
    query_sha256: str
    dataset: str  # the one private dataset the query reads
    dataset_version: str
    privacy_unit: str
    definition: Literal["pure", "zcdp"]
    tables: dict[str, str]  # table name -> Parquet file relative to the data root
    dataset_versions: dict[str, str]  # every dataset read (lookups too) -> version
    sql: str
    keys: tuple[KeySpec, ...]
    measures: tuple[Measure, ...]
    outputs: tuple[Output, ...]
    post_sql: str
    unit_rows: int  # rows one unit can contribute after bounding (whole query)
    unit_groups: int  # groups one unit can contribute to after bounding
    max_groups: int  # at most this many groups are released (cut on noisy counts)
    version: int = PLAN_VERSION
    notes: tuple[str, ...] = field(default=())  # what the compiler rewrote, for explain

    @property
    def private_keys(self) -> bool:
        return any(k.public is None for k in self.keys)

    @property
    def result_columns(self) -> list[str]:
        return [k.name for k in self.keys] + [m.name for m in self.measures]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        d = dict(data)
        d["keys"] = tuple(
            KeySpec(**{**k, "public": None if k["public"] is None else tuple(k["public"])})
            for k in d["keys"]
        )
        d["measures"] = tuple(
            Measure(
                **{**m, "candidates": None if m["candidates"] is None else tuple(m["candidates"])}
            )
            for m in d["measures"]
        )
        d["outputs"] = tuple(
            Output(**{**o, "measures": tuple(o["measures"])}) for o in d["outputs"]
        )
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def runner_spec(self) -> dict[str, Any]:
        """All the runner is told: SQL, tables, expected columns (keys first), row cap.

        The executors replace ``max_rows`` by their ``runner_max_rows`` setting
        (``sandbox.executors.runner_spec``)."""
        return {
            "version": self.version,
            "sql": self.sql,
            "tables": dict(self.tables),
            "columns": self.result_columns,
            "key_columns": [k.name for k in self.keys],
            "max_rows": self.max_groups,
        }


def quantile_candidates(lower: float, upper: float, integer: bool) -> tuple[float, ...]:
    """Candidate values for a quantile: the integers lower..upper when there are at
    most MAX_CANDIDATES of them, else MAX_CANDIDATES evenly spaced values."""
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError("need finite lower < upper")
    if integer:
        lo, hi = math.ceil(lower), math.floor(upper)
        if hi - lo + 1 <= MAX_CANDIDATES:
            return tuple(float(v) for v in range(lo, hi + 1))
    step = (upper - lower) / (MAX_CANDIDATES - 1)
    values = [lower + i * step for i in range(MAX_CANDIDATES - 1)] + [upper]
    return tuple(values)
