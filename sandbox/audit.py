"""The tamper-evident audit log: append-only events, a Merkle tree, signed checkpoints.

Every action in the sandbox is one event (seq, time, actor, role, action, subject,
scenario, details). ``append`` runs inside the caller's ``store.transaction`` so a
state change and the event that records it commit together or not at all, and the
sequence number is gap-free (``BEGIN IMMEDIATE`` serialises writers).

Integrity, in the style of Certificate Transparency (RFC 6962 / RFC 9162):

- leaf hash  = SHA-256(0x00 || canonical JSON of the event)   (seq is part of it)
- interior   = SHA-256(0x01 || left || right)
- tree head  = the RFC 6962 Merkle Tree Hash over entries 1..n
- chain hash = SHA-256(previous chain hash || leaf hash) (cheap local checks; names
  the first broken link)
- checkpoint = {tree_size, root_hash, time, key_id} signed with the bureau's Ed25519
  audit key, written after every job's final transition, every ``checkpoint_every``
  events and on shutdown (and pushed to a witness off the host, sandbox/audit_export.py).

``verify`` recomputes every leaf, the chain and the root at every checkpoint, checks
every signature, and reports the FIRST problem by kind and sequence number. Entries
after the last signed checkpoint are protected by the hash chain only (whoever can
write the database can rewrite them and recompute the chain): the report counts them
as ``unsigned_entries``, and with ``require_signed`` a log with entries but no
checkpoint that verifies fails.
``prove`` gives an inclusion proof that a third party checks with the public key alone
(``verify_proof``); ``prove_consistency`` shows that an older signed tree head is a
prefix of a newer one. The event vocabulary is ``ACTIONS`` (docs/audit.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring as _encode_str
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sandbox import store
from sandbox.errors import BadInput, NotFound, SystemFailure
from sandbox.keys import key_id, load_public_key
from sandbox.merkle import (
    Frontier,
    audit_path,
    check_consistency,
    consistency_path,
    leaf_hash,
    merkle_root,
    root_from_path,
)

__all__ = [
    "ACTIONS",
    "AuditEvent",
    "AuditInvalid",
    "Problem",
    "VerifyReport",
    "append",
    "checkpoint",
    "checkpoints",
    "events",
    "export",
    "maybe_checkpoint",
    "prove",
    "prove_consistency",
    "verify",
    "verify_consistency",
    "verify_proof",
]

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
# actions the code writes (tests/test_audit.py checks the source and docs/audit.md).
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


# --------------------------------------------------------------------------- hashing


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
    s = _json_str
    return (
        f'{{"action":{s(action)},"actor":{s(actor)},"details":{details_json},'
        f'"role":{s(role)},"scenario":{s(scenario)},"seq":{int(seq)},'
        f'"subject":{s(subject)},"time":{s(time)}}}'
    ).encode()


def _json_str(value: Any) -> str:
    if type(value) is str:
        return _encode_str(value)
    # A stored field that is not text (None, or a tampered cell) still hashes to
    # something deterministic; it will simply not match.
    return json.dumps(value, ensure_ascii=False, default=repr)


def _event_leaf(ev: AuditEvent, seq: int | None = None) -> bytes:
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


# --------------------------------------------------------------------------- writing


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    conn: sqlite3.Connection,
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


def checkpoint_message(tree_size: int, root_hash: str, time: str, kid: str) -> bytes:
    """The exact bytes an audit checkpoint signature covers."""
    return canonical_json(
        {
            "format": CHECKPOINT_FORMAT,
            "key_id": kid,
            "root_hash": root_hash,
            "time": time,
            "tree_size": tree_size,
        }
    ).encode()


def checkpoint(conn: sqlite3.Connection, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign the current tree head (joins the caller's transaction, or opens one)."""
    if conn.in_transaction:
        return _checkpoint(conn, key)
    with store.transaction(conn):
        return _checkpoint(conn, key)


