"""A real server with the Docker executor for the analysis-job tests (issue 18): the
demo policies and data, tokens for the operator and two supervisors, calls through
HTTP and the CLI."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from sandbox.api.app import create_app
from sandbox.cli import app as cli
from sandbox.service import Service, issue_token
from sandbox.settings import Settings
from tests.api.api_helpers import serve

SCENARIO = "pension-contributions"  # g-jinshu-pension: analysis_jobs: true


class Live:
    def __init__(self, service: Service, url: str) -> None:
        self.service, self.url = service, url
        self.tokens = {
            who: issue_token(service, role=role, subject=who)["token"]
            for who, role in (
                ("op-jinshu", "operator"),
                ("supervisor-li", "supervisor"),
                ("supervisor-wang", "supervisor"),
            )
        }

    def call(self, method: str, path: str, who: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def until_ran(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """The job as a supervisor sees it (the truth) once its run is over."""
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.call("GET", f"/v1/jobs/{job_id}", "supervisor-li").json()
            if job["state"] not in ("budget_reserved", "running"):
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.2)

    def cli(self, who: str, *args: str, home: Path) -> Any:
        env = {"SANDBOX_URL": self.url, "SANDBOX_TOKEN": self.tokens[who], "COLUMNS": "200"}
        return CliRunner().invoke(cli, ["--home", str(home), *args], env=env)


@contextlib.contextmanager
def live_server(
    home: Path,
    policies: Path,
    data_root: Path,
    *,
    client: Any,
    image: str,
    console: bool = False,
    **overrides: Any,
) -> Iterator[tuple[Live, Any]]:
    """A server on localhost running analysis jobs in real containers: (Live, its app)."""
    from sandbox.executors.docker import DockerExecutor

    values: dict[str, Any] = {
        "memory_mb": 1024,
        "pids": 64,
        "warm_runners": 0,
        "rate_per_minute": 10_000,
        **overrides,
    }
    settings = Settings(
        home=home, policies=policies, data_root=data_root, executor="docker", **values
    )
    executor = DockerExecutor(settings, client=client, image=image)
    service = Service(settings, executor=executor)
    app = create_app(settings, service=service, include_console=console)
    try:
        with serve(app) as url:
            yield Live(service, url), app
    finally:
        service.stop()
