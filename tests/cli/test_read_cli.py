"""Reading the sandbox's state from the CLI against a real server (issue 16): commands
go through the server when one is configured and say which they used; `product verify`
without a key verifies a genuine product; ρ budgets are shown as ρ, with their
ε-equivalent and the queries left; tables fit 80 columns without cutting ids or
states; a job in review says why."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from sandbox import display
from sandbox.api.app import create_app
from sandbox.cli import app
from sandbox.service import Service, issue_token
from sandbox.settings import Settings
from tests.api.api_helpers import serve

INSURED_SQL = "SELECT sex, COUNT(*) AS n FROM insured GROUP BY sex"
INSURED_BY_TYPE = "SELECT insurance_type, COUNT(*) AS n FROM insured GROUP BY insurance_type"
ENTERPRISE_SQL = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"
WAITING = {"submitted", "compiled", "budget_reserved", "running", "noised"}


class Server:
    def __init__(self, service: Service, url: str) -> None:
        self.service, self.url = service, url
        self.tokens: dict[str, str] = {}

    def token(self, who: str) -> str:
        if who not in self.tokens:
            role = "operator" if who.startswith("op-") else "supervisor"
            self.tokens[who] = issue_token(self.service, role=role, subject=who)["token"]
        return self.tokens[who]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory, catalog, policies_dir) -> Path:
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic-read")
    generate_synthetic(
        root,
        catalog,
        ["social_insurance", "enterprises", "divisions"],
        units=400,
        seed=5,
        policies=policies_dir,
    )
    return root


@pytest.fixture()
def server(tmp_path: Path, policies_dir: Path, synthetic: Path) -> Iterator[Server]:
    settings = Settings(
        home=tmp_path / "server",
        policies=policies_dir,
        data_root=synthetic,
        executor="local",
        rate_per_minute=10_000,
    )
    service = Service(settings)
    with serve(create_app(settings, service=service, include_console=False)) as url:
        yield Server(service, url)
    service.stop()


def cli(tmp: Path, *args: str, url: str | None = None, token: str = "", **env: str) -> Result:
    """The CLI with its own (empty) home, 80 columns wide."""
    environ = {"COLUMNS": "80", "SANDBOX_TOKEN": token, "SANDBOX_URL": url or "", **env}
    return CliRunner().invoke(app, ["--home", str(tmp / "client"), *args], env=environ)


def submit(srv: Server, tmp: Path, who: str, sql: str, scenario: str, eps: str) -> dict[str, Any]:
    query = tmp / "q.sql"
    query.write_text(sql, encoding="utf-8")
    out = cli(
        tmp, "submit", str(query), "-s", scenario, "-e", eps, "--json",
        url=srv.url, token=srv.token(who),
    )  # fmt: skip
    assert out.exit_code in (0, 2), out.output
    job: dict[str, Any] = json.loads(out.stdout)
    return job


def wait(srv: Server, tmp: Path, job_id: str, who: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        out = cli(tmp, "status", job_id, "--json", url=srv.url, token=srv.token(who))
        job: dict[str, Any] = json.loads(out.stdout)
        if job["state"] not in WAITING or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def test_report_goes_through_the_configured_server_and_says_so(
    server: Server, tmp_path: Path
) -> None:
    job = submit(server, tmp_path, "op-jinshu", INSURED_SQL, "pension-contributions", "0.5")
    assert wait(server, tmp_path, job["id"], "op-jinshu")["state"] == "in_review"
    out = cli(tmp_path, "report", "--json", url=server.url, token=server.token("supervisor-li"))
    assert out.exit_code == 0, out.output
    assert f"via {server.url}" in out.stderr
    rep = json.loads(out.stdout)
    (group,) = [g for g in rep["groups"] if g["scenario"] == "pension-contributions"]
    (row,) = [b for b in group["budget"] if b["dataset"] == "social_insurance"]
    assert row["unit"] == "rho" and row["source"] == "ledger"
    assert row["spent"] + row["reserved"] == pytest.approx(job["cost"]["rho"], abs=1e-9)
    # the local home of this client has nothing: the report read the server's
    local = cli(tmp_path, "report", "--json")
    assert local.exit_code == 0, local.output
    assert f"local home {tmp_path / 'client'}" in local.stderr
    assert json.loads(local.stdout)["groups"] == []
    # --url is the same as SANDBOX_URL
    flag = CliRunner().invoke(
        app,
        ["--home", str(tmp_path / "client"), "--url", server.url, "report", "--json"],
        env={"SANDBOX_TOKEN": server.token("supervisor-li"), "SANDBOX_URL": ""},
    )
    assert flag.exit_code == 0 and f"via {server.url}" in flag.stderr


def test_product_verify_without_a_key_fetches_the_servers(server: Server, tmp_path: Path) -> None:
    job = submit(server, tmp_path, "op-huaxin", ENTERPRISE_SQL, "sme-credit", "1")
    assert wait(server, tmp_path, job["id"], "op-huaxin")["state"] == "released"
    token = server.token("op-huaxin")
    product = tmp_path / "p.csv"
    got = cli(tmp_path, "result", job["id"], "-o", str(product), url=server.url, token=token)
    assert got.exit_code == 0, got.output
    assert "sandbox product verify" in got.stdout
    ok = cli(tmp_path, "product", "verify", str(product), "--json", url=server.url)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["job"] == job["id"]
    assert f"via {server.url}/v1/keys/products" in ok.stderr
    # no server and no local key: refused, and the hint names both ways
    bare = cli(tmp_path, "product", "verify", str(product), "--json")
    assert bare.exit_code == 2
    assert "SANDBOX_URL" in json.loads(bare.stdout)["error"]["hint"]
    # a tampered product still fails with the server's key
    product.write_bytes(product.read_bytes() + b"\n1,2\n")
    bad = cli(tmp_path, "product", "verify", str(product), "--json", url=server.url)
    assert bad.exit_code == 2 and json.loads(bad.stdout)["error"]["code"] == "PRODUCT_INVALID"


def test_the_budget_shows_rho_as_rho_with_its_epsilon_and_queries_left(
    server: Server, tmp_path: Path
) -> None:
    token = server.token("op-jinshu")
    first = cli(tmp_path, "budget", "--json", url=server.url, token=token)
    rows = {r["dataset"]: r for r in json.loads(first.stdout)}
    pension = rows["social_insurance"]
    assert pension["unit"] == "rho"
    outlook = pension["outlook"]
    assert outlook["typical_from"] == "ceiling" and outlook["recent_jobs"] == 0
    assert outlook["epsilon_equivalent"]["total"] < 10.0  # OpenDP's conversion: tighter
    before = outlook["queries_left"]
    for sql in (INSURED_SQL, INSURED_BY_TYPE):
        submit(server, tmp_path, "op-jinshu", sql, "pension-contributions", "0.5")
    after = cli(tmp_path, "budget", "--json", url=server.url, token=token)
    row = {r["dataset"]: r for r in json.loads(after.stdout)}["social_insurance"]
    assert row["outlook"]["typical_from"] == "recent_jobs" and row["outlook"]["recent_jobs"] == 2
    assert row["outlook"]["queries_left"] > before  # ε 0.5 jobs are cheaper than the ceiling
    text = cli(tmp_path, "budget", url=server.url, token=token)
    assert text.exit_code == 0, text.output
    assert "ρ " + display.fmt_amount(row["total"], digits=4) in text.stdout
    eq = row["outlook"]["epsilon_equivalent"]
    assert "≈ ε " + display.fmt_amount(eq["total"], digits=3) in text.stdout
    assert "≈ ε " + display.fmt_amount(eq["spent"], digits=3) in text.stdout
    lines = text.stdout.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("pension-contributions")]
    assert f"≈ {row['outlook']['queries_left']:,}" in lines[at]
    assert "social_insurance" in lines[at + 1] and "at ρ 0.00" in lines[at + 1]
    assert "pension-contributions" in text.stdout and "social_insurance" in text.stdout
    assert all(len(line) <= 80 for line in text.stdout.splitlines())


def test_tables_fit_80_columns_and_never_cut_ids_or_states(server: Server, tmp_path: Path) -> None:
    ids = [
        submit(server, tmp_path, "op-jinshu", INSURED_SQL, "pension-contributions", "0.3")["id"]
        for _ in range(2)
    ]
    for job_id in ids:
        wait(server, tmp_path, job_id, "op-jinshu")
    out = cli(tmp_path, "jobs", url=server.url, token=server.token("supervisor-li"))
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), out.stdout
    assert "…" not in out.stdout
    for job_id in ids:
        assert any(job_id in line and "in_review" in line for line in lines), out.stdout
    queue = cli(tmp_path, "review", "list", url=server.url, token=server.token("supervisor-li"))
    assert queue.exit_code == 0 and "…" not in queue.stdout
    assert all(job_id in queue.stdout for job_id in ids)
    assert all(len(line) <= 80 for line in queue.stdout.splitlines())


def test_a_job_in_review_says_why(server: Server, tmp_path: Path) -> None:
    # social_insurance is graded "important": two approvals, whatever the query
    job = submit(server, tmp_path, "op-jinshu", INSURED_SQL, "pension-contributions", "0.5")
    token = server.token("op-jinshu")
    wait(server, tmp_path, job["id"], "op-jinshu")
    out = cli(tmp_path, "status", job["id"], url=server.url, token=token)
    assert out.exit_code == 0, out.output
    text = " ".join(out.stdout.split())
    assert "Waiting for review: 0 of 2 supervisor approval(s), because data of grade " in text
    assert "important is released only after 2 supervisor approval(s)" in text
    # enterprises (general-2) releases by itself; the same query again is a near-duplicate
    token = server.token("op-huaxin")
    first = submit(server, tmp_path, "op-huaxin", ENTERPRISE_SQL, "sme-credit", "1")
    assert wait(server, tmp_path, first["id"], "op-huaxin")["state"] == "released"
    again = submit(server, tmp_path, "op-huaxin", ENTERPRISE_SQL, "sme-credit", "1")
    seen = wait(server, tmp_path, again["id"], "op-huaxin")
    assert seen["state"] == "in_review" and seen["flags"] == []  # an operator sees no flags
    assert seen["review_reasons"] == [{"code": "near_duplicate", "jobs": [first["id"]]}]
    out = cli(tmp_path, "status", again["id"], url=server.url, token=token)
    text = " ".join(out.stdout.split())
    assert f"an earlier job of the same operator ({first['id']}) has the same plan" in text


def test_audit_show_and_verify_go_through_the_server(server: Server, tmp_path: Path) -> None:
    job = submit(server, tmp_path, "op-huaxin", ENTERPRISE_SQL, "sme-credit", "1")
    wait(server, tmp_path, job["id"], "op-huaxin")
    token = server.token("supervisor-li")
    shown = cli(tmp_path, "audit", "show", "--json", url=server.url, token=token)
    assert shown.exit_code == 0, shown.output
    assert f"via {server.url}" in shown.stderr
    assert any(e["subject"] == job["id"] for e in json.loads(shown.stdout))
    text = cli(tmp_path, "audit", "show", "--action", "job.submitted", url=server.url, token=token)
    assert job["id"] in text.stdout and all(len(ln) <= 80 for ln in text.stdout.splitlines())
    verified = cli(tmp_path, "audit", "verify", "--json", url=server.url, token=token)
    assert verified.exit_code in (0, 3), verified.output  # 3: entries after the last checkpoint
    assert json.loads(verified.stdout)["ok"] is True and f"via {server.url}" in verified.stderr
    # without a server the command reads the local home, and says so
    local = cli(tmp_path, "audit", "show", "--json")
    assert local.exit_code == 0 and json.loads(local.stdout) == []
    assert f"local home {tmp_path / 'client'}" in local.stderr
    # a command with no API says that it does not use the configured server
    cp = cli(tmp_path, "audit", "checkpoint", "--json", url=server.url)
    assert "this command does not use the server" in cp.stderr
