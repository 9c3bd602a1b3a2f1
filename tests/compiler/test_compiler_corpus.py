"""The compiler against a table-driven corpus (tests/compiler/compiler_corpus.yaml).

Accepted queries must give the expected Plan shape, and their runner SQL must run
on DuckDB over tables with the catalogue's schemas and return exactly the Plan's
columns; post_sql must run over that result. Refused queries must give the expected
code, a message and a hint, quickly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.catalog import Catalog
from sandbox.compiler import compile_query
from sandbox.errors import CODES, QueryRefused
from sandbox.grants import Grants
from tests.compiler.compiler_db import make_db, run_plan

CORPUS = yaml.safe_load((Path(__file__).parent / "compiler_corpus.yaml").read_text("utf-8"))
GRANTS = {"emp": "g-jinshu-employment", "pen": "g-jinshu-pension", "sme": "g-huaxin-sme"}


def _id(entry: dict[str, Any]) -> str:
    return entry["sql"][:70] or "<empty>"


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS["accepted"]) + len(CORPUS["refused"]) >= 150
    assert len(CORPUS["accepted"]) >= 100
    assert all(e["code"] in CODES for e in CORPUS["refused"])


def _grant(grants: Grants, entry: dict[str, Any]) -> Any:
    grant = grants.grant(GRANTS[entry.get("grant", "emp")])
    assert grant is not None
    return grant


@pytest.mark.parametrize("entry", CORPUS["accepted"], ids=_id)
def test_accepted(entry: dict[str, Any], catalog: Catalog, grants: Grants) -> None:
    plan = compile_query(entry["sql"], catalog=catalog, grant=_grant(grants, entry))
    keys = [f"{k.name}:{'pub' if k.public is not None else 'priv'}" for k in plan.keys]
    assert keys == entry.get("keys", "").split()
    # every measure but the added units count (a thresholded count is released too)
    released = [m.kind for m in plan.measures if m.name != "__units"]
    assert released == entry["measures"].split()
    assert [o.kind for o in plan.outputs] == entry["outputs"].split()
    if "rows" in entry:
        assert plan.unit_rows == entry["rows"]
    if "groups" in entry:
        assert plan.unit_groups == entry["groups"]
    for name, n in entry.get("public", {}).items():
        spec = next(k for k in plan.keys if k.name == name)
        assert spec.public is not None and len(spec.public) == n
    # private keys come with exactly one selection measure; public ones with none
    selection = [m for m in plan.measures if m.selection]
    assert len(selection) == (1 if plan.private_keys else 0)
    if plan.private_keys:
        assert plan.max_groups == 10_000
    else:
        expected = 1
        for k in plan.keys:
            expected *= len(k.public or ())
        assert plan.max_groups == expected
    # the Plan round-trips and the runner SQL is valid DuckDB with the declared columns
    assert type(plan).from_json(plan.to_json()) == plan
    con = make_db(catalog, list(plan.tables))
    exact, post = run_plan(con, plan)
    assert exact.column_names == plan.result_columns
    assert exact.num_rows <= plan.max_groups
    for spec, col in zip(plan.keys, exact.column_names, strict=False):
        if spec.public is not None:  # no key outside the public list leaves the runner
            assert set(exact.column(col).to_pylist()) <= set(spec.public)
    assert all(len(row) == len(plan.outputs) for row in post)


@pytest.mark.parametrize("entry", CORPUS["refused"], ids=_id)
def test_refused(entry: dict[str, Any], catalog: Catalog, grants: Grants) -> None:
    start = time.perf_counter()
    with pytest.raises(QueryRefused) as info:
        compile_query(entry["sql"], catalog=catalog, grant=_grant(grants, entry))
    assert time.perf_counter() - start < 5.0
    err = info.value
    assert err.code == entry["code"], err.message
    assert err.message and err.hint
    body = err.to_dict()["error"]
    assert body["code"] == entry["code"]
    assert "Traceback" not in err.message


# -- the example queries, end to end on fabricated demo data --------------------------------

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "queries").glob("*.sql"))


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sandbox.ops.demo_data import generate_demo_data

    root = tmp_path_factory.mktemp("compiler-demo")
    generate_demo_data(root, Path(__file__).resolve().parents[2] / "policies", people=2000,
                       seed=3)  # fmt: skip
    return root


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_end_to_end(
    path: Path, small_demo: Path, tmp_path: Path, catalog: Catalog, grants: Grants
) -> None:
    """Compile, run with the in-process runner over demo data, release with OpenDP."""
    import re

    import pyarrow.ipc as ipc
    from sandbox_runner.executor import execute

    from sandbox import privacy

    sql = path.read_text("utf-8")
    op = re.search(r"^-- operator: (\S+)", sql, re.MULTILINE)
    sc = re.search(r"^-- scenario: (\S+)", sql, re.MULTILINE)
    assert op and sc
    grant = next(
        g for g in grants.grants if g.operator == op.group(1) and g.scenario.id == sc.group(1)
    )
    plan = compile_query(sql, catalog=catalog, grant=grant)
    execute(plan.runner_spec(), small_demo, tmp_path)
    import json

    assert json.loads((tmp_path / "status.json").read_text())["status"] == "ok"
    with ipc.open_file(tmp_path / "result.arrow") as reader:
        exact = reader.read_all()
    assert exact.column_names == plan.result_columns
    dataset = catalog.dataset(plan.dataset)
    assert dataset is not None
    delta = 1e-6 if plan.private_keys or plan.definition == "zcdp" else 0.0
    cost = privacy.plan_cost(plan, epsilon=grant.budget.max_epsilon_per_query, delta=delta,
                             dataset=dataset, grant=grant)  # fmt: skip
    noisy = privacy.release(plan, exact, cost)
    assert noisy.table.column_names == [o.name for o in plan.outputs]
    if not plan.private_keys and plan.outputs and plan.post_sql.find("LIMIT") < 0:
        assert noisy.table.num_rows == plan.max_groups  # every public key is released
