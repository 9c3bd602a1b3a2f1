from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sandbox import audit, reports, store
from sandbox.grants import Grants

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


class Stream:
    """Writes a synthetic audit stream the way the job state machine does."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.n = 0

    def event(
        self, actor: str, role: str, action: str, subject: str, scenario: str | None, **details: Any
    ) -> int:
        with store.transaction(self.conn):
            return audit.append(
                self.conn,
                actor=actor,
                role=role,
                action=action,
                subject=subject,
                scenario=scenario,
                details=details,
            )

    def job(
        self,
        operator: str,
        scenario: str,
        *,
        dataset: str,
        epsilon: float = 1.0,
        digest: str | None = None,
        refused: str | None = None,
        category: str | None = None,
        released: bool = False,
    ) -> str:
        self.n += 1
        job_id = f"j-{self.n:03d}"
        sys_ = ("system", "system")
        self.event(
            operator,
            "operator",
            "job.submitted",
            job_id,
            scenario,
            sql_sha256=f"{self.n:064x}",
            epsilon=epsilon,
            delta=0.0,
        )
        if refused:
            self.event(*sys_, "job.refused", job_id, scenario, code=refused)
            return job_id
        self.event(
            *sys_,
            "job.compiled",
            job_id,
            scenario,
            plan_digest=digest or f"{self.n:064x}",
            dataset=dataset,
        )
        self.event(*sys_, "job.budget_reserved", job_id, scenario, epsilon=epsilon, delta=0.0)
        self.event(*sys_, "budget.charged", job_id, scenario, epsilon=epsilon, delta=0.0)
        self.event(*sys_, "job.running", job_id, scenario)
        self.event(
            *sys_,
            "container.finished",
            job_id,
            scenario,
            limits={"memory_mb": 2048},
            wall_s=1.5,
            category=category or "ok",
        )
        if category:
            self.event(
                *sys_, "job.failed", job_id, scenario, code="EXECUTION_FAILED", category=category
            )
            return job_id
        self.event(*sys_, "job.noised", job_id, scenario, rows=12, flags=[])
        if released:
            self.event(*sys_, "product.released", job_id, scenario, job=job_id, dataset=dataset)
            self.event(*sys_, "job.released", job_id, scenario, files=["result.csv"])
        return job_id


@pytest.fixture()
def stream(tmp_path: Path) -> Stream:
    return Stream(store.connect(tmp_path / "sandbox.db"))


def group(report: dict[str, Any], operator: str, scenario: str) -> dict[str, Any]:
    found = [g for g in report["groups"] if (g["operator"], g["scenario"]) == (operator, scenario)]
    assert len(found) == 1
    return found[0]


def alerts(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [a for a in report["alerts"] if a["kind"] == kind]


def test_report_counts_jobs_refusals_budget_datasets_and_products(
    stream: Stream, grants: Grants
) -> None:
    op, sc = "op-jinshu", "employment-income"
    stream.job(op, sc, dataset="population", refused="COLUMN_NOT_ALLOWED")
    stream.job(op, sc, dataset="population", refused="NO_AGGREGATE")
    released = stream.job(op, sc, dataset="population", epsilon=1.5, released=True)
    stream.job(op, sc, dataset="population", epsilon=0.5)
    stream.event("op-huaxin", "operator", "product.downloaded", released, None, job=released)
    stream.event("op-jinshu", "operator", "product.downloaded", released, None)
    stream.job("op-huaxin", "sme-credit", dataset="enterprises", epsilon=2.0)

    report = reports.build_report(stream.conn, grants=grants, use_ledger=False)
    g = group(report, op, sc)
    assert g["jobs"] == {"submitted": 4, "open": 1, "refused": 2, "released": 1}
    assert g["refusals_by_code"] == {"COLUMN_NOT_ALLOWED": 1, "NO_AGGREGATE": 1}
    assert g["datasets"] == ["population"]
    assert g["products_released"] == [released]
    assert g["downloads"] == 2
    population = next(b for b in g["budget"] if b["dataset"] == "population")
    assert population["spent"] == pytest.approx(2.0)
    assert population["total"] == 20.0 and population["left"] == pytest.approx(18.0)
    assert population["fraction_spent"] == pytest.approx(0.1)
    assert population["grant"] == "g-jinshu-employment"
    assert report["alerts"] == []

    only = reports.build_report(stream.conn, operator="op-huaxin", grants=grants, use_ledger=False)
    assert [(g["operator"], g["scenario"]) for g in only["groups"]] == [("op-huaxin", "sme-credit")]
    assert reports.build_report(stream.conn, scenario="nope")["groups"] == []


def test_refusal_streak_alert_needs_five_in_a_row(stream: Stream) -> None:
    op, sc = "op-jinshu", "employment-income"
    for _ in range(4):
        stream.job(op, sc, dataset="population", refused="UNKNOWN_COLUMN")
    stream.job(op, sc, dataset="population")  # breaks the run
    assert alerts(reports.build_report(stream.conn), "refusal_streak") == []
    ids = [stream.job(op, sc, dataset="population", refused="IDENTIFIER_EXPOSED") for _ in range(5)]
    [alert] = alerts(reports.build_report(stream.conn), "refusal_streak")
    assert alert["count"] == 5 and alert["jobs"] == ids
    assert alert["codes"] == {"IDENTIFIER_EXPOSED": 5}
    assert (alert["operator"], alert["scenario"]) == (op, sc)


def test_budget_nearly_exhausted_alert_at_eighty_percent(stream: Stream, grants: Grants) -> None:
    op, sc = "op-huaxin", "sme-credit"  # 15 ε on enterprises
    for _ in range(5):
        stream.job(op, sc, dataset="enterprises", epsilon=2.0)
    stream.job(op, sc, dataset="enterprises", epsilon=1.9, refused="BUDGET_EXHAUSTED")
    report = reports.build_report(stream.conn, grants=grants, use_ledger=False)
    assert alerts(report, "budget_nearly_exhausted") == []  # 10/15 = 67 %
    stream.job(op, sc, dataset="enterprises", epsilon=2.0)
    report = reports.build_report(stream.conn, grants=grants, use_ledger=False)
    [alert] = alerts(report, "budget_nearly_exhausted")
    assert alert["dataset"] == "enterprises" and alert["fraction_spent"] == 0.8


def test_budget_comes_from_the_ledger_when_it_has_an_account(
    stream: Stream, grants: Grants
) -> None:
    ledger = pytest.importorskip("sandbox.ledger")
    from sandbox.privacy import Cost  # the ledger's contract type

    grant = grants.grant("g-huaxin-sme")
    assert grant is not None
    cost = Cost(epsilon=13.0, delta=0.0, rho=None, definition="pure")
    with store.transaction(stream.conn):
        ledger.reserve(stream.conn, grant=grant, dataset="enterprises", job_id="j-x", cost=cost)
    stream.job("op-huaxin", "sme-credit", dataset="enterprises", epsilon=0.1)
    report = reports.build_report(stream.conn, grants=grants)
    row = next(
        b
        for b in group(report, "op-huaxin", "sme-credit")["budget"]
        if b["dataset"] == "enterprises"
    )
    assert row["source"] == "ledger"
    assert row["reserved"] == pytest.approx(13.0)
    [alert] = alerts(report, "budget_nearly_exhausted")
    assert alert["fraction_spent"] >= 0.8


def test_query_burst_alert_for_same_plan_within_an_hour(stream: Stream) -> None:
    op, sc = "op-jinshu", "employment-income"
    a = [stream.job(op, sc, dataset="population", digest=DIGEST_A) for _ in range(3)]
    b = [stream.job(op, sc, dataset="population", digest=DIGEST_B) for _ in range(3)]
    # Spread the B jobs over three hours (report input only; this breaks the hashes).
    for i, job_id in enumerate(b):
        stream.conn.execute(
            "UPDATE audit_events SET time = ? WHERE subject = ?",
            (f"2026-03-01T{8 + i * 2:02d}:00:00.000000Z", job_id),
        )
    [alert] = alerts(reports.build_report(stream.conn), "query_burst")
    assert alert["digest"] == DIGEST_A and alert["jobs"] == a and alert["count"] == 3


def test_resource_limit_alert_for_memory_timeout_and_resource_limit(stream: Stream) -> None:
    op, sc = "op-huaxin", "sme-credit"
    hit = [
        stream.job(op, sc, dataset="enterprises", category=c)
        for c in ("memory", "timeout", "resource_limit")
    ]
    stream.job(op, sc, dataset="enterprises", category="plan_mismatch")
    report = reports.build_report(stream.conn)
    [alert] = alerts(report, "resource_limit")
    assert alert["jobs"] == hit
    assert alert["categories"] == {"memory": 1, "timeout": 1, "resource_limit": 1}
    g = group(report, op, sc)
    assert g["failures_by_category"] == {
        "memory": 1,
        "plan_mismatch": 1,
        "resource_limit": 1,
        "timeout": 1,
    }
    assert g["jobs"]["failed"] == 4


def test_empty_log_gives_an_empty_report(stream: Stream) -> None:
    report = reports.build_report(stream.conn)
    assert report["groups"] == [] and report["alerts"] == [] and report["entries"] == 0
