"""A real console server for browser tests and screenshots: uvicorn on a free local port.

The server is the real app (``create_app``) over a real Service with the local
executor on synthetic data, so jobs reach the review queue without Docker (the
container path is covered by tests/e2e). Operators submit through the REST API with
their own tokens, exactly as the CLI does.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from sandbox.api.app import create_app
from sandbox.service import Service, issue_token
from sandbox.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
DATASETS = ["population", "social_insurance", "enterprises", "divisions"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
WAITING = {"submitted", "compiled", "budget_reserved", "running", "noised"}

POPULATION_SQL = "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex"
AGE_BAND_SQL = (ROOT / "queries" / "02_income_by_age_band.sql").read_text(encoding="utf-8")
EMPLOYMENT_SQL = (ROOT / "queries" / "06_employment_rate_by_decade.sql").read_text(encoding="utf-8")
ENTERPRISE_SQL = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"
# counts, a mean, a rate and a median: each kind of ± (direct, propagated, rank)
FIRMS_SQL = (
    "SELECT industry, COUNT(*) AS firms, AVG(employees) AS mean_employees, "
    "100.0 * COUNT(*) FILTER (WHERE employees < 10) / COUNT(*) AS micro_pct, "
    "MEDIAN(registered_year) AS median_year "
    "FROM enterprises GROUP BY industry ORDER BY industry"
)


def make_synthetic(root: Path, *, units: int = 3000) -> Path:
    """Synthetic data with the catalogue's schema (what the local executor may read)."""
    from sandbox.catalog import load_catalog
    from sandbox.synthetic import generate_synthetic

    if not (root / "population").exists():
        generate_synthetic(
            root, load_catalog(POLICIES), DATASETS, units=units, seed=5, policies=POLICIES
        )
    return root


def launch_chromium(playwright: Any) -> Any:
    """The system Chromium from the Debian package (Playwright downloads nothing)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )


class LiveConsole:
    """The app served by uvicorn in a thread on 127.0.0.1 and a free port."""

    def __init__(self, home: Path, data_root: Path) -> None:
        self.settings = Settings(
            home=home,
            policies=POLICIES,
            data_root=data_root,
            executor="local",
            concurrency=2,
            rate_per_minute=100_000,
        )
        self.service = Service(self.settings)
        self.app = create_app(self.settings, service=self.service)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, ws="none", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.tokens: dict[str, str] = {}

    def __enter__(self) -> LiveConsole:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    # --- tokens and jobs ----------------------------------------------------------

    def token(self, who: str, role: str | None = None) -> str:
        if who not in self.tokens:
            role = role or ("operator" if who.startswith("op-") else "supervisor")
            self.tokens[who] = issue_token(self.service, role=role, subject=who)["token"]
        return self.tokens[who]

    def api(self, method: str, path: str, who: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(who)}"}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            return client.request(method, path, headers=headers, **kw)

    def submit(self, who: str, sql: str, scenario: str, epsilon: float = 1.0, **kw: Any) -> str:
        body = {"sql": sql, "scenario": scenario, "epsilon": epsilon, **kw}
        resp = self.api("POST", "/v1/jobs", who, json=body)
        if resp.status_code == 201:
            return str(resp.json()["id"])
        return str(resp.json()["error"].get("job", ""))

    def job(self, job_id: str, who: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api("GET", f"/v1/jobs/{job_id}", who).json()
        return data

    def wait(self, job_id: str, who: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id, who)
            if job["state"] not in WAITING or time.monotonic() > deadline:
                return job
            time.sleep(0.05)


def chromium_or_fail() -> None:
    """Skip locally, but FAIL on CI, when the system Chromium is missing."""
    import pytest

    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing (apt-get install chromium; .ci/install does it)"
    from tests.conftest import on_ci

    if on_ci():
        pytest.fail(message + ": CI must run the browser tests")
    pytest.skip(message)


def seed_demo(live: LiveConsole) -> dict[str, str]:
    """A morning's worth of work: released, rejected, refused and waiting jobs."""
    from sandbox import audit

    ids = {
        "sex": live.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0),
        "rates": live.submit("op-jinshu", EMPLOYMENT_SQL, "employment-income", 1.0),
        "firms": live.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit", 1.0),
        "firm_sizes": live.submit("op-huaxin", FIRMS_SQL, "sme-credit", 1.0),  # released
    }
    live.submit("op-jinshu", "SELECT name, age FROM persons", "employment-income", 1.0)
    live.submit("op-jinshu", "SELECT COUNT(*) FROM persons", "employment-income", 5.0)
    live.submit("op-huaxin", "SELECT registered_capital FROM enterprises", "sme-credit", 1.0)
    for key in ("sex", "rates", "firms", "firm_sizes"):
        live.wait(ids[key], "supervisor-li")
    li = "supervisor-li"
    live.api(
        "POST",
        f"/v1/review/{ids['sex']}",
        li,
        json={"decision": "approve", "reason": "Two large cells; rounding applied."},
    )
    live.api(
        "POST",
        f"/v1/review/{ids['rates']}",
        li,
        json={
            "decision": "reject",
            "reason": "Ratio of small groups is too fine for this scenario.",
        },
    )
    ids["age"] = live.submit("op-jinshu", AGE_BAND_SQL, "employment-income", 1.0)
    ids["age2"] = live.submit("op-jinshu", AGE_BAND_SQL, "employment-income", 0.5)
    ids["insured"] = live.submit(
        "op-jinshu",
        "SELECT sex, COUNT(*) AS n FROM insured GROUP BY sex",
        "pension-contributions",
        0.5,
        delta=1e-6,
    )
    for key in ("age", "age2", "insured"):
        live.wait(ids[key], li)
    audit.checkpoint(live.service.conn(), live.service.audit_key)
    return ids
