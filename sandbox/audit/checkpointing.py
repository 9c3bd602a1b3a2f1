"""Signed checkpoints: the tree head signed with the audit key, after every job's final
transition, every ``checkpoint_every`` events and on shutdown."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import store
from sandbox.audit.log import CHECKPOINT_FORMAT, AuditInvalid, canonical_json, now_iso
from sandbox.audit.merkle import (
    Frontier,
)
from sandbox.signing import key_id


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


def checkpoint(conn: store.Connection, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign the current tree head (joins the caller's transaction, or opens one)."""
    if conn.in_transaction:
        return _checkpoint(conn, key)
    with store.transaction(conn):
        return _checkpoint(conn, key)


def maybe_checkpoint(
    conn: store.Connection,
    key: Ed25519PrivateKey,
    every: int,
    *,
    final_actions: frozenset[str] = frozenset(),
) -> dict[str, Any] | None:
    """Sign a checkpoint if ``every`` or more events came since the last one, or if one
    of them is in ``final_actions`` (a job's final transition); the new checkpoint."""
    n = log_size(conn)
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


def _checkpoint(conn: store.Connection, key: Ed25519PrivateKey) -> dict[str, Any]:
    n = log_size(conn)
    last = conn.execute(
        "SELECT * FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1"
    ).fetchone()
    if last is not None and last["tree_size"] == n:
        return checkpoint_dict(last)
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


def checkpoint_dict(row: store.Row) -> dict[str, Any]:
    return {k: row[k] for k in ("tree_size", "root_hash", "time", "signature", "key_id")}


def log_size(conn: store.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()[0])


def checkpoints(conn: store.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM audit_checkpoints ORDER BY tree_size").fetchall()
    return [checkpoint_dict(r) for r in rows]
