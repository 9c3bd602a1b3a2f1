"""Fixtures of the Docker executor tests: executors on small limits that leave nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import small_settings

from sandbox.executors.docker import HOME_LABEL, LABEL, DockerExecutor
from sandbox.executors.docker.hostfs import shm_root


@pytest.fixture()
def make_executor(docker_client: Any, runner_image: str, tmp_path: Path) -> Iterator[Any]:
    """A factory of executors on small limits; after the test, nothing may be left.
    ``mount_ok=False`` takes the RAM fallback for /out (a directory under /dev/shm)."""
    made: list[DockerExecutor] = []
    volumes_before = {v.id for v in docker_client.volumes.list()}

    def factory(*, mount_ok: bool | None = None, **changes: Any) -> DockerExecutor:
        executor = DockerExecutor(
            small_settings(tmp_path, **changes),
            client=docker_client,
            image=runner_image,
            mount_ok=mount_ok,
        )
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        executor.close()
        left = docker_client.containers.list(
            all=True, filters={"label": [f"{LABEL}=1", f"{HOME_LABEL}={executor.home_label}"]}
        )
        assert left == [], "a runner container was left behind"
        runs = executor.runs_dir
        assert not runs.exists() or list(runs.iterdir()) == [], "a run directory was left behind"
        mounts = Path("/proc/self/mounts").read_text()
        assert str(runs) not in mounts, "an output mount was left behind"
        shm = shm_root(executor.home_label)
        assert not shm.exists() or list(shm.iterdir()) == [], "a RAM output was left behind"
        if shm.exists():
            shm.rmdir()
    assert {v.id for v in docker_client.volumes.list()} <= volumes_before, "a volume was left"
