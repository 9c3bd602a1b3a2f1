"""Which filesystem a path is on, from the kernel's mount table (issue 15: exact
results only in RAM; ``os.statvfs`` cannot tell a tmpfs from a disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.executors import ramfs

# a mount table as the kernel writes it: /dev/shm stacked twice, a mount point with a
# space (escaped \040), a disk root
TABLE = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=1k
25 24 0:23 / /dev/shm rw,relatime - ext4 /dev/vdb rw
30 25 0:27 / /dev/shm rw,relatime shared:7 - tmpfs tmpfs rw,size=24683664k
31 27 0:28 / /srv/ram\\040disk rw,relatime - ramfs none rw
32 27 0:29 / /srv/ram rw,relatime - ext4 /dev/vdc rw
"""


def test_a_paths_filesystem_is_that_of_its_longest_mount_point() -> None:
    assert ramfs.fs_type(Path("/"), TABLE) == "ext4"
    assert ramfs.fs_type(Path("/etc/passwd"), TABLE) == "ext4"
    assert ramfs.fs_type(Path("/dev/null"), TABLE) == "devtmpfs"
    # the last mount on a point is the one on top
    assert ramfs.fs_type(Path("/dev/shm/jinyu-x/job-1"), TABLE) == "tmpfs"
    # escaped mount points; a prefix of a name is not a parent directory
    assert ramfs.fs_type(Path("/srv/ram disk/out"), TABLE) == "ramfs"
    assert ramfs.fs_type(Path("/srv/ram/out"), TABLE) == "ext4"
    assert ramfs.fs_type(Path("/srv/ramdisk"), TABLE) == "ext4"


def test_only_tmpfs_and_ramfs_are_ram() -> None:
    assert ramfs.in_ram(Path("/dev/shm"), TABLE)
    assert ramfs.in_ram(Path("/srv/ram disk"), TABLE)
    assert not ramfs.in_ram(Path("/srv/ram"), TABLE)
    assert not ramfs.in_ram(Path("/dev"), TABLE)  # devtmpfs is not for files
    assert not ramfs.in_ram(Path("/"), "garbage without separators\n")


def test_the_real_mount_table(tmp_path: Path) -> None:
    assert ramfs.fs_type(Path("/proc/self")) == "proc"
    if not ramfs.in_ram(Path("/dev/shm")):
        pytest.skip("/dev/shm is not a RAM filesystem on this host")
    assert ramfs.ram_tmp() == Path("/dev/shm")
    # a link into a RAM filesystem is judged by where it leads
    link = tmp_path / "link"
    link.symlink_to("/dev/shm")
    assert ramfs.in_ram(link)
