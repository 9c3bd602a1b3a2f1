"""The job state machine: one transition function, budget with the state, honest restarts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sandbox import audit, jobs, ledger, store
from sandbox.errors import Conflict
from sandbox.executors.local import LocalExecutor
from sandbox.jobs import State
from sandbox.service import Service
from sandbox.settings import Settings
from sandbox.tokens import Principal, Role

SQL = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"
SCENARIO = "sme-credit"
OP = Principal(Role.OPERATOR, "op-huaxin", "tok_test")
SUP = Principal(Role.SUPERVISOR, "supervisor-li", "tok_sup")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, catalog, policies_dir) -> Path:
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic-jobs")
    generate_synthetic(
        root,
        catalog,
        ["enterprises", "population", "divisions"],
        units=2000,
        seed=5,
        policies=policies_dir,
    )
    return root


@pytest.fixture()
def jsettings(tmp_path, policies_dir, synthetic, database) -> Settings:
    """Each test on both back ends: SQLite under HOME, or a fresh PostgreSQL database."""
    return Settings(
        home=tmp_path / "home",
        policies=policies_dir,
        data_root=synthetic,
        executor="local",
        concurrency=2,
        database_url=database if isinstance(database, str) else "",
    )


class BlockingExecutor:
    """The real local executor, held at the door until the test lets it run."""

    def __init__(self, settings: Settings) -> None:
        self.inner = LocalExecutor(settings)
        self.entered = threading.Event()
        self.go = threading.Event()

    def run(self, plan, *, data_root, job_id):
        self.entered.set()
        assert self.go.wait(30)
        return self.inner.run(plan, data_root=data_root, job_id=job_id)


def wait_state(svc: Service, job_id: str, states: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = svc.get_job(SUP, job_id)
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def spent(svc: Service) -> dict:
    grant = svc.grants.grant("g-huaxin-sme")
    return ledger.balance(svc.conn(), grant, "enterprises")


def test_the_transition_table_is_closed():
    assert {
        State.RELEASED,
        State.REJECTED,
        State.REFUSED,
        State.FAILED,
        State.CANCELLED,
    } == jobs.TERMINAL
    reachable = {s for targets in jobs.ALLOWED.values() for s in targets}
    assert reachable == set(State)
    assert State.RUNNING not in jobs.ALLOWED[State.SUBMITTED]  # no skipping the budget


def test_transition_checks_and_audits_in_one_transaction(database):
    conn = store.connect(database)
    job = jobs.create_job(
        conn,
        operator="op",
        scenario="s",
        sql="SELECT 1",
        epsilon=1.0,
        delta=0.0,
        weights=None,
        actor="op",
        role="operator",
    )
    with pytest.raises(Conflict):
        jobs.transition(conn, job, State.RUNNING, actor="system", role="system")

    def boom(c, j):
        raise RuntimeError("side effect failed")

    with pytest.raises(RuntimeError):
        jobs.transition(conn, job, State.COMPILED, actor="system", role="system", effects=boom)
    assert jobs.get_job(conn, job.id).state == State.SUBMITTED  # rolled back, no audit event
    assert [e.action for e in audit.events(conn)] == ["job.submitted"]
    done = jobs.transition(
        conn, job, State.COMPILED, actor="system", role="system", details={"plan_digest": "d"}
    )
    assert done.state == State.COMPILED
    assert [e.action for e in audit.events(conn)] == ["job.submitted", "job.compiled"]
    assert [t["to_state"] for t in jobs.transitions(conn, job.id)] == ["submitted", "compiled"]
    conn.close()


def test_restart_mid_run_fails_the_job_and_keeps_the_charge(jsettings):
    blocking = BlockingExecutor(jsettings)
    first = Service(jsettings, executor=blocking)
    first.start()
    job = first.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
    assert blocking.entered.wait(30)
    assert first.get_job(SUP, job["id"])["state"] == "running"
    assert spent(first)["spent"] == pytest.approx(1.0)  # charged as it started running
    old_workers = first.worker._pool
    assert old_workers is not None
    first.stop(wait=False)  # the server dies with the container still running

    second = Service(jsettings)
    second.start()
    try:
        after = second.get_job(SUP, job["id"])
        assert after["state"] == "failed" and after["error"]["code"] == "JOB_INTERRUPTED"
        assert spent(second)["spent"] == pytest.approx(1.0) and spent(second)["reserved"] == 0
        blocking.go.set()  # the old worker finishes late: it must not resurrect the job
        old_workers.shutdown(wait=True)  # joined: the late worker has done all it will
        assert second.get_job(SUP, job["id"])["state"] == "failed"
        assert not (jsettings.products_dir / job["id"]).exists()
        operator_view = second.get_job(OP, job["id"])
        assert "budget it was charged is kept" in operator_view["error"]["message"]
    finally:
        second.stop()


def test_restart_resumes_jobs_that_never_ran(jsettings):
    first = Service(jsettings)  # never started: nothing runs jobs
    queued = first.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
    assert queued["state"] == "budget_reserved"
    fresh = jobs.create_job(
        first.conn(),
        operator="op-huaxin",
        scenario=SCENARIO,
        sql="SELECT ownership, COUNT(*) AS n FROM enterprises GROUP BY ownership",
        epsilon=0.5,
        delta=0.0,
        weights=None,
        actor="op-huaxin",
        role="operator",
    )
    assert spent(first)["reserved"] == pytest.approx(1.0)
    first.stop()

    second = Service(jsettings)
    second.start()
    try:
        for job_id in (queued["id"], fresh.id):
            done = wait_state(second, job_id, {"released", "failed", "in_review"})
            assert done["state"] == "released", done["error"]
        assert spent(second)["spent"] == pytest.approx(1.5)
        assert spent(second)["reserved"] == 0
    finally:
        second.stop()


def test_review_survives_a_restart(jsettings):
    first = Service(jsettings)
    first.start()
    job = first.submit_job(
        Principal(Role.OPERATOR, "op-jinshu", "t"),
        sql="SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex",
        scenario="employment-income",
        epsilon=1.0,
    )
    assert wait_state(first, job["id"], {"in_review", "failed"})["state"] == "in_review"
    first.stop()
    second = Service(jsettings)
    second.start()
    try:
        assert second.get_job(SUP, job["id"])["state"] == "in_review"
        out = second.decide(SUP, job["id"], decision="approve", reason="counts are large")
        assert out["job"]["state"] == "released"
    finally:
        second.stop()


def test_cancel_returns_budget_only_if_the_job_never_ran(jsettings):
    first = Service(jsettings)  # not started: the job waits in budget_reserved
    job = first.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
    cancelled = first.cancel_job(OP, job["id"])
    assert cancelled["state"] == "cancelled"
    assert spent(first)["spent"] == 0 and spent(first)["reserved"] == 0
    with pytest.raises(Conflict):
        first.cancel_job(OP, job["id"])
    first.stop()

    blocking = BlockingExecutor(jsettings)
    svc = Service(jsettings, executor=blocking)
    svc.start()
    try:
        job = svc.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
        assert blocking.entered.wait(30)
        assert svc.cancel_job(OP, job["id"])["state"] == "cancelled"
        blocking.go.set()
        svc.worker.stop(wait=True)  # joins the worker: it has finished with the job
        assert svc.get_job(OP, job["id"])["state"] == "cancelled"
        assert spent(svc)["spent"] == pytest.approx(1.0)  # data may have been read
    finally:
        svc.stop()


def test_a_runner_failure_shows_operators_only_the_category(jsettings, tmp_path):
    svc = Service(jsettings.replace(data_root=tmp_path / "empty"))
    svc.start()
    try:
        job = svc.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
        done = wait_state(svc, job["id"], {"failed", "released"})
        assert done["state"] == "failed"
        mine = svc.get_job(OP, job["id"])["error"]
        assert mine["code"] == "EXECUTION_FAILED" and mine["category"] == "data_missing"
        assert mine["message"] == "The system failed; the incident is logged."
        assert spent(svc)["spent"] == pytest.approx(1.0)
    finally:
        svc.stop()


class FailingExecutor:
    """Fails the way a runner can, after the job moved to running."""

    def __init__(self, category: str) -> None:
        self.category = category

    def run(self, plan, *, data_root, job_id):
        from sandbox.errors import ExecutionFailed

        raise ExecutionFailed(self.category)


class WrongTableExecutor:
    """A runner result the privacy layer cannot use (it fails after the run)."""

    def run(self, plan, *, data_root, job_id):
        import pyarrow as pa

        from sandbox.executors import ExactResult

        return ExactResult(table=pa.table({"other": [1]}), wall_s=0.0)


@pytest.mark.parametrize(
    "executor",
    [
        *(
            FailingExecutor(c)
            for c in ("timeout", "memory", "resource_limit", "engine_error", "output_too_large")
        ),
        WrongTableExecutor(),
    ],
    ids=lambda e: getattr(e, "category", "privacy_layer"),
)
def test_every_attempt_that_started_running_is_charged(jsettings, executor):
    # issue 20: a failure after the runner started is charged like a success, so a
    # failure that depends on the data is never a free oracle
    svc = Service(jsettings)
    svc.start()
    try:
        svc.worker.executor = executor
        job = svc.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
        done = wait_state(svc, job["id"], {"failed", "released"})
        assert done["state"] == "failed"
        assert spent(svc)["spent"] == pytest.approx(1.0) and spent(svc)["reserved"] == 0
        events = [e.action for e in audit.events(svc.conn()) if e.subject == job["id"]]
        assert "budget.charged" in events and "budget.released" not in events
    finally:
        svc.stop()


def test_operators_see_job_times_to_the_whole_second_only(jsettings):
    # issue 20: a run's duration can depend on the exact data; operators see no
    # sub-second time of a job, supervisors see the exact ones
    from datetime import datetime

    svc = Service(jsettings)
    svc.start()
    try:
        job = svc.submit_job(OP, sql=SQL, scenario=SCENARIO, epsilon=1.0)
        wait_state(svc, job["id"], {"released", "in_review", "failed"})
        exact, mine = svc.get_job(SUP, job["id"]), svc.get_job(OP, job["id"])
        listed = next(j for j in svc.list_jobs(OP) if j["id"] == job["id"])
        stamps = [exact[k] for k in ("created_at", "updated_at")]
        stamps += [t["at"] for t in exact["transitions"]]
        assert any(datetime.fromisoformat(s).microsecond for s in stamps)
        for view in (mine, listed):
            for k in ("created_at", "updated_at", "finished_at"):
                if exact[k] is not None:
                    whole = datetime.fromisoformat(exact[k]).replace(microsecond=0)
                    assert view[k] == whole.isoformat()
        ats = [datetime.fromisoformat(t["at"]) for t in mine["transitions"]]
        assert len(ats) == len(exact["transitions"]) and all(a.microsecond == 0 for a in ats)
    finally:
        svc.stop()
