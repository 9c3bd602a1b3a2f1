"""The host side of a run: /out only ever in RAM, and the runs of dead processes
removed at start (issue 15).

/out is a size-capped tmpfs of its own (as root), or where mount(2) is refused a
private directory under /dev/shm (a RAM filesystem, checked in the mount table), or
the executor refuses to start. Each run directory is flock-ed by the process that made
it; a start-up claims and removes those whose lock is free (their process died),
whatever their age, and leaves those of live processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import COLUMNS, MEMORY_MB, probe
from executor_helpers import expected_counts, make_plan

from sandbox.errors import ExecutionFailed, SystemFailure
from sandbox.executors import ramfs
from sandbox.executors.docker import HOME_LABEL, LABEL, home_label, hostfs
from sandbox.settings import Settings

HERE = Path(__file__).resolve().parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SHM_IS_RAM = ramfs.in_ram(ramfs.SHM)
needs_shm = pytest.mark.skipif(not SHM_IS_RAM, reason="/dev/shm is not a RAM filesystem here")

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


@pytest.fixture()
def label(tmp_path: Path) -> Iterator[str]:
    """This test's installation label; its RAM fallback directory is removed after."""
    name = home_label(Settings(home=tmp_path / "home"))
    yield name
    shutil.rmtree(hostfs.shm_root(name), ignore_errors=True)


# -- where /out lives ---------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="mount(2) needs root")
def test_out_is_a_tmpfs_of_its_own_where_mount_works(tmp_path: Path, label: str) -> None:
    runs = tmp_path / "runs"
    backing = hostfs.choose_backing(runs, label)
    assert backing.kind == hostfs.TMPFS
    assert list(runs.iterdir()) == []  # the mount probe is undone
    run = hostfs.new_run(runs, backing, 1 << 20)
    try:
        assert run.out == run.path / "out" and os.path.ismount(run.out)
        assert ramfs.fs_type(run.out) == "tmpfs"
    finally:
        hostfs.remove_run(run)
    assert not run.path.exists() and str(runs) not in Path("/proc/self/mounts").read_text()


@needs_shm
def test_out_falls_back_to_a_private_directory_in_ram(tmp_path: Path, label: str) -> None:
    runs = tmp_path / "runs"
    backing = hostfs.choose_backing(runs, label, mount_ok=False)
    assert backing.kind == hostfs.SHM
    assert backing.shm_dir == Path("/dev/shm") / f"jinyu-{label}"
    st = backing.shm_dir.lstat()
    assert st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o700
    run = hostfs.new_run(runs, backing, 1 << 20)
    try:
        assert run.out == backing.shm_dir / run.path.name
        assert ramfs.in_ram(run.out) and not (run.path / "out").exists()
    finally:
        hostfs.remove_run(run)
    assert not run.out.exists() and not run.path.exists()


def test_no_ram_for_out_refuses_to_start(tmp_path: Path, label: str) -> None:
    disk = tmp_path / "not-shm"
    disk.mkdir()
    if ramfs.in_ram(disk):
        pytest.skip("the test directory itself is in RAM here")
    with pytest.raises(SystemFailure) as info:
        hostfs.choose_backing(tmp_path / "runs", label, mount_ok=False, shm=disk)
    assert info.value.code == "OUT_NOT_IN_RAM"
    # /dev/shm on a disk (as a mount table may say) is refused the same way
    table = "1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 8:2 / /dev/shm rw - ext4 /dev/sdb rw\n"
    with pytest.raises(SystemFailure) as info:
        hostfs.choose_backing(tmp_path / "runs", label, mount_ok=False, mountinfo=table)
    assert info.value.code == "OUT_NOT_IN_RAM"
    assert not hostfs.shm_root(label).exists()  # nothing was made for exact results


@needs_shm
def test_a_planted_fallback_directory_is_refused(tmp_path: Path, label: str) -> None:
    # on /dev/shm anyone may create names: a link there, or a directory others may
    # enter, is not where exact results go
    target = hostfs.shm_root(label)
    target.symlink_to(tmp_path)
    try:
        with pytest.raises(SystemFailure) as info:
            hostfs.choose_backing(tmp_path / "runs", label, mount_ok=False)
        assert info.value.code == "OUT_NOT_IN_RAM"
    finally:
        target.unlink()
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    with pytest.raises(SystemFailure):
        hostfs.choose_backing(tmp_path / "runs", label, mount_ok=False)


