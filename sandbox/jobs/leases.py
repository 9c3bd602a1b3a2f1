"""Leases: which server drives which unfinished job, and when a server is dead.

Several ``sandbox serve`` processes may share one database (PostgreSQL, issue 19).
Each server registers a row in ``servers`` and renews its heartbeat every third of
``SANDBOX_LEASE_SECONDS``; a job's ``claimed_by`` names the server driving it (the one
that took the request, then the one whose worker moved it to ``running``). Another
server takes a job over only when its claimant is **dead**:

- it stopped (``stopped_at``: a clean stop, or ``stop(wait=False)``);
- it has no row (a ``Service`` that never started; a job from before claims);
- it ran on this host and its process is gone (a restart after SIGKILL is at once);
- its heartbeat did not change for a whole lease, as timed by THIS server's monotonic
  clock: no clock is compared across hosts, so skew cannot kill a live server.

Taking over is a conditional update under the write lock (``take_over``: the claim
moves only if it is still the dead server's), so each orphan goes to one server. What
the new claimant then does with the job is ``recovery.recover``'s. The state moves
stay ``records.transition``'s: a stale claimant that wakes up finds its next move
refused (a running job taken over is failed with its charge kept).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sandbox import store
from sandbox.jobs.records import Job, now_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS servers (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL,
    stopped_at    TEXT
);
"""
store.register_schema("sandbox.leases", SCHEMA)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


class Lease:
    """This server's identity, heartbeat and view of the other servers."""

    def __init__(self, lease_s: float) -> None:
        self.server_id = "srv-" + secrets.token_hex(6)
        self.lease_s = max(float(lease_s), 0.1)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        # another server's last heartbeat value seen, and when (our monotonic clock)
        self._seen: dict[str, tuple[str, float]] = {}

    @property
    def renew_every(self) -> float:
        return self.lease_s / 3

    def register(self, conn: store.Connection) -> None:
        """Enter this server in ``servers`` (and forget servers stopped a week ago: a
        claim naming no registered server is taken over like a dead one's)."""
        at = now_iso()
        week_ago = (datetime.now(UTC) - timedelta(days=7)).isoformat()
        with store.transaction(conn):
            conn.execute(
                "DELETE FROM servers WHERE id = ? OR (stopped_at IS NOT NULL AND stopped_at < ?)",
                (self.server_id, week_ago),
            )
            conn.execute(
                "INSERT INTO servers (id, host, pid, started_at, heartbeat_at, stopped_at)"
                " VALUES (?, ?, ?, ?, ?, NULL)",
                (self.server_id, self.host, self.pid, at, at),
            )

    def renew(self, conn: store.Connection) -> None:
        conn.execute(
            "UPDATE servers SET heartbeat_at = ? WHERE id = ? AND stopped_at IS NULL",
            (now_iso(), self.server_id),
        )

    def stop(self, conn: store.Connection) -> None:
        """A clean stop: the other servers may take this one's jobs at once."""
        at = now_iso()
        conn.execute(
            "UPDATE servers SET stopped_at = ?, heartbeat_at = ? WHERE id = ?",
            (at, at, self.server_id),
        )

    def dead_servers(self, conn: store.Connection) -> set[str]:
        """The servers (other than this one) whose jobs may be taken over now."""
        now = time.monotonic()
        dead: set[str] = set()
        rows = conn.execute("SELECT id, host, pid, heartbeat_at, stopped_at FROM servers")
        for r in rows.fetchall():
            sid = str(r["id"])
            if sid == self.server_id:
                continue
            if r["stopped_at"] is not None:
                dead.add(sid)
                continue
            if r["host"] == self.host and int(r["pid"]) != self.pid and not _alive(int(r["pid"])):
                dead.add(sid)
                continue
            beat = str(r["heartbeat_at"])
            seen = self._seen.get(sid)
            if seen is None or seen[0] != beat:
                self._seen[sid] = (beat, now)
            elif now - seen[1] > self.lease_s:
                dead.add(sid)
        return dead

    def orphans(self, conn: store.Connection, states: Iterable[str]) -> list[Job]:
        """Unfinished jobs in ``states`` whose claimant is dead, unknown or none."""
        wanted = list(states)
        if not wanted:
            return []
        dead = sorted(self.dead_servers(conn))
        marks = ",".join("?" * len(wanted))
        owners = " OR claimed_by IN ({})".format(",".join("?" * len(dead))) if dead else ""
        rows = conn.execute(
            f"SELECT * FROM jobs WHERE state IN ({marks}) AND (claimed_by IS NULL"
            f" OR claimed_by NOT IN (SELECT id FROM servers){owners})"
            " ORDER BY created_at, id",
            (*wanted, *dead),
        ).fetchall()
        return [Job(dict(r)) for r in rows]

    def take_over(self, conn: store.Connection, job: Job) -> bool:
        """Claim ``job`` if its claim is still the one we saw (one server wins)."""
        before = job.record.get("claimed_by")
        with store.transaction(conn):
            row = conn.execute(
                "SELECT claimed_by, state FROM jobs WHERE id = ?", (job.id,)
            ).fetchone()
            if row is None or row["claimed_by"] != before or row["state"] != job.state.value:
                return False
            conn.execute("UPDATE jobs SET claimed_by = ? WHERE id = ?", (self.server_id, job.id))
        job.record["claimed_by"] = self.server_id
        return True
