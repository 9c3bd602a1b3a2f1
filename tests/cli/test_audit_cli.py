from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from sandbox import audit, signing, store
from sandbox.cli import app
from sandbox.settings import Settings

runner = CliRunner()


@pytest.fixture()
def home(settings: Settings) -> Path:
    """A home with 30 audit events (checkpoints every 10) and the audit key."""
    conn = store.connect(settings.db_path)
    key = signing.load_or_create(settings.keys_dir, "audit")
    for i in range(1, 31):
        with store.transaction(conn):
            audit.append(
                conn,
                actor="op-jinshu",
                role="operator",
                action="job.refused" if i % 5 == 0 else "job.submitted",
                subject=f"j-{i:03d}",
                scenario="employment-income",
                details={"code": "NO_AGGREGATE"} if i % 5 == 0 else {"sql_sha256": "ab" * 32},
            )
            audit.maybe_checkpoint(conn, key, 10)
    conn.close()
    return settings.home


def run(home: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result.exit_code, result.stdout


def test_verify_ok_and_tampered(home: Path) -> None:
    code, out = run(home, "audit", "verify", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] and report["entries"] == 30 and report["signed_size"] == 30

    conn = store.connect(home / "sandbox.db")
    conn.execute("UPDATE audit_events SET subject = 'j-999' WHERE seq = 21")
    conn.close()
    code, out = run(home, "audit", "verify", "--json")
    assert code == 1
    err = json.loads(out)["error"]
    assert err["code"] == "AUDIT_INVALID"
    assert err["problem"] == {"kind": "altered", "seq": 21, "message": err["problem"]["message"]}
    assert "Entry 21" in err["message"]


def test_verify_with_the_wrong_public_key_fails(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(signing.public_key_pem(Ed25519PrivateKey.generate()))
    code, out = run(home, "audit", "verify", "--public-key", str(other), "--json")
    assert code == 1
    assert json.loads(out)["error"]["problem"]["kind"] == "wrong_key"


def test_prove_and_verify_proof(home: Path, tmp_path: Path) -> None:
    code, out = run(home, "audit", "prove", "7")
    assert code == 0
    proof = json.loads(out)
    assert proof["seq"] == 7 and proof["tree_size"] == 30
    path = tmp_path / "proof.json"
    path.write_text(out)
    pub = str(home / "keys" / "audit.pub")
    code, out = run(home, "audit", "verify-proof", str(path), "--public-key", pub, "--json")
    assert code == 0 and json.loads(out) == {
        "ok": True,
        "format": audit.PROOF_FORMAT,
        "seq": 7,
        "tree_size": 30,
    }
    proof["event"]["actor"] = "op-huaxin"
    path.write_text(json.dumps(proof))
    code, out = run(home, "audit", "verify-proof", str(path), "--public-key", pub, "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "AUDIT_INVALID"
    code, _ = run(home, "audit", "prove", "999", "--json")
    assert code == 2


def test_consistency_proof_round_trip(home: Path, tmp_path: Path) -> None:
    code, out = run(home, "audit", "consistency", "10", "30")
    assert code == 0
    path = tmp_path / "consistency.json"
    path.write_text(out)
    code, out = run(home, "audit", "verify-proof", str(path), "--json")
    assert code == 0 and json.loads(out)["format"] == audit.CONSISTENCY_FORMAT


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_and_verify_export(home: Path, tmp_path: Path, fmt: str) -> None:
    out_file = tmp_path / f"audit.{fmt}"
    code, out = run(home, "audit", "export", "--format", fmt, "--out", str(out_file), "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert (summary["first_seq"], summary["entries"]) == (1, 30)
    pub = str(home / "keys" / "audit.pub")
    code, out = run(
        home, "audit", "verify", "--export", str(out_file), "--public-key", pub, "--json"
    )
    assert code == 0, out
    assert json.loads(out)["entries"] == 30
    # The export itself was audited (after the export was written).
    code, out = run(home, "audit", "show", "--action", "audit.exported", "--json")
    assert [e["details"]["entries"] for e in json.loads(out)] == [30]


def test_export_refuses_a_bad_since(home: Path) -> None:
    code, out = run(home, "audit", "export", "--since", "last tuesday", "--json")
    assert code == 2 and json.loads(out)["error"]["code"] == "BAD_REQUEST"


def test_show_filters_and_checkpoint(home: Path) -> None:
    code, out = run(home, "audit", "show", "--action", "job.refused", "--limit", "4", "--json")
    assert code == 0
    assert [e["seq"] for e in json.loads(out)] == [15, 20, 25, 30]
    code, out = run(home, "audit", "show", "--checkpoints", "--json")
    assert [c["tree_size"] for c in json.loads(out)] == [10, 20, 30]
    conn = store.connect(home / "sandbox.db")
    with store.transaction(conn):
        audit.append(conn, actor="a", role="admin", action="policy.loaded")
    conn.close()
    code, out = run(home, "audit", "checkpoint", "--json")
    assert code == 0 and json.loads(out)["tree_size"] == 31


def test_report_json_and_text(home: Path) -> None:
    code, out = run(home, "report", "--operator", "op-jinshu", "--json")
    assert code == 0
    rep = json.loads(out)
    [g] = rep["groups"]
    assert g["jobs"]["submitted"] == 30 and g["refusals_by_code"] == {"NO_AGGREGATE": 6}
    code, out = run(home, "report")
    assert code == 0 and "op-jinshu" in out and "Alerts" in out


def test_the_installed_command_writes_a_proof_to_stdout(home: Path, tmp_path: Path) -> None:
    proof = subprocess.run(
        [
            str(Path(sys.executable).with_name("sandbox")),
            "--home",
            str(home),
            "audit",
            "prove",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert audit.verify_proof(json.loads(proof), home / "keys" / "audit.pub")


def test_checkpoints_held_elsewhere_catch_a_deleted_tail(home: Path, tmp_path: Path) -> None:
    code, out = run(home, "audit", "show", "--checkpoints", "--json")
    held = tmp_path / "held.json"
    held.write_text(out)
    conn = store.connect(home / "sandbox.db")
    conn.execute("DELETE FROM audit_events WHERE seq > 12")
    conn.execute("DELETE FROM audit_checkpoints WHERE tree_size > 12")
    conn.close()
    code, out = run(home, "audit", "verify", "--json")
    assert code == 3  # consistent on its own; entries 11-12 after the last checkpoint unsigned
    assert json.loads(out)["unsigned_entries"] == 2
    code, out = run(home, "audit", "verify", "--checkpoint", str(held), "--json")
    assert code == 1
    problem = json.loads(out)["error"]["problem"]
    assert (problem["kind"], problem["seq"], problem["tree_size"]) == ("truncated", 13, 20)


# --- the tail after the last checkpoint (issue 22) -----------------------------------


def _rehash_from(conn: Any, seq: int) -> None:
    """Recompute leaf and chain hashes from ``seq`` on, as an attacker on the host can."""
    import hashlib

    row = conn.execute("SELECT chain_hash FROM audit_events WHERE seq = ?", (seq - 1,)).fetchone()
    chain = bytes(row[0]) if row else audit.ZERO_HASH
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


def _append(home: Path, n: int) -> None:
    conn = store.connect(home / "sandbox.db")
    for i in range(n):
        with store.transaction(conn):
            audit.append(conn, actor="op-jinshu", role="operator", action="job.submitted",
                         subject=f"j-tail-{i}", details={"sql_sha256": "cd" * 32})  # fmt: skip
    conn.close()


def test_an_edit_after_the_last_checkpoint_is_reported_unverified(home: Path) -> None:
    _append(home, 3)  # entries 31..33, after the checkpoint at 30
    conn = store.connect(home / "sandbox.db")
    conn.execute("UPDATE audit_events SET subject = 'j-other' WHERE seq = 32")
    _rehash_from(conn, 32)
    conn.close()
    code, out = run(home, "audit", "verify", "--json")
    assert code == 3, out
    report = json.loads(out)
    assert report["ok"] and report["signed_size"] == 30 and report["unsigned_entries"] == 3
    assert "entries 31..33" in report["warnings"][-1]
    code, out = run(home, "audit", "verify")
    assert code == 3 and "unverified tail" in out


def test_deleted_tail_events_are_caught_by_the_checkpoint_after_them(home: Path) -> None:
    # the server signs after every job's final transition, so the deleted events of a
    # finished job are inside a checkpoint
    _append(home, 2)
    conn = store.connect(home / "sandbox.db")
    with store.transaction(conn):
        audit.append(conn, actor="system", role="system", action="job.released", subject="j-x")
    key = signing.load_or_create(home / "keys", "audit")
    assert audit.maybe_checkpoint(conn, key, 256, final_actions=frozenset({"job.released"}))
    conn.execute("DELETE FROM audit_events WHERE seq > 31")
    conn.close()
    code, out = run(home, "audit", "verify", "--json")
    assert code == 1
    problem = json.loads(out)["error"]["problem"]
    assert (problem["kind"], problem["tree_size"]) == ("truncated", 33)


def test_no_checkpoint_and_a_rewritten_history_fail_with_the_public_key(home: Path) -> None:
    pub = str(home / "keys" / "audit.pub")
    conn = store.connect(home / "sandbox.db")
    conn.execute("DELETE FROM audit_checkpoints")
    conn.execute("UPDATE audit_events SET actor = 'op-huaxin' WHERE seq = 5")
    _rehash_from(conn, 5)
    conn.close()
    code, out = run(home, "audit", "verify", "--public-key", pub, "--json")
    assert code == 1, out
    err = json.loads(out)["error"]
    assert err["code"] == "AUDIT_INVALID" and err["problem"]["kind"] == "unsigned"
    assert "No checkpoint verifies" in err["message"]
    code, out = run(home, "audit", "verify", "--json")  # the host's own key: not trusted
    assert code == 3 and json.loads(out)["unsigned_entries"] == 30


def test_witness_file_gets_each_checkpoint_and_verify_reads_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    witness = tmp_path / "elsewhere" / "witness.jsonl"
    witness.parent.mkdir()
    monkeypatch.setenv("SANDBOX_AUDIT_WITNESS_FILE", str(witness))
    _append(home, 2)
    code, out = run(home, "audit", "checkpoint", "--json")
    assert code == 0, out
    lines = [json.loads(line) for line in witness.read_text().splitlines()]
    assert [c["tree_size"] for c in lines] == [32]
    assert lines[0]["format"] == audit.CHECKPOINT_FORMAT
    # the host deletes the tail and the checkpoint that covered it: the witness still has it
    conn = store.connect(home / "sandbox.db")
    conn.execute("DELETE FROM audit_events WHERE seq > 30")
    conn.execute("DELETE FROM audit_checkpoints WHERE tree_size > 30")
    conn.close()
    code, out = run(home, "audit", "verify", "--json")
    assert code == 1
    assert json.loads(out)["error"]["problem"]["kind"] == "truncated"
    monkeypatch.setenv("SANDBOX_AUDIT_WITNESS_FILE", str(home / "witness.jsonl"))
    code, out = run(home, "audit", "checkpoint", "--json")
    assert code == 2 and "inside SANDBOX_HOME" in json.loads(out)["error"]["message"]
