"""The jobs tables, the ``Job`` record, and the queries that read, create and move jobs.

``transition`` is the ONE function that changes a job's state: it checks the move is
allowed (``states.ALLOWED``, re-reading the state inside the transaction), runs the
side effects that must commit with it (ledger reserve / charge / release, product
registration) and writes the audit event, all in one ``store.transaction``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sandbox import review, store
from sandbox.errors import GENERIC_FAILURE, Conflict, NotFound, SystemFailure
from sandbox.jobs.states import ALLOWED, HELD, SHOWN_HELD, TERMINAL, S, State
from sandbox.plan import Plan

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
    finished_at        TEXT,
    idempotency_key    TEXT,
    request_sha256     TEXT,
    claimed_by         TEXT  -- the server (leases.servers.id) that drives the job
);
CREATE INDEX IF NOT EXISTS jobs_operator ON jobs (operator, created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- SQLite: the rowid (older tables: rowid)
    job_id      TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_transitions_job ON job_transitions (job_id);
-- one row per failed job: the non-data facts of the failure (see JobPipeline.fail)
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
# columns added since the first jobs table: a database made before them gets them
ADDED_COLUMNS = {
    "idempotency_key": "TEXT",
    "request_sha256": "TEXT",
    # 'sql' or 'analysis' (an operator's script: sandbox.jobs.analysis)
    "kind": "TEXT NOT NULL DEFAULT 'sql'",
}


def _v1_idempotency(conn: store.Connection) -> None:
    """An older database gains the idempotency columns; then one job per (operator,
    key): the index that makes a retried submission find its job instead of making a
    second (the INSERT that would break it fails inside ``create_job``'s transaction)."""
    store.add_columns(conn, "jobs", ADDED_COLUMNS)
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (operator, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL"
    )


def _v2_claims(conn: store.Connection) -> None:
    """Which server drives a job (several servers on one database, issue 19)."""
    store.add_columns(conn, "jobs", {"claimed_by": "TEXT"})


store.register_schema("sandbox.jobs", SCHEMA, migrations=[_v1_idempotency, _v2_claims])


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# system failures whose own message an operator may see (it names no system detail)
OPERATOR_SAFE_SYSTEM = frozenset({"JOB_INTERRUPTED"})


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
            "idempotency_key": r.get("idempotency_key"),
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
                and r["error_code"] not in OPERATOR_SAFE_SYSTEM
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


def get_job(conn: store.Connection, job_id: str) -> Job:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"No job {job_id!r}.", hint="`sandbox jobs` lists your jobs.")
    return Job(dict(row))


def find_by_idempotency_key(conn: store.Connection, operator: str, key: str) -> Job | None:
    """The operator's job submitted with this idempotency key, if any (keys are the
    operator's own: another operator's same key is another job)."""
    row = conn.execute(
        "SELECT * FROM jobs WHERE operator = ? AND idempotency_key = ?", (operator, key)
    ).fetchone()
    return Job(dict(row)) if row is not None else None


def list_jobs(
    conn: store.Connection,
    *,
    operator: str | None = None,
    states: list[str] | None = None,
    limit: int = 100,
    offset: int = 0,
    shown: bool = False,
) -> list[Job]:
    """Jobs, newest first. ``shown``: ``states`` are the states an operator is shown,
    so a held analysis job (``states.HELD``) is found as ``in_review`` and never as
    running (or as anything else its run would tell)."""
    where: list[str] = []
    args: list[Any] = []
    if operator is not None:
        where.append("operator = ?")
        args.append(operator)
    if states:
        marks = ",".join("?" * len(states))
        if shown:
            held = sorted(s.value for s in HELD)
            where.append(
                f"(CASE WHEN kind = ? AND state IN ({','.join('?' * len(held))}) THEN ?"
                f" ELSE state END) IN ({marks})"
            )
            args.extend(["analysis", *held, SHOWN_HELD.value])
        else:
            where.append(f"state IN ({marks})")
        args.extend(states)
    sql = "SELECT * FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
    args.extend([limit, offset])
    return [Job(dict(r)) for r in conn.execute(sql, args).fetchall()]


