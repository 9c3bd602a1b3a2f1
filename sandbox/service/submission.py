"""Explain and submit, the operations that compile a query: mixed into ``Service``.

``explain`` says what a query would cost and how accurate it would be, reading no
data. ``submit`` records a job, compiles it and reserves its budget at once (the
worker runs it later); a retry with the same idempotency key is a replay
(``idempotency.py``). Both apply the one default δ (``privacy.choose_delta``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandbox import jobs, store
from sandbox.errors import BadInput
from sandbox.service import idempotency
from sandbox.service.auth import OPERATOR, require
from sandbox.service.idempotency import Submission
from sandbox.service.ratelimit import check_active_jobs
from sandbox.tokens import Principal

if TYPE_CHECKING:
    from sandbox.catalog import Catalog, Dataset
    from sandbox.grants import Grant
    from sandbox.jobs import Job, JobWorker
    from sandbox.plan import Plan
    from sandbox.review import ReviewRules
    from sandbox.service.ratelimit import RateLimiter, TimeBudget

__all__ = ["Submissions"]


class Submissions:
    """Explain and submit; ``Service`` provides the state they use."""

    catalog: Catalog
    rules: ReviewRules
    worker: JobWorker
    explain_rate: RateLimiter
    compile_time: TimeBudget

    if TYPE_CHECKING:  # defined by Service

        def conn(self) -> store.Connection: ...
        def maybe_checkpoint(self) -> None: ...
        def _dataset(self, dataset_id: str) -> Dataset: ...
        def _job_view(self, p: Principal, job: Job, *, detail: bool = False) -> dict[str, Any]: ...

    def explain(
        self,
        p: Principal,
        *,
        sql: str,
        scenario: str,
        epsilon: float | None = None,
        delta: float | None = None,
        weights: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """What a query would cost and how accurate it would be; no data is touched."""
        from sandbox import ledger, privacy
        from sandbox.compiler import compile_query

        require(p, OPERATOR)
        self.explain_rate.hit(p.token_id)
        grant = self.worker.grant_for(p.name, scenario)
        with self.compile_time.spend(p.token_id):
            plan = compile_query(sql, catalog=self.catalog, grant=grant)
        dataset = self._dataset(plan.dataset)
        eps = epsilon if epsilon is not None else grant.budget.max_epsilon_per_query
        dlt = privacy.choose_delta(delta, plan, dataset, grant)  # the one δ rule
        cost = privacy.plan_cost(
            plan, epsilon=eps, delta=dlt, dataset=dataset, grant=grant, weights=weights
        )
        return {
            "scenario": scenario,
            "grant": grant.id,
            "dataset": plan.dataset,
            "grade": dataset.grade.value,
            "plan_digest": plan.digest(),
            "required_approvals": self.rules.for_grade(dataset.grade.value).approvals,
            "cost": cost.to_dict(),
            "outputs": privacy.explain(plan, cost),
            "notes": list(plan.notes),
            "budget": ledger.balance(
                self.conn(), grant, plan.dataset, definition=dataset.privacy.definition
            ),
        }

    def submit_job(self, p: Principal, **request: Any) -> dict[str, Any]:
        """``submit``'s job view (for callers that need not know of replays)."""
        return self.submit(p, **request).job

    def submit(
        self,
        p: Principal,
        *,
        sql: str,
        scenario: str,
        epsilon: float,
        delta: float | None = None,
        weights: dict[str, float] | None = None,
        idempotency_key: str | None = None,
    ) -> Submission:
        """Record the job, compile it and reserve its budget now; run it on the worker.

        Without ``delta`` the job gets the one default (``privacy.choose_delta``, as
        explain and ``dev run``), recorded on the job as if asked. A refusal (bad
        query, no grant, no budget) is recorded on the job (state ``refused``) and
        raised with the job id in its details. With an idempotency key already used by
        this operator, the job it made comes back as a replay (nothing checked,
        recorded or reserved again; ``sandbox/service/idempotency.py``), or 409
        IDEMPOTENCY_KEY_REUSED if the request differs."""
        from sandbox.privacy import check_epsilon_delta

        require(p, OPERATOR)
        key = idempotency.check_key(idempotency_key)
        digest = idempotency.request_fingerprint(
            sql=sql, scenario=scenario, epsilon=epsilon, delta=delta, weights=weights
        )
        conn = self.conn()
        # a replay first: the job it finds counts among the operator's active jobs
        earlier = idempotency.earlier_job(conn, p.name, key, digest) if key is not None else None
        if earlier is not None:
            return Submission(self._job_view(p, earlier), replayed=True)
        if not sql.strip():
            raise BadInput("The SQL text is empty.", code="EMPTY_QUERY")
        # NaN and ±inf cannot even be recorded on a job (SQLite stores NaN as NULL):
        # refuse them before anything is written
        check_epsilon_delta(epsilon, 0.0 if delta is None else delta)
        check_active_jobs(conn, p.name)
        # the compile time counts against the token (refused here, before anything is
        # recorded, once this minute's is used up)
        with self.compile_time.spend(p.token_id):
            compiled = None
            if delta is None:
                compiled, delta = self._default_delta(p, sql, scenario)
            job, replayed = idempotency.create_once(
                conn,
                p.name,
                key,
                digest,
                lambda: jobs.create_job(
                    conn,
                    operator=p.name,
                    scenario=scenario,
                    sql=sql,
                    epsilon=epsilon,
                    delta=delta,
                    weights=weights,
                    actor=p.name,
                    role=p.role.value,
                    idempotency_key=key,
                    request_sha256=digest if key is not None else None,
                    claimed_by=self.worker.server_id,
                ),
            )
            if replayed:  # a concurrent request with the key made it first
                return Submission(self._job_view(p, job), replayed=True)
            try:
                job = self.worker.prepare(conn, job, compiled=compiled)
            finally:
                self.maybe_checkpoint()
        self.worker.enqueue(job.id)
        return Submission(self._job_view(p, job))

    def _default_delta(
        self, p: Principal, sql: str, scenario: str
    ) -> tuple[tuple[Plan, Grant] | None, float]:
        """``privacy.default_delta`` of a submission, and the Plan compiled for it (with
        its grant), which ``prepare`` then uses instead of compiling again. A query that
        does not compile gets 0 here and is refused (and recorded) by ``prepare``."""
        from sandbox import privacy
        from sandbox.compiler import compile_query

        try:
            grant = self.worker.grant_for(p.name, scenario)
            plan = compile_query(sql, catalog=self.catalog, grant=grant)
            return (plan, grant), privacy.default_delta(plan, self._dataset(plan.dataset), grant)
        except Exception:  # noqa: BLE001 - prepare meets the same error and records it
            return None, 0.0
