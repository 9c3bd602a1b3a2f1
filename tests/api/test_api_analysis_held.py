"""An analysis job is held for review (issue 18, docs/analysis-jobs.md "Held until the
decision"): whether a script fails, and how long it runs, can depend on a data value,
so its operator sees one held state from submission until the supervisors decide.

A real server, the real runner container: three scripts (one fails on a data value,
one sleeps on a data value, one succeeds) look the same to their operator in every
surface (the REST API, `sandbox status` / `sandbox jobs`, the console's /console/my)
while they are queued, while one runs and once all ran, in everything but ids,
hashes, the script and the submission time; supervisors see the truth. A failed run
waits for review and the decision closes it. Held jobs count as active
(TOO_MANY_JOBS) until decided; analysis jobs have their own lane, so a long script
never delays a SQL job."""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from tests.api.analysis_live import SCENARIO, Live, live_server
from tests.api.api_helpers import POPULATION_SQL

pytestmark = pytest.mark.container

READ = 'import jinyu\ndf = jinyu.read_table("insured")\n'
MAKE = 'jinyu.acro.crosstab(df["sex"], df["insurance_type"])\n'
SUCCEEDS = READ + MAKE
FAILS = READ + 'if df["age"].max() > 0:\n    raise ValueError("the data said so")\n' + MAKE
SLEEPS = READ + 'import time\nif df["age"].max() > 0:\n    time.sleep(8)\n' + MAKE
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture()
def make_live(
    tmp_path: Path, policies_dir: Path, docker_client: Any, runner_image: str, demo_data_root: Path
) -> Iterator[Callable[..., tuple[Live, Any]]]:
    with contextlib.ExitStack() as stack:

        def make(**overrides: Any) -> tuple[Live, Any]:
            return stack.enter_context(
                live_server(
                    tmp_path / "server", policies_dir, demo_data_root,
                    client=docker_client, image=runner_image, console=True, **overrides,
                )
            )  # fmt: skip

        yield make


def submit(live: Live, script: str) -> str:
    resp = live.call(
        "POST", "/v1/analysis-jobs", "op-jinshu", json={"scenario": SCENARIO, "script": script}
    )
    assert resp.status_code == 201, resp.text
    job: dict[str, Any] = resp.json()
    assert job["state"] == "in_review" and job["held"] is True
    return str(job["id"])


