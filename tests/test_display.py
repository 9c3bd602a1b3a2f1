"""The one set of display rules (sandbox/display.py): rounding to the precision a ±
supports, ledger amounts as their decimal, ρ budgets in ε and in queries, review
reasons as a sentence."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sandbox import display
from sandbox.privacy import rho_from_epsilon_delta
from sandbox.privacy.mechanisms import zcdp_epsilon


@pytest.mark.parametrize(
    ("hw", "step"),
    [(120, "10"), (0.3, "0.1"), (0.29, "0.01"), (1000, "100"), (5, "1"), (3, "1"), (2.9, "0.1")],
)
def test_the_step_is_the_largest_power_of_ten_within_a_third_of_the_interval(hw, step):
    assert display.round_step(hw) == Decimal(step)


@pytest.mark.parametrize("hw", [None, 0, -1, float("nan"), float("inf"), "12", True])
def test_no_interval_no_rounding(hw):
    assert display.round_step(hw) is None
    assert display.round_to_interval(4934.305542578124, hw) == 4934.305542578124


def test_values_round_to_what_their_interval_supports():
    assert display.fmt_estimate(4934.305542578124, 120) == "4,930"
    assert display.fmt_estimate(4934.305542578124, 0.3) == "4,934.3"
    assert display.fmt_estimate(12.04, 0.3, thousands=False) == "12.0"
    assert display.fmt_half_width(123.4) == "120"
    assert display.fmt_half_width(0.34) == "0.3"
    assert display.round_to_interval(4934.305542578124, 120) == 4930
    # a count is never shown with a fraction, however narrow its interval
    assert display.fmt_estimate(1234, 2.0) == "1,234"
    assert display.fmt_half_width(2.0, integer=True) == "2"
    assert display.round_to_interval(1234, 0.5) == 1234
    assert isinstance(display.round_to_interval(4934.3, 120), int)
    # the rounding moves a value by at most a sixth of its ±
    for hw in (0.31, 3.3, 47.0, 120.0, 999.0):
        assert abs(display.round_to_interval(4934.305542578124, hw) - 4934.305542578124) <= hw / 6


def test_ledger_amounts_are_the_decimal_the_ledger_holds():
    assert display.fmt_amount(14.700000001) == "14.7"
    assert display.fmt_amount(14.7) == "14.7"
    assert display.fmt_amount(20.0) == "20"
    assert display.fmt_amount(0) == "0"
    assert display.fmt_amount(1.485017515) == "1.48502"
    assert display.fmt_amount(0.000000001) == "0.000000001"
    assert display.fmt_amount(None) == "-"
    assert display.fmt_delta(5e-6) == "5e-6"
    assert display.fmt_delta(1.25e-7) == "1.25e-7"
    assert display.fmt_delta(0.0) == "0"


def test_a_rho_budget_in_epsilon_and_in_queries():
    total = rho_from_epsilon_delta(10.0, 5e-6)
    row = {
        "unit": "rho",
        "total": total,
        "spent": 0.2,
        "reserved": 0.0,
        "left": total - 0.2,
        "delta_total": 5e-6,
    }
    # no jobs yet: a query at the per-query ceiling, at the default δ (a tenth of the grant's)
    out = display.budget_outlook(row, [], ceiling_epsilon=1.0, grant_delta=1e-5)
    per_query = rho_from_epsilon_delta(1.0, 1e-6)
    assert out["typical_from"] == "ceiling" and out["typical_cost"] == pytest.approx(per_query)
    assert out["queries_left"] == int((total - 0.2) // per_query)
    eq = out["epsilon_equivalent"]
    assert eq["delta"] == 5e-6
    assert eq["total"] == pytest.approx(zcdp_epsilon(total, 5e-6))  # OpenDP's, ≤ the grant's
    assert eq["total"] < 10.0 and eq["spent"] == pytest.approx(zcdp_epsilon(0.2, 5e-6))
    # with jobs: the median of the latest ones
    out = display.budget_outlook(row, [0.05, 0.1, 0.2], ceiling_epsilon=1.0, grant_delta=1e-5)
    assert out["typical_from"] == "recent_jobs" and out["typical_cost"] == 0.1
    assert out["recent_jobs"] == 3 and out["queries_left"] == int((total - 0.2) / 0.1)


def test_an_epsilon_budget_has_no_conversion():
    row = {"unit": "epsilon", "total": 15.0, "spent": 14.7, "reserved": 0.0, "left": 0.3}
    out = display.budget_outlook(row, [0.1] * 30, ceiling_epsilon=2.0, grant_delta=1e-6)
    assert "epsilon_equivalent" not in out
    assert out["queries_left"] == 3 and out["recent_jobs"] == display.RECENT_JOBS
    out = display.budget_outlook(row, [], ceiling_epsilon=2.0, grant_delta=1e-6)
    assert out["typical_cost"] == 2.0 and out["queries_left"] == 0


def test_a_measure_share_is_of_the_job_in_its_own_unit():
    job = {"cost": {"definition": "zcdp", "epsilon": 1.0, "rho": 0.02}}
    assert display.loss_share(0.01, job) == pytest.approx(0.5)
    job = {"cost": {"definition": "pure", "epsilon": 2.0, "rho": None}}
    assert display.loss_share(1.0, job) == pytest.approx(0.5)
    assert display.loss_share(1.0, {"cost": None}) is None


def test_review_reasons_and_their_sentence():
    flags = [
        {"code": "cells_suppressed", "message": "3 of 9 rows", "rows": 3},
        {"code": "near_duplicate", "message": "…", "jobs": ["j-1", "j-2"]},
    ]
    reasons = display.review_reasons(grade="general-3", grade_approvals=1, flags=flags)
    assert reasons == [
        {"code": "grade", "grade": "general-3", "approvals": 1},
        {"code": "near_duplicate", "jobs": ["j-1", "j-2"]},
    ]
    job = {"state": "in_review", "approvals": 0, "required_approvals": 1}
    sentence = display.review_sentence({**job, "review_reasons": reasons})
    assert sentence is not None
    assert sentence.startswith("Waiting for review: 0 of 1 supervisor approval(s), because ")
    assert "grade general-3" in sentence and "(j-1, j-2)" in sentence
    assert "could be differenced" in sentence
    assert display.review_sentence({**job, "state": "released"}) is None
    assert display.review_reasons(grade="general-1", grade_approvals=0, flags=[]) == []
