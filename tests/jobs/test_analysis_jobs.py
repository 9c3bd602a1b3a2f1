"""Analysis jobs on the host (sandbox/jobs/analysis.py): the grant decides, the job is
recorded with its kind and script hash, no budget is touched, and after the real
runner container the job waits for review (two supervisors for important data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandbox import store
from sandbox.catalog import Catalog
from sandbox.errors import Refused
from sandbox.grants import Grants
from sandbox.jobs import analysis
from sandbox.jobs.states import S
from sandbox.review import load_rules

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SCRIPT = """
import jinyu
df = jinyu.read_table("insured")
jinyu.acro.crosstab(df["sex"], df["insurance_type"])
jinyu.acro.ols(df["age"] * 1.0, df[["age"]].assign(const=1.0))
"""


def _submit(conn: Any, catalog: Catalog, grants: Grants, scenario: str, **kw: Any) -> Any:
    return analysis.submit(
        conn,
        catalog=catalog,
        grants=grants,
        rules=load_rules(POLICIES),
        operator="op-jinshu",
        scenario=scenario,
        files=kw.get("files", {"main.py": SCRIPT}),
        entry=kw.get("entry", "main.py"),
        actor="op-jinshu",
        role="operator",
    )


def test_a_grant_without_analysis_jobs_refuses(tmp_path: Path, catalog: Catalog, grants: Grants):
    conn = store.connect(tmp_path / "s.db")
    with pytest.raises(Refused) as info:
        _submit(conn, catalog, grants, "employment-income")
    assert info.value.code == "ANALYSIS_NOT_GRANTED"
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


@pytest.mark.parametrize(
    "files,entry",
    [
        ({}, "main.py"),
        ({"../x.py": "x"}, "../x.py"),
        ({"main.sh": "x"}, "main.sh"),
        ({"main.py": "x" * (300 * 1024)}, "main.py"),
        ({"main.py": "x"}, "other.py"),
    ],
)
def test_bad_scripts_are_refused(
    tmp_path: Path, catalog: Catalog, grants: Grants, files: dict[str, str], entry: str
):
    conn = store.connect(tmp_path / "s.db")
    with pytest.raises(Refused) as info:
        _submit(conn, catalog, grants, "pension-contributions", files=files, entry=entry)
    assert info.value.code == "SCRIPT_INVALID"


def test_tables_with_unusable_columns_are_given_only_projected(catalog: Catalog, grants: Grants):
    grant = grants.grant("g-huaxin-sme")
    assert grant is not None
    tables, _grades = analysis.analysis_tables(catalog, grant)
    assert tables["divisions"] == "divisions/divisions.parquet"  # every column usable
    given = tables["enterprises"]  # its name and credit code have no use
    assert isinstance(given, dict) and given["file"] == "enterprises/enterprises.parquet"
    assert "name" not in given["columns"] and "credit_code" not in given["columns"]
    usable = [c.name for c in catalog.dataset("enterprises").tables[0].columns if c.uses]
    assert given["columns"] == usable


def test_submit_records_the_kind_and_hash_and_charges_nothing(
    tmp_path: Path, catalog: Catalog, grants: Grants
):
    conn = store.connect(tmp_path / "s.db")
    job = _submit(conn, catalog, grants, "pension-contributions")
    assert job.state == S.BUDGET_RESERVED
    assert job["kind"] == "analysis" and job["epsilon"] == 0.0
    assert job["required_approvals"] == 2 and job["grade"] == "important"
    script = analysis.script_of(conn, job.id)
    assert script["acro"]["safe_threshold"] == 20  # review.yaml, acro: important
    assert set(script["tables"]) == {"insured", "payments", "divisions"}
    events = conn.execute(
        "SELECT action, details FROM audit_events WHERE subject = ? ORDER BY seq", (job.id,)
    ).fetchall()
    compiled = json.loads(next(e["details"] for e in events if e["action"] == "job.compiled"))
    assert compiled["script_sha256"] == script["script_sha256"]
    reserved = json.loads(
        next(e["details"] for e in events if e["action"] == "job.budget_reserved")
    )
    assert reserved["charged"] is False
    assert conn.execute("SELECT COUNT(*) FROM ledger_entries").fetchone()[0] == 0


@pytest.mark.container
def test_execute_runs_in_the_container_and_waits_for_two_supervisors(
    tmp_path: Path,
    catalog: Catalog,
    grants: Grants,
    docker_client: Any,
    runner_image: str,
    demo_data_root: Path,
):
    from sandbox.executors.docker import DockerExecutor
    from sandbox.settings import Settings

    settings = Settings(home=tmp_path / "home", memory_mb=1024, pids=64, warm_runners=0)
    executor = DockerExecutor(settings, client=docker_client, image=runner_image)
    conn = store.connect(tmp_path / "s.db")
    job = _submit(conn, catalog, grants, "pension-contributions")
    try:
        job = analysis.execute(conn, job.id, executor=executor, data_root=demo_data_root)
    finally:
        executor.close()
    assert job.state == S.IN_REVIEW and job["required_approvals"] == 2
    manifest = analysis.script_of(conn, job.id)["manifest"]
    assert [o["type"] for o in manifest["outputs"]] == ["table", "regression"]
    stored = analysis.outputs_of(conn, job.id)
    assert set(stored) == {f["name"] for o in manifest["outputs"] for f in o["files"]}
    event = conn.execute(
        "SELECT details FROM audit_events WHERE subject = ? AND action = 'job.in_review'",
        (job.id,),
    ).fetchone()
    details = json.loads(event["details"])
    hashes = {h for o in details["outputs"] for h in o["files"].values()}
    assert hashes == {f["sha256"] for o in manifest["outputs"] for f in o["files"]}
    assert {o["status"] for o in details["outputs"]} <= {"pass", "fail", "review"}


@pytest.mark.container
def test_the_worker_runs_it_and_reject_or_recovered_approvals_end_it_by_kind(
    tmp_path: Path, docker_client: Any, runner_image: str, demo_data_root: Path
):
    """JobWorker.execute dispatches by kind; one rejection rejects (nothing kept); two
    approvals recorded before a crash are released at recovery as an analysis product
    (result.zip, never the SQL release)."""
    from datetime import UTC, datetime

    from sandbox import products, review
    from sandbox.executors.docker import DockerExecutor
    from sandbox.service import Service
    from sandbox.service.decisions import record_review
    from sandbox.settings import Settings
    from sandbox.tokens import Principal, Role

    settings = Settings(
        home=tmp_path / "home",
        policies=POLICIES,
        data_root=demo_data_root,
        memory_mb=1024,
        pids=64,
        warm_runners=0,
    )
    svc = Service(
        settings, executor=DockerExecutor(settings, client=docker_client, image=runner_image)
    )
    conn = svc.conn()
    try:
        ids = []
        for _ in range(2):
            job = _submit(conn, svc.catalog, svc.grants, "pension-contributions")
            svc.worker.execute(conn, job.id)
            assert analysis.get_job(conn, job.id).state == S.IN_REVIEW
            ids.append(job.id)
        li = Principal(name="supervisor-li", role=Role.SUPERVISOR, token_id="t-li")
        outcome = record_review(
            conn, svc.worker, settings.products_dir, li, ids[0], decision="reject", reason="no"
        )
        assert outcome == "rejected" and analysis.get_job(conn, ids[0]).state == S.REJECTED
        assert not products.product_dir(settings.products_dir, ids[0]).exists()
        for who in ("supervisor-li", "supervisor-wang"):  # recorded, then the server died
            with store.transaction(conn):
                review.record_decision(
                    conn, job_id=ids[1], submitter="op-jinshu", required=2, reviewer=who,
                    decision="approve", reason="ok", now=datetime.now(UTC),
                )  # fmt: skip
        assert svc.worker.recover()["routed"] == 1
        job = analysis.get_job(conn, ids[1])
        assert job.state == S.RELEASED
        folder = products.product_dir(settings.products_dir, job.id)
        manifest = products.verify_files(folder / "result.zip", svc.product_key.public_key())
        assert manifest["kind"] == "analysis"
        assert not (folder / "result.csv").exists()
    finally:
        svc.stop()
