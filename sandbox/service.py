"""The one service layer: every face (REST API, CLI, browser console) calls these methods.

Each public method takes the calling ``Principal`` first and checks its role AND its
ownership of what it asks for: an operator sees only its own jobs, products, grants
and budget; someone else's job is "not found" (existence is not revealed).
Supervisors see every job, the review queue, budgets and the audit trail, and cannot
submit. Admins reload grants and manage tokens. Route handlers hold no logic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sandbox import jobs, products, review, store, tokens
from sandbox.catalog import Catalog, Dataset, load_catalog
from sandbox.errors import BadInput, Conflict, Forbidden, NotFound, RateLimited, Refused
from sandbox.grants import Grant, Grants, load_grants
from sandbox.jobs import Job, JobWorker, State
from sandbox.settings import Settings
from sandbox.tokens import Principal, Role

log = logging.getLogger("sandbox.service")

OPERATOR = (Role.OPERATOR,)
SUPERVISOR = (Role.SUPERVISOR,)
STAFF = (Role.SUPERVISOR, Role.ADMIN)
ADMIN = (Role.ADMIN,)
# jobs one operator may have waiting or running at once: a flood of tiny-ε queries must
# not queue without bound in front of everyone else's
MAX_ACTIVE_JOBS = 32
# a job's final transition is followed by a signed audit checkpoint
FINAL_ACTIONS = frozenset(f"job.{s.value}" for s in jobs.TERMINAL)
_ACTIVE = (State.SUBMITTED, State.COMPILED, State.BUDGET_RESERVED, State.RUNNING, State.NOISED)


class RateLimiter:
    """A sliding one-minute window per key (the token id)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            q = self._hits.setdefault(key, deque())
            while q and now - q[0] >= 60.0:
                q.popleft()
            if len(q) >= self.per_minute:
                wait = max(1, int(60.0 - (now - q[0])) + 1)
                raise RateLimited(
                    f"More than {self.per_minute} requests in a minute.",
                    hint=f"Wait {wait} s and retry.",
                    details={"retry_after": wait},
                )
            q.append(now)