def truth(live: Live, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = live.call("GET", f"/v1/jobs/{job_id}", "supervisor-li").json()
    return job


def until(check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def normal(view: dict[str, Any]) -> dict[str, Any]:
    """An operator's view with what differs between any two submissions taken out:
    the id, the script and its hashes, the submission time (checked: no later time)."""
    view = json.loads(json.dumps(view))
    assert view["updated_at"] == view["created_at"] and view["finished_at"] is None, view
    for key in ("id", "sql", "sql_sha256", "created_at", "updated_at", "idempotency_key"):
        view.pop(key, None)
    for t in view.get("transitions") or []:
        t.pop("at")
    if "analysis" in view:
        for key in ("files", "script_sha256"):
            view["analysis"].pop(key)
    return view


def console_page(app: Any, live: Live, path: str, jobs: dict[str, str]) -> str:
    """An operator's console page, with each job's id, script and times taken out."""
    client = TestClient(app)
    csrf = CSRF.search(client.get("/console/signin").text)
    assert csrf is not None
    client.post(
        "/console/signin",
        data={"token": live.tokens["op-jinshu"], "csrf": csrf.group(1)},
        follow_redirects=False,
    )
    page = client.get(path)
    assert page.status_code == 200, page.text
    text = page.text
    for job_id, script in jobs.items():
        text = text.replace(job_id, "JOB").replace(str(escape(script)), "SCRIPT")
    text = CSRF.sub('name="csrf" value="CSRF"', text)  # each sign-in its own
    return re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d)?(\+00:00)?", "TIME", text)


def operator_sees(live: Live, app: Any, jobs: dict[str, str], home: Path) -> list[Any]:
    """Everything the operator can see of each job, normalised, one entry per job."""
    listed = {j["id"]: j for j in live.call("GET", "/v1/jobs", "op-jinshu").json()}
    by_state = {
        state: {j["id"] for j in live.call("GET", f"/v1/jobs?state={state}", "op-jinshu").json()}
        for state in ("running", "in_review", "failed", "budget_reserved")
    }
    cli_jobs = live.cli("op-jinshu", "jobs", "--json", home=home)
    assert cli_jobs.exit_code == 0, cli_jobs.stdout
    cli_listed = {j["id"]: j for j in json.loads(cli_jobs.stdout)}
    out = []
    for job_id in jobs:
        status = live.cli("op-jinshu", "status", job_id, "--json", home=home)
        assert status.exit_code == 0, status.stdout
        product = live.call("GET", f"/v1/analysis-jobs/{job_id}/product", "op-jinshu")
        out.append(
            {
                "analysis": normal(
                    live.call("GET", f"/v1/analysis-jobs/{job_id}", "op-jinshu").json()
                ),
                "job": normal(live.call("GET", f"/v1/jobs/{job_id}", "op-jinshu").json()),
                "listed": normal(listed[job_id]),
                "in": sorted(s for s, ids in by_state.items() if job_id in ids),
                "status": normal(json.loads(status.stdout)),
                "cli_listed": normal(cli_listed[job_id]),
                "product": (
                    product.status_code,
                    product.json()["error"]["message"].replace(job_id, "JOB"),
                ),
            }
        )
    page = console_page(app, live, "/console/my", jobs)
    pages = [console_page(app, live, f"/console/my/jobs/{job_id}", jobs) for job_id in jobs]
    for other in pages[1:]:
        diff = difflib.unified_diff(pages[0].splitlines(), other.splitlines(), lineterm="")
        assert other == pages[0], "\n".join(diff)
    assert "JOB" in page and "running" not in page and "failed" not in page
    out.append(pages[0])
    return out


def test_a_failing_a_sleeping_and_a_good_script_look_the_same_until_the_decision(
    make_live: Callable[..., tuple[Live, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, app = make_live(analysis_slots=1)
    scripts = {"ok": SUCCEEDS, "fails": FAILS, "sleeps": SLEEPS}
    ids = {name: submit(live, text) for name, text in scripts.items()}
    jobs = {ids[name]: text for name, text in scripts.items()}
    home = tmp_path / "client"

    snapshots = [operator_sees(live, app, jobs, home)]  # queued (or the first running)
    until(lambda: truth(live, ids["sleeps"])["state"] == "running")
    assert truth(live, ids["ok"])["state"] == truth(live, ids["fails"])["state"] == "in_review"
    snapshots.append(operator_sees(live, app, jobs, home))  # one ran, one failed, one runs
    until(lambda: truth(live, ids["sleeps"])["state"] == "in_review")
    snapshots.append(operator_sees(live, app, jobs, home))  # all ran

    for snap in snapshots:
        per_job = snap[:3]
        assert per_job[0] == per_job[1] == per_job[2], json.dumps(per_job, indent=1)[:4000]
        assert per_job[0]["in"] == ["in_review"]
        assert per_job[0]["job"]["state"] == "in_review" and per_job[0]["job"]["error"] is None
        assert [t["to_state"] for t in per_job[0]["job"]["transitions"]] == [
            "submitted",
            "compiled",
            "budget_reserved",
        ]
    assert snapshots[0] == snapshots[1] == snapshots[2]

    # the supervisors see the truth: the failure, its category and incident
    failed = truth(live, ids["fails"])
    assert failed["state"] == "in_review", failed
    assert failed["error"].get("category") == "script_error", failed
    assert failed["error"]["incident"] and failed["error"]["diagnosis"]["stage"] == "execute"
    assert "the data said so" not in json.dumps(failed["error"])
    seen = live.cli("supervisor-li", "status", ids["fails"], home=home)
    assert "the run failed: script_error" in seen.stdout, seen.stdout
    assert truth(live, ids["sleeps"])["error"] is None

    # held jobs count as active until decided: the count does not drop as runs end
    import sandbox.service.ratelimit as ratelimit

    monkeypatch.setattr(ratelimit, "MAX_ACTIVE_JOBS", 3)
    more = live.call(
        "POST", "/v1/analysis-jobs", "op-jinshu", json={"scenario": SCENARIO, "script": SUCCEEDS}
    )
    assert more.status_code == 429 and more.json()["error"]["code"] == "TOO_MANY_JOBS"

    # the decision closes each: approving a failed run shows its operator the failure
    for who in ("supervisor-li", "supervisor-wang"):
        for name in ("fails", "ok"):
            r = live.call(
                "POST",
                f"/v1/review/{ids[name]}",
                who,
                json={"decision": "approve", "reason": "seen"},
            )
            assert r.status_code == 200, r.text
    r = live.call(
        "POST",
        f"/v1/review/{ids['sleeps']}",
        "supervisor-li",
        json={"decision": "reject", "reason": "no"},
    )
    assert r.status_code == 200, r.text
    mine = {k: live.call("GET", f"/v1/jobs/{v}", "op-jinshu").json() for k, v in ids.items()}
    assert mine["fails"]["state"] == "failed" and mine["fails"]["held"] is False
    assert mine["fails"]["error"]["category"] == "script_error"
    assert mine["ok"]["state"] == "released"
    assert mine["sleeps"]["state"] == "rejected" and mine["sleeps"]["error"] is None
    for job in mine.values():  # never when a run started or ended
        assert not {t["to_state"] for t in job["transitions"]} & {"running", "in_review"}
    conn = live.service.conn()
    events = [
        json.loads(r[1])
        for r in conn.execute(
            "SELECT action, details FROM audit_events WHERE subject = ?"
            " AND action = 'job.in_review'",
            (ids["fails"],),
        )
    ]
    assert events and events[0]["run_failed"] is True and events[0]["category"] == "script_error"
    # and with decisions made, the count is back down
    monkeypatch.setattr(ratelimit, "MAX_ACTIVE_JOBS", 1)
    again = live.call(
        "POST", "/v1/analysis-jobs", "op-jinshu", json={"scenario": SCENARIO, "script": SUCCEEDS}
    )
    assert again.status_code == 201, again.text


def test_a_long_script_does_not_hold_a_sql_jobs_slot(
    make_live: Callable[..., tuple[Live, Any]],
) -> None:
    live, _app = make_live(concurrency=1, analysis_slots=1)
    long = READ + "import time\ntime.sleep(40)\n" + MAKE
    job_id = submit(live, long)
    until(lambda: truth(live, job_id)["state"] == "running")
    began = time.monotonic()
    sql = live.call(
        "POST",
        "/v1/jobs",
        "op-jinshu",
        json={"sql": POPULATION_SQL, "scenario": "employment-income", "epsilon": 1.0},
    )
    assert sql.status_code == 201, sql.text
    until(lambda: truth(live, sql.json()["id"])["state"] not in ("budget_reserved", "running"), 35)
    assert time.monotonic() - began < 35
    assert truth(live, job_id)["state"] == "running"  # the script still holds its own slot
    live.call("POST", f"/v1/jobs/{job_id}/cancel", "op-jinshu")
