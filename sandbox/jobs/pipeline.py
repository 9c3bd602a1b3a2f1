"""The stages a job goes through, each ending in a ``transition``.

``prepare`` (synchronous, on the request: compile, cost, reserve; no data is read),
then on a worker ``execute`` (charge, run the executor, noise), review checks, and
``route`` to ``release`` (sign and write the product, under one lock) or review.
``fail`` and ``cancel`` end a job from any unfinished state.

Budget: reserved with the move to ``budget_reserved``; charged with the move to
``running`` (before the container can read a row, so no crash can lose a charge);
released when a job that never ran is refused, fails or is cancelled.

The exact aggregate table lives only in the worker's memory between the executor
and the privacy layer; what is stored is the reviewed NOISY result.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sandbox import products, review, store
from sandbox.catalog import Catalog
from sandbox.datacheck import DataChecks
from sandbox.errors import GENERIC_FAILURE, Conflict, NotFound, Refused, SystemFailure
from sandbox.executors import ExactResult, Executor
from sandbox.grants import Grant, Grants, find_grant
from sandbox.jobs.incidents import (
    StageMark,
    error_columns,
    incident_facts,
    log_incident,
    new_incident_id,
    record_incident,
)
from sandbox.jobs.records import Job, get_job, now_iso, register_release, transition
from sandbox.jobs.states import ALLOWED, BEFORE_RUNNING, TERMINAL, S
from sandbox.plan import Plan
from sandbox.settings import Settings

SYSTEM_ACTOR = "system"
SYSTEM_ROLE = "system"


class JobPipeline:
    """The stages of a job; ``worker.JobWorker`` adds the pool that runs them."""

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: Catalog,
        grants: Callable[[], Grants],
        rules: review.ReviewRules,
        executor: Executor,
        product_key: Any,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self._grants = grants
        self.rules = rules
        self.executor = executor
        self.product_key = product_key
        self._release_lock = threading.Lock()  # one product written per job, ever
        self.datachecks = DataChecks(catalog)  # declared shapes and sizes, checked once
        self.stopping = threading.Event()  # set by the worker's stop(): start nothing new
        self.server_id: str | None = None  # the worker's lease: it claims what it runs

    # the synchronous part: compile, cost, reserve (no data is read)
    def grant_for(self, operator: str, scenario: str) -> Grant:
        return find_grant(self._grants(), operator, scenario)

    def cost_for(self, job: Job, plan: Plan, grant: Grant) -> Any:
        from sandbox.privacy import plan_cost

        dataset = self.catalog.dataset(plan.dataset)
        if dataset is None:
            raise SystemFailure(GENERIC_FAILURE, code="INTERNAL")
        weights = json.loads(job["weights"]) if job["weights"] else None
        return plan_cost(
            plan,
            epsilon=float(job["epsilon"]),
            delta=float(job["delta"]),
            dataset=dataset,
            grant=grant,
            weights=weights,
        )

    def prepare(
        self, conn: store.Connection, job: Job, *, compiled: tuple[Plan, Grant] | None = None
    ) -> Job:
        """submitted → compiled → budget_reserved; a refusal ends in ``refused``
        (the reservation, if any, released) and is re-raised with the job id.
        ``compiled``: the job's SQL already compiled under a grant (used if that is the
        grant now, else compiled again)."""
        from sandbox import ledger
        from sandbox.compiler import compile_query

        try:
            grant = self.grant_for(job.operator, job.scenario)
            if job.state == S.SUBMITTED:
                plan = (
                    compiled[0]
                    if compiled is not None and compiled[1] == grant
                    else compile_query(job["sql"], catalog=self.catalog, grant=grant)
                )
                dataset = self.catalog.dataset(plan.dataset)
                job = transition(
                    conn,
                    job,
                    S.COMPILED,
                    actor=SYSTEM_ACTOR,
                    role=SYSTEM_ROLE,
                    details={"plan_digest": plan.digest(), "dataset": plan.dataset},
                    updates={
                        "grant_id": grant.id,
                        "dataset": plan.dataset,
                        "grade": dataset.grade.value if dataset else None,
                        "plan_json": plan.to_json(),
                        "plan_digest": plan.digest(),
                    },
                )
            if job.state == S.COMPILED:
                plan = job.plan()
                cost = self.cost_for(job, plan, grant)

                def reserve(c: store.Connection, _job: Job) -> None:
                    ledger.reserve(c, grant=grant, dataset=plan.dataset, job_id=job.id, cost=cost)

                job = transition(
                    conn,
                    job,
                    S.BUDGET_RESERVED,
                    actor=SYSTEM_ACTOR,
                    role=SYSTEM_ROLE,
                    details={
                        "epsilon": cost.epsilon,
                        "delta": cost.delta,
                        "rho": cost.rho,
                        "dataset": plan.dataset,
                        "grant": grant.id,
                    },
                    updates={"cost_json": json.dumps(cost.to_dict(), sort_keys=True)},
                    effects=reserve,
                )
        except Refused as exc:
            current = get_job(conn, job.id)
            if current.state != job.state:
                raise  # moved on meanwhile by another server that took the job over
            if current.state in (S.SUBMITTED, S.COMPILED):
                transition(
                    conn,
                    current,
                    S.REFUSED,
                    actor=SYSTEM_ACTOR,
                    role=SYSTEM_ROLE,
                    details={"code": exc.code},
                    updates=error_columns(exc),
                )
            exc.details.setdefault("job", job.id)
            raise
        except Exception as exc:
            at = get_job(conn, job.id).state
            if at != job.state:
                raise  # moved on meanwhile by another server that took the job over
            self.fail(conn, job.id, exc, stage="compile" if at == S.SUBMITTED else "reserve")
            raise
        return job

    # the asynchronous part: run, noise, review, release

    def execute(self, conn: store.Connection, job_id: str, *, at: StageMark | None = None) -> None:
        """budget_reserved → running → noised → (in_review | released). A failure is
        raised with ``at`` naming the stage it happened in."""
        from sandbox import ledger, privacy

        at = at if at is not None else StageMark()
        at.name = "start"
        job = get_job(conn, job_id)
        if job.state != S.BUDGET_RESERVED or self.stopping.is_set():
            return
        plan = job.plan()
        self.grant_for(job.operator, job.scenario)  # the grant must still authorise the run
        # the noise comes from the cost reserved with the job, never from the grants
        # or policy as they are now (issue 15)
        cost = privacy.Cost.from_dict(json.loads(job["cost_json"]))

        def charge(c: store.Connection, j: Job) -> None:
            from sandbox import audit

            ledger.charge(c, job_id)
            audit.append(
                c,
                actor=SYSTEM_ACTOR,
                role=SYSTEM_ROLE,
                action="budget.charged",
                subject=job_id,
                scenario=j.scenario,
                details={"epsilon": cost.epsilon, "delta": cost.delta},
            )

        try:
            claim = {"claimed_by": self.server_id} if self.server_id is not None else {}
            job = transition(
                conn,
                job,
                S.RUNNING,
                actor=SYSTEM_ACTOR,
                role=SYSTEM_ROLE,
                effects=charge,
                updates=claim,
            )
        except Conflict:
            return  # cancelled meanwhile
        exact: ExactResult | None = None
        try:
            at.name = "execute"
            self.datachecks.ensure(
                plan,
                executor=self.executor,
                data_root=self.settings.data_dir,
                job_id=job_id,
                max_units=cost.max_units,  # the size its noise was sized for
            )
            exact = self.executor.run(plan, data_root=self.settings.data_dir, job_id=job_id)
            at.name = "noise"
            noisy = privacy.release(
                plan, exact.table, cost, timeout_s=self.settings.release_timeout_s
            )
            wall_s = float(getattr(exact, "wall_s", 0.0))
        finally:
            exact = None  # the exact table is dropped here; it is never stored
        at.name = "review"
        self._noised(conn, job, plan, noisy, wall_s, at=at)

    def _noised(
        self,
        conn: store.Connection,
        job: Job,
        plan: Plan,
        noisy: Any,
        wall_s: float,
        *,
        at: StageMark | None = None,
    ) -> None:
        dupes = review.find_near_duplicates(
            conn,
            job_id=job.id,
            operator=job.operator,
            plan_digest=job["plan_digest"],
            shape=job["sql_shape"],
            sql_sha256=job["sql_sha256"],
            since=datetime.fromisoformat(job["created_at"]) - self.rules.duplicate_window,
        )
        # the ± of every released cell, and the wide_interval flag, come with the checks
        # (review.released_accuracy: the same in `sandbox dev run`)
        checked = review.check_output(
            noisy.table,
            plan,
            grade=job["grade"] or "",
            rules=self.rules,
            duplicates=dupes,
            accuracy=getattr(noisy, "accuracy", {}),
        )
        # the privacy layer's notes are functions of noisy values only (issue 20)
        flags = [*checked.flags, *getattr(noisy, "warnings", [])]
        products.store_result(self.settings.products_dir, job.id, checked.table)
        sdc = {
            "min_count": checked.min_count,
            "round_base": checked.round_base,
            "suppressed_rows": checked.suppressed_rows,
        }
        try:
            job = transition(
                conn,
                job,
                S.NOISED,
                actor=SYSTEM_ACTOR,
                role=SYSTEM_ROLE,
                details={
                    "groups_released": checked.table.num_rows,
                    "flags": [f["code"] for f in flags],
                    "wall_s": round(wall_s, 3),
                },
                updates={
                    "flags": json.dumps(flags),
                    "sdc": json.dumps(sdc),
                    "accuracy": json.dumps(_jsonable(checked.accuracy)),
                    "mechanisms": json.dumps(list(getattr(noisy, "mechanisms", []))),
                    "rows": checked.table.num_rows,
                    "required_approvals": checked.required_approvals,
                },
            )
        except Conflict:
            products.discard(self.settings.products_dir, job.id)  # cancelled while running
            return
        if at is not None:
            at.name = "release"
        self.route(conn, job)

    def route(self, conn: store.Connection, job: Job) -> Job:
        """noised → released (no approval needed) or in_review."""
        if int(job["required_approvals"] or 0) == 0:
            return self.release(conn, job, reviewers=[], actor=SYSTEM_ACTOR, role=SYSTEM_ROLE)
        return transition(
            conn,
            job,
            S.IN_REVIEW,
            actor=SYSTEM_ACTOR,
            role=SYSTEM_ROLE,
            details={"required_approvals": job["required_approvals"]},
        )

    def release(
        self,
        conn: store.Connection,
        job: Job,
        *,
        reviewers: list[dict[str, Any]],
        actor: str,
        role: str,
        effects: Callable[[store.Connection, Job], None] | None = None,
    ) -> Job:
        """Sign and write the product files, then register them with the move to released."""
        with self._release_lock:
            current = get_job(conn, job.id)
            if S.RELEASED not in ALLOWED[current.state]:
                raise Conflict(f"Job {job.id} is {current.state.value}; it cannot be released.")
            try:
                return self._release(conn, current, reviewers, actor, role, effects)
            except (Conflict, FileNotFoundError) as exc:
                # cancelled (or rejected) meanwhile: its stored result was discarded, or
                # the files just written must be
                now = get_job(conn, job.id)
                if now.state not in TERMINAL or now.state == S.RELEASED:
                    raise
                products.discard(self.settings.products_dir, job.id)
                raise Conflict(
                    f"Job {job.id} is {now.state.value}; it cannot be released."
                ) from exc

    def _release(
        self,
        conn: store.Connection,
        job: Job,
        reviewers: list[dict[str, Any]],
        actor: str,
        role: str,
        effects: Callable[[store.Connection, Job], None] | None,
    ) -> Job:
        released_at = now_iso()
        files = products.release_product(
            self.settings.products_dir,
            job=job.record,
            key=self.product_key,
            reviewers=reviewers,
            released_at=released_at,
            sdc=json.loads(job["sdc"] or "{}"),
        )

        return register_release(
            conn,
            job,
            files=files,
            released_at=released_at,
            key=self.product_key,
            reviewers=reviewers,
            actor=actor,
            role=role,
            effects=effects,
        )

    def fail(self, conn: store.Connection, job_id: str, exc: BaseException, *, stage: str) -> None:
        """Record a failure as an incident; release the reservation if the job never ran.

        The incident is logged first (one JSON line, sandbox/logs.py), so it is logged
        even if recording it fails. Its id and facts go on the job (``job_incidents``)
        and into the ``job.failed`` audit event; its message never does."""
        job = get_job(conn, job_id)
        if job.state in TERMINAL:
            return
        cols = error_columns(exc)
        incident = new_incident_id()
        facts = incident_facts(exc, stage=stage)
        log_incident(incident, job_id, facts, exc, job.state.value)

        def settle(c: store.Connection, j: Job) -> None:
            if j.state in BEFORE_RUNNING:
                release_budget(c, j)
            record_incident(c, incident, j.id, facts, now_iso())

        transition(
            conn,
            job,
            S.FAILED,
            actor=SYSTEM_ACTOR,
            role=SYSTEM_ROLE,
            details={"incident": incident, **facts},
            updates=cols,
            effects=settle,
        )
        products.discard(self.settings.products_dir, job_id)

    def cancel(self, conn: store.Connection, job: Job, *, actor: str, role: str) -> Job:
        """Cancel a job that is not finished; the budget is kept once it has run."""
        if job.state in TERMINAL:
            raise Conflict(f"Job {job.id} is already {job.state.value}.")

        def settle(c: store.Connection, j: Job) -> None:
            if j.state in BEFORE_RUNNING:
                release_budget(c, j)

        job = transition(
            conn,
            job,
            S.CANCELLED,
            actor=actor,
            role=role,
            details={"charged": job.state not in BEFORE_RUNNING},
            effects=settle,
        )
        products.discard(self.settings.products_dir, job.id)
        return job

    # restart


def release_budget(conn: store.Connection, job: Job) -> None:
    """Return a job's reservation (it never read data); audited. No-op without one."""
    from sandbox import audit, ledger

    try:
        ledger.release(conn, job.id)
    except NotFound:
        return  # nothing was reserved
    audit.append(
        conn,
        actor=SYSTEM_ACTOR,
        role=SYSTEM_ROLE,
        action="budget.released",
        subject=job.id,
        scenario=job.scenario,
    )


def _jsonable(obj: Any) -> Any:
    """Accuracy figures as plain JSON (floats, lists, dicts)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# --- failures ------------------------------------------------------------------------
