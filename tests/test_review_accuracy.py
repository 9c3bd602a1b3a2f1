"""The ± a reviewed result is released with, and the wide_interval flag (issue 16)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sandbox import review
from sandbox.plan import KeySpec, Measure, Output
from sandbox.privacy import release
from tests.privacy.factories import cost_of
from tests.privacy.factories import make_plan as privacy_plan
from tests.test_review import make_plan, noisy_table


@pytest.fixture(scope="module")
def rules(policies_dir):
    return review.load_rules(policies_dir)


def accuracy(mean_hw: list[float | None]) -> dict:
    """The privacy layer's cells (sandbox.privacy.accuracy.cell_accuracy) for the
    table of tests/test_review.py: a direct count and a derived mean."""
    count = {"scale": 4.0, "accuracy_95": 12.45, "method": "direct", "integer": True}
    return {
        "n": [dict(count) for _ in range(3)],
        "mean_age": [
            {"scale": None, "derived": True, "method": "propagated", "accuracy_95": hw}
            if hw is not None
            else {
                "scale": None,
                "derived": True,
                "method": "propagated",
                "accuracy_95": None,
                "unbounded": True,
            }  # fmt: skip
            for hw in mean_hw
        ],
    }


def test_a_rounded_count_carries_its_rounding_and_a_derived_value_only_its_rounded_pm(rules):
    checked = review.check_output(
        noisy_table(), make_plan(), grade="general-3", rules=rules, accuracy=accuracy([1.234] * 3)
    )
    n, mean = checked.accuracy["n"], checked.accuracy["mean_age"]
    assert checked.table.column("n").to_pylist() == [1235, None, 40]
    # 12.45 → 12 (integer noise) + 2.5 (rounding to 5) → up to a multiple of 5
    assert [c and c["pm95"] for c in n] == [15, None, 15]
    assert n[0]["accuracy_95"] == 12.45 and n[0]["pm95_unit"] == "value"
    assert "integer" not in n[0] and not any("interval" in k for k in n[0])
    assert mean[1] is None  # the suppressed row: no accuracy
    assert mean[0]["pm95"] == pytest.approx(1.3) and "accuracy_95" not in mean[0]
    assert [f["code"] for f in checked.flags] == ["cells_suppressed"]  # nothing is wide


def test_values_narrower_than_their_pm_are_flagged_without_their_values(rules):
    checked = review.check_output(
        noisy_table(),
        make_plan(),
        grade="general-1",
        rules=rules,
        accuracy=accuracy([50.0, 99.0, None]),  # 40.2 ± 50, (suppressed), unbounded
    )
    flag = next(f for f in checked.flags if f["code"] == "wide_interval")
    assert flag["columns"] == ["mean_age"] and flag["rows"] == 2
    assert "40.2" not in flag["message"] and "38.9" not in flag["message"]
    assert checked.accuracy["mean_age"][2]["unbounded"] is True
    assert checked.accuracy["mean_age"][2]["pm95"] is None
    assert checked.required_approvals == 0  # a note for people, not a hold


def test_a_quantile_pm_is_in_rank(rules):
    plan = make_plan(outputs=(Output("county_code", "key"), Output("n", "quantile", ("m0",))))
    cells = [
        {
            "scale": 8.0,
            "accuracy_95": None,
            "method": "rank",
            "rank_error_95": 39.6,
            "candidate_spacing": 50.0,
            "statement": "…",
        }  # fmt: skip
        for _ in range(3)
    ]
    table = noisy_table().drop(["mean_age"])
    checked = review.check_output(
        table, plan, grade="general-1", rules=rules, accuracy={"n": cells}
    )
    assert (
        checked.accuracy["n"][0]["pm95"] == 40 and checked.accuracy["n"][0]["pm95_unit"] == "rank"
    )
    assert "wide_interval" not in {f["code"] for f in checked.flags}  # rows, not value units


def test_the_published_pm_of_rounded_counts_and_means_covers_the_truth(rules):
    """Through the real release and review: a count rounded to 5 and a mean, each
    within its published ± of the exact value in (far) more than 95% of cells."""
    keys = tuple(f"c{i:02d}" for i in range(60))
    plan = privacy_plan(
        keys=(KeySpec("county", "persons.county", keys),),
        measures=(Measure("n", "count"), Measure("s", "sum", "persons.age", 0, 100, True)),
        outputs=(
            Output("county", "key", (), "county"),
            Output("n", "count", ("n",), "n"),
            Output("mean_age", "mean", ("s", "n"), "…"),
        ),
        post_sql="SELECT county, n, TRY(CASE WHEN n > 0 THEN LEAST(GREATEST(s / n, 0.0), 100.0)"
        " END) AS mean_age FROM noisy ORDER BY county",
    )
    exact = pa.table({"county": list(keys), "n": [40 + i for i in range(60)],
                      "s": [(40 + i) * 37 for i in range(60)]})  # fmt: skip
    truth = {r["county"]: r for r in exact.to_pylist()}
    noisy = release(plan, exact, cost_of(plan, epsilon=1.0))
    checked = review.check_output(
        noisy.table, plan, grade="general-3", rules=rules, accuracy=noisy.accuracy
    )
    hits = {"n": 0, "mean_age": 0}
    for i, row in enumerate(checked.table.to_pylist()):
        t = truth[row["county"]]
        assert row["n"] % 5 == 0 and checked.accuracy["n"][i]["pm95"] % 5 == 0
        hits["n"] += abs(row["n"] - t["n"]) <= checked.accuracy["n"][i]["pm95"]
        hits["mean_age"] += abs(row["mean_age"] - 37) <= checked.accuracy["mean_age"][i]["pm95"]
    assert hits["n"] >= 54 and hits["mean_age"] >= 54, hits  # 95% of 60 is 57
