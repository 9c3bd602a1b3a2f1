"""``JobWorker``: runs jobs off the request path on a bounded thread pool.

At start it registers its lease (``leases``) and recovers what a dead server left
(``recovery.recover``); then a lease thread renews the lease every third of
``SANDBOX_LEASE_SECONDS`` and takes over the jobs of servers that died since (several
servers on one database). ``enqueue`` hands a reserved job to the pool; a worker
records any failure on the job itself. ``execute`` and the release dispatch by the
job's ``kind``: an analysis job (sandbox/jobs/analysis.py) runs its script and is
released as an analysis product.

Analysis jobs have their own lane: their own pool of ``SANDBOX_ANALYSIS_SLOTS``
threads (and, in the Docker executor, their own container slots), so a script that
runs long, for as long as its data tells it to, never holds a SQL job's slot or
delays one in the queue. A run that fails after it started (it may have read data)
does not fail the job: it waits for review with its failure (``analysis.hold_failure``),
and the supervisors' decision closes it (``analysis.release``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sandbox import review, store
from sandbox.catalog import Catalog
from sandbox.executors import Executor
from sandbox.grants import Grants
from sandbox.jobs import analysis
from sandbox.jobs.incidents import StageMark
from sandbox.jobs.leases import Lease
from sandbox.jobs.pipeline import SYSTEM_ACTOR, SYSTEM_ROLE, JobPipeline
from sandbox.jobs.records import Job, get_job
from sandbox.jobs.recovery import recover
from sandbox.jobs.states import S
from sandbox.settings import Settings

log = logging.getLogger("sandbox.jobs")


class JobWorker(JobPipeline):
    """Drives jobs through the stages; runs the container part on a bounded pool."""

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: Catalog,
        grants: Callable[[], Grants],
        rules: review.ReviewRules,
        executor: Executor,
        product_key: Any,
        connect: Callable[[], store.Connection],
        after_job: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            settings,
            catalog=catalog,
            grants=grants,
            rules=rules,
            executor=executor,
            product_key=product_key,
        )
        self._connect = connect
        self._after_job = after_job
        self._pool: ThreadPoolExecutor | None = None
        self._analysis_pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.lease = Lease(settings.lease_s)
        self.server_id = self.lease.server_id
        self._lease_thread: threading.Thread | None = None
        self._lease_stop = threading.Event()

    # lifecycle
    def start(self) -> None:
        with self._lock:
            if self._pool is not None:
                return
            self.stopping.clear()
            self._pool = ThreadPoolExecutor(
                max_workers=max(1, self.settings.concurrency), thread_name_prefix="job"
            )
            self._analysis_pool = ThreadPoolExecutor(
                max_workers=max(1, self.settings.analysis_slots), thread_name_prefix="analysis"
            )
        self.lease.register(self._connect())
        self.recover()
        self._lease_stop.clear()
        self._lease_thread = threading.Thread(
            target=self._lease_loop, name="job-lease", daemon=True
        )
        self._lease_thread.start()

    def stop(self, *, wait: bool = True) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            lane, self._analysis_pool = self._analysis_pool, None
        self.stopping.set()
        self._lease_stop.set()
        thread, self._lease_thread = self._lease_thread, None
        if thread is not None:
            thread.join()
        if lane is not None:
            lane.shutdown(wait=wait, cancel_futures=True)
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)
            # the jobs it never ran (and, with wait=False, those still running) are
            # taken over by the next server to look
            self.lease.stop(self._connect())

    def enqueue(self, job_id: str) -> None:
        """Hand a job to its lane: an analysis job to the analysis pool, others to the
        job pool."""
        kind = get_job(self._connect(), job_id)["kind"]
        with self._lock:
            pool = self._analysis_pool if kind == analysis.KIND else self._pool
            if pool is None:
                return  # picked up by recover() at the next start
            pool.submit(self._run_safely, job_id)

    def _run_safely(self, job_id: str) -> None:
        """A worker: run the job; any failure is recorded on it (and logged), none escapes.
        (Exception, not BaseException: an interrupt or exit is not a job failure, and
        recover() fails a job left running at the next start.)"""
        from sandbox.logs import describe

        conn = self._connect()
        at = StageMark()
        try:
            self.execute(conn, job_id, at=at)
        except Exception as exc:  # noqa: BLE001 - recorded on the job; nothing escapes
            try:
                self.fail(conn, job_id, exc, stage=at.name)
            except Exception as inner:  # noqa: BLE001 - the failure itself was logged
                fields = {"event": "job.fail_unrecorded", "job": job_id, **describe(inner)}
                log.error("job.fail_unrecorded", extra={"fields": fields})
        if self._after_job is not None:
            try:
                self._after_job()
            except Exception as exc:  # noqa: BLE001 - a checkpoint is retried after the next job
                fields = {"event": "audit.checkpoint_failed", "job": job_id, **describe(exc)}
                log.error("audit.checkpoint_failed", extra={"fields": fields})

    # job kinds
    def execute(self, conn: store.Connection, job_id: str, *, at: StageMark | None = None) -> None:
        """Run a job: a SQL job through ``JobPipeline.execute``, an analysis job's
        script in the runner container (then in_review, always)."""
        job = get_job(conn, job_id)
        if job["kind"] != analysis.KIND:
            super().execute(conn, job_id, at=at)
            return
        at = at if at is not None else StageMark()
        at.name = "start"
        if job.state != S.BUDGET_RESERVED or self.stopping.is_set():
            return
        analysis.check_still_granted(self.grant_for(job.operator, job.scenario))
        at.name = "execute"
        analysis.execute(
            conn,
            job_id,
            executor=analysis.docker_executor(self.executor),
            data_root=self.settings.data_dir,
            server_id=self.server_id,
        )

    def fail(self, conn: store.Connection, job_id: str, exc: BaseException, *, stage: str) -> None:
        """A failure; an analysis job's run that failed (or was interrupted) after it
        started waits for review with it instead (``analysis.hold_failure``): whether
        and when a script fails can depend on the data, so only a supervisor's
        decision shows it to the operator."""
        job = get_job(conn, job_id)
        if job["kind"] == analysis.KIND and job.state == S.RUNNING:
            analysis.hold_failure(conn, job, exc, stage=stage, actor=SYSTEM_ACTOR, role=SYSTEM_ROLE)
            return
        if job["kind"] == analysis.KIND and job.state == S.IN_REVIEW and stage != "release":
            # the run ended after another server took the job over (and held it as
            # interrupted): what is recorded stands, for the supervisors to decide
            log.warning("analysis.run_after_takeover", extra={"fields": {"job": job_id}})
            return
        super().fail(conn, job_id, exc, stage=stage)

    def _release(
        self,
        conn: store.Connection,
        job: Job,
        reviewers: list[dict[str, Any]],
        actor: str,
        role: str,
        effects: Callable[[store.Connection, Job], None] | None,
    ) -> Job:
        if job["kind"] != analysis.KIND:
            return super()._release(conn, job, reviewers, actor, role, effects)
        return analysis.release(
            conn,
            job,
            products_dir=self.settings.products_dir,
            key=self.product_key,
            reviewers=reviewers,
            actor=actor,
            role=role,
            effects=effects,
        )

    # restart, and servers that die
    def recover(self) -> dict[str, int]:
        """Take over and resume or fail, honestly, what dead servers left unfinished."""
        return recover(
            self._connect(),
            self,
            self.enqueue,
            orphans=self.lease.orphans,
            claim=self.lease.take_over,
        )

    def _lease_loop(self) -> None:
        """Renew the lease; take over the jobs of servers found dead. Never raises."""
        from sandbox.logs import describe

        while not self._lease_stop.wait(self.lease.renew_every):
            try:
                self.lease.renew(self._connect())
                self.recover()
            except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                fields = {"event": "jobs.lease_failed", **describe(exc)}
                log.error("jobs.lease_failed", extra={"fields": fields})
