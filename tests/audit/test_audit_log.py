from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import audit, signing, store
from sandbox.errors import BadInput, NotFound

ACTIONS = ["job.submitted", "job.compiled", "job.budget_reserved", "job.running", "job.noised"]


def make_log(
    path: Path, n: int, *, every: int = 10, key: Ed25519PrivateKey | None = None
) -> tuple[sqlite3.Connection, Ed25519PrivateKey]:
    """A log of n events, checkpointed every ``every`` (as the server does)."""
    conn = store.connect(path / "sandbox.db")
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


def forge(conn: sqlite3.Connection, seq: int, prev_chain: bytes, **fields: Any) -> bytes:
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


def renumber(conn: sqlite3.Connection, from_seq: int, delta: int) -> None:
    """Shift the seq of every entry >= from_seq by delta (two steps: seq is the key)."""
    conn.execute("UPDATE audit_events SET seq = -(seq + ?) WHERE seq >= ?", (delta, from_seq))
    conn.execute("UPDATE audit_events SET seq = -seq WHERE seq < 0")


def chain_at(conn: sqlite3.Connection, seq: int) -> bytes:
    if seq == 0:
        return audit.ZERO_HASH
    return bytes(
        conn.execute("SELECT chain_hash FROM audit_events WHERE seq=?", (seq,)).fetchone()[0]
    )


def rehash_from(conn: sqlite3.Connection, seq: int) -> None:
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


def problem(conn: sqlite3.Connection, key: Ed25519PrivateKey) -> audit.Problem:
    report = audit.verify(conn, key.public_key())
    assert not report.ok
    assert report.problem is not None
    return report.problem


# ---------------------------------------------------------------- appending


def test_append_assigns_gap_free_seq_and_verifies(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 45, every=10)
    rows = audit.events(conn)
    assert [e.seq for e in rows] == list(range(1, 46))
    assert json.loads(rows[0].details) == {
        "n": 1,
        "epsilon": 0.5,
        "flags": ["small_cell"],
        "name": "县 ü",
    }
    assert [c["tree_size"] for c in audit.checkpoints(conn)] == [10, 20, 30, 40]
    report = audit.verify(conn, key.public_key())
    assert report.ok, report.problem
    assert (report.entries, report.roots_checked, report.signed_size) == (45, 4, 40)
    assert "5 entries after the last signed checkpoint" in report.warnings[0]


def test_leaf_hash_is_rfc6962_over_canonical_json(tmp_path: Path) -> None:
    conn, _ = make_log(tmp_path, 3)
    ev = audit.events(conn)[1]
    obj = {
        "seq": ev.seq,
        "time": ev.time,
        "actor": ev.actor,
        "role": ev.role,
        "action": ev.action,
        "subject": ev.subject,
        "scenario": ev.scenario,
        "details": json.loads(ev.details),
    }
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert ev.leaf_hash == hashlib.sha256(b"\x00" + canonical.encode()).digest()
    leaves = [e.leaf_hash for e in audit.events(conn)]
    left = hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).digest()
    assert audit.merkle_root(leaves) == hashlib.sha256(b"\x01" + left + leaves[2]).digest()


def test_append_outside_a_transaction_is_refused(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "db.sqlite")
    with pytest.raises(RuntimeError, match="inside store.transaction"):
        audit.append(conn, actor="a", role="admin", action="key.created")
    with store.transaction(conn), pytest.raises(ValueError, match="noun.verb"):
        audit.append(conn, actor="a", role="admin", action="Drop Table")


@pytest.mark.parametrize(
    "details",
    [
        {"exact": 12},
        {"exact_sum": 3.5},
        {"values": [1, 2]},
        {"value": 7},
        {"rows": [[1, "a"]]},
        {"outputs": {"result": [1, 2, 3]}},
        {"blob": list(range(500))},
        {"sql": "x" * 5000},
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": b"bytes"},
    ],
)
def test_details_that_could_carry_data_are_refused(tmp_path: Path, details: dict) -> None:
    conn = store.connect(tmp_path / "db.sqlite")
    with pytest.raises(ValueError), store.transaction(conn):
        audit.append(conn, actor="system", role="system", action="job.noised", details=details)
    assert audit.events(conn) == []  # the transaction rolled back


def test_counts_and_small_lists_are_allowed_in_details(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "db.sqlite")
    with store.transaction(conn):
        seq = audit.append(
            conn,
            actor="system",
            role="system",
            action="job.noised",
            details={
                "rows": 12,
                "flags": ["small_cell", "dominance"],
                "limits": {"memory_mb": 2048, "cpus": 2.0},
            },
        )
    assert seq == 1
    assert json.loads(audit.events(conn)[0].details)["rows"] == 12


