"""bench.merge: systems of a separate run are added, never replace the base's, and
their ratio is taken against the base run's raw DuckDB."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.merge import main, merge


def _run(started: str, systems: dict[str, float], load: float) -> dict[str, Any]:
    def res(median: float) -> dict[str, Any]:
        return {"status": "ok", "median_s": median, "runs": 3, "peak_mb": 100.0,
                "ratio": median / systems["duckdb"], "notes": []}  # fmt: skip

    return {
        "started_at": started,
        "machine": {
            "cores": 2,
            "cpu": "x",
            "memory_gb": 23.5,
            "os": "Linux",
            "python": "3.11",
            "load_avg_at_start": [load, load, load],
        },  # fmt: skip
        "args": {"runs": 3, "max_seconds": 100.0},
        "systems": {name: name.upper() for name in systems},
        "skipped": {},
        "sizes": [
            {
                "rows": 10,
                "label": "10",
                "data": {"tables": {"persons": 10, "insured": 1, "payments": 10}},
                "workloads": [
                    {"id": "count_sum", "systems": {n: res(m) for n, m in systems.items()}}
                ],
            }
        ],
    }


def test_added_systems_keep_their_times_and_take_the_base_raw_for_ratios():
    base = _run("T1", {"duckdb": 0.5, "ours": 1.0, "opendp": 4.0}, load=0.5)
    slow = _run("T2", {"duckdb": 1.0, "ours": 9.0, "smartnoise": 50.0}, load=6.0)
    merged = merge(base, [slow])
    systems = merged["sizes"][0]["workloads"][0]["systems"]
    assert systems["ours"]["median_s"] == 1.0  # the base's own, not the other run's
    assert systems["smartnoise"]["median_s"] == 50.0
    assert systems["smartnoise"]["ratio"] == 100.0  # 50 / the base's raw 0.5
    assert any("T2" in n and "6.0" in n for n in systems["smartnoise"]["notes"])
    assert list(merged["systems"]) == ["duckdb", "ours", "opendp", "smartnoise"]
    assert base["sizes"][0]["workloads"][0]["systems"].keys() == {"duckdb", "ours", "opendp"}


def test_the_command_writes_one_report(tmp_path: Path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run("T1", {"duckdb": 0.5, "ours": 1.0, "opendp": 4.0}, 0.5)))
    b.write_text(json.dumps(_run("T2", {"duckdb": 1.0, "tumult": 7.0}, 6.0)))
    assert main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "latest.md").read_text()
    assert "TUMULT" in md and "4.0× faster than OpenDP (MISSED)" in md
