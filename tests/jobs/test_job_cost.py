"""A job runs on the cost reserved for it (issue 15): the noise at run time is the
cost stored with the job, not one recomputed from grants or policy as they are then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sandbox import store
from sandbox.service import Service
from sandbox.settings import Settings
from sandbox.tokens import Principal, Role

SQL = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"
OP = Principal(Role.OPERATOR, "op-huaxin", "tok_test")
ADMIN = Principal(Role.ADMIN, "admin", "tok_admin")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, catalog, policies_dir) -> Path:
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic-cost")
    generate_synthetic(root, catalog, ["enterprises"], units=300, seed=5, policies=policies_dir)
    return root


def _reserved(tmp_path: Path, policies_dir: Path, synthetic: Path) -> tuple[Service, Path, str]:
    """A service whose worker is not started: the job stops at budget_reserved."""
    policies = tmp_path / "policies"
    shutil.copytree(policies_dir, policies)
    svc = Service(
        Settings(home=tmp_path / "home", policies=policies, data_root=synthetic, executor="local")
    )
    job = svc.submit_job(OP, sql=SQL, scenario="sme-credit", epsilon=1.0)
    assert job["state"] == "budget_reserved"
    return svc, policies, job["id"]


def test_the_noise_is_the_reserved_cost_not_one_recomputed_at_run_time(
    tmp_path, policies_dir, synthetic
) -> None:
    svc, _, job_id = _reserved(tmp_path, policies_dir, synthetic)
    conn = svc.conn()
    [row] = conn.execute("SELECT cost_json FROM jobs WHERE id = ?", (job_id,)).fetchall()
    cost = json.loads(row[0])
    [m] = cost["measures"]
    reserved = m["scale"]
    m["scale"] = reserved * 8  # what is stored is what runs: make it visible
    with store.transaction(conn):
        conn.execute("UPDATE jobs SET cost_json = ? WHERE id = ?", (json.dumps(cost), job_id))

    svc.worker.execute(conn, job_id)
    job = svc.get_job(OP, job_id)
    assert job["state"] in ("noised", "in_review", "released"), job["error"]
    scales = {c["scale"] for c in job["accuracy"]["n"] if c is not None}
    assert scales and all(s == pytest.approx(reserved * 8) for s in scales)


def test_a_grant_tightened_after_reservation_does_not_change_the_run(
    tmp_path, policies_dir, synthetic
) -> None:
    svc, policies, job_id = _reserved(tmp_path, policies_dir, synthetic)
    [row] = svc.conn().execute("SELECT cost_json FROM jobs WHERE id = ?", (job_id,)).fetchall()
    reserved = json.loads(row[0])["measures"][0]["scale"]
    grants = policies / "grants.yaml"
    text = grants.read_text(encoding="utf-8")
    tightened = text.replace(
        "{ epsilon: 15.0, delta: 1.0e-6, max_epsilon_per_query: 2.0 }",
        "{ epsilon: 15.0, delta: 1.0e-6, max_epsilon_per_query: 0.5 }",
    )
    assert tightened != text
    grants.write_text(tightened, encoding="utf-8")
    svc.reload_grants(ADMIN)

    svc.worker.execute(svc.conn(), job_id)
    job = svc.get_job(OP, job_id)
    assert job["state"] in ("noised", "in_review", "released"), job["error"]
    scales = {c["scale"] for c in job["accuracy"]["n"] if c is not None}
    assert scales and all(s == pytest.approx(reserved) for s in scales)
