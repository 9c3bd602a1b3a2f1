"""The DP layer: validation, budget split, sensitivities, release, quantile scores, speed."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import duckdb
import opendp.prelude as dp
import pyarrow as pa
import pytest

from sandbox.catalog import Dataset
from sandbox.errors import BudgetRefused, SystemFailure
from sandbox.grants import Grant
from sandbox.plan import KeySpec, Measure, Output, Plan
from sandbox.privacy import (
    FLOAT_SUM_MAX_ROWS,
    explain,
    plan_cost,
    quantile_alpha_fraction,
    quantile_candidates,
    quantile_scores,
    release,
    rho_from_epsilon_delta,
)

dp.enable_features("contrib")

SEXES = ("F", "M")


# ------------------------------------------------------------------ factories


def make_dataset(definition: str = "pure", delta_allowed: bool = True, **overrides: Any) -> Dataset:
    data: dict[str, Any] = {
        "id": "population",
        "title": "t",
        "owner": "o",
        "version": "1",
        "grade": "general-3",
        "sharing": {"attribute": "conditional", "reason": "personal"},
        "privacy_unit": "person_id",
        "privacy": {"definition": definition, "delta_allowed": delta_allowed},
        "tables": [
            {
                "name": "persons",
                "file": "population/persons.parquet",
                "rows_per_unit": 1,
                "columns": [{"name": "person_id", "type": "VARCHAR", "uses": ["identifier"]}],
            }
        ],
    }
    data.update(overrides)
    return Dataset.model_validate(data)


def make_grant(
    epsilon: float = 10.0, delta: float = 1e-5, ceiling: float = 2.0, **kw: Any
) -> Grant:
    data: dict[str, Any] = {
        "id": "g-test",
        "operator": "op-test",
        "scenario": {"id": "s", "purpose": "p"},
        "datasets": ["population"],
        "budget": {"epsilon": epsilon, "delta": delta, "max_epsilon_per_query": ceiling},
        "valid_from": datetime(2026, 1, 1, tzinfo=UTC),
        "valid_until": datetime(2028, 1, 1, tzinfo=UTC),
    }
    data.update(kw)
    return Grant.model_validate(data)


def make_plan(**overrides: Any) -> Plan:
    """COUNT(*) by sex over a public key set, unless overridden."""
    data: dict[str, Any] = {
        "query_sha256": "0" * 64,
        "dataset": "population",
        "dataset_version": "1",
        "privacy_unit": "person_id",
        "definition": "pure",
        "tables": {"persons": "population/persons.parquet"},
        "dataset_versions": {"population": "1"},
        "sql": "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex",
        "keys": (KeySpec("sex", "persons.sex", SEXES),),
        "measures": (Measure("n", "count"),),
        "outputs": (Output("sex", "key", (), "sex"), Output("n", "count", ("n",), "n")),
        "post_sql": "SELECT sex, n FROM noisy ORDER BY sex",
        "unit_rows": 1,
        "unit_groups": 1,
        "max_groups": 10_000,
    }
    data.update(overrides)
    return Plan(**data)


def histogram_measure(
    name: str = "h",
    lower: float = 0,
    upper: float = 100,
    alpha: float = 0.5,
    integer: bool = True,
    column: str = "persons.age",
) -> Measure:
    return Measure(
        name,
        "histogram",
        column,
        lower,
        upper,
        integer,
        quantile_candidates(lower, upper, integer),
        alpha,
    )


def histogram_of(values: list[float], candidates: tuple[float, ...]) -> dict[int, int]:
    """The runner's histogram (plan.py slot definition), computed the slow obvious way."""
    hist: dict[int, int] = {}
    for v in values:
        slot = None
        for i, c in enumerate(candidates):
            if v == c:
                slot = 2 * i + 1
                break
            if v < c:
                slot = 2 * i
                break
        if slot is None:
            slot = 2 * len(candidates)
        hist[slot] = hist.get(slot, 0) + 1
    return hist


