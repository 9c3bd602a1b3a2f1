"""Issue 16: one query, every path, one answer: the same δ, the same cost and the same
output shape from ``sandbox dev run``, ``sandbox explain`` (local and on the server) and
``sandbox submit`` (then approved and downloaded as Parquet).

The real ``sandbox serve`` runs with the local executor over the synthetic data of a
``sandbox dev init`` project, so ``dev run`` and the server read the same files. The
queries: queries/05 (private occupation keys: needs δ, none given), queries/01 (public
county keys, pure ε: δ = 0), and queries/07–09 (ρ-zCDP, important grade: two
supervisors), whose ``try:`` lines are run verbatim, with ``explain`` and with
``submit``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from sandbox.dev import init_project

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SUPERVISORS = ("supervisor-li", "supervisor-wang")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sandbox(env: dict[str, str], *args: str, token: str = "", cwd: Path) -> dict[str, Any]:
    """Run the real CLI with --json; its JSON answer (exit code 0 asserted)."""
    full = {**env, "SANDBOX_TOKEN": token} if token else dict(env)
    done = subprocess.run(
        ["sandbox", *args, "--json"], env=full, cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"sandbox {shlex.join(args)}:\n{done.stdout}{done.stderr}"
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def _try_line(query: Path) -> list[str]:
    """The words after ``sandbox`` of a query's ``-- try:`` line."""
    for line in query.read_text(encoding="utf-8").splitlines():
        if line.startswith("-- try: sandbox "):
            return shlex.split(line.removeprefix("-- try: sandbox "))
    raise AssertionError(f"{query.name} has no try: line")


def _drop(words: list[str], flag: str) -> list[str]:
    """The words without ``flag`` and its value."""
    if flag not in words:
        return list(words)
    i = words.index(flag)
    return words[:i] + words[i + 2 :]


