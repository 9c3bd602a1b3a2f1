"""Analysis jobs end to end (issue 18): `sandbox submit-script` to a real server,
POST /v1/analysis-jobs, the worker runs the script in the real runner container, the
job waits for two supervisors (important data), their approvals release a signed
product of ACRO's outputs, `sandbox script-result` downloads it and `sandbox product
verify` verifies it; no budget is charged. Plus the request model and refusals."""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.analysis_live import SCENARIO, Live, live_server

SCRIPT = """
import jinyu
df = jinyu.read_table("insured")
df["band"] = (df["age"] // 10).astype(str)
df.loc[df.index[:3], "band"] = "rare"
jinyu.acro.crosstab(df["band"], df["sex"])
X = df[["age"]].assign(const=1.0)
y = df["age"] * 2.0 + (df["sex"] == "F").astype(float)
jinyu.acro.ols(y, X)
jinyu.acro.add_exception("output_0", "the rare band is a published fact")
print(df.head(50).to_string())  # goes nowhere
"""


@pytest.fixture()
def live(
    tmp_path: Path, policies_dir: Path, docker_client: Any, runner_image: str, demo_data_root: Path
) -> Iterator[Live]:
    # the lease loop ticks every 0.5 s: a run outlasts many ticks
    with live_server(
        tmp_path / "server", policies_dir, demo_data_root,
        client=docker_client, image=runner_image, lease_s=1.5,
    ) as (server, _app):  # fmt: skip
        yield server


@pytest.mark.container
def test_a_script_goes_from_the_cli_through_review_to_a_verified_product(
    live: Live, tmp_path: Path
):
    script = tmp_path / "analysis.py"
    script.write_text(SCRIPT, encoding="utf-8")
    out = live.cli(
        "op-jinshu", "submit-script", str(script), "-s", SCENARIO, "--json", home=tmp_path / "c"
    )
    assert out.exit_code == 0, out.stdout + out.stderr
    job = json.loads(out.stdout)
    # held for review from submission on (docs/analysis-jobs.md): the CLI does not wait
    assert job["kind"] == "analysis" and job["state"] == "in_review" and job["held"], job
    assert job["required_approvals"] == 2 and job["epsilon"] == 0
    assert "head()" not in out.stdout and "insured" not in json.dumps(job.get("error"))
    live.until_ran(job["id"])

    # the operator sees its script, not the outputs, before release
    mine = live.call("GET", f"/v1/analysis-jobs/{job['id']}", "op-jinshu").json()
    assert mine["analysis"]["files"] == {"main.py": SCRIPT}
    assert mine["analysis"]["outputs"] is None
    # a supervisor sees each output with ACRO's verdict and checks
    seen = live.call("GET", f"/v1/analysis-jobs/{job['id']}", "supervisor-li").json()
    outputs = seen["analysis"]["outputs"]
    assert [o["type"] for o in outputs] == ["table", "regression"]
    assert outputs[0]["status"] == "fail"  # the crosstab's small cells
    assert outputs[0]["checks"].get("MinimumThresholdCheck") == "fail"
    assert outputs[1]["status"] == "pass"
    assert outputs[0]["exception"] == "the rare band is a published fact"

    first = live.call(
        "POST", f"/v1/review/{job['id']}", "supervisor-li",
        json={"decision": "approve", "reason": "cells checked"},
    )  # fmt: skip
    assert first.status_code == 200 and first.json()["job"]["state"] == "in_review"
    second = live.call(
        "POST", f"/v1/review/{job['id']}", "supervisor-wang",
        json={"decision": "approve", "reason": "model fine"},
    )  # fmt: skip
    released = second.json()["job"]
    assert released["state"] == "released"
    assert released["product"]["href"] == f"/v1/analysis-jobs/{job['id']}/product"

    got = live.cli(
        "op-jinshu", "script-result", job["id"], "-o", str(tmp_path / "p.zip"), "--json",
        home=tmp_path / "c",
    )  # fmt: skip
    assert got.exit_code == 0, got.stdout + got.stderr
    names = {f["name"] for o in outputs for f in o["files"]}
    with zipfile.ZipFile(tmp_path / "p.zip") as archive:
        assert set(archive.namelist()) == names  # only ACRO's outputs
    pem = tmp_path / "products.pub"
    pem.write_text(live.call("GET", "/v1/keys/products", "op-jinshu").text)
    verified = live.cli(
        "op-jinshu", "product", "verify", str(tmp_path / "p.zip"), "-k", str(pem), "--json",
        home=tmp_path / "c",
    )  # fmt: skip
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["reviewers"] == ["supervisor-li", "supervisor-wang"]
    manifest = json.loads((tmp_path / "p.zip.manifest.json").read_text())["manifest"]
    assert manifest["kind"] == "analysis" and manifest["privacy_loss"]["epsilon"] == 0
    assert [o["acro_status"] for o in manifest["outputs"]] == ["fail", "pass"]

    conn = live.service.conn()
    assert conn.execute("SELECT COUNT(*) FROM ledger_entries").fetchone()[0] == 0
    actions = [
        r[0]
        for r in conn.execute(
            "SELECT action FROM audit_events WHERE subject = ? ORDER BY seq", (job["id"],)
        )
    ]
    assert actions.count("review.approved") == 2 and "product.released" in actions


