"""The event log: the schema, the vocabulary (``ACTIONS``), an event's canonical bytes
and leaf hash, appending inside the caller's transaction, and reading events back."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring as _encode_str
from typing import Any, NamedTuple

from sandbox import store
from sandbox.audit.merkle import (
    Frontier,
    leaf_hash,
)
from sandbox.errors import SystemFailure

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    seq        INTEGER PRIMARY KEY,
    time       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    role       TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL DEFAULT '',
    scenario   TEXT,
    details    TEXT NOT NULL DEFAULT '{}',
    leaf_hash  BLOB NOT NULL,
    chain_hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_action ON audit_events(action);
CREATE INDEX IF NOT EXISTS audit_events_actor ON audit_events(actor);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tree_size INTEGER PRIMARY KEY,
    root_hash TEXT NOT NULL,
    time      TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL,
    frontier  TEXT NOT NULL
);
"""
store.register_schema("sandbox.audit", SCHEMA)

# The event vocabulary: action -> what it records and the details it carries. Only
# actions the code writes (tests/audit/test_audit_log.py checks the source and docs/audit.md).
ACTIONS: dict[str, str] = {
    "auth.failed": "A sign-in or token check failed. details: reason.",
    "token.issued": "An API token was issued. subject: token id; details: role, expires.",
    "token.revoked": "An API token was revoked. subject: token id.",
    "grant.changed": "Grants were (re)loaded or changed. subject: grant id; details: change.",
    "key.created": "A signing key was created. subject: key name; details: key_id.",
    # The job state machine (sandbox.jobs) writes one "job.<state>" event per transition;
    # details always carry "from" (the previous state).
    "job.submitted": "An operator submitted a query. subject: job id; details: sql_sha256, "
    "epsilon, delta.",
    "job.compiled": "The compiler made a Plan. subject: job id; details: plan_digest, dataset.",
    "job.refused": "A job was refused. subject: job id; details: code (an error code).",
    "job.budget_reserved": "The job's budget was reserved. subject: job id; details: epsilon, "
    "delta.",
    "job.running": "The job started running (data is read from here on; the budget is kept).",
    "job.noised": "Noise was applied and output checks ran. details: rows (a count), flags, "
    "wall_s.",
    "job.in_review": "The job waits for supervisor review. details: required_approvals.",
    "job.released": "The job's product was released. details: files, reviewers.",
    "job.rejected": "A supervisor rejected the release. details: reason.",
    "budget.charged": "Budget charged (data was read). subject: job id; details: grant, "
    "dataset, epsilon, delta, rho.",
    "budget.released": "A reservation was returned. subject: job id; details as charged.",
    "review.approved": "A reviewer approved a release. subject: job id; details: reason.",
    "review.rejected": "A reviewer rejected a release. subject: job id; details: reason.",
    "product.released": "A data product was released. subject: product id; details: "
    "manifest_digest, dataset.",
    "product.downloaded": "A product was downloaded. subject: product id.",
    "job.failed": "A job failed. subject: job id; details: incident, stage, exception (type), "
    "code, category, exit_code, oom_killed, peak_rss_kb.",
    "job.cancelled": "A job was cancelled. subject: job id; details: reason.",
    "audit.exported": "The audit log was exported. details: since, format, entries.",
    "server.started": "The server started.",
    "server.stopped": "The server stopped (a checkpoint follows).",
}

_ACTION_RE = re.compile(r"^[a-z][a-z_]*\.[a-z][a-z_]*$")
# Details never carry data values or exact aggregates. Keys starting with "exact" and
# these keys are refused outright; the "count-only" keys may hold an integer count only.
_FORBIDDEN_KEYS = frozenset({"value", "values", "raw", "cells", "aggregates"})
_COUNT_ONLY_KEYS = frozenset({"rows", "row", "records", "data", "result", "results", "table"})
_MAX_STRING = 2048
_MAX_BLOB = 1024  # largest JSON size of a list or object inside details
_MAX_DETAILS = 8192
ZERO_HASH = bytes(32)
EXPORT_FORMAT = "jinyu-audit-export/1"
PROOF_FORMAT = "jinyu-audit-proof/1"
CONSISTENCY_FORMAT = "jinyu-audit-consistency/1"
CHECKPOINT_FORMAT = "jinyu-audit-checkpoint/1"


class AuditInvalid(SystemFailure):
    """The audit log does not verify."""

    code = "AUDIT_INVALID"


class AuditEvent(NamedTuple):
    """One stored event, as read back (details is canonical JSON text)."""

    seq: int
    time: str
    actor: str
    role: str
    action: str
    subject: str
    scenario: str | None
    details: str
    leaf_hash: bytes
    chain_hash: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "subject": self.subject,
            "scenario": self.scenario,
            "details": json.loads(self.details),
            "leaf_hash": self.leaf_hash.hex(),
            "chain_hash": self.chain_hash.hex(),
        }


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, UTF-8, no NaN: the one byte form that is hashed and signed."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def event_bytes(
    seq: int,
    time: str,
    actor: str,
    role: str,
    action: str,
    subject: str,
    scenario: str | None,
    details_json: str,
) -> bytes:
    """Canonical JSON of an event, equal to ``canonical_json`` of the event as an object
    (built by hand because it is the hot path of verification)."""
    s = json_str
    return (
        f'{{"action":{s(action)},"actor":{s(actor)},"details":{details_json},'
        f'"role":{s(role)},"scenario":{s(scenario)},"seq":{int(seq)},'
        f'"subject":{s(subject)},"time":{s(time)}}}'
    ).encode()


