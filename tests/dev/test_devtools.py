"""Local development: project folders, the same compiler, synthetic runs, no budget."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sandbox.catalog import load_catalog
from sandbox.dev import (
    PROJECT_FILE,
    check_query,
    diagnostic,
    find_project,
    format_diagnostic,
    init_project,
    load_context,
    parse_header,
    run_query,
)
from sandbox.errors import BadInput, BudgetRefused, QueryRefused, Refused
from sandbox.settings import Settings
from sandbox.synthetic import is_synthetic

COUNT_BY_COUNTY = """-- operator: op-jinshu
-- scenario: employment-income
SELECT county_code, COUNT(*) AS n, AVG(monthly_income) AS mean_income
FROM persons
GROUP BY county_code
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, policies_dir: Path) -> Path:
    dest = tmp_path_factory.mktemp("dev") / "proj"
    init_project(dest, operator="op-jinshu", policies=policies_dir, units=2_000, seed=1)
    return dest


def test_parse_header() -> None:
    sql = "-- Income by county\n--operator: op-a\n-- @scenario s-1\n-- epsilon = 0.5\n\nSELECT 1"
    assert parse_header(sql) == {"operator": "op-a", "scenario": "s-1", "epsilon": "0.5"}
    # only the leading comment block counts
    assert parse_header("SELECT 1\n-- operator: op-b") == {}


def test_init_writes_the_granted_part_only(project: Path, policies_dir: Path) -> None:
    catalog = load_catalog(project / "policies")
    assert {d.id for d in catalog.datasets} == {"population", "social_insurance", "divisions"}
    grants = yaml.safe_load((project / "policies/grants.yaml").read_text(encoding="utf-8"))
    assert [o["id"] for o in grants["operators"]] == ["op-jinshu"]
    assert {g["id"] for g in grants["grants"]} == {"g-jinshu-employment", "g-jinshu-pension"}
    # the public key-set file is copied; key sets no granted column uses are not
    assert (project / "policies/key_sets/counties.csv").read_bytes() == (
        policies_dir / "key_sets/counties.csv"
    ).read_bytes()
    assert "industries" not in catalog.key_sets
    for d in catalog.datasets:
        for t in d.tables:
            assert is_synthetic(project / "data" / t.file), t.name
    assert not (project / "data/enterprises").exists()
    assert (project / PROJECT_FILE).is_file() and (project / "README.md").is_file()
    # the output-review rules dev run applies, as the server
    assert (project / "policies/review.yaml").read_bytes() == (
        policies_dir / "review.yaml"
    ).read_bytes()
    example = (project / "queries/example.sql").read_text(encoding="utf-8")
    assert parse_header(example) == {"operator": "op-jinshu", "scenario": "employment-income"}
    assert find_project(project / "queries/example.sql") == project.resolve()


def test_init_refusals(tmp_path: Path, policies_dir: Path) -> None:
    with pytest.raises(Refused) as err:
        init_project(tmp_path / "a", operator="op-nobody", policies=policies_dir, units=10)
    assert err.value.code == "UNKNOWN_OPERATOR"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("mine")
    with pytest.raises(BadInput):
        init_project(tmp_path / "busy", operator="op-jinshu", policies=policies_dir, units=10)
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "mine"
    with pytest.raises(BadInput):
        init_project(tmp_path / "b", operator="op-jinshu", units=10)  # no source


def test_example_query_runs(project: Path, settings: Settings) -> None:
    ctx = load_context(settings, project=project)
    sql = (project / "queries/example.sql").read_text(encoding="utf-8")
    result = run_query(sql, ctx, settings)
    assert result["synthetic"] is True and result["budget_spent"] == 0.0
    assert len(result["rows"]) == len(ctx.catalog.keys("counties"))


def test_check_ok_and_refusals_with_location(project: Path, settings: Settings) -> None:
    ctx = load_context(settings, project=project)
    summary = check_query(COUNT_BY_COUNTY, ctx)
    assert summary["dataset"] == "population" and summary["grant"] == "g-jinshu-employment"
    bad = "-- scenario: employment-income\nSELECT county_code,\n  COUNT(*) FROM persons\n" \
          "GROUP BY county_code, name\n"  # fmt: skip
    with pytest.raises(QueryRefused) as err:
        check_query(bad, ctx)
    d = diagnostic("q.sql", err.value)
    assert d["code"] == "COLUMN_NOT_ALLOWED" and d["line"] == 4 and d["col"] > 1
    assert format_diagnostic(d, "text").startswith(f"q.sql:4:{d['col']}: COLUMN_NOT_ALLOWED ")
    assert format_diagnostic(d, "gcc").endswith("[COLUMN_NOT_ALLOWED]")
    assert ": error: " in format_diagnostic(d, "gcc")
    # the grant matters: insured is not in the employment-income grant ...
    ins = "SELECT sex, COUNT(*) AS n FROM insured GROUP BY sex"
    with pytest.raises(QueryRefused) as err:
        check_query(ins, ctx, scenario="employment-income")
    assert err.value.code == "TABLE_NOT_GRANTED"
    # ... and without a scenario the check covers syntax and the catalogue only
    assert check_query(ins, ctx)["dataset"] == "social_insurance"