def test_concurrent_writers_keep_a_gap_free_sequence(tmp_path: Path) -> None:
    db = tmp_path / "sandbox.db"
    key = signing.load_or_create(tmp_path / "keys", "audit")
    store.connect(db).close()
    errors: list[BaseException] = []
    seqs: list[int] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        conn = store.connect(db)
        try:
            for i in range(40):
                with store.transaction(conn):
                    seq = audit.append(
                        conn, actor=f"w{w}", role="system", action="job.running", subject=f"{w}-{i}"
                    )
                    audit.maybe_checkpoint(conn, key, 16)
                with lock:
                    seqs.append(seq)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(seqs) == list(range(1, 161))
    conn = store.connect(db)
    assert [e.seq for e in audit.events(conn)] == list(range(1, 161))
    report = audit.verify(conn, key.public_key())
    assert report.ok and report.signed_size == 160


CRASH_SCRIPT = textwrap.dedent("""
    import sys, time
    from sandbox import audit, store
    conn = store.connect(sys.argv[1])
    mode = sys.argv[2]
    i = 0
    while True:
        i += 1
        with store.transaction(conn):
            conn.execute("INSERT INTO demo_state (id) VALUES (?)", (f"s-{i}",))
            if mode == "hang":
                print("changed", flush=True)
                time.sleep(60)
            audit.append(conn, actor="system", role="system", action="job.running",
                         subject=f"s-{i}")
            if mode == "hang-after":
                print("appended", flush=True)
                time.sleep(60)
        if i == 50:
            print("going", flush=True)
""")


def _crash(tmp_path: Path, mode: str, wait_for: str, delay: float = 0.0) -> sqlite3.Connection:
    db = tmp_path / "sandbox.db"
    conn = store.connect(db)
    conn.execute("CREATE TABLE demo_state (id TEXT PRIMARY KEY)")
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == wait_for
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return conn


def _assert_both_or_neither(conn: sqlite3.Connection) -> int:
    states = {r[0] for r in conn.execute("SELECT id FROM demo_state")}
    subjects = {e.subject for e in audit.events(conn)}
    assert states == subjects
    assert [e.seq for e in audit.events(conn)] == list(range(1, len(subjects) + 1))
    return len(states)


def test_kill_between_state_change_and_event_leaves_neither(tmp_path: Path) -> None:
    conn = _crash(tmp_path, "hang", "changed")
    assert _assert_both_or_neither(conn) == 0


def test_kill_after_event_before_commit_leaves_neither(tmp_path: Path) -> None:
    conn = _crash(tmp_path, "hang-after", "appended")
    assert _assert_both_or_neither(conn) == 0


def test_kill_at_a_random_moment_leaves_both_or_neither(tmp_path: Path) -> None:
    conn = _crash(tmp_path, "loop", "going", delay=0.3)
    assert _assert_both_or_neither(conn) >= 50
    key = signing.load_or_create(tmp_path / "keys", "audit")
    audit.checkpoint(conn, key)
    assert audit.verify(conn, key.public_key()).ok


# ---------------------------------------------------------------- tampering


def test_edited_field_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 30)
    conn.execute("UPDATE audit_events SET actor = 'op-huaxin' WHERE seq = 17")
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("altered", 17)


def test_edited_details_are_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 30)
    conn.execute("""UPDATE audit_events SET details = '{"epsilon":0.1}' WHERE seq = 4""")
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("altered", 4)


def test_deleted_entry_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 30)
    conn.execute("DELETE FROM audit_events WHERE seq = 12")
    p = problem(conn, key)
    assert (p.kind, p.seq, p.other_seq) == ("missing", 12, 13)


def test_deleted_and_renumbered_entry_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 30)
    conn.execute("DELETE FROM audit_events WHERE seq = 12")
    renumber(conn, 13, -1)
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("missing", 12)


def test_inserted_entry_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 30)
    renumber(conn, 8, +1)
    forge(conn, 8, chain_at(conn, 7))
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("inserted", 8)


def test_inserted_entry_with_a_bad_hash_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 30)
    renumber(conn, 8, +1)
    forge(conn, 8, chain_at(conn, 7))
    conn.execute("UPDATE audit_events SET leaf_hash = ? WHERE seq = 8", (bytes(32),))
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("inserted", 8)


def test_entry_appended_with_a_broken_chain_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 30)
    forge(conn, 31, bytes(32))
    p = problem(conn, key)
    assert (p.kind, p.seq) == ("chain_broken", 31)


