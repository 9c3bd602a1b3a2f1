"""Run one system's process and measure its memory.

Two numbers, both for the whole process, warm-up and every run included:

- ``maxrss_kb``: ``ru_maxrss`` from ``wait4`` on the process: the peak resident set
  of the process itself or of the largest child it waited for (exact, kernel-kept);
- ``tree_peak_kb``: the peak of the summed resident set of the process and all its
  descendants, sampled from /proc every ``interval`` seconds (catches children that
  are not waited for, such as Spark's JVM; can miss a spike shorter than a sample).

The reported peak is the larger of the two. A container's memory is not a child of
this process: the container executor reports it itself (``container_peak_kb``).

With ``memory_cap_bytes`` the process tree runs under a memory cap (bench/memcap.py:
its own memory cgroup, else ``RLIMIT_AS``): one that outgrows it is killed (or gets
MemoryError) and ``oom`` says so, instead of the machine running out of memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.memcap import MemoryCap, make_cap

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Measured:
    returncode: int
    wall_s: float
    maxrss_kb: int
    tree_peak_kb: int
    timed_out: bool
    oom: bool = False  # killed by (or, under RLIMIT_AS, likely failed at) the memory cap
    cap: str = ""  # how the cap was applied ("cgroup v1", "RLIMIT_AS", "" for none)
    cgroup_peak_kb: int | None = None  # the cap cgroup's own peak (page cache included)

    @property
    def peak_kb(self) -> int:
        return max(self.maxrss_kb, self.tree_peak_kb)


def run_measured(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    stderr_path: Path,
    interval: float = 0.2,
    memory_cap_bytes: int | None = None,
    rlimit_ok: bool = True,
) -> Measured:
    stderr_path.parent.mkdir(parents=True, exist_ok=True)
    cap = make_cap(memory_cap_bytes, rlimit_ok=rlimit_ok) if memory_cap_bytes else None
    try:
        m = _run(cmd, cwd, env, timeout_s, stderr_path, interval, cap)
    finally:
        if cap is not None:
            cap.close()
    return m


def _run(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    stderr_path: Path,
    interval: float,
    cap: MemoryCap | None,
) -> Measured:
    with stderr_path.open("wb") as err:
        began = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=err,
            stderr=err,
            start_new_session=True,
            preexec_fn=cap.preexec if cap is not None else None,  # noqa: PLW1509
        )
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(interval):
                peak[0] = max(peak[0], tree_rss_kb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        fired: list[bool] = []

        def expire() -> None:
            fired.append(True)
            _kill_group(proc.pid)

        timer = threading.Timer(timeout_s, expire)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            done.set()
            sampler.join()
        _kill_group(proc.pid)  # leftovers (a JVM) of this process group only
        proc.returncode = os.waitstatus_to_exitcode(status)
    oom = False
    if cap is not None and not fired:
        oom = cap.oom_killed()  # under RLIMIT_AS the caller reads MemoryError instead
    cgroup_peak = cap.peak_bytes() if cap is not None else None
    return Measured(
        returncode=proc.returncode,
        wall_s=time.perf_counter() - began,
        maxrss_kb=int(usage.ru_maxrss),
        tree_peak_kb=peak[0],
        timed_out=bool(fired),
        oom=oom,
        cap=cap.kind if cap is not None else "",
        cgroup_peak_kb=None if cgroup_peak is None else cgroup_peak // 1024,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def tree_rss_kb(root: int) -> int:
    """Summed RSS of ``root`` and its descendants (0 once it is gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
                total += int(fh.read().split()[1]) * PAGE_KB
        except OSError:
            pass
        todo.extend(children.get(pid, ()))
    return total
