"""The Docker executor: real containers, hostile jobs, nothing leaked.

Each container test runs a hostile or broken job through the TEST-ONLY path
``DockerExecutor._run_spec`` (raw SQL, or a raw Python entry point that probes the
box and writes what it saw to /out/probe.json) and checks that it is contained:
the failure has only a category, no data value appears anywhere, and after the test
no container (by label), run directory or volume is left behind.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from executor_helpers import SECRET, expected_counts, make_plan, write_root

from sandbox.errors import DockerUnavailable, ExecutionFailed, Refused
from sandbox.executors.docker import (
    HOME_LABEL,
    LABEL,
    RUNNER_UID,
    DockerExecutor,
    FairSlots,
    sweep,
)
from sandbox.executors.output import read_result, read_status
from sandbox.settings import Settings

COLUMNS = ["county_code", "n", "age_sum"]
MEMORY_MB = 256
PIDS = 32
SCRATCH_MB = 16


def small_settings(tmp_path: Path, **changes: Any) -> Settings:
    base = Settings(
        home=tmp_path / "home",
        concurrency=2,
        job_timeout_s=30.0,
        memory_mb=MEMORY_MB,
        cpus=1.0,
        pids=PIDS,
        scratch_mb=SCRATCH_MB,
        file_size_mb=64,
        output_max_bytes=1024 * 1024,
        warm_runners=0,
    )
    return base.replace(**changes)


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = make_plan().runner_spec()
    spec.update(changes)
    return spec


# -- in-process (no container) -------------------------------------------------------


def test_fair_slots_bound_concurrency_and_serve_in_arrival_order() -> None:
    slots = FairSlots(2)
    order: list[int] = []
    peak = [0]
    lock = threading.Lock()
    gate = threading.Event()

    def job(i: int) -> None:
        with slots.slot():
            with lock:
                order.append(i)
                peak[0] = max(peak[0], slots.busy)
            gate.wait(5)
            time.sleep(0.01)

    threads = []
    for i in range(8):
        t = threading.Thread(target=job, args=(i,))
        t.start()
        threads.append(t)
        # Let each thread queue up before the next arrives, so arrival order is known.
        deadline = time.monotonic() + 5
        while slots.busy + slots.waiting < i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(10)
    assert order == list(range(8))
    assert peak[0] == 2


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


# -- containers ------------------------------------------------------------------------


@pytest.fixture()
def make_executor(docker_client: Any, runner_image: str, tmp_path: Path) -> Iterator[Any]:
    """A factory of executors on small limits; after the test, nothing may be left."""
    made: list[DockerExecutor] = []
    volumes_before = {v.id for v in docker_client.volumes.list()}

    def factory(**changes: Any) -> DockerExecutor:
        executor = DockerExecutor(
            small_settings(tmp_path, **changes), client=docker_client, image=runner_image
        )
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        executor.close()
        left = docker_client.containers.list(
            all=True, filters={"label": [f"{LABEL}=1", f"{HOME_LABEL}={executor.home_label}"]}
        )
        assert left == [], "a runner container was left behind"
        runs = executor.runs_dir
        assert not runs.exists() or list(runs.iterdir()) == [], "a run directory was left behind"
        mounts = Path("/proc/self/mounts").read_text()
        assert str(runs) not in mounts, "an output mount was left behind"
    assert {v.id for v in docker_client.volumes.list()} <= volumes_before, "a volume was left"


def probe(
    executor: DockerExecutor, data_root: Path, code: str, **kwargs: Any
) -> tuple[dict[str, Any], ExecutionFailed | None]:
    """Run a Python one-liner in the runner container; return what it wrote and the error."""
    seen: dict[str, Any] = {}

    def hook(container: Any, out_dir: Path) -> None:
        container.reload()
        seen["attrs"] = container.attrs
        path = out_dir / "probe.json"
        if path.is_file() and not path.is_symlink():
            seen.update(json.loads(path.read_text()))

    error = None
    try:
        executor._run_spec(
            make_plan().runner_spec(),
            data_root=data_root,
            job_id="probe",
            entrypoint=["python3", "-c", code],
            hook=hook,
            **kwargs,
        )
    except ExecutionFailed as exc:
        error = exc
    return seen, error


def run_sql(executor: DockerExecutor, data_root: Path, sql: str, **changes: Any) -> ExecutionFailed:
    with pytest.raises(ExecutionFailed) as info:
        executor._run_spec(spec_with(sql=sql, **changes), data_root=data_root, job_id="hostile")
    assert_no_secret(info.value)
    return info.value


def assert_no_secret(exc: ExecutionFailed) -> None:
    texts = [str(exc), repr(exc), json.dumps(exc.to_dict()), json.dumps(getattr(exc, "stats", {}))]
    cause = exc.__cause__
    while cause is not None:
        texts.append(str(cause))
        cause = cause.__cause__
    assert not any(SECRET in text for text in texts)


@pytest.mark.container
def test_runs_a_plan_and_returns_exact_numbers(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    result = executor.run(make_plan(), data_root=raw_root, job_id="ok-1")
    assert result.table.column_names == COLUMNS
    got = {r["county_code"]: (r["n"], r["age_sum"]) for r in result.table.to_pylist()}
    assert got == expected_counts(raw_root)
    assert result.stats["exit"] == "ok"
    assert result.stats["exit_code"] == 0
    assert result.stats["limits"]["memory_mb"] == MEMORY_MB
    assert result.stats["peak_rss_kb"] > 0


@pytest.mark.container
def test_refuses_data_marked_synthetic(make_executor: Any, synthetic_root: Path) -> None:
    with pytest.raises(Refused) as info:
        make_executor().run(make_plan(), data_root=synthetic_root, job_id="syn")
    assert info.value.code == "SYNTHETIC_DATA_REFUSED"


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


PROBE_FILL_OUT = """
import errno, json, os
written, error = 0, None
try:
    for i in range(100000):
        with open(f"/out/f{i}", "wb") as fh:
            fh.write(b"x" * 256 * 1024)
        written += 256 * 1024
