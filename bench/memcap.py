"""A memory cap on one benchmarked process (and its children), so an over-memory peer
is killed and reported instead of taking the machine down.

Preferred: a memory cgroup of its own, made a child of the cgroup this process runs
in (cgroup v1 ``/sys/fs/cgroup/memory``, or v2 ``/sys/fs/cgroup``; needs write
access there, e.g. root). Its limit covers the whole process tree, a JVM included;
the kernel OOM-kills inside it, and it records its own peak (``peak_bytes``), which
also counts the tree's page cache. Fallback where no cgroup can be made:
``RLIMIT_AS`` on the process (allocation fails with MemoryError instead of a kill),
only for processes that do not reserve huge address space up front (not a JVM).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_counter = itertools.count()


class MemoryCap:
    """One cap. ``preexec`` runs in the child before exec; ``close`` after it ended."""

    def __init__(self, limit_bytes: int, cgroup: Path | None, version: int) -> None:
        self.limit_bytes = int(limit_bytes)
        self.cgroup = cgroup  # None: RLIMIT_AS
        self.version = version

    @property
    def kind(self) -> str:
        return f"cgroup v{self.version}" if self.cgroup is not None else "RLIMIT_AS"

    def preexec(self) -> None:
        """In the child: join the cgroup, or set RLIMIT_AS (async-signal-safe enough:
        one open/write, or one setrlimit)."""
        if self.cgroup is not None:
            fd = os.open(str(self.cgroup / "cgroup.procs"), os.O_WRONLY)
            try:
                os.write(fd, b"0")  # 0: the writing process
            finally:
                os.close(fd)
        else:
            resource.setrlimit(resource.RLIMIT_AS, (self.limit_bytes, self.limit_bytes))

    def oom_killed(self) -> bool:
        """Did the kernel kill something in the cgroup for memory? (False for RLIMIT_AS:
        the process sees MemoryError; the caller reads that from its answer.)"""
        if self.cgroup is None:
            return False
        if self.version == 1:
            text = _read(self.cgroup / "memory.oom_control")
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill" and value.strip().isdigit():
                    return int(value) > 0
            return False  # (memory.failcnt also counts page-cache reclaim: not a kill)
        for line in _read(self.cgroup / "memory.events").splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def peak_bytes(self) -> int | None:
        if self.cgroup is None:
            return None
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        text = _read(self.cgroup / name).strip()
        return int(text) if text.isdigit() else None

    def close(self) -> None:
        """Remove the cgroup (retrying while the killed tree's last tasks go)."""
        if self.cgroup is None:
            return
        for _ in range(50):
            try:
                self.cgroup.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def make_cap(limit_bytes: int, *, rlimit_ok: bool, root: Path = CGROUP_ROOT) -> MemoryCap | None:
    """A cap of ``limit_bytes``: a cgroup if one can be made, else RLIMIT_AS if
    ``rlimit_ok``, else None (the process runs uncapped; the caller says so)."""
    made = _make_cgroup(limit_bytes, root)
    if made is not None:
        return MemoryCap(limit_bytes, *made)
    return MemoryCap(limit_bytes, None, 0) if rlimit_ok else None


def _make_cgroup(limit_bytes: int, root: Path) -> tuple[Path, int] | None:
    own = _own_cgroups()
    name = f"jinyu-bench-{os.getpid()}-{next(_counter)}"
    v1 = root / "memory"
    if (v1 / "memory.limit_in_bytes").exists() and "memory" in own:
        path = v1 / own["memory"].lstrip("/") / name
        try:
            path.mkdir()
        except OSError:
            return None
        try:
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():  # no swap either (only with swap accounting on)
                with contextlib.suppress(OSError):
                    swap.write_text(str(limit_bytes))
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return path, 1
    if (root / "cgroup.controllers").exists() and "" in own:
        path = root / own[""].lstrip("/") / name
        try:
            path.mkdir()
            (path / "memory.max").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return path, 2
    return None


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path ("" for the v2 unified hierarchy)."""
    found: dict[str, str] = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            found[controller] = parts[2]
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
