"""Verification and checkpoints: each kind of tampering is named; signed roots; the tail."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import audit, signing, store
from tests.audit.audit_factories import (
    chain_at,
    forge,
    make_log,
    problem,
    rehash_from,
    renumber,
)


def test_edited_field_is_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 30, db=database)
    conn.execute("UPDATE audit_events SET actor = 'op-huaxin' WHERE seq = 17")
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("altered", 17)


def test_edited_details_are_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 30, db=database)
    conn.execute("""UPDATE audit_events SET details = '{"epsilon":0.1}' WHERE seq = 4""")
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("altered", 4)


def test_deleted_entry_is_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 30, db=database)
    conn.execute("DELETE FROM audit_events WHERE seq = 12")
    p = problem(conn, key)
    assert (p.kind, p.seq, p.other_seq) == ("missing", 12, 13)


def test_deleted_and_renumbered_entry_is_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 30, db=database)
    conn.execute("DELETE FROM audit_events WHERE seq = 12")
    renumber(conn, 13, -1)
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("missing", 12)


def test_inserted_entry_is_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 30, db=database)
    renumber(conn, 8, +1)
    forge(conn, 8, chain_at(conn, 7))
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("inserted", 8)


def test_inserted_entry_with_a_bad_hash_is_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 30, db=database)
    renumber(conn, 8, +1)
    forge(conn, 8, chain_at(conn, 7))
    conn.execute("UPDATE audit_events SET leaf_hash = ? WHERE seq = 8", (bytes(32),))
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("inserted", 8)


def test_entry_appended_with_a_broken_chain_is_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 30, db=database)
    forge(conn, 31, bytes(32))
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("chain_broken", 31)


@pytest.mark.parametrize("a,b", [(3, 8), (14, 15), (2, 29)])
def test_reordered_entries_are_named(tmp_path: Path, a: int, b: int, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 30, db=database)
    conn.execute("UPDATE audit_events SET seq = -1 WHERE seq = ?", (a,))
    conn.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", (a, b))
    conn.execute("UPDATE audit_events SET seq = ? WHERE seq = -1", (b,))
    p = problem(conn, key)
    assert (p.kind, p.seq, p.other_seq) == ("reordered", a, b)


def test_truncated_tail_is_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 35, db=database)
    conn.execute("DELETE FROM audit_events WHERE seq > 22")
    p = problem(conn, key)
    assert (p.kind, p.seq, p.tree_size) == ("truncated", 23, 30)


def test_replaced_checkpoint_signature_is_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 35, db=database)
    other = conn.execute("SELECT signature FROM audit_checkpoints WHERE tree_size=10").fetchone()
    conn.execute("UPDATE audit_checkpoints SET signature = ? WHERE tree_size = 20", (other[0],))
    p = problem(conn, key)
    assert (p.kind, p.tree_size) == ("bad_signature", 20)


def test_swapped_public_key_is_named(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 25, db=database)
    other = Ed25519PrivateKey.generate()
    p = problem(conn, other)
    assert p.kind == "wrong_key"
    assert signing.key_id(other) in p.message


def test_checkpoint_resigned_with_another_key_is_named(
    tmp_path: Path, database: Path | str
) -> None:
    conn, key = make_log(tmp_path, 25, db=database)
    attacker = Ed25519PrivateKey.generate()
    row = conn.execute("SELECT * FROM audit_checkpoints WHERE tree_size = 20").fetchone()
    msg = audit.checkpoint_message(20, row["root_hash"], row["time"], signing.key_id(attacker))
    conn.execute(
        "UPDATE audit_checkpoints SET key_id = ?, signature = ? WHERE tree_size = 20",
        (signing.key_id(attacker), attacker.sign(msg).hex()),
    )
    p = problem(conn, key)
    assert (p.kind, p.tree_size) == ("wrong_key", 20)


def test_rewrite_with_recomputed_hashes_is_caught_by_the_signed_root(
    tmp_path: Path, database: Path | str
) -> None:
    conn, key = make_log(tmp_path, 35, db=database)
    conn.execute("UPDATE audit_events SET actor = 'op-huaxin' WHERE seq = 15")
    rehash_from(conn, 15)
    p = problem(conn, key)
    assert (p.kind, p.tree_size) == ("root_mismatch", 20)


def test_rewrite_resigned_with_the_real_key_is_caught_by_a_checkpoint_held_elsewhere(
    tmp_path: Path, database: Path | str
) -> None:
    conn, key = make_log(tmp_path, 35, db=database)
    held = audit.checkpoints(conn)  # exported earlier, kept off the host
    # An administrator with the private key rewrites history and re-signs everything.
    conn.execute("UPDATE audit_events SET actor = 'op-huaxin' WHERE seq = 15")
    rehash_from(conn, 15)
    conn.execute("DELETE FROM audit_checkpoints")
    for size in (10, 20, 30):
        leaves = [e.leaf_hash for e in audit.events(conn, limit=size)]
        root = audit.merkle_root(leaves).hex()
        t = "2026-01-01T00:00:00.000000Z"
        sig = key.sign(audit.checkpoint_message(size, root, t, signing.key_id(key))).hex()
        conn.execute(
            "INSERT INTO audit_checkpoints VALUES (?,?,?,?,?,?)",
            (size, root, t, signing.key_id(key), sig, "[]"),
        )
    assert audit.verify(conn, key.public_key()).ok  # the local log alone cannot tell
    report = audit.verify(conn, key.public_key(), trusted_checkpoints=held)
    assert not report.ok and report.problem is not None
    assert (report.problem.kind, report.problem.tree_size) == ("root_mismatch", 20)


def test_unsigned_tail_is_reported_as_a_warning(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 20, db=database)
    forge(conn, 21, chain_at(conn, 20))  # consistent hashes, after the last checkpoint
    report = audit.verify(conn, key.public_key())
    assert report.ok
    assert report.warnings and "1 entries after the last signed checkpoint" in report.warnings[0]


# ---------------------------------------------------------------- checkpoints and proofs


def test_checkpoint_is_idempotent_and_survives_a_tampered_frontier(
    tmp_path: Path, database: Path | str
) -> None:
    conn, key = make_log(tmp_path, 12, db=database)
    first = audit.checkpoint(conn, key)
    assert first["tree_size"] == 12
    assert audit.checkpoint(conn, key) == first
    conn.execute("UPDATE audit_checkpoints SET frontier = '[[4, \"00\"]]'")
    with store.transaction(conn):
        audit.append(conn, actor="a", role="admin", action="policy.loaded")
    cp = audit.checkpoint(conn, key)
    assert cp["root_hash"] == audit.merkle_root([e.leaf_hash for e in audit.events(conn)]).hex()
    assert audit.verify(conn, key.public_key()).ok


def test_empty_log_checkpoint_verifies(tmp_path: Path, database: Path | str) -> None:
    conn = store.connect(database)
    key = Ed25519PrivateKey.generate()
    cp = audit.checkpoint(conn, key)
    assert cp["tree_size"] == 0
    assert cp["root_hash"] == hashlib.sha256(b"").hexdigest()
    report = audit.verify(conn, key.public_key())
    assert report.ok and report.roots_checked == 1


def test_a_log_without_checkpoints_warns_that_nothing_is_signed(
    tmp_path: Path, database: Path | str
) -> None:
    conn, key = make_log(tmp_path, 5, db=database, every=100)
    report = audit.verify(conn, key.public_key())
    assert report.ok and report.signed_size == 0
    assert any("no signed checkpoint" in w for w in report.warnings)


# ---------------------------------------------------------------- the tail (issue 22)


def test_a_final_transition_is_checkpointed_at_once(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 12, db=database, every=100)
    final = frozenset({"job.released", "job.failed"})
    assert audit.maybe_checkpoint(conn, key, 100, final_actions=final) is None
    with store.transaction(conn):
        audit.append(conn, actor="system", role="system", action="job.failed", subject="j-1")
    cp = audit.maybe_checkpoint(conn, key, 100, final_actions=final)
    assert cp is not None and cp["tree_size"] == 13
    assert audit.maybe_checkpoint(conn, key, 100, final_actions=final) is None  # nothing new


def test_entries_after_the_last_checkpoint_are_counted_unverified(
    tmp_path: Path, database: Path | str
) -> None:
    conn, key = make_log(tmp_path, 23, db=database)
    conn.execute("UPDATE audit_events SET subject = 'j-other' WHERE seq = 22")
    rehash_from(conn, 22)
    report = audit.verify(conn, key.public_key())
    assert report.ok and report.signed_size == 20 and report.unsigned_entries == 3
    assert report.to_dict()["unsigned_entries"] == 3


def test_deleted_checkpoints_and_rewritten_history_fail_when_a_signature_is_required(
    tmp_path: Path, database: Path | str
) -> None:
    conn, key = make_log(tmp_path, 25, db=database)
    conn.execute("DELETE FROM audit_checkpoints")
    conn.execute("UPDATE audit_events SET actor = 'op-huaxin' WHERE seq = 3")
    rehash_from(conn, 3)
    assert audit.verify(conn, key.public_key()).ok  # alone, the log cannot tell
    report = audit.verify(conn, key.public_key(), require_signed=True)
    assert not report.ok and report.problem is not None
    assert report.problem.kind == "unsigned" and report.unsigned_entries == 25
    empty = store.connect(tmp_path / "empty.db")
    assert audit.verify(empty, key.public_key(), require_signed=True).ok  # nothing to sign


# ---------------------------------------------------------------- the vocabulary