@pytest.fixture(scope="module")
def sandbox_env(
    tmp_path_factory: pytest.TempPathFactory, policies_dir: Path
) -> Iterator[tuple[dict[str, str], dict[str, str], Path, Path]]:
    """(env, tokens, the work folder with queries/, the project) with a real server."""
    tmp = tmp_path_factory.mktemp("delta-paths")
    project = tmp / "project"
    init_project(project, operator="op-jinshu", policies=policies_dir, units=3_000, seed=3)
    work = tmp / "work"
    shutil.copytree(ROOT / "queries", work / "queries")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")} | {  # fmt: skip
        "SANDBOX_HOME": str(tmp / "home"),
        "SANDBOX_POLICIES": str(policies_dir),
        "SANDBOX_DATA_ROOT": str(project / "data"),
        "SANDBOX_EXECUTOR": "local",  # synthetic data: the project's
        "SANDBOX_PORT": str(port),
        "SANDBOX_URL": f"http://127.0.0.1:{port}",
        "SANDBOX_CONCURRENCY": "1",
    }
    tokens = {}
    for flag, who in (("--operator", "op-jinshu"), *(("--supervisor", s) for s in SUPERVISORS)):
        tokens[who] = _sandbox(env, "token", "create", flag, who, "--expires-in", "1d", cwd=tmp)[
            "token"
        ]
    log = (tmp / "server.log").open("w")
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
            assert proc.poll() is None, (tmp / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        yield env, tokens, work, project
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


CASES = [
    # (query, the default δ expected: no --delta is given on any path)
    ("05_top_occupations.sql", 1e-6),  # private keys, pure ε: the grant's 1e-5 / 10
    ("01_residents_by_county.sql", 0.0),  # public keys, pure ε: no δ
    ("07_contributions_by_year.sql", 1e-6),  # ρ-zCDP: δ states the guarantee
    ("08_contributions_by_city_and_type.sql", 1e-6),
    ("09_monthly_contributions_2024.sql", 1e-6),
]


@pytest.mark.parametrize(("name", "expected_delta"), CASES, ids=[c[0][:2] for c in CASES])
def test_one_query_one_delta_cost_and_shape_on_every_path(
    sandbox_env: tuple[dict[str, str], dict[str, str], Path, Path],
    name: str,
    expected_delta: float,
) -> None:
    env, tokens, work, project = sandbox_env
    operator = tokens["op-jinshu"]
    query = f"queries/{name}"
    words = _drop(_try_line(work / query), "--delta")  # verbatim for 07–09 (no --delta)
    assert words[:2] == ["explain", query] and "--operator" in words

    # 1. `sandbox explain` as the try: line writes it (local, against the policy files)
    local = _sandbox(env, *words, cwd=work)
    # 2. the server's explain: the same flags, the token names the operator
    server = _sandbox(env, *_drop(words, "--operator"), token=operator, cwd=work)
    # 3. `dev run` on the project's synthetic data, with the same flags
    flags = _drop(words[2:], "--operator")
    dev = _sandbox(env, "dev", "run", query, "--project", str(project), *flags, cwd=work)
    # 4. the try: line with submit for explain, as written
    job = _sandbox(env, "submit", *words[1:], token=operator, cwd=work)

    # the same δ (the default: none was given) ...
    for cost in (local["cost"], server["cost"], dev["cost"], job["cost"]):
        assert cost["requested_delta"] == pytest.approx(expected_delta, rel=1e-12, abs=0)
    assert job["delta"] == server["cost"]["requested_delta"]
    # ... and the same cost, ε, δ, ρ and every measure's scale, to the last digit
    assert local["cost"] == server["cost"] == dev["cost"] == job["cost"]
    assert server["outputs"] == dev["explain"]

    # the server's review, as dev run predicted it
    assert job["state"] == "in_review", job
    assert job["required_approvals"] == dev["required_approvals"] == server["required_approvals"]
    for who in SUPERVISORS[: job["required_approvals"]]:
        _sandbox(env, "review", "approve", job["id"], "--reason", "issue 16 test",
                 token=tokens[who], cwd=work)  # fmt: skip
    done = _sandbox(env, "status", job["id"], "--wait", token=operator, cwd=work)
    assert done["state"] == "released", done
    for rule in ("min_count", "round_base"):  # an operator sees them once released
        assert done["disclosure_control"][rule] == dev["disclosure_control"][rule]
    assert set(done["accuracy"]) == set(dev["accuracy"])

    # the same output shape: column names and types of the released Parquet product
    out = work / f"{job['id']}.parquet"
    _sandbox(env, "result", job["id"], "--format", "parquet", "-o", str(out),
             token=operator, cwd=work)  # fmt: skip
    schema = pq.read_schema(out)
    assert [{"name": f.name, "type": str(f.type)} for f in schema] == dev["schema"]
    assert schema.names == dev["columns"] and schema.names[-1] == "suppressed"
    if expected_delta == 0.0:  # public keys: every county, on both sides
        assert len(dev["rows"]) == pq.read_table(out).num_rows == 117


def test_submit_operator_flag_refuses_another_operators_token(
    sandbox_env: tuple[dict[str, str], dict[str, str], Path, Path],
) -> None:
    """`submit --operator` is a check, never a way to submit as someone else: with
    op-jinshu's token, `--operator op-huaxin` is refused before anything is submitted."""
    env, tokens, work, _project = sandbox_env
    operator = tokens["op-jinshu"]
    before = httpx.get(
        f"{env['SANDBOX_URL']}/v1/jobs", headers={"Authorization": f"Bearer {operator}"}
    ).json()
    done = subprocess.run(
        ["sandbox", "submit", "queries/01_residents_by_county.sql", "--operator", "op-huaxin",
         "--scenario", "employment-income", "--epsilon", "0.5", "--json"],
        env={**env, "SANDBOX_TOKEN": operator}, cwd=work, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "WRONG_OPERATOR"
    after = httpx.get(
        f"{env['SANDBOX_URL']}/v1/jobs", headers={"Authorization": f"Bearer {operator}"}
    ).json()
    assert len(after) == len(before)
