"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie; state on the server.

A session is created by the sign-in page before anyone signs in (so that the
sign-in form, like every form, carries a CSRF token) and replaced by a NEW session
when a token signs in (no session fixation). The server keeps, per session, the
caller (role, name, token id, never the token itself), the synchroniser CSRF token
that every form posts back, an absolute expiry and an idle timeout. The cookie holds
only the random id; the store is keyed by its SHA-256. Sessions live in the server's
memory: a restart signs everyone out, which is the safe direction.

Each request re-checks that the token behind the session is still live (not revoked,
not expired), so revoking a token ends its console sessions too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from sandbox.errors import Refused
from sandbox.tokens import Principal

COOKIE = "jinyu_session"
SIGNED_IN_TTL_S = 8 * 3600.0
ANONYMOUS_TTL_S = 1800.0
IDLE_TIMEOUT_S = 3600.0
MAX_SESSIONS = 10_000

__all__ = [
    "COOKIE",
    "CsrfFailed",
    "Session",
    "SessionStore",
    "check_csrf",
    "clear_cookie",
    "set_cookie",
    "token_is_live",
]


class CsrfFailed(Refused):
    """A form came back without the CSRF token of its session."""

    code = "CSRF_FAILED"
    http_status = 403


@dataclass
class Session:
    key: str  # sha256 of the cookie value
    csrf: str
    created: float
    expires: float
    last_seen: float
    principal: Principal | None = None
    flashes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def flash(self, kind: str, key: str, **values: Any) -> None:
        """A message (catalogue key) shown once on the next page."""
        self.flashes.append((kind, key, values))

    def pop_flashes(self) -> list[tuple[str, str, dict[str, Any]]]:
        out, self.flashes = self.flashes, []
        return out


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8")).hexdigest()


class SessionStore:
    """Sessions in memory, bounded, with absolute and idle expiry."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, principal: Principal | None = None) -> tuple[str, Session]:
        """A new session; returns (the cookie value, the session)."""
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        ttl = SIGNED_IN_TTL_S if principal is not None else ANONYMOUS_TTL_S
        session = Session(
            key=_digest(sid),
            csrf=secrets.token_urlsafe(32),
            created=now,
            expires=now + ttl,
            last_seen=now,
            principal=principal,
        )
        with self._lock:
            self._prune(now)
            self._sessions[session.key] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session behind a cookie value, or None (expired ones are dropped)."""
        if not sid or len(sid) > 200:
            return None
        key = _digest(sid)
        now = self.clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if now >= session.expires or now - session.last_seen >= IDLE_TIMEOUT_S:
                del self._sessions[key]
                return None
            session.last_seen = now
            return session

    def delete(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.key, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _prune(self, now: float) -> None:
        dead = [
            k
            for k, s in self._sessions.items()
            if now >= s.expires or now - s.last_seen >= IDLE_TIMEOUT_S
        ]
        for k in dead:
            del self._sessions[k]
        if len(self._sessions) >= MAX_SESSIONS:
            # a flood of sign-in page views: drop the oldest anonymous sessions first
            victims = sorted(
                self._sessions.values(), key=lambda s: (s.principal is not None, s.last_seen)
            )
            for s in victims[: len(self._sessions) - MAX_SESSIONS + 1]:
                del self._sessions[s.key]


def check_csrf(session: Session | None, submitted: str | None) -> None:
    """Refuse (403 CSRF_FAILED) unless the form carries its session's CSRF token."""
    if (
        session is None
        or not submitted
        or not hmac.compare_digest(session.csrf.encode(), submitted.encode())
    ):
        raise CsrfFailed(
            "The form's CSRF token is missing or wrong.",
            hint="Reload the page and submit the form again.",
        )


def set_cookie(response: Response, request: Request, sid: str, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        sid,
        max_age=max(1, int(session.expires - session.created)),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def token_is_live(record: dict[str, Any], *, now: datetime | None = None) -> bool:
    """A token record (from ``sandbox.tokens.get_token``) that is neither revoked nor expired."""
    if record.get("revoked_at"):
        return False
    expires = record.get("expires_at")
    if expires:
        return (now or datetime.now(UTC)) < datetime.fromisoformat(str(expires))
    return True
