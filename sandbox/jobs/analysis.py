"""Analysis jobs (issue 18): an operator's Python script under a scenario, ACRO outputs.

The second job kind (``jobs.kind = 'analysis'``), through the same state machine and
the same ``transition`` (so the same audit trail):

``submitted`` → ``compiled`` (the script checked: size, names, UTF-8; the grant allows
analysis jobs; the tables it may read fixed) → ``budget_reserved`` (nothing is
reserved: an analysis job has no differential-privacy guarantee, so the ledger is
neither charged nor consulted; the event says so) → ``running`` (the runner container,
``executors.docker.analysis``) → ``in_review`` (always: at least one approval, the
grade's ``approvals`` if more, so two supervisors for ``important`` data) → released or
rejected as any job.

Stored: the script (``analysis_scripts``) and ACRO's checked outputs
(``analysis_outputs``): these are disclosure-checked outputs waiting for review,
not raw rows and not exact DP aggregates. Audited: the script's SHA-256, every
output file's SHA-256, ACRO's verdicts per output, refused custom outputs.

Tables: a script is Python, so it can read every column of a table it is given. A
table is given with only its columns that have a declared use: a table holding a
column no use allows (a name, an ID number) is projected by a runner container first
(``executors.docker.projection``) and never mounted raw for an analysis job.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from sandbox import store
from sandbox.catalog import Catalog
from sandbox.errors import Conflict, Refused, SystemFailure
from sandbox.grants import Grant, Grants, find_grant
from sandbox.jobs.records import (
    Job,
    create_job,
    get_job,
    join_transaction,
    register_release,
    transition,
)
from sandbox.jobs.states import HELD, SHOWN_HELD, S, State
from sandbox.review import ReviewRules

SCHEMA = """
CREATE TABLE IF NOT EXISTS analysis_scripts (
    job_id        TEXT PRIMARY KEY,
    entry         TEXT NOT NULL,
    files_json    TEXT NOT NULL,
    script_sha256 TEXT NOT NULL,
    tables_json   TEXT NOT NULL,
    acro_json     TEXT NOT NULL,
    manifest_json TEXT
);
CREATE TABLE IF NOT EXISTS analysis_outputs (
    job_id   TEXT NOT NULL,
    name     TEXT NOT NULL,
    format   TEXT NOT NULL,
    sha256   TEXT NOT NULL,
    bytes    INTEGER NOT NULL,
    content  BLOB NOT NULL,
    PRIMARY KEY (job_id, name)
);
"""
store.register_schema("sandbox.jobs.analysis", SCHEMA)

KIND = "analysis"
MAX_FILES = 20
MAX_SCRIPT_BYTES = 256 * 1024
FILE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\.py$")
ACRO_DEFAULTS: dict[str, float | int | bool] = {
    "safe_threshold": 10,
    "safe_dof_threshold": 10,
    "safe_nk_n": 2,
    "safe_nk_k": 0.9,
    "safe_pratio_p": 0.1,
    "check_missing_values": False,
    "zeros_are_disclosive": True,
}


def is_held(job: Job) -> bool:
    """Whether an operator is shown this job as held for review: an analysis job not
    yet decided (``states.HELD``)."""
    return job.record.get("kind") == KIND and job.state in HELD


def shown_state(job: Job, *, operator_view: bool) -> State:
    """The state the caller is shown: a held analysis job is ``in_review`` to its
    operator from submission to the decision; supervisors see the truth."""
    return SHOWN_HELD if operator_view and is_held(job) else job.state


def check_script(files: dict[str, str], entry: str) -> dict[str, bytes]:
    """The script's files as bytes; refused if too many, too large or badly named."""
    if not files or len(files) > MAX_FILES:
        raise Refused(
            f"An analysis job has 1 to {MAX_FILES} files.",
            code="SCRIPT_INVALID",
            hint="Submit one .py file, or a small folder of them.",
        )
    out: dict[str, bytes] = {}
    for name, text in files.items():
        if not isinstance(name, str) or not FILE_NAME.match(name) or not isinstance(text, str):
            raise Refused(
                "Script file names are plain Python module names ending in .py.",
                code="SCRIPT_INVALID",
            )
        out[name] = text.encode("utf-8")
    if sum(len(b) for b in out.values()) > MAX_SCRIPT_BYTES:
        raise Refused(
            f"The script is larger than {MAX_SCRIPT_BYTES // 1024} KiB.",
            code="SCRIPT_INVALID",
        )
    if entry not in out:
        raise Refused("The entry file is not among the script's files.", code="SCRIPT_INVALID")
    return out


