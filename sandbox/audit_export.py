"""Audit log exports (JSONL or CSV) and reading them back for verification.

An export holds a header (format, the audit public key PEM and its key id), a
``prefix`` record, the events from the chosen start on (with their leaf and chain
hashes), and every signed checkpoint. An export that starts after entry 1 carries in
its prefix the Merkle frontier of entries 1..first-1 (the roots of its perfect
subtrees) and the chain hash before its first entry, so every later signed root can
still be recomputed; those signed roots authenticate the frontier.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sandbox.audit import (
    _COLUMNS,
    EXPORT_FORMAT,
    ZERO_HASH,
    AuditEvent,
    _row_event,
    _size,
    _Source,
    canonical_json,
    checkpoints,
    now_iso,
)
from sandbox.errors import BadInput
from sandbox.keys import key_id, public_key_pem
from sandbox.merkle import Frontier

__all__ = ["export_log", "parse_since", "read_export"]

_CSV_COLUMNS = [
    "record", "seq", "time", "actor", "role", "action", "subject", "scenario", "details",
    "leaf_hash", "chain_hash", "tree_size", "root_hash", "key_id", "signature", "extra",
]  # fmt: skip


def parse_since(since: str | None) -> str | None:
    """An ISO date or time, as the stored time format (UTC) for comparison."""
    if not since:
        return None
    try:
        when = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadInput(
            "--since must be an ISO date or date-time.",
            hint="For example 2026-11-01 or 2026-11-01T08:00:00Z.",
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def export_log(
    conn: sqlite3.Connection,
    out: io.TextIOBase | Any,
    *,
    since: str | None = None,
    fmt: str = "jsonl",
    public_key: Ed25519PublicKey | None = None,
) -> dict[str, Any]:
    """Write the events from ``since`` on, every checkpoint and the public key.

    An export that starts after entry 1 carries the Merkle frontier (the roots of the
    perfect subtrees of entries 1..first-1) and the chain hash before its first entry,
    so every later signed root can still be recomputed; the signed roots authenticate
    the frontier. Returns a summary (first_seq, last_seq, entries, checkpoints).
    """
    if fmt not in ("jsonl", "csv"):
        raise BadInput("--format must be jsonl or csv.")
    since_time = parse_since(since)
    n = _size(conn)
    first = 1
    if since_time is not None:
        row = conn.execute(
            "SELECT MIN(seq) FROM audit_events WHERE time >= ?", (since_time,)
        ).fetchone()
        first = int(row[0]) if row[0] is not None else n + 1
    prefix_size = first - 1
    frontier = Frontier()
    chain = ZERO_HASH
    for leaf, ch in conn.execute(
        "SELECT leaf_hash, chain_hash FROM audit_events WHERE seq <= ? ORDER BY seq",
        (prefix_size,),
    ):
        frontier.add(bytes(leaf))
        chain = bytes(ch)
    cps = checkpoints(conn)
    header = {
        "format": EXPORT_FORMAT,
        "exported_at": now_iso(),
        "since": since_time,
        "first_seq": first,
        "last_seq": n,
        "key_id": key_id(public_key) if public_key else (cps[-1]["key_id"] if cps else None),
        "public_key_pem": public_key_pem(public_key).decode() if public_key else None,
    }
    prefix = {"tree_size": prefix_size, "frontier": frontier.to_json(), "chain_hash": chain.hex()}
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM audit_events WHERE seq >= ? ORDER BY seq", (first,)
    )
    count = 0
    if fmt == "jsonl":
        out.write(json.dumps({"record": "header", **header}, ensure_ascii=False) + "\n")
        out.write(json.dumps({"record": "prefix", **prefix}) + "\n")
        for r in rows:
            out.write(
                json.dumps({"record": "event", **_row_event(r).to_dict()}, ensure_ascii=False)
                + "\n"
            )
            count += 1
        for c in cps:
            out.write(json.dumps({"record": "checkpoint", **c}) + "\n")
    else:
        w = csv.DictWriter(out, fieldnames=_CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerow({"record": "header", "extra": json.dumps(header, ensure_ascii=False)})
        w.writerow(
            {
                "record": "prefix",
                "tree_size": prefix_size,
                "chain_hash": chain.hex(),
                "extra": json.dumps(frontier.to_json()),
            }
        )
        for r in rows:
            ev = _row_event(r)
            w.writerow(
                {
                    "record": "event",
                    "seq": ev.seq,
                    "time": ev.time,
                    "actor": ev.actor,
                    "role": ev.role,
                    "action": ev.action,
                    "subject": ev.subject,
                    "scenario": ev.scenario or "",
                    "details": ev.details,
                    "leaf_hash": ev.leaf_hash.hex(),
                    "chain_hash": ev.chain_hash.hex(),
                }
            )
            count += 1
        for c in cps:
            w.writerow({"record": "checkpoint", **c})
    return {
        "first_seq": first,
        "last_seq": n,
        "entries": count,
        "checkpoints": len(cps),
        "format": fmt,
    }


_EVENT_PREFIX = '{"record": "event"'


def read_export(path: Path) -> _Source:
    """Read an export file (JSONL or CSV) for ``audit.verify``."""
    with path.open(encoding="utf-8") as fh:
        head = fh.read(1)
    if head == "{":
        return _read_jsonl(path)
    return _read_csv(path)


def _read_jsonl(path: Path) -> _Source:
    cps: list[dict[str, Any]] = []
    src = _Source(iter(()), cps)
    with path.open(encoding="utf-8") as fh:
        first = json.loads(fh.readline())
        if first.get("record") != "header" or first.get("format") != EXPORT_FORMAT:
            raise ValueError("not an audit export")
        src.public_key_pem = first.get("public_key_pem")
        # Checkpoints come after the events: collect them in a first pass that skips
        # our own event lines without parsing them (any other line is parsed).
        for line in fh:
            if line.startswith(_EVENT_PREFIX) or not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("record") == "checkpoint":
                cps.append(rec)
            elif rec.get("record") == "prefix":
                src.prefix_size = int(rec["tree_size"])
                src.prefix = Frontier.from_json(rec["frontier"])
                src.prefix_chain = bytes.fromhex(rec["chain_hash"])
                if src.prefix.size != src.prefix_size:
                    raise ValueError("prefix frontier does not cover its tree size")

    def rows() -> Iterator[AuditEvent]:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.startswith(_EVENT_PREFIX):
                    if not line.strip():
                        continue
                    d = json.loads(line)
                    if d.get("record") != "event":
                        continue
                else:
                    d = json.loads(line)
                yield AuditEvent(
                    int(d["seq"]),
                    d["time"],
                    d["actor"],
                    d["role"],
                    d["action"],
                    d["subject"],
                    d["scenario"],
                    canonical_json(d["details"]),
                    bytes.fromhex(d["leaf_hash"]),
                    bytes.fromhex(d["chain_hash"]),
                )

    src.rows = rows()
    return src


def _read_csv(path: Path) -> _Source:
    cps: list[dict[str, Any]] = []
    src = _Source(iter(()), cps)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != _CSV_COLUMNS:
            raise ValueError("not an audit export")
        for rec in reader:
            kind = rec["record"]
            if kind == "header":
                header = json.loads(rec["extra"])
                if header.get("format") != EXPORT_FORMAT:
                    raise ValueError("not an audit export")
                src.public_key_pem = header.get("public_key_pem")
            elif kind == "prefix":
                src.prefix_size = int(rec["tree_size"])
                src.prefix = Frontier.from_json(json.loads(rec["extra"]))
                src.prefix_chain = bytes.fromhex(rec["chain_hash"])
                if src.prefix.size != src.prefix_size:
                    raise ValueError("prefix frontier does not cover its tree size")
            elif kind == "checkpoint":
                cps.append(
                    {k: rec[k] for k in ("tree_size", "root_hash", "time", "signature", "key_id")}
                )

    def rows() -> Iterator[AuditEvent]:
        with path.open(encoding="utf-8", newline="") as fh:
            for rec in csv.DictReader(fh):
                if rec["record"] != "event":
                    continue
                yield AuditEvent(
                    int(rec["seq"]),
                    rec["time"],
                    rec["actor"],
                    rec["role"],
                    rec["action"],
                    rec["subject"],
                    rec["scenario"] or None,
                    canonical_json(json.loads(rec["details"])),
                    bytes.fromhex(rec["leaf_hash"]),
                    bytes.fromhex(rec["chain_hash"]),
                )

    src.rows = rows()
    return src
