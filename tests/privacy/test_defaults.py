"""The one default δ (sandbox/privacy/defaults.py): the rule, and that ten queries at
the default always fit the grant's δ in the real ledger."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest

from sandbox import ledger, store
from sandbox.catalog import Catalog
from sandbox.compiler import compile_query
from sandbox.errors import BudgetRefused
from sandbox.grants import Grants, find_grant
from sandbox.plan import KeySpec, Plan
from sandbox.privacy import choose_delta, default_delta, needs_delta, plan_cost
from sandbox.privacy.defaults import DELTA_GRAIN
from tests.privacy.factories import make_dataset, make_grant, make_plan

PUBLIC_PURE = "SELECT county_code, COUNT(*) AS n FROM persons GROUP BY county_code"
PRIVATE_PURE = "SELECT occupation, COUNT(*) AS n FROM persons GROUP BY occupation"
PUBLIC_ZCDP = "SELECT year, SUM(amount) AS total FROM payments GROUP BY year"


def _planned(catalog: Catalog, grants: Grants, scenario: str, sql: str):  # type: ignore[no-untyped-def]
    grant = find_grant(grants, "op-jinshu", scenario)
    plan = compile_query(sql, catalog=catalog, grant=grant)
    dataset = catalog.dataset(plan.dataset)
    assert dataset is not None
    return plan, dataset, grant


@pytest.mark.parametrize(
    ("scenario", "sql", "expected"),
    [
        ("employment-income", PUBLIC_PURE, 0.0),  # public keys, pure ε: no δ
        ("employment-income", PRIVATE_PURE, 1e-6),  # partition selection: a tenth of 1e-5
        ("pension-contributions", PUBLIC_ZCDP, 1e-6),  # zCDP states its guarantee with δ
    ],
)
def test_the_rule_on_the_demo_grants(
    catalog: Catalog, grants: Grants, scenario: str, sql: str, expected: float
) -> None:
    plan, dataset, grant = _planned(catalog, grants, scenario, sql)
    assert needs_delta(plan, dataset) is (expected > 0)
    assert default_delta(plan, dataset, grant) == pytest.approx(expected, rel=1e-12)
    # an explicit δ always wins, 0 included
    assert choose_delta(None, plan, dataset, grant) == default_delta(plan, dataset, grant)
    assert choose_delta(0.0, plan, dataset, grant) == 0.0
    assert choose_delta(3e-6, plan, dataset, grant) == 3e-6
    plan_cost(plan, epsilon=0.5, delta=choose_delta(None, plan, dataset, grant),
              dataset=dataset, grant=grant)  # fmt: skip


def _private_plan() -> Plan:
    plan = make_plan(keys=(KeySpec("sex", "persons.sex", None),))
    assert plan.private_keys
    return plan


def test_no_delta_where_none_is_allowed_or_granted() -> None:
    assert default_delta(_private_plan(), make_dataset(delta_allowed=False), make_grant()) == 0.0
    # a grant without δ gives 0 (plan_cost then refuses DELTA_REQUIRED, naming the grant's δ)
    assert default_delta(_private_plan(), make_dataset(), make_grant(delta=0.0)) == 0.0
    assert default_delta(make_plan(), make_dataset(), make_grant()) == 0.0  # public, pure


@pytest.mark.parametrize("total", [1e-5, 1e-6, 3e-7, 7.7e-9, 0.5, 1e-13, 3e-15])
def test_ten_defaults_fit_in_the_ledgers_integer_units(total: float) -> None:
    """Rounded down on the ledger's grain: ten default costs, each rounded UP by the
    ledger, never pass its cap, rounded DOWN (pure: the whole δ; zCDP: each query's
    selection half against the account's half)."""
    assert DELTA_GRAIN == ledger.DELTA_UNITS
    grant = make_grant(delta=total)
    pure = default_delta(_private_plan(), make_dataset(), grant)
    zcdp = default_delta(make_plan(definition="zcdp"), make_dataset("zcdp"), grant)
    assert pure == zcdp <= total / 10
    assert pure > 0 or total < 20 / DELTA_GRAIN

    def up(v: float) -> int:
        return math.ceil(Fraction(v) * DELTA_GRAIN)

    assert 10 * up(pure) <= ledger.grant_totals(grant, "pure")[1]
    assert 10 * up(zcdp / 2) <= ledger.grant_totals(grant, "zcdp")[1]


def test_ten_default_queries_fit_the_grants_delta(
    catalog: Catalog, grants: Grants, tmp_path: Path
) -> None:
    """Ten private-key queries at the default δ fit in the real ledger; the eleventh is
    refused for δ (ε is small, so δ is what runs out). (The demo catalogue has no
    private key on its zCDP dataset; the units test above covers zCDP's half.)"""
    plan, dataset, grant = _planned(catalog, grants, "employment-income", PRIVATE_PURE)
    conn = store.connect(tmp_path / "sandbox.db")
    delta = default_delta(plan, dataset, grant)
    cost = plan_cost(plan, epsilon=0.05, delta=delta, dataset=dataset, grant=grant)
    assert cost.selection_delta > 0
    for i in range(10):
        with store.transaction(conn):
            ledger.reserve(conn, grant=grant, dataset=plan.dataset, job_id=f"j{i}", cost=cost)
    with pytest.raises(BudgetRefused) as err, store.transaction(conn):
        ledger.reserve(conn, grant=grant, dataset=plan.dataset, job_id="j10", cost=cost)
    assert err.value.code == "BUDGET_EXHAUSTED"
    assert "left_delta" in err.value.details
