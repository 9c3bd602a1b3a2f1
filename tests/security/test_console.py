"""The console's origin serves no third-party script; hostile text renders escaped."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sec_helpers import Client

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_page_loads_scripts_from_a_cdn(make_client: Any, path: str) -> None:
    sec: Client = make_client(console=True)
    r = sec.client.get(path)
    assert "cdn." not in r.text and "fonts.googleapis" not in r.text
    assert r.status_code == 404
    assert sec.client.get("/openapi.json").status_code == 200


def _sign_in(sec: Client, who: str) -> None:
    csrf = CSRF.search(sec.client.get("/console/signin").text).group(1)  # type: ignore[union-attr]
    sec.client.post("/console/signin", data={"token": sec.token(who), "csrf": csrf})


def test_hostile_text_is_escaped_on_every_supervisor_page(make_client: Any) -> None:
    sec: Client = make_client(console=True)
    sql = (
        "SELECT sex, COUNT(*) AS n FROM persons "
        f"WHERE household_type <> '{SCRIPT}{IMG}' GROUP BY sex -- {SCRIPT}"
    )
    ids = []
    for _ in range(2):
        r = sec.post(
            "/v1/jobs",
            "op-jinshu",
            json={"sql": sql, "scenario": "employment-income", "epsilon": 1},
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        assert sec.wait(ids[-1], "op-jinshu")["state"] == "in_review"
    refused = sec.post(
        "/v1/jobs", "op-jinshu", json={"sql": sql, "scenario": SCRIPT + IMG, "epsilon": 1}
    )
    assert refused.status_code == 403
    _sign_in(sec, "supervisor-li")
    for job_id, decision in zip(ids, ("approve", "reject"), strict=True):
        page = sec.client.get(f"/console/jobs/{job_id}").text
        assert SCRIPT not in page and "<img src=x" not in page
        csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
        r = sec.client.post(
            f"/console/jobs/{job_id}/decision",
            data={"csrf": csrf, "decision": decision, "reason": SCRIPT + IMG},
            follow_redirects=False,
        )
        assert r.status_code == 303
    for path in (
        "/console/review",
        "/console/jobs",
        *(f"/console/jobs/{j}" for j in ids),
        "/console/budgets",
        "/console/audit",
        f"/console/audit?q={SCRIPT}",
        f"/console/audit?actor={IMG}",
        f"/console/jobs?operator={IMG}",
        f"/console/signin?next={IMG}",
    ):
        html = sec.client.get(path).text
        assert SCRIPT not in html and "<img src=x" not in html, path