def cost_of(
    plan: Plan,
    epsilon: float = 1.0,
    delta: float = 0.0,
    definition: str = "pure",
    grant: Grant | None = None,
    weights: dict[str, float] | None = None,
):
    return plan_cost(
        plan,
        epsilon=epsilon,
        delta=delta,
        dataset=make_dataset(definition),
        grant=grant or make_grant(),
        weights=weights,
    )


def persons_table(n: int = 2000, seed: int = 3) -> pa.Table:
    """Fabricated rows (deterministic, not private data) for exact tables via DuckDB."""
    con = duckdb.connect()
    return con.sql(
        f"""SELECT 'p' || i AS person_id,
                   CASE WHEN i % 3 = 0 THEN 'F' ELSE 'M' END AS sex,
                   (i * 37) % 101 AS age,
                   ((i * 7919) % 50000)::DOUBLE AS income,
                   'occ' || (i % 4) AS occupation
            FROM range({n}) t(i)"""
    ).to_arrow_table()


def exact_of(sql: str, persons: pa.Table) -> pa.Table:
    con = duckdb.connect()
    con.register("persons", persons)
    return con.sql(sql).to_arrow_table()


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("epsilon", "delta", "code", "fragment"),
    [
        (0.0, 0.0, "INVALID_EPSILON", "0.0"),
        (-1.0, 0.0, "INVALID_EPSILON", "-1.0"),
        (float("nan"), 0.0, "INVALID_EPSILON", "nan"),
        (float("inf"), 0.0, "INVALID_EPSILON", "inf"),
        (True, 0.0, "INVALID_EPSILON", "True"),
        ("1", 0.0, "INVALID_EPSILON", "'1'"),
        (1.0, -1e-9, "INVALID_DELTA", "-1e-09"),
        (1.0, 1.0, "INVALID_DELTA", "1.0"),
        (1.0, float("nan"), "INVALID_DELTA", "nan"),
        (2.5, 0.0, "EPSILON_ABOVE_CEILING", "ε = 2"),
    ],
)
def test_bad_epsilon_delta_refused_with_numbers(epsilon, delta, code, fragment) -> None:
    with pytest.raises(BudgetRefused) as info:
        cost_of(make_plan(), epsilon=epsilon, delta=delta)
    assert info.value.code == code
    assert fragment in info.value.message
    assert info.value.exit_code == 2


def test_ceiling_message_states_ceiling_and_request() -> None:
    with pytest.raises(BudgetRefused) as info:
        cost_of(make_plan(), epsilon=2.5)
    assert "2.5" in info.value.message and "ε = 2 " in info.value.message


def test_delta_not_allowed() -> None:
    with pytest.raises(BudgetRefused) as info:
        plan_cost(
            make_plan(),
            epsilon=1.0,
            delta=1e-6,
            dataset=make_dataset(delta_allowed=False),
            grant=make_grant(),
        )
    assert info.value.code == "DELTA_NOT_ALLOWED"
    assert "1e-06" in info.value.message


def private_plan(**overrides: Any) -> Plan:
    data: dict[str, Any] = {
        "keys": (KeySpec("occupation", "persons.occupation", None),),
        "measures": (Measure("n", "count"), Measure("units", "count_units", selection=True)),
        "outputs": (
            Output("occupation", "key", (), "occupation"),
            Output("n", "count", ("n",), "n"),
        ),
        "post_sql": "SELECT occupation, n FROM noisy ORDER BY occupation",
        "sql": "SELECT occupation, COUNT(*) AS n, COUNT(DISTINCT person_id) AS units "
        "FROM persons GROUP BY occupation",
    }
    data.update(overrides)
    return make_plan(**data)


def test_private_keys_need_delta() -> None:
    with pytest.raises(BudgetRefused) as info:
        cost_of(private_plan(), epsilon=1.0, delta=0.0)
    assert info.value.code == "DELTA_REQUIRED"
    assert "occupation" in info.value.message and "1e-05" in info.value.hint


