"""`sandbox policy check|catalog` and `sandbox policy explain` (the local explain),
through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sandbox.cli import app
from tests.policy_factory import dataset, grant, make_policies

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
EXAMPLES = sorted((ROOT / "queries").glob("*.sql"))


def _run(tmp: Path, *args: str, policies: Path = POLICIES) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["--home", str(tmp / "home"), "--policies", str(policies), *args]
    )
    return result.exit_code, result.output


def test_policy_check_json(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "policy", "check", "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["ok"] is True
    assert (summary["datasets"], summary["private_datasets"], summary["lookup_datasets"]) == (
        5,
        4,
        1,
    )
    assert (summary["tables"], summary["operators"], summary["grants"]) == (6, 2, 4)
    assert summary["not_grantable"] == [
        {"id": "medical_records", "grade": "core", "sharing": "not_shared"}
    ]


def test_policy_check_text(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "policy", "check")
    assert code == 0, out
    assert "5 datasets" in out and "not grantable" in out


@pytest.mark.parametrize("how", ["core", "not_shared"])
def test_policy_check_refuses_forbidden_grants(tmp_path: Path, how: str) -> None:
    def catalog(d: dict[str, Any]) -> None:
        if how == "not_shared":
            dataset(d, "enterprises")["sharing"] = {
                "attribute": "not_shared",
                "reason": "Withdrawn.",
            }

    def grants(d: dict[str, Any]) -> None:
        if how == "core":
            grant(d, "g-jinshu-employment")["datasets"].append("medical_records")

    policies = make_policies(tmp_path, catalog=catalog, grants=grants)
    code, out = _run(tmp_path, "policy", "check", "--json", policies=policies)
    assert code == 2, out
    err = json.loads(out)["error"]
    assert err["code"] == "GRANT_FORBIDDEN"
    assert "cannot be granted" in err["message"]
    code, out = _run(tmp_path, "policy", "check", policies=policies)
    assert code == 2 and "GRANT_FORBIDDEN" in out and "Traceback" not in out


def test_policy_check_invalid_catalog(tmp_path: Path) -> None:
    policies = make_policies(tmp_path, catalog=lambda d: d.update(datasets="oops"))
    code, out = _run(tmp_path, "policy", "check", "--json", policies=policies)
    assert code == 2
    assert json.loads(out)["error"]["code"] == "POLICY_INVALID"


@pytest.mark.parametrize("broken", ["directory", "latin-1", "bounds-inf", "one-part-file"])
def test_policy_check_refuses_what_would_crash_later(tmp_path: Path, broken: str) -> None:
    def persons(d: dict[str, Any]) -> dict[str, Any]:
        return dataset(d, "population")["tables"][0]  # type: ignore[no-any-return]

    def edit(d: dict[str, Any]) -> None:
        if broken == "bounds-inf":
            next(c for c in persons(d)["columns"] if c["name"] == "age")["bounds"] = [0, 1e999]
        if broken == "one-part-file":
            persons(d)["file"] = "persons.parquet"

    policies = make_policies(tmp_path, catalog=edit)
    if broken == "directory":
        (policies / "catalog.yaml").unlink()
        (policies / "catalog.yaml").mkdir()
    if broken == "latin-1":
        (policies / "catalog.yaml").write_bytes("title: 公共数据\n".encode("gb18030"))
    code, out = _run(tmp_path, "policy", "check", "--json", policies=policies)
    assert code == 2, out
    err = json.loads(out)["error"]
    assert err["code"] == "POLICY_INVALID"
    assert "catalog.yaml" in err["message"]


def test_policy_catalog_json(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "policy", "catalog", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert [d["id"] for d in data["datasets"]][:2] == ["divisions", "population"]
    code, out = _run(tmp_path, "policy", "catalog")
    assert code == 0 and "monthly_income" in out


def test_examples_are_enough() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_explain_every_example(tmp_path: Path, path: Path) -> None:
    # --operator/--scenario come from the file's header
    code, out = _run(tmp_path, "policy", "explain", str(path), "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["operator"] in ("op-jinshu", "op-huaxin")
    plan = summary["plan"]
    assert plan["sql"] == summary["sql"] and summary["outputs"]
    assert summary["plan_digest"] and len(summary["query_sha256"]) == 64
    text = path.read_text("utf-8")
    assert f"--operator {summary['operator']}" in text
    assert f"--scenario {summary['scenario']}" in text


def test_explain_with_epsilon_shows_accuracy(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "policy", "explain", "SELECT sex, COUNT(*) AS n FROM persons "
                     "GROUP BY sex", "--operator", "op-jinshu", "--scenario",
                     "employment-income", "--epsilon", "1", "--json")  # fmt: skip
    assert code == 0, out
    summary = json.loads(out)
    acc = {a["name"]: a for a in summary["accuracy"]}
    assert acc["n"]["scale"] > 0 and acc["n"]["accuracy_95"] > 0
    assert summary["cost"]["epsilon"] == pytest.approx(1.0)


def test_explain_text(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "policy", "explain", str(EXAMPLES[0]), "--epsilon", "0.5")
    assert code == 0, out
    assert "runner SQL" in out and "county_code" in out and "public (117)" in out


def test_explain_refusals(tmp_path: Path) -> None:
    args = ("--operator", "op-jinshu", "--scenario", "employment-income", "--json")
    code, out = _run(tmp_path, "policy", "explain", "SELECT * FROM persons", *args)
    assert code == 2
    assert json.loads(out)["error"]["code"] == "NO_AGGREGATE"
    code, out = _run(
        tmp_path,
        "policy",
        "explain",
        "SELECT COUNT(*) FROM persons",
        "--operator",
        "op-huaxin",
        "--scenario",
        "household-study-2024",
        "--json",
    )
    assert code == 2
    assert json.loads(out)["error"]["code"] == "GRANT_EXPIRED"
    code, out = _run(tmp_path, "policy", "explain", "SELECT COUNT(*) FROM persons", "--json")
    assert code == 2
    assert json.loads(out)["error"]["code"] == "BAD_REQUEST"
    code, out = _run(tmp_path, "policy", "explain", "nothere.sql", *args)
    assert code == 2
    # private keys need δ: without --delta the one default (a tenth of the grant's δ) ...
    occupations = "SELECT occupation, COUNT(*) FROM persons GROUP BY occupation"
    code, out = _run(tmp_path, "policy", "explain", occupations, *args, "--epsilon", "1")
    assert code == 0, out
    assert json.loads(out)["cost"]["requested_delta"] == pytest.approx(1e-6)
    # ... and an explicit δ = 0 wins, and is refused
    code, out = _run(tmp_path, "policy", "explain", occupations, *args, "--epsilon", "1",
                     "--delta", "0")  # fmt: skip
    assert code == 2
    assert json.loads(out)["error"]["code"] == "DELTA_REQUIRED"
