"""What the Docker executor does on the host's filesystem for a runner container.

Each job gets a private run directory ``<home>/runs/job-…`` holding its ``plan/``
(the spec, mounted read-only) and an ``out`` directory (mounted writable) where the
runner writes the exact result. The exact result is only ever in RAM (issue 15):

- ``tmpfs`` (needs ``mount(2)``, i.e. root / CAP_SYS_ADMIN): ``<run>/out`` is a
  size-capped tmpfs of its own (2 × ``output_max_bytes`` + 1 MiB);
- ``shm`` (``mount(2)`` refused): ``out`` is ``/dev/shm/jinyu-<home label>/job-…``,
  in a private directory, checked to be tmpfs or ramfs in ``/proc/self/mountinfo``.
  What a runner writes there is charged to its container's memory cgroup (tmpfs
  pages belong to the writer), so ``memory_mb`` caps it, and ``file_size_mb`` each
  file; a runner filling it ends ``memory`` or ``output_too_large``;
- neither: the executor refuses to start (``SystemFailure``, code ``OUT_NOT_IN_RAM``).

Live or dead: the process that makes a run directory holds an exclusive ``flock`` on
it for as long as the run lives; the kernel drops the lock when the process dies,
however it dies. At start-up every run directory whose lock can be taken belongs to a
dead process: it is claimed, its container removed (by the executor), its ``out``
unmounted and removed with it, whatever its age. A run of another live process on the
same home is locked and left alone. Creating a run directory and claiming dead ones
both hold a lock on ``<home>/runs`` itself, so a run is never seen between its
creation and its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox_runner.contract import RUNNER_UID

from sandbox.errors import SystemFailure
from sandbox.executors import ramfs

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MNT_DETACH = 2, 4, 8, 2
RUN_PREFIX = "job-"
PROBE_PREFIX = ".probe-"
TMPFS, SHM = "tmpfs", "shm"


@dataclass(frozen=True)
class Backing:
    """How a run's ``out`` is kept in RAM: its own tmpfs, or a directory in ``shm_dir``
    (a RAM filesystem). ``shm_dir`` is named either way: leftovers there are swept."""

    kind: str
    shm_dir: Path


@dataclass
class RunDir:
    """One run directory, locked by this process while it lives."""

    path: Path
    out: Path
    kind: str
    lock: int | None = field(default=None, repr=False)

    @property
    def plan(self) -> Path:
        return self.path / "plan"


def shm_root(home_label: str, shm: Path = ramfs.SHM) -> Path:
    """Where one installation's ``out`` directories go when mount(2) is refused."""
    return shm / f"jinyu-{home_label}"


def runs_root(runs_dir: Path) -> Path:
    runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return runs_dir


# -- choosing where out/ lives ---------------------------------------------------------


def choose_backing(
    runs_dir: Path,
    home_label: str,
    *,
    mount_ok: bool | None = None,
    shm: Path = ramfs.SHM,
    mountinfo: str | None = None,
) -> Backing:
    """Where runs' ``out`` will live: a tmpfs of their own if mount(2) works here
    (``mount_ok``; None: try it), else a private directory on the RAM filesystem
    ``shm``; if neither, refuse (``OUT_NOT_IN_RAM``) rather than write to a disk."""
    shm_dir = shm_root(home_label, shm)
    if mount_ok is None:
        mount_ok = probe_mount(runs_root(runs_dir))
    if mount_ok:
        return Backing(TMPFS, shm_dir)
    if not shm.is_dir() or not ramfs.in_ram(shm, mountinfo):
        raise SystemFailure(
            "The Docker executor cannot keep exact results in RAM: mounting a tmpfs is not "
            f"permitted and {shm} is not a RAM filesystem (tmpfs or ramfs).",
            code="OUT_NOT_IN_RAM",
            hint="Run the server as root (or with CAP_SYS_ADMIN), or mount a tmpfs on "
            f"{shm}. See docs/security.md, 'Exact results stay in RAM'.",
        )
    private_dir(shm_dir)
    return Backing(SHM, shm_dir)


