"""Idempotent submissions: a retry with the same key finds the job, never makes a second.

A client sends an idempotency key with ``POST /v1/jobs`` or ``POST /v1/analysis-jobs``
(the ``Idempotency-Key`` header of draft-ietf-httpapi-idempotency-key-header; ``sandbox
submit`` and ``sandbox submit-script`` send a fresh one per invocation). The key is
stored on the job with the digest of the request (``request_fingerprint``,
``analysis_fingerprint``), and keys are the operator's own: one job per (operator, key),
kept so by a UNIQUE index (``sandbox/jobs/records.py``). A second submission with the
key is a *replay* when it asks for the same thing (the same job comes back, nothing is
reserved again), and refused (409 IDEMPOTENCY_KEY_REUSED) when it asks for anything
else. Keys do not expire: a job, and so its key, is kept for good.

No heavy imports: the CLI checks a key with ``check_key`` before sending it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandbox import store
from sandbox.errors import BadInput, Conflict

if TYPE_CHECKING:
    from sandbox.jobs import Job

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 128
KEY_RULE = f"1 to {MAX_KEY_LENGTH} printable ASCII characters (a UUID is a good key)"


def check_key(key: str | None) -> str | None:
    """The key as given, or BadInput (INVALID_IDEMPOTENCY_KEY); ``None`` is no key. The
    message never repeats the key (it may be anything a client sent)."""
    if key is None:
        return None
    if not (1 <= len(key) <= MAX_KEY_LENGTH and all(" " <= c <= "~" for c in key)):
        raise BadInput(
            f"The {HEADER} must be {KEY_RULE}.",
            code="INVALID_IDEMPOTENCY_KEY",
            hint="Send a fresh key per submission, and the same key only to retry it.",
        )
    return key


def parse_header(values: list[str]) -> str | None:
    """The key in the ``Idempotency-Key`` header lines of a request (none: no key; more
    than one: refused), checked. The draft makes the value a Structured Field String
    (RFC 8941: ``"…"``, with ``\\"`` and ``\\\\`` escaped); a bare value, as many
    clients send, is taken as it is."""
    if not values:
        return None
    if len(values) > 1:
        raise BadInput(
            f"The request has more than one {HEADER}.",
            code="INVALID_IDEMPOTENCY_KEY",
            hint="Send one key per submission.",
        )
    text = values[0].strip(" \t")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return check_key(_sf_string(text[1:-1]))
    return check_key(text)


def _sf_string(inner: str) -> str:
    out: list[str] = []
    chars = iter(inner)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            if nxt not in ('"', "\\"):
                raise _bad_quoting()
            out.append(nxt)
        elif c == '"':
            raise _bad_quoting()
        else:
            out.append(c)
    return "".join(out)


def _bad_quoting() -> BadInput:
    return BadInput(
        f"The {HEADER} is a quoted string with a stray quote or backslash.",
        code="INVALID_IDEMPOTENCY_KEY",
        hint='Quote it as "KEY", escaping " and \\ inside with a backslash, or send it bare.',
    )


def header_value(key: str) -> str:
    """The header value a client sends for ``key``: a Structured Field String."""
    checked = check_key(key) or ""
    return '"' + checked.replace("\\", "\\\\").replace('"', '\\"') + '"'


def request_fingerprint(
    *,
    sql: str,
    scenario: str,
    epsilon: float,
    delta: float | None,
    weights: dict[str, float] | None,
) -> str:
    """SHA-256 of what a submission asks for, as the service reads it: 1 and 1.0 are
    one ε, a δ left out is not δ = 0 (it asks for the default), the order of the
    weights does not matter."""
    request: dict[str, Any] = {
        "sql": sql,
        "scenario": scenario,
        "epsilon": float(epsilon),
        "delta": float(delta) if delta is not None else None,
        "weights": {k: float(v) for k, v in weights.items()} if weights is not None else None,
    }
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def analysis_fingerprint(*, scenario: str, files: dict[str, str], entry: str) -> str:
    """SHA-256 of what an analysis submission asks for (``POST /v1/analysis-jobs``):
    the scenario, the entry and every file; one script sent as ``script`` or as
    ``files`` with ``main.py`` is one request. Never equal to a SQL request's digest
    (a key used for a query and then for a script is refused as reused)."""
    request: dict[str, Any] = {
        "kind": "analysis",
        "scenario": scenario,
        "entry": entry,
        "files": dict(sorted(files.items())),
    }
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Submission:
    """A submission's answer: the job's view, and whether it is a replay (the job was
    made by an earlier request with the same key; nothing was done now)."""

    job: dict[str, Any]
    replayed: bool = False


def earlier_job(conn: store.Connection, operator: str, key: str, fingerprint: str) -> Job | None:
    """The operator's job made with ``key``, or None; Conflict (409
    IDEMPOTENCY_KEY_REUSED) if it was made from a different request."""
    from sandbox.jobs import find_by_idempotency_key

    job = find_by_idempotency_key(conn, operator, key)
    if job is not None and job["request_sha256"] != fingerprint:
        raise Conflict(
            f"This {HEADER} was already used for a different submission (job {job.id}).",
            code="IDEMPOTENCY_KEY_REUSED",
            hint="Use a fresh key for a new submission; reuse a key only to retry the same one.",
            details={"job": job.id},
        )
    return job


def create_once(
    conn: store.Connection,
    operator: str,
    key: str | None,
    fingerprint: str,
    create: Callable[[], Job],
) -> tuple[Job, bool]:
    """(job, replayed): ``create()`` the job, or, when a concurrent request with the same
    key made it first (the UNIQUE index refused this one's INSERT, so nothing of it was
    written), that request's job."""
    try:
        return create(), False
    except store.IntegrityError:
        earlier = earlier_job(conn, operator, key, fingerprint) if key is not None else None
        if earlier is None:
            raise
        return earlier, True
