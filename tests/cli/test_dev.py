"""The `sandbox demo-data` and `sandbox dev …` commands, through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sandbox.cli import app

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
EXAMPLES = sorted((ROOT / "queries").glob("*.sql"))


def _run(tmp: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["--home", str(tmp / "home"), "--policies", str(POLICIES), *args]
    )
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli-dev")
    code, out = _run(tmp, "dev", "init", "--operator", "op-jinshu", "--dir", str(tmp / "p"),
                     "--units", "1500", "--json")  # fmt: skip
    assert code == 0, out
    summary = json.loads(out)
    assert summary["operator"] == "op-jinshu"
    return Path(summary["dir"])


def test_demo_data_json_and_text(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "demo-data", "--out", str(tmp_path / "d"), "--people", "300",
                     "--seed", "4", "--json")  # fmt: skip
    assert code == 0, out
    summary = json.loads(out)
    assert summary["people"] == 300 and summary["seed"] == 4
    assert {t["table"] for t in summary["tables"]} == {
        "divisions", "persons", "insured", "payments", "enterprises"
    }  # fmt: skip
    assert (tmp_path / "d/population/persons.parquet").is_file()
    code, out = _run(tmp_path, "demo-data", "--out", str(tmp_path / "e"), "--people", "50")
    assert code == 0, out
    assert "population.persons" in out and "skipped medical_records" in out
    assert "fabricated" in out


def test_demo_data_defaults_to_the_data_root(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "demo-data", "--people", "40", "--json")
    assert code == 0, out
    assert (tmp_path / "home/data/enterprises/enterprises.parquet").is_file()


def test_dev_check_ok_and_refused(project: Path, tmp_path: Path) -> None:
    example = project / "queries/example.sql"
    code, out = _run(tmp_path, "dev", "check", str(example))
    assert code == 0, out
    assert out.strip().endswith("checked against scenario employment-income)")
    bad = project / "queries/bad.sql"
    bad.write_text("-- scenario: employment-income\nSELECT county_code,\n  id_number,\n"
                   "  COUNT(*) AS n\nFROM persons GROUP BY county_code, id_number\n")  # fmt: skip
    code, out = _run(tmp_path, "dev", "check", str(example), str(bad))
    assert code == 2
    line = next(x for x in out.splitlines() if x.startswith(str(bad)))
    assert re.fullmatch(re.escape(str(bad)) + r":\d+:\d+: [A-Z_]+ .+", line), line
    code, out = _run(tmp_path, "dev", "check", "--format", "gcc", str(bad))
    assert code == 2
    assert re.fullmatch(re.escape(str(bad)) + r":\d+:\d+: error: .+ \[[A-Z_]+\]", out.strip())
    code, out = _run(tmp_path, "dev", "check", "--format", "json", str(bad), str(example))
    assert code == 2
    report = json.loads(out)
    assert report["ok"] is False
    assert [f["ok"] for f in report["files"]] == [False, True]
    err = report["files"][0]["errors"][0]
    assert err["line"] >= 2 and err["code"]
    code, out = _run(tmp_path, "dev", "check", str(project / "queries/missing.sql"))
    assert code == 2 and "NOT_FOUND" in out
    code, out = _run(tmp_path, "dev", "check", "--format", "xml", str(example))
    assert code == 2


def test_dev_run_prints_intervals_and_cost(project: Path, tmp_path: Path) -> None:
    example = project / "queries/example.sql"
    code, out = _run(tmp_path, "dev", "run", str(example), "--epsilon", "1")
    assert code == 0, out
    assert "SYNTHETIC DATA" in out and "±" in out
    assert "would cost ε = 1" in out and "No budget was spent" in out
    code, out = _run(tmp_path, "dev", "run", str(example), "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["synthetic"] is True and result["budget_spent"] == 0.0
    assert result["would_cost"]["epsilon"] == 2.0  # the grant's per-query ceiling
    assert len(result["rows"]) == 117
    code, out = _run(tmp_path, "dev", "run", str(example), "--epsilon", "9", "--json")
    assert code == 2
    assert json.loads(out)["error"]["code"] == "EPSILON_ABOVE_CEILING"


def test_dev_synthetic_regenerates(project: Path, tmp_path: Path) -> None:
    code, out = _run(tmp_path, "dev", "synthetic", "--project", str(project), "--units", "700",
                     "--json")  # fmt: skip
    assert code == 0, out
    rows = {t["table"]: t["rows"] for t in json.loads(out)["tables"]}
    assert rows["persons"] == 700
    meta = json.loads((project / "jinyu-project.json").read_text())
    assert meta["synthetic"]["units"] == 700


@pytest.mark.parametrize("query", EXAMPLES, ids=[q.name for q in EXAMPLES])
def test_every_example_query_runs(query: Path, tmp_path: Path) -> None:
    """`sandbox dev run` of each queries/*.sql (its header names operator and scenario)."""
    code, out = _run(tmp_path, "dev", "check", str(query))
    assert code == 0, out
    code, out = _run(tmp_path, "dev", "run", str(query), "--units", "2000", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["synthetic"] is True
    assert result["columns"]
