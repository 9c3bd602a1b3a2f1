"""Fair concurrency slots and the warm runners (a warm runner serves one job)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import assert_no_secret
from executor_helpers import expected_counts, make_plan

from sandbox.errors import ExecutionFailed
from sandbox.executors.docker import HOME_LABEL, LABEL, FairSlots


def test_fair_slots_bound_concurrency_and_serve_in_arrival_order() -> None:
    slots = FairSlots(2)
    order: list[int] = []
    peak = [0]
    lock = threading.Lock()
    gate = threading.Event()

    def job(i: int) -> None:
        with slots.slot():
            with lock:
                order.append(i)
                peak[0] = max(peak[0], slots.busy)
            gate.wait(5)
            time.sleep(0.01)

    threads = []
    for i in range(8):
        t = threading.Thread(target=job, args=(i,))
        t.start()
        threads.append(t)
        # Let each thread queue up before the next arrives, so arrival order is known.
        deadline = time.monotonic() + 5
        while slots.busy + slots.waiting < i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(10)
    assert order == list(range(8))
    assert peak[0] == 2


@pytest.mark.container
def test_warm_runner_serves_one_job_then_is_removed(
    make_executor: Any, raw_root: Path, docker_client: Any
) -> None:
    executor = make_executor(warm_runners=1)
    first = executor.run(make_plan(), data_root=raw_root, job_id="w1")
    assert first.stats["warm"] is False
    deadline = time.monotonic() + 30
    while executor.pool_size < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert executor.pool_size == 1
    label = [f"{LABEL}=1", f"{HOME_LABEL}={executor.home_label}"]
    (warm,) = docker_client.containers.list(filters={"label": label})
    assert warm.attrs["HostConfig"]["NetworkMode"] == "none"
    assert {m["Destination"] for m in warm.attrs["Mounts"]} == {
        "/plan",
        "/out",
        "/data/population",
    }
    second = executor.run(make_plan(), data_root=raw_root, job_id="w2")
    assert second.stats["warm"] is True
    got = {r["county_code"]: (r["n"], r["age_sum"]) for r in second.table.to_pylist()}
    assert got == expected_counts(raw_root)
    assert warm.id not in {c.id for c in docker_client.containers.list(all=True)}
    # A hostile job on a warm runner is contained the same way.
    sql = (
        "SELECT county_code, COUNT(*) AS n, SUM(CAST(name AS INTEGER)) AS age_sum "
        "FROM persons GROUP BY 1"
    )
    while executor.pool_size < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ExecutionFailed) as info:
        executor.run(make_plan(sql=sql), data_root=raw_root, job_id="w3")
    assert info.value.category == "engine_error"
    assert info.value.stats["warm"] is True  # type: ignore[attr-defined]
    assert_no_secret(info.value)