def script_sha256(files: dict[str, bytes]) -> str:
    """One digest over the file names and contents (a single file: its own digest)."""
    if len(files) == 1:
        return hashlib.sha256(next(iter(files.values()))).hexdigest()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def analysis_tables(catalog: Catalog, grant: Grant) -> tuple[dict[str, Any], list[str]]:
    """(table -> what the script gets of it, the grades) of the grant's tables.

    A table whose every column has a declared use is given as its file
    (``dataset/file``). A table holding columns no use allows (a name, an ID number) is
    given as ``{"file", "columns"}``: the script sees a projection holding only the
    usable columns, cut by a runner container (``executors.docker.projection``), never
    the raw file. A table with no usable column is not given."""
    tables: dict[str, Any] = {}
    grades: list[str] = []
    for ds_id in grant.datasets:
        ds = catalog.dataset(ds_id)
        if ds is None:
            continue
        given = False
        for table in ds.tables:
            usable = [c.name for c in table.columns if c.uses]
            if not usable:
                continue
            given = True
            if len(usable) == len(table.columns):
                tables[table.name] = table.file
            else:
                tables[table.name] = {"file": table.file, "columns": usable}
        if given:
            grades.append(ds.grade.value)
    return tables, grades


def acro_thresholds(rules: ReviewRules, grades: list[str]) -> tuple[dict[str, Any], int]:
    """ACRO's thresholds and the approvals needed, from the strictest grade."""
    strictest = max(grades, key=lambda g: rules.for_grade(g).approvals) if grades else ""
    values: dict[str, Any] = {**ACRO_DEFAULTS, **rules.acro.get("default", {})}
    values.update(rules.acro.get(strictest, {}))
    approvals = max([1] + [rules.for_grade(g).approvals for g in grades])
    return values, approvals


def submit(
    conn: store.Connection,
    *,
    catalog: Catalog,
    grants: Grants,
    rules: ReviewRules,
    operator: str,
    scenario: str,
    files: dict[str, str],
    entry: str,
    actor: str,
    role: str,
    idempotency_key: str | None = None,
    request_sha256: str | None = None,
    claimed_by: str | None = None,
) -> Job:
    """Check and record an analysis job; it waits in ``budget_reserved`` for a worker.
    With an ``idempotency_key`` already used by the operator, ``store.IntegrityError``
    and nothing is written (``create_job``)."""
    grant = find_grant(grants, operator, scenario)
    if not grant.analysis_jobs:
        raise Refused(
            f"The grant {grant.id!r} does not allow analysis jobs.",
            code="ANALYSIS_NOT_GRANTED",
            hint="Ask the bureau for a grant with analysis_jobs, or submit SQL.",
            http_status=403,
        )
    data = check_script(files, entry)
    tables, grades = analysis_tables(catalog, grant)
    if not tables:
        raise Refused(
            f"The grant {grant.id!r} has no table an analysis job may read.",
            code="ANALYSIS_NOT_GRANTED",
            http_status=403,
        )
    acro, approvals = acro_thresholds(rules, grades)
    digest = script_sha256(data)
    grade = max(grades, key=lambda g: rules.for_grade(g).approvals)
    with join_transaction(conn):
        job = create_job(
            conn,
            operator=operator,
            scenario=scenario,
            sql=files[entry],
            epsilon=0.0,
            delta=0.0,
            weights=None,
            actor=actor,
            role=role,
            idempotency_key=idempotency_key,
            request_sha256=request_sha256,
            claimed_by=claimed_by,
        )
        conn.execute("UPDATE jobs SET kind = ? WHERE id = ?", (KIND, job.id))
        conn.execute(
            "INSERT INTO analysis_scripts (job_id, entry, files_json, script_sha256,"
            " tables_json, acro_json) VALUES (?, ?, ?, ?, ?, ?)",
            (job.id, entry, json.dumps(files), digest, json.dumps(tables), json.dumps(acro)),
        )
        job = transition(
            conn,
            job,
            S.COMPILED,
            actor=actor,
            role=role,
            details={
                "kind": KIND,
                "script_sha256": digest,
                "tables": sorted(tables),
                "projected": {
                    name: value["columns"]
                    for name, value in sorted(tables.items())
                    if isinstance(value, dict)
                },
            },
            updates={
                "grant_id": grant.id,
                "grade": grade,
                "dataset": ",".join(grant.datasets),
                "required_approvals": approvals,
            },
        )
        return transition(
            conn,
            job,
            S.BUDGET_RESERVED,
            actor=actor,
            role=role,
            details={"kind": KIND, "epsilon": 0.0, "charged": False, "reason": "no DP"},
        )