def test_run_releases_cells_reviewed_as_the_server(project: Path, settings: Settings) -> None:
    """population is general-3 (policies/review.yaml): counts rounded to 5, rows with a
    noisy count below 10 suppressed, the `suppressed` column, one approval."""
    ctx = load_context(settings, project=project)
    result = run_query(COUNT_BY_COUNTY, ctx, settings, epsilon=1.5)
    rows = result["rows"]
    assert len(rows) == 117  # every public key is released
    assert result["columns"] == [
        "county_code",
        "n",
        "n_pm95",
        "mean_income",
        "mean_income_pm95",
        "suppressed",
    ]
    assert result["accuracy_columns"] == {"n": "n_pm95", "mean_income": "mean_income_pm95"}
    assert [f["name"] for f in result["schema"]] == result["columns"]
    assert result["schema"][-1]["type"] == "bool"
    assert result["disclosure_control"] == {
        "min_count": 10,
        "round_base": 5,
        "suppressed_rows": sum(r["suppressed"] for r in rows),
    }
    assert result["required_approvals"] == 1 and result["grade"] == "general-3"
    kept = [r for r in rows if not r["suppressed"]]
    assert kept, "2 000 persons over 117 counties: most counties keep their cells"
    assert abs(sum(r["n"] for r in kept) - 2_000) < 600  # plus noise, minus suppressed
    for i, r in enumerate(rows):
        n_cell = result["accuracy"]["n"][i]
        if r["suppressed"]:
            assert r["n"] is None and r["mean_income"] is None and n_cell is None
            assert r["n_pm95"] is None and r["mean_income_pm95"] is None
            continue
        assert r["n"] % 5 == 0 and r["n"] >= 10
        # as the server shows them: half-widths, no interval around the unrounded value;
        # the ± of a count rounded to 5 includes the rounding and is a multiple of 5
        assert n_cell["accuracy_95"] > 0 and "interval_95" not in n_cell
        assert n_cell["pm95"] == r["n_pm95"] and r["n_pm95"] % 5 == 0
        assert r["n_pm95"] >= n_cell["accuracy_95"] + 2
        if r["mean_income"] is None:
            # AVG is sum / count WHEN the noisy count of incomes is positive: a small
            # county's may not be (its own noise, apart from n's); no mean is released
            assert r["mean_income_pm95"] is None
            continue
        assert 0 <= r["mean_income"] <= 50_000
        mean_cell = result["accuracy"]["mean_income"][i]
        assert mean_cell["derived"] is True and mean_cell["method"] == "propagated"
        assert "accuracy_95" not in mean_cell  # only the rounded ± of a derived value
        assert r["mean_income_pm95"] == mean_cell["pm95"] > 0
    if result["disclosure_control"]["suppressed_rows"]:
        assert "cells_suppressed" in {f["code"] for f in result["flags"]}
    assert result["would_cost"]["epsilon"] == pytest.approx(1.5)
    assert result["would_cost"]["grant_total_epsilon"] == 20.0
    assert result["budget_spent"] == 0.0
    assert result["mechanisms"]


def test_run_zcdp_defaults_delta_and_checks_epsilon(project: Path, settings: Settings) -> None:
    ctx = load_context(settings, project=project)
    sql = "SELECT year, SUM(amount) AS total FROM payments GROUP BY year"
    result = run_query(sql, ctx, settings, scenario="pension-contributions")
    assert [r["year"] for r in result["rows"]] == list(range(2019, 2026))
    assert result["would_cost"]["definition"] == "zcdp"
    assert result["would_cost"]["delta"] == pytest.approx(1e-6)  # a tenth of the grant's δ
    assert result["would_cost"]["rho"] > 0
    with pytest.raises(BudgetRefused) as err:
        run_query(sql, ctx, settings, scenario="pension-contributions", epsilon=5.0)
    assert err.value.code == "EPSILON_ABOVE_CEILING"


def test_run_refuses_like_the_server(project: Path, settings: Settings, policies_dir: Path) -> None:
    ctx = load_context(settings, project=project)
    with pytest.raises(Refused) as err:
        run_query(COUNT_BY_COUNTY, ctx, settings, scenario="sme-credit")
    assert err.value.code == "NO_GRANT"
    # an expired grant is refused locally too
    huaxin = load_context(settings.replace(policies=policies_dir), near=Path("/"))
    with pytest.raises(Refused) as err:
        run_query(
            "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex",
            huaxin, settings, operator="op-huaxin", scenario="household-study-2024",
        )  # fmt: skip
    assert err.value.code == "GRANT_EXPIRED"
    with pytest.raises(BadInput):
        run_query("SELECT COUNT(*) AS n FROM persons", ctx, settings)  # no scenario anywhere


