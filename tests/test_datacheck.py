"""Declared shapes and sizes are checked, not trusted (issue 15 points 2 and 8).

With ``rows_per_unit: 1`` the compiler emits no per-unit window: a duplicated unit
would move a count by 2 while the noise assumes 1. A dataset's ``max_units`` sizes the
rounding term of float sums: a table with more units would make it too small. Each
table is checked inside the runner, once per file version, and a table that breaks a
declaration is refused.
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


# ------------------------------------------------------------------ max_units (point 8)

OP_J = Principal(Role.OPERATOR, "op-jinshu", "tok_test")
PAYMENTS_SQL = "SELECT year, SUM(amount) AS total FROM payments GROUP BY year"


def _policies_with(tmp_path: Path, policies_dir: Path, dataset: str, max_units: int) -> Path:
    """A copy of the demo policies in which ``dataset`` declares ``max_units``."""
    import yaml

    out = tmp_path / "policies"
    shutil.copytree(policies_dir, out)
    doc = yaml.safe_load((out / "catalog.yaml").read_text(encoding="utf-8"))
    [d] = [d for d in doc["datasets"] if d["id"] == dataset]
    d["privacy"]["max_units"] = max_units
    (out / "catalog.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return out


def _log_lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in buf.getvalue().splitlines() if x.strip()]


def test_a_dataset_larger_than_its_declared_max_units_is_refused(
    tmp_path, policies_dir, clean, server_log
) -> None:
    # 400 enterprises in the file, at most 300 declared: the float sums' rounding term
    # would be sized for too few rows, so no query reads the table
    policies = _policies_with(tmp_path, policies_dir, "enterprises", 300)
    root = tmp_path / "data"
    shutil.copytree(clean, root)
    svc = _service(tmp_path, policies, root)
    try:
        for _ in range(2):
            job = _run(svc)
            assert job["state"] == "failed"
            assert job["error"]["category"] == "data_invalid"
        assert CountingExecutor.runs == 1  # checked once, the query never ran
        [line] = [x for x in _log_lines(server_log) if x.get("event") == "data.invalid"]
        assert line["declared"] == "max_units: 300" and line["table"] == "enterprises"
        assert "400" not in json.dumps(line)  # never the count
    finally:
        svc.stop()


def test_the_declared_size_holds_at_exactly_max_units(tmp_path, policies_dir, clean) -> None:
    policies = _policies_with(tmp_path, policies_dir, "enterprises", 400)
    root = tmp_path / "data"
    shutil.copytree(clean, root)
    svc = _service(tmp_path, policies, root)
    try:
        assert _run(svc)["state"] in ("in_review", "released")
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def insurance(tmp_path_factory, catalog, policies_dir) -> Path:
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic-insurance")
    generate_synthetic(
        root, catalog, ["social_insurance"], units=300, seed=4, policies=policies_dir
    )
    return root


def test_a_table_of_several_rows_per_unit_is_checked_for_its_size(
    tmp_path, policies_dir, insurance
) -> None:
    # payments has up to 12 rows per person: no one-row check, but the size still counts
    root = tmp_path / "data"
    shutil.copytree(insurance, root)
    ok = _service(tmp_path / "ok", policies_dir, root)
    try:
        job = _done(
            ok,
            ok.submit_job(OP_J, sql=PAYMENTS_SQL, scenario="pension-contributions", epsilon=0.5)[
                "id"
            ],
        )
        assert job["state"] in ("in_review", "released")
        assert CountingExecutor.runs == 2  # the payments check, then the query
    finally:
        ok.stop()
    small = _policies_with(tmp_path, policies_dir, "social_insurance", 200)
    refused = _service(tmp_path / "small", small, root)
    try:
        job = _done(
            refused,
            refused.submit_job(
                OP_J, sql=PAYMENTS_SQL, scenario="pension-contributions", epsilon=0.5
            )["id"],
        )
        assert job["state"] == "failed" and job["error"]["category"] == "data_invalid"
    finally:
        refused.stop()


def test_the_check_holds_data_to_the_size_the_cost_assumed(
    tmp_path, catalog, policies_dir, clean
) -> None:
    # a job costed when the catalogue said 300 units runs after the bound was raised:
    # the data is held to the smaller bound its noise was sized for
    from sandbox.compiler import compile_query
    from sandbox.datacheck import DataChecks
    from sandbox.errors import ExecutionFailed
    from sandbox.grants import load_grants

    grant = load_grants(policies_dir, catalog).grant("g-huaxin-sme")
    assert grant is not None
    plan = compile_query(SQL, catalog=catalog, grant=grant)
    settings = Settings(home=tmp_path / "home", data_root=clean, executor="local")
    checks = DataChecks(catalog)
    executor = LocalExecutor(settings)
    checks.ensure(plan, executor=executor, data_root=clean, job_id="j1")  # 100 000
    with pytest.raises(ExecutionFailed) as info:
        checks.ensure(plan, executor=executor, data_root=clean, job_id="j2", max_units=300)
    assert info.value.category == "data_invalid"
    checks.ensure(plan, executor=executor, data_root=clean, job_id="j3", max_units=400)
