"""Issue 20: a job's outcome never depends on exact data.

Every query shape here is compiled by the real compiler from the demo catalogue (age
widened so that squares overflow INT32, plus a BIGINT ``wealth`` whose sums overflow
BIGINT), run by the runner's own code (the local executor, in-process) and released
by the real privacy layer (OpenDP). For pairs of neighbouring datasets, one unit
added, the outcome observables (state, failure category, error code) must be equal:
the added unit carries the worst values we know (NULLs, extremes, NaN/inf, text that
does not cast, impossible dates). The container path is tested in
tests/executors/test_group_cap_attack.py.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from policy_factory import dataset, make_policies

from sandbox.catalog import load_catalog
from sandbox.compiler import compile_query
from sandbox.errors import ExecutionFailed, SandboxError
from sandbox.executors.local import LocalExecutor
from sandbox.grants import load_grants
from sandbox.privacy import plan_cost, release
from sandbox.settings import Settings

SYNTHETIC_META = {b"jinyu.synthetic": b"true"}
BIG = 2**31  # wealth bound: the largest integer bound a policy may declare (catalog.py)

# One query per function family the compiler allows; each ran into an engine error
# (or a cap) on some value before issue 20 was fixed, or could.
SHAPES = {
    "cast": "SELECT sex, COUNT(*) AS n FROM persons "
    "WHERE CAST(occupation AS INTEGER) > 3 GROUP BY sex",
    "cast_key": "SELECT CAST(occupation AS INTEGER) AS o, COUNT(*) AS n FROM persons GROUP BY 1",
    "division": "SELECT sex, COUNT(*) AS n FROM persons WHERE age // (age - 30) = 0 GROUP BY sex",
    "modulo_key": "SELECT age % (age - 30) AS m, COUNT(*) AS n FROM persons GROUP BY 1",
    "overflow_where": "SELECT sex, COUNT(*) AS n FROM persons WHERE age * 100000 > 5 GROUP BY sex",
    "overflow_square": "SELECT sex, VARIANCE(age) AS v, STDDEV(age) AS s FROM persons GROUP BY sex",
    "overflow_sum": "SELECT sex, SUM(wealth) AS w, AVG(wealth) AS a FROM persons GROUP BY sex",
    "math": "SELECT ROUND(1000 / (age - 30), 0) AS r, COUNT(*) AS n FROM persons "
    "WHERE ABS(age) > 1 OR CEIL(monthly_income * 1e300) > 3 OR FLOOR(age / 0) > 1 GROUP BY 1",
    "substring": "SELECT left(occupation, 3) AS o, COUNT(*) AS n FROM persons "
    "WHERE substring(occupation, 1, 2) = 'oc' OR upper(occupation) LIKE 'X%' GROUP BY 1",
    "dates": "SELECT year(registered_on) AS y, COUNT(*) AS n FROM persons "
    "WHERE EXTRACT(month FROM registered_on) = 3 OR date_trunc('year', registered_on) IS NULL "
    "OR CAST(occupation AS DATE) > registered_on "
    "GROUP BY 1",
    "quantile": "SELECT sex, MEDIAN(monthly_income) AS m, QUANTILE_CONT(age, 0.9) AS q "
    "FROM persons GROUP BY sex",
    "filter": "SELECT sex, COUNT(*) FILTER (WHERE CAST(occupation AS INTEGER) % 0 = 1) AS n, "
    "SUM(age) FILTER (WHERE age * age * age > 1) AS s FROM persons GROUP BY sex",
    "private_keys": "SELECT occupation, COUNT(*) AS n FROM persons GROUP BY occupation",
}

# The added unit of each neighbouring pair.
POISON: dict[str, dict[str, Any]] = {
    "nulls": {"sex": None},
    "null_values": {},
    "extremes": {
        "age": 2**31 - 1,
        "monthly_income": 1e308,
        "wealth": 2**63 - 1,
        "registered_on": dt.date(9999, 12, 31),
    },
    "negative": {"age": -(2**31), "monthly_income": -1e308, "wealth": -(2**63)},
    "nan_inf": {"monthly_income": math.nan, "age": 30, "occupation": "0"},
    "bad_strings": {
        "occupation": "12abc\x00'\";--" + "字" * 300,
        "county_code": "",
        "age": 46341,
    },
    "at_big": {"wealth": BIG, "age": 100000, "occupation": "7"},
    "outside_keys": {"sex": "Z", "age": 46341, "wealth": BIG},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("outcomes")

    def widen(data: dict[str, Any]) -> None:
        persons = dataset(data, "population")["tables"][0]
        for col in persons["columns"]:
            if col["name"] == "age":
                col["bounds"] = [0, 100000]
        persons["columns"].append(
            {
                "name": "wealth",
                "type": "BIGINT",
                "uses": ["aggregate", "filter"],
                "bounds": [0, BIG],
            }
        )

    policies = make_policies(tmp, catalog=widen)
    catalog = load_catalog(policies)
    grants = load_grants(policies, catalog)
    grant = next(g for g in grants.grants if g.id == "g-jinshu-employment")
    ds = next(d for d in catalog.datasets if d.id == "population")
    settings = Settings(home=tmp / "home", policies=policies, executor="local")
    return {"catalog": catalog, "grant": grant, "dataset": ds, "settings": settings, "tmp": tmp}


def base_rows(n: int = 60) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        rows.append(
            {
                "person_id": f"p{i:04d}",
                "name": f"name-{i}",
                "id_number": f"id-{i}",
                "county_code": "140105" if i % 2 else "140106",
                "sex": "FM"[i % 2],
                "age": 30 + i % 50,
                "household_type": "single",
                "employment": "employed",
                "occupation": ["occ-a", "occ-b", "3", "oc-x"][i % 4],
                "monthly_income": 1000.0 + 37 * i,
                "registered_on": dt.date(2020, 1 + i % 12, 1),
                # three F units at the bound: a fourth, added, overflows a BIGINT sum
                "wealth": BIG if i in (0, 2, 4) else 1000 * i,
            }
        )
    return rows


SCHEMA = pa.schema(
    [
        ("person_id", pa.string()),
        ("name", pa.string()),
        ("id_number", pa.string()),
        ("county_code", pa.string()),
        ("sex", pa.string()),
        ("age", pa.int32()),
        ("household_type", pa.string()),
        ("employment", pa.string()),
        ("occupation", pa.string()),
        ("monthly_income", pa.float64()),
        ("registered_on", pa.date32()),
        ("wealth", pa.int64()),
    ]
)


def write_data(root: Path, rows: list[dict[str, Any]]) -> Path:
    path = root / "population" / "persons.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(SYNTHETIC_META)
    pq.write_table(table, path)
    return root


def outcome(env: dict[str, Any], sql: str, root: Path) -> tuple[str, str | None, str | None]:
    """(state, category, error code) of one job: what an operator sees of its outcome."""
    plan = compile_query(sql, catalog=env["catalog"], grant=env["grant"])
    cost = plan_cost(plan, epsilon=1.0, delta=1e-6, dataset=env["dataset"], grant=env["grant"])
    try:
        exact = LocalExecutor(env["settings"]).run(plan, data_root=root, job_id="j")
        release(plan, exact.table, cost)
    except ExecutionFailed as exc:
        return ("failed", exc.category, exc.code)
    except SandboxError as exc:
        return ("failed", None, exc.code)
    return ("noised", None, None)


@pytest.fixture(scope="module")
def roots(env: dict[str, Any]) -> dict[str, Path]:
    tmp: Path = env["tmp"]
    out = {"base": write_data(tmp / "base", base_rows())}
    for name, values in POISON.items():
        unit = dict.fromkeys(SCHEMA.names)
        # in a released group (sex F) unless the poison says otherwise
        unit.update({"person_id": "p-added", "sex": "F", **values})
        out[name] = write_data(tmp / name, [*base_rows(), unit])
    return out


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_neighbouring_datasets_give_the_same_outcome(
    env: dict[str, Any], roots: dict[str, Path], shape: str
) -> None:
    sql = SHAPES[shape]
    base = outcome(env, sql, roots["base"])
    assert base == ("noised", None, None), base
    for name in POISON:
        assert outcome(env, sql, roots[name]) == base, f"{shape}: the added unit {name}"


def test_removing_a_unit_is_a_neighbour_too(env: dict[str, Any], tmp_path: Path) -> None:
    # the dataset minus one of the units at the wealth bound, against the base
    fewer = write_data(tmp_path / "fewer", base_rows()[1:])
    for shape in ("overflow_sum", "overflow_square", "private_keys"):
        assert outcome(env, SHAPES[shape], fewer) == ("noised", None, None)
