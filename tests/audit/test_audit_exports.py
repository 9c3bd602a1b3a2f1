"""Exports: round trips verify, a since-export carries its frontier, tampering is named."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import audit
from sandbox.errors import BadInput
from tests.audit.audit_factories import (
    make_log,
)


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
