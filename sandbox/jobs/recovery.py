"""What a server does with the jobs a dead server left unfinished: at its start, and
then every few seconds (``JobWorker``'s lease loop), for the jobs whose claimant is
dead (``leases``). Each is first taken over (one server wins), then:

Jobs that were running are failed with their charge kept (data may have been read),
noised jobs are routed, approved jobs in review are released, and jobs not yet
running are prepared again and queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from sandbox import review, store
from sandbox.errors import SandboxError, SystemFailure
from sandbox.jobs.pipeline import JobPipeline
from sandbox.jobs.records import Job, list_jobs
from sandbox.jobs.states import S

log = logging.getLogger("sandbox.jobs")

Orphans = Callable[[store.Connection, Iterable[str]], list[Job]]
Claim = Callable[[store.Connection, Job], bool]


def _all(conn: store.Connection, states: Iterable[str]) -> list[Job]:
    return list_jobs(conn, states=list(states), limit=10_000)


def recover(
    conn: store.Connection,
    pipeline: JobPipeline,
    enqueue: Callable[[str], None],
    *,
    orphans: Orphans = _all,
    claim: Claim | None = None,
) -> dict[str, int]:
    """Resume or fail, honestly, what a dead server left unfinished. ``orphans(conn,
    states)``: the jobs to look at (default: all, one server alone on its database);
    ``claim(conn, job)``: take one over, False if another server was first."""

    def mine(states: Iterable[S]) -> Iterable[Job]:
        for job in orphans(conn, [s.value for s in states]):
            if claim is None or claim(conn, job):
                yield job

    counts = {"resumed": 0, "failed": 0, "routed": 0}
    for job in mine([S.RUNNING]):
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
    for job in mine([S.NOISED]):
        try:
            pipeline.route(conn, job)
            counts["routed"] += 1
        except Exception as exc:  # noqa: BLE001 - e.g. the stored result is gone
            pipeline.fail(conn, job.id, exc, stage="recover")
            counts["failed"] += 1
    for job in mine([S.IN_REVIEW]):
        # approved, but the server stopped before the product was written
        done = review.decisions(conn, job.id)
        approvals = {d["reviewer"] for d in done if d["decision"] == "approve"}
        if done and len(approvals) >= int(job["required_approvals"] or 0):
            last = done[-1]
            pipeline.release(conn, job, reviewers=done, actor=last["reviewer"], role="supervisor")
            counts["routed"] += 1
    # last, so that nothing resumed here is mistaken for a job left running
    for job in mine([S.SUBMITTED, S.COMPILED, S.BUDGET_RESERVED]):
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
