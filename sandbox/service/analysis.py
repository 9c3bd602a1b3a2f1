"""Analysis jobs in the service (issue 18): submit a script, what review shows, the
product: mixed into ``Service`` as ``submission.Submissions`` is.

- ``submit_analysis`` (operators): the script is checked and the job recorded by
  ``jobs.analysis.submit`` (a refusal records nothing); the worker runs it. Analysis
  jobs run only with the Docker executor (``ANALYSIS_UNAVAILABLE`` otherwise, before
  anything is recorded). An ``Idempotency-Key`` makes a retry find the job, as for
  SQL jobs.
- ``analysis_detail``: the script, and ACRO's outputs with their verdicts, checks and
  exception requests. A supervisor sees them while the job waits for review and after;
  the operator sees its own script always, the outputs only once released, and then
  only the released ones (a withheld output by its uid, ``withheld_outputs``).
- ``analysis_output``: one output file's bytes (the console shows tables and figures
  from them); supervisors only.
- ``analysis_product_file`` / ``analysis_manifest``: the released, signed product.
- ``review_summary``: what the review queue shows of an analysis job (its entry file,
  how many outputs, how many ACRO flagged) instead of SQL and ε.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import NotFound, Refused
from sandbox.jobs import State, analysis, analysis_selection
from sandbox.service import auth, idempotency
from sandbox.service.auth import OPERATOR, SUPERVISOR, require
from sandbox.service.idempotency import Submission
from sandbox.service.ratelimit import check_active_jobs
from sandbox.tokens import Principal, Role

if TYPE_CHECKING:
    from sandbox import store
    from sandbox.catalog import Catalog
    from sandbox.grants import Grants
    from sandbox.jobs import Job, JobWorker
    from sandbox.review import ReviewRules
    from sandbox.settings import Settings

__all__ = ["AnalysisJobs", "DEFAULT_ENTRY", "MEDIA_TYPES"]

DEFAULT_ENTRY = "main.py"
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "png": "image/png"}
SHOWN_STATES = (State.IN_REVIEW, State.RELEASED, State.REJECTED)
MAX_TABLE_ROWS = 500


class AnalysisJobs:
    """Analysis-job operations; ``Service`` provides the state they use."""

    settings: Settings
    catalog: Catalog
    rules: ReviewRules
    worker: JobWorker

    if TYPE_CHECKING:  # defined by Service

        @property
        def grants(self) -> Grants: ...
        def conn(self) -> store.Connection: ...
        def maybe_checkpoint(self) -> None: ...
        def _audit_download(self, p: Principal, job: Job, fmt: str) -> None: ...
        def _job_view(self, p: Principal, job: Job, *, detail: bool = False) -> dict[str, Any]: ...

    def submit_analysis(
        self,
        p: Principal,
        *,
        scenario: str,
        files: dict[str, str],
        entry: str = DEFAULT_ENTRY,
        idempotency_key: str | None = None,
    ) -> Submission:
        """Record an analysis job (no budget: no DP) and queue it; its job view.

        With an idempotency key this operator already used, the job it made comes back
        as a replay (nothing checked or recorded again), or 409 IDEMPOTENCY_KEY_REUSED
        if the request differs: as ``submit`` (``sandbox/service/idempotency.py``)."""
        from sandbox.executors.docker import DockerExecutor

        require(p, OPERATOR)
        key = idempotency.check_key(idempotency_key)
        digest = idempotency.analysis_fingerprint(scenario=scenario, files=files, entry=entry)
        conn = self.conn()
        # a replay first: the job it finds counts among the operator's active jobs
        earlier = idempotency.earlier_job(conn, p.name, key, digest) if key is not None else None
        if earlier is not None:
            return Submission(self._job_view(p, earlier), replayed=True)
        if not isinstance(self.worker.executor, DockerExecutor):
            raise Refused(
                "This server runs no analysis jobs: they need the Docker executor.",
                code="ANALYSIS_UNAVAILABLE",
                hint="Ask the bureau; a server with SANDBOX_EXECUTOR=docker runs them.",
                http_status=409,
            )
        check_active_jobs(conn, p.name)
        job, replayed = idempotency.create_once(
            conn,
            p.name,
            key,
            digest,
            lambda: analysis.submit(
                conn,
                catalog=self.catalog,
                grants=self.grants,
                rules=self.rules,
                operator=p.name,
                scenario=scenario,
                files=files,
                entry=entry,
                actor=p.name,
                role=p.role.value,
                idempotency_key=key,
                request_sha256=digest if key is not None else None,
                claimed_by=self.worker.server_id,
            ),
        )
        if replayed:  # a concurrent request with the key made it first
            return Submission(self._job_view(p, job), replayed=True)
        self.maybe_checkpoint()
        self.worker.enqueue(job.id)
        return Submission(self._job_view(p, job))

    def _analysis_job(self, p: Principal, job_id: str) -> Job:
        job = auth.own_job(self.conn(), p, job_id)
        if job.record.get("kind") != analysis.KIND:
            raise NotFound(f"Job {job_id} is not an analysis job.")
        return job

    def analysis_detail(self, p: Principal, job_id: str) -> dict[str, Any]:
        """The job view plus ``analysis``: the script and (when shown) the outputs."""
        require(p, (Role.OPERATOR, Role.SUPERVISOR))
        job = self._analysis_job(p, job_id)
        view = self._job_view(p, job, detail=True)
        script = analysis.script_of(self.conn(), job.id)
        shown = job.state in SHOWN_STATES and (
            p.role == Role.SUPERVISOR or job.state == State.RELEASED
        )
        manifest = script["manifest"] if shown else None
        outputs = (manifest or {}).get("outputs") if manifest else None
        withheld: list[str] = []
        if outputs is not None and job.state == State.RELEASED:
            # what the product holds; the operator never sees a withheld output's facts
            # (its verdicts, cells or hashes), only its uid (jobs.analysis_selection)
            released, withheld, _chosen = analysis_selection.released_outputs(
                self.conn(), job.id, view.get("decisions") or []
            )
            if p.role == Role.OPERATOR:
                outputs = [o for o in outputs if o.get("uid") in released]
        view["analysis"] = {
            "entry": script["entry"],
            "files": script["files"],
            "script_sha256": script["script_sha256"],
            "tables": sorted(script["tables"]),
            "acro": script["acro"],
            "acro_version": (manifest or {}).get("acro_version"),
            "outputs": outputs,
            "withheld_outputs": withheld,
            "refused": (manifest or {}).get("refused") if manifest else None,
            # which outputs each approving supervisor chose (jobs.analysis_selection)
            "selections": analysis_selection.selections(self.conn(), job.id) if shown else None,
        }
        return view

    def review_summary(self, job: Job) -> dict[str, Any]:
        """An analysis job as the review queue shows it: the entry file, the number of
        outputs and of flagged outputs (ACRO's verdict not ``pass``). A supervisor's view."""
        script = analysis.script_of(self.conn(), job.id)
        outputs = (script["manifest"] or {}).get("outputs") or []
        return {
            "entry": script["entry"],
            "files": len(script["files"]),
            "outputs": len(outputs),
            "flagged": sum(1 for o in outputs if o.get("status") != "pass"),
        }

    def analysis_output(self, p: Principal, job_id: str, name: str) -> tuple[bytes, str]:
        """One stored output file (bytes, media type), for a supervisor's review."""
        require(p, SUPERVISOR)
        job = self._analysis_job(p, job_id)
        if job.state not in SHOWN_STATES:
            raise NotFound(f"Job {job_id} has no outputs to show.")
        data = analysis.outputs_of(self.conn(), job.id).get(name)
        if data is None:
            raise NotFound(f"Job {job_id} has no output {name!r}.")
        return data, MEDIA_TYPES[name.rsplit(".", 1)[1]]

    def analysis_table(self, p: Principal, job_id: str, name: str) -> dict[str, Any]:
        """An ACRO CSV output as {columns, rows, total_rows} (the console's HTML table)."""
        data, _media = self.analysis_output(p, job_id, name)
        rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace"))))
        head, body = (rows[0], rows[1:]) if rows else ([], [])
        return {"columns": head, "rows": body[:MAX_TABLE_ROWS], "total_rows": len(body)}

    def analysis_product_file(self, p: Principal, job_id: str) -> tuple[Path, str, str]:
        """(path, media type, download name) of a released analysis product; audited."""
        from sandbox.products import product_dir
        from sandbox.products_analysis import ANALYSIS_FORMAT, ANALYSIS_MEDIA_TYPE

        job = auth.released_job(self.conn(), p, job_id)
        path = product_dir(self.settings.products_dir, job.id) / f"result.{ANALYSIS_FORMAT}"
        if job.record.get("kind") != analysis.KIND or not path.is_file():
            raise NotFound(f"Job {job_id} has no analysis product.")
        self._audit_download(p, job, ANALYSIS_FORMAT)
        return path, ANALYSIS_MEDIA_TYPE, f"{job.id}.{ANALYSIS_FORMAT}"

    def analysis_manifest(self, p: Principal, job_id: str) -> dict[str, Any]:
        """The signed manifest of a released analysis product: {manifest, signature}."""
        from sandbox.products import product_dir
        from sandbox.products_analysis import ANALYSIS_FORMAT

        job = auth.released_job(self.conn(), p, job_id)
        path = product_dir(self.settings.products_dir, job.id)
        path = path / f"result.{ANALYSIS_FORMAT}.manifest.json"
        if job.record.get("kind") != analysis.KIND or not path.is_file():
            raise NotFound(f"Job {job_id} has no analysis product.")
        data: dict[str, Any] = json.loads(path.read_bytes())
        return data
