"""Rate limiting: requests per token per minute, and jobs one operator may have active."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable

from sandbox import jobs
from sandbox.errors import RateLimited
from sandbox.jobs import State

# jobs one operator may have waiting or running at once: a flood of tiny-ε queries must
# not queue without bound in front of everyone else's
MAX_ACTIVE_JOBS = 32
ACTIVE_STATES = (
    State.SUBMITTED,
    State.COMPILED,
    State.BUDGET_RESERVED,
    State.RUNNING,
    State.NOISED,
)


class RateLimiter:
    """A sliding one-minute window per key (the token id)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            q = self._hits.setdefault(key, deque())
            while q and now - q[0] >= 60.0:
                q.popleft()
            if len(q) >= self.per_minute:
                wait = max(1, int(60.0 - (now - q[0])) + 1)
                raise RateLimited(
                    f"More than {self.per_minute} requests in a minute.",
                    hint=f"Wait {wait} s and retry.",
                    details={"retry_after": wait},
                )
            q.append(now)


def check_active_jobs(conn: sqlite3.Connection, operator: str) -> None:
    """Refuse a new job while the operator has ``MAX_ACTIVE_JOBS`` waiting or running."""
    active = len(
        jobs.list_jobs(
            conn,
            operator=operator,
            states=[s.value for s in ACTIVE_STATES],
            limit=MAX_ACTIVE_JOBS,
        )
    )
    if active >= MAX_ACTIVE_JOBS:
        raise RateLimited(
            f"{active} of your jobs are waiting or running; at most {MAX_ACTIVE_JOBS} may be.",
            code="TOO_MANY_JOBS",
            hint="Wait for some to finish (`sandbox jobs`), then submit again.",
            details={"retry_after": 30},
        )
