"""What a server start does with the jobs a previous server left unfinished.

Jobs that were running are failed with their charge kept (data may have been read),
noised jobs are routed, approved jobs in review are released, and jobs not yet
running are prepared again and queued.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from sandbox import review
from sandbox.errors import SandboxError, SystemFailure
from sandbox.jobs.pipeline import JobPipeline
from sandbox.jobs.records import list_jobs
from sandbox.jobs.states import S

log = logging.getLogger("sandbox.jobs")


def recover(
    conn: sqlite3.Connection, pipeline: JobPipeline, enqueue: Callable[[str], None]
) -> dict[str, int]:
    """Resume or fail, honestly, what a previous server left unfinished."""
    counts = {"resumed": 0, "failed": 0, "routed": 0}
    for job in list_jobs(conn, states=[S.RUNNING.value], limit=10_000):
        pipeline.fail(
            conn,
            job.id,
            SystemFailure(
                "The server stopped while the job was running. The budget it was charged "
                "is kept because data may have been read.",
                code="JOB_INTERRUPTED",
                hint="Submit the query again.",
            ),
            stage="recover",
        )
        counts["failed"] += 1
    for job in list_jobs(conn, states=[S.NOISED.value], limit=10_000):
        try:
            pipeline.route(conn, job)
            counts["routed"] += 1
        except Exception as exc:  # noqa: BLE001 - e.g. the stored result is gone
            pipeline.fail(conn, job.id, exc, stage="recover")
            counts["failed"] += 1
    for job in list_jobs(conn, states=[S.IN_REVIEW.value], limit=10_000):
        # approved, but the server stopped before the product was written
        done = review.decisions(conn, job.id)
        approvals = {d["reviewer"] for d in done if d["decision"] == "approve"}
        if done and len(approvals) >= int(job["required_approvals"] or 0):
            last = done[-1]
            pipeline.release(conn, job, reviewers=done, actor=last["reviewer"], role="supervisor")
            counts["routed"] += 1
    # last, so that nothing resumed here is mistaken for a job left running
    for job in list_jobs(
        conn,
        states=[s.value for s in (S.SUBMITTED, S.COMPILED, S.BUDGET_RESERVED)],
        limit=10_000,
    ):
        try:
            if job.state != S.BUDGET_RESERVED:
                job = pipeline.prepare(conn, job)
        except SandboxError:
            counts["failed"] += 1
            continue
        enqueue(job.id)
        counts["resumed"] += 1
    if any(counts.values()):
        log.info("recovered jobs: %s", counts)
    return counts
