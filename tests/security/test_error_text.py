"""Third-party error text (DuckDB, Arrow and the like quote cell values) never reaches
an operator, a supervisor, the job record, the audit log or the server's log."""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sec_helpers import Client

from sandbox.errors import ExecutionFailed
from sandbox.executors.local import LocalExecutor

SECRET = "CELL_VALUE_4711_Zhang_San"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class QuotingExecutor:
    """The real local executor, then a failure whose text quotes a 'cell value'."""

    def __init__(self, settings: Any, how: str) -> None:
        self.inner = LocalExecutor(settings)
        self.how = how

    def run(self, plan: Any, *, data_root: Path, job_id: str) -> Any:
        result = self.inner.run(plan, data_root=data_root, job_id=job_id)
        message = f"Conversion Error: Could not convert string '{SECRET}' to INT32"
        if self.how == "engine":
            raise ExecutionFailed("engine_error") from ValueError(message)
        if self.how == "third_party":
            raise ValueError(message)
        return result


@pytest.mark.parametrize("how", ["engine", "third_party"])
def test_error_text_with_a_cell_value_goes_nowhere(
    make_client: Any, sec_settings: Any, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sec: Client = make_client(console=True, executor_obj=QuotingExecutor(sec_settings, how))
    r = sec.post(
        "/v1/jobs",
        "op-jinshu",
        json={
            "sql": "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex",
            "scenario": "employment-income",
            "epsilon": 1.0,
        },
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = sec.wait(job_id, "op-jinshu")
    assert job["state"] == "failed"
    seen = [r.text]
    seen.append(sec.get(f"/v1/jobs/{job_id}", "op-jinshu").text)
    seen.append(sec.get(f"/v1/jobs/{job_id}", "supervisor-li").text)
    seen.append(sec.get("/v1/jobs", "op-jinshu").text)
    seen.append(sec.get("/v1/audit?limit=1000", "supervisor-li").text)
    seen.append(sec.get("/v1/reports", "supervisor-li").text)
    # the console, both faces
    for who, paths in (
        ("op-jinshu", ["/console/my", f"/console/my/jobs/{job_id}"]),
        ("supervisor-li", [f"/console/jobs/{job_id}", "/console/jobs", "/console/audit"]),
    ):
        csrf = CSRF.search(sec.client.get("/console/signin").text)
        if csrf is None:  # still signed in as the previous person
            sec.client.cookies.clear()
            csrf = CSRF.search(sec.client.get("/console/signin").text)
        assert csrf is not None
        sec.client.post("/console/signin", data={"token": sec.token(who), "csrf": csrf.group(1)})
        for path in paths:
            page = sec.client.get(path)
            assert page.status_code == 200, path
            seen.append(page.text)
        sec.client.cookies.clear()
    conn = sqlite3.connect(sec_settings.db_path)
    for table in ("jobs", "audit_events", "job_transitions"):
        seen.append(repr(conn.execute(f"SELECT * FROM {table}").fetchall()))  # noqa: S608
    conn.close()
    seen.append(
        "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    )
    leaks = [i for i, text in enumerate(seen) if SECRET in text]
    assert leaks == [], leaks
