"""End to end: the real server, the real CLI, a real container, a signed product.

An operator submits a demo query through ``sandbox submit``; it runs in a runner
container (DockerExecutor) over the fabricated demo data; the population register is
general-3, so one supervisor approves it with ``sandbox review approve``; the operator
downloads it with ``sandbox result``; ``sandbox product verify`` accepts it with only
the public key and rejects a copy with one byte changed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from sandbox.executors.docker import home_label, sweep
from sandbox.settings import Settings

pytestmark = [pytest.mark.container, pytest.mark.slow]

QUERY = """\
SELECT household_type, COUNT(*) AS people, AVG(age) AS mean_age
FROM persons
WHERE employment = 'employed'
GROUP BY household_type
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sandbox(
    env: dict[str, str], *args: str, token: str = "", cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full = {**env, "SANDBOX_TOKEN": token} if token else dict(env)
    return subprocess.run(
        ["sandbox", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture()
def server(
    tmp_path: Path, demo_data_root: Path, runner_image: str, policies_dir: Path, docker_client
):  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        **os.environ,
        "SANDBOX_HOME": str(tmp_path / "home"),
        "SANDBOX_POLICIES": str(policies_dir),
        "SANDBOX_DATA_ROOT": str(demo_data_root),
        "SANDBOX_RUNNER_IMAGE": runner_image,
        "SANDBOX_EXECUTOR": "docker",
        "SANDBOX_PORT": str(port),
        "SANDBOX_URL": f"http://127.0.0.1:{port}",
        "SANDBOX_CONCURRENCY": "1",
    }
    env.pop("SANDBOX_TOKEN", None)
    tokens = {}
    for flag, who in (("--operator", "op-jinshu"), ("--supervisor", "supervisor-li")):
        out = sandbox(env, "token", "create", flag, who, "--expires-in", "1d", "--json")
        assert out.returncode == 0, out.stderr
        tokens[who] = json.loads(out.stdout)["token"]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        ["sandbox", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{env['SANDBOX_URL']}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        yield env, tokens
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        # containers of this installation only (label jinyu.sandbox=1 + its home label)
        sweep(docker_client, home_label=home_label(Settings(home=tmp_path / "home")))


def test_operator_to_verified_product(server, tmp_path: Path) -> None:
    env, tokens = server
    operator, supervisor = tokens["op-jinshu"], tokens["supervisor-li"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "query.sql").write_text(QUERY)

    # the operator submits through the CLI; the job runs in a real container
    out = sandbox(
        env,
        "submit",
        "query.sql",
        "--scenario",
        "employment-income",
        "--epsilon",
        "1.0",
        "--json",
        token=operator,
        cwd=work,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    job = json.loads(out.stdout)
    assert job["state"] == "in_review", job  # general-3: one supervisor must approve
    assert job["grade"] == "general-3" and job["required_approvals"] == 1
    transitions = httpx.get(
        f"{env['SANDBOX_URL']}/v1/jobs/{job['id']}",
        headers={"Authorization": f"Bearer {supervisor}"},
    ).json()["transitions"]
    assert [t["to_state"] for t in transitions] == [
        "submitted",
        "compiled",
        "budget_reserved",
        "running",
        "noised",
        "in_review",
    ]

    # the operator cannot fetch it yet
    early = sandbox(env, "result", job["id"], "--json", token=operator, cwd=work)
    assert early.returncode == 2 and json.loads(early.stdout)["error"]["code"] == "INVALID_STATE"

    # a supervisor sees it in the queue and approves it, with a reason
    queue = sandbox(env, "review", "list", "--json", token=supervisor)
    assert [j["id"] for j in json.loads(queue.stdout)] == [job["id"]]
    approve = sandbox(
        env,
        "review",
        "approve",
        job["id"],
        "--reason",
        "five household types, large counts",
        "--json",
        token=supervisor,
    )
    assert approve.returncode == 0, approve.stdout + approve.stderr
    assert json.loads(approve.stdout)["outcome"] == "approved"

    # the operator downloads the product and its signed manifest
    got = sandbox(
        env,
        "result",
        job["id"],
        "--format",
        "csv",
        "-o",
        "product.csv",
        "--json",
        token=operator,
        cwd=work,
    )
    assert got.returncode == 0, got.stdout + got.stderr
    product = work / "product.csv"
    rows = product.read_text().splitlines()
    # each released number with its 95% ± beside it (issue 16)
    assert rows[0] == "household_type,people,people_pm95,mean_age,mean_age_pm95,suppressed"
    assert len(rows) == 6  # five public household types

    # anyone holding only the public key can check it
    (work / "products.pub").write_text(httpx.get(f"{env['SANDBOX_URL']}/v1/keys/products").text)
    ok = sandbox(
        env, "product", "verify", "product.csv", "--public-key", "products.pub", "--json", cwd=work
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    verdict = json.loads(ok.stdout)
    assert verdict["ok"] is True and verdict["job"] == job["id"]
    assert verdict["reviewers"] == ["supervisor-li"]

    # a copy with one byte changed is rejected
    data = bytearray(product.read_bytes())
    data[len(data) // 2] ^= 0x01
    (work / "tampered.csv").write_bytes(bytes(data))
    (work / "tampered.csv.manifest.json").write_bytes(
        (work / "product.csv.manifest.json").read_bytes()
    )
    bad = sandbox(
        env, "product", "verify", "tampered.csv", "--public-key", "products.pub", "--json", cwd=work
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert json.loads(bad.stdout)["error"]["code"] == "PRODUCT_INVALID"
