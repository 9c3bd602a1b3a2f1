"""The append-only log: gap-free sequence, canonical leaves, safe details, crashes, vocabulary."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sandbox import audit, signing, store
from tests.audit.audit_factories import (
    make_log,
)


def test_append_assigns_gap_free_seq_and_verifies(tmp_path: Path, database: Path | str) -> None:
    conn, key = make_log(tmp_path, 45, db=database, every=10)
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


def test_leaf_hash_is_rfc6962_over_canonical_json(tmp_path: Path, database: Path | str) -> None:
    conn, _ = make_log(tmp_path, 3, db=database)
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


def test_append_outside_a_transaction_is_refused(database: Path | str) -> None:
    conn = store.connect(database)
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
    conn = store.connect(tmp_path / "db.sqlite")  # refused before any SQL: one back end
    with pytest.raises(ValueError), store.transaction(conn):
        audit.append(conn, actor="system", role="system", action="job.noised", details=details)
    assert audit.events(conn) == []  # the transaction rolled back


def test_counts_and_small_lists_are_allowed_in_details(database: Path | str) -> None:
    conn = store.connect(database)
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


def test_concurrent_writers_keep_a_gap_free_sequence(tmp_path: Path, database: Path | str) -> None:
    db = database
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


def _crash(
    tmp_path: Path, db: Path | str, mode: str, wait_for: str, delay: float = 0.0
) -> store.Connection:
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


def _assert_both_or_neither(conn: store.Connection) -> int:
    states = {r[0] for r in conn.execute("SELECT id FROM demo_state")}
    subjects = {e.subject for e in audit.events(conn)}
    assert states == subjects
    assert [e.seq for e in audit.events(conn)] == list(range(1, len(subjects) + 1))
    return len(states)


def test_kill_between_state_change_and_event_leaves_neither(
    tmp_path: Path, database: Path | str
) -> None:
    conn = _crash(tmp_path, database, "hang", "changed")
    assert _assert_both_or_neither(conn) == 0


def test_kill_after_event_before_commit_leaves_neither(
    tmp_path: Path, database: Path | str
) -> None:
    conn = _crash(tmp_path, database, "hang-after", "appended")
    assert _assert_both_or_neither(conn) == 0


def test_kill_at_a_random_moment_leaves_both_or_neither(
    tmp_path: Path, database: Path | str
) -> None:
    conn = _crash(tmp_path, database, "loop", "going", delay=0.3)
    assert _assert_both_or_neither(conn) >= 50
    key = signing.load_or_create(tmp_path / "keys", "audit")
    audit.checkpoint(conn, key)
    assert audit.verify(conn, key.public_key()).ok


# ---------------------------------------------------------------- tampering


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
