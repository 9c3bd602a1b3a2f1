"""ACRO verdicts a script cannot forge (issue 18), in the real runner container.

The script's ``jinyu.acro`` only records its calls; the checker, a fresh process
started after every process of the script is dead, replays them into a fresh ACRO
session with the bureau's thresholds, and only its results leave. So a script that
lowers the threshold, replaces ACRO's checks, forges a results.json or leaves a
daemon behind still gets its small cell flagged; a call log it mangles is
``output_invalid``; unsupported arguments fail in the script itself.
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

TABLES = {"insured": "social_insurance/insured.parquet"}
ACRO = {"safe_threshold": 10, "safe_dof_threshold": 10, "safe_nk_n": 2, "safe_nk_k": 0.9}
SECRET_MARK = "RAW-ROW-LEAK"

SMALL_CELL = """
import jinyu
df = jinyu.read_table("insured")
df["band"] = (df["age"] // 10).astype(str)
df.loc[df.index[:3], "band"] = "rare"          # a cell of 3 people per sex at most
"""


def _run(make_executor: Any, data_root: Path, script: str) -> Any:
    executor = make_executor(memory_mb=1024, pids=64, job_timeout_s=90.0)
    spec = analysis_spec(entry="main.py", tables=TABLES, acro=ACRO)
    return run_analysis(
        executor, spec, {"main.py": script.encode()}, data_root=data_root, job_id="verdicts"
    )


def _failure(make_executor: Any, data_root: Path, script: str) -> str:
    with pytest.raises(ExecutionFailed) as info:
        _run(make_executor, data_root, script)
    assert SECRET_MARK not in str(info.value)
    return info.value.category


def _flagged_rows(out: Any, table: dict[str, Any]) -> set[str]:
    item = table["files"][0]
    rows = list(csv.reader(io.StringIO(out.files[item["name"]].decode())))
    return {rows[1 + r][0] for r, _c in item["sdc"]["cells"]["MinimumThresholdCheck"]}


def test_a_script_that_forges_everything_still_gets_its_small_cell_flagged(
    make_executor: Any, demo_data_root: Path
):
    script = (
        SMALL_CELL
        + """
import json, os, sys, time, glob
import acro, acro.sdcchecks
from sandbox_runner import analysis_calls

# (a) lower the threshold and replace the checks, in the session and in ACRO itself
session = jinyu.acro._session
session.config["safe_threshold"] = 0
session.sdc_checks = acro.sdcchecks.SDCChecks(session.config)
jinyu.acro.config["safe_threshold"] = 0
analysis_calls.make_session = lambda thresholds: session   # for any later session
analysis_calls.check_call = lambda method, args: None
table = jinyu.acro.crosstab(df["band"], df["sex"])
if session.results.get_index(0).status != "pass":
    raise SystemExit(9)                        # the forgery must work locally
jinyu.acro.add_exception("output_0", "forged")

# (b) a forged results.json wherever one might be read
forged = {"version": "1.0.2", "results": {"output_0": {
    "uid": "output_0", "status": "pass", "type": "table", "properties": {"method": "crosstab"},
    "files": [{"name": "output_0_0.csv", "sdc": {}}], "fair": {"check_status": {}}}}}
for target in ("/scratch/acro-results", "/scratch/calls/results", "/tmp/results",
               "/scratch/check-results"):
    os.makedirs(target, exist_ok=True)
    json.dump(forged, open(target + "/results.json", "w"))
    open(target + "/output_0_0.csv", "w").write("band,F,M\\nrare,99,99\\n")

# modules and settings planted where a careless checker would load them
for folder in ("/tmp", "/scratch", "/scratch/work", os.getcwd()):
    open(folder + "/sitecustomize.py", "w").write("raise SystemExit(0)\\n")
    open(folder + "/acro.py", "w").write("raise SystemExit(0)\\n")
open("/tmp/matplotlibrc", "w").write("backend: nosuchbackend\\n")

# (c) a daemon that would overwrite the checker's results as they appear
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        end = time.time() + 60
        while time.time() < end:
            for folder in glob.glob("/scratch/check-*/results"):
                try:
                    json.dump(forged, open(folder + "/results.json", "w"))
                except OSError:
                    pass
            time.sleep(0.01)
    os._exit(0)
time.sleep(0.2)
"""
    )
    out = _run(make_executor, demo_data_root, script)
    (table,) = out.manifest["outputs"]
    assert table["type"] == "table"
    assert table["status"] == "fail"
    assert table["checks"]["MinimumThresholdCheck"] == "fail"
    assert _flagged_rows(out, table) == {"rare"}
    assert table["exception"] == "forged"  # the request is the script's to make
    assert table["command"] == 'table = jinyu.acro.crosstab(df["band"], df["sex"])'
    (data,) = out.files.values()
    assert b"99,99" not in data


def test_every_supported_call_is_replayed_and_returns_acros_value(
    make_executor: Any, demo_data_root: Path
):
    script = (
        SMALL_CELL
        + """
import pandas as pd
acro = jinyu.acro
df["old"] = (df["age"] > 50).astype(int)
df["t"] = df["age"] % 37 + 1
X = df[["age"]].assign(const=1.0)
returned = [
    acro.crosstab(df["band"], df["sex"]),
    acro.crosstab([df["band"], df["sex"]], df["insurance_type"], values=df["age"],
                  aggfunc="mean"),
    acro.pivot_table(df, index="sex", values="age", aggfunc=["mean", "std"]),
    acro.ols(df["age"] * 2.0 + df["old"], X),
    acro.olsr("age ~ C(sex) + I(old * 2)", data=df),
    acro.logit(df["old"], df[["t"]].assign(const=1.0)),
    acro.logitr("old ~ t", df),
    acro.probit(df["old"].to_numpy(), df[["t"]].assign(const=1.0).to_numpy()),
    acro.probitr("old ~ t", data=df),
    acro.hist(df, "age", bins=5),
    acro.pie(df, "sex"),
    acro.surv_func(df["t"], df["old"], output="table"),
]
kinds = [type(r).__name__ for r in returned]
if kinds[:3] != ["DataFrame"] * 3 or kinds[9:11] != ["str", "str"]:
    raise SystemExit(3)
if not hasattr(returned[3], "params") or not hasattr(returned[5], "params"):
    raise SystemExit(4)
acro.add_comments("output_0", "bands of ten years")
acro.rename_output("output_1", "mean_age")
acro.remove_output("output_2")
acro.add_exception("mean_age", "means of large groups")
"""
    )
    out = _run(make_executor, demo_data_root, script)
    outputs = {o["uid"]: o for o in out.manifest["outputs"]}
    assert [o["method"] for o in out.manifest["outputs"]] == [
        "crosstab",
        "ols",
        "olsr",
        "logit",
        "logitr",
        "probit",
        "probitr",
        "histogram",
        "pie",
        "surv func",
        "crosstab",
    ]
    assert "output_2" not in outputs and "output_1" not in outputs
    assert outputs["output_0"]["status"] == "fail"
    assert outputs["output_0"]["comments"] == ["bands of ten years"]
    assert outputs["mean_age"]["exception"] == "means of large groups"
    for uid in ("output_3", "output_4", "output_5", "output_6", "output_7", "output_8"):
        assert outputs[uid]["type"] == "regression" and outputs[uid]["status"] == "pass"
    assert outputs["output_9"]["type"] == "histogram"
    assert outputs["output_10"]["type"] == "pie chart"
    assert outputs["output_4"]["command"] == ('acro.olsr("age ~ C(sex) + I(old * 2)", data=df),')


def test_unsupported_arguments_raise_type_error_in_the_script(
    make_executor: Any, demo_data_root: Path
):
    script = (
        SMALL_CELL
        + """
import numpy as np
acro = jinyu.acro
tries = [
    lambda: acro.crosstab(df["band"], df["sex"], values=df["age"], aggfunc=np.mean),
    lambda: acro.olsr("age ~ __import__('os').getpid()", data=df),
    lambda: acro.olsr("age ~ age.abs()", data=df),
    lambda: acro.ols(df["age"], df[["age"]], weights=df["age"]),
    lambda: acro.crosstab(df["band"], df["sex"], rownames=[object()]),
    lambda: acro.crosstab(df["band"], df["sex"].map(lambda s: [s])),
    lambda: acro.hist(df, "age", filename="../../out/x.png"),
]
for attempt in tries:
    try:
        attempt()
    except TypeError:
        continue
    raise SystemExit(3)
acro.crosstab(df["sex"], df["insurance_type"])
"""
    )
    out = _run(make_executor, demo_data_root, script)
    assert [o["uid"] for o in out.manifest["outputs"]] == ["output_0"]
    uncaught = SMALL_CELL + 'jinyu.acro.pivot_table(df, index="sex", values="age", aggfunc=len)\n'
    assert _failure(make_executor, demo_data_root, uncaught) == "script_error"


def test_an_edited_call_log_is_replayed_as_it_says(make_executor: Any, demo_data_root: Path):
    # The script may rewrite its log: the checker then replays what the log says,
    # through the same ACRO checks (the script chooses ACRO's inputs anyway).
    script = (
        SMALL_CELL
        + """
import json, sys
jinyu.acro.crosstab(df["band"], df["sex"])
jinyu.acro._write_log()
log = json.load(open("/scratch/calls/calls.json"))
log["calls"] = log["calls"] * 2
json.dump(log, open("/scratch/calls/calls.json", "w"))
jinyu.acro._write_log = lambda: None
"""
    )
    out = _run(make_executor, demo_data_root, script)
    assert [(o["uid"], o["status"]) for o in out.manifest["outputs"]] == [
        ("output_0", "fail"),
        ("output_1", "fail"),
    ]


MANGLED = {
    "untouched (the control)": "",
    "not json": 'open(LOG, "w").write("{RAW-ROW-LEAK")',
    "unknown method": 'edit(lambda c: c.update(method="finalise"))',
    "dunder method": 'edit(lambda c: c.update(method="__init__"))',
    "extra argument": 'edit(lambda c: c["args"].update(weights={"s": 1}))',
    "unknown value tag": 'edit(lambda c: c["args"].update(index={"pickle": "gASVAAAA"}))',
    "file outside the log": (
        'edit(lambda c: c["args"].update('
        'index={"frame": "../../data/social_insurance/insured.parquet"}))'
    ),
    "argument file is a symlink": (
        'os.unlink(ARG); os.symlink("/data/social_insurance/insured.parquet", ARG)'
    ),
    "argument file is not parquet": 'open(ARG, "w").write("RAW-ROW-LEAK")',
    "log is a symlink": 'os.unlink(LOG); os.symlink("/tmp/calls.json", LOG)',
    "formula that runs code": (
        'edit(lambda c: c.update(method="olsr", args={'
        '"formula": {"s": "v ~ __import__(\\"os\\").getpid()"}, '
        '"data": {"frame": c["args"]["index"]["series"]}}))'
    ),
}


@pytest.mark.parametrize("how", sorted(MANGLED))
def test_a_mangled_call_log_is_output_invalid(make_executor: Any, demo_data_root: Path, how: str):
    script = (
        SMALL_CELL
        + """
import json, os, shutil
LOG = "/scratch/calls/calls.json"
ARG = "/scratch/calls/a0.parquet"
jinyu.acro.crosstab(df["band"], df["sex"])
jinyu.acro._write_log()
shutil.copy(LOG, "/tmp/calls.json")
def edit(change):
    log = json.load(open(LOG))
    change(log["calls"][0])
    json.dump(log, open(LOG, "w"))
"""
        + MANGLED[how]
        + "\njinyu.acro._write_log = lambda: None\n"
    )
    if not MANGLED[how]:
        out = _run(make_executor, demo_data_root, script)
        assert [o["status"] for o in out.manifest["outputs"]] == ["fail"]
        return
    assert _failure(make_executor, demo_data_root, script) == "output_invalid"
