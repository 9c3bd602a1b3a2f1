"""Inclusion and consistency proofs against signed checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import audit, signing
from sandbox.errors import NotFound
from tests.audit.audit_factories import (
    make_log,
    rehash_from,
)


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
