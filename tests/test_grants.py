"""Grants: the demo grants load; core and not-shared data cannot be granted; lookups."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sandbox.catalog import Catalog, Use, load_catalog
from sandbox.errors import PolicyInvalid, Refused
from sandbox.grants import Grants, find_grant, load_grants
from tests.policy_factory import add_grant, grant, make_policies


def _load(policies: Path) -> Grants:
    return load_grants(policies, load_catalog(policies))


def test_demo_grants(grants: Grants) -> None:
    assert [g.id for g in grants.grants] == [
        "g-jinshu-employment",
        "g-jinshu-pension",
        "g-huaxin-sme",
        "g-huaxin-2024-study",
    ]
    sme = grants.grant("g-huaxin-sme")
    assert sme is not None
    catalog_uses = frozenset({Use.AGGREGATE, Use.FILTER})
    assert sme.column_uses(catalog_uses, "enterprises", "enterprises", "registered_capital") == {
        Use.AGGREGATE
    }
    assert sme.column_uses(catalog_uses, "enterprises", "enterprises", "employees") == catalog_uses


def test_find_grant(grants: Grants) -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    g = find_grant(grants, "op-jinshu", "pension-contributions", now=now)
    assert g.id == "g-jinshu-pension" and g.datasets == ("social_insurance", "divisions")
    with pytest.raises(Refused) as info:
        find_grant(grants, "op-nobody", "x", now=now)
    assert info.value.code == "UNKNOWN_OPERATOR"
    with pytest.raises(Refused) as info:
        find_grant(grants, "op-jinshu", "sme-credit", now=now)
    assert info.value.code == "NO_GRANT"
    assert "employment-income" in info.value.hint and "pension-contributions" in info.value.hint
    with pytest.raises(Refused) as info:
        find_grant(grants, "op-huaxin", "household-study-2024", now=now)
    assert info.value.code == "GRANT_EXPIRED"
    assert info.value.exit_code == 2


@pytest.mark.parametrize("dataset_id", ["medical_records"])
def test_core_and_not_shared_data_cannot_be_granted(tmp_path: Path, dataset_id: str) -> None:
    policies = make_policies(
        tmp_path, grants=lambda d: grant(d, "g-jinshu-employment")["datasets"].append(dataset_id)
    )
    with pytest.raises(PolicyInvalid) as info:
        _load(policies)
    assert info.value.code == "GRANT_FORBIDDEN"
    assert "core" in info.value.message and dataset_id in info.value.message


def test_not_shared_general_data_cannot_be_granted(tmp_path: Path) -> None:
    def not_shared(d: dict[str, Any]) -> None:
        ds = next(x for x in d["datasets"] if x["id"] == "enterprises")
        ds["sharing"] = {"attribute": "not_shared", "reason": "Withdrawn by the owner."}

    policies = make_policies(tmp_path, catalog=not_shared)
    with pytest.raises(PolicyInvalid) as info:
        _load(policies)
    assert info.value.code == "GRANT_FORBIDDEN"
    assert "not_shared" in info.value.message


def test_core_but_shared_data_cannot_be_granted(tmp_path: Path) -> None:
    def core(d: dict[str, Any]) -> None:
        ds = next(x for x in d["datasets"] if x["id"] == "enterprises")
        ds["grade"] = "core"

    policies = make_policies(tmp_path, catalog=core)
    with pytest.raises(PolicyInvalid) as info:
        _load(policies)
    assert info.value.code == "GRANT_FORBIDDEN"


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda d: add_grant(d, id="g-jinshu-employment"), "duplicate grant ids"),
        (lambda d: add_grant(d, operator="op-ghost"), "unknown operator"),
        (lambda d: add_grant(d, datasets=["nothing"]), "unknown dataset"),
        (lambda d: add_grant(d, valid_until="2025-01-01T00:00:00Z"), "after valid_from"),
        (lambda d: add_grant(d, columns={"population.persons.nope": ["filter"]}), "unknown column"),
        (
            lambda d: add_grant(d, columns={"enterprises.enterprises.employees": ["filter"]}),
            "outside the grant",
        ),
        (
            lambda d: add_grant(d, budget={"epsilon": 1.0, "max_epsilon_per_query": 2.0}),
            "max_epsilon_per_query",
        ),
        (
            lambda d: add_grant(d, budget={"epsilon": -1.0, "max_epsilon_per_query": 1.0}),
            "greater than 0",
        ),
        (
            lambda d: add_grant(d, scenario={"id": "employment-income", "purpose": "again"}),
            "overlapping",
        ),
        (lambda d: d["operators"].append(dict(d["operators"][0])), "duplicate operator ids"),
    ],
    ids=[
        "dup-id",
        "operator",
        "dataset",
        "window",
        "column",
        "outside",
        "ceiling",
        "negative",
        "overlap",
        "dup-operator",
    ],
)
def test_invalid_grants(tmp_path: Path, edit: Any, fragment: str) -> None:
    policies = make_policies(tmp_path, grants=edit)
    with pytest.raises(PolicyInvalid) as info:
        _load(policies)
    assert fragment in info.value.message


def test_delta_on_a_dataset_that_allows_none(tmp_path: Path) -> None:
    def no_delta(d: dict[str, Any]) -> None:
        ds = next(x for x in d["datasets"] if x["id"] == "population")
        ds["privacy"]["delta_allowed"] = False

    policies = make_policies(tmp_path, catalog=no_delta)
    with pytest.raises(PolicyInvalid) as info:
        _load(policies)
    assert info.value.code == "DELTA_NOT_ALLOWED"


def test_dates_without_zone_mean_utc(tmp_path: Path, catalog: Catalog) -> None:
    policies = make_policies(
        tmp_path,
        grants=lambda d: add_grant(d, valid_from="2026-01-01", valid_until="2027-01-01"),
    )
    grants = _load(policies)
    g = find_grant(grants, "op-jinshu", "extra", now=datetime(2026, 3, 1, tzinfo=UTC))
    assert g.valid_from == datetime(2026, 1, 1, tzinfo=UTC)
