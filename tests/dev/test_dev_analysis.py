"""`sandbox dev run script.py` (issue 18): the same script, on synthetic data, in the
real runner image with the same ACRO checks and thresholds as in the sandbox; and the
sandbox itself refuses synthetic data for analysis jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sandbox.cli import app

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
SCRIPT = """
import jinyu
df = jinyu.read_table("insured")
df["band"] = (df["age"] // 10).astype(str)
df.loc[df.index[:3], "band"] = "rare"
jinyu.acro.crosstab(df["band"], df["sex"])
X = df[["age"]].assign(const=1.0)
y = df["age"] * 2.0 + (df["sex"] == "F").astype(float)
jinyu.acro.ols(y, X)
print("printed rows go nowhere")
open("raw.csv", "w").write(df.to_csv())
"""


def _run(tmp: Path, *args: str) -> Any:
    env = {"SANDBOX_MEMORY_MB": "1024", "SANDBOX_WARM_RUNNERS": "0"}
    return CliRunner().invoke(
        app, ["--home", str(tmp / "home"), "--policies", str(POLICIES), *args], env=env
    )


@pytest.mark.container
def test_a_script_runs_on_synthetic_data_with_the_same_checks(
    tmp_path: Path, runner_image: str
) -> None:
    script = tmp_path / "analysis.py"
    script.write_text(SCRIPT, encoding="utf-8")
    args = ["dev", "run", str(script), "--operator", "op-jinshu",
            "--scenario", "pension-contributions", "--units", "2000"]  # fmt: skip
    res = _run(tmp_path, *args, "--out", str(tmp_path / "out"), "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["synthetic"] is True and result["budget_spent"] == 0.0
    assert result["acro"]["safe_threshold"] == 20  # review.yaml acro: important, as the server
    assert result["required_approvals"] == 2
    table, model = result["outputs"]
    assert table["type"] == "table" and table["status"] == "fail"
    assert table["checks"]["MinimumThresholdCheck"] == "fail"
    assert model["type"] == "regression" and model["status"] == "pass"
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f["name"] for o in result["outputs"] for f in o["files"])
    assert "raw.csv" not in written and "printed rows" not in res.stdout

    text = _run(tmp_path, *args)  # the human form
    assert text.exit_code == 0, text.output
    assert "SYNTHETIC DATA" in text.stdout and "MinimumThresholdCheck: fail" in text.stdout
    assert "2 supervisor approval(s)" in text.stdout


def test_a_grant_without_analysis_jobs_is_refused_locally(tmp_path: Path) -> None:
    script = tmp_path / "analysis.py"
    script.write_text(SCRIPT, encoding="utf-8")
    res = _run(tmp_path, "dev", "run", str(script), "--operator", "op-jinshu",
               "--scenario", "employment-income")  # fmt: skip
    assert res.exit_code == 2
    assert "ANALYSIS_NOT_GRANTED" in res.output


def test_the_sandbox_refuses_synthetic_data_for_analysis_jobs(tmp_path: Path, catalog) -> None:
    from sandbox.errors import Refused
    from sandbox.executors.docker.analysis import table_mounts
    from sandbox.synthetic import generate_synthetic

    generate_synthetic(tmp_path, catalog, ["divisions"], units=50, seed=1, policies=POLICIES)
    tables = {"divisions": "divisions/divisions.parquet"}
    with pytest.raises(Refused) as info:
        table_mounts(tables, tmp_path)
    assert info.value.code == "SYNTHETIC_DATA_REFUSED"
    assert set(table_mounts(tables, tmp_path, allow_synthetic=True)) == set(tables.values())