@pytest.mark.container
def test_supervisors_release_only_the_outputs_both_chose(live: Live, tmp_path: Path):
    """Partial release end to end: the queue shows the job as an analysis script (API
    and `sandbox review list`); an unknown uid is refused; `sandbox review approve J
    --output output_1` and an API approval choosing both outputs release only
    output_1; the product verifies and its manifest and audit name output_0 withheld."""
    home = tmp_path / "c"
    script = tmp_path / "analysis.py"
    script.write_text(SCRIPT, encoding="utf-8")
    out = live.cli("op-jinshu", "submit-script", str(script), "-s", SCENARIO, "--json", home=home)
    assert out.exit_code == 0, out.stdout + out.stderr
    job = json.loads(out.stdout)
    assert job["state"] == "in_review" and job["held"], job  # to its operator
    job = live.until_ran(job["id"])  # as a supervisor sees it
    assert job["state"] == "in_review", job
    # claimed by the server that took it (an unclaimed job was failed by the lease loop
    # as JOB_INTERRUPTED whenever its run outlasted the next lease tick)
    claim = live.service.conn().execute("SELECT claimed_by FROM jobs WHERE id = ?", (job["id"],))
    assert claim.fetchone()[0] == live.service.worker.server_id
    assert live.service.worker.lease.orphans(live.service.conn(), ["running", "in_review"]) == []

    (queued,) = live.call("GET", "/v1/review", "supervisor-li").json()
    assert queued["kind"] == "analysis"
    assert queued["analysis"] == {"entry": "main.py", "files": 1, "outputs": 2, "flagged": 1}
    listed = live.cli("supervisor-li", "review", "list", home=home)
    assert listed.exit_code == 0, listed.stdout + listed.stderr
    assert "analysis script" in listed.stdout and "main.py" in listed.stdout
    assert "2 outputs, 1 flagged" in listed.stdout
    assert "SELECT" not in listed.stdout

    wrong = live.call(
        "POST", f"/v1/review/{job['id']}", "supervisor-li",
        json={"decision": "approve", "reason": "ok", "outputs": ["output_7"]},
    )  # fmt: skip
    assert wrong.status_code == 422
    assert wrong.json()["error"]["code"] == "OUTPUT_SELECTION_INVALID"
    assert "output_7" in wrong.json()["error"]["message"]

    first = live.cli(
        "supervisor-li", "review", "approve", job["id"], "--output", "output_1",
        "-r", "the crosstab's small cells stay in", "--json", home=home,
    )  # fmt: skip
    assert first.exit_code == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["outcome"] == "pending"
    second = live.call(
        "POST", f"/v1/review/{job['id']}", "supervisor-wang",
        json={"decision": "approve", "reason": "both fine", "outputs": ["output_0", "output_1"]},
    )  # fmt: skip
    assert second.status_code == 200 and second.json()["job"]["state"] == "released"

    got = live.cli(
        "op-jinshu", "script-result", job["id"], "-o", str(tmp_path / "p.zip"), "--json",
        home=home,
    )  # fmt: skip
    assert got.exit_code == 0, got.stdout + got.stderr
    seen = live.call("GET", f"/v1/analysis-jobs/{job['id']}", "supervisor-li").json()
    by_uid = {o["uid"]: {f["name"] for f in o["files"]} for o in seen["analysis"]["outputs"]}
    with zipfile.ZipFile(tmp_path / "p.zip") as archive:
        assert set(archive.namelist()) == by_uid["output_1"]
    pem = tmp_path / "products.pub"
    pem.write_text(live.call("GET", "/v1/keys/products", "op-jinshu").text)
    verified = live.cli(
        "op-jinshu", "product", "verify", str(tmp_path / "p.zip"), "-k", str(pem), home=home
    )
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    manifest = json.loads((tmp_path / "p.zip.manifest.json").read_text())["manifest"]
    assert [o["uid"] for o in manifest["outputs"]] == ["output_1"]
    assert manifest["withheld_outputs"] == ["output_0"]
    assert manifest["selections"] == [
        {"reviewer": "supervisor-li", "outputs": ["output_1"]},
        {"reviewer": "supervisor-wang", "outputs": ["output_0", "output_1"]},
    ]
    mine = live.call("GET", f"/v1/analysis-jobs/{job['id']}", "op-jinshu").json()["analysis"]
    assert [o["uid"] for o in mine["outputs"]] == ["output_1"]
    assert mine["withheld_outputs"] == ["output_0"]

    events = live.call(
        "GET", "/v1/audit", "supervisor-li", params={"action": "product.released"}
    ).json()
    (released,) = [e for e in events if e["subject"] == job["id"]]
    assert released["details"]["withheld_outputs"] == ["output_0"]
    assert released["details"]["selections"]["supervisor-li"] == ["output_1"]


