"""Helpers of the Docker executor tests: small limits, probes, hostile SQL.

``probe`` runs a Python one-liner in the runner container through the TEST-ONLY
path ``DockerExecutor._run_spec`` and returns what it wrote to /out/probe.json;
``run_sql`` runs hostile SQL and checks no data value is in the failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from executor_helpers import SECRET, make_plan

from sandbox.errors import ExecutionFailed
from sandbox.executors.docker import DockerExecutor
from sandbox.settings import Settings

COLUMNS = ["county_code", "n", "age_sum"]


MEMORY_MB = 256


PIDS = 32


SCRATCH_MB = 16


def small_settings(tmp_path: Path, **changes: Any) -> Settings:
    base = Settings(
        home=tmp_path / "home",
        concurrency=2,
        job_timeout_s=30.0,
        memory_mb=MEMORY_MB,
        cpus=1.0,
        pids=PIDS,
        scratch_mb=SCRATCH_MB,
        file_size_mb=64,
        output_max_bytes=1024 * 1024,
        warm_runners=0,
    )
    return base.replace(**changes)


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = make_plan().runner_spec()
    spec.update(changes)
    return spec


def probe(
    executor: DockerExecutor, data_root: Path, code: str, **kwargs: Any
) -> tuple[dict[str, Any], ExecutionFailed | None]:
    """Run a Python one-liner in the runner container; return what it wrote and the error."""
    seen: dict[str, Any] = {}

    def hook(container: Any, out_dir: Path) -> None:
        container.reload()
        seen["attrs"] = container.attrs
        path = out_dir / "probe.json"
        if path.is_file() and not path.is_symlink():
            seen.update(json.loads(path.read_text()))

    error = None
    try:
        executor._run_spec(
            make_plan().runner_spec(),
            data_root=data_root,
            job_id="probe",
            entrypoint=["python3", "-c", code],
            hook=hook,
            **kwargs,
        )
    except ExecutionFailed as exc:
        error = exc
    return seen, error


def run_sql(executor: DockerExecutor, data_root: Path, sql: str, **changes: Any) -> ExecutionFailed:
    with pytest.raises(ExecutionFailed) as info:
        executor._run_spec(spec_with(sql=sql, **changes), data_root=data_root, job_id="hostile")
    assert_no_secret(info.value)
    return info.value


def assert_no_secret(exc: ExecutionFailed) -> None:
    texts = [str(exc), repr(exc), json.dumps(exc.to_dict()), json.dumps(getattr(exc, "stats", {}))]
    cause = exc.__cause__
    while cause is not None:
        texts.append(str(cause))
        cause = cause.__cause__
    assert not any(SECRET in text for text in texts)
