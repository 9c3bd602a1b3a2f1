"""Which filesystem a path is on, read from ``/proc/self/mountinfo``: is it RAM?

An exact result may only ever be in RAM (issue 15). ``os.statvfs`` cannot say what
kind of filesystem a path is on; the kernel's mount table can. A path's filesystem is
that of the mount whose mount point is the longest prefix of the path's real path;
of several mounts on one point (stacked), the last listed is the one on top.
"""

from __future__ import annotations

import os
from pathlib import Path

RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
SHM = Path("/dev/shm")  # noqa: S108 (only a private directory in it is used, checked)
MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line of a mountinfo text, in order."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or sep + 1 >= len(fields):
            continue
        found.append((_unescape(fields[4]), fields[sep + 1]))
    return found


def fs_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The filesystem type of ``path`` (its real path), or None if it cannot be told."""
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return None
    real = os.path.realpath(path)
    best, kind = -1, None
    for point, fstype in mounts(mountinfo):
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # >=: a later mount on the same point is on top
            best, kind = len(point), fstype
    return kind


def in_ram(path: Path, mountinfo: str | None = None) -> bool:
    """True if ``path`` is on a RAM filesystem (tmpfs or ramfs)."""
    return fs_type(path, mountinfo) in RAM_FILESYSTEMS


def ram_tmp(shm: Path = SHM) -> Path | None:
    """A world-writable RAM directory for temporary files (``/dev/shm``), if there is one."""
    return shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) and in_ram(shm) else None