@pytest.mark.container
def test_a_grant_without_analysis_jobs_is_refused_and_nothing_is_recorded(live: Live):
    resp = live.call(
        "POST", "/v1/analysis-jobs", "op-jinshu",
        json={"scenario": "employment-income", "script": SCRIPT},
    )  # fmt: skip
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "ANALYSIS_NOT_GRANTED"
    assert live.service.conn().execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
    # supervisors cannot submit
    resp = live.call(
        "POST", "/v1/analysis-jobs", "supervisor-li", json={"scenario": SCENARIO, "script": "x"}
    )
    assert resp.status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {"scenario": SCENARIO},  # neither script nor files
        {"scenario": SCENARIO, "script": "x", "files": {"main.py": "x"}},  # both
        {"scenario": SCENARIO, "script": "x", "entry": "main.py"},
        {"scenario": SCENARIO, "script": "x", "epsilon": 1.0},  # unknown field
        {"scenario": SCENARIO, "script": 5},  # strict: not a string
        {"scenario": SCENARIO, "files": {f"m{i}.py": "x" for i in range(21)}},
    ],
)
def test_malformed_requests_are_refused(api: Any, body: dict[str, Any]):
    resp = api.post("/v1/analysis-jobs", "op-jinshu", json=body)
    assert resp.status_code == 422, resp.text


def test_the_local_executor_refuses_analysis_jobs_before_recording_any(api: Any):
    resp = api.post("/v1/analysis-jobs", "op-jinshu", json={"scenario": SCENARIO, "script": "x"})
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "ANALYSIS_UNAVAILABLE"
    assert api.service.conn().execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


def test_a_sql_job_is_not_an_analysis_job(api: Any):
    from api_helpers import ENTERPRISE_SQL

    job = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit", 1.0).json()
    assert job["kind"] == "sql"
    assert api.get(f"/v1/analysis-jobs/{job['id']}", "op-huaxin").status_code == 404
    deadline = time.monotonic() + 30
    while api.get(f"/v1/jobs/{job['id']}", "op-huaxin").json()["state"] != "released":
        assert time.monotonic() < deadline
        time.sleep(0.05)