# -- live and dead runs (real processes, no Docker) ---------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from sandbox.executors.docker import hostfs
runs, label, mount_ok = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
backing = hostfs.choose_backing(runs, label, mount_ok=None if mount_ok else False)
run = hostfs.new_run(runs, backing, 1 << 20)
(run.out / "result.arrow").write_bytes(b"ARROW1 exact")
print(run.path, run.out, flush=True)
time.sleep(600)
"""


def _holder(runs: Path, label: str, mount_ok: bool) -> tuple[subprocess.Popen[str], Path, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(runs), label, "1" if mount_ok else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    with proc.stdout:
        path, out = proc.stdout.readline().split()
    return proc, Path(path), Path(out)


def _backings() -> list[Any]:
    return [
        pytest.param(True, marks=pytest.mark.skipif(not IS_ROOT, reason="needs root")),
        pytest.param(False, marks=needs_shm),
    ]


@pytest.mark.parametrize("mount_ok", _backings(), ids=["tmpfs", "shm"])
def test_runs_of_dead_processes_are_claimed_and_live_ones_left(
    tmp_path: Path, label: str, mount_ok: bool
) -> None:
    runs = tmp_path / "runs"
    alive, alive_run, alive_out = _holder(runs, label, mount_ok)
    dead, dead_run, dead_out = _holder(runs, label, mount_ok)
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait(10)
        backing = hostfs.choose_backing(runs, label, mount_ok=None if mount_ok else False)
        # this process's own live run is not claimed either
        mine = hostfs.new_run(runs, backing, 1 << 20)
        claimed = hostfs.claim_dead(runs, backing)
        assert [r.path for r in claimed] == [dead_run]
        assert hostfs.claim_dead(runs, backing) == []  # claimed: locked by us now
        assert not hostfs.is_live(dead_run.parent / "job-gone")
        assert hostfs.is_live(alive_run) and hostfs.is_live(mine.path)
        for run in claimed:
            hostfs.remove_run(run)
        hostfs.sweep_shm(backing, runs)
        assert not dead_run.exists() and not dead_out.exists()
        assert (alive_out / "result.arrow").is_file() and mine.path.is_dir()
        hostfs.remove_run(mine)
        alive.kill()
        alive.wait(10)
        for run in hostfs.claim_dead(runs, backing):
            hostfs.remove_run(run)
        assert list(runs.iterdir()) == []
        assert str(runs) not in Path("/proc/self/mounts").read_text()
    finally:
        for proc in (alive, dead):
            proc.kill()
            proc.wait(10)
        for run in hostfs.claim_dead(runs, hostfs.Backing(hostfs.TMPFS, hostfs.shm_root(label))):
            hostfs.remove_run(run)


def test_an_unlocked_run_directory_of_any_age_is_removed(tmp_path: Path, label: str) -> None:
    # what older versions (and a crash before any lock) leave: any age, removed at once
    runs = tmp_path / "runs"
    leftover = runs / "job-crashed1"
    (leftover / "out").mkdir(parents=True)
    (leftover / "out" / "result.arrow").write_bytes(b"ARROW1 exact aggregates")
    backing = hostfs.Backing(hostfs.TMPFS, hostfs.shm_root(label))
    [run] = hostfs.claim_dead(runs, backing)
    hostfs.remove_run(run)
    assert list(runs.iterdir()) == []


# -- with containers --------------------------------------------------------------------


@pytest.mark.container
def test_out_cannot_fill_the_hosts_disk(make_executor: Any, raw_root: Path) -> None:
    if not IS_ROOT:
        pytest.skip("the size-capped /out needs root on the host")
    executor = make_executor(output_max_bytes=1024 * 1024)
    seen, _ = probe(executor, raw_root, PROBE_FILL_OUT)
    assert seen["error"] == "ENOSPC"
    assert seen["written"] <= 3 * 1024 * 1024  # 2 x output_max_bytes + 1 MiB


@pytest.mark.container
@needs_shm
def test_the_ram_fallback_runs_a_plan(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor(mount_ok=False)
    result = executor.run(make_plan(), data_root=raw_root, job_id="shm-1")
    assert result.table.column_names == COLUMNS
    got = {r["county_code"]: (r["n"], r["age_sum"]) for r in result.table.to_pylist()}
    assert got == expected_counts(raw_root)
    assert result.stats["out_in"] == "shm"
    assert executor.backing.kind == hostfs.SHM


@pytest.mark.container
@needs_shm
def test_filling_the_ram_fallback_is_capped_by_the_memory_limit(
    make_executor: Any, raw_root: Path
) -> None:
    # tmpfs pages are charged to the memory cgroup of the writer: the container's
    seen: dict[str, Any] = {}

    def hook(container: Any, out_dir: Path) -> None:
        container.reload()
        seen["oom"] = container.attrs["State"]["OOMKilled"]
        seen["in_ram"] = ramfs.in_ram(out_dir)
        seen["bytes"] = sum(p.stat().st_size for p in out_dir.iterdir())

    executor = make_executor(mount_ok=False)
    with pytest.raises(ExecutionFailed) as info:
        executor._run_spec(
            make_plan().runner_spec(),
            data_root=raw_root,
            job_id="fill",
            entrypoint=["python3", "-c", PROBE_FILL_OUT],
            hook=hook,
        )
    assert info.value.category == "memory" and seen["oom"] is True
    assert seen["in_ram"] is True
    assert seen["bytes"] <= MEMORY_MB * 1024 * 1024


VICTIM = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from pathlib import Path
from docker_helpers import small_settings
from executor_helpers import make_plan
from sandbox.executors.docker import DockerExecutor
tmp, image, data, mount_ok = Path(sys.argv[3]), sys.argv[4], Path(sys.argv[5]), sys.argv[6]
executor = DockerExecutor(
    small_settings(tmp, job_timeout_s=120.0),
    image=image,
    mount_ok=None if mount_ok == "1" else False,
)
executor._run_spec(
    make_plan().runner_spec(),
    data_root=data,
    job_id="victim",
    entrypoint=["python3", "-c", "open('/out/result.arrow', 'wb').write(b'x'); "
                "import time; time.sleep(120)"],
)
"""