def json_str(value: Any) -> str:
    if type(value) is str:
        return _encode_str(value)
    # A stored field that is not text (None, or a tampered cell) still hashes to
    # something deterministic; it will simply not match.
    return json.dumps(value, ensure_ascii=False, default=repr)


def event_leaf(ev: AuditEvent, seq: int | None = None) -> bytes:
    return leaf_hash(
        event_bytes(
            ev.seq if seq is None else seq,
            ev.time,
            ev.actor,
            ev.role,
            ev.action,
            ev.subject,
            ev.scenario,
            ev.details,
        )
    )


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # how event times are stored (UTC; sorts as text)


def now_iso() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def stored_time(text: str) -> str:
    """An ISO 8601 date or time (``Z`` allowed; no zone means UTC) in the stored format,
    to compare with event times; ValueError if it is not one."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def check_details(details: dict[str, Any] | None) -> str:
    """Canonical JSON of the details, or ValueError if they could carry data values."""
    details = {} if details is None else details
    if not isinstance(details, dict):
        raise ValueError("audit details must be a dict")
    _check_value(details, "details")
    text = canonical_json(details)
    if len(text) > _MAX_DETAILS:
        raise ValueError("audit details are too large")
    return text


def _check_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int | float):
        if isinstance(value, float) and value != value:  # NaN; canonical_json refuses inf
            raise ValueError(f"{where}: NaN is not allowed")
        return
    if isinstance(value, str):
        if len(value) > _MAX_STRING:
            raise ValueError(f"{where}: string longer than {_MAX_STRING} characters")
        return
    if isinstance(value, dict | list | tuple):
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ValueError(f"{where}: keys must be strings")
                low = k.lower()
                count = isinstance(v, int) and not isinstance(v, bool)
                if (
                    low in _FORBIDDEN_KEYS
                    or low.startswith("exact")
                    or (low in _COUNT_ONLY_KEYS and not count)
                ):
                    raise ValueError(
                        f"{where}: key {k!r} is refused; audit details never carry data "
                        "values or exact aggregates"
                    )
                _check_value(v, f"{where}.{k}")
        else:
            for i, v in enumerate(value):
                _check_value(v, f"{where}[{i}]")
        if where != "details" and len(canonical_json(value)) > _MAX_BLOB:
            raise ValueError(f"{where}: nested value larger than {_MAX_BLOB} bytes")
        return
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON scalar, list or object")


def append(
    conn: store.Connection,
    *,
    actor: str,
    role: str,
    action: str,
    subject: str = "",
    scenario: str | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """Append one event INSIDE the caller's ``store.transaction``; return its seq."""
    if not conn.in_transaction:
        raise RuntimeError("audit.append must run inside store.transaction(conn)")
    if not _ACTION_RE.match(action):
        raise ValueError(f"malformed audit action {action!r} (expected 'noun.verb')")
    details_json = check_details(details)
    scenario = scenario or None
    last = conn.execute(
        "SELECT seq, chain_hash FROM audit_events ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    seq = 1 if last is None else int(last[0]) + 1
    prev_chain = ZERO_HASH if last is None else bytes(last[1])
    time = now_iso()
    leaf = leaf_hash(event_bytes(seq, time, actor, role, action, subject, scenario, details_json))
    chain = hashlib.sha256(prev_chain + leaf).digest()
    conn.execute(
        "INSERT INTO audit_events (seq, time, actor, role, action, subject, scenario, details,"
        " leaf_hash, chain_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, time, actor, role, action, subject, scenario, details_json, leaf, chain),
    )
    return seq


def events(
    conn: store.Connection,
    *,
    action: str | None = None,
    actor: str | None = None,
    scenario: str | None = None,
    since_seq: int = 0,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[AuditEvent]:
    """Stored events, filtered (for ``sandbox audit show`` and reports)."""
    where: list[str] = ["seq > ?"]
    args: list[Any] = [since_seq]
    for column, value in (("action", action), ("actor", actor), ("scenario", scenario)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = f"SELECT {EVENT_COLUMNS} FROM audit_events WHERE {' AND '.join(where)} ORDER BY seq"
    sql += " DESC" if newest_first else ""
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [row_event(r) for r in conn.execute(sql, args)]


EVENT_COLUMNS = "seq, time, actor, role, action, subject, scenario, details, leaf_hash, chain_hash"


def row_event(r: Any) -> AuditEvent:
    return AuditEvent(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], bytes(r[8]), bytes(r[9]))


def iter_log(conn: store.Connection) -> Iterator[AuditEvent]:
    # Plain tuples (no Row objects) straight into AuditEvent: this is the hot loop of
    # verification. A cell of the wrong type (tampering) simply fails to match.
    cur = conn.cursor()
    cur.row_factory = None
    cur.execute(f"SELECT {EVENT_COLUMNS} FROM audit_events ORDER BY seq")
    make = AuditEvent._make
    while True:
        batch = cur.fetchmany(4096)
        if not batch:
            return
        yield from map(make, batch)


@dataclass
class EventSource:
    rows: Iterator[AuditEvent]
    checkpoints: list[dict[str, Any]]
    prefix_size: int = 0
    prefix: Frontier = field(default_factory=Frontier)
    prefix_chain: bytes = ZERO_HASH
    public_key_pem: str | None = None
