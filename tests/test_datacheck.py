"""A one-row-per-unit table is checked, not trusted (issue 15 point 2).

With ``rows_per_unit: 1`` the compiler emits no per-unit window: a duplicated unit
would move a count by 2 while the noise assumes 1. The table is checked inside the
runner, once per file version, and a table that breaks the declaration is refused.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox import logs
from sandbox.executors.local import LocalExecutor
from sandbox.service import Service
from sandbox.settings import Settings
from sandbox.tokens import Principal, Role

SQL = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"
OP = Principal(Role.OPERATOR, "op-huaxin", "tok_test")
SUP = Principal(Role.SUPERVISOR, "supervisor-li", "tok_sup")
FILE = "enterprises/enterprises.parquet"


@pytest.fixture(scope="module")
def clean(tmp_path_factory, catalog, policies_dir) -> Path:
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic-datacheck")
    generate_synthetic(root, catalog, ["enterprises"], units=400, seed=11, policies=policies_dir)
    return root


def _duplicate_one_unit(root: Path) -> None:
    """Append a copy of one row: one enterprise now has two rows (marker kept)."""
    path = root / FILE
    table = pq.read_table(path)
    metadata = pq.read_metadata(path).metadata
    doubled = pa.concat_tables([table, table.slice(7, 1)])
    doubled = doubled.replace_schema_metadata(metadata)
    path.unlink()  # a new file: a new inode, as a bureau replacing the file makes
    pq.write_table(doubled, path)


@pytest.fixture()
def server_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    buf = io.StringIO()
    handler = logs.configure(stream=buf)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class CountingExecutor(LocalExecutor):
    """The real local executor, counting its runs."""

    runs = 0

    def run(self, plan, *, data_root, job_id):  # type: ignore[no-untyped-def]
        type(self).runs += 1
        return super().run(plan, data_root=data_root, job_id=job_id)


def _service(tmp_path: Path, policies_dir: Path, data_root: Path) -> Service:
    settings = Settings(
        home=tmp_path / "home", policies=policies_dir, data_root=data_root, executor="local"
    )
    svc = Service(settings)
    svc.worker.executor = CountingExecutor(settings)
    CountingExecutor.runs = 0
    svc.start()
    return svc


def _done(svc: Service, job_id: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = svc.get_job(SUP, job_id)
        if job["state"] not in ("submitted", "compiled", "budget_reserved", "running", "noised"):
            return job
        time.sleep(0.02)
    raise AssertionError("the job did not finish")


def _run(svc: Service) -> dict:
    return _done(svc, svc.submit_job(OP, sql=SQL, scenario="sme-credit", epsilon=0.5)["id"])


def test_a_kept_declaration_is_checked_once_per_file_version(tmp_path, policies_dir, clean) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean, root)
    svc = _service(tmp_path, policies_dir, root)
    try:
        assert _run(svc)["state"] in ("in_review", "released")
        assert CountingExecutor.runs == 2  # the check, then the query
        assert _run(svc)["state"] in ("in_review", "released")
        assert CountingExecutor.runs == 3  # same file: not checked again
    finally:
        svc.stop()


def test_a_duplicated_unit_refuses_the_table_and_tells_the_bureau(
    tmp_path, policies_dir, clean, server_log
) -> None:
    root = tmp_path / "data"
    shutil.copytree(clean, root)
    svc = _service(tmp_path, policies_dir, root)
    try:
        assert _run(svc)["state"] in ("in_review", "released")
        _duplicate_one_unit(root)
        for _ in range(2):
            job = _run(svc)
            assert job["state"] == "failed"
            assert job["error"]["code"] == "EXECUTION_FAILED"
            assert job["error"]["category"] == "data_invalid"
        lines = [json.loads(x) for x in server_log.getvalue().splitlines() if x.strip()]
        [line] = [x for x in lines if x.get("event") == "data.invalid"]  # logged once
        assert line["dataset"] == "enterprises" and line["table"] == "enterprises"
        assert line["file"] == FILE and line["level"] == "error"
        # the counts never appear: only names and the declaration
        assert set(line) <= {
            "event",
            "dataset",
            "table",
            "file",
            "declared",
            "time",
            "level",
            "logger",
            "message",
            "ts",
        }
    finally:
        svc.stop()
