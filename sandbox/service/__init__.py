"""The one service layer: every face (REST API, CLI, browser console) calls these methods.

Each public method takes the calling ``Principal`` first and checks its role AND its
ownership of what it asks for: an operator sees only its own jobs, products, grants
and budget; someone else's job is "not found" (existence is not revealed).
Supervisors see every job, the review queue, budgets and the audit trail, and cannot
submit. Admins reload grants and manage tokens. Route handlers hold no logic.

Modules (imports only go down this list, no cycles):

- ``ratelimit``: ``RateLimiter`` (requests per token per minute) and the cap on jobs
  one operator may have waiting or running (``MAX_ACTIVE_JOBS``).
- ``idempotency``: idempotency keys of submissions (checking one, the request's
  digest, finding the job an earlier request with the key made: a replay, or 409).
- ``auth``: the principal behind a token, role checks (``require``), ownership checks
  (someone else's job is "not found"), ``issue_token``.
- ``views``: the view dicts, i.e. what each role may see of the catalogue, a grant,
  a job (times coarsened for operators) and a budget; where an audit search starts.
- ``decisions``: a supervisor's review decision (record, audit, reject or release).
- ``core``: the ``Service`` facade (connections, keys, the job worker, operations).

Importers use this package's names (``from sandbox.service import Service``).
"""

from __future__ import annotations

from sandbox.service.auth import ADMIN, OPERATOR, STAFF, SUPERVISOR, issue_token, require
from sandbox.service.core import FINAL_ACTIONS, Service
from sandbox.service.ratelimit import ACTIVE_STATES, MAX_ACTIVE_JOBS, RateLimiter

__all__ = [
    "ACTIVE_STATES",
    "ADMIN",
    "FINAL_ACTIONS",
    "MAX_ACTIVE_JOBS",
    "OPERATOR",
    "STAFF",
    "SUPERVISOR",
    "RateLimiter",
    "Service",
    "issue_token",
    "require",
]
