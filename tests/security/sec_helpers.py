"""Helpers for the security tests: a TestClient wrapper with tokens."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from sandbox.service import Service, issue_token

DATASETS = ["population", "social_insurance", "enterprises", "divisions"]
WAITING = {"submitted", "compiled", "budget_reserved", "running", "noised"}


class Client:
    """A TestClient with bearer tokens per person (operators are ``op-…``)."""

    def __init__(self, client: TestClient, service: Service) -> None:
        self.client = client
        self.service = service
        self.tokens: dict[str, str] = {}

    def token(self, who: str, role: str | None = None, **kw: Any) -> str:
        if who not in self.tokens:
            role = role or ("operator" if who.startswith("op-") else "supervisor")
            self.tokens[who] = issue_token(self.service, role=role, subject=who, **kw)["token"]
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

    def wait(self, job_id: str, who: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/v1/jobs/{job_id}", who).json()
            if job["state"] not in WAITING or time.monotonic() > deadline:
                return job
            time.sleep(0.05)
