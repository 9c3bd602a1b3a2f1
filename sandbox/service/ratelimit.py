"""Rate limiting: requests per token per minute, compile time per token per minute, and
jobs one operator may have active."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from sandbox import store
from sandbox.errors import RateLimited
from sandbox.jobs import State
from sandbox.jobs.analysis import KIND as ANALYSIS_KIND
from sandbox.jobs.states import HELD

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


class TimeBudget:
    """Seconds of server work per key in a sliding minute (compiling a query is the
    host's most expensive request; a hostile query costs a few seconds at most).

    ``spend`` is checked before the work starts, so one request may overrun the budget
    by its own duration, never more."""

    def __init__(
        self, seconds_per_minute: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds_per_minute
        self.clock = clock
        self._spent: dict[str, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def _used(self, key: str, now: float) -> float:
        q = self._spent.setdefault(key, deque())
        while q and now - q[0][0] >= 60.0:
            q.popleft()
        return sum(s for _, s in q)

    @contextlib.contextmanager
    def spend(self, key: str) -> Iterator[None]:
        now = self.clock()
        with self._lock:
            if self._used(key, now) >= self.seconds:
                q = self._spent[key]
                wait = max(1, int(60.0 - (now - q[0][0])) + 1)
                raise RateLimited(
                    f"This token used its {self.seconds:g} s of query compilation for this minute.",
                    code="COMPILE_BUDGET_EXCEEDED",
                    hint=f"Wait {wait} s and retry; shorter queries compile faster.",
                    details={"retry_after": wait},
                )
        began = self.clock()
        try:
            yield
        finally:
            ended = self.clock()
            with self._lock:
                self._spent.setdefault(key, deque()).append((ended, ended - began))


def check_active_jobs(conn: store.Connection, operator: str) -> None:
    """Refuse a new job while the operator has ``MAX_ACTIVE_JOBS`` waiting or running.

    An analysis job counts until a supervisor decides on it (``states.HELD``, in
    review included): its run's end, which can depend on the data, never lowers the
    count (docs/analysis-jobs.md)."""
    active_states = [s.value for s in ACTIVE_STATES]
    held_states = sorted(s.value for s in HELD)
    row = conn.execute(
        "SELECT COUNT(*) FROM jobs WHERE operator = ? AND (state IN"
        f" ({','.join('?' * len(active_states))}) OR (kind = ? AND state IN"
        f" ({','.join('?' * len(held_states))})))",
        (operator, *active_states, ANALYSIS_KIND, *held_states),
    ).fetchone()
    active = int(row[0])
    if active >= MAX_ACTIVE_JOBS:
        raise RateLimited(
            f"{active} of your jobs are waiting, running or held for review; at most "
            f"{MAX_ACTIVE_JOBS} may be.",
            code="TOO_MANY_JOBS",
            hint="Wait for some to finish (`sandbox jobs`), then submit again.",
            details={"retry_after": 30},
        )