@pytest.mark.container
@pytest.mark.parametrize("mount_ok", _backings(), ids=["tmpfs", "shm"])
def test_start_removes_a_dead_processes_run_and_leaves_a_live_ones(
    make_executor: Any,
    raw_root: Path,
    docker_client: Any,
    runner_image: str,
    tmp_path: Path,
    mount_ok: bool,
) -> None:
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            VICTIM,
            str(HERE),
            str(HERE.parent),
            str(tmp_path),
            runner_image,
            str(raw_root),
            "1" if mount_ok else "0",
        ]
    )
    try:
        first = make_executor(job_timeout_s=120.0, mount_ok=None if mount_ok else False)
        label = [f"{LABEL}=1", f"{HOME_LABEL}={first.home_label}"]

        def theirs() -> list[Any]:
            return list(docker_client.containers.list(filters={"label": label}))

        deadline = time.monotonic() + 60
        while not theirs():
            assert other.poll() is None and time.monotonic() < deadline, "no victim container"
            time.sleep(0.1)
        [container] = theirs()
        [run] = [p for p in first.runs_dir.iterdir() if p.name.startswith("job-")]
        # another live process's job: a start-up leaves it, however young or old
        first.start()
        assert [c.id for c in theirs()] == [container.id] and run.is_dir()
        other.send_signal(signal.SIGKILL)
        other.wait(10)
        # its process is dead: the next start removes its container, /out and run
        second = make_executor(job_timeout_s=120.0, mount_ok=None if mount_ok else False)
        second.start()
        assert theirs() == [] and not run.exists()
        found = [
            p
            for root in (tmp_path / "home", hostfs.shm_root(second.home_label))
            if root.exists()
            for p in root.rglob("result.arrow")
        ]
        assert found == []  # and the fixture checks that nothing else is left
    finally:
        other.kill()
        other.wait(10)