@pytest.mark.parametrize("a,b", [(3, 8), (14, 15), (2, 29)])
def test_reordered_entries_are_named(tmp_path: Path, a: int, b: int) -> None:
    conn, key = make_log(tmp_path, 30)
    conn.execute("UPDATE audit_events SET seq = -1 WHERE seq = ?", (a,))
    conn.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", (a, b))
    conn.execute("UPDATE audit_events SET seq = ? WHERE seq = -1", (b,))
    p = problem(conn, key)
    assert (p.kind, p.seq, p.other_seq) == ("reordered", a, b)


def test_truncated_tail_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 35)
    conn.execute("DELETE FROM audit_events WHERE seq > 22")
    p = problem(conn, key)
    assert (p.kind, p.seq, p.tree_size) == ("truncated", 23, 30)


def test_replaced_checkpoint_signature_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 35)
    other = conn.execute("SELECT signature FROM audit_checkpoints WHERE tree_size=10").fetchone()
    conn.execute("UPDATE audit_checkpoints SET signature = ? WHERE tree_size = 20", (other[0],))
    p = problem(conn, key)
    assert (p.kind, p.tree_size) == ("bad_signature", 20)


def test_swapped_public_key_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 25)
    other = Ed25519PrivateKey.generate()
    p = problem(conn, other)
    assert p.kind == "wrong_key"
    assert signing.key_id(other) in p.message


def test_checkpoint_resigned_with_another_key_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 25)
    attacker = Ed25519PrivateKey.generate()
    row = conn.execute("SELECT * FROM audit_checkpoints WHERE tree_size = 20").fetchone()
    msg = audit.checkpoint_message(20, row["root_hash"], row["time"], signing.key_id(attacker))
    conn.execute(
        "UPDATE audit_checkpoints SET key_id = ?, signature = ? WHERE tree_size = 20",
        (signing.key_id(attacker), attacker.sign(msg).hex()),
    )
    p = problem(conn, key)
    assert (p.kind, p.tree_size) == ("wrong_key", 20)


def test_rewrite_with_recomputed_hashes_is_caught_by_the_signed_root(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 35)
    conn.execute("UPDATE audit_events SET actor = 'op-huaxin' WHERE seq = 15")
    rehash_from(conn, 15)
    p = problem(conn, key)
    assert (p.kind, p.tree_size) == ("root_mismatch", 20)


def test_rewrite_resigned_with_the_real_key_is_caught_by_a_checkpoint_held_elsewhere(
    tmp_path: Path,
) -> None:
    conn, key = make_log(tmp_path, 35)
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


def test_unsigned_tail_is_reported_as_a_warning(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 20)
    forge(conn, 21, chain_at(conn, 20))  # consistent hashes, after the last checkpoint
    report = audit.verify(conn, key.public_key())
    assert report.ok
    assert report.warnings and "1 entries after the last signed checkpoint" in report.warnings[0]


# ---------------------------------------------------------------- checkpoints and proofs


def test_checkpoint_is_idempotent_and_survives_a_tampered_frontier(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 12)
    first = audit.checkpoint(conn, key)
    assert first["tree_size"] == 12
    assert audit.checkpoint(conn, key) == first
    conn.execute("UPDATE audit_checkpoints SET frontier = '[[4, \"00\"]]'")
    with store.transaction(conn):
        audit.append(conn, actor="a", role="admin", action="policy.loaded")
    cp = audit.checkpoint(conn, key)
    assert cp["root_hash"] == audit.merkle_root([e.leaf_hash for e in audit.events(conn)]).hex()
    assert audit.verify(conn, key.public_key()).ok


def test_empty_log_checkpoint_verifies(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "db.sqlite")
    key = Ed25519PrivateKey.generate()
    cp = audit.checkpoint(conn, key)
    assert cp["tree_size"] == 0
    assert cp["root_hash"] == hashlib.sha256(b"").hexdigest()
    report = audit.verify(conn, key.public_key())
    assert report.ok and report.roots_checked == 1


def test_inclusion_proofs_verify_for_every_entry(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 37, every=100)
    audit.checkpoint(conn, key)
    for seq in range(1, 38):
        proof = audit.prove(conn, seq)
        assert proof["tree_size"] == 37
        assert audit.verify_proof(proof, key.public_key()), seq
        assert audit.verify_proof(proof, signing.public_key_pem(key))


