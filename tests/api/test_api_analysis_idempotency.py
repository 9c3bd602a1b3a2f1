"""POST /v1/analysis-jobs with an Idempotency-Key, as POST /v1/jobs (test_api_idempotency):
a retry answers with the job the first request made (200, Idempotent-Replayed: true);
another body is 409; bad keys are 400; concurrent requests make one job; a key used for
a query is not a script's. `sandbox submit-script` sends a fresh key by default,
--idempotency-key to choose, and retries with it when the connection fails. A real
server with the Docker executor (analysis jobs need it); the scripts run for real."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.analysis_live import SCENARIO, Live, live_server
from tests.cli.test_submit_cli import DroppingProxy

pytestmark = pytest.mark.container

SCRIPT = (
    'import jinyu\ndf = jinyu.read_table("insured")\n'
    'jinyu.acro.crosstab(df["sex"], df["age"] > 40)\n'
)
BODY = {"scenario": SCENARIO, "script": SCRIPT}


@pytest.fixture()
def live(
    tmp_path: Path, policies_dir: Path, docker_client: Any, runner_image: str, demo_data_root: Path
) -> Iterator[Live]:
    with live_server(
        tmp_path / "server", policies_dir, demo_data_root, client=docker_client, image=runner_image
    ) as (server, _app):
        yield server


def post(live: Live, key: Any, **body: Any) -> httpx.Response:
    keys = key if isinstance(key, list) else [key]
    headers = [("Authorization", f"Bearer {live.tokens['op-jinshu']}")]
    headers += [("Idempotency-Key", k) for k in keys]
    return httpx.post(
        live.url + "/v1/analysis-jobs", json={**BODY, **body}, headers=headers, timeout=60
    )


def jobs(live: Live) -> list[dict[str, Any]]:
    rows = live.service.conn().execute("SELECT id, idempotency_key FROM jobs ORDER BY rowid")
    return [dict(r) for r in rows]


def test_a_retry_is_the_same_job_and_another_body_is_409(live: Live) -> None:
    first = post(live, '"run-1"')
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers, first.text
    job = first.json()
    assert job["idempotency_key"] == "run-1"
    # bare this time; the same script sent as a folder of one main.py is the same request
    again = post(live, "run-1", script=None, files={"main.py": SCRIPT})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == job["id"] and again.json()["state"] == "in_review"
    other = post(live, "run-1", script=SCRIPT + "\n")
    assert other.status_code == 409, other.text
    err = other.json()["error"]
    assert err["code"] == "IDEMPOTENCY_KEY_REUSED" and err["job"] == job["id"]
    assert "run-1" not in err["message"]
    # a key used for a query is another request than any script
    sql = httpx.post(
        live.url + "/v1/jobs",
        json={"sql": "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex", "scenario":
              "employment-income", "epsilon": 1.0},
        headers={"Idempotency-Key": "k-sql",
                 "Authorization": f"Bearer {live.tokens['op-jinshu']}"},
        timeout=60,
    )  # fmt: skip
    assert sql.status_code == 201, sql.text
    clash = post(live, "k-sql")
    assert clash.status_code == 409 and clash.json()["error"]["job"] == sql.json()["id"]
    assert [j["idempotency_key"] for j in jobs(live)] == ["run-1", "k-sql"]


@pytest.mark.parametrize("key", ["", "x" * 129, '"a"b"', ["k-a", "k-b"]])
def test_bad_keys_are_400_and_record_nothing(live: Live, key: Any) -> None:
    resp = post(live, key)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert jobs(live) == []


def test_concurrent_requests_with_one_key_make_one_job(live: Live) -> None:
    n = 6
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []

    def send() -> None:
        barrier.wait()
        answers.append(post(live, '"race"'))

    threads = [threading.Thread(target=send) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(a.status_code for a in answers) == [200] * (n - 1) + [201]
    assert len({a.json()["id"] for a in answers}) == 1 and len(jobs(live)) == 1


def test_the_header_is_in_openapi(live: Live) -> None:
    op = httpx.get(live.url + "/openapi.json").json()["paths"]["/v1/analysis-jobs"]["post"]
    (param,) = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
    assert param["in"] == "header" and "Idempotent-Replayed" in op["responses"]["200"]["headers"]


def submit_script(live: Live, tmp: Path, url: str, *args: str) -> Any:
    script = tmp / "a.py"
    script.write_text(SCRIPT, encoding="utf-8")
    from typer.testing import CliRunner

    from sandbox.cli import app

    env = {"SANDBOX_URL": url, "SANDBOX_TOKEN": live.tokens["op-jinshu"]}
    return CliRunner().invoke(
        app,
        ["--home", str(tmp / "c"), "submit-script", str(script), "-s", SCENARIO, *args],
        env=env,
    )


def test_submit_script_sends_a_key_and_a_rerun_with_it_is_the_same_job(
    live: Live, tmp_path: Path
) -> None:
    out = submit_script(live, tmp_path, live.url, "--json")
    assert out.exit_code == 0, out.stdout + out.stderr
    first = json.loads(out.stdout)
    assert uuid.UUID(first["idempotency_key"]).version == 4
    out = submit_script(live, tmp_path, live.url, "--idempotency-key", "mine-1")
    assert out.exit_code == 0, out.stdout + out.stderr
    assert "held for review" in out.stdout
    out = submit_script(live, tmp_path, live.url, "--idempotency-key", "mine-1")
    assert out.exit_code == 0 and "was submitted before with this idempotency key" in out.stderr
    assert [j["idempotency_key"] for j in jobs(live)] == [first["idempotency_key"], "mine-1"]


def test_submit_script_retries_a_dropped_connection_with_the_same_key(
    live: Live, tmp_path: Path
) -> None:
    proxy = DroppingProxy(live.url)
    try:
        out = submit_script(live, tmp_path, proxy.url)
    finally:
        proxy.close()
    assert out.exit_code == 0, out.stdout + out.stderr
    keys = proxy.keys()
    (job,) = jobs(live)
    assert len(keys) == 2 and keys[0] == keys[1] == f'"{job["idempotency_key"]}"'
    assert "submitted before with this idempotency key" in out.stderr
