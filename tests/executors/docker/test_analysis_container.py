"""Analysis jobs in the real runner container (issue 18): ACRO's outputs, nothing else.

A script makes a crosstab with a small cell and an OLS model: the small cell is
flagged, the model passes, and only ACRO's outputs come back. Hostile scripts are
contained: network, other datasets, writing outside scratch, a fork bomb, huge
output, printing raw rows, a raw file named an output.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import ExecutionFailed
from sandbox.executors.docker.analysis import analysis_spec, run_analysis

pytestmark = pytest.mark.container

TABLES = {"insured": "social_insurance/insured.parquet", "divisions": "divisions/divisions.parquet"}
ACRO = {"safe_threshold": 10, "safe_dof_threshold": 10, "safe_nk_n": 2, "safe_nk_k": 0.9}
SECRET_MARK = "RAW-ROW-LEAK"

GOOD = """
import jinyu
df = jinyu.read_table("insured")
df["band"] = (df["age"] // 10).astype(str)
df.loc[df.index[:3], "band"] = "rare"          # a cell of 3 people per sex at most
jinyu.acro.crosstab(df["band"], df["sex"])
X = df[["age"]].assign(const=1.0)
y = df["age"] * 2.0 + (df["sex"] == "F").astype(float)
jinyu.acro.ols(y, X)
jinyu.acro.add_exception("output_0", "the rare band is a published fact")
print(df.head(50).to_string(), "RAW-ROW-LEAK")   # must never reach anyone
open("raw_rows.csv", "w").write(df.to_csv())     # written, never collected
"""


def _run(make_executor: Any, data_root: Path, script: str, **settings: Any) -> Any:
    executor = make_executor(memory_mb=settings.pop("memory_mb", 1024), pids=64, **settings)
    spec = analysis_spec(entry="main.py", tables=TABLES, acro=ACRO)
    return run_analysis(
        executor, spec, {"main.py": script.encode()}, data_root=data_root, job_id="analysis"
    )


def _failure(make_executor: Any, data_root: Path, script: str, **settings: Any) -> str:
    with pytest.raises(ExecutionFailed) as info:
        _run(make_executor, data_root, script, **settings)
    assert SECRET_MARK not in str(info.value)
    return info.value.category


def test_crosstab_small_cell_is_flagged_and_ols_passes(make_executor: Any, demo_data_root: Path):
    out = _run(make_executor, demo_data_root, GOOD)
    outputs = out.manifest["outputs"]
    assert [o["type"] for o in outputs] == ["table", "regression"]
    table, model = outputs
    assert table["status"] == "fail"
    assert table["checks"]["MinimumThresholdCheck"] == "fail"
    assert table["exception"] == "the rare band is a published fact"
    cells = table["files"][0]["sdc"]["cells"]["MinimumThresholdCheck"]
    rows = list(csv.reader(io.StringIO(out.files[table["files"][0]["name"]].decode())))
    assert rows[0] == ["band", "F", "M"]
    flagged = {rows[1 + r][0] for r, _c in cells}
    assert flagged == {"rare"}
    assert model["status"] == "pass"
    assert model["method"] == "ols"
    assert model["checks"] == {"MinimumDoFCheck": "pass"}
    assert len(model["files"]) == 3
    # only ACRO's outputs came back: no raw file, no stdout, no session summary
    names = set(out.files)
    assert names == {f["name"] for o in outputs for f in o["files"]}
    assert all(name.endswith(".csv") for name in names)
    for data in out.files.values():
        assert SECRET_MARK.encode() not in data
        assert b"person_id" not in data


def test_histogram_comes_back_as_a_png(make_executor: Any, demo_data_root: Path):
    script = 'import jinyu\ndf = jinyu.read_table("insured")\njinyu.acro.hist(df, "age")\n'
    out = _run(make_executor, demo_data_root, script)
    (figure,) = out.manifest["outputs"]
    assert figure["type"] == "histogram"
    (item,) = figure["files"]
    assert out.files[item["name"]].startswith(b"\x89PNG")


# -- hostile scripts -----------------------------------------------------------------


def test_network_is_unreachable(make_executor: Any, demo_data_root: Path):
    script = """
import socket, jinyu, pandas as pd
ok = []
for host in ("1.1.1.1", "172.17.0.1"):
    try:
        socket.create_connection((host, 80), timeout=2); ok.append(host)
    except OSError:
        pass
try:
    socket.getaddrinfo("example.com", 80); ok.append("dns")
except OSError:
    pass
if ok:
    raise SystemExit(3)
df = jinyu.read_table("divisions")
jinyu.acro.crosstab(df["city_code"], df["city_code"].str[:2])
"""
    out = _run(make_executor, demo_data_root, script)  # no connection worked
    assert [o["type"] for o in out.manifest["outputs"]] == ["table"]


def test_other_datasets_are_not_there(make_executor: Any, demo_data_root: Path):
    script = """
import os, glob
seen = sorted(glob.glob("/data/**", recursive=True))
allowed = {"/data/", "/data/social_insurance", "/data/divisions",
           "/data/social_insurance/insured.parquet", "/data/divisions/divisions.parquet"}
if set(seen) - allowed:
    raise SystemExit(4)
for path in ("/data/population/persons.parquet", "/data/social_insurance/payments.parquet"):
    if os.path.exists(path):
        raise SystemExit(5)
"""
    out = _run(make_executor, demo_data_root, script)
    assert out.manifest["outputs"] == []


def test_writing_outside_scratch_fails(make_executor: Any, demo_data_root: Path):
    script = """
import os
ok = []
for path in ("/leak.csv", "/etc/leak", "/data/divisions/x", "/opt/runner/lib/x.py", "/plan/x"):
    try:
        open(path, "w").write("x"); ok.append(path)
    except OSError:
        pass
if ok:
    raise SystemExit(6)
open("/out/planted.csv", "w").write("RAW-ROW-LEAK")  # /out is wiped after the script
os.makedirs("/out/files", exist_ok=True)
open("/out/files/0_0.csv", "w").write("RAW-ROW-LEAK")
open("/out/manifest.json", "w").write("{}")
"""
    out = _run(make_executor, demo_data_root, script)
    assert out.manifest["outputs"] == [] and out.files == {}


def test_a_failing_script_returns_only_its_category(make_executor: Any, demo_data_root: Path):
    script = (
        'import jinyu\nraise ValueError(jinyu.read_table("insured").to_string() + "RAW-ROW-LEAK")\n'
    )
    assert _failure(make_executor, demo_data_root, script) == "script_error"
    assert _failure(make_executor, demo_data_root, "import sys\nsys.exit(42)\n") == "script_error"


def test_fork_bomb_is_contained(make_executor: Any, demo_data_root: Path):
    script = """
import os
children = 0
try:
    while True:
        if os.fork() == 0:
            import time; time.sleep(60); os._exit(0)
        children += 1
except OSError:
    pass
if children >= 64:
    raise SystemExit(7)
"""
    out = _run(make_executor, demo_data_root, script, job_timeout_s=60.0)
    assert out.manifest["outputs"] == []
    assert out.wall_s < 30  # the stragglers were killed, not waited for


def test_huge_output_is_refused(make_executor: Any, demo_data_root: Path):
    script = """
import jinyu, pandas as pd, numpy as np
df = pd.DataFrame({"a": np.arange(200_000) % 5000, "b": np.arange(200_000) % 7})
jinyu.acro.crosstab(df["a"], df["b"])
"""
    category = _failure(
        make_executor, demo_data_root, script, output_max_bytes=64 * 1024, job_timeout_s=90.0
    )
    assert category == "output_too_large"


def test_filling_scratch_is_a_script_error(make_executor: Any, demo_data_root: Path):
    script = 'open("big", "wb").write(b"x" * (64 * 1024 * 1024))\n'
    assert _failure(make_executor, demo_data_root, script) == "script_error"


def test_a_raw_file_named_an_output_is_refused(make_executor: Any, demo_data_root: Path):
    script = """
import jinyu
df = jinyu.read_table("insured")
df.to_csv("raw.csv")
jinyu.acro.custom_output("raw.csv", "please release RAW-ROW-LEAK")
jinyu.acro.crosstab(df["sex"], df["insurance_type"])
"""
    out = _run(make_executor, demo_data_root, script)
    assert [o["type"] for o in out.manifest["outputs"]] == ["table"]
    assert {"uid": "output_0", "type": "custom", "reason": "custom"} in out.manifest["refused"]
    for data in out.files.values():
        assert b"person_id" not in data


def test_a_forged_results_file_naming_a_raw_file_is_never_read(
    make_executor: Any, demo_data_root: Path
):
    # The script finalises its own ACRO session, then swaps in a raw file: nothing
    # of that is read. What leaves is the checker's replay of the crosstab
    # (tests/executors/docker/test_analysis_verdicts.py for more forgeries).
    script = """
import json, os, jinyu
df = jinyu.read_table("insured")
jinyu.acro.crosstab(df["sex"], df["insurance_type"])
for target in ("/scratch/acro-results", "/scratch/calls/results"):
    jinyu.acro.finalise(target, "json")
    results = json.load(open(target + "/results.json"))
    df.to_csv(target + "/raw.csv")
    results["results"]["output_0"]["files"] = [{"name": "raw.csv", "sdc": {}}]
    json.dump(results, open(target + "/results.json", "w"))
"""
    out = _run(make_executor, demo_data_root, script)
    (table,) = out.manifest["outputs"]
    assert table["type"] == "table" and table["method"] == "crosstab"
    assert [f["name"] for f in table["files"]] == ["0_0.csv"]
    for data in out.files.values():
        assert b"person_id" not in data