def test_inclusion_proof_against_an_older_checkpoint(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 25, every=10)
    proof = audit.prove(conn, 7, tree_size=10)
    assert proof["tree_size"] == 10 and audit.verify_proof(proof, key.public_key())
    assert audit.prove(conn, 7)["tree_size"] == 20  # the latest covering checkpoint
    with pytest.raises(NotFound):
        audit.prove(conn, 23)  # no checkpoint covers it yet
    with pytest.raises(NotFound):
        audit.prove(conn, 99)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: p["event"].update(actor="op-huaxin"),
        lambda p: p["event"]["details"].update(n=999),
        lambda p: p.update(seq=p["seq"] + 1),
        lambda p: p["audit_path"].__setitem__(0, "00" * 32),
        lambda p: p["audit_path"].pop(),
        lambda p: p["checkpoint"].update(root_hash="11" * 32),
        lambda p: p["checkpoint"].update(tree_size=19, time="2030-01-01T00:00:00Z"),
        lambda p: p["checkpoint"].update(signature="00" * 64),
        lambda p: p.pop("event"),
    ],
)
def test_tampered_inclusion_proof_fails(tmp_path: Path, tamper: Any) -> None:
    conn, key = make_log(tmp_path, 20, every=20)
    proof = audit.prove(conn, 6)
    assert audit.verify_proof(proof, key.public_key())
    tamper(proof)
    assert not audit.verify_proof(proof, key.public_key())


def test_inclusion_proof_fails_with_another_key(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 20, every=20)
    proof = audit.prove(conn, 6)
    assert not audit.verify_proof(proof, Ed25519PrivateKey.generate().public_key())


def test_prove_refuses_a_log_that_no_longer_matches_its_checkpoint(tmp_path: Path) -> None:
    conn, _ = make_log(tmp_path, 20, every=20)
    conn.execute("UPDATE audit_events SET actor = 'x' WHERE seq = 3")
    rehash_from(conn, 3)
    with pytest.raises(audit.AuditInvalid):
        audit.prove(conn, 5)


def test_consistency_between_checkpoints(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 45, every=10)
    for old in (10, 20, 30):
        proof = audit.prove_consistency(conn, old)
        assert proof["new"]["tree_size"] == 40
        assert audit.verify_consistency(proof, key.public_key())
    proof = audit.prove_consistency(conn, 10, 30)
    proof["old"]["root_hash"] = audit.checkpoints(conn)[1]["root_hash"]
    assert not audit.verify_consistency(proof, key.public_key())


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_round_trip_verifies(tmp_path: Path, fmt: str) -> None:
    conn, key = make_log(tmp_path, 33)
    audit.checkpoint(conn, key)
    out = tmp_path / f"audit.{fmt}"
    with out.open("w", encoding="utf-8", newline="") as fh:
        summary = audit.export(conn, fh, fmt=fmt, public_key=key.public_key())
    assert summary == {
        "first_seq": 1,
        "last_seq": 33,
        "entries": 33,
        "checkpoints": 4,
        "format": fmt,
    }
    report = audit.verify(out, key.public_key())
    assert report.ok, report.problem
    assert (report.entries, report.roots_checked, report.signed_size) == (33, 4, 33)
    # Without a key given, the export's own key is used, with a warning.
    report = audit.verify(out, None)
    assert report.ok and "inside the export" in report.warnings[0]
    assert not audit.verify(out, Ed25519PrivateKey.generate().public_key()).ok


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_since_a_time_carries_the_frontier_and_verifies(tmp_path: Path, fmt: str) -> None:
    conn, key = make_log(tmp_path, 13)
    time.sleep(0.01)
    since = audit.now_iso()
    time.sleep(0.01)
    make_log(tmp_path, 20, key=key)  # 20 more in the same database
    audit.checkpoint(conn, key)
    buf = io.StringIO()
    summary = audit.export(conn, buf, since=since, fmt=fmt, public_key=key.public_key())
    assert (summary["first_seq"], summary["entries"]) == (14, 20)
    out = tmp_path / f"since.{fmt}"
    out.write_text(buf.getvalue(), encoding="utf-8")
    report = audit.verify(out, key.public_key())
    assert report.ok, report.problem
    assert (report.first_seq, report.last_seq) == (14, 33)
    # roots of every checkpoint after the cut (20, 30, 33) are recomputed from the frontier
    assert report.roots_checked == 3


