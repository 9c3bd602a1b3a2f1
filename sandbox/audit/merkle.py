"""Merkle tree hashing in the style of Certificate Transparency (RFC 6962 / RFC 9162).

- leaf hash  = SHA-256(0x00 || leaf data)
- interior   = SHA-256(0x01 || left || right)
- MTH(D[n])  = the root over n leaves, split at the largest power of two below n
- inclusion paths (PATH) and consistency proofs (PROOF), and their verification as
  specified in RFC 9162 §2.1.3.2 and §2.1.4.2.

``Frontier`` keeps the roots of the perfect subtrees over the leaves seen so far, so
roots at any size come out of one streaming pass (verifying a million entries never
holds the tree in memory). Pure functions of bytes: no database, no keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "Frontier",
    "audit_path",
    "check_consistency",
    "consistency_path",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "root_from_path",
]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Frontier:
    """The roots of the perfect subtrees covering leaves 1..n (a compact range).

    Appending is O(1) amortised; the RFC 6962 root of the n leaves is the right fold of
    the frontier, so roots at every checkpoint come out of one streaming pass.
    """

    def __init__(self, nodes: list[tuple[int, bytes]] | None = None) -> None:
        self.nodes: list[tuple[int, bytes]] = list(nodes or [])

    @property
    def size(self) -> int:
        return sum(s for s, _ in self.nodes)

    def add(self, leaf: bytes) -> None:
        nodes = self.nodes
        size, h = 1, leaf
        while nodes and nodes[-1][0] == size:
            left_size, left = nodes.pop()
            h = node_hash(left, h)
            size += left_size
        nodes.append((size, h))

    def root(self) -> bytes:
        if not self.nodes:
            return hashlib.sha256(b"").digest()
        h = self.nodes[-1][1]
        for _, left in reversed(self.nodes[:-1]):
            h = node_hash(left, h)
        return h

    def to_json(self) -> list[list[Any]]:
        return [[s, h.hex()] for s, h in self.nodes]

    @classmethod
    def from_json(cls, data: Iterable[Iterable[Any]]) -> Frontier:
        nodes = []
        for item in data:
            s, h = list(item)
            nodes.append((int(s), bytes.fromhex(str(h))))
        return cls(nodes)


def merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH over a list of leaf hashes."""
    f = Frontier()
    for leaf in leaves:
        f.add(leaf)
    return f.root()


def _largest_pow2_below(n: int) -> int:
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def _subtree(leaves: list[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return leaves[lo]
    k = _largest_pow2_below(hi - lo)
    return node_hash(_subtree(leaves, lo, lo + k), _subtree(leaves, lo + k, hi))


def audit_path(index: int, leaves: list[bytes], lo: int = 0, hi: int | None = None) -> list[bytes]:
    """RFC 6962 PATH(m, D[lo:hi]): the sibling hashes from leaf ``index`` up to the root."""
    hi = len(leaves) if hi is None else hi
    if hi - lo <= 1:
        return []
    k = _largest_pow2_below(hi - lo)
    if index < k:
        return audit_path(index, leaves, lo, lo + k) + [_subtree(leaves, lo + k, hi)]
    return audit_path(index - k, leaves, lo + k, hi) + [_subtree(leaves, lo, lo + k)]


def root_from_path(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes | None:
    """RFC 9162 §2.1.3.2: the root an inclusion path leads to, or None if malformed."""
    if index >= size or index < 0:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def consistency_path(old: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PROOF(m, D[n]) for m = ``old`` and n = len(leaves)."""

    def sub(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [_subtree(leaves, lo, hi)]
        k = _largest_pow2_below(n)
        if m <= k:
            return sub(m, lo, lo + k, whole) + [_subtree(leaves, lo + k, hi)]
        return sub(m - k, lo + k, hi, False) + [_subtree(leaves, lo, lo + k)]

    if old <= 0 or old > len(leaves):
        return []
    return sub(old, 0, len(leaves), True)


def check_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, path: list[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree of size ``old`` a prefix of the tree of size ``new``?"""
    if old == 0:
        return True
    if old > new:
        return False
    if old == new:
        return not path and old_root == new_root
    if old & (old - 1) == 0:
        path = [old_root, *path]
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
