"""Derived outputs' 95% half-widths: propagated from the noisy measures (issue 16).

Ratios, variances and means get a ± that covers the true value at least 95% of the
time; a box that reaches a zero divisor is unbounded; the ± follows each released row
through HAVING, ORDER BY and LIMIT; the published ± is rounded outward.
"""

from __future__ import annotations

import math
import time

import pyarrow as pa
import pytest

from sandbox.plan import KeySpec, Measure, Output
from sandbox.privacy import explain, release
from sandbox.privacy.accuracy import _half_width, cell_accuracy, published_half_width
from sandbox.privacy.propagation import MAX_MEASURES
from tests.privacy.factories import cost_of, histogram_measure, make_plan, sum_count_plan

GROUPS = tuple(range(40))


def rate_plan(post_sql: str | None = None, *, groups: tuple[int, ...] = GROUPS, **kw):
    data = {
        "keys": (KeySpec("g", "persons.g", groups),),
        "measures": (Measure("a", "count"), Measure("n", "count")),
        "outputs": (
            Output("g", "key", (), "g"),
            Output("a", "count", ("a",), "a"),
            Output("n", "count", ("n",), "n"),
            Output("rate", "derived", ("a", "n"), "100.0 * a / n"),
        ),
        "post_sql": post_sql or "SELECT g, a, n, TRY(100.0 * a / n) AS rate FROM noisy ORDER BY g",
        "sql": "SELECT g, COUNT(*) FILTER (WHERE x) AS a, COUNT(*) AS n FROM persons GROUP BY g",
    }
    return make_plan(**{**data, **kw})


def test_published_half_width_is_rounded_outward() -> None:
    assert published_half_width(12.45, integer=True) == 12  # integer noise: |e| ≤ 12
    assert published_half_width(12.45, base=5, integer=True) == 15  # 12 + 2.5, up to 5s
    assert published_half_width(3.38, base=5, integer=True) == 10  # 3 + 2.5 → 5.5 → 10
    assert published_half_width(625_753.9) == 630_000  # two significant figures, up
    assert published_half_width(0.012_34) == pytest.approx(0.013)
    assert published_half_width(3.2) == pytest.approx(3.2)
    assert published_half_width(1234.5, integer=True) == 1300
    assert published_half_width(0.0) == 0
    assert published_half_width(None) is None and published_half_width(math.inf) is None


def test_a_ratio_of_noisy_counts_is_covered() -> None:
    plan = rate_plan()
    exact = pa.table({"g": list(GROUPS), "a": [300 + 5 * g for g in GROUPS], "n": [1000] * 40})
    truth = {g: 100.0 * (300 + 5 * g) / 1000 for g in GROUPS}
    cost = cost_of(plan, epsilon=0.5)
    covered, total = 0, 0
    for _ in range(5):
        noisy = release(plan, exact, cost)
        for row, cell in zip(noisy.table.to_pylist(), noisy.accuracy["rate"], strict=True):
            assert cell["method"] == "propagated" and cell["derived"] is True
            hw = cell["accuracy_95"]
            assert 0 < hw < 10  # about (h_a + 0.3 h_n) / 10 for n = 1000
            covered += abs(row["rate"] - truth[row["g"]]) <= hw
            total += 1
    # a 95% (in fact conservative) ±: 200 cells, fewer than 180 covered has p < 10⁻⁶
    assert covered >= 180, f"{covered} of {total}"


def test_a_zero_divisor_in_the_box_makes_the_interval_unbounded() -> None:
    plan = rate_plan(groups=(0, 1))
    exact = pa.table({"g": [0, 1], "a": [1, 500], "n": [2, 1000]})
    cost = cost_of(plan, epsilon=0.2)
    checked = 0
    for _ in range(20):  # the noise decides whether the divisor's box reaches 0
        noisy = release(plan, exact, cost)
        tiny, big = noisy.accuracy["rate"]
        assert "unbounded" not in big and big["accuracy_95"] > 0
        n0 = noisy.table.column("n").to_pylist()[0]
        rate0 = noisy.table.column("rate").to_pylist()[0]
        # the box uses n's half-width at a split level, wider than its 95% one: a noisy
        # n within its 95% half-width of 0 is surely a box that reaches 0
        # (a noisy n of exactly 0 gives rate ±inf: no value, so no ± either)
        finite = rate0 is not None and math.isfinite(rate0)
        if finite and abs(n0) <= noisy.accuracy["n"][0]["accuracy_95"]:
            assert tiny["unbounded"] is True and tiny["accuracy_95"] is None
            checked += 1
    assert checked > 0  # each draw qualifies with probability about 0.9


