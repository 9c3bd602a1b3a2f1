"""Output review: disclosure checks on what would be released, and supervisor decisions.

Rules live in ``policies/review.yaml``. On every noisy result, before release:

- **minimum count**: a row whose noisy count (any COUNT output) is below the grade's
  ``min_count`` has its measures released as null and its ``suppressed`` column set;
- **rounding**: count outputs are rounded to the grade's ``round_base``;
- **accuracy**: every released cell carries its 95% ± (``released_accuracy``), and
  a ``wide_interval`` flag names the columns where a ± is larger than the value;
- **near-duplicates**: an earlier job of the same operator (inside the window) with
  the same Plan digest, or SQL differing only in constants, is flagged: the two
  results could be differenced.

All of it is post-processing of differentially private output, so it costs no budget.
How many supervisors must approve depends on the dataset's grade; a flagged job of an
automatic grade waits for ``flagged_approvals``. A reviewer may not be the submitter
nor decide twice (reviewers are compared by principal id: NFKC, case-folded, see
sandbox/tokens.py); every decision carries a reason; one rejection rejects.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox import store
from sandbox.catalog import _first_error, _read_yaml
from sandbox.errors import BadInput, Conflict, PolicyInvalid
from sandbox.plan import Plan
from sandbox.tokens import fold_identity

SCHEMA = """
CREATE TABLE IF NOT EXISTS review_decisions (
    job_id      TEXT NOT NULL,
    reviewer    TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason      TEXT NOT NULL,
    decided_at  TEXT NOT NULL,
    PRIMARY KEY (job_id, reviewer)
);
"""
store.register_schema("sandbox.review", SCHEMA)

COUNT_KINDS = {"count", "count_units"}
SUPPRESSED_COLUMN = "suppressed"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GradeRule(_Model):
    approvals: int = Field(ge=0, le=5)
    round_base: int | None = Field(default=None, ge=1)
    min_count: int | None = Field(default=None, ge=0)


class ReviewRules(_Model):
    min_count: int = Field(default=10, ge=0)
    duplicate_window_hours: float = Field(default=168, gt=0)
    flagged_approvals: int = Field(default=1, ge=0, le=5)
    grades: dict[str, GradeRule]
    # ACRO's thresholds for analysis jobs: "default" and per grade (sandbox.jobs.analysis)
    acro: dict[str, dict[str, float | int | bool]] = {}

    def for_grade(self, grade: str) -> GradeRule:
        rule = self.grades.get(grade)
        if rule is None:  # an unknown grade gets the strictest treatment
            return GradeRule(approvals=2, round_base=10, min_count=self.min_count)
        return rule

    def min_count_for(self, grade: str) -> int:
        rule = self.for_grade(grade)
        return self.min_count if rule.min_count is None else rule.min_count

    @property
    def duplicate_window(self) -> timedelta:
        return timedelta(hours=self.duplicate_window_hours)


def load_rules(policies: Path) -> ReviewRules:
    """Load ``policies/review.yaml``; defaults if the file is absent."""
    path = policies / "review.yaml"
    if not path.exists():
        return ReviewRules(
            grades={
                "general-1": GradeRule(approvals=0),
                "general-2": GradeRule(approvals=0),
                "general-3": GradeRule(approvals=1, round_base=5),
                "general-4": GradeRule(approvals=1, round_base=10),
                "important": GradeRule(approvals=2, round_base=10),
            }
        )
    try:
        return ReviewRules.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise PolicyInvalid(f"{path.name}: {_first_error(exc)}") from exc


# --- checks on the output ----------------------------------------------------------


@dataclass
class Checked:
    """The result as it would be released, and what the checks found."""

    table: pa.Table
    flags: list[dict[str, Any]] = field(default_factory=list)
    required_approvals: int = 0
    suppressed_rows: int = 0
    round_base: int | None = None
    min_count: int = 0
    rounded: list[str] = field(default_factory=list)  # the count columns rounded to the base
    accuracy: dict[str, Any] = field(default_factory=dict)  # review.released_accuracy


def check_output(
    table: pa.Table,
    plan: Plan,
    *,
    grade: str,
    rules: ReviewRules,
    duplicates: list[dict[str, Any]] | None = None,
    accuracy: dict[str, Any] | None = None,
) -> Checked:
    """Apply suppression and rounding to a noisy table; flag risks; count approvals.

    With the privacy layer's per-cell ``accuracy``, ``Checked.accuracy`` is the ± each
    released cell carries (``released_accuracy``) and a ``wide_interval`` flag names
    the columns where a ± is larger than the value it goes with."""
    rule = rules.for_grade(grade)
    min_count = rules.min_count_for(grade)
    key_names = {k.name for k in plan.keys} | {o.name for o in plan.outputs if o.kind == "key"}
    count_cols = [
        o.name for o in plan.outputs if o.kind in COUNT_KINDS and o.name in table.column_names
    ]
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    n = table.num_rows
    flags: list[dict[str, Any]] = []

    suppressed = [False] * n
    for name in count_cols:
        for i, v in enumerate(columns[name]):
            if v is not None and _num(v) < min_count:
                suppressed[i] = True
    if not count_cols:
        flags.append(
            {
                "code": "no_count_output",
                "message": "The query releases no count, so the minimum-count rule could not "
                "be applied; check the cells by their accuracy.",
            }
        )
    if rule.round_base:
        for name in count_cols:
            columns[name] = [_round(v, rule.round_base) for v in columns[name]]
    n_suppressed = sum(suppressed)
    if n_suppressed:
        for name in columns:
            if name not in key_names:
                columns[name] = [
                    None if s else v for v, s in zip(columns[name], suppressed, strict=True)
                ]
        flags.append(
            {
                "code": "cells_suppressed",
                "message": f"{n_suppressed} of {n} rows had a noisy count below {min_count} "
                "and are released as null.",
                "rows": n_suppressed,
            }
        )
    arrays = []
    fields = []
    for f in table.schema:
        arrays.append(pa.array(columns[f.name], type=f.type if f.name not in count_cols else None))
        fields.append(pa.field(f.name, arrays[-1].type))
    if count_cols:
        arrays.append(pa.array(suppressed, type=pa.bool_()))
        fields.append(pa.field(SUPPRESSED_COLUMN, pa.bool_()))
    out = pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    if duplicates:
        flags.append(
            {
                "code": "near_duplicate",
                "message": "An earlier job of this operator has the same Plan or SQL that "
                "differs only in constants; the two results could be differenced.",
                "jobs": [d["job"] for d in duplicates],
            }
        )
    required = rule.approvals
    if duplicates and required == 0:
        required = rules.flagged_approvals
    checked = Checked(
        table=out,
        flags=flags,
        required_approvals=required,
        suppressed_rows=n_suppressed,
        round_base=rule.round_base,
        min_count=min_count,
        rounded=count_cols if rule.round_base else [],
    )
    if accuracy is not None:
        checked.accuracy = released_accuracy(accuracy, checked)
        wide = wide_cells(checked.accuracy, checked.table)
        if wide:
            cells = sum(wide.values())
            flags.append(
                {
                    "code": "wide_interval",
                    "message": f"{cells} released value(s) in {', '.join(sorted(wide))} have a "
                    "95% interval wider than the value itself (± larger than |value|): "
                    "they are mostly noise.",
                    "rows": cells,
                    "columns": sorted(wide),
                }
            )
    return checked


def released_accuracy(accuracy: Any, checked: Checked) -> dict[str, Any]:
    """Per-cell accuracy as it is released with a reviewed result: ``pm95``, the 95%
    half-width rounded outward (``privacy.accuracy.published_half_width``: a count
    rounded to the grade's base also carries the rounding), ``pm95_unit`` (``value``, or
    ``rank`` for a quantile), the ``method`` (direct, propagated, rank) and the noise
    scale. A suppressed row's cells, and a NULL value, have none (null). No interval:
    one centred on the unrounded noisy value would undo rounding and suppression, and
    a derived output's unrounded half-width is not shown either (it is computed from
    unrounded noisy measures). ``sandbox dev run`` shows exactly this."""
    from sandbox.privacy.accuracy import published_half_width

    names = checked.table.column_names
    mask = checked.table.column(SUPPRESSED_COLUMN).to_pylist() if SUPPRESSED_COLUMN in names else []
    out: dict[str, Any] = {}
    for column, cells in dict(accuracy or {}).items():
        if not isinstance(cells, list | tuple):
            continue
        values = checked.table.column(column).to_pylist() if column in names else []
        base = checked.round_base if column in checked.rounded else None
        published: list[dict[str, Any] | None] = []
        for i, cell in enumerate(cells):
            value = values[i] if i < len(values) else None
            if (i < len(mask) and mask[i]) or not isinstance(cell, dict) or value is None:
                published.append(None)
                continue
            shown = {
                str(k): _plain(v)
                for k, v in cell.items()
                if not str(k).startswith("interval") and k != "integer"
            }
            if cell.get("method") == "rank":  # whole rows of rank, rounded up
                rank = published_half_width(cell.get("rank_error_95"))
                shown["pm95"] = None if rank is None else int(math.ceil(rank))
                shown["pm95_unit"] = "rank"
            else:
                shown["pm95"] = published_half_width(
                    cell.get("accuracy_95"), base=base, integer=bool(cell.get("integer"))
                )
                shown["pm95_unit"] = "value"
            if cell.get("derived"):  # a float, whatever its digits: one type per column
                shown.pop("accuracy_95", None)
                shown["pm95"] = None if shown["pm95"] is None else float(shown["pm95"])
            published.append(shown)
        out[str(column)] = published
    return out


def wide_cells(accuracy: dict[str, Any], table: pa.Table) -> dict[str, int]:
    """Per column, how many released values have a ± larger than |value| (or an
    unbounded one): noisy values and published half-widths only."""
    wide: dict[str, int] = {}
    for column, cells in accuracy.items():
        if column not in table.column_names or not isinstance(cells, list):
            continue
        for value, cell in zip(table.column(column).to_pylist(), cells, strict=False):
            if is_wide(value, cell):
                wide[column] = wide.get(column, 0) + 1
    return wide


def is_wide(value: Any, cell: Any) -> bool:
    """A released value whose ± (in value units) is larger than |value|, or unbounded."""
    if not isinstance(cell, dict) or cell.get("pm95_unit") != "value":
        return False
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    pm = cell.get("pm95")
    return bool(cell.get("unbounded")) or (isinstance(pm, int | float) and pm > abs(value))


def _plain(v: Any) -> Any:
    """A figure as plain JSON (NumPy scalars to Python numbers)."""
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v.item() if hasattr(v, "item") else v


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf


def _round(v: Any, base: int) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return v
    r = round(float(v) / base) * base
    return int(r) if isinstance(v, int) else float(r)


_STRING = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![A-Za-z_0-9.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![A-Za-z_0-9])")
_SPACE = re.compile(r"\s+")


def sql_shape(sql: str) -> str:
    """A digest of the SQL with every constant replaced: equal for queries that differ
    only in a filter value."""
    text = _STRING.sub("?", sql)
    text = _NUMBER.sub("?", text)
    text = _SPACE.sub(" ", text).strip().rstrip(";").strip().lower()
    return hashlib.sha256(text.encode()).hexdigest()


def sql_literals(sql: str) -> list[str]:
    """The constants of the SQL in order (strings first, then numbers): the values that
    ``sql_shape`` replaces. Two queries of one shape differ only in these."""
    strings = _STRING.findall(sql)
    numbers = _NUMBER.findall(_STRING.sub("?", sql))
    return [*strings, *numbers]


def find_near_duplicates(
    conn: store.Connection,
    *,
    job_id: str,
    operator: str,
    plan_digest: str,
    shape: str,
    sql_sha256: str,
    since: datetime,
) -> list[dict[str, Any]]:
    """Earlier jobs of this operator that produced output and could be differenced."""
    rows = conn.execute(
        "SELECT id, plan_digest, sql_shape, sql_sha256 FROM jobs"
        " WHERE operator = ? AND id != ? AND created_at >= ?"
        " AND state IN ('noised', 'in_review', 'released')"
        " AND (plan_digest = ? OR sql_shape = ?) ORDER BY created_at",
        (operator, job_id, since.isoformat(), plan_digest, shape),
    ).fetchall()
    out = []
    for r in rows:
        reason = "same_plan" if r["plan_digest"] == plan_digest else "differs_in_constants"
        out.append({"job": r["id"], "reason": reason})
    return out


# --- decisions ---------------------------------------------------------------------

Decision = Literal["approve", "reject"]
Outcome = Literal["approved", "rejected", "pending"]


def decisions(conn: store.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT reviewer, decision, reason, decided_at FROM review_decisions"
        " WHERE job_id = ? ORDER BY decided_at, reviewer",
        (job_id,),
    ).fetchall()
    return [dict(r) for r in rows]


def record_decision(
    conn: store.Connection,
    *,
    job_id: str,
    submitter: str,
    required: int,
    reviewer: str,
    decision: Decision,
    reason: str,
    now: datetime,
) -> Outcome:
    """Record one supervisor's decision (inside the caller's transaction); the outcome."""
    if decision not in ("approve", "reject"):
        raise BadInput("The decision must be 'approve' or 'reject'.")
    if not reason or not reason.strip():
        raise BadInput(
            "A review decision needs a reason.",
            code="REASON_REQUIRED",
            hint="Say why, in a sentence; it is kept in the audit log.",
            http_status=422,
        )
    # one person, one id: compared after NFKC and case folding (tokens.principal_id),
    # also against decisions recorded before ids were normalised
    reviewer = fold_identity(reviewer)
    if reviewer == fold_identity(submitter):
        raise Conflict(
            "A reviewer may not review a job they submitted.", code="SELF_REVIEW", http_status=403
        )
    earlier = conn.execute(
        "SELECT reviewer, decision FROM review_decisions WHERE job_id = ?", (job_id,)
    ).fetchall()
    if any(fold_identity(r["reviewer"]) == reviewer for r in earlier):
        raise Conflict(
            "You have already reviewed this job; another supervisor must decide.",
            code="SELF_REVIEW",
            http_status=409,
        )
    conn.execute(
        "INSERT INTO review_decisions (job_id, reviewer, decision, reason, decided_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (job_id, reviewer, decision, reason.strip(), now.isoformat()),
    )
    if decision == "reject":
        return "rejected"
    approvers = {fold_identity(r["reviewer"]) for r in earlier if r["decision"] == "approve"}
    approvers.add(reviewer)
    return "approved" if len(approvers) >= required else "pending"