def maybe_checkpoint(
    conn: sqlite3.Connection,
    key: Ed25519PrivateKey,
    every: int,
    *,
    final_actions: frozenset[str] = frozenset(),
) -> dict[str, Any] | None:
    """Sign a checkpoint if ``every`` or more events came since the last one, or if one
    of them is in ``final_actions`` (a job's final transition); the new checkpoint."""
    n = _size(conn)
    last = conn.execute("SELECT MAX(tree_size) FROM audit_checkpoints").fetchone()[0] or 0
    if n <= last:
        return None
    if n - last >= max(1, every):
        return checkpoint(conn, key)
    if final_actions:
        marks = ",".join("?" * len(final_actions))
        hit = conn.execute(
            f"SELECT 1 FROM audit_events WHERE seq > ? AND action IN ({marks}) LIMIT 1",
            (last, *sorted(final_actions)),
        ).fetchone()
        if hit is not None:
            return checkpoint(conn, key)
    return None


def _checkpoint(conn: sqlite3.Connection, key: Ed25519PrivateKey) -> dict[str, Any]:
    n = _size(conn)
    last = conn.execute(
        "SELECT * FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1"
    ).fetchone()
    if last is not None and last["tree_size"] == n:
        return _checkpoint_dict(last)
    frontier = Frontier()
    start = 0
    if last is not None:
        # Resume from the last checkpoint's frontier, but only if it still leads to the
        # root that was signed; otherwise recompute from every leaf.
        stored = Frontier.from_json(json.loads(last["frontier"]))
        if stored.size == last["tree_size"] and stored.root().hex() == last["root_hash"]:
            frontier, start = stored, last["tree_size"]
    count = start
    for (leaf,) in conn.execute(
        "SELECT leaf_hash FROM audit_events WHERE seq > ? AND seq <= ? ORDER BY seq", (start, n)
    ):
        frontier.add(bytes(leaf))
        count += 1
    if count != n:
        raise AuditInvalid("The audit log has a gap; run 'sandbox audit verify'.")
    time = now_iso()
    kid = key_id(key)
    root = frontier.root().hex()
    signature = key.sign(checkpoint_message(n, root, time, kid)).hex()
    conn.execute(
        "INSERT INTO audit_checkpoints (tree_size, root_hash, time, key_id, signature, frontier)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (n, root, time, kid, signature, json.dumps(frontier.to_json())),
    )
    return {"tree_size": n, "root_hash": root, "time": time, "signature": signature, "key_id": kid}


def _checkpoint_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in ("tree_size", "root_hash", "time", "signature", "key_id")}


def _size(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()[0])


# --------------------------------------------------------------------------- reading


def events(
    conn: sqlite3.Connection,
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
    sql = f"SELECT {_COLUMNS} FROM audit_events WHERE {' AND '.join(where)} ORDER BY seq"
    sql += " DESC" if newest_first else ""
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [_row_event(r) for r in conn.execute(sql, args)]


def checkpoints(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM audit_checkpoints ORDER BY tree_size").fetchall()
    return [_checkpoint_dict(r) for r in rows]


_COLUMNS = "seq, time, actor, role, action, subject, scenario, details, leaf_hash, chain_hash"


def _row_event(r: Any) -> AuditEvent:
    return AuditEvent(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], bytes(r[8]), bytes(r[9]))


def _iter_db(conn: sqlite3.Connection) -> Iterator[AuditEvent]:
    # Plain tuples (no Row objects) straight into AuditEvent: this is the hot loop of
    # verification. A cell of the wrong type (tampering) simply fails to match.
    cur = conn.cursor()
    cur.row_factory = None
    cur.execute(f"SELECT {_COLUMNS} FROM audit_events ORDER BY seq")
    make = AuditEvent._make
    while True:
        batch = cur.fetchmany(4096)
        if not batch:
            return
        yield from map(make, batch)


# --------------------------------------------------------------------------- verifying


@dataclass
class Problem:
    """The first thing that does not verify. ``kind`` is one of KINDS."""

    kind: str
    message: str
    seq: int | None = None
    tree_size: int | None = None
    other_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


KINDS = {
    "altered": "the entry's content does not match its leaf hash",
    "missing": "an entry is missing (a gap in the sequence)",
    "inserted": "an entry was inserted (later entries renumbered)",
    "reordered": "two entries were swapped",
    "chain_broken": "the hash chain does not link at this entry",
    "root_mismatch": "a signed root does not match the entries (rewritten with new hashes)",
    "truncated": "the log is shorter than a signed checkpoint",
    "bad_signature": "a checkpoint signature does not verify",
    "wrong_key": "the checkpoints were not signed by the given public key",
    "unsigned": "the log has entries but no checkpoint that verifies with the given key",
    "malformed": "the export or a record in it could not be read",
}


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    first_seq: int
    last_seq: int
    checkpoints: int
    roots_checked: int
    signed_size: int
    key_id: str
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)
    # entries after the last signed checkpoint: chained, but not signed (not verified)
    unsigned_entries: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["problem"] = self.problem.to_dict() if self.problem else None
        return d


