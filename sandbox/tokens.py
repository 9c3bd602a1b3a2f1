"""Bearer tokens and the roles they carry.

A token is ``jy_`` followed by 32 random bytes (URL-safe base64). It is shown once,
when it is issued; the database keeps only its SHA-256, its role, whom it names, an
optional expiry and whether it was revoked. Roles:

- ``operator``: names an operator id from grants.yaml; acts only inside its grants.
- ``supervisor``: a bureau reviewer; sees all jobs, the review queue and the audit
  trail; cannot submit.
- ``admin``: reloads grants and manages tokens.

Issuing and revoking write ``token.issued`` / ``token.revoked`` audit events in the
same transaction as the change.

Whom a token names is a **principal id**, the identity the two-person rule counts:
the subject as given, NFKC-normalised and case-folded, which must then be 1 to 64 of
``a-z 0-9 . _ -``, starting with a letter or digit (``principal_id``). So
"Supervisor-Li" and fullwidth "Ｓｕｐｅｒｖｉｓｏｒ-Ｌｉ" are the same person as
"supervisor-li", and a name that only looks like it ("supervisоr-li" with a Cyrillic
"о") is refused rather than counted as somebody else: no two distinct ids look alike
beyond what ASCII letters and digits already allow.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sandbox import store
from sandbox.errors import AuthError, BadInput, NotFound

PREFIX = "jy_"

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    label       TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked_at  TEXT
);
"""
store.register_schema("sandbox.tokens", SCHEMA)


class Role(StrEnum):
    OPERATOR = "operator"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role and a name (the operator id for operators)."""

    role: Role
    name: str
    token_id: str = ""

    @property
    def actor(self) -> str:
        return self.name


SYSTEM = Principal(Role.ADMIN, "system")

_PRINCIPAL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def fold_identity(name: str) -> str:
    """NFKC, case-fold, NFKC again (case-folding can undo NFKC): how names compare."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def principal_id(subject: str) -> str:
    """The principal id a token names (see the module docstring); BadInput otherwise."""
    folded = fold_identity(subject.strip())
    if not _PRINCIPAL_ID.fullmatch(folded):
        raise BadInput(
            "A principal id is 1 to 64 of the letters a-z, the digits 0-9, '.', '_' and "
            "'-' (after Unicode normalisation and case folding), starting with a letter "
            "or digit.",
            hint="Name the person with an ASCII id such as supervisor-li; look-alike "
            "letters from other scripts are refused.",
        )
    return folded


def _now() -> datetime:
    return datetime.now(UTC)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '2w', '90m', '45s' -> timedelta; BadInput otherwise."""
    m = _DURATION.match(text)
    if m is None or int(m.group(1)) <= 0:
        raise BadInput(
            f"Cannot read the duration {text!r}.", hint="Use a number and a unit: 30d, 12h, 2w."
        )
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def create_token(
    conn: store.Connection,
    *,
    role: Role,
    subject: str,
    actor: Principal = SYSTEM,
    expires_in: timedelta | None = None,
    label: str = "",
    now: datetime | None = None,
) -> tuple[str, dict[str, Any]]:
    """Issue a token; return (the secret, shown once; its public record). The record's
    ``subject`` is the normalised principal id."""
    if not subject.strip():
        raise BadInput("A token must name whom it is for.")
    subject = principal_id(subject)
    now = now or _now()
    secret = PREFIX + secrets.token_urlsafe(32)
    token_id = "tok_" + secrets.token_hex(6)
    expires_at = (now + expires_in).isoformat() if expires_in else None
    from sandbox import audit

    with store.transaction(conn):
        conn.execute(
            "INSERT INTO tokens (id, hash, role, subject, label, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (token_id, hash_token(secret), role.value, subject, label, now.isoformat(), expires_at),
        )
        audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action="token.issued",
            subject=token_id,
            details={"role": role.value, "for": subject, "expires_at": expires_at},
        )
    return secret, get_token(conn, token_id)


def get_token(conn: store.Connection, token_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
    if row is None:
        raise NotFound(f"No token {token_id!r}.")
    return _public(row)


def _public(row: store.Row) -> dict[str, Any]:
    return {k: row[k] for k in row.keys() if k != "hash"}  # noqa: SIM118 - store.Row


def list_tokens(conn: store.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM tokens ORDER BY created_at, id").fetchall()
    return [_public(r) for r in rows]


def revoke_token(
    conn: store.Connection, token_id: str, *, actor: Principal = SYSTEM
) -> dict[str, Any]:
    from sandbox import audit

    now = _now().isoformat()
    with store.transaction(conn):
        row = conn.execute("SELECT revoked_at FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFound(f"No token {token_id!r}.")
        if row["revoked_at"] is None:
            conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (now, token_id))
            audit.append(
                conn,
                actor=actor.name,
                role=actor.role.value,
                action="token.revoked",
                subject=token_id,
            )
    return get_token(conn, token_id)


def revoke_label(conn: store.Connection, label: str, *, actor: Principal = SYSTEM) -> int:
    """Revoke every live token with this label (``sandbox up`` re-issues demo tokens)."""
    ids = [
        r["id"]
        for r in conn.execute(
            "SELECT id FROM tokens WHERE label = ? AND revoked_at IS NULL", (label,)
        ).fetchall()
    ]
    for token_id in ids:
        revoke_token(conn, token_id, actor=actor)
    return len(ids)


def authenticate(conn: store.Connection, token: str, *, now: datetime | None = None) -> Principal:
    """The Principal a bearer token names; AuthError if missing, unknown, expired or revoked.

    The message is the same for every reason so a caller learns nothing about which
    tokens exist.
    """
    denied = AuthError(
        "The token is missing, unknown, expired or revoked.",
        hint="Send 'Authorization: Bearer jy_…' with a token from `sandbox token create`.",
    )
    if not token or not token.startswith(PREFIX) or len(token) > 200:
        raise denied
    row = conn.execute("SELECT * FROM tokens WHERE hash = ?", (hash_token(token),)).fetchone()
    if row is None or row["revoked_at"] is not None:
        raise denied
    if row["expires_at"] is not None:
        expires = datetime.fromisoformat(row["expires_at"])
        if (now or _now()) >= expires:
            raise denied
    # a token issued before ids were normalised still names its person as one id
    return Principal(Role(row["role"]), fold_identity(row["subject"]), row["id"])
