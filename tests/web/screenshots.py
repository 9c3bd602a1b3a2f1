"""Screenshots of the console's main pages for docs/: ``python -m tests.web.screenshots``.

Starts a real server on synthetic data in a temporary SANDBOX_HOME, seeds a morning of
work (released, rejected, refused and waiting jobs), and drives the system Chromium
through the pages a supervisor and an operator see (the review page and a released
job in Chinese too). Writes PNGs to docs/screenshots/
(or the directory given as the first argument).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.web.live import ROOT, LiveConsole, launch_chromium, make_synthetic, seed_demo

PAGES = {
    "review-queue": "/console/review",
    "job-review": "/console/jobs/{age}",
    "budgets": "/console/budgets",
    "audit": "/console/audit?limit=18",
}


def sign_in(page, base: str, token: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(base + "/console/signin")
    page.fill("#token", token)
    page.click("button[type=submit]")


def capture(out_dir: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic(Path(tmp) / "synthetic")
        with LiveConsole(Path(tmp) / "home", data) as live, sync_playwright() as p:
            ids = seed_demo(live)
            browser = launch_chromium(p)
            try:
                for locale, suffix in (("en-GB", ""), ("zh-CN", "-zh")):
                    ctx = browser.new_context(
                        viewport={"width": 1360, "height": 900},
                        locale=locale,
                        device_scale_factor=1,
                    )
                    page = ctx.new_page()
                    if not suffix:
                        page.goto(live.url + "/console/signin")
                        written.append(_shot(page, out_dir / "signin.png", full=False))
                    sign_in(page, live.url, live.token("supervisor-li"))
                    pages = PAGES if not suffix else {"job-review": PAGES["job-review"]}
                    for name, path in pages.items():
                        page.goto(live.url + path.format(**ids))
                        written.append(_shot(page, out_dir / f"{name}{suffix}.png"))
                    ctx.close()
                ctx = browser.new_context(viewport={"width": 1360, "height": 900}, locale="en-GB")
                page = ctx.new_page()
                sign_in(page, live.url, live.token("op-jinshu"))
                page.goto(live.url + "/console/my")
                written.append(_shot(page, out_dir / "operator.png"))
                ctx.close()
                # a released job in Chinese: every number with its ± (issue 16)
                ctx = browser.new_context(viewport={"width": 1360, "height": 900}, locale="zh-CN")
                page = ctx.new_page()
                sign_in(page, live.url, live.token("op-huaxin"))
                page.goto(live.url + f"/console/my/jobs/{ids['firm_sizes']}")
                written.append(_shot(page, out_dir / "released-job-zh.png"))
                ctx.close()
            finally:
                browser.close()
    return written


def _shot(page, path: Path, *, full: bool = True) -> Path:  # type: ignore[no-untyped-def]
    page.screenshot(path=str(path), full_page=full)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else ROOT / "docs" / "screenshots"
    for path in capture(out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