@dataclass
class _Source:
    rows: Iterator[AuditEvent]
    checkpoints: list[dict[str, Any]]
    prefix_size: int = 0
    prefix: Frontier = field(default_factory=Frontier)
    prefix_chain: bytes = ZERO_HASH
    public_key_pem: str | None = None


def verify(
    source: sqlite3.Connection | Path | str,
    public_key: Ed25519PublicKey | Path | str | bytes | None,
    *,
    trusted_checkpoints: list[dict[str, Any]] | None = None,
    require_signed: bool = False,
) -> VerifyReport:
    """Recompute everything in a live log (a connection) or an export file.

    ``trusted_checkpoints`` are signed checkpoints kept elsewhere (e.g. from an older
    export or a witness); they are checked against the log like its own.
    ``public_key=None`` is only allowed for an export, and then uses the key inside the
    export (a warning says so). ``require_signed``: a log with entries and no checkpoint
    that verifies with the key fails (problem ``unsigned``) instead of warning: deleting
    the checkpoint table and rewriting history with recomputed hashes leaves exactly that.
    """
    warnings: list[str] = []
    if isinstance(source, sqlite3.Connection):
        src = _Source(_iter_db(source), checkpoints(source))
    else:
        try:
            from sandbox.audit_export import read_export

            src = read_export(Path(source))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise BadInput(
                "The file is not a readable audit export.", code="AUDIT_INVALID"
            ) from exc
    if public_key is None:
        if src.public_key_pem is None:
            raise BadInput("A public key is needed to verify the audit log.")
        warnings.append(
            "verified with the public key inside the export itself: this shows the export "
            "is consistent, not that the bureau signed it; pass --public-key"
        )
        public_key = src.public_key_pem.encode()
    if not isinstance(public_key, Ed25519PublicKey):
        public_key = load_public_key(public_key)
    cps = {int(c["tree_size"]): c for c in src.checkpoints}
    for c in trusted_checkpoints or []:
        size = int(c["tree_size"])
        if size in cps and cps[size]["root_hash"] != c["root_hash"]:
            cps[-size - 1] = c  # keep both; verification decides which one lies
        else:
            cps.setdefault(size, c)
    ordered = sorted(cps.values(), key=lambda c: int(c["tree_size"]))
    try:
        report = _verify_stream(src, ordered, public_key, require_signed=require_signed)
    except (ValueError, KeyError, TypeError) as exc:
        # A record that cannot even be read (bad hex, missing field) in an export.
        report = VerifyReport(
            ok=False,
            entries=0,
            first_seq=src.prefix_size + 1,
            last_seq=src.prefix_size,
            checkpoints=len(ordered),
            roots_checked=0,
            signed_size=0,
            key_id=key_id(public_key),
            problem=Problem(
                "malformed", f"A record in the export could not be read ({type(exc).__name__})."
            ),
        )
    report.warnings = warnings + report.warnings
    return report


