"""The tamper-evident audit log: append-only events, a Merkle tree, signed checkpoints.

Every action in the sandbox is one event (seq, time, actor, role, action, subject,
scenario, details). ``append`` runs inside the caller's ``store.transaction`` so a
state change and the event that records it commit together or not at all, and the
sequence number is gap-free (``store.transaction`` serialises writers: SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's advisory lock, across several servers).

Integrity, in the style of Certificate Transparency (RFC 6962 / RFC 9162):

- leaf hash  = SHA-256(0x00 || canonical JSON of the event)   (seq is part of it)
- interior   = SHA-256(0x01 || left || right)
- tree head  = the RFC 6962 Merkle Tree Hash over entries 1..n
- chain hash = SHA-256(previous chain hash || leaf hash) (cheap local checks; names
  the first broken link)
- checkpoint = {tree_size, root_hash, time, key_id} signed with the bureau's Ed25519
  audit key, written after every job's final transition, every ``checkpoint_every``
  events and on shutdown (and pushed to a witness off the host, ``exports``).

``verify`` recomputes every leaf, the chain and the root at every checkpoint, checks
every signature, and reports the FIRST problem by kind and sequence number. Entries
after the last signed checkpoint are protected by the hash chain only (whoever can
write the database can rewrite them and recompute the chain): the report counts them
as ``unsigned_entries``, and with ``require_signed`` a log with entries but no
checkpoint that verifies fails.
``prove`` gives an inclusion proof that a third party checks with the public key alone
(``verify_proof``); ``prove_consistency`` shows that an older signed tree head is a
prefix of a newer one. The event vocabulary is ``ACTIONS`` (docs/audit.md).

Modules: ``log`` (schema, vocabulary, canonical bytes, append, read), ``merkle`` (RFC 6962
maths), ``checkpointing`` (signed tree heads), ``verification`` (``verify``), ``proofs``
(inclusion and consistency), ``exports`` (export files, reading them back, witnesses).
"""

from sandbox.audit.checkpointing import (
    checkpoint,
    checkpoint_dict,
    checkpoint_message,
    checkpoints,
    log_size,
    maybe_checkpoint,
)
from sandbox.audit.exports import (
    WITNESS_TIMEOUT_S,
    check_witness,
    export,
    export_log,
    parse_since,
    push_checkpoint,
    read_checkpoints,
    read_export,
    witness_record,
)
from sandbox.audit.log import (
    ACTIONS,
    CHECKPOINT_FORMAT,
    CONSISTENCY_FORMAT,
    EVENT_COLUMNS,
    EXPORT_FORMAT,
    PROOF_FORMAT,
    SCHEMA,
    ZERO_HASH,
    AuditEvent,
    AuditInvalid,
    EventSource,
    append,
    canonical_json,
    check_details,
    event_bytes,
    event_leaf,
    events,
    iter_log,
    json_str,
    now_iso,
    row_event,
)
from sandbox.audit.merkle import (
    Frontier,
    audit_path,
    check_consistency,
    consistency_path,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_path,
)
from sandbox.audit.proofs import (
    prove,
    prove_consistency,
    verify_consistency,
    verify_proof,
)
from sandbox.audit.verification import (
    KINDS,
    Problem,
    VerifyReport,
    verify,
)

__all__ = [
    "ACTIONS",
    "AuditEvent",
    "AuditInvalid",
    "CHECKPOINT_FORMAT",
    "CONSISTENCY_FORMAT",
    "EVENT_COLUMNS",
    "EXPORT_FORMAT",
    "EventSource",
    "Frontier",
    "KINDS",
    "PROOF_FORMAT",
    "Problem",
    "SCHEMA",
    "VerifyReport",
    "WITNESS_TIMEOUT_S",
    "ZERO_HASH",
    "append",
    "audit_path",
    "canonical_json",
    "check_consistency",
    "check_details",
    "check_witness",
    "checkpoint",
    "checkpoint_dict",
    "checkpoint_message",
    "checkpoints",
    "consistency_path",
    "event_bytes",
    "event_leaf",
    "events",
    "export",
    "export_log",
    "iter_log",
    "json_str",
    "leaf_hash",
    "log_size",
    "maybe_checkpoint",
    "merkle_root",
    "node_hash",
    "now_iso",
    "parse_since",
    "prove",
    "prove_consistency",
    "push_checkpoint",
    "read_checkpoints",
    "read_export",
    "root_from_path",
    "row_event",
    "verify",
    "verify_consistency",
    "verify_proof",
    "witness_record",
]
