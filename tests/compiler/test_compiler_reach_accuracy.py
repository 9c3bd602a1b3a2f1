"""Issue 16 done-when: the three analyst shapes (a CTE, a GROUP BY CASE bucket over a
filter column, a per-unit pre-aggregation) are accepted and their released values lie
within their 95% intervals of DuckDB's exact answer to the raw query in ≥ 90% of cells.

Synthetic data from the catalogue (sandbox.synthetic), the runner SQL run by real
DuckDB over it, noise by the real release (sandbox.privacy.release, OpenDP), and the
operator's own SQL run by DuckDB directly on the same tables for the truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from sandbox import privacy
from sandbox.catalog import Catalog
from sandbox.compiler import compile_query
from sandbox.grants import Grants
from sandbox.synthetic import generate_synthetic

UNITS = 12_000

# name -> (grant, ε, operator SQL); every output is aliased, as DuckDB names the truth's
QUERIES: dict[str, tuple[str, float, str]] = {
    "cte": (
        "g-jinshu-employment",
        2.0,
        "WITH adults AS (SELECT p.county_code, p.monthly_income AS income FROM persons p "
        "WHERE p.age >= 18) SELECT county_code, COUNT(*) AS n, AVG(income) AS mean_income "
        "FROM adults GROUP BY county_code",
    ),
    "cte_join": (
        "g-jinshu-employment",
        2.0,
        "WITH w AS (SELECT d.city_name, p.sex, p.age FROM persons p JOIN divisions d "
        "ON p.county_code = d.county_code WHERE p.employment = 'employed') "
        "SELECT city_name, sex, COUNT(*) AS n, SUM(age) AS s FROM w GROUP BY city_name, sex",
    ),
    "income_bands": (
        "g-jinshu-employment",
        2.0,
        "SELECT sex, CASE WHEN monthly_income < 3000 THEN 'low' WHEN monthly_income < 8000 "
        "THEN 'mid' ELSE 'high' END AS band, COUNT(*) AS n, AVG(age) AS mean_age "
        "FROM persons GROUP BY sex, band",
    ),
    "income_bands_by_county": (
        "g-jinshu-employment",
        2.0,
        "SELECT county_code, CASE WHEN monthly_income < 4000 THEN 'low' ELSE 'not low' END "
        "AS band, COUNT(*) AS n FROM persons GROUP BY county_code, band",
    ),
    "per_unit_by_county": (
        "g-jinshu-pension",
        1.0,
        "SELECT i.county_code, AVG(t.total) AS mean_total, COUNT(*) AS n FROM (SELECT "
        "person_id, SUM(amount) AS total FROM payments GROUP BY person_id) t "
        "JOIN insured i ON i.person_id = t.person_id GROUP BY i.county_code",
    ),
    "per_unit_cte": (
        "g-jinshu-pension",
        1.0,
        "WITH t AS (SELECT person_id, SUM(amount) AS total, COUNT(*) AS payments "
        "FROM payments WHERE year >= 2022 GROUP BY person_id) SELECT AVG(total) AS "
        "mean_annual, SUM(total) AS all_total, AVG(payments) AS mean_payments FROM t",
    ),
    "per_unit_bands": (
        "g-jinshu-pension",
        1.0,
        "WITH t AS (SELECT person_id, SUM(amount) AS total FROM payments GROUP BY person_id) "
        "SELECT i.sex, CASE WHEN total < 10000 THEN 'low' WHEN total < 30000 THEN 'mid' "
        "ELSE 'high' END AS band, COUNT(*) AS n FROM t JOIN insured i "
        "ON i.person_id = t.person_id GROUP BY i.sex, band",
    ),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Any:
    root = tmp_path_factory.mktemp("reach-data")
    policies = Path(__file__).resolve().parents[2] / "policies"
    generate_synthetic(
        root,
        catalog,
        ["population", "social_insurance", "divisions"],
        units=UNITS,
        seed=16,
        policies=policies,
    )
    con = duckdb.connect(":memory:")
    for ds in ("population", "social_insurance", "divisions"):
        dataset = catalog.dataset(ds)
        assert dataset is not None
        for t in dataset.tables:
            path = root / t.file
            con.execute(f"CREATE VIEW \"{t.name}\" AS SELECT * FROM read_parquet('{path}')")
    yield con
    con.close()


def _cells(name: str, con: Any, catalog: Catalog, grants: Grants) -> tuple[int, int]:
    """(cells within their 95% interval, cells with an interval) for one query."""
    grant_id, epsilon, sql = QUERIES[name]
    grant = grants.grant(grant_id)
    assert grant is not None
    plan = compile_query(sql, catalog=catalog, grant=grant)
    dataset = catalog.dataset(plan.dataset)
    assert dataset is not None
    delta = privacy.choose_delta(None, plan, dataset, grant)
    cost = privacy.plan_cost(plan, epsilon=epsilon, delta=delta, dataset=dataset, grant=grant)
    noisy = privacy.release(plan, con.sql(plan.sql).to_arrow_table(), cost)
    keys = [o.name for o in plan.outputs if o.kind == "key"]
    truth_rel = con.sql(sql)
    truth = {
        tuple(r[k] for k in keys): r
        for r in (dict(zip(truth_rel.columns, row, strict=True)) for row in truth_rel.fetchall())
    }
    kinds = {o.name: o.kind for o in plan.outputs}
    hits = total = 0
    for i, row in enumerate(noisy.table.to_pylist()):
        exact = truth.get(tuple(row[k] for k in keys))
        for out, cells in noisy.accuracy.items():
            hw, released = cells[i].get("accuracy_95"), row.get(out)
            if not isinstance(hw, int | float) or not isinstance(released, int | float):
                continue  # a quantile (rank error), a suppressed or unbounded cell
            interval = (released - hw, released + hw)  # the noisy value ± its 95% half-width
            if exact is None:  # an empty public group: its count is 0, nothing else known
                if kinds[out] not in ("count", "count_units"):
                    continue
                value: float = 0.0
            elif exact[out] is None:
                continue
            else:
                value = float(exact[out])
            total += 1
            hits += interval[0] - 1e-9 <= value <= interval[1] + 1e-9
    return hits, total


SHAPES = {
    "CTE": ("cte", "cte_join", "per_unit_cte", "per_unit_bands"),
    "GROUP BY CASE bucket": ("income_bands", "income_bands_by_county", "per_unit_bands"),
    "per-unit pre-aggregation": ("per_unit_by_county", "per_unit_cte", "per_unit_bands"),
}


def test_the_three_shapes_are_within_their_intervals(
    data: Any, catalog: Catalog, grants: Grants
) -> None:
    results = {name: _cells(name, data, catalog, grants) for name in QUERIES}
    for name, (_, total) in results.items():
        assert total > 0, name  # every query released cells with intervals
    hits = sum(h for h, _ in results.values())
    total = sum(t for _, t in results.values())
    assert total >= 500
    assert hits / total >= 0.9, results
    # each shape on its own too (≥ 200 cells each; 95% intervals give ~97% here)
    for shape, names in SHAPES.items():
        h = sum(results[n][0] for n in names)
        t = sum(results[n][1] for n in names)
        assert t >= 200 and h / t >= 0.9, (shape, h, t, results)


@pytest.mark.container
def test_the_runner_container_runs_the_new_shapes(
    docker_client: Any,
    runner_image: str,
    demo_data_root: Path,
    tmp_path: Path,
    catalog: Catalog,
    grants: Grants,
) -> None:
    """The runner image's DuckDB runs the stages the compiler now writes (views inlined,
    bucket keys, the per-unit stage) and gives the exact table the host's DuckDB gives.
    The demo data has a payment per month over several years, more than the 12 rows per
    person the catalogue allows, so the per-unit queries read one year (12 rows): the
    random choice of 12 rows then keeps them all, and both answers are the same."""
    from sandbox.executors.docker import DockerExecutor
    from sandbox.settings import Settings

    settings = Settings(
        home=tmp_path / "home", concurrency=1, job_timeout_s=120.0, memory_mb=512, warm_runners=0
    )
    executor = DockerExecutor(settings, client=docker_client, image=runner_image)
    con = duckdb.connect(":memory:")
    try:
        for name in ("income_bands", "cte_join", "per_unit_by_county", "per_unit_bands"):
            grant_id, _, sql = QUERIES[name]
            sql = sql.replace("payments GROUP BY", "payments WHERE year = 2024 GROUP BY")
            grant = grants.grant(grant_id)
            assert grant is not None
            plan = compile_query(sql, catalog=catalog, grant=grant)
            for table, rel in plan.tables.items():
                path = demo_data_root / rel
                con.execute(f"CREATE OR REPLACE VIEW \"{table}\" AS SELECT * FROM "
                            f"read_parquet('{path}')")  # fmt: skip
            got = executor.run(plan, data_root=demo_data_root, job_id=f"reach-{name}")
            assert got.table.column_names == plan.result_columns
            want = con.sql(plan.sql).fetchall()
            assert want, name
            rows = sorted(tuple(r.values()) for r in got.table.to_pylist())
            assert len(rows) == len(want), name
            for a, b in zip(rows, sorted(want), strict=True):  # sums in another order
                assert a == pytest.approx(b, rel=1e-9), name
    finally:
        executor.close()
        con.close()