def _verify_stream(
    src: _Source, cps: list[dict[str, Any]], public_key: Ed25519PublicKey, *, require_signed: bool
) -> VerifyReport:
    kid = key_id(public_key)
    report = VerifyReport(
        ok=True,
        entries=0,
        first_seq=src.prefix_size + 1,
        last_seq=src.prefix_size,
        checkpoints=len(cps),
        roots_checked=0,
        signed_size=0,
        key_id=kid,
    )

    def fail(problem: Problem) -> VerifyReport:
        report.ok = False
        report.problem = problem
        return report

    if cps and all(c.get("key_id") != kid for c in cps):
        return fail(
            Problem(
                "wrong_key",
                f"No checkpoint was signed by the given key {kid}; "
                f"they name key {cps[0].get('key_id')}.",
                tree_size=int(cps[0]["tree_size"]),
            )
        )
    ci = 0

    def check_cp(c: dict[str, Any], root: bytes | None) -> Problem | None:
        size = int(c["tree_size"])
        if c.get("key_id") != kid:
            return Problem(
                "wrong_key",
                f"The checkpoint at tree size {size} names key "
                f"{c.get('key_id')}, not the given key {kid}.",
                tree_size=size,
            )
        try:
            public_key.verify(
                bytes.fromhex(c["signature"]),
                checkpoint_message(size, c["root_hash"], c["time"], c["key_id"]),
            )
        except (InvalidSignature, ValueError):
            return Problem(
                "bad_signature",
                f"The signature of the checkpoint at tree size {size} does not verify.",
                tree_size=size,
            )
        if root is not None:
            report.roots_checked += 1
            if root.hex() != c["root_hash"]:
                return Problem(
                    "root_mismatch",
                    f"The signed root at tree size {size} does not "
                    f"match entries 1..{size}: an entry after the previous good "
                    "checkpoint was rewritten with recomputed hashes.",
                    tree_size=size,
                )
        report.signed_size = max(report.signed_size, size)
        return None

    # Checkpoints before the export's first entry: signatures only; at it: the prefix root.
    frontier, chain = src.prefix, src.prefix_chain
    while ci < len(cps) and int(cps[ci]["tree_size"]) <= src.prefix_size:
        at_prefix = int(cps[ci]["tree_size"]) == src.prefix_size
        problem = check_cp(cps[ci], frontier.root() if at_prefix else None)
        if problem:
            return fail(problem)
        ci += 1
    expected = src.prefix_size + 1
    rows = src.rows
    for ev in rows:
        if ev.seq != expected:
            if ev.seq > expected:
                return fail(
                    Problem(
                        "missing",
                        f"Entry {expected} is missing (the next entry is {ev.seq}).",
                        seq=expected,
                        other_seq=ev.seq,
                    )
                )
            return fail(
                Problem(
                    "reordered", f"Entry {ev.seq} appears after entry {expected - 1}.", seq=ev.seq
                )
            )
        leaf = _event_leaf(ev)
        if leaf != ev.leaf_hash:
            return fail(_classify(ev, rows))
        chain = hashlib.sha256(chain + leaf).digest()
        if chain != ev.chain_hash:
            return fail(
                Problem(
                    "chain_broken",
                    f"The hash chain breaks at entry {ev.seq}: it "
                    "or the entry before it was replaced.",
                    seq=ev.seq,
                )
            )
        frontier.add(leaf)
        report.entries += 1
        report.last_seq = ev.seq
        while ci < len(cps) and int(cps[ci]["tree_size"]) == expected:
            problem = check_cp(cps[ci], frontier.root())
            if problem:
                return fail(problem)
            ci += 1
        expected += 1
    if ci < len(cps):
        c = cps[ci]
        size = int(c["tree_size"])
        problem = check_cp(c, None)
        if problem:
            return fail(problem)
        return fail(
            Problem(
                "truncated",
                f"The log ends at entry {expected - 1} but a checkpoint signed {size} entries.",
                seq=expected,
                tree_size=size,
            )
        )
    unsigned = max(0, report.last_seq - report.signed_size)
    report.unsigned_entries = unsigned
    if require_signed and report.last_seq > 0 and report.signed_size == 0:
        return fail(
            Problem(
                "unsigned",
                f"No checkpoint verifies with the given key {kid}: none of the "
                f"{report.last_seq} entries is signed, so the log may have been rewritten "
                "with recomputed hashes (and its checkpoints deleted).",
                tree_size=0,
            )
        )
    if not cps:
        report.warnings.append("there is no signed checkpoint: nothing here is signed")
    if unsigned > 0:
        report.warnings.append(
            f"{unsigned} entries after the last signed checkpoint (entries "
            f"{report.signed_size + 1}..{report.last_seq}) are not verified: only the hash "
            "chain protects them; run 'sandbox audit checkpoint'"
        )
    return report


