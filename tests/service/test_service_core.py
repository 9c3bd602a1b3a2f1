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
