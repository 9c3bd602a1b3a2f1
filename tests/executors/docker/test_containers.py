"""The runner container: real containers, hostile jobs, nothing leaked.

Each container test runs a hostile or broken job through the TEST-ONLY path
``DockerExecutor._run_spec`` (raw SQL, or a raw Python entry point that probes the
box and writes what it saw to /out/probe.json) and checks that it is contained:
the failure has only a category, no data value appears anywhere, and after the test
no container (by label), run directory or volume is left behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import MEMORY_MB, PIDS, SCRATCH_MB, probe, run_sql, small_settings, spec_with
from executor_helpers import make_plan, write_root

from sandbox.errors import DockerUnavailable, ExecutionFailed
from sandbox.executors.docker import HOME_LABEL, LABEL, RUNNER_UID, DockerExecutor, sweep


def test_docker_unreachable_is_docker_unavailable(tmp_path: Path) -> None:
    import docker

    client = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41", timeout=2)
    executor = DockerExecutor(small_settings(tmp_path), client=client, image="x")
    try:
        with pytest.raises(DockerUnavailable) as info:
            executor.run(
                make_plan(), data_root=write_root(tmp_path / "d", synthetic=False), job_id="j"
            )
    finally:
        client.close()
    assert info.value.code == "DOCKER_UNAVAILABLE"
    assert "127.0.0.1" not in str(info.value)


@pytest.mark.container
def test_container_is_locked_down(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    seen, _ = probe(executor, raw_root, "print('hi')")
    host = seen["attrs"]["HostConfig"]
    config = seen["attrs"]["Config"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False
    assert config["User"] == f"{RUNNER_UID}:{RUNNER_UID}"
    assert host["Memory"] == host["MemorySwap"] == MEMORY_MB * 1024 * 1024
    assert host["NanoCpus"] == 1_000_000_000
    assert host["PidsLimit"] == PIDS
    assert host["LogConfig"]["Type"] == "none"
    ulimits = {u["Name"]: u["Hard"] for u in host["Ulimits"]}
    assert ulimits["fsize"] == 64 * 1024 * 1024
    assert ulimits["nofile"] == 256
    for target in ("/scratch", "/tmp"):
        options = host["Tmpfs"][target].split(",")
        assert {"noexec", "nosuid", "nodev"} <= set(options)
    assert f"size={SCRATCH_MB}m" in host["Tmpfs"]["/scratch"]
    mounts = {m["Destination"]: (m["Type"], m["RW"]) for m in seen["attrs"]["Mounts"]}
    assert mounts == {
        "/plan": ("bind", False),
        "/out": ("bind", True),
        "/data/population": ("bind", False),
    }
    assert config["Labels"][LABEL] == "1"
    assert config["Labels"]["jinyu.job"] == "probe"


PROBE_NETWORK = """
import json, socket
results = {}
for host, port in [("1.1.1.1", 80), ("127.0.0.1", 2375), ("172.17.0.1", 2375)]:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        results[host] = "connected"
    except OSError as exc:
        results[host] = type(exc).__name__
try:
    socket.getaddrinfo("pypi.org", 443)
    results["dns"] = "resolved"
except OSError as exc:
    results["dns"] = type(exc).__name__
results["interfaces"] = sorted(n for _, n in socket.if_nameindex())
json.dump(results, open("/out/probe.json", "w"))
"""


@pytest.mark.container
def test_network_is_unreachable(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    seen, _ = probe(executor, raw_root, PROBE_NETWORK)
    assert seen["1.1.1.1"] != "connected"
    assert seen["127.0.0.1"] != "connected"
    assert seen["172.17.0.1"] != "connected"
    assert seen["dns"] != "resolved"
    assert seen["interfaces"] == ["lo"]
    sql = (
        "SELECT 'x' AS county_code, COUNT(*) AS n, 0 AS age_sum "
        "FROM read_csv('http://1.1.1.1/data.csv')"
    )
    assert run_sql(executor, raw_root, sql).category == "engine_error"


PROBE_WRITES = """
import json, os, shutil, subprocess
results = {}
for path in ["/x", "/etc/x", "/usr/x", "/plan/x", "/data/population/x", "/data/x",
             "/opt/runner/lib/x", "/scratch/ok", "/tmp/ok", "/out/ok"]:
    try:
        with open(path, "w") as fh:
            fh.write("x")
        results[path] = "written"
    except OSError as exc:
        results[path] = type(exc).__name__
shutil.copy("/usr/bin/true", "/scratch/true")
os.chmod("/scratch/true", 0o755)
try:
    subprocess.run(["/scratch/true"], check=True)
    results["exec_scratch"] = "ran"