except OSError as exc:
    error = errno.errorcode.get(exc.errno)
for name in os.listdir("/out"):
    os.unlink(os.path.join("/out", name))
json.dump({"written": written, "error": error}, open("/out/probe.json", "w"))
"""


@pytest.mark.container
def test_out_cannot_fill_the_hosts_disk(make_executor: Any, raw_root: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("the size-capped /out needs root on the host")
    executor = make_executor(output_max_bytes=1024 * 1024)
    seen, _ = probe(executor, raw_root, PROBE_FILL_OUT)
    assert seen["error"] == "ENOSPC"
    assert seen["written"] <= 3 * 1024 * 1024  # 2 x output_max_bytes + 1 MiB


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
def test_conversion_error_reports_only_its_category(
    make_executor: Any, raw_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    executor = make_executor()
    sql = (
        "SELECT county_code, COUNT(*) AS n, SUM(CAST(name AS INTEGER)) AS age_sum "
        "FROM persons GROUP BY 1"
    )
    plan = make_plan(sql=sql)
    with pytest.raises(ExecutionFailed) as info:
        executor.run(plan, data_root=raw_root, job_id="cast")
    assert info.value.category == "engine_error"
    assert info.value.to_dict() == {
        "error": {
            "code": "EXECUTION_FAILED",
            "message": "The query failed in the runner: the SQL engine failed "
            "(the engine's message is withheld).",
            "hint": "",
            "category": "engine_error",
        }
    }
    assert_no_secret(info.value)
    assert SECRET not in caplog.text


@pytest.mark.container
def test_jobs_run_concurrently_up_to_the_setting(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor(concurrency=2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def job(i: int) -> None:
        try:
            results.append(executor.run(make_plan(), data_root=raw_root, job_id=f"c{i}"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(results) == 3
    assert all(r.table.num_rows == 3 for r in results)
    assert max(r.stats["queued_s"] for r in results) > 0  # the third one waited


@pytest.mark.container
def test_warm_runner_serves_one_job_then_is_removed(
    make_executor: Any, raw_root: Path, docker_client: Any
) -> None:
    executor = make_executor(warm_runners=1)
    first = executor.run(make_plan(), data_root=raw_root, job_id="w1")
    assert first.stats["warm"] is False
    deadline = time.monotonic() + 30
    while executor.pool_size < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert executor.pool_size == 1
    label = [f"{LABEL}=1", f"{HOME_LABEL}={executor.home_label}"]
    (warm,) = docker_client.containers.list(filters={"label": label})
    assert warm.attrs["HostConfig"]["NetworkMode"] == "none"
    assert {m["Destination"] for m in warm.attrs["Mounts"]} == {
        "/plan",
        "/out",
        "/data/population",
    }
    second = executor.run(make_plan(), data_root=raw_root, job_id="w2")
    assert second.stats["warm"] is True
    got = {r["county_code"]: (r["n"], r["age_sum"]) for r in second.table.to_pylist()}
    assert got == expected_counts(raw_root)
    assert warm.id not in {c.id for c in docker_client.containers.list(all=True)}
    # A hostile job on a warm runner is contained the same way.
    sql = (
        "SELECT county_code, COUNT(*) AS n, SUM(CAST(name AS INTEGER)) AS age_sum "
        "FROM persons GROUP BY 1"
    )
    while executor.pool_size < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ExecutionFailed) as info:
        executor.run(make_plan(sql=sql), data_root=raw_root, job_id="w3")
    assert info.value.category == "engine_error"
    assert info.value.stats["warm"] is True  # type: ignore[attr-defined]
    assert_no_secret(info.value)


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


# -- reading the output directory (host side, no container) --------------------------


def write_arrow(path: Path, columns: list[str] | None = None, rows: int = 1) -> None:
    import pyarrow as pa
    import pyarrow.ipc

    names = columns or COLUMNS
    table = pa.table({name: list(range(rows)) for name in names})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read(out: Path, max_bytes: int = 1 << 20) -> Any:
    return read_result(out, columns=COLUMNS, max_rows=10, max_bytes=max_bytes)


def test_read_result_accepts_a_regular_file(tmp_path: Path) -> None:
    write_arrow(tmp_path / "result.arrow", rows=3)
    assert read(tmp_path).num_rows == 3


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "directory", "missing", "junk"])
def test_read_result_refuses_anything_but_a_single_regular_file(tmp_path: Path, kind: str) -> None:
    import os

    outside = tmp_path / "outside.arrow"
    write_arrow(outside)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "result.arrow"
    if kind == "symlink":
        target.symlink_to(outside)
    elif kind == "hardlink":
        os.link(outside, target)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "junk":
        target.write_bytes(b"not arrow at all")
    with pytest.raises(ExecutionFailed) as info:
        read(out)
    assert info.value.category == "output_invalid"


def test_read_result_refuses_an_oversized_file(tmp_path: Path) -> None:
    write_arrow(tmp_path / "result.arrow", rows=10)
    size = (tmp_path / "result.arrow").stat().st_size
    with pytest.raises(ExecutionFailed) as info:
        read(tmp_path, max_bytes=size - 1)
    assert info.value.category == "output_too_large"


@pytest.mark.parametrize(
    ("columns", "rows"),
    [(["county_code", "n"], 1), (["n", "county_code", "age_sum"], 1), (COLUMNS, 11)],  # fmt: skip
)
def test_read_result_checks_the_plans_shape_again(
    tmp_path: Path, columns: list[str], rows: int
) -> None:
    write_arrow(tmp_path / "result.arrow", columns=columns, rows=rows)
    with pytest.raises(ExecutionFailed) as info:
        read(tmp_path)
    assert info.value.category == "plan_mismatch"


def test_read_status_keeps_only_known_fields(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text(
        json.dumps({"status": "failed", "category": "memory", "message": SECRET, "peak_rss_kb": 5})
    )
    assert read_status(tmp_path) == {"status": "failed", "category": "memory", "peak_rss_kb": 5}
    (tmp_path / "status.json").write_text(json.dumps({"status": "failed", "category": SECRET}))
    assert read_status(tmp_path) == {"status": "failed"}
    (tmp_path / "status.json").write_text("x" * 10_000)
    assert read_status(tmp_path) == {}


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
    from sandbox.executors.docker import _is_stale

    # the times are taken now, not when the tests were collected (which may be minutes ago)
    state = {"Status": status, **({stamp: _stamp(ago)} if stamp else {})}
    attrs = {"State": state, "Created": _stamp(1000)}
    assert _is_stale(attrs, max_age_s=600) is stale


# -- issue 20: the group cap is no oracle ------------------------------------------------

ATTACK_CAP = 50


def _attack_root(root: Path, income: float) -> Path:
    """ATTACK_CAP occupations of 20 people each, and one target person (their own
    occupation) with the given income: 'raw' data, only the container reads it."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(f"p{i:05d}", f"occ-{i % ATTACK_CAP:02d}", 1000.0 + i) for i in range(20 * ATTACK_CAP)]
    rows.append(("p-target", "target-occupation", income))
    n = len(rows)
    table = pa.table(
        {
            "person_id": [r[0] for r in rows],
            "name": [f"name-{i}" for i in range(n)],
            "id_number": [f"id-{i}" for i in range(n)],
            "county_code": ["140105"] * n,
            "sex": ["F"] * n,
            "age": pa.array([40] * n, pa.int32()),
            "household_type": ["single"] * n,
            "employment": ["employed"] * n,
            "occupation": [r[1] for r in rows],
            "monthly_income": [r[2] for r in rows],
            "registered_on": pa.array([dt.date(2020, 1, 1)] * n, pa.date32()),
        }
    )
    path = root / "population" / "persons.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({b"jinyu.fabricated": b"true"}), path)
    path.chmod(0o644)
    return root


