"""A supervisor's review decision: recorded and audited in one transaction; one
rejection rejects the job (its product is discarded), enough approvals release it.
An approval of an analysis job may choose which outputs to release
(``jobs.analysis_selection``: what every approving supervisor chose is released)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sandbox import jobs, products, review, store
from sandbox.errors import Conflict
from sandbox.jobs import JobPipeline, State
from sandbox.tokens import Principal


def record_review(
    conn: store.Connection,
    pipeline: JobPipeline,
    products_dir: Path,
    p: Principal,
    job_id: str,
    *,
    decision: str,
    reason: str,
    outputs: list[str] | None = None,
) -> review.Outcome:
    """Record ``p``'s decision on a job in review; the outcome (``review.record_decision``).

    ``outputs``: the uids of the analysis job's outputs this approval releases (None:
    all of them). The caller has checked the supervisor role; it signs a checkpoint
    afterwards."""
    from sandbox import audit
    from sandbox.jobs import analysis_selection

    now = datetime.now(UTC)
    with store.transaction(conn):
        job = jobs.get_job(conn, job_id)
        if job.state != State.IN_REVIEW:
            raise Conflict(
                f"Job {job_id} is {job.state.value}, not waiting for review.",
                hint="`sandbox review list` shows the queue.",
            )
        outcome = review.record_decision(
            conn,
            job_id=job.id,
            submitter=job.operator,
            required=int(job["required_approvals"] or 0),
            reviewer=p.name,
            decision=decision,  # type: ignore[arg-type]
            reason=reason,
            now=now,
        )
        chosen = analysis_selection.choose(
            conn,
            job_id=job.id,
            kind=str(job.record.get("kind") or "sql"),
            decision=decision,
            chosen=outputs,
        )
        if chosen is not None and decision == "approve":
            analysis_selection.record(conn, job_id=job.id, reviewer=p.name, outputs=chosen)
        audit.append(
            conn,
            actor=p.name,
            role=p.role.value,
            action="review.approved" if decision == "approve" else "review.rejected",
            subject=job.id,
            scenario=job.scenario,
            details={
                "reason": reason.strip()[:500],
                "outcome": outcome,
                **({"outputs": chosen} if chosen is not None else {}),
            },
        )
        if outcome == "rejected":
            job = jobs.transition(
                conn,
                job,
                State.REJECTED,
                actor=p.name,
                role=p.role.value,
                details={"reason": reason.strip()[:500]},
            )
    if outcome == "rejected":
        products.discard(products_dir, job.id)
    elif outcome == "approved":
        pipeline.release(
            conn,
            jobs.get_job(conn, job_id),
            reviewers=review.decisions(conn, job_id),
            actor=p.name,
            role=p.role.value,
        )
    return outcome
