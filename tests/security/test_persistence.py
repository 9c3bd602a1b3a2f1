"""No exact aggregate is ever persisted or logged: a full job lifecycle in a real
runner container (submit → run → review → release → download), then every byte under
SANDBOX_HOME (SQLite db, WAL, products, keys, runs), the audit export, the API
answers and every log record are scanned for the exact values, computed here with
DuckDB directly on the demo data."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import pytest
from sec_helpers import Client

from sandbox.executors.docker import home_label, sweep
from sandbox.settings import Settings

pytestmark = [pytest.mark.container, pytest.mark.slow]

# SUMs of a DOUBLE column: noisy releases are continuous, so no coincidence is possible
QUERY = (
    "SELECT household_type, COUNT(*) AS people, SUM(monthly_income) AS income, "
    "AVG(monthly_income) AS mean_income FROM persons GROUP BY household_type"
)
REJECTED = (
    "SELECT sex, COUNT(*) AS people, SUM(monthly_income) AS income "
    "FROM persons WHERE employment = 'employed' GROUP BY sex"
)


def _exact_values(plan: Any, data_root: Path, tmp: Path) -> list[float]:
    """The plan's exact aggregates (run in-process here, outside SANDBOX_HOME), plus the
    naive sums and means of the raw column."""
    import duckdb
    import pyarrow.ipc
    from sandbox_runner.executor import execute

    out = tmp / "exact-out"
    out.mkdir(parents=True)
    execute(plan.runner_spec(), data_root, out, threads=1)
    table = pyarrow.ipc.open_file(str(out / "result.arrow")).read_all()
    values: list[float] = []
    for name in table.column_names:
        for v in table.column(name).to_pylist():
            if isinstance(v, float) and abs(v) > 1000 and v != int(v):
                values.append(v)
    persons = data_root / "population" / "persons.parquet"
    con = duckdb.connect()
    rows = con.execute(
        "SELECT SUM(monthly_income), AVG(monthly_income), "
        "SUM(LEAST(GREATEST(monthly_income, 0), 50000)) FROM read_parquet(?) "
        "GROUP BY household_type",
        [str(persons)],
    ).fetchall()
    rows += con.execute(
        "SELECT SUM(monthly_income), AVG(monthly_income) FROM read_parquet(?) "
        "WHERE employment = 'employed' GROUP BY sex",
        [str(persons)],
    ).fetchall()
    con.close()
    for r in rows:
        values.extend(float(x) for x in r if x is not None and abs(float(x)) > 10)
    return values


def _needles(values: list[float]) -> list[bytes]:
    out: set[bytes] = set()
    for v in values:
        for text in (repr(v), f"{v:.2f}", f"{v:.4f}", f"{v:.6f}"):
            out.add(text.encode())
        out.add(struct.pack("<d", v))
        out.add(struct.pack(">d", v))
    return sorted(out)


def _scan(blobs: dict[str, bytes], needles: list[bytes]) -> list[str]:
    hits = []
    for where, data in blobs.items():
        for n in needles:
            if n in data:
                hits.append(f"{where}: {n!r}")
    return hits


def test_no_exact_aggregate_is_persisted_or_logged(
    make_client: Any,
    tmp_path: Path,
    demo_data_root: Path,
    runner_image: str,
    docker_client: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from sandbox.compiler import compile_query

    caplog.set_level(logging.DEBUG)
    home = tmp_path / "home"
    try:
        sec: Client = make_client(
            console=True,
            home=home,
            data_root=demo_data_root,
            executor="docker",
            runner_image=runner_image,
            concurrency=1,
        )
        svc = sec.service
        grant = svc.worker.grant_for("op-jinshu", "employment-income")
        plan = compile_query(QUERY, catalog=svc.catalog, grant=grant)
        exact = _exact_values(plan, demo_data_root, tmp_path / "a")
        other = compile_query(REJECTED, catalog=svc.catalog, grant=grant)
        exact += _exact_values(other, demo_data_root, tmp_path / "b")
        assert len(exact) >= 5, exact
        needles = _needles(exact)
        assert _scan({"self-check": b"x" + repr(exact[0]).encode() + b"x"}, needles)

        answers: list[bytes] = []
        r = sec.post(
            "/v1/jobs",
            "op-jinshu",
            json={"sql": QUERY, "scenario": "employment-income", "epsilon": 1.0},
        )
        assert r.status_code == 201, r.text
        answers.append(r.content)
        job_id = r.json()["id"]
        job = sec.wait(job_id, "op-jinshu")
        assert job["state"] == "in_review", (job["error"], job["state"])
        for who in ("op-jinshu", "supervisor-li"):
            answers.append(sec.get(f"/v1/jobs/{job_id}", who).content)
        answers.append(sec.get("/v1/review", "supervisor-li").content)
        r = sec.post(
            f"/v1/review/{job_id}",
            "supervisor-li",
            json={"decision": "approve", "reason": "large groups"},
        )
        assert r.status_code == 200 and r.json()["outcome"] == "approved", r.text
        answers.append(r.content)
        for fmt in ("csv", "json", "parquet"):
            got = sec.get(f"/v1/jobs/{job_id}/product?format={fmt}", "op-jinshu")
            assert got.status_code == 200
            answers.append(got.content)
            answers.append(
                sec.get(f"/v1/products/{job_id}/manifest?format={fmt}", "op-jinshu").content
            )
        # a second job, rejected
        r = sec.post(
            "/v1/jobs",
            "op-jinshu",
            json={"sql": REJECTED, "scenario": "employment-income", "epsilon": 1.0},
        )
        assert r.status_code == 201, r.text
        second = r.json()["id"]
        assert sec.wait(second, "op-jinshu")["state"] == "in_review"
        answers.append(sec.get(f"/v1/jobs/{second}", "supervisor-li").content)
        r = sec.post(
            f"/v1/review/{second}",
            "supervisor-li",
            json={"decision": "reject", "reason": "too fine"},
        )
        assert r.status_code == 200 and r.json()["outcome"] == "rejected", r.text
        answers.append(sec.get(f"/v1/jobs/{second}", "op-jinshu").content)
        answers.append(sec.get("/v1/audit?limit=1000", "supervisor-li").content)
        answers.append(sec.get("/v1/reports", "supervisor-li").content)
        answers.append(sec.get("/v1/budget", "op-jinshu").content)
        # stop the service (checkpoint, close) so the WAL and db are final on disk
        sec.client.__exit__(None, None, None)
    finally:
        sweep(docker_client, home_label=home_label(Settings(home=home)))

    blobs: dict[str, bytes] = {}
    for path in sorted(home.rglob("*")):
        if path.is_file():
            blobs[str(path.relative_to(home))] = path.read_bytes()
    assert "sandbox.db" in blobs and any(k.startswith("products/") for k in blobs)
    for i, a in enumerate(answers):
        blobs[f"answer[{i}]"] = a
    blobs["logs"] = "\n".join(
        f"{rec.name} {rec.getMessage()} {rec.exc_text or ''}" for rec in caplog.records
    ).encode()
    out, err = capfd.readouterr()
    blobs["stdout+stderr"] = (out + err).encode()
    # the audit log through its own export
    import sqlite3

    conn = sqlite3.connect(home / "sandbox.db")
    events = conn.execute("SELECT * FROM audit_events").fetchall()
    conn.close()
    blobs["audit rows"] = json.dumps(events, default=str).encode()

    hits = _scan(blobs, needles)
    assert hits == [], hits