def transitions(conn: store.Connection, job_id: str) -> list[dict[str, Any]]:
    # the order they were written in: SQLite's rowid (``id`` where the table has it),
    # PostgreSQL's identity column
    order = "id" if store.dialect(conn) == "postgresql" else "rowid"
    rows = conn.execute(
        "SELECT from_state, to_state, actor, at FROM job_transitions WHERE job_id = ?"
        f" ORDER BY {order}",
        (job_id,),
    ).fetchall()
    return [dict(r) for r in rows]


def join_transaction(conn: store.Connection) -> AbstractContextManager[Any]:
    """Join the caller's transaction, or open one."""
    return nullcontext(conn) if conn.in_transaction else store.transaction(conn)


def create_job(
    conn: store.Connection,
    *,
    operator: str,
    scenario: str,
    sql: str,
    epsilon: float,
    delta: float,
    weights: dict[str, float] | None,
    actor: str,
    role: str,
    idempotency_key: str | None = None,
    request_sha256: str | None = None,
    claimed_by: str | None = None,
) -> Job:
    """Insert a job in ``submitted`` and write its audit event, together.

    With an ``idempotency_key`` (and the digest of the request it came with), a second
    job of the same operator and key raises ``store.IntegrityError`` and nothing of
    it is written; the caller finds the first with ``find_by_idempotency_key``.
    ``claimed_by``: the server that will drive the job (``leases``); a job no live
    server claims is taken over by one that is."""
    from sandbox import audit

    job_id = "j-" + secrets.token_hex(6)
    at = now_iso()
    sql_sha = hashlib.sha256(sql.encode("utf-8")).hexdigest()
    with join_transaction(conn):
        conn.execute(
            "INSERT INTO jobs (id, operator, scenario, sql, sql_sha256, sql_shape, epsilon, delta,"
            " weights, state, created_at, updated_at, idempotency_key, request_sha256,"
            " claimed_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                idempotency_key,
                request_sha256,
                claimed_by,
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
    conn: store.Connection,
    job: Job | str,
    to_state: State,
    *,
    actor: str,
    role: str,
    details: dict[str, Any] | None = None,
    updates: dict[str, Any] | None = None,
    effects: Callable[[store.Connection, Job], None] | None = None,
) -> Job:
    """Move a job to ``to_state``: check, side effects, row update, audit; one transaction.

    ``updates`` are extra columns to set; ``effects(conn, job)`` runs inside the
    transaction after the check (ledger calls, product registration). Raises Conflict
    (INVALID_STATE) if the move is not allowed from the job's current state.
    """
    from sandbox import audit

    job_id = job if isinstance(job, str) else job.id
    at = now_iso()
    with join_transaction(conn):
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


def register_release(
    conn: store.Connection,
    job: Job,
    *,
    files: dict[str, str],
    released_at: str,
    key: Any,
    reviewers: list[dict[str, Any]],
    actor: str,
    role: str,
    effects: Callable[[store.Connection, Job], None] | None = None,
    kind: str | None = None,
    audit_details: dict[str, Any] | None = None,
) -> Job:
    """in_review/noised → released, once the product files are written: the move, the
    ``product.released`` audit event and the product's registration, in one transaction.
    ``kind`` (an analysis job's) goes on the move and the event; ``audit_details`` after
    the files on the event."""
    from sandbox import audit, products

    tag = {"kind": kind} if kind is not None else {}

    def register(c: store.Connection, j: Job) -> None:
        if effects is not None:
            effects(c, j)
        audit.append(
            c,
            actor=actor,
            role=role,
            action="product.released",
            subject=j.id,
            scenario=j.scenario,
            details={
                "job": j.id,
                **tag,
                "dataset": j["dataset"],
                "files": files,
                **(audit_details or {}),
            },
        )
        products.record_product(
            c, job_id=j.id, operator=j.operator, released_at=released_at, key=key, files=files
        )

    return transition(
        conn,
        job,
        S.RELEASED,
        actor=actor,
        role=role,
        details={**tag, "files": files, "reviewers": [r["reviewer"] for r in reviewers]},
        effects=register,
    )