def test_zcdp_needs_delta() -> None:
    with pytest.raises(BudgetRefused) as info:
        cost_of(make_plan(definition="zcdp"), definition="zcdp", epsilon=1.0, delta=0.0)
    assert info.value.code == "DELTA_REQUIRED"


@pytest.mark.parametrize(
    "weights",
    [{"n": 0.0}, {"n": -1.0}, {"n": float("nan")}, {"nope": 1.0}, {}, {"n": 1.0, "sex": 1.0}],
)
def test_bad_weights(weights) -> None:
    with pytest.raises(BudgetRefused) as info:
        cost_of(make_plan(), weights=weights)
    assert info.value.code == "INVALID_WEIGHTS"
    assert "n" in info.value.hint


def test_plan_of_another_definition_is_a_system_failure() -> None:
    with pytest.raises(SystemFailure):
        cost_of(make_plan(definition="zcdp"), definition="pure")


# ------------------------------------------------------------------ split and scales


def sum_count_plan(**overrides: Any) -> Plan:
    data: dict[str, Any] = {
        "measures": (
            Measure("n", "count"),
            Measure("s", "sum", "persons.age", 0, 100, True),
            Measure("inc", "sum", "persons.income", -10.0, 50_000.0, False),
        ),
        "outputs": (
            Output("sex", "key", (), "sex"),
            Output("n", "count", ("n",), "n"),
            Output("s", "sum", ("s",), "s"),
            Output("mean_income", "mean", ("inc", "n"), "inc / GREATEST(n, 1)"),
        ),
        "post_sql": "SELECT sex, n, s, inc / GREATEST(n, 1) AS mean_income FROM noisy ORDER BY sex",
        "sql": "SELECT sex, COUNT(*) AS n, SUM(LEAST(GREATEST(age, 0), 100)) AS s, "
        "SUM(LEAST(GREATEST(income, -10), 50000)) AS inc FROM persons GROUP BY sex",
    }
    data.update(overrides)
    return make_plan(**data)


def test_even_split_and_pure_sensitivities() -> None:
    plan = sum_count_plan(unit_rows=3, unit_groups=2)
    cost = cost_of(plan, epsilon=1.5)
    assert cost.definition == "pure" and cost.rho is None and cost.delta == 0.0
    shares = {m.name: m.share for m in cost.measures}
    assert shares == pytest.approx({"n": 0.5, "s": 0.5, "inc": 0.5})
    assert math.fsum(shares.values()) <= 1.5 + 1e-12
    n, s, inc = (cost.measure(k) for k in ("n", "s", "inc"))
    assert n.sensitivity == 3 and n.scale == pytest.approx(3 / 0.5, rel=1e-8)
    assert s.sensitivity == 300 and s.scale == pytest.approx(300 / 0.5, rel=1e-8)
    relax = 2 * 2 * FLOAT_SUM_MAX_ROWS**2 * 2.0**-52 * 50_000  # G = 2 groups
    assert inc.sensitivity == pytest.approx(3 * 50_000 + relax)
    assert not inc.integer and n.integer
    # the scale really gives at most the share, by OpenDP's own map
    lap = dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), scale=s.scale
    )
    assert lap.map(300) <= 0.5


def test_weighted_split_maps_outputs_to_measures() -> None:
    plan = sum_count_plan()
    cost = cost_of(plan, epsilon=2.0, weights={"n": 1, "s": 1, "mean_income": 2})
    shares = {m.name: m.share for m in cost.measures}
    # n: 1 + 2/2 = 2, s: 1, inc: 2/2 = 1 → 2:1:1
    assert shares == pytest.approx({"n": 1.0, "s": 0.5, "inc": 0.5})