def test_the_half_width_follows_each_row_through_having_order_and_limit() -> None:
    # groups of very different sizes: the ± of a rate shrinks as the group grows, so a
    # row paired with another group's ± would break the order below
    sizes = {g: 200 * (g + 1) for g in GROUPS}
    exact = pa.table(
        {"g": list(GROUPS), "a": [s // 2 for s in sizes.values()], "n": list(sizes.values())}
    )
    post = (
        "SELECT TRY(100.0 * a / n) AS rate, g, n FROM noisy WHERE n > 1000 ORDER BY n DESC LIMIT 12"
    )
    plan = rate_plan(
        post,
        outputs=(
            Output("rate", "derived", ("a", "n"), "100.0 * a / n"),
            Output("g", "key", (), "g"),
            Output("n", "count", ("n",), "n"),
        ),
    )
    noisy = release(plan, exact, cost_of(plan, epsilon=1.0))
    rows = noisy.table.to_pylist()
    assert [r["g"] for r in rows] == list(range(39, 27, -1))
    hws = [c["accuracy_95"] for c in noisy.accuracy["rate"]]
    assert hws == sorted(hws) and hws[0] < hws[-1]  # biggest groups first: smallest ±


def test_a_key_need_not_be_released_for_its_row_to_be_found() -> None:
    plan = rate_plan(
        "SELECT TRY(100.0 * a / n) AS rate FROM noisy ORDER BY rate",
        outputs=(Output("rate", "derived", ("a", "n"), "100.0 * a / n"),),
    )
    exact = pa.table(
        {"g": list(GROUPS), "a": [10 * g for g in GROUPS], "n": [50 * (g + 1) for g in GROUPS]}
    )
    noisy = release(plan, exact, cost_of(plan, epsilon=1.0))
    assert all(c["accuracy_95"] is not None or c.get("unbounded") for c in noisy.accuracy["rate"])


def test_a_variance_is_covered() -> None:
    n_rows, mean, spread = 2000, 40.0, 10.0
    var = spread**2
    plan = make_plan(
        keys=(KeySpec("g", "persons.g", GROUPS),),
        measures=(
            Measure("n", "count"),
            Measure("s", "sum", "persons.x", 0, 100, False),
            Measure("q", "sum", "persons.x^2", 0, 10_000, False),
        ),
        outputs=(
            Output("g", "key", (), "g"),
            Output("v", "variance", ("q", "s", "n"), "…"),
        ),
        post_sql="SELECT g, TRY(CASE WHEN n > 1 THEN GREATEST((q - s * s / n) / (n - 1), 0) END)"
        " AS v FROM noisy ORDER BY g",
        sql="SELECT g, COUNT(*) AS n, SUM(x) AS s, SUM(x * x) AS q FROM persons GROUP BY g",
    )
    s = n_rows * mean
    q = (n_rows - 1) * var + n_rows * mean**2
    exact = pa.table({"g": list(GROUPS), "n": [n_rows] * 40, "s": [s] * 40, "q": [q] * 40})
    noisy = release(plan, exact, cost_of(plan, epsilon=2.0))
    cells = noisy.accuracy["v"]
    covered = sum(
        abs(r["v"] - var) <= c["accuracy_95"]
        for r, c in zip(noisy.table.to_pylist(), cells, strict=True)
    )
    assert covered >= 36 and all(c["accuracy_95"] > 0 for c in cells)


def test_a_mean_of_an_empty_group_spans_the_bounds() -> None:
    plan = sum_count_plan()
    exact = pa.table({"sex": ["F", "M"], "n": [0, 5000], "s": [0, 0], "inc": [0.0, 1.0e8]})
    noisy = release(plan, exact, cost_of(plan, epsilon=1.0))
    empty, full = noisy.accuracy["mean_income"]
    value = noisy.table.column("mean_income").to_pylist()[0]
    assert empty["accuracy_95"] >= max(value + 10, 50_000 - value) - 1e-6
    assert full["accuracy_95"] < 1000  # 5 000 rows: about (h_s + 20 000·h_n) / 5 000


def test_a_quantile_in_an_expression_ranges_over_its_candidates() -> None:
    h = histogram_measure("h", 0, 100)
    plan = make_plan(
        measures=(h,),
        outputs=(Output("sex", "key", (), "sex"), Output("shifted", "derived", ("h",), "h + 1")),
        post_sql="SELECT sex, TRY(h + 1) AS shifted FROM noisy ORDER BY sex",
        sql="SELECT sex, MAP {} AS h FROM persons GROUP BY sex",
    )
    entry = next(e for e in explain(plan, cost_of(plan)) if e["name"] == "shifted")
    assert entry["method"] == "propagated" and "over its candidates" in entry["pm95_rule"]
    exact = pa.table(
        {
            "sex": ["F", "M"],
            "h": pa.array([[(21, 5)], [(101, 3)]], type=pa.map_(pa.int64(), pa.int64())),
        }
    )
    noisy = release(plan, exact, cost_of(plan))
    for row, cell in zip(noisy.table.to_pylist(), noisy.accuracy["shifted"], strict=True):
        v = row["shifted"] - 1
        assert cell["accuracy_95"] == pytest.approx(max(v, 100 - v))


def test_explain_states_the_rule_and_the_split_level() -> None:
    plan = sum_count_plan()
    cost = cost_of(plan, epsilon=1.0)
    mean = next(e for e in explain(plan, cost) if e["name"] == "mean_income")
    assert mean["method"] == "propagated" and mean["confidence_split"] == pytest.approx(0.975)
    assert all(p["accuracy_split"] > p["accuracy_95"] for p in mean["components"])
    assert mean["pm95_rule"].startswith("± ≤ (") and "|mean|" in mean["pm95_rule"]
    rate = next(e for e in explain(rate_plan(), cost_of(rate_plan())) if e["name"] == "rate")
    assert rate["pm95_rule"].startswith("from the box a ± ") and "97.5%" in rate["pm95_rule"]


def test_the_same_noisy_values_always_get_the_same_half_widths() -> None:
    plan = rate_plan()
    cost = cost_of(plan)
    groups = [(g,) for g in GROUPS]
    values = {"a": [30 + g for g in GROUPS], "n": [100 + 3 * g for g in GROUPS]}
    table = pa.table(
        {
            "g": list(GROUPS),
            "a": values["a"],
            "n": values["n"],
            "rate": [100.0 * a / n for a, n in zip(values["a"], values["n"], strict=True)],
        }
    )
    one = cell_accuracy(plan, cost, table, ["g"], groups, values)
    two = cell_accuracy(plan, cost, table, ["g"], groups, values)
    assert one == two and all(c["accuracy_95"] > 0 for c in one["rate"])


def test_ten_thousand_groups_with_a_three_measure_output_take_seconds() -> None:
    groups = tuple(range(10_000))
    plan = make_plan(
        keys=(KeySpec("g", "persons.g", groups),),
        measures=(Measure("a", "count"), Measure("b", "count"), Measure("n", "count")),
        outputs=(Output("g", "key", (), "g"), Output("r", "derived", ("a", "b", "n"), "…")),
        post_sql="SELECT g, TRY((a - b) / n) AS r FROM noisy",
        sql="SELECT g, COUNT(*) AS a, COUNT(*) AS b, COUNT(*) AS n FROM persons GROUP BY g",
    )
    exact = pa.table(
        {"g": list(groups), "a": [50] * 10_000, "b": [20] * 10_000, "n": [100] * 10_000}
    )
    started = time.monotonic()
    noisy = release(plan, exact, cost_of(plan))
    assert len(noisy.accuracy["r"]) == 10_000
    assert time.monotonic() - started < 10  # 640 000 grid points, in the boxed DuckDB (~1 s)


@pytest.mark.parametrize("k", [5, 11])
def test_many_measures_use_the_corners_and_too_many_none(k: int) -> None:
    names = [f"c{i}" for i in range(k)]
    plan = make_plan(
        keys=(KeySpec("g", "persons.g", GROUPS),),
        measures=tuple(Measure(n, "count") for n in names),
        outputs=(Output("g", "key", (), "g"), Output("r", "derived", tuple(names), "…")),
        post_sql=f"SELECT g, TRY(({' + '.join(names)}) / {k}.0) AS r FROM noisy ORDER BY g",
        sql="SELECT 1",
    )
    exact = pa.table({"g": list(GROUPS), **{n: [100] * 40 for n in names}})
    cost = cost_of(plan, epsilon=2.0)
    noisy = release(plan, exact, cost)
    cells = noisy.accuracy["r"]
    if k > MAX_MEASURES:
        assert all(c["accuracy_95"] is None and "unbounded" not in c for c in cells)
        return
    # the mean of k counts: its ± is each count's own, at level 95%/k (the corners)
    each = math.floor(_half_width(cost.measure("c0"), "pure", 0.05 / k))
    assert all(c["accuracy_95"] == pytest.approx(each) for c in cells)
