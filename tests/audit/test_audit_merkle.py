from __future__ import annotations

import hashlib

from sandbox.audit import merkle


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, written straight from the definition."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


LEAVES = [merkle.leaf_hash(str(i).encode()) for i in range(40)]


def test_leaf_and_node_hashes_use_domain_separation() -> None:
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    a, b = LEAVES[0], LEAVES[1]
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()


def test_streaming_root_equals_the_definition_at_every_size() -> None:
    f = merkle.Frontier()
    assert f.root() == mth([])
    for n in range(1, 40):
        f.add(LEAVES[n - 1])
        assert f.root() == mth(LEAVES[:n]) == merkle.merkle_root(LEAVES[:n])
        assert merkle.Frontier.from_json(f.to_json()).root() == f.root()
        assert f.size == n


def test_inclusion_paths_verify_and_fail_when_altered() -> None:
    for n in range(1, 34):
        root = mth(LEAVES[:n])
        for i in range(n):
            path = merkle.audit_path(i, LEAVES[:n])
            assert merkle.root_from_path(i, n, LEAVES[i], path) == root
            assert merkle.root_from_path(i, n, LEAVES[(i + 1) % 40], path) != root
            if path:
                assert merkle.root_from_path(i, n, LEAVES[i], path[:-1]) != root
                assert merkle.root_from_path(i, n, LEAVES[i], [bytes(32), *path[1:]]) != root
        assert merkle.root_from_path(n, n, LEAVES[0], []) is None


def test_consistency_proofs_verify_and_fail_for_a_different_history() -> None:
    for n in range(1, 34):
        for m in range(1, n + 1):
            path = merkle.consistency_path(m, LEAVES[:n])
            assert merkle.check_consistency(m, n, mth(LEAVES[:m]), mth(LEAVES[:n]), path)
            if m < n:
                other = mth(LEAVES[1 : m + 1])
                assert not merkle.check_consistency(m, n, other, mth(LEAVES[:n]), path)
                assert not merkle.check_consistency(m, n, mth(LEAVES[:m]), LEAVES[0], path)