def test_zcdp_rho_and_gaussian_scales() -> None:
    plan = sum_count_plan(
        definition="zcdp",
        unit_rows=2,
        unit_groups=4,
        measures=(
            Measure("n", "count"),
            Measure("u", "count_units"),
            Measure("s", "sum", "persons.age", 0, 100, True),
            Measure("inc", "sum", "persons.income", 0, 10.0, False),
        ),
        outputs=(
            Output("n", "count", ("n",)),
            Output("u", "count_units", ("u",)),
            Output("s", "sum", ("s",)),
            Output("mean_income", "mean", ("inc", "n")),
        ),
    )
    cost = cost_of(plan, definition="zcdp", epsilon=1.0, delta=1e-6)
    rho = rho_from_epsilon_delta(1.0, 1e-6)
    L = math.log(1e6)
    assert rho + 2 * math.sqrt(rho * L) == pytest.approx(1.0)
    assert cost.rho == pytest.approx(rho) and cost.epsilon == 1.0 and cost.delta == 1e-6
    assert cost.epsilon_equivalent is not None and cost.epsilon_equivalent <= 1.0
    each = rho / 4
    assert cost.measure("n").sensitivity == 2
    assert cost.measure("u").sensitivity == pytest.approx(2.0)  # √G, G = 4
    assert cost.measure("n").scale == pytest.approx(2 / math.sqrt(2 * each), rel=1e-8)
    assert cost.measure("s").scale == pytest.approx(200 / math.sqrt(2 * each), rel=1e-8)
    assert "Gaussian" in cost.measure("n").mechanism


def test_selection_threshold_meets_delta_by_opendp_map() -> None:
    plan = private_plan(unit_groups=3)
    cost = cost_of(plan, epsilon=1.0, delta=1e-6)
    sel = cost.measure("units")
    assert sel.selection and sel.threshold is not None and sel.delta == 1e-6
    assert cost.selection_delta == 1e-6 and cost.delta == 1e-6
    dom = dp.map_domain(dp.atom_domain(T="i64"), dp.atom_domain(T="i64"))
    metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
    m = dp.m.make_laplace_threshold(dom, metric, scale=sel.scale, threshold=sel.threshold)
    eps, delta = m.map((3, 3, 1))
    assert eps <= sel.share + 1e-12 and delta <= 1e-6
    # fitted one count higher than OpenDP's map asks (see privacy._selection_cost)
    assert m.map((3, 6, 2))[1] <= 1e-6
    lower = dp.m.make_laplace_threshold(dom, metric, scale=sel.scale, threshold=sel.threshold - 1)
    assert lower.map((3, 6, 2))[1] > 1e-6  # the smallest threshold that meets δ


# ------------------------------------------------------------------ release


def test_public_keys_release_every_key_and_drop_others() -> None:
    plan = make_plan(
        keys=(KeySpec("sex", "persons.sex", ("F", "M", "X")),),
        post_sql="SELECT sex, n FROM noisy ORDER BY sex",
    )
    exact = pa.table({"sex": ["F", "M", "??"], "n": [500, 400, 7]})
    noisy = release(plan, exact, cost_of(plan, epsilon=2.0))
    rows = noisy.to_json_rows()
    assert [r["sex"] for r in rows] == ["F", "M", "X"]  # X absent: released; ?? dropped
    assert all(isinstance(r["n"], int) for r in rows)
    assert abs(rows[0]["n"] - 500) < 40 and abs(rows[1]["n"] - 400) < 40 and abs(rows[2]["n"]) < 40
    cells = noisy.accuracy["n"]
    hw = dp.discrete_laplacian_scale_to_accuracy(scale=0.5, alpha=0.05)
    assert cells[0]["accuracy_95"] == pytest.approx(hw)
    assert cells[0]["interval_95"] == pytest.approx([rows[0]["n"] - hw, rows[0]["n"] + hw])
    assert noisy.mechanisms == ["discrete Laplace"]