def _classify(bad: AuditEvent, rows: Iterator[AuditEvent]) -> Problem:
    """Name what happened at the first entry whose content does not match its hash."""
    p = bad.seq
    nxt = next(rows, None)

    def matches(ev: AuditEvent | None, seq: int) -> bool:
        return ev is not None and seq > 0 and _event_leaf(ev, seq) == ev.leaf_hash

    if matches(bad, p + 1) and matches(nxt, p):
        return Problem(
            "reordered", f"Entries {p} and {p + 1} were swapped.", seq=p, other_seq=p + 1
        )
    if matches(bad, p + 1):
        return Problem("missing", f"Entry {p} was deleted and the later entries renumbered.", seq=p)
    if matches(bad, p - 1):
        return Problem(
            "inserted", f"Entry {p - 1} was inserted; the later entries were renumbered.", seq=p - 1
        )
    if matches(nxt, p):
        return Problem(
            "inserted", f"Entry {p} was inserted; the later entries were renumbered.", seq=p
        )
    later = [nxt] if nxt is not None else []
    for ev in _chain_iter(later, rows):
        if _event_leaf(ev, p) == ev.leaf_hash and _event_leaf(bad, ev.seq) == bad.leaf_hash:
            return Problem(
                "reordered", f"Entries {p} and {ev.seq} were swapped.", seq=p, other_seq=ev.seq
            )
    return Problem("altered", f"Entry {p} does not match its hash: a field was changed.", seq=p)


def _chain_iter(first: list[AuditEvent], rest: Iterator[AuditEvent]) -> Iterator[AuditEvent]:
    yield from first
    yield from rest


# --------------------------------------------------------------------------- proofs


def _leaves(conn: sqlite3.Connection, size: int) -> list[bytes]:
    leaves = [
        bytes(r[0])
        for r in conn.execute(
            "SELECT leaf_hash FROM audit_events WHERE seq <= ? ORDER BY seq", (size,)
        )
    ]
    if len(leaves) != size:
        raise AuditInvalid("The audit log has a gap; run 'sandbox audit verify'.")
    return leaves


def _find_checkpoint(conn: sqlite3.Connection, tree_size: int | None, at_least: int) -> Any:
    if tree_size is None:
        row = conn.execute(
            "SELECT * FROM audit_checkpoints WHERE tree_size >= ? ORDER BY tree_size DESC LIMIT 1",
            (at_least,),
        ).fetchone()
        hint = "Sign one first: sandbox audit checkpoint."
    else:
        row = conn.execute(
            "SELECT * FROM audit_checkpoints WHERE tree_size = ?", (tree_size,)
        ).fetchone()
        hint = "Pick a tree size from 'sandbox audit show --checkpoints'."
    if row is None or row["tree_size"] < at_least:
        raise NotFound("No signed checkpoint covers that entry.", hint=hint)
    return row


def prove(conn: sqlite3.Connection, seq: int, tree_size: int | None = None) -> dict[str, Any]:
    """An RFC 6962 inclusion proof of entry ``seq`` against a signed checkpoint."""
    found = events(conn, since_seq=seq - 1, limit=1)
    if seq < 1 or not found or found[0].seq != seq:
        raise NotFound(f"No audit entry {seq}.")
    ev = found[0]
    cp = _find_checkpoint(conn, tree_size, seq)
    leaves = _leaves(conn, cp["tree_size"])
    if merkle_root(leaves).hex() != cp["root_hash"]:
        raise AuditInvalid(
            "The stored log does not match its signed checkpoint; run 'sandbox audit verify'."
        )
    event = ev.to_dict()
    del event["chain_hash"], event["leaf_hash"]
    return {
        "format": PROOF_FORMAT,
        "seq": seq,
        "leaf_index": seq - 1,
        "event": event,
        "leaf_hash": ev.leaf_hash.hex(),
        "tree_size": cp["tree_size"],
        "audit_path": [h.hex() for h in audit_path(seq - 1, leaves)],
        "checkpoint": _checkpoint_dict(cp),
    }


