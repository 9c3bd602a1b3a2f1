"""Tokens: shown once, stored as a hash, expire, revoke, audited."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sandbox import audit, store, tokens
from sandbox.errors import AuthError, BadInput, NotFound
from sandbox.tokens import Role


@pytest.fixture()
def conn(database):
    """Every token test on SQLite and on PostgreSQL."""
    c = store.connect(database)
    yield c
    c.close()


def test_issued_token_authenticates_and_only_its_hash_is_stored(conn, database):
    secret, record = tokens.create_token(conn, role=Role.OPERATOR, subject="op-jinshu")
    assert secret.startswith("jy_") and len(secret) > 40
    p = tokens.authenticate(conn, secret)
    assert (p.role, p.name, p.token_id) == (Role.OPERATOR, "op-jinshu", record["id"])
    assert "hash" not in record and secret not in str(record)
    stored = [tuple(r) for r in conn.execute("SELECT * FROM tokens")]
    assert secret not in repr(stored) and tokens.hash_token(secret) in repr(stored)
    if isinstance(database, str):
        return  # PostgreSQL: the server's files are not ours to read
    raw = (database).read_bytes() + (database.parent / f"{database.name}-wal").read_bytes()
    assert secret.encode() not in raw
    assert tokens.hash_token(secret).encode() in raw


def test_issue_and_revoke_are_audited(conn):
    secret, record = tokens.create_token(conn, role=Role.SUPERVISOR, subject="li")
    tokens.revoke_token(conn, record["id"])
    actions = [(e.action, e.subject) for e in audit.events(conn)]
    assert actions == [("token.issued", record["id"]), ("token.revoked", record["id"])]
    with pytest.raises(AuthError):
        tokens.authenticate(conn, secret)


@pytest.mark.parametrize("bad", ["", "jy_nope", "Bearer x", "x" * 500])
def test_unknown_tokens_are_refused(conn, bad):
    tokens.create_token(conn, role=Role.ADMIN, subject="root")
    with pytest.raises(AuthError) as info:
        tokens.authenticate(conn, bad)
    assert info.value.http_status == 401


def test_expired_token_is_refused(conn):
    now = datetime.now(UTC)
    secret, _ = tokens.create_token(
        conn, role=Role.OPERATOR, subject="op", expires_in=timedelta(hours=1), now=now
    )
    assert tokens.authenticate(conn, secret, now=now + timedelta(minutes=59)).name == "op"
    with pytest.raises(AuthError):
        tokens.authenticate(conn, secret, now=now + timedelta(hours=1))


def test_revoke_label_revokes_only_that_label(conn):
    a, _ = tokens.create_token(conn, role=Role.OPERATOR, subject="a", label="demo")
    b, _ = tokens.create_token(conn, role=Role.OPERATOR, subject="b")
    assert tokens.revoke_label(conn, "demo") == 1
    with pytest.raises(AuthError):
        tokens.authenticate(conn, a)
    assert tokens.authenticate(conn, b).name == "b"


def test_parse_duration():
    assert tokens.parse_duration("30d") == timedelta(days=30)
    assert tokens.parse_duration("12h") == timedelta(hours=12)
    assert tokens.parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "0d", "3x", "-1d", "d"):
        with pytest.raises(BadInput):
            tokens.parse_duration(bad)


def test_revoking_an_unknown_token_is_not_found(conn):
    with pytest.raises(NotFound):
        tokens.revoke_token(conn, "tok_missing")


# --- principal ids: one person, one id -----------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        "supervisor-li",
        "Supervisor-Li",
        "SUPERVISOR-LI",
        " supervisor-li ",
        "Ｓｕｐｅｒｖｉｓｏｒ－Ｌｉ",  # fullwidth letters and hyphen
        "ｓｕｐｅｒｖｉｓｏｒ-ｌｉ",
    ],
)
def test_case_and_width_fold_to_one_principal_id(given):
    assert tokens.principal_id(given) == "supervisor-li"


@pytest.mark.parametrize(
    "given",
    [
        "supervis\u043er-li",  # Cyrillic о
        "supervisor-l\u0456",  # Cyrillic і
        "\u0455upervisor-li",  # Cyrillic ѕ
        "supervisor-\u217cı",  # a dotless i after the Roman numeral ⅼ
        "supervisor\u200b-li",  # a zero-width space
        "李主任",
        "-li",
        "a" * 65,
        "li wang",
    ],
)
def test_look_alikes_and_other_scripts_are_refused(conn, given):
    with pytest.raises(BadInput, match="principal id"):
        tokens.principal_id(given)
    with pytest.raises(BadInput, match="principal id"):
        tokens.create_token(conn, role=Role.SUPERVISOR, subject=given)


def test_tokens_carry_the_principal_id(conn):
    secret, record = tokens.create_token(
        conn, role=Role.SUPERVISOR, subject="Ｓｕｐｅｒｖｉｓｏｒ-Li"
    )
    assert record["subject"] == "supervisor-li"
    assert tokens.authenticate(conn, secret).name == "supervisor-li"
    issued = [e for e in audit.events(conn) if e.action == "token.issued"]
    assert json.loads(issued[-1].details)["for"] == "supervisor-li"


def test_a_token_from_before_normalisation_names_the_folded_id(conn):
    secret, record = tokens.create_token(conn, role=Role.SUPERVISOR, subject="supervisor-li")
    with store.transaction(conn):
        conn.execute("UPDATE tokens SET subject = 'Supervisor-Li' WHERE id = ?", (record["id"],))
    assert tokens.authenticate(conn, secret).name == "supervisor-li"
