"""The job state machine that drives a query through the stages.

::

    submitted ─▶ compiled ─▶ budget_reserved ─▶ running ─▶ noised ─▶ in_review ─▶ released
        │            │             │               │          │          │    └──▶ rejected
        └────────────┴─▶ refused   │               │          └──────────┴─▶ released (automatic)
      (any state before released) ─┴───────────────┴─▶ failed | cancelled

Modules (imports only go down this list, no cycles):

- ``states``: the states and the moves ``ALLOWED`` between them (no I/O).
- ``records``: the jobs tables, the ``Job`` record, the queries, and ``transition``,
  the ONE function that changes a job's state (check, side effects, audit; one
  transaction).
- ``incidents``: a failure's incident id, its non-data facts, its log line, its row.
- ``pipeline``: ``JobPipeline``, the stages (prepare, execute, noise, review, route,
  release under one lock, fail, cancel) and the budget they reserve, charge, release.
- ``leases``: which server drives which job (``claimed_by``), heartbeats, and when a
  server is dead, so that another takes its jobs over (several servers, one database).
- ``recovery``: what a server does with the jobs a dead server left (at its start,
  and whenever its lease loop finds one).
- ``analysis`` / ``analysis_selection``: analysis jobs (operators' scripts, ACRO
  outputs) and which of their outputs the approving supervisors chose to release.
- ``worker``: ``JobWorker``, the stages on a bounded thread pool, recovery at start,
  the lease loop.

Importers use this package's names (``from sandbox.jobs import State``).
"""

from __future__ import annotations

from sandbox.jobs import analysis_selection  # noqa: F401 - registers its table
from sandbox.jobs.incidents import (
    STAGES,
    StageMark,
    error_columns,
    incident_facts,
    incident_for,
    log_incident,
    new_incident_id,
    record_incident,
)
from sandbox.jobs.leases import Lease
from sandbox.jobs.pipeline import SYSTEM_ACTOR, SYSTEM_ROLE, JobPipeline, release_budget
from sandbox.jobs.records import (
    OPERATOR_SAFE_SYSTEM,
    SCHEMA,
    Job,
    create_job,
    find_by_idempotency_key,
    get_job,
    join_transaction,
    list_jobs,
    now_iso,
    transition,
    transitions,
)
from sandbox.jobs.recovery import recover
from sandbox.jobs.states import ALLOWED, BEFORE_RUNNING, TERMINAL, S, State
from sandbox.jobs.worker import JobWorker

__all__ = [
    "ALLOWED",
    "BEFORE_RUNNING",
    "OPERATOR_SAFE_SYSTEM",
    "SCHEMA",
    "STAGES",
    "SYSTEM_ACTOR",
    "SYSTEM_ROLE",
    "TERMINAL",
    "Job",
    "JobPipeline",
    "JobWorker",
    "Lease",
    "S",
    "StageMark",
    "State",
    "create_job",
    "error_columns",
    "find_by_idempotency_key",
    "get_job",
    "incident_facts",
    "incident_for",
    "join_transaction",
    "list_jobs",
    "log_incident",
    "new_incident_id",
    "now_iso",
    "record_incident",
    "recover",
    "release_budget",
    "transition",
    "transitions",
]
