"""Reading what a runner left in its output directory, trusting none of it.

Shared by both executors. ``result.arrow`` must be a regular file with one link (no
symlink, FIFO, device or hard link to something else), at most the output cap, a
valid Arrow IPC file with exactly the Plan's columns and at most its group count.
``status.json`` is read with a small cap and only our own fields survive.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc
from sandbox_runner.contract import (
    RESULT_FILE,
    STATUS_FAILED,
    STATUS_FILE,
    STATUS_MAX_BYTES,
    STATUS_OK,
)

from sandbox.errors import CATEGORIES, ExecutionFailed


def read_status(out_dir: Path) -> dict[str, Any]:
    """The runner's status.json (capped, no symlinks); {} when missing or invalid."""
    try:
        data = _read_regular(out_dir / STATUS_FILE, STATUS_MAX_BYTES)
        status = json.loads(data)
    except (ExecutionFailed, OSError, ValueError):
        return {}
    if not isinstance(status, dict):
        return {}
    clean: dict[str, Any] = {}
    if status.get("status") in {STATUS_OK, STATUS_FAILED}:
        clean["status"] = status["status"]
    if status.get("category") in CATEGORIES:
        clean["category"] = status["category"]
    rss = status.get("peak_rss_kb")
    if isinstance(rss, int) and not isinstance(rss, bool) and rss >= 0:
        clean["peak_rss_kb"] = rss
    if isinstance(status.get("truncated"), bool):
        clean["truncated"] = status["truncated"]
    return clean


def status_category(status: dict[str, Any]) -> str:
    category = status.get("category")
    return category if isinstance(category, str) and category in CATEGORIES else "engine_error"


def read_result(out_dir: Path, *, columns: list[str], max_rows: int, max_bytes: int) -> pa.Table:
    """Read result.arrow: a regular file, not a symlink, at most ``max_bytes``; the
    Plan's exact columns and at most ``max_rows`` rows. Raises ExecutionFailed."""
    data = _read_regular(out_dir / RESULT_FILE, max_bytes)
    try:
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ExecutionFailed("output_invalid") from exc
    if table.column_names != columns or table.num_rows > max_rows:
        raise ExecutionFailed("plan_mismatch")
    return table


def _read_regular(path: Path, max_bytes: int) -> bytes:
    try:
        info = os.lstat(path)
    except FileNotFoundError as exc:
        raise ExecutionFailed("output_invalid") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ExecutionFailed("output_invalid")
    if info.st_size > max_bytes:
        raise ExecutionFailed("output_too_large")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:  # ELOOP: swapped for a symlink after the lstat
        raise ExecutionFailed("output_invalid") from exc
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_nlink != 1:
            raise ExecutionFailed("output_invalid")
        if opened.st_size > max_bytes:
            raise ExecutionFailed("output_too_large")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ExecutionFailed("output_too_large")
        return b"".join(chunks)
    finally:
        os.close(fd)
