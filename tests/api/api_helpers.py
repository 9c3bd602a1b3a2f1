"""Helpers for the API tests: the demo queries, a TestClient wrapper with tokens, and a
real uvicorn server (`serve`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from sandbox.service import Service, issue_token

DATASETS = ["population", "social_insurance", "enterprises", "divisions"]
ENTERPRISE_SQL = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"
POPULATION_SQL = "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex"
INSURED_SQL = "SELECT sex, COUNT(*) AS n FROM insured GROUP BY sex"
WAITING = {"submitted", "compiled", "budget_reserved", "running", "noised"}


class Api:
    """A TestClient plus the tokens of the demo people."""

    def __init__(self, client: TestClient, service: Service) -> None:
        self.client = client
        self.service = service
        self.tokens: dict[str, str] = {}

    def token(self, who: str, role: str | None = None, **kw: Any) -> str:
        if who not in self.tokens:
            role = role or ("operator" if who.startswith("op-") else "supervisor")
            record = issue_token(self.service, role=role, subject=who, **kw)
            self.tokens[who] = record["token"]
        return self.tokens[who]

    def call(self, method: str, path: str, who: str | None = None, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if who is not None:
            headers["Authorization"] = f"Bearer {self.token(who)}"
        return self.client.request(method, path, headers=headers, **kw)

    def get(self, path: str, who: str | None = None, **kw: Any) -> Any:
        return self.call("GET", path, who, **kw)

    def post(self, path: str, who: str | None = None, **kw: Any) -> Any:
        return self.call("POST", path, who, **kw)

    def submit(self, who: str, sql: str, scenario: str, epsilon: float = 1.0, **kw: Any) -> Any:
        body = {"sql": sql, "scenario": scenario, "epsilon": epsilon, **kw}
        return self.post("/v1/jobs", who, json=body)

    def wait(self, job_id: str, who: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/v1/jobs/{job_id}", who).json()
            if job["state"] not in WAITING or time.monotonic() > deadline:
                return job
            time.sleep(0.05)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """The app served by a real uvicorn server on a free local port; yields its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="error", access_log=False, ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
