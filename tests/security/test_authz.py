"""Operators never see each other's jobs, products, manifests or budgets, on any face;
existence is never revealed; roles and token state are enforced on the API and console."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sec_helpers import Client

from sandbox import tokens

SQL = "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex"
MARK = "AUTHZ_MARKER_7781"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _released_job(sec: Client) -> str:
    r = sec.post(
        "/v1/jobs",
        "op-jinshu",
        json={"sql": f"{SQL} -- {MARK}", "scenario": "employment-income", "epsilon": 1.0},
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert sec.wait(job_id, "op-jinshu")["state"] == "in_review"
    ok = sec.post(
        f"/v1/review/{job_id}", "supervisor-li", json={"decision": "approve", "reason": "ok"}
    )
    assert ok.json()["outcome"] == "approved", ok.text
    return job_id


def _sign_in(sec: Client, who: str) -> None:
    page = sec.client.get("/console/signin")
    csrf = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    r = sec.client.post(
        "/console/signin", data={"token": sec.token(who), "csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303, r.text


def test_another_operator_gets_not_found_everywhere(make_client: Any) -> None:
    sec: Client = make_client(console=True)
    job_id = _released_job(sec)
    missing = "j-000000000000"
    for path in (
        "/v1/jobs/{}",
        "/v1/jobs/{}/product",
        "/v1/jobs/{}/product?format=json",
        "/v1/products/{}/manifest",
        "/v1/products/{}/manifest?format=parquet",
    ):
        theirs = sec.get(path.format(job_id), "op-huaxin")
        nothing = sec.get(path.format(missing), "op-huaxin")
        assert theirs.status_code == nothing.status_code == 404, path
        assert theirs.json()["error"]["code"] == nothing.json()["error"]["code"]
        assert MARK not in theirs.text and "op-jinshu" not in theirs.text
    cancel = sec.post(f"/v1/jobs/{job_id}/cancel", "op-huaxin")
    assert cancel.status_code == 404
    listed = sec.get("/v1/jobs?operator=op-jinshu&limit=1000", "op-huaxin").json()
    assert listed == []
    budget = sec.get("/v1/budget?operator=op-jinshu", "op-huaxin").json()
    assert budget and {b["operator"] for b in budget} == {"op-huaxin"}
    grants = sec.get("/v1/grants", "op-huaxin").json()
    assert {g["operator"] for g in grants} == {"op-huaxin"}
    # the owner still has it
    assert sec.get(f"/v1/jobs/{job_id}/product", "op-jinshu").status_code == 200

    # the console, signed in as the other operator
    _sign_in(sec, "op-huaxin")
    for path in (
        f"/console/my/jobs/{job_id}",
        f"/console/my/jobs/{job_id}/product.csv",
        f"/console/my/jobs/{job_id}/manifest.json",
    ):
        r = sec.client.get(path, follow_redirects=False)
        assert r.status_code == 404, (path, r.status_code)
        assert MARK not in r.text and job_id not in r.headers.get("content-disposition", "")
    my = sec.client.get("/console/my").text
    assert job_id not in my and MARK not in my
    for path in ("/console/review", "/console/jobs", f"/console/jobs/{job_id}", "/console/audit"):
        r = sec.client.get(path, follow_redirects=False)
        assert r.status_code == 403, path
        assert MARK not in r.text


def test_roles_and_token_state_on_the_api(sec: Client) -> None:
    # a supervisor cannot submit; an operator cannot review, audit or administer
    r = sec.post(
        "/v1/jobs",
        "supervisor-li",
        json={"sql": SQL, "scenario": "employment-income", "epsilon": 1},
    )
    assert r.status_code == 403
    for method, path in (
        ("GET", "/v1/review"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/audit/verify"),
        ("GET", "/v1/reports"),
        ("GET", "/v1/admin/tokens"),
        ("POST", "/v1/admin/grants/reload"),
    ):
        assert sec.call(method, path, "op-jinshu").status_code == 403, path
    # the token only in a query string or a cookie is not accepted
    token = sec.token("op-jinshu")
    assert sec.get(f"/v1/jobs?token={token}").status_code == 401
    assert sec.get(f"/v1/jobs?access_token={token}").status_code == 401
    assert sec.client.get("/v1/jobs", headers={"Cookie": f"token={token}"}).status_code == 401
    # expired and revoked tokens
    conn = sec.service.conn()
    past = datetime.now(UTC) - timedelta(days=2)
    old, _ = tokens.create_token(
        conn, role=tokens.Role.OPERATOR, subject="op-jinshu", expires_in=timedelta(days=1), now=past
    )
    r = sec.client.get("/v1/jobs", headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 401
    live = sec.token("op-huaxin")
    assert sec.get("/v1/jobs", "op-huaxin").status_code == 200
    record = next(t for t in tokens.list_tokens(conn) if t["subject"] == "op-huaxin")
    tokens.revoke_token(conn, record["id"])
    r = sec.client.get("/v1/jobs", headers={"Authorization": f"Bearer {live}"})
    assert r.status_code == 401


def test_review_rules_hold(sec: Client) -> None:
    r = sec.post(
        "/v1/jobs", "op-jinshu", json={"sql": SQL, "scenario": "employment-income", "epsilon": 1.0}
    )
    job_id = r.json()["id"]
    assert sec.wait(job_id, "op-jinshu")["state"] == "in_review"
    # the operator cannot review its own job (403 by role)
    own = sec.post(f"/v1/review/{job_id}", "op-jinshu", json={"decision": "approve", "reason": "x"})
    assert own.status_code == 403
    # a reason is required, server-side
    blank = sec.post(
        f"/v1/review/{job_id}", "supervisor-li", json={"decision": "approve", "reason": "  "}
    )
    assert blank.status_code == 422
    first = sec.post(
        f"/v1/review/{job_id}", "supervisor-li", json={"decision": "approve", "reason": "ok"}
    )
    assert first.json()["outcome"] == "approved"
    # twice by the same supervisor, or on a job no longer in review: refused
    again = sec.post(
        f"/v1/review/{job_id}", "supervisor-li", json={"decision": "reject", "reason": "no"}
    )
    assert again.status_code == 409
    other = sec.post(
        f"/v1/review/{job_id}", "supervisor-wang", json={"decision": "reject", "reason": "no"}
    )
    assert other.status_code == 409
    assert sec.get(f"/v1/jobs/{job_id}", "op-jinshu").json()["state"] == "released"
    # cancelling a released job is refused and changes nothing
    assert sec.post(f"/v1/jobs/{job_id}/cancel", "op-jinshu").status_code == 409
    assert sec.get(f"/v1/jobs/{job_id}/product", "op-jinshu").status_code == 200


@pytest.mark.parametrize(
    "fmt", ["../../sandbox.db", "..%2F..%2Fsandbox.db", "/etc/passwd", "csv/../../x", "CSV"]
)
def test_product_format_traversal_is_refused(sec: Client, fmt: str) -> None:
    r = sec.get(f"/v1/jobs/j-000000000000/product?format={fmt}", "op-jinshu")
    assert r.status_code in (404, 422), r.status_code
    assert b"SQLite" not in r.content and b"root:" not in r.content


@pytest.mark.parametrize("job_id", ["..", "../products", "..%2F..%2Fsandbox.db", "%2e%2e"])
def test_product_id_traversal_is_refused(sec: Client, job_id: str) -> None:
    for path in (f"/v1/jobs/{job_id}/product", f"/v1/products/{job_id}/manifest"):
        r = sec.get(path, "op-jinshu")
        assert r.status_code == 404, (path, r.status_code)
        assert b"SQLite" not in r.content


@pytest.mark.parametrize("since", ["9" * 40, "²", "١٢"])
def test_odd_audit_since_values_are_not_a_500(sec: Client, since: str) -> None:
    r = sec.get("/v1/audit", "supervisor-li", params={"since": since})
    assert r.status_code in (200, 400), (r.status_code, r.text)


def test_cancel_racing_an_approval_is_clean(sec: Client) -> None:
    import threading

    sec.token("op-jinshu")
    sec.token("supervisor-li")
    for _ in range(10):
        r = sec.post(
            "/v1/jobs",
            "op-jinshu",
            json={"sql": SQL, "scenario": "employment-income", "epsilon": 0.1},
        )
        job_id = r.json()["id"]
        assert sec.wait(job_id, "op-jinshu")["state"] == "in_review"
        codes: dict[str, int] = {}

        def approve(job_id: str = job_id) -> None:
            codes["approve"] = sec.post(
                f"/v1/review/{job_id}",
                "supervisor-li",
                json={"decision": "approve", "reason": "ok"},
            ).status_code

        def cancel(job_id: str = job_id) -> None:
            codes["cancel"] = sec.post(f"/v1/jobs/{job_id}/cancel", "op-jinshu").status_code

        threads = [threading.Thread(target=approve), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        state = sec.get(f"/v1/jobs/{job_id}", "op-jinshu").json()["state"]
        folder = sec.service.settings.products_dir / job_id
        assert set(codes.values()) <= {200, 409}, codes
        if state == "released":
            assert codes["approve"] == 200
            assert sec.get(f"/v1/jobs/{job_id}/product", "op-jinshu").status_code == 200
        else:
            assert state == "cancelled" and codes["cancel"] == 200
            assert not folder.exists(), sorted(p.name for p in folder.iterdir())
