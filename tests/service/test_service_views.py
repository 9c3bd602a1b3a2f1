"""What each role may see: grants, budgets, jobs, the catalogue."""

from __future__ import annotations

import pytest
from service_helpers import HUAXIN, JINSHU, LI

from sandbox.errors import Forbidden, NotFound
from sandbox.service import Service


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
