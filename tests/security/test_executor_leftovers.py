"""A crash between a runner writing its exact result and the executor removing it must
not leave the exact aggregates on disk: the next start removes them at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox.executors.docker import DockerExecutor, home_label, sweep
from sandbox.settings import Settings

pytestmark = pytest.mark.container


def test_a_crashed_jobs_exact_result_is_removed_at_the_next_start(
    tmp_path: Path, docker_client: Any, runner_image: str
) -> None:
    settings = Settings(home=tmp_path / "home", warm_runners=0)
    # what a server killed mid-job leaves: a fresh run directory with the exact table
    leftover = settings.home / "runs" / "job-crashed1"
    (leftover / "out").mkdir(parents=True)
    (leftover / "plan").mkdir()
    exact = leftover / "out" / "result.arrow"
    exact.write_bytes(b"ARROW1 exact aggregates")
    (leftover / "out" / "result.arrow.part").write_bytes(b"ARROW1 partial")
    executor = DockerExecutor(settings, client=docker_client, image=runner_image)
    try:
        executor.start()
        assert not exact.exists()
        assert not (leftover / "out" / "result.arrow.part").exists()
    finally:
        executor.close()
        sweep(docker_client, home_label=home_label(settings))