class Service:
    """The control plane's state and operations, shared by every face."""

    def __init__(self, settings: Settings, *, executor: Any = None) -> None:
        from sandbox import keys
        from sandbox.audit import check_witness

        check_witness(settings.audit_witness_file, settings.audit_witness_url, settings.home)
        self.settings = settings
        self.catalog: Catalog = load_catalog(settings.policies)
        self._grants: Grants = load_grants(settings.policies, self.catalog)
        self.rules = review.load_rules(settings.policies)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self.rate = RateLimiter(settings.rate_per_minute)
        self._auth_log = RateLimiter(10)  # at most 10 auth.failed events a minute
        self.product_key = keys.load_or_create(
            settings.keys_dir, "products", on_create=self._key_created
        )
        self.audit_key = keys.load_or_create(
            settings.keys_dir, "audit", on_create=self._key_created
        )
        self.executor = executor if executor is not None else self._make_executor()
        self.worker = JobWorker(
            settings,
            catalog=self.catalog,
            grants=lambda: self._grants,
            rules=self.rules,
            executor=self.executor,
            product_key=self.product_key,
            connect=self.conn,
            after_job=self.maybe_checkpoint,
        )
        self.started = False

    # --- plumbing ------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """One SQLite connection per thread (transactions must not interleave)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = store.connect(self.settings.db_path)
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    def _make_executor(self) -> Any:
        if self.settings.executor == "local":
            from sandbox.executors.local import LocalExecutor

            return LocalExecutor(self.settings)
        from sandbox.executors.docker import DockerExecutor

        return DockerExecutor(self.settings)

    def _key_created(self, name: str, kid: str) -> None:
        self._audit("system", "system", "key.created", subject=name, details={"key_id": kid})

    def _audit(self, actor: str, role: str, action: str, **kw: Any) -> None:
        from sandbox import audit

        with store.transaction(self.conn()) as c:
            audit.append(c, actor=actor, role=role, action=action, **kw)

    def start(self) -> None:
        """Start the job worker (recovering unfinished jobs) and record the start."""
        if self.started:
            return
        self._audit("system", "system", "server.started", details={"version": _version()})
        self.started = True
        self.worker.start()
        self.maybe_checkpoint()  # recovery may have failed jobs: their ends get signed

    def stop(self, *, wait: bool = True) -> None:
        """Stop the worker, record the stop, sign an audit checkpoint, close connections."""
        from sandbox import audit

        self.worker.stop(wait=wait)
        close = getattr(self.executor, "close", None)
        if close is not None:  # removes warm runner containers
            close()
        if self.started:
            self._audit("system", "system", "server.stopped")
            self._witness(audit.checkpoint(self.conn(), self.audit_key))
            self.started = False
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(sqlite3.ProgrammingError):  # another thread's
                c.close()
        self._local = threading.local()

    def maybe_checkpoint(self) -> None:
        """Sign a checkpoint after any job's final transition (cheap: the Merkle frontier
        resumes from the last one) or every ``checkpoint_every`` events; push it to the
        witness. Then only events since the last job ended are merely chained."""
        from sandbox import audit

        cp = audit.maybe_checkpoint(
            self.conn(),
            self.audit_key,
            self.settings.checkpoint_every,
            final_actions=FINAL_ACTIONS,
        )
        if cp is not None:
            self._witness(cp)

    def _witness(self, cp: dict[str, Any]) -> None:
        from sandbox.audit import push_checkpoint

        s = self.settings
        if (s.audit_witness_file is not None or s.audit_witness_url) and cp.get(
            "tree_size"
        ) != getattr(self, "_witnessed", None):
            push_checkpoint(cp, file=s.audit_witness_file, url=s.audit_witness_url)
            self._witnessed = cp.get("tree_size")

    @property
    def grants(self) -> Grants:
        return self._grants

    # --- authentication ------------------------------------------------------------

    def authenticate(self, token: str | None, *, client: str = "") -> Principal:
        """The caller behind a bearer token, rate-limited per token; failures audited."""
        try:
            principal = tokens.authenticate(self.conn(), token or "")
        except Refused:
            try:
                self._auth_log.hit("auth.failed")
                self._audit(
                    "anonymous",
                    "none",
                    "auth.failed",
                    details={"reason": "missing" if not token else "invalid", "client": client},
                )
            except RateLimited:
                pass  # a flood of bad tokens is logged at most 10 times a minute
            raise
        self.rate.hit(principal.token_id)
        return principal

    def _require(self, p: Principal, roles: tuple[Role, ...]) -> None:
        if p.role not in roles:
            raise Forbidden(
                f"The {p.role.value} role may not do this.",
                hint=f"This needs the {' or '.join(r.value for r in roles)} role.",
            )

    # --- catalogue and grants ------------------------------------------------------

    def catalog_view(self, p: Principal) -> dict[str, Any]:
        """The catalogue (schema and policy, never rows); operators see the datasets of
        their grants that are valid now (not an expired or not yet valid one)."""
        if p.role == Role.OPERATOR:
            now = datetime.now(UTC)
            allowed = {
                d
                for g in self._grants.for_operator(p.name)
                if g.is_valid_at(now)
                for d in g.datasets
            }
            datasets = [d for d in self.catalog.datasets if d.id in allowed]
        else:
            datasets = list(self.catalog.datasets)
        used_keys = {c.keys for d in datasets for t in d.tables for c in t.columns if c.keys}
        return {
            "datasets": [_dataset_view(d) for d in datasets],
            "key_sets": {k: list(self.catalog.keys(k)) for k in sorted(used_keys)},
        }

    def grants_view(self, p: Principal) -> list[dict[str, Any]]:
        self._require(p, (Role.OPERATOR, Role.SUPERVISOR, Role.ADMIN))
        grants = (
            self._grants.for_operator(p.name) if p.role == Role.OPERATOR else self._grants.grants
        )
        return [_grant_view(g) for g in grants]

    def reload_grants(self, p: Principal) -> dict[str, Any]:
        self._require(p, ADMIN)
        new = load_grants(self.settings.policies, self.catalog)
        self._grants = new
        self._audit(
            p.name, p.role.value, "grant.changed", subject="*", details={"grants": len(new.grants)}
        )
        return {"grants": len(new.grants), "operators": len(new.operators)}

    # --- explain and submit --------------------------------------------------------

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

        self._require(p, OPERATOR)
        grant = self.worker.grant_for(p.name, scenario)
        plan = compile_query(sql, catalog=self.catalog, grant=grant)
        dataset = self._dataset(plan.dataset)
        eps = epsilon if epsilon is not None else grant.budget.max_epsilon_per_query
        needs_delta = plan.private_keys or dataset.privacy.definition == "zcdp"
        # default δ when one is needed: a tenth of the grant's, leaving room for more queries
        dlt = delta if delta is not None else (grant.budget.delta / 10 if needs_delta else 0.0)
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

    def submit_job(
        self,
        p: Principal,
        *,
        sql: str,
        scenario: str,
        epsilon: float,
        delta: float = 0.0,
        weights: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Record the job, compile it and reserve its budget now; run it on the worker.

        A refusal (bad query, no grant, no budget) is recorded on the job (state
        ``refused``) and raised with the job id in its details."""
        from sandbox.privacy import check_epsilon_delta

        self._require(p, OPERATOR)
        if not sql.strip():
            raise BadInput("The SQL text is empty.", code="EMPTY_QUERY")
        # NaN and ±inf cannot even be recorded on a job (SQLite stores NaN as NULL):
        # refuse them before anything is written
        check_epsilon_delta(epsilon, delta)
        conn = self.conn()
        active = len(
            jobs.list_jobs(
                conn,
                operator=p.name,
                states=[s.value for s in _ACTIVE],
                limit=MAX_ACTIVE_JOBS,
            )
        )
        if active >= MAX_ACTIVE_JOBS:
            raise RateLimited(
                f"{active} of your jobs are waiting or running; at most {MAX_ACTIVE_JOBS} may be.",
                code="TOO_MANY_JOBS",
                hint="Wait for some to finish (`sandbox jobs`), then submit again.",
                details={"retry_after": 30},
            )
        job = jobs.create_job(
            conn,
            operator=p.name,
            scenario=scenario,
            sql=sql,
            epsilon=epsilon,
            delta=delta,
            weights=weights,
            actor=p.name,
            role=p.role.value,
        )
        try:
            job = self.worker.prepare(conn, job)
        finally:
            self.maybe_checkpoint()
        self.worker.enqueue(job.id)
        return self._job_view(p, job)

    # --- jobs ----------------------------------------------------------------------

    def _own_job(self, p: Principal, job_id: str) -> Job:
        """The job if the caller may see it; NotFound otherwise (never Forbidden)."""
        self._require(p, (Role.OPERATOR, Role.SUPERVISOR))
        job = jobs.get_job(self.conn(), job_id)
        if p.role == Role.OPERATOR and job.operator != p.name:
            raise NotFound(f"No job {job_id!r}.", hint="`sandbox jobs` lists your jobs.")
        return job

    def _job_view(self, p: Principal, job: Job, *, detail: bool = False) -> dict[str, Any]:
        conn = self.conn()
        view = job.public(
            operator_view=p.role == Role.OPERATOR,
            transitions=jobs.transitions(conn, job.id) if detail else None,
            incident=jobs.incident_for(conn, job.id) if job.state == State.FAILED else None,
        )
        if p.role == Role.OPERATOR:
            _coarsen_times(view)
        view["decisions"] = review.decisions(conn, job.id)
        view["approvals"] = sum(1 for d in view["decisions"] if d["decision"] == "approve")
        if p.role == Role.OPERATOR and job.state != State.RELEASED:
            # an operator learns nothing of the result before it is released (a rejected
            # job releases nothing, not even how many cells were small)
            view.update(accuracy=None, flags=[], disclosure_control={}, rows=None)
        if (
            detail
            and p.role == Role.SUPERVISOR
            and job.state
            in (
                State.NOISED,
                State.IN_REVIEW,
                State.RELEASED,
            )
        ):
            try:
                view["preview"] = products.preview(self.settings.products_dir, job.id)
            except FileNotFoundError:
                view["preview"] = None
        if job.state == State.RELEASED:
            view["product"] = {
                "id": job.id,
                "formats": sorted(products.FORMATS),
                "href": f"/v1/jobs/{job.id}/product",
                "manifest": f"/v1/products/{job.id}/manifest",
            }
        return view

    def list_jobs(
        self,
        p: Principal,
        *,
        state: str | None = None,
        operator: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        self._require(p, (Role.OPERATOR, Role.SUPERVISOR))
        if state is not None and state not in {s.value for s in State}:
            raise BadInput(
                f"Unknown state {state!r}.", hint="One of: " + ", ".join(s.value for s in State)
            )
        who = p.name if p.role == Role.OPERATOR else operator
        found = jobs.list_jobs(
            self.conn(),
            operator=who,
            states=[state] if state else None,
            limit=max(1, min(limit, 1000)),
            offset=max(0, offset),
        )
        return [self._job_view(p, j) for j in found]

    def get_job(self, p: Principal, job_id: str) -> dict[str, Any]:
        return self._job_view(p, self._own_job(p, job_id), detail=True)

    def cancel_job(self, p: Principal, job_id: str) -> dict[str, Any]:
        job = self._own_job(p, job_id)
        job = self.worker.cancel(self.conn(), job, actor=p.name, role=p.role.value)
        self.maybe_checkpoint()
        return self._job_view(p, job)

    # --- products ------------------------------------------------------------------

    def _released(self, p: Principal, job_id: str) -> Job:
        job = self._own_job(p, job_id)
        if job.state != State.RELEASED:
            raise Conflict(
                f"Job {job_id} is {job.state.value}; only released jobs have a product.",
                hint="`sandbox status JOB` shows where the job is.",
            )
        return job

    def product_file(self, p: Principal, job_id: str, fmt: str = "csv") -> tuple[Path, str, str]:
        """(path, media type, download name) of a released product; audited."""
        job = self._released(p, job_id)
        path = products.product_file(self.settings.products_dir, job.id, fmt)
        if not path.is_file():
            raise NotFound(f"The product of job {job_id} is missing.")
        self._audit(
            p.name,
            p.role.value,
            "product.downloaded",
            subject=job.id,
            scenario=job.scenario,
            details={"format": fmt},
        )
        return path, products.FORMATS[fmt], f"{job.id}.{fmt}"

    def product_manifest(self, p: Principal, job_id: str, fmt: str = "csv") -> dict[str, Any]:
        job = self._released(p, job_id)
        path = products.manifest_file(self.settings.products_dir, job.id, fmt)
        if not path.is_file():
            raise NotFound(f"The manifest of job {job_id} is missing.")
        data: dict[str, Any] = json.loads(path.read_bytes())
        return data

    def products_public_key(self) -> str:
        from sandbox.keys import public_key_pem

        return public_key_pem(self.product_key).decode("ascii")

    # --- budget --------------------------------------------------------------------

    def budget(self, p: Principal, *, operator: str | None = None) -> list[dict[str, Any]]:
        """What is left of each grant's budget, per private dataset."""
        from sandbox import ledger

        self._require(p, (Role.OPERATOR, Role.SUPERVISOR))
        if p.role == Role.OPERATOR:
            grants = self._grants.for_operator(p.name)
        elif operator is not None:
            grants = self._grants.for_operator(operator)
        else:
            grants = self._grants.grants
        out = []
        for g in grants:
            for ds in g.datasets:
                d = self.catalog.dataset(ds)
                if d is None or d.is_public:
                    continue
                out.append(
                    {
                        "grant": g.id,
                        "operator": g.operator,
                        "scenario": g.scenario.id,
                        "dataset": ds,
                        "valid_until": g.valid_until.isoformat(),
                        "max_epsilon_per_query": g.budget.max_epsilon_per_query,
                        **_plain(
                            ledger.balance(self.conn(), g, ds, definition=d.privacy.definition)
                        ),
                    }
                )
        return out

    # --- review --------------------------------------------------------------------

    def review_queue(self, p: Principal) -> list[dict[str, Any]]:
        """Jobs waiting for review, oldest first, with what each still needs."""
        self._require(p, SUPERVISOR)
        waiting = jobs.list_jobs(self.conn(), states=[State.IN_REVIEW.value], limit=1000)
        out = []
        for job in reversed(waiting):
            view = self._job_view(p, job)
            view["you_decided"] = any(d["reviewer"] == p.name for d in view["decisions"])
            view["may_decide"] = not view["you_decided"] and job.operator != p.name
            out.append(view)
        return out

    def decide(self, p: Principal, job_id: str, *, decision: str, reason: str) -> dict[str, Any]:
        """One supervisor's decision; enough approvals release, one rejection rejects."""
        from sandbox import audit

        self._require(p, SUPERVISOR)
        conn = self.conn()
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
            audit.append(
                conn,
                actor=p.name,
                role=p.role.value,
                action="review.approved" if decision == "approve" else "review.rejected",
                subject=job.id,
                scenario=job.scenario,
                details={"reason": reason.strip()[:500], "outcome": outcome},
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
            products.discard(self.settings.products_dir, job.id)
        elif outcome == "approved":
            job = self.worker.release(
                conn,
                jobs.get_job(conn, job_id),
                reviewers=review.decisions(conn, job_id),
                actor=p.name,
                role=p.role.value,
            )
        self.maybe_checkpoint()
        return {"outcome": outcome, "job": self._job_view(p, jobs.get_job(conn, job_id))}

    # --- audit ---------------------------------------------------------------------

    def audit_search(
        self,
        p: Principal,
        *,
        action: str | None = None,
        actor: str | None = None,
        since: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Audit events, newest first; ``since`` is a sequence number or an ISO time."""
        from sandbox import audit

        self._require(p, STAFF)
        since_seq = self._since_seq(since)
        found = audit.events(
            self.conn(),
            action=action,
            actor=actor,
            since_seq=since_seq,
            limit=max(1, min(limit, 1000)),
            newest_first=True,
        )
        return [e.to_dict() for e in found]

    def _since_seq(self, since: str | None) -> int:
        if since is None or since == "":
            return 0
        if since.isascii() and since.isdigit():
            return min(int(since), 2**63 - 1)  # SQLite's largest integer
        try:
            when = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError as exc:
            raise BadInput(
                "'since' must be a sequence number or an ISO 8601 time.",
                hint="For example 2026-01-31T00:00:00Z.",
            ) from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        row = (
            self.conn()
            .execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events WHERE time < ?", (stamp,))
            .fetchone()
        )
        return int(row[0])

    def audit_verify(self, p: Principal) -> dict[str, Any]:
        from sandbox import audit
        from sandbox.audit import read_checkpoints

        self._require(p, STAFF)
        witness = self.settings.audit_witness_file
        held = read_checkpoints(witness) if witness is not None and witness.is_file() else []
        report = audit.verify(self.conn(), self.audit_key.public_key(), trusted_checkpoints=held)
        return _plain(report.to_dict())

    # --- reports -------------------------------------------------------------------

    def reports(
        self, p: Principal, *, operator: str | None = None, scenario: str | None = None
    ) -> dict[str, Any]:
        """The supervision report (per operator × scenario) and its alerts."""
        self._require(p, SUPERVISOR)
        from sandbox import reports

        report: dict[str, Any] = reports.build_report(
            self.conn(), operator=operator, scenario=scenario, grants=self._grants
        )
        return _plain(report)

    # --- tokens (admin) ------------------------------------------------------------

    def create_token(
        self, p: Principal, *, role: str, subject: str, expires_in: str | None = None
    ) -> dict[str, Any]:
        self._require(p, ADMIN)
        return issue_token(self, role=role, subject=subject, expires_in=expires_in, actor=p)

    def list_tokens(self, p: Principal) -> list[dict[str, Any]]:
        self._require(p, ADMIN)
        return tokens.list_tokens(self.conn())

    def revoke_token(self, p: Principal, token_id: str) -> dict[str, Any]:
        self._require(p, ADMIN)
        return tokens.revoke_token(self.conn(), token_id, actor=p)

    # --- helpers -------------------------------------------------------------------

    def _dataset(self, dataset_id: str) -> Dataset:
        d = self.catalog.dataset(dataset_id)
        if d is None:
            raise NotFound(f"No dataset {dataset_id!r}.")
        return d


def issue_token(
    svc_or_conn: Service | sqlite3.Connection,
    *,
    role: str,
    subject: str,
    expires_in: str | None = None,
    grants: Grants | None = None,
    label: str = "",
    actor: Principal = tokens.SYSTEM,
) -> dict[str, Any]:
    """Issue a token after checking the role and that an operator is in grants.yaml."""
    try:
        r = Role(role)
    except ValueError as exc:
        raise BadInput(f"Unknown role {role!r}.", hint="operator, supervisor or admin.") from exc
    if isinstance(svc_or_conn, Service):
        conn, grants = svc_or_conn.conn(), svc_or_conn.grants
    else:
        conn = svc_or_conn
    subject = tokens.principal_id(subject) if subject.strip() else subject
    if r == Role.OPERATOR and grants is not None and grants.operator(subject) is None:
        known = ", ".join(o.id for o in grants.operators)
        raise Refused(
            f"Unknown operator {subject!r}.", code="UNKNOWN_OPERATOR", hint=f"Known: {known}."
        )
    delta: timedelta | None = tokens.parse_duration(expires_in) if expires_in else None
    secret, record = tokens.create_token(
        conn, role=r, subject=subject, expires_in=delta, label=label, actor=actor
    )
    return {"token": secret, **record}


def _dataset_view(d: Dataset) -> dict[str, Any]:
    return {
        "id": d.id,
        "title": d.title,
        "owner": d.owner,
        "description": d.description,
        "version": d.version,
        "grade": d.grade.value,
        "sharing": {"attribute": d.sharing.attribute.value, "reason": d.sharing.reason},
        "privacy_unit": d.privacy_unit,
        "privacy": d.privacy.model_dump(mode="json"),
        "tables": [
            {
                "name": t.name,
                "description": t.description,
                "file": t.file,
                "rows_per_unit": t.rows_per_unit,
                "lookup_key": t.lookup_key,
                "columns": [
                    {
                        "name": c.name,
                        "type": c.type,
                        "description": c.description,
                        "uses": sorted(u.value for u in c.uses),
                        "bounds": list(c.bounds) if c.bounds else None,
                        "keys": c.keys,
                        "null_rate": c.null_rate,
                        "synthetic": c.synthetic,
                    }
                    for c in t.columns
                ],
            }
            for t in d.tables
        ],
    }


def _grant_view(g: Grant) -> dict[str, Any]:
    return {
        "id": g.id,
        "operator": g.operator,
        "scenario": {"id": g.scenario.id, "purpose": g.scenario.purpose},
        "datasets": list(g.datasets),
        "columns": {k: sorted(u.value for u in v) for k, v in g.columns.items()},
        "budget": g.budget.model_dump(mode="json"),
        "valid_from": g.valid_from.isoformat(),
        "valid_until": g.valid_until.isoformat(),
    }


def _plain(obj: Any) -> dict[str, Any]:
    """JSON-ready copy of a record (dataclasses, tuples, datetimes)."""
    plain: dict[str, Any] = json.loads(
        json.dumps(obj, default=lambda o: getattr(o, "__dict__", str(o)))
    )
    return plain


def _version() -> str:
    from sandbox import __version__

    return __version__


_TIME_FIELDS = ("created_at", "updated_at", "finished_at")


def _whole_second(stamp: Any) -> Any:
    """An ISO timestamp cut to the whole second (issue 20); anything else unchanged."""
    if not isinstance(stamp, str):
        return stamp
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp).replace(microsecond=0).isoformat()
    except ValueError:
        return stamp


def _coarsen_times(view: dict[str, Any]) -> None:
    """Operators see job times to the whole second only: how long a run took can depend
    on the exact data, and sub-second transition times would let an operator read it
    (issue 20; docs/privacy.md, "What an operator can observe"). Supervisors see all."""
    for name in _TIME_FIELDS:
        view[name] = _whole_second(view.get(name))
    for t in view.get("transitions") or []:
        t["at"] = _whole_second(t.get("at"))
