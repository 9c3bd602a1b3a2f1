"""The service layer every face calls: role and ownership checks, views, tokens."""

from __future__ import annotations

import pytest

from sandbox import tokens
from sandbox.errors import BadInput, Forbidden, NotFound, RateLimited, Refused
from sandbox.service import RateLimiter, Service, issue_token
from sandbox.settings import Settings
from sandbox.tokens import Principal, Role

JINSHU = Principal(Role.OPERATOR, "op-jinshu", "t1")
HUAXIN = Principal(Role.OPERATOR, "op-huaxin", "t2")
LI = Principal(Role.SUPERVISOR, "supervisor-li", "t3")
ROOT = Principal(Role.ADMIN, "root", "t4")
SQL = "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex"


@pytest.fixture()
def svc(settings: Settings):
    service = Service(settings.replace(executor="local"))
    yield service
    service.stop()


def test_explain_reads_no_data_and_shows_cost_and_budget(svc):
    out = svc.explain(JINSHU, sql=SQL, scenario="employment-income", epsilon=0.5)
    assert out["dataset"] == "population" and out["grade"] == "general-3"
    assert out["cost"]["epsilon"] == 0.5
    assert [o["name"] for o in out["outputs"]] == ["sex", "n"]
    assert out["budget"]["left"] == 20.0 and out["required_approvals"] == 1
    with pytest.raises(Forbidden):
        svc.explain(LI, sql=SQL, scenario="employment-income")
    with pytest.raises(Refused) as info:
        svc.explain(HUAXIN, sql=SQL, scenario="employment-income")
    assert info.value.code == "NO_GRANT"


def test_views_are_scoped_to_the_caller(svc):
    assert {g["id"] for g in svc.grants_view(HUAXIN)} == {"g-huaxin-sme", "g-huaxin-2024-study"}
    assert len(svc.grants_view(LI)) == 4
    assert {b["operator"] for b in svc.budget(HUAXIN, operator="op-jinshu")} == {"op-huaxin"}
    assert {b["operator"] for b in svc.budget(LI, operator="op-jinshu")} == {"op-jinshu"}
    with pytest.raises(NotFound):
        svc.get_job(HUAXIN, "j-missing")
    with pytest.raises(Forbidden):
        svc.review_queue(JINSHU)
    with pytest.raises(Forbidden):
        svc.list_tokens(LI)


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


def test_audit_search_filters(svc):
    svc.create_token(ROOT, role="operator", subject="op-jinshu")
    issued = svc.audit_search(LI, action="token.issued")
    assert [e["actor"] for e in issued] == ["root"]
    assert svc.audit_search(LI, since="999999") == []
    with pytest.raises(BadInput):
        svc.audit_search(LI, since="last tuesday")


def test_rate_limiter_window():
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    limiter.hit("a")
    limiter.hit("a")
    with pytest.raises(RateLimited):
        limiter.hit("a")
    limiter.hit("b")
    now[0] = 60.0
    limiter.hit("a")


def test_the_catalogue_hides_datasets_whose_grant_is_not_valid_now(tmp_path, settings):
    from tests.policy_factory import grant, make_policies

    def edit(d):
        grant(d, "g-jinshu-employment").update(  # expired
            valid_from="2025-01-01T00:00:00Z", valid_until="2025-06-01T00:00:00Z"
        )
        grant(d, "g-jinshu-pension").update(valid_from="2099-01-01T00:00:00Z")  # not yet
        grant(d, "g-jinshu-pension").update(valid_until="2100-01-01T00:00:00Z")

    svc = Service(settings.replace(executor="local", policies=make_policies(tmp_path, grants=edit)))
    try:
        assert svc.catalog_view(JINSHU)["datasets"] == []
        assert {d["id"] for d in svc.catalog_view(HUAXIN)["datasets"]} == {
            "enterprises",
            "divisions",
        }
        assert len(svc.catalog_view(LI)["datasets"]) == 5
    finally:
        svc.stop()