def check_still_granted(grant: Grant) -> None:
    """At run time the grant must still allow analysis jobs (grants can be reloaded)."""
    if not grant.analysis_jobs:
        raise Refused(
            f"The grant {grant.id!r} no longer allows analysis jobs.",
            code="ANALYSIS_NOT_GRANTED",
            http_status=403,
        )


def docker_executor(executor: Any) -> Any:
    """The Docker executor: analysis jobs run only in the runner container (the host
    has no ACRO or pandas, and the local executor runs SQL on synthetic data only)."""
    from sandbox.errors import DockerUnavailable
    from sandbox.executors.docker import DockerExecutor

    if not isinstance(executor, DockerExecutor):
        raise DockerUnavailable(
            "Analysis jobs run only with the Docker executor.",
            hint="Run the server with SANDBOX_EXECUTOR=docker.",
        )
    return executor


def script_of(conn: store.Connection, job_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM analysis_scripts WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise SystemFailure("An analysis job has no script.", code="INTERNAL")
    return {
        "entry": row["entry"],
        "files": json.loads(row["files_json"]),
        "script_sha256": row["script_sha256"],
        "tables": json.loads(row["tables_json"]),
        "acro": json.loads(row["acro_json"]),
        "manifest": json.loads(row["manifest_json"]) if row["manifest_json"] else None,
    }


def outputs_of(conn: store.Connection, job_id: str) -> dict[str, bytes]:
    rows = conn.execute(
        "SELECT name, content FROM analysis_outputs WHERE job_id = ? ORDER BY name", (job_id,)
    ).fetchall()
    return {row["name"]: bytes(row["content"]) for row in rows}


def execute(
    conn: store.Connection,
    job_id: str,
    *,
    executor: Any,
    data_root: Path,
    actor: str = "system",
    role: str = "system",
    server_id: str | None = None,
) -> Job:
    """budget_reserved → running → (the container) → in_review; ExecutionFailed on failure.
    ``server_id``: the worker's lease, which claims the job it runs (``leases``): a
    job no live server claims is taken over as interrupted."""
    from sandbox.executors.docker.analysis import analysis_spec, run_analysis, split_tables

    job = get_job(conn, job_id)
    script = script_of(conn, job_id)
    try:
        claim = {"claimed_by": server_id} if server_id is not None else {}
        job = transition(
            conn, job, S.RUNNING, actor=actor, role=role, details={"kind": KIND}, updates=claim
        )
    except Conflict:
        return get_job(conn, job_id)  # cancelled meanwhile
    files = {name: text.encode("utf-8") for name, text in script["files"].items()}
    tables, columns = split_tables(script["tables"])
    spec = analysis_spec(entry=script["entry"], tables=tables, acro=script["acro"])
    out = run_analysis(executor, spec, files, data_root=data_root, job_id=job_id, columns=columns)
    summary = [
        {
            "uid": o["uid"],
            "type": o["type"],
            "status": o["status"],
            "checks": o["checks"],
            "exception_requested": bool(o["exception"]),
            "files": {f["name"]: f["sha256"] for f in o["files"]},
        }
        for o in out.manifest["outputs"]
    ]
    with join_transaction(conn):
        conn.execute(
            "UPDATE analysis_scripts SET manifest_json = ? WHERE job_id = ?",
            (json.dumps(out.manifest), job_id),
        )
        for output in out.manifest["outputs"]:
            for item in output["files"]:
                conn.execute(
                    "INSERT INTO analysis_outputs (job_id, name, format, sha256, bytes, content)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        item["name"],
                        item["format"],
                        item["sha256"],
                        item["bytes"],
                        out.files[item["name"]],
                    ),
                )
        return transition(
            conn,
            job,
            S.IN_REVIEW,
            actor=actor,
            role=role,
            details={
                "kind": KIND,
                "required_approvals": job["required_approvals"],
                "outputs": summary,
                "refused": len(out.manifest["refused"]),
            },
            updates={"rows": len(out.manifest["outputs"])},
        )


