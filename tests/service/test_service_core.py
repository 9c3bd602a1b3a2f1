"""The Service facade: explain and the audit search."""

from __future__ import annotations

import pytest
from service_helpers import HUAXIN, JINSHU, LI, ROOT, SQL

from sandbox.errors import BadInput, Forbidden, Refused


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


def test_audit_search_filters(svc):
    svc.create_token(ROOT, role="operator", subject="op-jinshu")
    issued = svc.audit_search(LI, action="token.issued")
    assert [e["actor"] for e in issued] == ["root"]
    assert svc.audit_search(LI, since="999999") == []
    with pytest.raises(BadInput):
        svc.audit_search(LI, since="last tuesday")


OCCUPATIONS = "SELECT occupation, COUNT(*) AS n FROM persons GROUP BY occupation"


def test_submit_without_delta_gets_the_explain_default(svc):
    """Issue 16: submit and explain apply one δ rule; an explicit δ wins."""
    explained = svc.explain(JINSHU, sql=OCCUPATIONS, scenario="employment-income", epsilon=0.5)
    job = svc.submit_job(JINSHU, sql=OCCUPATIONS, scenario="employment-income", epsilon=0.5)
    assert job["delta"] == explained["cost"]["requested_delta"] == pytest.approx(1e-6)
    assert job["cost"] == explained["cost"]
    public = svc.submit_job(JINSHU, sql=SQL, scenario="employment-income", epsilon=0.5)
    assert public["delta"] == 0.0  # public keys, pure ε: no δ
    asked = svc.submit_job(
        JINSHU, sql=OCCUPATIONS, scenario="employment-income", epsilon=0.5, delta=2e-6
    )
    assert asked["delta"] == 2e-6 and asked["cost"]["requested_delta"] == 2e-6


def test_submit_without_delta_still_records_a_refusal(svc):
    """The default needs a compile; a query that does not compile (or has no grant) is
    still recorded as a refused job, with the job's own compile's code."""
    for sql, scenario, code in (
        ("SELECT name, COUNT(*) FROM nowhere GROUP BY name", "employment-income", "UNKNOWN_TABLE"),
        (SQL, "sme-credit", "NO_GRANT"),
    ):
        with pytest.raises(Refused) as info:
            svc.submit_job(JINSHU, sql=sql, scenario=scenario, epsilon=0.5)
        assert info.value.code == code
        job = svc.get_job(JINSHU, info.value.details["job"])
        assert job["state"] == "refused" and job["delta"] == 0.0
