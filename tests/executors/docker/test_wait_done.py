"""Issue 17: the executor is done at the runner's status.json, not at the engine's
report of the exit; a runner that dies without a status is still seen by the wait."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import spec_with

from sandbox.executors import plan_datasets
from sandbox.executors.docker import containers

# writes an ok status the way the runner does (atomically), then lingers
LINGER = (
    "import json, os, time\n"
    "open('/out/status.json.part', 'w').write(json.dumps({'status': 'ok'}))\n"
    "os.replace('/out/status.json.part', '/out/status.json')\n"
    "time.sleep(60)\n"
)


def _launch(executor: Any, root: Path, code: str) -> containers.Runner:
    executor.start()
    spec = spec_with()
    datasets = plan_datasets(spec["tables"], root)
    return executor._launch(datasets, "wait", spec=spec, entrypoint=["python3", "-c", code])


@pytest.mark.container
def test_done_at_the_status_while_the_container_still_runs(
    make_executor: Any, raw_root: Path
) -> None:
    executor = make_executor()
    runner = _launch(executor, raw_root, LINGER)
    try:
        began = time.monotonic()
        code, timed_out = containers.wait_done(
            runner.container, runner.out_dir, timeout_s=30.0, started=began
        )
        assert (code, timed_out) == (0, False)
        assert time.monotonic() - began < 20  # the container sleeps 60 s
        runner.container.reload()
        assert runner.container.attrs["State"]["Running"] is True
    finally:
        containers.discard(runner)


@pytest.mark.container
def test_a_runner_without_a_status_is_seen_by_the_wait(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    runner = _launch(executor, raw_root, "import os; os._exit(7)")
    try:
        code, timed_out = containers.wait_done(
            runner.container, runner.out_dir, timeout_s=30.0, started=time.monotonic()
        )
        assert (code, timed_out) == (7, False)
    finally:
        containers.discard(runner)


@pytest.mark.container
def test_a_silent_runner_is_killed_at_the_time_limit(make_executor: Any, raw_root: Path) -> None:
    executor = make_executor()
    runner = _launch(executor, raw_root, "import time; time.sleep(60)")
    try:
        began = time.monotonic()
        code, timed_out = containers.wait_done(
            runner.container, runner.out_dir, timeout_s=2.0, started=began
        )
        assert (code, timed_out) == (None, True)
        assert time.monotonic() - began < 15
    finally:
        containers.discard(runner)
