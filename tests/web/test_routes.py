"""The console in-process: sessions, CSRF on every form, roles, reasons, headers."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute

from sandbox.web import session
from sandbox.web.routes import router
from tests.web.conftest import Console
from tests.web.live import POPULATION_SQL

SUPERVISOR_PAGES = ["/console/review", "/console/jobs", "/console/budgets", "/console/audit"]
OPERATOR_PAGES = ["/console/my"]


def _cookie(resp, name: str) -> str:  # type: ignore[no-untyped-def]
    headers = resp.headers.get_list("set-cookie")
    found = [h for h in headers if h.startswith(name + "=")]
    assert found, f"no {name} cookie set: {headers}"
    return found[0]


def _in_review(console: Console) -> str:
    job = console.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0)
    assert console.wait(job) == "in_review"
    return job


def test_root_redirects_to_console_and_console_to_sign_in(console: Console) -> None:
    resp = console.client.get("/", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/console"
    resp = console.client.get("/console", follow_redirects=False)
    assert resp.headers["location"] == "/console/signin"
    for page in SUPERVISOR_PAGES + OPERATOR_PAGES:
        resp = console.client.get(page, follow_redirects=False)
        assert resp.status_code == 303, page
        assert resp.headers["location"].startswith("/console/signin?next=")


def test_session_cookie_is_httponly_strict_and_renewed_at_sign_in(console: Console) -> None:
    page = console.client.get("/console/signin")
    anonymous = _cookie(page, session.COOKIE)
    assert "HttpOnly" in anonymous and "SameSite=strict" in anonymous
    assert "Secure" not in anonymous  # plain http on localhost
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    resp = console.client.post(
        "/console/signin",
        data={"token": console.token("supervisor-li"), "csrf": csrf},
        follow_redirects=False,
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/console/review"
    signed_in = _cookie(resp, session.COOKIE)
    assert "HttpOnly" in signed_in and "SameSite=strict" in signed_in
    old_id = anonymous.split(";")[0].split("=", 1)[1]
    new_id = signed_in.split(";")[0].split("=", 1)[1]
    assert old_id != new_id and len(new_id) >= 40  # a fresh random id: no fixation
    assert "Max-Age=28800" in signed_in  # it expires
    assert console.client.get("/console/review").status_code == 200


def test_a_bad_token_is_refused_and_audited(console: Console) -> None:
    csrf = console.csrf()
    resp = console.client.post("/console/signin", data={"token": "jy_nope", "csrf": csrf})
    assert resp.status_code == 401
    assert "The token is missing, unknown, expired or revoked." in resp.text
    failed = console.service.audit_search(_supervisor(console), action="auth.failed")
    assert failed and failed[0]["details"]["reason"] == "invalid"


def test_an_admin_token_cannot_use_the_console(console: Console) -> None:
    resp = console.sign_in("admin-zhao", "admin")
    assert resp.status_code == 403
    assert console.client.get("/console/audit", follow_redirects=False).status_code == 303


def _supervisor(console: Console):  # type: ignore[no-untyped-def]
    from sandbox.tokens import Principal, Role

    return Principal(Role.SUPERVISOR, "supervisor-test", "t")


def _post_routes() -> list[str]:
    return sorted(r.path for r in router.routes if isinstance(r, APIRoute) and "POST" in r.methods)


def test_the_console_has_the_forms_we_think(console: Console) -> None:
    assert _post_routes() == [
        "/console/jobs/{job_id}/decision",
        "/console/signin",
        "/console/signout",
    ]


@pytest.mark.parametrize("path", _post_routes())
def test_every_form_without_its_csrf_token_is_refused(console: Console, path: str) -> None:
    job = _in_review(console)
    assert console.sign_in("supervisor-li").status_code == 303
    url = path.replace("{job_id}", job)
    form = {"token": console.token("supervisor-li"), "decision": "approve", "reason": "fine"}
    for csrf in (None, "", "forged-" + "x" * 40):
        data = dict(form) if csrf is None else {**form, "csrf": csrf}
        resp = console.client.post(url, data=data, follow_redirects=False)
        assert resp.status_code == 403, (path, csrf)
        assert 'data-code="CSRF_FAILED"' in resp.text
    # nothing happened: still signed in, the job still waits
    assert console.client.get("/console/review").status_code == 200
    assert console.wait(job) == "in_review"


def test_a_csrf_token_of_another_session_is_refused(console: Console) -> None:
    job = _in_review(console)
    other = console.browser()
    other.sign_in("supervisor-wang")
    theirs = other.csrf(f"/console/jobs/{job}")
    console.sign_in("supervisor-li")
    resp = console.client.post(
        f"/console/jobs/{job}/decision",
        data={"csrf": theirs, "decision": "approve", "reason": "fine"},
    )
    assert resp.status_code == 403 and 'data-code="CSRF_FAILED"' in resp.text
    assert console.wait(job) == "in_review"


def test_operator_cannot_reach_supervisor_pages(console: Console) -> None:
    job = _in_review(console)
    console.sign_in("op-jinshu")
    for page in [*SUPERVISOR_PAGES, f"/console/jobs/{job}"]:
        resp = console.client.get(page, follow_redirects=False)
        assert resp.status_code == 403, page
        assert 'data-code="FORBIDDEN"' in resp.text
        assert "noised" not in resp.text and "preview" not in resp.text
    csrf = console.csrf("/console/my")
    resp = console.client.post(
        f"/console/jobs/{job}/decision",
        data={"csrf": csrf, "decision": "approve", "reason": "I approve myself"},
    )
    assert resp.status_code == 403
    assert console.wait(job) == "in_review"
    assert console.client.get("/console/my").status_code == 200


def test_supervisor_gets_no_operator_pages(console: Console) -> None:
    console.sign_in("supervisor-li")
    assert console.client.get("/console/my").status_code == 403


def test_operator_sees_only_own_jobs(console: Console) -> None:
    mine = console.submit(
        "op-huaxin",
        "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry",
        "sme-credit",
        1.0,
    )
    theirs = _in_review(console)
    console.sign_in("op-huaxin")
    page = console.client.get("/console/my").text
    assert mine in page and theirs not in page
    assert console.client.get(f"/console/my/jobs/{theirs}").status_code == 404
    assert console.client.get(f"/console/my/jobs/{theirs}/product.csv").status_code == 404


def test_reason_is_required_server_side(console: Console) -> None:
    job = _in_review(console)
    console.sign_in("supervisor-li")
    csrf = console.csrf(f"/console/jobs/{job}")
    for reason in ("", "   \n "):
        resp = console.client.post(
            f"/console/jobs/{job}/decision",
            data={"csrf": csrf, "decision": "approve", "reason": reason},
        )
        assert resp.status_code == 422
        assert 'id="decision-error"' in resp.text
    assert console.wait(job) == "in_review"
    resp = console.client.post(
        f"/console/jobs/{job}/decision",
        data={"csrf": csrf, "decision": "reject", "reason": "Too fine."},
        follow_redirects=False,
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/console/review"
    assert console.wait(job) == "rejected"
    flash = console.client.get("/console/review").text
    assert f"Job {job} rejected" in flash


def test_approval_releases_and_operator_downloads(console: Console) -> None:
    job = _in_review(console)
    console.sign_in("supervisor-li")
    csrf = console.csrf(f"/console/jobs/{job}")
    console.client.post(
        f"/console/jobs/{job}/decision",
        data={"csrf": csrf, "decision": "approve", "reason": "Large cells."},
    )
    assert console.wait(job) == "released"
    op = console.browser()
    op.sign_in("op-jinshu")
    resp = op.client.get(f"/console/my/jobs/{job}/product.csv")
    assert resp.status_code == 200
    assert resp.text.splitlines()[0] == "sex,n,n_pm95,suppressed"  # each value's ± beside it
    assert "attachment" in resp.headers["content-disposition"]
    manifest = op.client.get(f"/console/my/jobs/{job}/manifest.json").json()
    assert manifest["manifest"]["reviewers"][0]["reviewer"] == "supervisor-li"
    assert manifest["manifest"]["accuracy"]["outputs"]["n"]["column"] == "n_pm95"
    # once released, the operator's page shows the result, each value with its ±
    page = op.client.get(f"/console/my/jobs/{job}").text
    assert 'id="result"' in page and page.count('<span class="acc') >= 2
    downloads = console.service.audit_search(_supervisor(console), action="product.downloaded")
    assert [d["subject"] for d in downloads] == [job]


def test_sign_out_ends_the_session(console: Console) -> None:
    console.sign_in("supervisor-li")
    csrf = console.csrf("/console/review")
    resp = console.client.post("/console/signout", data={"csrf": csrf}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/console/signin"
    assert console.client.get("/console/review", follow_redirects=False).status_code == 303


def test_revoking_the_token_ends_its_sessions(console: Console) -> None:
    console.sign_in("supervisor-li")
    assert console.client.get("/console/review").status_code == 200
    from sandbox import tokens

    token_id = tokens.authenticate(console.service.conn(), console.token("supervisor-li")).token_id
    tokens.revoke_token(console.service.conn(), token_id)
    resp = console.client.get("/console/review", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/console/signin")


def test_language_follows_the_browser_then_the_switch(console: Console) -> None:
    zh = console.client.get("/console/signin", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert "登录控制台" in zh.text and '<html lang="zh-CN">' in zh.text
    en = console.client.get("/console/signin", headers={"Accept-Language": "en-US,en;q=0.9"})
    assert "Sign in to the console" in en.text
    resp = console.client.get(
        "/console/lang/zh-CN?next=%2Fconsole%2Fsignin", follow_redirects=False
    )
    assert resp.headers["location"] == "/console/signin"
    assert "HttpOnly" in _cookie(resp, "jinyu_lang")
    page = console.client.get("/console/signin", headers={"Accept-Language": "en"})
    assert "登录控制台" in page.text


def test_language_switch_does_not_redirect_away(console: Console) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/v1/jobs", "/\\evil"):
        resp = console.client.get(
            "/console/lang/en", params={"next": target}, follow_redirects=False
        )
        assert resp.headers["location"] == "/console", target


def test_pages_carry_security_headers(console: Console) -> None:
    resp = console.client.get("/console/signin")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["cache-control"] == "no-store"


def test_static_assets_are_local(console: Console) -> None:
    css = console.client.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert console.client.get("/console/static/console.js").status_code == 200
    assert console.client.get("/console/static/logo.svg").status_code == 200
    for bad in ("../routes.py", "..%2Froutes.py", "nope.css", ".hidden.css", "routes.py"):
        assert console.client.get("/console/static/" + bad).status_code == 404, bad


def test_every_page_renders_for_its_role(console: Console) -> None:
    job = _in_review(console)
    console.submit("op-jinshu", "SELECT name FROM persons", "employment-income", 1.0)
    console.sign_in("supervisor-li")
    for page in [*SUPERVISOR_PAGES, f"/console/jobs/{job}", "/console/audit?q=refused"]:
        resp = console.client.get(page)
        assert resp.status_code == 200, page
    queue = console.client.get("/console/review").text
    assert job in queue and "op-jinshu" in queue and "general-3" in queue
    review = console.client.get(f"/console/jobs/{job}").text
    assert 'id="result"' in review and "± " in review  # values with their accuracy
    budgets = console.client.get("/console/budgets").text
    assert "g-jinshu-employment" in budgets and "NO_AGGREGATE" in budgets
    assert '<svg class="chart"' in budgets
    audit = console.client.get("/console/audit?q=refused").text
    rows = re.findall(r'<tr data-action="([^"]+)"', audit)
    assert rows and set(rows) <= {"job.refused"}  # the text search filtered the timeline
    assert 'data-ok="true"' in audit
    op = console.browser()
    op.sign_in("op-jinshu")
    for page in [*OPERATOR_PAGES, f"/console/my/jobs/{job}"]:
        assert op.client.get(page).status_code == 200, page
    # before release the operator sees no result
    assert 'id="result"' not in op.client.get(f"/console/my/jobs/{job}").text


def test_job_page_shows_suppressed_rows(console: Console) -> None:
    fine = "SELECT county_code, employment, COUNT(*) AS n FROM persons GROUP BY 1, 2"
    job = console.submit("op-jinshu", fine, "employment-income", 1.0)
    assert console.wait(job) == "in_review"
    console.sign_in("supervisor-li")
    page = console.client.get(f"/console/jobs/{job}").text
    suppressed = page.count('<tr class="suppressed">')
    assert suppressed > 0  # ~4 persons per cell: most are under the minimum count
    assert page.count('<span class="badge suppressed-badge">suppressed</span>') == suppressed
    assert "Cells suppressed" in page  # the review flag
    detail = console.service.get_job(_supervisor(console), job)
    shown = detail["preview"]["rows"]  # the page shows the preview's rows (at most 200)
    assert suppressed == sum(1 for r in shown if r["suppressed"])
    assert detail["disclosure_control"]["suppressed_rows"] >= suppressed
    assert f"{len(shown)} of {detail['preview']['total_rows']} rows shown" in page


def test_the_audit_pages_warnings_speak_the_pages_language(console: Console) -> None:
    # issue 16: the zh-CN audit page showed the verifier's warnings in English
    from sandbox import audit, store

    job = _in_review(console)  # events after the last checkpoint: an unsigned tail
    conn = console.service.conn()
    with store.transaction(conn):
        audit.append(
            conn,
            actor="supervisor-li",
            role="supervisor",
            action="grant.changed",
            subject=job,
            details={},
        )
    console.sign_in("supervisor-li")
    warnings = {}
    for lang in ("zh-CN", "en"):
        page = console.client.get("/console/audit", headers={"Accept-Language": lang}).text
        warnings[lang] = re.findall(r'<p class="hint warning">(.*?)</p>', page, re.S)
    assert warnings["en"] and len(warnings["zh-CN"]) == len(warnings["en"])
    assert any("not verified" in w for w in warnings["en"])
    for w in warnings["zh-CN"]:
        assert re.search(r"[\u4e00-\u9fff]", w), w  # Chinese, not the CLI's English
        assert "entries after" not in w and "signed checkpoint" not in w
