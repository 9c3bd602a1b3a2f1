"""The ``Service`` facade: the control plane's state (settings, catalogue, grants,
keys, the job worker, one database connection per thread) and every operation the faces
call, each checking the caller's role and ownership first."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from sandbox import jobs, products, review, store, tokens
from sandbox.catalog import Catalog, Dataset, load_catalog
from sandbox.errors import BadInput, NotFound
from sandbox.executors import Executor
from sandbox.grants import Grants, load_grants
from sandbox.jobs import Job, JobWorker, State
from sandbox.service import auth, views
from sandbox.service.analysis import AnalysisJobs
from sandbox.service.auth import ADMIN, STAFF, SUPERVISOR, require
from sandbox.service.decisions import record_review
from sandbox.service.ratelimit import RateLimiter, TimeBudget
from sandbox.service.submission import Submissions
from sandbox.settings import Settings
from sandbox.tokens import Principal, Role

log = logging.getLogger("sandbox.service")

# a job's final transition is followed by a signed audit checkpoint
FINAL_ACTIONS = frozenset(f"job.{s.value}" for s in jobs.TERMINAL)


class Service(Submissions, AnalysisJobs):
    """The control plane's state and operations, shared by every face (explain and
    submit are in ``submission.Submissions``, analysis jobs in ``analysis.AnalysisJobs``)."""

    def __init__(self, settings: Settings, *, executor: Executor | None = None) -> None:
        from sandbox import signing
        from sandbox.audit import check_witness

        check_witness(settings.audit_witness_file, settings.audit_witness_url, settings.home)
        self.settings = settings
        self.catalog: Catalog = load_catalog(settings.policies)
        self._grants: Grants = load_grants(settings.policies, self.catalog)
        self.rules = review.load_rules(settings.policies)
        self._local = threading.local()
        self._conns: list[store.Connection] = []
        self._conns_lock = threading.Lock()
        self.rate = RateLimiter(settings.rate_per_minute)
        self.explain_rate = RateLimiter(settings.explain_per_minute)
        self.compile_time = TimeBudget(settings.compile_seconds_per_minute)
        self._auth_log = RateLimiter(10)  # at most 10 auth.failed events a minute
        self.product_key = signing.load_or_create(
            settings.keys_dir, "products", on_create=self._key_created
        )
        self.audit_key = signing.load_or_create(
            settings.keys_dir, "audit", on_create=self._key_created
        )
        self.executor: Executor = executor if executor is not None else self._make_executor()
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

    def conn(self) -> store.Connection:
        """One database connection per thread (transactions must not interleave)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = store.connect(self.settings.database)
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    def _make_executor(self) -> Executor:
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

    def _audit_download(self, p: Principal, job: Job, fmt: str) -> None:
        """The ``product.downloaded`` event of a product file handed out (SQL or analysis)."""
        self._audit(
            p.name,
            p.role.value,
            "product.downloaded",
            subject=job.id,
            scenario=job.scenario,
            details={"format": fmt},
        )

    def start(self) -> None:
        """Start the job worker (recovering unfinished jobs) and record the start."""
        if self.started:
            return
        self._start_executor()
        self._audit("system", "system", "server.started", details={"version": _version()})
        self.started = True
        self.worker.start()
        self.maybe_checkpoint()  # recovery may have failed jobs: their ends get signed

    def _start_executor(self) -> None:
        """Let the executor clean up after a crash before any job runs (the Docker
        executor removes dead processes' runs and their exact results, issue 15). A
        missing Docker engine does not stop the server: jobs fail with
        DOCKER_UNAVAILABLE and retry the start; any other failure (no RAM for exact
        results: OUT_NOT_IN_RAM) does."""
        from sandbox.errors import DockerUnavailable

        start = getattr(self.executor, "start", None)
        if start is None:
            return
        try:
            start()
        except DockerUnavailable:
            log.warning("executor.start: no Docker engine or runner image; jobs will retry")

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
            with contextlib.suppress(store.ProgrammingError):  # another thread's
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
        return auth.authenticate(
            self.conn(),
            token,
            client=client,
            rate=self.rate,
            failures=self._auth_log,
            audit=self._audit,
        )

    # --- catalogue and grants ------------------------------------------------------

    def catalog_view(self, p: Principal) -> dict[str, Any]:
        """The catalogue (schema and policy, never rows); operators see the datasets of
        their grants that are valid now (not an expired or not yet valid one)."""
        return views.catalog_view(self.catalog, self._grants, p)

    def grants_view(self, p: Principal) -> list[dict[str, Any]]:
        require(p, (Role.OPERATOR, Role.SUPERVISOR, Role.ADMIN))
        grants = (
            self._grants.for_operator(p.name) if p.role == Role.OPERATOR else self._grants.grants
        )
        return [views.grant_view(g) for g in grants]

    def reload_grants(self, p: Principal) -> dict[str, Any]:
        require(p, ADMIN)
        new = load_grants(self.settings.policies, self.catalog)
        self._grants = new
        self._audit(
            p.name, p.role.value, "grant.changed", subject="*", details={"grants": len(new.grants)}
        )
        return {"grants": len(new.grants), "operators": len(new.operators)}

    # --- jobs ----------------------------------------------------------------------

    def _own_job(self, p: Principal, job_id: str) -> Job:
        return auth.own_job(self.conn(), p, job_id)

    def _job_view(self, p: Principal, job: Job, *, detail: bool = False) -> dict[str, Any]:
        return views.job_view(
            self.conn(), self.settings.products_dir, p, job, detail=detail, rules=self.rules
        )

    def list_jobs(
        self,
        p: Principal,
        *,
        state: str | None = None,
        operator: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        require(p, (Role.OPERATOR, Role.SUPERVISOR))
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
            # an operator filters on the states it is shown (a held analysis job is
            # in_review, never running: docs/analysis-jobs.md)
            shown=p.role == Role.OPERATOR,
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
        return auth.released_job(self.conn(), p, job_id)

    def product_file(self, p: Principal, job_id: str, fmt: str = "csv") -> tuple[Path, str, str]:
        """(path, media type, download name) of a released product; audited."""
        job = self._released(p, job_id)
        path = products.product_file(self.settings.products_dir, job.id, fmt)
        if not path.is_file():
            raise NotFound(f"The product of job {job_id} is missing.")
        self._audit_download(p, job, fmt)
        return path, products.FORMATS[fmt], f"{job.id}.{fmt}"

    def product_manifest(self, p: Principal, job_id: str, fmt: str = "csv") -> dict[str, Any]:
        job = self._released(p, job_id)
        path = products.manifest_file(self.settings.products_dir, job.id, fmt)
        if not path.is_file():
            raise NotFound(f"The manifest of job {job_id} is missing.")
        data: dict[str, Any] = json.loads(path.read_bytes())
        return data

    def products_public_key(self) -> str:
        from sandbox.signing import public_key_pem

        return public_key_pem(self.product_key).decode("ascii")

    # --- budget --------------------------------------------------------------------

    def budget(self, p: Principal, *, operator: str | None = None) -> list[dict[str, Any]]:
        """What is left of each grant's budget, per private dataset."""
        require(p, (Role.OPERATOR, Role.SUPERVISOR))
        if p.role == Role.OPERATOR:
            grants = self._grants.for_operator(p.name)
        elif operator is not None:
            grants = self._grants.for_operator(operator)
        else:
            grants = self._grants.grants
        return views.budget_rows(self.conn(), self.catalog, grants)

    # --- review --------------------------------------------------------------------

    def review_queue(self, p: Principal) -> list[dict[str, Any]]:
        """Jobs waiting for review, oldest first, with what each still needs; an analysis
        job with ``analysis`` (``review_summary``: entry file, outputs, flagged)."""
        require(p, SUPERVISOR)
        waiting = jobs.list_jobs(self.conn(), states=[State.IN_REVIEW.value], limit=1000)
        out = []
        for job in reversed(waiting):
            view = self._job_view(p, job)
            view["you_decided"] = any(d["reviewer"] == p.name for d in view["decisions"])
            view["may_decide"] = not view["you_decided"] and job.operator != p.name
            if view.get("kind") == "analysis":  # its script and outputs, not SQL and ε
                view["analysis"] = self.review_summary(job)
            out.append(view)
        return out

    def decide(
        self,
        p: Principal,
        job_id: str,
        *,
        decision: str,
        reason: str,
        outputs: list[str] | None = None,
    ) -> dict[str, Any]:
        """One supervisor's decision; enough approvals release, one rejection rejects.
        ``outputs``: an analysis job's outputs this approval releases (None: all)."""
        require(p, SUPERVISOR)
        conn = self.conn()
        outcome = record_review(
            conn,
            self.worker,
            self.settings.products_dir,
            p,
            job_id,
            decision=decision,
            reason=reason,
            outputs=outputs,
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

        require(p, STAFF)
        since_seq = views.since_seq(self.conn(), since)
        found = audit.events(
            self.conn(),
            action=action,
            actor=actor,
            since_seq=since_seq,
            limit=max(1, min(limit, 1000)),
            newest_first=True,
        )
        return [e.to_dict() for e in found]

    def audit_verify(self, p: Principal) -> dict[str, Any]:
        from sandbox import audit
        from sandbox.audit import read_checkpoints

        require(p, STAFF)
        witness = self.settings.audit_witness_file
        held = read_checkpoints(witness) if witness is not None and witness.is_file() else []
        report = audit.verify(self.conn(), self.audit_key.public_key(), trusted_checkpoints=held)
        return views.plain(report.to_dict())

    # --- reports -------------------------------------------------------------------

    def reports(
        self, p: Principal, *, operator: str | None = None, scenario: str | None = None
    ) -> dict[str, Any]:
        """The supervision report (per operator × scenario) and its alerts."""
        require(p, SUPERVISOR)
        from sandbox import reports

        report: dict[str, Any] = reports.build_report(
            self.conn(),
            operator=operator,
            scenario=scenario,
            grants=self._grants,
            catalog=self.catalog,
        )
        return views.plain(report)

    # --- tokens (admin) ------------------------------------------------------------

    def create_token(
        self, p: Principal, *, role: str, subject: str, expires_in: str | None = None
    ) -> dict[str, Any]:
        require(p, ADMIN)
        return auth.issue_token(self, role=role, subject=subject, expires_in=expires_in, actor=p)

    def list_tokens(self, p: Principal) -> list[dict[str, Any]]:
        require(p, ADMIN)
        return tokens.list_tokens(self.conn())

    def revoke_token(self, p: Principal, token_id: str) -> dict[str, Any]:
        require(p, ADMIN)
        return tokens.revoke_token(self.conn(), token_id, actor=p)

    # --- helpers -------------------------------------------------------------------

    def _dataset(self, dataset_id: str) -> Dataset:
        d = self.catalog.dataset(dataset_id)
        if d is None:
            raise NotFound(f"No dataset {dataset_id!r}.")
        return d


def _version() -> str:
    from sandbox import __version__

    return __version__
