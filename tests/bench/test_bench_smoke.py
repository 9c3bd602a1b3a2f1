"""The benchmark harness at 100k rows: correctness of the harness, not speed.

Runs ``python -m bench.run --smoke`` for real (data generation, one process per
system and workload, raw DuckDB and our in-process path) and checks that it produced
sane numbers for every workload: timings, memory, ratios, and accuracy against the
exact answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from bench.report import render_markdown  # noqa: E402
from bench.run import accuracy, main  # noqa: E402
from bench.workloads import WORKLOADS  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("bench")
    code = main(
        [
            "--smoke",
            "--runs",
            "3",
            "--data",
            str(base / "data"),
            "--out",
            str(base / "out"),
            "--policies",
            str(ROOT / "policies"),
        ]
    )
    assert code == 0
    result = json.loads((base / "out" / "latest.json").read_text())
    result["_md"] = (base / "out" / "latest.md").read_text()
    return result


def test_every_workload_has_raw_and_ours(smoke: dict) -> None:
    assert smoke["systems"] == {"duckdb": "raw DuckDB (exact)", "ours": "ours, in-process"}
    (size,) = smoke["sizes"]
    assert size["rows"] == 100_000
    assert size["data"]["tables"]["persons"] == 100_000
    assert [w["id"] for w in size["workloads"]] == [w.id for w in WORKLOADS]
    for w in size["workloads"]:
        for name in ("duckdb", "ours"):
            res = w["systems"][name]
            assert res["status"] == "ok", (w["id"], name, res.get("reason"))
            assert res["runs"] == 3 and len(res["times"]) == 3
            assert 0 < res["median_s"] < 30
            assert 20 < res["peak_mb"] < 4000  # a Python process with DuckDB loaded
            assert res["ratio"] > 0
            assert "results" not in res  # answers are never written out
        assert w["systems"]["duckdb"]["ratio"] == 1.0
        ours = w["systems"]["ours"]
        assert set(ours["stages_median_s"]) == {"compile", "execute", "cost", "release"}


def test_accuracy_is_measured_and_sane(smoke: dict) -> None:
    (size,) = smoke["sizes"]
    by_id = {w["id"]: w["systems"]["ours"]["accuracy"] for w in size["workloads"]}
    for wid, acc in by_id.items():
        assert acc["spurious_groups"] == 0, wid
        assert all(v is not None for v in acc["mae"].values()), wid
    # public keys: every county every run; errors of the size ε = 1 gives
    for wid in ("count_sum", "mean_median", "join", "filter"):
        assert by_id[wid]["groups_exact"] == 117
        assert by_id[wid]["groups_released_mean"] == 117
        assert by_id[wid]["missing_group_runs"] == 0
    assert 0 < by_id["count_sum"]["mae"]["n"] < 20  # Laplace scale 2 with ε/2
    assert 0 < by_id["count_sum"]["mae"]["income_sum"] < 1e6
    assert 0 < by_id["mean_median"]["mae"]["age_mean"] < 10
    assert 0 <= by_id["mean_median"]["mae"]["age_median"] < 20
    assert 0 < by_id["join"]["mae"]["n"] < 1000  # 12 rows per person
    # private keys: partition selection drops the rare occupations, keeps the common
    pk = by_id["private_keys"]
    assert 50 < pk["groups_released_mean"] < pk["groups_exact"]


def test_markdown_has_the_tables(smoke: dict) -> None:
    md = smoke["_md"]
    assert "### 100k rows" in md
    assert "| count_sum |" in md and "Targets (ours):" in md
    assert md == render_markdown({k: v for k, v in smoke.items() if k != "_md"})


def test_accuracy_counts_errors_missing_and_spurious_groups() -> None:
    exact = [{"k": "a", "n": 10}, {"k": "b", "n": 20}]
    runs = [[{"k": "a", "n": 12}, {"k": "c", "n": 5}], [{"k": "a", "n": 9}, {"k": "b", "n": 26}]]
    acc = accuracy(exact, runs)
    assert acc["mae"] == {"n": pytest.approx((2 + 1 + 6) / 3)}
    assert acc["cells"] == {"n": 3}
    assert acc["spurious_groups"] == 1
    assert acc["missing_group_runs"] == 1
    assert acc["groups_released_mean"] == 2
