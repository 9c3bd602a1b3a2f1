"""The console in a real browser (the system Chromium) against a real server.

Jobs reach the review queue through the REST API with the local executor on
synthetic data; everything a supervisor or an operator does here goes through the
pages: sign in, review, approve, reject, download, audit, switch language.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.web.live import EMPLOYMENT_SQL, POPULATION_SQL, LiveConsole

pytestmark = pytest.mark.browser


def _page(browser: Any, locale: str = "en-GB") -> Any:
    ctx = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(20_000)
    return ctx.new_page()


def _sign_in(page: Any, live: LiveConsole, who: str) -> None:
    page.goto(live.url + "/console")
    assert "/console/signin" in page.url
    page.fill("#token", live.token(who))
    with page.expect_navigation():
        page.click("form[action='/console/signin'] button[type=submit]")


def _two_jobs_in_review(live: LiveConsole) -> tuple[str, str]:
    first = live.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0)
    second = live.submit("op-jinshu", EMPLOYMENT_SQL, "employment-income", 1.0)
    for job in (first, second):
        assert live.wait(job, "op-jinshu")["state"] == "in_review"
    return first, second


def test_supervisor_approves_and_rejects_operator_downloads(
    browser: Any, live: LiveConsole, tmp_path: Path
) -> None:
    approved, rejected = _two_jobs_in_review(live)
    page = _page(browser)
    _sign_in(page, live, "supervisor-li")
    assert page.url.endswith("/console/review")
    assert page.inner_text("#queue-count") == "2"
    row = page.locator(f'#queue tr[data-job="{approved}"]')
    assert "op-jinshu" in row.inner_text() and "employment-income" in row.inner_text()

    # approve the first: the page shows what would be released, with accuracy
    row.locator("a.btn").click()
    page.wait_for_url(f"**/console/jobs/{approved}")
    assert page.locator("#result tbody tr").count() == 2  # F and M
    assert "±" in page.inner_text("#result")
    assert "History of op-jinshu on population" in page.inner_text("#history")
    page.fill("#reason", "Two large cells, rounded to 5.")
    with page.expect_navigation():
        page.click("#approve")
    assert page.url.endswith("/console/review")
    assert f"Job {approved} approved and released" in page.inner_text(".flash-ok")
    assert page.inner_text("#queue-count") == "1"

    # reject the second: a blank reason is refused by the SERVER too
    page.goto(f"{live.url}/console/jobs/{rejected}")
    page.eval_on_selector("#reason", "e => e.removeAttribute('required')")
    with page.expect_response(lambda r: r.url.endswith("/decision")) as blank:
        page.click("#reject")
    assert blank.value.status == 422
    assert "Write a reason" in page.inner_text("#decision-error")
    assert live.job(rejected, "op-jinshu")["state"] == "in_review"
    page.fill("#reason", "Rates of small groups are too fine.")
    with page.expect_navigation():
        page.click("#reject")
    assert f"Job {rejected} rejected" in page.inner_text(".flash-ok")
    assert page.is_visible("#queue-empty")

    # the rejection is in the audit timeline, found by the search form
    page.click("nav >> text=Audit")
    page.wait_for_url("**/console/audit")
    assert page.get_attribute("#verify", "data-ok") == "true"
    page.fill("#action", "review.rejected")
    with page.expect_navigation():
        page.click("#audit-filter button[type=submit]")
    rows = page.locator("#timeline tbody tr[data-action]")
    assert rows.count() == 1
    text = rows.first.inner_text()
    assert rejected in text and "supervisor-li" in text
    assert "Rates of small groups are too fine." in text
    page.context.close()

    # the operator sees the product and downloads it; the rejection and its reason
    op = _page(browser)
    _sign_in(op, live, "op-jinshu")
    assert op.url.endswith("/console/my")
    product = op.locator(f'#products tr[data-product="{approved}"]')
    assert product.count() == 1
    assert op.locator(f'#products tr[data-product="{rejected}"]').count() == 0
    with op.expect_download() as download:
        product.locator("a[href$='product.csv']").click()
    saved = tmp_path / "product.csv"
    download.value.save_as(saved)
    lines = saved.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sex,n,n_pm95,suppressed" and len(lines) == 3
    assert all(int(line.split(",")[1]) % 5 == 0 for line in lines[1:])  # general-3 rounds
    op.goto(f"{live.url}/console/my/jobs/{rejected}")
    assert "rejected" in op.inner_text("h1")
    assert "Rates of small groups are too fine." in op.inner_text("#review-outcome")
    op.context.close()


def test_operator_cannot_reach_supervisor_pages(browser: Any, live: LiveConsole) -> None:
    job = live.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0)
    assert live.wait(job, "op-jinshu")["state"] == "in_review"
    page = _page(browser)
    _sign_in(page, live, "op-jinshu")
    assert page.url.endswith("/console/my")
    nav = page.inner_text("nav")
    assert "Review queue" not in nav and "Audit" not in nav
    for path in (
        "/console/review",
        "/console/jobs",
        f"/console/jobs/{job}",
        "/console/budgets",
        "/console/audit",
    ):
        response = page.goto(live.url + path)
        assert response.status == 403, path
        assert page.get_attribute("#error", "data-code") == "FORBIDDEN"
        assert page.locator("#result").count() == 0 and page.locator("#queue").count() == 0
    assert live.job(job, "op-jinshu")["state"] == "in_review"
    page.context.close()


def test_a_form_without_its_csrf_token_is_refused(browser: Any, live: LiveConsole) -> None:
    job = live.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0)
    assert live.wait(job, "op-jinshu")["state"] == "in_review"
    page = _page(browser)
    _sign_in(page, live, "supervisor-li")
    page.goto(f"{live.url}/console/jobs/{job}")
    page.eval_on_selector("#decision-form input[name=csrf]", "e => e.remove()")
    page.fill("#reason", "Looks fine.")
    with page.expect_response(lambda r: r.url.endswith("/decision")) as refused:
        page.click("#approve")
    assert refused.value.status == 403
    assert page.get_attribute("#error", "data-code") == "CSRF_FAILED"
    assert live.job(job, "op-jinshu")["state"] == "in_review"
    # a forged token is no better
    page.goto(f"{live.url}/console/jobs/{job}")
    page.eval_on_selector("#decision-form input[name=csrf]", "e => e.value = 'forged'")
    page.fill("#reason", "Looks fine.")
    with page.expect_response(lambda r: r.url.endswith("/decision")) as forged:
        page.click("#approve")
    assert forged.value.status == 403
    assert live.job(job, "op-jinshu")["state"] == "in_review"
    page.context.close()


def test_language_follows_the_browser_and_the_switch(browser: Any, live: LiveConsole) -> None:
    page = _page(browser, locale="zh-CN")
    page.goto(live.url + "/console")
    assert "登录控制台" in page.inner_text("h1")
    assert page.get_attribute("html", "lang") == "zh-CN"
    page.fill("#token", live.token("supervisor-li"))
    with page.expect_navigation():
        page.click("form[action='/console/signin'] button[type=submit]")
    assert "审核队列" in page.inner_text("h1")
    assert "审计" in page.inner_text("nav")
    with page.expect_navigation():
        page.click("#lang-switch")
    assert page.url.endswith("/console/review")  # back where we were
    assert page.inner_text("h1") == "Review queue"
    page.goto(live.url + "/console/budgets")  # the choice sticks
    assert page.inner_text("h1") == "Operators and budgets"
    with page.expect_navigation():
        page.click("#lang-switch")
    assert page.inner_text("h1") == "运营方与隐私预算"
    page.context.close()


def _overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than the window (0 when it fits)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


def _platform_fonts(page: Any, selector: str) -> list[str]:
    """The fonts Chromium actually drew ``selector``'s text with (DevTools protocol)."""
    cdp = page.context.new_cdp_session(page)
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    cdp.send("CSS.enable")
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    return [f["familyName"] for f in fonts]


def test_pages_fit_a_phone_and_chinese_has_a_font(browser: Any, live: LiveConsole) -> None:
    job, _ = _two_jobs_in_review(live)  # the job page then has a history table too
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 390, "height": 844})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    _sign_in(page, live, "supervisor-li")
    # the zh page names a CJK font first, and Chromium renders its Chinese with one (no tofu)
    font = page.evaluate("getComputedStyle(document.body).fontFamily")
    assert "CJK SC" in font.split(",")[0], font
    assert all("CJK" in f for f in _platform_fonts(page, "h1")), _platform_fonts(page, "h1")
    pages = ("/console/review", f"/console/jobs/{job}", "/console/jobs", "/console/budgets")
    for path in (*pages, "/console/audit"):
        page.goto(live.url + path)
        assert _overflow(page) <= 0, (path, _overflow(page))
    # the skip link is the first thing a keyboard reaches, and it moves focus to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('href')") == "#main"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    ctx.close()
