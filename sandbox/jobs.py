"""The job state machine that drives a query through the stages.

::

    submitted ─▶ compiled ─▶ budget_reserved ─▶ running ─▶ noised ─▶ in_review ─▶ released
        │            │             │               │          │          │    └──▶ rejected
        └────────────┴─▶ refused   │               │          └──────────┴─▶ released (automatic)
      (any state before released) ─┴───────────────┴─▶ failed | cancelled

``transition`` is the ONE function that changes a job's state: it checks the move is
allowed (re-reading the state inside the transaction), runs the side effects that
must commit with it (ledger reserve / charge / release, product registration) and
writes the audit event, all in one ``store.transaction``.

Budget: reserved with the move to ``budget_reserved``; charged with the move to
``running`` (before the container can read a row, so no crash can lose a charge);
released when a job that never ran is refused, fails or is cancelled.

The exact aggregate table lives only in the worker's memory between the executor
and the privacy layer; what is stored is the reviewed NOISY result.

``JobRunner`` runs jobs off the request path on a bounded thread pool and, at start,
recovers what a previous server left: jobs not yet running are resumed, jobs that
were running are failed with their charge kept (data may have been read), noised
jobs are routed, jobs in review stay in review.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sandbox import products, review, store
from sandbox.catalog import Catalog
from sandbox.errors import (
    GENERIC_FAILURE,
    Conflict,
    NotFound,
    Refused,
    SandboxError,
    SystemFailure,
)
from sandbox.grants import Grant, Grants, find_grant
from sandbox.plan import Plan
from sandbox.settings import Settings

log = logging.getLogger("sandbox.jobs")


class State(StrEnum):
    SUBMITTED = "submitted"
    COMPILED = "compiled"
    BUDGET_RESERVED = "budget_reserved"
    RUNNING = "running"
    NOISED = "noised"
    IN_REVIEW = "in_review"
    RELEASED = "released"
    REJECTED = "rejected"
    REFUSED = "refused"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = State
ALLOWED: dict[State | None, frozenset[State]] = {
    None: frozenset({S.SUBMITTED}),
    S.SUBMITTED: frozenset({S.COMPILED, S.REFUSED, S.FAILED, S.CANCELLED}),
    S.COMPILED: frozenset({S.BUDGET_RESERVED, S.REFUSED, S.FAILED, S.CANCELLED}),
    S.BUDGET_RESERVED: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.NOISED, S.FAILED, S.CANCELLED}),
    S.NOISED: frozenset({S.IN_REVIEW, S.RELEASED, S.FAILED, S.CANCELLED}),
    S.IN_REVIEW: frozenset({S.RELEASED, S.REJECTED, S.FAILED, S.CANCELLED}),
    S.RELEASED: frozenset(),
    S.REJECTED: frozenset(),
    S.REFUSED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
TERMINAL = frozenset(s for s, nxt in ALLOWED.items() if s is not None and not nxt)
_BEFORE_RUNNING = frozenset({S.SUBMITTED, S.COMPILED, S.BUDGET_RESERVED})

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id                 TEXT PRIMARY KEY,
    operator           TEXT NOT NULL,
    scenario           TEXT NOT NULL,
    grant_id           TEXT,
    dataset            TEXT,
    grade              TEXT,
    sql                TEXT NOT NULL,
    sql_sha256         TEXT NOT NULL,
    sql_shape          TEXT NOT NULL,
    epsilon            REAL NOT NULL,
    delta              REAL NOT NULL,
    weights            TEXT,
    plan_json          TEXT,
    plan_digest        TEXT,
    cost_json          TEXT,
    state              TEXT NOT NULL,
    error_code         TEXT,
    error_message      TEXT,
    error_hint         TEXT,
    error_kind         TEXT,
    error_category     TEXT,
    flags              TEXT NOT NULL DEFAULT '[]',
    sdc                TEXT NOT NULL DEFAULT '{}',
    accuracy           TEXT,
    mechanisms         TEXT,
    rows               INTEGER,
    required_approvals INTEGER,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    finished_at        TEXT
);
CREATE INDEX IF NOT EXISTS jobs_operator ON jobs (operator, created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_transitions (
    job_id      TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_transitions_job ON job_transitions (job_id);
-- one row per failed job: the non-data facts of the failure (see JobRunner.fail)
CREATE TABLE IF NOT EXISTS job_incidents (
    incident     TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL UNIQUE,
    stage        TEXT NOT NULL,
    exception    TEXT NOT NULL,
    code         TEXT NOT NULL,
    category     TEXT,
    exit_code    INTEGER,
    oom_killed   INTEGER,
    peak_rss_kb  INTEGER,
    at           TEXT NOT NULL
);
"""
store.register_schema("sandbox.jobs", SCHEMA)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    record: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def state(self) -> State:
        return State(self.record["state"])

    @property
    def operator(self) -> str:
        return str(self.record["operator"])

    @property
    def scenario(self) -> str:
        return str(self.record["scenario"])

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def plan(self) -> Plan:
        if not self.record["plan_json"]:
            raise SystemFailure(GENERIC_FAILURE, code="INTERNAL")
        return Plan.from_json(self.record["plan_json"])

    def public(
        self,
        *,
        operator_view: bool = True,
        transitions: list[dict[str, Any]] | None = None,
        incident: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What the API shows. No exact data exists to show; an operator sees a system
        failure only as a generic message (and the runner's category) and the incident
        id; a supervisor also sees the incident's facts (stage, exit code, OOM kill …)."""
        r = self.record
        cost = json.loads(r["cost_json"]) if r["cost_json"] else None
        out: dict[str, Any] = {
            "id": r["id"],
            "state": r["state"],
            "operator": r["operator"],
            "scenario": r["scenario"],
            "grant": r["grant_id"],
            "dataset": r["dataset"],
            "grade": r["grade"],
            "sql": r["sql"],
            "sql_sha256": r["sql_sha256"],
            "plan_digest": r["plan_digest"],
            "epsilon": r["epsilon"],
            "delta": r["delta"],
            "cost": cost,
            "flags": json.loads(r["flags"] or "[]"),
            "disclosure_control": json.loads(r["sdc"] or "{}"),
            "mechanisms": json.loads(r["mechanisms"]) if r["mechanisms"] else None,
            "accuracy": json.loads(r["accuracy"]) if r["accuracy"] else None,
            "rows": r["rows"],
            "required_approvals": r["required_approvals"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "finished_at": r["finished_at"],
            "error": None,
        }
        if r["error_code"]:
            err: dict[str, Any] = {
                "code": r["error_code"],
                "message": r["error_message"],
                "hint": r["error_hint"] or "",
            }
            if r["error_category"]:
                err["category"] = r["error_category"]
            if (
                operator_view
                and r["error_kind"] == "system"
                and r["error_code"] not in _OPERATOR_SAFE_SYSTEM
            ):
                err["message"] = GENERIC_FAILURE
                err["hint"] = ""
            if incident is not None:
                err["incident"] = incident["incident"]
                if operator_view:
                    err["hint"] = err["hint"] or (
                        f"Quote incident {incident['incident']} to a supervisor."
                    )
                else:
                    err["diagnosis"] = {k: v for k, v in incident.items() if k != "incident"}
            out["error"] = err
        if transitions is not None:
            out["transitions"] = transitions
        return out


def incident_for(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    """The failed job's incident: id, stage, exception type, code, category, exit code,
    OOM kill, memory peak (KiB). None for a job that did not fail."""
    row = conn.execute(
        "SELECT incident, stage, exception, code, category, exit_code, oom_killed, peak_rss_kb,"
        " at FROM job_incidents WHERE job_id = ?",
        (job_id,),
    ).fetchone()
    if row is None:
        return None
    out = dict(row)
    if out["oom_killed"] is not None:
        out["oom_killed"] = bool(out["oom_killed"])
    return out


def get_job(conn: sqlite3.Connection, job_id: str) -> Job:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"No job {job_id!r}.", hint="`sandbox jobs` lists your jobs.")
    return Job(dict(row))


def list_jobs(
    conn: sqlite3.Connection,
    *,
    operator: str | None = None,
    states: list[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Job]:
    where: list[str] = []
    args: list[Any] = []
    if operator is not None:
        where.append("operator = ?")
        args.append(operator)
    if states:
        where.append(f"state IN ({','.join('?' * len(states))})")
        args.extend(states)
    sql = "SELECT * FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
    args.extend([limit, offset])
    return [Job(dict(r)) for r in conn.execute(sql, args).fetchall()]


def transitions(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT from_state, to_state, actor, at FROM job_transitions WHERE job_id = ?"
        " ORDER BY rowid",
        (job_id,),
    ).fetchall()
    return [dict(r) for r in rows]


def _tx(conn: sqlite3.Connection) -> AbstractContextManager[Any]:
    """Join the caller's transaction, or open one."""
    return nullcontext(conn) if conn.in_transaction else store.transaction(conn)


def create_job(
    conn: sqlite3.Connection,
    *,
    operator: str,
    scenario: str,
    sql: str,
    epsilon: float,
    delta: float,
    weights: dict[str, float] | None,
    actor: str,
    role: str,
) -> Job:
    """Insert a job in ``submitted`` and write its audit event, together."""
    from sandbox import audit

    job_id = "j-" + secrets.token_hex(6)
    at = now_iso()
    sql_sha = hashlib.sha256(sql.encode("utf-8")).hexdigest()
    with _tx(conn):
        conn.execute(
            "INSERT INTO jobs (id, operator, scenario, sql, sql_sha256, sql_shape, epsilon, delta,"
            " weights, state, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                job_id,
                operator,
                scenario,
                sql,
                sql_sha,
                review.sql_shape(sql),
                epsilon,
                delta,
                json.dumps(weights) if weights is not None else None,
                S.SUBMITTED.value,
                at,
                at,
            ),
        )
        conn.execute(
            "INSERT INTO job_transitions (job_id, from_state, to_state, actor, at)"
            " VALUES (?, NULL, ?, ?, ?)",
            (job_id, S.SUBMITTED.value, actor, at),
        )
        audit.append(
            conn,
            actor=actor,
            role=role,
            action="job.submitted",
            subject=job_id,
            scenario=scenario,
            details={"sql_sha256": sql_sha, "epsilon": epsilon, "delta": delta},
        )
    return get_job(conn, job_id)


def transition(
    conn: sqlite3.Connection,
    job: Job | str,
    to_state: State,
    *,
    actor: str,
    role: str,
    details: dict[str, Any] | None = None,
    updates: dict[str, Any] | None = None,
    effects: Callable[[sqlite3.Connection, Job], None] | None = None,
) -> Job:
    """Move a job to ``to_state``: check, side effects, row update, audit; one transaction.

    ``updates`` are extra columns to set; ``effects(conn, job)`` runs inside the
    transaction after the check (ledger calls, product registration). Raises Conflict
    (INVALID_STATE) if the move is not allowed from the job's current state.
    """
    from sandbox import audit

    job_id = job if isinstance(job, str) else job.id
    at = now_iso()
    with _tx(conn):
        current = get_job(conn, job_id)
        if to_state not in ALLOWED[current.state]:
            raise Conflict(
                f"Job {job_id} is {current.state.value}; it cannot become {to_state.value}.",
                hint="`sandbox status JOB` shows where the job is.",
            )
        if effects is not None:
            effects(conn, current)
        cols: dict[str, Any] = dict(updates or {})
        cols["state"] = to_state.value
        cols["updated_at"] = at
        if to_state in TERMINAL:
            cols["finished_at"] = at
        assignments = ", ".join(f"{name} = ?" for name in cols)
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*cols.values(), job_id])
        conn.execute(
            "INSERT INTO job_transitions (job_id, from_state, to_state, actor, at)"
            " VALUES (?, ?, ?, ?, ?)",
            (job_id, current.state.value, to_state.value, actor, at),
        )
        audit.append(
            conn,
            actor=actor,
            role=role,
            action=f"job.{to_state.value}",
            subject=job_id,
            scenario=current.scenario,
            details={"from": current.state.value, **(details or {})},
        )
    return get_job(conn, job_id)


# system failures whose own message an operator may see (it names no system detail)
_OPERATOR_SAFE_SYSTEM = frozenset({"JOB_INTERRUPTED"})


def error_columns(exc: BaseException) -> dict[str, Any]:
    """What is stored about a failure: our code and message, never third-party text."""
    err = exc if isinstance(exc, SandboxError) else SystemFailure(GENERIC_FAILURE, code="INTERNAL")
    return {
        "error_kind": "refused" if isinstance(err, Refused) else "system",
        "error_code": err.code,
        "error_message": err.message,
        "error_hint": err.hint,
        "error_category": getattr(err, "category", None),
    }


# --- the runner --------------------------------------------------------------------

SYSTEM_ACTOR = "system"
SYSTEM_ROLE = "system"


class JobRunner:
    """Drives jobs through the stages; runs the container part on a bounded pool."""

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: Catalog,
        grants: Callable[[], Grants],
        rules: review.ReviewRules,
        executor: Any,
        product_key: Any,
        connect: Callable[[], sqlite3.Connection],
        after_job: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self._grants = grants
        self.rules = rules
        self.executor = executor
        self.product_key = product_key
        self._connect = connect
        self._after_job = after_job
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._release_lock = threading.Lock()  # one product written per job, ever
        self._stopping = threading.Event()

    # lifecycle
    def start(self) -> None:
        with self._lock:
            if self._pool is not None:
                return
            self._stopping.clear()
            self._pool = ThreadPoolExecutor(
                max_workers=max(1, self.settings.concurrency), thread_name_prefix="job"
            )
        self.recover()

    def stop(self, *, wait: bool = True) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        self._stopping.set()
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)

    def enqueue(self, job_id: str) -> None:
        with self._lock:
            if self._pool is None:
                return  # picked up by recover() at the next start
            self._pool.submit(self._run_safely, job_id)

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

    def prepare(self, conn: sqlite3.Connection, job: Job) -> Job:
        """submitted → compiled → budget_reserved; a refusal ends in ``refused``
        (the reservation, if any, released) and is re-raised with the job id."""
        from sandbox import ledger
        from sandbox.compiler import compile_query

        try:
            grant = self.grant_for(job.operator, job.scenario)
            if job.state == S.SUBMITTED:
                plan = compile_query(job["sql"], catalog=self.catalog, grant=grant)
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

                def reserve(c: sqlite3.Connection, _job: Job) -> None:
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
            self.fail(conn, job.id, exc, stage="compile" if at == S.SUBMITTED else "reserve")
            raise
        return job

    # the asynchronous part: run, noise, review, release
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

    def execute(
        self, conn: sqlite3.Connection, job_id: str, *, at: StageMark | None = None
    ) -> None:
        """budget_reserved → running → noised → (in_review | released). A failure is
        raised with ``at`` naming the stage it happened in."""
        from sandbox import ledger, privacy

        at = at if at is not None else StageMark()
        at.name = "start"
        job = get_job(conn, job_id)
        if job.state != S.BUDGET_RESERVED or self._stopping.is_set():
            return
        plan = job.plan()
        grant = self.grant_for(job.operator, job.scenario)
        cost = self.cost_for(job, plan, grant)

        def charge(c: sqlite3.Connection, j: Job) -> None:
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
            job = transition(
                conn, job, S.RUNNING, actor=SYSTEM_ACTOR, role=SYSTEM_ROLE, effects=charge
            )
        except Conflict:
            return  # cancelled meanwhile
        try:
            at.name = "execute"
            exact = self.executor.run(plan, data_root=self.settings.data_dir, job_id=job_id)
            at.name = "noise"
            noisy = privacy.release(plan, exact.table, cost)
            wall_s = float(getattr(exact, "wall_s", 0.0))
        finally:
            exact = None  # the exact table is dropped here; it is never stored
        at.name = "review"
        self._noised(conn, job, plan, noisy, wall_s, at=at)

    def _noised(
        self,
        conn: sqlite3.Connection,
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
        checked = review.check_output(
            noisy.table, plan, grade=job["grade"] or "", rules=self.rules, duplicates=dupes
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
                    "accuracy": json.dumps(_accuracy(getattr(noisy, "accuracy", {}), checked)),
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

    def route(self, conn: sqlite3.Connection, job: Job) -> Job:
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
        conn: sqlite3.Connection,
        job: Job,
        *,
        reviewers: list[dict[str, Any]],
        actor: str,
        role: str,
        effects: Callable[[sqlite3.Connection, Job], None] | None = None,
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
        conn: sqlite3.Connection,
        job: Job,
        reviewers: list[dict[str, Any]],
        actor: str,
        role: str,
        effects: Callable[[sqlite3.Connection, Job], None] | None,
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

        def register(c: sqlite3.Connection, j: Job) -> None:
            from sandbox import audit

            if effects is not None:
                effects(c, j)
            audit.append(
                c,
                actor=actor,
                role=role,
                action="product.released",
                subject=j.id,
                scenario=j.scenario,
                details={"job": j.id, "dataset": j["dataset"], "files": files},
            )
            products.record_product(
                c,
                job_id=j.id,
                operator=j.operator,
                released_at=released_at,
                key=self.product_key,
                files=files,
            )

        return transition(
            conn,
            job,
            S.RELEASED,
            actor=actor,
            role=role,
            details={"files": files, "reviewers": [r["reviewer"] for r in reviewers]},
            effects=register,
        )

    def fail(
        self, conn: sqlite3.Connection, job_id: str, exc: BaseException, *, stage: str
    ) -> None:
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

        def settle(c: sqlite3.Connection, j: Job) -> None:
            if j.state in _BEFORE_RUNNING:
                release_budget(c, j)
            c.execute(
                "INSERT INTO job_incidents (incident, job_id, stage, exception, code, category,"
                " exit_code, oom_killed, peak_rss_kb, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    incident,
                    j.id,
                    facts["stage"],
                    facts["exception"],
                    facts["code"],
                    facts["category"],
                    facts["exit_code"],
                    facts["oom_killed"],
                    facts["peak_rss_kb"],
                    now_iso(),
                ),
            )

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

    def cancel(self, conn: sqlite3.Connection, job: Job, *, actor: str, role: str) -> Job:
        """Cancel a job that is not finished; the budget is kept once it has run."""
        if job.state in TERMINAL:
            raise Conflict(f"Job {job.id} is already {job.state.value}.")

        def settle(c: sqlite3.Connection, j: Job) -> None:
            if j.state in _BEFORE_RUNNING:
                release_budget(c, j)

        job = transition(
            conn,
            job,
            S.CANCELLED,
            actor=actor,
            role=role,
            details={"charged": job.state not in _BEFORE_RUNNING},
            effects=settle,
        )
        products.discard(self.settings.products_dir, job.id)
        return job

    # restart
    def recover(self) -> dict[str, int]:
        """Resume or fail, honestly, what a previous server left unfinished."""
        conn = self._connect()
        counts = {"resumed": 0, "failed": 0, "routed": 0}
        for job in list_jobs(conn, states=[S.RUNNING.value], limit=10_000):
            self.fail(
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
                self.route(conn, job)
                counts["routed"] += 1
            except Exception as exc:  # noqa: BLE001 - e.g. the stored result is gone
                self.fail(conn, job.id, exc, stage="recover")
                counts["failed"] += 1
        for job in list_jobs(conn, states=[S.IN_REVIEW.value], limit=10_000):
            # approved, but the server stopped before the product was written
            done = review.decisions(conn, job.id)
            approvals = {d["reviewer"] for d in done if d["decision"] == "approve"}
            if done and len(approvals) >= int(job["required_approvals"] or 0):
                last = done[-1]
                self.release(conn, job, reviewers=done, actor=last["reviewer"], role="supervisor")
                counts["routed"] += 1
        # last, so that nothing resumed here is mistaken for a job left running
        for job in list_jobs(
            conn,
            states=[s.value for s in (S.SUBMITTED, S.COMPILED, S.BUDGET_RESERVED)],
            limit=10_000,
        ):
            try:
                if job.state != S.BUDGET_RESERVED:
                    job = self.prepare(conn, job)
            except SandboxError:
                counts["failed"] += 1
                continue
            self.enqueue(job.id)
            counts["resumed"] += 1
        if any(counts.values()):
            log.info("recovered jobs: %s", counts)
        return counts


def release_budget(conn: sqlite3.Connection, job: Job) -> None:
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


def _accuracy(accuracy: Any, checked: review.Checked) -> dict[str, Any]:
    """Per-cell noise scale and 95% half-width. The intervals are dropped: they are
    centred on the unrounded noisy value, and would undo rounding and suppression."""
    names = checked.table.column_names
    mask = (
        checked.table.column(review.SUPPRESSED_COLUMN).to_pylist()
        if review.SUPPRESSED_COLUMN in names
        else []
    )
    out: dict[str, Any] = {}
    for column, cells in dict(accuracy or {}).items():
        if not isinstance(cells, list | tuple):
            continue
        out[str(column)] = [
            None
            if (i < len(mask) and mask[i]) or not isinstance(cell, dict)
            else {k: v for k, v in cell.items() if not str(k).startswith("interval")}
            for i, cell in enumerate(cells)
        ]
    result: dict[str, Any] = _jsonable(out)
    return result


def _jsonable(obj: Any) -> Any:
    """Accuracy figures as plain JSON (floats, lists, dicts)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# --- failures ------------------------------------------------------------------------

# Where a job was when it failed (the ``stage`` of an incident); docs/errors.md lists them.
STAGES: dict[str, str] = {
    "compile": "parsing and planning the SQL",
    "reserve": "costing the plan and reserving the budget",
    "start": "reading the job back before its run",
    "execute": "the run in the runner container (the executor)",
    "noise": "the privacy layer adding noise to the exact aggregates",
    "review": "output checks and storing the noisy result",
    "release": "signing and writing the data product",
    "recover": "a server start finishing what the previous one left",
}


class StageMark:
    """The stage a worker is in, read when something in it fails."""

    def __init__(self, name: str = "start") -> None:
        self.name = name


def new_incident_id() -> str:
    return "inc-" + secrets.token_hex(6)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def incident_facts(exc: BaseException, *, stage: str) -> dict[str, Any]:
    """The non-data facts of a failure: stage, exception type, our code and category,
    and what the executor measured (exit code, OOM kill, memory peak). Never a message."""
    from sandbox.logs import exception_type

    cols = error_columns(exc)
    stats = getattr(exc, "stats", None)
    stats = stats if isinstance(stats, dict) else {}
    oom = stats.get("oom_killed")
    return {
        "stage": stage if stage in STAGES else "start",
        "exception": exception_type(exc),
        "code": cols["error_code"],
        "category": cols["error_category"],
        "exit_code": _int_or_none(stats.get("exit_code")),
        "oom_killed": oom if isinstance(oom, bool) else None,
        "peak_rss_kb": _int_or_none(stats.get("peak_rss_kb")),
    }


def log_incident(
    incident: str, job_id: str, facts: dict[str, Any], exc: BaseException, state: str
) -> None:
    """The one server-log line of a failed job (JSON on stderr, see sandbox/logs.py):
    the facts plus the traceback's frames, file:line:function. Never the exception's
    text, which may quote data."""
    from sandbox.logs import describe

    fields = {"event": "job.failed", "incident": incident, "job": job_id, "state": state}
    fields.update(facts)
    fields.update(describe(exc))
    log.error("job.failed", extra={"fields": fields})