def test_tampered_export_is_named(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 25)
    out = tmp_path / "audit.jsonl"
    with out.open("w", encoding="utf-8") as fh:
        audit.export(conn, fh, public_key=key.public_key())
    lines = out.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[2 + 8])  # header, prefix, then events 1..
    assert rec["seq"] == 9
    rec["details"]["epsilon"] = 0.01
    lines[2 + 8] = json.dumps(rec, ensure_ascii=False)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    p = audit.verify(out, key.public_key()).problem
    assert p is not None and (p.kind, p.seq) == ("altered", 9)

    del lines[2 + 8]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    p = audit.verify(out, key.public_key()).problem
    assert p is not None and (p.kind, p.seq) == ("missing", 9)

    lines[2 + 8] = lines[2 + 8].replace('"leaf_hash": "', '"leaf_hash": "zz')
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    p = audit.verify(out, key.public_key()).problem
    assert p is not None and p.kind == "malformed"


def test_export_rejects_a_non_export_and_a_bad_since(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 3)
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"hello": 1}\n')
    with pytest.raises(BadInput):
        audit.verify(bad, key.public_key())
    with pytest.raises(BadInput):
        audit.export(conn, io.StringIO(), since="yesterday")
    with pytest.raises(BadInput):
        audit.export(conn, io.StringIO(), fmt="xml")


def test_an_export_reserialised_by_another_tool_still_verifies(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 25)
    buf = io.StringIO()
    audit.export(conn, buf, public_key=key.public_key())
    compact = [
        json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=True)
        for line in buf.getvalue().splitlines()
    ]
    out = tmp_path / "compact.jsonl"
    out.write_text("\n".join(compact) + "\n\n", encoding="utf-8")
    report = audit.verify(out, key.public_key())
    assert report.ok and report.entries == 25 and report.roots_checked == 2


def test_a_log_without_checkpoints_warns_that_nothing_is_signed(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 5, every=100)
    report = audit.verify(conn, key.public_key())
    assert report.ok and report.signed_size == 0
    assert any("no signed checkpoint" in w for w in report.warnings)


# ---------------------------------------------------------------- the tail (issue 22)


def test_a_final_transition_is_checkpointed_at_once(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 12, every=100)
    final = frozenset({"job.released", "job.failed"})
    assert audit.maybe_checkpoint(conn, key, 100, final_actions=final) is None
    with store.transaction(conn):
        audit.append(conn, actor="system", role="system", action="job.failed", subject="j-1")
    cp = audit.maybe_checkpoint(conn, key, 100, final_actions=final)
    assert cp is not None and cp["tree_size"] == 13
    assert audit.maybe_checkpoint(conn, key, 100, final_actions=final) is None  # nothing new


def test_entries_after_the_last_checkpoint_are_counted_unverified(tmp_path: Path) -> None:
    conn, key = make_log(tmp_path, 23)
    conn.execute("UPDATE audit_events SET subject = 'j-other' WHERE seq = 22")
    rehash_from(conn, 22)
    report = audit.verify(conn, key.public_key())
    assert report.ok and report.signed_size == 20 and report.unsigned_entries == 3
    assert report.to_dict()["unsigned_entries"] == 3


def test_deleted_checkpoints_and_rewritten_history_fail_when_a_signature_is_required(
    tmp_path: Path,
) -> None:
    conn, key = make_log(tmp_path, 25)
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


def _written_actions() -> set[str]:
    """Every action the code can write: string literals "x.y" passed as an action
    outside the vocabulary itself, plus one job.<state> per state of the machine."""
    import ast

    from sandbox.jobs import State

    root = Path(audit.__file__).resolve().parent.parent  # sandbox/
    found = {f"job.{s.value}" for s in State}
    for path in root.rglob("*.py"):
        if path.relative_to(root).as_posix() in ("audit/log.py", "reports.py"):
            continue  # the vocabulary, and a reader of it
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call):
                args = [kw.value for kw in node.keywords if kw.arg == "action"] + node.args
                found |= {
                    c.value
                    for a in args
                    for c in ast.walk(a)  # also both arms of `"x.a" if ... else "x.b"`
                    if isinstance(c, ast.Constant) and c.value in audit.ACTIONS
                }
    return found


def test_every_documented_action_is_written_by_the_code() -> None:
    assert set(audit.ACTIONS) - _written_actions() == set()


def test_docs_audit_md_lists_exactly_the_vocabulary() -> None:
    doc = (Path(audit.__file__).resolve().parents[2] / "docs" / "audit.md").read_text("utf-8")
    table = doc.split("### The event vocabulary", 1)[1].split("\n\n", 2)[1]
    named = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", "\n".join(
        line.split("|")[1] for line in table.splitlines() if line.startswith("| `")
    )))  # fmt: skip
    assert named == set(audit.ACTIONS)
