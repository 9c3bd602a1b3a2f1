"""Factories for the audit tests: a log of N events, forged and re-hashed entries."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import audit, signing, store

ACTIONS = ["job.submitted", "job.compiled", "job.budget_reserved", "job.running", "job.noised"]


def make_log(
    path: Path,
    n: int,
    *,
    every: int = 10,
    key: Ed25519PrivateKey | None = None,
    db: Path | str | None = None,
) -> tuple[store.Connection, Ed25519PrivateKey]:
    """A log of n events, checkpointed every ``every`` (as the server does), in ``db``
    (the ``database`` fixture: SQLite or PostgreSQL; default: path/sandbox.db)."""
    conn = store.connect(path / "sandbox.db" if db is None else db)
    key = key or signing.load_or_create(path / "keys", "audit")
    for i in range(1, n + 1):
        with store.transaction(conn):
            audit.append(
                conn,
                actor="op-jinshu" if i % 3 else "system",
                role="operator" if i % 3 else "system",
                action=ACTIONS[i % len(ACTIONS)],
                subject=f"j-{i // 5:04d}",
                scenario="employment-income" if i % 4 else None,
                details={"n": i, "epsilon": 0.5, "flags": ["small_cell"], "name": "县 ü"},
            )
            audit.maybe_checkpoint(conn, key, every)
    return conn, key


def forge(conn: store.Connection, seq: int, prev_chain: bytes, **fields: Any) -> bytes:
    """Insert an event with self-consistent leaf and chain hashes (an attacker who knows
    the algorithm but not the key). Returns its chain hash."""
    ev: dict[str, Any] = {
        "time": "2026-01-01T00:00:00.000000Z",
        "actor": "op-evil",
        "role": "operator",
        "action": "job.submitted",
        "subject": "j-forged",
        "scenario": None,
        "details": "{}",
    }
    ev.update(fields)
    leaf = audit.leaf_hash(
        audit.event_bytes(
            seq,
            ev["time"],
            ev["actor"],
            ev["role"],
            ev["action"],
            ev["subject"],
            ev["scenario"],
            ev["details"],
        )
    )
    chain = hashlib.sha256(prev_chain + leaf).digest()
    conn.execute(
        "INSERT INTO audit_events (seq, time, actor, role, action, subject, scenario, details,"
        " leaf_hash, chain_hash) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            seq,
            ev["time"],
            ev["actor"],
            ev["role"],
            ev["action"],
            ev["subject"],
            ev["scenario"],
            ev["details"],
            leaf,
            chain,
        ),
    )
    return chain


def renumber(conn: store.Connection, from_seq: int, delta: int) -> None:
    """Shift the seq of every entry >= from_seq by delta (two steps: seq is the key)."""
    conn.execute("UPDATE audit_events SET seq = -(seq + ?) WHERE seq >= ?", (delta, from_seq))
    conn.execute("UPDATE audit_events SET seq = -seq WHERE seq < 0")


def chain_at(conn: store.Connection, seq: int) -> bytes:
    if seq == 0:
        return audit.ZERO_HASH
    return bytes(
        conn.execute("SELECT chain_hash FROM audit_events WHERE seq=?", (seq,)).fetchone()[0]
    )


def rehash_from(conn: store.Connection, seq: int) -> None:
    """Recompute leaf and chain hashes from ``seq`` on (an attacker covering tracks)."""
    chain = chain_at(conn, seq - 1)
    for ev in audit.events(conn, since_seq=seq - 1):
        leaf = audit.leaf_hash(
            audit.event_bytes(
                ev.seq, ev.time, ev.actor, ev.role, ev.action, ev.subject, ev.scenario, ev.details
            )
        )
        chain = hashlib.sha256(chain + leaf).digest()
        conn.execute(
            "UPDATE audit_events SET leaf_hash=?, chain_hash=? WHERE seq=?", (leaf, chain, ev.seq)
        )


def problem(conn: store.Connection, key: Ed25519PrivateKey) -> audit.Problem:
    report = audit.verify(conn, key.public_key())
    assert not report.ok
    assert report.problem is not None
    return report.problem


# ---------------------------------------------------------------- appending