def test_public_keys_typed_from_exact_column() -> None:
    plan = make_plan(
        keys=(KeySpec("year", "payments.year", (2019, 2020, 2021)),),
        outputs=(Output("year", "key"), Output("n", "count", ("n",))),
        post_sql="SELECT year, n FROM noisy ORDER BY year",
    )
    exact = pa.table({"year": pa.array([2020], type=pa.int32()), "n": [10]})
    table = release(plan, exact, cost_of(plan)).table
    assert table.column("year").to_pylist() == [2019, 2020, 2021]


def test_no_keys_and_empty_exact() -> None:
    plan = make_plan(
        keys=(), outputs=(Output("n", "count", ("n",)),), post_sql="SELECT n FROM noisy"
    )
    exact = pa.table({"n": pa.array([], type=pa.int64())})
    rows = release(plan, exact, cost_of(plan, epsilon=1.0)).to_json_rows()
    assert len(rows) == 1 and isinstance(rows[0]["n"], int)


def test_exact_from_duckdb_with_sums_and_mean_interval() -> None:
    plan = sum_count_plan()
    persons = persons_table()
    exact = exact_of(plan.sql, persons)
    truth = {r["sex"]: r for r in exact.to_pylist()}
    noisy = release(plan, exact, cost_of(plan, epsilon=2.0))
    assert noisy.table.column_names == ["sex", "n", "s", "mean_income"]
    for row, cell in zip(noisy.to_json_rows(), noisy.accuracy["mean_income"], strict=True):
        t = truth[row["sex"]]
        assert abs(row["n"] - t["n"]) < 50
        lo, hi = cell["interval_95"]
        assert cell["derived"] and -10 <= lo <= hi <= 50_000
        assert lo <= t["inc"] / t["n"] <= hi  # fails with prob ≤ 5% per cell at most
    assert "Laplace (OpenDP, float-safe)" in noisy.mechanisms


def test_private_keys_selection_drops_small_groups() -> None:
    plan = private_plan()
    exact = pa.table(
        {"occupation": ["big1", "big2", "tiny"], "n": [5000, 4000, 1], "units": [5000, 4000, 1]}
    )
    cost = cost_of(plan, epsilon=1.0, delta=1e-6)
    for _ in range(20):
        got = [r["occupation"] for r in release(plan, exact, cost).to_json_rows()]
        assert got == ["big1", "big2"]
    assert release(plan, exact, cost).table.column_names == ["occupation", "n"]


def test_mixed_public_and_private_keys_filter_public_values() -> None:
    plan = private_plan(
        keys=(
            KeySpec("sex", "persons.sex", SEXES),
            KeySpec("occupation", "persons.occupation", None),
        ),
        outputs=(Output("sex", "key"), Output("occupation", "key"), Output("n", "count", ("n",))),
        post_sql="SELECT sex, occupation, n FROM noisy ORDER BY sex, occupation",
    )
    exact = pa.table(
        {"sex": ["F", "Z"], "occupation": ["a", "a"], "n": [9000, 9000], "units": [9000, 9000]}
    )
    rows = release(plan, exact, cost_of(plan, epsilon=1.0, delta=1e-6)).to_json_rows()
    assert [(r["sex"], r["occupation"]) for r in rows] == [("F", "a")]


def test_release_refuses_mismatched_cost_or_table() -> None:
    plan = sum_count_plan()
    with pytest.raises(SystemFailure):
        release(plan, pa.table({"sex": ["F"], "n": [1]}), cost_of(plan))
    with pytest.raises(SystemFailure):
        release(plan, exact_of(plan.sql, persons_table(50)), cost_of(make_plan()))


def test_bad_post_sql_is_a_system_failure_without_engine_text() -> None:
    plan = make_plan(post_sql="SELECT nope FROM noisy")
    with pytest.raises(SystemFailure) as info:
        release(plan, pa.table({"sex": ["F"], "n": [1]}), cost_of(plan))
    assert "nope" not in info.value.message