def verify_proof(proof: dict[str, Any], public_key: Ed25519PublicKey | Path | str | bytes) -> bool:
    """Check an inclusion proof with the public key alone: the event hashes to the leaf,
    the path leads to the checkpoint's root, and the checkpoint signature verifies."""
    try:
        if not isinstance(public_key, Ed25519PublicKey):
            public_key = load_public_key(public_key)
        ev, cp = proof["event"], proof["checkpoint"]
        seq, size = int(proof["seq"]), int(cp["tree_size"])
        if int(ev["seq"]) != seq or int(proof["tree_size"]) != size:
            return False
        leaf = leaf_hash(
            canonical_json(
                {
                    k: ev[k]
                    for k in (
                        "seq",
                        "time",
                        "actor",
                        "role",
                        "action",
                        "subject",
                        "scenario",
                        "details",
                    )
                }
            ).encode()
        )
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        root = root_from_path(seq - 1, size, leaf, path)
        if root is None or root.hex() != cp["root_hash"]:
            return False
        if cp["key_id"] != key_id(public_key):
            return False
        public_key.verify(
            bytes.fromhex(cp["signature"]),
            checkpoint_message(size, cp["root_hash"], cp["time"], cp["key_id"]),
        )
        return True
    except (InvalidSignature, KeyError, TypeError, ValueError):
        return False


def prove_consistency(
    conn: sqlite3.Connection, old_size: int, new_size: int | None = None
) -> dict[str, Any]:
    """An RFC 6962 consistency proof between two signed checkpoints."""
    old = _find_checkpoint(conn, old_size, 0)
    new = _find_checkpoint(conn, new_size, old_size)
    leaves = _leaves(conn, new["tree_size"])
    return {
        "format": CONSISTENCY_FORMAT,
        "old": _checkpoint_dict(old),
        "new": _checkpoint_dict(new),
        "path": [h.hex() for h in consistency_path(old["tree_size"], leaves)],
    }


def verify_consistency(
    proof: dict[str, Any], public_key: Ed25519PublicKey | Path | str | bytes
) -> bool:
    """Both checkpoints are signed by the key, and the old tree is a prefix of the new."""
    try:
        if not isinstance(public_key, Ed25519PublicKey):
            public_key = load_public_key(public_key)
        kid = key_id(public_key)
        for cp in (proof["old"], proof["new"]):
            if cp["key_id"] != kid:
                return False
            public_key.verify(
                bytes.fromhex(cp["signature"]),
                checkpoint_message(int(cp["tree_size"]), cp["root_hash"], cp["time"], cp["key_id"]),
            )
        return check_consistency(
            int(proof["old"]["tree_size"]),
            int(proof["new"]["tree_size"]),
            bytes.fromhex(proof["old"]["root_hash"]),
            bytes.fromhex(proof["new"]["root_hash"]),
            [bytes.fromhex(h) for h in proof["path"]],
        )
    except (InvalidSignature, KeyError, TypeError, ValueError):
        return False


def export(
    conn: sqlite3.Connection,
    out: Any,
    *,
    since: str | None = None,
    fmt: str = "jsonl",
    public_key: Ed25519PublicKey | None = None,
) -> dict[str, Any]:
    """Write the events from ``since`` on, every checkpoint and the public key to ``out``
    (see sandbox.audit_export); returns first_seq, last_seq, entries, checkpoints."""
    from sandbox.audit_export import export_log

    return export_log(conn, out, since=since, fmt=fmt, public_key=public_key)
