"""Reading what a runner left in /out (host side, no container), trusting none of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from executor_helpers import SECRET

from sandbox.errors import ExecutionFailed
from sandbox.executors.output import read_result, read_status

COLUMNS = ["county_code", "n", "age_sum"]


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
