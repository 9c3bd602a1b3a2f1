"""Console fixtures: the app in-process (TestClient) and a real server with Chromium."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sandbox import jobs
from sandbox.api.app import create_app
from sandbox.service import Service, issue_token
from sandbox.settings import Settings
from tests.web.live import POLICIES, WAITING, LiveConsole, chromium_or_fail, make_synthetic

CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@pytest.fixture(scope="session")
def web_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("web-synthetic"))


class Console:
    """A TestClient (one browser's cookie jar) over the app, plus tokens and jobs."""

    def __init__(self, client: TestClient, service: Service) -> None:
        self.client = client
        self.service = service
        self.tokens: dict[str, str] = {}

    def token(self, who: str, role: str | None = None) -> str:
        if who not in self.tokens:
            role = role or ("operator" if who.startswith("op-") else "supervisor")
            self.tokens[who] = issue_token(self.service, role=role, subject=who)["token"]
        return self.tokens[who]

    def browser(self) -> Console:
        """Another browser (its own cookies) on the same server."""
        other = Console(TestClient(self.client.app), self.service)
        other.tokens = self.tokens
        return other

    def csrf(self, path: str = "/console/signin") -> str:
        page = self.client.get(path)
        found = CSRF.search(page.text)
        assert found is not None, f"no CSRF token on {path}"
        return found.group(1)

    def sign_in(self, who: str, role: str | None = None) -> Any:
        csrf = self.csrf()
        return self.client.post(
            "/console/signin",
            data={"token": self.token(who, role), "csrf": csrf},
            follow_redirects=False,
        )

    def submit(self, who: str, sql: str, scenario: str, epsilon: float = 1.0, **kw: Any) -> str:
        resp = self.client.post(
            "/v1/jobs",
            json={"sql": sql, "scenario": scenario, "epsilon": epsilon, **kw},
            headers={"Authorization": f"Bearer {self.token(who)}"},
        )
        body = resp.json()
        return str(body["id"] if resp.status_code == 201 else body["error"]["job"])

    def wait(self, job_id: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = jobs.get_job(self.service.conn(), job_id).state.value
            if state not in WAITING or time.monotonic() > deadline:
                return str(state)
            time.sleep(0.05)


@pytest.fixture()
def console(tmp_path: Path, web_synthetic: Path) -> Iterator[Console]:
    settings = Settings(
        home=tmp_path / "home",
        policies=POLICIES,
        data_root=web_synthetic,
        executor="local",
        rate_per_minute=100_000,
    )
    service = Service(settings)
    with TestClient(create_app(settings, service=service)) as client:
        yield Console(client, service)


@pytest.fixture()
def live(tmp_path: Path, web_synthetic: Path) -> Iterator[LiveConsole]:
    with LiveConsole(tmp_path / "home", web_synthetic) as server:
        yield server


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """The system Chromium driven by Playwright; on CI a missing Chromium FAILS."""
    chromium_or_fail()
    from playwright.sync_api import sync_playwright

    from tests.web.live import launch_chromium

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()
