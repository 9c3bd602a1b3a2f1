"""Inclusion and consistency proofs a third party checks with the public key alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sandbox import store
from sandbox.audit.checkpointing import checkpoint_dict, checkpoint_message
from sandbox.audit.log import CONSISTENCY_FORMAT, PROOF_FORMAT, AuditInvalid, canonical_json, events
from sandbox.audit.merkle import (
    audit_path,
    check_consistency,
    consistency_path,
    leaf_hash,
    merkle_root,
    root_from_path,
)
from sandbox.errors import NotFound
from sandbox.signing import key_id, load_public_key

# --------------------------------------------------------------------------- proofs


def _leaves(conn: store.Connection, size: int) -> list[bytes]:
    leaves = [
        bytes(r[0])
        for r in conn.execute(
            "SELECT leaf_hash FROM audit_events WHERE seq <= ? ORDER BY seq", (size,)
        )
    ]
    if len(leaves) != size:
        raise AuditInvalid("The audit log has a gap; run 'sandbox audit verify'.")
    return leaves


def _find_checkpoint(conn: store.Connection, tree_size: int | None, at_least: int) -> Any:
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


def prove(conn: store.Connection, seq: int, tree_size: int | None = None) -> dict[str, Any]:
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
        "checkpoint": checkpoint_dict(cp),
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
    conn: store.Connection, old_size: int, new_size: int | None = None
) -> dict[str, Any]:
    """An RFC 6962 consistency proof between two signed checkpoints."""
    old = _find_checkpoint(conn, old_size, 0)
    new = _find_checkpoint(conn, new_size, old_size)
    leaves = _leaves(conn, new["tree_size"])
    return {
        "format": CONSISTENCY_FORMAT,
        "old": checkpoint_dict(old),
        "new": checkpoint_dict(new),
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
