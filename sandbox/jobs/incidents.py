"""Incidents: what is recorded and logged about a failed job, never its message.

A failure gets an incident id; its non-data facts (stage, exception type, our code and
category, the executor's exit code, OOM kill, memory peak) go into ``job_incidents``
and the ``job.failed`` audit event, and one JSON line goes to the server log.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from sandbox import store
from sandbox.errors import GENERIC_FAILURE, Refused, SandboxError, SystemFailure

log = logging.getLogger("sandbox.jobs")


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


def incident_for(conn: store.Connection, job_id: str) -> dict[str, Any] | None:
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


def record_incident(
    conn: store.Connection, incident: str, job_id: str, facts: dict[str, Any], at: str
) -> None:
    """Store the incident's facts on the job (one row per failed job)."""
    conn.execute(
        "INSERT INTO job_incidents (incident, job_id, stage, exception, code, category,"
        " exit_code, oom_killed, peak_rss_kb, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            incident,
            job_id,
            facts["stage"],
            facts["exception"],
            facts["code"],
            facts["category"],
            facts["exit_code"],
            facts["oom_killed"],
            facts["peak_rss_kb"],
            at,
        ),
    )
