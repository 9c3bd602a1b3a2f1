"""POST /v1/jobs with an Idempotency-Key: a retry answers with the job the first request
made (200, Idempotent-Replayed: true) and reserves nothing; another body is 409; keys are
each operator's own; bad keys are 400; concurrent requests over a real server make one."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from api_helpers import ENTERPRISE_SQL, POPULATION_SQL, Api, serve

from sandbox.api.app import create_app

BODY = {"sql": ENTERPRISE_SQL, "scenario": "sme-credit", "epsilon": 1.0}


def submit(api: Api, key: Any, who: str = "op-huaxin", **body: Any) -> Any:
    keys = key if isinstance(key, list) else [key]
    headers = [("Authorization", f"Bearer {api.token(who)}")]
    headers += [("Idempotency-Key", k) for k in keys]  # a list: one header line each
    return api.client.post("/v1/jobs", json={**BODY, **body}, headers=headers)


def ledger_jobs(api: Api) -> list[str]:
    rows = api.service.conn().execute("SELECT job_id FROM ledger_entries ORDER BY created_at")
    return [r[0] for r in rows]


def test_a_retry_with_the_key_is_the_same_job_and_no_second_charge(api: Api) -> None:
    first = submit(api, '"3f1c0c7e-5d36-4c1e-9d0b-0f4c1b7e2a11"')
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    job = first.json()
    assert job["idempotency_key"] == "3f1c0c7e-5d36-4c1e-9d0b-0f4c1b7e2a11"
    # the same key, bare this time, and ε written as an integer: the same request
    again = submit(api, "3f1c0c7e-5d36-4c1e-9d0b-0f4c1b7e2a11", epsilon=1)
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == job["id"]
    api.wait(job["id"], "op-huaxin")
    later = submit(api, '"3f1c0c7e-5d36-4c1e-9d0b-0f4c1b7e2a11"')  # after it finished, too
    assert later.status_code == 200 and later.json()["id"] == job["id"]
    assert later.json()["state"] not in ("submitted", "budget_reserved")
    assert [j["id"] for j in api.get("/v1/jobs", "op-huaxin").json()] == [job["id"]]
    assert ledger_jobs(api) == [job["id"]]
    spent = api.get("/v1/budget", "op-huaxin").json()
    enterprises = next(r for r in spent if r["dataset"] == "enterprises")
    assert enterprises["spent"] + enterprises["reserved"] == pytest.approx(1.0)


def test_the_key_with_another_body_is_409(api: Api) -> None:
    job = submit(api, "k-1").json()
    other = submit(api, "k-1", epsilon=0.5)
    assert other.status_code == 409
    err = other.json()["error"]
    assert err["code"] == "IDEMPOTENCY_KEY_REUSED" and err["job"] == job["id"]
    assert "k-1" not in err["message"]
    assert ledger_jobs(api) == [job["id"]]


def test_another_operators_key_is_another_job(api: Api) -> None:
    mine = submit(api, "k-shared")
    theirs = api.post(
        "/v1/jobs",
        "op-jinshu",
        json={"sql": POPULATION_SQL, "scenario": "employment-income", "epsilon": 1.0},
        headers={"Idempotency-Key": "k-shared"},
    )
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    # a key is compared with its own operator's job only: huaxin's body under jinshu's
    # k-shared is another request than jinshu's, not a replay of huaxin's job
    clash = submit(api, "k-shared", who="op-jinshu")
    assert clash.status_code == 409 and clash.json()["error"]["job"] == theirs.json()["id"]


@pytest.mark.parametrize(
    "key",
    [
        "",
        '""',
        "x" * 129,
        '"' + "x" * 129 + '"',
        "caf\u00e9".encode(),
        '"a"b"',
        '"a\\b"',
        ["k-a", "k-b"],
    ],
    ids=["empty", "empty-quoted", "long", "long-quoted", "non-ascii", "quote", "escape", "two"],
)
def test_bad_keys_are_400_and_record_nothing(api: Api, key: Any) -> None:
    resp = submit(api, key)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "INVALID_IDEMPOTENCY_KEY" and err["hint"]
    assert api.get("/v1/jobs", "op-huaxin").json() == []


def test_no_key_still_works_and_is_a_new_job_each_time(api: Api) -> None:
    a = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit")
    b = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit")
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"] and a.json()["idempotency_key"] is None


def test_the_header_and_the_replay_are_in_openapi(api: Api) -> None:
    op = api.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]
    (param,) = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
    assert param["in"] == "header" and not param.get("required")
    assert "IDEMPOTENCY_KEY_REUSED" in param["description"]
    assert set(op["responses"]) >= {"200", "201", "400", "409"}
    assert "Idempotent-Replayed" in op["responses"]["200"]["headers"]


def test_concurrent_requests_with_one_key_over_a_real_server_make_one_job(api: Api) -> None:
    """Eight clients at once on their own connections; the server runs each request on
    its own thread (and SQLite connection): one 201, seven replays, one reservation."""
    token = api.token("op-huaxin")
    app = create_app(api.service.settings, service=api.service, include_console=False)
    n = 8
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []
    with serve(app) as url:

        def post() -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                barrier.wait()
                answers.append(
                    client.post(
                        "/v1/jobs",
                        json=BODY,
                        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": '"race"'},
                    )
                )

        threads = [threading.Thread(target=post) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert sorted(a.status_code for a in answers) == [200] * (n - 1) + [201], [
        a.text for a in answers
    ]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == n - 1
    assert len(api.get("/v1/jobs", "op-huaxin").json()) == 1
    assert len(ledger_jobs(api)) == 1
