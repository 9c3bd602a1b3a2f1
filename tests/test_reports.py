from __future__ import annotations

import json
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
        rho: float | None = None,
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
        loss: dict[str, Any] = {"epsilon": epsilon, "delta": 0.0}
        if rho is not None:
            loss["rho"] = rho
        self.event(*sys_, "job.budget_reserved", job_id, scenario, **loss)
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


def test_a_rho_account_is_reported_in_rho(stream: Stream, grants: Grants, catalog) -> None:
    """Issue 16: without the ledger (or the grants) a zCDP account was summed in ε
    ("epsilon 4" for a ρ ledger); the audit log's ρ is what was charged."""
    from sandbox import ledger

    op, sc = "op-jinshu", "pension-contributions"
    for _ in range(4):
        stream.job(op, sc, dataset="social_insurance", epsilon=1.0, rho=0.01)
    bare = reports.build_report(stream.conn, use_ledger=False)
    (row,) = group(bare, op, sc)["budget"]
    assert (row["unit"], row["spent"], row["source"]) == ("rho", pytest.approx(0.04), "audit")
    full = reports.build_report(stream.conn, grants=grants, catalog=catalog, use_ledger=False)
    (row,) = group(full, op, sc)["budget"]  # divisions is public: it has no budget
    grant = grants.grant("g-jinshu-pension")
    assert grant is not None
    cap, delta_cap = ledger.grant_totals(grant, "zcdp")
    assert row["dataset"] == "social_insurance" and row["unit"] == "rho"
    assert row["total"] == cap / ledger.LOSS_UNITS
    assert row["left"] == pytest.approx(row["total"] - 0.04)
    outlook = row["outlook"]
    assert outlook["typical_from"] == "recent_jobs" and outlook["typical_cost"] == 0.01
    assert outlook["queries_left"] == int((row["total"] - 0.04) / 0.01)
    eq = outlook["epsilon_equivalent"]
    assert eq["delta"] == delta_cap / ledger.DELTA_UNITS and eq["total"] < 10.0


def test_a_rho_account_is_in_rho_before_its_first_job(
    stream: Stream, grants: Grants, catalog
) -> None:
    op, sc = "op-jinshu", "pension-contributions"
    stream.job(op, sc, dataset="divisions", epsilon=0.0)  # a public lookup only
    for use_ledger in (False, True):
        report = reports.build_report(
            stream.conn, grants=grants, catalog=catalog, use_ledger=use_ledger
        )
        (row,) = group(report, op, sc)["budget"]
        assert (row["dataset"], row["unit"], row["spent"]) == ("social_insurance", "rho", 0.0)
        assert row["outlook"]["typical_from"] == "ceiling"


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


# --- failures of every category, filter sweeps (issue 22) ---------------------------


def _fail(stream: Stream, op: str, sc: str, code: str) -> str:
    """A job that failed without a runner category (e.g. INTERNAL on the host)."""
    stream.n += 1
    job_id = f"j-{stream.n:03d}"
    stream.event(op, "operator", "job.submitted", job_id, sc, sql_sha256="c" * 64, epsilon=1.0)
    stream.event("system", "system", "job.failed", job_id, sc, code=code)
    return job_id


def test_a_burst_of_failures_of_any_category_alerts(stream: Stream) -> None:
    op = "op-huaxin"
    failed = [
        stream.job(op, "sme-credit", dataset="enterprises", category="plan_mismatch"),
        stream.job(op, "sme-credit", dataset="enterprises", category="engine_error"),
        _fail(stream, op, "sme-2024-study", "INTERNAL"),
    ]
    stream.job("op-jinshu", "employment-income", dataset="population", category="engine_error")
    report = reports.build_report(stream.conn)
    [burst] = alerts(report, "failure_burst")
    assert burst["operator"] == op and burst["jobs"] == failed and burst["count"] == 3
    assert burst["categories"] == {"plan_mismatch": 1, "engine_error": 1, "INTERNAL": 1}
    assert group(report, op, "sme-2024-study")["failures_by_category"] == {"INTERNAL": 1}
    assert group(report, op, "sme-2024-study")["jobs"]["failed"] == 1


def test_failures_spread_over_hours_do_not_burst(stream: Stream) -> None:
    op = "op-huaxin"
    for i in range(3):
        job_id = stream.job(op, "sme-credit", dataset="enterprises", category="engine_error")
        stream.conn.execute(
            "UPDATE audit_events SET time = ? WHERE subject = ?",
            (f"2026-03-01T{8 + i * 2:02d}:00:00.000000Z", job_id),
        )
    assert alerts(reports.build_report(stream.conn), "failure_burst") == []


def test_a_single_plan_mismatch_alerts(stream: Stream) -> None:
    job_id = stream.job("op-huaxin", "sme-credit", dataset="enterprises", category="plan_mismatch")
    [alert] = alerts(reports.build_report(stream.conn), "plan_mismatch")
    assert alert["jobs"] == [job_id] and alert["categories"] == {"plan_mismatch": 1}


def _with_sql(stream: Stream, op: str, sc: str, sql: str) -> str:
    from sandbox import jobs, review

    job_id = stream.job(op, sc, dataset="population")
    now = "2026-03-01T08:00:00+00:00"
    assert jobs.State  # the jobs schema is registered with the store
    stream.conn.execute(
        "INSERT INTO jobs (id, operator, scenario, sql, sql_sha256, sql_shape, epsilon, delta,"
        " state, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (job_id, op, sc, sql, "s" * 64, review.sql_shape(sql), 1.0, 0.0, "noised", now, now),
    )
    return job_id


SWEEP = "SELECT COUNT(*) AS n FROM persons WHERE county = '140105' AND age = {}"


def test_queries_differing_in_one_filter_constant_are_a_sweep(tmp_path: Path) -> None:
    stream = Stream(store.connect(tmp_path / "s.db"))
    op, sc = "op-jinshu", "employment-income"
    swept = [_with_sql(stream, op, sc, SWEEP.format(age)) for age in (30, 31, 32)]
    _with_sql(stream, op, sc, "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex")
    _with_sql(stream, "op-huaxin", "sme-credit", SWEEP.format(40))  # another operator
    report = reports.build_report(stream.conn)
    [sweep] = alerts(report, "filter_sweep")
    assert sweep["operator"] == op and sweep["jobs"] == swept and sweep["count"] == 3
    assert "140105" not in json.dumps(sweep) and "'30'" not in json.dumps(sweep)


def test_queries_differing_in_two_constants_or_repeated_are_no_sweep(tmp_path: Path) -> None:
    stream = Stream(store.connect(tmp_path / "s.db"))
    op, sc = "op-jinshu", "employment-income"
    two = "SELECT COUNT(*) AS n FROM persons WHERE county = '{}' AND age = {}"
    for county, age in (("140105", 30), ("140106", 31), ("140107", 32)):
        _with_sql(stream, op, sc, two.format(county, age))
    for _ in range(3):
        _with_sql(stream, op, sc, SWEEP.format(50))  # the same query again: not a sweep
    assert alerts(reports.build_report(stream.conn), "filter_sweep") == []
