"""Factories for the privacy tests: datasets, grants, plans, costs, exact tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from sandbox.catalog import Dataset
from sandbox.grants import Grant
from sandbox.plan import KeySpec, Measure, Output, Plan
from sandbox.privacy import plan_cost, quantile_candidates

SEXES = ("F", "M")


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
