"""A failed job is an incident: logged as one JSON line, shown by id, never its message.

The runner's and DuckDB's exception texts quote cell values; a job failure is
described by type, stage, frames and the executor's measurements only.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import audit, logs
from sandbox.errors import ExecutionFailed
from sandbox.service import Service
from sandbox.settings import Settings
from sandbox.tokens import Principal, Role

SQL = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"
SCENARIO = "sme-credit"
OP = Principal(Role.OPERATOR, "op-huaxin", "tok_test")
SUP = Principal(Role.SUPERVISOR, "supervisor-li", "tok_sup")
SECRET = "Zhang-Wei-330102-4711"  # a data value a third-party message might quote
FRAME = re.compile(r"^[^:\s]+\.py:\d+:[A-Za-z_<>][\w<>]*$")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, catalog, policies_dir) -> Path:
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic-incidents")
    generate_synthetic(root, catalog, ["enterprises"], units=500, seed=3, policies=policies_dir)
    return root


@pytest.fixture()
def server_log() -> Iterator[io.StringIO]:
    """The server's log as `sandbox serve` configures it, written to a buffer."""
    root = logging.getLogger()
    level = root.level
    buf = io.StringIO()
    handler = logs.configure(stream=buf)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class QuotingExecutor:
    """Fails the way an engine does: the message quotes a cell value."""

    def __init__(self, make) -> None:
        self.make = make

    def run(self, plan, *, data_root, job_id):
        raise self.make()


def _service(settings: Settings, executor) -> Service:
    svc = Service(settings)
    svc.worker.executor = executor
    return svc


def _settings(tmp_path: Path, policies_dir: Path, data_root: Path) -> Settings:
    return Settings(
        home=tmp_path / "home", policies=policies_dir, data_root=data_root, executor="local"
    )


