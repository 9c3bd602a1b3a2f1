"""`sandbox status JOB` and `sandbox explain` against a real server show the ± of every
number (issue 16): each released value with its 95% half-width, a derived output's
rule in explain."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sandbox.api.app import create_app
from sandbox.cli import app
from sandbox.service import Service, issue_token
from sandbox.settings import Settings
from tests.api.api_helpers import serve

SQL = (
    "SELECT industry, COUNT(*) AS n, AVG(employees) AS mean_employees, "
    "100.0 * COUNT(*) FILTER (WHERE employees < 10) / COUNT(*) AS small_pct "
    "FROM enterprises GROUP BY industry ORDER BY industry"
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory, catalog, policies_dir) -> Path:
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic-status")
    generate_synthetic(
        root, catalog, ["enterprises", "divisions"], units=3000, seed=5, policies=policies_dir
    )
    return root


@pytest.fixture()
def server(tmp_path: Path, policies_dir: Path, synthetic: Path) -> Iterator[tuple[str, str]]:
    settings = Settings(
        home=tmp_path / "server",
        policies=policies_dir,
        data_root=synthetic,
        executor="local",
        rate_per_minute=10_000,
    )
    service = Service(settings)
    token = issue_token(service, role="operator", subject="op-huaxin")["token"]
    with serve(create_app(settings, service=service, include_console=False)) as url:
        yield url, token
    service.stop()


def run(tmp: Path, url: str, token: str, *args: str) -> str:
    out = CliRunner().invoke(
        app,
        ["--home", str(tmp / "client"), *args],
        env={"SANDBOX_URL": url, "SANDBOX_TOKEN": token, "COLUMNS": "200"},
    )
    assert out.exit_code == 0, out.stdout + out.stderr
    return out.stdout


def test_status_shows_every_released_number_with_its_pm(tmp_path: Path, server) -> None:
    url, token = server
    query = tmp_path / "q.sql"
    query.write_text(SQL, encoding="utf-8")
    submitted = run(tmp_path, url, token, "submit", str(query), "-s", "sme-credit", "-e", "1")
    job = re.search(r"\b(j-[0-9a-f]+)\b", submitted)
    assert job is not None and "released" in submitted
    shown = run(tmp_path, url, token, "status", job.group(1))
    rows = [line for line in shown.splitlines() if re.match(r"^\s*[A-Z]\s{2,}\S", line)]
    assert len(rows) == 20  # the 20 public industry sections
    for line in rows:
        # n, mean_employees, small_pct: each "value ± pm" (or suppressed)
        pms = re.findall(r"-?[\d,.e+-]+ ± (?:[\d,.e+-]+|unbounded)", line)
        assert len(pms) + line.count("suppressed") == 3, line
    assert "value ± its 95% half-width" in shown


def test_explain_states_a_derived_outputs_pm(tmp_path: Path, server) -> None:
    url, token = server
    query = tmp_path / "q.sql"
    query.write_text(SQL, encoding="utf-8")
    shown = run(tmp_path, url, token, "explain", str(query), "-s", "sme-credit", "-e", "1")
    assert "|mean|" in shown  # the mean's rule
    assert "from the box" in shown  # the rate's
