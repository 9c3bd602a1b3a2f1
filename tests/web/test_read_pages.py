"""The console shows zCDP right and says why a job waits (issue 16): a measure's share
is of its job's own budget (ρ over ρ), the job's share of the grant is ρ over the
account's ρ cap, ρ budgets carry their ε-equivalent and the queries left, noisy values
are rounded to what their ± supports, and a job in review names its reasons (en, zh-CN)."""

from __future__ import annotations

import html
import re

from sandbox import display
from sandbox.jobs import get_job
from sandbox.tokens import Principal, Role
from tests.web.conftest import Console

TWO_MEASURES = "SELECT sex, COUNT(*) AS n, SUM(age) AS age_sum FROM insured GROUP BY sex"
AMOUNTS = "SELECT year, SUM(amount) AS total FROM payments GROUP BY year"
ENTERPRISES = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"
ZH = {"Accept-Language": "zh-CN"}


def _text(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _section(page: str, ident: str) -> str:
    start = page.index(f'id="{ident}"')
    return page[start : page.index("</section>", start)]


def test_a_rho_jobs_shares_are_of_rho(console: Console) -> None:
    job = console.submit("op-jinshu", TWO_MEASURES, "pension-contributions", 0.5)
    assert console.wait(job) == "in_review"
    console.sign_in("supervisor-li")
    page = console.client.get(f"/console/jobs/{job}").text
    loss = _section(page, "privacy-loss")
    shares = re.findall(r'<td class="num">([^<]*%)</td>', loss)
    assert shares == ["50%", "50%"]  # ρ/2 each, not "1%" (ρ read as a percent)
    record = get_job(console.service.conn(), job)
    rho = float(record.public()["cost"]["rho"])
    operator = Principal(Role.OPERATOR, "op-jinshu", "t")
    rows = console.service.budget(operator)
    (account,) = [r for r in rows if r["dataset"] == "social_insurance"]
    text = _text(loss)
    pct = 100 * rho / account["total"]
    assert f"Share of the grant's budget {pct:.2g}%" in text
    amounts = (display.fmt_amount(v, digits=4) for v in (rho, account["total"]))
    assert "ρ {} of {}".format(*amounts) in text


def test_budgets_show_rho_with_epsilon_and_queries_left(console: Console) -> None:
    console.submit("op-jinshu", TWO_MEASURES, "pension-contributions", 0.5)
    console.sign_in("supervisor-li")
    page = console.client.get("/console/budgets?operator=op-jinshu").text
    card = page[page.index('data-dataset="social_insurance"') :]
    card = _text(card[: card.index("</section>")])
    assert "≈ ε (OpenDP, δ 5e-6)" in card
    assert re.search(
        r"Queries left ≈ \d+ at ρ 0\.00\d+ each \(the median of the last 1 jobs\)", card
    )
    op = console.browser()
    op.sign_in("op-jinshu")
    mine = _text(op.client.get("/console/my", headers=ZH).text)
    assert "≈ ε（OpenDP 换算，δ 5e-6）" in mine and "剩余查询次数" in mine
    assert "按单次上限 ε 2 估算" in mine  # employment-income: no jobs yet


def test_noisy_values_are_rounded_to_their_interval(console: Console) -> None:
    job = console.submit("op-jinshu", AMOUNTS, "pension-contributions", 1.0)
    assert console.wait(job) == "in_review"
    console.sign_in("supervisor-li")
    result = _section(console.client.get(f"/console/jobs/{job}").text, "released")
    cells = re.findall(
        r'<span class="value">([^<]*)</span>\s*<span class="acc">± ([^<]*)</span>', result
    )
    assert cells
    for value, hw in cells:
        step = display.round_step(float(hw.replace(",", "")))
        assert step is not None
        decimals = len(value.split(".")[1]) if "." in value else 0
        assert decimals == max(0, -step.as_tuple().exponent)  # type: ignore[operator]
        assert float(value.replace(",", "")) % float(step) < 1e-6 or step < 1


def test_a_job_in_review_says_why_in_both_languages(console: Console) -> None:
    # graded "important": two approvals whatever the query
    job = console.submit("op-jinshu", TWO_MEASURES, "pension-contributions", 0.5)
    assert console.wait(job) == "in_review"
    op = console.browser()
    op.sign_in("op-jinshu")
    page = _text(op.client.get(f"/console/my/jobs/{job}").text)
    assert "Why it waits for review" in page
    assert "is released only after 2 supervisor approval(s)." in page
    zh = _text(op.client.get(f"/console/my/jobs/{job}", headers=ZH).text)
    assert "等待审核的原因" in zh and "须经 2 名监管人员批准后方可发布" in zh
    # general-2 releases by itself; the same query again is a near-duplicate
    first = console.submit("op-huaxin", ENTERPRISES, "sme-credit", 1.0)
    assert console.wait(first) == "released"
    again = console.submit("op-huaxin", ENTERPRISES, "sme-credit", 1.0)
    assert console.wait(again) == "in_review"
    huaxin = console.browser()
    huaxin.sign_in("op-huaxin")
    raw = huaxin.client.get(f"/console/my/jobs/{again}").text
    assert f'href="/console/my/jobs/{first}"' in raw
    assert "the two results could be differenced" in _text(raw)
    console.sign_in("supervisor-li")
    sup = console.client.get(f"/console/jobs/{again}").text
    assert f'href="/console/jobs/{first}"' in _section(sup, "decision")
