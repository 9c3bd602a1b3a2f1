"""Issue 15, point 4: a server SIGKILLed mid-job leaves no exact result behind.

A real ``sandbox serve`` (Docker executor, demo data) runs a job; while the job is
``running`` and its runner container works, the server is killed with SIGKILL. The
container is not the server's child: it runs on and writes the exact table to its
``/out``. At the next start, before the server answers, that run is recognised as a
dead process's (its lock is free), its container is removed, its ``/out`` unmounted
and its run directory removed. Then no ``result.arrow`` (nor any other runner file)
is anywhere under the sandbox home or the RAM fallback directory, no mount is left,
and the job ends ``failed`` (``JOB_INTERRUPTED``) with its charge kept.

The runner gets a fraction of a CPU (``SANDBOX_CPUS``) so its start-up and query take
long enough to kill the server while the container still works.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.executors.docker import HOME_LABEL, LABEL, home_label, sweep
from sandbox.executors.docker.hostfs import shm_root
from sandbox.settings import Settings

pytestmark = [pytest.mark.container, pytest.mark.slow]

QUERY = (
    "SELECT household_type, COUNT(*) AS people, SUM(monthly_income) AS income "
    "FROM persons GROUP BY household_type"
)
RUNNER_FILES = {"result.arrow", "result.arrow.part", "status.json", "status.json.part"}
SANDBOX = str(Path(sys.executable).with_name("sandbox"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``sandbox serve`` in its own process group, started and killed at will."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.env["SANDBOX_URL"]

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [SANDBOX, "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture()
def crash_env(
    tmp_path: Path, demo_data_root: Path, runner_image: str, policies_dir: Path, docker_client: Any
) -> Iterator[tuple[dict[str, str], dict[str, str], Server]]:
    port = _free_port()
    home = tmp_path / "home"
    env = {
        **os.environ,
        "SANDBOX_HOME": str(home),
        "SANDBOX_POLICIES": str(policies_dir),
        "SANDBOX_DATA_ROOT": str(demo_data_root),
        "SANDBOX_RUNNER_IMAGE": runner_image,
        "SANDBOX_EXECUTOR": "docker",
        "SANDBOX_PORT": str(port),
        "SANDBOX_URL": f"http://127.0.0.1:{port}",
        "SANDBOX_CONCURRENCY": "1",
        "SANDBOX_WARM_RUNNERS": "0",
        # a slow runner (~4 s here): time to kill the server while it works
        "SANDBOX_CPUS": "0.05",
        "SANDBOX_JOB_TIMEOUT": "300",
    }
    env.pop("SANDBOX_TOKEN", None)
    tokens = {}
    for flag, who in (("--operator", "op-jinshu"), ("--supervisor", "supervisor-li")):
        out = subprocess.run(
            [SANDBOX, "token", "create", flag, who, "--expires-in", "1d", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        tokens[who] = json.loads(out.stdout)["token"]
    server = Server(env, tmp_path / "server.log")
    try:
        yield env, tokens, server
    finally:
        server.kill(signal.SIGTERM)
        sweep(docker_client, home_label=home_label(Settings(home=home)))


def _containers(client: Any, home: Path) -> list[Any]:
    label = [f"{LABEL}=1", f"{HOME_LABEL}={home_label(Settings(home=home))}"]
    # sparse: the list answer only (no lookup per container, which races a removal)
    return list(client.containers.list(all=True, sparse=True, filters={"label": label}))


def _exact_files(home: Path) -> list[Path]:
    """Every file a runner writes to /out, under the home and the RAM fallback root."""
    roots = [home, shm_root(home_label(Settings(home=home)))]
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.name in RUNNER_FILES]


def _mounts_under(path: Path) -> list[str]:
    return [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line
    ]


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("runner_finished", [True, False], ids=["after-runner", "during-runner"])
def test_sigkill_mid_job_leaves_no_exact_result(
    crash_env: tuple[dict[str, str], dict[str, str], Server],
    docker_client: Any,
    runner_finished: bool,
) -> None:
    env, tokens, server = crash_env
    home = Path(env["SANDBOX_HOME"])
    op = {"Authorization": f"Bearer {tokens['op-jinshu']}"}
    server.start()
    r = httpx.post(
        f"{server.url}/v1/jobs",
        headers=op,
        json={"sql": QUERY, "scenario": "employment-income", "epsilon": 1.0},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    def running_container() -> bool:
        state = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=op, timeout=10).json()
        assert state["state"] in {"submitted", "compiled", "budget_reserved", "running"}, state
        return state["state"] == "running" and any(
            c.status == "running" for c in _containers(docker_client, home)
        )

    _wait("the job's runner to work", running_container, 120)
    server.kill(signal.SIGKILL)

    if runner_finished:
        # the orphaned runner finishes on its own and leaves the exact table in /out:
        # the state a crash used to leave for good
        def exited() -> bool:
            found = _containers(docker_client, home)
            assert found, "the runner was removed: the server got further than running"
            return all(c.status == "exited" for c in found)

        _wait("the orphaned runner to finish", exited, 240)
        assert any(p.name == "result.arrow" for p in _exact_files(home)), "no exact result"

    server.start()  # the start-up sweep runs before the server answers
    assert _exact_files(home) == []
    assert _containers(docker_client, home) == []
    assert _mounts_under(home) == []
    runs = home / "runs"
    assert not runs.exists() or [p.name for p in runs.iterdir() if p.name.startswith("job-")] == []
    if not runner_finished:
        time.sleep(5)  # a runner left working would write its result in this time
        assert _exact_files(home) == []

    # the job ended honestly: failed at recovery, its charge kept
    sup = {"Authorization": f"Bearer {tokens['supervisor-li']}"}
    job = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=sup, timeout=10).json()
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "JOB_INTERRUPTED", job["error"]
    conn = sqlite3.connect(f"file:{home / 'sandbox.db'}?mode=ro", uri=True)
    try:
        actions = [
            a
            for (a,) in conn.execute("SELECT action FROM audit_events WHERE subject = ?", [job_id])
        ]
    finally:
        conn.close()
    assert "budget.charged" in actions and "budget.released" not in actions, actions