except OSError as exc:
    results["exec_scratch"] = type(exc).__name__
results["uid"] = os.getuid()
results["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
results["no_new_privs"] = [l.split()[1] for l in open("/proc/self/status")
                           if l.startswith("NoNewPrivs")][0]
json.dump(results, open("/out/probe.json", "w"))
"""


@pytest.mark.container
def test_nothing_is_writable_but_scratch_and_out(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    seen, _ = probe(executor, raw_root, PROBE_WRITES)
    for path in ["/x", "/etc/x", "/usr/x", "/plan/x", "/data/population/x", "/data/x",
                 "/opt/runner/lib/x"]:  # fmt: skip
        assert seen[path] in {"OSError", "PermissionError"}, path
    assert seen["/scratch/ok"] == seen["/tmp/ok"] == seen["/out/ok"] == "written"
    assert seen["exec_scratch"] == "PermissionError"  # noexec
    assert seen["uid"] == RUNNER_UID
    assert seen["caps"] == "0000000000000000"
    assert seen["no_new_privs"] == "1"
    assert not (raw_root / "population" / "x").exists()
    for target in ["/data/population/leak.csv", "/leak.csv", "/out/leak.csv"]:
        sql = f"COPY (SELECT * FROM persons) TO '{target}'"
        assert run_sql(executor, raw_root, sql).category == "engine_error"
    assert not (raw_root / "population" / "leak.csv").exists()


PROBE_DATA = """
import json, os
results = {"data": sorted(os.listdir("/data")),
           "other": os.path.exists("/data/social_insurance"),
           "plan": sorted(os.listdir("/plan"))}
json.dump(results, open("/out/probe.json", "w"))
"""


@pytest.mark.container
def test_only_the_plans_datasets_are_mounted(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    seen, _ = probe(executor, raw_root, PROBE_DATA)
    assert seen["data"] == ["population"]
    assert seen["other"] is False
    assert seen["plan"] == ["spec.json"]
    sql = (
        "SELECT 'x' AS county_code, COUNT(*) AS n, 0 AS age_sum "
        "FROM read_parquet('/data/social_insurance/contributions.parquet')"
    )
    assert run_sql(executor, raw_root, sql).category == "engine_error"


PROBE_FORK_BOMB = """
import json, os, time
children = 0
error = None
for _ in range(1000):
    try:
        pid = os.fork()
    except OSError as exc:
        error = type(exc).__name__
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children += 1
json.dump({"children": children, "error": error}, open("/out/probe.json", "w"))
"""


@pytest.mark.container
def test_fork_bomb_hits_the_pid_limit(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    began = time.monotonic()
    seen, _ = probe(executor, raw_root, PROBE_FORK_BOMB)
    assert seen["error"] == "BlockingIOError"  # EAGAIN from fork: the PID limit
    assert 0 < seen["children"] < PIDS
    assert time.monotonic() - began < 20  # ended when PID 1 exited, children with it


PROBE_MEMORY_BOMB = """
chunks = []
while True:
    chunks.append(bytearray(16 * 1024 * 1024))
"""


@pytest.mark.container
def test_memory_bomb_is_killed_and_reported_as_memory(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    seen, error = probe(executor, raw_root, PROBE_MEMORY_BOMB)
    assert error is not None and error.category == "memory"
    state = seen["attrs"]["State"]
    assert state["OOMKilled"] is True or state["ExitCode"] == 137
    # A query that outgrows DuckDB's share of the memory fails inside the engine.
    sql = "SELECT 'x' AS county_code, 1 AS n, list(i) AS age_sum FROM range(200000000) r(i)"
    assert run_sql(executor, raw_root, sql).category == "memory"


@pytest.mark.container
def test_long_query_is_killed_at_the_timeout(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor(job_timeout_s=3.0)
    sql = "SELECT 'x' AS county_code, 1 AS n, SUM(hash(i)) AS age_sum FROM range(1e13::BIGINT) t(i)"
    began = time.monotonic()
    error = run_sql(executor, raw_root, sql)
    assert error.category == "timeout"
    assert time.monotonic() - began < 15
    assert error.stats["exit"] == "timeout"  # type: ignore[attr-defined]


PROBE_SCRATCH = """
import errno, json
written = 0
error = None
with open("/scratch/fill", "wb") as fh:
    try:
        while True:
            fh.write(b"x" * 1024 * 1024)
            fh.flush()
            written += 1024 * 1024
    except OSError as exc:
        error = errno.errorcode.get(exc.errno)
json.dump({"written": written, "error": error}, open("/out/probe.json", "w"))
"""


@pytest.mark.container
def test_filling_scratch_stops_at_its_cap(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    seen, _ = probe(executor, raw_root, PROBE_SCRATCH)
    assert seen["error"] == "ENOSPC"
    assert seen["written"] <= SCRATCH_MB * 1024 * 1024
    sql = "COPY (SELECT i, repeat('x', 100) FROM range(10000000) r(i)) TO '/scratch/fill.csv'"
    assert run_sql(executor, raw_root, sql).category == "resource_limit"


PROBE_SYMLINK = """
import json, os
import pyarrow as pa, pyarrow.ipc
table = pa.table({"county_code": ["x"], "n": [1], "age_sum": [1]})
with pa.OSFile("/out/real.arrow", "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
    w.write_table(table)
# A relative link: were it followed on the host, it would read a valid result.
os.symlink("real.arrow", "/out/result.arrow")
json.dump({"status": "ok"}, open("/out/status.json", "w"))
"""


@pytest.mark.container
def test_output_symlink_is_not_followed(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    seen: dict[str, Any] = {}

    def hook(container: Any, out_dir: Path) -> None:
        seen["link"] = (out_dir / "result.arrow").is_symlink()
        seen["target_ok"] = (out_dir / "real.arrow").is_file()

    with pytest.raises(ExecutionFailed) as info:
        executor._run_spec(
            make_plan().runner_spec(),
            data_root=raw_root,
            job_id="symlink",
            entrypoint=["python3", "-c", PROBE_SYMLINK],
            hook=hook,
        )
    assert seen == {"link": True, "target_ok": True}
    assert info.value.category == "output_invalid"


PROBE_BIG_OUTPUT = """
with open("/out/result.arrow", "wb") as fh:
    fh.write(b"A" * (3 * 1024 * 1024))
"""


@pytest.mark.container
def test_oversized_output_is_refused(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    _, error = probe(executor, raw_root, PROBE_BIG_OUTPUT)
    assert error is not None and error.category == "output_too_large"
    # a real result over the cap is cut to fit, never failed (issue 20)
    sql = "SELECT i::VARCHAR AS county_code, i AS n, i AS age_sum FROM range(500000) r(i)"
    spec = spec_with(sql=sql, max_rows=1_000_000)
    result = executor._run_spec(spec, data_root=raw_root, job_id="big")
    assert result.stats["truncated"] is True
    assert 0 < result.table.num_rows < 500000


@pytest.mark.container
def test_sweep_removes_only_this_installations_leftovers(
    docker_client: Any, runner_image: str, make_executor: Any
) -> None:
    executor = make_executor()
    mine = docker_client.containers.create(
        runner_image,
        labels={LABEL: "1", HOME_LABEL: executor.home_label, "jinyu.job": "crashed"},
        network_mode="none",
    )
    other = docker_client.containers.create(
        runner_image,
        labels={LABEL: "1", HOME_LABEL: "someone-else", "jinyu.job": "running"},
        network_mode="none",
    )
    try:
        assert sweep(docker_client, home_label=executor.home_label) == 1
        ids = {c.id for c in docker_client.containers.list(all=True)}
        assert mine.id not in ids
        assert other.id in ids
    finally:
        other.remove(force=True)


@pytest.mark.container
def test_missing_image_is_docker_unavailable(docker_client: Any, tmp_path: Path) -> None:
    executor = DockerExecutor(
        small_settings(tmp_path), client=docker_client, image="jinyu-runner:does-not-exist"
    )
    with pytest.raises(DockerUnavailable):
        executor.run(make_plan(), data_root=write_root(tmp_path / "d", synthetic=False), job_id="j")


def _stamp(seconds_ago: float) -> str:
    import datetime as dt

    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%S.123456789Z")


@pytest.mark.parametrize(
    ("status", "stamp", "ago", "stale"),
    [
        ("running", "StartedAt", 10, False),  # another executor's job
        ("running", "StartedAt", 1000, True),  # ran past any limit
        ("exited", "FinishedAt", 5, False),  # its owner reads it now
        ("exited", "FinishedAt", 120, True),
        ("created", None, 0, True),  # created long ago, never started
    ],
)
def test_startup_sweep_leaves_other_executors_live_jobs(
    status: str, stamp: str | None, ago: int, stale: bool
) -> None:
    from sandbox.executors.docker.containers import _is_stale

    # the times are taken now, not when the tests were collected (which may be minutes ago)
    state = {"Status": status, **({stamp: _stamp(ago)} if stamp else {})}
    attrs = {"State": state, "Created": _stamp(1000)}
    assert _is_stale(attrs, max_age_s=600) is stale
