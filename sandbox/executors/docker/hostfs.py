"""What the Docker executor does on the host's filesystem for a runner container.

Each job gets a private run directory under ``<home>/runs`` holding its ``plan/``
(the spec, mounted read-only) and ``out/`` (mounted writable). As root, ``out/`` is a
size-capped tmpfs of its own (``mount(2)`` through libc), so a runner cannot fill
the host's disk through it, whatever it writes; otherwise a plain directory the
runner's uid may write. Run directories left by a crash are swept at start-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from sandbox_runner import contract
from sandbox_runner.contract import RUNNER_UID

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MNT_DETACH = 2, 4, 8, 2


def prepare_dirs(plan_dir: Path, out_dir: Path, out_cap: int) -> bool:
    """Make a run's plan/ and out/ directories; True if out/ is a size-capped tmpfs."""
    plan_dir.mkdir(mode=0o755)
    out_dir.mkdir(mode=0o700)
    plan_dir.chmod(0o755)
    # /out is a host directory: on its own size-capped tmpfs a runner cannot fill the
    # host's disk through it, whatever it writes (needs root; else a plain directory).
    out_capped = mount_tmpfs(out_dir, out_cap)
    if not out_capped:
        try:
            os.chown(out_dir, RUNNER_UID, RUNNER_UID)
        except PermissionError:
            # Not root: the directory is private to us on the host; let the runner in.
            out_dir.chmod(0o777)
    return out_capped


def remove_workdir(workdir: Path, out_dir: Path) -> None:
    """Unmount a run's out/ (if it is a tmpfs) and remove its run directory."""
    unmount(out_dir)
    shutil.rmtree(workdir, ignore_errors=True)


def _libc() -> Any:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount_tmpfs(target: Path, size: int) -> bool:
    """Mount a tmpfs of ``size`` bytes owned by the runner's uid at ``target``."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    options = f"size={size},mode=0700,uid={RUNNER_UID},gid={RUNNER_UID}".encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    try:
        return bool(_libc().mount(b"tmpfs", str(target).encode(), b"tmpfs", flags, options) == 0)
    except OSError:
        return False


def unmount(target: Path) -> None:
    if os.path.ismount(target):
        with contextlib.suppress(OSError):
            _libc().umount2(str(target).encode(), _MNT_DETACH)


def runs_root(runs_dir: Path) -> Path:
    runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return runs_dir


def sweep_runs_dir(runs_dir: Path, max_age_s: float, *, live: set[Path] | None = None) -> None:
    """Remove run directories left by a crash (old enough not to be a live job's).

    A younger directory that no container of this installation mounts (``live``)
    is a crashed job's: its exact result is removed now, whatever its age (the
    directory itself may be another executor's, about to create its container)."""
    if not runs_dir.is_dir():
        return
    now = time.time()
    for leftover in runs_dir.glob("job-*"):
        try:
            young = now - leftover.stat().st_mtime <= max_age_s
        except OSError:
            continue
        if young:
            if live is not None and leftover.resolve() not in live:
                out = leftover / "out"
                result = contract.RESULT_FILE
                for name in (result, result + contract.PART_SUFFIX):
                    with contextlib.suppress(OSError):
                        (out / name).unlink()
            continue
        unmount(leftover / "out")
        shutil.rmtree(leftover, ignore_errors=True)