def test_run_outside_a_project_makes_synthetic_data(settings: Settings, policies_dir: Path) -> None:
    ctx = load_context(settings.replace(policies=policies_dir), near=Path("/"))
    assert ctx.project is None and ctx.data_root is None
    sql = """-- operator: op-huaxin
-- scenario: sme-credit
SELECT industry, COUNT(*) AS n, SUM(employees) AS staff FROM enterprises GROUP BY industry"""
    result = run_query(sql, ctx, settings, units=1_000)
    assert len(result["rows"]) == 20
    assert abs(sum(r["n"] for r in result["rows"]) - 1_000) < 400


def test_local_executor_refuses_demo_data(
    tmp_path: Path, policies_dir: Path, settings: Settings, demo_data_root: Path
) -> None:
    """Swap a project's synthetic file for fabricated demo data: the run is refused."""
    dest = tmp_path / "proj"
    init_project(dest, operator="op-jinshu", policies=policies_dir, units=100)
    shutil.copyfile(demo_data_root / "population/persons.parquet",
                    dest / "data/population/persons.parquet")  # fmt: skip
    assert (
        pq.read_schema(dest / "data/population/persons.parquet").metadata[b"jinyu.fabricated"]
        == b"true"
    )
    ctx = load_context(settings, project=dest)
    with pytest.raises(Refused) as err:
        run_query(COUNT_BY_COUNTY, ctx, settings)
    assert err.value.code == "LOCAL_DATA_NOT_SYNTHETIC"


# -- dev init against a real server ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def live_server(tmp_path: Path, policies_dir: Path) -> Iterator[tuple[str, str]]:
    """The real API app served by uvicorn on localhost; yields (url, operator token)."""
    import uvicorn

    from sandbox.api.app import create_app
    from sandbox.service import Service, issue_token

    s = Settings(home=tmp_path / "home", policies=policies_dir)
    svc = Service(s)
    token = issue_token(svc, role="operator", subject="op-huaxin")["token"]
    port = _free_port()
    app = create_app(s, service=svc, include_console=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_init_from_a_real_server(live_server: tuple[str, str], tmp_path: Path,
                                 settings: Settings) -> None:  # fmt: skip
    url, token = live_server
    dest = tmp_path / "remote"
    summary = init_project(dest, operator=None, server=url, token=token, units=300)
    assert summary["operator"] == "op-huaxin"
    assert summary["source"] == {"kind": "server", "url": url}
    catalog = load_catalog(dest / "policies")
    # population only in g-huaxin-2024-study, expired: the server no longer shows it
    assert {d.id for d in catalog.datasets} == {"divisions", "enterprises"}
    assert is_synthetic(dest / "data/enterprises/enterprises.parquet")
    ctx = load_context(settings, project=dest)
    sql = "SELECT county_code, COUNT(*) AS n FROM enterprises GROUP BY county_code"
    result = run_query(sql, ctx, settings, scenario="sme-credit")
    assert len(result["rows"]) == 117
    with pytest.raises(Refused) as err:
        init_project(tmp_path / "x", operator=None, server=url, token="wrong", units=10)
    assert err.value.code == "UNAUTHENTICATED"


def test_server_init_keeps_column_narrowing_and_hints(
    live_server: tuple[str, str], tmp_path: Path, settings: Settings, policies_dir: Path
) -> None:
    """A query the server refuses must be refused locally too: g-huaxin-sme allows
    registered_capital only inside aggregates, never in WHERE."""
    url, token = live_server
    dest = tmp_path / "remote"
    init_project(dest, operator=None, server=url, token=token, units=300)
    remote = load_catalog(dest / "policies")
    local = load_catalog(policies_dir)
    # (persons, with its null-rate hints, is no longer shown: huaxin's grant of it expired)
    assert remote.find_table("persons") is None
    enterprises = remote.find_table("enterprises")
    assert enterprises is not None
    employees = enterprises[1].column("employees")
    assert employees is not None and employees.synthetic == {
        "dist": "lognormal",
        "mean": 2.5,
        "sd": 1.2,
    }
    ctx = load_context(settings, project=dest)
    sql = """SELECT industry, COUNT(*) AS n FROM enterprises
WHERE registered_capital > 100 GROUP BY industry"""
    with pytest.raises(QueryRefused):
        check_query(sql, ctx, scenario="sme-credit")
    assert remote.find_table("enterprises") == local.find_table("enterprises")
