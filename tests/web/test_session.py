"""Console sessions: random ids, expiry, idle timeout, bounded store, CSRF check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sandbox.tokens import Principal, Role
from sandbox.web import session
from sandbox.web.session import CsrfFailed, SessionStore

P = Principal(Role.SUPERVISOR, "supervisor-li", "tok_1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_ids_are_random_and_stored_hashed() -> None:
    store = SessionStore()
    sid, s = store.create(P)
    other, _ = store.create(P)
    assert sid != other and len(sid) >= 40
    assert s.key != sid and sid not in s.key  # the cookie value itself is not kept
    assert store.get(sid) is s and store.get(sid + "x") is None
    assert store.get(None) is None and store.get("a" * 500) is None


def test_signed_in_sessions_expire_absolutely_and_when_idle() -> None:
    clock = Clock()
    store = SessionStore(clock=clock)
    sid, _ = store.create(P)
    for _ in range(7):  # keep it busy: the idle timeout never hits
        clock.now += session.IDLE_TIMEOUT_S - 60
        assert store.get(sid) is not None
    clock.now += session.SIGNED_IN_TTL_S  # past the absolute expiry
    assert store.get(sid) is None
    sid, _ = store.create(P)
    clock.now += session.IDLE_TIMEOUT_S
    assert store.get(sid) is None


def test_anonymous_sessions_are_short_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    store = SessionStore(clock=clock)
    sid, s = store.create(None)
    assert s.expires - s.created == session.ANONYMOUS_TTL_S
    monkeypatch.setattr(session, "MAX_SESSIONS", 5)
    kept, _ = store.create(P)
    for _ in range(20):
        clock.now += 1
        store.create(None)
    assert len(store) <= 5
    assert store.get(kept) is not None  # a flood of anonymous ones evicts them first
    assert store.get(sid) is None


def test_delete() -> None:
    store = SessionStore()
    sid, s = store.create(P)
    store.delete(s)
    assert store.get(sid) is None


def test_check_csrf() -> None:
    store = SessionStore()
    _, s = store.create(None)
    session.check_csrf(s, s.csrf)
    for bad in (None, "", s.csrf[:-1], s.csrf + "x", "x" * len(s.csrf)):
        with pytest.raises(CsrfFailed) as err:
            session.check_csrf(s, bad)
        assert err.value.code == "CSRF_FAILED" and err.value.http_status == 403
    with pytest.raises(CsrfFailed):
        session.check_csrf(None, s.csrf)


def test_flashes_show_once() -> None:
    _, s = SessionStore().create(P)
    s.flash("ok", "flash.signed_in", name="x")
    assert s.pop_flashes() == [("ok", "flash.signed_in", {"name": "x"})]
    assert s.pop_flashes() == []


def test_token_is_live() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert session.token_is_live({"revoked_at": None, "expires_at": None}, now=now)
    assert not session.token_is_live({"revoked_at": "2026-05-01T00:00:00+00:00"}, now=now)
    later = (now + timedelta(hours=1)).isoformat()
    earlier = (now - timedelta(seconds=1)).isoformat()
    assert session.token_is_live({"expires_at": later}, now=now)
    assert not session.token_is_live({"expires_at": earlier}, now=now)