def hold_failure(
    conn: store.Connection,
    job: Job,
    exc: BaseException,
    *,
    stage: str,
    actor: str,
    role: str,
) -> Job:
    """running → in_review with the run's failure: its code and category on the job,
    an incident (facts, never a message) for the supervisors, the ``job.in_review``
    event saying ``run_failed``. The operator is shown nothing of it until the
    decision (``release`` closes it as ``failed``; a rejection as ``rejected``)."""
    from sandbox.jobs.incidents import (
        error_columns,
        incident_facts,
        log_incident,
        new_incident_id,
        record_incident,
    )
    from sandbox.jobs.records import now_iso

    cols = error_columns(exc)
    incident = new_incident_id()
    facts = incident_facts(exc, stage=stage)
    log_incident(incident, job.id, facts, exc, job.state.value)

    def note(c: store.Connection, j: Job) -> None:
        record_incident(c, incident, j.id, facts, now_iso())

    return transition(
        conn,
        job,
        S.IN_REVIEW,
        actor=actor,
        role=role,
        details={
            "kind": KIND,
            "required_approvals": job["required_approvals"],
            "run_failed": True,
            "incident": incident,
            **facts,
        },
        updates=cols,
        effects=note,
    )


def run_failed(job: Job) -> bool:
    """Whether the job's run failed (it waits for review, or was closed, with it)."""
    return job.record.get("kind") == KIND and bool(job["error_code"])


def release(
    conn: store.Connection,
    job: Job,
    *,
    products_dir: Path,
    key: Any,
    reviewers: list[dict[str, Any]],
    actor: str,
    role: str,
    effects: Any = None,
) -> Job:
    """in_review → released: the approved ACRO outputs signed into a product
    (``products.release_analysis_product``), registered and audited with the move.
    Only the outputs every approving supervisor chose are in it
    (``analysis_selection.released_outputs``); the manifest and the audit event name
    the withheld ones (uids only) and who chose what.
    The caller (``JobWorker``) holds the release lock and has checked the state.
    A job whose run failed (``hold_failure``) has nothing to release: approving it
    closes it as ``failed`` with its category, which its operator then sees."""
    from sandbox import products
    from sandbox.jobs import analysis_selection
    from sandbox.jobs.records import now_iso

    if run_failed(job):
        # approved: the supervisors let the operator see that (and how) the run
        # failed; nothing else is released
        return transition(
            conn,
            job,
            S.FAILED,
            actor=actor,
            role=role,
            details={
                "kind": KIND,
                "decided": True,
                "category": job["error_category"],
                "reviewers": [r["reviewer"] for r in reviewers],
            },
            effects=effects,
        )
    released_at = now_iso()
    script = script_of(conn, job.id)
    chosen, withheld, choices = analysis_selection.released_outputs(conn, job.id, reviewers)
    files = products.release_analysis_product(
        products_dir,
        job=job.record,
        key=key,
        reviewers=reviewers,
        released_at=released_at,
        script=script,
        outputs=outputs_of(conn, job.id),
        released=chosen,
        selections=choices,
    )
    return register_release(
        conn,
        job,
        files=files,
        released_at=released_at,
        key=key,
        reviewers=reviewers,
        actor=actor,
        role=role,
        effects=effects,
        kind=KIND,
        audit_details={
            "script_sha256": script["script_sha256"],
            "released_outputs": chosen,
            "withheld_outputs": withheld,
            "selections": choices,
        },
    )
