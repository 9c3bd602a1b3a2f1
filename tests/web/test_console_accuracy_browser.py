"""Issue 16 in a real browser: a released job, opened in zh-CN and in English, shows an
interval (value ± half-width) beside every released number, for the operator and the
supervisor, with the wide_interval flag; the Chinese is drawn with a CJK font."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.web.live import FIRMS_SQL, POPULATION_SQL, LiveConsole

pytestmark = pytest.mark.browser

PM = {
    "en-GB": re.compile(r"^± ([\d,.]+|[\d,.]+ rows \(rank\)|unbounded)$"),
    "zh-CN": re.compile(r"^± ([\d,.]+|[\d,.]+ 行（秩）|无界)$"),
}
WIDE = {"en-GB": "Wide intervals", "zh-CN": "区间过宽"}
RANK = {"en-GB": "rows (rank)", "zh-CN": "行（秩）"}


def _page(browser: Any, locale: str) -> Any:
    ctx = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(20_000)
    return ctx.new_page()


def _sign_in(page: Any, live: LiveConsole, who: str) -> None:
    page.goto(live.url + "/console/signin")
    page.fill("#token", live.token(who))
    with page.expect_navigation():
        page.click("form[action='/console/signin'] button[type=submit]")


def _every_number_has_its_pm(page: Any, locale: str) -> tuple[int, list[str]]:
    """Each released number's cell: its value, then its ± in the page's language."""
    cells = page.locator("#result tbody td.num")
    numbers, seen = 0, []
    for i in range(cells.count()):
        cell = cells.nth(i)
        if cell.locator(".suppressed-badge").count():
            assert cell.locator(".acc").count() == 0  # a suppressed cell has no ±
            continue
        value = cell.locator(".value").inner_text()
        assert re.fullmatch(r"-?[\d,.]+", value), value
        pm = cell.locator(".acc")
        assert pm.count() == 1, f"no ± beside {value}"
        text = pm.inner_text()
        assert PM[locale].match(text), text
        assert "[" not in cell.inner_text()  # never an interval around the unrounded value
        numbers += 1
        seen.append(text)
    return numbers, seen


@pytest.mark.parametrize("locale", ["zh-CN", "en-GB"])
def test_a_released_job_shows_an_interval_beside_every_number(
    browser: Any, live: LiveConsole, locale: str
) -> None:
    # general-2 releases at once; general-3 after a supervisor approves it
    firms = live.submit("op-huaxin", FIRMS_SQL, "sme-credit", 0.5)
    sexes = live.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0)
    done = live.wait(firms, "op-huaxin")
    assert done["state"] == "released"
    assert "wide_interval" in {f["code"] for f in done["flags"]}  # ε 0.5: noisy means
    assert live.wait(sexes, "op-jinshu")["state"] == "in_review"
    approve = {"decision": "approve", "reason": "Two large cells."}
    assert live.api("POST", f"/v1/review/{sexes}", "supervisor-li", json=approve).is_success
    assert live.wait(sexes, "op-jinshu")["state"] == "released"

    op = _page(browser, locale)
    _sign_in(op, live, "op-huaxin")
    op.goto(f"{live.url}/console/my/jobs/{firms}")
    assert op.locator("#result tbody tr").count() == 20  # the 20 industry sections
    numbers, seen = _every_number_has_its_pm(op, locale)
    assert numbers >= 20 * 4 - 4  # firms, mean, rate, median per row (a NULL at most)
    assert any(RANK[locale] in t for t in seen)  # the median's ± is in rank
    assert WIDE[locale] in op.inner_text("#flags")
    assert "mean_employees" in op.inner_text("#flags")
    # what the page shows is what the product carries
    csv = live.api("GET", f"/v1/jobs/{firms}/product", "op-huaxin").text.splitlines()
    assert csv[0].startswith("industry,firms,firms_pm95,mean_employees,mean_employees_pm95,")
    assert "median_year_rank_pm95" in csv[0]
    op.context.close()

    sup = _page(browser, locale)
    _sign_in(sup, live, "supervisor-li")
    for job, rows in ((firms, 20), (sexes, 2)):
        sup.goto(f"{live.url}/console/jobs/{job}")
        assert sup.locator("#result tbody tr").count() == rows
        numbers, _ = _every_number_has_its_pm(sup, locale)
        assert numbers >= rows
    if locale == "zh-CN":  # the Chinese of the ± (行（秩）) and the flag is drawn, no tofu
        sup.goto(f"{live.url}/console/jobs/{firms}")
        assert "秩" in sup.inner_text("#result .acc.rank >> nth=0")
        for selector in ("#flags .flag-wide_interval", "#result .acc.rank"):
            fonts = _platform_fonts(sup, selector)
            assert fonts and all("CJK" in f for f in fonts), (selector, fonts)
    sup.context.close()


def _platform_fonts(page: Any, selector: str) -> list[str]:
    """The fonts Chromium drew ``selector``'s text with (DevTools protocol)."""
    cdp = page.context.new_cdp_session(page)
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    cdp.send("CSS.enable")
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    return [f["familyName"] for f in fonts]