# ------------------------------------------------------------------ quantiles


def test_quantile_candidates() -> None:
    assert quantile_candidates(0, 100, True) == tuple(float(i) for i in range(101))
    wide = quantile_candidates(0, 50_000, True)
    assert len(wide) == 1000 and wide[0] == 0 and wide[-1] == 50_000
    assert wide[1] - wide[0] == pytest.approx(50_000 / 999)
    floats = quantile_candidates(-1.0, 1.0, False)
    assert len(floats) == 1000 and floats[-1] == 1.0
    with pytest.raises(ValueError):
        quantile_candidates(1, 1, True)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 1 / 3])
@pytest.mark.parametrize("integer", [True, False])
def test_quantile_scores_equal_opendp_scores_on_reconstructed_rows(alpha, integer) -> None:
    lower, upper = (0, 40) if integer else (-5.0, 5.0)
    cands = quantile_candidates(lower, upper, integer)
    if not integer:
        cands = cands[::50] + (upper,)  # fewer candidates; values fall between them
    values = [lower + ((i * 7919) % 97) * (upper - lower) / 96 for i in range(300)]
    values += [cands[3]] * 5 + [lower - 1, upper + 1]  # ties, below, above
    if integer:
        values = [float(round(v)) for v in values]
    hist = histogram_of(values, cands)
    ours = quantile_scores(hist, len(cands), alpha)
    T = float
    space = dp.vector_domain(dp.atom_domain(T=T, nan=False)), dp.symmetric_distance()
    t = dp.t.make_quantile_score_candidates(*space, candidates=list(cands), alpha=alpha)
    assert ours == list(t(values))
    num, den = quantile_alpha_fraction(alpha)
    assert t.map(1) == max(num, den - num)


def test_quantile_release_close_to_truth_and_statement() -> None:
    m = histogram_measure("h", 0, 100, 0.5)
    plan = make_plan(
        measures=(m,),
        outputs=(Output("sex", "key"), Output("median_age", "quantile", ("h",))),
        post_sql="SELECT sex, h AS median_age FROM noisy ORDER BY sex",
        unit_rows=2,
    )
    values = {"F": [float(v % 60) for v in range(3000)], "M": [70.0] * 2000}
    hist_type = pa.map_(pa.int64(), pa.int64())
    exact = pa.table(
        {
            "sex": ["F", "M"],
            "h": pa.array(
                [list(histogram_of(values[s], m.candidates or ()).items()) for s in ("F", "M")],
                type=hist_type,
            ),
        }
    )
    cost = cost_of(plan, epsilon=1.0)
    mc = cost.measure("h")
    assert mc.sensitivity == 2  # R · max(a, d − a) with α = 1/2
    rows = release(plan, exact, cost).to_json_rows()
    assert abs(rows[0]["median_age"] - 29.5) <= 3 and abs(rows[1]["median_age"] - 70) <= 1
    entry = next(e for e in explain(plan, cost) if e["name"] == "median_age")
    assert entry["candidates"] == 101 and entry["candidate_spacing"] == 1.0
    assert "rank" in entry["statement"] and entry["scale"] == mc.scale


# ------------------------------------------------------------------ explain and speed


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


@pytest.mark.parametrize("definition", ["pure", "zcdp"])
def test_release_over_hundreds_of_groups_is_fast(definition) -> None:
    counties = tuple(f"14{i:04d}" for i in range(400))
    plan = make_plan(
        definition=definition,
        keys=(KeySpec("county", "persons.county", counties),),
        measures=(Measure("n", "count"), Measure("s", "sum", "persons.income", 0, 50_000.0, False)),
        outputs=(Output("county", "key"), Output("n", "count", ("n",)), Output("s", "sum", ("s",))),
        post_sql="SELECT county, n, s FROM noisy ORDER BY county",
    )
    exact = pa.table({"county": list(counties), "n": list(range(400)), "s": [100.5] * 400})
    cost = cost_of(
        plan, definition=definition, epsilon=1.0, delta=1e-6 if definition == "zcdp" else 0
    )
    release(plan, exact, cost)  # warm the cached measurements
    start = time.perf_counter()
    noisy = release(plan, exact, cost)
    elapsed = time.perf_counter() - start
    assert noisy.table.num_rows == 400
    assert elapsed < 0.5, f"release took {elapsed:.3f}s"


