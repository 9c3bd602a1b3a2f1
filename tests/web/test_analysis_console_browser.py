"""A supervisor reviews an analysis job's outputs in the console and approves it (issue
18), in the system Chromium against a real server whose worker runs the operator's
script in the real runner container (Docker executor, fabricated demo data).

The operator submits through POST /v1/analysis-jobs with its own token, as `sandbox
submit-script` does; everything the supervisors do goes through the pages: the queue,
each output (ACRO's CSV as a table with the flagged cells marked, the histogram as an
image), ACRO's verdicts and reasons, the exception request, the escaped script, then
two approvals (important data) that release the signed product. The queue shows the
job as an analysis script (English and zh-CN); the first supervisor unticks the
histogram (partial release), so the released archive lacks it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.api.app import create_app
from sandbox.service import Service, issue_token
from sandbox.settings import Settings
from tests.api.api_helpers import serve
from tests.web.live import POLICIES

pytestmark = [pytest.mark.browser, pytest.mark.container]

SCRIPT = """# <script>alert("not run")</script> stays text
import jinyu
df = jinyu.read_table("insured")
df["band"] = (df["age"] // 10).astype(str)
df.loc[df.index[:3], "band"] = "rare"
jinyu.acro.crosstab(df["band"], df["sex"])
jinyu.acro.hist(df, "age")
jinyu.acro.add_exception("output_0", "the rare band is a published fact")
"""


class Server:
    def __init__(self, service: Service, url: str) -> None:
        self.service, self.url = service, url
        self.tokens: dict[str, str] = {}

    def token(self, who: str) -> str:
        if who not in self.tokens:
            role = "operator" if who.startswith("op-") else "supervisor"
            self.tokens[who] = issue_token(self.service, role=role, subject=who)["token"]
        return self.tokens[who]

    def api(self, method: str, path: str, who: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token(who)}"}
        resp = httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)
        return resp.json()


@pytest.fixture()
def server(
    tmp_path: Path, docker_client: Any, runner_image: str, demo_data_root: Path
) -> Iterator[Server]:
    from sandbox.executors.docker import DockerExecutor

    settings = Settings(
        home=tmp_path / "home",
        policies=POLICIES,
        data_root=demo_data_root,
        executor="docker",
        memory_mb=1024,
        pids=64,
        warm_runners=0,
        rate_per_minute=100_000,
    )
    executor = DockerExecutor(settings, client=docker_client, image=runner_image)
    service = Service(settings, executor=executor)
    with serve(create_app(settings, service=service)) as url:
        yield Server(service, url)
    service.stop()


def _sign_in(browser: Any, server: Server, who: str, locale: str = "en-GB") -> Any:
    ctx = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    page.goto(server.url + "/console")
    page.fill("#token", server.token(who))
    with page.expect_navigation():
        page.click("form[action='/console/signin'] button[type=submit]")
    return page


def test_supervisors_review_a_code_jobs_outputs_and_approve_it(
    browser: Any, server: Server, tmp_path: Path
) -> None:
    job = server.api(
        "POST", "/v1/analysis-jobs", "op-jinshu",
        json={"scenario": "pension-contributions", "script": SCRIPT},
    )  # fmt: skip
    assert job["state"] == "in_review" and job["held"]  # to its operator, from the start
    # the run is over once a supervisor (who sees the truth) sees it in review
    deadline = time.monotonic() + 120
    while job["state"] != "in_review" or job.get("held"):
        assert job["state"] in ("budget_reserved", "running", "in_review"), job
        assert time.monotonic() < deadline
        time.sleep(0.2)
        job = server.api("GET", f"/v1/jobs/{job['id']}", "supervisor-li")
    assert job["error"] is None, job

    zh = _sign_in(browser, server, "supervisor-zhao", locale="zh-CN")
    zh_row = zh.locator(f'#queue tr[data-job="{job["id"]}"]')
    assert "分析脚本" in zh_row.inner_text() and "2 个输出 · 1 个被标记" in zh_row.inner_text()
    zh.context.close()

    page = _sign_in(browser, server, "supervisor-li")
    assert page.url.endswith("/console/review")
    row = page.locator(f'#queue tr[data-job="{job["id"]}"]')
    # the queue shows an analysis job as one: its kind, entry file, outputs, flagged
    cell = row.locator("td.analysis-cell")
    assert "analysis script" in cell.inner_text() and "main.py" in cell.inner_text()
    assert "2 outputs · 1 flagged" in cell.inner_text()
    assert "ε" not in row.inner_text() and "import jinyu" not in row.inner_text()
    row.locator("a.btn").click()
    page.wait_for_url(f"**/console/jobs/{job['id']}")
    assert "Analysis job" in page.inner_text("h1")

    outputs = page.locator("#outputs article.output")
    assert outputs.count() == 2
    table = page.locator('article[data-uid="output_0"]')
    assert table.get_attribute("data-verdict") == "fail"
    assert "MinimumThresholdCheck" in table.inner_text()
    assert "the rare band is a published fact" in table.locator(".exception").inner_text()
    flagged = table.locator("table.acro-table td.flagged")
    assert flagged.count() >= 1
    rare_row = table.locator("table.acro-table tbody tr", has_text="rare")
    assert rare_row.locator("td.flagged").count() >= 1  # the small cell is marked
    assert table.locator(".summary").inner_text().strip() != ""  # ACRO's reasons
    figure = page.locator('article[data-uid="output_1"] img.acro-figure')
    assert figure.count() == 1
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=figure.element_handle()
    )
    # the script is shown as text, never run as markup
    assert '<script>alert("not run")</script>' in page.inner_text("#script pre")
    assert page.locator("#script script").count() == 0

    assert "0 of 2 approvals" in page.inner_text("#decision")
    boxes = page.locator("#outputs input[type=checkbox][name=outputs]")
    assert boxes.count() == 2 and all(boxes.nth(i).is_checked() for i in range(2))
    # unticking every output is not an approval
    for i in range(2):
        boxes.nth(i).uncheck()
    page.fill("#reason", "Nothing.")
    with page.expect_navigation():
        page.click("#approve")
    assert "Tick at least one output" in page.inner_text("#decision-error")
    assert "0 of 2 approvals" in page.inner_text("#decision")
    # withhold the histogram, release the crosstab
    page.locator('article[data-uid="output_1"] input[name=outputs]').uncheck()
    assert page.locator('article[data-uid="output_0"] input[name=outputs]').is_checked()
    page.fill("#reason", "Checked the rare band: published. The histogram is not needed.")
    with page.expect_navigation():
        page.click("#approve")
    assert "waits for another supervisor" in page.inner_text(".flash-ok")
    page.context.close()

    second = _sign_in(browser, server, "supervisor-wang")
    second.goto(f"{server.url}/console/jobs/{job['id']}")
    assert "1 of 2 approvals" in second.inner_text("#decision")
    withheld = second.locator('article[data-uid="output_1"] .withheld-by')
    assert "Withheld by supervisor-li" in withheld.inner_text()
    assert second.locator('article[data-uid="output_0"] .withheld-by').count() == 0
    second.fill("#reason", "Agree: release the crosstab.")
    with second.expect_navigation():
        second.click("#approve")
    assert f"Job {job['id']} approved and released" in second.inner_text(".flash-ok")
    second.goto(f"{server.url}/console/jobs/{job['id']}")
    assert "released" in second.inner_text("h1")
    second.context.close()

    released = server.api("GET", f"/v1/analysis-jobs/{job['id']}", "op-jinshu")
    assert released["state"] == "released"
    # the operator sees the released output only; the histogram by its uid
    assert [o["uid"] for o in released["analysis"]["outputs"]] == ["output_0"]
    assert released["analysis"]["withheld_outputs"] == ["output_1"]
    assert released["product"]["formats"] == ["zip"]

    # the operator downloads the product and its manifest from its own page; they verify
    from sandbox import products

    op = _sign_in(browser, server, "op-jinshu")
    row = op.locator(f'#products tr[data-product="{job["id"]}"]')
    saved = {}
    for suffix in ("analysis.zip", "analysis.manifest.json"):
        with op.expect_download() as download:
            row.locator(f"a[href$='{suffix}']").click()
        saved[suffix] = tmp_path / suffix
        download.value.save_as(saved[suffix])
    op.context.close()
    manifest = products.verify_product(
        saved["analysis.zip"].read_bytes(),
        saved["analysis.manifest.json"].read_bytes(),
        server.service.product_key.public_key(),
    )
    assert manifest["kind"] == "analysis"
    assert [o["uid"] for o in manifest["outputs"]] == ["output_0"]
    assert manifest["withheld_outputs"] == ["output_1"]
    import zipfile

    with zipfile.ZipFile(saved["analysis.zip"]) as archive:
        names = archive.namelist()
    assert names and all(n.endswith(".csv") for n in names)  # the histogram's PNG is not in it
