"""Issue 17: the split of a runner's memory (sandbox/executors/budget.py) and the
runner's own guard against a DuckDB limit above its container's cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox_runner.__main__ import memory_limit

from sandbox.executors.budget import RESERVE_MB, runner_budget
from sandbox.executors.docker.containers import runner_env
from sandbox.settings import Settings


@pytest.mark.parametrize(
    ("memory_mb", "scratch_mb", "output_max_bytes"),
    [(2048, 256, 16 * 2**20), (512, 256, 2**20), (256, 16, 2**20), (8192, 256, 16 * 2**20)],
)
def test_duckdb_spill_and_result_stay_under_the_container_limit(
    tmp_path: Path, memory_mb: int, scratch_mb: int, output_max_bytes: int
) -> None:
    s = Settings(home=tmp_path).replace(
        memory_mb=memory_mb, scratch_mb=scratch_mb, output_max_bytes=output_max_bytes
    )
    b = runner_budget(s)
    result_mb = 2 * output_max_bytes / 2**20
    # the scratch tmpfs is charged to the same cgroup as DuckDB's pool
    assert b.memory_mb + b.temp_mb + result_mb + RESERVE_MB <= memory_mb
    assert b.temp_mb <= 0.9 * scratch_mb and b.temp_mb <= 0.9 * s.file_size_mb
    assert b.threads == int(s.cpus)


def test_the_product_default_split(tmp_path: Path) -> None:
    b = runner_budget(Settings(home=tmp_path))
    assert (b.memory_mb, b.temp_mb, b.threads) == (1409, 230, 2)
    env = runner_env(Settings(home=tmp_path), warm=False)
    assert env["RUNNER_MEMORY_LIMIT"] == "1409MB" and env["RUNNER_MAX_TEMP_SIZE"] == "230MB"


def test_the_runner_caps_duckdb_at_three_quarters_of_its_cgroup(tmp_path: Path) -> None:
    v1 = tmp_path / "memory.limit_in_bytes"
    v1.write_text(str(512 * 2**20))
    missing = str(tmp_path / "memory.max")
    assert memory_limit("1409MB", (missing, str(v1))) == "384MB"
    assert memory_limit("162MB", (missing, str(v1))) == "162MB"
    v2 = tmp_path / "v2.max"
    v2.write_text("max\n")  # v2 without a limit: nothing to cap
    assert memory_limit("1409MB", (str(v2),)) == "1409MB"
    assert memory_limit("1GB", (str(v1),)) == "1GB"  # not the host's form: left alone
