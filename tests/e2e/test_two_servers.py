"""Two ``sandbox serve`` processes on one PostgreSQL (issue 19, "done when").

1. 100 concurrent submissions, split across both servers, to a grant with little
   budget left: the ledger never spends more than the grant, every job ends in exactly
   one final state (one terminal transition, one terminal audit event), both servers
   ran jobs, and ``sandbox audit verify`` accepts the log.
2. SIGKILL of one server with jobs queued and running on it: the other takes them over
   (its lease loop finds the dead server), finishes those that never ran, fails a job
   left running with JOB_INTERRUPTED (charge kept), and nothing is left unfinished.

Local executor over synthetic data; the servers share HOME (keys, products) as servers
behind one load balancer share a volume (docs/deployment.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sandbox import store
from tests.policy_factory import grant, make_policies

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SQL = (
    "SELECT industry, COUNT(*) AS n, AVG(employees) AS mean_employees"
    " FROM enterprises GROUP BY industry"
)
SCENARIO = "sme-credit"
FINAL = {"released", "rejected", "refused", "failed", "cancelled"}


def _sandbox_bin() -> str:
    here = Path(sys.executable).parent / "sandbox"
    return str(here) if here.exists() else (shutil.which("sandbox") or "sandbox")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def cluster(tmp_path: Path, pg_url: str, catalog: Any) -> dict[str, Any]:
    """Shared settings of the servers: policies with a small grant, synthetic data, one
    PostgreSQL database, one HOME; an operator token."""
    from sandbox.synthetic import generate_synthetic

    def small_grant(data: dict[str, Any]) -> None:
        g = grant(data, "g-huaxin-sme")
        g["budget"] = {"epsilon": 1.0, "delta": 1.0e-6, "max_epsilon_per_query": 1.0}

    policies = make_policies(tmp_path, grants=small_grant)
    review = yaml.safe_load((policies / "review.yaml").read_text("utf-8"))
    review["flagged_approvals"] = 0  # one query, many times: released without a reviewer
    (policies / "review.yaml").write_text(yaml.safe_dump(review), "utf-8")
    data = tmp_path / "synthetic"
    generate_synthetic(
        data, catalog, ["enterprises", "divisions"], units=5000, seed=3, policies=policies
    )
    env = {
        **os.environ,
        "SANDBOX_HOME": str(tmp_path / "home"),
        "SANDBOX_POLICIES": str(policies),
        "SANDBOX_DATA_ROOT": str(data),
        "SANDBOX_EXECUTOR": "local",
        "SANDBOX_DATABASE_URL": pg_url,
        "SANDBOX_LEASE_SECONDS": "3",
        "SANDBOX_RATE_PER_MINUTE": "10000",
        "SANDBOX_COMPILE_SECONDS_PER_MINUTE": "600",
        "SANDBOX_CONCURRENCY": "2",
    }
    env.pop("SANDBOX_TOKEN", None)
    out = subprocess.run(
        [_sandbox_bin(), "token", "create", "--operator", "op-huaxin", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return {"env": env, "token": json.loads(out.stdout)["token"], "tmp": tmp_path, "url": pg_url}


class Server:
    def __init__(self, cluster: dict[str, Any], name: str, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**cluster["env"], "SANDBOX_PORT": str(self.port), **env}
        self.log_path = cluster["tmp"] / f"{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [_sandbox_bin(), "serve"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def submit(url: str, token: str, epsilon: float) -> tuple[int, dict[str, Any]]:
    r = httpx.post(
        f"{url}/v1/jobs",
        json={"sql": SQL, "scenario": SCENARIO, "epsilon": epsilon},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    return r.status_code, r.json()


def all_jobs(conn: store.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY created_at, id")]


def wait_final(conn: store.Connection, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = all_jobs(conn)
        if all(j["state"] in FINAL for j in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.25)


def check_one_final_state_each(conn: store.Connection, jobs: list[dict[str, Any]]) -> None:
    for j in jobs:
        assert j["state"] in FINAL, (j["id"], j["state"])
        moves = [
            r["to_state"]
            for r in conn.execute(
                "SELECT to_state FROM job_transitions WHERE job_id = ? ORDER BY id", (j["id"],)
            )
        ]
        assert moves[-1] == j["state"] and sum(m in FINAL for m in moves) == 1, (j["id"], moves)
        ends = conn.execute(
            "SELECT action FROM audit_events WHERE subject = ? AND action IN "
            "('job.released', 'job.rejected', 'job.refused', 'job.failed', 'job.cancelled')",
            (j["id"],),
        ).fetchall()
        assert [e[0] for e in ends] == [f"job.{j['state']}"], (j["id"], ends)


def ledger_of(conn: store.Connection) -> dict[str, int]:
    acct = conn.execute(
        "SELECT total_loss FROM ledger_accounts WHERE grant_id = 'g-huaxin-sme'"
    ).fetchone()
    rows = conn.execute(
        "SELECT state, COUNT(*) AS n, COALESCE(SUM(loss), 0) AS loss FROM ledger_entries"
        " WHERE grant_id = 'g-huaxin-sme' GROUP BY state"
    ).fetchall()
    out = {"total": int(acct["total_loss"])}
    for r in rows:
        out[f"{r['state']}_n"], out[f"{r['state']}_loss"] = int(r["n"]), int(r["loss"])
    return out


def audit_verify(cluster: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_sandbox_bin(), "audit", "verify", "--json"],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_hundred_submissions_across_two_servers_never_overspend(cluster) -> None:
    token = cluster["token"]
    a = Server(cluster, "a")
    try:
        b = Server(cluster, "b")
        try:
            # half the grant is spent first: little budget is left for the hundred
            code, first = submit(a.url, token, 0.5)
            assert code == 201, first
            conn = store.connect(cluster["url"])
            assert wait_final(conn)[0]["state"] == "released"
            urls = [a.url, b.url] * 50
            with ThreadPoolExecutor(max_workers=24) as pool:
                answers = list(pool.map(lambda u: submit(u, token, 0.05), urls))
            codes = [c for c, _ in answers]
            assert set(codes) <= {201, 400, 403, 409, 429}, answers
            jobs = wait_final(conn)
            check_one_final_state_each(conn, jobs)
            states = [j["state"] for j in jobs[1:]]
            # ε 0.5 left, 0.05 each (decimal arithmetic: exactly 10 fit)
            assert states.count("released") == 10, states
            assert states.count("refused") == len(states) - 10
            assert all(
                j["error_code"] == "BUDGET_EXHAUSTED" for j in jobs if j["state"] == "refused"
            )
            assert len(jobs) - 1 == sum(c in (201, 400, 403, 409) for c in codes)
            led = ledger_of(conn)
            assert led.get("reserved_n", 0) == 0
            assert led["charged_n"] == 11 and led["charged_loss"] <= led["total"]
            # both servers took submissions: a job is claimed by the server that took
            # it (then by the one whose worker ran it)
            servers = {r[0] for r in conn.execute("SELECT id FROM servers")}
            claims = {j["claimed_by"] for j in jobs}
            assert len(claims) == 2 and claims <= servers, (claims, servers)
        finally:
            b.stop()
    finally:
        a.stop()
    report = audit_verify(cluster)
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["ok"] is True


def test_a_sigkilled_server_s_jobs_are_finished_or_failed_by_the_other(cluster) -> None:
    token = cluster["token"]
    # one worker on A: the jobs sent to it queue up behind each other
    a = Server(cluster, "a", SANDBOX_CONCURRENCY="1")
    try:
        b = Server(cluster, "b")
        try:
            with ThreadPoolExecutor(max_workers=6) as pool:
                answers = list(pool.map(lambda _: submit(a.url, token, 0.02), range(30)))
            assert all(c == 201 for c, _ in answers), answers
            a.stop(signal.SIGKILL)  # mid-job: some queued, one perhaps running
            conn = store.connect(cluster["url"])
            b_id = conn.execute("SELECT id FROM servers WHERE pid = ?", (b.proc.pid,)).fetchone()[0]
            at_kill = {j["id"]: j["state"] for j in all_jobs(conn)}
            unfinished = [k for k, s in at_kill.items() if s not in FINAL]
            assert unfinished, "A finished everything before it was killed: nothing to test"
            jobs = wait_final(conn, timeout=120)
            print("at kill:", sorted(at_kill.values()), "then:", [j["state"] for j in jobs])
            check_one_final_state_each(conn, jobs)
            for j in jobs:
                assert j["state"] in ("released", "failed"), j
                if j["state"] == "failed":
                    assert j["error_code"] == "JOB_INTERRUPTED", j
            taken = [j for j in jobs if j["id"] in unfinished]
            assert all(j["claimed_by"] == b_id for j in taken), taken
            assert any(j["state"] == "released" for j in taken)  # B ran A's queue
            led = ledger_of(conn)
            ran = sum(
                1
                for j in jobs
                if conn.execute(
                    "SELECT 1 FROM job_transitions WHERE job_id = ? AND to_state = 'running'",
                    (j["id"],),
                ).fetchone()
            )
            assert led.get("reserved_n", 0) == 0 and led["charged_n"] == ran
            assert led["charged_loss"] <= led["total"]
        finally:
            b.stop()
    finally:
        a.stop()
    report = audit_verify(cluster)
    assert report.returncode == 0, report.stdout + report.stderr
