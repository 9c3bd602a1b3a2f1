"""Authentication, role and ownership checks, issuing tokens."""

from __future__ import annotations

import pytest
from service_helpers import ROOT

from sandbox import tokens
from sandbox.errors import BadInput, Refused
from sandbox.service import issue_token
from sandbox.tokens import Role


def test_issue_token_checks_the_operator_and_role(svc):
    with pytest.raises(Refused) as info:
        issue_token(svc, role="operator", subject="op-nobody")
    assert info.value.code == "UNKNOWN_OPERATOR"
    with pytest.raises(BadInput):
        issue_token(svc, role="king", subject="x")
    record = svc.create_token(ROOT, role="supervisor", subject="zhao", expires_in="2h")
    assert svc.authenticate(record["token"]).role == Role.SUPERVISOR
    svc.revoke_token(ROOT, record["id"])
    with pytest.raises(tokens.AuthError):
        svc.authenticate(record["token"])
