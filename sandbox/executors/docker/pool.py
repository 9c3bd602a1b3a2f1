"""Who runs when: fair concurrency slots, and the pool of warm runners.

``FairSlots`` lets at most ``settings.concurrency`` jobs hold a container at once,
in arrival order. ``WarmPool`` keeps runner containers started ahead (one dataset
set each) that have already imported DuckDB and wait for one job.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.executors.docker.containers import WARM_IDLE_S, Runner, discard, pool_key

log = logging.getLogger("sandbox.executors.docker")  # one logger name for the package

WARM_TAKE_WAIT_S = 5.0  # a job waits this long for a warm runner being started

Launch = Callable[[dict[str, Path]], Runner]


class FairSlots:
    """At most ``n`` holders at once; waiters get a slot in arrival order (FIFO)."""

    def __init__(self, n: int) -> None:
        self.n = max(1, int(n))
        self._busy = 0
        self._queue: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self._busy >= self.n:
                    self._cond.wait()
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._busy += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()


class WarmPool:
    """Runner containers started ahead, one dataset set each, waiting for one job.

    A warm runner has its mounts (only that dataset set), its own empty /out and
    /plan, and has already imported DuckDB; it runs the first spec dropped into its
    /plan and exits. It is never reused. Refilled in the background after a job.

    ``launch(datasets)`` starts one waiting runner; ``slots`` are the executor's (a
    refill waits while jobs are queued for them).
    """

    def __init__(self, launch: Launch, slots: FairSlots, size: int) -> None:
        self.launch = launch
        self.slots = slots
        self.size = max(0, int(size))
        self._idle: list[Runner] = []
        self._pending: dict[tuple[tuple[str, str], ...], int] = {}
        self._waiting: dict[tuple[tuple[str, str], ...], int] = {}
        self._cond = threading.Condition()
        self._queue: queue.Queue[dict[str, Path] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def idle_count(self) -> int:
        with self._cond:
            return len(self._idle)

    def take(self, datasets: dict[str, Path]) -> Runner | None:
        if self.size <= 0:
            return None
        key = pool_key(datasets)
        stale: list[Runner] = []
        found = None
        deadline = time.monotonic() + WARM_TAKE_WAIT_S
        with self._cond:
            while found is None:
                for runner in list(self._idle):
                    if runner.key != key:
                        continue
                    self._idle.remove(runner)
                    if time.monotonic() - runner.born < WARM_IDLE_S - 30:
                        found = runner
                        break
                    stale.append(runner)
                # One being started for this key is never slower than a new cold one,
                # but each one being started can serve only one waiting job.
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    break
                if self._pending.get(key, 0) <= self._waiting.get(key, 0):
                    break
                self._waiting[key] = self._waiting.get(key, 0) + 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiting[key] -= 1
        for runner in stale:
            discard(runner)
        return found

    def refill(self, datasets: dict[str, Path]) -> None:
        # With jobs queued, a container started ahead only competes with theirs for
        # the CPUs; the last job of a burst refills the pool.
        if self.size <= 0 or self.slots.waiting > 0:
            return
        with self._cond:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="jinyu-warm-runners", daemon=True
                )
                self._thread.start()
                atexit.register(self.close)
        self._queue.put(dict(datasets))

    def _work(self) -> None:
        while True:
            datasets = self._queue.get()
            if datasets is None:
                return
            key = pool_key(datasets)
            while True:
                with self._cond:
                    have = sum(r.key == key for r in self._idle) + self._pending.get(key, 0)
                    if self._closed or have >= self.size:
                        break
                    self._pending[key] = self._pending.get(key, 0) + 1
                runner = None
                try:
                    runner = self.launch(datasets)
                except SandboxError as exc:
                    log.warning("could not start a warm runner (%s)", exc.code)
                evicted: list[Runner] = []
                with self._cond:
                    self._pending[key] -= 1
                    if runner is not None:
                        if self._closed:
                            evicted.append(runner)
                        else:
                            self._idle.append(runner)
                            while len(self._idle) > self.size:
                                evicted.append(self._idle.pop(0))
                    self._cond.notify_all()
                for old in evicted:
                    discard(old)
                if runner is None:
                    break

    def close(self) -> None:
        with self._cond:
            self._closed = True
            thread = self._thread
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        if thread is not None:
            self._queue.put(None)
            thread.join(60)
        with self._cond:
            idle += self._idle
            self._idle = []
        for runner in idle:
            discard(runner)