# ------------------------------------------------------------------ with the real compiler


def test_compiled_plans_release_end_to_end(catalog, grants) -> None:
    """Plans from the compiler, exact tables from DuckDB over fabricated rows."""
    from sandbox.compiler import compile_query

    grant = grants.grant("g-jinshu-employment")
    con = duckdb.connect()
    con.register("src", persons_table(3000))
    con.sql(
        """CREATE TABLE persons AS SELECT person_id, 'x' AS name, 'y' AS id_number,
        ['140105', '140106', '140107'][(age % 3) + 1] AS county_code, sex, age::INTEGER AS age,
        'single' AS household_type, 'employed' AS employment, occupation,
        income AS monthly_income, DATE '2020-01-01' AS registered_on FROM src"""
    )
    queries = {
        "SELECT county_code, COUNT(*) AS n, AVG(monthly_income) AS m FROM persons "
        "GROUP BY county_code": ("n", 117),
        "SELECT sex, MEDIAN(age) AS med FROM persons GROUP BY sex": ("med", 2),
        "SELECT occupation, COUNT(*) AS n FROM persons GROUP BY occupation": ("n", 4),
    }
    for sql, (column, groups) in queries.items():
        plan = compile_query(sql, catalog=catalog, grant=grant)
        cost = plan_cost(
            plan, epsilon=1.0, delta=1e-6, dataset=catalog.dataset(plan.dataset), grant=grant
        )
        noisy = release(plan, con.sql(plan.sql).to_arrow_table(), cost)
        assert noisy.table.num_rows == groups, sql
        assert len(noisy.accuracy[column]) == groups
        assert [e["name"] for e in explain(plan, cost)] == noisy.table.column_names


def test_private_groups_over_the_cap_are_cut_on_noisy_counts() -> None:
    # issue 20: max_groups applies to the groups partition selection released, by
    # their NOISY counts, never to the exact group count (which the runner no longer
    # refuses on)
    plan = private_plan(max_groups=3)
    names = [f"g{i:02d}" for i in range(12)]
    units = [10_000 - 500 * i for i in range(12)]
    exact = pa.table({"occupation": names, "n": units, "units": units})
    cost = cost_of(plan, epsilon=1.0, delta=1e-6)
    for _ in range(10):
        noisy = release(plan, exact, cost)
        assert [r["occupation"] for r in noisy.to_json_rows()] == ["g00", "g01", "g02"]
        assert noisy.warnings == [
            {
                "code": "groups_capped",
                "message": "12 groups passed partition selection; the 3 with the largest "
                "noisy unit counts are released.",
                "selected": 12,
                "released": 3,
            }
        ]
    under = release(private_plan(max_groups=12), exact, cost)
    assert under.table.num_rows == 12 and under.warnings == []


def test_the_noisy_cut_breaks_ties_by_the_key_not_by_the_exact_order() -> None:
    from sandbox.privacy import _top_groups

    groups = [("a",), ("b",), ("c",), ("d",)]
    kept = {0: 7, 1: 9, 2: 7, 3: 7}
    first = _top_groups(kept, groups, 2)
    # the same noisy counts in another exact order keep the same groups
    reordered = [groups[i] for i in (3, 2, 1, 0)]
    again = _top_groups({3: 7, 2: 9, 1: 7, 0: 7}, reordered, 2)
    assert {groups[i] for i in first} == {reordered[i] for i in again}
    assert groups[1] in {groups[i] for i in first}
