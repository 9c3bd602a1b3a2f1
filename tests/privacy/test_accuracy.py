"""Accuracy: explain() states each output's mechanism, scale and 95% half-width."""

from __future__ import annotations

import opendp.prelude as dp
import pytest

from sandbox.privacy import explain, release
from tests.privacy.factories import cost_of, exact_of, persons_table, private_plan, sum_count_plan

dp.enable_features("contrib")


# ------------------------------------------------------------------ explain


def test_explain_matches_cost_and_release_accuracy() -> None:
    plan = sum_count_plan()
    cost = cost_of(plan, epsilon=1.2)
    entries = {e["name"]: e for e in explain(plan, cost)}
    assert list(entries) == ["sex", "n", "s", "mean_income"]
    assert entries["sex"]["mechanism"].startswith("public key set")
    assert entries["n"]["scale"] == cost.measure("n").scale
    assert entries["n"]["accuracy_95"] == pytest.approx(
        dp.discrete_laplacian_scale_to_accuracy(scale=cost.measure("n").scale, alpha=0.05)
    )
    assert entries["mean_income"]["mechanism"].startswith("derived")
    assert {c["measure"] for c in entries["mean_income"]["components"]} == {"inc", "n"}
    noisy = release(plan, exact_of(plan.sql, persons_table(100)), cost)
    assert noisy.accuracy["s"][0]["accuracy_95"] == entries["s"]["accuracy_95"]


def test_explain_private_key_names_threshold() -> None:
    plan = private_plan()
    cost = cost_of(plan, epsilon=1.0, delta=1e-6)
    key = explain(plan, cost)[0]
    assert key["threshold"] == cost.measure("units").threshold
    assert "threshold" in key["mechanism"]
