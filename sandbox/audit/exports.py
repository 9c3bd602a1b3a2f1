"""What of the audit log leaves the host: exports (JSONL or CSV), read back for
verification, and checkpoints pushed to a witness.

An export holds a header (format, the audit public key PEM and its key id), a
``prefix`` record, the events from the chosen start on (with their leaf and chain
hashes), and every signed checkpoint. An export that starts after entry 1 carries in
its prefix the Merkle frontier of entries 1..first-1 (the roots of its perfect
subtrees) and the chain hash before its first entry, so every later signed root can
still be recomputed; those signed roots authenticate the frontier.

A **witness** is somewhere the host cannot rewrite: every new checkpoint is appended,
as one JSON line, to ``SANDBOX_AUDIT_WITNESS_FILE`` (a path outside the sandbox home,
e.g. an append-only mount of another machine) and/or POSTed as JSON to
``SANDBOX_AUDIT_WITNESS_URL``. ``sandbox audit verify --checkpoint FILE`` checks the
log against what the witness holds (docs/audit.md).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sandbox import store
from sandbox.audit.checkpointing import checkpoints, log_size
from sandbox.audit.log import (
    CHECKPOINT_FORMAT,
    EVENT_COLUMNS,
    EXPORT_FORMAT,
    ZERO_HASH,
    AuditEvent,
    EventSource,
    canonical_json,
    now_iso,
    row_event,
    stored_time,
)
from sandbox.audit.merkle import Frontier
from sandbox.errors import BadInput
from sandbox.signing import key_id, public_key_pem

__all__ = [
    "export_log",
    "parse_since",
    "push_checkpoint",
    "read_checkpoints",
    "read_export",
    "witness_record",
]

log = logging.getLogger("sandbox.audit")
WITNESS_TIMEOUT_S = 5.0

_CSV_COLUMNS = [
    "record", "seq", "time", "actor", "role", "action", "subject", "scenario", "details",
    "leaf_hash", "chain_hash", "tree_size", "root_hash", "key_id", "signature", "extra",
]  # fmt: skip


def parse_since(since: str | None) -> str | None:
    """An ISO date or time, as the stored time format (UTC) for comparison."""
    if not since:
        return None
    try:
        return stored_time(since)
    except ValueError as exc:
        raise BadInput(
            "--since must be an ISO date or date-time.",
            hint="For example 2026-11-01 or 2026-11-01T08:00:00Z.",
        ) from exc


def export_log(
    conn: store.Connection,
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
    n = log_size(conn)
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
        f"SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq >= ? ORDER BY seq", (first,)
    )
    count = 0
    if fmt == "jsonl":
        out.write(json.dumps({"record": "header", **header}, ensure_ascii=False) + "\n")
        out.write(json.dumps({"record": "prefix", **prefix}) + "\n")
        for r in rows:
            out.write(
                json.dumps({"record": "event", **row_event(r).to_dict()}, ensure_ascii=False) + "\n"
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
            ev = row_event(r)
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


def read_export(path: Path) -> EventSource:
    """Read an export file (JSONL or CSV) for ``audit.verify``."""
    with path.open(encoding="utf-8") as fh:
        head = fh.read(1)
    if head == "{":
        return _read_jsonl(path)
    return _read_csv(path)


def _read_jsonl(path: Path) -> EventSource:
    cps: list[dict[str, Any]] = []
    src = EventSource(iter(()), cps)
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


def _read_csv(path: Path) -> EventSource:
    cps: list[dict[str, Any]] = []
    src = EventSource(iter(()), cps)
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


def witness_record(cp: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint as a witness keeps it: the signed fields and the format name."""
    fields = ("tree_size", "root_hash", "time", "key_id", "signature")
    return {"format": CHECKPOINT_FORMAT, **{k: cp[k] for k in fields}}


def check_witness(file: Path | None, url: str, home: Path) -> None:
    """Refuse a witness file inside the sandbox home (whoever rewrites the database
    could rewrite it too) and a URL that is not http(s)."""
    if url and not url.startswith(("http://", "https://")):
        raise BadInput(
            "SANDBOX_AUDIT_WITNESS_URL must be an http:// or https:// URL.",
            hint="For example https://witness.example/checkpoints.",
        )
    if file is not None and file.resolve().is_relative_to(home.resolve()):
        raise BadInput(
            "SANDBOX_AUDIT_WITNESS_FILE is inside SANDBOX_HOME; a witness must be out of "
            "reach of whoever can write the database.",
            hint="Point it at another disk or machine (an append-only mount).",
        )


def push_checkpoint(cp: dict[str, Any], *, file: Path | None, url: str) -> list[str]:
    """Send one new checkpoint to the witness file and/or URL; what failed (for the log).

    The file gets one JSON line, appended and flushed to disk; the URL a POST of the
    JSON with a 2xx answer expected within WITNESS_TIMEOUT_S. A failure is logged and
    returned, never raised: the job that triggered the checkpoint has already finished.
    """
    line = canonical_json(witness_record(cp))
    failed: list[str] = []
    if file is not None:
        try:
            fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            failed.append(f"file ({type(exc).__name__})")
    if url and not url.startswith(("http://", "https://")):
        failed.append("url (not http or https)")
    elif url:
        request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
            url,
            data=line.encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=WITNESS_TIMEOUT_S) as resp:  # noqa: S310
                if not 200 <= resp.status < 300:
                    failed.append(f"url (HTTP {resp.status})")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failed.append(f"url ({type(exc).__name__})")
    for what in failed:
        log.error("audit witness: checkpoint %s not delivered to the %s", cp["tree_size"], what)
    return failed


def read_checkpoints(path: Path) -> list[dict[str, Any]]:
    """Checkpoints held elsewhere: a JSON object or list, or JSON lines (a witness file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"Cannot read checkpoints from {path}.") from exc
    try:
        items: Any = json.loads(text)
    except ValueError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise BadInput(f"{path} holds neither JSON nor JSON lines.") from exc
    items = items if isinstance(items, list) else [items]
    if not all(isinstance(c, dict) and "tree_size" in c for c in items):
        raise BadInput(f"{path} holds something other than checkpoints.")
    return list(items)


def export(
    conn: store.Connection,
    out: Any,
    *,
    since: str | None = None,
    fmt: str = "jsonl",
    public_key: Ed25519PublicKey | None = None,
) -> dict[str, Any]:
    """Write the events from ``since`` on, every checkpoint and the public key to ``out``
    (see ``export_log``); returns first_seq, last_seq, entries, checkpoints."""
    return export_log(conn, out, since=since, fmt=fmt, public_key=public_key)
