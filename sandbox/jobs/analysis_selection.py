"""Partial release of an analysis job's outputs (issue 18; docs/analysis-jobs.md).

A supervisor approving an analysis job may choose which of its ACRO outputs to
release (by uid: ``output_0`` …); approving without a choice chooses them all. What is
released is what **every** approving supervisor chose (the intersection): with two
supervisors for important data, an output one of them withheld stays withheld.

- ``choose`` checks a choice when it is made, inside the decision's transaction: only
  an analysis job's outputs can be chosen, only when approving, only uids the job has
  (a job with no outputs has nothing to choose), at least one, and not a choice that,
  with the earlier approvals' choices, would leave nothing to release. A refusal is
  ``OUTPUT_SELECTION_INVALID`` and records nothing.
- ``record`` keeps the choice (``analysis_selections``; every approval of an analysis
  job records one, all its outputs when it chose none).
- ``released_outputs`` is what the release writes: the outputs released, the outputs
  withheld (uids only), and who chose what. An approval recorded without a choice
  (before this table existed) counts as choosing every output.

Uids are ACRO's names of the outputs (checked on the host to be of the form the runner
gives), never a value read from data, so the messages may name them.
"""

from __future__ import annotations

import json
from typing import Any

from sandbox import store
from sandbox.errors import BadInput
from sandbox.tokens import fold_identity

SCHEMA = """
CREATE TABLE IF NOT EXISTS analysis_selections (
    job_id       TEXT NOT NULL,
    reviewer     TEXT NOT NULL,
    outputs_json TEXT NOT NULL,
    PRIMARY KEY (job_id, reviewer)
);
"""
store.register_schema("sandbox.jobs.analysis_selection", SCHEMA)

CODE = "OUTPUT_SELECTION_INVALID"
MAX_CHOSEN = 200


def _invalid(message: str, hint: str = "") -> BadInput:
    return BadInput(message, code=CODE, hint=hint, http_status=422)


def output_uids(conn: store.Connection, job_id: str) -> list[str]:
    """The job's outputs' uids in ACRO's order ([] for a job without outputs)."""
    row = conn.execute(
        "SELECT manifest_json FROM analysis_scripts WHERE job_id = ?", (job_id,)
    ).fetchone()
    if row is None or not row["manifest_json"]:
        return []
    manifest = json.loads(row["manifest_json"])
    return [str(o["uid"]) for o in manifest.get("outputs") or [] if isinstance(o, dict)]


def selections(conn: store.Connection, job_id: str) -> dict[str, list[str]]:
    """Each approving supervisor's choice (reviewer id → uids)."""
    rows = conn.execute(
        "SELECT reviewer, outputs_json FROM analysis_selections WHERE job_id = ? ORDER BY reviewer",
        (job_id,),
    ).fetchall()
    return {str(r["reviewer"]): list(json.loads(r["outputs_json"])) for r in rows}


def _approvers(conn: store.Connection, job_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT reviewer FROM review_decisions WHERE job_id = ? AND decision = 'approve'"
        " ORDER BY decided_at, reviewer",
        (job_id,),
    ).fetchall()
    return [fold_identity(str(r["reviewer"])) for r in rows]


def choose(
    conn: store.Connection,
    *,
    job_id: str,
    kind: str,
    decision: str,
    chosen: list[str] | None,
) -> list[str] | None:
    """The outputs this decision chooses, in the job's order (None: no choice applies,
    a SQL job or a rejection without one; every output for an approval without one).
    Called in the decision's transaction, before its choice is recorded."""
    if chosen is None:
        return output_uids(conn, job_id) if kind == "analysis" and decision == "approve" else None
    if kind != "analysis":
        raise _invalid(
            "Only an analysis job's outputs can be chosen; a SQL job is released whole.",
            hint="Approve or reject without choosing outputs.",
        )
    if decision != "approve":
        raise _invalid(
            "A rejection releases nothing: choose outputs only when approving.",
            hint="Reject without choosing outputs.",
        )
    uids = output_uids(conn, job_id)
    if not uids:
        raise _invalid(
            f"Job {job_id} has no outputs to choose from.",
            hint="Decide without choosing outputs.",
        )
    if not chosen:
        raise _invalid(
            "Choosing no output is not an approval.",
            hint="Choose at least one output, or reject the job.",
        )
    if len(chosen) > MAX_CHOSEN:
        raise _invalid(f"At most {MAX_CHOSEN} outputs can be chosen.")
    unknown = sorted({u for u in chosen if u not in uids})
    if unknown:
        shown = ", ".join(repr(u[:40]) for u in unknown[:5])
        raise _invalid(
            f"Job {job_id} has no output {shown}.",
            hint=f"Its outputs are {', '.join(uids)}.",
        )
    picked = [u for u in uids if u in set(chosen)]
    earlier = selections(conn, job_id)
    together = set(picked)
    for reviewer in _approvers(conn, job_id):
        together &= set(earlier.get(reviewer, uids))
    if not together:
        raise _invalid(
            "With the earlier approvals' choices, this choice releases no output: only "
            "the outputs every approving supervisor chose are released.",
            hint="Choose an output the earlier approvals chose too, or reject the job.",
        )
    return picked


def record(conn: store.Connection, *, job_id: str, reviewer: str, outputs: list[str]) -> None:
    """Keep an approval's choice (inside the decision's transaction)."""
    conn.execute(
        "INSERT INTO analysis_selections (job_id, reviewer, outputs_json) VALUES (?, ?, ?)",
        (job_id, fold_identity(reviewer), json.dumps(outputs)),
    )


def released_outputs(
    conn: store.Connection, job_id: str, reviewers: list[dict[str, Any]]
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(released uids, withheld uids, approving reviewer → chosen uids) for the release:
    the outputs every approving supervisor among ``reviewers`` chose."""
    uids = output_uids(conn, job_id)
    stored = selections(conn, job_id)
    chosen = {
        fold_identity(str(r["reviewer"])): stored.get(fold_identity(str(r["reviewer"])), uids)
        for r in reviewers
        if r.get("decision") == "approve"
    }
    released = [u for u in uids if all(u in c for c in chosen.values())]
    withheld = [u for u in uids if u not in released]
    return released, withheld, chosen