def probe_mount(runs_dir: Path) -> bool:
    """True if this process may mount a tmpfs (tried on a tiny one, then undone)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    with runs_lock(runs_dir):
        probe = Path(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=runs_dir))
        try:
            mounted = mount_tmpfs(probe, 4096)
            if mounted:
                unmount(probe)
            return mounted
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()


def private_dir(path: Path) -> Path:
    """Make (or check) a directory only this user may enter; refuse anything else there
    (a link, another user's directory): on /dev/shm anyone may create names."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    if not _is_private(path):
        raise SystemFailure(
            f"{path} is not a private directory of this user; the Docker executor will "
            "not put exact results there.",
            code="OUT_NOT_IN_RAM",
            hint=f"Remove {path} (it is re-created at start).",
        )
    return path


def _is_private(path: Path) -> bool:
    """A real directory (no link) of this user that nobody else may enter."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


# -- one run ----------------------------------------------------------------------------


def new_run(runs_dir: Path, backing: Backing, out_cap: int) -> RunDir:
    """Make a locked run directory with its ``plan/`` and an ``out`` in RAM."""
    with runs_lock(runs_root(runs_dir)):
        path = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=runs_dir))
        lock = _lock(path, block=False)
    assert lock is not None  # a new directory: nobody else holds it
    run = RunDir(path=path, out=path / "out", kind=backing.kind, lock=lock)
    try:
        run.plan.mkdir(mode=0o755)
        run.plan.chmod(0o755)
        if backing.kind == TMPFS:
            run.out.mkdir(mode=0o700)
            if not mount_tmpfs(run.out, out_cap):
                raise SystemFailure(
                    "The Docker executor could not mount the tmpfs for a run's output.",
                    code="OUT_NOT_IN_RAM",
                    hint="mount(2) worked at start and failed now; see docs/security.md.",
                )
        else:
            run.out, run.kind = private_dir(backing.shm_dir) / path.name, SHM
            run.out.mkdir(mode=0o700)
            try:
                os.chown(run.out, RUNNER_UID, RUNNER_UID)
            except PermissionError:
                # Not root: its parent is private to us on the host; let the runner in.
                run.out.chmod(0o777)
    except BaseException:
        remove_run(run)
        raise
    return run


def remove_run(run: RunDir) -> None:
    """Unmount and remove a run's ``out``, remove its directory, then drop its lock."""
    unmount(run.path / "out")
    if run.kind == SHM:
        shutil.rmtree(run.out, ignore_errors=True)
    shutil.rmtree(run.path, ignore_errors=True)
    if run.lock is not None:
        with contextlib.suppress(OSError):
            os.close(run.lock)
        run.lock = None


# -- the dead ones ------------------------------------------------------------------------


def claim_dead(runs_dir: Path, backing: Backing) -> list[RunDir]:
    """The run directories of dead processes, each now locked by us (remove them with
    ``remove_run`` once their containers are gone). Leftover mount probes go at once."""
    if not runs_dir.is_dir():
        return []
    dead = []
    with runs_lock(runs_dir):
        for probe in runs_dir.glob(PROBE_PREFIX + "*"):  # made and undone under this lock
            unmount(probe)
            shutil.rmtree(probe, ignore_errors=True)
        for path in sorted(runs_dir.glob(RUN_PREFIX + "*")):
            lock = _lock(path, block=False)
            if lock is None:
                continue  # a live process's run
            shm_out = backing.shm_dir / path.name
            kind = SHM if _is_private(backing.shm_dir) and shm_out.exists() else TMPFS
            out = shm_out if kind == SHM else path / "out"
            dead.append(RunDir(path=path, out=out, kind=kind, lock=lock))
    return dead


def sweep_shm(backing: Backing, runs_dir: Path) -> None:
    """Remove ``out`` directories in the RAM fallback whose run directory is gone
    (a run directory is made before its ``out`` and removed after it)."""
    shm_dir = backing.shm_dir
    if not _is_private(shm_dir):
        return
    with runs_lock(runs_root(runs_dir)):
        for out in shm_dir.glob(RUN_PREFIX + "*"):
            if not (runs_dir / out.name).exists():
                shutil.rmtree(out, ignore_errors=True)


def is_live(path: Path) -> bool:
    """True if a live process holds the run directory ``path`` (False if it is gone)."""
    lock = _lock(path, block=False)
    if lock is None:
        return path.exists()
    os.close(lock)
    return False


# -- locks and mounts ----------------------------------------------------------------------


@contextlib.contextmanager
def runs_lock(runs_dir: Path) -> Iterator[None]:
    """Hold the lock on the runs directory (creating runs, claiming dead ones)."""
    fd = _lock(runs_dir, block=True)
    if fd is None:
        raise SystemFailure("The runs directory could not be locked.", code="INTERNAL")
    try:
        yield
    finally:
        os.close(fd)


def _lock(path: Path, *, block: bool) -> int | None:
    """An exclusive flock on directory ``path`` (its own open file): the fd, or None if
    another open file holds it (or the directory is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


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
    """Detach every mount stacked on ``target`` (a runner's tmpfs, or a probe's)."""
    for _ in range(8):
        if not os.path.ismount(target) or _libc().umount2(str(target).encode(), _MNT_DETACH):
            return