@pytest.mark.container
def test_the_group_cap_attack_reads_nothing(
    make_executor: Any, tmp_path: Path, catalog: Any, grants: Any
) -> None:
    """Issue 20's attack: calibrate a filter so the exact group count of a private-key
    GROUP BY sits at the cap, then add one person with an OR filter on their income.
    Before the fix the job failed (plan_mismatch) iff the income was in the range."""
    import dataclasses

    from sandbox.compiler import compile_query
    from sandbox.privacy import plan_cost, release

    grant = next(g for g in grants.grants if g.id == "g-jinshu-employment")
    dataset = next(d for d in catalog.datasets if d.id == "population")
    sql = (
        "SELECT occupation, sex, COUNT(*) AS n FROM persons WHERE occupation LIKE 'occ-%' "
        "OR (occupation = 'target-occupation' AND monthly_income BETWEEN 4000 AND 6000) "
        "GROUP BY occupation, sex"
    )
    plan = dataclasses.replace(
        compile_query(sql, catalog=catalog, grant=grant), max_groups=ATTACK_CAP
    )
    assert plan.private_keys
    cost = plan_cost(plan, epsilon=1.0, delta=1e-6, dataset=dataset, grant=grant)
    executor = make_executor()
    seen: dict[float, set[tuple[Any, ...]]] = {}
    for income in (5000.0, 9000.0):  # in the range: 51 exact groups; outside: 50
        root = _attack_root(tmp_path / f"income-{int(income)}", income)
        outcomes = set()
        for run in range(3):
            try:
                exact = executor.run(plan, data_root=root, job_id=f"attack-{int(income)}-{run}")
                noisy = release(plan, exact.table, cost)
            except ExecutionFailed as exc:  # what the attack read before the fix
                outcomes.add(("failed", exc.category, exc.code, None))
                continue
            rows = noisy.table.num_rows
            outcomes.add(("noised", None, None, rows <= ATTACK_CAP))
        seen[income] = outcomes
    assert seen[5000.0] == seen[9000.0] == {("noised", None, None, True)}
