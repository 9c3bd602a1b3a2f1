"""``verify``: every leaf, the chain and the root at every checkpoint recomputed, every
signature checked, the FIRST problem reported by kind and sequence number."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sandbox import store
from sandbox.audit.checkpointing import checkpoint_message, checkpoints
from sandbox.audit.exports import read_export
from sandbox.audit.log import AuditEvent, EventSource, event_leaf, iter_log
from sandbox.errors import BadInput
from sandbox.signing import key_id, load_public_key

# --------------------------------------------------------------------------- verifying


@dataclass
class Problem:
    """The first thing that does not verify. ``kind`` is one of KINDS."""

    kind: str
    message: str
    seq: int | None = None
    tree_size: int | None = None
    other_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


KINDS = {
    "altered": "the entry's content does not match its leaf hash",
    "missing": "an entry is missing (a gap in the sequence)",
    "inserted": "an entry was inserted (later entries renumbered)",
    "reordered": "two entries were swapped",
    "chain_broken": "the hash chain does not link at this entry",
    "root_mismatch": "a signed root does not match the entries (rewritten with new hashes)",
    "truncated": "the log is shorter than a signed checkpoint",
    "bad_signature": "a checkpoint signature does not verify",
    "wrong_key": "the checkpoints were not signed by the given public key",
    "unsigned": "the log has entries but no checkpoint that verifies with the given key",
    "malformed": "the export or a record in it could not be read",
}


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    first_seq: int
    last_seq: int
    checkpoints: int
    roots_checked: int
    signed_size: int
    key_id: str
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)
    # entries after the last signed checkpoint: chained, but not signed (not verified)
    unsigned_entries: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["problem"] = self.problem.to_dict() if self.problem else None
        return d

    @classmethod
    def start(cls, src: EventSource, checkpoints: int, kid: str) -> VerifyReport:
        """A report before any entry is read: nothing checked yet."""
        return cls(
            ok=True,
            entries=0,
            first_seq=src.prefix_size + 1,
            last_seq=src.prefix_size,
            checkpoints=checkpoints,
            roots_checked=0,
            signed_size=0,
            key_id=kid,
        )


def verify(
    source: store.Connection | Path | str,
    public_key: Ed25519PublicKey | Path | str | bytes | None,
    *,
    trusted_checkpoints: list[dict[str, Any]] | None = None,
    require_signed: bool = False,
) -> VerifyReport:
    """Recompute everything in a live log (a connection) or an export file.

    ``trusted_checkpoints`` are signed checkpoints kept elsewhere (e.g. from an older
    export or a witness); they are checked against the log like its own.
    ``public_key=None`` is only allowed for an export, and then uses the key inside the
    export (a warning says so). ``require_signed``: a log with entries and no checkpoint
    that verifies with the key fails (problem ``unsigned``) instead of warning: deleting
    the checkpoint table and rewriting history with recomputed hashes leaves exactly that.
    """
    warnings: list[str] = []
    if store.is_connection(source):
        src = EventSource(iter_log(source), checkpoints(source))
    else:
        try:
            src = read_export(Path(cast(Path | str, source)))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise BadInput(
                "The file is not a readable audit export.", code="AUDIT_INVALID"
            ) from exc
    if public_key is None:
        if src.public_key_pem is None:
            raise BadInput("A public key is needed to verify the audit log.")
        warnings.append(
            "verified with the public key inside the export itself: this shows the export "
            "is consistent, not that the bureau signed it; pass --public-key"
        )
        public_key = src.public_key_pem.encode()
    if not isinstance(public_key, Ed25519PublicKey):
        public_key = load_public_key(public_key)
    cps = {int(c["tree_size"]): c for c in src.checkpoints}
    for c in trusted_checkpoints or []:
        size = int(c["tree_size"])
        if size in cps and cps[size]["root_hash"] != c["root_hash"]:
            cps[-size - 1] = c  # keep both; verification decides which one lies
        else:
            cps.setdefault(size, c)
    ordered = sorted(cps.values(), key=lambda c: int(c["tree_size"]))
    try:
        report = _verify_stream(src, ordered, public_key, require_signed=require_signed)
    except (ValueError, KeyError, TypeError) as exc:
        # A record that cannot even be read (bad hex, missing field) in an export.
        report = VerifyReport.start(src, len(ordered), key_id(public_key))
        report.ok = False
        report.problem = Problem(
            "malformed", f"A record in the export could not be read ({type(exc).__name__})."
        )
    report.warnings = warnings + report.warnings
    return report


def _verify_stream(
    src: EventSource,
    cps: list[dict[str, Any]],
    public_key: Ed25519PublicKey,
    *,
    require_signed: bool,
) -> VerifyReport:
    kid = key_id(public_key)
    report = VerifyReport.start(src, len(cps), kid)

    def fail(problem: Problem) -> VerifyReport:
        report.ok = False
        report.problem = problem
        return report

    if cps and all(c.get("key_id") != kid for c in cps):
        return fail(
            Problem(
                "wrong_key",
                f"No checkpoint was signed by the given key {kid}; "
                f"they name key {cps[0].get('key_id')}.",
                tree_size=int(cps[0]["tree_size"]),
            )
        )
    ci = 0

    def check_cp(c: dict[str, Any], root: bytes | None) -> Problem | None:
        size = int(c["tree_size"])
        if c.get("key_id") != kid:
            return Problem(
                "wrong_key",
                f"The checkpoint at tree size {size} names key "
                f"{c.get('key_id')}, not the given key {kid}.",
                tree_size=size,
            )
        try:
            public_key.verify(
                bytes.fromhex(c["signature"]),
                checkpoint_message(size, c["root_hash"], c["time"], c["key_id"]),
            )
        except (InvalidSignature, ValueError):
            return Problem(
                "bad_signature",
                f"The signature of the checkpoint at tree size {size} does not verify.",
                tree_size=size,
            )
        if root is not None:
            report.roots_checked += 1
            if root.hex() != c["root_hash"]:
                return Problem(
                    "root_mismatch",
                    f"The signed root at tree size {size} does not "
                    f"match entries 1..{size}: an entry after the previous good "
                    "checkpoint was rewritten with recomputed hashes.",
                    tree_size=size,
                )
        report.signed_size = max(report.signed_size, size)
        return None

    # Checkpoints before the export's first entry: signatures only; at it: the prefix root.
    frontier, chain = src.prefix, src.prefix_chain
    while ci < len(cps) and int(cps[ci]["tree_size"]) <= src.prefix_size:
        at_prefix = int(cps[ci]["tree_size"]) == src.prefix_size
        problem = check_cp(cps[ci], frontier.root() if at_prefix else None)
        if problem:
            return fail(problem)
        ci += 1
    expected = src.prefix_size + 1
    rows = src.rows
    for ev in rows:
        if ev.seq != expected:
            if ev.seq > expected:
                return fail(
                    Problem(
                        "missing",
                        f"Entry {expected} is missing (the next entry is {ev.seq}).",
                        seq=expected,
                        other_seq=ev.seq,
                    )
                )
            return fail(
                Problem(
                    "reordered", f"Entry {ev.seq} appears after entry {expected - 1}.", seq=ev.seq
                )
            )
        leaf = event_leaf(ev)
        if leaf != ev.leaf_hash:
            return fail(_classify(ev, rows))
        chain = hashlib.sha256(chain + leaf).digest()
        if chain != ev.chain_hash:
            return fail(
                Problem(
                    "chain_broken",
                    f"The hash chain breaks at entry {ev.seq}: it "
                    "or the entry before it was replaced.",
                    seq=ev.seq,
                )
            )
        frontier.add(leaf)
        report.entries += 1
        report.last_seq = ev.seq
        while ci < len(cps) and int(cps[ci]["tree_size"]) == expected:
            problem = check_cp(cps[ci], frontier.root())
            if problem:
                return fail(problem)
            ci += 1
        expected += 1
    if ci < len(cps):
        c = cps[ci]
        size = int(c["tree_size"])
        problem = check_cp(c, None)
        if problem:
            return fail(problem)
        return fail(
            Problem(
                "truncated",
                f"The log ends at entry {expected - 1} but a checkpoint signed {size} entries.",
                seq=expected,
                tree_size=size,
            )
        )
    unsigned = max(0, report.last_seq - report.signed_size)
    report.unsigned_entries = unsigned
    if require_signed and report.last_seq > 0 and report.signed_size == 0:
        return fail(
            Problem(
                "unsigned",
                f"No checkpoint verifies with the given key {kid}: none of the "
                f"{report.last_seq} entries is signed, so the log may have been rewritten "
                "with recomputed hashes (and its checkpoints deleted).",
                tree_size=0,
            )
        )
    if not cps:
        report.warnings.append("there is no signed checkpoint: nothing here is signed")
    if unsigned > 0:
        report.warnings.append(
            f"{unsigned} entries after the last signed checkpoint (entries "
            f"{report.signed_size + 1}..{report.last_seq}) are not verified: only the hash "
            "chain protects them; run 'sandbox audit checkpoint'"
        )
    return report


def _classify(bad: AuditEvent, rows: Iterator[AuditEvent]) -> Problem:
    """Name what happened at the first entry whose content does not match its hash."""
    p = bad.seq
    nxt = next(rows, None)

    def matches(ev: AuditEvent | None, seq: int) -> bool:
        return ev is not None and seq > 0 and event_leaf(ev, seq) == ev.leaf_hash

    if matches(bad, p + 1) and matches(nxt, p):
        return Problem(
            "reordered", f"Entries {p} and {p + 1} were swapped.", seq=p, other_seq=p + 1
        )
    if matches(bad, p + 1):
        return Problem("missing", f"Entry {p} was deleted and the later entries renumbered.", seq=p)
    if matches(bad, p - 1):
        return Problem(
            "inserted", f"Entry {p - 1} was inserted; the later entries were renumbered.", seq=p - 1
        )
    if matches(nxt, p):
        return Problem(
            "inserted", f"Entry {p} was inserted; the later entries were renumbered.", seq=p
        )
    later = [nxt] if nxt is not None else []
    for ev in _chain_iter(later, rows):
        if event_leaf(ev, p) == ev.leaf_hash and event_leaf(bad, ev.seq) == bad.leaf_hash:
            return Problem(
                "reordered", f"Entries {p} and {ev.seq} were swapped.", seq=p, other_seq=ev.seq
            )
    return Problem("altered", f"Entry {p} does not match its hash: a field was changed.", seq=p)


def _chain_iter(first: list[AuditEvent], rest: Iterator[AuditEvent]) -> Iterator[AuditEvent]:
    yield from first
    yield from rest
