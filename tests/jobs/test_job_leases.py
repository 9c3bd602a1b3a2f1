"""Leases (sandbox/jobs/leases.py): a job is taken over only from a dead server, and by
one server only; on SQLite and on PostgreSQL. (That the move to running claims a job
for the server that runs it: tests/e2e/test_two_servers.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from sandbox import jobs, store
from sandbox.jobs import Lease, State

UNFINISHED = [s.value for s in State if s not in jobs.TERMINAL]


def job_of(conn: store.Connection, owner: str | None) -> jobs.Job:
    return jobs.create_job(
        conn,
        operator="op",
        scenario="s",
        sql="SELECT 1",
        epsilon=1.0,
        delta=0.0,
        weights=None,
        actor="op",
        role="operator",
        claimed_by=owner,
    )


def orphan_ids(lease: Lease, conn: store.Connection) -> set[str]:
    return {j.id for j in lease.orphans(conn, UNFINISHED)}


def test_only_a_dead_server_s_jobs_are_orphans(database: Path | str) -> None:
    conn = store.connect(database)
    me, live, stopping = Lease(0.3), Lease(0.3), Lease(30)
    for lease in (me, live, stopping):
        lease.register(conn)
    mine, lives = job_of(conn, me.server_id), job_of(conn, live.server_id)
    stopped = job_of(conn, stopping.server_id)
    unknown, unclaimed = job_of(conn, "srv-never-registered"), job_of(conn, None)
    stopping.stop(conn)
    found = orphan_ids(me, conn)
    assert found == {stopped.id, unknown.id, unclaimed.id}  # not mine, not the live one's
    # the live server keeps renewing: still alive after more than a lease
    for _ in range(4):
        time.sleep(0.15)
        live.renew(conn)
        assert lives.id not in orphan_ids(me, conn)
    # it falls silent: dead once its heartbeat has not changed for a lease (our clock)
    time.sleep(0.4)
    assert lives.id in orphan_ids(me, conn) and mine.id not in orphan_ids(me, conn)
    conn.close()


def test_a_server_whose_process_is_gone_is_dead_at_once(database: Path | str) -> None:
    conn = store.connect(database)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    other = Lease(3600)
    other.pid = gone.pid  # registered by a process of this host that has exited
    other.register(conn)
    job = job_of(conn, other.server_id)
    assert job.id in orphan_ids(Lease(3600), conn)
    conn.close()


def test_one_server_takes_each_orphan(database: Path | str) -> None:
    conn = store.connect(database)
    dead = Lease(30)
    dead.register(conn)
    job = job_of(conn, dead.server_id)
    dead.stop(conn)
    a, b = Lease(30), Lease(30)
    a.register(conn)
    b.register(conn)
    seen_by_a, seen_by_b = a.orphans(conn, UNFINISHED), b.orphans(conn, UNFINISHED)
    assert [j.id for j in seen_by_a] == [j.id for j in seen_by_b] == [job.id]
    assert a.take_over(conn, seen_by_a[0]) is True
    assert b.take_over(conn, seen_by_b[0]) is False  # the claim changed under it
    assert jobs.get_job(conn, job.id)["claimed_by"] == a.server_id
    assert orphan_ids(b, conn) == set()  # a is alive: its job is nobody's to take
    conn.close()