def _wait_failed(svc: Service, job_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = svc.get_job(SUP, job_id)
        if job["state"] not in ("submitted", "compiled", "budget_reserved", "running"):
            return job
        time.sleep(0.02)
    raise AssertionError("the job did not finish")


def _lines(buf: io.StringIO, event: str) -> list[dict]:
    out = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    return [line for line in out if line.get("event") == event]


def _run_failing(tmp_path, policies_dir, synthetic, make) -> tuple[Service, dict]:
    svc = _service(_settings(tmp_path, policies_dir, synthetic), QuotingExecutor(make))
    svc.start()
    job = svc.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
    return svc, _wait_failed(svc, job["id"])


def test_an_engine_failure_is_logged_once_without_its_message(
    tmp_path, policies_dir, synthetic, server_log
):
    def failure() -> RuntimeError:
        try:
            int(f"Conversion Error: could not convert string '{SECRET}' to INT32")
        except ValueError as inner:
            err = RuntimeError(f"query failed near '{SECRET}'")
            err.__cause__ = inner  # as `raise … from`, the engine's error quoting a value
            return err
        raise AssertionError("unreachable")

    svc, done = _run_failing(tmp_path, policies_dir, synthetic, failure)
    try:
        assert done["state"] == "failed"
        mine = svc.get_job(OP, done["id"])["error"]
        assert mine["code"] == "INTERNAL"
        assert mine["message"] == "The system failed; the incident is logged."
        incident = mine["incident"]
        assert re.fullmatch(r"inc-[0-9a-f]{12}", incident)
        assert incident in mine["hint"] and "diagnosis" not in mine

        [line] = _lines(server_log, "job.failed")
        assert line["incident"] == incident and line["job"] == done["id"]
        assert line["level"] == "error" and line["stage"] == "execute"
        assert line["exception"] == "RuntimeError" and line["code"] == "INTERNAL"
        assert line["frames"] and all(FRAME.match(f) for f in line["frames"]), line["frames"]
        assert line["frames"][-1].endswith(":run")  # the executor's frame, innermost last
        assert line["causes"][0]["exception"] == "ValueError"

        # no data value anywhere: the log, either view, the audit event
        assert SECRET not in server_log.getvalue()
        assert "Conversion Error" not in server_log.getvalue()
        theirs = svc.get_job(SUP, done["id"])
        assert SECRET not in json.dumps(theirs) and SECRET not in json.dumps(mine)
        [event] = audit.events(svc.conn(), action="job.failed")
        assert SECRET not in event.details
        details = json.loads(event.details)
        assert details["incident"] == incident and details["stage"] == "execute"
        assert details["exception"] == "RuntimeError"
    finally:
        svc.stop()


def test_a_runner_memory_kill_names_stage_and_category_to_supervisors(
    tmp_path, policies_dir, synthetic, server_log
):
    def failure() -> ExecutionFailed:
        exc = ExecutionFailed("memory")
        exc.stats = {"exit_code": 137, "oom_killed": True, "peak_rss_kb": 523_000}  # as Docker's
        return exc

    svc, done = _run_failing(tmp_path, policies_dir, synthetic, failure)
    try:
        mine = svc.get_job(OP, done["id"])["error"]
        assert mine["category"] == "memory" and mine["incident"].startswith("inc-")
        assert "diagnosis" not in mine  # the operator sees the id, not the system's facts

        theirs = svc.get_job(SUP, done["id"])["error"]
        assert theirs["incident"] == mine["incident"]
        diagnosis = theirs["diagnosis"]
        assert diagnosis["stage"] == "execute" and diagnosis["category"] == "memory"
        assert diagnosis["exit_code"] == 137 and diagnosis["oom_killed"] is True
        assert diagnosis["peak_rss_kb"] == 523_000
        assert diagnosis["exception"] == "sandbox.errors.ExecutionFailed"

        [line] = _lines(server_log, "job.failed")
        assert line["incident"] == mine["incident"]
        assert (line["stage"], line["category"], line["exit_code"]) == ("execute", "memory", 137)
        assert line["oom_killed"] is True and line["peak_rss_kb"] == 523_000

        [event] = audit.events(svc.conn(), action="job.failed")
        facts = {k: json.loads(event.details)[k] for k in ("category", "exit_code", "oom_killed")}
        assert facts == {"category": "memory", "exit_code": 137, "oom_killed": True}
    finally:
        svc.stop()


def test_a_restart_failure_is_an_incident_of_stage_recover(
    tmp_path, policies_dir, synthetic, server_log
):
    from sandbox import jobs

    settings = _settings(tmp_path, policies_dir, synthetic)
    svc = Service(settings)  # not started: the job stays where prepare() leaves it
    job = svc.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
    conn = svc.conn()
    current = jobs.get_job(conn, job["id"])
    jobs.transition(conn, current, jobs.State.RUNNING, actor="system", role="system")
    svc.worker.recover()
    try:
        err = svc.get_job(SUP, job["id"])["error"]
        assert err["code"] == "JOB_INTERRUPTED" and err["diagnosis"]["stage"] == "recover"
        [line] = _lines(server_log, "job.failed")
        assert line["incident"] == err["incident"] and line["stage"] == "recover"
    finally:
        svc.stop()


def test_the_formatter_drops_exception_text():
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("sandbox.test_incidents")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise KeyError(SECRET)
        except KeyError:
            log.exception("something failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    line = json.loads(buf.getvalue())
    assert SECRET not in buf.getvalue()
    assert line["message"] == "something failed" and line["failure"]["exception"] == "KeyError"


@pytest.mark.container
@pytest.mark.slow
def test_a_real_runner_failure_is_an_incident(
    tmp_path, policies_dir, demo_data_root, runner_image, server_log
):
    # A runner container given less time than its engine needs to start is killed at
    # the limit. The operator sees the incident id; the supervisor and the log see why.
    op = Principal(Role.OPERATOR, "op-jinshu", "tok_op")
    settings = Settings(
        home=tmp_path / "home",
        policies=policies_dir,
        data_root=demo_data_root,
        executor="docker",
        runner_image=runner_image,
        job_timeout_s=0.1,
        concurrency=1,
        warm_runners=0,
    )
    svc = Service(settings)
    svc.start()
    try:
        sql = Path(__file__).resolve().parents[2] / "queries" / "02_income_by_age_band.sql"
        job = svc.submit_job(op, sql=sql.read_text(), scenario="employment-income", epsilon=1.0)
        done = _wait_failed(svc, job["id"])
        assert done["state"] == "failed", done["state"]
        mine = svc.get_job(op, job["id"])["error"]
        assert mine["code"] == "EXECUTION_FAILED" and mine["category"] == "timeout"
        assert mine["incident"].startswith("inc-") and "diagnosis" not in mine
        diagnosis = svc.get_job(SUP, job["id"])["error"]["diagnosis"]
        assert diagnosis["stage"] == "execute" and diagnosis["category"] == "timeout"
        assert diagnosis["exception"] == "sandbox.errors.ExecutionFailed"
        assert diagnosis["oom_killed"] is False, diagnosis
        [line] = _lines(server_log, "job.failed")
        assert line["incident"] == mine["incident"]
        assert (line["stage"], line["category"]) == ("execute", "timeout")
        assert any(f.startswith("sandbox/executors/docker/") for f in line["frames"])
    finally:
        svc.stop()


def test_a_release_past_the_host_time_limit_fails_charged_with_its_category(
    tmp_path, policies_dir, synthetic, server_log
):
    # issue 22: the noise stage runs on the host, outside the runner's limits; past
    # SANDBOX_RELEASE_TIMEOUT the job fails in stage "noise", charged like any run
    settings = _settings(tmp_path, policies_dir, synthetic).replace(release_timeout_s=0.0)
    svc = Service(settings)
    svc.start()
    try:
        job = svc.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
        done = _wait_failed(svc, job["id"])
        assert done["state"] == "failed", done["state"]
        mine = svc.get_job(OP, job["id"])["error"]
        assert mine["code"] == "EXECUTION_FAILED" and mine["category"] == "release_timeout"
        diagnosis = svc.get_job(SUP, job["id"])["error"]["diagnosis"]
        assert (diagnosis["stage"], diagnosis["category"]) == ("noise", "release_timeout")
        [line] = _lines(server_log, "job.failed")
        assert (line["stage"], line["category"]) == ("noise", "release_timeout")
        events = [e.action for e in audit.events(svc.conn()) if e.subject == job["id"]]
        assert "budget.charged" in events and "budget.released" not in events
    finally:
        svc.stop()
